"""WeightNorm and CosineNorm (cosine_linear) CPU kernels.

WeightNorm works on an (A, D, B) view of v: D = v.shape[dim], A / B the products of the dims before / after
it (dim=None: A = D = 1). The norm of slice d is over a in [0, A), b in [0, B). Three plans;
``weight_norm_plan`` picks one (``mode``) and the scratch shapes:
- WN_ROWS (A == 1 with at least 4 rows per thread, or rows shorter than 16: dim is the first axis, the
  common case): each slice is one contiguous row; OpenMP static over rows, the row's sum is taken and the
  row written while it is in cache.
- WN_FLAT (long rows, B >= 16, with A > 1 or too few rows for the threads, e.g. dim=None): the flat array
  is cut into ``flat_chunks`` contiguous chunks; chunk c adds each row segment's sum into part[c, d]; part
  is summed over c in fixed order; then the output is written.
- WN_COLS (short rows after dim, A > 1, e.g. dim the last axis): a in [0, A) cut into ``cols_chunks``
  chunks; chunk c adds v[a, :, :]^2 elementwise into part[c, :] (length D*B, vectorized), summed over c and
  b at the end; then w[a, :] = v[a, :] * fac[:] with the factor expanded to D*B.
FLAT and COLS run in one parallel region: each thread sums a contiguous run of chunks, a barrier, the
factors (slices split between the threads), a barrier, then each thread writes its own chunks in reverse
order, so the chunks it read last are read again first: from its L1/L2 when its share fits there (v is read
from memory once), from the last-level cache for the tail of a larger share (two passes).
Outputs of at least ``stream_min_bytes`` (default 16 MiB, set_weight_norm_stream_min_bytes) are written with
non-temporal stores in every plan (computed in blocks of WN_NT_BLOCK elements on the stack, then streamed:
no read of the destination lines, no eviction of the v still to be re-read); the values are the same bits.
Bitwise the same for every thread count: the chunk counts depend on the shape only, the COLS/FLAT choice
too, and a ROWS row is summed in the pieces FLAT's chunk edges cut it into, added in order (exactly FLAT's
sum when A == 1), so ROWS and FLAT, which the thread count chooses between, agree. Sums are in float64.

CosineLinear: the matrix products are BLAS calls made by the public layer; these kernels are the rest:
row norms and the output scaling (forward), the scaled gradient G and the norm-correction coefficients
(backward, before the products) and the correction terms (after them).
"""

from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport sqrt

from fastnorm._kernels.cpu._common cimport chunk_start


cdef extern from "fastnorm_stream.h" nogil:
    void fn_sfence()
    void fn_stream_store_f(const float *src, float *dst, Py_ssize_t n)
    Py_ssize_t fn_stream_head_f(const float *dst)

cdef extern from *:
    """
    /* The team size and a barrier of the enclosing parallel region (a team of one without OpenMP). */
    #ifdef _OPENMP
    #include <omp.h>
    static inline int fn_wn_team(void) { return omp_get_num_threads(); }
    static inline void fn_wn_barrier(void) {
        #pragma omp barrier
    }
    #else
    static inline int fn_wn_team(void) { return 1; }
    static inline void fn_wn_barrier(void) {}
    #endif
    """
    int fn_wn_team() noexcept nogil
    void fn_wn_barrier() noexcept nogil

cdef extern from "fastnorm_channel.h" nogil:
    void fn_prefetch(const void *p, Py_ssize_t nbytes)

cdef extern from "fastnorm_moments.h" nogil:
    double fn_sumsq_safe_f(const float *x, Py_ssize_t n)
    double fn_sumsq_d(const double *x, Py_ssize_t n)
    double fn_dot_f(const float *a, const float *b, Py_ssize_t n)
    double fn_dot_d(const double *a, const double *b, Py_ssize_t n)

cdef enum:
    WN_ROWS = 0
    WN_FLAT = 1
    WN_COLS = 2
    # Elements per chunk of the FLAT / COLS plans (chunk edges are a function of the shape only).
    WN_CHUNK = 32768
    WN_COLS_MAX_CHUNKS = 64
    # Most float64 partial-sum scratch (bytes): fewer, longer chunks beyond it.
    WN_PART_BYTES = 16 << 20
    # Streamed outputs are computed this many elements at a time into an L1 block on the stack.
    WN_NT_BLOCK = 1024
    # ROWS rows of at least this many elements prefetch the next row while they are written.
    WN_PREFETCH_MIN = 256

# Outputs of at least this many bytes are written with non-temporal stores (half the last-level cache of the
# machines measured: larger outputs leave the cache before the caller reads them).
cdef Py_ssize_t[1] _stream_min_bytes = [16 << 20]


def set_weight_norm_stream_min_bytes(Py_ssize_t nbytes):
    """Test hook: outputs of at least ``nbytes`` bytes are streamed from now on; returns the old cut-off."""
    old, _stream_min_bytes[0] = _stream_min_bytes[0], nbytes
    return old


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


cdef inline double _piece(const floating *a, const floating *b, Py_ssize_t n) noexcept nogil:
    """sum(a * b), sum(a * a) when b is NULL."""
    return _sumsq(a, n) if b == NULL else _dot(a, b, n)


cdef inline Py_ssize_t _flat_chunks(Py_ssize_t total, Py_ssize_t D) noexcept nogil:
    """Chunks of the FLAT plan (and the pieces a ROWS row is summed in): a function of the shape only."""
    return max(1, min((total + WN_CHUNK - 1) // WN_CHUNK, WN_PART_BYTES // (8 * D)))


cdef inline Py_ssize_t _cols_chunks(Py_ssize_t A, Py_ssize_t P) noexcept nogil:
    """Chunks of a in [0, A) of the COLS plan (rows of P): a function of the shape only."""
    return max(1, min(min(A, <Py_ssize_t>WN_COLS_MAX_CHUNKS), min(A * P // WN_CHUNK, WN_PART_BYTES // (8 * P))))


def weight_norm_plan(Py_ssize_t a, Py_ssize_t d, Py_ssize_t b, int n_threads, bint backward):
    """(mode, part shape, fac shape) for an (a, d, b) view of v: the plan (see the module docstring) and its
    scratch, float64 partial sums ``part`` and the per-slice factors ``fac`` (v's compute dtype).

    Only the ROWS/FLAT choice depends on n_threads, and those two plans give the same bits.
    """
    cdef Py_ssize_t nc = 0, width = 0
    cdef int mode = WN_ROWS
    if a == 1 and (b < 16 or d >= 4 * n_threads):
        pass
    elif a == 1 or b >= 16:
        mode, nc, width = WN_FLAT, _flat_chunks(a * d * b, d), d
    else:
        mode, nc, width = WN_COLS, _cols_chunks(a, d * b), d * b
    cdef object w = width
    return mode, (nc, w), ((2, w) if backward else (w,))


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


cdef inline void _out_row_plain(const floating *a, const floating *b, floating *out, floating f1, floating f2,
                                Py_ssize_t n) noexcept nogil:
    """out = f1 * a (forward: b NULL) or f1 * a - f2 * b (backward)."""
    if b == NULL:
        _scale_row(a, out, f1, n)
    else:
        _axpby_row(a, b, out, f1, f2, n)


cdef inline void _stream(const floating *src, floating *dst, Py_ssize_t n) noexcept nogil:
    """dst[:n] = src[:n] (bit copy) with non-temporal stores; double as pairs of 32-bit words."""
    if floating is float:
        fn_stream_store_f(src, dst, n)
    else:
        fn_stream_store_f(<const float *>src, <float *>dst, 2 * n)


cdef inline Py_ssize_t _nt_head(const floating *dst) noexcept nogil:
    """Elements before dst's first 32-byte boundary (a streamed block ending there lets the later ones stream
    whole); double: a 4-byte-aligned view has none to align, stream from the start."""
    if floating is float:
        return fn_stream_head_f(dst)
    else:
        return fn_stream_head_f(<const float *>dst) // 2


cdef inline void _apply_plain(const floating *a, const floating *b, floating *out, floating f1, floating f2,
                              const floating *v1, const floating *v2, Py_ssize_t n) noexcept nogil:
    """_out_row_plain with the factors f1, f2; with per-element factors v1[j], v2[j] (COLS) when v1 is given."""
    cdef Py_ssize_t j
    if v1 == NULL:
        _out_row_plain(a, b, out, f1, f2, n)
    elif b == NULL:
        for j in range(n):
            out[j] = a[j] * v1[j]
    else:
        for j in range(n):
            out[j] = v1[j] * a[j] - v2[j] * b[j]


cdef inline void _apply(const floating *a, const floating *b, floating *out, floating f1, floating f2,
                        const floating *v1, const floating *v2, Py_ssize_t n, bint nt, const floating *pa,
                        const floating *pb) noexcept nogil:
    """_apply_plain; nt: computed WN_NT_BLOCK elements at a time on the stack and streamed (the same bits).
    pa, pb (or NULL): the rows read next, prefetched block by block while this one is written (ROWS: the
    sum pass over the next row then finds it in cache instead of waiting on memory after each write pass)."""
    cdef floating tmp[WN_NT_BLOCK]
    cdef Py_ssize_t j0 = 0, k
    if not nt and pa == NULL:
        _apply_plain(a, b, out, f1, f2, v1, v2, n)
        return
    k = WN_NT_BLOCK - _nt_head(out) if nt else WN_NT_BLOCK
    while j0 < n:
        k = min(k, n - j0)
        if pa != NULL:
            fn_prefetch(pa + j0, k * sizeof(floating))
            if pb != NULL:
                fn_prefetch(pb + j0, k * sizeof(floating))
        if nt:
            _apply_plain(a + j0, NULL if b == NULL else b + j0, tmp, f1, f2, NULL if v1 == NULL else v1 + j0,
                         NULL if v2 == NULL else v2 + j0, k)
            _stream(tmp, out + j0, k)
        else:
            _apply_plain(a + j0, NULL if b == NULL else b + j0, out + j0, f1, f2,
                         NULL if v1 == NULL else v1 + j0, NULL if v2 == NULL else v2 + j0, k)
        j0 += k
        k = WN_NT_BLOCK


# -------------------------------------------------------------------------------------- WeightNorm, shared
cdef inline void _slice_coefs(double s, floating g, const floating *norm, floating *stat, floating *f1,
                              floating *f2) noexcept nogil:
    """A slice's factors from its sum s. Forward (norm NULL): s = sum(v^2), stat = norm = sqrt(s),
    f1 = g / norm. Backward: s = dot = sum(dw * v), stat = dg = dot / norm, f1 = g / norm,
    f2 = g * dot / norm^3 (dv = f1 * dw - f2 * v)."""
    cdef double nd
    if norm == NULL:
        stat[0] = <floating>sqrt(s)
        f1[0] = g / stat[0]
    else:
        nd = norm[0]
        stat[0] = <floating>(s / nd)
        f1[0] = <floating>(g / nd)
        f2[0] = <floating>(g * s / (nd * nd * nd))


cdef inline double _cut_sum(const floating *a, const floating *b, Py_ssize_t lo, Py_ssize_t hi,
                            Py_ssize_t step) noexcept nogil:
    """Sum over the flat range [lo, hi) of a*b (a*a when b is NULL), in pieces cut at the multiples of step
    and added in order: the FLAT plan's sum of a slice when A == 1."""
    cdef double s = 0.0
    cdef Py_ssize_t e
    while lo < hi:
        e = min(hi, (lo // step + 1) * step)
        s += _piece(a + lo, NULL if b == NULL else b + lo, e - lo)
        lo = e
    return s


cdef inline void _rows_one(const floating *a, const floating *b, const floating *g, const floating *norm,
                           floating *out, floating *stat, Py_ssize_t d, Py_ssize_t D, Py_ssize_t B,
                           Py_ssize_t step, bint nt) noexcept nogil:
    """ROWS plan, row d: its sum, its factors, its output row (while the row is in cache; row d + 1, when
    there is one and rows are long, prefetched meanwhile)."""
    cdef floating f1, f2 = 0
    cdef const floating *pa = a + (d + 1) * B if d + 1 < D and B >= WN_PREFETCH_MIN else NULL
    _slice_coefs(_cut_sum(a, b, d * B, (d + 1) * B, step), g[d], NULL if norm == NULL else norm + d, stat + d,
                 &f1, &f2)
    _apply(a + d * B, NULL if b == NULL else b + d * B, out + d * B, f1, f2, NULL, NULL, B, nt, pa,
           NULL if b == NULL or pa == NULL else b + (d + 1) * B)


cdef inline void _flat_piece_sums(const floating *a, const floating *b, double *part, Py_ssize_t lo,
                                  Py_ssize_t hi, Py_ssize_t D, Py_ssize_t B) noexcept nogil:
    """part[d] += sum over the flat range [lo, hi) of a*b (a*a when b is NULL), d = (index // B) % D."""
    cdef Py_ssize_t r, e
    while lo < hi:
        r = lo // B
        e = min(hi, (r + 1) * B)
        part[r % D] += _piece(a + lo, NULL if b == NULL else b + lo, e - lo)
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
        _flat_piece_sums(a, b, part, chunk_start(total, n_chunks, c), chunk_start(total, n_chunks, c + 1),
                         D, B)
    else:
        _cols_chunk_sums(a, b, part, chunk_start(A, n_chunks, c), chunk_start(A, n_chunks, c + 1), P)


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


cdef inline void _slice_fac(const double *part, Py_ssize_t n_chunks, Py_ssize_t P, const floating *g,
                            const floating *norm, floating *stat, floating *f1, floating *f2, Py_ssize_t d,
                            Py_ssize_t B, int mode) noexcept nogil:
    """Slice d's statistic and factors (f2 NULL: forward) from the partials; COLS: expanded to B columns."""
    cdef floating c1, c2 = 0
    cdef Py_ssize_t b
    _slice_coefs(_reduced(part, n_chunks, P, d, B, mode), g[d], NULL if norm == NULL else norm + d, stat + d,
                 &c1, &c2)
    if mode == WN_FLAT:
        f1[d] = c1
        if f2 != NULL:
            f2[d] = c2
    else:
        for b in range(B):
            f1[d * B + b] = c1
        if f2 != NULL:
            for b in range(B):
                f2[d * B + b] = c2


cdef inline void _apply_chunk(const floating *a, const floating *b, floating *out, const floating *f1,
                              const floating *f2, Py_ssize_t A, Py_ssize_t D, Py_ssize_t B,
                              Py_ssize_t n_chunks, Py_ssize_t c, int mode, bint nt) noexcept nogil:
    """Chunk c of out = f1 * a (b NULL) or f1 * a - f2 * b; factors f[d] (WN_FLAT) or f[d*B + b] (WN_COLS)."""
    cdef Py_ssize_t total = A * D * B, P = D * B, lo, hi, r, e, i
    if mode == WN_FLAT:
        lo = chunk_start(total, n_chunks, c)
        hi = chunk_start(total, n_chunks, c + 1)
        while lo < hi:
            r = (lo // B) % D
            e = min(hi, (lo // B + 1) * B)
            _apply(a + lo, NULL if b == NULL else b + lo, out + lo, f1[r], 0 if f2 == NULL else f2[r], NULL, NULL,
                   e - lo, nt, NULL, NULL)
            lo = e
    else:
        for i in range(chunk_start(A, n_chunks, c), chunk_start(A, n_chunks, c + 1)):
            _apply(a + i * P, NULL if b == NULL else b + i * P, out + i * P, 0, 0, f1, f2, P, nt, NULL, NULL)


cdef void _weight_norm(const floating *a, const floating *b, const floating *g, const floating *norm,
                       floating *out, floating *stat, double *part, floating *f1, floating *f2, Py_ssize_t A,
                       Py_ssize_t D, Py_ssize_t B, Py_ssize_t nc, Py_ssize_t P, int mode,
                       int n_threads) noexcept nogil:
    """Forward (b, norm NULL: a = v, stat = norm) or backward (a = dw, b = v, stat = dg) of every plan."""
    cdef Py_ssize_t d, c, step, t, team
    cdef bint par = n_threads > 1
    cdef bint nt = A * D * B * <Py_ssize_t>sizeof(floating) >= _stream_min_bytes[0]
    if mode == WN_ROWS:
        step = (D * B + _flat_chunks(D * B, D) - 1) // _flat_chunks(D * B, D)
        with parallel(num_threads=n_threads, use_threads_if=par):
            for d in prange(D, schedule="static"):
                _rows_one(a, b, g, norm, out, stat, d, D, B, step, nt)
            if nt:
                fn_sfence()
        return
    t, team, c = 0, 1, 0  # private in the region (set first: no maybe-uninitialized copy-out)
    with parallel(num_threads=n_threads, use_threads_if=par):
        t = threadid()
        team = fn_wn_team()
        for c in range(chunk_start(nc, team, t), chunk_start(nc, team, t + 1)):
            _chunk_sums(a, b, part + c * P, A, D, B, P, nc, c, mode)
        fn_wn_barrier()
        for d in range(chunk_start(D, team, t), chunk_start(D, team, t + 1)):
            _slice_fac(part, nc, P, g, norm, stat, f1, f2, d, B, mode)
        fn_wn_barrier()
        # Newest first: the chunks this thread summed last are still in its caches.
        c = chunk_start(nc, team, t + 1) - 1
        while c >= chunk_start(nc, team, t):
            _apply_chunk(a, b, out, f1, f2, A, D, B, nc, c, mode, nt)
            c = c - 1
        if nt:
            fn_sfence()


# ------------------------------------------------------------------------------------- WeightNorm entries
cdef bint _nothing_to_run(Py_ssize_t A, Py_ssize_t D, Py_ssize_t B, floating[::1] per_d):
    """True for an empty (A, D, B) view: no D, or the per-D output (``per_d``, zeroed then) sums over nothing."""
    if D == 0:
        return True
    if A == 0 or B == 0:
        per_d[:] = 0.0
        return True
    return False


def weight_norm_forward(const floating[:, :, ::1] v,      # IN  (A, D, B)
                        const floating[::1] g,            # IN  (D,)
                        floating[:, :, ::1] w,            # OUT (A, D, B)
                        floating[::1] norm,               # OUT (D,)
                        double[:, ::1] part,              # SCRATCH (n_chunks, D) FLAT, (n_chunks, D*B) COLS
                        floating[::1] fac,                # SCRATCH (D,) FLAT, (D*B,) COLS, else length 0
                        int mode, int n_threads):
    """Scratch and mode from ``weight_norm_plan``."""
    cdef Py_ssize_t A = v.shape[0], D = v.shape[1], B = v.shape[2]
    if _nothing_to_run(A, D, B, norm):
        return
    with nogil:
        _weight_norm(&v[0, 0, 0], NULL, &g[0], NULL, &w[0, 0, 0], &norm[0],
                     &part[0, 0] if mode != WN_ROWS else NULL, &fac[0] if mode != WN_ROWS else NULL, NULL,
                     A, D, B, part.shape[0], part.shape[1], mode, n_threads)


def weight_norm_backward(const floating[:, :, ::1] dw,    # IN  (A, D, B)
                         const floating[:, :, ::1] v,     # IN  (A, D, B)
                         const floating[::1] g,           # IN  (D,)
                         const floating[::1] norm,        # IN  (D,)
                         floating[:, :, ::1] dv,          # OUT (A, D, B)
                         floating[::1] dg,                # OUT (D,)
                         double[:, ::1] part,             # SCRATCH as in the forward
                         floating[:, ::1] fac,            # SCRATCH (2, D) FLAT, (2, D*B) COLS, else (0, 0)
                         int mode, int n_threads):
    """Scratch and mode from ``weight_norm_plan``."""
    cdef Py_ssize_t A = v.shape[0], D = v.shape[1], B = v.shape[2]
    if _nothing_to_run(A, D, B, dg):
        return
    with nogil:
        _weight_norm(&dw[0, 0, 0], &v[0, 0, 0], &g[0], &norm[0], &dv[0, 0, 0], &dg[0],
                     &part[0, 0] if mode != WN_ROWS else NULL, &fac[0, 0] if mode != WN_ROWS else NULL,
                     &fac[1, 0] if mode != WN_ROWS else NULL, A, D, B, part.shape[0], part.shape[1], mode,
                     n_threads)


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
                           chunk_start(nb, nc, c), chunk_start(nb, nc, c + 1), no, e)
            for j in range(no):
                _w_coef(&part[0, 0], nc, no, &w_norm[0], &cw[0], j, e)
        else:
            for c in prange(nc, schedule="static", chunksize=1, num_threads=n_threads):
                _grad_rows(&dy[0, 0], &y[0, 0], &x_norm[0], &w_norm[0], &gs[0, 0], &cx[0], &part[c, 0],
                           chunk_start(nb, nc, c), chunk_start(nb, nc, c + 1), no, e)
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
