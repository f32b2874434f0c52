# Declarations of fastnorm_channel.h (moments, gradient sums and output passes of the (N, C, L) channel
# norms, float32 / float64 and 16-bit storage), for every kernel file that uses them: ``cimport`` the
# names from here instead of repeating the extern block.
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
    enum: FN_WRAP
    void fn_seg_moments_h(int fmt, const uint16_t *x, Py_ssize_t n, double *mean, double *m2)
    void fn_grad_sums_h(int fmt, const uint16_t *dy, const uint16_t *x, Py_ssize_t n, double mu, double *s1,
                        double *s2)
    void fn_apply_fwd_h(int fmt, const uint16_t *x, uint16_t *y, Py_ssize_t n, float mu, float a, float b)
    void fn_apply_bwd_h(int fmt, const uint16_t *dy, const uint16_t *x, uint16_t *dx, Py_ssize_t n, float mu,
                        float ka, float kb, float kc, int training)
    void fn_col_moments_h(int fmt, const uint16_t *x, Py_ssize_t nr, Py_ssize_t C, Py_ssize_t ld, double *mean,
                          double *m2, double *K, double *s1, double *s2)
    void fn_col_grad_sums_h(int fmt, const uint16_t *dy, const uint16_t *x, Py_ssize_t nr, Py_ssize_t C,
                            Py_ssize_t ld, const float *mu, double *s1, double *s2)
    void fn_rows_fwd_h(int fmt, const uint16_t *x, uint16_t *y, Py_ssize_t nr, Py_ssize_t C, const float *mu,
                       const float *a, const float *b)
    void fn_rows_bwd_h(int fmt, const uint16_t *dy, const uint16_t *x, uint16_t *dx, Py_ssize_t nr,
                       Py_ssize_t C, const float *mu, const float *ka, const float *kb, const float *kc,
                       int training)
    float fn_half_to_f32(int fmt, uint16_t h)
    uint16_t fn_f32_to_half(int fmt, float f)
