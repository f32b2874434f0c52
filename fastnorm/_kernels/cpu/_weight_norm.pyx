"""WeightNorm and CosineNorm (cosine_linear) CPU kernels.

WeightNorm works on an (A, D, B) view of v: D = v.shape[dim], A / B the products of the dims before / after
it (dim=None: A = D = 1). The norm of slice d is over a in [0, A), b in [0, B). Three plans (the public
layer picks one, ``mode``, and sizes the scratch for it):
- WN_ROWS (A == 1: dim is the first axis, the common case): each slice is one contiguous row; OpenMP
  static over rows, the row's sum is taken and the row written while it is in cache (one memory pass).
- WN_FLAT (long rows, B >= 16, e.g. dim=None): the (A*D, B) rows are cut into n_chunks contiguous pieces
  of the flat array; piece c adds each row segment's sum into part[c, d]; then part is summed over c in
  fixed order; then a second pass writes the output.
- WN_COLS (short rows, e.g. dim the last axis): a in [0, A) cut into n_chunks; chunk c adds v[a, :, :]^2
  elementwise into part[c, :] (length D*B, vectorized), summed over c and b at the end; then a second
  pass writes w[a, :] = v[a, :] * fac[:] with the factor expanded to D*B.
Every sum is in float64 and reduced in a fixed order: bitwise reproducible for a given thread count.

CosineLinear: the matrix products are BLAS calls made by the public layer; these kernels are the rest:
row norms and the output scaling (forward), the scaled gradient G and the norm-correction coefficients
(backward, before the products) and the correction terms (after them).
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt


cdef extern from "fastnorm_moments.h" nogil:
    double fn_sumsq_safe_f(const float *x, Py_ssize_t n)
    double fn_sumsq_d(const double *x, Py_ssize_t n)
    double fn_dot_f(const float *a, const float *b, Py_ssize_t n)
    double fn_dot_d(const double *a, const double *b, Py_ssize_t n)

cdef enum:
    WN_ROWS = 0
    WN_FLAT = 1
    WN_COLS = 2


cdef inline double _sumsq(const floating *x, Py_ssize_t n) noexcept nogil:
    # float: the squares taken in double where float ones would overflow (|x| > ~1.8e19) or underflow.
    if floating is float:
        return fn_sumsq_safe_f(x, n)
    else:
        return fn_sumsq_d(x, n)


cdef inline double _dot(const floating *a, const floating *b, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return fn_dot_f(a, b, n)
    else:
        return fn_dot_d(a, b, n)


cdef inline Py_ssize_t _chunk_start(Py_ssize_t m, Py_ssize_t n_chunks, Py_ssize_t c) noexcept nogil:
    """First index of chunk c when m items are cut into n_chunks contiguous chunks."""
    cdef Py_ssize_t step = (m + n_chunks - 1) // n_chunks
    return min(m, c * step)


cdef inline void _scale_row(const floating *v, floating *w, floating f, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        w[j] = v[j] * f


cdef inline void _axpby_row(const floating *dw, const floating *v, floating *dv, floating c1, floating c2,
                            Py_ssize_t n) noexcept nogil:
    """dv = c1 * dw - c2 * v."""
    cdef Py_ssize_t j
    for j in range(n):
        dv[j] = c1 * dw[j] - c2 * v[j]


# -------------------------------------------------------------------------------------- WeightNorm, shared
cdef inline void _flat_piece_sums(const floating *a, const floating *b, double *part, Py_ssize_t lo,
                                  Py_ssize_t hi, Py_ssize_t D, Py_ssize_t B) noexcept nogil:
    """part[d] += sum over the flat range [lo, hi) of a*b (a*a when b is NULL), d = (index // B) % D."""
    cdef Py_ssize_t r, s, e
    while lo < hi:
        r = lo // B
        s = lo
        e = min(hi, (r + 1) * B)
        if b == NULL:
            part[r % D] += _sumsq(a + s, e - s)
        else:
            part[r % D] += _dot(a + s, b + s, e - s)
        lo = e


cdef inline void _cols_chunk_sums(const floating *a, const floating *b, double *part, Py_ssize_t lo,
                                  Py_ssize_t hi, Py_ssize_t P) noexcept nogil:
    """part[j] += sum over rows i in [lo, hi) of a[i, j] * b[i, j] (a*a when b is NULL); rows of P."""
    cdef Py_ssize_t i, j
    cdef const floating *ar
    cdef const floating *br
    for i in range(lo, hi):
        ar = a + i * P
        if b == NULL:
            for j in range(P):
                part[j] += <double>ar[j] * <double>ar[j]
        else:
            br = b + i * P
            for j in range(P):
                part[j] += <double>ar[j] * <double>br[j]


cdef inline void _zero(double *a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        a[j] = 0.0


cdef inline void _chunk_sums(const floating *a, const floating *b, double *part, Py_ssize_t A, Py_ssize_t D,
                             Py_ssize_t B, Py_ssize_t P, Py_ssize_t n_chunks, Py_ssize_t c,
                             int mode) noexcept nogil:
    """part[:P] = chunk c's partial sums of a*b (a*a when b is NULL) for the WN_FLAT / WN_COLS plans."""
    cdef Py_ssize_t total = A * D * B
    _zero(part, P)
    if mode == WN_FLAT:
        _flat_piece_sums(a, b, part, _chunk_start(total, n_chunks, c), _chunk_start(total, n_chunks, c + 1),
                         D, B)
    else:
        _cols_chunk_sums(a, b, part, _chunk_start(A, n_chunks, c), _chunk_start(A, n_chunks, c + 1), P)


cdef void _partial_sums(const floating *a, const floating *b, double *part, Py_ssize_t n_chunks, Py_ssize_t P,
                        Py_ssize_t A, Py_ssize_t D, Py_ssize_t B, int mode, int n_threads) noexcept nogil:
    """part is (n_chunks, P), row c filled by chunk c."""
    cdef Py_ssize_t c
    if n_threads <= 1:
        for c in range(n_chunks):
            _chunk_sums(a, b, part + c * P, A, D, B, P, n_chunks, c, mode)
    else:
        for c in prange(n_chunks, schedule="static", chunksize=1, num_threads=n_threads):
            _chunk_sums(a, b, part + c * P, A, D, B, P, n_chunks, c, mode)


cdef inline double _reduced(const double *part, Py_ssize_t n_chunks, Py_ssize_t P, Py_ssize_t d, Py_ssize_t B,
                            int mode) noexcept nogil:
    """Slice d's total from the (n_chunks, P) partials, in fixed order (chunks, then b)."""
    cdef Py_ssize_t c, b
    cdef double s = 0.0
    for c in range(n_chunks):
        if mode == WN_FLAT:
            s += part[c * P + d]
        else:
            for b in range(B):
                s += part[c * P + d * B + b]
    return s


cdef inline void _apply_chunk(const floating *a, const floating *b, floating *out, const floating *f1,
                              const floating *f2, Py_ssize_t A, Py_ssize_t D, Py_ssize_t B,
                              Py_ssize_t n_chunks, Py_ssize_t c, int mode) noexcept nogil:
    """Chunk c of out = f1 * a (b NULL) or f1 * a - f2 * b; factors f[d] (WN_FLAT) or f[d*B + b] (WN_COLS)."""
    cdef Py_ssize_t total = A * D * B, P = D * B, lo, hi, r, e, i
    if mode == WN_FLAT:
        lo = _chunk_start(total, n_chunks, c)
        hi = _chunk_start(total, n_chunks, c + 1)
        while lo < hi:
            r = lo // B
            e = min(hi, (r + 1) * B)
            if b == NULL:
                _scale_row(a + lo, out + lo, f1[r % D], e - lo)
            else:
                _axpby_row(a + lo, b + lo, out + lo, f1[r % D], f2[r % D], e - lo)
            lo = e
    else:
        for i in range(_chunk_start(A, n_chunks, c), _chunk_start(A, n_chunks, c + 1)):
            _cols_apply_row(a + i * P, NULL if b == NULL else b + i * P, out + i * P, f1, f2, P)


cdef void _apply(const floating *a, const floating *b, floating *out, const floating *f1, const floating *f2,
                 Py_ssize_t A, Py_ssize_t D, Py_ssize_t B, Py_ssize_t n_chunks, int mode,
                 int n_threads) noexcept nogil:
    cdef Py_ssize_t c
    if n_threads <= 1:
        for c in range(n_chunks):
            _apply_chunk(a, b, out, f1, f2, A, D, B, n_chunks, c, mode)
    else:
        for c in prange(n_chunks, schedule="static", chunksize=1, num_threads=n_threads):
            _apply_chunk(a, b, out, f1, f2, A, D, B, n_chunks, c, mode)


cdef inline void _cols_apply_row(const floating *a, const floating *b, floating *out, const floating *f1,
                                 const floating *f2, Py_ssize_t P) noexcept nogil:
    cdef Py_ssize_t j
    if b == NULL:
        for j in range(P):
            out[j] = a[j] * f1[j]
    else:
        for j in range(P):
            out[j] = f1[j] * a[j] - f2[j] * b[j]


# ------------------------------------------------------------------------------------------ WeightNorm rows
cdef inline void _wn_fwd_row(const floating *v, floating g, floating *w, floating *norm,
                             Py_ssize_t n) noexcept nogil:
    cdef floating nrm = <floating>sqrt(_sumsq(v, n))
    norm[0] = nrm
    _scale_row(v, w, g / nrm, n)


cdef inline void _wn_bwd_row(const floating *dw, const floating *v, floating g, floating nrm, floating *dv,
                             floating *dg, Py_ssize_t n) noexcept nogil:
    # dv = g/norm * dw - g*dot/norm^3 * v,  dg = dot / norm
    cdef double dot = _dot(dw, v, n), nd = nrm
    dg[0] = <floating>(dot / nd)
    _axpby_row(dw, v, dv, <floating>(g / nd), <floating>(g * dot / (nd * nd * nd)), n)


# ------------------------------------------------------------------------------------- WeightNorm entries
def weight_norm_forward(const floating[:, :, ::1] v,      # IN  (A, D, B)
                        const floating[::1] g,            # IN  (D,)
                        floating[:, :, ::1] w,            # OUT (A, D, B)
                        floating[::1] norm,               # OUT (D,)
                        double[:, ::1] part,              # SCRATCH (n_chunks, D) FLAT, (n_chunks, D*B) COLS
                        floating[::1] fac,                # SCRATCH (D,) FLAT, (D*B,) COLS, else length 0
                        int mode, int n_threads):
    cdef Py_ssize_t A = v.shape[0], D = v.shape[1], B = v.shape[2], d, b
    cdef Py_ssize_t nc = part.shape[0], P = part.shape[1]
    cdef floating f
    cdef const floating *vp
    cdef floating *wp
    if D == 0:
        return
    if A == 0 or B == 0:
        norm[:] = 0.0
        return
    vp = &v[0, 0, 0]
    wp = &w[0, 0, 0]
    with nogil:
        if mode == WN_ROWS:
            if n_threads <= 1:
                for d in range(D):
                    _wn_fwd_row(vp + d * B, g[d], wp + d * B, &norm[d], B)
            else:
                for d in prange(D, schedule="static", num_threads=n_threads):
                    _wn_fwd_row(vp + d * B, g[d], wp + d * B, &norm[d], B)
        else:
            _partial_sums(vp, <const floating *>NULL, &part[0, 0], nc, P, A, D, B, mode, n_threads)
            for d in range(D):
                norm[d] = <floating>sqrt(_reduced(&part[0, 0], nc, P, d, B, mode))
                f = g[d] / norm[d]
                if mode == WN_FLAT:
                    fac[d] = f
                else:
                    for b in range(B):
                        fac[d * B + b] = f
            _apply(vp, <const floating *>NULL, wp, &fac[0], <const floating *>NULL, A, D, B, nc, mode,
                   n_threads)


def weight_norm_backward(const floating[:, :, ::1] dw,    # IN  (A, D, B)
                         const floating[:, :, ::1] v,     # IN  (A, D, B)
                         const floating[::1] g,           # IN  (D,)
                         const floating[::1] norm,        # IN  (D,)
                         floating[:, :, ::1] dv,          # OUT (A, D, B)
                         floating[::1] dg,                # OUT (D,)
                         double[:, ::1] part,             # SCRATCH as in the forward
                         floating[:, ::1] fac,            # SCRATCH (2, D) FLAT, (2, D*B) COLS, else (0, 0)
                         int mode, int n_threads):
    cdef Py_ssize_t A = v.shape[0], D = v.shape[1], B = v.shape[2], d, b
    cdef Py_ssize_t nc = part.shape[0], P = part.shape[1]
    cdef double dot, nd
    cdef floating c1, c2
    cdef const floating *dwp
    cdef const floating *vp
    cdef floating *dvp
    if D == 0:
        return
    if A == 0 or B == 0:
        dg[:] = 0.0
        return
    dwp = &dw[0, 0, 0]
    vp = &v[0, 0, 0]
    dvp = &dv[0, 0, 0]
    with nogil:
        if mode == WN_ROWS:
            if n_threads <= 1:
                for d in range(D):
                    _wn_bwd_row(dwp + d * B, vp + d * B, g[d], norm[d], dvp + d * B, &dg[d], B)
            else:
                for d in prange(D, schedule="static", num_threads=n_threads):
                    _wn_bwd_row(dwp + d * B, vp + d * B, g[d], norm[d], dvp + d * B, &dg[d], B)
        else:
            _partial_sums(dwp, vp, &part[0, 0], nc, P, A, D, B, mode, n_threads)
            for d in range(D):
                dot = _reduced(&part[0, 0], nc, P, d, B, mode)
                nd = norm[d]
                dg[d] = <floating>(dot / nd)
                c1 = <floating>(g[d] / nd)
                c2 = <floating>(g[d] * dot / (nd * nd * nd))
                if mode == WN_FLAT:
                    fac[0, d] = c1
                    fac[1, d] = c2
                else:
                    for b in range(B):
                        fac[0, d * B + b] = c1
                        fac[1, d * B + b] = c2
            _apply(dwp, vp, dvp, &fac[0, 0], &fac[1, 0], A, D, B, nc, mode, n_threads)


# ------------------------------------------------------------------------------------------ CosineLinear
cdef inline floating _clamp(floating nrm, floating eps) noexcept nogil:
    """max(nrm, eps) that keeps a NaN norm NaN (like numpy.maximum)."""
    return eps if nrm < eps else nrm


cdef inline void _row_norm(const floating *x, floating *out, Py_ssize_t n) noexcept nogil:
    out[0] = <floating>sqrt(_sumsq(x, n))


cdef inline void _scale_out_row(floating *y, floating nx, const floating *w_norm, floating e,
                                Py_ssize_t n) noexcept nogil:
    """y /= max(nx, eps) * max(w_norm, eps), one factor at a time (the product could under/overflow)."""
    cdef Py_ssize_t j
    cdef floating cx = _clamp(nx, e)
    for j in range(n):
        y[j] = y[j] / cx / _clamp(w_norm[j], e)


def cosine_linear_forward(const floating[:, ::1] x,        # IN  (B, D)
                          const floating[:, ::1] w,        # IN  (O, D)
                          floating[:, ::1] y,              # IN/OUT (B, O): holds x @ w.T, scaled in place
                          floating[::1] x_norm,            # OUT (B,)
                          floating[::1] w_norm,            # OUT (O,)
                          double eps, int n_threads):
    """x_norm = |x|, w_norm = |w| (rows), y /= max(x_norm, eps)[:, None] * max(w_norm, eps)[None, :]."""
    cdef Py_ssize_t nb = y.shape[0], no = y.shape[1], n = x.shape[1], i
    cdef floating e = <floating>eps
    if n == 0:
        x_norm[:] = 0.0
        w_norm[:] = 0.0
    if nb == 0 or no == 0:
        if n > 0:
            for i in range(nb):
                _row_norm(&x[i, 0], &x_norm[i], n)
            for i in range(no):
                _row_norm(&w[i, 0], &w_norm[i], n)
        return
    with nogil:
        if n_threads <= 1:
            if n > 0:
                for i in range(nb + no):
                    if i < nb:
                        _row_norm(&x[i, 0], &x_norm[i], n)
                    else:
                        _row_norm(&w[i - nb, 0], &w_norm[i - nb], n)
            for i in range(nb):
                _scale_out_row(&y[i, 0], x_norm[i], &w_norm[0], e, no)
        else:
            if n > 0:
                for i in prange(nb + no, schedule="static", num_threads=n_threads):
                    if i < nb:
                        _row_norm(&x[i, 0], &x_norm[i], n)
                    else:
                        _row_norm(&w[i - nb, 0], &w_norm[i - nb], n)
            for i in prange(nb, schedule="static", num_threads=n_threads):
                _scale_out_row(&y[i, 0], x_norm[i], &w_norm[0], e, no)


cdef inline void _grad_rows(const floating *dy, const floating *y, const floating *x_norm,
                            const floating *w_norm, floating *gs, floating *cx, double *part, Py_ssize_t lo,
                            Py_ssize_t hi, Py_ssize_t no, floating e) noexcept nogil:
    """Rows [lo, hi) of gs = dy / max(x_norm, eps) / max(w_norm, eps); cx; part[o] = sum over them of dy*y."""
    cdef Py_ssize_t i, j
    cdef floating nx, t
    cdef double s
    cdef const floating *dyr
    cdef const floating *yr
    cdef floating *gr
    _zero(part, no)
    for i in range(lo, hi):
        dyr = dy + i * no
        yr = y + i * no
        gr = gs + i * no
        nx = _clamp(x_norm[i], e)
        s = 0.0
        for j in range(no):
            gr[j] = dyr[j] / nx / _clamp(w_norm[j], e)
            t = dyr[j] * yr[j]
            s = s + t
            part[j] += t
        cx[i] = <floating>(s / (<double>nx * nx)) if x_norm[i] >= e else 0


cdef inline void _w_coef(const double *part, Py_ssize_t n_chunks, Py_ssize_t no, const floating *w_norm,
                         floating *cw, Py_ssize_t j, floating e) noexcept nogil:
    cdef Py_ssize_t c
    cdef double q = 0.0
    cdef floating nw = _clamp(w_norm[j], e)
    for c in range(n_chunks):
        q = q + part[c * no + j]
    cw[j] = <floating>(q / (<double>nw * nw)) if w_norm[j] >= e else 0


def cosine_linear_backward_pre(const floating[:, ::1] dy,       # IN  (B, O)
                               const floating[:, ::1] y,        # IN  (B, O)
                               const floating[::1] x_norm,      # IN  (B,)
                               const floating[::1] w_norm,      # IN  (O,)
                               floating[:, ::1] gs,             # OUT (B, O): dy / clamped x_norm, w_norm
                               floating[::1] cx,                # OUT (B,): x's norm-correction coefficient
                               floating[::1] cw,                # OUT (O,): w's norm-correction coefficient
                               double[:, ::1] part,             # SCRATCH (n_chunks, O)
                               double eps, int n_threads):
    """cx[b] = [x_norm >= eps] sum_o dy*y / x_norm^2,  cw[o] = [w_norm >= eps] sum_b dy*y / w_norm^2.

    Rows of dy are cut into n_chunks contiguous chunks; chunk c's column sums go to part[c] and are added
    in chunk order (bitwise reproducible for a given n_chunks).
    """
    cdef Py_ssize_t nb = dy.shape[0], no = dy.shape[1], nc = part.shape[0], c, j
    cdef floating e = <floating>eps
    if no == 0:
        cx[:] = 0.0
        return
    if nb == 0:
        cw[:] = 0.0
        return
    with nogil:
        if n_threads <= 1:
            for c in range(nc):
                _grad_rows(&dy[0, 0], &y[0, 0], &x_norm[0], &w_norm[0], &gs[0, 0], &cx[0], &part[c, 0],
                           _chunk_start(nb, nc, c), _chunk_start(nb, nc, c + 1), no, e)
            for j in range(no):
                _w_coef(&part[0, 0], nc, no, &w_norm[0], &cw[0], j, e)
        else:
            for c in prange(nc, schedule="static", chunksize=1, num_threads=n_threads):
                _grad_rows(&dy[0, 0], &y[0, 0], &x_norm[0], &w_norm[0], &gs[0, 0], &cx[0], &part[c, 0],
                           _chunk_start(nb, nc, c), _chunk_start(nb, nc, c + 1), no, e)
            for j in prange(no, schedule="static", num_threads=n_threads):
                _w_coef(&part[0, 0], nc, no, &w_norm[0], &cw[0], j, e)


def cosine_linear_backward_post(const floating[:, ::1] x,       # IN  (B, D)
                                const floating[:, ::1] w,       # IN  (O, D)
                                const floating[::1] cx,         # IN  (B,)
                                const floating[::1] cw,         # IN  (O,)
                                floating[:, ::1] dx,            # IN/OUT (B, D): holds gs @ w
                                floating[:, ::1] dw,            # IN/OUT (O, D): holds gs.T @ x
                                int n_threads):
    """dx -= cx[:, None] * x,  dw -= cw[:, None] * w."""
    cdef Py_ssize_t nb = x.shape[0], no = w.shape[0], n = x.shape[1], i
    if n == 0:
        return
    with nogil:
        if n_threads <= 1:
            for i in range(nb + no):
                _correct_row(&x[0, 0], &w[0, 0], &cx[0] if nb > 0 else NULL, &cw[0] if no > 0 else NULL,
                             &dx[0, 0] if nb > 0 else NULL, &dw[0, 0] if no > 0 else NULL, i, nb, n)
        else:
            for i in prange(nb + no, schedule="static", num_threads=n_threads):
                _correct_row(&x[0, 0], &w[0, 0], &cx[0] if nb > 0 else NULL, &cw[0] if no > 0 else NULL,
                             &dx[0, 0] if nb > 0 else NULL, &dw[0, 0] if no > 0 else NULL, i, nb, n)


cdef inline void _correct_row(const floating *x, const floating *w, const floating *cx, const floating *cw,
                              floating *dx, floating *dw, Py_ssize_t i, Py_ssize_t nb,
                              Py_ssize_t n) noexcept nogil:
    if i < nb:
        _axpby_row(dx + i * n, x + i * n, dx + i * n, 1, cx[i], n)
    else:
        i = i - nb
        _axpby_row(dw + i * n, w + i * n, dw + i * n, 1, cw[i], n)
