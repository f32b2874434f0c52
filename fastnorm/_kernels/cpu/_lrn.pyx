"""LocalResponseNorm CPU kernels on an (N, C, L) view (L = product of the spatial dims, 1 for 2-D input).

Work is cut into tasks of one sample n and one tile of at most TILE contiguous positions along L; OpenMP
static over tasks. A task sweeps the channels of its tile block by block (van Herk / Gil-Werman): with w the
window length, outputs b0 .. b0+w-1 take the suffix sums S of the w channels their windows start in plus
a running prefix sum P of the next w channels. That is O(1) work per element whatever `size` is, and,
unlike a sliding sum (add the entering channel, subtract the leaving one), every window sum is formed from
its own values only: no cancellation against a large value that already left the window, and a NaN or
inf reaches exactly the outputs whose window holds it, as in the direct (torch) computation. Sums are in
float64 (the float32 squares exactly); every row operation is a contiguous, vectorizable loop over the
tile. S lives in a per-thread scratch row (w rows of the tile).

Forward, window of channel c = [c - size//2, c + (size-1)//2] (torch's zero padding):
    scale = k + alpha/size * sum_window x^2,   y = x * scale^-beta
Backward, channel j is in the windows of c in [j - (size-1)//2, j + size//2]:
    dx_j = dy_j * scale_j^-beta - 2*alpha*beta/size * x_j * sum_c dy_c * y_c / scale_c
scale^-beta is computed with sqrt and one division for beta in {0.25, 0.5, 0.75, 1} (correctly rounded
operations, vectorized), with pow otherwise.

16-bit data (bfloat16, float16; uint16 views with ``fmt`` 0 / 1): scale is float32. A task widens its
(C, tile) block of each 16-bit input into float32 tiles (one read), runs the float32 tile code above and
narrows its 16-bit output once (round to nearest even); the tile is shortened so the tiles of a task
stay within about 1 MB.
"""

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport pow, powf, sqrt, sqrtf
from libc.stdint cimport uint16_t
from libc.string cimport memcpy

from fastnorm._kernels.cpu._common cimport fn_half_load, fn_half_store

import numpy as np

cdef enum:
    TILE = 512          # most positions per task
    HALF_TILE_FLOATS = 262144   # float32 tile values per 16-bit task (all its tiles together)
    POW_GENERIC = 0
    POW_QUARTER = 1     # beta = 0.25
    POW_HALF = 2        # beta = 0.5
    POW_3QUARTERS = 3   # beta = 0.75 (torch's default)
    POW_ONE = 4         # beta = 1


cdef inline int _pow_mode(double beta) noexcept nogil:
    if beta == 0.25:
        return POW_QUARTER
    if beta == 0.5:
        return POW_HALF
    if beta == 0.75:
        return POW_3QUARTERS
    if beta == 1.0:
        return POW_ONE
    return POW_GENERIC


cdef inline floating _sqrt(floating v) noexcept nogil:
    if floating is float:
        return sqrtf(v)
    else:
        return sqrt(v)


cdef inline floating _pow(floating v, double e) noexcept nogil:
    if floating is float:
        return powf(v, <float>e)
    else:
        return pow(v, e)


# ------------------------------------------------------------------------------------------ window sums
cdef inline void _vals(const floating *a, const floating *b, const floating *c, double *out,
                       const double *prev, Py_ssize_t n) noexcept nogil:
    """out = prev + v with v = a*a (forward, b NULL) or a*b/c (backward); a NULL row is v = 0;
    prev NULL means 0. The square is taken in float64 (exact for float32), the quotient in the dtype."""
    cdef Py_ssize_t j
    cdef double u
    if a == NULL:
        if prev == NULL:
            for j in range(n):
                out[j] = 0.0
        elif prev != out:
            for j in range(n):
                out[j] = prev[j]
    elif b == NULL:
        if prev == NULL:
            for j in range(n):
                u = a[j]
                out[j] = u * u
        else:
            for j in range(n):
                u = a[j]
                out[j] = prev[j] + u * u
    else:
        if prev == NULL:
            for j in range(n):
                out[j] = <double>(a[j] * b[j] / c[j])
        else:
            for j in range(n):
                out[j] = prev[j] + <double>(a[j] * b[j] / c[j])


cdef inline void _row_vals(const floating *a, const floating *b, const floating *c, Py_ssize_t ch,
                           Py_ssize_t C, Py_ssize_t ld, double *out, const double *prev,
                           Py_ssize_t n) noexcept nogil:
    """_vals for channel ch (zero outside [0, C))."""
    cdef Py_ssize_t o = ch * ld
    if ch < 0 or ch >= C:
        _vals(<const floating *>NULL, b, c, out, prev, n)
    elif b == NULL:
        _vals(a + o, b, c, out, prev, n)
    else:
        _vals(a + o, b + o, c + o, out, prev, n)


cdef inline void _block_suffix(const floating *a, const floating *b, const floating *c, Py_ssize_t C,
                               Py_ssize_t ld, Py_ssize_t n, Py_ssize_t first, Py_ssize_t w,
                               double *S) noexcept nogil:
    """S[i] = sum of the values of channels first+i .. first+w-1 (rows of n, row i at S + i*n)."""
    cdef Py_ssize_t i
    _row_vals(a, b, c, first + w - 1, C, ld, S + (w - 1) * n, NULL, n)
    for i in range(w - 2, -1, -1):
        _row_vals(a, b, c, first + i, C, ld, S + i * n, S + (i + 1) * n, n)


# ------------------------------------------------------------------------------------------ forward tile
cdef inline void _fwd_row(const floating *x, const double *S, const double *P, floating *s, floating *y,
                          Py_ssize_t n, double k, double a, double beta, int mode) noexcept nogil:
    """One channel: s = k + a * (S + P) (its window sum), y = x * s^-beta."""
    cdef Py_ssize_t j
    cdef floating sv, r
    # One fused loop per exponent so each vectorizes; the pow fallback stays scalar.
    if mode == POW_3QUARTERS:
        for j in range(n):
            sv = <floating>(k + a * (S[j] + P[j]))
            s[j] = sv
            r = _sqrt(sv)
            y[j] = x[j] / (r * _sqrt(r))
    elif mode == POW_HALF:
        for j in range(n):
            sv = <floating>(k + a * (S[j] + P[j]))
            s[j] = sv
            y[j] = x[j] / _sqrt(sv)
    elif mode == POW_ONE:
        for j in range(n):
            sv = <floating>(k + a * (S[j] + P[j]))
            s[j] = sv
            y[j] = x[j] / sv
    elif mode == POW_QUARTER:
        for j in range(n):
            sv = <floating>(k + a * (S[j] + P[j]))
            s[j] = sv
            y[j] = x[j] / _sqrt(_sqrt(sv))
    else:
        for j in range(n):
            sv = <floating>(k + a * (S[j] + P[j]))
            s[j] = sv
            y[j] = x[j] * _pow(sv, -beta)


cdef inline void _lrn_fwd_tile(const floating *x, floating *scale, floating *y, Py_ssize_t C, Py_ssize_t ld,
                               Py_ssize_t n, Py_ssize_t lo, Py_ssize_t hi, double k, double a, double beta,
                               int mode, double *S) noexcept nogil:
    """One (sample, tile): rows of n positions, ld apart, channels 0..C-1; S: scratch of (lo+hi+1)*n."""
    cdef double P[TILE]
    cdef Py_ssize_t w = lo + hi + 1, b0, i
    # Outputs b0 .. b0+w-1 have windows starting at channels b0-lo .. b0+w-1-lo: suffix sums of that
    # block (S) plus a running prefix of the next block (P).
    b0 = 0
    while b0 < C:
        _block_suffix(x, <const floating *>NULL, <const floating *>NULL, C, ld, n, b0 - lo, w, S)
        _vals(<const floating *>NULL, <const floating *>NULL, <const floating *>NULL, P, NULL, n)
        for i in range(min(w, C - b0)):
            if i > 0:
                _row_vals(x, <const floating *>NULL, <const floating *>NULL, b0 + hi + i, C, ld, P, P, n)
            _fwd_row(x + (b0 + i) * ld, S + i * n, P, scale + (b0 + i) * ld, y + (b0 + i) * ld, n,
                     k, a, beta, mode)
        b0 += w


# ------------------------------------------------------------------------------------------ backward tile
cdef inline void _bwd_row(const floating *dy, const floating *x, const floating *s, const double *S,
                          const double *P, floating *dx, Py_ssize_t n, double coef, double beta,
                          int mode) noexcept nogil:
    """One channel: dx = dy * s^-beta - coef * x * (S + P) (its mirrored-window sum of dy*y/s)."""
    cdef Py_ssize_t j
    cdef floating r, p
    if mode == POW_3QUARTERS:
        for j in range(n):
            r = _sqrt(s[j])
            p = 1 / (r * _sqrt(r))
            dx[j] = <floating>(dy[j] * p - coef * x[j] * (S[j] + P[j]))
    elif mode == POW_HALF:
        for j in range(n):
            p = 1 / _sqrt(s[j])
            dx[j] = <floating>(dy[j] * p - coef * x[j] * (S[j] + P[j]))
    elif mode == POW_ONE:
        for j in range(n):
            p = 1 / s[j]
            dx[j] = <floating>(dy[j] * p - coef * x[j] * (S[j] + P[j]))
    elif mode == POW_QUARTER:
        for j in range(n):
            p = 1 / _sqrt(_sqrt(s[j]))
            dx[j] = <floating>(dy[j] * p - coef * x[j] * (S[j] + P[j]))
    else:
        for j in range(n):
            p = _pow(s[j], -beta)
            dx[j] = <floating>(dy[j] * p - coef * x[j] * (S[j] + P[j]))


cdef inline void _lrn_bwd_tile(const floating *dy, const floating *x, const floating *y, const floating *s,
                               floating *dx, Py_ssize_t C, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t lo,
                               Py_ssize_t hi, double coef, double beta, int mode, double *S) noexcept nogil:
    """As the forward tile on t = dy*y/s with the mirrored window [j - hi, j + lo]."""
    cdef double P[TILE]
    cdef Py_ssize_t w = lo + hi + 1, b0, i, o
    b0 = 0
    while b0 < C:
        _block_suffix(dy, y, s, C, ld, n, b0 - hi, w, S)
        _vals(<const floating *>NULL, <const floating *>NULL, <const floating *>NULL, P, NULL, n)
        for i in range(min(w, C - b0)):
            if i > 0:
                _row_vals(dy, y, s, b0 + lo + i, C, ld, P, P, n)
            o = (b0 + i) * ld
            _bwd_row(dy + o, x + o, s + o, S + i * n, P, dx + o, n, coef, beta, mode)
        b0 += w


# ------------------------------------------------------------------------------------------ tiling
cdef inline Py_ssize_t _tile_len(Py_ssize_t L, Py_ssize_t cap) noexcept nogil:
    """L cut into ceil(L / cap) near-equal tiles, rounded up to a multiple of 16 (cap is one)."""
    cdef Py_ssize_t n_tiles = (L + cap - 1) // cap
    cdef Py_ssize_t t = (L + n_tiles - 1) // n_tiles
    return min(cap, (t + 15) // 16 * 16)


cdef inline Py_ssize_t _tile_cap(Py_ssize_t scratch_len, Py_ssize_t w) noexcept nogil:
    """Longest tile whose w rows of float64 suffix sums fit in the per-thread scratch."""
    return min(<Py_ssize_t>TILE, max(<Py_ssize_t>16, scratch_len // w // 16 * 16))


def lrn_scratch_len(Py_ssize_t lo, Py_ssize_t hi):
    """Per-thread scratch (float64 elements) the kernels want for a clamped window (lo, hi)."""
    cdef Py_ssize_t w = lo + hi + 1
    return max(16 * w, min(<Py_ssize_t>TILE * w, 32768))


# ------------------------------------------------------------------------------------------ 16-bit tiles
cdef inline void _half_task(const uint16_t *dy, const uint16_t *x, uint16_t *y, float *scale, uint16_t *dx,
                            Py_ssize_t C, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t lo, Py_ssize_t hi, double k,
                            double c, double beta, int mode, double *S, float *T, int fmt) noexcept nogil:
    """The float32 tile code on widened tiles (T: rows of n, C per array): the forward (dx NULL, c = alpha /
    size; arrays x, y, scale) or the backward (c = coef; arrays x, y, scale, dy, dx); 16-bit outputs rounded
    once. Each 16-bit input row is read once."""
    cdef Py_ssize_t ch
    cdef bint bwd = dx != NULL
    cdef float *X = T
    cdef float *Y = T + C * n
    cdef float *SC = T + 2 * C * n
    cdef float *G = T + 3 * C * n
    cdef float *D = T + 4 * C * n
    for ch in range(C):
        fn_half_load(fmt, x + ch * ld, X + ch * n, n)
        if bwd:
            fn_half_load(fmt, dy + ch * ld, G + ch * n, n)
            fn_half_load(fmt, y + ch * ld, Y + ch * n, n)
            memcpy(SC + ch * n, scale + ch * ld, n * sizeof(float))
    if bwd:
        _lrn_bwd_tile(<const float *>G, <const float *>X, <const float *>Y, <const float *>SC, D, C, n, n, lo, hi,
                      c, beta, mode, S)
    else:
        _lrn_fwd_tile(<const float *>X, SC, Y, C, n, n, lo, hi, k, c, beta, mode, S)
    for ch in range(C):
        if bwd:
            fn_half_store(fmt, D + ch * n, dx + ch * ld, n)
        else:
            fn_half_store(fmt, Y + ch * n, y + ch * ld, n)
            memcpy(scale + ch * ld, SC + ch * n, n * sizeof(float))


cdef inline Py_ssize_t _half_cap(Py_ssize_t C, Py_ssize_t arrays) noexcept nogil:
    """Longest 16-bit tile whose float32 tiles (arrays of C rows) fit in HALF_TILE_FLOATS."""
    return min(<Py_ssize_t>TILE, max(<Py_ssize_t>16, HALF_TILE_FLOATS // (arrays * C) // 16 * 16))


# ------------------------------------------------------------------------------------------ drivers
cdef inline Py_ssize_t _window(Py_ssize_t size, Py_ssize_t C, bint upper) noexcept nogil:
    """The clamped window reach below (lo) / above (hi, upper) a channel: a window reaching past every
    channel is the same window (alpha / size keeps the real size)."""
    return min((size - 1) // 2 if upper else size // 2, C - 1)


cdef void _tasks(const floating *dy, const floating *x, floating *y, floating *scale, floating *dx,
                 const uint16_t *hdy, const uint16_t *hx, uint16_t *hy, float *hscale, uint16_t *hdx,
                 Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, Py_ssize_t tl, Py_ssize_t size, double k, double c,
                 double beta, double *scratch, Py_ssize_t ld_s, float *tiles, Py_ssize_t ld_t, int fmt,
                 int n_threads) noexcept nogil:
    """Every (sample, tile of tl positions) task, OpenMP static: the floating data (x non-NULL) or the 16-bit
    data (hx, with fmt and the per-thread float32 tiles); forward when dx / hdx is NULL."""
    cdef Py_ssize_t nt = (L + tl - 1) // tl, task, off, n
    cdef Py_ssize_t lo = _window(size, C, False), hi = _window(size, C, True)
    cdef int mode = _pow_mode(beta), tid
    for task in prange(N * nt, schedule="static", num_threads=n_threads, use_threads_if=n_threads > 1):
        tid = threadid()
        off = (task // nt) * C * L + (task % nt) * tl
        n = min(tl, L - (task % nt) * tl)
        if hx != NULL:
            _half_task(NULL if hdx == NULL else hdy + off, hx + off, hy + off, hscale + off,
                       NULL if hdx == NULL else hdx + off, C, L, n, lo, hi, k, c, beta, mode,
                       scratch + tid * ld_s, tiles + tid * ld_t, fmt)
        elif dx == NULL:
            _lrn_fwd_tile(x + off, scale + off, y + off, C, L, n, lo, hi, k, c, beta, mode, scratch + tid * ld_s)
        else:
            _lrn_bwd_tile(dy + off, x + off, y + off, scale + off, dx + off, C, L, n, lo, hi, c, beta, mode,
                          scratch + tid * ld_s)


cdef object _run(dy, x, y, scale, dx, double[:, ::1] scratch, Py_ssize_t size, double k, double c, double beta,
                 int n_threads):
    """Checks nothing (the public layer did): picks the dtype's pointers, the tile length and, for 16-bit
    data, one float32 tile buffer per thread (allocated once, outside the tasks)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], tl
    cdef int fmt = -1 if x.dtype.itemsize != 2 else (1 if x.dtype == _F16 else 0)
    cdef bint bwd = dx is not None
    cdef float[:, ::1] tiles
    if N == 0 or C == 0 or L == 0:
        return
    tl = _tile_cap(scratch.shape[1], _window(size, C, False) + _window(size, C, True) + 1)
    if fmt >= 0:
        tl = _tile_len(L, min(tl, _half_cap(C, 5 if bwd else 3)))
        tiles = np.empty((max(n_threads, 1), (5 if bwd else 3) * C * tl), np.float32)
        _run_half(None if dy is None else dy.view(np.uint16), x.view(np.uint16), y.view(np.uint16), scale,
                  None if dx is None else dx.view(np.uint16), scratch, tiles, N, C, L, tl, size, k, c, beta, fmt,
                  n_threads)
    elif x.dtype == np.float32:
        _run_full[float](dy, x, y, scale, dx, scratch, N, C, L, _tile_len(L, tl), size, k, c, beta, n_threads)
    else:
        _run_full[double](dy, x, y, scale, dx, scratch, N, C, L, _tile_len(L, tl), size, k, c, beta, n_threads)


cdef object _run_full(const floating[:, :, ::1] dy, const floating[:, :, ::1] x, const floating[:, :, ::1] y,
                      const floating[:, :, ::1] scale, const floating[:, :, ::1] dx, double[:, ::1] scratch,
                      Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, Py_ssize_t tl, Py_ssize_t size, double k, double c,
                      double beta, int n_threads):
    # y, scale are outputs of the forward, dx the output of the backward (the callers pass writable arrays).
    with nogil:
        _tasks(NULL if dy is None else &dy[0, 0, 0], &x[0, 0, 0], <floating *>&y[0, 0, 0],
               <floating *>&scale[0, 0, 0], NULL if dx is None else <floating *>&dx[0, 0, 0],
               <const uint16_t *>NULL, NULL, NULL, NULL, NULL, N, C, L, tl, size, k, c, beta, &scratch[0, 0],
               scratch.shape[1], NULL, 0, -1, n_threads)


cdef object _run_half(const uint16_t[:, :, ::1] dy, const uint16_t[:, :, ::1] x, const uint16_t[:, :, ::1] y,
                      const float[:, :, ::1] scale, const uint16_t[:, :, ::1] dx, double[:, ::1] scratch,
                      float[:, ::1] tiles, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, Py_ssize_t tl, Py_ssize_t size,
                      double k, double c, double beta, int fmt, int n_threads):
    with nogil:
        _tasks[float](NULL, NULL, NULL, NULL, NULL, NULL if dy is None else &dy[0, 0, 0], &x[0, 0, 0],
                      <uint16_t *>&y[0, 0, 0], <float *>&scale[0, 0, 0],
                      NULL if dx is None else <uint16_t *>&dx[0, 0, 0], N, C, L, tl, size, k, c, beta,
                      &scratch[0, 0], scratch.shape[1], &tiles[0, 0], tiles.shape[1], fmt, n_threads)


# ------------------------------------------------------------------------------------------ entry points
_F16 = np.dtype(np.float16)


def local_response_norm_forward(x, y, scale, scratch, Py_ssize_t size, double alpha, double beta, double k,
                                int n_threads):
    """IN x (N, C, L); OUT y (N, C, L), scale (N, C, L) (float32 for 16-bit x); SCRATCH (n_threads, len)."""
    _run(None, x, y, scale, None, scratch, size, k, alpha / size, beta, n_threads)


def local_response_norm_backward(dy, x, y, scale, dx, scratch, Py_ssize_t size, double alpha, double beta,
                                 int n_threads):
    """IN dy, x, y, scale (N, C, L); OUT dx (N, C, L); SCRATCH as in the forward."""
    _run(dy, x, y, scale, dx, scratch, size, 0.0, 2.0 * alpha * beta / size, beta, n_threads)
