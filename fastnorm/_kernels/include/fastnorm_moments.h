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
 * On AVX2 + FMA targets the float32 reductions are written with intrinsics instead (FN_VSUM below): gcc kept
 * the 32 lanes of the generic code in a stack array (a store and a reload per vector add: 0.13 ns per element
 * per reduction measured on an EPYC (Zen 3), about a quarter of a 16-bit LayerNorm forward's compute). Same
 * blocking, lanes and precision; lane k of a block sums its elements in order, squares and products are
 * fused multiply-adds, the 32 lanes are folded into a double in a fixed order.
 */
#ifndef FASTNORM_MOMENTS_H
#define FASTNORM_MOMENTS_H
#include <math.h>
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

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FN_REDUCTIONS_VEC 1
FN_DEFINE_REDUCTIONS(double, d)
#else
#define FN_REDUCTIONS_VEC 0
FN_DEFINE_REDUCTIONS(float, f)
FN_DEFINE_REDUCTIONS(double, d)
#endif

#if FN_REDUCTIONS_VEC
/* sum of the 32 float lanes a0..a3 in double, in a fixed order */
static inline double fn_fold32(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    __m256d d = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a0)), _mm256_cvtps_pd(_mm256_extractf128_ps(a0, 1)));
    d = _mm256_add_pd(d, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a1)), _mm256_cvtps_pd(_mm256_extractf128_ps(a1, 1))));
    d = _mm256_add_pd(d, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a2)), _mm256_cvtps_pd(_mm256_extractf128_ps(a2, 1))));
    d = _mm256_add_pd(d, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a3)), _mm256_cvtps_pd(_mm256_extractf128_ps(a3, 1))));
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(d), _mm256_extractf128_pd(d, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

/* Blocked sum of a float term: ACC(a, i) adds the term of elements i..i+7 into the vector a, SACC(s, i) the
 * term of element i into the float s (the block's tail, into lane 0 as in FN_BLOCKED_SUM). */
#define FN_VSUM(n, ACC, SACC)                                                                          \
    double total = 0.0;                                                                                \
    for (ptrdiff_t i0 = 0; i0 < (n); i0 += FN_BLOCK) {                                                 \
        ptrdiff_t m_ = (n) - i0 < FN_BLOCK ? (n) - i0 : FN_BLOCK, j = 0;                               \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                    \
        for (; j + FN_LANES <= m_; j += FN_LANES) {                                                    \
            ptrdiff_t i = i0 + j;                                                                      \
            ACC(a0, i); ACC(a1, i + 8); ACC(a2, i + 16); ACC(a3, i + 24);                              \
        }                                                                                              \
        if (j < m_) {                                                                                  \
            float s0 = _mm256_cvtss_f32(a0);                                                           \
            for (; j < m_; j++) { ptrdiff_t i = i0 + j; SACC(s0, i); }                                 \
            a0 = _mm256_blend_ps(a0, _mm256_set1_ps(s0), 1);                                           \
        }                                                                                              \
        total += fn_fold32(a0, a1, a2, a3);                                                            \
    }                                                                                                  \
    return total;

#define FN_LD(i) _mm256_loadu_ps(x + (i))
#define FN_ACC_X(a, i) a = _mm256_add_ps(a, FN_LD(i))
#define FN_ACC_DEV(a, i) a = _mm256_add_ps(a, _mm256_sub_ps(FN_LD(i), vmu))
#define FN_ACC_SQDEV(a, i) { __m256 d_ = _mm256_sub_ps(FN_LD(i), vmu); a = _mm256_fmadd_ps(d_, d_, a); }
#define FN_ACC_SQ(a, i) { __m256 v_ = FN_LD(i); a = _mm256_fmadd_ps(v_, v_, a); }
#define FN_ACC_DOT(a, i) a = _mm256_fmadd_ps(FN_LD(i), _mm256_loadu_ps(y + (i)), a)

static inline double fn_sum_f(const float *x, ptrdiff_t n) {
#define FN_S_(s, i) s += x[i]
    FN_VSUM(n, FN_ACC_X, FN_S_)
#undef FN_S_
}
static inline double fn_sum_dev_f(const float *x, ptrdiff_t n, float mu) {
    const __m256 vmu = _mm256_set1_ps(mu);
#define FN_S_(s, i) s += x[i] - mu
    FN_VSUM(n, FN_ACC_DEV, FN_S_)
#undef FN_S_
}
static inline double fn_sumsq_dev_f(const float *x, ptrdiff_t n, float mu) {
    const __m256 vmu = _mm256_set1_ps(mu);
#define FN_S_(s, i) s = fmaf(x[i] - mu, x[i] - mu, s)
    FN_VSUM(n, FN_ACC_SQDEV, FN_S_)
#undef FN_S_
}
static inline double fn_sumsq_f(const float *x, ptrdiff_t n) {
#define FN_S_(s, i) s = fmaf(x[i], x[i], s)
    FN_VSUM(n, FN_ACC_SQ, FN_S_)
#undef FN_S_
}
static inline double fn_dot_f(const float *x, const float *y, ptrdiff_t n) {
#define FN_S_(s, i) s = fmaf(x[i], y[i], s)
    FN_VSUM(n, FN_ACC_DOT, FN_S_)
#undef FN_S_
}

/* s1 = sum(g), s2 = sum(g * (x - mu)), g = dy * w (w may be NULL: g = dy): FN_VSUM's blocks and lanes for both.
 * LDY(i), LX(i): dy[i..i+7], x[i..i+7] as float32 vectors; SDY(i), SX(i): dy[i], x[i] as float32 (a body shared with
 * the 16-bit rows of fastnorm_half_rows.h, which widen in registers: the same operations on the same values). */
#define FN_BWD_SUMS_BODY(LDY, LX, SDY, SX)                                                             \
    const __m256 vmu = _mm256_set1_ps(mu);                                                             \
    double t1 = 0.0, t2 = 0.0;                                                                         \
    for (ptrdiff_t i0 = 0; i0 < n; i0 += FN_BLOCK) {                                                   \
        ptrdiff_t m_ = n - i0 < FN_BLOCK ? n - i0 : FN_BLOCK, j = 0;                                   \
        __m256 a[4], b[4];                                                                             \
        for (int q = 0; q < 4; q++) a[q] = b[q] = _mm256_setzero_ps();                                 \
        for (; j + FN_LANES <= m_; j += FN_LANES)                                                      \
            for (int q = 0; q < 4; q++) {                                                              \
                ptrdiff_t i = i0 + j + 8 * q;                                                          \
                __m256 g = LDY(i);                                                                     \
                if (w) g = _mm256_mul_ps(g, _mm256_loadu_ps(w + i));                                   \
                a[q] = _mm256_add_ps(a[q], g);                                                         \
                b[q] = _mm256_fmadd_ps(g, _mm256_sub_ps(LX(i), vmu), b[q]);                            \
            }                                                                                          \
        if (j < m_) {                                                                                  \
            float u = _mm256_cvtss_f32(a[0]), v = _mm256_cvtss_f32(b[0]);                              \
            for (; j < m_; j++) {                                                                      \
                ptrdiff_t i = i0 + j;                                                                  \
                float g = w ? SDY(i) * w[i] : SDY(i);                                                  \
                u += g;                                                                                \
                v = fmaf(g, SX(i) - mu, v);                                                            \
            }                                                                                          \
            a[0] = _mm256_blend_ps(a[0], _mm256_set1_ps(u), 1);                                        \
            b[0] = _mm256_blend_ps(b[0], _mm256_set1_ps(v), 1);                                        \
        }                                                                                              \
        t1 += fn_fold32(a[0], a[1], a[2], a[3]);                                                       \
        t2 += fn_fold32(b[0], b[1], b[2], b[3]);                                                       \
    }                                                                                                  \
    *s1 = t1; *s2 = t2;

static inline void fn_bwd_sums_f(const float *dy, const float *w, const float *x, float mu, ptrdiff_t n, double *s1,
                                 double *s2) {
#define FN_LDY_(i) _mm256_loadu_ps(dy + (i))
#define FN_LX_(i) _mm256_loadu_ps(x + (i))
#define FN_SDY_(i) dy[i]
#define FN_SX_(i) x[i]
    FN_BWD_SUMS_BODY(FN_LDY_, FN_LX_, FN_SDY_, FN_SX_)
#undef FN_LDY_
#undef FN_LX_
#undef FN_SDY_
#undef FN_SX_
}
#endif

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
