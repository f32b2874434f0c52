/* Row loops of the LayerNorm / RMSNorm backward that write several outputs.
 *
 * gcc does not vectorize a loop that stores to three rows (dx and the dweight/dbias accumulators) while
 * reading four others: the run-time alias checks it would need exceed its limit, so it keeps the scalar loop
 * (measured: the scalar loop took a quarter of the LayerNorm backward). The rows never overlap except dx
 * with dh, element for element (the add-norm backward may pass the same row), which carries no dependence
 * between iterations: `GCC ivdep` lets the loop vectorize. The other cases (no weight, or a gradient not
 * wanted) are plain loops gcc vectorizes with run-time alias checks. fastnorm_half_rows.h repeats these
 * operations, as gcc contracts and reassociates them, on 16-bit rows (keep the two in step).
 */
#ifndef FASTNORM_ROWS_H
#define FASTNORM_ROWS_H
#include <stddef.h>

#if defined(__GNUC__) && !defined(__clang__)
#define FN_IVDEP _Pragma("GCC ivdep")
#elif defined(__clang__)
#define FN_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define FN_IVDEP
#endif

#define FN_DEFINE_ROWS(T, SUF)                                                                         \
/* xh = (x - mu) * rs;  dx = rs * (dy * w - c1 - xh * c2) (+ dh);  dwa += dy * xh;  dba += dy */        \
static inline void fn_ln_bwd_affine_##SUF(const T *dy, const T *x, const T *w, const T *dh, T *dx, T *dwa, \
                                          T *dba, T mu, T rs, T c1, T c2, ptrdiff_t n) {               \
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
    }                                                                                                  \
}                                                                                                      \
/* dx = rs * (dy * w - x * c2) (+ dh);  dwa += dy * (x * rs) */                                         \
static inline void fn_rms_bwd_affine_##SUF(const T *dy, const T *x, const T *w, const T *dh, T *dx, T *dwa, \
                                           T rs, T c2, ptrdiff_t n) {                                  \
    if (dh) {                                                                                          \
        FN_IVDEP for (ptrdiff_t j = 0; j < n; j++) {                                                   \
            dx[j] = rs * (dy[j] * w[j] - x[j] * c2) + dh[j];                                           \
            dwa[j] += dy[j] * (x[j] * rs);                                                             \
        }                                                                                              \
    } else {                                                                                           \
        FN_IVDEP for (ptrdiff_t j = 0; j < n; j++) {                                                   \
            dx[j] = rs * (dy[j] * w[j] - x[j] * c2);                                                   \
            dwa[j] += dy[j] * (x[j] * rs);                                                             \
        }                                                                                              \
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
    if (w && dh) for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] * w[j] - c1 - (x[j] - mu) * rs * c2) + dh[j]; \
    else if (w) for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] * w[j] - c1 - (x[j] - mu) * rs * c2); \
    else if (dh) for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] - c1 - (x[j] - mu) * rs * c2) + dh[j]; \
    else for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] - c1 - (x[j] - mu) * rs * c2);          \
    if (dwa && dba) {                                                                                  \
        for (ptrdiff_t j = 0; j < n; j++) { dwa[j] += dy[j] * ((x[j] - mu) * rs); dba[j] += dy[j]; }   \
    } else if (dwa) {                                                                                  \
        for (ptrdiff_t j = 0; j < n; j++) dwa[j] += dy[j] * ((x[j] - mu) * rs);                        \
    } else if (dba) {                                                                                  \
        for (ptrdiff_t j = 0; j < n; j++) dba[j] += dy[j];                                             \
    }                                                                                                  \
}                                                                                                      \
/* The RMSNorm backward row with c2 given: dx = rs * (g - x * c2) (+ dh), dwa += dy * (x * rs) */      \
static inline void fn_rms_bwd_apply_##SUF(const T *dy, const T *x, T rs, T c2, const T *w, const T *dh, T *dx, \
                                          T *dwa, ptrdiff_t n) {                                       \
    if (w && dwa) {                                                                                    \
        fn_rms_bwd_affine_##SUF(dy, x, w, dh, dx, dwa, rs, c2, n);                                     \
        return;                                                                                        \
    }                                                                                                  \
    if (w && dh) for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] * w[j] - x[j] * c2) + dh[j];    \
    else if (w) for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] * w[j] - x[j] * c2);             \
    else if (dh) for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] - x[j] * c2) + dh[j];           \
    else for (ptrdiff_t j = 0; j < n; j++) dx[j] = rs * (dy[j] - x[j] * c2);                           \
    if (dwa) for (ptrdiff_t j = 0; j < n; j++) dwa[j] += dy[j] * (x[j] * rs);                          \
}                                                                                                      \
/* part += acc; acc = 0 */                                                                             \
static inline void fn_fold_##SUF(T *acc, double *part, ptrdiff_t n) {                                  \
    FN_IVDEP for (ptrdiff_t j = 0; j < n; j++) { part[j] += (double)acc[j]; acc[j] = 0; }             \
}

FN_DEFINE_ROWS(float, f)
FN_DEFINE_ROWS(double, d)

#endif
