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

/* centered: square_avg - grad_avg^2 cancels; it is formed in double (the product of two floats is exact
 * there, one rounding in all), so a float32 step does not amplify the rounding of grad_avg^2 (torch's
 * float32 step does); for double it is torch's order of operations. */
#define FN_RMSPROP_LOOP(WD, CENTERED, MOM) FN_LOOP { FN_G(WD)                                           \
    T sqi = alpha * sq[i] + oma * (gi * gi); sq[i] = sqi;                                               \
    T avg;                                                                                              \
    if (CENTERED) { T gai = ga[i] + oma * (gi - ga[i]); ga[i] = gai;                                     \
                avg = (T)sqrt((double)sqi - (double)gai * (double)gai) + eps; }                         \
    else avg = FN_SQRT(sqi) + eps;                                                                      \
    if (MOM) { T bi = mu * b[i] + gi / avg; b[i] = bi; p[i] = p[i] - lr * bi; }                         \
    else p[i] = p[i] - lr * (gi / avg); }

#define FN_ADAM_LOOP(WD, AMS) FN_LOOP { FN_G(WD)                                                        \
    T pi = p[i] * decay;                                                                                \
    T mi = m[i] + omb1 * (gi - m[i]); m[i] = mi;                                                        \
    T vi = b2 * v[i] + omb2 * (gi * gi); v[i] = vi;                                                     \
    if (AMS) { T vm = vmax[i]; vi = vm > vi ? vm : vi; vmax[i] = vi; }                                  \
    p[i] = pi - step_size * (mi / (FN_SQRT(vi) / bc2 + eps)); }

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

#if defined(__clang__)
#pragma STDC FP_CONTRACT DEFAULT
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif
