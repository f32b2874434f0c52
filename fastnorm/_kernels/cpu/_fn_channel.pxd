# Declarations of fastnorm_channel.h (moments, gradient sums and output passes of the (N, C, L) channel
# norms, float32 / float64 and 16-bit storage), for every kernel file that uses them: ``cimport`` the
# names from here instead of repeating the extern block; the typed dispatchers below (inline: compiled into
# each module's C) and the entry points' 16-bit helpers are shared by _channel_norm and _batch_norm_stages.
from cython cimport floating
from libc.stdint cimport uint16_t


cdef extern from "fastnorm_channel.h" nogil:
    void fn_seg_moments_f(const float *x, Py_ssize_t n, double *mean, double *m2)
    void fn_seg_moments_d(const double *x, Py_ssize_t n, double *mean, double *m2)
    void fn_chan_merge(double *na, double *ma, double *m2a, double nb, double mb, double m2b)
    void fn_col_moments_f(const float *x, Py_ssize_t nr, Py_ssize_t C, double *mean, double *m2,
                          double *K, double *s1, double *s2)
    void fn_col_moments_d(const double *x, Py_ssize_t nr, Py_ssize_t C, double *mean, double *m2,
                          double *K, double *s1, double *s2)
    void fn_col_moments_ld_f(const float *x, Py_ssize_t nr, Py_ssize_t C, Py_ssize_t ld, double *mean,
                             double *m2, double *K, double *s1, double *s2)
    void fn_col_moments_ld_d(const double *x, Py_ssize_t nr, Py_ssize_t C, Py_ssize_t ld, double *mean,
                             double *m2, double *K, double *s1, double *s2)
    void fn_grad_sums_f(const float *dy, const float *x, Py_ssize_t n, double mu, double *s1, double *s2)
    void fn_grad_sums_d(const double *dy, const double *x, Py_ssize_t n, double mu, double *s1, double *s2)
    void fn_col_grad_sums_f(const float *dy, const float *x, Py_ssize_t nr, Py_ssize_t C, const float *mu,
                            double *s1, double *s2)
    void fn_col_grad_sums_d(const double *dy, const double *x, Py_ssize_t nr, Py_ssize_t C,
                            const double *mu, double *s1, double *s2)
    void fn_col_grad_sums_ld_f(const float *dy, const float *x, Py_ssize_t nr, Py_ssize_t C, Py_ssize_t ld,
                               const float *mu, double *s1, double *s2)
    void fn_col_grad_sums_ld_d(const double *dy, const double *x, Py_ssize_t nr, Py_ssize_t C, Py_ssize_t ld,
                               const double *mu, double *s1, double *s2)
    void fn_apply_fwd_f(const float *x, float *y, Py_ssize_t n, float mu, float a, float b, int stream)
    void fn_apply_fwd_d(const double *x, double *y, Py_ssize_t n, double mu, double a, double b, int stream)
    void fn_apply_bwd_f(const float *dy, const float *x, float *dx, Py_ssize_t n, float mu, float ka, float kb,
                        float kc, int training, int stream)
    void fn_apply_bwd_d(const double *dy, const double *x, double *dx, Py_ssize_t n, double mu, double ka,
                        double kb, double kc, int training, int stream)
    void fn_stream_rows_fwd_f(const float *x, float *y, Py_ssize_t n, Py_ssize_t C, const float *mu,
                              const float *a, const float *b)
    void fn_stream_rows_fwd_d(const double *x, double *y, Py_ssize_t n, Py_ssize_t C, const double *mu,
                              const double *a, const double *b)
    void fn_stream_rows_bwd_f(const float *dy, const float *x, float *dx, Py_ssize_t n, Py_ssize_t C,
                              const float *mu, const float *ka, const float *kb, const float *kc, int training)
    void fn_stream_rows_bwd_d(const double *dy, const double *x, double *dx, Py_ssize_t n, Py_ssize_t C,
                              const double *mu, const double *ka, const double *kb, const double *kc,
                              int training)
    void fn_store_fence()
    void fn_prefetch(const void *p, Py_ssize_t nbytes)
    enum: FN_WRAP
    void fn_seg_moments_h(int fmt, const uint16_t *x, Py_ssize_t n, double *mean, double *m2)
    void fn_grad_sums_h(int fmt, const uint16_t *dy, const uint16_t *x, Py_ssize_t n, double mu, double *s1,
                        double *s2)
    void fn_apply_fwd_h(int fmt, const uint16_t *x, uint16_t *y, Py_ssize_t n, float mu, float a, float b,
                        int stream)
    void fn_apply_bwd_h(int fmt, const uint16_t *dy, const uint16_t *x, uint16_t *dx, Py_ssize_t n, float mu,
                        float ka, float kb, float kc, int training, int stream)
    void fn_col_moments_h(int fmt, const uint16_t *x, Py_ssize_t nr, Py_ssize_t C, Py_ssize_t ld, double *mean,
                          double *m2, double *K, double *s1, double *s2)
    void fn_col_grad_sums_h(int fmt, const uint16_t *dy, const uint16_t *x, Py_ssize_t nr, Py_ssize_t C,
                            Py_ssize_t ld, const float *mu, double *s1, double *s2)
    void fn_rows_fwd_h(int fmt, const uint16_t *x, uint16_t *y, Py_ssize_t nr, Py_ssize_t C, const float *mu,
                       const float *a, const float *b, int stream)
    void fn_rows_bwd_h(int fmt, const uint16_t *dy, const uint16_t *x, uint16_t *dx, Py_ssize_t nr,
                       Py_ssize_t C, const float *mu, const float *ka, const float *kb, const float *kc,
                       int training, int stream)
    float fn_half_to_f32(int fmt, uint16_t h)
    uint16_t fn_f32_to_half(int fmt, float f)


# Data (x, y, dy, dx): float32, float64, or 16-bit storage as uint16 bit patterns (``fmt``: 0 bfloat16,
# 1 float16) whose statistics, parameters and coefficients (``floating``) are float32.
ctypedef fused data_t:
    float
    double
    uint16_t


cdef inline void seg_moments(const data_t *x, Py_ssize_t n, double *mean, double *m2, int fmt) noexcept nogil:
    """mean and M2 = sum((x - mean)^2) of n contiguous values."""
    if data_t is float:
        fn_seg_moments_f(x, n, mean, m2)
    elif data_t is double:
        fn_seg_moments_d(x, n, mean, m2)
    else:
        fn_seg_moments_h(fmt, x, n, mean, m2)


cdef inline void seg_grad_sums(const data_t *dy, const data_t *x, double mu, Py_ssize_t n,
                               double *s1, double *s2, int fmt) noexcept nogil:
    """s1 = sum(dy), s2 = sum(dy * (x - mu)) over n contiguous values."""
    if data_t is float:
        fn_grad_sums_f(dy, x, n, mu, s1, s2)
    elif data_t is double:
        fn_grad_sums_d(dy, x, n, mu, s1, s2)
    else:
        fn_grad_sums_h(fmt, dy, x, n, mu, s1, s2)


cdef inline void seg_apply_fwd(const data_t *x, data_t *y, Py_ssize_t n, floating mu, floating a,
                               floating b, bint stream, int fmt) noexcept nogil:
    """y = (x - mu) * a + b over n contiguous values; (x - mu) first, exact when x is close to a large mean."""
    if data_t is float and floating is float:
        fn_apply_fwd_f(x, y, n, mu, a, b, stream)
    elif data_t is double and floating is double:
        fn_apply_fwd_d(x, y, n, mu, a, b, stream)
    elif data_t is uint16_t and floating is float:
        fn_apply_fwd_h(fmt, x, y, n, mu, a, b, stream)


cdef inline void seg_apply_bwd(const data_t *dy, const data_t *x, data_t *dx, Py_ssize_t n, floating mu,
                               floating ka, floating kb, floating kc, bint training, bint stream,
                               int fmt) noexcept nogil:
    """dx = ka * dy + kb * (x - mu) + kc when training, else dx = ka * dy (x not read)."""
    if data_t is float and floating is float:
        fn_apply_bwd_f(dy, x, dx, n, mu, ka, kb, kc, training, stream)
    elif data_t is double and floating is double:
        fn_apply_bwd_d(dy, x, dx, n, mu, ka, kb, kc, training, stream)
    elif data_t is uint16_t and floating is float:
        fn_apply_bwd_h(fmt, dy, x, dx, n, mu, ka, kb, kc, training, stream)


cdef inline void chunk_bounds(Py_ssize_t m, Py_ssize_t t, Py_ssize_t nt, Py_ssize_t *lo,
                              Py_ssize_t *hi) noexcept nogil:
    """[lo, hi): chunk t of m items cut into nt contiguous chunks."""
    cdef Py_ssize_t step = (m + nt - 1) // nt
    lo[0] = min(m, t * step)
    hi[0] = min(m, (t + 1) * step)


cdef inline floating *out_or_null(floating[::1] a) noexcept nogil:
    """The data of an optional 1-D output, NULL for an absent (length 0) one."""
    return &a[0] if a.shape[0] > 0 else NULL


cdef inline void put_param_grads(floating *dw, floating *db, Py_ssize_t c, double s1, double s2) noexcept nogil:
    """dbias[c] = s1 and dweight[c] = s2 (the per-channel sums of dy and dy * xhat) where wanted (non-NULL)."""
    if db != NULL:
        db[c] = <floating>s1
    if dw != NULL:
        dw[c] = <floating>s2


cdef inline bint empty_backward(floating *dw, floating *db, Py_ssize_t N, Py_ssize_t C,
                                Py_ssize_t L) noexcept nogil:
    """Whether an (N, C, L) backward has no element (then the wanted dweight, dbias are set to 0)."""
    cdef Py_ssize_t c
    if N * C * L > 0:
        return False
    for c in range(C):
        put_param_grads(dw, db, c, 0.0, 0.0)
    return True


cdef inline int half_fmt(a):
    """-1 for float32/float64 data, else the 16-bit format code (0 bfloat16, 1 float16)."""
    if a.dtype.itemsize != 2:
        return -1
    return 1 if a.dtype.char == "e" else 0


cdef inline half_bits(a, int fmt):
    """``a`` as the kernels take it: 16-bit data (fmt >= 0) as its uint16 view."""
    return a if fmt < 0 else a.view("u2")
