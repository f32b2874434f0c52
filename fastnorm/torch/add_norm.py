"""Fused residual add + LayerNorm / RMSNorm on torch tensors (``fastnorm.add_norm``), differentiable.

A pre-norm transformer block computes ``h = x + residual`` (the new residual stream) and ``y = norm(h)`` (the
sublayer's input). The fused ops read x and residual once and write both h and y; backward takes the
gradient arriving on y and on h and returns ``dnorm(dy; h) + dh``, which is the gradient of both x and
residual, with dweight (and dbias), in one pass.

Custom ops ``fastnorm::add_layer_norm_forward/backward`` and ``fastnorm::add_rms_norm_forward/backward``
(``torch.library.custom_op`` with fake implementations, and autograd registered on the forward ops with
``register_autograd``), so ``torch.compile(fullgraph=True)`` traces them as opaque nodes. Eager calls skip
the dispatcher: an ``autograd.Function`` calls the same kernels directly (as ``fastnorm.torch.functional``
does), so a small call costs what a plain fastnorm norm costs. Double backward is not supported. The
functional entry points are re-exported by ``fastnorm.torch.functional``, the modules ``AddLayerNorm`` /
``AddRMSNorm`` live in ``fastnorm.torch.nn``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.library import custom_op

from ._common import _arr, _ten
from .functional import _check, _empty_if_none, _none_if_absent, _normalized_ndim, _register_half_probe, _stat_dtype

__all__ = ["add_layer_norm", "add_rms_norm"]


def _public():
    """fastnorm.add_norm, imported on first use (its kernels may be missing from a partial build)."""
    from fastnorm import add_norm

    return add_norm


_register_half_probe("add_layer_norm", lambda a, g, m: _public().add_layer_norm_forward(a, a))
_register_half_probe("add_rms_norm", lambda a, g, m: _public().add_rms_norm_forward(a, a))


def _lead(x: Tensor, normalized_ndim: int):
    return x.shape[: x.dim() - normalized_ndim]


def _param_grad_fake(p: Tensor | None, like: Tensor) -> Tensor:
    return _empty_if_none(None if p is None else torch.empty_like(p), like)


# ------------------------------------------------------------------------------------------- add + LayerNorm
def _add_layer_norm_fwd_impl(x, residual, weight, bias, normalized_ndim: int, eps: float):
    y, h, mean, rstd = _public().add_layer_norm_forward(
        _arr(x), _arr(residual), _arr(weight), _arr(bias), eps=eps, normalized_ndim=normalized_ndim
    )
    return _ten(y, x), _ten(h, x), _ten(mean, x), _ten(rstd, x)


def _add_layer_norm_bwd_impl(dy, dh, h, mean, rstd, weight, bias, normalized_ndim: int):
    dx, dw, db = _public().add_layer_norm_backward(
        _arr(dy), _arr(dh), _arr(h), _arr(mean), _arr(rstd), _arr(weight), _arr(bias),
        normalized_ndim=normalized_ndim,
    )  # fmt: skip
    return _ten(dx, h), _empty_if_none(_ten(dw, h), h), _empty_if_none(_ten(db, h), h)


@custom_op("fastnorm::add_layer_norm_forward", mutates_args=())
def _add_layer_norm_fwd_op(
    x: Tensor, residual: Tensor, weight: Tensor | None, bias: Tensor | None, normalized_ndim: int, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _add_layer_norm_fwd_impl(x, residual, weight, bias, normalized_ndim, eps)


@_add_layer_norm_fwd_op.register_fake
def _(x, residual, weight, bias, normalized_ndim, eps):
    sd = _stat_dtype(x.dtype)
    lead = _lead(x, normalized_ndim)
    return torch.empty_like(x), torch.empty_like(x), x.new_empty(lead, dtype=sd), x.new_empty(lead, dtype=sd)


@custom_op("fastnorm::add_layer_norm_backward", mutates_args=())
def _add_layer_norm_bwd_op(
    dy: Tensor,
    dh: Tensor | None,
    h: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    normalized_ndim: int,
) -> tuple[Tensor, Tensor, Tensor]:
    return _add_layer_norm_bwd_impl(dy, dh, h, mean, rstd, weight, bias, normalized_ndim)


@_add_layer_norm_bwd_op.register_fake
def _(dy, dh, h, mean, rstd, weight, bias, normalized_ndim):
    return torch.empty_like(h), _param_grad_fake(weight, h), _param_grad_fake(bias, h)


def _add_layer_norm_setup(ctx, inputs, output):
    x, residual, weight, bias, normalized_ndim, eps = inputs
    _, h, mean, rstd = output
    ctx.save_for_backward(h, mean, rstd, weight, bias)
    ctx.normalized_ndim = normalized_ndim
    ctx.mark_non_differentiable(mean, rstd)


def _add_layer_norm_backward(ctx, dy, dh, dmean, drstd):
    h, mean, rstd, weight, bias = ctx.saved_tensors
    dx, dw, db = _add_layer_norm_bwd_op(dy, dh, h, mean, rstd, weight, bias, ctx.normalized_ndim)
    return dx, dx, _none_if_absent(dw, weight), _none_if_absent(db, bias), None, None


_add_layer_norm_fwd_op.register_autograd(_add_layer_norm_backward, setup_context=_add_layer_norm_setup)


class AddLayerNormFunction(torch.autograd.Function):
    """The eager path of ``add_layer_norm``: the kernels called directly, without the dispatcher's overhead
    (while Dynamo traces, ``add_layer_norm`` calls the custom op, whose autograd is the same)."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, normalized_ndim, eps):
        y, h, mean, rstd = _add_layer_norm_fwd_impl(x, residual, weight, bias, normalized_ndim, eps)
        ctx.set_materialize_grads(False)  # no gradient on h: dh=None, the kernel adds nothing
        ctx.save_for_backward(h, mean, rstd, weight, bias)
        ctx.normalized_ndim = normalized_ndim
        return y, h

    @staticmethod
    def backward(ctx, dy, dh):
        h, mean, rstd, weight, bias = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(h)
        dx, dw, db = _add_layer_norm_bwd_impl(dy, dh, h, mean, rstd, weight, bias, ctx.normalized_ndim)
        return dx, dx, _none_if_absent(dw, weight), _none_if_absent(db, bias), None, None


def add_layer_norm(
    x: Tensor,
    residual: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor]:
    """Fused residual add + LayerNorm over the trailing ``normalized_shape`` dims::

        h = x + residual
        y = (h - mean(h)) / sqrt(var(h) + eps) * weight + bias      (biased variance)

    Parameters
    ----------
    x, residual : Tensor
        Same shape and dtype (float32, float64; bfloat16/float16 where the CPU kernels take them), ending
        with ``normalized_shape``. h is rounded to their dtype once, then normalized.
    normalized_shape : int or sequence of int
        The trailing dims normalized together.
    weight, bias : Tensor, optional
        ``normalized_shape``; in x's dtype, or float32 beside 16-bit x.
    eps : float
        Added to the variance.

    Returns
    -------
    (y, h) : tuple of Tensor
        The normalized output and the new residual stream, both x's shape and dtype. Gradients flow to x,
        residual (the same gradient: ``dLayerNorm(dy; h) + dh``), weight and bias.
    """
    _check("add_layer_norm", x=x, residual=residual, weight=weight, bias=bias)
    k = _normalized_ndim("add_layer_norm", x, normalized_shape)
    if torch.compiler.is_compiling():
        y, h, _, _ = _add_layer_norm_fwd_op(x, residual, weight, bias, k, float(eps))
        return y, h
    return AddLayerNormFunction.apply(x, residual, weight, bias, k, float(eps))


# --------------------------------------------------------------------------------------------- add + RMSNorm
def _add_rms_norm_fwd_impl(x, residual, weight, normalized_ndim: int, eps: float):
    y, h, rstd = _public().add_rms_norm_forward(
        _arr(x), _arr(residual), _arr(weight), eps=eps, normalized_ndim=normalized_ndim
    )
    return _ten(y, x), _ten(h, x), _ten(rstd, x)


def _add_rms_norm_bwd_impl(dy, dh, h, rstd, weight, normalized_ndim: int):
    dx, dw = _public().add_rms_norm_backward(
        _arr(dy), _arr(dh), _arr(h), _arr(rstd), _arr(weight), normalized_ndim=normalized_ndim
    )
    return _ten(dx, h), _empty_if_none(_ten(dw, h), h)


@custom_op("fastnorm::add_rms_norm_forward", mutates_args=())
def _add_rms_norm_fwd_op(
    x: Tensor, residual: Tensor, weight: Tensor | None, normalized_ndim: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    return _add_rms_norm_fwd_impl(x, residual, weight, normalized_ndim, eps)


@_add_rms_norm_fwd_op.register_fake
def _(x, residual, weight, normalized_ndim, eps):
    return torch.empty_like(x), torch.empty_like(x), x.new_empty(_lead(x, normalized_ndim), dtype=_stat_dtype(x.dtype))


@custom_op("fastnorm::add_rms_norm_backward", mutates_args=())
def _add_rms_norm_bwd_op(
    dy: Tensor, dh: Tensor | None, h: Tensor, rstd: Tensor, weight: Tensor | None, normalized_ndim: int
) -> tuple[Tensor, Tensor]:
    return _add_rms_norm_bwd_impl(dy, dh, h, rstd, weight, normalized_ndim)


@_add_rms_norm_bwd_op.register_fake
def _(dy, dh, h, rstd, weight, normalized_ndim):
    return torch.empty_like(h), _param_grad_fake(weight, h)


def _add_rms_norm_setup(ctx, inputs, output):
    x, residual, weight, normalized_ndim, eps = inputs
    _, h, rstd = output
    ctx.save_for_backward(h, rstd, weight)
    ctx.normalized_ndim = normalized_ndim
    ctx.mark_non_differentiable(rstd)


def _add_rms_norm_backward(ctx, dy, dh, drstd):
    h, rstd, weight = ctx.saved_tensors
    dx, dw = _add_rms_norm_bwd_op(dy, dh, h, rstd, weight, ctx.normalized_ndim)
    return dx, dx, _none_if_absent(dw, weight), None, None


_add_rms_norm_fwd_op.register_autograd(_add_rms_norm_backward, setup_context=_add_rms_norm_setup)


class AddRMSNormFunction(torch.autograd.Function):
    """The eager path of ``add_rms_norm`` (see ``AddLayerNormFunction``)."""

    @staticmethod
    def forward(ctx, x, residual, weight, normalized_ndim, eps):
        y, h, rstd = _add_rms_norm_fwd_impl(x, residual, weight, normalized_ndim, eps)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(h, rstd, weight)
        ctx.normalized_ndim = normalized_ndim
        return y, h

    @staticmethod
    def backward(ctx, dy, dh):
        h, rstd, weight = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(h)
        dx, dw = _add_rms_norm_bwd_impl(dy, dh, h, rstd, weight, ctx.normalized_ndim)
        return dx, dx, _none_if_absent(dw, weight), None, None


def add_rms_norm(
    x: Tensor,
    residual: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Fused residual add + RMSNorm over the trailing ``normalized_shape`` dims::

        h = x + residual
        y = h / sqrt(mean(h^2) + eps) * weight

    Parameters
    ----------
    x, residual : Tensor
        Same shape and dtype (float32, float64; bfloat16/float16 where the CPU kernels take them), ending
        with ``normalized_shape``. h is rounded to their dtype once, then normalized.
    normalized_shape : int or sequence of int
        The trailing dims normalized together.
    weight : Tensor, optional
        ``normalized_shape``; in x's dtype, or float32 beside 16-bit x.
    eps : float, optional
        Added to the mean square; None means ``torch.finfo(x.dtype).eps`` (``torch.nn.functional.rms_norm``'s
        default).

    Returns
    -------
    (y, h) : tuple of Tensor
        The normalized output and the new residual stream, both x's shape and dtype. Gradients flow to x,
        residual (the same gradient: ``dRMSNorm(dy; h) + dh``) and weight.
    """
    _check("add_rms_norm", x=x, residual=residual, weight=weight)
    k = _normalized_ndim("add_rms_norm", x, normalized_shape)
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    if torch.compiler.is_compiling():
        y, h, _ = _add_rms_norm_fwd_op(x, residual, weight, k, float(eps))
        return y, h
    return AddRMSNormFunction.apply(x, residual, weight, k, float(eps))
