"""Differentiable optimal-transport losses on torch tensors: ``wasserstein_1d`` and ``sinkhorn``.

Each is a ``torch.autograd.Function`` around the fastnorm op (``fastnorm.transport``): CPU tensors cross
zero-copy as NumPy arrays, CUDA tensors (float32/float64) go to fastnorm's CUDA kernels. The kernels are also
``torch.library`` custom ops (``fastnorm::wasserstein_1d``, ``fastnorm::wasserstein_1d_backward``,
``fastnorm::sinkhorn``) with fake implementations, called while Dynamo traces, so ``torch.compile(...,
fullgraph=True)`` compiles them without graph breaks. Double backward is not supported.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import custom_op

import fastnorm
from fastnorm._spec import REGISTRY

from ._bind import fake_outputs
from ._common import _arr, _ten
from .functional import _call, _empty_if_none, _none_if_absent

__all__ = ["wasserstein_1d", "sinkhorn"]

_DTYPES = (torch.float32, torch.float64)


def _check(op: str, cpu_only: bool, **tensors: Tensor | None) -> None:
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"fastnorm.torch.transport.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"fastnorm.torch.transport.{op}: {name} has dtype {t.dtype}; expected float32 or float64")
        if t.device.type != "cpu" and (cpu_only or t.device.type != "cuda"):
            where = "the CPU" if cpu_only else "the CPU or CUDA"
            raise TypeError(f"fastnorm.torch.transport.{op}: {name} is on {t.device}; this op runs on {where}")


# ------------------------------------------------------------------------------------- wasserstein_1d
def _w1d_fwd_impl(u: Tensor, v: Tensor, uw: Tensor | None, vw: Tensor | None, p: float) -> Tensor:
    return _ten(fastnorm.wasserstein_1d(_arr(u), _arr(v), _arr(uw), _arr(vw), p=p), u)


def _w1d_bwd_impl(g: Tensor, u: Tensor, v: Tensor, uw: Tensor | None, vw: Tensor | None, p: float):
    du, dv, duw, dvw = fastnorm.wasserstein_1d_backward(_arr(g.contiguous()), _arr(u), _arr(v), _arr(uw), _arr(vw), p=p)
    return _ten(du, u), _ten(dv, v), _empty_if_none(_ten(duw, u), u), _empty_if_none(_ten(dvw, v), v)


@custom_op(f"fastnorm::{REGISTRY['wasserstein_1d'].torch_op}", mutates_args=())
def _w1d_fwd_op(u: Tensor, v: Tensor, uw: Tensor | None, vw: Tensor | None, p: float) -> Tensor:
    return _w1d_fwd_impl(u, v, uw, vw, p)


@_w1d_fwd_op.register_fake
def _(u, v, uw, vw, p):
    return fake_outputs(REGISTRY["wasserstein_1d"], dict(u_values=u))[0]


@custom_op(f"fastnorm::{REGISTRY['wasserstein_1d_backward'].torch_op}", mutates_args=())
def _w1d_bwd_op(
    g: Tensor, u: Tensor, v: Tensor, uw: Tensor | None, vw: Tensor | None, p: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _w1d_bwd_impl(g, u, v, uw, vw, p)


@_w1d_bwd_op.register_fake
def _(g, u, v, uw, vw, p):
    return fake_outputs(REGISTRY["wasserstein_1d_backward"], dict(u_values=u, v_values=v, u_weights=uw, v_weights=vw))


class Wasserstein1dFunction(torch.autograd.Function):
    """W_p^p between the rows of u and v; backward by fastnorm.wasserstein_1d_backward."""

    @staticmethod
    def forward(ctx, u, v, uw, vw, p):
        w = _call(_w1d_fwd_op, _w1d_fwd_impl, u, v, uw, vw, p)
        ctx.save_for_backward(u, v, uw, vw)
        ctx.p = p
        return w

    @staticmethod
    def backward(ctx, g):
        u, v, uw, vw = ctx.saved_tensors
        du, dv, duw, dvw = _call(_w1d_bwd_op, _w1d_bwd_impl, g, u, v, uw, vw, ctx.p)
        return du, dv, _none_if_absent(duw, uw), _none_if_absent(dvw, vw), None


def wasserstein_1d(
    u_values: Tensor,
    v_values: Tensor,
    u_weights: Tensor | None = None,
    v_weights: Tensor | None = None,
    p: float = 1,
) -> Tensor:
    """``W_p^p = integral_0^1 |U^-1(q) - V^-1(q)|^p dq`` per batch row (``fastnorm.wasserstein_1d``: SciPy's
    ``wasserstein_distance`` for p = 1, POT's ``ot.wasserstein_1d`` for p >= 1), differentiable with respect
    to the values and the weights. CPU and CUDA tensors.

    Parameters
    ----------
    u_values, v_values : Tensor
        Samples (..., n) and (..., m), one float dtype.
    u_weights, v_weights : Tensor, optional
        Non-negative weights like their values (None: uniform).
    p : float
        The order, >= 1.

    Returns
    -------
    Tensor
        W_p^p of the leading shape.
    """
    _check("wasserstein_1d", False, u_values=u_values, v_values=v_values, u_weights=u_weights, v_weights=v_weights)
    return Wasserstein1dFunction.apply(u_values, v_values, u_weights, v_weights, float(p))


# --------------------------------------------------------------------------------------------- sinkhorn
def _transport_grad(P: Tensor, C: Tensor, reg: float) -> Tensor:
    """d<P(C), C>/dC at converged plans P (B, n, m), in float64 with torch.linalg (CPU or CUDA).

    Adjoint (alpha, beta) of the marginal constraints (see ``fastnorm.transport.sinkhorn_backward``), by the
    Schur complement on the target side; rows/columns of zero mass are decoupled (their gradient is 0)."""
    P, C = P.double(), C.double()
    ap, bp = P.sum(-1), P.sum(-2)
    inv_a = torch.where(ap > 0, 1.0 / torch.where(ap > 0, ap, torch.ones_like(ap)), torch.zeros_like(ap))
    PC = P * C
    r, s = PC.sum(-1), PC.sum(-2)
    supp = (bp > 0).double()
    K = torch.diag_embed(bp + (1.0 - supp)) - P.transpose(-1, -2) @ (inv_a[..., :, None] * P)
    K = K + supp[..., :, None] * supp[..., None, :]
    rhs = (P.transpose(-1, -2) @ (r * inv_a)[..., None])[..., 0] - s
    beta = torch.linalg.solve(K, rhs[..., None])[..., 0] * supp
    alpha = -(r + (P @ beta[..., None])[..., 0]) * inv_a
    return P * (1.0 - (C + alpha[..., :, None] + beta[..., None, :]) / reg)


def _sinkhorn_impl(a: Tensor, b: Tensor, cost: Tensor, reg: float, max_iter: int, tol: float):
    res = fastnorm.sinkhorn(_arr(a), _arr(b), _arr(cost), reg, max_iter=max_iter, tol=tol, return_plan=True)
    return _ten(res.value, cost), _ten(res.plan, cost)


@custom_op(f"fastnorm::{REGISTRY['sinkhorn'].torch_op}", mutates_args=())
def _sinkhorn_op(a: Tensor, b: Tensor, cost: Tensor, reg: float, max_iter: int, tol: float) -> tuple[Tensor, Tensor]:
    return _sinkhorn_impl(a, b, cost, reg, max_iter, tol)


@_sinkhorn_op.register_fake
def _(a, b, cost, reg, max_iter, tol):
    value, plan, _, _ = fake_outputs(REGISTRY["sinkhorn"], dict(cost=cost), return_plan=True)
    return value, plan


class SinkhornFunction(torch.autograd.Function):
    """Entropic OT value per problem; backward: the gradient with respect to the cost matrices."""

    @staticmethod
    def forward(ctx, a, b, cost, reg, max_iter, tol, objective):
        value, plan = _call(_sinkhorn_op, _sinkhorn_impl, a, b, cost, reg, max_iter, tol)
        if objective == "regularized":
            p64 = plan.double()
            ent = (torch.xlogy(p64, p64) - p64).sum((-2, -1))
            value = (value.double() + reg * ent).to(cost.dtype)
        ctx.save_for_backward(cost, plan)
        ctx.reg, ctx.objective = reg, objective
        return value

    @staticmethod
    def backward(ctx, g):
        cost, plan = ctx.saved_tensors
        gg = g.double()[..., None, None]
        if ctx.objective == "regularized":
            d = gg * plan.double()
        else:
            lead = cost.shape[:-2]
            n, m = cost.shape[-2:]
            d = gg * _transport_grad(plan.reshape(-1, n, m), cost.reshape(-1, n, m), ctx.reg).reshape(*lead, n, m)
        return None, None, d.to(cost.dtype), None, None, None, None


def sinkhorn(
    a: Tensor,
    b: Tensor,
    cost: Tensor,
    reg: float,
    *,
    max_iter: int = 1000,
    tol: float = 1e-9,
    objective: str = "transport",
) -> Tensor:
    """Entropic optimal transport (``fastnorm.sinkhorn``, log-domain Sinkhorn), differentiable in ``cost``.

    ``objective="transport"``: returns ``<P, C>`` (POT's ``ot.sinkhorn2``) with its exact gradient at
    convergence, ``P * (1 - (C + alpha + beta) / reg)`` (implicit differentiation, a dense solve per
    problem). ``objective="regularized"``: returns ``<P, C> + reg * sum P (log P - 1)``, whose gradient is
    ``P`` (envelope theorem). Shapes: a (n,) or (..., n), b (m,) or (..., m), cost (..., n, m); returns the
    leading shape. No gradient flows to ``a`` or ``b`` (an error if they require one). CPU and CUDA.

    Parameters
    ----------
    a, b : Tensor
        Source (n,) / (..., n) and target (m,) / (..., m) masses of equal totals.
    cost : Tensor
        Cost matrices (..., n, m).
    reg : float
        Entropic regularization, > 0.
    max_iter, tol
        As in ``fastnorm.sinkhorn`` (stops when ||P^T 1 - b||_2 < tol).
    objective : {"transport", "regularized"}

    Returns
    -------
    Tensor
        The objective, of the leading shape.
    """
    op = "sinkhorn"
    _check(op, False, a=a, b=b, cost=cost)
    if objective not in ("transport", "regularized"):
        raise ValueError(f"fastnorm.torch.transport.{op}: objective must be 'transport' or 'regularized'")
    if a.requires_grad or b.requires_grad:
        raise ValueError(
            f"fastnorm.torch.transport.{op}: gradients with respect to a and b are not implemented "
            "(detach them); the gradient is with respect to cost"
        )
    return SinkhornFunction.apply(a, b, cost, float(reg), int(max_iter), float(tol), objective)
