/* LayerNorm / RMSNorm row passes over 16-bit data that convert in registers (AVX2 + FMA, F16C).
 *
 * No float32 copy of a row: the statistics are fastnorm_moments.h's reductions with the 16-bit elements widened
 * as they are loaded (the same lanes and order, so the same sums as on a widened row); the output is computed
 * and rounded a vector at a time and stored as 16-bit; the fused residual add converts x and residual, adds,
 * rounds h and stores it, and a copy into a thread's 16-bit row buffer (L1) that the statistics and the output
 * pass read (h itself may be streamed past the cache). The arithmetic is the float32 row code's, operation
 * for operation, including the fused multiply-adds gcc forms from it on these targets ((x - mu) * rs * w + b ->
 * fma(t, w, b); (x - mu) * rs + b -> fma(x - mu, rs, b)), so the statistics and outputs are bitwise those of the
 * float32 kernel on the widened row, rounded once (tests/test_layer_norm_half.py). The backward reads its 16-bit
 * rows the same way: see "backward" below. With AVX-512 F/BW (FN_HALF_Z) the loops take sixteen elements per
 * vector, lane for lane the 8-lane operations. FN_HALF_ROWS is 0 where the target lacks AVX2/FMA/F16C: the
 * kernels then widen blocks of a row into the stack (L1) and run the float32 code on them.
 */
#ifndef FASTNORM_HALF_ROWS_H
#define FASTNORM_HALF_ROWS_H
#include <math.h>
#include "fastnorm_half.h"
#include "fastnorm_moments.h"
#include "fastnorm_rows.h"
#include "fastnorm_stream.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define FN_HALF_ROWS 1

#if defined(__GNUC__)
#define FN_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define FN_ALWAYS_INLINE static inline
#endif

/* 8 x 16-bit -> 8 x float32 (exact) */
FN_ALWAYS_INLINE __m256 fn_half_widen8(int fmt, __m128i h) {
    if (fmt == FN_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* float32 -> bfloat16 bits in the low half of each 32-bit lane: fn_f32_to_bf16 lane by lane */
FN_ALWAYS_INLINE __m256i fn_bf16_lanes8(__m256 v) {
    __m256i u = _mm256_castps_si256(v);
    __m256i hi = _mm256_srli_epi32(u, 16);
    __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), _mm256_and_si256(hi, _mm256_set1_epi32(1))),
        16);
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
}

/* 8 x float32 -> 8 x 16-bit, round to nearest even, NaN kept (F16C for f16) */
FN_ALWAYS_INLINE __m128i fn_half_round8(int fmt, __m256 v) {
    if (fmt == FN_BF16) {
        __m256i r = fn_bf16_lanes8(v);
        /* every lane <= 0xffff: the unsigned-saturating pack is exact; it packs per 128-bit half */
        return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8));
    }
    return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
}

/* 16 x float32 (v0: the first 8) -> 16 x 16-bit: one pack and one permute for both halves */
FN_ALWAYS_INLINE __m256i fn_half_round16(int fmt, __m256 v0, __m256 v1) {
    if (fmt == FN_BF16)
        return _mm256_permute4x64_epi64(_mm256_packus_epi32(fn_bf16_lanes8(v0), fn_bf16_lanes8(v1)), 0xD8);
    return _mm256_set_m128i(_mm256_cvtps_ph(v1, _MM_FROUND_TO_NEAREST_INT),
                            _mm256_cvtps_ph(v0, _MM_FROUND_TO_NEAREST_INT));
}

FN_ALWAYS_INLINE __m128i fn_half_ld8(const uint16_t *p) { return _mm_loadu_si128((const __m128i *)p); }
FN_ALWAYS_INLINE void fn_half_st8(uint16_t *p, __m128i h) { _mm_storeu_si128((__m128i *)p, h); }

/* V(op): the 8-lane (FN_Y) or 16-lane (FN_Z) intrinsic of an operation, for expressions written once for both */
#define FN_Y(op) _mm256_##op

#if defined(__AVX512F__) && defined(__AVX512BW__)
/* AVX-512: sixteen elements per vector (the same operations lane by lane, so the same bits as the 8-lane code) */
#define FN_HALF_Z 1
#define FN_Z(op) _mm512_##op

/* 16 x 16-bit -> 16 x float32 (exact) */
FN_ALWAYS_INLINE __m512 fn_half_widen16z(int fmt, __m256i h) {
    if (fmt == FN_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* 16 x float32 -> 16 x 16-bit: fn_f32_to_bf16 lane by lane (every lane <= 0xffff: vpmovdw's truncation is exact) */
FN_ALWAYS_INLINE __m256i fn_half_round16z(int fmt, __m512 v) {
    if (fmt == FN_BF16) {
        __m512i u = _mm512_castps_si512(v);
        __m512i hi = _mm512_srli_epi32(u, 16);
        __m512i r = _mm512_srli_epi32(
            _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), _mm512_and_si512(hi, _mm512_set1_epi32(1))),
            16);
        r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
        return _mm512_cvtepi32_epi16(r);
    }
    return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
}

FN_ALWAYS_INLINE __m256i fn_half_ld16(const uint16_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
/* the reductions' vector (fastnorm_moments.h's fn_rv) of 16-bit elements p[0..FN_RW-1] */
#define FN_HALF_LDR(fmt, p) fn_half_widen16z(fmt, fn_half_ld16(p))
#else
#define FN_HALF_Z 0
#define FN_HALF_LDR(fmt, p) fn_half_widen8(fmt, fn_half_ld8(p))
#endif
#if FN_HALF_Z != (FN_RW == 16)
#error "fastnorm_half_rows.h: the 16-lane loops and the 16-lane reductions need the same target"
#endif

/* ------------------------------------------------------------------------------------------ statistics
 * fastnorm_moments.h's reductions on a 16-bit row widened in registers: the same lanes, blocks, operations and
 * fold order on the same values, so the results of fn_sum_dev_f, fn_sumsq_dev_f, fn_sumsq_safe_f on the widened
 * row. The format is a constant in each body (the widening without a per-vector test). */
#define FN_LD(i) FN_HALF_LDR(fmt, x + (i))
#define FN_LS(i) fn_half_to_f32(fmt, x[i])
#define FN_HALF_VSUM_(ACC, SACC, PF)                                                                   \
    if (fmt == FN_BF16) {                                                                              \
        const int fmt = FN_BF16;                                                                       \
        FN_VSUM_PF(n, ACC, SACC, PF)                                                                   \
    } else {                                                                                           \
        const int fmt = FN_F16;                                                                        \
        FN_VSUM_PF(n, ACC, SACC, PF)                                                                   \
    }
static inline double fn_half_sum_dev(int fmt, const uint16_t *x, ptrdiff_t n, float mu) {
    const fn_rv vmu = FN_RV(set1_ps)(mu);
    FN_HALF_VSUM_(FN_ACC_DEV, FN_S_DEV, FN_NO_PF)
}
/* pf: as fn_sumsq_dev_f's */
static inline double fn_half_sumsq_dev(int fmt, const uint16_t *x, ptrdiff_t n, float mu, const uint16_t *pf) {
    const fn_rv vmu = FN_RV(set1_ps)(mu);
    if (pf) {
        FN_HALF_VSUM_(FN_ACC_SQDEV, FN_S_SQDEV, FN_PF)
    }
    FN_HALF_VSUM_(FN_ACC_SQDEV, FN_S_SQDEV, FN_NO_PF)
}
static inline double fn_half_sumsq(int fmt, const uint16_t *x, ptrdiff_t n) {
    FN_HALF_VSUM_(FN_ACC_SQ, FN_S_SQ, FN_NO_PF)
}
#undef FN_HALF_VSUM_
#undef FN_LD
#undef FN_LS

/* The output pass: y = (x - mu) * rs * w + b (w, b may be NULL: that factor/term absent; RMSNorm: rms, mu = 0, b NULL)
 * a vector at a time. gcc reassociates the float32 loops (-fassociative-math) to (x - mu) * (rs * w) [+ b as an FMA]
 * and contracts (x - mu) * rs + b to fma(x - mu, rs, b); RMSNorm's x * rs * w to x * (rs * w): the same operations
 * here (bitwise checked). EXPR(V, j): the vector of elements j.. (V: FN_Y, 8 lanes, or FN_Z, 16), SEXPR(j): element
 * j, reading x through FN_XV_FN_Y(j), FN_XV_FN_Z(j), FN_XS_(j), which each pass defines. */
#define FN_X_(V, j) FN_XV_##V(j)
#define FN_D_(V, j) V(sub_ps)(FN_X_(V, j), V(set1_ps)(mu))
#define FN_T_(V, j) V(mul_ps)(V(set1_ps)(rs), V(loadu_ps)(w + (j)))
#define FN_WB_(V, j) V(fmadd_ps)(FN_D_(V, j), FN_T_(V, j), V(loadu_ps)(b + (j)))
#define FN_W_(V, j) V(mul_ps)(FN_D_(V, j), FN_T_(V, j))
#define FN_B_(V, j) V(fmadd_ps)(FN_D_(V, j), V(set1_ps)(rs), V(loadu_ps)(b + (j)))
#define FN_0_(V, j) V(mul_ps)(FN_D_(V, j), V(set1_ps)(rs))
#define FN_R_(V, j) V(mul_ps)(FN_X_(V, j), FN_T_(V, j))
#define FN_SR_(j) (FN_XS_(j) * (rs * w[j]))
#define FN_SWB_(j) fmaf(FN_XS_(j) - mu, rs * w[j], b[j])
#define FN_SW_(j) ((FN_XS_(j) - mu) * (rs * w[j]))
#define FN_SB_(j) fmaf(FN_XS_(j) - mu, rs, b[j])
#define FN_S0_(j) ((FN_XS_(j) - mu) * rs)
/* LOOP(EXPR, SEXPR) for the row's case */
#define FN_OUT_CASES(LOOP)                                                                             \
    if (rms && w) {                                                                                    \
        LOOP(FN_R_, FN_SR_)                                                                            \
    } else if (w && b) {                                                                               \
        LOOP(FN_WB_, FN_SWB_)                                                                          \
    } else if (w) {                                                                                    \
        LOOP(FN_W_, FN_SW_)                                                                            \
    } else if (b) {                                                                                    \
        LOOP(FN_B_, FN_SB_)                                                                            \
    } else {                                                                                           \
        LOOP(FN_0_, FN_S0_)                                                                            \
    }

/* y[j..] = round(EXPR(j)) sixteen, then eight elements at a time, then one; nt: the 32-byte-aligned 16-element
 * stores stream (the elements before the first aligned one are stored one at a time) */
#if FN_HALF_Z
#define FN_HALF_OUT16_(EXPR, j) fn_half_round16z(fmt, EXPR(FN_Z, j))
#else
#define FN_HALF_OUT16_(EXPR, j) fn_half_round16(fmt, EXPR(FN_Y, j), EXPR(FN_Y, (j) + 8))
#endif
#define FN_HALF_OUT_LOOP(EXPR, SEXPR)                                                                 \
    if (nt) {                                                                                          \
        for (; j < n && ((uintptr_t)(y + j) & 31u); j++) y[j] = fn_f32_to_half(fmt, SEXPR(j));       \
        for (; j + 16 <= n; j += 16) _mm256_stream_si256((__m256i *)(y + j), FN_HALF_OUT16_(EXPR, j)); \
    }                                                                                                  \
    for (; j + 16 <= n; j += 16) _mm256_storeu_si256((__m256i *)(y + j), FN_HALF_OUT16_(EXPR, j));    \
    for (; j + 8 <= n; j += 8) fn_half_st8(y + j, fn_half_round8(fmt, EXPR(FN_Y, j)));                \
    for (; j < n; j++) y[j] = fn_f32_to_half(fmt, SEXPR(j));

FN_ALWAYS_INLINE void fn_half_norm_out_fmt(int fmt, const uint16_t *x, const float *w, const float *b, uint16_t *y,
                                           float mu, float rs, int rms, int nt, ptrdiff_t n) {
    ptrdiff_t j = 0;
#define FN_XV_FN_Y(j) fn_half_widen8(fmt, fn_half_ld8(x + (j)))
#define FN_XV_FN_Z(j) fn_half_widen16z(fmt, fn_half_ld16(x + (j)))
#define FN_XS_(j) fn_half_to_f32(fmt, x[j])
    FN_OUT_CASES(FN_HALF_OUT_LOOP)
#undef FN_XV_FN_Y
#undef FN_XV_FN_Z
#undef FN_XS_
}

/* y = half(the output), 16-bit x; nt: stream y (callers: outputs larger than the last-level cache; fn_sfence()
 * before the parallel region ends) */
FN_ALWAYS_INLINE void fn_half_norm_out(int fmt, const uint16_t *x, const float *w, const float *b, uint16_t *y, float mu,
                                      float rs, int rms, int nt, ptrdiff_t n) {
    if (fmt == FN_BF16) fn_half_norm_out_fmt(FN_BF16, x, w, b, y, mu, rs, rms, nt, n);
    else fn_half_norm_out_fmt(FN_F16, x, w, b, y, mu, rs, rms, nt, n);
}

/* The float32 output pass (float32 x, y; the same operations): FN_RW elements at a time, then eight, then one;
 * nt: y streamed from its first 64-byte boundary on (fn_sfence() before the parallel region ends). On AVX-512, a
 * row whose x and y are equally misaligned (NumPy's page+16 arrays; FN_OUT_PEEL) has its elements before y's first
 * 64-byte boundary stored as the masked first vector (computed as the whole row's vectors are: the same bits), and
 * the rest from there: x's loads and y's stores then each touch one cache line, not two. Not RMSNorm rows: gcc
 * compiles their scalar tail to other roundings than the vectors', so moving the tail would change bits. */
#if FN_HALF_Z
#define FN_F32_OUT_(EXPR, j) EXPR(FN_Z, j)
#define FN_OUT_PEEL(x, y, n) ((n) >= FN_RW && !((uintptr_t)(y) & 3u) && !((((uintptr_t)(x)) ^ ((uintptr_t)(y))) & 63u))
#define FN_OUT_HEAD(EXPR)                                                                              \
    j = (ptrdiff_t)((((uintptr_t)0 - (uintptr_t)y) & 63u) >> 2);                                       \
    if (j) _mm512_mask_storeu_ps(y, (__mmask16)((1u << j) - 1u), FN_F32_OUT_(EXPR, 0));
#else
#define FN_F32_OUT_(EXPR, j) EXPR(FN_Y, j)
#define FN_OUT_PEEL(x, y, n) 0
#define FN_OUT_HEAD(EXPR)
#endif
#define FN_F32_OUT_LOOP(EXPR, SEXPR)                                                                   \
    if (nt) {                                                                                          \
        for (; j < n && ((uintptr_t)(y + j) & (4u * FN_RW - 1u)); j++) y[j] = SEXPR(j);                \
        for (; j + FN_RW <= n; j += FN_RW) FN_RV(stream_ps)(y + j, FN_F32_OUT_(EXPR, j));              \
    } else if (!rms && FN_OUT_PEEL(x, y, n)) {                                                         \
        FN_OUT_HEAD(EXPR)                                                                              \
    }                                                                                                  \
    for (; j + FN_RW <= n; j += FN_RW) FN_RV(storeu_ps)(y + j, FN_F32_OUT_(EXPR, j));                  \
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, EXPR(FN_Y, j));                                \
    for (; j < n; j++) y[j] = SEXPR(j);

static inline void fn_norm_out_f(const float *x, const float *w, const float *b, float *y, float mu, float rs,
                                 int rms, int nt, ptrdiff_t n) {
    ptrdiff_t j = 0;
#define FN_XV_FN_Y(j) _mm256_loadu_ps(x + (j))
#define FN_XV_FN_Z(j) _mm512_loadu_ps(x + (j))
#define FN_XS_(j) x[j]
    FN_OUT_CASES(FN_F32_OUT_LOOP)
#undef FN_XV_FN_Y
#undef FN_XV_FN_Z
#undef FN_XS_
}

/* h = half(x + r) (16-bit rows) and a copy hb of h (a thread's row buffer, read by the statistics and the output
 * pass), in one pass; nt: h streamed from its first 16-byte boundary on */
FN_ALWAYS_INLINE void fn_half_add_row_fmt(int fmt, const uint16_t *x, const uint16_t *r, uint16_t *h, uint16_t *hb,
                                          int nt, ptrdiff_t n) {
    ptrdiff_t j = 0;
#define FN_ADD1_(j) h[j] = hb[j] = fn_f32_to_half(fmt, fn_half_to_f32(fmt, x[j]) + fn_half_to_f32(fmt, r[j]));
/* elements j.. one vector (V, VT: FN_Y/__m256 or FN_Z/__m512) at a time; the rounded h as QT */
#define FN_ADDV_(j, STORE, STOREU, V, VT, QT, LD, WIDEN, ROUND)                                        \
    {                                                                                                  \
        VT s = V(add_ps)(WIDEN(fmt, LD(x + j)), WIDEN(fmt, LD(r + j)));                                \
        QT q = ROUND(fmt, s);                                                                          \
        STORE((QT *)(h + j), q);                                                                       \
        STOREU((QT *)(hb + j), q);                                                                     \
    }
#define FN_ADD8_(j, STORE)                                                                             \
    FN_ADDV_(j, STORE, _mm_storeu_si128, FN_Y, __m256, __m128i, fn_half_ld8, fn_half_widen8, fn_half_round8)
#if FN_HALF_Z
#define FN_ADD16_(j, STORE)                                                                            \
    FN_ADDV_(j, STORE, _mm256_storeu_si256, FN_Z, __m512, __m256i, fn_half_ld16, fn_half_widen16z, fn_half_round16z)
    if (nt) {
        for (; j < n && ((uintptr_t)(h + j) & 31u); j++) { FN_ADD1_(j) }
        for (; j + 16 <= n; j += 16) FN_ADD16_(j, _mm256_stream_si256)
    }
    for (; j + 16 <= n; j += 16) FN_ADD16_(j, _mm256_storeu_si256)
#undef FN_ADD16_
#else
    if (nt) {
        for (; j < n && ((uintptr_t)(h + j) & 15u); j++) { FN_ADD1_(j) }
        for (; j + 8 <= n; j += 8) FN_ADD8_(j, _mm_stream_si128)
    }
#endif
    for (; j + 8 <= n; j += 8) FN_ADD8_(j, _mm_storeu_si128)
    for (; j < n; j++) { FN_ADD1_(j) }
#undef FN_ADD1_
#undef FN_ADD8_
#undef FN_ADDV_
}

static inline void fn_half_add_row(int fmt, const uint16_t *x, const uint16_t *r, uint16_t *h, uint16_t *hb, int nt,
                                   ptrdiff_t n) {
    if (fmt == FN_BF16) fn_half_add_row_fmt(FN_BF16, x, r, h, hb, nt, n);
    else fn_half_add_row_fmt(FN_F16, x, r, h, hb, nt, n);
}

/* ------------------------------------------------------------------------------------------ backward
 * The backward row on 16-bit dy, x (and dh) widened in registers; w and the dweight/dbias accumulator rows are
 * float32. Sums: fn_bwd_sums_f's body on the widened vectors (the same operations on the same values). dx:
 * fn_ln_bwd_apply_f / fn_rms_bwd_apply_f (fastnorm_rows.h) as gcc compiles them on these targets, operation for
 * operation (its contractions and reassociations, read off the generated code; checked bitwise):
 *   LayerNorm, w, dwa, dba (one loop):  xh = (x - mu) * rs;  u = t - xh * c2 (fused), t = dy * w - c1 (fused);
 *                                       dwa = fma(xh, dy, dwa);  dba += dy
 *   LayerNorm, other cases:             u = fma(mu - x, rs * c2, t), t = dy * w - c1 (fused) or dy - c1;
 *                                       dwa = fma(rs * dy, x - mu, dwa);  dba += dy
 *   RMSNorm:                            u = dy * w - x * c2 (fused after x * c2) or dy - x * c2 (fused);
 *                                       dwa = fma(dy * x, rs, dwa)
 *   dx = fma(rs, u, dh) with dh, else rs * u; rounded once. */
static inline void fn_half_bwd_sums(int fmt, const uint16_t *dy, const float *w, const uint16_t *x, float mu,
                                    ptrdiff_t n, double *s1, double *s2) {
#define FN_LDY_(i) FN_HALF_LDR(fmt, dy + (i))
#define FN_LX_(i) FN_HALF_LDR(fmt, x + (i))
#define FN_SDY_(i) fn_half_to_f32(fmt, dy[i])
#define FN_SX_(i) fn_half_to_f32(fmt, x[i])
    if (fmt == FN_BF16) {
        const int fmt = FN_BF16; /* constant in the body: the widening without a per-vector test */
        FN_BWD_SUMS_BODY(FN_LDY_, FN_LX_, FN_SDY_, FN_SX_)
    } else {
        const int fmt = FN_F16;
        FN_BWD_SUMS_BODY(FN_LDY_, FN_LX_, FN_SDY_, FN_SX_)
    }
#undef FN_LDY_
#undef FN_LX_
#undef FN_SDY_
#undef FN_SX_
}

/* dx of the elements at the pointers (8 with FN_Y, 16 with FN_Z; w, dh, dwa, dba may be NULL), the accumulators
 * updated; aff: LayerNorm with w, dwa and dba (fastnorm_rows.h's one-loop case) */
#define FN_DEFINE_HALF_BWD(NAME, VT, V, LOAD)                                                          \
FN_ALWAYS_INLINE VT NAME(int fmt, int rms, int aff, const uint16_t *dy, const uint16_t *x, const uint16_t *dh, \
                         const float *w, float *dwa, float *dba, float mu, float rs, float c1, float c2) { \
    const VT vmu = V(set1_ps)(mu), vrs = V(set1_ps)(rs), vc1 = V(set1_ps)(c1), vc2 = V(set1_ps)(c2);   \
    VT d = LOAD(fmt, dy), xv = LOAD(fmt, x), u;                                                        \
    if (rms) {                                                                                         \
        u = w ? V(fmsub_ps)(d, V(loadu_ps)(w), V(mul_ps)(xv, vc2)) : V(fnmadd_ps)(xv, vc2, d);         \
        if (dwa) V(storeu_ps)(dwa, V(fmadd_ps)(V(mul_ps)(d, xv), vrs, V(loadu_ps)(dwa)));              \
    } else if (aff) {                                                                                  \
        VT xh = V(mul_ps)(V(sub_ps)(xv, vmu), vrs);                                                    \
        u = V(fnmadd_ps)(xh, vc2, V(fmsub_ps)(d, V(loadu_ps)(w), vc1));                                \
        V(storeu_ps)(dwa, V(fmadd_ps)(xh, d, V(loadu_ps)(dwa)));                                       \
        V(storeu_ps)(dba, V(add_ps)(V(loadu_ps)(dba), d));                                             \
    } else {                                                                                           \
        VT t = w ? V(fmsub_ps)(d, V(loadu_ps)(w), vc1) : V(sub_ps)(d, vc1);                            \
        u = V(fmadd_ps)(V(sub_ps)(vmu, xv), V(set1_ps)(rs * c2), t);                                   \
        if (dwa) V(storeu_ps)(dwa, V(fmadd_ps)(V(mul_ps)(vrs, d), V(sub_ps)(xv, vmu), V(loadu_ps)(dwa))); \
        if (dba) V(storeu_ps)(dba, V(add_ps)(V(loadu_ps)(dba), d));                                    \
    }                                                                                                  \
    return dh ? V(fmadd_ps)(vrs, u, LOAD(fmt, dh)) : V(mul_ps)(vrs, u);                                \
}
#define FN_LOAD8_(fmt, p) fn_half_widen8(fmt, fn_half_ld8(p))
FN_DEFINE_HALF_BWD(fn_half_bwd8, __m256, FN_Y, FN_LOAD8_)
#if FN_HALF_Z
#define FN_LOAD16_(fmt, p) fn_half_widen16z(fmt, fn_half_ld16(p))
FN_DEFINE_HALF_BWD(fn_half_bwd16z, __m512, FN_Z, FN_LOAD16_)
#endif

#define FN_AT_(p, j) ((p) ? (p) + (j) : NULL)

/* elements [j0, j0 + k) of the row, k < 16, through zero-padded 8-element copies (the vector operations) */
FN_ALWAYS_INLINE void fn_half_bwd_part(int fmt, int rms, int aff, const uint16_t *dy, const uint16_t *x,
                                       const uint16_t *dh, const float *w, uint16_t *dx, float *dwa, float *dba,
                                       float mu, float rs, float c1, float c2, ptrdiff_t j0, ptrdiff_t k) {
    for (ptrdiff_t j = j0; j < j0 + k; j += 8) {
        int m = j0 + k - j < 8 ? (int)(j0 + k - j) : 8;
        uint16_t pdy[8] = {0}, px[8] = {0}, pdh[8] = {0}, out[8];
        float pw[8] = {0}, pwa[8] = {0}, pba[8] = {0};
        for (int q = 0; q < m; q++) {
            pdy[q] = dy[j + q]; px[q] = x[j + q];
            if (dh) pdh[q] = dh[j + q];
            if (w) pw[q] = w[j + q];
            if (dwa) pwa[q] = dwa[j + q];
            if (dba) pba[q] = dba[j + q];
        }
        fn_half_st8(out, fn_half_round8(fmt, fn_half_bwd8(fmt, rms, aff, pdy, px, dh ? pdh : NULL, w ? pw : NULL,
                                                          dwa ? pwa : NULL, dba ? pba : NULL, mu, rs, c1, c2)));
        for (int q = 0; q < m; q++) {
            dx[j + q] = out[q];
            if (dwa) dwa[j + q] = pwa[q];
            if (dba) dba[j + q] = pba[q];
        }
    }
}

FN_ALWAYS_INLINE void fn_half_bwd_apply_fmt(int fmt, int rms, int aff, const uint16_t *dy, const uint16_t *x,
                                            const uint16_t *dh, const float *w, uint16_t *dx, float *dwa, float *dba,
                                            float mu, float rs, float c1, float c2, int nt, ptrdiff_t n) {
    ptrdiff_t j = 0;
#define FN_ARGS_(j) fmt, rms, aff, dy + (j), x + (j), FN_AT_(dh, j), FN_AT_(w, j), FN_AT_(dwa, j), FN_AT_(dba, j), \
                    mu, rs, c1, c2
#if FN_HALF_Z
#define FN_B16_(j) fn_half_round16z(fmt, fn_half_bwd16z(FN_ARGS_(j)))
#else
#define FN_B16_(j) fn_half_round16(fmt, fn_half_bwd8(FN_ARGS_(j)), fn_half_bwd8(FN_ARGS_((j) + 8)))
#endif
    if (nt && !((uintptr_t)dx & 1u)) {
        /* the elements before dx's first 32-byte boundary, then 16 at a time streamed */
        ptrdiff_t h = (ptrdiff_t)(((32u - ((uintptr_t)dx & 31u)) & 31u) / 2u);
        if (h > n) h = n;
        if (h) fn_half_bwd_part(fmt, rms, aff, dy, x, dh, w, dx, dwa, dba, mu, rs, c1, c2, 0, h);
        for (j = h; j + 16 <= n; j += 16) _mm256_stream_si256((__m256i *)(dx + j), FN_B16_(j));
    }
    for (; j + 16 <= n; j += 16) _mm256_storeu_si256((__m256i *)(dx + j), FN_B16_(j));
    if (j < n) fn_half_bwd_part(fmt, rms, aff, dy, x, dh, w, dx, dwa, dba, mu, rs, c1, c2, j, n - j);
#undef FN_B16_
#undef FN_ARGS_
}

/* dx of one backward row (c1, c2 given; c1 unused by RMSNorm), rounded once; nt: 32-byte aligned 16-element
 * groups of dx streamed (fn_sfence() before the parallel region ends) */
static inline void fn_half_bwd_apply(int fmt, const uint16_t *dy, const uint16_t *x, const uint16_t *dh,
                                     const float *w, uint16_t *dx, float *dwa, float *dba, float mu, float rs,
                                     float c1, float c2, int rms, int nt, ptrdiff_t n) {
    int aff = !rms && w && dwa && dba;
#define FN_CALL_(F, R, A) fn_half_bwd_apply_fmt(F, R, A, dy, x, dh, w, dx, dwa, dba, mu, rs, c1, c2, nt, n)
    if (fmt == FN_BF16) {
        if (rms) FN_CALL_(FN_BF16, 1, 0);
        else if (aff) FN_CALL_(FN_BF16, 0, 1);
        else FN_CALL_(FN_BF16, 0, 0);
    } else {
        if (rms) FN_CALL_(FN_F16, 1, 0);
        else if (aff) FN_CALL_(FN_F16, 0, 1);
        else FN_CALL_(FN_F16, 0, 0);
    }
#undef FN_CALL_
}
#undef FN_AT_

#else
#define FN_HALF_ROWS 0
/* Portable: the float32 results FN_HALF_BLOCK elements at a time into a stack block (L1), rounded from there
 * (fn_half_store vectorizes the bfloat16 rounding; a per-element select + narrowing does not). */
#define FN_HALF_BLOCK 256

/* y = the output of n elements of a float32 row x: the float32 row code's expressions as written (rms: x * rs * w),
 * which gcc compiles as it does those */
static inline void fn_out_block_f(const float *x, const float *w, const float *b, float *y, float mu, float rs, int rms,
                                  ptrdiff_t n) {
    if (rms && w) for (ptrdiff_t j = 0; j < n; j++) y[j] = x[j] * rs * w[j];
    else if (rms) for (ptrdiff_t j = 0; j < n; j++) y[j] = x[j] * rs;
    else if (w && b) for (ptrdiff_t j = 0; j < n; j++) y[j] = (x[j] - mu) * rs * w[j] + b[j];
    else if (w) for (ptrdiff_t j = 0; j < n; j++) y[j] = (x[j] - mu) * rs * w[j];
    else if (b) for (ptrdiff_t j = 0; j < n; j++) y[j] = (x[j] - mu) * rs + b[j];
    else for (ptrdiff_t j = 0; j < n; j++) y[j] = (x[j] - mu) * rs;
}

static inline void fn_half_norm_out(int fmt, const uint16_t *x, const float *w, const float *b, uint16_t *y, float mu,
                                    float rs, int rms, int nt, ptrdiff_t n) {
    float t[FN_HALF_BLOCK], xj[FN_HALF_BLOCK];
    (void)nt; /* regular stores */
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FN_HALF_BLOCK) {
        ptrdiff_t k = n - j0 < FN_HALF_BLOCK ? n - j0 : FN_HALF_BLOCK;
        fn_half_load(fmt, x + j0, xj, k);
        fn_out_block_f(xj, w ? w + j0 : NULL, b ? b + j0 : NULL, t, mu, rs, rms, k);
        fn_half_store(fmt, t, y + j0, k);
    }
}

/* The float32 output pass; nt: computed FN_HALF_BLOCK elements at a time into L1 and streamed (the first block ends
 * on a 32-byte boundary of y, so every later one streams whole; fn_sfence() before the parallel region ends) */
static inline void fn_norm_out_f(const float *x, const float *w, const float *b, float *y, float mu, float rs,
                                 int rms, int nt, ptrdiff_t n) {
    float t[FN_HALF_BLOCK];
    ptrdiff_t j0 = 0, k = FN_HALF_BLOCK - fn_stream_head_f(y);
    if (!nt) {
        fn_out_block_f(x, w, b, y, mu, rs, rms, n);
        return;
    }
    for (; j0 < n; j0 += k, k = FN_HALF_BLOCK) {
        if (k > n - j0) k = n - j0;
        fn_out_block_f(x + j0, w ? w + j0 : NULL, b ? b + j0 : NULL, t, mu, rs, rms, k);
        fn_stream_store_f(t, y + j0, k);
    }
}

static inline void fn_half_add_row(int fmt, const uint16_t *x, const uint16_t *r, uint16_t *h, uint16_t *hb, int nt,
                                   ptrdiff_t n) {
    float t[FN_HALF_BLOCK], u[FN_HALF_BLOCK];
    (void)nt;
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FN_HALF_BLOCK) {
        ptrdiff_t k = n - j0 < FN_HALF_BLOCK ? n - j0 : FN_HALF_BLOCK;
        fn_half_load(fmt, x + j0, u, k);
        fn_half_load(fmt, r + j0, t, k);
        for (ptrdiff_t j = 0; j < k; j++) t[j] += u[j];
        fn_half_store(fmt, t, h + j0, k);
        memcpy(hb + j0, h + j0, (size_t)k * sizeof(uint16_t));
    }
}

/* Portable statistics: fastnorm_moments.h's reductions on FN_BLOCK-element tiles widened into the stack, one call
 * per tile (one of their blocks: the same lanes and order), the tiles' sums added in order as their blocks' are. */
#define FN_HALF_TILED_SUM_(CALL)                                                                       \
    float t[FN_BLOCK];                                                                                 \
    double total = 0.0;                                                                                \
    for (ptrdiff_t i0 = 0; i0 < n; i0 += FN_BLOCK) {                                                   \
        ptrdiff_t k = n - i0 < FN_BLOCK ? n - i0 : FN_BLOCK;                                           \
        fn_half_load(fmt, x + i0, t, k);                                                               \
        total += CALL;                                                                                 \
    }                                                                                                  \
    return total;
static inline double fn_half_sum_dev(int fmt, const uint16_t *x, ptrdiff_t n, float mu) {
    FN_HALF_TILED_SUM_(fn_sum_dev_f(t, k, mu))
}
static inline double fn_half_sumsq_dev(int fmt, const uint16_t *x, ptrdiff_t n, float mu, const uint16_t *pf) {
    (void)pf;
    FN_HALF_TILED_SUM_(fn_sumsq_dev_f(t, k, mu, NULL))
}
static inline double fn_half_sumsq(int fmt, const uint16_t *x, ptrdiff_t n) { FN_HALF_TILED_SUM_(fn_sumsq_f(t, k)) }
#undef FN_HALF_TILED_SUM_
/* Portable backward: the float32 row functions on FN_HALF_BLOCK-element blocks widened into the stack (L1);
 * the sums block by block as fn_bwd_sums_f's own blocks (FN_BLOCK), so the same values in the same order. */
static inline void fn_half_bwd_sums(int fmt, const uint16_t *dy, const float *w, const uint16_t *x, float mu,
                                    ptrdiff_t n, double *s1, double *s2) {
#define FN_SUMS_(ta, tb, i0, k, u, v) fn_bwd_sums_f(ta, w ? w + (i0) : NULL, tb, mu, k, u, v)
    FN_HALF_TILED_SUMS2(fmt, dy, x, n, FN_BLOCK, FN_SUMS_, s1, s2);
#undef FN_SUMS_
}

static inline void fn_half_bwd_apply(int fmt, const uint16_t *dy, const uint16_t *x, const uint16_t *dh,
                                     const float *w, uint16_t *dx, float *dwa, float *dba, float mu, float rs,
                                     float c1, float c2, int rms, int nt, ptrdiff_t n) {
    float a[FN_HALF_BLOCK], b[FN_HALF_BLOCK], d[FN_HALF_BLOCK], t[FN_HALF_BLOCK];
    (void)nt; /* regular stores */
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FN_HALF_BLOCK) {
        ptrdiff_t k = n - j0 < FN_HALF_BLOCK ? n - j0 : FN_HALF_BLOCK;
        const float *wj = w ? w + j0 : NULL;
        float *dwj = dwa ? dwa + j0 : NULL, *dbj = dba ? dba + j0 : NULL;
        fn_half_load(fmt, dy + j0, a, k);
        fn_half_load(fmt, x + j0, b, k);
        if (dh) fn_half_load(fmt, dh + j0, d, k);
        if (rms) fn_rms_bwd_apply_f(a, b, rs, c2, wj, dh ? d : NULL, t, dwj, k);
        else fn_ln_bwd_apply_f(a, b, mu, rs, c1, c2, wj, dh ? d : NULL, t, dwj, dbj, k);
        fn_half_store(fmt, t, dx + j0, k);
    }
}
#endif


/* fn_sumsq_safe_f of the widened row */
static inline double fn_half_sumsq_wide(int fmt, const uint16_t *x, ptrdiff_t n) {
    FN_BLOCKED_SUM(double, n, (double)fn_half_to_f32(fmt, x[i]) * (double)fn_half_to_f32(fmt, x[i]))
}
static inline double fn_half_sumsq_safe(int fmt, const uint16_t *x, ptrdiff_t n) {
    double s = fn_half_sumsq(fmt, x, n);
    return FN_SUMSQ_SAFE(s) ? s : fn_half_sumsq_wide(fmt, x, n);
}

#endif
