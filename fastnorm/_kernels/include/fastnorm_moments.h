/* Row reductions the compiler needs help with.
 *
 * gcc vectorizes `s += x[i]` (with -fassociative-math) but keeps ONE vector accumulator, so the loop runs at
 * the latency of a vector add. Summing into FN_LANES independent double lanes gives it several
 * accumulators to pipeline and keeps float32 sums accurate (double accumulation, then a fixed-order
 * tree over the lanes: the result does not depend on the thread count). Two-pass moments (mean first,
 * then squared deviations) stay accurate when the mean is large against the spread.
 */
#ifndef FASTNORM_MOMENTS_H
#define FASTNORM_MOMENTS_H
#include <stddef.h>

#define FN_LANES 16

static inline double fn_fold_lanes(const double *acc) {
    double s = 0.0;
    for (int k = 0; k < FN_LANES; k++) s += acc[k];
    return s;
}

#define FN_DEFINE_REDUCTIONS(T, SUF)                                                                   \
/* sum(x) */                                                                                           \
static inline double fn_sum_##SUF(const T *x, ptrdiff_t n) {                                           \
    double acc[FN_LANES] = {0};                                                                        \
    ptrdiff_t i = 0;                                                                                   \
    for (; i + FN_LANES <= n; i += FN_LANES)                                                           \
        for (int k = 0; k < FN_LANES; k++) acc[k] += (double)x[i + k];                                 \
    for (; i < n; i++) acc[i % FN_LANES] += (double)x[i];                                              \
    return fn_fold_lanes(acc);                                                                         \
}                                                                                                      \
/* sum((x - mu)^2), the deviation taken in T (exact for x near mu), squared and summed in double */    \
static inline double fn_sumsq_dev_##SUF(const T *x, ptrdiff_t n, T mu) {                               \
    double acc[FN_LANES] = {0};                                                                        \
    ptrdiff_t i = 0;                                                                                   \
    for (; i + FN_LANES <= n; i += FN_LANES)                                                           \
        for (int k = 0; k < FN_LANES; k++) { double d = (double)(x[i + k] - mu); acc[k] += d * d; }   \
    for (; i < n; i++) { double d = (double)(x[i] - mu); acc[i % FN_LANES] += d * d; }                 \
    return fn_fold_lanes(acc);                                                                         \
}                                                                                                      \
/* sum(x^2) */                                                                                         \
static inline double fn_sumsq_##SUF(const T *x, ptrdiff_t n) {                                         \
    double acc[FN_LANES] = {0};                                                                        \
    ptrdiff_t i = 0;                                                                                   \
    for (; i + FN_LANES <= n; i += FN_LANES)                                                           \
        for (int k = 0; k < FN_LANES; k++) { double v = (double)x[i + k]; acc[k] += v * v; }           \
    for (; i < n; i++) { double v = (double)x[i]; acc[i % FN_LANES] += v * v; }                        \
    return fn_fold_lanes(acc);                                                                         \
}                                                                                                      \
/* sum(a * b) */                                                                                       \
static inline double fn_dot_##SUF(const T *a, const T *b, ptrdiff_t n) {                               \
    double acc[FN_LANES] = {0};                                                                        \
    ptrdiff_t i = 0;                                                                                   \
    for (; i + FN_LANES <= n; i += FN_LANES)                                                           \
        for (int k = 0; k < FN_LANES; k++) acc[k] += (double)a[i + k] * (double)b[i + k];              \
    for (; i < n; i++) acc[i % FN_LANES] += (double)a[i] * (double)b[i];                               \
    return fn_fold_lanes(acc);                                                                         \
}                                                                                                      \
/* s1 = sum(g), s2 = sum(g * (x - mu)) with g = dy * w (w may be NULL: g = dy) */                      \
static inline void fn_bwd_sums_##SUF(const T *dy, const T *w, const T *x, T mu, ptrdiff_t n,          \
                                     double *s1, double *s2) {                                         \
    double a1[FN_LANES] = {0}, a2[FN_LANES] = {0};                                                     \
    ptrdiff_t i = 0;                                                                                   \
    if (w) {                                                                                           \
        for (; i + FN_LANES <= n; i += FN_LANES)                                                       \
            for (int k = 0; k < FN_LANES; k++) {                                                       \
                double g = (double)(dy[i + k] * w[i + k]);                                             \
                a1[k] += g; a2[k] += g * (double)(x[i + k] - mu); }                                    \
        for (; i < n; i++) { double g = (double)(dy[i] * w[i]);                                        \
            a1[i % FN_LANES] += g; a2[i % FN_LANES] += g * (double)(x[i] - mu); }                      \
    } else {                                                                                           \
        for (; i + FN_LANES <= n; i += FN_LANES)                                                       \
            for (int k = 0; k < FN_LANES; k++) {                                                       \
                double g = (double)dy[i + k];                                                          \
                a1[k] += g; a2[k] += g * (double)(x[i + k] - mu); }                                    \
        for (; i < n; i++) { double g = (double)dy[i];                                                 \
            a1[i % FN_LANES] += g; a2[i % FN_LANES] += g * (double)(x[i] - mu); }                      \
    }                                                                                                  \
    *s1 = fn_fold_lanes(a1); *s2 = fn_fold_lanes(a2);                                                  \
}

FN_DEFINE_REDUCTIONS(float, f)
FN_DEFINE_REDUCTIONS(double, d)

#endif
