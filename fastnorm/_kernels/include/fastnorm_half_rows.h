/* LayerNorm / RMSNorm row passes over 16-bit data that convert in registers (AVX2 + FMA, F16C).
 *
 * The 16-bit kernels keep one float32 copy of a row in a thread's buffer (L1/L2) for the statistics; these
 * functions replace the passes that used to go through extra float32 rows: the output is computed and
 * rounded eight elements at a time and stored as 16-bit (no float32 output block), and the fused residual
 * add converts x and residual, adds, rounds h, stores it and widens the rounded h into the row buffer in one
 * pass. The arithmetic is the float32 row code's, operation for operation, including the fused multiply-adds
 * gcc forms from it on these targets ((x - mu) * rs * w + b -> fma(t, w, b); (x - mu) * rs + b ->
 * fma(x - mu, rs, b)), so the outputs are bitwise those of the float32 kernel on the widened row, rounded
 * once (tests/test_layer_norm_half.py). The backward reads its 16-bit rows the same way (no float32 copies): see
 * "backward" below. With AVX-512 F/BW (FN_HALF_Z) the loops take sixteen elements per vector, lane for lane the
 * 8-lane operations. FN_HALF_ROWS is 0 where the target lacks AVX2/FMA/F16C: the kernels then keep their
 * portable block code.
 */
#ifndef FASTNORM_HALF_ROWS_H
#define FASTNORM_HALF_ROWS_H
#include <math.h>
#include "fastnorm_half.h"
#include "fastnorm_moments.h"
#include "fastnorm_rows.h"

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
#else
#define FN_HALF_Z 0
#endif

/* y = half((x - mu) * rs * w + b) over a float32 row x; w, b may be NULL (then that factor/term is absent).
 * gcc reassociates the float32 loops (-fassociative-math) to (x - mu) * (rs * w) [+ b as an FMA] and contracts
 * (x - mu) * rs + b to fma(x - mu, rs, b): the same operations here. RMSNorm (rms: mu = 0, b = NULL) with w:
 * x * (rs * w), which gcc reassociates as it does the float32 kernel's x * rs * w (bitwise checked). */
/* y[j..] = round(EXPR(j)) sixteen, then eight elements at a time, then one (SEXPR(j): the float32 value of
 * element j, the vector code's operations); nt: the 32-byte-aligned 16-element stores stream (the elements
 * before the first aligned one are stored one at a time) */
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

FN_ALWAYS_INLINE void fn_half_norm_out_fmt(int fmt, const float *x, const float *w, const float *b, uint16_t *y,
                                           float mu, float rs, int rms, int nt, ptrdiff_t n) {
    ptrdiff_t j = 0;
#define FN_D_(V, j) V(sub_ps)(V(loadu_ps)(x + (j)), V(set1_ps)(mu))
#define FN_T_(V, j) V(mul_ps)(V(set1_ps)(rs), V(loadu_ps)(w + (j)))
#define FN_WB_(V, j) V(fmadd_ps)(FN_D_(V, j), FN_T_(V, j), V(loadu_ps)(b + (j)))
#define FN_W_(V, j) V(mul_ps)(FN_D_(V, j), FN_T_(V, j))
#define FN_B_(V, j) V(fmadd_ps)(FN_D_(V, j), V(set1_ps)(rs), V(loadu_ps)(b + (j)))
#define FN_0_(V, j) V(mul_ps)(FN_D_(V, j), V(set1_ps)(rs))
#define FN_R_(V, j) V(mul_ps)(V(loadu_ps)(x + (j)), FN_T_(V, j))
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
/* elements j.. one vector (V, VT: FN_Y/__m256 or FN_Z/__m512) at a time; the rounded h as QT */
#define FN_ADDV_(j, STORE, V, VT, QT, LD, WIDEN, ROUND)                                                \
    {                                                                                                  \
        VT s = V(add_ps)(WIDEN(fmt, LD(x + j)), WIDEN(fmt, LD(r + j)));                                \
        QT q = ROUND(fmt, s);                                                                          \
        STORE((QT *)(h + j), q);                                                                       \
        V(storeu_ps)(hb + j, WIDEN(fmt, q));                                                           \
    }
#define FN_ADD8_(j, STORE) FN_ADDV_(j, STORE, FN_Y, __m256, __m128i, fn_half_ld8, fn_half_widen8, fn_half_round8)
#if FN_HALF_Z
#define FN_ADD16_(j, STORE)                                                                            \
    FN_ADDV_(j, STORE, FN_Z, __m512, __m256i, fn_half_ld16, fn_half_widen16z, fn_half_round16z)
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

static inline void fn_half_add_row(int fmt, const uint16_t *x, const uint16_t *r, uint16_t *h, float *hb, int nt,
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
#define FN_LDY_(i) fn_half_widen8(fmt, fn_half_ld8(dy + (i)))
#define FN_LX_(i) fn_half_widen8(fmt, fn_half_ld8(x + (i)))
#define FN_SDY_(i) fn_half_to_f32(fmt, dy[i])
#define FN_SX_(i) fn_half_to_f32(fmt, x[i])
#if FN_HALF_Z
    /* fn_bwd_sums_f's 32 lanes as two 16-lane vectors per sum (lanes 0-15, 16-31), folded as its four */
#define FN_SUMS_Z_                                                                                     \
    const __m512 vmu = _mm512_set1_ps(mu);                                                             \
    double t1 = 0.0, t2 = 0.0;                                                                         \
    for (ptrdiff_t i0 = 0; i0 < n; i0 += FN_BLOCK) {                                                   \
        ptrdiff_t m_ = n - i0 < FN_BLOCK ? n - i0 : FN_BLOCK, j = 0;                                   \
        __m512 a[2], b[2];                                                                             \
        a[0] = a[1] = b[0] = b[1] = _mm512_setzero_ps();                                               \
        for (; j + FN_LANES <= m_; j += FN_LANES)                                                      \
            for (int q = 0; q < 2; q++) {                                                              \
                ptrdiff_t i = i0 + j + 16 * q;                                                         \
                __m512 g = fn_half_widen16z(fmt, fn_half_ld16(dy + i));                                \
                if (w) g = _mm512_mul_ps(g, _mm512_loadu_ps(w + i));                                   \
                a[q] = _mm512_add_ps(a[q], g);                                                         \
                b[q] = _mm512_fmadd_ps(g, _mm512_sub_ps(fn_half_widen16z(fmt, fn_half_ld16(x + i)), vmu), b[q]); \
            }                                                                                          \
        if (j < m_) {                                                                                  \
            float u = _mm512_cvtss_f32(a[0]), v = _mm512_cvtss_f32(b[0]);                              \
            for (; j < m_; j++) {                                                                      \
                ptrdiff_t i = i0 + j;                                                                  \
                float g = w ? FN_SDY_(i) * w[i] : FN_SDY_(i);                                          \
                u += g;                                                                                \
                v = fmaf(g, FN_SX_(i) - mu, v);                                                        \
            }                                                                                          \
            a[0] = _mm512_mask_mov_ps(a[0], 1, _mm512_set1_ps(u));                                     \
            b[0] = _mm512_mask_mov_ps(b[0], 1, _mm512_set1_ps(v));                                     \
        }                                                                                              \
        t1 += fn_fold32(FN_LO8_(a[0]), FN_HI8_(a[0]), FN_LO8_(a[1]), FN_HI8_(a[1]));                   \
        t2 += fn_fold32(FN_LO8_(b[0]), FN_HI8_(b[0]), FN_LO8_(b[1]), FN_HI8_(b[1]));                   \
    }                                                                                                  \
    *s1 = t1; *s2 = t2;
#define FN_LO8_(v) _mm512_castps512_ps256(v)
#define FN_HI8_(v) _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))
    if (fmt == FN_BF16) {
        const int fmt = FN_BF16; /* constant in the body: the widening without a per-vector test */
        FN_SUMS_Z_
    } else {
        const int fmt = FN_F16;
        FN_SUMS_Z_
    }
#undef FN_SUMS_Z_
#undef FN_LO8_
#undef FN_HI8_
#else
    if (fmt == FN_BF16) {
        const int fmt = FN_BF16; /* constant in the body: the widening without a per-vector test */
        FN_BWD_SUMS_BODY(FN_LDY_, FN_LX_, FN_SDY_, FN_SX_)
    } else {
        const int fmt = FN_F16;
        FN_BWD_SUMS_BODY(FN_LDY_, FN_LX_, FN_SDY_, FN_SX_)
    }
#endif
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
/* Portable backward: the float32 row functions on FN_HALF_BLOCK-element blocks widened into the stack (L1);
 * the sums block by block as fn_bwd_sums_f's own blocks (FN_BLOCK), so the same values in the same order. */
static inline void fn_half_bwd_sums(int fmt, const uint16_t *dy, const float *w, const uint16_t *x, float mu,
                                    ptrdiff_t n, double *s1, double *s2) {
    float a[FN_BLOCK], b[FN_BLOCK];
    double t1 = 0.0, t2 = 0.0, u, v;
    for (ptrdiff_t i0 = 0; i0 < n; i0 += FN_BLOCK) {
        ptrdiff_t k = n - i0 < FN_BLOCK ? n - i0 : FN_BLOCK;
        fn_half_load(fmt, dy + i0, a, k);
        fn_half_load(fmt, x + i0, b, k);
        fn_bwd_sums_f(a, w ? w + i0 : NULL, b, mu, k, &u, &v);
        t1 += u;
        t2 += v;
    }
    *s1 = t1;
    *s2 = t2;
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

#endif
