"""Exact 1-D Wasserstein distance CUDA kernels (``wasserstein_1d``); launchers with the CPU kernels' signatures
(fastnorm/_kernels/cpu/_transport.pyx). Re-exported by ``transport.py``.

``wasserstein_1d``: the rows are sorted on the device first (``sort_rows``: a bitonic sort of each row's
index array, one launch per compare-exchange stage, padded to a power of two with entries that sort last;
NaN sorts after every number and ties go by index, so the order is total and the result deterministic),
then one thread per batch row walks the two sorted cumulative-weight sequences (the CPU kernel's merge walk,
``O(n + m)`` per row, in float64). ``unsort_rows`` scatters the backward's sorted-order gradients back.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ._common import SIM, Kernel, arr, cached, current_stream, dev, empty_device, launcher

# threads per block (a power of two); the simulator runs each thread as a Python thread, and rows longer than 8
# exercise the strided loops there at small shapes
BLOCK = 8 if SIM else 256
F64 = np.float64


def _grid1(total: int) -> int:
    return max(1, min(-(-total // BLOCK), 4096))


def stream_sync(stream) -> None:
    if stream:
        stream.synchronize()
    else:
        cuda.synchronize()


@cuda.jit(device=True)
def _after(x, r, a, b, n):
    """Whether entry a of row r sorts after entry b: indices >= n (padding) last, then NaN, then by value,
    ties by index."""
    if a >= n or b >= n:
        if a >= n and b >= n:
            return a > b
        return a >= n
    xa = x[r, a]
    xb = x[r, b]
    na = xa != xa
    nb = xb != xb
    if na or nb:
        if na and nb:
            return a > b
        return na
    if xa != xb:
        return xa > xb
    return a > b


def _iota(idx):
    """idx[r, c] = c, grid-stride."""
    rows, width = idx.shape
    g = cuda.grid(1)
    step = cuda.gridsize(1)
    while g < rows * width:
        r = g // width
        idx[r, g - r * width] = g - r * width
        g += step


def _bitonic_stage(x, idx, k, j):
    """One compare-exchange stage (k, j) of the bitonic sort of every row's index array by x, grid-stride over
    the row's width / 2 pairs (i, i + j) with bit j of i clear; ascending where bit k of i is clear."""
    rows, width = idx.shape
    n = x.shape[1]
    half = width // 2
    g = cuda.grid(1)
    step = cuda.gridsize(1)
    while g < rows * half:
        r = g // half
        q = g - r * half
        i = (q // j) * 2 * j + (q % j)
        l_ = i + j
        a = idx[r, i]
        b = idx[r, l_]
        if (i & k) == 0:
            swap = _after(x, r, a, b, n)
        else:
            swap = _after(x, r, b, a, n)
        if swap:
            idx[r, i] = b
            idx[r, l_] = a
        g += step


def _gather(x, w, idx, xs, ws):
    """xs[r, c] = x[r, idx[r, c]] (and ws from w unless w is empty) for c < n, grid-stride."""
    rows, n = xs.shape
    want = ws.size > 0
    g = cuda.grid(1)
    step = cuda.gridsize(1)
    while g < rows * n:
        r = g // n
        c = g - r * n
        s = idx[r, c]
        xs[r, c] = x[r, s]
        if want:
            ws[r, c] = w[r, s]
        g += step


def _scatter(src, idx, out):
    """out[r, idx[r, c]] = src[r, c] for c < n (the inverse of _gather), grid-stride."""
    rows, n = src.shape
    g = cuda.grid(1)
    step = cuda.gridsize(1)
    while g < rows * n:
        r = g // n
        c = g - r * n
        out[r, idx[r, c]] = src[r, c]
        g += step


@cuda.jit(device=True)
def _ground(d, p, pk):
    """|d|^p (pk: 1 for p == 1, 2 for p == 2, 0 otherwise)."""
    if pk == 1:
        return abs(d)
    if pk == 2:
        return d * d
    return math.pow(abs(d), p)


@cuda.jit(device=True)
def _dground(d, p, pk):
    """d/dd |d|^p = p |d|^(p-1) sign(d), with sign(0) = 0."""
    sg = 1.0 if d > 0 else (-1.0 if d < 0 else 0.0)
    if pk == 1:
        return sg
    if pk == 2:
        return 2.0 * d
    return sg * p * math.pow(abs(d), p - 1.0)


@cuda.jit(device=True)
def _row_sum(w, r):
    s = 0.0
    for i in range(w.shape[1]):
        s += F64(w[r, i])
    return s


@cuda.jit(device=True)
def _walk(u, v, uw, vw, r, p, pk, grad, g, du, dv, gu, gv):
    """The merge walk over row r of the sorted u, v (the CPU kernel's _w1d_row); returns W_p^p. With grad, also
    g * dW/du, g * dW/dv (sorted order) and, for weighted sides, dW/dU_i, dW/dV_j into gu, gv."""
    n = u.shape[1]
    m = v.shape[1]
    wu = uw.size > 0
    wv = vw.size > 0
    su = 1.0
    sv = 1.0
    cu = 0.0
    cv = 0.0
    if wu:
        su = _row_sum(uw, r)
        cu = F64(uw[r, 0])
    if wv:
        sv = _row_sum(vw, r)
        cv = F64(vw[r, 0])
    if grad:
        for k in range(n):
            du[r, k] = 0
        for k in range(m):
            dv[r, k] = 0
    i = 0
    j = 0
    qprev = 0.0
    total = 0.0
    while i < n - 1 or j < m - 1:
        qu = min(cu / su, 1.0) if wu else F64(i + 1) / n
        qv = min(cv / sv, 1.0) if wv else F64(j + 1) / m
        if j == m - 1:
            take_u = True
        elif i == n - 1:
            take_u = False
        elif not wu and not wv:
            take_u = np.int64(i + 1) * m <= np.int64(j + 1) * n
        else:
            take_u = qu <= qv
        q = qu if take_u else qv
        if q < qprev:
            q = qprev
        d = F64(u[r, i]) - F64(v[r, j])
        c = _ground(d, p, pk)
        total += (q - qprev) * c
        if grad:
            dc = g * (q - qprev) * _dground(d, p, pk)
            du[r, i] += dc
            dv[r, j] -= dc
            if take_u and wu:
                gu[r, i] = c - _ground(F64(u[r, i + 1]) - F64(v[r, j]), p, pk)
            elif not take_u and wv:
                gv[r, j] = c - _ground(F64(u[r, i]) - F64(v[r, j + 1]), p, pk)
        if take_u:
            i += 1
            if wu:
                cu += F64(uw[r, i])
        else:
            j += 1
            if wv:
                cv += F64(vw[r, j])
        qprev = q
    d = F64(u[r, n - 1]) - F64(v[r, m - 1])
    if qprev < 1.0:
        total += (1.0 - qprev) * _ground(d, p, pk)
        if grad:
            dc = g * (1.0 - qprev) * _dground(d, p, pk)
            du[r, n - 1] += dc
            dv[r, m - 1] -= dc
    return total


@cuda.jit(device=True)
def _weight_grad(w, r, gw, g, dw):
    """dw_l = g * (sum_{i >= l} gw_i - sum_i gw_i U_i) / S with U_i = cumsum(w)_i / S (gw_(n-1) = 0)."""
    n = w.shape[1]
    s = _row_sum(w, r)
    c = 0.0
    dot = 0.0
    gw[r, n - 1] = 0.0
    for i in range(n):
        c += F64(w[r, i])
        dot += gw[r, i] * min(c / s, 1.0)
    acc = 0.0
    for i in range(n - 1, -1, -1):
        acc += gw[r, i]
        dw[r, i] = g * (acc - dot) / s


def _make_w1d_forward(out_type):
    def w1d_forward(u, v, uw, vw, out, p, pk, unused):
        """Thread r: out[r] = W_p^p of row r."""
        r = cuda.grid(1)
        if r < u.shape[0]:
            out[r] = out_type(_walk(u, v, uw, vw, r, p, pk, False, 0.0, unused, unused, unused, unused))

    return w1d_forward


def _w1d_backward(grad, u, v, uw, vw, du, dv, duw, dvw, gu, gv, p, pk):
    """Thread r: the sorted-order gradients of grad[r] * W_p^p of row r."""
    r = cuda.grid(1)
    if r < u.shape[0]:
        g = F64(grad[r])
        _walk(u, v, uw, vw, r, p, pk, True, g, du, dv, gu, gv)
        if uw.size > 0:
            _weight_grad(uw, r, gu, g, duw)
        if vw.size > 0:
            _weight_grad(vw, r, gv, g, dvw)


def _w1d_kernels(dt):
    dt = np.dtype(dt)
    c2, c1, d2, i2 = arr(dt, 2), arr(dt, 1), arr(F64, 2), "int32[:, ::1]"

    def build():
        return {
            "iota": Kernel(_iota, f"void({i2})"),
            "stage": Kernel(_bitonic_stage, f"void({c2}, {i2}, int64, int64)"),
            "gather": Kernel(_gather, f"void({c2}, {c2}, {i2}, {c2}, {c2})"),
            "scatter": Kernel(_scatter, f"void({c2}, {i2}, {c2})"),
            "fwd": Kernel(_make_w1d_forward(dt.type), f"void({c2}, {c2}, {c2}, {c2}, {c1}, float64, int64, {c2})"),
            "bwd": Kernel(
                _w1d_backward,
                f"void({c1}, {c2}, {c2}, {c2}, {c2}, {c2}, {c2}, {c2}, {c2}, {d2}, {d2}, float64, int64)",
            ),
        }

    return cached(("wasserstein_1d", dt, BLOCK), build)


def _pkind(p: float) -> int:
    return 1 if p == 1.0 else (2 if p == 2.0 else 0)


@launcher
def sort_width(n: int) -> int:
    """Columns of the index array ``sort_rows`` needs for rows of n values (n rounded up to a power of two)."""
    return 1 << max(0, int(n) - 1).bit_length()


@launcher
def sort_rows(x, w, xs, ws, idx, n_threads):
    """IN x (B, n), w (B, n) | (0, 0); OUT xs (B, n) x's rows sorted ascending (NaN last), ws (B, n) | (0, 0)
    w in the same order, idx (B, sort_width(n)) int32 the sorter (idx[r, c] = source column of xs[r, c])."""
    x, w, xs, ws, idx = dev(x), dev(w), dev(xs), dev(ws), dev(idx)
    rows, width = idx.shape
    if rows == 0 or x.shape[1] == 0:
        return
    k = _w1d_kernels(x.dtype)
    stream = current_stream()
    k["iota"].launch(_grid1(rows * width), BLOCK, stream, idx)
    pairs = _grid1(rows * (width // 2))
    size = 2
    while size <= width:
        j = size // 2
        while j > 0:
            k["stage"].launch(pairs, BLOCK, stream, x, idx, size, j)
            j //= 2
        size *= 2
    k["gather"].launch(_grid1(rows * x.shape[1]), BLOCK, stream, x, w, idx, xs, ws)


@launcher
def unsort_rows(src, idx, out, n_threads):
    """IN src (B, n) in sorted order, idx (B, sort_width(n)) from sort_rows; OUT out (B, n) in the original order."""
    src, idx, out = dev(src), dev(idx), dev(out)
    if src.size == 0:
        return
    _w1d_kernels(src.dtype)["scatter"].launch(_grid1(src.size), BLOCK, current_stream(), src, idx, out)


@launcher
def wasserstein_1d(u, v, u_weights, v_weights, out, p, n_threads):
    """The CPU kernel's signature: IN u (B, n), v (B, m) rows sorted, weights in the same order or (0, 0);
    OUT out (B,) W_p^p per row. One thread per row."""
    u, v, uw, vw, out = dev(u), dev(v), dev(u_weights), dev(v_weights), dev(out)
    rows = u.shape[0]
    if rows == 0:
        return
    k = _w1d_kernels(u.dtype)
    unused = empty_device((0, 0), u.dtype)
    k["fwd"].launch(-(-rows // BLOCK), BLOCK, current_stream(), u, v, uw, vw, out, float(p), _pkind(p), unused)


@launcher
def wasserstein_1d_backward(grad, u, v, u_weights, v_weights, du, dv, du_weights, dv_weights, gu, gv, p, n_threads):
    """The CPU kernel's signature: IN grad (B,), sorted u, v, weights or (0, 0); OUT du, dv, du_weights,
    dv_weights (sorted order; (0, 0) where a side is unweighted); SCRATCH gu, gv (B, n), (B, m) float64 or
    (0, 0)."""
    grad, u, v, uw, vw = dev(grad), dev(u), dev(v), dev(u_weights), dev(v_weights)
    du, dv, duw, dvw, gu, gv = dev(du), dev(dv), dev(du_weights), dev(dv_weights), dev(gu), dev(gv)
    rows = u.shape[0]
    if rows == 0:
        return
    k = _w1d_kernels(u.dtype)
    k["bwd"].launch(
        -(-rows // BLOCK), BLOCK, current_stream(), grad, u, v, uw, vw, du, dv, duw, dvw, gu, gv, float(p), _pkind(p)
    )
