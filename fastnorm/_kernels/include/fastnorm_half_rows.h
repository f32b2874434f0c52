/* LayerNorm / RMSNorm row passes over 16-bit data that convert in registers (AVX2 + FMA, F16C).
 *
 * The 16-bit kernels keep one float32 copy of a row in a thread's buffer (L1/L2) for the statistics; these
 * functions replace the passes that used to go through extra float32 rows: the output is computed and
 * rounded eight elements at a time and stored as 16-bit (no float32 output block), and the fused residual
 * add converts x and residual, adds, rounds h, stores it and widens the rounded h into the row buffer in one
 * pass. The arithmetic is the float32 row code's, operation for operation, including the fused multiply-adds
 * gcc forms from it on these targets ((x - mu) * rs * w + b -> fma(t, w, b); (x - mu) * rs + b ->
 * fma(x - mu, rs, b)), so the outputs are bitwise those of the float32 kernel on the widened row, rounded
 * once (tests/test_layer_norm_half.py). FN_HALF_ROWS is 0 where the target lacks AVX2/FMA/F16C: the kernels
 * then keep their portable block code.
 */
#ifndef FASTNORM_HALF_ROWS_H
#define FASTNORM_HALF_ROWS_H
#include <math.h>
#include "fastnorm_half.h"

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

/* y = half((x - mu) * rs * w + b) over a float32 row x; w, b may be NULL (then that factor/term is absent).
 * gcc reassociates the float32 loops (-fassociative-math) to (x - mu) * (rs * w) [+ b as an FMA] and contracts
 * (x - mu) * rs + b to fma(x - mu, rs, b): the same operations here. RMSNorm (rms: mu = 0, b = NULL) with w:
 * x * (rs * w), which gcc reassociates as it does the float32 kernel's x * rs * w (bitwise checked). */
/* y[j..] = round(EXPR(j)) sixteen, then eight elements at a time, then one (SEXPR(j): the float32 value of
 * element j, the vector code's operations); nt: the 32-byte-aligned 16-element stores stream (the elements
 * before the first aligned one are stored one at a time) */
#define FN_HALF_OUT_LOOP(EXPR, SEXPR)                                                                 \
    if (nt) {                                                                                          \
        for (; j < n && ((uintptr_t)(y + j) & 31u); j++) y[j] = fn_f32_to_half(fmt, SEXPR(j));       \
        for (; j + 16 <= n; j += 16)                                                                   \
            _mm256_stream_si256((__m256i *)(y + j), fn_half_round16(fmt, EXPR(j), EXPR(j + 8)));      \
    }                                                                                                  \
    for (; j + 16 <= n; j += 16)                                                                       \
        _mm256_storeu_si256((__m256i *)(y + j), fn_half_round16(fmt, EXPR(j), EXPR(j + 8)));          \
    for (; j + 8 <= n; j += 8) fn_half_st8(y + j, fn_half_round8(fmt, EXPR(j)));                      \
    for (; j < n; j++) y[j] = fn_f32_to_half(fmt, SEXPR(j));

FN_ALWAYS_INLINE void fn_half_norm_out_fmt(int fmt, const float *x, const float *w, const float *b, uint16_t *y,
                                           float mu, float rs, int rms, int nt, ptrdiff_t n) {
    const __m256 vmu = _mm256_set1_ps(mu), vrs = _mm256_set1_ps(rs);
    ptrdiff_t j = 0;
#define FN_D_(j) _mm256_sub_ps(_mm256_loadu_ps(x + (j)), vmu)
#define FN_T_(j) _mm256_mul_ps(vrs, _mm256_loadu_ps(w + (j)))
#define FN_WB_(j) _mm256_fmadd_ps(FN_D_(j), FN_T_(j), _mm256_loadu_ps(b + (j)))
#define FN_W_(j) _mm256_mul_ps(FN_D_(j), FN_T_(j))
#define FN_B_(j) _mm256_fmadd_ps(FN_D_(j), vrs, _mm256_loadu_ps(b + (j)))
#define FN_0_(j) _mm256_mul_ps(FN_D_(j), vrs)
#define FN_R_(j) _mm256_mul_ps(_mm256_loadu_ps(x + (j)), FN_T_(j))
#define FN_SR_(j) (x[j] * (rs * w[j]))
#define FN_SWB_(j) fmaf(x[j] - mu, rs * w[j], b[j])
#define FN_SW_(j) ((x[j] - mu) * (rs * w[j]))
#define FN_SB_(j) fmaf(x[j] - mu, rs, b[j])
#define FN_S0_(j) ((x[j] - mu) * rs)
    if (rms && w) {
        FN_HALF_OUT_LOOP(FN_R_, FN_SR_)
    } else if (w && b) {
        FN_HALF_OUT_LOOP(FN_WB_, FN_SWB_)
    } else if (w) {
        FN_HALF_OUT_LOOP(FN_W_, FN_SW_)
    } else if (b) {
        FN_HALF_OUT_LOOP(FN_B_, FN_SB_)
    } else {
        FN_HALF_OUT_LOOP(FN_0_, FN_S0_)
    }
#undef FN_D_
#undef FN_T_
#undef FN_WB_
#undef FN_W_
#undef FN_B_
#undef FN_0_
#undef FN_SWB_
#undef FN_R_
#undef FN_SR_
#undef FN_SW_
#undef FN_SB_
#undef FN_S0_
}

/* nt: stream y (callers: outputs larger than the last-level cache; fn_sfence() before the parallel region ends) */
FN_ALWAYS_INLINE void fn_half_norm_out(int fmt, const float *x, const float *w, const float *b, uint16_t *y, float mu,
                                      float rs, int rms, int nt, ptrdiff_t n) {
    if (fmt == FN_BF16) fn_half_norm_out_fmt(FN_BF16, x, w, b, y, mu, rs, rms, nt, n);
    else fn_half_norm_out_fmt(FN_F16, x, w, b, y, mu, rs, rms, nt, n);
}

/* h = half(x + r) (16-bit rows), and hb = float(h), the rounded sum widened, in one pass; nt: h streamed from
 * its first 16-byte boundary on */
FN_ALWAYS_INLINE void fn_half_add_row_fmt(int fmt, const uint16_t *x, const uint16_t *r, uint16_t *h, float *hb,
                                          int nt, ptrdiff_t n) {
    ptrdiff_t j = 0;
#define FN_ADD1_(j)                                                                                    \
    h[j] = fn_f32_to_half(fmt, fn_half_to_f32(fmt, x[j]) + fn_half_to_f32(fmt, r[j]));                 \
    hb[j] = fn_half_to_f32(fmt, h[j]);
#define FN_ADD8_(j, STORE)                                                                             \
    {                                                                                                  \
        __m256 s = _mm256_add_ps(fn_half_widen8(fmt, fn_half_ld8(x + j)), fn_half_widen8(fmt, fn_half_ld8(r + j))); \
        __m128i q = fn_half_round8(fmt, s);                                                            \
        STORE((__m128i *)(h + j), q);                                                                  \
        _mm256_storeu_ps(hb + j, fn_half_widen8(fmt, q));                                              \
    }
    if (nt) {
        for (; j < n && ((uintptr_t)(h + j) & 15u); j++) { FN_ADD1_(j) }
        for (; j + 8 <= n; j += 8) FN_ADD8_(j, _mm_stream_si128)
    }
    for (; j + 8 <= n; j += 8) FN_ADD8_(j, _mm_storeu_si128)
    for (; j < n; j++) { FN_ADD1_(j) }
#undef FN_ADD1_
#undef FN_ADD8_
}

static inline void fn_half_add_row(int fmt, const uint16_t *x, const uint16_t *r, uint16_t *h, float *hb, int nt,
                                   ptrdiff_t n) {
    if (fmt == FN_BF16) fn_half_add_row_fmt(FN_BF16, x, r, h, hb, nt, n);
    else fn_half_add_row_fmt(FN_F16, x, r, h, hb, nt, n);
}

#else
#define FN_HALF_ROWS 0
/* Portable: the float32 results FN_HALF_BLOCK elements at a time into a stack block (L1), rounded from there
 * (fn_half_store vectorizes the bfloat16 rounding; a per-element select + narrowing does not). */
#define FN_HALF_BLOCK 256

/* the float32 row code's expressions as written (rms: x * rs * w), which gcc compiles as it does those */
static inline void fn_half_norm_out(int fmt, const float *x, const float *w, const float *b, uint16_t *y, float mu,
                                    float rs, int rms, int nt, ptrdiff_t n) {
    float t[FN_HALF_BLOCK];
    (void)nt; /* regular stores */
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FN_HALF_BLOCK) {
        ptrdiff_t k = n - j0 < FN_HALF_BLOCK ? n - j0 : FN_HALF_BLOCK;
        const float *xj = x + j0, *wj = w ? w + j0 : NULL, *bj = b ? b + j0 : NULL;
        if (rms && wj) for (ptrdiff_t j = 0; j < k; j++) t[j] = xj[j] * rs * wj[j];
        else if (rms) for (ptrdiff_t j = 0; j < k; j++) t[j] = xj[j] * rs;
        else if (wj && bj) for (ptrdiff_t j = 0; j < k; j++) t[j] = (xj[j] - mu) * rs * wj[j] + bj[j];
        else if (wj) for (ptrdiff_t j = 0; j < k; j++) t[j] = (xj[j] - mu) * rs * wj[j];
        else if (bj) for (ptrdiff_t j = 0; j < k; j++) t[j] = (xj[j] - mu) * rs + bj[j];
        else for (ptrdiff_t j = 0; j < k; j++) t[j] = (xj[j] - mu) * rs;
        fn_half_store(fmt, t, y + j0, k);
    }
}

static inline void fn_half_add_row(int fmt, const uint16_t *x, const uint16_t *r, uint16_t *h, float *hb, int nt,
                                   ptrdiff_t n) {
    float t[FN_HALF_BLOCK];
    (void)nt;
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FN_HALF_BLOCK) {
        ptrdiff_t k = n - j0 < FN_HALF_BLOCK ? n - j0 : FN_HALF_BLOCK;
        fn_half_load(fmt, x + j0, hb + j0, k);
        fn_half_load(fmt, r + j0, t, k);
        for (ptrdiff_t j = 0; j < k; j++) t[j] += hb[j0 + j];
        fn_half_store(fmt, t, h + j0, k);
        fn_half_load(fmt, h + j0, hb + j0, k);
    }
}
#endif

#endif
