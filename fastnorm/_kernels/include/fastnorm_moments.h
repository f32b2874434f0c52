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
 * fused multiply-adds, the 32 lanes are folded into a double in a fixed order. On AVX-512 targets the same
 * 32 lanes are two 16-lane vectors (half the instructions, the same sums).
 */
#ifndef FASTNORM_MOMENTS_H
#define FASTNORM_MOMENTS_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* Whether an element-wise float row loop may be split anywhere without changing a bit: on the AVX-512 target gcc
 * contracts the loop's 16-lane body, 8-lane and scalar tails into the same fused operations (checked on 6380 saved
 * LayerNorm-family outputs); on the AVX2 and baseline targets a split moved some dx elements by an ulp. */
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define FN_SPLIT_EXACT 1
#else
#define FN_SPLIT_EXACT 0
#endif

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
/* sum((x - mu)^2); pf (a row to prefetch on the vector targets) unused */                              \
static inline double fn_sumsq_dev_##SUF(const T *x, ptrdiff_t n, T mu, const T *pf) {                  \
    (void)pf;                                                                                          \
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

/* Two sums over a pair of 16-bit rows (a, b: bit patterns of format fmt) through float32 tiles of TILE elements
 * widened on the stack (fn_half_load, fastnorm_half.h): SUMS(ta, tb, i0, k, &u, &v) gives the tiles' two sums (ta, tb:
 * the tiles, i0: their offset in the rows, k: their length), added in tile order into *s1, *s2. */
#define FN_HALF_TILED_SUMS2(fmt, a, b, n, TILE, SUMS, s1, s2)                                          \
    do {                                                                                               \
        float ta_[TILE], tb_[TILE];                                                                    \
        double t1_ = 0.0, t2_ = 0.0, u_, v_;                                                           \
        for (ptrdiff_t i0_ = 0; i0_ < (n); i0_ += (TILE)) {                                            \
            ptrdiff_t k_ = (n) - i0_ < (TILE) ? (n) - i0_ : (TILE);                                    \
            fn_half_load(fmt, (a) + i0_, ta_, k_);                                                     \
            fn_half_load(fmt, (b) + i0_, tb_, k_);                                                     \
            SUMS(ta_, tb_, i0_, k_, &u_, &v_);                                                         \
            t1_ += u_;                                                                                 \
            t2_ += v_;                                                                                 \
        }                                                                                              \
        *(s1) = t1_;                                                                                   \
        *(s2) = t2_;                                                                                   \
    } while (0)

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

/* A block's FN_LANES float lanes as FN_RNV vectors of FN_RW lanes (fn_rv; FN_RV(op): the intrinsic): four 8-lane
 * vectors, or on AVX-512 two 16-lane ones (lanes 0-15, 16-31) with lane for lane the same sums, folded in the same
 * order (FN_RFOLD), so the same results on either target. FN_RLANE0(a, s): a with lane 0 set to s. */
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define FN_RW 16
#define FN_RV(op) _mm512_##op
typedef __m512 fn_rv;
#define FN_HI8(v) _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))
#define FN_RFOLD(a) fn_fold32(_mm512_castps512_ps256(a[0]), FN_HI8(a[0]), _mm512_castps512_ps256(a[1]), FN_HI8(a[1]))
#define FN_RLANE0(a, s) _mm512_mask_mov_ps(a, 1, _mm512_set1_ps(s))
#else
#define FN_RW 8
#define FN_RV(op) _mm256_##op
typedef __m256 fn_rv;
#define FN_RFOLD(a) fn_fold32(a[0], a[1], a[2], a[3])
#define FN_RLANE0(a, s) _mm256_blend_ps(a, _mm256_set1_ps(s), 1)
#endif
#define FN_RNV (FN_LANES / FN_RW)

/* Blocked sum of a float term: ACC(a, i) adds the term of elements i..i+FN_RW-1 into the vector a, SACC(s, i) the
 * term of element i into the float s (the block's tail, into lane 0 as in FN_BLOCKED_SUM). The terms read the row
 * through FN_LD(i) (elements i..i+FN_RW-1 as a float vector) and FN_LS(i) (element i as a float), which the
 * functions define: float32 rows here, 16-bit rows widened in registers in fastnorm_half_rows.h. PF(i): a statement
 * run with each vector's ACC (FN_NO_PF, or FN_PF: prefetch pf + i, the same place in another row). */
#define FN_NO_PF(i)
#define FN_PF(i) _mm_prefetch((const char *)(pf + (i)), _MM_HINT_T0)
#define FN_VSUM_PF(n, ACC, SACC, PF)                                                                   \
    double total = 0.0;                                                                                \
    ptrdiff_t i0 = 0;                                                                                  \
    /* two whole blocks at a time: twice the independent adds in flight (each lane's chain is one add's latency \
     * per step), the same sums folded in the same order */                                            \
    for (; i0 + 2 * FN_BLOCK <= (n); i0 += 2 * FN_BLOCK) {                                             \
        fn_rv a[FN_RNV], c[FN_RNV];                                                                    \
        for (int q = 0; q < FN_RNV; q++) a[q] = c[q] = FN_RV(setzero_ps)();                            \
        for (ptrdiff_t j = 0; j < FN_BLOCK; j += FN_LANES)                                             \
            for (int q = 0; q < FN_RNV; q++) {                                                         \
                ptrdiff_t i = i0 + j + FN_RW * q;                                                      \
                PF(i); ACC(a[q], i);                                                                   \
                PF(i + FN_BLOCK); ACC(c[q], i + FN_BLOCK);                                             \
            }                                                                                          \
        total += FN_RFOLD(a);                                                                          \
        total += FN_RFOLD(c);                                                                          \
    }                                                                                                  \
    for (; i0 < (n); i0 += FN_BLOCK) {                                                                 \
        ptrdiff_t m_ = (n) - i0 < FN_BLOCK ? (n) - i0 : FN_BLOCK, j = 0;                               \
        fn_rv a[FN_RNV];                                                                               \
        for (int q = 0; q < FN_RNV; q++) a[q] = FN_RV(setzero_ps)();                                   \
        for (; j + FN_LANES <= m_; j += FN_LANES)                                                      \
            for (int q = 0; q < FN_RNV; q++) { ptrdiff_t i = i0 + j + FN_RW * q; PF(i); ACC(a[q], i); } \
        if (j < m_) {                                                                                  \
            float s0 = FN_RV(cvtss_f32)(a[0]);                                                         \
            for (; j < m_; j++) { ptrdiff_t i = i0 + j; SACC(s0, i); }                                 \
            a[0] = FN_RLANE0(a[0], s0);                                                                \
        }                                                                                              \
        total += FN_RFOLD(a);                                                                          \
    }                                                                                                  \
    return total;
#define FN_VSUM(n, ACC, SACC) FN_VSUM_PF(n, ACC, SACC, FN_NO_PF)

#define FN_ACC_X(a, i) a = FN_RV(add_ps)(a, FN_LD(i))
#define FN_ACC_DEV(a, i) a = FN_RV(add_ps)(a, FN_RV(sub_ps)(FN_LD(i), vmu))
#define FN_ACC_SQDEV(a, i) { fn_rv d_ = FN_RV(sub_ps)(FN_LD(i), vmu); a = FN_RV(fmadd_ps)(d_, d_, a); }
#define FN_ACC_SQ(a, i) { fn_rv v_ = FN_LD(i); a = FN_RV(fmadd_ps)(v_, v_, a); }
#define FN_ACC_DOT(a, i) a = FN_RV(fmadd_ps)(FN_LD(i), FN_RV(loadu_ps)(y + (i)), a)
#define FN_S_X(s, i) s += FN_LS(i)
#define FN_S_DEV(s, i) s += FN_LS(i) - mu
#define FN_S_SQDEV(s, i) s = fmaf(FN_LS(i) - mu, FN_LS(i) - mu, s)
#define FN_S_SQ(s, i) s = fmaf(FN_LS(i), FN_LS(i), s)
#define FN_S_DOT(s, i) s = fmaf(FN_LS(i), y[i], s)

#if FN_RW == 16
/* Elements i..i+15 of a row p that starts s elements past a 64-byte boundary (pa = p - s), read as the two aligned
 * lines that hold them and shifted into place (idx = s, s+1, ..., s+15): the same vector as an unaligned load,
 * without the line-straddling accesses an unaligned AVX-512 load makes on every vector (NumPy puts large arrays 16
 * bytes past a page). The second line never crosses a page past the last element it serves. */
#define FN_LD_SHIFT(pa, idx, i) _mm512_permutex2var_ps(_mm512_load_ps((pa) + (i)), idx, _mm512_load_ps((pa) + (i) + 16))
#define FN_SHIFT_IDX(s) _mm512_add_epi32(_mm512_set1_epi32((int)(s)), \
                                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))
/* s of a float row read as shifted lines (FN_LD_SHIFT): its misalignment in elements, or 0 (aligned, an address
 * that is not a multiple of 4, or a row shorter than one block's lanes) for plain loads */
static inline ptrdiff_t fn_row_shift(const float *x, ptrdiff_t n) {
    return ((uintptr_t)x & 3) || n < FN_LANES ? 0 : (ptrdiff_t)(((uintptr_t)x & 63) >> 2);
}
#endif

/* The forward's float row sums, each defined twice below: with unaligned loads (suffix _u_f) and, on AVX-512, with
 * aligned lines shifted into place (_sh_f, a row s elements past a line): the same vectors, so the same sums. */
#define FN_FWD_SUMS(SUF, ...)                                                                          \
static inline double fn_sum_##SUF(const float *x, ptrdiff_t n, ##__VA_ARGS__) { FN_VSUM(n, FN_ACC_X, FN_S_X) } \
static inline double fn_sum_dev_##SUF(const float *x, ptrdiff_t n, float mu, ##__VA_ARGS__) {          \
    const fn_rv vmu = FN_RV(set1_ps)(mu);                                                              \
    FN_VSUM(n, FN_ACC_DEV, FN_S_DEV)                                                                   \
}                                                                                                      \
/* pf: NULL, or a row of at least n elements to prefetch as this one is read (the next row, while this one is in \
 * cache: its loads overlap this pass's arithmetic) */                                                 \
static inline double fn_sumsq_dev_##SUF(const float *x, ptrdiff_t n, float mu, const float *pf, ##__VA_ARGS__) { \
    const fn_rv vmu = FN_RV(set1_ps)(mu);                                                              \
    if (pf) {                                                                                          \
        FN_VSUM_PF(n, FN_ACC_SQDEV, FN_S_SQDEV, FN_PF)                                                 \
    }                                                                                                  \
    FN_VSUM(n, FN_ACC_SQDEV, FN_S_SQDEV)                                                               \
}                                                                                                      \
static inline double fn_sumsq_##SUF(const float *x, ptrdiff_t n, ##__VA_ARGS__) { FN_VSUM(n, FN_ACC_SQ, FN_S_SQ) }

#define FN_LS(i) x[i]
#define FN_LD(i) FN_RV(loadu_ps)(x + (i))
FN_FWD_SUMS(u_f)
static inline double fn_dot_f(const float *x, const float *y, ptrdiff_t n) { FN_VSUM(n, FN_ACC_DOT, FN_S_DOT) }
#undef FN_LD
#if FN_RW == 16
#define FN_LD(i) FN_LD_SHIFT(x - s, idx, i)
FN_FWD_SUMS(sh_f, ptrdiff_t s, __m512i idx)
#undef FN_LD
/* a row's sum through the shifted reader where fn_row_shift gives one, else through unaligned loads */
#define FN_FWD_SUM_CALL(NAME, x, n, ...)                                                               \
    ptrdiff_t s_ = fn_row_shift(x, n);                                                                 \
    return s_ ? NAME##_sh_f(x, n, ##__VA_ARGS__, s_, FN_SHIFT_IDX(s_)) : NAME##_u_f(x, n, ##__VA_ARGS__);
#else
#define FN_FWD_SUM_CALL(NAME, x, n, ...) return NAME##_u_f(x, n, ##__VA_ARGS__);
#endif
#undef FN_LS
static inline double fn_sum_f(const float *x, ptrdiff_t n) { return fn_sum_u_f(x, n); }
static inline double fn_sum_dev_f(const float *x, ptrdiff_t n, float mu) { FN_FWD_SUM_CALL(fn_sum_dev, x, n, mu) }
static inline double fn_sumsq_dev_f(const float *x, ptrdiff_t n, float mu, const float *pf) {
    FN_FWD_SUM_CALL(fn_sumsq_dev, x, n, mu, pf)
}
static inline double fn_sumsq_f(const float *x, ptrdiff_t n) { FN_FWD_SUM_CALL(fn_sumsq, x, n) }

/* s1 = sum(g), s2 = sum(g * (x - mu)), g = dy * w (w may be NULL: g = dy): FN_VSUM's blocks and lanes for both.
 * LDY(i), LX(i): dy[i..i+FN_RW-1], x[i..i+FN_RW-1] as float vectors; SDY(i), SX(i): dy[i], x[i] as float32 (a body
 * shared with the 16-bit rows of fastnorm_half_rows.h, which widen in registers: the same operations on the same
 * values). */
#define FN_BWD_SUMS_BODY(LDY, LX, SDY, SX)                                                             \
    const fn_rv vmu = FN_RV(set1_ps)(mu);                                                              \
    double t1 = 0.0, t2 = 0.0;                                                                         \
    for (ptrdiff_t i0 = 0; i0 < n; i0 += FN_BLOCK) {                                                   \
        ptrdiff_t m_ = n - i0 < FN_BLOCK ? n - i0 : FN_BLOCK, j = 0;                                   \
        fn_rv a[FN_RNV], b[FN_RNV];                                                                    \
        for (int q = 0; q < FN_RNV; q++) a[q] = b[q] = FN_RV(setzero_ps)();                            \
        for (; j + FN_LANES <= m_; j += FN_LANES)                                                      \
            for (int q = 0; q < FN_RNV; q++) {                                                         \
                ptrdiff_t i = i0 + j + FN_RW * q;                                                      \
                fn_rv g = LDY(i);                                                                      \
                if (w) g = FN_RV(mul_ps)(g, FN_RV(loadu_ps)(w + i));                                   \
                a[q] = FN_RV(add_ps)(a[q], g);                                                         \
                b[q] = FN_RV(fmadd_ps)(g, FN_RV(sub_ps)(LX(i), vmu), b[q]);                            \
            }                                                                                          \
        if (j < m_) {                                                                                  \
            float u = FN_RV(cvtss_f32)(a[0]), v = FN_RV(cvtss_f32)(b[0]);                              \
            for (; j < m_; j++) {                                                                      \
                ptrdiff_t i = i0 + j;                                                                  \
                float g = w ? SDY(i) * w[i] : SDY(i);                                                  \
                u += g;                                                                                \
                v = fmaf(g, SX(i) - mu, v);                                                            \
            }                                                                                          \
            a[0] = FN_RLANE0(a[0], u);                                                                 \
            b[0] = FN_RLANE0(b[0], v);                                                                 \
        }                                                                                              \
        t1 += FN_RFOLD(a);                                                                             \
        t2 += FN_RFOLD(b);                                                                             \
    }                                                                                                  \
    *s1 = t1; *s2 = t2;

/* fn_bwd_sums_f's readers of the two float rows: unaligned vectors, aligned lines shifted into place (FN_LD_SHIFT,
 * AVX-512), scalars for the tail */
#define FN_LDY_(i) FN_RV(loadu_ps)(dy + (i))
#define FN_LX_(i) FN_RV(loadu_ps)(x + (i))
#define FN_SDY_(i) dy[i]
#define FN_SX_(i) x[i]
#if FN_RW == 16
#define FN_LDY_SH_(i) FN_LD_SHIFT(dy - s, idx, i)
#define FN_LX_SH_(i) FN_LD_SHIFT(x - s, idx, i)

static inline void fn_bwd_sums_shift_f(const float *dy, const float *w, const float *x, float mu, ptrdiff_t n,
                                       double *s1, double *s2, ptrdiff_t s) {
    const __m512i idx = FN_SHIFT_IDX(s);
    FN_BWD_SUMS_BODY(FN_LDY_SH_, FN_LX_SH_, FN_SDY_, FN_SX_)
}
#undef FN_LDY_SH_
#undef FN_LX_SH_
#endif

static inline void fn_bwd_sums_f(const float *dy, const float *w, const float *x, float mu, ptrdiff_t n, double *s1,
                                 double *s2) {
#if FN_RW == 16
    /* dy and x equally misaligned (as NumPy's arrays are): aligned loads shifted into place */
    ptrdiff_t s = (ptrdiff_t)(((uintptr_t)dy & 63) >> 2);
    if (s && ((uintptr_t)x & 63) == ((uintptr_t)dy & 63) && !((uintptr_t)dy & 3) && n >= FN_LANES) {
        fn_bwd_sums_shift_f(dy, w, x, mu, n, s1, s2, s);
        return;
    }
#endif
    FN_BWD_SUMS_BODY(FN_LDY_, FN_LX_, FN_SDY_, FN_SX_)
}
#undef FN_LDY_
#undef FN_LX_
#undef FN_SDY_
#undef FN_SX_
#endif

/* sum(x^2) of a float array that neither overflows nor loses the tiny terms: the fast float-lane sum when
 * its result is in [1e-28, 1e38], else a sum of the squares taken in double (|x| above ~1.8e19 overflows a
 * float square; below ~1e-19 the squares are subnormal). NaN stays NaN either way. */
static inline double fn_sumsq_wide_f(const float *x, ptrdiff_t n) {
    FN_BLOCKED_SUM(double, n, (double)x[i] * (double)x[i])
}
/* the range in which the float-lane sum of squares is kept */
#define FN_SUMSQ_SAFE(s) ((s) >= 1e-28 && (s) <= 1e38)
static inline double fn_sumsq_safe_f(const float *x, ptrdiff_t n) {
    double s = fn_sumsq_f(x, n);
    return FN_SUMSQ_SAFE(s) ? s : fn_sumsq_wide_f(x, n);
}

#endif
