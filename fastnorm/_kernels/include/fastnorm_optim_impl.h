/* The optimizer segment functions for one dtype: included by fastnorm_optim.h once with FN_T = float
 * (names *_f) and once with FN_T = double (names *_d). No include guard on purpose. */

/* SGD: g += wd*p; b = c1*b + c2*g; g = nesterov ? g + mu*b : b; p -= lr*g */
static inline void FN_SUF(fn_sgd)(FN_T *restrict p, const FN_T *restrict g, FN_T *restrict b, ptrdiff_t n,
                                  const fn_hyper *h, const double *ts, int flags) {
    typedef FN_T T;
    const T lr = (T)h->lr, wd = (T)h->wd, sgn = (T)h->sgn, mu = (T)h->mu;
    const T c1 = ts ? (T)ts[0] : 0, c2 = ts ? (T)ts[1] : 0;
    switch (flags & (FN_WD | FN_MOMENTUM | FN_NESTEROV)) {
    case 0: FN_SGD_LOOP(0, 0, 0) break;
    case FN_WD: FN_SGD_LOOP(1, 0, 0) break;
    case FN_MOMENTUM: FN_SGD_LOOP(0, 1, 0) break;
    case FN_WD | FN_MOMENTUM: FN_SGD_LOOP(1, 1, 0) break;
    case FN_MOMENTUM | FN_NESTEROV: FN_SGD_LOOP(0, 1, 1) break;
    default: FN_SGD_LOOP(1, 1, 1) break;
    }
}

/* Adagrad: g += wd*p; s += g*g; p -= clr * g / (sqrt(s) + eps) */
static inline void FN_SUF(fn_adagrad)(FN_T *restrict p, const FN_T *restrict g, FN_T *restrict s, ptrdiff_t n,
                                      const fn_hyper *h, const double *ts, int flags) {
    typedef FN_T T;
    const T wd = (T)h->wd, sgn = (T)h->sgn, eps = (T)h->eps, clr = (T)ts[0];
    if (flags & FN_WD) { FN_ADAGRAD_LOOP(1) } else { FN_ADAGRAD_LOOP(0) }
}

/* Adadelta: g += wd*p; sq = rho*sq + (1-rho)*g*g; d = sqrt(acc+eps) / sqrt(sq+eps) * g;
 * acc = rho*acc + (1-rho)*d*d; p -= lr*d */
static inline void FN_SUF(fn_adadelta)(FN_T *restrict p, const FN_T *restrict g, FN_T *restrict sq,
                                       FN_T *restrict acc, ptrdiff_t n, const fn_hyper *h, int flags) {
    typedef FN_T T;
    const T lr = (T)h->lr, wd = (T)h->wd, sgn = (T)h->sgn, eps = (T)h->eps;
    const T rho = (T)h->rho, omr = (T)(1.0 - h->rho);
    if (flags & FN_WD) { FN_ADADELTA_LOOP(1) } else { FN_ADADELTA_LOOP(0) }
}

/* RMSprop: g += wd*p; sq = alpha*sq + (1-alpha)*g*g; centered: ga += (1-alpha)*(g-ga),
 * avg = sqrt(sq - ga*ga) + eps, else avg = sqrt(sq) + eps; momentum: b = mu*b + g/avg, p -= lr*b;
 * else p -= lr*g/avg */
static inline void FN_SUF(fn_rmsprop)(FN_T *restrict p, const FN_T *restrict g, FN_T *restrict sq,
                                      FN_T *restrict ga, FN_T *restrict b, ptrdiff_t n, const fn_hyper *h,
                                      int flags) {
    typedef FN_T T;
    const T lr = (T)h->lr, wd = (T)h->wd, sgn = (T)h->sgn, eps = (T)h->eps, mu = (T)h->mu;
    const T alpha = (T)h->alpha, oma = (T)(1.0 - h->alpha);
    switch (flags & (FN_WD | FN_CENTERED | FN_MOMENTUM)) {
    case 0: FN_RMSPROP_LOOP(0, 0, 0) break;
    case FN_WD: FN_RMSPROP_LOOP(1, 0, 0) break;
    case FN_CENTERED: FN_RMSPROP_LOOP(0, 1, 0) break;
    case FN_WD | FN_CENTERED: FN_RMSPROP_LOOP(1, 1, 0) break;
    case FN_MOMENTUM: FN_RMSPROP_LOOP(0, 0, 1) break;
    case FN_WD | FN_MOMENTUM: FN_RMSPROP_LOOP(1, 0, 1) break;
    case FN_CENTERED | FN_MOMENTUM: FN_RMSPROP_LOOP(0, 1, 1) break;
    default: FN_RMSPROP_LOOP(1, 1, 1) break;
    }
}

/* Adam: g += wd*p (Adam) or p *= decay (AdamW); m += (1-b1)*(g-m); v = b2*v + (1-b2)*g*g;
 * amsgrad: vmax = max(vmax, v), used instead of v; p -= step_size * m / (sqrt(v) / bc2 + eps) */
static inline void FN_SUF(fn_adam)(FN_T *restrict p, const FN_T *restrict g, FN_T *restrict m,
                                   FN_T *restrict v, FN_T *restrict vmax, ptrdiff_t n, const fn_hyper *h,
                                   const double *ts, int flags) {
    typedef FN_T T;
    const T wd = (T)h->wd, sgn = (T)h->sgn, eps = (T)h->eps, decay = (T)h->decay;
    const T omb1 = (T)h->omb1, b2 = (T)h->beta2, omb2 = (T)(1.0 - h->beta2);
    const T step_size = (T)ts[0], bc2 = (T)ts[1];
    switch (flags & (FN_WD | FN_AMSGRAD)) {
    case 0: FN_ADAM_LOOP(0, 0) break;
    case FN_WD: FN_ADAM_LOOP(1, 0) break;
    case FN_AMSGRAD: FN_ADAM_LOOP(0, 1) break;
    default: FN_ADAM_LOOP(1, 1) break;
    }
}

/* Elements [0, n) of one tensor's streams, with the algorithm's loop. */
static inline void FN_SUF(fn_optim_run)(int algo, int flags, FN_T *p, const FN_T *g, FN_T *s0, FN_T *s1, FN_T *s2,
                                        ptrdiff_t n, const fn_hyper *h, const double *ts) {
    switch (algo) {
    case FN_SGD: FN_SUF(fn_sgd)(p, g, s0, n, h, ts, flags); break;
    case FN_ADAGRAD: FN_SUF(fn_adagrad)(p, g, s0, n, h, ts, flags); break;
    case FN_ADADELTA: FN_SUF(fn_adadelta)(p, g, s0, s1, n, h, flags); break;
    case FN_RMSPROP: FN_SUF(fn_rmsprop)(p, g, s0, s1, s2, n, h, flags); break;
    default: FN_SUF(fn_adam)(p, g, s0, s1, s2, n, h, ts, flags); break;
    }
}

/* One segment of one tensor: s0, s1, s2 are the algorithm's state streams in the order of the functions
 * above (NULL where unused). Streams sharing one misalignment have their head (up to the next 64-byte
 * boundary) done first, so the vector body's accesses do not straddle cache lines (fn_optim_head). */
static inline void FN_SUF(fn_optim_segment)(int algo, int flags, FN_T *p, const FN_T *g, FN_T *s0, FN_T *s1,
                                            FN_T *s2, ptrdiff_t n, const fn_hyper *h, const double *ts) {
    const void *const s[5] = {p, g, s0, s1, s2};
    ptrdiff_t k = fn_optim_head(s, 5, n, sizeof(FN_T));
    if (k) {
        FN_SUF(fn_optim_run)(algo, flags, p, g, s0, s1, s2, k, h, ts);
        p += k, g += k, s0 = s0 ? s0 + k : NULL, s1 = s1 ? s1 + k : NULL, s2 = s2 ? s2 + k : NULL;
    }
    FN_SUF(fn_optim_run)(algo, flags, p, g, s0, s1, s2, n - k, h, ts);
}
