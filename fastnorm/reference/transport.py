"""NumPy reference implementations of the optimal-transport ops: the specification the kernels are tested against.

Plain NumPy in float64 (results are cast back to the input's dtype), batched by a Python loop over the
leading dimensions. Nothing here is tuned: the readable formula is the point.

wasserstein_1d
    The 1-D optimal transport cost between two weighted empirical distributions, by the quantile formula
    (POT's ``ot.wasserstein_1d``; for p = 1 it equals SciPy's ``scipy.stats.wasserstein_distance``).
sinkhorn
    Entropic optimal transport by Sinkhorn iterations in the log domain (POT's ``ot.bregman.sinkhorn_log``
    re-derived), returning the transport cost <P, C> (POT's ``ot.sinkhorn2``) and the plan P.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "wasserstein_1d",
    "wasserstein_1d_backward",
    "sinkhorn",
    "sinkhorn_regularized_value",
    "sinkhorn_backward",
]

# ----------------------------------------------------------------------------------------- wasserstein_1d


def _rows(values, weights):
    """(B, n) float64 rows of values and of weights normalized to sum 1 (uniform when weights is None)."""
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    if weights is None:
        w2 = np.full(x2.shape, 1.0 / n)
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1, n)
        w2 = w / w.sum(axis=1, keepdims=True)
    return x2, w2


def _ground(d, p):
    return np.abs(d) if p == 1 else np.abs(d) ** p


def wasserstein_1d(u_values, v_values, u_weights=None, v_weights=None, *, p=1):
    """The 1-D optimal transport cost ``W_p^p`` between the rows of ``u_values`` and ``v_values``.

    For distributions u = sum_i a_i delta(u_i) and v = sum_j b_j delta(v_j) on the real line, with weights
    normalized to sum to 1 (uniform when None), cumulative distribution functions U, V and quantile
    functions U^-1, V^-1 (``U^-1(q) = min{x : U(x) >= q}``)::

        W_p^p(u, v) = integral_0^1 |U^-1(q) - V^-1(q)|^p dq

    evaluated exactly as a sum over the intervals between the merged cumulative weights. For p = 1 this is
    also ``integral |U(x) - V(x)| dx``, SciPy's ``wasserstein_distance``; for p >= 1 it is POT's
    ``ot.wasserstein_1d`` (the p-th power of the Wasserstein distance, no 1/p root).

    Shapes: u_values (..., n), v_values (..., m) with the same leading shape; weights like their values.
    Returns an array of the leading shape, in the values' dtype.
    """
    u, a = _rows(u_values, u_weights)
    v, b = _rows(v_values, v_weights)
    out = np.empty(u.shape[0])
    for r in range(u.shape[0]):
        su, sv = np.argsort(u[r], kind="stable"), np.argsort(v[r], kind="stable")
        us, vs = u[r][su], v[r][sv]
        ucw, vcw = np.cumsum(a[r][su]), np.cumsum(b[r][sv])
        ucw[-1] = vcw[-1] = 1.0
        qs = np.sort(np.concatenate([ucw, vcw]))
        uq = us[np.clip(np.searchsorted(ucw, qs, "left"), 0, len(us) - 1)]
        vq = vs[np.clip(np.searchsorted(vcw, qs, "left"), 0, len(vs) - 1)]
        delta = np.diff(np.concatenate([[0.0], qs]))
        out[r] = np.sum(delta * _ground(uq - vq, p))
    dtype = np.result_type(np.asarray(u_values).dtype, np.float32)
    return out.reshape(np.shape(u_values)[:-1]).astype(dtype)


def _walk(us, vs, ucw, vcw, p):
    """The merge walk over the sorted cumulative weights (u's breakpoint first on ties).

    Yields (i, j, delta, kind, k) per interval: the interval (q_prev, q] of length delta on which
    U^-1 = us[i] and V^-1 = vs[j], ending at u's breakpoint (kind "u", index k = i), v's (kind "v", k = j)
    or at 1 (kind None).
    """
    n, m = len(us), len(vs)
    i = j = 0
    q_prev = 0.0
    while i < n - 1 or j < m - 1:
        if j == m - 1 or (i < n - 1 and ucw[i] <= vcw[j]):
            q = ucw[i]
            yield i, j, q - q_prev, "u", i
            i += 1
        else:
            q = vcw[j]
            yield i, j, q - q_prev, "v", j
            j += 1
        q_prev = q
    yield i, j, 1.0 - q_prev, None, -1


def wasserstein_1d_backward(grad, u_values, v_values, u_weights=None, v_weights=None, *, p=1):
    """Gradients of ``wasserstein_1d`` with respect to the values and the (unnormalized) weights.

    With the merge walk over the sorted cumulative weights: interval k (length delta_k) pairs u_(i_k) with
    v_(j_k), ``W = sum_k delta_k c_k`` with ``c_k = |u_(i_k) - v_(j_k)|^p``. Then::

        dW/du_i = sum_{k: i_k = i} delta_k * p |d_k|^(p-1) sign(d_k),   d_k = u_(i_k) - v_(j_k)
        dW/dv_j = -sum_{k: j_k = j} (same)
        dW/dU_i = c_k - c_(k+1)   for the breakpoint q_k = U_i (U_i = i-th normalized cumulative weight)
        dW/da_l = (sum_{i >= l} dW/dU_i - sum_i U_i dW/dU_i) / sum(a)   (through U_i = cumsum(a)_i / sum(a))

    and likewise for v. Ties between breakpoints are taken u first (the gradient of one adjacent linear
    piece); sign(0) = 0. Returns (du, dv, du_weights, dv_weights), the weight gradients None when the weights
    are None.
    """
    u, a = _rows(u_values, u_weights)
    v, b = _rows(v_values, v_weights)
    g = np.asarray(grad, dtype=np.float64).reshape(-1)
    du, dv = np.zeros_like(u), np.zeros_like(v)
    da, db = np.zeros_like(u), np.zeros_like(v)
    for r in range(u.shape[0]):
        su, sv = np.argsort(u[r], kind="stable"), np.argsort(v[r], kind="stable")
        us, vs = u[r][su], v[r][sv]
        ucw, vcw = np.cumsum(a[r][su]), np.cumsum(b[r][sv])
        ucw[-1] = vcw[-1] = 1.0
        dus, dvs = np.zeros(len(us)), np.zeros(len(vs))
        gu, gv = np.zeros(len(us)), np.zeros(len(vs))
        for i, j, delta, kind, k in _walk(us, vs, ucw, vcw, p):
            d = us[i] - vs[j]
            dc = np.sign(d) if p == 1 else p * np.abs(d) ** (p - 1) * np.sign(d)
            dus[i] += delta * dc
            dvs[j] -= delta * dc
            c = _ground(d, p)
            if kind == "u":
                gu[k] = c - _ground(us[i + 1] - vs[j], p)
            elif kind == "v":
                gv[k] = c - _ground(us[i] - vs[j + 1], p)
        du[r, su], dv[r, sv] = g[r] * dus, g[r] * dvs
        if u_weights is not None:
            s = np.asarray(u_weights, dtype=np.float64).reshape(u.shape)[r].sum()
            da[r, su] = g[r] * (np.cumsum(gu[::-1])[::-1] - np.dot(gu, ucw)) / s
        if v_weights is not None:
            s = np.asarray(v_weights, dtype=np.float64).reshape(v.shape)[r].sum()
            db[r, sv] = g[r] * (np.cumsum(gv[::-1])[::-1] - np.dot(gv, vcw)) / s
    dt_u = np.result_type(np.asarray(u_values).dtype, np.float32)
    dt_v = np.result_type(np.asarray(v_values).dtype, np.float32)
    return (
        du.reshape(np.shape(u_values)).astype(dt_u),
        dv.reshape(np.shape(v_values)).astype(dt_v),
        None if u_weights is None else da.reshape(np.shape(u_weights)).astype(dt_u),
        None if v_weights is None else db.reshape(np.shape(v_weights)).astype(dt_v),
    )


# ----------------------------------------------------------------------------------------------- sinkhorn
CHECK_EVERY = 10


def _lse(x, axis):
    mx = np.max(x, axis=axis, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    return np.log(np.sum(np.exp(x - mx), axis=axis)) + np.squeeze(mx, axis)


def _sinkhorn_one(a, b, C, reg, max_iter, tol):
    """One problem: POT's sinkhorn_log loop. Returns (log-scalings u, v, iterations run, err)."""
    Mr = -C / reg
    u, v = np.zeros(len(a)), np.zeros(len(b))
    err = np.inf
    it = 0
    with np.errstate(divide="ignore"):
        loga, logb = np.log(a), np.log(b)
        for it in range(max_iter):
            v = logb - _lse(Mr + u[:, None], 0)
            u = loga - _lse(Mr + v[None, :], 1)
            if it % CHECK_EVERY == 0:
                err = np.linalg.norm(np.exp(Mr + u[:, None] + v[None, :]).sum(0) - b)
                if err < tol:
                    break
        n_iter = it + 1 if max_iter > 0 else 0
        if n_iter == max_iter or max_iter == 0:
            err = np.linalg.norm(np.exp(Mr + u[:, None] + v[None, :]).sum(0) - b)
    return u, v, n_iter, err


def sinkhorn(a, b, cost, reg, *, max_iter=1000, tol=1e-9):
    """Entropic optimal transport by log-domain Sinkhorn iterations (POT's ``sinkhorn_log``).

    Solves ``min_{P >= 0, P 1 = a, P^T 1 = b} <P, C> + reg * sum_ij P_ij (log P_ij - 1)`` through its dual:
    with log-scalings u (n,), v (m,) starting at 0, each iteration is::

        v = log b - logsumexp_i(u_i - C_ij / reg)      (columns of P now sum to b)
        u = log a - logsumexp_j(v_j - C_ij / reg)      (rows of P now sum to a)

    and ``P_ij = exp(u_i + v_j - C_ij / reg)``. After iterations 0, 10, 20, ... (counting from 0) the column
    marginal violation ``err = ||P^T 1 - b||_2`` is checked and the loop stops once ``err < tol``.

    Shapes: a (..., n), b (..., m), cost (..., n, m); a and b may omit the leading dims (shared by every
    problem). Returns (value, plan, n_iter, err): value = ``<P, C> = sum_ij P_ij C_ij`` (POT's
    ``ot.sinkhorn2``: the transport cost of the entropic plan, without the entropy term) of the leading
    shape, plan (..., n, m), the iterations run and the final err.
    """
    C = np.asarray(cost, dtype=np.float64)
    n, m = C.shape[-2:]
    lead = C.shape[:-2]
    C2 = C.reshape(-1, n, m)
    A = np.broadcast_to(np.asarray(a, dtype=np.float64), lead + (n,)).reshape(-1, n)
    Bm = np.broadcast_to(np.asarray(b, dtype=np.float64), lead + (m,)).reshape(-1, m)
    value = np.empty(C2.shape[0])
    plan = np.empty_like(C2)
    n_iter = np.empty(C2.shape[0], dtype=np.int64)
    err = np.empty(C2.shape[0])
    for r in range(C2.shape[0]):
        u, v, n_iter[r], err[r] = _sinkhorn_one(A[r], Bm[r], C2[r], reg, max_iter, tol)
        plan[r] = np.exp(u[:, None] + v[None, :] - C2[r] / reg)
        value[r] = np.sum(plan[r] * C2[r])
    dtype = np.result_type(np.asarray(cost).dtype, np.float32)
    return (
        value.reshape(lead).astype(dtype),
        plan.reshape(C.shape).astype(dtype),
        n_iter.reshape(lead),
        err.reshape(lead),
    )


def sinkhorn_regularized_value(value, plan, reg):
    """The regularized objective at the plan: ``<P, C> + reg * sum_ij P_ij (log P_ij - 1)`` (0 log 0 = 0)."""
    P = np.asarray(plan, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = np.where(P > 0, P * (np.log(P) - 1.0), 0.0).sum(axis=(-2, -1))
    return np.asarray(value, dtype=np.float64) + reg * ent


def sinkhorn_backward(grad, a, b, cost, plan, reg, *, objective="transport"):
    """Gradient with respect to the cost matrix C at the Sinkhorn solution P (assumed converged).

    ``objective="regularized"``: the objective ``OT_reg(C) = min_P <P, C> + reg sum P (log P - 1)``; by the
    envelope theorem ``dOT_reg/dC = P``.

    ``objective="transport"``: the transport cost ``L(C) = <P(C), C>`` (``sinkhorn``'s value), which also
    moves with the plan: with ``P_ij = exp((f_i + g_j - C_ij) / reg)`` and the marginal constraints
    ``P 1 = a``, ``P^T 1 = b`` holding for every C, implicit differentiation (adjoint alpha (n,), beta (m,))
    gives::

        [diag(a)  P      ] [alpha]     [r]        r = (P * C) 1,  s = (P * C)^T 1
        [P^T      diag(b)] [beta ] = - [s],

        dL/dC_ij = P_ij * (1 - (C_ij + alpha_i + beta_j) / reg)

    (the system is singular along (1, -1), and consistent; any solution gives the same gradient). Solved here
    with the full (n + m) system by least squares, restricted to the rows/columns of positive mass.
    Returns ``grad[..., None, None] * dL/dC`` of the cost's shape.
    """
    C = np.asarray(cost, dtype=np.float64)
    P = np.asarray(plan, dtype=np.float64)
    g = np.asarray(grad, dtype=np.float64)[..., None, None]
    if objective == "regularized":
        return (g * P).astype(np.result_type(np.asarray(cost).dtype, np.float32))
    n, m = C.shape[-2:]
    lead = C.shape[:-2]
    C2, P2 = C.reshape(-1, n, m), P.reshape(-1, n, m)
    A = np.broadcast_to(np.asarray(a, dtype=np.float64), lead + (n,)).reshape(-1, n)
    Bm = np.broadcast_to(np.asarray(b, dtype=np.float64), lead + (m,)).reshape(-1, m)
    out = np.zeros_like(C2)
    for r in range(C2.shape[0]):
        ri, ci = A[r] > 0, Bm[r] > 0
        Pc, Cc = P2[r][np.ix_(ri, ci)], C2[r][np.ix_(ri, ci)]
        nn, mm = Pc.shape
        J = np.zeros((nn + mm, nn + mm))
        J[:nn, :nn] = np.diag(Pc.sum(1))
        J[nn:, nn:] = np.diag(Pc.sum(0))
        J[:nn, nn:] = Pc
        J[nn:, :nn] = Pc.T
        rhs = -np.concatenate([(Pc * Cc).sum(1), (Pc * Cc).sum(0)])
        sol = np.linalg.lstsq(J, rhs, rcond=None)[0]
        alpha, beta = sol[:nn], sol[nn:]
        out[r][np.ix_(ri, ci)] = Pc * (1.0 - (Cc + alpha[:, None] + beta[None, :]) / reg)
    return (g * out.reshape(C.shape)).astype(np.result_type(np.asarray(cost).dtype, np.float32))
