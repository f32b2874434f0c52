/* Moments and gradient sums for the (N, C, L) channel norms (BatchNorm, InstanceNorm, GroupNorm).
 *
 * Two layouts share these helpers:
 * - a contiguous segment (one (n, c) slice of L values, or one GroupNorm row of C/G * L values):
 *   fn_seg_moments_* gives its mean and M2 = sum((x - mean)^2);
 * - a block of rows of an (M, C) row-major array (channels-last BatchNorm, channels contiguous):
 *   fn_col_moments_* gives per-channel mean and M2 over the rows.
 * Everything is accumulated in double, one read of the data: values are summed around a shift K (the
 * running mean of what came before, or the first value), d = x - K taken in double, s1 = sum(d),
 * s2 = sum(d^2), so the block's M2 = s2 - s1^2 / n loses nothing when the mean is large against the
 * spread. Blocks are combined with Chan's pairwise merge, always in the same order, so the result does
 * not depend on the thread count. (No E[x^2] - E[x]^2 in float32 anywhere.)
 */
#ifndef FASTNORM_CHANNEL_H
#define FASTNORM_CHANNEL_H
#include <stddef.h>
#include "fastnorm_moments.h"

/* values per block of a segment, rows per block of a channels-last chunk */
#define FN_SEG_BLOCK 4096
#define FN_COL_BLOCK 256

/* Merge (nb, mb, m2b) into the running (*na, *ma, *m2a): Chan et al.'s pairwise update. */
static inline void fn_chan_merge(double *na, double *ma, double *m2a, double nb, double mb, double m2b) {
    double n = *na + nb, delta;
    if (nb <= 0.0) return;
    delta = mb - *ma;
    *ma += delta * (nb / n);
    *m2a += m2b + delta * delta * (*na * nb / n);
    *na = n;
}

#define FN_DEFINE_CHANNEL(T, SUF)                                                                      \
/* mean and M2 of the n (>= 1) contiguous values x[0..n) */                                             \
static inline void fn_seg_moments_##SUF(const T *x, ptrdiff_t n, double *mean, double *m2) {           \
    double cnt = 0.0, mu = 0.0, M2 = 0.0;                                                              \
    for (ptrdiff_t b = 0; b < n; b += FN_SEG_BLOCK) {                                                  \
        ptrdiff_t nb = n - b < FN_SEG_BLOCK ? n - b : FN_SEG_BLOCK, i = 0;                             \
        const T *xb = x + b;                                                                           \
        double K = cnt > 0.0 ? mu : (double)xb[0];                                                     \
        double a1[FN_LANES] = {0}, a2[FN_LANES] = {0}, s1, s2, m2b;                                    \
        for (; i + FN_LANES <= nb; i += FN_LANES)                                                      \
            for (int k = 0; k < FN_LANES; k++) {                                                       \
                double d = (double)xb[i + k] - K; a1[k] += d; a2[k] += d * d; }                        \
        for (; i < nb; i++) { double d = (double)xb[i] - K; a1[i % FN_LANES] += d; a2[i % FN_LANES] += d * d; } \
        s1 = fn_fold_lanes(a1); s2 = fn_fold_lanes(a2);                                                \
        m2b = s2 - s1 * (s1 / (double)nb);                                                             \
        fn_chan_merge(&cnt, &mu, &M2, (double)nb, K + s1 / (double)nb, m2b > 0.0 ? m2b : 0.0);         \
    }                                                                                                  \
    *mean = mu; *m2 = M2;                                                                              \
}                                                                                                      \
/* s1[c] += sum_r (x[r, c] - K[c]),  s2[c] += sum_r (x[r, c] - K[c])^2  over the nr rows of (nr, C) x */ \
static inline void fn_col_shifted_sums_##SUF(const T *restrict x, ptrdiff_t nr, ptrdiff_t C,           \
                                              const double *restrict K, double *restrict s1,           \
                                              double *restrict s2) {                                   \
    ptrdiff_t r = 0, c;                                                                                \
    for (; r + 2 <= nr; r += 2) {                                                                      \
        const T *restrict x0 = x + r * C, *restrict x1 = x0 + C;                                       \
        for (c = 0; c < C; c++) {                                                                      \
            double d0 = (double)x0[c] - K[c], d1 = (double)x1[c] - K[c];                               \
            s1[c] += d0 + d1; s2[c] += d0 * d0 + d1 * d1; }                                            \
    }                                                                                                  \
    for (; r < nr; r++) {                                                                              \
        const T *restrict x0 = x + r * C;                                                              \
        for (c = 0; c < C; c++) { double d0 = (double)x0[c] - K[c]; s1[c] += d0; s2[c] += d0 * d0; }  \
    }                                                                                                  \
}                                                                                                      \
/* Per-channel count-weighted mean[c] and M2 m2[c] over the nr rows of the (nr, C) array x.            \
 * K, s1, s2: scratch rows of length C. */                                                             \
static inline void fn_col_moments_##SUF(const T *x, ptrdiff_t nr, ptrdiff_t C, double *mean,           \
                                        double *m2, double *K, double *s1, double *s2) {               \
    double cnt = 0.0;                                                                                  \
    ptrdiff_t c;                                                                                       \
    for (c = 0; c < C; c++) { mean[c] = 0.0; m2[c] = 0.0; }                                           \
    for (ptrdiff_t b = 0; b < nr; b += FN_COL_BLOCK) {                                                 \
        ptrdiff_t nb = nr - b < FN_COL_BLOCK ? nr - b : FN_COL_BLOCK;                                  \
        const T *xb = x + b * C;                                                                       \
        for (c = 0; c < C; c++) { K[c] = cnt > 0.0 ? mean[c] : (double)xb[c]; s1[c] = 0.0; s2[c] = 0.0; } \
        fn_col_shifted_sums_##SUF(xb, nb, C, K, s1, s2);                                               \
        for (c = 0; c < C; c++) {                                                                      \
            double n0 = cnt, m2b = s2[c] - s1[c] * (s1[c] / (double)nb);                               \
            fn_chan_merge(&n0, &mean[c], &m2[c], (double)nb, K[c] + s1[c] / (double)nb, m2b > 0.0 ? m2b : 0.0); \
        }                                                                                              \
        cnt += (double)nb;                                                                             \
    }                                                                                                  \
}                                                                                                      \
/* s1[c] += sum_r dy[r, c],  s2[c] += sum_r dy[r, c] * (x[r, c] - mu[c])  over the nr rows */          \
static inline void fn_col_bwd_sums_##SUF(const T *restrict dy, const T *restrict x, ptrdiff_t nr,      \
                                         ptrdiff_t C, const T *restrict mu, double *restrict s1,       \
                                         double *restrict s2) {                                        \
    ptrdiff_t r = 0, c;                                                                                \
    for (; r + 2 <= nr; r += 2) {                                                                      \
        const T *restrict g0 = dy + r * C, *restrict g1 = g0 + C;                                      \
        const T *restrict x0 = x + r * C, *restrict x1 = x0 + C;                                       \
        for (c = 0; c < C; c++) {                                                                      \
            double a0 = (double)g0[c], a1 = (double)g1[c];                                             \
            s1[c] += a0 + a1;                                                                          \
            s2[c] += a0 * (double)(x0[c] - mu[c]) + a1 * (double)(x1[c] - mu[c]); }                    \
    }                                                                                                  \
    for (; r < nr; r++) {                                                                              \
        const T *restrict g0 = dy + r * C, *restrict x0 = x + r * C;                                   \
        for (c = 0; c < C; c++) {                                                                      \
            double a0 = (double)g0[c]; s1[c] += a0; s2[c] += a0 * (double)(x0[c] - mu[c]); }           \
    }                                                                                                  \
}

FN_DEFINE_CHANNEL(float, f)
FN_DEFINE_CHANNEL(double, d)

#endif
