/* Row loops of the LayerNorm / RMSNorm backward that write several outputs.
 *
 * gcc does not vectorize a loop that stores to three rows (dx and the dweight/dbias accumulators) while
 * reading four others: the run-time alias checks it would need exceed its limit, so it keeps the scalar loop
 * (measured: the scalar loop took a quarter of the LayerNorm backward). The rows never overlap except dx
 * with dh, element for element (the add-norm backward may pass the same row), which carries no dependence
 * between iterations: `GCC ivdep` lets the loop vectorize. The other cases (no weight, or a gradient not
 * wanted) are plain loops gcc vectorizes with run-time alias checks. The accumulator rows are updated before dx
 * is written: dx's stores miss the cache (a read for ownership each), and accumulator loads and stores queued
 * behind them would wait for those misses (a C model of the row loop on Zen 5, 4096 x 1024 float32, one thread,
 * best of 15 on a loaded machine: dx then the dbias loop took 1.3-1.5x the dx loop alone, the dbias loop first
 * 1.03-1.08x). fastnorm_half_rows.h repeats these operations, as gcc contracts and reassociates them, on 16-bit
 * rows (keep the two in step).
 */
#ifndef FASTNORM_ROWS_H
#define FASTNORM_ROWS_H
#include <math.h>
#include <stddef.h>

#if defined(__GNUC__) && !defined(__clang__)
#define FN_IVDEP _Pragma("GCC ivdep")
#elif defined(__clang__)
#define FN_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define FN_IVDEP
#endif

#if defined(__FMA__)
/* The LayerNorm backward's affine row on FMA targets, per block of FN_XH_BLOCK elements: the accumulators first,
 * xhat kept in an L1 buffer for the dx loop (the values the one-loop form computed once for both), dx written as
 * gcc contracted it in that one loop: rs * (t - xh * c2) with t = dy * w - c1, both fused (on its own gcc would
 * regroup it as dy * w - (c1 + xh * c2)); so the same bits as the one loop. */
#define FN_XH_BLOCK 512
#define FN_LN_DX(T, dy, w, xh)                                                                         \
    (sizeof(T) == sizeof(float) ? rs * fmaf(-(xh), c2, fmaf((dy), (w), -c1))                           \
                                : rs * fma(-(xh), c2, fma((dy), (w), -c1)))
#define FN_LN_BWD_AFFINE(T)                                                                            \
    T xh[FN_XH_BLOCK];                                                                                 \
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FN_XH_BLOCK) {                                                \
        ptrdiff_t k = n - j0 < FN_XH_BLOCK ? n - j0 : FN_XH_BLOCK;                                     \
        const T *dy_ = dy + j0, *x_ = x + j0, *w_ = w + j0;                                            \
        T *dx_ = dx + j0, *dwa_ = dwa + j0, *dba_ = dba + j0;                                          \
        FN_IVDEP for (ptrdiff_t j = 0; j < k; j++) {                                                   \
            xh[j] = (x_[j] - mu) * rs;                                                                 \
            dwa_[j] += dy_[j] * xh[j];                                                                 \
            dba_[j] += dy_[j];                                                                         \
        }                                                                                              \
        if (dh) {                                                                                      \
            const T *dh_ = dh + j0;                                                                    \
            FN_IVDEP for (ptrdiff_t j = 0; j < k; j++) dx_[j] = FN_LN_DX(T, dy_[j], w_[j], xh[j]) + dh_[j]; \
        } else {                                                                                       \
            FN_IVDEP for (ptrdiff_t j = 0; j < k; j++) dx_[j] = FN_LN_DX(T, dy_[j], w_[j], xh[j]);      \
        }                                                                                              \
    }
#else
/* without FMA: the one loop (gcc regroups the split form's dx differently here; the targets that matter for speed
 * have FMA) */
#define FN_LN_BWD_AFFINE(T)                                                                            \
    if (dh) {                                                                                          \
        FN_IVDEP for (ptrdiff_t j = 0; j < n; j++) {                                                   \
            T xh = (x[j] - mu) * rs;                                                                   \
            dx[j] = rs * (dy[j] * w[j] - c1 - xh * c2) + dh[j];                                        \
            dwa[j] += dy[j] * xh;                                                                      \
            dba[j] += dy[j];                                                                           \
        }                                                                                              \
    } else {                                                                                           \
        FN_IVDEP for (ptrdiff_t j = 0; j < n; j++) {                                                   \
            T xh = (x[j] - mu) * rs;                                                                   \
            dx[j] = rs * (dy[j] * w[j] - c1 - xh * c2);                                                \
            dwa[j] += dy[j] * xh;                                                                      \
            dba[j] += dy[j];                                                                           \
        }                                                                                              \
    }
#endif

#define FN_DEFINE_ROWS(T, SUF)                                                                         \
/* xh = (x - mu) * rs;  dx = rs * (dy * w - c1 - xh * c2) (+ dh);  dwa += dy * xh;  dba += dy */        \
static inline void fn_ln_bwd_affine_##SUF(const T *dy, const T *x, const T *w, const T *dh, T *dx, T *dwa, \
                                          T *dba, T mu, T rs, T c1, T c2, ptrdiff_t n) {               \
    FN_LN_BWD_AFFINE(T)                                                                                \
}                                                                                                      \
/* dx = rs * (dy * w - x * c2) (+ dh);  dwa += dy * (x * rs) */                                         \
static inline void fn_rms_bwd_affine_##SUF(const T *dy, const T *x, const T *w, const T *dh, T *dx, T *dwa, \
                                           T rs, T c2, ptrdiff_t n) {                                  \
    FN_IVDEP for (ptrdiff_t j = 0; j < n; j++) dwa[j] += dy[j] * (x[j] * rs);                          \
    if (dh) {                                                                                          \
        FN_IVDEP for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] * w[j] - x[j] * c2) + dh[j];    \
    } else {                                                                                           \
        FN_IVDEP for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] * w[j] - x[j] * c2);            \
    }                                                                                                  \
}                                                                                                      \
/* The LayerNorm backward row with c1, c2 given: dx = rs * (g - c1 - xhat * c2) (+ dh), dwa += dy * xhat,      \
 * dba += dy, g = dy * w (dy without w); w, dh, dwa, dba may be NULL. The affine case with both gradients in \
 * one loop; the others as separate loops (dx, then the accumulators), which gcc vectorizes as they are. */  \
static inline void fn_ln_bwd_apply_##SUF(const T *dy, const T *x, T mu, T rs, T c1, T c2, const T *w,        \
                                         const T *dh, T *dx, T *dwa, T *dba, ptrdiff_t n) {              \
    if (w && dwa && dba) {                                                                             \
        fn_ln_bwd_affine_##SUF(dy, x, w, dh, dx, dwa, dba, mu, rs, c1, c2, n);                         \
        return;                                                                                        \
    }                                                                                                  \
    if (dwa && dba) {                                                                                  \
        for (ptrdiff_t j = 0; j < n; j++) { dwa[j] += dy[j] * ((x[j] - mu) * rs); dba[j] += dy[j]; }   \
    } else if (dwa) {                                                                                  \
        for (ptrdiff_t j = 0; j < n; j++) dwa[j] += dy[j] * ((x[j] - mu) * rs);                        \
    } else if (dba) {                                                                                  \
        for (ptrdiff_t j = 0; j < n; j++) dba[j] += dy[j];                                             \
    }                                                                                                  \
    if (w && dh) for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] * w[j] - c1 - (x[j] - mu) * rs * c2) + dh[j]; \
    else if (w) for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] * w[j] - c1 - (x[j] - mu) * rs * c2); \
    else if (dh) for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] - c1 - (x[j] - mu) * rs * c2) + dh[j]; \
    else for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] - c1 - (x[j] - mu) * rs * c2);          \
}                                                                                                      \
/* The RMSNorm backward row with c2 given: dx = rs * (g - x * c2) (+ dh), dwa += dy * (x * rs) */      \
static inline void fn_rms_bwd_apply_##SUF(const T *dy, const T *x, T rs, T c2, const T *w, const T *dh, T *dx, \
                                          T *dwa, ptrdiff_t n) {                                       \
    if (w && dwa) {                                                                                    \
        fn_rms_bwd_affine_##SUF(dy, x, w, dh, dx, dwa, rs, c2, n);                                     \
        return;                                                                                        \
    }                                                                                                  \
    if (dwa) for (ptrdiff_t j = 0; j < n; j++) dwa[j] += dy[j] * (x[j] * rs);                          \
    if (w && dh) for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] * w[j] - x[j] * c2) + dh[j];    \
    else if (w) for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] * w[j] - x[j] * c2);             \
    else if (dh) for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] - x[j] * c2) + dh[j];           \
    else for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] - x[j] * c2);                           \
}                                                                                                      \
/* part += acc; acc = 0 */                                                                             \
static inline void fn_fold_##SUF(T *acc, double *part, ptrdiff_t n) {                                  \
    FN_IVDEP for (ptrdiff_t j = 0; j < n; j++) { part[j] += (double)acc[j]; acc[j] = 0; }             \
}

FN_DEFINE_ROWS(float, f)
FN_DEFINE_ROWS(double, d)

#endif
