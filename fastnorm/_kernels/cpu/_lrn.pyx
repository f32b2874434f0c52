"""LocalResponseNorm CPU kernels on an (N, C, L) view (L = product of the spatial dims, 1 for 2-D input).

Work is cut into tasks of one sample n and one tile of at most TILE contiguous positions along L; OpenMP
static over tasks. A task sweeps the channels of its tile once, keeping the channel-window sum of every
position in a float64 tile (`acc`) that slides: add the channel entering the window, subtract the one
leaving it (O(1) per element whatever `size` is); every row operation is a contiguous, vectorizable loop
over the tile. The float32 squares are exact in float64, so the sliding sum only rounds in float64.
A NaN or inf that leaves the window would poison a sliding sum (NaN - NaN, inf - inf): a position whose
sum is NaN is recomputed directly from its window, so non-finite values reach exactly the outputs whose
window holds them, as in the direct (torch) computation.

Forward, window of channel c = [c - size//2, c + (size-1)//2] (torch's zero padding):
    scale = k + alpha/size * sum_window x^2,   y = x * scale^-beta
Backward, channel j is in the windows of c in [j - (size-1)//2, j + size//2]:
    dx_j = dy_j * scale_j^-beta - 2*alpha*beta/size * x_j * sum_c dy_c * y_c / scale_c
scale^-beta is computed with sqrt and one division for beta in {0.25, 0.5, 0.75, 1} (correctly rounded
operations, vectorized), with pow otherwise.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport pow, powf, sqrt, sqrtf

cdef enum:
    TILE = 512          # positions per task: 4 KiB float64 window sums, L1-resident
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


cdef inline bint _any_nan(const double *a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    cdef int bad = 0
    for j in range(n):
        bad = bad | (a[j] != a[j])
    return bad != 0


# ------------------------------------------------------------------------------------------ forward tile
cdef inline void _fwd_row(const floating *x, const floating *xin, const floating *xout, double *acc,
                          floating *s, floating *y, Py_ssize_t n, double k, double a, double beta,
                          int mode) noexcept nogil:
    """One channel: s = k + a*acc, y = x * s^-beta; then slide acc += xin^2 - xout^2 (zero rows outside)."""
    cdef Py_ssize_t j
    cdef floating sv, r
    cdef double u, v
    # One fused loop per exponent so each vectorizes; the pow fallback stays scalar.
    if mode == POW_3QUARTERS:
        for j in range(n):
            sv = <floating>(k + a * acc[j])
            s[j] = sv
            r = _sqrt(sv)
            y[j] = x[j] / (r * _sqrt(r))
            u = xin[j]
            v = xout[j]
            acc[j] = acc[j] + u * u - v * v
    elif mode == POW_HALF:
        for j in range(n):
            sv = <floating>(k + a * acc[j])
            s[j] = sv
            y[j] = x[j] / _sqrt(sv)
            u = xin[j]
            v = xout[j]
            acc[j] = acc[j] + u * u - v * v
    elif mode == POW_ONE:
        for j in range(n):
            sv = <floating>(k + a * acc[j])
            s[j] = sv
            y[j] = x[j] / sv
            u = xin[j]
            v = xout[j]
            acc[j] = acc[j] + u * u - v * v
    elif mode == POW_QUARTER:
        for j in range(n):
            sv = <floating>(k + a * acc[j])
            s[j] = sv
            y[j] = x[j] / _sqrt(_sqrt(sv))
            u = xin[j]
            v = xout[j]
            acc[j] = acc[j] + u * u - v * v
    else:
        for j in range(n):
            sv = <floating>(k + a * acc[j])
            s[j] = sv
            y[j] = x[j] * _pow(sv, -beta)
            u = xin[j]
            v = xout[j]
            acc[j] = acc[j] + u * u - v * v


cdef inline void _window_sq_direct(double *acc, const floating *x, Py_ssize_t ld, Py_ssize_t n,
                                   Py_ssize_t c_lo, Py_ssize_t c_hi) noexcept nogil:
    """For every j where acc[j] is NaN: acc[j] = sum of x[c, j]^2, c in [c_lo, c_hi] (rows ld apart)."""
    cdef Py_ssize_t j, c
    cdef double t, v
    for j in range(n):
        if acc[j] != acc[j]:
            t = 0.0
            for c in range(c_lo, c_hi + 1):
                v = x[c * ld + j]
                t = t + v * v
            acc[j] = t


cdef inline void _lrn_fwd_tile(const floating *x, floating *scale, floating *y, Py_ssize_t C, Py_ssize_t ld,
                               Py_ssize_t n, Py_ssize_t size, double k, double a, double beta,
                               int mode) noexcept nogil:
    """One (sample, tile): rows of n positions, ld apart, for channels 0..C-1."""
    cdef double acc[TILE]
    cdef floating zero[TILE]
    cdef Py_ssize_t lo = size // 2, hi = (size - 1) // 2, c, j, cin, cout
    cdef double v
    for j in range(n):
        acc[j] = 0.0
        zero[j] = 0.0
    for c in range(min(C, hi + 1)):
        for j in range(n):
            v = x[c * ld + j]
            acc[j] = acc[j] + v * v
    for c in range(C):
        cin = c + 1 + hi
        cout = c - lo
        _fwd_row(x + c * ld, x + cin * ld if cin < C else zero, x + cout * ld if cout >= 0 else zero, acc,
                 scale + c * ld, y + c * ld, n, k, a, beta, mode)
        if c + 1 < C and _any_nan(acc, n):
            _window_sq_direct(acc, x, ld, n, max(c + 1 - lo, 0), min(cin, C - 1))


# ------------------------------------------------------------------------------------------ backward tile
cdef inline void _bwd_row(const floating *dy, const floating *x, const floating *s,
                          const floating *dyin, const floating *yin, const floating *sin,
                          const floating *dyout, const floating *yout, const floating *sout,
                          double *acc, floating *dx, Py_ssize_t n, double coef, double beta,
                          int mode) noexcept nogil:
    """One channel: dx = dy * s^-beta - coef * x * acc; then slide acc += t(in) - t(out), t = dy*y/s."""
    cdef Py_ssize_t j
    cdef floating r, p
    if mode == POW_3QUARTERS:
        for j in range(n):
            r = _sqrt(s[j])
            p = 1 / (r * _sqrt(r))
            dx[j] = <floating>(dy[j] * p - coef * x[j] * acc[j])
            acc[j] = acc[j] + <double>(dyin[j] * yin[j] / sin[j]) - <double>(dyout[j] * yout[j] / sout[j])
    elif mode == POW_HALF:
        for j in range(n):
            p = 1 / _sqrt(s[j])
            dx[j] = <floating>(dy[j] * p - coef * x[j] * acc[j])
            acc[j] = acc[j] + <double>(dyin[j] * yin[j] / sin[j]) - <double>(dyout[j] * yout[j] / sout[j])
    elif mode == POW_ONE:
        for j in range(n):
            p = 1 / s[j]
            dx[j] = <floating>(dy[j] * p - coef * x[j] * acc[j])
            acc[j] = acc[j] + <double>(dyin[j] * yin[j] / sin[j]) - <double>(dyout[j] * yout[j] / sout[j])
    elif mode == POW_QUARTER:
        for j in range(n):
            p = 1 / _sqrt(_sqrt(s[j]))
            dx[j] = <floating>(dy[j] * p - coef * x[j] * acc[j])
            acc[j] = acc[j] + <double>(dyin[j] * yin[j] / sin[j]) - <double>(dyout[j] * yout[j] / sout[j])
    else:
        for j in range(n):
            p = _pow(s[j], -beta)
            dx[j] = <floating>(dy[j] * p - coef * x[j] * acc[j])
            acc[j] = acc[j] + <double>(dyin[j] * yin[j] / sin[j]) - <double>(dyout[j] * yout[j] / sout[j])


cdef inline void _window_t_direct(double *acc, const floating *dy, const floating *y, const floating *s,
                                  Py_ssize_t ld, Py_ssize_t n, Py_ssize_t c_lo, Py_ssize_t c_hi) noexcept nogil:
    """For every j where acc[j] is NaN: acc[j] = sum of dy*y/s at [c, j], c in [c_lo, c_hi]."""
    cdef Py_ssize_t j, c, o
    cdef double t
    for j in range(n):
        if acc[j] != acc[j]:
            t = 0.0
            for c in range(c_lo, c_hi + 1):
                o = c * ld + j
                t = t + <double>(dy[o] * y[o] / s[o])
            acc[j] = t


cdef inline void _lrn_bwd_tile(const floating *dy, const floating *x, const floating *y, const floating *s,
                               floating *dx, Py_ssize_t C, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t size,
                               double coef, double beta, int mode) noexcept nogil:
    cdef double acc[TILE]
    cdef floating zero[TILE]
    cdef floating one[TILE]
    # The mirrored window of channel j is [j - hi, j + lo]; rows outside [0, C) read t = 0 * 0 / 1.
    cdef Py_ssize_t lo = size // 2, hi = (size - 1) // 2, c, j, cin, cout, o, oi, oo
    cdef bint has_in, has_out
    for j in range(n):
        acc[j] = 0.0
        zero[j] = 0.0
        one[j] = 1.0
    for c in range(min(C, lo + 1)):
        o = c * ld
        for j in range(n):
            acc[j] = acc[j] + <double>(dy[o + j] * y[o + j] / s[o + j])
    for c in range(C):
        o = c * ld
        cin = c + 1 + lo
        cout = c - hi
        has_in = cin < C
        has_out = cout >= 0
        oi = cin * ld if has_in else 0
        oo = cout * ld if has_out else 0
        _bwd_row(dy + o, x + o, s + o,
                 dy + oi if has_in else zero, y + oi if has_in else zero, s + oi if has_in else one,
                 dy + oo if has_out else zero, y + oo if has_out else zero, s + oo if has_out else one,
                 acc, dx + o, n, coef, beta, mode)
        if c + 1 < C and _any_nan(acc, n):
            _window_t_direct(acc, dy, y, s, ld, n, max(c + 1 - hi, 0), min(cin, C - 1))


# ------------------------------------------------------------------------------------------ tiling
cdef inline Py_ssize_t _tile_len(Py_ssize_t L) noexcept nogil:
    """Tile length: L cut into ceil(L / TILE) near-equal tiles, rounded up to a multiple of 16."""
    cdef Py_ssize_t n_tiles = (L + TILE - 1) // TILE
    cdef Py_ssize_t t = (L + n_tiles - 1) // n_tiles
    return min(<Py_ssize_t>TILE, (t + 15) // 16 * 16)


# ------------------------------------------------------------------------------------------ entry points
def local_response_norm_forward(const floating[:, :, ::1] x,    # IN  (N, C, L)
                                floating[:, :, ::1] y,          # OUT (N, C, L)
                                floating[:, :, ::1] scale,      # OUT (N, C, L)
                                Py_ssize_t size, double alpha, double beta, double k, int n_threads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2]
    cdef Py_ssize_t tl, tiles, task, i, t, l0
    cdef double a = alpha / size
    cdef int mode = _pow_mode(beta)
    if N == 0 or C == 0 or L == 0:
        return
    tl = _tile_len(L)
    tiles = (L + tl - 1) // tl
    with nogil:
        if n_threads <= 1:
            for task in range(N * tiles):
                i = task // tiles
                l0 = (task % tiles) * tl
                _lrn_fwd_tile(&x[i, 0, l0], &scale[i, 0, l0], &y[i, 0, l0], C, L, min(tl, L - l0), size,
                              k, a, beta, mode)
        else:
            for task in prange(N * tiles, schedule="static", num_threads=n_threads):
                i = task // tiles
                t = task % tiles
                l0 = t * tl
                _lrn_fwd_tile(&x[i, 0, l0], &scale[i, 0, l0], &y[i, 0, l0], C, L, min(tl, L - l0), size,
                              k, a, beta, mode)


def local_response_norm_backward(const floating[:, :, ::1] dy,      # IN  (N, C, L)
                                 const floating[:, :, ::1] x,       # IN  (N, C, L)
                                 const floating[:, :, ::1] y,       # IN  (N, C, L)
                                 const floating[:, :, ::1] scale,   # IN  (N, C, L)
                                 floating[:, :, ::1] dx,            # OUT (N, C, L)
                                 Py_ssize_t size, double alpha, double beta, int n_threads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2]
    cdef Py_ssize_t tl, tiles, task, i, t, l0
    cdef double coef = 2.0 * alpha * beta / size
    cdef int mode = _pow_mode(beta)
    if N == 0 or C == 0 or L == 0:
        return
    tl = _tile_len(L)
    tiles = (L + tl - 1) // tl
    with nogil:
        if n_threads <= 1:
            for task in range(N * tiles):
                i = task // tiles
                l0 = (task % tiles) * tl
                _lrn_bwd_tile(&dy[i, 0, l0], &x[i, 0, l0], &y[i, 0, l0], &scale[i, 0, l0], &dx[i, 0, l0],
                              C, L, min(tl, L - l0), size, coef, beta, mode)
        else:
            for task in prange(N * tiles, schedule="static", num_threads=n_threads):
                i = task // tiles
                t = task % tiles
                l0 = t * tl
                _lrn_bwd_tile(&dy[i, 0, l0], &x[i, 0, l0], &y[i, 0, l0], &scale[i, 0, l0], &dx[i, 0, l0],
                              C, L, min(tl, L - l0), size, coef, beta, mode)
