/* Moments and gradient sums for the (N, C, L) channel norms (BatchNorm, InstanceNorm, GroupNorm).
 *
 * Two layouts share these helpers:
 * - a contiguous segment (one (n, c) slice of L values, or one GroupNorm row of C/G * L values):
 *   fn_seg_moments_* gives its mean and M2 = sum((x - mean)^2);
 * - a block of rows of an (M, C) row-major array (channels-last BatchNorm, channels contiguous):
 *   fn_col_moments_* gives per-channel mean and M2 over the rows.
 * Everything is accumulated in double, one read of the data: values are summed around a shift K (the
 * running mean of the blocks before, or the block's first value), d = x - K taken in double, s1 = sum(d),
 * s2 = sum(d^2), so a block's M2 = s2 - s1^2 / n loses nothing when the mean is large against the spread.
 * Blocks are combined with Chan's pairwise merge, always in the same order, so the result does not
 * depend on the thread count. (No E[x^2] - E[x]^2 in float32 anywhere.)
 *
 * The inner loops are written on a small vector abstraction (fn_vd: 8 doubles with AVX-512, 4 with AVX, 2
 * with SSE2, a plain double otherwise) because gcc turns the plain lane-array loops for these float -> double
 * reductions into shuffles and stack spills (measured: 5x slower than the explicit vectors).
 */
#ifndef FASTNORM_CHANNEL_H
#define FASTNORM_CHANNEL_H
#include <stddef.h>
#include <string.h>
#include "fastnorm_moments.h"
#include "fastnorm_half.h"

#if defined(__AVX__)
#include <immintrin.h>
/* h[0] + h[2] + (h[1] + h[3]): the two halves added, then the SSE2 sum of the pair */
static inline double fn_hsum4(__m256d h) {
    __m128d lo = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
    return _mm_cvtsd_f64(_mm_add_sd(lo, _mm_unpackhi_pd(lo, lo)));
}
#endif
/* FN_PD(op): the op's packed-double intrinsic of the widest vectors (_mm512_op_pd, _mm256_op_pd, _mm_op_pd) */
#if defined(__AVX512F__)
#include <immintrin.h>
typedef __m512d fn_vd;
#define FN_VW 8
#define FN_PD(op) _mm512_##op##_pd
#define fn_vfma(a, b, c) _mm512_fmadd_pd(a, b, c)
#define fn_vload_f(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))
static inline double fn_vhsum(fn_vd v) {
    return fn_hsum4(_mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1)));
}
#elif defined(__AVX__)
#include <immintrin.h>
typedef __m256d fn_vd;
#define FN_VW 4
#define FN_PD(op) _mm256_##op##_pd
#if defined(__FMA__)
#define fn_vfma(a, b, c) _mm256_fmadd_pd(a, b, c)
#endif
#define fn_vload_f(p) _mm256_cvtps_pd(_mm_loadu_ps(p))
static inline double fn_vhsum(fn_vd v) { return fn_hsum4(v); }
#elif defined(__SSE2__)
#include <emmintrin.h>
typedef __m128d fn_vd;
#define FN_VW 2
#define FN_PD(op) _mm_##op##_pd
#define fn_vload_f(p) _mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(p))))
static inline double fn_vhsum(fn_vd v) { return _mm_cvtsd_f64(_mm_add_sd(v, _mm_unpackhi_pd(v, v))); }
#endif
#if defined(FN_PD)
#define fn_vzero() FN_PD(setzero)()
#define fn_vset1(a) FN_PD(set1)(a)
#define fn_vadd(a, b) FN_PD(add)(a, b)
#define fn_vsub(a, b) FN_PD(sub)(a, b)
#define fn_vmul(a, b) FN_PD(mul)(a, b)
#define fn_vload_d(p) FN_PD(loadu)(p)
#define fn_vstore(p, v) FN_PD(storeu)(p, v)
#if !defined(fn_vfma)
#define fn_vfma(a, b, c) fn_vadd(fn_vmul(a, b), c)
#endif
#else
typedef double fn_vd;
#define FN_VW 1
#define fn_vzero() 0.0
#define fn_vset1(a) ((double)(a))
#define fn_vadd(a, b) ((a) + (b))
#define fn_vsub(a, b) ((a) - (b))
#define fn_vmul(a, b) ((a) * (b))
#define fn_vfma(a, b, c) ((a) * (b) + (c))
#define fn_vload_f(p) ((double)*(p))
#define fn_vload_d(p) (*(p))
#define fn_vstore(p, v) (*(p) = (v))
static inline double fn_vhsum(fn_vd v) { return v; }
#endif

/* Prefetch the nbytes at p (the next slice of a channel, while this one is reduced: slices of a few KiB
 * a stride apart are too short for the hardware prefetchers to ramp up on). */
static inline void fn_prefetch(const void *p, ptrdiff_t nbytes) {
    for (ptrdiff_t i = 0; i < nbytes; i += 64) __builtin_prefetch((const char *)p + i, 0, 3);
}

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

/* The segment sums and moments; FN_TOD_##SUF(v): a stored value as double. */
#define FN_DEFINE_SEG(T, SUF)                                                                          \
/* s1 = sum(x - K), s2 = sum((x - K)^2) over the n values x[0..n), in double */                        \
static inline void fn_shifted_sums_##SUF(const T *x, ptrdiff_t n, double K, double *s1, double *s2) {  \
    fn_vd k = fn_vset1(K), a0 = fn_vzero(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0; \
    ptrdiff_t i = 0;                                                                                   \
    double t1, t2;                                                                                     \
    for (; i + 4 * FN_VW <= n; i += 4 * FN_VW) {                                                       \
        fn_vd d0 = fn_vsub(fn_vload_##SUF(x + i), k), d1 = fn_vsub(fn_vload_##SUF(x + i + FN_VW), k);  \
        fn_vd d2 = fn_vsub(fn_vload_##SUF(x + i + 2 * FN_VW), k);                                      \
        fn_vd d3 = fn_vsub(fn_vload_##SUF(x + i + 3 * FN_VW), k);                                      \
        a0 = fn_vadd(a0, d0); a1 = fn_vadd(a1, d1); a2 = fn_vadd(a2, d2); a3 = fn_vadd(a3, d3);        \
        b0 = fn_vfma(d0, d0, b0); b1 = fn_vfma(d1, d1, b1); b2 = fn_vfma(d2, d2, b2); b3 = fn_vfma(d3, d3, b3); \
    }                                                                                                  \
    t1 = fn_vhsum(fn_vadd(fn_vadd(a0, a1), fn_vadd(a2, a3)));                                          \
    t2 = fn_vhsum(fn_vadd(fn_vadd(b0, b1), fn_vadd(b2, b3)));                                          \
    for (; i < n; i++) { double d = FN_TOD_##SUF(x[i]) - K; t1 += d; t2 += d * d; }                          \
    *s1 = t1; *s2 = t2;                                                                                \
}                                                                                                      \
/* s1 = sum(dy), s2 = sum(dy * (x - mu)) over n values, in double */                                   \
static inline void fn_grad_sums_##SUF(const T *dy, const T *x, ptrdiff_t n, double mu, double *s1,     \
                                      double *s2) {                                                    \
    fn_vd m = fn_vset1(mu), a0 = fn_vzero(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0; \
    ptrdiff_t i = 0;                                                                                   \
    double t1, t2;                                                                                     \
    for (; i + 4 * FN_VW <= n; i += 4 * FN_VW) {                                                       \
        fn_vd g0 = fn_vload_##SUF(dy + i), g1 = fn_vload_##SUF(dy + i + FN_VW);                        \
        fn_vd g2 = fn_vload_##SUF(dy + i + 2 * FN_VW), g3 = fn_vload_##SUF(dy + i + 3 * FN_VW);        \
        a0 = fn_vadd(a0, g0); a1 = fn_vadd(a1, g1); a2 = fn_vadd(a2, g2); a3 = fn_vadd(a3, g3);        \
        b0 = fn_vfma(g0, fn_vsub(fn_vload_##SUF(x + i), m), b0);                                       \
        b1 = fn_vfma(g1, fn_vsub(fn_vload_##SUF(x + i + FN_VW), m), b1);                               \
        b2 = fn_vfma(g2, fn_vsub(fn_vload_##SUF(x + i + 2 * FN_VW), m), b2);                           \
        b3 = fn_vfma(g3, fn_vsub(fn_vload_##SUF(x + i + 3 * FN_VW), m), b3);                           \
    }                                                                                                  \
    t1 = fn_vhsum(fn_vadd(fn_vadd(a0, a1), fn_vadd(a2, a3)));                                          \
    t2 = fn_vhsum(fn_vadd(fn_vadd(b0, b1), fn_vadd(b2, b3)));                                          \
    for (; i < n; i++) { double g = FN_TOD_##SUF(dy[i]); t1 += g; t2 += g * (FN_TOD_##SUF(x[i]) - mu); }\
    *s1 = t1; *s2 = t2;                                                                                \
}                                                                                                      \
/* mean and M2 of the n (>= 1) contiguous values x[0..n) */                                             \
static inline void fn_seg_moments_##SUF(const T *x, ptrdiff_t n, double *mean, double *m2) {           \
    double cnt = 0.0, mu = 0.0, M2 = 0.0;                                                              \
    for (ptrdiff_t b = 0; b < n; b += FN_SEG_BLOCK) {                                                  \
        ptrdiff_t nb = n - b < FN_SEG_BLOCK ? n - b : FN_SEG_BLOCK;                                    \
        double K = cnt > 0.0 ? mu : FN_TOD_##SUF(x[b]), s1, s2, m2b;                                         \
        fn_shifted_sums_##SUF(x + b, nb, K, &s1, &s2);                                                 \
        m2b = s2 - s1 * (s1 / (double)nb);                                                             \
        fn_chan_merge(&cnt, &mu, &M2, (double)nb, K + s1 / (double)nb, m2b > 0.0 ? m2b : 0.0);         \
    }                                                                                                  \
    *mean = mu; *m2 = M2;                                                                              \
}
/* The row-pair loops of fn_col_shifted_sums_* and fn_col_grad_sums_ld_* over the channels [0, c0), c0 the
 * returned multiple of 4 * FN_VW, with each group's running sums held in registers across all row pairs of
 * the nr rows (the callers do the other channels and an odd last row): the same operations in the same order
 * as those loops, without their load and store of s1, s2 per row pair. LD: the data's vector load; ML: mu's. */
#define FN_COL_MOM(LD, j, a, b, k) {                                                                   \
        fn_vd d0 = fn_vsub(LD(x + r * ld + c + (j) * FN_VW), k);                                       \
        fn_vd d1 = fn_vsub(LD(x + (r + 1) * ld + c + (j) * FN_VW), k);                                 \
        a = fn_vadd(a, fn_vadd(d0, d1)); b = fn_vfma(d0, d0, fn_vfma(d1, d1, b)); }
#define FN_COL_GRAD(LD, j, a, b, m) {                                                                  \
        fn_vd g0 = LD(dy + r * ld + c + (j) * FN_VW), g1 = LD(dy + (r + 1) * ld + c + (j) * FN_VW);    \
        fn_vd d0 = fn_vsub(LD(x + r * ld + c + (j) * FN_VW), m);                                       \
        fn_vd d1 = fn_vsub(LD(x + (r + 1) * ld + c + (j) * FN_VW), m);                                 \
        a = fn_vadd(a, fn_vadd(g0, g1)); b = fn_vfma(g0, d0, fn_vfma(g1, d1, b)); }
#define FN_COL_REG_LOOP(PL, P, BODY, LD)                                                               \
    ptrdiff_t c = 0;                                                                                   \
    for (; FN_VW > 1 && c + 4 * FN_VW <= C; c += 4 * FN_VW) {                                          \
        fn_vd p0 = PL(P + c), p1 = PL(P + c + FN_VW), p2 = PL(P + c + 2 * FN_VW), p3 = PL(P + c + 3 * FN_VW); \
        fn_vd a0 = fn_vload_d(s1 + c), a1 = fn_vload_d(s1 + c + FN_VW), a2 = fn_vload_d(s1 + c + 2 * FN_VW); \
        fn_vd a3 = fn_vload_d(s1 + c + 3 * FN_VW), b0 = fn_vload_d(s2 + c), b1 = fn_vload_d(s2 + c + FN_VW); \
        fn_vd b2 = fn_vload_d(s2 + c + 2 * FN_VW), b3 = fn_vload_d(s2 + c + 3 * FN_VW);                 \
        for (ptrdiff_t r = 0; r + 2 <= nr; r += 2) {                                                   \
            BODY(LD, 0, a0, b0, p0) BODY(LD, 1, a1, b1, p1) BODY(LD, 2, a2, b2, p2) BODY(LD, 3, a3, b3, p3) \
        }                                                                                              \
        fn_vstore(s1 + c, a0); fn_vstore(s1 + c + FN_VW, a1); fn_vstore(s1 + c + 2 * FN_VW, a2);       \
        fn_vstore(s1 + c + 3 * FN_VW, a3); fn_vstore(s2 + c, b0); fn_vstore(s2 + c + FN_VW, b1);       \
        fn_vstore(s2 + c + 2 * FN_VW, b2); fn_vstore(s2 + c + 3 * FN_VW, b3);                          \
    }                                                                                                  \
    return c;
#define FN_DEFINE_COL_REG(T, SUF, MT, ML)                                                              \
static inline ptrdiff_t fn_col_pairs_reg_##SUF(const T *x, ptrdiff_t nr, ptrdiff_t C, ptrdiff_t ld,    \
                                               const double *K, double *s1, double *s2) {              \
    FN_COL_REG_LOOP(fn_vload_d, K, FN_COL_MOM, fn_vload_##SUF)                                         \
}                                                                                                      \
static inline ptrdiff_t fn_col_grad_pairs_reg_##SUF(const T *dy, const T *x, ptrdiff_t nr, ptrdiff_t C, \
                                                    ptrdiff_t ld, const MT *mu, double *s1, double *s2) { \
    FN_COL_REG_LOOP(ML, mu, FN_COL_GRAD, fn_vload_##SUF)                                               \
}

#define FN_DEFINE_CHANNEL(T, SUF)                                                                      \
FN_DEFINE_SEG(T, SUF)                                                                                  \
FN_DEFINE_COL_REG(T, SUF, T, fn_vload_##SUF)                                                           \
/* s1[c] += sum_r (x[r, c] - K[c]),  s2[c] += sum_r (x[r, c] - K[c])^2  over the nr rows of (nr, C) x */ \
static inline void fn_col_shifted_sums_mem_##SUF(const T *x, ptrdiff_t nr, ptrdiff_t C, ptrdiff_t ld,     \
                                             const double *K, double *s1, double *s2) {                \
    ptrdiff_t r = 0, c;                                                                                \
    for (; r + 2 <= nr; r += 2) {                                                                      \
        const T *x0 = x + r * ld, *x1 = x0 + ld;                                                       \
        for (c = 0; c + FN_VW <= C; c += FN_VW) {                                                      \
            fn_vd k = fn_vload_d(K + c);                                                               \
            fn_vd d0 = fn_vsub(fn_vload_##SUF(x0 + c), k), d1 = fn_vsub(fn_vload_##SUF(x1 + c), k);    \
            fn_vstore(s1 + c, fn_vadd(fn_vload_d(s1 + c), fn_vadd(d0, d1)));                           \
            fn_vstore(s2 + c, fn_vfma(d0, d0, fn_vfma(d1, d1, fn_vload_d(s2 + c))));                   \
        }                                                                                              \
        for (; c < C; c++) {                                                                           \
            double d0 = (double)x0[c] - K[c], d1 = (double)x1[c] - K[c];                               \
            s1[c] += d0 + d1; s2[c] += d0 * d0 + d1 * d1; }                                            \
    }                                                                                                  \
    for (; r < nr; r++) {                                                                              \
        const T *x0 = x + r * ld;                                                                      \
        for (c = 0; c < C; c++) { double d0 = (double)x0[c] - K[c]; s1[c] += d0; s2[c] += d0 * d0; }  \
    }                                                                                                  \
}                                                                                                      \
/* fn_col_shifted_sums_mem_##SUF with the row pairs of its first channels in registers (fn_col_pairs_reg) */ \
static inline void fn_col_shifted_sums_##SUF(const T *x, ptrdiff_t nr, ptrdiff_t C, ptrdiff_t ld,     \
                                             const double *K, double *s1, double *s2) {                \
    ptrdiff_t cr = fn_col_pairs_reg_##SUF(x, nr, C, ld, K, s1, s2);                                    \
    if (nr % 2 && cr > 0) fn_col_shifted_sums_mem_##SUF(x + (nr - 1) * ld, 1, cr, ld, K, s1, s2);      \
    if (cr < C) fn_col_shifted_sums_mem_##SUF(x + cr, nr, C - cr, ld, K + cr, s1 + cr, s2 + cr);       \
}                                                                                                      \
/* Per-channel mean[c] and M2 m2[c] over the nr (>= 1) rows of the (nr, C) array x, in blocks of       \
 * FN_COL_BLOCK rows merged in order. K, s1, s2: scratch rows of length C. */                          \
static inline void fn_col_moments_ld_##SUF(const T *x, ptrdiff_t nr, ptrdiff_t C, ptrdiff_t ld,       \
                                           double *mean, double *m2, double *K, double *s1, double *s2) { \
    double cnt = 0.0;                                                                                  \
    ptrdiff_t c;                                                                                       \
    for (c = 0; c < C; c++) { mean[c] = 0.0; m2[c] = 0.0; }                                           \
    for (ptrdiff_t b = 0; b < nr; b += FN_COL_BLOCK) {                                                 \
        ptrdiff_t nb = nr - b < FN_COL_BLOCK ? nr - b : FN_COL_BLOCK;                                  \
        const T *xb = x + b * ld;                                                                      \
        for (c = 0; c < C; c++) { K[c] = cnt > 0.0 ? mean[c] : (double)xb[c]; s1[c] = 0.0; s2[c] = 0.0; } \
        fn_col_shifted_sums_##SUF(xb, nb, C, ld, K, s1, s2);                                           \
        for (c = 0; c < C; c++) {                                                                      \
            double n0 = cnt, m2b = s2[c] - s1[c] * (s1[c] / (double)nb);                               \
            fn_chan_merge(&n0, &mean[c], &m2[c], (double)nb, K[c] + s1[c] / (double)nb, m2b > 0.0 ? m2b : 0.0); \
        }                                                                                              \
        cnt += (double)nb;                                                                             \
    }                                                                                                  \
}                                                                                                      \
/* s1[c] += sum_r dy[r, c],  s2[c] += sum_r dy[r, c] * (x[r, c] - mu[c])  over the nr rows */          \
static inline void fn_col_grad_sums_mem_##SUF(const T *dy, const T *x, ptrdiff_t nr, ptrdiff_t C,       \
                                             ptrdiff_t ld, const T *mu, double *s1, double *s2) {      \
    ptrdiff_t r = 0, c;                                                                                \
    for (; r + 2 <= nr; r += 2) {                                                                      \
        const T *g0 = dy + r * ld, *g1 = g0 + ld, *x0 = x + r * ld, *x1 = x0 + ld;                     \
        for (c = 0; c + FN_VW <= C; c += FN_VW) {                                                      \
            fn_vd m = fn_vload_##SUF(mu + c), a0 = fn_vload_##SUF(g0 + c), a1 = fn_vload_##SUF(g1 + c); \
            fn_vd d0 = fn_vsub(fn_vload_##SUF(x0 + c), m), d1 = fn_vsub(fn_vload_##SUF(x1 + c), m);    \
            fn_vstore(s1 + c, fn_vadd(fn_vload_d(s1 + c), fn_vadd(a0, a1)));                           \
            fn_vstore(s2 + c, fn_vfma(a0, d0, fn_vfma(a1, d1, fn_vload_d(s2 + c))));                   \
        }                                                                                              \
        for (; c < C; c++) {                                                                           \
            double a0 = (double)g0[c], a1 = (double)g1[c];                                             \
            s1[c] += a0 + a1;                                                                          \
            s2[c] += a0 * ((double)x0[c] - (double)mu[c]) + a1 * ((double)x1[c] - (double)mu[c]); }    \
    }                                                                                                  \
    for (; r < nr; r++) {                                                                              \
        const T *g0 = dy + r * ld, *x0 = x + r * ld;                                                   \
        for (c = 0; c < C; c++) {                                                                      \
            double a0 = (double)g0[c]; s1[c] += a0; s2[c] += a0 * ((double)x0[c] - (double)mu[c]); }   \
    }                                                                                                  \
}                                                                                                      \
/* s1[c] += sum_r dy[r, c],  s2[c] += sum_r dy[r, c] * (x[r, c] - mu[c])  over the nr rows (as above) */ \
static inline void fn_col_grad_sums_ld_##SUF(const T *dy, const T *x, ptrdiff_t nr, ptrdiff_t C,       \
                                             ptrdiff_t ld, const T *mu, double *s1, double *s2) {      \
    ptrdiff_t cr = fn_col_grad_pairs_reg_##SUF(dy, x, nr, C, ld, mu, s1, s2);                          \
    if (nr % 2 && cr > 0) fn_col_grad_sums_mem_##SUF(dy + (nr - 1) * ld, x + (nr - 1) * ld, 1, cr, ld, mu, s1, s2); \
    if (cr < C) fn_col_grad_sums_mem_##SUF(dy + cr, x + cr, nr, C - cr, ld, mu + cr, s1 + cr, s2 + cr); \
}                                                                                                      \
/* the same over whole rows (row stride C) */                                                          \
static inline void fn_col_moments_##SUF(const T *x, ptrdiff_t nr, ptrdiff_t C, double *mean,           \
                                        double *m2, double *K, double *s1, double *s2) {               \
    fn_col_moments_ld_##SUF(x, nr, C, C, mean, m2, K, s1, s2);                                         \
}                                                                                                      \
static inline void fn_col_grad_sums_##SUF(const T *dy, const T *x, ptrdiff_t nr, ptrdiff_t C,          \
                                          const T *mu, double *s1, double *s2) {                       \
    fn_col_grad_sums_ld_##SUF(dy, x, nr, C, C, mu, s1, s2);                                            \
}

#define FN_TOD_f(v) ((double)(v))
#define FN_TOD_d(v) ((double)(v))
FN_DEFINE_CHANNEL(float, f)
FN_DEFINE_CHANNEL(double, d)

/* The segment functions straight on 16-bit storage (suffix b: bfloat16, g: float16), widened in registers:
 * the same double arithmetic on the same float32 values in the same order as fn_*_f on a widened copy. */
#if defined(__AVX2__) && defined(__F16C__) && FN_VW >= 4
#define FN_HALF_DIRECT 1
#define FN_TOD_b(v) ((double)fn_bf16_to_f32(v))
#define FN_TOD_g(v) ((double)fn_f16_to_f32(v))
#if FN_VW == 8
#define fn_vload_b(p) _mm512_cvtps_pd(_mm256_castsi256_ps(                                               \
    _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16)))
#define fn_vload_g(p) _mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p))))
#else
#define fn_vload_b(p) _mm256_cvtps_pd(_mm_castsi128_ps(                                                  \
    _mm_slli_epi32(_mm_cvtepu16_epi32(_mm_loadl_epi64((const __m128i *)(p))), 16)))
#define fn_vload_g(p) _mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(p))))
#endif
FN_DEFINE_SEG(uint16_t, b)
FN_DEFINE_SEG(uint16_t, g)
FN_DEFINE_COL_REG(uint16_t, b, float, fn_vload_f)
FN_DEFINE_COL_REG(uint16_t, g, float, fn_vload_f)
#endif

/* Output passes. With stream != 0 the stores are non-temporal (they bypass the cache and skip the read
 * that a cached store of a line not in cache costs): the kernels ask for this when the output is far
 * larger than the caches, where a later reader finds it in memory anyway. Same arithmetic either way. */
#if defined(__AVX__)
#define FN_ALIGN 32
#define FN_W_f 8
#define FN_W_d 4
typedef __m256 fn_vt_f;
typedef __m256d fn_vt_d;
#define fn_set1_f _mm256_set1_ps
#define fn_set1_d _mm256_set1_pd
#define fn_ld_f _mm256_loadu_ps
#define fn_ld_d _mm256_loadu_pd
#define fn_sub_f _mm256_sub_ps
#define fn_sub_d _mm256_sub_pd
#define fn_mul_f _mm256_mul_ps
#define fn_mul_d _mm256_mul_pd
#define fn_add_f _mm256_add_ps
#define fn_add_d _mm256_add_pd
#define fn_stream_f _mm256_stream_ps
#define fn_stream_d _mm256_stream_pd
#if defined(__FMA__)
#define fn_fma_f _mm256_fmadd_ps
#define fn_fma_d _mm256_fmadd_pd
#endif
#elif defined(__SSE2__)
#define FN_ALIGN 16
#define FN_W_f 4
#define FN_W_d 2
typedef __m128 fn_vt_f;
typedef __m128d fn_vt_d;
#define fn_set1_f _mm_set1_ps
#define fn_set1_d _mm_set1_pd
#define fn_ld_f _mm_loadu_ps
#define fn_ld_d _mm_loadu_pd
#define fn_sub_f _mm_sub_ps
#define fn_sub_d _mm_sub_pd
#define fn_mul_f _mm_mul_ps
#define fn_mul_d _mm_mul_pd
#define fn_add_f _mm_add_ps
#define fn_add_d _mm_add_pd
#define fn_stream_f _mm_stream_ps
#define fn_stream_d _mm_stream_pd
#endif
#if defined(FN_ALIGN) && !defined(fn_fma_f)
#define fn_fma_f(a, b, c) fn_add_f(fn_mul_f(a, b), c)
#define fn_fma_d(a, b, c) fn_add_d(fn_mul_d(a, b), c)
#endif

/* make this thread's non-temporal stores visible before others read them (end of a parallel chunk) */
static inline void fn_store_fence(void) {
#if defined(FN_ALIGN)
    _mm_sfence();
#endif
}

#if defined(FN_ALIGN)
#include <stdint.h>
#define FN_UNALIGNED(p) (((uintptr_t)(p)) & (FN_ALIGN - 1))
#define FN_STILE 512   /* values per stack tile of a streamed backward pass */
#define FN_DEFINE_APPLY(T, SUF)                                                                        \
/* y = (x - mu) * a + b */                                                                             \
static inline void fn_apply_fwd_##SUF(const T *x, T *y, ptrdiff_t n, T mu, T a, T b, int stream) {     \
    ptrdiff_t i = 0;                                                                                   \
    if (stream) {                                                                                      \
        fn_vt_##SUF vm = fn_set1_##SUF(mu), va = fn_set1_##SUF(a), vb = fn_set1_##SUF(b);               \
        for (; i < n && FN_UNALIGNED(y + i); i++) y[i] = (x[i] - mu) * a + b;                          \
        for (; i + FN_W_##SUF <= n; i += FN_W_##SUF)                                                   \
            fn_stream_##SUF(y + i, fn_fma_##SUF(fn_sub_##SUF(fn_ld_##SUF(x + i), vm), va, vb));        \
    }                                                                                                  \
    for (; i < n; i++) y[i] = (x[i] - mu) * a + b;                                                     \
}                                                                                                      \
/* dst[0 .. n) = src[0 .. n), the aligned vectors with non-temporal stores (an exact copy) */            \
static inline void fn_stream_copy_##SUF(T *dst, const T *src, ptrdiff_t n) {                            \
    ptrdiff_t i = 0;                                                                                   \
    for (; i < n && FN_UNALIGNED(dst + i); i++) dst[i] = src[i];                                       \
    for (; i + FN_W_##SUF <= n; i += FN_W_##SUF) fn_stream_##SUF(dst + i, fn_ld_##SUF(src + i));      \
    for (; i < n; i++) dst[i] = src[i];                                                                \
}                                                                                                      \
/* dx = ka * dy + kb * (x - mu) + kc, or dx = ka * dy when !training. With stream, the same loop fills   \
 * tiles on the stack that are streamed out: the values do not depend on where dx sits. */             \
static inline void fn_apply_bwd_##SUF(const T *dy, const T *x, T *dx, ptrdiff_t n, T mu, T ka, T kb,   \
                                      T kc, int training, int stream) {                               \
    T t[FN_STILE];                                                                                     \
    for (ptrdiff_t o = 0, m; o < n; o += m) {                                                          \
        m = !stream ? n : n - o < FN_STILE ? n - o : FN_STILE;                                         \
        T *d = stream ? t : dx + o;                                                                    \
        if (training) for (ptrdiff_t i = 0; i < m; i++) d[i] = ka * dy[o + i] + kb * (x[o + i] - mu) + kc; \
        else for (ptrdiff_t i = 0; i < m; i++) d[i] = ka * dy[o + i];                                  \
        if (stream) fn_stream_copy_##SUF(dx + o, t, m);                                                \
    }                                                                                                  \
}                                                                                                      \
/* Whole rows of C channels as one span of n values (value i is channel i % C), non-temporal stores:  \
 * y = (x - mu[c]) * a[c] + b[c]. The coefficient rows hold C + FN_WRAP entries (entry C + j repeats   \
 * entry j % C) so a vector load may run past the last channel into the next row's first ones. */    \
static inline void fn_stream_rows_fwd_##SUF(const T *x, T *y, ptrdiff_t n, ptrdiff_t C, const T *mu,   \
                                            const T *a, const T *b) {                                  \
    ptrdiff_t i = 0, c = 0;                                                                            \
    for (; i < n && FN_UNALIGNED(y + i); i++) { y[i] = (x[i] - mu[c]) * a[c] + b[c]; if (++c == C) c = 0; } \
    for (; i + FN_W_##SUF <= n; i += FN_W_##SUF) {                                                     \
        fn_stream_##SUF(y + i, fn_fma_##SUF(fn_sub_##SUF(fn_ld_##SUF(x + i), fn_ld_##SUF(mu + c)),     \
                                            fn_ld_##SUF(a + c), fn_ld_##SUF(b + c)));                  \
        for (c += FN_W_##SUF; c >= C; c -= C) {}                                                       \
    }                                                                                                  \
    for (; i < n; i++) { y[i] = (x[i] - mu[c]) * a[c] + b[c]; if (++c == C) c = 0; }                   \
}                                                                                                      \
/* the same for dx = ka[c] dy + kb[c] (x - mu[c]) + kc[c] (ka[c] dy when !training), the values from   \
 * the plain loop into tiles on the stack (the unstreamed passes' arithmetic), then streamed out */    \
static inline void fn_stream_rows_bwd_##SUF(const T *dy, const T *x, T *dx, ptrdiff_t n, ptrdiff_t C,   \
                                            const T *mu, const T *ka, const T *kb, const T *kc,        \
                                            int training) {                                            \
    T t[FN_STILE];                                                                                     \
    for (ptrdiff_t o = 0, c0 = 0; o < n; o += FN_STILE) {                                              \
        ptrdiff_t m = n - o < FN_STILE ? n - o : FN_STILE, c = c0;                                     \
        if (training)                                                                                  \
            for (ptrdiff_t i = 0; i < m; i++) {                                                        \
                t[i] = ka[c] * dy[o + i] + kb[c] * (x[o + i] - mu[c]) + kc[c]; if (++c == C) c = 0; }  \
        else                                                                                           \
            for (ptrdiff_t i = 0; i < m; i++) { t[i] = ka[c] * dy[o + i]; if (++c == C) c = 0; }       \
        fn_stream_copy_##SUF(dx + o, t, m);                                                            \
        c0 = c;                                                                                        \
    }                                                                                                  \
}
#else
#define FN_DEFINE_APPLY(T, SUF)                                                                        \
static inline void fn_apply_fwd_##SUF(const T *x, T *y, ptrdiff_t n, T mu, T a, T b, int stream) {     \
    (void)stream;                                                                                      \
    for (ptrdiff_t i = 0; i < n; i++) y[i] = (x[i] - mu) * a + b;                                      \
}                                                                                                      \
static inline void fn_apply_bwd_##SUF(const T *dy, const T *x, T *dx, ptrdiff_t n, T mu, T ka, T kb,   \
                                      T kc, int training, int stream) {                               \
    (void)stream;                                                                                      \
    if (training) for (ptrdiff_t i = 0; i < n; i++) dx[i] = ka * dy[i] + kb * (x[i] - mu) + kc;        \
    else for (ptrdiff_t i = 0; i < n; i++) dx[i] = ka * dy[i];                                         \
}                                                                                                      \
static inline void fn_stream_rows_fwd_##SUF(const T *x, T *y, ptrdiff_t n, ptrdiff_t C, const T *mu,   \
                                            const T *a, const T *b) {                                  \
    for (ptrdiff_t i = 0, c = 0; i < n; i++) { y[i] = (x[i] - mu[c]) * a[c] + b[c]; if (++c == C) c = 0; } \
}                                                                                                      \
static inline void fn_stream_rows_bwd_##SUF(const T *dy, const T *x, T *dx, ptrdiff_t n, ptrdiff_t C,   \
                                            const T *mu, const T *ka, const T *kb, const T *kc,        \
                                            int training) {                                            \
    for (ptrdiff_t i = 0, c = 0; i < n; i++) {                                                         \
        dx[i] = training ? ka[c] * dy[i] + kb[c] * (x[i] - mu[c]) + kc[c] : ka[c] * dy[i];             \
        if (++c == C) c = 0; }                                                                         \
}
#endif
/* entries past the last channel that the coefficient rows of fn_stream_rows_* must hold */
#define FN_WRAP 8
FN_DEFINE_APPLY(float, f)
FN_DEFINE_APPLY(double, d)

/* ------------------------------------------------------------------------------ 16-bit storage
 * bfloat16 / float16 data (uint16_t bit patterns, fmt = FN_BF16 / FN_F16) is widened into float32 tiles on
 * the stack (fn_half_load), the float32 code above runs on the tiles, and outputs are narrowed once
 * (fn_half_store, round to nearest even). Each 16-bit value is read from memory once per pass, as in the
 * float32 kernels. fn_seg_moments_h and fn_col_moments_h do exactly the float32 arithmetic on the widened
 * values (same blocks, same order), so the statistics equal the float32 kernel's on x.astype(float32).
 * On AVX2 targets the segment sums (fn_seg_moments_h, fn_grad_sums_h) skip the tiles and widen in
 * registers (fn_*_b, fn_*_g above): the same values in the same order, so the same results.
 */
#define FN_HTILE 2048   /* values per tile of a segment */
#define FN_CTILE 512    /* channels per strip of a channels-last row */

static inline void fn_seg_moments_h(int fmt, const uint16_t *x, ptrdiff_t n, double *mean, double *m2) {
#if defined(FN_HALF_DIRECT)
    if (fmt == FN_BF16) fn_seg_moments_b(x, n, mean, m2); else fn_seg_moments_g(x, n, mean, m2);
#else
    float t[FN_SEG_BLOCK];
    double cnt = 0.0, mu = 0.0, M2 = 0.0;
    for (ptrdiff_t b = 0; b < n; b += FN_SEG_BLOCK) {
        ptrdiff_t nb = n - b < FN_SEG_BLOCK ? n - b : FN_SEG_BLOCK;
        double K, s1, s2, m2b;
        fn_half_load(fmt, x + b, t, nb);
        K = cnt > 0.0 ? mu : (double)t[0];
        fn_shifted_sums_f(t, nb, K, &s1, &s2);
        m2b = s2 - s1 * (s1 / (double)nb);
        fn_chan_merge(&cnt, &mu, &M2, (double)nb, K + s1 / (double)nb, m2b > 0.0 ? m2b : 0.0);
    }
    *mean = mu; *m2 = M2;
#endif
}

/* per tile of FN_HTILE values, the tiles' sums added in order */
static inline void fn_grad_sums_h(int fmt, const uint16_t *dy, const uint16_t *x, ptrdiff_t n, double mu,
                                  double *s1, double *s2) {
#if defined(FN_HALF_DIRECT)
    double t1 = 0.0, t2 = 0.0, a1, a2;
    for (ptrdiff_t b = 0; b < n; b += FN_HTILE) {
        ptrdiff_t nb = n - b < FN_HTILE ? n - b : FN_HTILE;
        if (fmt == FN_BF16) fn_grad_sums_b(dy + b, x + b, nb, mu, &a1, &a2);
        else fn_grad_sums_g(dy + b, x + b, nb, mu, &a1, &a2);
        t1 += a1; t2 += a2;
    }
    *s1 = t1; *s2 = t2;
#else
#define FN_SUMS_(ta, tb, i0, k, u, v) fn_grad_sums_f(ta, tb, k, mu, u, v)
    FN_HALF_TILED_SUMS2(fmt, dy, x, n, FN_HTILE, FN_SUMS_, s1, s2);
#undef FN_SUMS_
#endif
}

/* fn_half_store, with non-temporal stores of the aligned 16-byte groups when stream != 0 (the same values:
 * each group is rounded by fn_half_store into a register-sized buffer, then streamed out) */
static inline void fn_half_store_st(int fmt, const float *src, uint16_t *dst, ptrdiff_t n, int stream) {
#if defined(__SSE2__)
    if (stream) {
        ptrdiff_t i = 0;
        __m128i buf;
        while (i < n && (((uintptr_t)(dst + i)) & 15)) i++;
        fn_half_store(fmt, src, dst, i);
        for (; i + 8 <= n; i += 8) {
            fn_half_store(fmt, src + i, (uint16_t *)&buf, 8);
            _mm_stream_si128((__m128i *)(dst + i), buf);
        }
        fn_half_store(fmt, src + i, dst + i, n - i);
        return;
    }
#else
    (void)stream;
#endif
    fn_half_store(fmt, src, dst, n);
}

/* y = (x - mu) * a + b */
static inline void fn_apply_fwd_h(int fmt, const uint16_t *x, uint16_t *y, ptrdiff_t n, float mu, float a,
                                  float b, int stream) {
    float t[FN_HTILE];
    for (ptrdiff_t o = 0; o < n; o += FN_HTILE) {
        ptrdiff_t nb = n - o < FN_HTILE ? n - o : FN_HTILE;
        fn_half_load(fmt, x + o, t, nb);
        fn_apply_fwd_f(t, t, nb, mu, a, b, 0);
        fn_half_store_st(fmt, t, y + o, nb, stream);
    }
}

/* dx = ka * dy + kb * (x - mu) + kc, or dx = ka * dy when !training (x not read) */
static inline void fn_apply_bwd_h(int fmt, const uint16_t *dy, const uint16_t *x, uint16_t *dx, ptrdiff_t n,
                                  float mu, float ka, float kb, float kc, int training, int stream) {
    float g[FN_HTILE], v[FN_HTILE];
    for (ptrdiff_t o = 0; o < n; o += FN_HTILE) {
        ptrdiff_t nb = n - o < FN_HTILE ? n - o : FN_HTILE;
        fn_half_load(fmt, dy + o, g, nb);
        if (training) fn_half_load(fmt, x + o, v, nb);
        fn_apply_bwd_f(g, v, g, nb, mu, ka, kb, kc, training, 0);
        fn_half_store_st(fmt, g, dx + o, nb, stream);
    }
}

/* fn_col_moments_f on 16-bit rows: strips of FN_CTILE channels, rows widened two at a time (the float32
 * code's row pairs), so every channel sees the float32 arithmetic in the float32 order. */
static inline void fn_col_moments_h(int fmt, const uint16_t *x, ptrdiff_t nr, ptrdiff_t C, ptrdiff_t ld,
                                    double *mean, double *m2, double *K, double *s1, double *s2) {
    float t[2 * FN_CTILE];
    double cnt = 0.0;
    ptrdiff_t c;
    for (c = 0; c < C; c++) { mean[c] = 0.0; m2[c] = 0.0; }
    for (ptrdiff_t b = 0; b < nr; b += FN_COL_BLOCK) {
        ptrdiff_t nb = nr - b < FN_COL_BLOCK ? nr - b : FN_COL_BLOCK;
        const uint16_t *xb = x + b * ld;
        ptrdiff_t cr = 0;   /* channels [0, cr): row pairs widened in registers, the odd last row from a tile */
        for (c = 0; c < C; c++) {
            K[c] = cnt > 0.0 ? mean[c] : (double)fn_half_to_f32(fmt, xb[c]); s1[c] = 0.0; s2[c] = 0.0; }
#if defined(FN_HALF_DIRECT)
        cr = fmt == FN_BF16 ? fn_col_pairs_reg_b(xb, nb, C, ld, K, s1, s2) : fn_col_pairs_reg_g(xb, nb, C, ld, K, s1, s2);
        for (ptrdiff_t c0 = 0; nb % 2 && c0 < cr; c0 += FN_CTILE) {
            ptrdiff_t w = cr - c0 < FN_CTILE ? cr - c0 : FN_CTILE;
            fn_half_load(fmt, xb + (nb - 1) * ld + c0, t, w);
            fn_col_shifted_sums_f(t, 1, w, w, K + c0, s1 + c0, s2 + c0);
        }
#endif
        for (ptrdiff_t c0 = cr; c0 < C; c0 += FN_CTILE) {
            ptrdiff_t w = C - c0 < FN_CTILE ? C - c0 : FN_CTILE;
            for (ptrdiff_t r = 0; r < nb; r += 2) {
                ptrdiff_t k = nb - r < 2 ? nb - r : 2;
                for (ptrdiff_t j = 0; j < k; j++) fn_half_load(fmt, xb + (r + j) * ld + c0, t + j * w, w);
                fn_col_shifted_sums_f(t, k, w, w, K + c0, s1 + c0, s2 + c0);
            }
        }
        for (c = 0; c < C; c++) {
            double n0 = cnt, m2b = s2[c] - s1[c] * (s1[c] / (double)nb);
            fn_chan_merge(&n0, &mean[c], &m2[c], (double)nb, K[c] + s1[c] / (double)nb, m2b > 0.0 ? m2b : 0.0);
        }
        cnt += (double)nb;
    }
}

static inline void fn_col_grad_sums_h(int fmt, const uint16_t *dy, const uint16_t *x, ptrdiff_t nr, ptrdiff_t C,
                                      ptrdiff_t ld, const float *mu, double *s1, double *s2) {
    float g[2 * FN_CTILE], v[2 * FN_CTILE];
    ptrdiff_t cr = 0;   /* channels [0, cr): row pairs widened in registers, the odd last row from tiles */
#if defined(FN_HALF_DIRECT)
    cr = fmt == FN_BF16 ? fn_col_grad_pairs_reg_b(dy, x, nr, C, ld, mu, s1, s2)
                        : fn_col_grad_pairs_reg_g(dy, x, nr, C, ld, mu, s1, s2);
    for (ptrdiff_t c0 = 0; nr % 2 && c0 < cr; c0 += FN_CTILE) {
        ptrdiff_t w = cr - c0 < FN_CTILE ? cr - c0 : FN_CTILE;
        fn_half_load(fmt, dy + (nr - 1) * ld + c0, g, w);
        fn_half_load(fmt, x + (nr - 1) * ld + c0, v, w);
        fn_col_grad_sums_ld_f(g, v, 1, w, w, mu + c0, s1 + c0, s2 + c0);
    }
#endif
    for (ptrdiff_t c0 = cr; c0 < C; c0 += FN_CTILE) {
        ptrdiff_t w = C - c0 < FN_CTILE ? C - c0 : FN_CTILE;
        for (ptrdiff_t r = 0; r < nr; r += 2) {
            ptrdiff_t k = nr - r < 2 ? nr - r : 2;
            for (ptrdiff_t j = 0; j < k; j++) {
                fn_half_load(fmt, dy + (r + j) * ld + c0, g + j * w, w);
                fn_half_load(fmt, x + (r + j) * ld + c0, v + j * w, w);
            }
            fn_col_grad_sums_ld_f(g, v, k, w, w, mu + c0, s1 + c0, s2 + c0);
        }
    }
}

/* The 16-bit channels-last passes go through nr rows of C in tiles of at most FN_CTILE values: with
 * C <= FN_CTILE / 2, k = FN_CTILE / C whole rows at a time (one contiguous span) against coefficient rows
 * repeated k times (fn_rows_coefs), so the widening, the arithmetic and the rounding run over hundreds of
 * values instead of C; otherwise one row at a time in strips of FN_CTILE channels. The same arithmetic on
 * every value either way. FN_ROW_TILES(k) opens the loop: tile offset o in the data, c0 in the coefficient
 * rows, w values. */
static inline ptrdiff_t fn_rows_per_tile(ptrdiff_t nr, ptrdiff_t C) {
    ptrdiff_t k = 2 * C <= FN_CTILE ? FN_CTILE / C : 1;
    return k < nr ? k : nr;
}
/* *v = v (k == 1), or e holding k copies of v[0 .. C) (by doubling copies) */
static inline void fn_rows_coefs(const float **v, float *e, ptrdiff_t C, ptrdiff_t k) {
    ptrdiff_t have = C, want = k * C;
    if (k <= 1) return;
    memcpy(e, *v, (size_t)C * sizeof *e);
    while (have < want) {
        ptrdiff_t m = want - have < have ? want - have : have;
        memcpy(e + have, e, (size_t)m * sizeof *e);
        have += m;
    }
    *v = e;
}
#define FN_ROW_TILES(k)                                                                                \
    for (ptrdiff_t r = 0; r < nr; r += (k))                                                            \
        for (ptrdiff_t c0 = 0, o, w; c0 < C && (o = r * C + c0, w = (k) > 1 ? ((nr - r < (k) ? nr - r : (k)) * C) \
                                                : (C - c0 < FN_CTILE ? C - c0 : FN_CTILE), 1); c0 += FN_CTILE)

/* channels-last output passes over nr rows of C: y = (x - mu[c]) * a[c] + b[c] (rows are contiguous, so
 * with stream the rows' aligned groups form one stream of non-temporal stores) */
static inline void fn_rows_fwd_h(int fmt, const uint16_t *x, uint16_t *y, ptrdiff_t nr, ptrdiff_t C,
                                 const float *mu, const float *a, const float *b, int stream) {
    float t[FN_CTILE], me[FN_CTILE], ae[FN_CTILE], be[FN_CTILE];
    ptrdiff_t k = fn_rows_per_tile(nr, C);
    fn_rows_coefs(&mu, me, C, k);
    fn_rows_coefs(&a, ae, C, k);
    fn_rows_coefs(&b, be, C, k);
    FN_ROW_TILES(k) {
        fn_half_load(fmt, x + o, t, w);
        for (ptrdiff_t i = 0; i < w; i++) t[i] = (t[i] - mu[c0 + i]) * a[c0 + i] + b[c0 + i];
        fn_half_store_st(fmt, t, y + o, w, stream);
    }
}

/* dx = ka[c] dy + kb[c] (x - mu[c]) + kc[c] (ka[c] dy when !training) */
static inline void fn_rows_bwd_h(int fmt, const uint16_t *dy, const uint16_t *x, uint16_t *dx, ptrdiff_t nr,
                                 ptrdiff_t C, const float *mu, const float *ka, const float *kb, const float *kc,
                                 int training, int stream) {
    float g[FN_CTILE], v[FN_CTILE], me[FN_CTILE], ae[FN_CTILE], be[FN_CTILE], ce[FN_CTILE];
    ptrdiff_t k = fn_rows_per_tile(nr, C);
    fn_rows_coefs(&ka, ae, C, k);
    if (training) {
        fn_rows_coefs(&mu, me, C, k);
        fn_rows_coefs(&kb, be, C, k);
        fn_rows_coefs(&kc, ce, C, k);
    }
    FN_ROW_TILES(k) {
        fn_half_load(fmt, dy + o, g, w);
        if (training) {
            fn_half_load(fmt, x + o, v, w);
            for (ptrdiff_t i = 0; i < w; i++)
                g[i] = ka[c0 + i] * g[i] + kb[c0 + i] * (v[i] - mu[c0 + i]) + kc[c0 + i];
        } else {
            for (ptrdiff_t i = 0; i < w; i++) g[i] = ka[c0 + i] * g[i];
        }
        fn_half_store_st(fmt, g, dx + o, w, stream);
    }
}

#endif
