"""Row-wise loss and divergence CUDA kernels (softmax cross-entropy, entropy, KL, JS); launchers with the CPU
kernels' names and signatures (fastnorm/_kernels/cpu/_divergence.pyx).

Layout: one block of TPB threads per row, each thread striding over the row; row statistics (max, sums)
by shared-memory tree reductions with ``syncthreads`` (correct on hardware and under the simulator, and
in a fixed order: bitwise reproducible). Arithmetic and accumulation in float64. The kernels are built per
data dtype (``_kernels``): elements are read through ``loader`` and written through ``storer`` of
``_common``, so bfloat16 (uint16 bit patterns) and float16 data are widened exactly and every stored
result is rounded to the 16-bit dtype once (through float32, as the CPU kernels round their float32
result); parameters (the class weights) of 16-bit data arrive in float32. ``exp``/``log`` go through small
guards so that the simulator (plain Python ``math``) gives inf, 0 and NaN where the hardware does instead of
raising.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from ._common import SIM, cached, current_stream, empty_device, kdev, launcher, loader, storer
from .transport import _tree

TPB = 32 if SIM else 256  # threads per row (a power of two; the simulator runs each thread as a Python thread)
INF = math.inf
NAN = math.nan


@cuda.jit(device=True)
def _exp(v):
    if v > 709.78:
        return INF
    if v < -745.0:
        return 0.0
    return math.exp(v)


@cuda.jit(device=True)
def _log(v):
    if v > 0.0:
        if v == INF:
            return INF
        return math.log(v)
    if v == 0.0:
        return -INF
    if v != v:
        return v
    return NAN


@cuda.jit(device=True)
def _block_reduce(v, buf, is_max):
    """The block's sum (or max) of v, in a fixed tree order; every thread gets it."""
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    _tree(buf, tid, TPB, is_max)
    r = buf[0]
    cuda.syncthreads()
    return r


@cuda.jit(device=True)
def _kl_terms(x, t, lt):
    """(elementwise loss, d/dx, d/dt) of KL at one element."""
    if lt:
        et = _exp(t)
        return et * (t - x), -et, et * (t - x + 1.0)
    lt_ = _log(t)
    xl = 0.0 if t == 0.0 else t * lt_
    return xl - t * x, -t, lt_ + 1.0 - x


@cuda.jit(device=True)
def _js_terms(x, y, b, mode):
    """(elementwise loss, d/dx, d/dy) of the generalized JSD at one element (mode 0: beta 0, 1: beta 1)."""
    q = _exp(x)
    p = _exp(y)
    if mode == 0:
        e = 0.0 if p == 0.0 else p * (y - x)
        return e, -p, e + p
    if mode == 1:
        e = 0.0 if q == 0.0 else q * (x - y)
        return e, e + q, -q
    m = b * p + (1.0 - b) * q
    lm = _log(m)
    py = 0.0 if p == 0.0 else p * y
    qx = 0.0 if q == 0.0 else q * x
    ml = 0.0 if m == 0.0 else m * lm
    dx = 0.0 if q == 0.0 else (1.0 - b) * q * (x - lm)
    dy = 0.0 if p == 0.0 else b * p * (y - lm)
    return b * py + (1.0 - b) * qx - ml, dx, dy


@cuda.jit(device=True)
def _terms(which, x, y, lt, b, mode):
    if which == 0:
        return _kl_terms(x, y, lt)
    return _js_terms(x, y, b, mode)


@cuda.jit(device=True)
def _ce_row(x, tp, w):
    """(row, thread, classes, probability targets given, class weights given) of a cross-entropy block."""
    return cuda.blockIdx.x, cuda.threadIdx.x, x.shape[1], tp.shape[0] > 0, w.shape[0] > 0


def _build(dt):
    """The kernels for data of dtype ``dt``: a dict of ce_fwd, ce_bwd, entropy_fwd, entropy_bwd, div_fwd, div_bwd."""
    ld = loader(dt)
    st = storer(dt)

    @cuda.jit(device=True)
    def ce_grad_row(x, i, v, t, tp, w, eps, wsum, c, mx, off, sy, g):
        tid = cuda.threadIdx.x
        has_w = w.shape[0] > 0
        probs = tp.shape[0] > 0
        wt = 1.0
        if not probs and has_w:
            wt = float64(w[t])
        ca = c * ((1.0 - eps) * (sy if probs else wt) + eps * wsum / v)
        for j in range(tid, v, TPB):
            wj = float64(w[j]) if has_w else 1.0
            val = ca * _exp((float64(ld(x[i, j])) - mx) - off)
            if probs:
                val -= wj * (c * (1.0 - eps) * float64(ld(tp[i, j])) + c * eps / v)
            else:
                val -= c * eps / v * wj
                if j == t:
                    val -= c * (1.0 - eps) * wt
            g[i, j] = st(val)

    @cuda.jit(device=True)
    def zero_row(a, i, v):
        for j in range(cuda.threadIdx.x, v, TPB):
            a[i, j] = st(0.0)

    @cuda.jit
    def ce_fwd(x, tgt, tp, w, gs, g, loss, lse, ignore_index, eps, wsum):
        buf = cuda.shared.array(TPB, float64)
        i, tid, v, probs, has_w = _ce_row(x, tp, w)
        t = -1
        xt = 0.0
        if not probs:
            t = tgt[i]
            if t == ignore_index:
                t = -1
            else:
                xt = float64(ld(x[i, t]))
        mx = -INF
        for j in range(tid, v, TPB):
            xv = float64(ld(x[i, j]))
            if xv > mx:
                mx = xv
        mx = _block_reduce(mx, buf, True)
        if not (mx > -INF and mx < INF):
            mx = 0.0
        s = 0.0
        for j in range(tid, v, TPB):
            s += _exp(float64(ld(x[i, j])) - mx)
        log_s = _log(_block_reduce(s, buf, False))
        wdev = 0.0
        if eps != 0.0:
            a = 0.0
            for j in range(tid, v, TPB):
                wj = float64(w[j]) if has_w else 1.0
                a += wj * (mx - float64(ld(x[i, j])))
            wdev = _block_reduce(a, buf, False)
        sy = 0.0
        if probs:
            a = 0.0
            b = 0.0
            for j in range(tid, v, TPB):
                wj = float64(w[j]) if has_w else 1.0
                yj = float64(ld(tp[i, j]))
                a += wj * yj
                b += wj * yj * (mx - float64(ld(x[i, j])))
            sy = _block_reduce(a, buf, False)
            sdev = _block_reduce(b, buf, False)
            lo = (1.0 - eps) * (sdev + sy * log_s)
        elif t >= 0:
            wt = float64(w[t]) if has_w else 1.0
            lo = (1.0 - eps) * wt * ((mx - xt) + log_s)
        else:
            lo = 0.0
        if eps != 0.0 and (probs or t >= 0):
            lo += eps / v * (wdev + wsum * log_s)
        cuda.syncthreads()  # every thread has read its x before a gradient written over the logits lands
        if tid == 0:
            lse[i] = mx + log_s
            loss[i] = lo
        if g.shape[0] > 0:
            c = gs[0] if gs.shape[0] == 1 else gs[i]
            if not probs and t < 0:
                zero_row(g, i, v)
            else:
                ce_grad_row(x, i, v, t, tp, w, eps, wsum, c, mx, log_s, sy, g)

    @cuda.jit
    def ce_bwd(x, tgt, tp, w, lse, gs, g, ignore_index, eps, wsum):
        buf = cuda.shared.array(TPB, float64)
        i, tid, v, probs, has_w = _ce_row(x, tp, w)
        c = gs[0] if gs.shape[0] == 1 else gs[i]
        t = -1
        sy = 0.0
        if probs:
            a = 0.0
            for j in range(tid, v, TPB):
                wj = float64(w[j]) if has_w else 1.0
                a += wj * float64(ld(tp[i, j]))
            sy = _block_reduce(a, buf, False)
        else:
            t = tgt[i]
            if t == ignore_index:
                zero_row(g, i, v)
                return
        mx = lse[i]
        off = 0.0
        if not (mx > -INF and mx < INF):
            off = mx
            mx = 0.0
        ce_grad_row(x, i, v, t, tp, w, eps, wsum, c, mx, off, sy, g)

    @cuda.jit(device=True)
    def entropy_row(p, i, v, buf):
        tid = cuda.threadIdx.x
        a = 0.0
        for j in range(tid, v, TPB):
            a += float64(ld(p[i, j]))
        s = _block_reduce(a, buf, False)
        inv = 1.0 / s if s != 0.0 else INF
        b = 0.0
        for j in range(tid, v, TPB):
            q = float64(ld(p[i, j])) * inv
            if q != q:
                e = q
            elif q > 0.0:
                e = -q * _log(q)
            elif q == 0.0:
                e = 0.0
            else:
                e = -INF
            b += e
        return s, _block_reduce(b, buf, False)

    @cuda.jit
    def entropy_fwd(p, h, ilb):
        buf = cuda.shared.array(TPB, float64)
        i = cuda.blockIdx.x
        s, hn = entropy_row(p, i, p.shape[1], buf)
        if cuda.threadIdx.x == 0:
            h[i] = st(hn * ilb)

    @cuda.jit
    def entropy_bwd(dh, p, dp, ilb):
        buf = cuda.shared.array(TPB, float64)
        i = cuda.blockIdx.x
        v = p.shape[1]
        s, hn = entropy_row(p, i, v, buf)
        c = -float64(ld(dh[i])) * ilb / s
        for j in range(cuda.threadIdx.x, v, TPB):
            dp[i, j] = st(c * (_log(float64(ld(p[i, j])) / s) + hn))

    @cuda.jit
    def div_fwd(which, x, y, keep, loss, elem, dx, dy, lt, b, mode, c):
        buf = cuda.shared.array(TPB, float64)
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        v = x.shape[1]
        want_e = elem.shape[0] > 0
        want_dx = dx.shape[0] > 0
        want_dy = dy.shape[0] > 0
        kept = keep.shape[0] == 0 or keep[i] != 0
        a = 0.0
        for j in range(tid, v, TPB):
            e, gx, gy = 0.0, 0.0, 0.0
            if kept:  # an ignored row is 0 (also where the scale c is NaN: every row ignored)
                e, gx, gy = _terms(which, float64(ld(x[i, j])), float64(ld(y[i, j])), lt, b, mode)
                gx *= c
                gy *= c
            a += e
            if want_e:
                elem[i, j] = st(e)
            if want_dx:
                dx[i, j] = st(gx)
            if want_dy:
                dy[i, j] = st(gy)
        s = _block_reduce(a, buf, False)
        if tid == 0:
            loss[i] = s

    @cuda.jit
    def div_bwd(which, dl, x, y, keep, dx, dy, lt, b, mode, c):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        v = x.shape[1]
        has_dl = dl.shape[0] > 0
        kept = keep.shape[0] == 0 or keep[i] != 0
        for j in range(tid, v, TPB):
            gx, gy = 0.0, 0.0
            if kept:
                e, gx, gy = _terms(which, float64(ld(x[i, j])), float64(ld(y[i, j])), lt, b, mode)
                d = c * float64(ld(dl[i, j])) if has_dl else c
                gx *= d
                gy *= d
            if dx.shape[0] > 0:
                dx[i, j] = st(gx)
            if dy.shape[0] > 0:
                dy[i, j] = st(gy)

    return dict(ce_fwd=ce_fwd, ce_bwd=ce_bwd, entropy_fwd=entropy_fwd, entropy_bwd=entropy_bwd, div_fwd=div_fwd,
                div_bwd=div_bwd)  # fmt: skip


def _launch(name, data, *args):
    """Launch kernel ``name`` of ``data``'s dtype, one block per row of ``data`` (M, V); arrays are passed as
    the kernels read them (bfloat16 as uint16 views)."""
    dt = np.dtype(data.dtype)
    m = data.shape[0]
    if m > 0:
        k = cached(("divergence", dt, TPB), lambda: _build(dt))[name]
        k[m, TPB, current_stream()](*(kdev(a) if hasattr(a, "shape") else a for a in args))


@launcher
def softmax_cross_entropy_forward(
    logits, target, target_prob, weight, gscale, grad, loss, lse, ignore_index, label_smoothing, weight_sum, n_threads
):
    """IN logits (M, V), target (M,) | (0,), target_prob (M, V) | (0, 0), weight (V,) | (0,), gscale (M,) |
    (1,) | (0,); OUT grad (M, V) | (0, 0) (may be logits), loss (M,) float64, lse (M,) float64."""
    _launch("ce_fwd", logits, logits, target, target_prob, weight, gscale, grad, loss, lse, int(ignore_index),
            float(label_smoothing), float(weight_sum))  # fmt: skip


@launcher
def softmax_cross_entropy_backward(
    logits, target, target_prob, weight, lse, gscale, grad, ignore_index, label_smoothing, weight_sum, n_threads
):
    """IN logits, target, target_prob, weight, lse (M,), gscale (M,) | (1,); OUT grad (M, V)."""
    _launch("ce_bwd", logits, logits, target, target_prob, weight, lse, gscale, grad, int(ignore_index),
            float(label_smoothing), float(weight_sum))  # fmt: skip


@launcher
def entropy_forward(p, h, inv_log_base, n_threads):
    """IN p (M, V); OUT h (M,)."""
    _launch("entropy_fwd", p, p, h, float(inv_log_base))


@launcher
def entropy_backward(dh, p, dp, inv_log_base, n_threads):
    """IN dh (M,), p (M, V); OUT dp (M, V)."""
    _launch("entropy_bwd", p, dh, p, dp, float(inv_log_base))


def _mode(beta: float) -> int:
    return 0 if beta == 0.0 else (1 if beta == 1.0 else 2)


def _no_keep():
    return empty_device((0,), "uint8")


@launcher
def kl_div_forward(input, target, loss, elem, dinput, dtarget, log_target, gscale, n_threads):
    """IN input, target (M, V); OUT loss (M,) float64, elem / dinput / dtarget (M, V) | (0, 0)."""
    _launch("div_fwd", input, 0, input, target, _no_keep(), loss, elem, dinput, dtarget, bool(log_target), 0.0, 2,
            float(gscale))  # fmt: skip


@launcher
def kl_div_backward(dloss, input, target, dinput, dtarget, log_target, scale, n_threads):
    """IN dloss (M, V) | (0, 0), input, target (M, V); OUT dinput, dtarget (M, V) | (0, 0)."""
    _launch("div_bwd", input, 0, dloss, input, target, _no_keep(), dinput, dtarget, bool(log_target), 0.0, 2,
            float(scale))  # fmt: skip


@launcher
def js_div_forward(input, target, keep, loss, elem, dinput, dtarget, beta, gscale, n_threads):
    """IN input, target (M, V), keep (M,) uint8 | (0,); OUT loss (M,) float64, elem / dinput / dtarget."""
    _launch("div_fwd", input, 1, input, target, keep, loss, elem, dinput, dtarget, False, float(beta), _mode(beta),
            float(gscale))  # fmt: skip


@launcher
def js_div_backward(dloss, input, target, keep, dinput, dtarget, beta, scale, n_threads):
    """IN dloss (M, V) | (0, 0), input, target, keep; OUT dinput, dtarget (M, V) | (0, 0)."""
    _launch("div_bwd", input, 1, dloss, input, target, keep, dinput, dtarget, False, float(beta), _mode(beta),
            float(scale))  # fmt: skip
