"""Optimal-transport CPU kernels: the 1-D Wasserstein merge walk and log-domain Sinkhorn.

wasserstein_1d: rows arrive sorted (the public layer sorts with NumPy); per batch row, one merge pass over
the two sorted cumulative-weight sequences (uniform weights need no array: breakpoints (i+1)/n compared
as integers, so ties are exact). OpenMP over batch rows.

sinkhorn: per problem, u/v log-scalings in float64. Each half-step is a row-wise log-sum-exp over a
contiguous matrix (C for the u-update, its transpose C^T, built once per call, for the v-update), so both
half-steps read their matrix once from memory, row by row (the second pass over a row, for the sum of
exponentials, hits L1). Rows go over OpenMP threads; many small problems go over threads whole instead.
The column-marginal check of POT's loop rides on the next v-update's log-sum-exps (free). Every row is
summed serially in fixed order, so results do not depend on the thread count.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY, NAN, exp, fabs, isfinite, log, pow, sqrt
from libc.stdint cimport int64_t

cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>

    /* exp(x) for double, about 1 ulp, branch-free (selects only) so that gcc vectorizes the loops that
       call it (glibc's exp is a scalar call). Range reduction x = k ln2 + r, |r| <= ln2/2, degree-13
       Taylor polynomial for e^r, 2^k built in the exponent bits. x < -708 gives 0 (no subnormals),
       x > 709 gives inf, NaN stays NaN. */
    static inline double fn_exp(double x) {
        const double log2e = 1.4426950408889634;
        const double ln2_hi = 6.93147180369123816490e-01;
        const double ln2_lo = 1.90821492927058770002e-10;
        double xc = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
        double k = floor(xc * log2e + 0.5);
        double r = (xc - k * ln2_hi) - k * ln2_lo;
        double p = 1.6059043836821614e-10;            /* 1/13! */
        p = p * r + 2.08767569878680989792e-09;       /* 1/12! */
        p = p * r + 2.50521083854417187751e-08;       /* 1/11! */
        p = p * r + 2.75573192239858906526e-07;       /* 1/10! */
        p = p * r + 2.75573192239858906526e-06;       /* 1/9!  */
        p = p * r + 2.48015873015873015873e-05;       /* 1/8!  */
        p = p * r + 1.98412698412698412698e-04;       /* 1/7!  */
        p = p * r + 1.38888888888888888889e-03;       /* 1/6!  */
        p = p * r + 8.33333333333333333333e-03;       /* 1/5!  */
        p = p * r + 4.16666666666666666667e-02;       /* 1/4!  */
        p = p * r + 1.66666666666666666667e-01;       /* 1/3!  */
        p = p * r + 0.5;
        p = p * r + 1.0;
        p = p * r + 1.0;
        /* 2^k: k + 1023 lands in the low mantissa bits of t; shift them into the exponent field. */
        double t = k + 6755399441056767.0;            /* 1.5 * 2^52 + 1023 */
        uint64_t bits;
        memcpy(&bits, &t, 8);
        bits <<= 52;
        double s;
        memcpy(&s, &bits, 8);
        double y = p * s;
        y = x < -708.0 ? 0.0 : y;
        y = x > 709.0 ? INFINITY : y;
        return y;
    }

    /* logsumexp_j(o[j] - k[j] * ir) over one contiguous row: max pass, then sum of exponentials (L1).
       noinline: one compiled (vectorized) copy, so every caller sums in the same order. */
    #define FN_ROW_LSE(NAME, T)                                                                 \\
    __attribute__((noinline)) static double NAME(const T *k, const double *o, Py_ssize_t n,     \\
                                                 double ir) {                                   \\
        double mx = -INFINITY;                                                                  \\
        for (Py_ssize_t j = 0; j < n; j++) {                                                    \\
            double x = o[j] - (double)k[j] * ir;                                                \\
            mx = x > mx ? x : mx;                                                               \\
        }                                                                                       \\
        if (mx == -INFINITY) {                                                                  \\
            for (Py_ssize_t j = 0; j < n; j++) {                                                \\
                double x = o[j] - (double)k[j] * ir;                                            \\
                if (x != x) return x;                                                           \\
            }                                                                                   \\
            return mx;                                                                          \\
        }                                                                                       \\
        if (mx == INFINITY) return mx;                                                          \\
        double s = 0.0;                                                                         \\
        for (Py_ssize_t j = 0; j < n; j++) s += fn_exp(o[j] - (double)k[j] * ir - mx);          \\
        return mx + log(s);                                                                     \\
    }
    FN_ROW_LSE(fn_row_lse_f, float)
    FN_ROW_LSE(fn_row_lse_d, double)

    /* The same in one pass, shifted by a given estimate of the row's maximum (the row's log-sum-exp of the
       previous iteration: the potentials move little between iterations, so it stays near the new maximum):
       shift + log(sum_j exp(x_j - shift)). When the sum leaves [1e-280, 1e280] (a shift far from the
       maximum: overflow, or terms below exp's range that would matter) or is NaN, returns NaN and the
       caller takes the exact two-pass form. Inside that range the terms cut off below exp(-708) are under
       exp(-63) of the sum: the result is the two-pass one up to rounding. */
    #define FN_ROW_LSE_SHIFTED(NAME, T)                                                         \
    __attribute__((noinline)) static double NAME(const T *k, const double *o, Py_ssize_t n,     \
                                                 double ir, double shift) {                     \
        double s = 0.0;                                                                         \
        for (Py_ssize_t j = 0; j < n; j++) s += fn_exp(o[j] - (double)k[j] * ir - shift);       \
        return (s > 1e-280 && s < 1e280) ? shift + log(s) : NAN;                                \
    }
    FN_ROW_LSE_SHIFTED(fn_row_lse_shifted_f, float)
    FN_ROW_LSE_SHIFTED(fn_row_lse_shifted_d, double)

    /* One row of the plan, P_j = exp(ui + v[j] - c[j] * ir) (written to p unless NULL);
       returns sum_j P_j c_j (a zero P_j contributes 0 even where c_j is inf). */
    #define FN_PLAN_ROW(NAME, T)                                                                \\
    __attribute__((noinline)) static double NAME(const T *c, const double *v, double ui,        \\
                                                 Py_ssize_t n, double ir, T *p) {               \\
        double s = 0.0;                                                                         \\
        if (p) {                                                                                \\
            for (Py_ssize_t j = 0; j < n; j++) {                                                \\
                double e = fn_exp(ui + v[j] - (double)c[j] * ir);                               \\
                p[j] = (T)e;                                                                    \\
                s += e > 0.0 ? e * (double)c[j] : 0.0;                                          \\
            }                                                                                   \\
        } else {                                                                                \\
            for (Py_ssize_t j = 0; j < n; j++) {                                                \\
                double e = fn_exp(ui + v[j] - (double)c[j] * ir);                               \\
                s += e > 0.0 ? e * (double)c[j] : 0.0;                                          \\
            }                                                                                   \\
        }                                                                                       \\
        return s;                                                                               \\
    }
    FN_PLAN_ROW(fn_plan_row_f, float)
    FN_PLAN_ROW(fn_plan_row_d, double)
    """
    double fn_exp(double x) noexcept nogil
    double fn_row_lse_f(const float *k, const double *o, Py_ssize_t n, double ir) noexcept nogil
    double fn_row_lse_d(const double *k, const double *o, Py_ssize_t n, double ir) noexcept nogil
    double fn_row_lse_shifted_f(const float *k, const double *o, Py_ssize_t n, double ir,
                                double shift) noexcept nogil
    double fn_row_lse_shifted_d(const double *k, const double *o, Py_ssize_t n, double ir,
                                double shift) noexcept nogil
    double fn_plan_row_f(const float *c, const double *v, double ui, Py_ssize_t n, double ir,
                         float *p) noexcept nogil
    double fn_plan_row_d(const double *c, const double *v, double ui, Py_ssize_t n, double ir,
                         double *p) noexcept nogil


def exp_kernel(const double[::1] x, double[::1] y):
    """y = fn_exp(x) (the kernels' exponential; exposed for its accuracy test)."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(x.shape[0]):
            y[i] = fn_exp(x[i])


# ============================================================================ wasserstein_1d
cdef inline double _ground(double d, double p, int pk) noexcept nogil:
    """|d|^p (pk: 1 for p == 1, 2 for p == 2, 0 otherwise)."""
    if pk == 1:
        return fabs(d)
    if pk == 2:
        return d * d
    return pow(fabs(d), p)


cdef inline double _dground(double d, double p, int pk) noexcept nogil:
    """d/dd |d|^p = p |d|^(p-1) sign(d), with sign(0) = 0."""
    cdef double sg = (d > 0) - (d < 0)
    if pk == 1:
        return sg
    if pk == 2:
        return 2.0 * d
    return sg * p * pow(fabs(d), p - 1.0)


cdef inline double _wsum(const floating *w, Py_ssize_t n) noexcept nogil:
    cdef double s = 0.0
    cdef Py_ssize_t i
    for i in range(n):
        s += w[i]
    return s


cdef double _w1d_row(const floating *u, Py_ssize_t n, const floating *v, Py_ssize_t m,
                     const floating *uw, const floating *vw, double p, int pk,
                     double g, floating *du, floating *dv, double *gu, double *gv) noexcept nogil:
    """The merge walk over one row pair (u, v sorted). Returns W_p^p.

    Interval k = (q_prev, q] pairs u[i] with v[j]; it ends at u's breakpoint U_i when U_i <= V_j (u first
    on ties), else at V_j; the last interval ends at 1. With du != NULL (backward) also accumulates
    g * dW/du, g * dW/dv (sorted order) and, where gu/gv != NULL, dW/dU_i, dW/dV_j (breakpoint gradients).
    """
    cdef Py_ssize_t i = 0, j = 0, k
    cdef double su = 1.0, sv = 1.0, cu = 0.0, cv = 0.0, qu = 0.0, qv = 0.0, q, qprev = 0.0
    cdef double total = 0.0, d, c, dc
    cdef bint take_u
    cdef bint grad = du != NULL
    if uw != NULL:
        su = _wsum(uw, n)
        cu = uw[0]
    if vw != NULL:
        sv = _wsum(vw, m)
        cv = vw[0]
    if grad:
        for k in range(n):
            du[k] = 0
        for k in range(m):
            dv[k] = 0
    while i < n - 1 or j < m - 1:
        if uw != NULL:
            qu = min(cu / su, 1.0)
        else:
            qu = <double>(i + 1) / n
        if vw != NULL:
            qv = min(cv / sv, 1.0)
        else:
            qv = <double>(j + 1) / m
        if j == m - 1:
            take_u = True
        elif i == n - 1:
            take_u = False
        elif uw == NULL and vw == NULL:
            take_u = <int64_t>(i + 1) * m <= <int64_t>(j + 1) * n
        else:
            take_u = qu <= qv
        q = qu if take_u else qv
        if q < qprev:
            q = qprev
        d = <double>u[i] - <double>v[j]
        c = _ground(d, p, pk)
        total += (q - qprev) * c
        if grad:
            dc = g * (q - qprev) * _dground(d, p, pk)
            du[i] += dc
            dv[j] -= dc
            if take_u and gu != NULL:
                gu[i] = c - _ground(<double>u[i + 1] - <double>v[j], p, pk)
            elif not take_u and gv != NULL:
                gv[j] = c - _ground(<double>u[i] - <double>v[j + 1], p, pk)
        if take_u:
            i += 1
            if uw != NULL:
                cu += uw[i]
        else:
            j += 1
            if vw != NULL:
                cv += vw[j]
        qprev = q
    d = <double>u[n - 1] - <double>v[m - 1]
    if qprev < 1.0:
        total += (1.0 - qprev) * _ground(d, p, pk)
        if grad:
            dc = g * (1.0 - qprev) * _dground(d, p, pk)
            du[n - 1] += dc
            dv[m - 1] -= dc
    return total


cdef void _weight_grad(const floating *w, Py_ssize_t n, double *gw, double g, floating *dw) noexcept nogil:
    """dw_l = g * (sum_{i >= l} gw_i - sum_i gw_i U_i) / S with U_i = cumsum(w)_i / S (gw_(n-1) = 0)."""
    cdef double s = _wsum(w, n), c = 0.0, dot = 0.0, acc = 0.0
    cdef Py_ssize_t i
    gw[n - 1] = 0.0
    for i in range(n):
        c += w[i]
        dot += gw[i] * min(c / s, 1.0)
    for i in range(n - 1, -1, -1):
        acc += gw[i]
        dw[i] = <floating>(g * (acc - dot) / s)


cdef inline int _pkind(double p) noexcept nogil:
    return 1 if p == 1.0 else (2 if p == 2.0 else 0)


cdef inline const floating *_row_or_null(const floating[:, ::1] a, Py_ssize_t r) noexcept nogil:
    return &a[r, 0] if a.shape[0] > 0 else NULL


def wasserstein_1d(const floating[:, ::1] u,                # IN  (B, n) rows sorted ascending
                   const floating[:, ::1] v,                # IN  (B, m) rows sorted ascending
                   const floating[:, ::1] u_weights,        # IN  (B, n) in u's sorted order, or (0, 0): uniform
                   const floating[:, ::1] v_weights,        # IN  (B, m) in v's sorted order, or (0, 0)
                   floating[::1] out,                       # OUT (B,)  W_p^p per row
                   double p, int n_threads):
    cdef Py_ssize_t nb = u.shape[0], n = u.shape[1], m = v.shape[1], r
    cdef int pk = _pkind(p)
    if nb == 0:
        return
    with nogil:
        for r in prange(nb, schedule="dynamic", num_threads=max(1, min(n_threads, nb))):
            out[r] = <floating>_w1d_row(&u[r, 0], n, &v[r, 0], m, _row_or_null(u_weights, r),
                                        _row_or_null(v_weights, r), p, pk, 0.0, NULL, NULL, NULL, NULL)


def wasserstein_1d_backward(const floating[::1] grad,         # IN  (B,)
                            const floating[:, ::1] u,         # IN  (B, n) sorted
                            const floating[:, ::1] v,         # IN  (B, m) sorted
                            const floating[:, ::1] u_weights,  # IN  (B, n) sorted order, or (0, 0)
                            const floating[:, ::1] v_weights,  # IN  (B, m) sorted order, or (0, 0)
                            floating[:, ::1] du,              # OUT (B, n) in sorted order
                            floating[:, ::1] dv,              # OUT (B, m) in sorted order
                            floating[:, ::1] du_weights,      # OUT (B, n) sorted order, or (0, 0)
                            floating[:, ::1] dv_weights,      # OUT (B, m) sorted order, or (0, 0)
                            double[:, ::1] gu,                # SCRATCH (B, n) or (0, 0)
                            double[:, ::1] gv,                # SCRATCH (B, m) or (0, 0)
                            double p, int n_threads):
    cdef Py_ssize_t nb = u.shape[0], n = u.shape[1], m = v.shape[1], r
    cdef int pk = _pkind(p)
    cdef bint wu = u_weights.shape[0] > 0, wv = v_weights.shape[0] > 0
    cdef double *pgu
    cdef double *pgv
    if nb == 0:
        return
    with nogil:
        for r in prange(nb, schedule="dynamic", num_threads=max(1, min(n_threads, nb))):
            pgu = &gu[r, 0] if wu else NULL
            pgv = &gv[r, 0] if wv else NULL
            if wu:
                gu[r, n - 1] = 0.0
            if wv:
                gv[r, m - 1] = 0.0
            _w1d_row(&u[r, 0], n, &v[r, 0], m, _row_or_null(u_weights, r), _row_or_null(v_weights, r),
                     p, pk, grad[r], &du[r, 0], &dv[r, 0], pgu, pgv)
            if wu:
                _weight_grad(&u_weights[r, 0], n, pgu, grad[r], &du_weights[r, 0])
            if wv:
                _weight_grad(&v_weights[r, 0], m, pgv, grad[r], &dv_weights[r, 0])


# ============================================================================ sinkhorn
cdef inline double _row_lse(const floating *k, const double *o, Py_ssize_t n, double ir,
                            double prev) noexcept nogil:
    """logsumexp_j(o[j] - k[j] * ir); one pass shifted by ``prev`` (the row's previous value) when it is
    finite and the shifted sum stays in range, else the exact two-pass form."""
    cdef double r = NAN
    if isfinite(prev):
        if floating is float:
            r = fn_row_lse_shifted_f(k, o, n, ir, prev)
        else:
            r = fn_row_lse_shifted_d(k, o, n, ir, prev)
    if r == r:
        return r
    if floating is float:
        return fn_row_lse_f(k, o, n, ir)
    else:
        return fn_row_lse_d(k, o, n, ir)


cdef inline double _plan_row(const floating *c, const double *v, double ui, Py_ssize_t n, double ir,
                             floating *p) noexcept nogil:
    if floating is float:
        return fn_plan_row_f(c, v, ui, n, ir, p)
    else:
        return fn_plan_row_d(c, v, ui, n, ir, p)


cdef void _lse_rows(const floating *K, Py_ssize_t rows, Py_ssize_t cols, const double *o, double *out,
                    double ir, bint warm, int nt) noexcept nogil:
    """out[i] = logsumexp_j(o[j] - K[i, j] * ir) for every row i of the (rows, cols) matrix K; ``warm``: out
    holds the previous iteration's values (the one-pass shifts)."""
    cdef Py_ssize_t i
    if nt <= 1:
        for i in range(rows):
            out[i] = _row_lse(K + i * cols, o, cols, ir, out[i] if warm else NAN)
    else:
        for i in prange(rows, schedule="static", num_threads=nt):
            out[i] = _row_lse(K + i * cols, o, cols, ir, out[i] if warm else NAN)


cdef void _transpose(const floating *C, floating *Ct, Py_ssize_t n, Py_ssize_t m, int nt) noexcept nogil:
    """Ct (m, n) = C (n, m)^T in 32 x 32 tiles."""
    cdef Py_ssize_t tj, ti, i, j, ntj = (m + 31) // 32
    if nt <= 1:
        for tj in range(ntj):
            for ti in range(0, n, 32):
                for i in range(ti, min(ti + 32, n)):
                    for j in range(tj * 32, min(tj * 32 + 32, m)):
                        Ct[j * n + i] = C[i * m + j]
    else:
        for tj in prange(ntj, schedule="static", num_threads=nt):
            for ti in range(0, n, 32):
                for i in range(ti, min(ti + 32, n)):
                    for j in range(tj * 32, min(tj * 32 + 32, m)):
                        Ct[j * n + i] = C[i * m + j]


cdef double _col_err(const double *v, const double *lse, const floating *b, Py_ssize_t m) noexcept nogil:
    """||P^T 1 - b||_2 with column sums (P^T 1)_j = exp(v_j + lse_j)."""
    cdef double s = 0.0, d
    cdef Py_ssize_t j
    for j in range(m):
        d = exp(v[j] + lse[j]) - b[j]
        s += d * d
    return sqrt(s)


cdef void _solve(const floating *C, const floating *a, const floating *b, floating *Ct, floating *value,
                 floating *plan, int64_t *n_iter, double *err, double *work, Py_ssize_t n, Py_ssize_t m,
                 double reg, int max_iter, double tol, int check_every, int nt) noexcept nogil:
    """One problem, POT's sinkhorn_log loop. work: u[n], loga[n], rowc[n], lse_v[m], lse_u[n], v[m], logb[m]
    (the half-steps' log-sum-exps kept apart: each is the next iteration's one-pass shift)."""
    cdef double *u = work
    cdef double *loga = work + n
    cdef double *rowc = work + 2 * n
    cdef double *lse = work + 3 * n
    cdef double *lse_u = work + 3 * n + m
    cdef double *v = work + 4 * n + m
    cdef double *logb = work + 4 * n + 2 * m
    cdef double ir = 1.0 / reg, e = INFINITY, tot
    cdef Py_ssize_t i, j
    cdef int it
    cdef bint done = False
    for i in range(n):
        u[i] = 0.0
        loga[i] = log(<double>a[i])
    for j in range(m):
        v[j] = 0.0
        logb[j] = log(<double>b[j])
    _transpose(C, Ct, n, m, nt)
    n_iter[0] = max_iter
    for it in range(max_iter):
        _lse_rows(Ct, m, n, u, lse, ir, it > 0, nt)
        if it >= 1 and (it - 1) % check_every == 0:
            # the state after iteration it - 1 (POT checks after iterations 0, k, 2k, ...)
            e = _col_err(v, lse, b, m)
            if e < tol:
                n_iter[0] = it
                done = True
                break
        for j in range(m):
            v[j] = logb[j] - lse[j]
        _lse_rows(C, n, m, v, lse_u, ir, it > 0, nt)
        for i in range(n):
            u[i] = loga[i] - lse_u[i]
    if not done:
        _lse_rows(Ct, m, n, u, lse, ir, max_iter > 0, nt)
        e = _col_err(v, lse, b, m)
    err[0] = e
    if nt <= 1:
        for i in range(n):
            rowc[i] = _plan_row(C + i * m, v, u[i], m, ir, plan + i * m if plan != NULL else NULL)
    else:
        for i in prange(n, schedule="static", num_threads=nt):
            rowc[i] = _plan_row(C + i * m, v, u[i], m, ir, plan + i * m if plan != NULL else NULL)
    tot = 0.0
    for i in range(n):
        tot += rowc[i]
    value[0] = <floating>tot


def sinkhorn(const floating[:, :, ::1] cost,     # IN  (B, n, m)
             const floating[:, ::1] a,           # IN  (B, n) source masses, or (1, n): shared
             const floating[:, ::1] b,           # IN  (B, m) target masses, or (1, m): shared
             floating[:, :, ::1] cost_t,         # SCRATCH (B, m, n): filled with the transposes here
             floating[::1] value,                # OUT (B,)  <P, C>
             floating[:, :, ::1] plan,           # OUT (B, n, m), or (0, 0, 0) when not wanted
             int64_t[::1] n_iter,                # OUT (B,)  iterations run
             double[::1] err,                    # OUT (B,)  final ||P^T 1 - b||_2
             double[:, ::1] work,                # SCRATCH (B, 4n + 3m)
             double reg, int max_iter, double tol, int check_every, int n_threads):
    cdef Py_ssize_t nb = cost.shape[0], n = cost.shape[1], m = cost.shape[2], r
    cdef bint want_plan = plan.shape[0] > 0
    cdef Py_ssize_t sa = 1 if a.shape[0] > 1 else 0, sb = 1 if b.shape[0] > 1 else 0
    if nb == 0:
        return
    with nogil:
        if n_threads > 1 and nb >= n_threads:
            for r in prange(nb, schedule="dynamic", num_threads=n_threads):
                _solve(&cost[r, 0, 0], &a[r * sa, 0], &b[r * sb, 0], &cost_t[r, 0, 0], &value[r],
                       &plan[r, 0, 0] if want_plan else NULL, &n_iter[r], &err[r], &work[r, 0],
                       n, m, reg, max_iter, tol, check_every, 1)
        else:
            for r in range(nb):
                _solve(&cost[r, 0, 0], &a[r * sa, 0], &b[r * sb, 0], &cost_t[r, 0, 0], &value[r],
                       &plan[r, 0, 0] if want_plan else NULL, &n_iter[r], &err[r], &work[r, 0],
                       n, m, reg, max_iter, tol, check_every, n_threads)


def sinkhorn_backward(const floating[::1] grad,          # IN  (B,)
                      const floating[:, :, ::1] plan,    # IN  (B, n, m)
                      floating[:, :, ::1] out,           # OUT (B, n, m)  grad[r] * plan[r]
                      int n_threads):
    """The regularized objective's gradient with respect to the cost: grad * P (envelope theorem)."""
    cdef Py_ssize_t nb = plan.shape[0], n = plan.shape[1], m = plan.shape[2], r, i, j
    cdef floating g
    if nb == 0 or n == 0 or m == 0:
        return
    with nogil:
        for i in prange(nb * n, schedule="static", num_threads=n_threads):
            r = i // n
            g = grad[r]
            for j in range(m):
                out[r, i - r * n, j] = g * plan[r, i - r * n, j]
