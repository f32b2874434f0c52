"""BatchNorm split into stages (synchronized / multi-process BatchNorm) on an (N, C, L) view.

Five kernels, each one pass over its arrays: local statistics (mean, M2 per channel), combine of P
processes' statistics (Chan's parallel variance), apply (y from given mean and invstd), backward reduce
(per-channel sum(dy), sum(dy * (x - mean))) and backward apply (dx from globally reduced sums).
The moments and gradient sums are ``fastnorm_channel.h``'s, in double, merged in a fixed order, so
results do not depend on the thread count (channels-last: bitwise for a given thread count).

- L > 1 (N, C, *spatial): every (n, c) slice of L contiguous values is one task (parallel over the N*C
  slices); per-slice results go to ``work`` (N*C, 2) and are merged per channel in order of n.
- L == 1 (channels-last (M, C) or (N, C)): the rows are cut into ``work.shape[0]`` contiguous chunks,
  each chunk fills per-channel partial rows in ``work``, merged over the chunks in order.
No allocation, no validation here: the public layer (fastnorm/batch_norm_stages.py) has checked every
shape, dtype and buffer.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdint cimport uint16_t

from ._fn_channel cimport *  # the channel family's declarations and shared inline helpers


# ------------------------------------------------------------------------------------------ helpers
cdef inline void _rows_moments(const data_t *x, Py_ssize_t t, Py_ssize_t nt, Py_ssize_t M, Py_ssize_t C,
                               double *wk, int fmt) noexcept nogil:
    """Channels-last chunk t of nt of the M rows: wk = [mean (C) | M2 (C) | scratch (3C)]."""
    cdef Py_ssize_t lo, hi
    chunk_bounds(M, t, nt, &lo, &hi)
    if hi <= lo:
        return
    if data_t is float:
        fn_col_moments_f(x + lo * C, hi - lo, C, wk, wk + C, wk + 2 * C, wk + 3 * C, wk + 4 * C)
    elif data_t is double:
        fn_col_moments_d(x + lo * C, hi - lo, C, wk, wk + C, wk + 2 * C, wk + 3 * C, wk + 4 * C)
    else:
        fn_col_moments_h(fmt, x + lo * C, hi - lo, C, C, wk, wk + C, wk + 2 * C, wk + 3 * C, wk + 4 * C)


cdef inline void _rows_grad_sums(const data_t *dy, const data_t *x, Py_ssize_t t, Py_ssize_t nt,
                                 Py_ssize_t M, Py_ssize_t C, const floating *mean, double *wk,
                                 int fmt) noexcept nogil:
    """Channels-last chunk t of nt of the M rows: wk = [sum dy (C) | sum dy * (x - mean) (C)]."""
    cdef Py_ssize_t c, lo, hi
    chunk_bounds(M, t, nt, &lo, &hi)
    for c in range(2 * C):
        wk[c] = 0.0
    if hi <= lo:
        return
    if data_t is float and floating is float:
        fn_col_grad_sums_f(dy + lo * C, x + lo * C, hi - lo, C, mean, wk, wk + C)
    elif data_t is double and floating is double:
        fn_col_grad_sums_d(dy + lo * C, x + lo * C, hi - lo, C, mean, wk, wk + C)
    elif data_t is uint16_t and floating is float:
        fn_col_grad_sums_h(fmt, dy + lo * C, x + lo * C, hi - lo, C, C, mean, wk, wk + C)


cdef inline void _slice_apply(const data_t *dy, const data_t *x, data_t *out, Py_ssize_t L,
                              const floating *coef, Py_ssize_t ld, Py_ssize_t c, bint backward,
                              int fmt) noexcept nogil:
    """One (n, c) slice: y = (x - mu) * a + b, or dx = ka * dy + kb * (x - mu) + kc (coef rows of ld)."""
    cdef floating mu = coef[c], k1 = coef[ld + c], k2 = coef[2 * ld + c], k3 = coef[3 * ld + c]
    if backward:
        seg_apply_bwd(dy, x, out, L, mu, k1, k2, k3, True, False, fmt)
    else:
        seg_apply_fwd(x, out, L, mu, k1, k2, False, fmt)


cdef inline void _rows_apply(const data_t *dy, const data_t *x, data_t *out, Py_ssize_t t, Py_ssize_t nt,
                             Py_ssize_t M, Py_ssize_t C, const floating *coef, Py_ssize_t ld,
                             bint backward, int fmt) noexcept nogil:
    """Channels-last chunk t of nt of the M rows of C channels; the same formulas per channel."""
    cdef Py_ssize_t lo, hi, r, c
    cdef const floating *mu = coef
    cdef const floating *ka = coef + ld
    cdef const floating *kb = coef + 2 * ld
    cdef const floating *kc = coef + 3 * ld
    chunk_bounds(M, t, nt, &lo, &hi)
    if hi <= lo:
        return
    if data_t is uint16_t and floating is float:
        if backward:
            fn_rows_bwd_h(fmt, dy + lo * C, x + lo * C, out + lo * C, hi - lo, C, mu, ka, kb, kc, 1, 0)
        else:
            fn_rows_fwd_h(fmt, x + lo * C, out + lo * C, hi - lo, C, mu, ka, kb, 0)
    elif (data_t is float and floating is float) or (data_t is double and floating is double):
        if backward:
            for r in range(lo, hi):
                for c in range(C):
                    out[r * C + c] = ka[c] * dy[r * C + c] + kb[c] * (x[r * C + c] - mu[c]) + kc[c]
        else:
            for r in range(lo, hi):
                for c in range(C):
                    out[r * C + c] = (x[r * C + c] - mu[c]) * ka[c] + kb[c]


cdef inline void _apply(const data_t *dy, const data_t *x, data_t *out, Py_ssize_t N, Py_ssize_t C,
                        Py_ssize_t L, const floating *coef, Py_ssize_t ld, bint backward, int fmt,
                        int n_threads) noexcept nogil:
    cdef Py_ssize_t s, t, S = N * C
    if L > 1:
        if n_threads <= 1:
            for s in range(S):
                _slice_apply(dy + s * L if backward else NULL, x + s * L, out + s * L, L, coef, ld, s % C,
                             backward, fmt)
        else:
            for s in prange(S, schedule="static", num_threads=n_threads):
                _slice_apply(dy + s * L if backward else NULL, x + s * L, out + s * L, L, coef, ld, s % C,
                             backward, fmt)
    elif n_threads <= 1:
        _rows_apply(dy, x, out, 0, 1, N, C, coef, ld, backward, fmt)
    else:
        for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
            _rows_apply(dy, x, out, t, n_threads, N, C, coef, ld, backward, fmt)


cdef inline void _merge_parts(const double *means, const double *m2s, Py_ssize_t parts, Py_ssize_t stride,
                              Py_ssize_t N, Py_ssize_t L, double *mean, double *m2) noexcept nogil:
    """Chan's merge, in order, of ``parts`` (mean, M2) pairs means[p * stride], m2s[p * stride]: L > 1,
    one per (n, c) slice of L values; L == 1, one per chunk p of the N rows cut into ``parts`` chunks."""
    cdef Py_ssize_t p, lo, hi
    cdef double cnt = 0.0, mu = 0.0, mm = 0.0
    for p in range(parts):
        if L > 1:
            lo, hi = 0, L
        else:
            chunk_bounds(N, p, parts, &lo, &hi)
        if hi > lo:
            fn_chan_merge(&cnt, &mu, &mm, <double>(hi - lo), means[p * stride], m2s[p * stride])
    mean[0] = mu
    m2[0] = mm


cdef inline void _partials(const data_t *gp, const data_t *xp, const floating *mp, Py_ssize_t N, Py_ssize_t C,
                           Py_ssize_t L, double *wp, Py_ssize_t nch, bint grads, int fmt,
                           int n_threads) noexcept nogil:
    """The partial results of one pass over (N, C, L) x (and dy): moments of x, or (``grads``) sum(dy) and
    sum(dy * (x - mean)). L > 1: one (n, c) slice per task, pairs in wp[2 * s]; L == 1: the rows cut into
    ``nch`` chunks, chunk t's rows of C values at wp + t * (5C moments | 2C sums)."""
    cdef Py_ssize_t s, t, S = N * C, ld = (2 if grads else 5) * C
    if L > 1:
        if n_threads <= 1:
            for s in range(S):
                _slice_part(gp, xp, mp, s, C, L, wp, grads, fmt)
        else:
            for s in prange(S, schedule="static", num_threads=n_threads):
                _slice_part(gp, xp, mp, s, C, L, wp, grads, fmt)
    elif n_threads <= 1 or nch <= 1:
        for t in range(nch):
            _chunk_part(gp, xp, mp, t, nch, N, C, wp + t * ld, grads, fmt)
    else:
        for t in prange(nch, schedule="static", chunksize=1, num_threads=n_threads):
            _chunk_part(gp, xp, mp, t, nch, N, C, wp + t * ld, grads, fmt)


cdef inline void _slice_part(const data_t *gp, const data_t *xp, const floating *mp, Py_ssize_t s, Py_ssize_t C,
                             Py_ssize_t L, double *wp, bint grads, int fmt) noexcept nogil:
    if grads:
        seg_grad_sums(gp + s * L, xp + s * L, <double>mp[s % C], L, wp + 2 * s, wp + 2 * s + 1, fmt)
    else:
        seg_moments(xp + s * L, L, wp + 2 * s, wp + 2 * s + 1, fmt)


cdef inline void _chunk_part(const data_t *gp, const data_t *xp, const floating *mp, Py_ssize_t t, Py_ssize_t nch,
                             Py_ssize_t N, Py_ssize_t C, double *wk, bint grads, int fmt) noexcept nogil:
    if grads:
        _rows_grad_sums(gp, xp, t, nch, N, C, mp, wk, fmt)
    else:
        _rows_moments(xp, t, nch, N, C, wk, fmt)


# ------------------------------------------------------------------------------------------ kernels
def _batch_norm_stats(const data_t[:, :, ::1] x,            # IN  (N, C, L)
                      floating[::1] mean,                   # OUT (C,)
                      floating[::1] m2,                     # OUT (C,)
                      double[:, ::1] work,                  # SCRATCH L > 1: (N*C, 2); L == 1: (chunks, 5C)
                      int fmt, int n_threads):
    """mean and M2 = sum((x - mean)^2) per channel over the N*L values of (N, C, L) x; 0 when N*L == 0."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c, nch
    cdef const data_t *xp
    cdef double *wp
    cdef double mu, mm
    if N * L == 0:
        for c in range(C):
            mean[c] = 0
            m2[c] = 0
        return
    xp = &x[0, 0, 0]
    wp = &work[0, 0]
    nch = work.shape[0]
    with nogil:
        _partials(xp, xp, &mean[0], N, C, L, wp, nch, False, fmt, n_threads)
        for c in range(C):
            if L > 1:
                _merge_parts(wp + 2 * c, wp + 2 * c + 1, N, 2 * C, N, L, &mu, &mm)
            else:
                _merge_parts(wp + c, wp + C + c, nch, 5 * C, N, 1, &mu, &mm)
            mean[c] = <floating>mu
            m2[c] = <floating>mm


def batch_norm_gather_stats(const floating[:, ::1] means,    # IN  (P, C)
                            const floating[:, ::1] m2s,      # IN  (P, C)
                            const double[::1] counts,        # IN  (P,), >= 0, sum > 0
                            floating[::1] running_mean,      # IN/OUT (C,) or length 0
                            floating[::1] running_var,       # IN/OUT (C,) or length 0
                            floating[::1] mean,              # OUT (C,)
                            floating[::1] invstd,            # OUT (C,)
                            double eps, double momentum, int n_threads):
    """Chan's merge of the P rows in order (float64); rows with count 0 are skipped. Running statistics
    (if given) <- (1 - momentum) * running + momentum * (mean, M2 / (n - 1))."""
    cdef Py_ssize_t P = means.shape[0], C = means.shape[1], c, p
    cdef bint track = running_mean.shape[0] > 0
    cdef double cnt, mu, mm
    with nogil:
        for c in range(C):
            cnt = 0.0
            mu = 0.0
            mm = 0.0
            for p in range(P):
                fn_chan_merge(&cnt, &mu, &mm, counts[p], <double>means[p, c], <double>m2s[p, c])
            mean[c] = <floating>mu
            invstd[c] = <floating>(1.0 / sqrt(mm / cnt + eps))
            if track:
                running_mean[c] = <floating>(momentum * mu + (1.0 - momentum) * <double>running_mean[c])
                running_var[c] = <floating>(momentum * (mm / (cnt - 1.0)) + (1.0 - momentum) * <double>running_var[c])


def _batch_norm_elemt(const data_t[:, :, ::1] x,            # IN  (N, C, L)
                      const floating[::1] mean,             # IN  (C,)
                      const floating[::1] invstd,           # IN  (C,)
                      const floating[::1] weight,           # IN  (C,) or length 0
                      const floating[::1] bias,             # IN  (C,) or length 0
                      data_t[:, :, ::1] y,                  # OUT (N, C, L)
                      floating[:, ::1] coef,                # SCRATCH (4, C)
                      int fmt, int n_threads):
    """y = (x - mean) * (invstd * weight) + bias per channel."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c, ld = coef.shape[1]
    cdef floating *cf = &coef[0, 0]
    if N * C * L == 0:
        return
    for c in range(C):
        cf[c] = mean[c]
        cf[ld + c] = invstd[c] * weight[c] if weight.shape[0] > 0 else invstd[c]
        cf[2 * ld + c] = bias[c] if bias.shape[0] > 0 else 0
    with nogil:
        _apply(NULL, &x[0, 0, 0], &y[0, 0, 0], N, C, L, cf, ld, False, fmt, n_threads)


def _batch_norm_backward_reduce(const data_t[:, :, ::1] dy,  # IN  (N, C, L)
                                const data_t[:, :, ::1] x,   # IN  (N, C, L)
                                const floating[::1] mean,    # IN  (C,)
                                const floating[::1] invstd,  # IN  (C,)
                                floating[::1] sum_dy,        # OUT (C,)
                                floating[::1] sum_dy_xmu,    # OUT (C,)
                                floating[::1] dweight,       # OUT (C,) or length 0 (not wanted)
                                floating[::1] dbias,         # OUT (C,) or length 0 (not wanted)
                                double[:, ::1] work,         # SCRATCH L > 1: (N*C, 2); L == 1: (chunks, 2C)
                                int fmt, int n_threads):
    """sum_dy = sum(dy), sum_dy_xmu = sum(dy * (x - mean)), dweight = sum_dy_xmu * invstd, dbias = sum_dy
    per channel, in double, in a fixed order."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c, n, t, nch
    cdef const data_t *gp
    cdef const data_t *xp
    cdef const floating *mp = &mean[0]
    cdef double *wp
    cdef double s1, s2
    cdef floating *dwp = out_or_null(dweight)
    cdef floating *dbp = out_or_null(dbias)
    if N * L == 0:
        for c in range(C):
            sum_dy[c] = 0
            sum_dy_xmu[c] = 0
            put_param_grads(dwp, dbp, c, 0.0, 0.0)
        return
    gp = &dy[0, 0, 0]
    xp = &x[0, 0, 0]
    wp = &work[0, 0]
    nch = work.shape[0]
    with nogil:
        _partials(gp, xp, mp, N, C, L, wp, nch, True, fmt, n_threads)
        for c in range(C):
            s1 = 0.0
            s2 = 0.0
            if L > 1:
                for n in range(N):
                    s1 = s1 + wp[2 * (n * C + c)]
                    s2 = s2 + wp[2 * (n * C + c) + 1]
            else:
                for t in range(nch):
                    s1 = s1 + wp[t * 2 * C + c]
                    s2 = s2 + wp[t * 2 * C + C + c]
            sum_dy[c] = <floating>s1
            sum_dy_xmu[c] = <floating>s2
            put_param_grads(dwp, dbp, c, s1, s2 * <double>invstd[c])


def _batch_norm_backward_elemt(const data_t[:, :, ::1] dy,  # IN  (N, C, L)
                               const data_t[:, :, ::1] x,   # IN  (N, C, L)
                               const floating[::1] mean,    # IN  (C,)
                               const floating[::1] invstd,  # IN  (C,)
                               const floating[::1] weight,  # IN  (C,) or length 0
                               const floating[::1] sum_dy,  # IN  (C,), over every process
                               const floating[::1] sum_dy_xmu,  # IN  (C,), over every process
                               data_t[:, :, ::1] dx,        # OUT (N, C, L)
                               floating[:, ::1] coef,       # SCRATCH (4, C)
                               double count, int fmt, int n_threads):
    """dx = invstd * w * (dy - sum_dy / count - (x - mean) * invstd^2 * sum_dy_xmu / count), as
    dx = ka * dy + kb * (x - mean) + kc with per-channel coefficients computed in double."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c, ld = coef.shape[1]
    cdef floating *cf = &coef[0, 0]
    cdef double r, wc
    if N * C * L == 0:
        return
    for c in range(C):
        r = <double>invstd[c]
        wc = <double>weight[c] if weight.shape[0] > 0 else 1.0
        cf[c] = mean[c]
        cf[ld + c] = <floating>(r * wc)
        cf[2 * ld + c] = <floating>(-r * r * r * wc * <double>sum_dy_xmu[c] / count)
        cf[3 * ld + c] = <floating>(-r * wc * <double>sum_dy[c] / count)
    with nogil:
        _apply(&dy[0, 0, 0], &x[0, 0, 0], &dx[0, 0, 0], N, C, L, cf, ld, True, fmt, n_threads)


# ------------------------------------------------------------------------------------------ entry points
# 16-bit data (bfloat16, float16) goes to the kernels above as uint16 views with its format code (0
# bfloat16, 1 float16; -1 for float32/float64 data); its statistics, parameters and scratch are float32.
# Arguments as the kernels', without ``fmt``.
def batch_norm_stats(x, mean, m2, work, int n_threads):
    cdef int fmt = half_fmt(x)
    _batch_norm_stats(half_bits(x, fmt), mean, m2, work, fmt, n_threads)


def batch_norm_elemt(x, mean, invstd, weight, bias, y, coef, int n_threads):
    cdef int fmt = half_fmt(x)
    _batch_norm_elemt(half_bits(x, fmt), mean, invstd, weight, bias, half_bits(y, fmt), coef, fmt, n_threads)


def batch_norm_backward_reduce(dy, x, mean, invstd, sum_dy, sum_dy_xmu, dweight, dbias, work, int n_threads):
    cdef int fmt = half_fmt(x)
    _batch_norm_backward_reduce(half_bits(dy, fmt), half_bits(x, fmt), mean, invstd, sum_dy, sum_dy_xmu, dweight, dbias,
                                work, fmt, n_threads)


def batch_norm_backward_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, dx, coef, double count,
                              int n_threads):
    cdef int fmt = half_fmt(x)
    _batch_norm_backward_elemt(half_bits(dy, fmt), half_bits(x, fmt), mean, invstd, weight, sum_dy, sum_dy_xmu,
                               half_bits(dx, fmt), coef, count, fmt, n_threads)
