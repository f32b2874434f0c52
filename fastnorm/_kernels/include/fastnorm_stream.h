/* The streaming-bound kernel's loop: one pass over [lo, hi) touching every stream once per element.
 *
 * s = sum of the read-only and read-write streams; read-write streams get s / 2; write-only streams get s.
 * Each instantiation (FN_STREAM_CASE) has compile-time stream counts and copies the stream pointers into
 * local restrict arrays first: the element loop then holds every pointer in a register (the build's
 * -fno-strict-aliasing otherwise makes the compiler reload rd[k] after every float store, and on main this
 * kernel ran at half the speed of a fused LayerNorm moving the same bytes). 16-byte vectors (SSE2, every
 * x86-64 CPU; the baseline target is enough for a memory-bound loop), all streams in flight at once like a
 * fused op's loop. nt != 0: write-only streams use non-temporal stores (no read-for-ownership of the
 * destination line); the bench takes the faster of the two variants as the bound.
 */
#ifndef FASTNORM_STREAM_H
#define FASTNORM_STREAM_H
#include <stddef.h>
#include <stdint.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#define FN_STREAM_SIMD 1
#else
#define FN_STREAM_SIMD 0
#endif

#define FN_STREAM_MAX_R 4
#define FN_STREAM_MAX_U 4
#define FN_STREAM_MAX_W 3

#if defined(__GNUC__)
#define FN_STREAM_RESTRICT __restrict__
#else
#define FN_STREAM_RESTRICT
#endif

#if FN_STREAM_SIMD
#define FN_STREAM_VEC_BODY(R, U, W, STORE)                                                             \
    for (; i + 4 <= hi; i += 4) {                                                                      \
        __m128 s = _mm_setzero_ps();                                                                   \
        for (int k = 0; k < (R); k++) s = _mm_add_ps(s, _mm_loadu_ps(r_[k] + i));                     \
        for (int k = 0; k < (U); k++) s = _mm_add_ps(s, _mm_loadu_ps(u_[k] + i));                     \
        for (int k = 0; k < (U); k++) _mm_storeu_ps(u_[k] + i, _mm_mul_ps(half, s));                  \
        for (int k = 0; k < (W); k++) STORE(w_[k] + i, s);                                            \
    }
#define FN_STREAM_VEC(R, U, W)                                                                         \
    {                                                                                                  \
        const __m128 half = _mm_set1_ps(0.5f);                                                         \
        if (nt) { FN_STREAM_VEC_BODY(R, U, W, _mm_stream_ps) _mm_sfence(); }                           \
        else { FN_STREAM_VEC_BODY(R, U, W, _mm_storeu_ps) }                                            \
    }
#else
#define FN_STREAM_VEC(R, U, W)
#endif

#define FN_STREAM_LOOP(R, U, W)                                                                        \
    {                                                                                                  \
        const float *FN_STREAM_RESTRICT r_[(R) + 1];                                                   \
        float *FN_STREAM_RESTRICT u_[(U) + 1];                                                         \
        float *FN_STREAM_RESTRICT w_[(W) + 1];                                                         \
        for (int k = 0; k < (R); k++) r_[k] = rd[k];                                                   \
        for (int k = 0; k < (U); k++) u_[k] = up[k];                                                   \
        for (int k = 0; k < (W); k++) w_[k] = wr[k];                                                   \
        ptrdiff_t i = lo;                                                                              \
        FN_STREAM_VEC(R, U, W)                                                                         \
        for (; i < hi; i++) {                                                                          \
            float s = 0.0f;                                                                            \
            for (int k = 0; k < (R); k++) s += r_[k][i];                                               \
            for (int k = 0; k < (U); k++) s += u_[k][i];                                               \
            for (int k = 0; k < (U); k++) u_[k][i] = 0.5f * s;                                         \
            for (int k = 0; k < (W); k++) w_[k][i] = s;                                                \
        }                                                                                              \
        return 0;                                                                                      \
    }

#define FN_STREAM_W(R, U)                                                                              \
    switch (w) {                                                                                       \
    case 0: FN_STREAM_LOOP(R, U, 0) case 1: FN_STREAM_LOOP(R, U, 1)                                    \
    case 2: FN_STREAM_LOOP(R, U, 2) case 3: FN_STREAM_LOOP(R, U, 3)                                    \
    }
#define FN_STREAM_U(R)                                                                                 \
    switch (u) {                                                                                       \
    case 0: FN_STREAM_W(R, 0) break; case 1: FN_STREAM_W(R, 1) break; case 2: FN_STREAM_W(R, 2) break; \
    case 3: FN_STREAM_W(R, 3) break; case 4: FN_STREAM_W(R, 4) break;                                  \
    }

/* Returns 0, or -1 if the stream counts exceed the instantiated maxima (nothing is touched then).
 * nt: non-temporal stores into the write-only streams (x86 only; ignored elsewhere). */
static inline int fn_stream_range(const float *const *rd, int r, float *const *up, int u, float *const *wr,
                                  int w, ptrdiff_t lo, ptrdiff_t hi, int nt) {
    (void)nt;
    switch (r) {
    case 0: FN_STREAM_U(0) break; case 1: FN_STREAM_U(1) break; case 2: FN_STREAM_U(2) break;
    case 3: FN_STREAM_U(3) break; case 4: FN_STREAM_U(4) break;
    }
    return -1;
}
/* Non-temporal row stores for outputs larger than the last-level cache (the kernels' callers decide): the
 * destination's cache lines are written whole, without the read-for-ownership a regular store costs, and
 * without evicting the rows the kernel still reads. Elements before the first 32-byte boundary and after the
 * last full vector use regular stores; values are copied bit for bit. Call fn_sfence() once per thread after
 * its last streaming store (before the parallel region ends): streaming stores are weakly ordered. */
#if defined(__AVX__)
#include <immintrin.h>
#endif
static inline void fn_sfence(void) {
#if FN_STREAM_SIMD
    _mm_sfence();
#endif
}

/* dst[0..n) = src[0..n) (src in cache, dst streamed) */
static inline void fn_stream_store_f(const float *src, float *dst, ptrdiff_t n) {
    ptrdiff_t j = 0;
#if FN_STREAM_SIMD
    for (; j < n && ((uintptr_t)(dst + j) & 31u); j++) dst[j] = src[j];
#if defined(__AVX__)
    for (; j + 8 <= n; j += 8) _mm256_stream_ps(dst + j, _mm256_loadu_ps(src + j));
#else
    for (; j + 8 <= n; j += 8) {
        _mm_stream_ps(dst + j, _mm_loadu_ps(src + j));
        _mm_stream_ps(dst + j + 4, _mm_loadu_ps(src + j + 4));
    }
#endif
#endif
    for (; j < n; j++) dst[j] = src[j];
}

/* Elements of a float row before its first 32-byte boundary (streaming blocks then start aligned). */
static inline ptrdiff_t fn_stream_head_f(const float *dst) {
    return (ptrdiff_t)((((uintptr_t)0 - (uintptr_t)dst) & 31u) / sizeof(float));
}

/* dst[0..n) = src[0..n), 16-bit elements (src in cache, dst streamed) */
static inline void fn_stream_store_u16(const uint16_t *src, uint16_t *dst, ptrdiff_t n) {
    ptrdiff_t j = 0;
#if FN_STREAM_SIMD
    for (; j < n && ((uintptr_t)(dst + j) & 31u); j++) dst[j] = src[j];
#if defined(__AVX__)
    for (; j + 16 <= n; j += 16) _mm256_stream_si256((__m256i *)(dst + j), _mm256_loadu_si256((const __m256i *)(src + j)));
#else
    for (; j + 16 <= n; j += 16) {
        _mm_stream_si128((__m128i *)(dst + j), _mm_loadu_si128((const __m128i *)(src + j)));
        _mm_stream_si128((__m128i *)(dst + j + 8), _mm_loadu_si128((const __m128i *)(src + j + 8)));
    }
#endif
#endif
    for (; j < n; j++) dst[j] = src[j];
}

/* Elements of a 16-bit row before its first 32-byte boundary (0 for an odd address: then nothing streams). */
static inline ptrdiff_t fn_stream_head_u16(const uint16_t *dst) {
    return (ptrdiff_t)((((uintptr_t)0 - (uintptr_t)dst) & 31u) / sizeof(uint16_t));
}

/* Prefetch nbytes from p (one request per 64-byte line). */
static inline void fn_prefetch_bytes(const void *p, ptrdiff_t nbytes) {
    for (ptrdiff_t i = 0; i < nbytes; i += 64) __builtin_prefetch((const char *)p + i, 0, 3);
}

#endif
