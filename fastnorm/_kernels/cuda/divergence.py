"""Row-wise loss and divergence CUDA kernels (softmax cross-entropy, entropy, KL, JS); launchers with the CPU
kernels' names and signatures (fastnorm/_kernels/cpu/_divergence.pyx).

Layout: one block of TPB threads per row, each thread striding over the row; row statistics (max, sums)
by shared-memory tree reductions with ``syncthreads`` (correct on hardware and under the simulator, and
in a fixed order: bitwise reproducible). Arithmetic and accumulation in float64, stored in the array's
dtype. ``exp``/``log`` go through small guards so that the simulator (plain Python ``math``) gives inf,
0 and NaN where the hardware does instead of raising.
"""

from __future__ import annotations

import math

from numba import cuda, float64

from ._common import SIM, current_stream, dev

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
def _block_sum(v, buf):
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    s = TPB // 2
    while s > 0:
        if tid < s:
            buf[tid] += buf[tid + s]
        cuda.syncthreads()
        s //= 2
    r = buf[0]
    cuda.syncthreads()
    return r


@cuda.jit(device=True)
def _block_max(v, buf):
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    s = TPB // 2
    while s > 0:
        if tid < s:
            o = buf[tid + s]
            if o > buf[tid]:
                buf[tid] = o
        cuda.syncthreads()
        s //= 2
    r = buf[0]
    cuda.syncthreads()
    return r


# ------------------------------------------------------------------------------------------ cross-entropy
@cuda.jit(device=True)
def _ce_grad_row(x, i, v, t, tp, w, eps, wsum, c, mx, off, sy, xt, g):
    tid = cuda.threadIdx.x
    has_w = w.shape[0] > 0
    if tp.shape[0] == 0:
        wt = 1.0
        if has_w:
            wt = float64(w[t])
        ca = c * ((1.0 - eps) * wt + eps * wsum / v)
        cb = c * eps / v
        for j in range(tid, v, TPB):
            wj = float64(w[j]) if has_w else 1.0
            val = ca * _exp((float64(x[i, j]) - mx) - off) - cb * wj
            if j == t:
                val -= c * (1.0 - eps) * wt
            g[i, j] = val
    else:
        ca = c * ((1.0 - eps) * sy + eps * wsum / v)
        c1 = c * (1.0 - eps)
        c0 = c * eps / v
        for j in range(tid, v, TPB):
            wj = float64(w[j]) if has_w else 1.0
            g[i, j] = ca * _exp((float64(x[i, j]) - mx) - off) - wj * (c1 * float64(tp[i, j]) + c0)


@cuda.jit
def _ce_fwd(x, tgt, tp, w, gs, g, loss, lse, ignore_index, eps, wsum):
    buf = cuda.shared.array(TPB, float64)
    i = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    v = x.shape[1]
    probs = tp.shape[0] > 0
    has_w = w.shape[0] > 0
    t = -1
    xt = 0.0
    if not probs:
        t = tgt[i]
        if t == ignore_index:
            t = -1
        else:
            xt = float64(x[i, t])
    mx = -INF
    for j in range(tid, v, TPB):
        xv = float64(x[i, j])
        if xv > mx:
            mx = xv
    mx = _block_max(mx, buf)
    if not (mx > -INF and mx < INF):
        mx = 0.0
    s = 0.0
    for j in range(tid, v, TPB):
        s += _exp(float64(x[i, j]) - mx)
    log_s = _log(_block_sum(s, buf))
    wdev = 0.0
    if eps != 0.0:
        a = 0.0
        for j in range(tid, v, TPB):
            wj = float64(w[j]) if has_w else 1.0
            a += wj * (mx - float64(x[i, j]))
        wdev = _block_sum(a, buf)
    sy = 0.0
    if probs:
        a = 0.0
        b = 0.0
        for j in range(tid, v, TPB):
            wj = float64(w[j]) if has_w else 1.0
            yj = float64(tp[i, j])
            a += wj * yj
            b += wj * yj * (mx - float64(x[i, j]))
        sy = _block_sum(a, buf)
        sdev = _block_sum(b, buf)
        lo = (1.0 - eps) * (sdev + sy * log_s)
    elif t >= 0:
        wt = float64(w[t]) if has_w else 1.0
        lo = (1.0 - eps) * wt * ((mx - xt) + log_s)
    else:
        lo = 0.0
    if eps != 0.0 and (probs or t >= 0):
        lo += eps / v * (wdev + wsum * log_s)
    if tid == 0:
        lse[i] = mx + log_s
        loss[i] = lo
    if g.shape[0] > 0:
        c = gs[0] if gs.shape[0] == 1 else gs[i]
        if not probs and t < 0:
            for j in range(tid, v, TPB):
                g[i, j] = 0.0
        else:
            _ce_grad_row(x, i, v, t, tp, w, eps, wsum, c, mx, log_s, sy, xt, g)


@cuda.jit
def _ce_bwd(x, tgt, tp, w, lse, gs, g, ignore_index, eps, wsum):
    buf = cuda.shared.array(TPB, float64)
    i = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    v = x.shape[1]
    probs = tp.shape[0] > 0
    has_w = w.shape[0] > 0
    c = gs[0] if gs.shape[0] == 1 else gs[i]
    t = -1
    sy = 0.0
    if probs:
        a = 0.0
        for j in range(tid, v, TPB):
            wj = float64(w[j]) if has_w else 1.0
            a += wj * float64(tp[i, j])
        sy = _block_sum(a, buf)
    else:
        t = tgt[i]
        if t == ignore_index:
            for j in range(tid, v, TPB):
                g[i, j] = 0.0
            return
    mx = lse[i]
    off = 0.0
    if not (mx > -INF and mx < INF):
        off = mx
        mx = 0.0
    _ce_grad_row(x, i, v, t, tp, w, eps, wsum, c, mx, off, sy, 0.0, g)


def _launch(k, m, *args):
    if m > 0:
        k[m, TPB, current_stream()](*args)


def softmax_cross_entropy_forward(
    logits, target, target_prob, weight, gscale, grad, loss, lse, ignore_index, label_smoothing, weight_sum, n_threads
):
    """IN logits (M, V), target (M,) | (0,), target_prob (M, V) | (0, 0), weight (V,) | (0,), gscale (M,) |
    (1,) | (0,); OUT grad (M, V) | (0, 0) (may be logits), loss (M,) float64, lse (M,) float64."""
    x = dev(logits)
    _launch(
        _ce_fwd,
        x.shape[0],
        x,
        dev(target),
        dev(target_prob),
        dev(weight),
        dev(gscale),
        dev(grad),
        dev(loss),
        dev(lse),
        int(ignore_index),
        float(label_smoothing),
        float(weight_sum),
    )


def softmax_cross_entropy_backward(
    logits, target, target_prob, weight, lse, gscale, grad, ignore_index, label_smoothing, weight_sum, n_threads
):
    """IN logits, target, target_prob, weight, lse (M,), gscale (M,) | (1,); OUT grad (M, V)."""
    x = dev(logits)
    _launch(
        _ce_bwd,
        x.shape[0],
        x,
        dev(target),
        dev(target_prob),
        dev(weight),
        dev(lse),
        dev(gscale),
        dev(grad),
        int(ignore_index),
        float(label_smoothing),
        float(weight_sum),
    )


# ------------------------------------------------------------------------------------------------ entropy
@cuda.jit(device=True)
def _entropy_row(p, i, v, buf):
    tid = cuda.threadIdx.x
    a = 0.0
    for j in range(tid, v, TPB):
        a += float64(p[i, j])
    s = _block_sum(a, buf)
    inv = 1.0 / s if s != 0.0 else INF
    b = 0.0
    for j in range(tid, v, TPB):
        q = float64(p[i, j]) * inv
        if q != q:
            e = q
        elif q > 0.0:
            e = -q * _log(q)
        elif q == 0.0:
            e = 0.0
        else:
            e = -INF
        b += e
    return s, _block_sum(b, buf)


@cuda.jit
def _entropy_fwd(p, h, ilb):
    buf = cuda.shared.array(TPB, float64)
    i = cuda.blockIdx.x
    s, hn = _entropy_row(p, i, p.shape[1], buf)
    if cuda.threadIdx.x == 0:
        h[i] = hn * ilb


@cuda.jit
def _entropy_bwd(dh, p, dp, ilb):
    buf = cuda.shared.array(TPB, float64)
    i = cuda.blockIdx.x
    v = p.shape[1]
    s, hn = _entropy_row(p, i, v, buf)
    c = -float64(dh[i]) * ilb / s
    for j in range(cuda.threadIdx.x, v, TPB):
        dp[i, j] = c * (_log(float64(p[i, j]) / s) + hn)


def entropy_forward(p, h, inv_log_base, n_threads):
    """IN p (M, V); OUT h (M,)."""
    p = dev(p)
    _launch(_entropy_fwd, p.shape[0], p, dev(h), float(inv_log_base))


def entropy_backward(dh, p, dp, inv_log_base, n_threads):
    """IN dh (M,), p (M, V); OUT dp (M, V)."""
    p = dev(p)
    _launch(_entropy_bwd, p.shape[0], dev(dh), p, dev(dp), float(inv_log_base))


# ------------------------------------------------------------------------------------------------ KL / JS
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


@cuda.jit
def _div_fwd(which, x, y, keep, loss, elem, dx, dy, lt, b, mode, c):
    buf = cuda.shared.array(TPB, float64)
    i = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    v = x.shape[1]
    want_e = elem.shape[0] > 0
    want_dx = dx.shape[0] > 0
    want_dy = dy.shape[0] > 0
    if keep.shape[0] > 0 and keep[i] == 0:
        for j in range(tid, v, TPB):
            if want_e:
                elem[i, j] = 0.0
            if want_dx:
                dx[i, j] = 0.0
            if want_dy:
                dy[i, j] = 0.0
        if tid == 0:
            loss[i] = 0.0
        return
    a = 0.0
    for j in range(tid, v, TPB):
        e, gx, gy = _terms(which, float64(x[i, j]), float64(y[i, j]), lt, b, mode)
        a += e
        if want_e:
            elem[i, j] = e
        if want_dx:
            dx[i, j] = c * gx
        if want_dy:
            dy[i, j] = c * gy
    s = _block_sum(a, buf)
    if tid == 0:
        loss[i] = s


@cuda.jit
def _div_bwd(which, dl, x, y, keep, dx, dy, lt, b, mode, c):
    i = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    v = x.shape[1]
    has_dl = dl.shape[0] > 0
    want_dx = dx.shape[0] > 0
    want_dy = dy.shape[0] > 0
    kept = keep.shape[0] == 0 or keep[i] != 0
    for j in range(tid, v, TPB):
        if kept:
            e, gx, gy = _terms(which, float64(x[i, j]), float64(y[i, j]), lt, b, mode)
            d = c * float64(dl[i, j]) if has_dl else c
            if want_dx:
                dx[i, j] = d * gx
            if want_dy:
                dy[i, j] = d * gy
        else:
            if want_dx:
                dx[i, j] = 0.0
            if want_dy:
                dy[i, j] = 0.0


def _mode(beta: float) -> int:
    return 0 if beta == 0.0 else (1 if beta == 1.0 else 2)


def _no_keep():
    from ._common import empty_device

    return empty_device((0,), "uint8")


def kl_div_forward(input, target, loss, elem, dinput, dtarget, log_target, gscale, n_threads):
    """IN input, target (M, V); OUT loss (M,) float64, elem / dinput / dtarget (M, V) | (0, 0)."""
    x = dev(input)
    _launch(
        _div_fwd,
        x.shape[0],
        0,
        x,
        dev(target),
        _no_keep(),
        dev(loss),
        dev(elem),
        dev(dinput),
        dev(dtarget),
        bool(log_target),
        0.0,
        2,
        float(gscale),
    )


def kl_div_backward(dloss, input, target, dinput, dtarget, log_target, scale, n_threads):
    """IN dloss (M, V) | (0, 0), input, target (M, V); OUT dinput, dtarget (M, V) | (0, 0)."""
    x = dev(input)
    _launch(
        _div_bwd,
        x.shape[0],
        0,
        dev(dloss),
        x,
        dev(target),
        _no_keep(),
        dev(dinput),
        dev(dtarget),
        bool(log_target),
        0.0,
        2,
        float(scale),
    )


def js_div_forward(input, target, keep, loss, elem, dinput, dtarget, beta, gscale, n_threads):
    """IN input, target (M, V), keep (M,) uint8 | (0,); OUT loss (M,) float64, elem / dinput / dtarget."""
    x = dev(input)
    _launch(
        _div_fwd,
        x.shape[0],
        1,
        x,
        dev(target),
        dev(keep),
        dev(loss),
        dev(elem),
        dev(dinput),
        dev(dtarget),
        False,
        float(beta),
        _mode(beta),
        float(gscale),
    )


def js_div_backward(dloss, input, target, keep, dinput, dtarget, beta, scale, n_threads):
    """IN dloss (M, V) | (0, 0), input, target, keep; OUT dinput, dtarget (M, V) | (0, 0)."""
    x = dev(input)
    _launch(
        _div_bwd,
        x.shape[0],
        1,
        dev(dloss),
        x,
        dev(target),
        dev(keep),
        dev(dinput),
        dev(dtarget),
        False,
        float(beta),
        _mode(beta),
        float(scale),
    )
