"""Differentiable fastnorm losses on torch tensors: ``cross_entropy``, ``kl_div``, ``js_div`` and the drop-in
modules ``CrossEntropyLoss``, ``KLDivLoss`` (subclasses of torch's, same arguments and state) and ``JSDLoss``
(Liger-Kernel's ``LigerJSD`` call convention: ``loss(log_q, log_p, labels=None)``).

Fused like Liger-Kernel: when the input requires grad and the loss is reduced, the forward kernel also
writes the input's gradient in the same pass (one logits-sized buffer, which autograd keeps instead of
torch's saved log-softmax), and the backward only scales it by the incoming gradient. For
``reduction="none"`` the forward saves what the backward kernel needs.

bfloat16 and float16 CPU tensors run on the 16-bit kernels zero-copy (float32 accumulation; the loss and the
gradient in the input's dtype, as torch returns them). What fastnorm does not run goes to torch's own
implementation (the functions silently, the modules with a one-time ``FastnormFallbackWarning``): dtypes
other than float32/float64/bfloat16/float16, a target
of another shape than the input for ``kl_div`` (torch broadcasts), probability targets that require grad,
``cross_entropy`` inputs that are not floating point. ``cross_entropy`` takes torch's (N, C, d1, ...) layout
by moving the class axis last (a copy).

``torch.compile``: the kernels are also ``torch.library`` custom ops (``fastnorm::cross_entropy_forward``,
``fastnorm::kl_div_forward``, ...) with fake (meta) implementations; eager calls go straight to the kernels,
while Dynamo traces the autograd Functions call the custom ops, so ``fullgraph=True`` compiles without graph
breaks (as ``fastnorm.torch.functional``). Double backward is not supported.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import custom_op

import fastnorm
from fastnorm._spec import REGISTRY

from . import functional as _F
from ._bind import fake_outputs
from ._common import warn_once

_CE_FWD, _CE_BWD = REGISTRY["softmax_cross_entropy_forward"], REGISTRY["softmax_cross_entropy_backward"]

__all__ = ["cross_entropy", "kl_div", "js_div", "CrossEntropyLoss", "KLDivLoss", "JSDLoss"]

_arr, _ten = _F._arr, _F._ten


def _legacy(size_average, reduce, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        return torch.nn._reduction.legacy_get_string(size_average, reduce, emit_warning=False)
    return reduction


def _is_one(g: Tensor) -> bool:
    return g.numel() == 1 and g.device.type == "cpu" and float(g) == 1.0


def _scaled(saved: Tensor, g: Tensor) -> Tensor:
    """saved * g for a scalar upstream gradient (the saved tensor itself when g == 1, as Liger does; while
    Dynamo traces, always the product: reading g's value would break the graph)."""
    if not torch.compiler.is_compiling() and _is_one(g):
        return saved
    return saved * g.to(saved.dtype)


_call, _empty_if_none, _none_if_absent = _F._call, _F._empty_if_none, _F._none_if_absent


# ------------------------------------------------------------------------------------- cross-entropy
def _ce_options(weight, ignore_index: int, label_smoothing: float, reduction: str) -> dict:
    """The keyword arguments the forward and the backward kernel both take."""
    return dict(weight=_arr(weight), ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction)


def _ce_fwd_impl(logits, target, weight, ignore_index: int, label_smoothing: float, reduction: str, fused: bool):
    loss, lse, g = fastnorm.softmax_cross_entropy_forward(
        _arr(logits),
        _arr(target),
        grad="out" if fused else None,
        **_ce_options(weight, ignore_index, label_smoothing, reduction),
    )
    return _ten(loss, logits), _ten(lse, logits), _empty_if_none(_ten(g, logits), logits)


def _ce_bwd_impl(dloss, logits, target, lse, weight, ignore_index: int, label_smoothing: float, reduction: str):
    g = fastnorm.softmax_cross_entropy_backward(
        _arr(dloss.contiguous()),
        _arr(logits),
        _arr(target),
        _arr(lse),
        **_ce_options(weight, ignore_index, label_smoothing, reduction),
    )
    return _ten(g, logits)


@custom_op(f"fastnorm::{_CE_FWD.torch_op}", mutates_args=())
def _ce_fwd_op(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    fused: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return _ce_fwd_impl(logits, target, weight, ignore_index, label_smoothing, reduction, fused)


@_ce_fwd_op.register_fake
def _(logits, target, weight, ignore_index, label_smoothing, reduction, fused):
    return fake_outputs(_CE_FWD, dict(logits=logits), reduction=reduction, grad="out" if fused else None)


@custom_op(f"fastnorm::{_CE_BWD.torch_op}", mutates_args=())
def _ce_bwd_op(
    dloss: Tensor,
    logits: Tensor,
    target: Tensor,
    lse: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
) -> Tensor:
    return _ce_bwd_impl(dloss, logits, target, lse, weight, ignore_index, label_smoothing, reduction)


@_ce_bwd_op.register_fake
def _(dloss, logits, target, lse, weight, ignore_index, label_smoothing, reduction):
    return fake_outputs(_CE_BWD, dict(logits=logits))[0]


class CrossEntropyFunction(torch.autograd.Function):
    """Softmax cross-entropy on (N, V) or (V,) logits; the reduced forms compute the gradient in the forward."""

    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, label_smoothing, reduction):
        fused = logits.requires_grad and reduction != "none"
        loss, lse, g = _call(
            _ce_fwd_op, _ce_fwd_impl, logits, target, weight, ignore_index, label_smoothing, reduction, fused
        )
        ctx.args = (ignore_index, label_smoothing, reduction)
        ctx.fused = fused
        if fused:
            ctx.save_for_backward(g)
        else:
            ctx.save_for_backward(logits, target, lse, weight)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        if ctx.fused:
            (g,) = ctx.saved_tensors
            return _scaled(g, dloss), None, None, None, None, None
        logits, target, lse, weight = ctx.saved_tensors
        g = _call(_ce_bwd_op, _ce_bwd_impl, dloss, logits, target, lse, weight, *ctx.args)
        return g, None, None, None, None, None


def _ce_supported(input: Tensor, target: Tensor, weight: Tensor | None) -> str | None:
    reason = _F.unsupported_reason(input, weight, op="softmax_cross_entropy")
    if reason is not None:
        return reason
    if target.is_floating_point():
        if target.requires_grad:
            return "probability targets that require grad are not supported"
        if target.dtype != input.dtype:
            return f"probability target dtype {target.dtype} differs from the input's {input.dtype}"
    elif target.dtype not in (torch.int32, torch.int64, torch.uint8, torch.int16, torch.int8):
        return f"target dtype {target.dtype} is not supported"
    if weight is not None and weight.dtype != input.dtype:
        return f"weight dtype {weight.dtype} differs from the input's {input.dtype}"
    if input.dim() == 0:
        return "a 0-d input"
    return None


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average=None,
    ignore_index: int = -100,
    reduce=None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """``torch.nn.functional.cross_entropy`` on fastnorm's fused kernel (same signature and semantics)::

        loss_i = (1 - eps) w[t_i] (-log_softmax(x_i)[t_i]) + eps / C sum_j w_j (-log_softmax(x_i)[j])

    (probability targets: -sum_j w_j y'_ij log_softmax(x_i)[j], y' = (1 - eps) y + eps / C), reduced by
    "none" / "sum" / "mean" (over the weights of non-ignored targets). (N, C, d1, ...) inputs are run as
    (N * d1 * ..., C) rows (the class axis moved last: a copy). Unsupported inputs run torch's own.

    Parameters
    ----------
    input : Tensor
        Logits (N, C), (C,) or (N, C, d1, ...); float32, float64, bfloat16 or float16 (CPU 16-bit: computed
        in float32, the loss and the gradient in the input's dtype).
    target : Tensor
        Class indices (N,) / (N, d1, ...), or class probabilities of input's shape and dtype.
    weight, size_average, ignore_index, reduce, reduction, label_smoothing
        As in torch.

    Returns
    -------
    Tensor
        The loss, 0-d or per-sample for "none", in input's dtype.
    """
    reduction = _legacy(size_average, reduce, reduction)
    if _ce_supported(input, target, weight) is not None:
        return torch.nn.functional.cross_entropy(input, target, weight, None, ignore_index, None, reduction,
                                                 label_smoothing)  # fmt: skip
    if input.dim() > 2:
        c = input.shape[1]
        x2 = input.movedim(1, -1).reshape(-1, c).contiguous()
        t2 = (target.movedim(1, -1).reshape(-1, c) if target.is_floating_point() else target.reshape(-1)).contiguous()
        loss = CrossEntropyFunction.apply(x2, t2, weight, int(ignore_index), float(label_smoothing), reduction)
        if reduction == "none":
            loss = loss.reshape((input.shape[0],) + tuple(input.shape[2:]))
        return loss
    t = target if target.is_floating_point() else target.to(torch.int64)
    return CrossEntropyFunction.apply(input.contiguous(), t.contiguous(), weight, int(ignore_index),
                                      float(label_smoothing), reduction)  # fmt: skip


# ------------------------------------------------------------------------------------------------ KL / JS
def _kl_fwd_impl(input, target, reduction: str, log_target: bool, want_x: bool, want_t: bool):
    loss, dx, dt = fastnorm.kl_div(
        _arr(input), _arr(target), reduction=reduction, log_target=log_target,
        grad="out" if want_x else None, grad_target=want_t,
    )  # fmt: skip
    return _ten(loss, input), _empty_if_none(_ten(dx, input), input), _empty_if_none(_ten(dt, input), input)


def _kl_bwd_impl(dloss, input, target, reduction: str, log_target: bool, want_x: bool, want_t: bool):
    dx, dt = fastnorm.kl_div_backward(
        _arr(dloss.contiguous()), _arr(input), _arr(target), reduction=reduction, log_target=log_target,
        input_grad=want_x, target_grad=want_t,
    )  # fmt: skip
    return _empty_if_none(_ten(dx, input), input), _empty_if_none(_ten(dt, input), input)


def _js_fwd_impl(input, target, labels, beta: float, ignore_index: int, reduction: str, want_x: bool, want_t: bool):
    loss, dx, dt = fastnorm.js_div(
        _arr(input), _arr(target), labels=_arr(labels), beta=beta, ignore_index=ignore_index, reduction=reduction,
        grad="out" if want_x else None, grad_target=want_t,
    )  # fmt: skip
    return _ten(loss, input), _empty_if_none(_ten(dx, input), input), _empty_if_none(_ten(dt, input), input)


def _js_bwd_impl(dloss, input, target, labels, beta: float, ignore_index: int, reduction: str, want_x: bool,
                 want_t: bool):  # fmt: skip
    dx, dt = fastnorm.js_div_backward(
        _arr(dloss.contiguous()), _arr(input), _arr(target), labels=_arr(labels), beta=beta,
        ignore_index=ignore_index, reduction=reduction, input_grad=want_x, target_grad=want_t,
    )  # fmt: skip
    return _empty_if_none(_ten(dx, input), input), _empty_if_none(_ten(dt, input), input)


def _div_ops(which: str, fwd_impl, bwd_impl) -> tuple:
    """``fastnorm::<which>_div_forward`` -> (loss, dx, dt) and ``<which>_div_backward`` -> (dx, dt), with
    fakes (dx / dt: empty unless wanted). Their arguments after (dloss,) input, target: the divergence's own,
    as declared (name and kind), then the wanted gradients (want_x, want_t: the declared grad options)."""
    fspec, bspec = REGISTRY[f"{which}_div"], REGISTRY[f"{which}_div_backward"]
    own = [(a.name, a.kind) for a in fspec.args if a.name not in ("input", "target", "grad", "grad_target")]
    extra = (*own, ("want_x", "bool"), ("want_t", "bool"))
    names = [n for n, _ in extra]
    args = ", ".join(f"{kind} {n}" for n, kind in extra)
    fwd_schema = f"(Tensor input, Tensor target, {args}) -> (Tensor, Tensor, Tensor)"
    bwd_schema = f"(Tensor dloss, Tensor input, Tensor target, {args}) -> (Tensor, Tensor)"
    fwd = custom_op(f"fastnorm::{fspec.torch_op}", fwd_impl, mutates_args=(), schema=fwd_schema)
    bwd = custom_op(f"fastnorm::{bspec.torch_op}", bwd_impl, mutates_args=(), schema=bwd_schema)

    def fwd_fake(input, target, *rest):
        kw = dict(zip(names, rest, strict=True))
        grad = "out" if kw["want_x"] else None
        return fake_outputs(fspec, dict(input=input), reduction=kw["reduction"], grad=grad, grad_target=kw["want_t"])

    def bwd_fake(dloss, input, target, *rest):
        want_x, want_t = rest[-2:]
        return fake_outputs(bspec, dict(input=input), input_grad=want_x, target_grad=want_t)

    fwd.register_fake(fwd_fake)
    bwd.register_fake(bwd_fake)
    return fwd, bwd


_kl_fwd_op, _kl_bwd_op = _div_ops("kl", _kl_fwd_impl, _kl_bwd_impl)
_js_fwd_op, _js_bwd_op = _div_ops("js", _js_fwd_impl, _js_bwd_impl)


class _DivergenceFunction(torch.autograd.Function):
    """KL or JS divergence; reduced forms fuse the gradients into the forward. ``args``: (reduction,
    log_target) for KL, (beta, ignore_index, reduction) for JS."""

    @staticmethod
    def forward(ctx, input, target, labels, which, args):
        want_x, want_t = input.requires_grad, target.requires_grad
        reduction = args[0] if which == "kl" else args[2]
        fused = reduction != "none" and (want_x or want_t)
        fx, ft = fused and want_x, fused and want_t
        if which == "kl":
            loss, dx, dt = _call(_kl_fwd_op, _kl_fwd_impl, input, target, *args, fx, ft)
        else:
            loss, dx, dt = _call(_js_fwd_op, _js_fwd_impl, input, target, labels, *args, fx, ft)
        ctx.which, ctx.args, ctx.fused, ctx.want = which, args, fused, (want_x, want_t)
        if fused:
            ctx.save_for_backward(dx if want_x else None, dt if want_t else None)
        else:
            ctx.save_for_backward(input, target, labels)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        want_x, want_t = ctx.want
        if ctx.fused:
            dx, dt = ctx.saved_tensors
            return (_scaled(dx, dloss) if want_x else None), (_scaled(dt, dloss) if want_t else None), None, None, None
        input, target, labels = ctx.saved_tensors
        if ctx.which == "kl":
            dx, dt = _call(_kl_bwd_op, _kl_bwd_impl, dloss, input, target, *ctx.args, want_x, want_t)
        else:
            dx, dt = _call(_js_bwd_op, _js_bwd_impl, dloss, input, target, labels, *ctx.args, want_x, want_t)
        return (dx if want_x else None), (dt if want_t else None), None, None, None


def kl_div(
    input: Tensor,
    target: Tensor,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
    log_target: bool = False,
) -> Tensor:
    """``torch.nn.functional.kl_div`` on fastnorm's kernels (input: log-probabilities)::

        l = target (log(target) - input)   or, log_target:  l = exp(target) (target - input)

    reduced by "none" / "sum" / "mean" / "batchmean". Gradients for input and target (when they require
    grad). Broadcasting shapes and unsupported dtypes run torch's own.

    Parameters
    ----------
    input, target : Tensor
        One shape and dtype (float32, float64, bfloat16 or float16).
    size_average, reduce, reduction, log_target
        As in torch.

    Returns
    -------
    Tensor
        The loss in input's dtype (input's shape for "none").
    """
    reduction = _legacy(size_average, reduce, reduction)
    if (
        _F.unsupported_reason(input, target, op="kl_div") is not None
        or input.shape != target.shape
        or input.dtype != target.dtype
        or input.dim() == 0
    ):
        return torch.nn.functional.kl_div(input, target, reduction=reduction, log_target=log_target)
    args = (reduction, bool(log_target))
    return _DivergenceFunction.apply(input.contiguous(), target.contiguous(), None, "kl", args)


def _js_torch(input, target, labels, beta, ignore_index, reduction):
    """The generalized JSD from torch ops (the fallback; also the benchmark's "torch composed ops")."""
    q, p = input.exp(), target.exp()
    if beta == 0.0:
        elem = torch.where(p == 0, 0.0, p * (target - input))
    elif beta == 1.0:
        elem = torch.where(q == 0, 0.0, q * (input - target))
    else:
        m = beta * p + (1 - beta) * q
        elem = (beta * torch.where(p == 0, 0.0, p * target) + (1 - beta) * torch.where(q == 0, 0.0, q * input)
                - torch.where(m == 0, 0.0, m * m.log()))  # fmt: skip
    rows = elem.shape[0] if elem.dim() > 1 else 1
    v = elem.shape[-1]
    if labels is not None:
        keep = (labels != ignore_index).reshape(elem.shape[:-1] + (1,))
        elem = elem * keep
        rows = int(keep.sum())
    else:
        rows = elem[..., 0].numel()
    if reduction == "none":
        return elem
    s = elem.sum()
    if reduction == "batchmean":
        return s / rows
    if reduction == "mean":
        return s / (rows * v)
    return s


def js_div(
    input: Tensor,
    target: Tensor,
    labels: Tensor | None = None,
    *,
    beta: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "batchmean",
) -> Tensor:
    """Generalized Jensen-Shannon divergence (Liger-Kernel's JSD) of log-probabilities input = log Q (student)
    and target = log P (teacher), M = beta P + (1 - beta) Q::

        JSD_beta = beta KL(P || M) + (1 - beta) KL(Q || M)     (beta = 0: KL(P || Q), beta = 1: KL(Q || P))

    Rows whose ``labels`` entry is ``ignore_index`` are skipped; "batchmean" divides by the rows kept.

    Parameters
    ----------
    input, target : Tensor
        Log-probabilities of one shape and dtype.
    labels : Tensor, optional
        Integer labels of the rows' shape (input.shape[:-1]).
    beta : float
        In [0, 1].
    ignore_index : int
    reduction : {"none", "sum", "mean", "batchmean"}

    Returns
    -------
    Tensor
        The divergence in input's dtype (input's shape for "none").
    """
    if (
        _F.unsupported_reason(input, target, op="js_div") is not None
        or input.shape != target.shape
        or input.dtype != target.dtype
        or input.dim() == 0
    ):
        return _js_torch(input, target, labels, float(beta), ignore_index, reduction)
    args = (float(beta), int(ignore_index), reduction)
    lab = None if labels is None else labels.contiguous()
    return _DivergenceFunction.apply(input.contiguous(), target.contiguous(), lab, "js", args)


# ------------------------------------------------------------------------------------------------ modules
_warned: set = set()


def _warn_fallback(module, reason: str) -> None:
    warn_once(_warned, f"fastnorm.torch.losses.{type(module).__name__}", reason)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` (same arguments, ``weight`` buffer) on fastnorm's fused kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        reason = _ce_supported(input, target, self.weight)
        if reason is not None:
            _warn_fallback(self, reason)
            return super().forward(input, target)
        return cross_entropy(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
                             label_smoothing=self.label_smoothing)  # fmt: skip


class KLDivLoss(torch.nn.KLDivLoss):
    """``torch.nn.KLDivLoss`` (same arguments) on fastnorm's kernels."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        reason = _F.unsupported_reason(input, target, op="kl_div")
        if reason is None and (input.shape != target.shape or input.dtype != target.dtype):
            reason = "input and target differ in shape or dtype (torch broadcasts)"
        if reason is not None:
            _warn_fallback(self, reason)
            return super().forward(input, target)
        return kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class JSDLoss(torch.nn.Module):
    """Generalized Jensen-Shannon divergence loss, Liger-Kernel's ``LigerJSD(beta, ignore_index)`` convention:
    ``loss = JSDLoss(beta)(log_q, log_p, labels=None)`` with log_q the student's log-probabilities (N, V),
    log_p the teacher's; ``reduction`` (default Liger's "batchmean") also takes "none", "sum", "mean"."""

    def __init__(self, beta: float = 0.5, ignore_index: int = -100, reduction: str = "batchmean"):
        super().__init__()
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"JSDLoss: beta must be in [0, 1], got {beta!r}")
        if reduction not in ("none", "sum", "mean", "batchmean"):
            raise ValueError(f"JSDLoss: reduction must be none, sum, mean or batchmean, got {reduction!r}")
        self.beta, self.ignore_index, self.reduction = float(beta), int(ignore_index), reduction

    def extra_repr(self) -> str:
        return f"beta={self.beta}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"

    def forward(self, log_q: Tensor, log_p: Tensor, labels: Tensor | None = None) -> Tensor:
        reason = _F.unsupported_reason(log_q, log_p, op="js_div")
        if reason is not None:
            _warn_fallback(self, reason)
        return js_div(log_q, log_p, labels, beta=self.beta, ignore_index=self.ignore_index, reduction=self.reduction)
