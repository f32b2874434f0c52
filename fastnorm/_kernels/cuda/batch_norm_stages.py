"""BatchNorm stage kernels on the GPU (synchronized BatchNorm); launchers with the CPU kernels' signatures
(fastnorm/_kernels/cpu/_batch_norm_stages.pyx).

The reductions and the elementwise passes are channel_norm.py's (per-(n, c) segment moments or gradient
sums, one team per segment; channels-last per-column partials of row chunks, Welford in float64; the
elementwise apply y = (x - mean) * rstd * w + b and dx = rstd * w * dy + kb * (x - mean) + kc), and so is
the per-channel merge of partial moments (``merge_moments``). This file adds the per-channel kernels (one
thread per channel, float64, merges in a fixed order): the statistics, the combine of P processes'
statistics (Chan), the backward sums and the dx coefficients. Results are bitwise reproducible.

16-bit data (float16, and bfloat16 as its uint16 bits) is read and written in its dtype and computed in
float32 (float64 merges): statistics and sums are float32 then, weight/bias enter the kernels in float32
(16-bit ones are converted), and dweight/dbias are written in the dtype the caller gives them (a 16-bit
one rounds the float64 sum's float32 value once). Simulator-compatible (no warp shuffles outside
channel_norm's team sums).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..._dispatch import cuda_backend
from . import channel_kernels as CK
from . import channel_norm as CN
from ._common import ACC, Kernel, arr, cached, current_stream, kdev, launcher, register_cap, storer

F64 = np.float64
_T = 128  # threads per block of the per-channel kernels
merge_moments = CK.merge_moments


def _launch(key, make, sig, c, *args):
    kern = cached(key, lambda: Kernel(make(), sig, register_cap(_T, F64)))
    kern.launch(-(-c // _T), _T, current_stream(), *args)


def _fill(a, value=0.0):
    from .fill import fill

    if a.size:
        fill(a.reshape(a.size), value)


# ------------------------------------------------------------------------------------------ kernels
def _make_stats_finish(sdt):
    out = np.dtype(sdt).type

    def k(work, mean, m2, n, c_count, length, first):
        c = cuda.grid(1)
        if c >= c_count:
            return
        _cnt, mu, mm = merge_moments(work, c, c_count, n, length, n, work.shape[0], first)
        mean[c] = out(mu)
        m2[c] = out(mm)

    return k


def _make_gather(dtype):
    out = np.dtype(dtype).type

    def k(means, m2s, counts, rm, rv, mean, invstd, eps, momentum):
        c = cuda.grid(1)
        if c >= means.shape[1]:
            return
        cnt = F64(0)
        mu = F64(0)
        mm = F64(0)
        for p in range(means.shape[0]):
            nb = F64(counts[p])
            if nb > F64(0):
                tot = cnt + nb
                d = F64(means[p, c]) - mu
                mu += d * (nb / tot)
                mm += F64(m2s[p, c]) + d * d * (cnt * nb / tot)
                cnt = tot
        mean[c] = out(mu)
        invstd[c] = out(F64(1) / math.sqrt(mm / cnt + eps))
        if rm.size > 0:
            rm[c] = out(momentum * mu + (F64(1) - momentum) * F64(rm[c]))
            rv[c] = out(momentum * (mm / (cnt - F64(1))) + (F64(1) - momentum) * F64(rv[c]))

    return k


def _make_reduce_finish(sdt, gw, gb):
    """sum_dy, sum_dy_xmu in the statistic dtype ``sdt``; dweight, dbias written as ``gw``, ``gb``."""
    out = np.dtype(sdt).type
    stw, stb = storer(gw), storer(gb)

    def k(work, invstd, sum_dy, sum_dy_xmu, dw, db, n, c_count, first):
        c = cuda.grid(1)
        if c >= c_count:
            return
        s1 = F64(0)
        s2 = F64(0)
        parts = n if first else work.shape[0]
        for p in range(parts):
            if first:
                s1 += work[p * c_count + c, 0]
                s2 += work[p * c_count + c, 1]
            else:
                s1 += work[p, c]
                s2 += work[p, c_count + c]
        sum_dy[c] = out(s1)
        sum_dy_xmu[c] = out(s2)
        if db.size > 0:
            db[c] = stb(s1)
        if dw.size > 0:
            dw[c] = stw(s2 * F64(invstd[c]))

    return k


def _make_bwd_coef():
    def k(invstd, w, sum_dy, sum_dy_xmu, coefs, count):
        c = cuda.grid(1)
        if c >= invstd.shape[0]:
            return
        r = F64(invstd[c])
        wc = F64(w[c]) if w.size > 0 else F64(1)
        coefs[0, c] = -r * r * r * wc * F64(sum_dy_xmu[c]) / count
        coefs[1, c] = -r * wc * F64(sum_dy[c]) / count

    return k


def _partials(kind, x, dy, mean, work, dt):
    """channel_norm's per-(n, c) segment (L > 1) or per-chunk column (L == 1) partials of (N, C, L) x."""
    n, c, length = x.shape
    if length > 1:
        CN._segments(kind, x.reshape(n * c, length), dy.reshape(n * c, length), mean, work, c, 0, 1, dt)
    else:
        CN._columns(kind, x.reshape(n, c), dy.reshape(n, c), mean, work, work.shape[0], dt)


# ------------------------------------------------------------------------------------------ launchers
@launcher
def batch_norm_stats(x, mean, m2, work, n_threads):
    """IN x (N, C, L); OUT mean, m2 (C,), the statistic dtype; SCRATCH work (L > 1: (N*C, 2); L == 1:
    (chunks, >= 2C))."""
    dt = CN._dtype(x)
    x, mean, m2, work = (kdev(a) for a in (x, mean, m2, work))
    n, c, length = x.shape
    if n * length == 0:
        _fill(mean)
        _fill(m2)
        return
    _partials("moments", x, x, mean, work, dt)
    sdt = np.dtype(mean.dtype)
    sig = f"void({arr(F64, 2)}, {arr(sdt, 1)}, {arr(sdt, 1)}, int64, int64, int64, boolean)"
    _launch(("bns_stats", sdt), lambda: _make_stats_finish(sdt), sig, c, work, mean, m2, n, c, length, length > 1)


@launcher
def batch_norm_gather_stats(means, m2s, counts, running_mean, running_var, mean, invstd, eps, momentum, n_threads):
    """IN means, m2s (P, C), counts float64 (P,); IN/OUT running_mean, running_var (C,) | (0,), means'
    dtype; OUT mean, invstd (C,)."""
    means, m2s, counts, rm, rv, mean, invstd = (
        kdev(a) for a in (means, m2s, counts, running_mean, running_var, mean, invstd)
    )
    dt = np.dtype(means.dtype)
    a1 = arr(dt, 1)
    sig = f"void({arr(dt, 2)}, {arr(dt, 2)}, {arr(F64, 1)}, {a1}, {a1}, {a1}, {a1}, float64, float64)"
    _launch(
        ("bns_gather", dt), lambda: _make_gather(dt), sig, means.shape[1],
        means, m2s, counts, rm, rv, mean, invstd, float(eps), float(momentum),
    )  # fmt: skip


@launcher
def batch_norm_elemt(x, mean, invstd, weight, bias, y, coef, n_threads):
    """IN x (N, C, L), mean, invstd (C,), weight, bias (C,) | (0,); OUT y (N, C, L); coef unused."""
    A = CN._Args(x, weight, bias)
    x, mean, invstd, y = (kdev(a) for a in (x, mean, invstd, y))
    c, length = x.shape[1], x.shape[2]
    no = CN._empty((0, 0), F64)
    CN._apply(False, CN._flat(x), CN._flat(x), A.w, A.b, mean, invstd, no, CN._flat(y), c, length, 0, 1, A.dt)


@launcher
def batch_norm_backward_reduce(dy, x, mean, invstd, sum_dy, sum_dy_xmu, dweight, dbias, work, n_threads):
    """IN dy, x (N, C, L), mean, invstd (C,); OUT sum_dy, sum_dy_xmu (C,), the statistic dtype, dweight,
    dbias (C,) | (0,), any float dtype; SCRATCH work (L > 1: (N*C, 2); L == 1: (chunks, 2C))."""
    A = CN._Args(x, None, dw=dweight, db=dbias)
    dy, x, mean, invstd, s1, s2, work = (kdev(a) for a in (dy, x, mean, invstd, sum_dy, sum_dy_xmu, work))
    n, c, length = x.shape
    if n * length == 0:
        for a in (s1, s2, A.dw, A.db):
            _fill(a)
        return
    _partials("grads", x, dy, mean, work, A.dt)
    sdt = np.dtype(s1.dtype)
    s = arr(sdt, 1)
    sig = f"void({arr(F64, 2)}, {s}, {s}, {s}, {arr(A.gw, 1)}, {arr(A.gb, 1)}, int64, int64, boolean)"
    _launch(
        ("bns_reduce", sdt, A.gw, A.gb), lambda: _make_reduce_finish(sdt, A.gw, A.gb), sig, c,
        work, invstd, s1, s2, A.dw, A.db, n, c, length > 1,
    )  # fmt: skip


@launcher
def batch_norm_backward_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, dx, coef, count, n_threads):
    """IN dy, x (N, C, L), mean, invstd, sum_dy, sum_dy_xmu (C,), weight (C,) | (0,); OUT dx (N, C, L);
    coef unused (the coefficients are float64 device scratch)."""
    A = CN._Args(x, weight)
    dy, x, mean, invstd, s1, s2, dx = (kdev(a) for a in (dy, x, mean, invstd, sum_dy, sum_dy_xmu, dx))
    n, c, length = x.shape
    if n * c * length == 0:
        return
    sdt = np.dtype(ACC[A.dt])
    coefs = cuda_backend().empty((2, c), F64)
    s = arr(sdt, 1)
    sig = f"void({s}, {arr(A.pdt, 1)}, {s}, {s}, {arr(F64, 2)}, float64)"
    _launch(("bns_coef", sdt, A.pdt), _make_bwd_coef, sig, c, invstd, A.w, s1, s2, coefs, float(count))
    CN._apply(True, CN._flat(x), CN._flat(dy), A.w, A.none("p"), mean, invstd, coefs, CN._flat(dx), c, length,
              0, 1, A.dt)  # fmt: skip
