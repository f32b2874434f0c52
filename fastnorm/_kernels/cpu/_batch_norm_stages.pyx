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

cdef extern from "fastnorm_channel.h" nogil:
    void fn_seg_moments_f(const float *x, Py_ssize_t n, double *mean, double *m2)
    void fn_seg_moments_d(const double *x, Py_ssize_t n, double *mean, double *m2)
    void fn_chan_merge(double *na, double *ma, double *m2a, double nb, double mb, double m2b)
    void fn_col_moments_f(const float *x, Py_ssize_t nr, Py_ssize_t C, double *mean, double *m2,
                          double *K, double *s1, double *s2)
    void fn_col_moments_d(const double *x, Py_ssize_t nr, Py_ssize_t C, double *mean, double *m2,
                          double *K, double *s1, double *s2)
    void fn_grad_sums_f(const float *dy, const float *x, Py_ssize_t n, double mu, double *s1, double *s2)
    void fn_grad_sums_d(const double *dy, const double *x, Py_ssize_t n, double mu, double *s1, double *s2)
    void fn_col_grad_sums_f(const float *dy, const float *x, Py_ssize_t nr, Py_ssize_t C, const float *mu,
                            double *s1, double *s2)
    void fn_col_grad_sums_d(const double *dy, const double *x, Py_ssize_t nr, Py_ssize_t C,
                            const double *mu, double *s1, double *s2)
    void fn_apply_fwd_f(const float *x, float *y, Py_ssize_t n, float mu, float a, float b, int stream)
    void fn_apply_fwd_d(const double *x, double *y, Py_ssize_t n, double mu, double a, double b, int stream)
    void fn_apply_bwd_f(const float *dy, const float *x, float *dx, Py_ssize_t n, float mu, float ka, float kb,
                        float kc, int training, int stream)
    void fn_apply_bwd_d(const double *dy, const double *x, double *dx, Py_ssize_t n, double mu, double ka,
                        double kb, double kc, int training, int stream)


# ------------------------------------------------------------------------------------------ helpers
cdef inline void _chunk(Py_ssize_t m, Py_ssize_t t, Py_ssize_t nt, Py_ssize_t *lo,
                        Py_ssize_t *hi) noexcept nogil:
    """[lo, hi): chunk t of m items cut into nt contiguous chunks."""
    cdef Py_ssize_t step = (m + nt - 1) // nt
    lo[0] = min(m, t * step)
    hi[0] = min(m, (t + 1) * step)


cdef inline void _slice_moments(const floating *x, Py_ssize_t L, double *mom) noexcept nogil:
    """mom[0], mom[1] = mean, M2 of L contiguous values."""
    if floating is float:
        fn_seg_moments_f(x, L, &mom[0], &mom[1])
    else:
        fn_seg_moments_d(x, L, &mom[0], &mom[1])


cdef inline void _slice_grad_sums(const floating *dy, const floating *x, Py_ssize_t L, double mu,
                                  double *sums) noexcept nogil:
    """sums[0], sums[1] = sum(dy), sum(dy * (x - mu)) over L contiguous values."""
    if floating is float:
        fn_grad_sums_f(dy, x, L, mu, &sums[0], &sums[1])
    else:
        fn_grad_sums_d(dy, x, L, mu, &sums[0], &sums[1])


cdef inline void _rows_moments(const floating *x, Py_ssize_t t, Py_ssize_t nt, Py_ssize_t M, Py_ssize_t C,
                               double *wk) noexcept nogil:
    """Channels-last chunk t of nt of the M rows: wk = [mean (C) | M2 (C) | scratch (3C)]."""
    cdef Py_ssize_t lo, hi
    _chunk(M, t, nt, &lo, &hi)
    if hi <= lo:
        return
    if floating is float:
        fn_col_moments_f(x + lo * C, hi - lo, C, wk, wk + C, wk + 2 * C, wk + 3 * C, wk + 4 * C)
    else:
        fn_col_moments_d(x + lo * C, hi - lo, C, wk, wk + C, wk + 2 * C, wk + 3 * C, wk + 4 * C)


cdef inline void _rows_grad_sums(const floating *dy, const floating *x, Py_ssize_t t, Py_ssize_t nt,
                                 Py_ssize_t M, Py_ssize_t C, const floating *mean, double *wk) noexcept nogil:
    """Channels-last chunk t of nt of the M rows: wk = [sum dy (C) | sum dy * (x - mean) (C)]."""
    cdef Py_ssize_t c, lo, hi
    _chunk(M, t, nt, &lo, &hi)
    for c in range(2 * C):
        wk[c] = 0.0
    if hi <= lo:
        return
    if floating is float:
        fn_col_grad_sums_f(dy + lo * C, x + lo * C, hi - lo, C, mean, wk, wk + C)
    else:
        fn_col_grad_sums_d(dy + lo * C, x + lo * C, hi - lo, C, mean, wk, wk + C)


cdef inline void _slice_apply(const floating *dy, const floating *x, floating *out, Py_ssize_t L,
                              const floating *coef, Py_ssize_t ld, Py_ssize_t c, bint backward) noexcept nogil:
    """One (n, c) slice: y = (x - mu) * a + b, or dx = ka * dy + kb * (x - mu) + kc (coef rows of ld)."""
    if backward:
        if floating is float:
            fn_apply_bwd_f(dy, x, out, L, coef[c], coef[ld + c], coef[2 * ld + c], coef[3 * ld + c], 1, 0)
        else:
            fn_apply_bwd_d(dy, x, out, L, coef[c], coef[ld + c], coef[2 * ld + c], coef[3 * ld + c], 1, 0)
    else:
        if floating is float:
            fn_apply_fwd_f(x, out, L, coef[c], coef[ld + c], coef[2 * ld + c], 0)
        else:
            fn_apply_fwd_d(x, out, L, coef[c], coef[ld + c], coef[2 * ld + c], 0)


cdef inline void _rows_apply(const floating *dy, const floating *x, floating *out, Py_ssize_t t, Py_ssize_t nt,
                             Py_ssize_t M, Py_ssize_t C, const floating *coef, Py_ssize_t ld,
                             bint backward) noexcept nogil:
    """Channels-last chunk t of nt of the M rows of C channels; the same formulas per channel."""
    cdef Py_ssize_t lo, hi, r, c
    cdef const floating *mu = coef
    cdef const floating *ka = coef + ld
    cdef const floating *kb = coef + 2 * ld
    cdef const floating *kc = coef + 3 * ld
    _chunk(M, t, nt, &lo, &hi)
    if backward:
        for r in range(lo, hi):
            for c in range(C):
                out[r * C + c] = ka[c] * dy[r * C + c] + kb[c] * (x[r * C + c] - mu[c]) + kc[c]
    else:
        for r in range(lo, hi):
            for c in range(C):
                out[r * C + c] = (x[r * C + c] - mu[c]) * ka[c] + kb[c]


cdef inline void _apply(const floating *dy, const floating *x, floating *out, Py_ssize_t N, Py_ssize_t C,
                        Py_ssize_t L, const floating *coef, Py_ssize_t ld, bint backward,
                        int n_threads) noexcept nogil:
    cdef Py_ssize_t s, t, S = N * C
    if L > 1:
        if n_threads <= 1:
            for s in range(S):
                _slice_apply(dy + s * L if backward else NULL, x + s * L, out + s * L, L, coef, ld, s % C,
                             backward)
        else:
            for s in prange(S, schedule="static", num_threads=n_threads):
                _slice_apply(dy + s * L if backward else NULL, x + s * L, out + s * L, L, coef, ld, s % C,
                             backward)
    elif n_threads <= 1:
        _rows_apply(dy, x, out, 0, 1, N, C, coef, ld, backward)
    else:
        for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
            _rows_apply(dy, x, out, t, n_threads, N, C, coef, ld, backward)


# ------------------------------------------------------------------------------------------ entry points
def batch_norm_stats(const floating[:, :, ::1] x,           # IN  (N, C, L)
                     floating[::1] mean,                    # OUT (C,)
                     floating[::1] m2,                      # OUT (C,)
                     double[:, ::1] work,                   # SCRATCH L > 1: (N*C, 2); L == 1: (chunks, 5C)
                     int n_threads):
    """mean and M2 = sum((x - mean)^2) per channel over the N*L values of (N, C, L) x; 0 when N*L == 0."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], S = N * C, s, c, n, t, nch, lo, hi
    cdef const floating *xp
    cdef double *wp
    cdef double cnt, mu, mm
    if N * L == 0:
        for c in range(C):
            mean[c] = 0
            m2[c] = 0
        return
    xp = &x[0, 0, 0]
    wp = &work[0, 0]
    nch = work.shape[0]
    with nogil:
        if L > 1:
            if n_threads <= 1:
                for s in range(S):
                    _slice_moments(xp + s * L, L, wp + 2 * s)
            else:
                for s in prange(S, schedule="static", num_threads=n_threads):
                    _slice_moments(xp + s * L, L, wp + 2 * s)
            for c in range(C):
                cnt = 0.0
                mu = 0.0
                mm = 0.0
                for n in range(N):
                    fn_chan_merge(&cnt, &mu, &mm, <double>L, wp[2 * (n * C + c)], wp[2 * (n * C + c) + 1])
                mean[c] = <floating>mu
                m2[c] = <floating>mm
        else:
            if n_threads <= 1 or nch <= 1:
                for t in range(nch):
                    _rows_moments(xp, t, nch, N, C, wp + t * 5 * C)
            else:
                for t in prange(nch, schedule="static", chunksize=1, num_threads=n_threads):
                    _rows_moments(xp, t, nch, N, C, wp + t * 5 * C)
            for c in range(C):
                cnt = 0.0
                mu = 0.0
                mm = 0.0
                for t in range(nch):
                    _chunk(N, t, nch, &lo, &hi)
                    if hi > lo:
                        fn_chan_merge(&cnt, &mu, &mm, <double>(hi - lo), wp[t * 5 * C + c], wp[t * 5 * C + C + c])
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


def batch_norm_elemt(const floating[:, :, ::1] x,           # IN  (N, C, L)
                     const floating[::1] mean,              # IN  (C,)
                     const floating[::1] invstd,            # IN  (C,)
                     const floating[::1] weight,            # IN  (C,) or length 0
                     const floating[::1] bias,              # IN  (C,) or length 0
                     floating[:, :, ::1] y,                 # OUT (N, C, L)
                     floating[:, ::1] coef,                 # SCRATCH (4, C)
                     int n_threads):
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
        _apply(NULL, &x[0, 0, 0], &y[0, 0, 0], N, C, L, cf, ld, False, n_threads)


def batch_norm_backward_reduce(const floating[:, :, ::1] dy,  # IN  (N, C, L)
                               const floating[:, :, ::1] x,   # IN  (N, C, L)
                               const floating[::1] mean,      # IN  (C,)
                               const floating[::1] invstd,    # IN  (C,)
                               floating[::1] sum_dy,          # OUT (C,)
                               floating[::1] sum_dy_xmu,      # OUT (C,)
                               floating[::1] dweight,         # OUT (C,) or length 0 (not wanted)
                               floating[::1] dbias,           # OUT (C,) or length 0 (not wanted)
                               double[:, ::1] work,           # SCRATCH L > 1: (N*C, 2); L == 1: (chunks, 2C)
                               int n_threads):
    """sum_dy = sum(dy), sum_dy_xmu = sum(dy * (x - mean)), dweight = sum_dy_xmu * invstd, dbias = sum_dy
    per channel, in double, in a fixed order."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], S = N * C, s, c, n, t, nch
    cdef const floating *gp
    cdef const floating *xp
    cdef const floating *mp = &mean[0]
    cdef double *wp
    cdef double s1, s2
    cdef bint want_dw = dweight.shape[0] > 0, want_db = dbias.shape[0] > 0
    if N * L == 0:
        for c in range(C):
            sum_dy[c] = 0
            sum_dy_xmu[c] = 0
            if want_dw:
                dweight[c] = 0
            if want_db:
                dbias[c] = 0
        return
    gp = &dy[0, 0, 0]
    xp = &x[0, 0, 0]
    wp = &work[0, 0]
    nch = work.shape[0]
    with nogil:
        if L > 1:
            if n_threads <= 1:
                for s in range(S):
                    _slice_grad_sums(gp + s * L, xp + s * L, L, <double>mp[s % C], wp + 2 * s)
            else:
                for s in prange(S, schedule="static", num_threads=n_threads):
                    _slice_grad_sums(gp + s * L, xp + s * L, L, <double>mp[s % C], wp + 2 * s)
        elif n_threads <= 1 or nch <= 1:
            for t in range(nch):
                _rows_grad_sums(gp, xp, t, nch, N, C, mp, wp + t * 2 * C)
        else:
            for t in prange(nch, schedule="static", chunksize=1, num_threads=n_threads):
                _rows_grad_sums(gp, xp, t, nch, N, C, mp, wp + t * 2 * C)
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
            if want_db:
                dbias[c] = <floating>s1
            if want_dw:
                dweight[c] = <floating>(s2 * <double>invstd[c])


def batch_norm_backward_elemt(const floating[:, :, ::1] dy,  # IN  (N, C, L)
                              const floating[:, :, ::1] x,   # IN  (N, C, L)
                              const floating[::1] mean,      # IN  (C,)
                              const floating[::1] invstd,    # IN  (C,)
                              const floating[::1] weight,    # IN  (C,) or length 0
                              const floating[::1] sum_dy,    # IN  (C,), over every process
                              const floating[::1] sum_dy_xmu,  # IN  (C,), over every process
                              floating[:, :, ::1] dx,        # OUT (N, C, L)
                              floating[:, ::1] coef,         # SCRATCH (4, C)
                              double count, int n_threads):
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
        _apply(&dy[0, 0, 0], &x[0, 0, 0], &dx[0, 0, 0], N, C, L, cf, ld, True, n_threads)
