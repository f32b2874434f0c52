"""Public optimal-transport ops: the exact 1-D Wasserstein cost and entropic OT by log-domain Sinkhorn.

Each op validates every argument (a ``TypeError``/``ValueError`` naming the op and the argument, before
any kernel runs), canonicalizes to batched rows, allocates (or checks the caller's ``out=`` buffers) and
calls the kernel. Every op runs on the CPU (NumPy arrays) and on CUDA arrays (the one exception:
``sinkhorn_backward(objective="transport")``, a dense solve, is CPU only). ``fastnorm.reference.transport``
is the NumPy specification of both.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import _validation as V
from . import reference as R
from ._backend import host
from ._dispatch import backend_of
from ._spec import DATA, TRANSPORT, OpSpec, Out, Scratch, args, exports, like, register, rows_of

Array = Any  # numpy.ndarray on the CPU; any object with __cuda_array_interface__ on the GPU

CHECK_EVERY = 10  # Sinkhorn: the marginal error is checked after iterations 0, 10, 20, ... (as POT)


class Wasserstein1dBackward(NamedTuple):
    du_values: Array
    dv_values: Array
    du_weights: Array | None
    dv_weights: Array | None


class SinkhornResult(NamedTuple):
    value: Array
    plan: Array | None
    n_iter: Array
    err: Array


def _declare(name, arg_spec, outputs, result, primary, torch_op, bytes_moved=None, scratch=()) -> OpSpec:
    return register(OpSpec(name, args(arg_spec), outputs, result, "transport", getattr(R, name), primary=primary,
                           bytes_moved=bytes_moved, group=TRANSPORT, torch_op=torch_op, half=False,
                           scratch=scratch))  # fmt: skip


def _problems(d) -> tuple:
    """The batch shape of a Sinkhorn call: cost's shape without its last two dims (n, m)."""
    return tuple(d.cost[:-2])


def _sinkhorn_bytes(d, item: int) -> int:
    """Each of the ``max_iter`` iterations reads the kernel matrix (cost's size) twice (the u and v updates)."""
    return 2 * math.prod(d.cost) * item * d.max_iter


W1D = _declare("wasserstein_1d", "u_values v_values u_weights? v_weights? :p=float", (Out("out", rows_of("u_values")),),
               None, "u_values", "wasserstein_1d")  # fmt: skip
W1D_BWD = _declare(
    "wasserstein_1d_backward",
    "grad u_values v_values u_weights? v_weights? :p=float",
    (
        Out("du_values", like("u_values")),
        Out("dv_values", like("v_values")),
        Out("du_weights", like("u_values"), DATA, when="u_weights"),
        Out("dv_weights", like("v_values"), DATA, when="v_weights"),
    ),
    Wasserstein1dBackward,
    "u_values",
    "wasserstein_1d_backward",
)
SINKHORN = _declare(
    "sinkhorn",
    "a b cost :reg=float :max_iter=int :tol=float :return_plan=bool",
    (
        Out("value", _problems),
        Out("plan", like("cost"), when=lambda d: d.return_plan),
        Out("n_iter", _problems, "int64"),
        Out("err", _problems, "float64"),
    ),
    SinkhornResult,
    "cost",
    "sinkhorn",  # returns (value, plan)
    _sinkhorn_bytes,
    # the cost matrices transposed (the v-updates read them by rows) and per-problem float64 work rows
    # (u, v, their log-domain updates and the column sums), from the (rows, n, m) view
    (Scratch("cost_t", lambda d: (d.rows, d.m, d.n), DATA), Scratch("work", lambda d: (d.rows, 4 * d.n + 3 * d.m))),
)
SINKHORN_BWD = _declare("sinkhorn_backward", "grad a b cost plan :reg=float :objective=str",
                        (Out("out", like("cost")),), None, "cost", None)  # fmt: skip

__all__ = exports("transport", "Wasserstein1dBackward", "SinkhornResult")


# ----------------------------------------------------------------------------------------- validation
def _check_weights(op: str, name: str, w: np.ndarray) -> None:
    """Weights: finite, >= 0, and a positive sum along the last axis (SciPy's rules)."""
    if w.size == 0:
        return
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        first = w.reshape(-1)[np.flatnonzero(bad.reshape(-1))[0]]
        raise ValueError(f"{op}: {name} must be finite and non-negative, got {first!r}")
    s = w.sum(axis=-1, dtype=np.float64)
    if not (np.all(s > 0) and np.all(np.isfinite(s))):
        raise ValueError(f"{op}: every row of {name} must have a positive, finite sum (got a sum of 0 or inf)")


def _values(be, op, u_values, v_values, u_weights, v_weights):
    u = V.float_input(be, op, "u_values", u_values, half=False)
    v = V.float_input(be, op, "v_values", v_values, u.dtype, half=False)
    if u.ndim == 0 or v.ndim == 0:
        raise ValueError(f"{op}: u_values and v_values must have at least 1 dim (..., n), got 0-d")
    if u.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"{op}: the leading (batch) dims of u_values {tuple(u.shape)} and v_values {tuple(v.shape)} differ"
        )
    if u.shape[-1] == 0 or v.shape[-1] == 0:
        raise ValueError(
            f"{op}: a distribution cannot be empty (u_values has {u.shape[-1]}, v_values {v.shape[-1]} values)"
        )
    uw = V.param(be, op, "u_weights", u_weights, u.shape, u.dtype)
    vw = V.param(be, op, "v_weights", v_weights, v.shape, u.dtype)
    for name, w in (("u_weights", uw), ("v_weights", vw)):
        if w is not None:
            _check_weights(op, name, host(be, w))
    return u, v, uw, vw


def _p(op: str, p) -> float:
    return V.scalar(op, "p", p, low=1.0)


def _absent2(be, dtype):
    return be.empty((0, 0), dtype)


def _sorted(be, x2, w2, need_sorter: bool):
    """Rows of x2 sorted (NaN last), the weights in the same order, and the sorter (None when not needed; on
    CUDA the (rows, sort_width(n)) int32 index array of ``kernels.sort_rows``)."""
    if be.name != "cpu":
        rows, n = x2.shape
        xs = be.empty((rows, n), x2.dtype)
        ws = _absent2(be, x2.dtype) if w2 is None else be.empty((rows, n), x2.dtype)
        idx = be.empty((rows, be.kernels.sort_width(n)), np.int32)
        be.kernels.sort_rows(x2, _absent2(be, x2.dtype) if w2 is None else w2, xs, ws, idx, 1)
        return xs, (None if w2 is None else ws), idx
    if w2 is None and not need_sorter:
        return np.sort(x2, axis=-1), None, None
    if not need_sorter:
        # (value, weight) pairs as complex numbers: one sort of the pairs (lexicographic, NaN values last)
        # instead of an argsort and two gathers, about twice as fast
        z = np.empty(x2.shape, np.complex128 if x2.dtype == np.float64 else np.complex64)
        z.real, z.imag = x2, w2
        z.sort(axis=-1)
        return np.ascontiguousarray(z.real), np.ascontiguousarray(z.imag), None
    # (not stable: the order among equal values changes neither W nor the weight gradients; it only picks
    # which of the tied values gets the gradient, where W is not differentiable anyway)
    s = np.argsort(x2, axis=-1)
    xs = np.take_along_axis(x2, s, axis=-1)
    ws = None if w2 is None else np.take_along_axis(w2, s, axis=-1)
    return xs, ws, s


# ------------------------------------------------------------------------------------- wasserstein_1d
def wasserstein_1d(
    u_values: Array,
    v_values: Array,
    u_weights: Array | None = None,
    v_weights: Array | None = None,
    *,
    p: float = 1,
    out: Array | None = None,
) -> Array:
    """The 1-D optimal transport cost ``W_p^p`` between weighted empirical distributions, batched.

    With the weights normalized to sum to 1 (uniform when None), CDFs U, V and quantile functions
    ``U^-1(q) = min{x : U(x) >= q}``::

        W_p^p(u, v) = integral_0^1 |U^-1(q) - V^-1(q)|^p dq      (= integral |U(x) - V(x)| dx for p = 1)

    computed exactly by one merge pass over the two sorted cumulative-weight sequences. For p = 1 this is
    ``scipy.stats.wasserstein_distance``; for any p >= 1 it is POT's ``ot.wasserstein_1d``: the p-th power
    of the Wasserstein distance (take ``** (1 / p)`` for the distance itself).

    Parameters
    ----------
    u_values : numpy.ndarray, shape (..., n)
        Samples (support points) of the first distribution in each batch row; float32 or float64.
    v_values : numpy.ndarray, shape (..., m)
        Samples of the second distribution; same dtype and leading shape as ``u_values``.
    u_weights, v_weights : numpy.ndarray, optional
        Non-negative weights of the same shapes as their values, each row with a positive finite sum
        (normalized here, as SciPy does). None: uniform.
    p : float
        The ground-cost exponent, ``p >= 1``.
    out : array, optional
        Buffer for the result: exactly the result's shape and dtype, C-contiguous, writeable, not overlapping
        an input (else ``ValueError``, nothing written).

    Returns
    -------
    array
        ``W_p^p`` per batch row, shape ``u_values.shape[:-1]``, in the values' dtype (``out`` when given).

    Notes
    -----
    The rows are sorted first (a copy; ``O(n log n)``: NumPy on the CPU, a bitonic sort on CUDA); the walk
    is ``O(n + m)`` per row, OpenMP over rows on the CPU, one CUDA thread per row on the GPU. On CUDA the
    weights' value checks copy them to the host (a synchronization).
    """
    op = "wasserstein_1d"
    be = backend_of(op, u_values=u_values, v_values=v_values, u_weights=u_weights, v_weights=v_weights)
    u, v, uw, vw = _values(be, op, u_values, v_values, u_weights, v_weights)
    p = _p(op, p)
    lead, n, m = tuple(u.shape[:-1]), u.shape[-1], v.shape[-1]
    (out,) = V.outputs(be, op, out, W1D.layout_for(be, dict(u_values=u)), (u, v, uw, vw))
    rows = math.prod(lead)
    if rows == 0:
        return out
    us, uws, _ = _sorted(be, u.reshape(rows, n), None if uw is None else uw.reshape(rows, n), False)
    vs, vws, _ = _sorted(be, v.reshape(rows, m), None if vw is None else vw.reshape(rows, m), False)
    absent = _absent2(be, u.dtype)
    be.kernels.wasserstein_1d(
        us,
        vs,
        absent if uws is None else uws,
        absent if vws is None else vws,
        out.reshape(rows),
        p,
        be.threads(rows * (n + m)),
    )
    return out


def wasserstein_1d_backward(
    grad: Array,
    u_values: Array,
    v_values: Array,
    u_weights: Array | None = None,
    v_weights: Array | None = None,
    *,
    p: float = 1,
    out: tuple | None = None,
) -> Wasserstein1dBackward:
    """Gradients of ``grad * wasserstein_1d(...)`` with respect to the values and the weights.

    On interval k of the merge walk (length ``delta_k``, pairing ``u_(i_k)`` with ``v_(j_k)``,
    ``d_k = u_(i_k) - v_(j_k)``, ``c_k = |d_k|^p``) and at each breakpoint ``q_k`` (a normalized cumulative
    weight U_i or V_j)::

        dW/du_i = sum_{k: i_k = i} delta_k p |d_k|^(p-1) sign(d_k),   dW/dv_j = -(same over j_k = j)
        dW/dU_i = c_k - c_(k+1),   dW/da_l = (sum_{i >= l} dW/dU_i - sum_i U_i dW/dU_i) / sum(a)

    W is piecewise linear in the weights: at ties between breakpoints of u and v the gradient of one
    adjacent piece is returned (u's breakpoint taken first), and sign(0) = 0 (as torch's ``abs``).

    Parameters
    ----------
    grad : numpy.ndarray, shape ``u_values.shape[:-1]``
        The upstream gradient of each ``W_p^p``.
    u_values, v_values, u_weights, v_weights, p
        As in ``wasserstein_1d``.
    out : tuple of 4 arrays or None, optional
        Buffers for ``(du_values, dv_values, du_weights, dv_weights)`` (None entries are allocated; the slot of
        an absent weight must be None), each exactly its result's shape and dtype, C-contiguous, writeable,
        not overlapping an input or each other (else ``ValueError``, nothing written).

    Returns
    -------
    Wasserstein1dBackward
        ``(du_values, dv_values, du_weights, dv_weights)``, each shaped like its input; the weight
        gradients are None where the weights are None.
    """
    op = "wasserstein_1d_backward"
    be = backend_of(op, grad=grad, u_values=u_values, v_values=v_values, u_weights=u_weights, v_weights=v_weights)
    u, v, uw, vw = _values(be, op, u_values, v_values, u_weights, v_weights)
    p = _p(op, p)
    lead, n, m = tuple(u.shape[:-1]), u.shape[-1], v.shape[-1]
    grad = V.required(be, op, "grad", grad, lead, u.dtype)
    specs = W1D_BWD.layout_for(be, dict(u_values=u, v_values=v, u_weights=uw, v_weights=vw))
    res = V.outputs(be, op, out, specs, (grad, u, v, uw, vw))
    rows = math.prod(lead)
    if rows == 0:
        return Wasserstein1dBackward(*res)
    us, uws, su = _sorted(be, u.reshape(rows, n), None if uw is None else uw.reshape(rows, n), True)
    vs, vws, sv = _sorted(be, v.reshape(rows, m), None if vw is None else vw.reshape(rows, m), True)
    dus, dvs = be.empty((rows, n), u.dtype), be.empty((rows, m), u.dtype)
    absent = _absent2(be, u.dtype)
    duws = absent if uw is None else be.empty((rows, n), u.dtype)
    dvws = absent if vw is None else be.empty((rows, m), u.dtype)
    gu = be.empty((rows, n) if uw is not None else (0, 0), np.float64)
    gv = be.empty((rows, m) if vw is not None else (0, 0), np.float64)
    be.kernels.wasserstein_1d_backward(
        grad.reshape(rows),
        us,
        vs,
        absent if uws is None else uws,
        absent if vws is None else vws,
        dus,
        dvs,
        duws,
        dvws,
        gu,
        gv,
        p,
        be.threads(rows * (n + m)),
    )
    for sorted_, sorter, dst, k in ((dus, su, res[0], n), (dvs, sv, res[1], m), (duws, su, res[2], n),
                                    (dvws, sv, res[3], m)):  # fmt: skip
        if dst is None:
            continue
        if be.name == "cpu":
            np.put_along_axis(dst.reshape(rows, k), sorter, sorted_, axis=-1)
        else:
            be.kernels.unsort_rows(sorted_, sorter, dst.reshape(rows, k), 1)
    return Wasserstein1dBackward(*res)


# ------------------------------------------------------------------------------------------- sinkhorn
def _masses(be, op: str, name: str, x, lead: tuple, k: int, dtype):
    """a or b: shape (k,) (shared by every problem) or lead + (k,); finite, >= 0, positive row sums.
    Returns (the array as (1 or B, k), its row sums on the host in float64)."""
    x = V.float_input(be, op, name, x, dtype, half=False)
    if tuple(x.shape) not in ((k,), tuple(lead) + (k,)):
        raise ValueError(
            f"{op}: {name} must have shape {(k,)} or {tuple(lead) + (k,)} to match cost, got {tuple(x.shape)}"
        )
    values = host(be, x)
    _check_weights(op, name, values)
    rows = 1 if x.ndim == 1 else math.prod(lead)
    return x.reshape(rows, k), values.reshape(rows, k).sum(axis=-1, dtype=np.float64)


def sinkhorn(
    a: Array,
    b: Array,
    cost: Array,
    reg: float,
    *,
    max_iter: int = 1000,
    tol: float = 1e-9,
    return_plan: bool = False,
    out: tuple | None = None,
) -> SinkhornResult:
    """Entropic optimal transport by Sinkhorn iterations in the log domain (POT's ``sinkhorn_log``), batched.

    Solves, per problem, ``min_{P >= 0, P 1 = a, P^T 1 = b} <P, C> + reg * sum_ij P_ij (log P_ij - 1)``
    with log-scalings u, v (starting at 0) and ``P_ij = exp(u_i + v_j - C_ij / reg)``; each iteration is::

        v_j = log b_j - logsumexp_i(u_i - C_ij / reg),   u_i = log a_i - logsumexp_j(v_j - C_ij / reg)

    Stable for small ``reg`` (no exp(-C/reg) kernel is formed). After iterations 0, 10, 20, ... the column
    marginal error ``err = ||P^T 1 - b||_2`` is checked; the loop stops once ``err < tol``.

    Parameters
    ----------
    a : array, shape (n,) or (..., n)
        Source masses, >= 0 with a positive sum (a 1-D ``a`` is shared by every problem).
    b : array, shape (m,) or (..., m)
        Target masses, >= 0, with the same total mass as ``a`` (relative difference <= 1e-9 in float64,
        1e-4 in float32).
    cost : array, shape (..., n, m)
        The cost matrices C; float32 or float64 (a and b in the same dtype).
    reg : float
        The entropic regularization, > 0.
    max_iter : int
        At most this many iterations (>= 0).
    tol : float
        Stop once the column-marginal error is below this (>= 0).
    return_plan : bool
        Also return the plans P (else ``plan`` is None).
    out : tuple of 4 arrays or None, optional
        Buffers for ``(value, plan, n_iter, err)`` (None entries are allocated; the plan slot must be None
        without ``return_plan``), each exactly its result's shape and dtype, C-contiguous, writeable, not
        overlapping an input or each other (else ``ValueError``, nothing written).

    Returns
    -------
    SinkhornResult
        ``value``: the transport cost of the entropic plan ``<P, C> = sum_ij P_ij C_ij`` (POT's
        ``ot.sinkhorn2``; the entropy term is not included), shape ``cost.shape[:-2]``, cost's dtype;
        ``plan``: (..., n, m) or None; ``n_iter``: iterations run (int64); ``err``: the final
        column-marginal error (float64).

    Notes
    -----
    Gradients with respect to ``cost``: ``sinkhorn_backward`` (the regularized objective's is the plan P
    itself, by the envelope theorem; the transport cost's needs a linear solve).
    """
    op = "sinkhorn"
    be = backend_of(op, a=a, b=b, cost=cost)
    cost = V.float_input(be, op, "cost", cost, half=False)
    if cost.ndim < 2:
        raise ValueError(f"{op}: cost must have at least 2 dims (..., n, m), got shape {tuple(cost.shape)}")
    lead, n, m = tuple(cost.shape[:-2]), cost.shape[-2], cost.shape[-1]
    if n == 0 or m == 0:
        raise ValueError(f"{op}: cost has an empty side (n={n}, m={m}); both distributions need support")
    a2, sa = _masses(be, op, "a", a, lead, n, cost.dtype)
    b2, sb = _masses(be, op, "b", b, lead, m, cost.dtype)
    rtol = 1e-9 if np.dtype(cost.dtype) == np.float64 else 1e-4
    if sa.size and sb.size:
        sa_b, sb_b = np.broadcast_arrays(sa, sb)
        if np.any(np.abs(sa_b - sb_b) > rtol * np.maximum(sa_b, sb_b)):
            raise ValueError(
                f"{op}: a and b must carry the same total mass (got {float(sa_b.flat[0])!r} and "
                f"{float(sb_b.flat[0])!r}); normalize both to sum to 1"
            )
    reg = V.scalar(op, "reg", reg, low=0.0, low_open=True)
    max_iter = V.integer(op, "max_iter", max_iter, low=0, high=2**31 - 1)
    tol = V.scalar(op, "tol", tol, low=0.0)
    return_plan = V.flag(op, "return_plan", return_plan)
    specs = SINKHORN.layout_for(be, dict(cost=cost), return_plan=return_plan)
    value, plan, n_iter, err = V.outputs(be, op, out, specs, (a2, b2, cost))
    rows = math.prod(lead)
    if rows > 0:
        cost_t, work = SINKHORN.scratch_for(be, cost.dtype, rows=rows, n=n, m=m)
        be.kernels.sinkhorn(
            cost.reshape(rows, n, m),
            a2,
            b2,
            cost_t,
            value.reshape(rows),
            plan.reshape(rows, n, m) if return_plan else be.empty((0, 0, 0), cost.dtype),
            n_iter.reshape(rows),
            err.reshape(rows),
            work,
            reg,
            max_iter,
            tol,
            CHECK_EVERY,
            be.threads(rows * n * m),
        )
    return SinkhornResult(value, plan, n_iter, err)


def _transport_grad(P: np.ndarray, C: np.ndarray, a: np.ndarray, b: np.ndarray, reg: float) -> np.ndarray:
    """d<P(C), C>/dC for one converged problem (float64), by implicit differentiation through the Schur
    complement on the target side: ``(diag(b') - P^T diag(1/a') P) beta = P^T (r / a') - s``,
    ``alpha = -(r + P beta) / a'`` (a', b': the plan's marginals), pinned by adding 1 1^T (the system's
    null space is the constant vector and the right-hand side is orthogonal to it)."""
    out = np.zeros_like(C)
    ri, ci = np.flatnonzero(a > 0), np.flatnonzero(b > 0)
    Pc, Cc = P[np.ix_(ri, ci)], C[np.ix_(ri, ci)]
    ap, bp = Pc.sum(axis=1), Pc.sum(axis=0)
    inv_a = np.divide(1.0, ap, out=np.zeros_like(ap), where=ap > 0)
    PC = Pc * Cc
    r, s = PC.sum(axis=1), PC.sum(axis=0)
    K = np.diag(bp) - Pc.T @ (inv_a[:, None] * Pc) + 1.0
    rhs = Pc.T @ (r * inv_a) - s
    try:
        beta = np.linalg.solve(K, rhs)
    except np.linalg.LinAlgError:
        beta = np.linalg.lstsq(K, rhs, rcond=None)[0]
    alpha = -(r + Pc @ beta) * inv_a
    out[np.ix_(ri, ci)] = Pc * (1.0 - (Cc + alpha[:, None] + beta[None, :]) / reg)
    return out


def sinkhorn_backward(
    grad: Array,
    a: Array,
    b: Array,
    cost: Array,
    plan: Array,
    reg: float,
    *,
    objective: str = "transport",
    out: Array | None = None,
) -> Array:
    """Gradient with respect to the cost matrix C at a converged Sinkhorn plan P.

    ``objective="transport"`` (the value ``sinkhorn`` returns, ``L(C) = <P(C), C>``): the plan moves with
    C, so the gradient is not P. With ``P_ij = exp((f_i + g_j - C_ij) / reg)`` and the marginal
    constraints held for every C, implicit differentiation gives, with ``r = (P * C) 1``,
    ``s = (P * C)^T 1`` and the adjoint (alpha, beta) solving
    ``[[diag(a), P], [P^T, diag(b)]] [alpha; beta] = -[r; s]``::

        dL/dC_ij = P_ij * (1 - (C_ij + alpha_i + beta_j) / reg)

    (an m x m dense solve per problem, float64, NumPy/LAPACK; CPU only).

    ``objective="regularized"`` (``OT_reg(C) = <P, C> + reg * sum P (log P - 1)`` at the optimum): by the
    envelope theorem ``dOT_reg/dC = P`` exactly at convergence (CPU and CUDA).

    Parameters
    ----------
    grad : array, shape ``cost.shape[:-2]``
        Upstream gradient of each problem's objective.
    a, b, cost, reg
        As given to ``sinkhorn``.
    plan : array, shape ``cost.shape``
        The plan ``sinkhorn(..., return_plan=True)`` returned.
    objective : {"transport", "regularized"}
        Which objective to differentiate.
    out : array, optional
        Buffer for the result: exactly ``cost``'s shape and dtype, C-contiguous, writeable, not overlapping an
        input (else ``ValueError``, nothing written).

    Returns
    -------
    array
        ``grad[..., None, None] * dObjective/dC``, shaped and typed like ``cost`` (``out`` when given).
    """
    op = "sinkhorn_backward"
    be = backend_of(op, grad=grad, a=a, b=b, cost=cost, plan=plan)
    if objective not in ("transport", "regularized"):
        raise ValueError(f"{op}: objective must be 'transport' or 'regularized', got {objective!r}")
    cost = V.float_input(be, op, "cost", cost, half=False)
    if cost.ndim < 2:
        raise ValueError(f"{op}: cost must have at least 2 dims (..., n, m), got shape {tuple(cost.shape)}")
    lead, n, m = tuple(cost.shape[:-2]), cost.shape[-2], cost.shape[-1]
    plan = V.required(be, op, "plan", plan, cost.shape, cost.dtype)
    grad = V.required(be, op, "grad", grad, lead, cost.dtype)
    a2, _ = _masses(be, op, "a", a, lead, n, cost.dtype)
    b2, _ = _masses(be, op, "b", b, lead, m, cost.dtype)
    reg = V.scalar(op, "reg", reg, low=0.0, low_open=True)
    if objective == "transport" and be.name != "cpu":
        raise TypeError(
            f"{op}: objective='transport' runs on the CPU only (a dense linear solve per problem); copy the "
            "arrays to the host, use objective='regularized', or fastnorm.torch.transport.sinkhorn "
            "(torch.linalg on the device)"
        )
    (out,) = V.outputs(be, op, out, SINKHORN_BWD.layout_for(be, dict(cost=cost)), (grad, a2, b2, cost, plan))
    rows = math.prod(lead)
    if objective == "regularized":
        if rows > 0:
            be.kernels.sinkhorn_backward(
                grad.reshape(rows), plan.reshape(rows, n, m), out.reshape(rows, n, m), be.threads(rows * n * m)
            )
        return out
    C = cost.reshape(rows, n, m).astype(np.float64)
    P = plan.reshape(rows, n, m).astype(np.float64)
    A = a2.astype(np.float64)
    Bm = b2.astype(np.float64)
    g = grad.reshape(rows).astype(np.float64)
    out3 = out.reshape(rows, n, m)
    for r in range(rows):
        out3[r] = g[r] * _transport_grad(P[r], C[r], A[min(r, A.shape[0] - 1)], Bm[min(r, Bm.shape[0] - 1)], reg)
    return out
