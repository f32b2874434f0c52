"""WeightNorm and CosineNorm (cosine_linear) CUDA kernels; launchers with the CPU kernels' signatures
(fastnorm/_kernels/cpu/_weight_norm.pyx).

WeightNorm on an (A, D, B) view of v: one team (block) per slice d sums its A*B values (a B-long row per a)
in fixed order, then writes its output from cache in a second pass: one launch per call. The CPU kernels'
plans (``mode``) and scratch (``part``, ``fac``) are not used: every slice is one team's whole job here,
which keeps the GPU busy when there are many slices (dim=0 of a weight matrix); a single slice
(dim=None) runs on one block (correct, not fast).

CosineLinear: the matrix products are the public layer's (``CudaBackend.matmul``); these kernels are the
row norms and output scaling (forward), the scaled gradient and norm-correction coefficients (backward, a
row kernel, then column partial sums over ``part``'s row chunks summed in order), and the corrections;
float16/bfloat16 data is computed in float32 with float32 norms and coefficients.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..._backend._detect import dtype_of as _dtype
from . import _common as cc

U = np.uint64
F64 = np.float64
TEAM = 64 if cc.SIM else 256
BLOCK = 64 if cc.SIM else 256


def _team(dtype):
    """(accumulation type, its Numba type, loader, storer, two-value team sum, its buffer columns, team size)
    of the one-team-per-block kernels for data of ``dtype``."""
    acc = cc.ACC[np.dtype(dtype)]
    kit = cc.loader(dtype), cc.storer(dtype), cc.make_team_sum2(TEAM), cc.team_buf_cols(TEAM), U(TEAM)
    return (acc, cc.nb_type(acc), *kit)


# ------------------------------------------------------------------------------------------ WeightNorm
@cuda.jit(device=True)
def _dims(a):
    """The shape of the matrix ``a`` as uint64 (unsigned index arithmetic: no negative-index wraparound)."""
    return U(a.shape[0]), U(a.shape[1])


@cuda.jit(device=True)
def _ids():
    """(lane, block): this thread's rank in its block's team and the block's index, as uint64 (one team per
    block in this module's row kernels)."""
    return U(cuda.threadIdx.x), U(cuda.blockIdx.x)


def _make_wn(dtype, backward: bool, dts=None):
    """``dtype``: v, w, dw, dv (bfloat16 as uint16 bits); ``dts`` = (g, norm, o2) dtypes (default: all
    ``dtype``): 16-bit v may come with float32 g/norm/dg."""
    acc, acc_nb, ld, st, team_sum2, cols, tu = _team(dtype)
    gdt, ndt, odt = (dtype,) * 3 if dts is None else dts
    ldg, ldn, sto = cc.loader(gdt), cc.loader(ndt), cc.storer(odt)

    def wn(a_in, v, g, norm, o1, o2):
        """forward: a_in = v, o1 = w (A, D, B), o2 = norm (D,) out; backward: a_in = dw, o1 = dv, o2 = dg."""
        A, D, B = U(v.shape[0]), U(v.shape[1]), U(v.shape[2])
        buf = cuda.shared.array((2, 2, 1, cols), acc_nb)
        lane, d = _ids()
        if d >= D:
            return
        per = A * B
        s = acc(0)
        q = lane
        while q < per:
            a = q // B
            b = q - a * B
            vv = ld(v[a, d, b])
            s += (ld(a_in[a, d, b]) * vv) if backward else vv * vv
            q += tu
        tot, _unused = team_sum2(s, acc(0), buf, 0, 0, lane)
        if backward:
            nrm = acc(ldn(norm[d]))
            dot = tot
            c1 = acc(ldg(g[d])) / nrm
            c2 = acc(ldg(g[d])) * dot / (nrm * nrm * nrm)
            if lane == U(0):
                o2[d] = sto(dot / nrm)
        else:
            nrm = acc(math.sqrt(tot))
            c1 = acc(ldg(g[d])) / nrm
            c2 = acc(0)
            if lane == U(0):
                o2[d] = sto(nrm)
        q = lane
        while q < per:
            a = q // B
            b = q - a * B
            if backward:
                o1[a, d, b] = st(c1 * ld(a_in[a, d, b]) - c2 * ld(v[a, d, b]))
            else:
                o1[a, d, b] = st(ld(v[a, d, b]) * c1)
            q += tu

    return wn


def _wn_kernel(dt, backward: bool, dts) -> cc.Kernel:
    dt = np.dtype(dt)
    dts = tuple(np.dtype(x) for x in dts)
    a3 = cc.arr(dt, 3)
    g1, n1, o1 = (cc.arr(x, 1) for x in dts)
    sig = f"void({a3}, {a3}, {g1}, {n1}, {a3}, {o1})"
    return cc.cached(
        (("wn", backward), dt, dts, TEAM),
        lambda: cc.Kernel(_make_wn(dt, backward, dts), sig, cc.register_cap(TEAM, cc.ACC[dt])),
    )


def _wn_launch(backward: bool, dt, dts, a_in, v, g, norm, o1, o2) -> None:
    """One team per slice d of (A, D, B) v (arrays as the kernels take them); o2 (D,) is 0 for empty slices."""
    a, d, b = v.shape
    if d == 0:
        return
    if a * b == 0:
        from .fill import fill

        fill(o2, 0.0)
        return
    _wn_kernel(dt, backward, dts).launch(d, TEAM, cc.current_stream(), a_in, v, g, norm, o1, o2)


@cc.launcher
def weight_norm_forward(v, g, w, norm, part, fac, mode, n_threads):
    """IN v (A, D, B), g (D,); OUT w (A, D, B), norm (D,); SCRATCH part, fac unused; mode unused.
    16-bit v: g and norm in float32 or v's dtype (each in its own)."""
    dt, dts = _dtype(v), (_dtype(g), _dtype(norm), _dtype(norm))
    v, g, w, norm = cc.kdev(v), cc.kdev(g), cc.kdev(w), cc.kdev(norm)
    _wn_launch(False, dt, dts, v, v, g, norm, w, norm)


@cc.launcher
def weight_norm_backward(dw, v, g, norm, dv, dg, part, fac, mode, n_threads):
    """IN dw, v (A, D, B), g, norm (D,); OUT dv (A, D, B), dg (D,); SCRATCH part, fac unused."""
    dt, dts = _dtype(v), (_dtype(g), _dtype(norm), _dtype(dg))
    dw, v, g, norm, dv, dg = (cc.kdev(a) for a in (dw, v, g, norm, dv, dg))
    _wn_launch(True, dt, dts, dw, v, g, norm, dv, dg)


# ------------------------------------------------------------------------------------------ CosineLinear
# Data (x, w, y, dy, gs, dx, dw) in its dtype (bfloat16 as uint16 bits), read and written through the
# loaders/storers (16-bit: computed in float32, each output rounded once); norms and coefficients (x_norm,
# w_norm, cx, cw) in ``cc.param_dtype`` (float32 for 16-bit data).
def _make_row_norms(dtype):
    acc, acc_nb, ld, _st, team_sum2, cols, tu = _team(dtype)
    out = cc.param_dtype(dtype).type

    def row_norms(x, w, x_norm, w_norm):
        """Block r < B: x_norm[r] = |x[r]|; block B + r: w_norm[r] = |w[r]|."""
        nb, n = _dims(x)
        no = U(w.shape[0])
        buf = cuda.shared.array((2, 2, 1, cols), acc_nb)
        lane, r = _ids()
        if r >= nb + no:
            return
        s = acc(0)
        j = lane
        while j < n:
            v = ld(x[r, j]) if r < nb else ld(w[r - nb, j])
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
    acc = cc.ACC[np.dtype(dtype)]
    ld, st = cc.loader(dtype), cc.storer(dtype)
    clamp = cuda.jit(device=True)(_clamp)

    def scale(y, x_norm, w_norm, eps):
        """y[i, j] /= max(x_norm[i], eps), then /= max(w_norm[j], eps) (one factor at a time)."""
        nb, no = _dims(y)
        e = acc(eps)
        k = U(cuda.grid(1))
        step = U(cuda.gridsize(1))
        while k < nb * no:
            i = k // no
            j = k - i * no
            y[i, j] = st(ld(y[i, j]) / clamp(acc(x_norm[i]), e) / clamp(acc(w_norm[j]), e))
            k += step

    return scale


def _make_grad_rows(dtype):
    acc, acc_nb, ld, st, team_sum2, cols, tu = _team(dtype)
    out = cc.param_dtype(dtype).type
    clamp = cuda.jit(device=True)(_clamp)

    def grad_rows(dy, y, x_norm, w_norm, gs, cx, eps):
        """Block i: gs[i] = dy[i] / max(x_norm[i], eps) / max(w_norm, eps); cx[i] = sum dy*y / nx^2 (0 if
        x_norm[i] < eps)."""
        nb, no = _dims(dy)
        buf = cuda.shared.array((2, 2, 1, cols), acc_nb)
        lane, i = _ids()
        if i >= nb:
            return
        e = acc(eps)
        nx = clamp(acc(x_norm[i]), e)
        s = acc(0)
        j = lane
        while j < no:
            d = ld(dy[i, j])
            gs[i, j] = st(d / nx / clamp(acc(w_norm[j]), e))
            s += d * ld(y[i, j])
            j += tu
        tot, _unused = team_sum2(s, acc(0), buf, 0, 0, lane)
        if lane == U(0):
            cx[i] = out(F64(tot) / (F64(nx) * F64(nx))) if acc(x_norm[i]) >= e else out(0)

    return grad_rows


def _make_col_parts(dtype):
    ld = cc.loader(dtype)

    def col_parts(dy, y, part):
        """part[c, j] = sum over the rows of chunk c (of part.shape[0]) of dy * y (float64)."""
        nb, no = _dims(dy)
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
            s += F64(ld(dy[i, j]) * ld(y[i, j]))
            i += U(1)
        part[c, j] = s

    return col_parts


def _make_col_coef(dtype):
    out = cc.param_dtype(dtype).type

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
    acc = cc.ACC[np.dtype(dtype)]
    ld, st = cc.loader(dtype), cc.storer(dtype)

    def correct(x, w, cx, cw, dx, dw):
        """dx[i] -= cx[i] * x[i] for i < B; dw[o] -= cw[o] * w[o]; elementwise over both."""
        nb, n = _dims(x)
        no = U(w.shape[0])
        k = U(cuda.grid(1))
        step = U(cuda.gridsize(1))
        while k < (nb + no) * n:
            r = k // n
            j = k - r * n
            if r < nb:
                dx[r, j] = st(ld(dx[r, j]) - acc(cx[r]) * ld(x[r, j]))
            else:
                dw[r - nb, j] = st(ld(dw[r - nb, j]) - acc(cw[r - nb]) * ld(w[r - nb, j]))
            k += step

    return correct


def _k(name, dt, make, arrays: str, scalars: str, block):
    """The kernel ``make(dt)`` compiled for its arguments: ``arrays`` spelled with D (a data matrix),
    S (a norm/coefficient vector), P (the float64 partials), then ``scalars``."""
    dt = np.dtype(dt)
    kinds = {"D": cc.arr(dt, 2), "S": cc.arr(cc.param_dtype(dt), 1), "P": cc.arr(F64, 2)}
    sig = "void(" + ", ".join([kinds[a] for a in arrays] + ([scalars] if scalars else [])) + ")"
    return cc.cached((name, dt, block), lambda: cc.Kernel(make(dt), sig, cc.register_cap(block, cc.ACC[dt])))


def _grid(k: cc.Kernel, total: int) -> int:
    return max(1, min(-(-total // BLOCK), k.resident_blocks(BLOCK) * 4))


@cc.launcher
def cosine_linear_forward(x, w, y, x_norm, w_norm, eps, n_threads):
    """IN x (B, D), w (O, D); IN/OUT y (B, O) (holds x @ w.T, scaled in place); OUT x_norm (B,), w_norm (O,)
    in ``cc.param_dtype`` of x's dtype (float32 for 16-bit x)."""
    dt = _dtype(x)
    x, w, y, x_norm, w_norm = (cc.kdev(a) for a in (x, w, y, x_norm, w_norm))
    nb, n = x.shape
    no = w.shape[0]
    stream = cc.current_stream()
    if nb + no > 0:
        k = _k("cos_norms", dt, _make_row_norms, "DDSS", "", TEAM)
        k.launch(nb + no, TEAM, stream, x, w, x_norm, w_norm)
    if nb * no > 0:
        k = _k("cos_scale", dt, _make_scale, "DSS", "float64", BLOCK)
        k.launch(_grid(k, nb * no), BLOCK, stream, y, x_norm, w_norm, float(eps))


@cc.launcher
def cosine_linear_backward_pre(dy, y, x_norm, w_norm, gs, cx, cw, part, eps, n_threads):
    """IN dy, y (B, O), x_norm (B,), w_norm (O,); OUT gs (B, O), cx (B,), cw (O,); SCRATCH part (chunks, O).
    Norms and cx, cw in ``cc.param_dtype`` of dy's dtype."""
    dt = _dtype(dy)
    dy, y, x_norm, w_norm, gs, cx, cw, part = (cc.kdev(a) for a in (dy, y, x_norm, w_norm, gs, cx, cw, part))
    nb, no = dy.shape
    stream = cc.current_stream()
    from .fill import fill

    if no == 0:
        if nb:
            fill(cx, 0.0)
        return
    if nb == 0:
        fill(cw, 0.0)
        return
    k = _k("cos_rows", dt, _make_grad_rows, "DDSSDS", "float64", TEAM)
    k.launch(nb, TEAM, stream, dy, y, x_norm, w_norm, gs, cx, float(eps))
    k = _k("cos_cols", dt, _make_col_parts, "DDP", "", BLOCK)
    k.launch((-(-no // BLOCK), part.shape[0]), BLOCK, stream, dy, y, part)
    k = _k("cos_coef", dt, _make_col_coef, "PSS", "float64", BLOCK)
    k.launch(-(-no // BLOCK), BLOCK, stream, part, w_norm, cw, float(eps))


@cc.launcher
def cosine_linear_backward_post(x, w, cx, cw, dx, dw, n_threads):
    """IN x (B, D), w (O, D), cx (B,), cw (O,); IN/OUT dx (B, D) (holds gs @ w), dw (O, D) (holds gs.T @ x)."""
    dt = _dtype(x)
    x, w, cx, cw, dx, dw = (cc.kdev(a) for a in (x, w, cx, cw, dx, dw))
    nb, n = x.shape
    no = w.shape[0]
    if (nb + no) * n == 0:
        return
    k = _k("cos_post", dt, _make_correct, "DDSSDD", "", BLOCK)
    k.launch(_grid(k, (nb + no) * n), BLOCK, cc.current_stream(), x, w, cx, cw, dx, dw)
