/* 16-bit float storage: bfloat16 and IEEE float16 <-> float32.
 *
 * Kernels keep 16-bit data as uint16_t (NumPy has no bfloat16; ml_dtypes.bfloat16 and np.float16 arrays
 * are passed as .view(np.uint16)) and compute in float32. Widening is exact. Narrowing rounds to nearest,
 * ties to even, as torch and ml_dtypes do; overflow gives inf, a NaN stays a (quiet) NaN and never rounds
 * to inf, subnormals are kept (float16's are produced and read; bfloat16 shares float32's exponent).
 *
 * Format codes (FN_BF16, FN_F16) let one kernel serve both formats: the fn_half_* array functions switch
 * once per call, and each branch is a loop the compiler vectorizes: integer shifts for bfloat16, F16C
 * (vcvtph2ps / vcvtps2ph, every x86-64-v3 CPU) for float16 when the target has it, else the bit-exact
 * integer/float code below. With AVX-512 BF16 (a native build on such a CPU) the bfloat16 narrowing uses
 * vcvtneps2bf16, which rounds the same way.
 */
#ifndef FASTNORM_HALF_H
#define FASTNORM_HALF_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__F16C__) || defined(__AVX2__) || (defined(__AVX512BF16__) && defined(__AVX512VL__))
#include <immintrin.h>
#endif

#define FN_BF16 0
#define FN_F16 1

static inline uint32_t fn_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float fn_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ------------------------------------------------------------------------------------------ bfloat16 */
static inline float fn_bf16_to_f32(uint16_t h) { return fn_bits_f32((uint32_t)h << 16); }

static inline uint16_t fn_f32_to_bf16(float f) {
    uint32_t u = fn_f32_bits(f);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet = (u >> 16) | 0x40u;
    return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? quiet : rounded);
}

/* ------------------------------------------------------------------------------------------- float16 */
static inline float fn_f16_to_f32_soft(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    uint32_t u;
    if (em >= 0x7c00u) {
        u = 0x7f800000u | ((em & 0x3ffu) << 13);       /* inf, NaN (payload kept) */
    } else if (em >= 0x0400u) {
        u = (em << 13) + ((uint32_t)(127 - 15) << 23); /* normal: rebias the exponent */
    } else {
        u = fn_f32_bits((float)em * 5.9604644775390625e-08f); /* subnormal or 0: em * 2^-24, exact */
    }
    return fn_bits_f32(u | sign);
}

/* Round to nearest even (F. Giesen's float_to_half_fast3_rtne): subnormal results through one float add
 * of 0.5 (the FPU rounds), normal ones by integer rounding of the mantissa. */
static inline uint16_t fn_f32_to_f16_soft(float f) {
    uint32_t u = fn_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    uint32_t o;
    if (a >= 0x47800000u) {                 /* >= 2^16: inf; NaN -> quiet NaN */
        o = a > 0x7f800000u ? 0x7e00u : 0x7c00u;
    } else if (a < 0x38800000u) {           /* < 2^-14: float16 subnormal or zero */
        o = fn_f32_bits(fn_bits_f32(a) + 0.5f) - 0x3f000000u;
    } else {
        uint32_t odd = (a >> 13) & 1u;
        a += ((uint32_t)(15 - 127) << 23) + 0xfffu + odd;
        o = a >> 13;                        /* a carry into the exponent rounds up to the next binade / inf */
    }
    return (uint16_t)(o | sign);
}

#ifdef __F16C__
static inline float fn_f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
static inline uint16_t fn_f32_to_f16(float f) { return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
#else
static inline float fn_f16_to_f32(uint16_t h) { return fn_f16_to_f32_soft(h); }
static inline uint16_t fn_f32_to_f16(float f) { return fn_f32_to_f16_soft(f); }
#endif

/* ---------------------------------------------------------------------------------- either format */
static inline float fn_half_to_f32(int fmt, uint16_t h) {
    return fmt == FN_BF16 ? fn_bf16_to_f32(h) : fn_f16_to_f32(h);
}

static inline uint16_t fn_f32_to_half(int fmt, float f) {
    return fmt == FN_BF16 ? fn_f32_to_bf16(f) : fn_f32_to_f16(f);
}

/* dst[i] = float(src[i]) for i < n */
static inline void fn_half_load(int fmt, const uint16_t *src, float *dst, ptrdiff_t n) {
    ptrdiff_t i = 0;
    if (fmt == FN_BF16) {
        for (i = 0; i < n; i++)
            dst[i] = fn_bf16_to_f32(src[i]);
        return;
    }
#ifdef __F16C__
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    for (; i < n; i++)
        dst[i] = fn_f16_to_f32(src[i]);
}

/* dst[i] = half(src[i]) for i < n, round to nearest even */
static inline void fn_half_store(int fmt, const float *src, uint16_t *dst, ptrdiff_t n) {
    ptrdiff_t i = 0;
    if (fmt == FN_BF16) {
#if defined(__AVX512BF16__) && defined(__AVX512VL__)
        for (; i + 16 <= n; i += 16) {
            __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
            memcpy(dst + i, &v, 32);
        }
#elif defined(__AVX2__)
        /* fn_f32_to_bf16 on 8 lanes; gcc does not vectorize its select + narrowing well (2x a float copy) */
        const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff);
        const __m256i quiet = _mm256_set1_epi32(0x40), abs_mask = _mm256_set1_epi32(0x7fffffff);
        const __m256i inf = _mm256_set1_epi32(0x7f800000);
        for (; i + 8 <= n; i += 8) {
            __m256i u = _mm256_castps_si256(_mm256_loadu_ps(src + i));
            __m256i hi = _mm256_srli_epi32(u, 16);
            __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, bias), _mm256_and_si256(hi, one)), 16);
            __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
            r = _mm256_blendv_epi8(r, _mm256_or_si256(hi, quiet), nan);
            /* every lane is <= 0xffff, so the unsigned-saturating pack is exact; it packs per 128-bit half */
            __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
            _mm_storeu_si128((__m128i *)(dst + i), _mm256_castsi256_si128(p));
        }
#endif
        for (; i < n; i++)
            dst[i] = fn_f32_to_bf16(src[i]);
        return;
    }
#ifdef __F16C__
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++)
        dst[i] = fn_f32_to_f16(src[i]);
}

#endif
