"""LayerNorm and RMSNorm CPU kernels on an (M, N) row view, with an optional fused residual add.

Forward: one row per task, OpenMP static over rows. The row (N elements) is read from memory once and
re-read from cache for the two-pass moments and the output pass. One compiled loop serves every thread count
(``use_threads_if``), so each row's result is the same bitwise whatever the number of threads.
Backward: rows split into ``bwd_chunks(M, N)`` contiguous chunks, a number that depends on the shape only,
shared among the threads. Each chunk accumulates its dweight/dbias terms in a row of the input dtype (pure-SIMD
adds; the running thread's row ``dw_acc[t]``, zeroed at the chunk's start, so it stays in that core's cache),
folded every FOLD_ROWS rows into the chunk's float64 partial row (``dw_part[c]``) so float32 sums stay short;
then the partials are summed in chunk order: bitwise the same for every thread count, no atomics.
Fused residual add (``add_*``): the forward writes h = x + residual and normalizes h while its row is in
cache; the backward adds dh into dx in dx's own loop.
16-bit storage (bfloat16, float16; passed as uint16 views + format code): the forward's statistics and output,
and the backward's sums and dx, are computed from the 16-bit rows converted in registers (fastnorm_half_rows.h)
with the float32 row code's operations, so every result is the float32 kernel's on the widened inputs, rounded to
nearest even once.
Statistics, parameters and the dweight/dbias accumulators are float32.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport isfinite, sqrt
from libc.stdint cimport uint16_t

from fastnorm._kernels.cpu._common cimport chunk_start, ptr_or_null

from fastnorm._dtypes import HALF_FORMAT

cdef enum:
    FOLD_ROWS = 32
    MAX_CHUNKS = 64
    MIN_CHUNKS = 16
    # Scratch budget of the backward's partial rows (bytes): fewer chunks for very long rows.
    SCRATCH_BYTES = 32 << 20
    # Columns of the dweight/dbias partial rows summed per task (the sum over chunks runs along rows: SIMD).
    RED_BLOCK = 512
    # Outputs larger than this (the last-level cache of a Zen 3 CCX, or of a client CPU) are written with
    # streaming stores: they leave the cache before anything reads them, and a regular store reads each
    # destination line first (a third more memory traffic on a forward). Smaller ones stay in cache for the
    # caller. Streamed float32 backward rows are computed into a stack block of NT_BLOCK elements (L1) and copied.
    NT_BYTES = 32 << 20
    NT_BLOCK = 1024
    # How far ahead (bytes of rows, at least the next row) the float32/float64 LayerNorm forward's second pass
    # prefetches: one row of 4 KiB ahead left its first pass waiting on memory (Zen 5, loaded, one thread, median
    # against the next-row build in one process: (4096, 1024) 1.07-1.18x faster, (8192, 768) 1.02-1.08x; the 16-bit
    # forward showed no gain and keeps the next row).
    PF_BYTES = 16 << 10


cdef extern from "fastnorm_rows.h" nogil:
    void fn_ln_bwd_apply_f(const float *dy, const float *x, float mu, float rs, float c1, float c2, const float *w,
                           const float *dh, float *dx, float *dwa, float *dba, Py_ssize_t n)
    void fn_ln_bwd_apply_d(const double *dy, const double *x, double mu, double rs, double c1, double c2,
                           const double *w, const double *dh, double *dx, double *dwa, double *dba, Py_ssize_t n)
    void fn_rms_bwd_apply_f(const float *dy, const float *x, float rs, float c2, const float *w, const float *dh,
                            float *dx, float *dwa, Py_ssize_t n)
    void fn_rms_bwd_apply_d(const double *dy, const double *x, double rs, double c2, const double *w,
                            const double *dh, double *dx, double *dwa, Py_ssize_t n)


cdef extern from "fastnorm_half_rows.h" nogil:
    void fn_norm_out_f(const float *x, const float *w, const float *b, float *y, float mu, float rs, int rms, int nt,
                       Py_ssize_t n)
    void fn_half_norm_out(int fmt, const uint16_t *x, const float *w, const float *b, uint16_t *y, float mu,
                          float rs, int rms, int nt, Py_ssize_t n)
    void fn_half_add_row(int fmt, const uint16_t *x, const uint16_t *r, uint16_t *h, uint16_t *hb, int nt,
                         Py_ssize_t n)
    double fn_half_sum_dev(int fmt, const uint16_t *x, Py_ssize_t n, float mu)
    double fn_half_sumsq_dev(int fmt, const uint16_t *x, Py_ssize_t n, float mu, const uint16_t *pf)
    double fn_half_sumsq_safe(int fmt, const uint16_t *x, Py_ssize_t n)
    void fn_half_bwd_sums(int fmt, const uint16_t *dy, const float *w, const uint16_t *x, float mu, Py_ssize_t n,
                          double *s1, double *s2)
    void fn_half_bwd_apply(int fmt, const uint16_t *dy, const uint16_t *x, const uint16_t *dh, const float *w,
                           uint16_t *dx, float *dwa, float *dba, float mu, float rs, float c1, float c2, int rms,
                           int nt, Py_ssize_t n)
    float fn_half_to_f32(int fmt, uint16_t h)
    uint16_t fn_f32_to_half(int fmt, float f)


cdef extern from "fastnorm_stream.h" nogil:
    void fn_sfence()
    void fn_stream_store_f(const float *src, float *dst, Py_ssize_t n)
    Py_ssize_t fn_stream_head_f(const float *dst)
    void fn_prefetch_bytes(const void *p, Py_ssize_t nbytes)


cdef extern from "fastnorm_moments.h" nogil:
    enum: FN_SPLIT_EXACT
    double fn_sum_f(const float *x, Py_ssize_t n)
    double fn_sum_d(const double *x, Py_ssize_t n)
    double fn_sum_dev_f(const float *x, Py_ssize_t n, float mu)
    double fn_sum_dev_d(const double *x, Py_ssize_t n, double mu)
    double fn_sumsq_dev_f(const float *x, Py_ssize_t n, float mu, const float *pf)
    double fn_sumsq_dev_d(const double *x, Py_ssize_t n, double mu, const double *pf)
    double fn_sumsq_safe_f(const float *x, Py_ssize_t n)
    double fn_sumsq_d(const double *x, Py_ssize_t n)
    void fn_bwd_sums_f(const float *dy, const float *w, const float *x, float mu, Py_ssize_t n,
                       double *s1, double *s2)
    void fn_bwd_sums_d(const double *dy, const double *w, const double *x, double mu, Py_ssize_t n,
                       double *s1, double *s2)


# ------------------------------------------------------------------------------------------ row helpers
cdef inline void _ln_stats(const floating *x, floating *mean, floating *rstd, Py_ssize_t n, double eps,
                           const floating *pf) noexcept nogil:
    """mean and rstd of a row; pf: NULL or a row ahead (PF_BYTES), prefetched in the second pass (x is in cache
    by then)."""
    cdef double mu
    # Mean summed around a shift s (the first value): exact for a constant row, accurate for a large mean.
    cdef floating s = x[0] if n > 0 else 0
    if not isfinite(s):
        s = 0
    if floating is float:
        mu = s + fn_sum_dev_f(x, n, s) / n
        mean[0] = <float>mu
        rstd[0] = _ln_rstd(mu, mean[0], fn_sumsq_dev_f(x, n, mean[0], pf) / n, eps)
    else:
        mu = s + fn_sum_dev_d(x, n, s) / n
        mean[0] = mu
        rstd[0] = _ln_rstd(mu, mean[0], fn_sumsq_dev_d(x, n, mean[0], pf) / n, eps)


cdef inline void _ln_stats_h(int fmt, const uint16_t *x, float *mean, float *rstd, Py_ssize_t n, double eps,
                             const uint16_t *pf) noexcept nogil:
    """_ln_stats of the widened 16-bit row (the same sums, fastnorm_half_rows.h)."""
    cdef double mu
    cdef float s = fn_half_to_f32(fmt, x[0]) if n > 0 else 0
    if not isfinite(s):
        s = 0
    mu = s + fn_half_sum_dev(fmt, x, n, s) / n
    mean[0] = <float>mu
    rstd[0] = _ln_rstd(mu, mean[0], fn_half_sumsq_dev(fmt, x, n, mean[0], pf) / n, eps)


cdef inline floating _ln_rstd(double mu, floating fmu, double var, double eps) noexcept nogil:
    """1 / sqrt(var + eps), var = mean((x - fmu)^2) around the mean mu rounded to fmu."""
    # mean((x - fmu)^2) = var + (mu - fmu)^2: remove the part due to rounding the mean to the input dtype.
    var = var - (mu - fmu) * (mu - fmu)
    if var < 0:
        var = 0
    return <floating>(1.0 / sqrt(var + eps))


cdef inline void _ln_apply(const floating *x, const floating *w, const floating *b, floating *y, floating fmu,
                           floating frs, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    # (x - mean) first: exact when x is close to a large mean, unlike x*rstd - mean*rstd.
    if w != NULL and b != NULL:
        for j in range(n):
            y[j] = (x[j] - fmu) * frs * w[j] + b[j]
    elif w != NULL:
        for j in range(n):
            y[j] = (x[j] - fmu) * frs * w[j]
    elif b != NULL:
        for j in range(n):
            y[j] = (x[j] - fmu) * frs + b[j]
    else:
        for j in range(n):
            y[j] = (x[j] - fmu) * frs


cdef inline float *_at(const float *p, Py_ssize_t j) noexcept nogil:
    return <float *>p + j if p != NULL else NULL


cdef inline Py_ssize_t _head(const void *dy, const void *x, Py_ssize_t n) noexcept nogil:
    """Elements of float rows dy and x before both reach a 64-byte boundary, when they share a misalignment (NumPy's
    large arrays start 16 bytes past a page) and the row is long enough; 0 otherwise, and always 0 where a split loop
    could round differently (FN_SPLIT_EXACT: AVX-512 only). The vector part's loads then do not straddle cache lines."""
    cdef size_t a = <size_t>dy & 63
    if not FN_SPLIT_EXACT or a == 0 or a != (<size_t>x & 63) or a & 3 or n < 64:
        return 0
    return <Py_ssize_t>((64 - a) >> 2)


cdef inline void _ln_bwd_row(const floating *dy, const floating *x, floating mu, floating rs,
                             const floating *w, const floating *dh, floating *dx, floating *dwa, floating *dba,
                             Py_ssize_t n) noexcept nogil:
    """One row of the LayerNorm backward; dh (NULL: none) is added to dx in the same loop. dx may be dh."""
    cdef floating c1, c2, g
    if n == 1:
        # One element: y = bias whatever x, so dx = 0 exactly (the formula below leaves an FMA rounding
        # residue). NaN/inf in dy propagate through g * 0 (which the compiler may not fold while NaNs are
        # honoured; g - g it does fold under -fassociative-math), NaN/inf in x through rs.
        g = dy[0] * w[0] if w != NULL else dy[0]
        dx[0] = rs * g * 0 + (dh[0] if dh != NULL else 0)
        if dwa != NULL:
            dwa[0] += dy[0] * ((x[0] - mu) * rs)
        if dba != NULL:
            dba[0] += dy[0]
        return
    _ln_bwd_coefs(dy, x, mu, rs, w, n, &c1, &c2)
    _ln_bwd_apply(dy, x, mu, rs, c1, c2, w, dh, dx, dwa, dba, n)


cdef inline void _ln_bwd_coefs(const floating *dy, const floating *x, floating mu, floating rs, const floating *w,
                               Py_ssize_t n, floating *c1, floating *c2) noexcept nogil:
    """c1 = mean(g), c2 = mean(g * xhat) over a row (N > 1)."""
    cdef double s1, s2
    if floating is float:
        fn_bwd_sums_f(dy, w, x, mu, n, &s1, &s2)
    else:
        fn_bwd_sums_d(dy, w, x, mu, n, &s1, &s2)
    _ln_coefs(s1, s2, rs, n, c1, c2)


cdef inline void _ln_coefs(double s1, double s2, floating rs, Py_ssize_t n, floating *c1, floating *c2) noexcept nogil:
    """c1 = mean(g), c2 = rs * mean(g * (x - mu)) from the row sums s1 = sum(g), s2 = sum(g * (x - mu))."""
    c1[0] = <floating>(s1 / n)
    c2[0] = <floating>(rs * s2 / n)


cdef inline void _ln_bwd_apply(const floating *dy, const floating *x, floating mu, floating rs, floating c1,
                               floating c2, const floating *w, const floating *dh, floating *dx, floating *dwa,
                               floating *dba, Py_ssize_t n) noexcept nogil:
    """dx = rs * (g - c1 - xhat * c2) (+ dh), dwa += dy * xhat, dba += dy over n elements (fastnorm_rows.h)."""
    cdef Py_ssize_t h
    if floating is float:
        h = _head(dy, x, n)
        if h:
            fn_ln_bwd_apply_f(dy, x, mu, rs, c1, c2, w, dh, dx, dwa, dba, h)
        fn_ln_bwd_apply_f(dy + h, x + h, mu, rs, c1, c2, _at(w, h), _at(dh, h), dx + h, _at(dwa, h), _at(dba, h), n - h)
    else:
        fn_ln_bwd_apply_d(dy, x, mu, rs, c1, c2, w, dh, dx, dwa, dba, n)


cdef inline void _rms_stats(const floating *x, floating *rstd, Py_ssize_t n, double eps) noexcept nogil:
    if floating is float:
        rstd[0] = <float>(1.0 / sqrt(fn_sumsq_safe_f(x, n) / n + eps))  # squares in double if float ones overflow
    else:
        rstd[0] = 1.0 / sqrt(fn_sumsq_d(x, n) / n + eps)


cdef inline void _rms_apply(const floating *x, const floating *w, floating *y, floating frs,
                            Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    if w != NULL:
        for j in range(n):
            y[j] = x[j] * frs * w[j]
    else:
        for j in range(n):
            y[j] = x[j] * frs


cdef inline void _rms_bwd_row(const floating *dy, const floating *x, floating rs, const floating *w,
                              const floating *dh, floating *dx, floating *dwa, Py_ssize_t n) noexcept nogil:
    """One row of the RMSNorm backward; dh (NULL: none) is added to dx in the same loop. dx may be dh."""
    _rms_bwd_apply(dy, x, rs, _rms_bwd_coef(dy, x, rs, w, n), w, dh, dx, dwa, n)


cdef inline floating _rms_bwd_coef(const floating *dy, const floating *x, floating rs, const floating *w,
                                   Py_ssize_t n) noexcept nogil:
    """rs * mean(g * xhat) over a row: dx = rs * (g - x * c2), xhat = x * rs."""
    cdef double s1, s2
    if floating is float:
        fn_bwd_sums_f(dy, w, x, 0.0, n, &s1, &s2)
    else:
        fn_bwd_sums_d(dy, w, x, 0.0, n, &s1, &s2)
    return _rms_coef(s2, rs, n)


cdef inline floating _rms_coef(double s2, floating rs, Py_ssize_t n) noexcept nogil:
    """rs * mean(g * xhat) from s2 = sum(g * x)."""
    return <floating>(rs * rs * s2 / n)


cdef inline void _rms_bwd_apply(const floating *dy, const floating *x, floating rs, floating c2, const floating *w,
                                const floating *dh, floating *dx, floating *dwa, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t h
    if floating is float:
        h = _head(dy, x, n)
        if h:
            fn_rms_bwd_apply_f(dy, x, rs, c2, w, dh, dx, dwa, h)
        fn_rms_bwd_apply_f(dy + h, x + h, rs, c2, _at(w, h), _at(dh, h), dx + h, _at(dwa, h), n - h)
    else:
        fn_rms_bwd_apply_d(dy, x, rs, c2, w, dh, dx, dwa, n)


cdef inline void _add_row(const floating *a, const floating *b, floating *out, Py_ssize_t n) noexcept nogil:
    """out = a + b (out may be a)."""
    cdef Py_ssize_t j
    for j in range(n):
        out[j] = a[j] + b[j]


cdef inline void _fold(floating *acc, double *part, Py_ssize_t n, bint first) noexcept nogil:
    """part += acc (part = acc on a chunk's first fold: 0.0 + a = a); acc = 0 (moves a short low-precision partial
    sum into the float64 partial row)."""
    cdef Py_ssize_t j
    if first:
        for j in range(n):
            part[j] = acc[j]
            acc[j] = 0
    else:
        for j in range(n):
            part[j] += acc[j]
            acc[j] = 0


cdef inline void _zero_row(floating *a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        a[j] = 0


cdef inline void _zero_part(double *a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        a[j] = 0


cdef inline void _reduce_block(const double *part, floating *out, Py_ssize_t n, Py_ssize_t j0, Py_ssize_t k,
                               int n_chunks) noexcept nogil:
    """out[j] = sum_c part[c, j] for j in [j0, j0 + k), chunks in order: row by row over a block (SIMD)."""
    cdef double acc[RED_BLOCK]
    cdef Py_ssize_t j
    cdef int c
    for j in range(k):
        acc[j] = 0.0
    for c in range(n_chunks):
        for j in range(k):
            acc[j] = acc[j] + part[c * n + j0 + j]
    for j in range(k):
        out[j0 + j] = <floating>acc[j]


cdef inline void _chunk_begin(double *dwp, floating *dwa, double *dbp, floating *dba, bint empty,
                              Py_ssize_t n) noexcept nogil:
    """Zero the accumulator rows a chunk starts with (NULL: that gradient is not wanted); its partial rows are written
    by its first fold, or zeroed here if it has no rows (chunk_start's last chunks may be empty)."""
    if dwa != NULL and empty:
        _zero_part(dwp, n)
    elif dwa != NULL:
        _zero_row(dwa, n)
    if dba != NULL and empty:
        _zero_part(dbp, n)
    elif dba != NULL:
        _zero_row(dba, n)


cdef inline void _row_done(Py_ssize_t i, Py_ssize_t lo, Py_ssize_t hi, double *dwp, floating *dwa, double *dbp,
                           floating *dba, Py_ssize_t n, bint nt) noexcept nogil:
    """After row i of the chunk [lo, hi): fold the accumulators every FOLD_ROWS rows and after the last; after the
    last, with streamed dx (nt), fence the chunk's streaming stores (inside the parallel region)."""
    if nt and i == hi - 1:
        fn_sfence()
    if (i - lo) % FOLD_ROWS == FOLD_ROWS - 1 or i == hi - 1:
        if dwa != NULL:
            _fold(dwa, dwp, n, i - lo < FOLD_ROWS)
        if dba != NULL:
            _fold(dba, dbp, n, i - lo < FOLD_ROWS)


cdef int _check_scratch(bint want, Py_ssize_t part_rows, Py_ssize_t part_cols, Py_ssize_t acc_rows,
                        Py_ssize_t acc_cols, int n_chunks, Py_ssize_t n, str grad) except -1:
    """A wanted gradient's scratch (``{grad}_part``, ``{grad}_acc``) must be (bwd_chunks(M, N), N): the kernel
    writes it row by row without bounds checks, and a caller's array is never replaced behind its back."""
    if not want:
        return 0
    for name, rows, cols in ((f"{grad}_part", part_rows, part_cols), (f"{grad}_acc", acc_rows, acc_cols)):
        if rows != n_chunks or cols != n:
            raise ValueError(f"{name}: scratch of shape (bwd_chunks(M, N), N) = ({n_chunks}, {n}) expected, "
                             f"got ({rows}, {cols})")
    return 0


def bwd_chunks(Py_ssize_t m, Py_ssize_t n):
    """Row chunks (rows of the dweight/dbias scratch) of the LayerNorm/RMSNorm backward of an (m, n) input.

    A function of the shape only, so the gradients do not depend on the thread count: up to MAX_CHUNKS,
    at least min(m, MIN_CHUNKS) (enough to share among threads), fewer for rows too long for the scratch.
    """
    cdef Py_ssize_t k = max(MIN_CHUNKS, min(MAX_CHUNKS, (m + 2 * FOLD_ROWS - 1) // (2 * FOLD_ROWS)))
    k = min(k, max(4, SCRATCH_BYTES // max(24 * n, 1)))
    return int(max(1, min(k, m)))


# ------------------------------------------------------------------------------------------ float32 / float64
def _fwd_full(const floating[:, ::1] x,             # IN  (M, N)
              const floating[:, ::1] res,           # IN  (M, N) residual, or (0, 0): none
              const floating[::1] weight,           # IN  (N,) or length 0 for none
              const floating[::1] bias,             # IN  (N,) or length 0 for none (LayerNorm only)
              floating[:, ::1] y,                   # OUT (M, N)
              floating[:, ::1] h,                   # OUT (M, N) x + res, or (0, 0) without res
              floating[::1] mean,                   # OUT (M,), or length 0 (RMSNorm)
              floating[::1] rstd,                   # OUT (M,)
              bint rms, double eps, int n_threads):
    cdef Py_ssize_t m = x.shape[0], n = x.shape[1], i
    cdef const floating *w = ptr_or_null(weight)
    cdef const floating *b = ptr_or_null(bias)
    cdef bint add = res.shape[0] > 0
    # float32 outputs larger than the last-level cache are streamed (y, and h through a thread's row buffer)
    cdef bint nt = floating is float and m * n * <Py_ssize_t>sizeof(floating) > NT_BYTES
    dt = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] hbuf = np.empty((max(n_threads, 1), n if nt and add else 0), dt)
    cdef Py_ssize_t pfd = max(1, PF_BYTES // max(1, n * <Py_ssize_t>sizeof(floating)))
    cdef const floating *src
    cdef floating *hb
    if m == 0:
        return
    with nogil, parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        for i in prange(m, schedule="static"):
            if add and nt:
                # h is computed into the thread's row buffer (cache), streamed out, and normalized from there.
                hb = &hbuf[threadid(), 0]
                _add_row(&x[i, 0], &res[i, 0], hb, n)
                if floating is float:
                    fn_stream_store_f(hb, &h[i, 0], n)
                src = hb
            elif add:
                # h is written and read back from cache by the moments and the output pass.
                _add_row(&x[i, 0], &res[i, 0], &h[i, 0], n)
                src = &h[i, 0]
            else:
                src = &x[i, 0]
            if rms:
                _rms_stats(src, &rstd[i], n, eps)
            else:
                _ln_stats(src, &mean[i], &rstd[i], n, eps, &x[i + pfd, 0] if not add and i + pfd < m else NULL)
            if floating is float:
                fn_norm_out_f(src, w, b, &y[i, 0], 0 if rms else mean[i], rstd[i], rms, nt, n)
            elif rms:
                _rms_apply(src, w, &y[i, 0], rstd[i], n)
            else:
                _ln_apply(src, w, b, &y[i, 0], mean[i], rstd[i], n)
        if nt:
            fn_sfence()


# ------------------------------------------------------------------------------------------ 16-bit storage
def _fwd_half(const uint16_t[:, ::1] x,             # IN  (M, N) 16-bit patterns
              const uint16_t[:, ::1] res,           # IN  (M, N) residual, or (0, 0): none
              const float[::1] weight,              # IN  (N,) float32, or length 0
              const float[::1] bias,                # IN  (N,) float32, or length 0
              uint16_t[:, ::1] y,                   # OUT (M, N)
              uint16_t[:, ::1] h,                   # OUT (M, N) x + res rounded, or (0, 0) without res
              float[::1] mean,                      # OUT (M,), or length 0 (RMSNorm)
              float[::1] rstd,                      # OUT (M,)
              int fmt, bint rms, double eps, int n_threads):
    """Per row: the statistics and the output read the 16-bit row (fastnorm_half_rows.h: widened in registers,
    the float32 code's sums and operations), the output rounded once. With a residual, h = x + residual rounded
    and stored, and copied into a thread's 16-bit row buffer (L1) that the row's passes read (h may be streamed)."""
    cdef Py_ssize_t m = x.shape[0], n = x.shape[1], i
    cdef const float *w = ptr_or_null(weight)
    cdef const float *b = ptr_or_null(bias)
    cdef bint add = res.shape[0] > 0
    cdef uint16_t[:, ::1] buf = np.empty((max(n_threads, 1), n if add else 0), np.uint16)
    cdef const uint16_t *src
    # outputs larger than the last-level cache: y and h streamed (on the targets with FN_HALF_ROWS)
    cdef bint nt = m * n * 2 > NT_BYTES
    if m == 0:
        return
    with nogil, parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        for i in prange(m, schedule="static"):
            if add:
                fn_half_add_row(fmt, &x[i, 0], &res[i, 0], &h[i, 0], &buf[threadid(), 0], nt, n)
                src = &buf[threadid(), 0]
            else:
                src = &x[i, 0]
            if rms:
                rstd[i] = <float>(1.0 / sqrt(fn_half_sumsq_safe(fmt, src, n) / n + eps))  # _rms_stats, 16-bit row
                fn_half_norm_out(fmt, src, w, NULL, &y[i, 0], 0, rstd[i], True, nt, n)
            else:
                _ln_stats_h(fmt, src, &mean[i], &rstd[i], n, eps,
                            &x[i + 1, 0] if not add and i + 1 < m else NULL)
                fn_half_norm_out(fmt, src, w, b, &y[i, 0], mean[i], rstd[i], False, nt, n)
        if nt:
            fn_sfence()


cdef inline void _bwd_row_stream(const float *dy, const float *x, const float *dh, float mu, float rs, const float *w,
                                 float *dx, float *dwa, float *dba, bint rms, Py_ssize_t n) noexcept nogil:
    """One backward row of float32 rows, dx produced NT_BLOCK elements at a time in L1 by the row code (element-wise:
    the same values as _ln_bwd_row / _rms_bwd_row) and streamed; the first block ends on a 32-byte boundary of dx."""
    cdef float tmp[NT_BLOCK]
    cdef float c1 = 0, c2
    cdef Py_ssize_t j0 = 0, k = NT_BLOCK - fn_stream_head_f(dx)
    if not rms and n == 1:
        _ln_bwd_row(dy, x, mu, rs, w, dh, dx, dwa, dba, 1)
        return
    if rms:
        c2 = _rms_bwd_coef(dy, x, rs, w, n)
    else:
        _ln_bwd_coefs(dy, x, mu, rs, w, n, &c1, &c2)
    while j0 < n:
        k = min(k, n - j0)
        if rms:
            _rms_bwd_apply(dy + j0, x + j0, rs, c2, _at(w, j0), _at(dh, j0), tmp, dwa + j0 if dwa != NULL else NULL,
                           k)
        else:
            _ln_bwd_apply(dy + j0, x + j0, mu, rs, c1, c2, _at(w, j0), _at(dh, j0), tmp,
                          dwa + j0 if dwa != NULL else NULL, dba + j0 if dba != NULL else NULL, k)
        fn_stream_store_f(tmp, dx + j0, k)
        j0 += k
        k = NT_BLOCK


cdef inline void _half_bwd_row(int fmt, const uint16_t *dy, const uint16_t *x, const uint16_t *dh, float mu,
                               float rs, const float *w, uint16_t *dx, float *dwa, float *dba, bint rms, bint nt,
                               Py_ssize_t n) noexcept nogil:
    """One backward row on 16-bit rows (fastnorm_half_rows.h: widened in registers on AVX2 targets, in L1 blocks
    on the portable one): the float32 row code's sums, coefficients and dx, rounded once."""
    cdef double s1, s2
    cdef float c1 = 0, c2 = 0, fdy, fx, fdh, t
    if not rms and n == 1:
        fdy = fn_half_to_f32(fmt, dy[0])
        fx = fn_half_to_f32(fmt, x[0])
        fdh = fn_half_to_f32(fmt, dh[0]) if dh != NULL else 0
        _ln_bwd_row(&fdy, &fx, mu, rs, w, &fdh if dh != NULL else NULL, &t, dwa, dba, 1)
        dx[0] = fn_f32_to_half(fmt, t)
        return
    fn_half_bwd_sums(fmt, dy, w, x, mu, n, &s1, &s2)
    if rms:
        c2 = _rms_coef(s2, rs, n)
    else:
        _ln_coefs(s1, s2, rs, n, &c1, &c2)
    fn_half_bwd_apply(fmt, dy, x, dh, w, dx, dwa, dba, mu, rs, c1, c2, rms, nt, n)


# ------------------------------------------------------------------------------------------ backward (every storage)
ctypedef fused rowt:
    float
    double
    uint16_t


cdef inline void _bwd_row(int fmt, const rowt *dy, const rowt *x, const rowt *dh, floating mu, floating rs,
                          const floating *w, rowt *dx, floating *dwa, floating *dba, bint rms, bint nt,
                          Py_ssize_t n) noexcept nogil:
    """One backward row: float32/float64 rows (float32 dx streamed when nt) or 16-bit ones (format fmt)."""
    if dh != NULL:  # (rows past L1's reach are left to the hardware prefetcher)
        fn_prefetch_bytes(dh, min(n * <Py_ssize_t>sizeof(rowt), <Py_ssize_t>32768))
    if rowt is uint16_t:
        if floating is float:
            _half_bwd_row(fmt, dy, x, dh, mu, rs, w, dx, dwa, dba, rms, nt, n)
    elif rowt is float:
        if floating is float:
            if nt:
                _bwd_row_stream(dy, x, dh, mu, rs, w, dx, dwa, dba, rms, n)
            elif rms:
                _rms_bwd_row(dy, x, rs, w, dh, dx, dwa, n)
            else:
                _ln_bwd_row(dy, x, mu, rs, w, dh, dx, dwa, dba, n)
    else:
        if floating is double:
            if rms:
                _rms_bwd_row(dy, x, rs, w, dh, dx, dwa, n)
            else:
                _ln_bwd_row(dy, x, mu, rs, w, dh, dx, dwa, dba, n)


def _bwd(const rowt[:, ::1] dy,                     # IN  (M, N): float32, float64, or 16-bit patterns
         const rowt[:, ::1] dh,                     # IN  (M, N) added to dx, or (0, 0): none
         const rowt[:, ::1] x,                      # IN  (M, N)
         const floating[::1] mean,                  # IN  (M,), or length 0 (RMSNorm); float32 beside 16-bit rows
         const floating[::1] rstd,                  # IN  (M,)
         const floating[::1] weight,                # IN  (N,) or length 0
         rowt[:, ::1] dx,                           # OUT (M, N)
         floating[::1] dweight,                     # OUT (N,) or length 0 (not wanted)
         floating[::1] dbias,                       # OUT (N,) or length 0 (not wanted; LayerNorm only)
         double[:, ::1] dw_part,                    # SCRATCH (bwd_chunks(M, N), N), or (0, 0) if not wanted
         floating[:, ::1] dw_acc,                   # SCRATCH (bwd_chunks(M, N), N), or (0, 0)
         double[:, ::1] db_part,                    # SCRATCH (bwd_chunks(M, N), N), or (0, 0)
         floating[:, ::1] db_acc,                   # SCRATCH (bwd_chunks(M, N), N), or (0, 0)
         int fmt, bint rms, int n_threads):
    """The chunk plan (module docstring) in one parallel region: the chunks' rows, then (after the loop's barrier)
    the partial rows summed block by block, both gradients in the same task. 16-bit rows (fmt >= 0) are converted as
    they are read (no float32 copies); dx rounded once."""
    cdef Py_ssize_t m = x.shape[0], n = x.shape[1], i, lo, hi, jb, j0, k
    cdef const floating *w = ptr_or_null(weight)
    cdef bint want_dw = dweight.shape[0] > 0, want_db = dbias.shape[0] > 0, add = dh.shape[0] > 0
    cdef int n_chunks = bwd_chunks(m, n), c
    cdef floating *dwa
    cdef floating *dba
    # dx larger than the last-level cache is streamed (float32; 16-bit on the targets with FN_HALF_ROWS); the fused
    # backward's dx also where its four arrays (dy, dh, x, dx) exceed 1.5x that together: dx would not stay in cache,
    # and a regular store reads each line first (one thread, (4096, 1024) float32: 1.25-1.40x faster)
    cdef Py_ssize_t nbytes = m * n * <Py_ssize_t>sizeof(rowt)
    cdef bint nt = 4 * nbytes > 3 * NT_BYTES // 2 if add else nbytes > NT_BYTES
    if rowt is double:
        nt = False
        if floating is float:
            raise TypeError("float64 rows take float64 statistics, parameters and scratch")
    elif floating is double:
        raise TypeError("float32 and 16-bit rows take float32 statistics, parameters and scratch")
    _check_scratch(want_dw, dw_part.shape[0], dw_part.shape[1], dw_acc.shape[0], dw_acc.shape[1], n_chunks, n, "dw")
    _check_scratch(want_db, db_part.shape[0], db_part.shape[1], db_acc.shape[0], db_acc.shape[1], n_chunks, n, "db")
    with nogil, parallel(num_threads=n_threads, use_threads_if=n_threads > 1):
        for c in prange(n_chunks, schedule="static", chunksize=1):
            lo = chunk_start(m, n_chunks, c)
            hi = chunk_start(m, n_chunks, c + 1)
            # the thread's accumulator rows (thread t runs chunks t, t + T, ...: t < n_chunks), hot in its cache
            dwa = &dw_acc[threadid(), 0] if want_dw else NULL
            dba = &db_acc[threadid(), 0] if want_db else NULL
            _chunk_begin(&dw_part[c, 0] if want_dw else NULL, dwa, &db_part[c, 0] if want_db else NULL, dba, lo == hi,
                         n)
            for i in range(lo, hi):
                _bwd_row(fmt, &dy[i, 0], &x[i, 0], &dh[i, 0] if add else NULL, 0 if rms else mean[i], rstd[i], w,
                         &dx[i, 0], dwa, dba, rms, nt, n)
                _row_done(i, lo, hi, &dw_part[c, 0] if want_dw else NULL, dwa, &db_part[c, 0] if want_db else NULL,
                          dba, n, nt)
        # dweight, dbias = their chunks' partial rows summed in chunk order (the same sums for every thread count)
        for jb in prange((n + RED_BLOCK - 1) // RED_BLOCK, schedule="static"):
            j0 = jb * RED_BLOCK
            k = min(<Py_ssize_t>RED_BLOCK, n - j0)
            if want_dw:
                _reduce_block(&dw_part[0, 0], &dweight[0], n, j0, k, n_chunks)
            if want_db:
                _reduce_block(&db_part[0, 0], &dbias[0], n, j0, k, n_chunks)


# ------------------------------------------------------------------------------------------ entry points
# Every kernel takes its arrays in their real dtypes; 16-bit data (ml_dtypes.bfloat16, float16) is passed on
# as uint16 views with its format code, parameters of 16-bit ops arrive in float32.
_HALF_FORMAT = {np.dtype(k): v for k, v in HALF_FORMAT.items()}
_NONE_BITS = np.empty((0, 0), np.uint16)


cdef inline int _fmt(a) except -2:
    """The 16-bit format code of an array's dtype, -1 for float32/float64."""
    return _HALF_FORMAT.get(a.dtype, -1)


cdef inline object _bits(a):
    return a.view(np.uint16)


cdef inline object _rows_or_none(a):
    """An (M, N) array as it is; an absent one (length 0, 1-D) as a (0, 0) array of its dtype."""
    return a if a.ndim == 2 else a.reshape(0, 0)


def layer_norm_forward(x, weight, bias, y, mean, rstd, double eps, int n_threads):
    """x (M, N) -> y (M, N), mean, rstd (M,); weight, bias (N,) or length 0."""
    cdef int fmt = _fmt(x)
    if fmt < 0:
        _fwd_full(x, x[:0, :0], weight, bias, y, y[:0, :0], mean, rstd, False, eps, n_threads)
    else:
        _fwd_half(_bits(x), _NONE_BITS, weight, bias, _bits(y), _NONE_BITS, mean, rstd, fmt, False, eps, n_threads)


def add_layer_norm_forward(x, residual, weight, bias, y, h, mean, rstd, double eps, int n_threads):
    """h = x + residual, y = LayerNorm(h); x, residual, y, h (M, N), mean, rstd (M,)."""
    cdef int fmt = _fmt(x)
    if fmt < 0:
        _fwd_full(x, residual, weight, bias, y, h, mean, rstd, False, eps, n_threads)
    else:
        _fwd_half(_bits(x), _bits(residual), weight, bias, _bits(y), _bits(h), mean, rstd, fmt, False, eps,
                  n_threads)


def rms_norm_forward(x, weight, y, rstd, double eps, int n_threads):
    """x (M, N) -> y (M, N), rstd (M,); weight (N,) or length 0."""
    cdef int fmt = _fmt(x)
    if fmt < 0:
        _fwd_full(x, x[:0, :0], weight, weight[:0], y, y[:0, :0], rstd[:0], rstd, True, eps, n_threads)
    else:
        _fwd_half(_bits(x), _NONE_BITS, weight, weight[:0], _bits(y), _NONE_BITS, rstd[:0], rstd, fmt, True, eps,
                  n_threads)


def add_rms_norm_forward(x, residual, weight, y, h, rstd, double eps, int n_threads):
    """h = x + residual, y = RMSNorm(h)."""
    cdef int fmt = _fmt(x)
    if fmt < 0:
        _fwd_full(x, residual, weight, weight[:0], y, h, rstd[:0], rstd, True, eps, n_threads)
    else:
        _fwd_half(_bits(x), _bits(residual), weight, weight[:0], _bits(y), _bits(h), rstd[:0], rstd, fmt, True,
                  eps, n_threads)


cdef inline object _data(a, int fmt):
    """Rows as the backward takes them: float32/float64 as they are, 16-bit ones as uint16 patterns."""
    return a if fmt < 0 else a.view(np.uint16)


def layer_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, dw_part, dw_acc, db_part, db_acc,
                        int n_threads):
    """dy, x (M, N), mean, rstd (M,), weight (N,) or length 0 -> dx (M, N), dweight, dbias (N,) or length 0
    (not wanted); scratch (bwd_chunks(M, N), N) float64 partial rows and accumulator rows, or (0, 0)."""
    cdef int fmt = _fmt(x)
    x = _data(x, fmt)
    _bwd(_data(dy, fmt), x[:0, :0], x, mean, rstd, weight, _data(dx, fmt), dweight, dbias, dw_part, dw_acc, db_part,
         db_acc, fmt, False, n_threads)


def add_layer_norm_backward(dy, dh, h, mean, rstd, weight, dx, dweight, dbias, dw_part, dw_acc, db_part,
                            db_acc, int n_threads):
    """layer_norm_backward of h with dh (M, N), or length 0 for none, added to dx."""
    cdef int fmt = _fmt(h)
    _bwd(_data(dy, fmt), _data(_rows_or_none(dh), fmt), _data(h, fmt), mean, rstd, weight, _data(dx, fmt), dweight,
         dbias, dw_part, dw_acc, db_part, db_acc, fmt, False, n_threads)


def rms_norm_backward(dy, x, rstd, weight, dx, dweight, dw_part, dw_acc, int n_threads):
    """dy, x (M, N), rstd (M,), weight (N,) or length 0 -> dx (M, N), dweight (N,) or length 0."""
    cdef int fmt = _fmt(x)
    x = _data(x, fmt)
    _bwd(_data(dy, fmt), x[:0, :0], x, rstd[:0], rstd, weight, _data(dx, fmt), dweight, dweight[:0], dw_part, dw_acc,
         dw_part[:0, :0], dw_acc[:0, :0], fmt, True, n_threads)


def add_rms_norm_backward(dy, dh, h, rstd, weight, dx, dweight, dw_part, dw_acc, int n_threads):
    """rms_norm_backward of h with dh (M, N), or length 0 for none, added to dx."""
    cdef int fmt = _fmt(h)
    _bwd(_data(dy, fmt), _data(_rows_or_none(dh), fmt), _data(h, fmt), rstd[:0], rstd, weight, _data(dx, fmt),
         dweight, dweight[:0], dw_part, dw_acc, dw_part[:0, :0], dw_acc[:0, :0], fmt, True, n_threads)
