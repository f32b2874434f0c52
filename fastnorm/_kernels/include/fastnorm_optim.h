/* Optimizer update loops: one streaming pass over a contiguous segment of one tensor.
 *
 * Each function reads p, g and the state once and writes p and the state once, element by element,
 * in the segment's dtype T (float or double); the scalars arrive in double and are rounded to T once.
 * Pointers are `restrict` (a parameter, its gradient and its state never overlap; the Python layer
 * checks), so gcc vectorizes the loops without runtime alias checks. Options are compile-time constants
 * of each loop instantiation (FN_*_LOOP below), so every combination gets its own branch-free loop.
 * g is the gradient negated when maximize (sgn = -1, an exact multiply).
 */
#ifndef FASTNORM_OPTIM_H
#define FASTNORM_OPTIM_H
#include <math.h>
#include <stddef.h>

enum { FN_SGD = 0, FN_ADAGRAD = 1, FN_ADADELTA = 2, FN_RMSPROP = 3, FN_ADAM = 4 };

/* flags */
#define FN_WD 1        /* L2 weight decay folded into g: g += wd * p */
#define FN_MOMENTUM 2  /* SGD / RMSprop momentum buffer */
#define FN_NESTEROV 4  /* SGD */
#define FN_CENTERED 8  /* RMSprop */
#define FN_AMSGRAD 16  /* Adam */

/* Hyperparameters shared by every tensor of one call (only the fields an algorithm uses are read). */
typedef struct {
    double lr, wd, sgn, eps;
    double mu, dampc;          /* momentum, 1 - dampening */
    double rho, alpha;         /* Adadelta rho, RMSprop alpha */
    double omb1, beta2, decay; /* Adam: 1 - beta1, beta2, AdamW's 1 - lr * wd (1 otherwise) */
} fn_hyper;

/* Per-tensor scalars (row t of the (T, 2) table):
 *   SGD:     c1, c2 with b = c1 * b + c2 * g  (c1 = 0, c2 = 1 on the first step, else momentum, 1 - dampening)
 *   Adagrad: clr = lr / (1 + (step - 1) * lr_decay)
 *   Adam:    step_size = lr / (1 - beta1^step),  bc2_sqrt = sqrt(1 - beta2^step)                      */

#define FN_LOOP for (ptrdiff_t i = 0; i < n; i++)
#define FN_G(WD) fn_t gi = sgn * g[i]; if (WD) gi += wd * p[i];

#define FN_DEFINE_OPTIM(T, SUF)                                                                          \
                                                                                                        \
/* SGD: b = c1*b + c2*g; g = nesterov ? g + mu*b : b; p -= lr*g */                                      \
static inline void fn_sgd_##SUF(T *restrict p, const T *restrict g, T *restrict b, ptrdiff_t n,       \
                                const fn_hyper *h, const double *ts, int flags) {                      \
    const T lr = (T)h->lr, wd = (T)h->wd, sgn = (T)h->sgn, mu = (T)h->mu;                              \
    const T c1 = ts ? (T)ts[0] : 0, c2 = ts ? (T)ts[1] : 0;                                             \
    typedef T fn_t; (void)mu; (void)c1; (void)c2;                                                      \
    FN_SGD_DISPATCH                                                                                     \
}                                                                                                       \
                                                                                                        \
/* Adagrad: s += g*g; p -= clr * g / (sqrt(s) + eps) */                                                 \
static inline void fn_adagrad_##SUF(T *restrict p, const T *restrict g, T *restrict s, ptrdiff_t n,   \
                                    const fn_hyper *h, const double *ts, int flags) {                  \
    const T wd = (T)h->wd, sgn = (T)h->sgn, eps = (T)h->eps, clr = (T)ts[0]; typedef T fn_t;                           \
    if (flags & FN_WD) { FN_ADAGRAD_LOOP(1) } else { FN_ADAGRAD_LOOP(0) }                              \
}                                                                                                       \
                                                                                                        \
/* Adadelta: sq = rho*sq + (1-rho)*g*g; d = sqrt(acc+eps)/sqrt(sq+eps)*g; acc = rho*acc + (1-rho)*d*d;  \
   p -= lr*d */                                                                                         \
static inline void fn_adadelta_##SUF(T *restrict p, const T *restrict g, T *restrict sq,              \
                                     T *restrict acc, ptrdiff_t n, const fn_hyper *h, int flags) {     \
    const T lr = (T)h->lr, wd = (T)h->wd, sgn = (T)h->sgn, eps = (T)h->eps;                            \
    const T rho = (T)h->rho, omr = (T)(1.0 - h->rho); typedef T fn_t;                                                  \
    if (flags & FN_WD) { FN_ADADELTA_LOOP(1) } else { FN_ADADELTA_LOOP(0) }                            \
}                                                                                                       \
                                                                                                        \
/* RMSprop: sq = alpha*sq + (1-alpha)*g*g; centered: ga += (1-alpha)*(g-ga), avg = sqrt(sq-ga*ga)+eps,  \
   else avg = sqrt(sq)+eps; momentum: b = mu*b + g/avg, p -= lr*b; else p -= lr*g/avg */              \
static inline void fn_rmsprop_##SUF(T *restrict p, const T *restrict g, T *restrict sq,               \
                                    T *restrict ga, T *restrict b, ptrdiff_t n, const fn_hyper *h,     \
                                    int flags) {                                                        \
    const T lr = (T)h->lr, wd = (T)h->wd, sgn = (T)h->sgn, eps = (T)h->eps, mu = (T)h->mu;             \
    const T alpha = (T)h->alpha, oma = (T)(1.0 - h->alpha); typedef T fn_t;                                            \
    switch (flags & (FN_WD | FN_CENTERED | FN_MOMENTUM)) {                                              \
    case 0: FN_RMSPROP_LOOP(0, 0, 0) break;                                                             \
    case FN_WD: FN_RMSPROP_LOOP(1, 0, 0) break;                                                         \
    case FN_CENTERED: FN_RMSPROP_LOOP(0, 1, 0) break;                                                   \
    case FN_WD | FN_CENTERED: FN_RMSPROP_LOOP(1, 1, 0) break;                                           \
    case FN_MOMENTUM: FN_RMSPROP_LOOP(0, 0, 1) break;                                                   \
    case FN_WD | FN_MOMENTUM: FN_RMSPROP_LOOP(1, 0, 1) break;                                           \
    case FN_CENTERED | FN_MOMENTUM: FN_RMSPROP_LOOP(0, 1, 1) break;                                     \
    default: FN_RMSPROP_LOOP(1, 1, 1) break;                                                            \
    }                                                                                                   \
}                                                                                                       \
                                                                                                        \
/* Adam: p *= decay; m += (1-b1)*(g-m); v = b2*v + (1-b2)*g*g; amsgrad: vmax = max(vmax, v);           \
   p -= step_size * m / (sqrt(v or vmax) / bc2_sqrt + eps) */                                           \
static inline void fn_adam_##SUF(T *restrict p, const T *restrict g, T *restrict m, T *restrict v,    \
                                 T *restrict vmax, ptrdiff_t n, const fn_hyper *h, const double *ts,   \
                                 int flags) {                                                           \
    const T wd = (T)h->wd, sgn = (T)h->sgn, eps = (T)h->eps, decay = (T)h->decay;                      \
    const T omb1 = (T)h->omb1, b2 = (T)h->beta2, omb2 = (T)(1.0 - h->beta2);                           \
    const T step_size = (T)ts[0], bc2 = (T)ts[1]; typedef T fn_t;                                                      \
    switch (flags & (FN_WD | FN_AMSGRAD)) {                                                             \
    case 0: FN_ADAM_LOOP(0, 0) break;                                                                   \
    case FN_WD: FN_ADAM_LOOP(1, 0) break;                                                               \
    case FN_AMSGRAD: FN_ADAM_LOOP(0, 1) break;                                                          \
    default: FN_ADAM_LOOP(1, 1) break;                                                                  \
    }                                                                                                   \
}                                                                                                       \
                                                                                                        \
/* One segment of tensor data: s0, s1, s2 are the algorithm's state streams in the order of the         \
   functions above (unused ones NULL). */                                                               \
static inline void fn_optim_segment_##SUF(int algo, int flags, T *p, const T *g, T *s0, T *s1, T *s2, \
                                          ptrdiff_t n, const fn_hyper *h, const double *ts) {          \
    switch (algo) {                                                                                     \
    case FN_SGD: fn_sgd_##SUF(p, g, s0, n, h, ts, flags); break;                                        \
    case FN_ADAGRAD: fn_adagrad_##SUF(p, g, s0, n, h, ts, flags); break;                                \
    case FN_ADADELTA: fn_adadelta_##SUF(p, g, s0, s1, n, h, flags); break;                              \
    case FN_RMSPROP: fn_rmsprop_##SUF(p, g, s0, s1, s2, n, h, flags); break;                            \
    default: fn_adam_##SUF(p, g, s0, s1, s2, n, h, ts, flags); break;                                   \
    }                                                                                                   \
}

/* The loop bodies, instantiated with constant options. */
#define FN_SGD_LOOP(WD, MOM, NEST)                                                                      \
    FN_LOOP { FN_G(WD)                                                                                  \
        if (MOM) { fn_t bi = c1 * b[i] + c2 * gi; b[i] = bi; gi = (NEST) ? gi + mu * bi : bi; }            \
        p[i] = p[i] - lr * gi; }

#define FN_SGD_DISPATCH                                                                              \
    switch (flags & (FN_WD | FN_MOMENTUM | FN_NESTEROV)) {                                              \
    case 0: FN_SGD_LOOP(0, 0, 0) break;                                                                 \
    case FN_WD: FN_SGD_LOOP(1, 0, 0) break;                                                             \
    case FN_MOMENTUM: FN_SGD_LOOP(0, 1, 0) break;                                                       \
    case FN_WD | FN_MOMENTUM: FN_SGD_LOOP(1, 1, 0) break;                                               \
    case FN_MOMENTUM | FN_NESTEROV: FN_SGD_LOOP(0, 1, 1) break;                                         \
    default: FN_SGD_LOOP(1, 1, 1) break;                                                                \
    }

#define FN_ADAGRAD_LOOP(WD)                                                                             \
    FN_LOOP { FN_G(WD)                                                                                  \
        fn_t si = s[i] + gi * gi; s[i] = si;                                                               \
        p[i] = p[i] - clr * (gi / (sqrtf_or_sqrt(si) + eps)); }

#define FN_ADADELTA_LOOP(WD)                                                                            \
    FN_LOOP { FN_G(WD)                                                                                  \
        fn_t sqi = rho * sq[i] + omr * (gi * gi); sq[i] = sqi;                                             \
        fn_t d = sqrtf_or_sqrt(acc[i] + eps) / sqrtf_or_sqrt(sqi + eps) * gi;                              \
        acc[i] = rho * acc[i] + omr * (d * d);                                                          \
        p[i] = p[i] - lr * d; }

#define FN_RMSPROP_LOOP(WD, CENTERED, MOM)                                                              \
    FN_LOOP { FN_G(WD)                                                                                  \
        fn_t sqi = alpha * sq[i] + oma * (gi * gi); sq[i] = sqi;                                           \
        fn_t avg;                                                                                          \
        if (CENTERED) { fn_t gai = ga[i] + oma * (gi - ga[i]); ga[i] = gai;                                \
                        avg = sqrtf_or_sqrt(sqi - gai * gai) + eps; }                                   \
        else avg = sqrtf_or_sqrt(sqi) + eps;                                                            \
        if (MOM) { fn_t bi = mu * b[i] + gi / avg; b[i] = bi; p[i] = p[i] - lr * bi; }                     \
        else p[i] = p[i] - lr * (gi / avg); }

#define FN_ADAM_LOOP(WD, AMS)                                                                           \
    FN_LOOP { FN_G(WD)                                                                                  \
        fn_t pi = p[i] * decay;                                                                            \
        fn_t mi = m[i] + omb1 * (gi - m[i]); m[i] = mi;                                                    \
        fn_t vi = b2 * v[i] + omb2 * (gi * gi); v[i] = vi;                                                 \
        if (AMS) { fn_t vm = vmax[i]; vi = vm > vi ? vm : vi; vmax[i] = vi; }                              \
        p[i] = pi - step_size * (mi / (sqrtf_or_sqrt(vi) / bc2 + eps)); }

#define sqrtf_or_sqrt(x) _Generic((x), float: sqrtf, default: sqrt)(x)

/* No a*b+c -> fma contraction in these loops: gcc contracts differently in the vector body and in the
 * scalar remainder, so an element's result would depend on where a chunk boundary falls (the thread
 * count, which other tensors are in the call). Without it every path does the same IEEE operations:
 * results are bitwise independent of the thread count and chunking. The loops are memory-bound; the
 * extra multiplies cost nothing measurable. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
FN_DEFINE_OPTIM(float, f)
FN_DEFINE_OPTIM(double, d)
#if defined(__clang__)
#pragma STDC FP_CONTRACT DEFAULT
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
