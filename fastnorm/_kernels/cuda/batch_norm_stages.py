"""BatchNorm stage kernels on the GPU (synchronized BatchNorm); launchers with the CPU kernels' signatures
(fastnorm/_kernels/cpu/_batch_norm_stages.pyx).

The reductions and the elementwise passes are channel_norm.py's (per-(n, c) segment moments or gradient
sums, one team per segment; channels-last per-column partials of row chunks, Welford in float64; the
elementwise apply y = (x - mean) * rstd * w + b and dx = rstd * w * dy + kb * (x - mean) + kc). This file
adds the per-channel kernels (one thread per channel, float64, merges in a fixed order): the statistics
merge, the combine of P processes' statistics (Chan), the backward sums and the dx coefficients. Results
are bitwise reproducible. Simulator-compatible (no warp shuffles outside channel_norm's team sums).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..._dispatch import cuda_backend
from . import channel_norm as CN
from ._common import Kernel, arr, cached, current_stream, dev, empty_device, register_cap

F64 = np.float64
_T = 128  # threads per block of the per-channel kernels


def _launch(key, make, sig, c, *args):
    kern = cached(key, lambda: Kernel(make(), sig, register_cap(_T, F64)))
    kern.launch(-(-c // _T), _T, current_stream(), *args)


def _fill(a, value=0.0):
    from .fill import fill

    if a.size:
        fill(a.reshape(a.size), value)


# ------------------------------------------------------------------------------------------ kernels
def _make_stats_finish(dtype):
    out = np.dtype(dtype).type

    def k(work, mean, m2, n, c_count, length, first):
        c = cuda.grid(1)
        if c >= c_count:
            return
        cnt = F64(0)
        mu = F64(0)
        mm = F64(0)
        chunks = work.shape[0]
        parts = n if first else chunks
        step = (n + chunks - 1) // chunks
        for p in range(parts):
            if first:
                nb = F64(length)
                mb = work[p * c_count + c, 0]
                m2b = work[p * c_count + c, 1]
            else:
                lo = min(n, p * step)
                nb = F64(min(n, lo + step) - lo)
                mb = work[p, c]
                m2b = work[p, c_count + c]
            if nb > F64(0):
                tot = cnt + nb
                d = mb - mu
                mu += d * (nb / tot)
                mm += m2b + d * d * (cnt * nb / tot)
                cnt = tot
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


def _make_reduce_finish(dtype):
    out = np.dtype(dtype).type

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
            db[c] = out(s1)
        if dw.size > 0:
            dw[c] = out(s2 * F64(invstd[c]))

    return k


def _make_bwd_coef(dtype):
    def k(invstd, w, sum_dy, sum_dy_xmu, coefs, count):
        c = cuda.grid(1)
        if c >= invstd.shape[0]:
            return
        r = F64(invstd[c])
        wc = F64(w[c]) if w.size > 0 else F64(1)
        coefs[0, c] = -r * r * r * wc * F64(sum_dy_xmu[c]) / count
        coefs[1, c] = -r * wc * F64(sum_dy[c]) / count

    return k


# ------------------------------------------------------------------------------------------ launchers
def batch_norm_stats(x, mean, m2, work, n_threads):
    """IN x (N, C, L); OUT mean, m2 (C,); SCRATCH work (L > 1: (N*C, 2); L == 1: (chunks, >= 2C))."""
    x, mean, m2, work = (dev(a) for a in (x, mean, m2, work))
    n, c, length = x.shape
    if n * length == 0:
        _fill(mean)
        _fill(m2)
        return
    first = length > 1
    if first:
        x2 = x.reshape(n * c, length)
        CN._segments("moments", x2, x2, mean, work, c, 0, 1)
    else:
        x2 = x.reshape(n, c)
        CN._columns("moments", x2, x2, mean, work, work.shape[0])
    dt = np.dtype(x.dtype)
    sig = f"void({arr(F64, 2)}, {arr(dt, 1)}, {arr(dt, 1)}, int64, int64, int64, boolean)"
    _launch(("bns_stats", dt), lambda: _make_stats_finish(dt), sig, c, work, mean, m2, n, c, length, first)


def batch_norm_gather_stats(means, m2s, counts, running_mean, running_var, mean, invstd, eps, momentum, n_threads):
    """IN means, m2s (P, C), counts float64 (P,); IN/OUT running_mean, running_var (C,) | (0,);
    OUT mean, invstd (C,)."""
    means, m2s, counts, rm, rv, mean, invstd = (
        dev(a) for a in (means, m2s, counts, running_mean, running_var, mean, invstd)
    )
    dt = np.dtype(means.dtype)
    a1 = arr(dt, 1)
    sig = f"void({arr(dt, 2)}, {arr(dt, 2)}, {arr(F64, 1)}, {a1}, {a1}, {a1}, {a1}, float64, float64)"
    _launch(
        ("bns_gather", dt), lambda: _make_gather(dt), sig, means.shape[1],
        means, m2s, counts, rm, rv, mean, invstd, float(eps), float(momentum),
    )  # fmt: skip


def batch_norm_elemt(x, mean, invstd, weight, bias, y, coef, n_threads):
    """IN x (N, C, L), mean, invstd (C,), weight, bias (C,) | (0,); OUT y (N, C, L); coef unused."""
    x, mean, invstd, w, b, y = (dev(a) for a in (x, mean, invstd, weight, bias, y))
    n, c, length = x.shape
    no = empty_device((0, 0), F64)
    CN._apply(False, CN._flat(x), CN._flat(x), w, b, mean, invstd, no, CN._flat(y), c, length, 0, 1)


def batch_norm_backward_reduce(dy, x, mean, invstd, sum_dy, sum_dy_xmu, dweight, dbias, work, n_threads):
    """IN dy, x (N, C, L), mean, invstd (C,); OUT sum_dy, sum_dy_xmu (C,), dweight, dbias (C,) | (0,);
    SCRATCH work (L > 1: (N*C, 2); L == 1: (chunks, 2C))."""
    dy, x, mean, invstd, s1, s2, dw, db, work = (
        dev(a) for a in (dy, x, mean, invstd, sum_dy, sum_dy_xmu, dweight, dbias, work)
    )
    n, c, length = x.shape
    if n * length == 0:
        for a in (s1, s2, dw, db):
            _fill(a)
        return
    first = length > 1
    if first:
        CN._segments("grads", x.reshape(n * c, length), dy.reshape(n * c, length), mean, work, c, 0, 1)
    else:
        CN._columns("grads", x.reshape(n, c), dy.reshape(n, c), mean, work, work.shape[0])
    dt = np.dtype(x.dtype)
    a1 = arr(dt, 1)
    sig = f"void({arr(F64, 2)}, {a1}, {a1}, {a1}, {a1}, {a1}, int64, int64, boolean)"
    _launch(("bns_reduce", dt), lambda: _make_reduce_finish(dt), sig, c, work, invstd, s1, s2, dw, db, n, c, first)


def batch_norm_backward_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, dx, coef, count, n_threads):
    """IN dy, x (N, C, L), mean, invstd, sum_dy, sum_dy_xmu (C,), weight (C,) | (0,); OUT dx (N, C, L);
    coef unused (the coefficients are float64 device scratch)."""
    dy, x, mean, invstd, w, s1, s2, dx = (dev(a) for a in (dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, dx))
    n, c, length = x.shape
    if n * c * length == 0:
        return
    dt = np.dtype(x.dtype)
    coefs = cuda_backend().empty((2, c), F64)
    a1 = arr(dt, 1)
    sig = f"void({a1}, {a1}, {a1}, {a1}, {arr(F64, 2)}, float64)"
    _launch(("bns_coef", dt), lambda: _make_bwd_coef(dt), sig, c, invstd, w, s1, s2, coefs, float(count))
    CN._apply(True, CN._flat(x), CN._flat(dy), w, empty_device((0,), dt), mean, invstd, coefs, CN._flat(dx), c,
              length, 0, 1)  # fmt: skip
