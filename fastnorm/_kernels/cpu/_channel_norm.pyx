"""BatchNorm, InstanceNorm and GroupNorm CPU kernels on an (N, C, L) view.

One moments machinery serves the three (``fastnorm_channel.h``): the moments of a contiguous segment
(an (n, c) slice of L values, or a GroupNorm row of C/G * L values) and the per-channel moments of a block
of rows of an (M, C) array (channels contiguous), all in double, merged with Chan's formula in a fixed
order. Results therefore do not depend on the thread count.

- GroupNorm: one task per (n, group) row (K = C/G channels, K*L contiguous values): moments, then the
  output pass over the row while it is still in cache, so x is read from memory once. InstanceNorm is the
  same with K = 1. Backward likewise: per-channel sums of dy and dy*(x - mean) over the row, then dx from
  cache; dweight/dbias from the per-(n, c) sums kept in ``work``, reduced over n in order.
- BatchNorm with L > 1 (N, C, *spatial): a channel's N slices are read twice (statistics, then output),
  so channels are processed so that the second read finds them in cache. When the channels split evenly
  over the threads, each thread takes whole channels (no synchronisation at all). Otherwise (few
  channels: (16, 3, 224, 224)) every thread takes a share of the (n, c) slices of one cache-sized block
  of channels at a time; each slice's moments go to ``work`` and each channel merges its N slices in
  order of n, the same numbers either way. Output passes walk slices last-read-first.
- BatchNorm with L == 1 (channels-last (M, C), or (N, C) inputs): rows cut into ``work.shape[0]``
  contiguous chunks (a count the caller derives from the shape only); each chunk fills per-channel partial
  moments (rows of length C in ``work``), merged over chunks in order. Threads share (chunk, channel
  strip) tasks; strip edges are multiples of the vector width, so no channel's arithmetic depends on
  them. x is read twice here: the statistics need every row first.
Outputs of 16 MB or more (``set_stream_min_bytes``) are written with non-temporal stores (16-bit outputs:
each rounded group of 8 values): a far-larger-than-cache output is not read into the cache before being
overwritten.
Running statistics (``running_mean``/``running_var``, length 0 when absent) are typed const so that
read-only arrays work in evaluation mode; in training they are written through a cast (the public layer
has checked that they are writeable). No allocation, no validation here.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdint cimport uint16_t

from ._common cimport ptr_or_null
from ._fn_channel cimport *  # the channel family's declarations and shared inline helpers

cdef enum:
    # BatchNorm channel blocks shared by all threads hold about this many bytes of the arrays read twice.
    CACHE_BLOCK_BYTES = 4 * 1024 * 1024
    # Channels-last output passes go backwards over blocks of this many rows (forwards inside a block).
    ROW_BLOCK = 64
    # Channels-last statistics: channel strips (multiples of STRIP_ALIGN, at least STRIP_MIN channels) for
    # about STRIP_TASKS tasks per thread when the row chunks (``work.shape[0]``) are fewer.
    STRIP_ALIGN = 16
    STRIP_MIN = 32
    STRIP_TASKS = 4


# Outputs of at least this many bytes are written with non-temporal stores (see fastnorm_channel.h).
cdef Py_ssize_t _stream_min_bytes = 16 * 1024 * 1024


def set_stream_min_bytes(Py_ssize_t nbytes):
    """Test hook: outputs of at least ``nbytes`` bytes get non-temporal stores. Returns the old value."""
    global _stream_min_bytes
    old = _stream_min_bytes
    _stream_min_bytes = nbytes
    return old


# ------------------------------------------------------------------------------------------ segment helpers
cdef inline void _apply_fwd_rows(const data_t *x, data_t *y, Py_ssize_t nr, Py_ssize_t C,
                                 const floating *mu, const floating *a, const floating *b,
                                 bint st, int fmt) noexcept nogil:
    """y[r, c] = (x[r, c] - mu[c]) * a[c] + b[c] over nr rows of length C (float32/64: plain stores, their
    streaming path is fn_stream_rows_*; 16-bit: non-temporal stores with st)."""
    cdef Py_ssize_t r, c
    if data_t is uint16_t and floating is float:
        fn_rows_fwd_h(fmt, x, y, nr, C, mu, a, b, st)
    elif (data_t is float and floating is float) or (data_t is double and floating is double):
        for r in range(nr):
            for c in range(C):
                y[r * C + c] = (x[r * C + c] - mu[c]) * a[c] + b[c]


cdef inline void _apply_bwd_rows(const data_t *dy, const data_t *x, data_t *dx, Py_ssize_t nr,
                                 Py_ssize_t C, const floating *mu, const floating *ka, const floating *kb,
                                 const floating *kc, bint training, bint st, int fmt) noexcept nogil:
    """_apply_bwd per channel c over nr rows of length C (st: non-temporal stores, 16-bit data only)."""
    cdef Py_ssize_t r, c
    if data_t is uint16_t and floating is float:
        fn_rows_bwd_h(fmt, dy, x, dx, nr, C, mu, ka, kb, kc, training, st)
    elif not ((data_t is float and floating is float) or (data_t is double and floating is double)):
        pass
    elif training:
        for r in range(nr):
            for c in range(C):
                dx[r * C + c] = ka[c] * dy[r * C + c] + kb[c] * (x[r * C + c] - mu[c]) + kc[c]
    else:
        for r in range(nr):
            for c in range(C):
                dx[r * C + c] = ka[c] * dy[r * C + c]


cdef inline bint _stream(Py_ssize_t numel, Py_ssize_t itemsize) noexcept nogil:
    """Non-temporal stores for a large output (16-bit outputs: each rounded group of 8 values streamed)."""
    return numel * itemsize >= _stream_min_bytes


cdef inline floating *_mut_or_null(const floating[::1] a) noexcept nogil:
    """Write access to an IN/OUT array typed const (running statistics)."""
    return <floating *>&a[0] if a.shape[0] > 0 else NULL


# ------------------------------------------------------------------------------------------ GroupNorm rows
cdef inline void _group_apply(const data_t *x, data_t *y, Py_ssize_t K, Py_ssize_t L, floating mu,
                              floating rs, const floating *w, const floating *b, bint st, int fmt) noexcept nogil:
    """Output pass over K channels of L values sharing (mu, rs); w, b point at those K channels."""
    cdef Py_ssize_t k
    for k in range(K):
        seg_apply_fwd(x + k * L, y + k * L, L, mu, rs * w[k] if w != NULL else rs, b[k] if b != NULL else 0, st, fmt)


cdef inline void _group_fwd(const data_t *x, data_t *y, Py_ssize_t K, Py_ssize_t L,
                            const floating *w, const floating *b, floating *mean, floating *rstd,
                            double *mom, double eps, bint st, int fmt) noexcept nogil:
    """One (n, group) row of K*L contiguous values: moments, then the output pass from cache.

    mom (may be NULL) receives the row's mean and M2 in double.
    """
    cdef double mu, m2
    cdef floating fmu, frs
    seg_moments(x, K * L, &mu, &m2, fmt)
    fmu = <floating>mu
    frs = <floating>(1.0 / sqrt(m2 / <double>(K * L) + eps))
    mean[0] = fmu
    rstd[0] = frs
    if mom != NULL:
        mom[0] = mu
        mom[1] = m2
    _group_apply(x, y, K, L, fmu, frs, w, b, st, fmt)


cdef inline void _group_bwd(const data_t *dy, const data_t *x, data_t *dx, Py_ssize_t K,
                            Py_ssize_t L, floating mu, floating rs, const floating *w, double *sums,
                            bint training, bint st, int fmt) noexcept nogil:
    """Backward of one (n, group) row; sums[2k], sums[2k+1] = sum(dy), sum(dy * (x - mu)) of channel k.

    training: dx = rs * (w_k dy - G1 / n - (x - mu) rs^2 G2 / n), G1 = sum_k w_k s1_k, G2 = sum_k w_k s2_k,
    n = K*L; else (statistics are constants) dx = rs * w_k * dy.
    """
    cdef Py_ssize_t k
    cdef double g1 = 0.0, g2 = 0.0, wk, cnt = <double>(K * L)
    cdef floating kb = 0, kc = 0
    for k in range(K):
        seg_grad_sums(dy + k * L, x + k * L, mu, L, &sums[2 * k], &sums[2 * k + 1], fmt)
        wk = w[k] if w != NULL else 1.0
        g1 += wk * sums[2 * k]
        g2 += wk * sums[2 * k + 1]
    if training and K * L == 1:
        # one value: dx is exactly 0 (the terms above cancel only up to rounding); * 0 keeps NaN/inf -> NaN
        if data_t is uint16_t:
            dx[0] = fn_f32_to_half(fmt, <float>(rs * (w[0] if w != NULL else 1) * fn_half_to_f32(fmt, dy[0]) * 0))
        else:
            dx[0] = rs * (w[0] if w != NULL else 1) * dy[0] * 0
        return
    if training:
        kb = <floating>(-(<double>rs * rs * rs) * g2 / cnt)
        kc = <floating>(-<double>rs * g1 / cnt)
    for k in range(K):
        seg_apply_bwd(dy + k * L, x + k * L, dx + k * L, L, mu, rs * w[k] if w != NULL else rs, kb, kc,
                      training, st, fmt)


cdef inline void _group_rows_fwd(const data_t *x, data_t *y, Py_ssize_t t, Py_ssize_t nt, Py_ssize_t R,
                                 Py_ssize_t G, Py_ssize_t K, Py_ssize_t L, const floating *w,
                                 const floating *b, floating *mean, floating *rstd, double *mom,
                                 double eps, bint st, int fmt) noexcept nogil:
    """Chunk t of nt of the R = N*G rows; row r is (n, g) = divmod(r, G)."""
    cdef Py_ssize_t r, g, lo, hi
    chunk_bounds(R, t, nt, &lo, &hi)
    for r in range(lo, hi):
        g = r % G
        _group_fwd(x + r * K * L, y + r * K * L, K, L, w + g * K if w != NULL else NULL,
                   b + g * K if b != NULL else NULL, &mean[r], &rstd[r], mom + 2 * r if mom != NULL else NULL,
                   eps, st, fmt)
    if st:
        fn_store_fence()


cdef inline void _group_rows_bwd(const data_t *dy, const data_t *x, data_t *dx, Py_ssize_t t,
                                 Py_ssize_t nt, Py_ssize_t R, Py_ssize_t G, Py_ssize_t K, Py_ssize_t L,
                                 const floating *mean, const floating *rstd, const floating *w,
                                 double *sums, bint training, bint st, int fmt) noexcept nogil:
    cdef Py_ssize_t r, g, off, lo, hi
    chunk_bounds(R, t, nt, &lo, &hi)
    for r in range(lo, hi):
        g = r % G
        off = r * K * L
        _group_bwd(dy + off, x + off, dx + off, K, L, mean[r], rstd[r], w + g * K if w != NULL else NULL,
                   sums + 2 * r * K, training, st, fmt)
    if st:
        fn_store_fence()


cdef inline void _instances_apply(const data_t *x, data_t *y, Py_ssize_t t, Py_ssize_t nt, Py_ssize_t S,
                                  Py_ssize_t C, Py_ssize_t L, const floating *w, const floating *b,
                                  const floating *mean, const floating *rstd, bint st, int fmt) noexcept nogil:
    """Output pass over chunk t of nt of the S = N*C instances, with given statistics."""
    cdef Py_ssize_t s, c, lo, hi
    chunk_bounds(S, t, nt, &lo, &hi)
    for s in range(lo, hi):
        c = s % C
        seg_apply_fwd(x + s * L, y + s * L, L, mean[s], rstd[s] * w[c] if w != NULL else rstd[s],
                      b[c] if b != NULL else 0, st, fmt)
    if st:
        fn_store_fence()


cdef inline void _param_grads(const double *sums, const floating *rstd, Py_ssize_t t, Py_ssize_t nt,
                              Py_ssize_t N, Py_ssize_t C, Py_ssize_t K, floating *dweight,
                              floating *dbias) noexcept nogil:
    """Chunk t of nt of the channels: dbias[c] = sum_n s1[n, c], dweight[c] = sum_n s2[n, c] * rstd[n, c // K]
    (n in order); sums holds (s1, s2) per (n, c), rstd is (N, C // K)."""
    cdef Py_ssize_t c, n, G = C // K, lo, hi
    cdef double sb, sw
    chunk_bounds(C, t, nt, &lo, &hi)
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


# ------------------------------------------------------------------------------------------ BatchNorm
cdef inline void _update_running(floating *rm, floating *rv, Py_ssize_t c, double momentum, double mu,
                                 double var) noexcept nogil:
    """running_mean[c], running_var[c] (those not NULL) moved towards mu, var: r = momentum * v + (1 - momentum) * r."""
    if rm != NULL:
        rm[c] = <floating>(momentum * mu + (1.0 - momentum) * <double>rm[c])
    if rv != NULL:
        rv[c] = <floating>(momentum * var + (1.0 - momentum) * <double>rv[c])


cdef inline void _finish_channel(double mu, double m2, double cnt, double eps, double momentum, floating *mean,
                                 floating *rstd, floating *rm, floating *rv, Py_ssize_t c) noexcept nogil:
    """Batch statistics of channel c from its merged moments; running stats (unbiased var) if not NULL."""
    mean[c] = <floating>mu
    rstd[c] = <floating>(1.0 / sqrt(m2 / cnt + eps))
    _update_running(rm, rv, c, momentum, mu, m2 / (cnt - 1.0))


cdef inline void _fwd_coef(floating *coef, Py_ssize_t ld, Py_ssize_t c, floating mu, floating rs,
                           const floating *w, const floating *b) noexcept nogil:
    """Channel c's y = (x - coef[c]) * coef[ld + c] + coef[2ld + c]: mean, rstd * weight, bias (or 0).

    coef holds rows of ld >= C + FN_WRAP entries (see _wrap_coef)."""
    coef[c] = mu
    coef[ld + c] = rs * w[c] if w != NULL else rs
    coef[2 * ld + c] = b[c] if b != NULL else 0


cdef inline void _bwd_coef(floating *coef, Py_ssize_t ld, Py_ssize_t c, floating mu, floating rs,
                           const floating *w, double s1, double s2, double cnt, bint training) noexcept nogil:
    """Channel c's dx = coef[ld + c] * dy + coef[2ld + c] * (x - coef[c]) + coef[3ld + c] from its totals
    s1 = sum(dy), s2 = sum(dy * (x - mu)): rstd * w * (dy - mean(dy) - xhat * mean(dy * xhat)) when
    training, rstd * w * dy otherwise."""
    cdef double wc = <double>w[c] if w != NULL else 1.0, r = <double>rs
    coef[c] = mu
    coef[ld + c] = rs * w[c] if w != NULL else rs
    coef[2 * ld + c] = <floating>(-r * r * r * wc * s2 / cnt) if training else 0
    coef[3 * ld + c] = <floating>(-r * wc * s1 / cnt) if training else 0


cdef inline void _wrap_coef(floating *coef, Py_ssize_t ld, Py_ssize_t C) noexcept nogil:
    """Entries C .. C + FN_WRAP - 1 of each of the 4 coefficient rows repeat channels 0, 1, ... (mod C)."""
    cdef Py_ssize_t k, j
    for k in range(4):
        for j in range(FN_WRAP):
            coef[k * ld + C + j] = coef[k * ld + j % C]


cdef inline void _bn_channel_forward(const data_t *x, data_t *y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L,
                                     Py_ssize_t c, const floating *w, const floating *b, floating *mean,
                                     floating *rstd, floating *rm, floating *rv, double eps, double momentum,
                                     bint training, bint st, int fmt) noexcept nogil:
    """All of channel c on one thread: slice moments merged over n in order (the next slice prefetched), then
    the output pass over the channel's N slices, last first (still in cache)."""
    cdef Py_ssize_t n, s
    cdef double cnt = 0.0, mu = 0.0, m2 = 0.0, ms, m2s
    if training:
        for n in range(N):
            s = n * C + c
            if n + 1 < N:
                fn_prefetch(x + (s + C) * L, L * sizeof(data_t))
            seg_moments(x + s * L, L, &ms, &m2s, fmt)
            fn_chan_merge(&cnt, &mu, &m2, <double>L, ms, m2s)
        _finish_channel(mu, m2, cnt, eps, momentum, mean, rstd, rm, rv, c)
    for n in range(N - 1, -1, -1):
        s = n * C + c
        seg_apply_fwd(x + s * L, y + s * L, L, mean[c], rstd[c] * w[c] if w != NULL else rstd[c],
                      b[c] if b != NULL else 0, st, fmt)
    if st:
        fn_store_fence()


cdef inline void _bn_channel_backward(const data_t *dy, const data_t *x, data_t *dx, Py_ssize_t N,
                                      Py_ssize_t C, Py_ssize_t L, Py_ssize_t c, const floating *mean,
                                      const floating *rstd, const floating *w, floating *coef, Py_ssize_t ld,
                                      double *tot, bint need_sums, bint training, bint st, int fmt) noexcept nogil:
    """All of channel c on one thread: sums over its slices (n in order) into tot[2c], tot[2c+1], then dx
    over the slices, last first."""
    cdef Py_ssize_t n, s
    cdef double s1 = 0.0, s2 = 0.0, a1, a2
    if need_sums:
        for n in range(N):
            s = n * C + c
            if n + 1 < N:
                fn_prefetch(dy + (s + C) * L, L * sizeof(data_t))
                fn_prefetch(x + (s + C) * L, L * sizeof(data_t))
            seg_grad_sums(dy + s * L, x + s * L, mean[c], L, &a1, &a2, fmt)
            s1 = s1 + a1
            s2 = s2 + a2
        tot[2 * c] = s1
        tot[2 * c + 1] = s2
    _bwd_coef(coef, ld, c, mean[c], rstd[c], w, s1, s2, <double>(N * L), training)
    for n in range(N - 1, -1, -1):
        s = n * C + c
        seg_apply_bwd(dy + s * L, x + s * L, dx + s * L, L, coef[c], coef[ld + c], coef[2 * ld + c],
                      coef[3 * ld + c], training, st, fmt)
    if st:
        fn_store_fence()


cdef inline bint _per_channel(Py_ssize_t C, int n_threads) noexcept nogil:
    """Whether whole channels per thread balance well (else threads share channel blocks)."""
    return C % n_threads == 0 or C >= 8 * n_threads


cdef inline Py_ssize_t _channel_block(Py_ssize_t N, Py_ssize_t C, Py_ssize_t L,
                                      Py_ssize_t nbytes) noexcept nogil:
    """Channels per shared block: about CACHE_BLOCK_BYTES of data (nbytes per value read twice)."""
    return max(1, min(C, CACHE_BLOCK_BYTES // max(1, N * L * nbytes)))


cdef inline Py_ssize_t _block_slice(Py_ssize_t j, Py_ssize_t C, Py_ssize_t cb, Py_ssize_t nb) noexcept nogil:
    """n*C + c of the j-th (n, c) slice of the channel block [cb, cb + nb): n = j // nb, c = cb + j % nb."""
    return (j // nb) * C + cb + j % nb


cdef inline void _block_moments(const data_t *x, Py_ssize_t t, Py_ssize_t nt, Py_ssize_t N, Py_ssize_t C,
                                Py_ssize_t L, Py_ssize_t cb, Py_ssize_t nb, double *mom, int fmt) noexcept nogil:
    """Chunk t of nt of the block's N*nb slices: mom[2s], mom[2s+1] = mean, M2 of slice s."""
    cdef Py_ssize_t j, s, lo, hi
    chunk_bounds(N * nb, t, nt, &lo, &hi)
    for j in range(lo, hi):
        s = _block_slice(j, C, cb, nb)
        seg_moments(x + s * L, L, &mom[2 * s], &mom[2 * s + 1], fmt)


cdef inline void _block_grad_sums(const data_t *dy, const data_t *x, Py_ssize_t t, Py_ssize_t nt,
                                  Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, Py_ssize_t cb, Py_ssize_t nb,
                                  const floating *mean, double *sums, int fmt) noexcept nogil:
    cdef Py_ssize_t j, s, lo, hi
    chunk_bounds(N * nb, t, nt, &lo, &hi)
    for j in range(lo, hi):
        s = _block_slice(j, C, cb, nb)
        seg_grad_sums(dy + s * L, x + s * L, mean[s % C], L, &sums[2 * s], &sums[2 * s + 1], fmt)


cdef inline void _block_apply(const data_t *dy, const data_t *x, data_t *out, Py_ssize_t t,
                              Py_ssize_t nt, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, Py_ssize_t cb,
                              Py_ssize_t nb, const floating *coef, Py_ssize_t ld, bint backward,
                              bint training, bint st, int fmt) noexcept nogil:
    """Output pass (y from x, or dx from dy and x) over chunk t of nt of the block's slices, last first."""
    cdef Py_ssize_t j, s, c, lo, hi
    chunk_bounds(N * nb, t, nt, &lo, &hi)
    for j in range(hi - 1, lo - 1, -1):
        s = _block_slice(j, C, cb, nb)
        c = s % C
        if backward:
            seg_apply_bwd(dy + s * L, x + s * L, out + s * L, L, coef[c], coef[ld + c], coef[2 * ld + c],
                          coef[3 * ld + c], training, st, fmt)
        else:
            seg_apply_fwd(x + s * L, out + s * L, L, coef[c], coef[ld + c], coef[2 * ld + c], st, fmt)
    if st:
        fn_store_fence()


cdef inline void _rows_moments(const data_t *x, Py_ssize_t k, Py_ssize_t nch, Py_ssize_t ns, Py_ssize_t sw,
                               Py_ssize_t M, Py_ssize_t C, double *work, int fmt) noexcept nogil:
    """Channels-last task k: row chunk k // ns of nch, channel strip k % ns of width sw, into the chunk's
    work row [mean (C) | M2 (C) | scratch (3C)]. Each channel's arithmetic does not depend on the strips
    (their edges are multiples of STRIP_ALIGN: the vector lanes of the column kernels), only on the chunk."""
    cdef Py_ssize_t lo, hi, c0 = (k % ns) * sw, w
    cdef double *wk = work + (k // ns) * 5 * C + c0
    chunk_bounds(M, k // ns, nch, &lo, &hi)
    w = min(sw, C - c0)
    if hi <= lo or w <= 0:
        return
    if data_t is float:
        fn_col_moments_ld_f(x + lo * C + c0, hi - lo, w, C, wk, wk + C, wk + 2 * C, wk + 3 * C, wk + 4 * C)
    elif data_t is double:
        fn_col_moments_ld_d(x + lo * C + c0, hi - lo, w, C, wk, wk + C, wk + 2 * C, wk + 3 * C, wk + 4 * C)
    else:
        fn_col_moments_h(fmt, x + lo * C + c0, hi - lo, w, C, wk, wk + C, wk + 2 * C, wk + 3 * C, wk + 4 * C)


cdef inline void _rows_grad_sums(const data_t *dy, const data_t *x, Py_ssize_t k, Py_ssize_t nch,
                                 Py_ssize_t ns, Py_ssize_t sw, Py_ssize_t M, Py_ssize_t C, const floating *mean,
                                 double *work, int fmt) noexcept nogil:
    """Channels-last task k (as _rows_moments): the chunk's work row [sum dy (C) | sum dy * (x - mean) (C)]."""
    cdef Py_ssize_t c, lo, hi, c0 = (k % ns) * sw, w
    cdef double *wk = work + (k // ns) * 2 * C + c0
    chunk_bounds(M, k // ns, nch, &lo, &hi)
    w = min(sw, C - c0)
    if w <= 0:
        return
    for c in range(w):
        wk[c] = 0.0
        wk[C + c] = 0.0
    if hi <= lo:
        return
    if data_t is float and floating is float:
        fn_col_grad_sums_ld_f(dy + lo * C + c0, x + lo * C + c0, hi - lo, w, C, mean + c0, wk, wk + C)
    elif data_t is double and floating is double:
        fn_col_grad_sums_ld_d(dy + lo * C + c0, x + lo * C + c0, hi - lo, w, C, mean + c0, wk, wk + C)
    elif data_t is uint16_t and floating is float:
        fn_col_grad_sums_h(fmt, dy + lo * C + c0, x + lo * C + c0, hi - lo, w, C, mean + c0, wk, wk + C)


cdef inline Py_ssize_t _strips(Py_ssize_t nch, Py_ssize_t C, int n_threads) noexcept nogil:
    """Width of the channel strips that give n_threads threads enough channels-last tasks with nch chunks."""
    cdef Py_ssize_t ns = 1, sw
    if n_threads > 1 and nch < STRIP_TASKS * n_threads:
        ns = (STRIP_TASKS * n_threads + nch - 1) // nch
    sw = (C + ns - 1) // ns
    sw = (sw + STRIP_ALIGN - 1) // STRIP_ALIGN * STRIP_ALIGN
    return max(sw, STRIP_MIN)


cdef inline void _rows_apply(const data_t *dy, const data_t *x, data_t *out, Py_ssize_t t,
                             Py_ssize_t nt, Py_ssize_t M, Py_ssize_t C, const floating *coef, Py_ssize_t ld,
                             bint backward, bint training, bint st, int fmt) noexcept nogil:
    """Channels-last output pass over chunk t of nt of the M rows, in ROW_BLOCK blocks, last block first.

    With st, each block (whole rows, contiguous) is one span of non-temporal stores (coef wrapped)."""
    cdef Py_ssize_t lo, hi, b, e, pb
    # whole blocks per chunk: the blocks (spans, and so their unaligned heads and tails) are the same for
    # every thread count
    chunk_bounds((M + ROW_BLOCK - 1) // ROW_BLOCK, t, nt, &lo, &hi)
    lo = lo * ROW_BLOCK
    hi = min(M, hi * ROW_BLOCK)
    e = hi
    while e > lo:
        b = max(lo, (e - 1) // ROW_BLOCK * ROW_BLOCK)
        if b > lo:
            # the next block down (the hardware prefetchers follow ascending streams only)
            pb = max(lo, b - ROW_BLOCK)
            fn_prefetch(x + pb * C, (b - pb) * C * sizeof(data_t))
            if backward:
                fn_prefetch(dy + pb * C, (b - pb) * C * sizeof(data_t))
        if data_t is uint16_t:
            # 16-bit rows stream their rounded groups themselves (st)
            if backward:
                _apply_bwd_rows(dy + b * C, x + b * C, out + b * C, e - b, C, coef, coef + ld, coef + 2 * ld,
                                coef + 3 * ld, training, st, fmt)
            else:
                _apply_fwd_rows(x + b * C, out + b * C, e - b, C, coef, coef + ld, coef + 2 * ld, st, fmt)
        elif backward and st:
            if data_t is float and floating is float:
                fn_stream_rows_bwd_f(dy + b * C, x + b * C, out + b * C, (e - b) * C, C, coef, coef + ld,
                                     coef + 2 * ld, coef + 3 * ld, training)
            elif data_t is double and floating is double:
                fn_stream_rows_bwd_d(dy + b * C, x + b * C, out + b * C, (e - b) * C, C, coef, coef + ld,
                                     coef + 2 * ld, coef + 3 * ld, training)
        elif backward:
            _apply_bwd_rows(dy + b * C, x + b * C, out + b * C, e - b, C, coef, coef + ld, coef + 2 * ld,
                            coef + 3 * ld, training, st, fmt)
        elif st:
            if data_t is float and floating is float:
                fn_stream_rows_fwd_f(x + b * C, out + b * C, (e - b) * C, C, coef, coef + ld, coef + 2 * ld)
            elif data_t is double and floating is double:
                fn_stream_rows_fwd_d(x + b * C, out + b * C, (e - b) * C, C, coef, coef + ld, coef + 2 * ld)
        else:
            _apply_fwd_rows(x + b * C, out + b * C, e - b, C, coef, coef + ld, coef + 2 * ld, st, fmt)
        e = b
    if st:
        fn_store_fence()


# ------------------------------------------------------------------------------------------ entry points
def _batch_norm_forward(const data_t[:, :, ::1] x,         # IN  (N, C, L)
                        const floating[::1] weight,          # IN  (C,) or length 0
                        const floating[::1] bias,            # IN  (C,) or length 0
                        const floating[::1] running_mean,    # IN/OUT (C,) or length 0; updated when training
                        const floating[::1] running_var,     # IN/OUT (C,) or length 0; updated when training
                        data_t[:, :, ::1] y,               # OUT (N, C, L)
                        floating[::1] mean,                  # OUT (C,)
                        floating[::1] rstd,                  # OUT (C,)
                        double[:, ::1] work,                 # SCRATCH L > 1: (N*C, 2); L == 1: (n_chunks, 5*C)
                        floating[:, ::1] coef,               # SCRATCH (4, C + 8)
                        double eps, double momentum, bint training, int fmt, int n_threads):
    """training: batch statistics over (N, L) per channel, running stats updated; else running stats.

    L == 1 is the channels-last (M, C) layout (M = N rows). ``work`` is not used in evaluation mode.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c, n, t, nch, cb, nb, B, lo, hi, ld, sw, ns
    cdef bint st
    cdef const floating *w = ptr_or_null(weight)
    cdef const floating *b = ptr_or_null(bias)
    cdef floating *rm = _mut_or_null(running_mean)
    cdef floating *rv = _mut_or_null(running_var)
    cdef const data_t *xp
    cdef data_t *yp
    cdef floating *cf
    cdef double *wp
    cdef double cnt, mu, m2
    if not training:
        for c in range(C):
            mean[c] = running_mean[c]
            rstd[c] = <floating>(1.0 / sqrt(<double>running_var[c] + eps))
    if N * C == 0 or L == 0:
        return
    xp = &x[0, 0, 0]
    yp = &y[0, 0, 0]
    wp = &work[0, 0]
    cf = &coef[0, 0]
    ld = coef.shape[1]
    nch = work.shape[0]
    st = _stream(N * C * L, sizeof(data_t))
    with nogil:
        if L > 1 and _per_channel(C, n_threads):
            if n_threads <= 1:
                for c in range(C):
                    _bn_channel_forward(xp, yp, N, C, L, c, w, b, &mean[0], &rstd[0], rm, rv, eps, momentum,
                                        training, st, fmt)
            else:
                for c in prange(C, schedule="static", num_threads=n_threads):
                    _bn_channel_forward(xp, yp, N, C, L, c, w, b, &mean[0], &rstd[0], rm, rv, eps, momentum,
                                        training, st, fmt)
        elif L > 1:
            # (here n_threads > 1: one thread always takes whole channels)
            B = _channel_block(N, C, L, sizeof(floating))
            cb = 0
            while cb < C:
                nb = min(B, C - cb)
                if training:
                    for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                        _block_moments(xp, t, n_threads, N, C, L, cb, nb, wp, fmt)
                    for c in range(cb, cb + nb):
                        cnt = 0.0
                        mu = 0.0
                        m2 = 0.0
                        for n in range(N):
                            fn_chan_merge(&cnt, &mu, &m2, <double>L, wp[2 * (n * C + c)],
                                          wp[2 * (n * C + c) + 1])
                        _finish_channel(mu, m2, cnt, eps, momentum, &mean[0], &rstd[0], rm, rv, c)
                for c in range(cb, cb + nb):
                    _fwd_coef(cf, ld, c, mean[c], rstd[c], w, b)
                for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                    _block_apply(NULL, xp, yp, t, n_threads, N, C, L, cb, nb, cf, ld, False, False, st, fmt)
                cb = cb + nb
        else:
            if training:
                sw = _strips(nch, C, n_threads)
                ns = (C + sw - 1) // sw
                if n_threads <= 1 or nch * ns <= 1:
                    for t in range(nch * ns):
                        _rows_moments(xp, t, nch, ns, sw, N, C, wp, fmt)
                else:
                    for t in prange(nch * ns, schedule="static", num_threads=n_threads):
                        _rows_moments(xp, t, nch, ns, sw, N, C, wp, fmt)
                for c in range(C):
                    cnt = 0.0
                    mu = 0.0
                    m2 = 0.0
                    for t in range(nch):
                        chunk_bounds(N, t, nch, &lo, &hi)
                        fn_chan_merge(&cnt, &mu, &m2, <double>(hi - lo), wp[t * 5 * C + c],
                                      wp[t * 5 * C + C + c])
                    _finish_channel(mu, m2, cnt, eps, momentum, &mean[0], &rstd[0], rm, rv, c)
            for c in range(C):
                _fwd_coef(cf, ld, c, mean[c], rstd[c], w, b)
            _wrap_coef(cf, ld, C)
            if n_threads <= 1:
                _rows_apply(NULL, xp, yp, 0, 1, N, C, cf, ld, False, False, st, fmt)
            else:
                for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                    _rows_apply(NULL, xp, yp, t, n_threads, N, C, cf, ld, False, False, st, fmt)


def _batch_norm_backward(const data_t[:, :, ::1] dy,       # IN  (N, C, L)
                         const data_t[:, :, ::1] x,        # IN  (N, C, L)
                         const floating[::1] mean,           # IN  (C,)
                         const floating[::1] rstd,           # IN  (C,)
                         const floating[::1] weight,         # IN  (C,) or length 0
                         data_t[:, :, ::1] dx,             # OUT (N, C, L)
                         floating[::1] dweight,              # OUT (C,) or length 0 (not wanted)
                         floating[::1] dbias,                # OUT (C,) or length 0 (not wanted)
                         double[:, ::1] work,                # SCRATCH L>1: (N*C+C, 2); L==1: (chunks+1, 2C)
                         floating[:, ::1] coef,              # SCRATCH (4, C + 8)
                         bint training, int fmt, int n_threads):
    """training: dx through the batch statistics; else (running statistics) dx = dy * rstd * weight.

    dweight = sum(dy * (x - mean) * rstd), dbias = sum(dy) per channel, reduced in a fixed order.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c, n, t, nch, cb, nb, B, ld, sw, ns
    cdef bint st
    cdef const floating *w = ptr_or_null(weight)
    cdef floating *dwp = out_or_null(dweight)
    cdef floating *dbp = out_or_null(dbias)
    cdef bint need_sums = training or dwp != NULL or dbp != NULL
    cdef const data_t *gp
    cdef const data_t *xp
    cdef data_t *dxp
    cdef const floating *mp
    cdef const floating *rp
    cdef floating *cf
    cdef double *wp
    cdef double *tot
    cdef double s1, s2, cnt
    if empty_backward(dwp, dbp, N, C, L):
        return
    gp = &dy[0, 0, 0]
    xp = &x[0, 0, 0]
    dxp = &dx[0, 0, 0]
    mp = &mean[0]
    rp = &rstd[0]
    cf = &coef[0, 0]
    ld = coef.shape[1]
    wp = &work[0, 0]
    nch = work.shape[0] - 1 if L == 1 else 0
    tot = wp + 2 * N * C if L > 1 else wp + nch * 2 * C     # per-channel (sum dy, sum dy*(x - mean))
    cnt = <double>(N * L)
    st = _stream(N * C * L, sizeof(data_t))
    with nogil:
        if L > 1 and _per_channel(C, n_threads):
            if n_threads <= 1:
                for c in range(C):
                    _bn_channel_backward(gp, xp, dxp, N, C, L, c, mp, rp, w, cf, ld, tot, need_sums, training, st, fmt)
            else:
                for c in prange(C, schedule="static", num_threads=n_threads):
                    _bn_channel_backward(gp, xp, dxp, N, C, L, c, mp, rp, w, cf, ld, tot, need_sums, training, st, fmt)
        elif L > 1:
            B = _channel_block(N, C, L, 2 * sizeof(floating))
            cb = 0
            while cb < C:
                nb = min(B, C - cb)
                if need_sums:
                    for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                        _block_grad_sums(gp, xp, t, n_threads, N, C, L, cb, nb, mp, wp, fmt)
                    for c in range(cb, cb + nb):
                        s1 = 0.0
                        s2 = 0.0
                        for n in range(N):
                            s1 = s1 + wp[2 * (n * C + c)]
                            s2 = s2 + wp[2 * (n * C + c) + 1]
                        tot[2 * c] = s1
                        tot[2 * c + 1] = s2
                for c in range(cb, cb + nb):
                    _bwd_coef(cf, ld, c, mp[c], rp[c], w, tot[2 * c], tot[2 * c + 1], cnt, training)
                for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                    _block_apply(gp, xp, dxp, t, n_threads, N, C, L, cb, nb, cf, ld, True, training, st, fmt)
                cb = cb + nb
        else:
            if need_sums:
                sw = _strips(nch, C, n_threads)
                ns = (C + sw - 1) // sw
                if n_threads <= 1 or nch * ns <= 1:
                    for t in range(nch * ns):
                        _rows_grad_sums(gp, xp, t, nch, ns, sw, N, C, mp, wp, fmt)
                else:
                    for t in prange(nch * ns, schedule="static", num_threads=n_threads):
                        _rows_grad_sums(gp, xp, t, nch, ns, sw, N, C, mp, wp, fmt)
                for c in range(C):
                    s1 = 0.0
                    s2 = 0.0
                    for t in range(nch):
                        s1 = s1 + wp[t * 2 * C + c]
                        s2 = s2 + wp[t * 2 * C + C + c]
                    tot[2 * c] = s1
                    tot[2 * c + 1] = s2
            for c in range(C):
                _bwd_coef(cf, ld, c, mp[c], rp[c], w, tot[2 * c], tot[2 * c + 1], cnt, training)
            _wrap_coef(cf, ld, C)
            if n_threads <= 1:
                _rows_apply(gp, xp, dxp, 0, 1, N, C, cf, ld, True, training, st, fmt)
            else:
                for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                    _rows_apply(gp, xp, dxp, t, n_threads, N, C, cf, ld, True, training, st, fmt)
        if need_sums:
            for c in range(C):
                put_param_grads(dwp, dbp, c, tot[2 * c], tot[2 * c + 1] * <double>rstd[c])


def _group_norm_forward(const data_t[:, :, ::1] x,         # IN  (N, C, L)
                        const floating[::1] weight,          # IN  (C,) or length 0
                        const floating[::1] bias,            # IN  (C,) or length 0
                        data_t[:, :, ::1] y,               # OUT (N, C, L)
                        floating[:, ::1] mean,               # OUT (N, G)
                        floating[:, ::1] rstd,               # OUT (N, G)
                        double eps, int fmt, int n_threads):
    """Statistics per (n, group) over its C/G channels and L positions; affine per channel."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], G = mean.shape[1], K, R, t
    cdef bint st
    cdef const floating *w = ptr_or_null(weight)
    cdef const floating *b = ptr_or_null(bias)
    cdef const data_t *xp
    cdef data_t *yp
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
    st = _stream(N * C * L, sizeof(data_t))
    with nogil:
        if n_threads <= 1:
            _group_rows_fwd(xp, yp, 0, 1, R, G, K, L, w, b, mp, rp, NULL, eps, st, fmt)
        else:
            for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                _group_rows_fwd(xp, yp, t, n_threads, R, G, K, L, w, b, mp, rp, NULL, eps, st, fmt)


def _group_norm_backward(const data_t[:, :, ::1] dy,       # IN  (N, C, L)
                         const data_t[:, :, ::1] x,        # IN  (N, C, L)
                         const floating[:, ::1] mean,        # IN  (N, G)
                         const floating[:, ::1] rstd,        # IN  (N, G)
                         const floating[::1] weight,         # IN  (C,) or length 0
                         data_t[:, :, ::1] dx,             # OUT (N, C, L)
                         floating[::1] dweight,              # OUT (C,) or length 0 (not wanted)
                         floating[::1] dbias,                # OUT (C,) or length 0 (not wanted)
                         double[:, ::1] work,                # SCRATCH (N*C, 2)
                         int fmt, int n_threads):
    """dx per (n, group) row from cache; dweight/dbias from per-(n, c) sums reduced over n in order."""
    _groups_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, work, True, fmt, n_threads)


def _instance_norm_forward(const data_t[:, :, ::1] x,      # IN  (N, C, L)
                           const floating[::1] weight,       # IN  (C,) or length 0
                           const floating[::1] bias,         # IN  (C,) or length 0
                           const floating[::1] running_mean,  # IN/OUT (C,) or length 0
                           const floating[::1] running_var,  # IN/OUT (C,) or length 0
                           data_t[:, :, ::1] y,            # OUT (N, C, L)
                           floating[:, ::1] mean,            # OUT (N, C)
                           floating[:, ::1] rstd,            # OUT (N, C)
                           double[:, ::1] work,              # SCRATCH (N*C, 2)
                           double eps, double momentum, bint use_input_stats, int fmt, int n_threads):
    """use_input_stats: statistics per (n, c) over L (GroupNorm rows of one channel); running stats, if
    given, updated with the batch mean of the per-instance mean and unbiased variance. Otherwise the
    running statistics normalize every instance."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], S = N * C, t, c, n, s
    cdef bint st
    cdef const floating *w = ptr_or_null(weight)
    cdef const floating *b = ptr_or_null(bias)
    cdef floating *rm = _mut_or_null(running_mean)
    cdef floating *rv = _mut_or_null(running_var)
    cdef const data_t *xp
    cdef data_t *yp
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
    st = _stream(N * C * L, sizeof(data_t))
    with nogil:
        if use_input_stats:
            if n_threads <= 1:
                _group_rows_fwd(xp, yp, 0, 1, S, C, 1, L, w, b, mp, rp, wp, eps, st, fmt)
            else:
                for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                    _group_rows_fwd(xp, yp, t, n_threads, S, C, 1, L, w, b, mp, rp, wp, eps, st, fmt)
            if rm != NULL or rv != NULL:
                for c in range(C):
                    sm = 0.0
                    sv = 0.0
                    for n in range(N):
                        sm = sm + wp[2 * (n * C + c)]
                        sv = sv + wp[2 * (n * C + c) + 1] / <double>(L - 1)
                    _update_running(rm, rv, c, momentum, sm / N, sv / N)
        else:
            for s in range(S):
                c = s % C
                mp[s] = running_mean[c]
                rp[s] = <floating>(1.0 / sqrt(<double>running_var[c] + eps))
            if n_threads <= 1:
                _instances_apply(xp, yp, 0, 1, S, C, L, w, b, mp, rp, st, fmt)
            else:
                for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                    _instances_apply(xp, yp, t, n_threads, S, C, L, w, b, mp, rp, st, fmt)


def _instance_norm_backward(const data_t[:, :, ::1] dy,    # IN  (N, C, L)
                            const data_t[:, :, ::1] x,     # IN  (N, C, L)
                            const floating[:, ::1] mean,     # IN  (N, C)
                            const floating[:, ::1] rstd,     # IN  (N, C)
                            const floating[::1] weight,      # IN  (C,) or length 0
                            data_t[:, :, ::1] dx,          # OUT (N, C, L)
                            floating[::1] dweight,           # OUT (C,) or length 0 (not wanted)
                            floating[::1] dbias,             # OUT (C,) or length 0 (not wanted)
                            double[:, ::1] work,             # SCRATCH (N*C, 2)
                            bint use_input_stats, int fmt, int n_threads):
    """GroupNorm backward with one channel per group; without input stats dx = dy * rstd * weight."""
    _groups_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, work, use_input_stats, fmt, n_threads)


cdef _groups_backward(const data_t[:, :, ::1] dy, const data_t[:, :, ::1] x, const floating[:, ::1] mean,
                      const floating[:, ::1] rstd, const floating[::1] weight, data_t[:, :, ::1] dx,
                      floating[::1] dweight, floating[::1] dbias, double[:, ::1] work, bint training,
                      int fmt, int n_threads):
    """GroupNorm / InstanceNorm backward: G = mean.shape[1] groups of K = C/G channels."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], G = mean.shape[1], K, R, t
    cdef bint st
    cdef const floating *w = ptr_or_null(weight)
    cdef floating *dwp = out_or_null(dweight)
    cdef floating *dbp = out_or_null(dbias)
    cdef const data_t *gp
    cdef const data_t *xp
    cdef data_t *dxp
    cdef const floating *mp
    cdef const floating *rp
    cdef double *wp
    if empty_backward(dwp, dbp, N, C, L):
        return
    K = C // G
    R = N * G
    gp = &dy[0, 0, 0]
    xp = &x[0, 0, 0]
    dxp = &dx[0, 0, 0]
    mp = &mean[0, 0]
    rp = &rstd[0, 0]
    wp = &work[0, 0]
    st = _stream(N * C * L, sizeof(data_t))
    with nogil:
        if n_threads <= 1:
            _group_rows_bwd(gp, xp, dxp, 0, 1, R, G, K, L, mp, rp, w, wp, training, st, fmt)
            if dwp != NULL or dbp != NULL:
                _param_grads(wp, rp, 0, 1, N, C, K, dwp, dbp)
        else:
            for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                _group_rows_bwd(gp, xp, dxp, t, n_threads, R, G, K, L, mp, rp, w, wp, training, st, fmt)
            if dwp != NULL or dbp != NULL:
                for t in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                    _param_grads(wp, rp, t, n_threads, N, C, K, dwp, dbp)


# ------------------------------------------------------------------------------------------ public entries
# The kernels' names: 16-bit data (bfloat16, float16) goes to the fused kernels as uint16 views with its
# format code; everything else as it is. Arguments as the fused kernels' above, without ``fmt``.
def batch_norm_forward(x, weight, bias, running_mean, running_var, y, mean, rstd, work, coef, double eps,
                       double momentum, bint training, int n_threads):
    cdef int fmt = half_fmt(x)
    _batch_norm_forward(half_bits(x, fmt), weight, bias, running_mean, running_var, half_bits(y, fmt), mean, rstd, work,
                        coef, eps, momentum, training, fmt, n_threads)


def batch_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, work, coef, bint training, int n_threads):
    cdef int fmt = half_fmt(x)
    _batch_norm_backward(half_bits(dy, fmt), half_bits(x, fmt), mean, rstd, weight, half_bits(dx, fmt), dweight,
                         dbias, work, coef, training, fmt, n_threads)


def group_norm_forward(x, weight, bias, y, mean, rstd, double eps, int n_threads):
    cdef int fmt = half_fmt(x)
    _group_norm_forward(half_bits(x, fmt), weight, bias, half_bits(y, fmt), mean, rstd, eps, fmt, n_threads)


def group_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, work, int n_threads):
    cdef int fmt = half_fmt(x)
    _group_norm_backward(half_bits(dy, fmt), half_bits(x, fmt), mean, rstd, weight, half_bits(dx, fmt), dweight,
                         dbias, work, fmt, n_threads)


def instance_norm_forward(x, weight, bias, running_mean, running_var, y, mean, rstd, work, double eps,
                          double momentum, bint use_input_stats, int n_threads):
    cdef int fmt = half_fmt(x)
    _instance_norm_forward(half_bits(x, fmt), weight, bias, running_mean, running_var, half_bits(y, fmt), mean, rstd,
                           work, eps, momentum, use_input_stats, fmt, n_threads)


def instance_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, work, bint use_input_stats,
                           int n_threads):
    cdef int fmt = half_fmt(x)
    _instance_norm_backward(half_bits(dy, fmt), half_bits(x, fmt), mean, rstd, weight, half_bits(dx, fmt), dweight,
                            dbias, work, use_input_stats, fmt, n_threads)
