"""BatchNorm, InstanceNorm and GroupNorm CPU kernels on an (N, C, L) view.

One moments machinery serves the three (``fastnorm_channel.h``): the moments of a contiguous segment
(one (n, c) slice of L values, or one GroupNorm row of C/G * L values) and the per-channel moments of a
block of rows of an (M, C) array (channels contiguous), all in double with blocks merged by Chan's
formula in a fixed order.

- GroupNorm: one task per (n, group) row (K = C/G channels, K*L contiguous values): moments, then the
  output pass over the row while it is still in cache, so x is read from memory once. InstanceNorm is
  the same with K = 1. Backward likewise: per-channel sums of dy and dy*(x - mean) over the row, then dx
  from cache; dweight/dbias from the per-(n, c) sums kept in ``work``, reduced over n in order.
- BatchNorm with L > 1 (N, C, *spatial): the N*C slices are cut into one contiguous chunk per thread
  (not one channel per thread: (64, 64, 56, 56) has only 64 channels); each slice's moments go to
  ``work``, then each channel merges its N slices in order of n (the same result for any thread count).
  The output pass walks each chunk backwards, so the slices read last by the statistics pass, still in
  the last-level cache, are used first.
- BatchNorm with L == 1 (channels-last (M, C), or (N, C) inputs): rows cut into ``work.shape[0]``
  contiguous chunks; each chunk fills per-channel partial moments (rows of length C in ``work``), merged
  over chunks in order (bitwise reproducible for a given thread count).
Running statistics (``running_mean``/``running_var``, length 0 when absent) are typed const so that
read-only arrays work in evaluation mode; in training they are written through a cast (the public layer
has checked that they are writeable). No allocation, no validation here.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

cdef enum:
    # BatchNorm (N, C, L) works on blocks of channels whose data (the streams read twice) is about this
    # size, so the second pass over a block finds it in the last-level cache: x is read from memory once.
    CACHE_BLOCK_BYTES = 4 * 1024 * 1024


cdef extern from "fastnorm_channel.h" nogil:
    void fn_seg_moments_f(const float *x, Py_ssize_t n, double *mean, double *m2)
    void fn_seg_moments_d(const double *x, Py_ssize_t n, double *mean, double *m2)
    void fn_chan_merge(double *na, double *ma, double *m2a, double nb, double mb, double m2b)
    void fn_col_moments_f(const float *x, Py_ssize_t nr, Py_ssize_t C, double *mean, double *m2,
                          double *K, double *s1, double *s2)
    void fn_col_moments_d(const double *x, Py_ssize_t nr, Py_ssize_t C, double *mean, double *m2,
                          double *K, double *s1, double *s2)
    void fn_col_grad_sums_f(const float *dy, const float *x, Py_ssize_t nr, Py_ssize_t C, const float *mu,
                            double *s1, double *s2)
    void fn_col_grad_sums_d(const double *dy, const double *x, Py_ssize_t nr, Py_ssize_t C,
                            const double *mu, double *s1, double *s2)
    void fn_grad_sums_f(const float *dy, const float *x, Py_ssize_t n, double mu, double *s1, double *s2)
    void fn_grad_sums_d(const double *dy, const double *x, Py_ssize_t n, double mu, double *s1, double *s2)


# ------------------------------------------------------------------------------------------ segment helpers
cdef inline void _moments(const floating *x, Py_ssize_t n, double *mean, double *m2) noexcept nogil:
    if floating is float:
        fn_seg_moments_f(x, n, mean, m2)
    else:
        fn_seg_moments_d(x, n, mean, m2)


cdef inline void _bwd_sums(const floating *dy, const floating *x, floating mu, Py_ssize_t n,
                           double *s1, double *s2) noexcept nogil:
    """s1 = sum(dy), s2 = sum(dy * (x - mu))."""
    if floating is float:
        fn_grad_sums_f(dy, x, n, mu, s1, s2)
    else:
        fn_grad_sums_d(dy, x, n, mu, s1, s2)


cdef inline void _apply_fwd(const floating *x, floating *y, Py_ssize_t n, floating mu, floating a,
                            floating b) noexcept nogil:
    """y = (x - mu) * a + b; (x - mu) first, exact when x is close to a large mean."""
    cdef Py_ssize_t j
    for j in range(n):
        y[j] = (x[j] - mu) * a + b


cdef inline void _apply_bwd(const floating *dy, const floating *x, floating *dx, Py_ssize_t n, floating mu,
                            floating ka, floating kb, floating kc, bint training) noexcept nogil:
    """dx = ka * dy + kb * (x - mu) + kc when training, else dx = ka * dy (x not read)."""
    cdef Py_ssize_t j
    if training:
        for j in range(n):
            dx[j] = ka * dy[j] + kb * (x[j] - mu) + kc
    else:
        for j in range(n):
            dx[j] = ka * dy[j]


cdef inline void _apply_fwd_rows(const floating *x, floating *y, Py_ssize_t nr, Py_ssize_t C,
                                 const floating *mu, const floating *a, const floating *b) noexcept nogil:
    """y[r, c] = (x[r, c] - mu[c]) * a[c] + b[c] over nr rows of length C."""
    cdef Py_ssize_t r, c
    for r in range(nr):
        for c in range(C):
            y[r * C + c] = (x[r * C + c] - mu[c]) * a[c] + b[c]


cdef inline void _apply_bwd_rows(const floating *dy, const floating *x, floating *dx, Py_ssize_t nr,
                                 Py_ssize_t C, const floating *mu, const floating *ka, const floating *kb,
                                 const floating *kc, bint training) noexcept nogil:
    cdef Py_ssize_t r, c
    if training:
        for r in range(nr):
            for c in range(C):
                dx[r * C + c] = ka[c] * dy[r * C + c] + kb[c] * (x[r * C + c] - mu[c]) + kc[c]
    else:
        for r in range(nr):
            for c in range(C):
                dx[r * C + c] = ka[c] * dy[r * C + c]


cdef inline Py_ssize_t _chunk_start(Py_ssize_t m, Py_ssize_t n_chunks, Py_ssize_t c) noexcept nogil:
    """First item of chunk c when m items are cut into n_chunks contiguous chunks."""
    cdef Py_ssize_t step = (m + n_chunks - 1) // n_chunks
    return min(m, c * step)


cdef inline const floating *_ptr_or_null(const floating[::1] a) noexcept nogil:
    return &a[0] if a.shape[0] > 0 else NULL


cdef inline floating *_mut_or_null(const floating[::1] a) noexcept nogil:
    """Write access to an IN/OUT array typed const (running statistics)."""
    return <floating *>&a[0] if a.shape[0] > 0 else NULL


cdef inline void _set_coef(floating[:, ::1] coef, Py_ssize_t c, floating mu, floating rs,
                           const floating *w, const floating *b) noexcept nogil:
    """Forward constants of channel c: coef[0] = mean, coef[1] = rstd * weight, coef[2] = bias (or 0)."""
    coef[0, c] = mu
    coef[1, c] = rs * w[c] if w != NULL else rs
    coef[2, c] = b[c] if b != NULL else 0


# ------------------------------------------------------------------------------------------ group rows
cdef inline void _group_apply(const floating *x, floating *y, Py_ssize_t K, Py_ssize_t L, floating mu,
                              floating rs, const floating *w, const floating *b) noexcept nogil:
    """Output pass over K channels of L values sharing (mu, rs); w, b point at those K channels."""
    cdef Py_ssize_t k
    cdef floating a, bk
    for k in range(K):
        a = rs * w[k] if w != NULL else rs
        bk = b[k] if b != NULL else 0
        _apply_fwd(x + k * L, y + k * L, L, mu, a, bk)


cdef inline void _group_fwd(const floating *x, floating *y, Py_ssize_t K, Py_ssize_t L,
                            const floating *w, const floating *b, floating *mean, floating *rstd,
                            double *mom, double eps) noexcept nogil:
    """One (n, group) row of K*L contiguous values: moments, then the output pass from cache.

    mom (may be NULL) receives the row's mean and M2 in double.
    """
    cdef double mu, m2
    cdef floating fmu, frs
    _moments(x, K * L, &mu, &m2)
    fmu = <floating>mu
    frs = <floating>(1.0 / sqrt(m2 / <double>(K * L) + eps))
    mean[0] = fmu
    rstd[0] = frs
    if mom != NULL:
        mom[0] = mu
        mom[1] = m2
    _group_apply(x, y, K, L, fmu, frs, w, b)


cdef inline void _group_bwd(const floating *dy, const floating *x, floating *dx, Py_ssize_t K,
                            Py_ssize_t L, floating mu, floating rs, const floating *w, double *sums,
                            bint training) noexcept nogil:
    """Backward of one (n, group) row; sums[2k], sums[2k+1] = sum(dy), sum(dy * (x - mu)) of channel k.

    training: dx = rs * (w_k dy - G1 / n - (x - mu) rs^2 G2 / n), G1 = sum_k w_k s1_k, G2 = sum_k w_k s2_k,
    n = K*L; else (statistics are constants) dx = rs * w_k * dy.
    """
    cdef Py_ssize_t k
    cdef double g1 = 0.0, g2 = 0.0, wk, cnt = <double>(K * L)
    cdef floating kb = 0, kc = 0
    for k in range(K):
        _bwd_sums(dy + k * L, x + k * L, mu, L, &sums[2 * k], &sums[2 * k + 1])
        wk = w[k] if w != NULL else 1.0
        g1 += wk * sums[2 * k]
        g2 += wk * sums[2 * k + 1]
    if training:
        kb = <floating>(-(<double>rs * rs * rs) * g2 / cnt)
        kc = <floating>(-<double>rs * g1 / cnt)
    for k in range(K):
        _apply_bwd(dy + k * L, x + k * L, dx + k * L, L, mu, rs * w[k] if w != NULL else rs, kb, kc,
                   training)


cdef inline void _group_rows_fwd(const floating *x, floating *y, Py_ssize_t lo, Py_ssize_t hi,
                                 Py_ssize_t G, Py_ssize_t K, Py_ssize_t L, const floating *w,
                                 const floating *b, floating *mean, floating *rstd, double *mom,
                                 double eps) noexcept nogil:
    """Rows [lo, hi) of the N*G rows; row r is (n, g) = divmod(r, G)."""
    cdef Py_ssize_t r, g
    for r in range(lo, hi):
        g = r % G
        _group_fwd(x + r * K * L, y + r * K * L, K, L, w + g * K if w != NULL else NULL,
                   b + g * K if b != NULL else NULL, &mean[r], &rstd[r],
                   mom + 2 * r if mom != NULL else NULL, eps)


cdef inline void _group_rows_bwd(const floating *dy, const floating *x, floating *dx, Py_ssize_t lo,
                                 Py_ssize_t hi, Py_ssize_t G, Py_ssize_t K, Py_ssize_t L,
                                 const floating *mean, const floating *rstd, const floating *w,
                                 double *sums, bint training) noexcept nogil:
    cdef Py_ssize_t r, g, off
    for r in range(lo, hi):
        g = r % G
        off = r * K * L
        _group_bwd(dy + off, x + off, dx + off, K, L, mean[r], rstd[r], w + g * K if w != NULL else NULL,
                   sums + 2 * r * K, training)


cdef inline void _param_grads(const double *sums, const floating *rstd, Py_ssize_t N, Py_ssize_t C,
                              Py_ssize_t K, Py_ssize_t lo, Py_ssize_t hi, floating *dweight,
                              floating *dbias) noexcept nogil:
    """Channels [lo, hi): dbias[c] = sum_n s1[n, c], dweight[c] = sum_n s2[n, c] * rstd[n, c // K], n in order.

    sums holds (s1, s2) per (n, c); rstd is (N, C // K).
    """
    cdef Py_ssize_t c, n, G = C // K
    cdef double sb, sw
    for c in range(lo, hi):
        sb = 0.0
        sw = 0.0
        for n in range(N):
            sb = sb + sums[2 * (n * C + c)]
            sw = sw + sums[2 * (n * C + c) + 1] * <double>rstd[n * G + c // K]
        if dbias != NULL:
            dbias[c] = <floating>sb
        if dweight != NULL:
            dweight[c] = <floating>sw


# ------------------------------------------------------------------------------------------ batch-norm phases
cdef inline Py_ssize_t _block_slice(Py_ssize_t j, Py_ssize_t C, Py_ssize_t cb, Py_ssize_t nb) noexcept nogil:
    """Index n*C + c of the j-th (n, c) slice of the channel block [cb, cb + nb): n = j // nb, c = cb + j % nb."""
    return (j // nb) * C + cb + j % nb


cdef inline Py_ssize_t _channel_block(Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, Py_ssize_t stream_bytes) noexcept nogil:
    """Channels per block so that a block's slices (N*L values of stream_bytes per channel) stay in cache."""
    return max(1, min(C, CACHE_BLOCK_BYTES // max(1, N * L * stream_bytes)))


cdef inline void _slice_moments(const floating *x, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t C, Py_ssize_t L,
                                Py_ssize_t cb, Py_ssize_t nb, double *mom) noexcept nogil:
    """mom[2s], mom[2s+1] = mean, M2 of slice s, for the block's slices j in [lo, hi)."""
    cdef Py_ssize_t j, s
    for j in range(lo, hi):
        s = _block_slice(j, C, cb, nb)
        _moments(x + s * L, L, &mom[2 * s], &mom[2 * s + 1])


cdef inline void _slice_apply_fwd(const floating *x, floating *y, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t C,
                                  Py_ssize_t L, Py_ssize_t cb, Py_ssize_t nb,
                                  floating[:, ::1] coef) noexcept nogil:
    """Output pass over the block's slices j in [lo, hi), last first (most recently read, still cached)."""
    cdef Py_ssize_t j, s, c
    for j in range(hi - 1, lo - 1, -1):
        s = _block_slice(j, C, cb, nb)
        c = s % C
        _apply_fwd(x + s * L, y + s * L, L, coef[0, c], coef[1, c], coef[2, c])


cdef inline void _slice_bwd_sums(const floating *dy, const floating *x, Py_ssize_t lo, Py_ssize_t hi,
                                 Py_ssize_t C, Py_ssize_t L, Py_ssize_t cb, Py_ssize_t nb, const floating *mean,
                                 double *sums) noexcept nogil:
    cdef Py_ssize_t j, s
    for j in range(lo, hi):
        s = _block_slice(j, C, cb, nb)
        _bwd_sums(dy + s * L, x + s * L, mean[s % C], L, &sums[2 * s], &sums[2 * s + 1])


cdef inline void _slice_apply_bwd(const floating *dy, const floating *x, floating *dx, Py_ssize_t lo,
                                  Py_ssize_t hi, Py_ssize_t C, Py_ssize_t L, Py_ssize_t cb, Py_ssize_t nb,
                                  floating[:, ::1] coef, bint training) noexcept nogil:
    cdef Py_ssize_t j, s, c
    for j in range(hi - 1, lo - 1, -1):
        s = _block_slice(j, C, cb, nb)
        c = s % C
        _apply_bwd(dy + s * L, x + s * L, dx + s * L, L, coef[0, c], coef[1, c], coef[2, c], coef[3, c],
                   training)


cdef inline void _rows_moments(const floating *x, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t C,
                               double *wk) noexcept nogil:
    """Channels-last chunk of rows [lo, hi): wk = [mean (C) | M2 (C) | scratch (3C)]."""
    if hi <= lo:
        return
    if floating is float:
        fn_col_moments_f(x + lo * C, hi - lo, C, wk, wk + C, wk + 2 * C, wk + 3 * C, wk + 4 * C)
    else:
        fn_col_moments_d(x + lo * C, hi - lo, C, wk, wk + C, wk + 2 * C, wk + 3 * C, wk + 4 * C)


cdef inline void _rows_apply_fwd(const floating *x, floating *y, Py_ssize_t lo, Py_ssize_t hi,
                                 Py_ssize_t C, floating[:, ::1] coef) noexcept nogil:
    """Output pass over rows [lo, hi) in blocks of 64 rows, last block first."""
    cdef Py_ssize_t b, e
    e = hi
    while e > lo:
        b = max(lo, e - 64)
        _apply_fwd_rows(x + b * C, y + b * C, e - b, C, &coef[0, 0], &coef[1, 0], &coef[2, 0])
        e = b


cdef inline void _rows_bwd_sums(const floating *dy, const floating *x, Py_ssize_t lo, Py_ssize_t hi,
                                Py_ssize_t C, const floating *mean, double *wk) noexcept nogil:
    """wk = [sum dy (C) | sum dy * (x - mean) (C)] over rows [lo, hi)."""
    cdef Py_ssize_t c
    for c in range(2 * C):
        wk[c] = 0.0
    if floating is float:
        fn_col_grad_sums_f(dy + lo * C, x + lo * C, hi - lo, C, mean, wk, wk + C)
    else:
        fn_col_grad_sums_d(dy + lo * C, x + lo * C, hi - lo, C, mean, wk, wk + C)


cdef inline void _rows_apply_bwd(const floating *dy, const floating *x, floating *dx, Py_ssize_t lo,
                                 Py_ssize_t hi, Py_ssize_t C, floating[:, ::1] coef,
                                 bint training) noexcept nogil:
    cdef Py_ssize_t b, e
    e = hi
    while e > lo:
        b = max(lo, e - 64)
        _apply_bwd_rows(dy + b * C, x + b * C, dx + b * C, e - b, C, &coef[0, 0], &coef[1, 0], &coef[2, 0],
                        &coef[3, 0], training)
        e = b


cdef inline void _finish_channel(double mu, double m2, double cnt, double eps, double momentum,
                                 floating *mean, floating *rstd, floating *rm, floating *rv) noexcept nogil:
    """Batch statistics of one channel from its merged moments; running stats updated if not NULL."""
    mean[0] = <floating>mu
    rstd[0] = <floating>(1.0 / sqrt(m2 / cnt + eps))
    if rm != NULL:
        rm[0] = <floating>(momentum * mu + (1.0 - momentum) * <double>rm[0])
    if rv != NULL:
        rv[0] = <floating>(momentum * (m2 / (cnt - 1.0)) + (1.0 - momentum) * <double>rv[0])


cdef inline void _instances_apply(const floating *x, floating *y, Py_ssize_t lo, Py_ssize_t hi,
                                  Py_ssize_t C, Py_ssize_t L, const floating *w, const floating *b,
                                  const floating *mean, const floating *rstd) noexcept nogil:
    cdef Py_ssize_t s, c
    for s in range(lo, hi):
        c = s % C
        _group_apply(x + s * L, y + s * L, 1, L, mean[s], rstd[s], w + c if w != NULL else NULL,
                     b + c if b != NULL else NULL)


cdef _groups_backward(const floating[:, :, ::1] dy, const floating[:, :, ::1] x, const floating[:, ::1] mean,
                      const floating[:, ::1] rstd, const floating[::1] weight, floating[:, :, ::1] dx,
                      floating[::1] dweight, floating[::1] dbias, double[:, ::1] work, bint training,
                      int n_threads):
    """GroupNorm / InstanceNorm backward: G = mean.shape[1] groups of K = C/G channels."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], G = mean.shape[1], K, R, t, c
    cdef const floating *w = _ptr_or_null(weight)
    cdef floating *dwp = &dweight[0] if dweight.shape[0] > 0 else NULL
    cdef floating *dbp = &dbias[0] if dbias.shape[0] > 0 else NULL
    cdef const floating *gp
    cdef const floating *xp
    cdef floating *dxp
    cdef const floating *mp
    cdef const floating *rp
    cdef double *wp
    if C == 0:
        return
    if N == 0 or L == 0:
        for c in range(C):
            if dwp != NULL:
                dwp[c] = 0
            if dbp != NULL:
                dbp[c] = 0
        return
    K = C // G
    R = N * G
    gp = &dy[0, 0, 0]
    xp = &x[0, 0, 0]
    dxp = &dx[0, 0, 0]
    mp = &mean[0, 0]
    rp = &rstd[0, 0]
    wp = &work[0, 0]
    with nogil:
        if n_threads <= 1:
            _group_rows_bwd(gp, xp, dxp, 0, R, G, K, L, mp, rp, w, wp, training)
        else:
            for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                _group_rows_bwd(gp, xp, dxp, _chunk_start(R, n_threads, t), _chunk_start(R, n_threads, t + 1),
                                G, K, L, mp, rp, w, wp, training)
        if dwp != NULL or dbp != NULL:
            if n_threads <= 1:
                _param_grads(wp, rp, N, C, K, 0, C, dwp, dbp)
            else:
                for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                    _param_grads(wp, rp, N, C, K, _chunk_start(C, n_threads, t), _chunk_start(C, n_threads, t + 1),
                                 dwp, dbp)


cdef inline void _bn_channel_forward(const floating *x, floating *y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L,
                                     Py_ssize_t c, const floating *w, const floating *b, floating *mean,
                                     floating *rstd, floating *rm, floating *rv, double *mom, double eps,
                                     double momentum, bint training) noexcept nogil:
    """All of channel c on one thread: slice moments, merged over n in order, then the output pass over
    the channel's N slices, last first (they are still in cache)."""
    cdef Py_ssize_t n, s
    cdef double cnt = 0.0, mu = 0.0, m2 = 0.0
    cdef floating a, sh
    if training:
        for n in range(N):
            s = n * C + c
            _moments(x + s * L, L, &mom[2 * s], &mom[2 * s + 1])
            fn_chan_merge(&cnt, &mu, &m2, <double>L, mom[2 * s], mom[2 * s + 1])
        _finish_channel(mu, m2, cnt, eps, momentum, &mean[c], &rstd[c], rm + c if rm != NULL else NULL,
                        rv + c if rv != NULL else NULL)
    a = rstd[c] * w[c] if w != NULL else rstd[c]
    sh = b[c] if b != NULL else 0
    for n in range(N - 1, -1, -1):
        s = n * C + c
        _apply_fwd(x + s * L, y + s * L, L, mean[c], a, sh)


cdef inline void _bn_channel_backward(const floating *dy, const floating *x, floating *dx, Py_ssize_t N,
                                      Py_ssize_t C, Py_ssize_t L, Py_ssize_t c, const floating *mean,
                                      const floating *rstd, const floating *w, double *sums, double *tot,
                                      bint need_sums, bint training) noexcept nogil:
    """All of channel c on one thread: per-slice sums, totals (summed over n in order) in tot[2c], tot[2c+1],
    then dx over the channel's N slices, last first."""
    cdef Py_ssize_t n, s
    cdef double s1 = 0.0, s2 = 0.0, rs = <double>rstd[c], wc = <double>w[c] if w != NULL else 1.0
    cdef double cnt = <double>(N * L)
    cdef floating mu = mean[c], ka, kb = 0, kc = 0
    if need_sums:
        for n in range(N):
            s = n * C + c
            _bwd_sums(dy + s * L, x + s * L, mu, L, &sums[2 * s], &sums[2 * s + 1])
            s1 = s1 + sums[2 * s]
            s2 = s2 + sums[2 * s + 1]
        tot[2 * c] = s1
        tot[2 * c + 1] = s2
    ka = <floating>(rs * wc) if w != NULL else rstd[c]
    if training:
        kb = <floating>(-rs * rs * rs * wc * s2 / cnt)
        kc = <floating>(-rs * wc * s1 / cnt)
    for n in range(N - 1, -1, -1):
        s = n * C + c
        _apply_bwd(dy + s * L, x + s * L, dx + s * L, L, mu, ka, kb, kc, training)


cdef inline bint _per_channel(Py_ssize_t C, int n_threads) noexcept nogil:
    """Whether whole channels per thread balance well; else the (n, c) slices of channel blocks are shared."""
    return C % n_threads == 0 or C >= 8 * n_threads


# ------------------------------------------------------------------------------------------ entry points
def batch_norm_forward(const floating[:, :, ::1] x,         # IN  (N, C, L)
                       const floating[::1] weight,          # IN  (C,) or length 0
                       const floating[::1] bias,            # IN  (C,) or length 0
                       const floating[::1] running_mean,    # IN/OUT (C,) or length 0; updated when training
                       const floating[::1] running_var,     # IN/OUT (C,) or length 0; updated when training
                       floating[:, :, ::1] y,               # OUT (N, C, L)
                       floating[::1] mean,                  # OUT (C,)
                       floating[::1] rstd,                  # OUT (C,)
                       double[:, ::1] work,                 # SCRATCH L > 1: (N*C, 2); L == 1: (n_chunks, 5*C)
                       floating[:, ::1] coef,               # SCRATCH (4, C)
                       double eps, double momentum, bint training, int n_threads):
    """training: batch statistics over (N, L) per channel (running stats updated); else running stats.

    L == 1 is the channels-last (M, C) layout (M = N rows). In evaluation mode ``work`` is not used.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c, n, t, nch, cb, nb, B, J
    cdef const floating *w = _ptr_or_null(weight)
    cdef const floating *b = _ptr_or_null(bias)
    cdef floating *rm = _mut_or_null(running_mean)
    cdef floating *rv = _mut_or_null(running_var)
    cdef const floating *xp
    cdef floating *yp
    cdef double *wp
    cdef double cnt, mu, m2, ct
    if not training:
        for c in range(C):
            mean[c] = running_mean[c]
            rstd[c] = <floating>(1.0 / sqrt(<double>running_var[c] + eps))
    if N * C == 0 or L == 0:
        return
    xp = &x[0, 0, 0]
    yp = &y[0, 0, 0]
    wp = &work[0, 0]
    nch = work.shape[0]
    with nogil:
        if L > 1 and _per_channel(C, n_threads):
            if n_threads <= 1:
                for c in range(C):
                    _bn_channel_forward(xp, yp, N, C, L, c, w, b, &mean[0], &rstd[0], rm, rv, wp, eps, momentum,
                                        training)
            else:
                for c in prange(C, schedule="static", num_threads=n_threads):
                    _bn_channel_forward(xp, yp, N, C, L, c, w, b, &mean[0], &rstd[0], rm, rv, wp, eps, momentum,
                                        training)
        elif L > 1:
            B = _channel_block(N, C, L, sizeof(floating))
            cb = 0
            while cb < C:
                nb = min(B, C - cb)
                J = N * nb
                if training:
                    if n_threads <= 1:
                        _slice_moments(xp, 0, J, C, L, cb, nb, wp)
                    else:
                        for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                            _slice_moments(xp, _chunk_start(J, n_threads, t), _chunk_start(J, n_threads, t + 1),
                                           C, L, cb, nb, wp)
                    for c in range(cb, cb + nb):
                        cnt = 0.0
                        mu = 0.0
                        m2 = 0.0
                        for n in range(N):
                            fn_chan_merge(&cnt, &mu, &m2, <double>L, wp[2 * (n * C + c)], wp[2 * (n * C + c) + 1])
                        _finish_channel(mu, m2, cnt, eps, momentum, &mean[c], &rstd[c],
                                        rm + c if rm != NULL else NULL, rv + c if rv != NULL else NULL)
                for c in range(cb, cb + nb):
                    _set_coef(coef, c, mean[c], rstd[c], w, b)
                if n_threads <= 1:
                    _slice_apply_fwd(xp, yp, 0, J, C, L, cb, nb, coef)
                else:
                    for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                        _slice_apply_fwd(xp, yp, _chunk_start(J, n_threads, t), _chunk_start(J, n_threads, t + 1),
                                         C, L, cb, nb, coef)
                cb = cb + nb
        else:
            if training:
                if n_threads <= 1 or nch <= 1:
                    for t in range(nch):
                        _rows_moments(xp, _chunk_start(N, nch, t), _chunk_start(N, nch, t + 1), C, wp + t * 5 * C)
                else:
                    for t in prange(nch, schedule="static", chunksize=1, num_threads=n_threads):
                        _rows_moments(xp, _chunk_start(N, nch, t), _chunk_start(N, nch, t + 1), C, wp + t * 5 * C)
                for c in range(C):
                    cnt = 0.0
                    mu = 0.0
                    m2 = 0.0
                    for t in range(nch):
                        ct = <double>(_chunk_start(N, nch, t + 1) - _chunk_start(N, nch, t))
                        fn_chan_merge(&cnt, &mu, &m2, ct, wp[t * 5 * C + c], wp[t * 5 * C + C + c])
                    _finish_channel(mu, m2, cnt, eps, momentum, &mean[c], &rstd[c],
                                    rm + c if rm != NULL else NULL, rv + c if rv != NULL else NULL)
            for c in range(C):
                _set_coef(coef, c, mean[c], rstd[c], w, b)
            if n_threads <= 1:
                _rows_apply_fwd(xp, yp, 0, N, C, coef)
            else:
                for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                    _rows_apply_fwd(xp, yp, _chunk_start(N, n_threads, t), _chunk_start(N, n_threads, t + 1),
                                    C, coef)


cdef inline void _bn_backward_coef(floating[:, ::1] coef, Py_ssize_t c, const floating *mean,
                                   const floating *rstd, const floating *w, const double *tot, double cnt,
                                   bint training) noexcept nogil:
    """dx = coef[1] * dy + coef[2] * (x - coef[0]) + coef[3] for channel c, from its totals (sum dy,
    sum dy * (x - mean)): rstd * w * (dy - mean(dy) - xhat * mean(dy * xhat)) when training."""
    cdef double rs = <double>rstd[c], wc = <double>w[c] if w != NULL else 1.0
    coef[0, c] = mean[c]
    coef[1, c] = <floating>(rs * wc) if w != NULL else rstd[c]
    if training:
        coef[2, c] = <floating>(-rs * rs * rs * wc * tot[2 * c + 1] / cnt)
        coef[3, c] = <floating>(-rs * wc * tot[2 * c] / cnt)
    else:
        coef[2, c] = 0
        coef[3, c] = 0


def batch_norm_backward(const floating[:, :, ::1] dy,       # IN  (N, C, L)
                        const floating[:, :, ::1] x,        # IN  (N, C, L)
                        const floating[::1] mean,           # IN  (C,)
                        const floating[::1] rstd,           # IN  (C,)
                        const floating[::1] weight,         # IN  (C,) or length 0
                        floating[:, :, ::1] dx,             # OUT (N, C, L)
                        floating[::1] dweight,              # OUT (C,) or length 0 (not wanted)
                        floating[::1] dbias,                # OUT (C,) or length 0 (not wanted)
                        double[:, ::1] work,                # SCRATCH L > 1: (N*C + C, 2); L == 1: (n_chunks + 1, 2*C)
                        floating[:, ::1] coef,              # SCRATCH (4, C)
                        bint training, int n_threads):
    """training: dx through the batch statistics; else (running statistics) dx = dy * rstd * weight.

    dweight = sum(dy * (x - mean) * rstd), dbias = sum(dy) per channel, reduced in a fixed order.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c, n, t, nch, cb, nb, B, J
    cdef const floating *w = _ptr_or_null(weight)
    cdef bint want_dw = dweight.shape[0] > 0, want_db = dbias.shape[0] > 0
    cdef bint need_sums = training or want_dw or want_db
    cdef const floating *gp
    cdef const floating *xp
    cdef floating *dxp
    cdef const floating *mp
    cdef const floating *rp
    cdef double *wp
    cdef double *tot
    cdef double s1, s2, cnt
    if C == 0:
        return
    if N == 0 or L == 0:
        for c in range(C):
            if want_dw:
                dweight[c] = 0
            if want_db:
                dbias[c] = 0
        return
    gp = &dy[0, 0, 0]
    xp = &x[0, 0, 0]
    dxp = &dx[0, 0, 0]
    mp = &mean[0]
    rp = &rstd[0]
    wp = &work[0, 0]
    nch = work.shape[0] - 1 if L == 1 else 0
    tot = wp + 2 * N * C if L > 1 else wp + nch * 2 * C     # per-channel totals (sum dy, sum dy*(x - mean))
    cnt = <double>(N * L)
    with nogil:
        if L > 1 and _per_channel(C, n_threads):
            if n_threads <= 1:
                for c in range(C):
                    _bn_channel_backward(gp, xp, dxp, N, C, L, c, mp, rp, w, wp, tot, need_sums, training)
            else:
                for c in prange(C, schedule="static", num_threads=n_threads):
                    _bn_channel_backward(gp, xp, dxp, N, C, L, c, mp, rp, w, wp, tot, need_sums, training)
        elif L > 1:
            B = _channel_block(N, C, L, 2 * sizeof(floating))
            cb = 0
            while cb < C:
                nb = min(B, C - cb)
                J = N * nb
                if need_sums:
                    if n_threads <= 1:
                        _slice_bwd_sums(gp, xp, 0, J, C, L, cb, nb, mp, wp)
                    else:
                        for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                            _slice_bwd_sums(gp, xp, _chunk_start(J, n_threads, t), _chunk_start(J, n_threads, t + 1),
                                            C, L, cb, nb, mp, wp)
                    for c in range(cb, cb + nb):
                        s1 = 0.0
                        s2 = 0.0
                        for n in range(N):
                            s1 = s1 + wp[2 * (n * C + c)]
                            s2 = s2 + wp[2 * (n * C + c) + 1]
                        tot[2 * c] = s1
                        tot[2 * c + 1] = s2
                for c in range(cb, cb + nb):
                    _bn_backward_coef(coef, c, mp, rp, w, tot, cnt, training)
                if n_threads <= 1:
                    _slice_apply_bwd(gp, xp, dxp, 0, J, C, L, cb, nb, coef, training)
                else:
                    for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                        _slice_apply_bwd(gp, xp, dxp, _chunk_start(J, n_threads, t), _chunk_start(J, n_threads, t + 1),
                                         C, L, cb, nb, coef, training)
                cb = cb + nb
        else:
            if need_sums:
                if n_threads <= 1 or nch <= 1:
                    for t in range(nch):
                        _rows_bwd_sums(gp, xp, _chunk_start(N, nch, t), _chunk_start(N, nch, t + 1), C, mp,
                                       wp + t * 2 * C)
                else:
                    for t in prange(nch, schedule="static", chunksize=1, num_threads=n_threads):
                        _rows_bwd_sums(gp, xp, _chunk_start(N, nch, t), _chunk_start(N, nch, t + 1), C, mp,
                                       wp + t * 2 * C)
                for c in range(C):
                    s1 = 0.0
                    s2 = 0.0
                    for t in range(nch):
                        s1 = s1 + wp[t * 2 * C + c]
                        s2 = s2 + wp[t * 2 * C + C + c]
                    tot[2 * c] = s1
                    tot[2 * c + 1] = s2
            for c in range(C):
                _bn_backward_coef(coef, c, mp, rp, w, tot, cnt, training)
            if n_threads <= 1:
                _rows_apply_bwd(gp, xp, dxp, 0, N, C, coef, training)
            else:
                for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                    _rows_apply_bwd(gp, xp, dxp, _chunk_start(N, n_threads, t), _chunk_start(N, n_threads, t + 1),
                                    C, coef, training)
        if need_sums:
            for c in range(C):
                if want_db:
                    dbias[c] = <floating>tot[2 * c]
                if want_dw:
                    dweight[c] = <floating>(tot[2 * c + 1] * <double>rstd[c])


def group_norm_forward(const floating[:, :, ::1] x,         # IN  (N, C, L)
                       const floating[::1] weight,          # IN  (C,) or length 0
                       const floating[::1] bias,            # IN  (C,) or length 0
                       floating[:, :, ::1] y,               # OUT (N, C, L)
                       floating[:, ::1] mean,               # OUT (N, G)
                       floating[:, ::1] rstd,               # OUT (N, G)
                       double eps, int n_threads):
    """Statistics per (n, group) over its C/G channels and L positions; affine per channel."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], G = mean.shape[1], K, R, t
    cdef const floating *w = _ptr_or_null(weight)
    cdef const floating *b = _ptr_or_null(bias)
    cdef const floating *xp
    cdef floating *yp
    cdef floating *mp
    cdef floating *rp
    if N == 0 or C == 0 or L == 0:
        return
    K = C // G
    R = N * G
    xp = &x[0, 0, 0]
    yp = &y[0, 0, 0]
    mp = &mean[0, 0]
    rp = &rstd[0, 0]
    with nogil:
        if n_threads <= 1:
            _group_rows_fwd(xp, yp, 0, R, G, K, L, w, b, mp, rp, NULL, eps)
        else:
            for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                _group_rows_fwd(xp, yp, _chunk_start(R, n_threads, t), _chunk_start(R, n_threads, t + 1),
                                G, K, L, w, b, mp, rp, NULL, eps)


def group_norm_backward(const floating[:, :, ::1] dy,       # IN  (N, C, L)
                        const floating[:, :, ::1] x,        # IN  (N, C, L)
                        const floating[:, ::1] mean,        # IN  (N, G)
                        const floating[:, ::1] rstd,        # IN  (N, G)
                        const floating[::1] weight,         # IN  (C,) or length 0
                        floating[:, :, ::1] dx,             # OUT (N, C, L)
                        floating[::1] dweight,              # OUT (C,) or length 0 (not wanted)
                        floating[::1] dbias,                # OUT (C,) or length 0 (not wanted)
                        double[:, ::1] work,                # SCRATCH (N*C, 2)
                        int n_threads):
    """dx per (n, group) row from cache; dweight/dbias from per-(n, c) sums reduced over n in order."""
    _groups_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, work, True, n_threads)


def instance_norm_forward(const floating[:, :, ::1] x,      # IN  (N, C, L)
                          const floating[::1] weight,       # IN  (C,) or length 0
                          const floating[::1] bias,         # IN  (C,) or length 0
                          const floating[::1] running_mean,  # IN/OUT (C,) or length 0
                          const floating[::1] running_var,  # IN/OUT (C,) or length 0
                          floating[:, :, ::1] y,            # OUT (N, C, L)
                          floating[:, ::1] mean,            # OUT (N, C)
                          floating[:, ::1] rstd,            # OUT (N, C)
                          double[:, ::1] work,              # SCRATCH (N*C, 2)
                          double eps, double momentum, bint use_input_stats, int n_threads):
    """use_input_stats: statistics per (n, c) over L (GroupNorm rows with one channel), running stats
    (if given) updated with the batch mean of the per-instance mean and unbiased variance; else the
    running statistics normalize every instance."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], S = N * C, t, c, n, s
    cdef const floating *w = _ptr_or_null(weight)
    cdef const floating *b = _ptr_or_null(bias)
    cdef floating *rm = _mut_or_null(running_mean)
    cdef floating *rv = _mut_or_null(running_var)
    cdef const floating *xp
    cdef floating *yp
    cdef floating *mp
    cdef floating *rp
    cdef double *wp
    cdef double sm, sv
    if S == 0 or L == 0:
        return
    xp = &x[0, 0, 0]
    yp = &y[0, 0, 0]
    mp = &mean[0, 0]
    rp = &rstd[0, 0]
    wp = &work[0, 0]
    with nogil:
        if use_input_stats:
            if n_threads <= 1:
                _group_rows_fwd(xp, yp, 0, S, C, 1, L, w, b, mp, rp, wp, eps)
            else:
                for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                    _group_rows_fwd(xp, yp, _chunk_start(S, n_threads, t), _chunk_start(S, n_threads, t + 1),
                                    C, 1, L, w, b, mp, rp, wp, eps)
            if rm != NULL:
                for c in range(C):
                    sm = 0.0
                    sv = 0.0
                    for n in range(N):
                        sm = sm + wp[2 * (n * C + c)]
                        sv = sv + wp[2 * (n * C + c) + 1] / <double>(L - 1)
                    rm[c] = <floating>(momentum * (sm / N) + (1.0 - momentum) * <double>rm[c])
                    rv[c] = <floating>(momentum * (sv / N) + (1.0 - momentum) * <double>rv[c])
        else:
            for s in range(S):
                c = s % C
                mp[s] = running_mean[c]
                rp[s] = <floating>(1.0 / sqrt(<double>running_var[c] + eps))
            if n_threads <= 1:
                _instances_apply(xp, yp, 0, S, C, L, w, b, mp, rp)
            else:
                for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                    _instances_apply(xp, yp, _chunk_start(S, n_threads, t), _chunk_start(S, n_threads, t + 1),
                                     C, L, w, b, mp, rp)


def instance_norm_backward(const floating[:, :, ::1] dy,    # IN  (N, C, L)
                           const floating[:, :, ::1] x,     # IN  (N, C, L)
                           const floating[:, ::1] mean,     # IN  (N, C)
                           const floating[:, ::1] rstd,     # IN  (N, C)
                           const floating[::1] weight,      # IN  (C,) or length 0
                           floating[:, :, ::1] dx,          # OUT (N, C, L)
                           floating[::1] dweight,           # OUT (C,) or length 0 (not wanted)
                           floating[::1] dbias,             # OUT (C,) or length 0 (not wanted)
                           double[:, ::1] work,             # SCRATCH (N*C, 2)
                           bint use_input_stats, int n_threads):
    """GroupNorm backward with one channel per group; without input stats dx = dy * rstd * weight."""
    _groups_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, work, use_input_stats, n_threads)
