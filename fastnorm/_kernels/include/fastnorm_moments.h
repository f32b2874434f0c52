/* Row reductions the compiler needs help with.
 *
 * gcc vectorizes `s += x[i]` (with -fassociative-math) but keeps one vector accumulator, running at the
 * latency of a vector add, and it does not vectorize a loop that converts float to double into several
 * sums. So every reduction here is blocked: FN_LANES independent accumulators in the input type (all-SIMD,
 * pipelined) over a block of FN_BLOCK elements, each lane summing only FN_BLOCK / FN_LANES terms, and the
 * block's lanes folded into a double. The error stays that of a short float sum per block plus a double
 * sum over blocks; the order is fixed, so results do not depend on the thread count. Two-pass moments
 * (mean first, then squared deviations) stay accurate when the mean is large against the spread; the
 * mean itself is summed around a shift (the row's first value), so a constant row has exactly its value
 * as mean and exactly 0 as variance.
 * Each function is one loop carrying one sum (gcc vectorizes those), except fn_bwd_sums, whose two float
 * sums gcc also vectorizes (one pass over the row instead of two).
 */
#ifndef FASTNORM_MOMENTS_H
#define FASTNORM_MOMENTS_H
#include <stddef.h>

#define FN_LANES 32
#define FN_BLOCK 512

/* Sum of TERM(i) for i in [0, n), TERM an expression of i in type T. */
#define FN_BLOCKED_SUM(T, n, TERM)                                                                     \
    double total = 0.0;                                                                                \
    ptrdiff_t i0 = 0;                                                                                  \
    for (; i0 + FN_BLOCK <= (n); i0 += FN_BLOCK) {                                                     \
        T acc[FN_LANES] = {0};                                                                         \
        for (ptrdiff_t j = 0; j < FN_BLOCK; j += FN_LANES)                                             \
            for (int k = 0; k < FN_LANES; k++) { ptrdiff_t i = i0 + j + k; acc[k] += (TERM); }         \
        double b = 0.0;                                                                                \
        for (int k = 0; k < FN_LANES; k++) b += (double)acc[k];                                        \
        total += b;                                                                                    \
    }                                                                                                  \
    {                                                                                                  \
        T acc[FN_LANES] = {0};                                                                         \
        ptrdiff_t j = i0;                                                                              \
        for (; j + FN_LANES <= (n); j += FN_LANES)                                                     \
            for (int k = 0; k < FN_LANES; k++) { ptrdiff_t i = j + k; acc[k] += (TERM); }              \
        for (; j < (n); j++) { ptrdiff_t i = j; acc[0] += (TERM); }                                    \
        double b = 0.0;                                                                                \
        for (int k = 0; k < FN_LANES; k++) b += (double)acc[k];                                        \
        total += b;                                                                                    \
    }                                                                                                  \
    return total;

#define FN_DEFINE_REDUCTIONS(T, SUF)                                                                   \
/* sum(x) */                                                                                           \
static inline double fn_sum_##SUF(const T *x, ptrdiff_t n) { FN_BLOCKED_SUM(T, n, x[i]) }              \
/* sum(x - mu) */                                                                                     \
static inline double fn_sum_dev_##SUF(const T *x, ptrdiff_t n, T mu) { FN_BLOCKED_SUM(T, n, x[i] - mu) } \
/* sum((x - mu)^2) */                                                                                  \
static inline double fn_sumsq_dev_##SUF(const T *x, ptrdiff_t n, T mu) {                               \
    FN_BLOCKED_SUM(T, n, (x[i] - mu) * (x[i] - mu)) }                                                  \
/* sum(x^2) */                                                                                         \
static inline double fn_sumsq_##SUF(const T *x, ptrdiff_t n) { FN_BLOCKED_SUM(T, n, x[i] * x[i]) }     \
/* sum(a * b) */                                                                                       \
static inline double fn_dot_##SUF(const T *a, const T *b, ptrdiff_t n) { FN_BLOCKED_SUM(T, n, a[i] * b[i]) } \
/* s1 = sum(g), s2 = sum(g * (x - mu)) with g = dy * w (w may be NULL: g = dy), in one pass: the two sums \
 * in FN_LANES lanes each, blocks of FN_BLOCK as in FN_BLOCKED_SUM (gcc vectorizes this two-sum loop). */ \
static inline void fn_bwd_sums_##SUF(const T *dy, const T *w, const T *x, T mu, ptrdiff_t n,          \
                                     double *s1, double *s2) {                                         \
    double t1 = 0.0, t2 = 0.0;                                                                         \
    for (ptrdiff_t i0 = 0; i0 < n; i0 += FN_BLOCK) {                                                   \
        ptrdiff_t m = n - i0 < FN_BLOCK ? n - i0 : FN_BLOCK, j = 0;                                    \
        T a[FN_LANES] = {0}, b[FN_LANES] = {0};                                                        \
        double u = 0.0, v = 0.0;                                                                       \
        if (w) {                                                                                       \
            for (; j + FN_LANES <= m; j += FN_LANES)                                                   \
                for (int k = 0; k < FN_LANES; k++) {                                                   \
                    ptrdiff_t i = i0 + j + k; T g = dy[i] * w[i]; a[k] += g; b[k] += g * (x[i] - mu); } \
            for (; j < m; j++) { ptrdiff_t i = i0 + j; T g = dy[i] * w[i]; a[0] += g; b[0] += g * (x[i] - mu); } \
        } else {                                                                                       \
            for (; j + FN_LANES <= m; j += FN_LANES)                                                   \
                for (int k = 0; k < FN_LANES; k++) {                                                   \
                    ptrdiff_t i = i0 + j + k; a[k] += dy[i]; b[k] += dy[i] * (x[i] - mu); }             \
            for (; j < m; j++) { ptrdiff_t i = i0 + j; a[0] += dy[i]; b[0] += dy[i] * (x[i] - mu); }   \
        }                                                                                              \
        for (int k = 0; k < FN_LANES; k++) { u += (double)a[k]; v += (double)b[k]; }                   \
        t1 += u; t2 += v;                                                                              \
    }                                                                                                  \
    *s1 = t1; *s2 = t2;                                                                                \
}

FN_DEFINE_REDUCTIONS(float, f)
FN_DEFINE_REDUCTIONS(double, d)

/* sum(x^2) of a float array that neither overflows nor loses the tiny terms: the fast float-lane sum when
 * its result is in [1e-28, 1e38], else a sum of the squares taken in double (|x| above ~1.8e19 overflows a
 * float square; below ~1e-19 the squares are subnormal). NaN stays NaN either way. */
static inline double fn_sumsq_wide_f(const float *x, ptrdiff_t n) {
    FN_BLOCKED_SUM(double, n, (double)x[i] * (double)x[i])
}
static inline double fn_sumsq_safe_f(const float *x, ptrdiff_t n) {
    double s = fn_sumsq_f(x, n);
    if (s >= 1e-28 && s <= 1e38) return s;
    return fn_sumsq_wide_f(x, n);
}

#endif
