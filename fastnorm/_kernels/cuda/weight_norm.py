"""WeightNorm and CosineNorm (cosine_linear) CUDA kernels; launchers with the CPU kernels' signatures
(fastnorm/_kernels/cpu/_weight_norm.pyx).

WeightNorm on an (A, D, B) view of v: one team (block) per slice d sums its A*B values (a B-long row per a)
in fixed order, then writes its output from cache in a second pass: one launch per call. The CPU kernels'
plans (``mode``) and scratch (``part``, ``fac``) are not used: every slice is one team's whole job here,
which keeps the GPU busy when there are many slices (dim=0 of a weight matrix); a single slice
(dim=None) runs on one block (correct, not fast).

CosineLinear: the matrix products are the public layer's (``CudaBackend.matmul``); these kernels are the
row norms and output scaling (forward), the scaled gradient and norm-correction coefficients (backward, a
row kernel, then column partial sums over ``part``'s row chunks summed in order), and the corrections.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ._common import ACC, SIM, Kernel, arr, cached, current_stream, dev, make_team_sum2, register_cap, team_buf_cols

U = np.uint64
F64 = np.float64
TEAM = 64 if SIM else 256
BLOCK = 64 if SIM else 256


def _nb(acc):
    from numba import float32, float64

    return float32 if acc is np.float32 else float64


def _team_kernel(name, dt, make, sig):
    dt = np.dtype(dt)
    return cached((name, dt, TEAM), lambda: Kernel(make(dt), sig, register_cap(TEAM, ACC[dt])))


# ------------------------------------------------------------------------------------------ WeightNorm
def _make_wn(dtype, backward: bool):
    acc = ACC[np.dtype(dtype)]
    acc_nb = _nb(acc)
    out = np.dtype(dtype).type
    team_sum2 = make_team_sum2(TEAM)
    cols = team_buf_cols(TEAM)
    tu = U(TEAM)

    def wn(a_in, v, g, norm, o1, o2):
        """forward: a_in = v, o1 = w (A, D, B), o2 = norm (D,) out; backward: a_in = dw, o1 = dv, o2 = dg."""
        A = U(v.shape[0])
        D = U(v.shape[1])
        B = U(v.shape[2])
        buf = cuda.shared.array((2, 2, 1, cols), acc_nb)
        lane = U(cuda.threadIdx.x)
        d = U(cuda.blockIdx.x)
        if d >= D:
            return
        per = A * B
        s = acc(0)
        q = lane
        while q < per:
            a = q // B
            b = q - a * B
            vv = acc(v[a, d, b])
            s += (acc(a_in[a, d, b]) * vv) if backward else vv * vv
            q += tu
        tot, _unused = team_sum2(s, acc(0), buf, 0, 0, lane)
        if backward:
            nrm = acc(norm[d])
            dot = tot
            c1 = acc(g[d]) / nrm
            c2 = acc(g[d]) * dot / (nrm * nrm * nrm)
            if lane == U(0):
                o2[d] = out(dot / nrm)
        else:
            nrm = acc(math.sqrt(tot))
            c1 = acc(g[d]) / nrm
            c2 = acc(0)
            if lane == U(0):
                o2[d] = out(nrm)
        q = lane
        while q < per:
            a = q // B
            b = q - a * B
            if backward:
                o1[a, d, b] = out(c1 * acc(a_in[a, d, b]) - c2 * acc(v[a, d, b]))
            else:
                o1[a, d, b] = out(acc(v[a, d, b]) * c1)
            q += tu

    return wn


def _wn_kernel(dt, backward: bool) -> Kernel:
    a3, a1 = arr(dt, 3), arr(dt, 1)
    sig = f"void({a3}, {a3}, {a1}, {a1}, {a3}, {a1})"
    return _team_kernel(("wn", backward), dt, lambda d: _make_wn(d, backward), sig)


def weight_norm_forward(v, g, w, norm, part, fac, mode, n_threads):
    """IN v (A, D, B), g (D,); OUT w (A, D, B), norm (D,); SCRATCH part, fac unused; mode unused."""
    v, g, w, norm = dev(v), dev(g), dev(w), dev(norm)
    a, d, b = v.shape
    if d == 0:
        return
    if a * b == 0:
        from .fill import fill

        fill(norm, 0.0)
        return
    _wn_kernel(v.dtype, False).launch(d, TEAM, current_stream(), v, v, g, norm, w, norm)


def weight_norm_backward(dw, v, g, norm, dv, dg, part, fac, mode, n_threads):
    """IN dw, v (A, D, B), g, norm (D,); OUT dv (A, D, B), dg (D,); SCRATCH part, fac unused."""
    dw, v, g, norm, dv, dg = dev(dw), dev(v), dev(g), dev(norm), dev(dv), dev(dg)
    a, d, b = v.shape
    if d == 0:
        return
    if a * b == 0:
        from .fill import fill

        fill(dg, 0.0)
        return
    _wn_kernel(v.dtype, True).launch(d, TEAM, current_stream(), dw, v, g, norm, dv, dg)


# ------------------------------------------------------------------------------------------ CosineLinear
def _make_row_norms(dtype):
    acc = ACC[np.dtype(dtype)]
    acc_nb = _nb(acc)
    out = np.dtype(dtype).type
    team_sum2 = make_team_sum2(TEAM)
    cols = team_buf_cols(TEAM)
    tu = U(TEAM)

    def row_norms(x, w, x_norm, w_norm):
        """Block r < B: x_norm[r] = |x[r]|; block B + r: w_norm[r] = |w[r]|."""
        nb = U(x.shape[0])
        no = U(w.shape[0])
        n = U(x.shape[1])
        buf = cuda.shared.array((2, 2, 1, cols), acc_nb)
        lane = U(cuda.threadIdx.x)
        r = U(cuda.blockIdx.x)
        if r >= nb + no:
            return
        s = acc(0)
        j = lane
        while j < n:
            v = acc(x[r, j]) if r < nb else acc(w[r - nb, j])
            s += v * v
            j += tu
        tot, _unused = team_sum2(s, acc(0), buf, 0, 0, lane)
        if lane == U(0):
            if r < nb:
                x_norm[r] = out(math.sqrt(tot))
            else:
                w_norm[r - nb] = out(math.sqrt(tot))

    return row_norms


def _clamp(v, e):
    return e if v < e else v


def _make_scale(dtype):
    acc = ACC[np.dtype(dtype)]
    out = np.dtype(dtype).type
    clamp = cuda.jit(device=True)(_clamp)

    def scale(y, x_norm, w_norm, eps):
        """y[i, j] /= max(x_norm[i], eps), then /= max(w_norm[j], eps) (one factor at a time)."""
        nb = U(y.shape[0])
        no = U(y.shape[1])
        e = acc(eps)
        k = U(cuda.grid(1))
        step = U(cuda.gridsize(1))
        while k < nb * no:
            i = k // no
            j = k - i * no
            y[i, j] = out(acc(y[i, j]) / clamp(acc(x_norm[i]), e) / clamp(acc(w_norm[j]), e))
            k += step

    return scale


def _make_grad_rows(dtype):
    acc = ACC[np.dtype(dtype)]
    acc_nb = _nb(acc)
    out = np.dtype(dtype).type
    team_sum2 = make_team_sum2(TEAM)
    cols = team_buf_cols(TEAM)
    tu = U(TEAM)
    clamp = cuda.jit(device=True)(_clamp)

    def grad_rows(dy, y, x_norm, w_norm, gs, cx, eps):
        """Block i: gs[i] = dy[i] / max(x_norm[i], eps) / max(w_norm, eps); cx[i] = sum dy*y / nx^2 (0 if
        x_norm[i] < eps)."""
        nb = U(dy.shape[0])
        no = U(dy.shape[1])
        buf = cuda.shared.array((2, 2, 1, cols), acc_nb)
        lane = U(cuda.threadIdx.x)
        i = U(cuda.blockIdx.x)
        if i >= nb:
            return
        e = acc(eps)
        nx = clamp(acc(x_norm[i]), e)
        s = acc(0)
        j = lane
        while j < no:
            d = acc(dy[i, j])
            gs[i, j] = out(d / nx / clamp(acc(w_norm[j]), e))
            s += d * acc(y[i, j])
            j += tu
        tot, _unused = team_sum2(s, acc(0), buf, 0, 0, lane)
        if lane == U(0):
            cx[i] = out(F64(tot) / (F64(nx) * F64(nx))) if acc(x_norm[i]) >= e else out(0)

    return grad_rows


def _make_col_parts(dtype):
    acc = ACC[np.dtype(dtype)]

    def col_parts(dy, y, part):
        """part[c, j] = sum over the rows of chunk c (of part.shape[0]) of dy * y (float64)."""
        nb = U(dy.shape[0])
        no = U(dy.shape[1])
        nc = U(part.shape[0])
        j = U(cuda.grid(1))
        c = U(cuda.blockIdx.y)
        if j >= no:
            return
        step = (nb + nc - U(1)) // nc
        lo = min(nb, c * step)
        hi = min(nb, lo + step)
        s = F64(0)
        i = lo
        while i < hi:
            s += F64(acc(dy[i, j]) * acc(y[i, j]))
            i += U(1)
        part[c, j] = s

    return col_parts


def _make_col_coef(dtype):
    out = np.dtype(dtype).type

    def col_coef(part, w_norm, cw, eps):
        """cw[j] = sum_c part[c, j] / max(w_norm[j], eps)^2 (0 if w_norm[j] < eps), c in order."""
        no = U(cw.shape[0])
        j = U(cuda.grid(1))
        if j >= no:
            return
        q = F64(0)
        for c in range(part.shape[0]):
            q += part[c, j]
        nw = F64(w_norm[j])
        e = F64(out(eps))
        cw[j] = out(q / (nw * nw)) if nw >= e else out(0)

    return col_coef


def _make_correct(dtype):
    acc = ACC[np.dtype(dtype)]
    out = np.dtype(dtype).type

    def correct(x, w, cx, cw, dx, dw):
        """dx[i] -= cx[i] * x[i] for i < B; dw[o] -= cw[o] * w[o]; elementwise over both."""
        nb = U(x.shape[0])
        no = U(w.shape[0])
        n = U(x.shape[1])
        k = U(cuda.grid(1))
        step = U(cuda.gridsize(1))
        while k < (nb + no) * n:
            r = k // n
            j = k - r * n
            if r < nb:
                dx[r, j] = out(acc(dx[r, j]) - acc(cx[r]) * acc(x[r, j]))
            else:
                dw[r - nb, j] = out(acc(dw[r - nb, j]) - acc(cw[r - nb]) * acc(w[r - nb, j]))
            k += step

    return correct


def _k(name, dt, make, sig, block):
    dt = np.dtype(dt)
    return cached((name, dt, block), lambda: Kernel(make(dt), sig, register_cap(block, ACC[dt])))


def _grid(k: Kernel, total: int) -> int:
    return max(1, min(-(-total // BLOCK), k.resident_blocks(BLOCK) * 4))


def cosine_linear_forward(x, w, y, x_norm, w_norm, eps, n_threads):
    """IN x (B, D), w (O, D); IN/OUT y (B, O) (holds x @ w.T, scaled in place); OUT x_norm (B,), w_norm (O,)."""
    x, w, y, x_norm, w_norm = dev(x), dev(w), dev(y), dev(x_norm), dev(w_norm)
    nb, n = x.shape
    no = w.shape[0]
    dt = np.dtype(x.dtype)
    a2, a1 = arr(dt, 2), arr(dt, 1)
    stream = current_stream()
    if nb + no > 0:
        k = _k("cos_norms", dt, _make_row_norms, f"void({a2}, {a2}, {a1}, {a1})", TEAM)
        k.launch(nb + no, TEAM, stream, x, w, x_norm, w_norm)
    if nb * no > 0:
        k = _k("cos_scale", dt, _make_scale, f"void({a2}, {a1}, {a1}, float64)", BLOCK)
        k.launch(_grid(k, nb * no), BLOCK, stream, y, x_norm, w_norm, float(eps))


def cosine_linear_backward_pre(dy, y, x_norm, w_norm, gs, cx, cw, part, eps, n_threads):
    """IN dy, y (B, O), x_norm (B,), w_norm (O,); OUT gs (B, O), cx (B,), cw (O,); SCRATCH part (chunks, O)."""
    dy, y, x_norm, w_norm, gs, cx, cw, part = (dev(a) for a in (dy, y, x_norm, w_norm, gs, cx, cw, part))
    nb, no = dy.shape
    dt = np.dtype(dy.dtype)
    a2, a1, p2 = arr(dt, 2), arr(dt, 1), arr(F64, 2)
    stream = current_stream()
    from .fill import fill

    if no == 0:
        if nb:
            fill(cx, 0.0)
        return
    if nb == 0:
        fill(cw, 0.0)
        return
    k = _k("cos_rows", dt, _make_grad_rows, f"void({a2}, {a2}, {a1}, {a1}, {a2}, {a1}, float64)", TEAM)
    k.launch(nb, TEAM, stream, dy, y, x_norm, w_norm, gs, cx, float(eps))
    k = _k("cos_cols", dt, _make_col_parts, f"void({a2}, {a2}, {p2})", BLOCK)
    k.launch((-(-no // BLOCK), part.shape[0]), BLOCK, stream, dy, y, part)
    k = _k("cos_coef", dt, _make_col_coef, f"void({p2}, {a1}, {a1}, float64)", BLOCK)
    k.launch(-(-no // BLOCK), BLOCK, stream, part, w_norm, cw, float(eps))


def cosine_linear_backward_post(x, w, cx, cw, dx, dw, n_threads):
    """IN x (B, D), w (O, D), cx (B,), cw (O,); IN/OUT dx (B, D) (holds gs @ w), dw (O, D) (holds gs.T @ x)."""
    x, w, cx, cw, dx, dw = (dev(a) for a in (x, w, cx, cw, dx, dw))
    nb, n = x.shape
    no = w.shape[0]
    if (nb + no) * n == 0:
        return
    dt = np.dtype(x.dtype)
    a2, a1 = arr(dt, 2), arr(dt, 1)
    k = _k("cos_post", dt, _make_correct, f"void({a2}, {a2}, {a1}, {a1}, {a2}, {a2})", BLOCK)
    k.launch(_grid(k, (nb + no) * n), BLOCK, current_stream(), x, w, cx, cw, dx, dw)
