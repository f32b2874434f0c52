/* Optimizer update loops: one streaming pass over a contiguous segment of one tensor.
 *
 * Each loop reads p, g and the state once and writes p and the state once, element by element, in the
 * segment's dtype T (float or double); the hyperparameters arrive in double (computed on the host) and
 * are rounded to T once per segment. The pointers are `restrict` (a parameter, its gradient and its
 * state never overlap: fastnorm.optim checks), so gcc vectorizes without runtime alias checks. Options
 * are compile-time constants of each loop instance (FN_*_LOOP), so every combination is its own
 * branch-free loop. g is the gradient times sgn (-1 when maximize: an exact multiply).
 *
 * fastnorm_optim_impl.h holds the functions; it is included once per dtype below.
 */
#ifndef FASTNORM_OPTIM_H
#define FASTNORM_OPTIM_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "fastnorm_half.h"

enum { FN_SGD = 0, FN_ADAGRAD = 1, FN_ADADELTA = 2, FN_RMSPROP = 3, FN_ADAM = 4 };

/* option flags */
#define FN_WD 1        /* L2 weight decay folded into g: g += wd * p */
#define FN_MOMENTUM 2  /* SGD / RMSprop momentum buffer */
#define FN_NESTEROV 4  /* SGD */
#define FN_CENTERED 8  /* RMSprop */
#define FN_AMSGRAD 16  /* Adam */

/* Hyperparameters shared by every tensor of one call (each algorithm reads the fields it uses). */
typedef struct {
    double lr, wd, sgn, eps;
    double mu, dampc;          /* momentum, 1 - dampening */
    double rho, alpha;         /* Adadelta rho, RMSprop alpha */
    double omb1, beta2, decay; /* Adam: 1 - beta1, beta2, AdamW's 1 - lr * wd (else 1) */
} fn_hyper;

/* Per-tensor scalars `ts` (row t of a (T, k) table):
 *   SGD:     c1, c2 in b = c1 * b + c2 * g  (0, 1 on a buffer's first step; else momentum, 1 - dampening)
 *   Adagrad: clr = lr / (1 + (step - 1) * lr_decay)
 *   Adam:    step_size = lr / (1 - beta1^step), bc2 = sqrt(1 - beta2^step)                               */

/* Loop bodies; T, the scalars and the pointers are those of the function they expand in. */
#define FN_LOOP for (ptrdiff_t i = 0; i < n; i++)
#define FN_G(WD) T gi = sgn * g[i]; if (WD) gi += wd * p[i];

#define FN_SGD_LOOP(WD, MOM, NEST) FN_LOOP { FN_G(WD)                                                  \
    if (MOM) { T bi = c1 * b[i] + c2 * gi; b[i] = bi; gi = (NEST) ? gi + mu * bi : bi; }              \
    p[i] = p[i] - lr * gi; }

#define FN_ADAGRAD_LOOP(WD) FN_LOOP { FN_G(WD)                                                          \
    T si = s[i] + gi * gi; s[i] = si;                                                                   \
    p[i] = p[i] - clr * (gi / (FN_SQRT(si) + eps)); }

#define FN_ADADELTA_LOOP(WD) FN_LOOP { FN_G(WD)                                                         \
    T sqi = rho * sq[i] + omr * (gi * gi); sq[i] = sqi;                                                 \
    T d = FN_SQRT(acc[i] + eps) / FN_SQRT(sqi + eps) * gi;                                              \
    acc[i] = rho * acc[i] + omr * (d * d);                                                              \
    p[i] = p[i] - lr * d; }

/* centered: square_avg - grad_avg^2 cancels; both averages' updates and the difference are formed in
 * double from the stored values (products of two floats are exact there), so a float32 step does not
 * amplify the float32 rounding of the new averages (with alpha = 0 the difference is g^2 - g^2 = 0, as in
 * the reference, not the rounding error of g^2); for double it is torch's order of operations. */
#define FN_RMSPROP_LOOP(WD, CENTERED, MOM) FN_LOOP { FN_G(WD)                                           \
    T sqi = alpha * sq[i] + oma * (gi * gi);                                                            \
    T avg;                                                                                              \
    if (CENTERED) { double gad = (double)ga[i] + (double)oma * ((double)gi - (double)ga[i]);            \
                double sqd = (double)alpha * (double)sq[i] + (double)oma * ((double)gi * (double)gi);   \
                ga[i] = (T)gad; avg = (T)sqrt(sqd - gad * gad) + eps; }                                 \
    else avg = FN_SQRT(sqi) + eps;                                                                      \
    sq[i] = sqi;                                                                                        \
    if (MOM) { T bi = mu * b[i] + gi / avg; b[i] = bi; p[i] = p[i] - lr * bi; }                         \
    else p[i] = p[i] - lr * (gi / avg); }

#define FN_ADAM_LOOP(WD, AMS) FN_LOOP { FN_G(WD)                                                        \
    T pi = p[i] * decay;                                                                                \
    T mi = m[i] + omb1 * (gi - m[i]); m[i] = mi;                                                        \
    T vi = b2 * v[i] + omb2 * (gi * gi); v[i] = vi;                                                     \
    if (AMS) { T vm = vmax[i]; vi = vm > vi ? vm : vi; vmax[i] = vi; }                                  \
    p[i] = pi - step_size * (mi / (FN_SQRT(vi) / bc2 + eps)); }

/* Elements before the streams s[0..ns) (NULL: unused) of a segment of n elements of esize bytes reach a
 * 64-byte boundary, when they all share one misalignment (the usual case: NumPy starts large arrays 16 bytes
 * past a page, and then every 64-byte vector access of the loops would straddle two cache lines); 0 when
 * they are aligned, misaligned differently, or the segment is short. Every loop below is element-wise
 * without contraction, so where a segment is cut changes no bit. */
#define FN_HEAD_MIN 256
static inline ptrdiff_t fn_optim_head(const void *const *s, int ns, ptrdiff_t n, size_t esize) {
    uintptr_t a = (uintptr_t)s[0] & 63;
    if (a == 0 || a % esize != 0 || n < FN_HEAD_MIN)
        return 0;
    for (int r = 1; r < ns; r++)
        if (s[r] && ((uintptr_t)s[r] & 63) != a)
            return 0;
    return (ptrdiff_t)((64 - a) / esize);
}

/* No a*b+c -> fma contraction in these loops: gcc contracts differently in the vector body and in the
 * scalar remainder, so an element's result would depend on where a chunk boundary falls (the thread
 * count, which other tensors share the call). Without it every path does the same IEEE operations and
 * results are bitwise independent of the chunking. The loops are memory-bound: the extra multiplies
 * cost nothing measurable. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

#define FN_T float
#define FN_SUF(name) name##_f
#define FN_SQRT sqrtf
#include "fastnorm_optim_impl.h"
#undef FN_T
#undef FN_SUF
#undef FN_SQRT

#define FN_T double
#define FN_SUF(name) name##_d
#define FN_SQRT sqrt
#include "fastnorm_optim_impl.h"
#undef FN_T
#undef FN_SUF
#undef FN_SQRT

/* ------------------------------------------------------------------ 16-bit parameters (bfloat16, float16)
 * The parameter is stored in 16 bits (format fmt: FN_BF16 / FN_F16 of fastnorm_half.h), its state in
 * float32; the gradient in the parameter's format or in float32 (g32). A segment is walked in blocks of
 * FN_HBLOCK elements: the gradient block is widened into a float32 buffer (exact), the float32 value of
 * the parameter is either the float32 master copy (updated in place, then rounded to nearest even into
 * the parameter) or the widened 16-bit parameter (then rounded to nearest even, or stochastically with
 * sr). The update itself is the float32 loop above, so every float32 operation is the float32 path's. */
#define FN_HBLOCK 512

/* splitmix64's finalizer: a bijective mix of 64 bits (Steele, Lea, Flood 2014). */
static inline uint64_t fn_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* 32 random bits for element idx of the tensor whose key is `key` (counter-based: no state, so the bits
 * do not depend on which thread or chunk handles the element). */
static inline uint32_t fn_sr_bits(uint64_t key, uint64_t idx) {
    return (uint32_t)(fn_mix64(key + (idx + 1) * 0x9e3779b97f4a7c15ull) >> 32);
}

/* Stochastic rounding of f to bfloat16: add 16 random bits below the kept mantissa, truncate. The result
 * is one of the two bfloat16 neighbours of f, the upper (in magnitude) with probability equal to f's
 * distance from the lower over their spacing: unbiased. NaN stays a quiet NaN, inf stays inf. */
static inline uint16_t fn_f32_to_bf16_sr(float f, uint32_t r) {
    uint32_t u = fn_f32_bits(f);
    if ((u & 0x7fffffffu) >= 0x7f800000u)
        return fn_f32_to_bf16(f);
    return (uint16_t)((u + (r >> 16)) >> 16);
}

/* Stochastic rounding of f to float16: lo, hi the float16 neighbours of |f| (magnitudes), rounded up
 * with probability (|f| - lo) / (hi - lo) (exact in float32: hi - lo is a power of two and |f| - lo is
 * exact by Sterbenz), compared with a uniform 24-bit fraction. |f| >= 65504 (the largest finite float16),
 * inf and NaN round to nearest even. */
static inline uint16_t fn_f32_to_f16_sr(float f, uint32_t r) {
    uint16_t h = fn_f32_to_f16(f);
    float a = fabsf(f);
    if (!(a < 65504.0f))
        return h;
    float ha = fabsf(fn_f16_to_f32(h));
    if (ha == a)
        return h;
    uint16_t s = h & 0x8000u, lo = (uint16_t)((h & 0x7fffu) - (ha > a ? 1 : 0));
    float flo = fn_f16_to_f32(lo), fhi = fn_f16_to_f32((uint16_t)(lo + 1));
    float p = (a - flo) / (fhi - flo);
    float u = (float)(r >> 8) * 5.9604644775390625e-08f; /* 2^-24 */
    return (uint16_t)(s | (u < p ? lo + 1 : lo));
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define FN_ADAM_BF16_VEC 1

/* Adam over bfloat16 parameters, 16 lanes, in one pass (no float32 block buffers): the gradient (bfloat16 or
 * float32 with g32) widened in registers, the float32 value from the master copy w (or, w NULL, from p), the
 * operations of FN_ADAM_LOOP in its order (no fma: this header's fp-contract=off), the result rounded to
 * nearest even into p (NaN -> quiet NaN, as fn_f32_to_bf16). Bitwise the same as the blocked path
 * (fn_optim_segment_f on widened blocks). Elements i .. i + 15: the 16 bfloat16 results in o. */
#define FN_ADAM_BF16_16(i, o)                                                                                          \
    {                                                                                                                  \
        __m512 gi;                                                                                                     \
        if (g32)                                                                                                       \
            gi = _mm512_loadu_ps((const float *)g + (i));                                                              \
        else                                                                                                           \
            gi = _mm512_castsi512_ps(_mm512_slli_epi32(                                                                \
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)g + (i)))), 16));        \
        gi = _mm512_mul_ps(sgn, gi);                                                                                   \
        __m512 wi = w ? _mm512_loadu_ps(w + (i))                                                                       \
                      : _mm512_castsi512_ps(_mm512_slli_epi32(                                                         \
                            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + (i)))), 16));              \
        if (use_wd)                                                                                                    \
            gi = _mm512_add_ps(gi, _mm512_mul_ps(wd, wi));                                                             \
        __m512 pi = _mm512_mul_ps(wi, decay);                                                                          \
        __m512 mo = _mm512_loadu_ps(m + (i));                                                                          \
        __m512 mi = _mm512_add_ps(mo, _mm512_mul_ps(omb1, _mm512_sub_ps(gi, mo)));                                     \
        _mm512_storeu_ps(m + (i), mi);                                                                                 \
        __m512 vi = _mm512_add_ps(_mm512_mul_ps(b2, _mm512_loadu_ps(v + (i))), _mm512_mul_ps(omb2, _mm512_mul_ps(gi, gi))); \
        _mm512_storeu_ps(v + (i), vi);                                                                                 \
        if (ams) {                                                                                                     \
            vi = _mm512_max_ps(_mm512_loadu_ps(vmax + (i)), vi); /* vm > vi ? vm : vi, NaN included */                 \
            _mm512_storeu_ps(vmax + (i), vi);                                                                          \
        }                                                                                                              \
        __m512 den = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), bc2), eps);                                       \
        __m512 r = _mm512_sub_ps(pi, _mm512_mul_ps(step_size, _mm512_div_ps(mi, den)));                                \
        if (w)                                                                                                         \
            _mm512_storeu_ps(w + (i), r);                                                                              \
        __m512i u = _mm512_castps_si512(r);                                                                            \
        __m512i hi = _mm512_srli_epi32(u, 16);                                                                         \
        __m512i rn = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, bias), _mm512_and_si512(hi, one)), 16);   \
        __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, abs_mask), inf);                                   \
        o = _mm512_cvtepi32_epi16(_mm512_mask_or_epi32(rn, nan, hi, quiet));                                           \
    }

/* FN_ADAM_BF16_16 over the leading elements of a segment; returns how many it did (a multiple of 16, of 32
 * with a master copy); the caller does the rest. With a master copy p is written only, and its stores are
 * non-temporal (no read-for-ownership of p's lines: 2 of the 30 bytes an element would move): 32 results at
 * a time, shifted into p's 64-byte lines (p starts sh elements past one), each full line streamed, the
 * partial first and last lines stored with masks. */
static inline ptrdiff_t fn_adam_bf16_avx512(uint16_t *p, float *restrict w, const void *g, int g32,
                                            float *restrict m, float *restrict v, float *restrict vmax,
                                            ptrdiff_t n, const fn_hyper *h, const double *ts, int flags) {
    const __m512 sgn = _mm512_set1_ps((float)h->sgn), wd = _mm512_set1_ps((float)h->wd);
    const __m512 eps = _mm512_set1_ps((float)h->eps), decay = _mm512_set1_ps((float)h->decay);
    const __m512 omb1 = _mm512_set1_ps((float)h->omb1), b2 = _mm512_set1_ps((float)h->beta2);
    const __m512 omb2 = _mm512_set1_ps((float)(1.0 - h->beta2));
    const __m512 step_size = _mm512_set1_ps((float)ts[0]), bc2 = _mm512_set1_ps((float)ts[1]);
    const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1), quiet = _mm512_set1_epi32(0x40);
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    const int use_wd = (flags & FN_WD) != 0, ams = (flags & FN_AMSGRAD) != 0;
    ptrdiff_t i = 0;
    __m256i o0, o1;
    if (!w) {
        for (; i + 16 <= n; i += 16) {
            FN_ADAM_BF16_16(i, o0)
            _mm256_storeu_si256((__m256i *)(p + i), o0);
        }
        return i;
    }
    const unsigned sh = (unsigned)(((uintptr_t)p & 63) >> 1); /* p: 2-byte aligned */
    /* line = the last sh results of the previous 32, then the first 32 - sh of these */
    const __m512i idx = _mm512_add_epi16(
        _mm512_set1_epi16((short)(32 - sh)),
        _mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8,
                         7, 6, 5, 4, 3, 2, 1, 0));
    __m512i prev = _mm512_setzero_si512();
    for (; i + 32 <= n; i += 32) {
        FN_ADAM_BF16_16(i, o0)
        FN_ADAM_BF16_16(i + 16, o1)
        __m512i cur = _mm512_inserti64x4(_mm512_castsi256_si512(o0), o1, 1);
        if (i == 0 && sh)
            _mm512_mask_storeu_epi16(p, (__mmask32)(0xffffffffu >> sh), cur);
        else
            _mm512_stream_si512((__m512i *)(p + i - sh), _mm512_permutex2var_epi16(prev, idx, cur));
        prev = cur;
    }
    if (i && sh)
        _mm512_mask_storeu_epi16(p + i - 32, (__mmask32)(0xffffffffu << (32 - sh)), prev);
    _mm_sfence();
    return i;
}
#undef FN_ADAM_BF16_16
#else
#define FN_ADAM_BF16_VEC 0
#endif

/* Elements [k0 + b, k0 + n) of one 16-bit tensor (arguments as fn_optim_segment_h's), FN_HBLOCK at a time. */
static inline void fn_optim_blocks_h(int algo, int flags, int fmt, int g32, int sr, uint16_t *p, float *master,
                                     const void *g, float *s0, float *s1, float *s2, ptrdiff_t k0, ptrdiff_t b,
                                     ptrdiff_t n, const fn_hyper *h, const double *ts, uint64_t key) {
    float pbuf[FN_HBLOCK], gbuf[FN_HBLOCK];
    for (; b < n; b += FN_HBLOCK) {
        ptrdiff_t m = n - b < FN_HBLOCK ? n - b : FN_HBLOCK;
        const float *gb = gbuf;
        float *pb = pbuf;
        if (g32)
            gb = (const float *)g + b;
        else
            fn_half_load(fmt, (const uint16_t *)g + b, gbuf, m);
        if (master)
            pb = master + b;
        else
            fn_half_load(fmt, p + b, pbuf, m);
        fn_optim_segment_f(algo, flags, pb, gb, s0 ? s0 + b : NULL, s1 ? s1 + b : NULL, s2 ? s2 + b : NULL, m,
                           h, ts);
        if (!sr) {
            fn_half_store(fmt, pb, p + b, m);
        } else if (fmt == FN_BF16) {
            for (ptrdiff_t i = 0; i < m; i++)
                p[b + i] = fn_f32_to_bf16_sr(pb[i], fn_sr_bits(key, (uint64_t)(k0 + b + i)));
        } else {
            for (ptrdiff_t i = 0; i < m; i++)
                p[b + i] = fn_f32_to_f16_sr(pb[i], fn_sr_bits(key, (uint64_t)(k0 + b + i)));
        }
    }
}

/* Elements [k0, k0 + n) of one 16-bit tensor: p (16-bit, fmt), master (float32 or NULL), g (16-bit or,
 * with g32, float32), s0..s2 float32 state (NULL where unused); key: the stochastic-rounding key. bfloat16
 * Adam on AVX-512: the head before the float32 streams reach a 64-byte boundary (when they share one
 * misalignment: fn_optim_head) by blocks, the body in registers (fn_adam_bf16_avx512), the tail by blocks. */
static inline void fn_optim_segment_h(int algo, int flags, int fmt, int g32, int sr, uint16_t *p, float *master,
                                      const void *g, float *s0, float *s1, float *s2, ptrdiff_t k0, ptrdiff_t n,
                                      const fn_hyper *h, const double *ts, uint64_t key) {
    ptrdiff_t b = 0;
#if FN_ADAM_BF16_VEC
    if (algo == FN_ADAM && fmt == FN_BF16 && !sr) {
        const void *const f32[5] = {master ? (const void *)master : s0, s0, s1, s2, g32 ? g : NULL};
        ptrdiff_t k = fn_optim_head(f32, 5, n, 4);
        fn_optim_blocks_h(algo, flags, fmt, g32, sr, p, master, g, s0, s1, s2, k0, 0, k, h, ts, key);
        b = k + fn_adam_bf16_avx512(p + k, master ? master + k : NULL, (const char *)g + k * (g32 ? 4 : 2), g32,
                                    s0 + k, s1 + k, s2 ? s2 + k : NULL, n - k, h, ts, flags);
    }
#endif
    fn_optim_blocks_h(algo, flags, fmt, g32, sr, p, master, g, s0, s1, s2, k0, b, n, h, ts, key);
}

#if defined(__clang__)
#pragma STDC FP_CONTRACT DEFAULT
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
