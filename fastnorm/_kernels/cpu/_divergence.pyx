"""Row-wise loss and divergence CPU kernels on an (M, V) row view: softmax cross-entropy (fused with its
gradient, optionally in place), entropy, KL divergence, generalized Jensen-Shannon divergence.

One row per task, OpenMP static over rows; every row result depends on that row only, so results are
bitwise the same for any thread count. A row is read from memory once and re-read from cache by the
later passes. exp and log are branch-free polynomial forms (``fn_exp_*``, ``fn_log_*`` below) that gcc
vectorizes (libm's scalar calls would make these kernels compute-bound at a few ns per element); row sums
use the blocked lane accumulators of fastnorm_moments.h (short low-precision sums folded into double).
Per-row scalars (log-sum-exp, losses, gradient scales) are double.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.stdint cimport int64_t, uint8_t, uint16_t

from fastnorm._dtypes import HALF_FORMAT

cdef extern from "fastnorm_half.h" nogil:
    float fn_half_to_f32(int fmt, uint16_t h)
    uint16_t fn_f32_to_half(int fmt, float f)
    void fn_half_load(int fmt, const uint16_t *src, float *dst, Py_ssize_t n)
    void fn_half_store(int fmt, const float *src, uint16_t *dst, Py_ssize_t n)

cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>
    #include "fastnorm_moments.h"

    /* Every helper is forced inline: gcc otherwise keeps some as calls inside the Cython row loops, and a
       call stops the loop from vectorizing. */
    #if defined(__GNUC__)
    #define FN_INL static inline __attribute__((always_inline))
    #else
    #define FN_INL static inline
    #endif

    FN_INL float fn_f_of_bits(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
    FN_INL uint32_t fn_bits_of_f(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }
    FN_INL double fn_d_of_bits(uint64_t b) { double f; memcpy(&f, &b, 8); return f; }
    FN_INL uint64_t fn_bits_of_d(double f) { uint64_t b; memcpy(&b, &f, 8); return b; }

    /* exp: x = n ln2 + r (Cody-Waite, |r| <= ln2/2), Taylor polynomial for exp(r), 2^n from exponent bits.
       Relative error a few ulp; 0 below the normal range, inf above the overflow threshold, NaN kept. */
    FN_INL float fn_exp_f(float x) {
        float xc = x < -86.5f ? -86.5f : x;
        xc = xc > 88.72f ? 88.72f : xc;
        float n = rintf(xc * 1.44269504088896341f);
        float r = xc - n * 0.693359375f;
        r = r + n * 2.12194440e-4f;
        float p = 1.98412698e-4f;
        p = p * r + 1.38888889e-3f;
        p = p * r + 8.33333333e-3f;
        p = p * r + 4.16666667e-2f;
        p = p * r + 1.66666667e-1f;
        p = p * r + 0.5f;
        p = p * r + 1.0f;
        p = p * r + 1.0f;
        float sc = fn_f_of_bits((uint32_t)((int32_t)n + 126) << 23);
        float y = p * sc * 2.0f;
        y = x < -86.5f ? 0.0f : y;
        y = x > 88.72f ? INFINITY : y;
        return y;
    }

    #define FN_LN2_HI 6.93147180369123816490e-01
    #define FN_LN2_LO 1.90821492927058770002e-10

    FN_INL double fn_exp_d(double x) {
        double xc = x < -708.0 ? -708.0 : x;
        xc = xc > 709.78 ? 709.78 : xc;
        double n = rint(xc * 1.4426950408889634);
        double r = (xc - n * FN_LN2_HI) - n * FN_LN2_LO;
        double p = 1.6059043836821613e-10;
        p = p * r + 2.08767569878681e-09;
        p = p * r + 2.505210838544172e-08;
        p = p * r + 2.755731922398589e-07;
        p = p * r + 2.7557319223985893e-06;
        p = p * r + 2.48015873015873e-05;
        p = p * r + 0.0001984126984126984;
        p = p * r + 0.001388888888888889;
        p = p * r + 0.008333333333333333;
        p = p * r + 0.041666666666666664;
        p = p * r + 0.16666666666666666;
        p = p * r + 0.5;
        p = p * r + 1.0;
        p = p * r + 1.0;
        /* 2^(n-1) from the bits of n + 1022 (the 1.5 * 2^52 shift leaves it in the low mantissa bits;
           no double -> int64 conversion, which AVX2 cannot vectorize) */
        uint64_t nb = fn_bits_of_d(n + (1022.0 + 6755399441055744.0));
        double sc = fn_d_of_bits(nb << 52);
        double y = p * sc * 2.0;
        y = x < -708.0 ? 0.0 : y;
        y = x > 709.78 ? INFINITY : y;
        return y;
    }

    /* log: x = 2^e m with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m - 1) / (m + 1), as the
       series 2 s sum_k s^2k / (2k + 1). Exact at special values: log 0 = -inf, log(<0) = NaN, log inf = inf. */
    /* m in [1, 2) folded into [sqrt(1/2), sqrt(2)) (exponent e adjusted), then s = (m - 1) / (m + 1), z = s^2 */
    #define FN_LOG_ARG(T, m, e, s, z)                                                                   \
        int big = m > (T)1.4142135623730951;                                                           \
        m = big ? m * (T)0.5 : m;                                                                      \
        e = big ? e + 1 : e;                                                                           \
        T s = (m - (T)1) / (m + (T)1);                                                                 \
        T z = s * s;
    #define FN_LOG_SPECIAL(x, y)                                                                       \
        y = x == 0 ? -INFINITY : y;                                                                    \
        y = x < 0 ? NAN : y;                                                                           \
        y = x == INFINITY ? INFINITY : y;                                                              \
        y = x != x ? x : y;

    FN_INL float fn_log_f(float x) {
        int sub = x < 1.17549435e-38f;
        float xs = sub ? x * 33554432.0f : x;
        uint32_t b = fn_bits_of_f(xs);
        int32_t e = (int32_t)((b >> 23) & 0xffu) - 127 - (sub ? 25 : 0);
        float m = fn_f_of_bits((b & 0x007fffffu) | 0x3f800000u);
        FN_LOG_ARG(float, m, e, s, z)
        float p = 1.0f / 9.0f;
        p = p * z + 1.0f / 7.0f;
        p = p * z + 0.2f;
        p = p * z + 1.0f / 3.0f;
        p = p * z + 1.0f;
        float fe = (float)e;
        float y = fe * 0.693359375f + (2.0f * s * p - fe * 2.12194440e-4f);
        FN_LOG_SPECIAL(x, y)
        return y;
    }

    FN_INL double fn_log_d(double x) {
        int sub = x < 2.2250738585072014e-308;
        double xs = sub ? x * 18014398509481984.0 : x;
        uint64_t b = fn_bits_of_d(xs);
        /* the exponent field as a double without an int64 -> double conversion */
        double fe = fn_d_of_bits(0x4330000000000000ull | ((b >> 52) & 0x7ffull)) - 4503599627370496.0;
        fe = fe - 1023.0 - (sub ? 54.0 : 0.0);
        double m = fn_d_of_bits((b & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
        FN_LOG_ARG(double, m, fe, s, z)
        double p = 1.0 / 23.0;
        p = p * z + 1.0 / 21.0;
        p = p * z + 1.0 / 19.0;
        p = p * z + 1.0 / 17.0;
        p = p * z + 1.0 / 15.0;
        p = p * z + 1.0 / 13.0;
        p = p * z + 1.0 / 11.0;
        p = p * z + 1.0 / 9.0;
        p = p * z + 1.0 / 7.0;
        p = p * z + 1.0 / 5.0;
        p = p * z + 1.0 / 3.0;
        p = p * z + 1.0;
        double y = fe * FN_LN2_HI + (2.0 * s * p + fe * FN_LN2_LO);
        FN_LOG_SPECIAL(x, y)
        return y;
    }

    #define FN_ROW_LOOP(OUT, EXPR)                                                                    \
        if (dl) { for (ptrdiff_t i = 0; i < n; i++) OUT[i] = c * dl[i] * (EXPR); }                     \
        else { for (ptrdiff_t i = 0; i < n; i++) OUT[i] = c * (EXPR); }

    /* ---- per-type row helpers: one loop per sum (gcc vectorizes those) ---- */
    #define FN_DEFINE_DIV(T, SUF)                                                                     \
    FN_INL T fn_max_##SUF(const T *x, ptrdiff_t n) {                                            \
        T m[FN_LANES];                                                                                 \
        for (int k = 0; k < FN_LANES; k++) m[k] = -INFINITY;                                           \
        ptrdiff_t j = 0;                                                                               \
        for (; j + FN_LANES <= n; j += FN_LANES)                                                       \
            for (int k = 0; k < FN_LANES; k++) m[k] = x[j + k] > m[k] ? x[j + k] : m[k];               \
        for (; j < n; j++) m[0] = x[j] > m[0] ? x[j] : m[0];                                           \
        T r = m[0];                                                                                    \
        for (int k = 1; k < FN_LANES; k++) r = m[k] > r ? m[k] : r;                                    \
        return r;                                                                                      \
    }                                                                                                  \
    FN_INL double fn_sumexp_##SUF(const T *x, ptrdiff_t n, T mx) {                              \
        FN_BLOCKED_SUM(T, n, fn_exp_##SUF(x[i] - mx)) }                                                \
    /* sum(mx - x), sum(w (mx - x)), sum(y (mx - x)), sum(w y (mx - x)), sum(w y) */                   \
    FN_INL double fn_sumdev_##SUF(const T *x, ptrdiff_t n, T mx) {                              \
        FN_BLOCKED_SUM(T, n, mx - x[i]) }                                                              \
    FN_INL double fn_wsumdev_##SUF(const T *w, const T *x, ptrdiff_t n, T mx) {                 \
        FN_BLOCKED_SUM(T, n, w[i] * (mx - x[i])) }                                                     \
    FN_INL double fn_wwsumdev_##SUF(const T *w, const T *y, const T *x, ptrdiff_t n, T mx) {    \
        FN_BLOCKED_SUM(T, n, w[i] * y[i] * (mx - x[i])) }                                              \
    FN_INL double fn_wsum_##SUF(const T *w, const T *y, ptrdiff_t n) {                          \
        FN_BLOCKED_SUM(T, n, w[i] * y[i]) }                                                            \
    /* ---- KL: elementwise l and its derivatives ---- */                                             \
    FN_INL T fn_xlogx_##SUF(T t) { return t == 0 ? (T)0 : t * fn_log_##SUF(t); }               \
    FN_INL T fn_kl_elem_##SUF(T x, T t, int lt) {                                               \
        return lt ? fn_exp_##SUF(t) * (t - x) : fn_xlogx_##SUF(t) - t * x; }                           \
    FN_INL double fn_kl_sum_##SUF(const T *x, const T *t, ptrdiff_t n, int lt) {                \
        if (lt) { FN_BLOCKED_SUM(T, n, fn_exp_##SUF(t[i]) * (t[i] - x[i])) }                           \
        else { FN_BLOCKED_SUM(T, n, fn_xlogx_##SUF(t[i]) - t[i] * x[i]) } }                            \
    /* ---- generalized JSD (Liger's), x = log Q, y = log P; 0 log 0 = 0 ---- */                      \
    /* the element's loss, and c * dl/dx stored in *dxo (one exp/exp/log for both; a caller that drops *dxo \
       leaves gcc nothing of it to compute) */                                                         \
    FN_INL T fn_js_elem_dx_##SUF(T x, T y, T b, T c, T *dxo) {                                         \
        T q = fn_exp_##SUF(x), p = fn_exp_##SUF(y);                                                    \
        T m = b * p + ((T)1 - b) * q;                                                                  \
        T lm = fn_log_##SUF(m);                                                                        \
        T py = p == 0 ? (T)0 : p * y;                                                                  \
        T qx = q == 0 ? (T)0 : q * x;                                                                  \
        T ml = m == 0 ? (T)0 : m * lm;                                                                 \
        *dxo = q == 0 ? (T)0 : c * (((T)1 - b) * q * (x - lm));                                        \
        return b * py + ((T)1 - b) * qx - ml; }                                                        \
    FN_INL T fn_js_elem_##SUF(T x, T y, T b) { T dx; return fn_js_elem_dx_##SUF(x, y, b, (T)0, &dx); } \
    FN_INL T fn_js_dx_##SUF(T x, T y, T b) {                                                    \
        T q = fn_exp_##SUF(x), p = fn_exp_##SUF(y);                                                    \
        T lm = fn_log_##SUF(b * p + ((T)1 - b) * q);                                                   \
        return q == 0 ? (T)0 : ((T)1 - b) * q * (x - lm); }                                            \
    FN_INL T fn_js_dy_##SUF(T x, T y, T b) {                                                    \
        T q = fn_exp_##SUF(x), p = fn_exp_##SUF(y);                                                    \
        T lm = fn_log_##SUF(b * p + ((T)1 - b) * q);                                                   \
        return p == 0 ? (T)0 : b * p * (y - lm); }                                                     \
    FN_INL T fn_fkl_elem_##SUF(T x, T y) { T p = fn_exp_##SUF(y); return p == 0 ? (T)0 : p * (y - x); } \
    FN_INL T fn_rkl_elem_##SUF(T x, T y) { T q = fn_exp_##SUF(x); return q == 0 ? (T)0 : q * (x - y); } \
    /* mode 0: beta = 0 (forward KL), 1: beta = 1 (reverse KL), 2: general */                         \
    FN_INL T fn_jsm_elem_##SUF(T x, T y, T b, int mode) {                                       \
        return mode == 0 ? fn_fkl_elem_##SUF(x, y) : (mode == 1 ? fn_rkl_elem_##SUF(x, y)              \
                                                      : fn_js_elem_##SUF(x, y, b)); }                  \
    FN_INL double fn_js_sum_##SUF(const T *x, const T *y, ptrdiff_t n, T b, int mode) {         \
        if (mode == 0) { FN_BLOCKED_SUM(T, n, fn_fkl_elem_##SUF(x[i], y[i])) }                         \
        else if (mode == 1) { FN_BLOCKED_SUM(T, n, fn_rkl_elem_##SUF(x[i], y[i])) }                    \
        else { FN_BLOCKED_SUM(T, n, fn_js_elem_##SUF(x[i], y[i], b)) } }                               \
    /* gradient rows, the mode test outside the loops: out = c * EXPR (times dl[i] when dl != NULL) */ \
    FN_INL void fn_js_grad_row_##SUF(const T *x, const T *y, const T *dl, ptrdiff_t n, T b, int mode, T c,   \
                                     T *dx, T *dy) {                                                   \
        if (dx) {                                                                                      \
            if (mode == 0) { FN_ROW_LOOP(dx, -fn_exp_##SUF(y[i])) }                                    \
            else if (mode == 1) { FN_ROW_LOOP(dx, fn_rkl_elem_##SUF(x[i], y[i]) + fn_exp_##SUF(x[i])) } \
            else { FN_ROW_LOOP(dx, fn_js_dx_##SUF(x[i], y[i], b)) } }                                  \
        if (dy) {                                                                                      \
            if (mode == 0) { FN_ROW_LOOP(dy, fn_fkl_elem_##SUF(x[i], y[i]) + fn_exp_##SUF(y[i])) }     \
            else if (mode == 1) { FN_ROW_LOOP(dy, -fn_exp_##SUF(x[i])) }                               \
            else { FN_ROW_LOOP(dy, fn_js_dy_##SUF(x[i], y[i], b)) } } }                                \
    /* the general JSD's row sum with dx = c * dl/dx stored in the same loop */                       \
    FN_INL double fn_js_fused_##SUF(const T *x, const T *y, ptrdiff_t n, T b, T c, T *dx) {            \
        FN_BLOCKED_SUM(T, n, fn_js_elem_dx_##SUF(x[i], y[i], b, c, &dx[i])) }                          \
    /* ---- entropy: sum of entr(p * inv) ---- */                                                     \
    FN_INL T fn_entr_##SUF(T q) {                                                               \
        T r = q > 0 ? -q * fn_log_##SUF(q) : (q == 0 ? (T)0 : (T)-INFINITY);                           \
        return q != q ? q : r; }                                                                       \
    FN_INL double fn_entr_sum_##SUF(const T *p, ptrdiff_t n, T inv) {                           \
        FN_BLOCKED_SUM(T, n, fn_entr_##SUF(p[i] * inv)) }

    FN_DEFINE_DIV(float, f)
    FN_DEFINE_DIV(double, d)
    """
    float fn_exp_f(float x) noexcept nogil
    double fn_exp_d(double x) noexcept nogil
    float fn_log_f(float x) noexcept nogil
    double fn_log_d(double x) noexcept nogil
    float fn_max_f(const float *x, Py_ssize_t n) noexcept nogil
    double fn_max_d(const double *x, Py_ssize_t n) noexcept nogil
    double fn_sumexp_f(const float *x, Py_ssize_t n, float mx) noexcept nogil
    double fn_sumexp_d(const double *x, Py_ssize_t n, double mx) noexcept nogil
    double fn_sumdev_f(const float *x, Py_ssize_t n, float mx) noexcept nogil
    double fn_sumdev_d(const double *x, Py_ssize_t n, double mx) noexcept nogil
    double fn_wsumdev_f(const float *w, const float *x, Py_ssize_t n, float mx) noexcept nogil
    double fn_wsumdev_d(const double *w, const double *x, Py_ssize_t n, double mx) noexcept nogil
    double fn_wwsumdev_f(const float *w, const float *y, const float *x, Py_ssize_t n, float mx) noexcept nogil
    double fn_wwsumdev_d(const double *w, const double *y, const double *x, Py_ssize_t n,
                         double mx) noexcept nogil
    double fn_wsum_f(const float *w, const float *y, Py_ssize_t n) noexcept nogil
    double fn_wsum_d(const double *w, const double *y, Py_ssize_t n) noexcept nogil
    double fn_sum_f(const float *x, Py_ssize_t n) noexcept nogil
    double fn_sum_d(const double *x, Py_ssize_t n) noexcept nogil
    float fn_kl_elem_f(float x, float t, int lt) noexcept nogil
    double fn_kl_elem_d(double x, double t, int lt) noexcept nogil
    double fn_kl_sum_f(const float *x, const float *t, Py_ssize_t n, int lt) noexcept nogil
    double fn_kl_sum_d(const double *x, const double *t, Py_ssize_t n, int lt) noexcept nogil
    float fn_jsm_elem_f(float x, float y, float b, int mode) noexcept nogil
    double fn_jsm_elem_d(double x, double y, double b, int mode) noexcept nogil
    double fn_js_sum_f(const float *x, const float *y, Py_ssize_t n, float b, int mode) noexcept nogil
    double fn_js_sum_d(const double *x, const double *y, Py_ssize_t n, double b, int mode) noexcept nogil
    void fn_js_grad_row_f(const float *x, const float *y, const float *dl, Py_ssize_t n, float b, int mode,
                          float c, float *dx, float *dy) noexcept nogil
    void fn_js_grad_row_d(const double *x, const double *y, const double *dl, Py_ssize_t n, double b, int mode,
                          double c, double *dx, double *dy) noexcept nogil
    double fn_js_fused_f(const float *x, const float *y, Py_ssize_t n, float b, float c, float *dx) noexcept nogil
    double fn_js_fused_d(const double *x, const double *y, Py_ssize_t n, double b, double c,
                         double *dx) noexcept nogil
    double fn_entr_sum_f(const float *p, Py_ssize_t n, float inv) noexcept nogil
    double fn_entr_sum_d(const double *p, Py_ssize_t n, double inv) noexcept nogil

from libc.math cimport log, isfinite


# ------------------------------------------------------------------------------------------ typed shims
cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return fn_exp_f(x)
    else:
        return fn_exp_d(x)


cdef inline floating _log(floating x) noexcept nogil:
    if floating is float:
        return fn_log_f(x)
    else:
        return fn_log_d(x)


cdef inline floating _max(const floating *x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return fn_max_f(x, n)
    else:
        return fn_max_d(x, n)


cdef inline double _sumexp(const floating *x, Py_ssize_t n, floating mx) noexcept nogil:
    if floating is float:
        return fn_sumexp_f(x, n, mx)
    else:
        return fn_sumexp_d(x, n, mx)


cdef inline double _wsumdev(const floating *w, const floating *x, Py_ssize_t n, floating mx) noexcept nogil:
    """sum_j w_j (mx - x_j) (w NULL: weights 1)."""
    if floating is float:
        return fn_wsumdev_f(w, x, n, mx) if w != NULL else fn_sumdev_f(x, n, mx)
    else:
        return fn_wsumdev_d(w, x, n, mx) if w != NULL else fn_sumdev_d(x, n, mx)


cdef inline double _wysumdev(const floating *w, const floating *y, const floating *x, Py_ssize_t n,
                             floating mx) noexcept nogil:
    """sum_j w_j y_j (mx - x_j) (w NULL: weights 1)."""
    if floating is float:
        return fn_wwsumdev_f(w, y, x, n, mx) if w != NULL else fn_wsumdev_f(y, x, n, mx)
    else:
        return fn_wwsumdev_d(w, y, x, n, mx) if w != NULL else fn_wsumdev_d(y, x, n, mx)


cdef inline double _wysum(const floating *w, const floating *y, Py_ssize_t n) noexcept nogil:
    """sum_j w_j y_j (w NULL: weights 1)."""
    if floating is float:
        return fn_wsum_f(w, y, n) if w != NULL else fn_sum_f(y, n)
    else:
        return fn_wsum_d(w, y, n) if w != NULL else fn_sum_d(y, n)


cdef inline const floating *_ptr1(const floating[::1] a) noexcept nogil:
    return &a[0] if a.shape[0] > 0 else NULL


# ------------------------------------------------------------------------------------ cross-entropy rows
cdef inline void _ce_grad_row(const floating *x, Py_ssize_t v, Py_ssize_t t, const floating *y,
                              const floating *w, double eps, double wsum, double c, floating mx,
                              floating off, double sy, floating *g) noexcept nogil:
    """g = c * dloss_row/dx with p_j = exp((x_j - mx) - off); may write over x (each x_j is read before g_j is
    written, and the target's correction only touches g_t)."""
    cdef Py_ssize_t j
    cdef double wt
    cdef floating ca, cb, c1, c0
    if y == NULL:
        wt = w[t] if w != NULL else 1.0
        # dloss/dx_j = p_j ((1 - eps) w_t + eps W / V) - (1 - eps) w_t [j == t] - eps / V w_j
        ca = <floating>(c * ((1.0 - eps) * wt + eps * wsum / v))
        cb = <floating>(c * eps / v)
        if w != NULL:
            for j in range(v):
                g[j] = ca * _exp((x[j] - mx) - off) - cb * w[j]
        else:
            for j in range(v):
                g[j] = ca * _exp((x[j] - mx) - off) - cb
        g[t] = g[t] - <floating>(c * (1.0 - eps) * wt)
    else:
        # dloss/dx_j = p_j sum_k w_k y'_k - w_j y'_j,  y' = (1 - eps) y + eps / V
        ca = <floating>(c * ((1.0 - eps) * sy + eps * wsum / v))
        c1 = <floating>(c * (1.0 - eps))
        c0 = <floating>(c * eps / v)
        if w != NULL:
            for j in range(v):
                g[j] = ca * _exp((x[j] - mx) - off) - w[j] * (c1 * y[j] + c0)
        else:
            for j in range(v):
                g[j] = ca * _exp((x[j] - mx) - off) - (c1 * y[j] + c0)


cdef inline void _ce_fwd_row(const floating *x, Py_ssize_t v, Py_ssize_t t, const floating *y,
                             const floating *w, double eps, double wsum, double c, floating *g,
                             double *loss, double *lse) noexcept nogil:
    """Row loss and log-sum-exp; with g != NULL also g = c * dloss/dx (t < 0: an ignored row)."""
    cdef floating mx = _max(x, v)
    cdef double log_s, wt, sy = 0.0, b
    cdef Py_ssize_t j
    if not isfinite(mx):
        mx = 0  # all -inf, or +inf/NaN present: let them propagate through the sum as the reference does
    log_s = log(_sumexp(x, v, mx))
    lse[0] = mx + log_s
    if y == NULL:
        if t < 0:
            loss[0] = 0.0
            if g != NULL:
                for j in range(v):
                    g[j] = 0
            return
        wt = w[t] if w != NULL else 1.0
        # loss = (1 - eps) w_t (lse - x_t) + eps / V sum_j w_j (lse - x_j), with lse - x = (mx - x) + log_s
        loss[0] = (1.0 - eps) * wt * ((<double>mx - <double>x[t]) + log_s)
        if eps != 0.0:
            loss[0] += eps / v * (_wsumdev(w, x, v, mx) + wsum * log_s)
    else:
        sy = _wysum(w, y, v)
        b = (1.0 - eps) * (_wysumdev(w, y, x, v, mx) + sy * log_s)
        if eps != 0.0:
            b += eps / v * (_wsumdev(w, x, v, mx) + wsum * log_s)
        loss[0] = b
    if g != NULL:
        _ce_grad_row(x, v, t, y, w, eps, wsum, c, mx, <floating>log_s, sy, g)


cdef inline Py_ssize_t _ce_target(const int64_t[::1] target, bint probs, Py_ssize_t i,
                                  int64_t ignore_index) noexcept nogil:
    """The row's class index, -1 for probability targets and ignored rows."""
    if probs or target[i] == ignore_index:
        return -1
    return target[i]


cdef inline double _gscale(const double[::1] gscale, Py_ssize_t i, bint want) noexcept nogil:
    if not want:
        return 0.0
    return gscale[0] if gscale.shape[0] == 1 else gscale[i]


def _ce_fwd_full(const floating[:, ::1] logits,       # IN  (M, V)
                 const int64_t[::1] target,           # IN  (M,) class indices, or length 0
                 const floating[:, ::1] target_prob,  # IN  (M, V) probabilities, or (0, 0)
                 const floating[::1] weight,          # IN  (V,) or length 0
                 const double[::1] gscale,            # IN  (M,), (1,) broadcast, or length 0
                 floating[:, ::1] grad,               # OUT (M, V) or (0, 0); may be logits
                 double[::1] loss,                    # OUT (M,) row losses (0 if ignored)
                 double[::1] lse,                     # OUT (M,) log-sum-exp
                 int64_t ignore_index, double label_smoothing, double weight_sum, int n_threads):
    cdef Py_ssize_t m = logits.shape[0], v = logits.shape[1], i
    cdef const floating *w = _ptr1(weight)
    cdef bint probs = target_prob.shape[0] > 0, want_g = grad.shape[0] > 0
    if m == 0:
        return
    with nogil:
        for i in prange(m, schedule="static", num_threads=max(n_threads, 1)):
            _ce_fwd_row(&logits[i, 0], v, _ce_target(target, probs, i, ignore_index),
                        &target_prob[i, 0] if probs else NULL, w, label_smoothing, weight_sum,
                        _gscale(gscale, i, want_g), &grad[i, 0] if want_g else NULL, &loss[i], &lse[i])


cdef inline void _ce_bwd_row(const floating *x, Py_ssize_t v, Py_ssize_t t, const floating *y, const floating *w,
                             double lse, double eps, double wsum, double c, floating *g) noexcept nogil:
    """g = c * dloss_row/dx from the saved log-sum-exp (t < 0 with y NULL: an ignored row, g = 0)."""
    cdef Py_ssize_t j
    # lse = mx + off with mx in the input dtype: x_j - mx is exact near the row maximum
    cdef floating mx = <floating>lse
    cdef floating off
    if not isfinite(mx):
        mx = 0
    off = <floating>(lse - <double>mx)
    if y == NULL and t < 0:
        for j in range(v):
            g[j] = 0
        return
    _ce_grad_row(x, v, t, y, w, eps, wsum, c, mx, off, _wysum(w, y, v) if y != NULL else 0.0, g)


def _ce_bwd_full(const floating[:, ::1] logits,       # IN  (M, V)
                 const int64_t[::1] target,           # IN  (M,) or length 0
                 const floating[:, ::1] target_prob,  # IN  (M, V) or (0, 0)
                 const floating[::1] weight,          # IN  (V,) or length 0
                 const double[::1] lse,               # IN  (M,) from the forward
                 const double[::1] gscale,            # IN  (M,) or (1,) broadcast
                 floating[:, ::1] grad,               # OUT (M, V)
                 int64_t ignore_index, double label_smoothing, double weight_sum, int n_threads):
    cdef Py_ssize_t m = logits.shape[0], v = logits.shape[1], i
    cdef const floating *w = _ptr1(weight)
    cdef bint probs = target_prob.shape[0] > 0
    if m == 0:
        return
    with nogil:
        for i in prange(m, schedule="static", num_threads=max(n_threads, 1)):
            _ce_bwd_row(&logits[i, 0], v, _ce_target(target, probs, i, ignore_index),
                        &target_prob[i, 0] if probs else NULL, w, lse[i], label_smoothing, weight_sum,
                        _gscale(gscale, i, True), &grad[i, 0])


cdef float[:, ::1] _thread_rows(int n_threads, Py_ssize_t width):
    """A float32 row of ``width`` per thread: the 16-bit kernels widen their rows there (no row: no work)."""
    return np.empty((max(n_threads, 1), width), np.float32)


def _ce_half(bint bwd, const uint16_t[:, ::1] logits, const int64_t[::1] target,
             const uint16_t[:, ::1] target_prob, const float[::1] weight, const double[::1] gscale,
             const double[::1] lse_in, uint16_t[:, ::1] grad, double[::1] loss, double[::1] lse, int fmt,
             int64_t ignore_index, double label_smoothing, double weight_sum, int n_threads):
    """``_ce_fwd_full`` (``bwd`` False) or ``_ce_bwd_full`` (from ``lse_in``) on 16-bit rows: each row widened
    into a thread's float32 row, the float32 row code run on it (the gradient written over that row), the
    gradient rounded once into ``grad``."""
    cdef Py_ssize_t m = logits.shape[0], v = logits.shape[1], i
    cdef const float *w = _ptr1(weight)
    cdef bint probs = target_prob.shape[0] > 0, want_g = grad.shape[0] > 0
    cdef float[:, ::1] buf = _thread_rows(n_threads, (2 if probs else 1) * v)
    cdef float *xb
    with nogil:
        for i in prange(m, schedule="static", num_threads=max(n_threads, 1)):
            xb = &buf[threadid(), 0]
            fn_half_load(fmt, &logits[i, 0], xb, v)
            if probs:
                fn_half_load(fmt, &target_prob[i, 0], xb + v, v)
            if bwd:
                _ce_bwd_row(xb, v, _ce_target(target, probs, i, ignore_index), xb + v if probs else NULL, w,
                            lse_in[i], label_smoothing, weight_sum, _gscale(gscale, i, True), xb)
            else:
                _ce_fwd_row(xb, v, _ce_target(target, probs, i, ignore_index), xb + v if probs else NULL, w,
                            label_smoothing, weight_sum, _gscale(gscale, i, want_g), xb if want_g else NULL,
                            &loss[i], &lse[i])
            if want_g:
                fn_half_store(fmt, xb, &grad[i, 0], v)


# ------------------------------------------------------------------------------------------------ entropy
cdef inline double _entropy_row(const floating *p, Py_ssize_t v, double s) noexcept nogil:
    """Natural-log entropy of p / s, s = sum(p) (scipy.stats.entropy)."""
    if floating is float:
        return fn_entr_sum_f(p, v, <float>(1.0 / s))
    else:
        return fn_entr_sum_d(p, v, 1.0 / s)


cdef inline double _rowsum(const floating *p, Py_ssize_t v) noexcept nogil:
    if floating is float:
        return fn_sum_f(p, v)
    else:
        return fn_sum_d(p, v)


cdef inline void _entropy_bwd_row(const floating *p, Py_ssize_t v, double dh, double inv_log_base,
                                  floating *dp) noexcept nogil:
    """dp_j = -dh (log(p_j / S) + H) / (S log(base)), S = sum(p), H the natural-log entropy."""
    cdef Py_ssize_t j
    cdef double s = _rowsum(p, v)
    cdef double hn = _entropy_row(p, v, s)
    cdef floating inv = <floating>(1.0 / s)
    cdef floating c = <floating>(-dh * inv_log_base / s)
    cdef floating hf = <floating>hn
    for j in range(v):
        dp[j] = c * (_log(p[j] * inv) + hf)


def _entropy_fwd_full(const floating[:, ::1] p, floating[::1] h, double inv_log_base, int n_threads):
    cdef Py_ssize_t m = p.shape[0], v = p.shape[1], i
    with nogil:
        for i in prange(m, schedule="static", num_threads=max(n_threads, 1)):
            h[i] = <floating>(_entropy_row(&p[i, 0], v, _rowsum(&p[i, 0], v)) * inv_log_base)


def _entropy_bwd_full(const floating[::1] dh, const floating[:, ::1] p, floating[:, ::1] dp, double inv_log_base,
                      int n_threads):
    cdef Py_ssize_t m = p.shape[0], v = p.shape[1], i
    with nogil:
        for i in prange(m, schedule="static", num_threads=max(n_threads, 1)):
            _entropy_bwd_row(&p[i, 0], v, dh[i], inv_log_base, &dp[i, 0])


def _entropy_half(const uint16_t[::1] dh, const uint16_t[:, ::1] p, uint16_t[::1] h, uint16_t[:, ::1] dp,
                  int fmt, double inv_log_base, int n_threads):
    """Forward (``h`` given) or backward (``dh``, ``dp`` given) on 16-bit rows widened to float32."""
    cdef Py_ssize_t m = p.shape[0], v = p.shape[1], i
    cdef bint bwd = dp.shape[0] > 0
    cdef float[:, ::1] buf = _thread_rows(n_threads, v)
    cdef float *pb
    cdef float hv
    with nogil:
        for i in prange(m, schedule="static", num_threads=max(n_threads, 1)):
            pb = &buf[threadid(), 0]
            fn_half_load(fmt, &p[i, 0], pb, v)
            if bwd:
                _entropy_bwd_row(pb, v, fn_half_to_f32(fmt, dh[i]), inv_log_base, pb)
                fn_half_store(fmt, pb, &dp[i, 0], v)
            else:
                hv = <float>(_entropy_row(pb, v, _rowsum(pb, v)) * inv_log_base)
                h[i] = fn_f32_to_half(fmt, hv)


# ------------------------------------------------------------------------------------------------ KL / JS
cdef inline void _kl_grad_row(const floating *x, const floating *t, const floating *dl, Py_ssize_t v, bint lt,
                              floating c, floating *dx, floating *dt) noexcept nogil:
    """dx = -c dl t (or -c dl exp(t)), dt = c dl (log t + 1 - x) (or c dl exp(t) (t - x + 1)); dl NULL: 1."""
    cdef Py_ssize_t j
    if dx != NULL:
        if lt:
            for j in range(v):
                dx[j] = -c * _exp(t[j])
        else:
            for j in range(v):
                dx[j] = -c * t[j]
        if dl != NULL:
            for j in range(v):
                dx[j] = dx[j] * dl[j]
    if dt != NULL:
        if lt:
            for j in range(v):
                dt[j] = c * (_exp(t[j]) * (t[j] - x[j] + 1))
        else:
            for j in range(v):
                dt[j] = c * (_log(t[j]) + 1 - x[j])
        if dl != NULL:
            for j in range(v):
                dt[j] = dt[j] * dl[j]


cdef inline int _js_mode(double beta) noexcept nogil:
    return 0 if beta == 0.0 else (1 if beta == 1.0 else 2)


cdef inline void _zero_row(floating *a, Py_ssize_t v) noexcept nogil:
    cdef Py_ssize_t j
    if a != NULL:
        for j in range(v):
            a[j] = 0


cdef inline void _div_row(int which, bint bwd, const floating *dl, const floating *x, const floating *y, bint kept,
                          Py_ssize_t v, bint lt, floating b, int mode, floating c, double *loss, floating *elem,
                          floating *dx, floating *dy) noexcept nogil:
    """One row of KL (which 0) or JS (which 1): forward (row loss; elementwise loss, gradients when their
    pointers are not NULL) or backward (gradients times dl, dl NULL: 1). An ignored row (not kept) is 0."""
    cdef Py_ssize_t j
    if not kept:
        if not bwd:
            loss[0] = 0.0
        _zero_row(elem, v)
        _zero_row(dx, v)
        _zero_row(dy, v)
        return
    if which == 1 and not bwd and mode == 2 and dx != NULL and dy == NULL and elem == NULL:
        # the common training case: loss and dinput from one evaluation per element
        if floating is float:
            loss[0] = fn_js_fused_f(x, y, v, b, c, dx)
        else:
            loss[0] = fn_js_fused_d(x, y, v, b, c, dx)
        return
    if not bwd:
        if floating is float:
            loss[0] = fn_kl_sum_f(x, y, v, lt) if which == 0 else fn_js_sum_f(x, y, v, b, mode)
        else:
            loss[0] = fn_kl_sum_d(x, y, v, lt) if which == 0 else fn_js_sum_d(x, y, v, b, mode)
        if elem != NULL:
            for j in range(v):
                if floating is float:
                    elem[j] = fn_kl_elem_f(x[j], y[j], lt) if which == 0 else fn_jsm_elem_f(x[j], y[j], b, mode)
                else:
                    elem[j] = fn_kl_elem_d(x[j], y[j], lt) if which == 0 else fn_jsm_elem_d(x[j], y[j], b, mode)
    if dx == NULL and dy == NULL:
        return
    if which == 0:
        _kl_grad_row(x, y, dl, v, lt, c, dx, dy)
    elif floating is float:
        fn_js_grad_row_f(x, y, dl, v, b, mode, c, dx, dy)
    else:
        fn_js_grad_row_d(x, y, dl, v, b, mode, c, dx, dy)


cdef inline floating *_row_or_null(floating[:, ::1] a, Py_ssize_t i) noexcept nogil:
    return &a[i, 0] if a.shape[0] > 0 else NULL


def _div_full(int which, bint bwd,
              const floating[:, ::1] dloss,    # IN  (M, V) elementwise dloss (backward), or (0, 0): all ones
              const floating[:, ::1] input,    # IN  (M, V) log q
              const floating[:, ::1] target,   # IN  (M, V) p (or log p; JS: log P)
              const uint8_t[::1] keep,         # IN  (M,) 0 = ignored row, or length 0 (all kept)
              double[::1] loss,                # OUT (M,) row sums (forward)
              floating[:, ::1] elem,           # OUT (M, V) elementwise loss, or (0, 0)
              floating[:, ::1] dinput,         # OUT (M, V) scale * dsum/dinput, or (0, 0)
              floating[:, ::1] dtarget,        # OUT (M, V) scale * dsum/dtarget, or (0, 0)
              bint log_target, double beta, double scale, int n_threads):
    cdef Py_ssize_t m = input.shape[0], v = input.shape[1], i
    cdef bint all_kept = keep.shape[0] == 0, has_dl = dloss.shape[0] > 0
    cdef int mode = _js_mode(beta)
    cdef floating b = <floating>beta, c = <floating>scale
    with nogil:
        for i in prange(m, schedule="static", num_threads=max(n_threads, 1)):
            _div_row(which, bwd, &dloss[i, 0] if has_dl else NULL, &input[i, 0], &target[i, 0],
                     all_kept or keep[i] != 0, v, log_target, b, mode, c, &loss[i] if not bwd else NULL,
                     _row_or_null(elem, i), _row_or_null(dinput, i), _row_or_null(dtarget, i))


def _div_half(int which, bint bwd, const uint16_t[:, ::1] dloss, const uint16_t[:, ::1] input,
              const uint16_t[:, ::1] target, const uint8_t[::1] keep, double[::1] loss, uint16_t[:, ::1] elem,
              uint16_t[:, ::1] dinput, uint16_t[:, ::1] dtarget, int fmt, bint log_target, double beta,
              double scale, int n_threads):
    """``_div_full`` on 16-bit rows: inputs widened into a thread's float32 rows, the float32 row code run,
    each output row rounded once."""
    cdef Py_ssize_t m = input.shape[0], v = input.shape[1], i
    cdef bint all_kept = keep.shape[0] == 0, has_dl = dloss.shape[0] > 0
    cdef bint want_e = elem.shape[0] > 0, want_dx = dinput.shape[0] > 0, want_dt = dtarget.shape[0] > 0
    cdef int mode = _js_mode(beta)
    cdef float b = <float>beta, c = <float>scale
    cdef float[:, ::1] buf = _thread_rows(n_threads, 6 * v)
    cdef float *xb
    with nogil:
        for i in prange(m, schedule="static", num_threads=max(n_threads, 1)):
            xb = &buf[threadid(), 0]
            fn_half_load(fmt, &input[i, 0], xb, v)
            fn_half_load(fmt, &target[i, 0], xb + v, v)
            if has_dl:
                fn_half_load(fmt, &dloss[i, 0], xb + 2 * v, v)
            _div_row(which, bwd, xb + 2 * v if has_dl else NULL, xb, xb + v, all_kept or keep[i] != 0, v, log_target,
                     b, mode, c, &loss[i] if not bwd else NULL, xb + 3 * v if want_e else NULL,
                     xb + 4 * v if want_dx else NULL, xb + 5 * v if want_dt else NULL)
            if want_e:
                fn_half_store(fmt, xb + 3 * v, &elem[i, 0], v)
            if want_dx:
                fn_half_store(fmt, xb + 4 * v, &dinput[i, 0], v)
            if want_dt:
                fn_half_store(fmt, xb + 5 * v, &dtarget[i, 0], v)


# ------------------------------------------------------------------------------------------ entry points
# Every kernel takes its arrays in their real dtypes; 16-bit data (ml_dtypes.bfloat16, float16) goes on to the
# ``_*_half`` kernels as uint16 views with its format code; parameters of 16-bit inputs arrive in float32.
_HALF_FORMAT = {np.dtype(k): v for k, v in HALF_FORMAT.items()}
_NO_KEEP = np.empty(0, np.uint8)
_NO_LOSS = np.empty(0, np.float64)


cdef inline int _fmt(a) except -2:
    """The 16-bit format code of an array's dtype, -1 for float32/float64."""
    return _HALF_FORMAT.get(a.dtype, -1)


cdef inline object _bits(a):
    return a.view(np.uint16)


cdef inline object _none2(a):
    """An absent (0, 0) row array of a's dtype (a fresh, writeable one)."""
    return np.empty((0, 0), a.dtype)


def softmax_cross_entropy_forward(logits, target, target_prob, weight, gscale, grad, loss, lse,
                                  int64_t ignore_index, double label_smoothing, double weight_sum, int n_threads):
    """Row losses (unreduced, weighted) and log-sum-exp of logits (M, V); with ``grad`` (M, V) (may be
    logits) also the gradient of sum_i gscale_i * loss_i written in the same pass. target (M,) class indices
    or length 0, target_prob (M, V) or (0, 0), weight (V,) or length 0 (float32 for 16-bit logits), gscale
    (M,), (1,) broadcast or length 0; loss, lse (M,) float64. Targets must be in range or ``ignore_index``."""
    cdef int fmt = _fmt(logits)
    if fmt < 0:
        _ce_fwd_full(logits, target, target_prob, weight, gscale, grad, loss, lse, ignore_index, label_smoothing,
                     weight_sum, n_threads)
    else:
        _ce_half(False, _bits(logits), target, _bits(target_prob), weight, gscale, _NO_LOSS, _bits(grad), loss, lse,
                 fmt, ignore_index, label_smoothing, weight_sum, n_threads)


def softmax_cross_entropy_backward(logits, target, target_prob, weight, lse, gscale, grad,
                                   int64_t ignore_index, double label_smoothing, double weight_sum, int n_threads):
    """grad_i = gscale_i * dloss_i/dlogits_i (M, V) from the forward's log-sum-exp (one read of the row)."""
    cdef int fmt = _fmt(logits)
    if fmt < 0:
        _ce_bwd_full(logits, target, target_prob, weight, lse, gscale, grad, ignore_index, label_smoothing,
                     weight_sum, n_threads)
    else:
        _ce_half(True, _bits(logits), target, _bits(target_prob), weight, gscale, lse, _bits(grad), _NO_LOSS,
                 _NO_LOSS, fmt, ignore_index, label_smoothing, weight_sum, n_threads)


def entropy_forward(p, h, double inv_log_base, int n_threads):
    """h (M,) = entropy of each row of p (M, V) / log(base)."""
    cdef int fmt = _fmt(p)
    if fmt < 0:
        _entropy_fwd_full(p, h, inv_log_base, n_threads)
    else:
        _entropy_half(np.empty(0, np.uint16), _bits(p), _bits(h), np.empty((0, 0), np.uint16), fmt, inv_log_base,
                      n_threads)


def entropy_backward(dh, p, dp, double inv_log_base, int n_threads):
    """dp (M, V) = dh_i * d entropy_i / dp (dh (M,))."""
    cdef int fmt = _fmt(p)
    if fmt < 0:
        _entropy_bwd_full(dh, p, dp, inv_log_base, n_threads)
    else:
        _entropy_half(_bits(dh), _bits(p), np.empty(0, np.uint16), _bits(dp), fmt, inv_log_base, n_threads)


def _div(int which, bint bwd, dloss, input, target, keep, loss, elem, dinput, dtarget, bint log_target,
         double beta, double scale, int n_threads):
    cdef int fmt = _fmt(input)
    if fmt < 0:
        _div_full(which, bwd, dloss, input, target, keep, loss, elem, dinput, dtarget, log_target, beta, scale,
                  n_threads)
    else:
        _div_half(which, bwd, _bits(dloss), _bits(input), _bits(target), keep, loss, _bits(elem), _bits(dinput),
                  _bits(dtarget), fmt, log_target, beta, scale, n_threads)


def kl_div_forward(input, target, loss, elem, dinput, dtarget, bint log_target, double gscale, int n_threads):
    """IN input (log q), target (M, V); OUT loss (M,) float64 row sums, elem / dinput / dtarget (M, V) or (0, 0)
    (the gradients of gscale * sum(loss))."""
    _div(0, False, _none2(input), input, target, _NO_KEEP, loss, elem, dinput, dtarget, log_target, 0.0, gscale,
         n_threads)


def kl_div_backward(dloss, input, target, dinput, dtarget, bint log_target, double scale, int n_threads):
    """IN dloss (M, V) or (0, 0) (all ones), input, target; OUT dinput, dtarget (M, V) or (0, 0)."""
    _div(0, True, dloss, input, target, _NO_KEEP, _NO_LOSS, _none2(input), dinput, dtarget, log_target, 0.0, scale,
         n_threads)


def js_div_forward(input, target, keep, loss, elem, dinput, dtarget, double beta, double gscale, int n_threads):
    """IN input (log Q), target (log P) (M, V), keep (M,) uint8 or length 0; OUT as ``kl_div_forward``."""
    _div(1, False, _none2(input), input, target, keep, loss, elem, dinput, dtarget, False, beta, gscale, n_threads)


def js_div_backward(dloss, input, target, keep, dinput, dtarget, double beta, double scale, int n_threads):
    """IN dloss (M, V) or (0, 0), input, target, keep; OUT dinput, dtarget (M, V) or (0, 0)."""
    _div(1, True, dloss, input, target, keep, _NO_LOSS, _none2(input), dinput, dtarget, False, beta, scale,
         n_threads)
