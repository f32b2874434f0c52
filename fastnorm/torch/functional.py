"""Differentiable fastnorm ops on torch tensors, with ``torch.nn.functional``'s signatures and defaults.

Each op is a ``torch.autograd.Function`` whose forward calls the fastnorm forward kernel and saves what the
backward kernel needs. CPU tensors (float32/float64) reach the kernels zero-copy as NumPy views; CUDA tensors
through ``__cuda_array_interface__`` (fastnorm's CUDA backend, float16/bfloat16/float32/float64). Other
dtypes or devices raise ``TypeError`` here (the ``fastnorm.torch.nn`` modules fall back to torch instead).

``torch.compile``: every kernel is also registered as a ``torch.library`` custom op (``fastnorm::<op>``)
with a fake (meta) implementation. Eager calls go straight to the kernel; while Dynamo traces, the
autograd Functions call the custom ops instead, so graphs hold opaque ``fastnorm::*`` nodes and
``fullgraph=True`` compiles without graph breaks. Double backward is not supported.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.library import custom_op

import fastnorm

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

__all__ = [
    "unsupported_reason",
    "layer_norm",
    "rms_norm",
]


# ------------------------------------------------------------------------------------------- plumbing
def unsupported_reason(*tensors: Tensor | None) -> str | None:
    """Why fastnorm cannot run on these tensors (a message), or None if it can."""
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t, Tensor):
            return f"expected a torch.Tensor, got {type(t).__name__}"
        dev = t.device.type
        if dev == "cpu":
            if t.dtype not in _CPU_DTYPES:
                return f"dtype {t.dtype} is not supported on the CPU (float32, float64)"
        elif dev == "cuda":
            if t.dtype not in _CUDA_DTYPES:
                return f"dtype {t.dtype} is not supported on CUDA (float16, bfloat16, float32, float64)"
        else:
            return f"device {t.device} is not supported (cpu, cuda)"
    return None


def _check(op: str, **tensors: Tensor | None) -> None:
    reason = unsupported_reason(*tensors.values())
    if reason is not None:
        raise TypeError(f"fastnorm.torch.functional.{op}: {reason}")


def _arr(t: Tensor | None):
    """A tensor as a fastnorm kernel input: a zero-copy NumPy view on the CPU, the tensor itself on CUDA."""
    if t is None:
        return None
    t = t.detach()
    return t.numpy() if t.device.type == "cpu" else t


def _ten(a, like: Tensor) -> Tensor | None:
    """A fastnorm result as a tensor on ``like``'s device (zero-copy)."""
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.as_tensor(a, device=like.device)


def _empty_if_none(t: Tensor | None, like: Tensor) -> Tensor:
    """Custom ops cannot return None: an absent gradient travels as an empty tensor."""
    return like.new_empty((0,)) if t is None else t


def _none_if_absent(t: Tensor, param: Tensor | None) -> Tensor | None:
    return None if param is None else t


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _call(op, impl, *args):
    """The custom op while Dynamo traces (an opaque graph node), else the kernel directly (less overhead)."""
    if torch.compiler.is_compiling():
        return op(*args)
    return impl(*args)


def _normalized_ndim(op: str, x: Tensor, normalized_shape) -> int:
    if isinstance(normalized_shape, (int, np.integer)):
        normalized_shape = (int(normalized_shape),)
    shape = tuple(int(s) for s in normalized_shape)
    k = len(shape)
    if k == 0 or k > x.dim() or tuple(x.shape[x.dim() - k :]) != shape:
        raise ValueError(
            f"fastnorm.torch.functional.{op}: input of shape {tuple(x.shape)} does not end with "
            f"normalized_shape {shape}"
        )
    return k


# ------------------------------------------------------------------------------------------- LayerNorm
def _layer_norm_fwd_impl(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, normalized_ndim: int, eps: float
):
    y, mean, rstd = fastnorm.layer_norm_forward(
        _arr(x), _arr(weight), _arr(bias), eps=eps, normalized_ndim=normalized_ndim
    )
    return _ten(y, x), _ten(mean, x), _ten(rstd, x)


def _layer_norm_bwd_impl(dy, x, mean, rstd, weight, bias, normalized_ndim: int):
    dx, dw, db = fastnorm.layer_norm_backward(
        _arr(dy), _arr(x), _arr(mean), _arr(rstd), _arr(weight), _arr(bias), normalized_ndim=normalized_ndim
    )
    return _ten(dx, x), _empty_if_none(_ten(dw, x), x), _empty_if_none(_ten(db, x), x)


@custom_op("fastnorm::layer_norm_forward", mutates_args=())
def _layer_norm_fwd_op(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, normalized_ndim: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    return _layer_norm_fwd_impl(x, weight, bias, normalized_ndim, eps)


@_layer_norm_fwd_op.register_fake
def _(x, weight, bias, normalized_ndim, eps):
    lead = x.shape[: x.dim() - normalized_ndim]
    sd = _stat_dtype(x.dtype)
    return torch.empty_like(x), x.new_empty(lead, dtype=sd), x.new_empty(lead, dtype=sd)


@custom_op("fastnorm::layer_norm_backward", mutates_args=())
def _layer_norm_bwd_op(
    dy: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    normalized_ndim: int,
) -> tuple[Tensor, Tensor, Tensor]:
    return _layer_norm_bwd_impl(dy, x, mean, rstd, weight, bias, normalized_ndim)


@_layer_norm_bwd_op.register_fake
def _(dy, x, mean, rstd, weight, bias, normalized_ndim):
    return (
        torch.empty_like(x),
        _empty_if_none(None if weight is None else torch.empty_like(weight), x),
        _empty_if_none(None if bias is None else torch.empty_like(bias), x),
    )


class LayerNormFunction(torch.autograd.Function):
    """y = LayerNorm(x) over the last ``normalized_ndim`` dims; backward by fastnorm.layer_norm_backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, normalized_ndim, eps):
        y, mean, rstd = _call(_layer_norm_fwd_op, _layer_norm_fwd_impl, x, weight, bias, normalized_ndim, eps)
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.normalized_ndim = normalized_ndim
        return y

    @staticmethod
    def backward(ctx, dy):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        dx, dw, db = _call(
            _layer_norm_bwd_op, _layer_norm_bwd_impl, dy, x, mean, rstd, weight, bias, ctx.normalized_ndim
        )
        return dx, _none_if_absent(dw, weight), _none_if_absent(db, bias), None, None


def layer_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``torch.nn.functional.layer_norm`` on fastnorm kernels: (x - mean) / sqrt(var + eps) * weight + bias
    over the trailing ``normalized_shape`` dims (biased variance). weight, bias: ``normalized_shape``."""
    _check("layer_norm", input=input, weight=weight, bias=bias)
    k = _normalized_ndim("layer_norm", input, normalized_shape)
    return LayerNormFunction.apply(input, weight, bias, k, float(eps))


# --------------------------------------------------------------------------------------------- RMSNorm
def _rms_norm_fwd_impl(x: Tensor, weight: Tensor | None, normalized_ndim: int, eps: float):
    y, rstd = fastnorm.rms_norm_forward(_arr(x), _arr(weight), eps=eps, normalized_ndim=normalized_ndim)
    return _ten(y, x), _ten(rstd, x)


def _rms_norm_bwd_impl(dy, x, rstd, weight, normalized_ndim: int):
    dx, dw = fastnorm.rms_norm_backward(
        _arr(dy), _arr(x), _arr(rstd), _arr(weight), normalized_ndim=normalized_ndim
    )
    return _ten(dx, x), _empty_if_none(_ten(dw, x), x)


@custom_op("fastnorm::rms_norm_forward", mutates_args=())
def _rms_norm_fwd_op(
    x: Tensor, weight: Tensor | None, normalized_ndim: int, eps: float
) -> tuple[Tensor, Tensor]:
    return _rms_norm_fwd_impl(x, weight, normalized_ndim, eps)


@_rms_norm_fwd_op.register_fake
def _(x, weight, normalized_ndim, eps):
    return torch.empty_like(x), x.new_empty(x.shape[: x.dim() - normalized_ndim], dtype=_stat_dtype(x.dtype))


@custom_op("fastnorm::rms_norm_backward", mutates_args=())
def _rms_norm_bwd_op(
    dy: Tensor, x: Tensor, rstd: Tensor, weight: Tensor | None, normalized_ndim: int
) -> tuple[Tensor, Tensor]:
    return _rms_norm_bwd_impl(dy, x, rstd, weight, normalized_ndim)


@_rms_norm_bwd_op.register_fake
def _(dy, x, rstd, weight, normalized_ndim):
    return torch.empty_like(x), _empty_if_none(None if weight is None else torch.empty_like(weight), x)


class RMSNormFunction(torch.autograd.Function):
    """y = RMSNorm(x) over the last ``normalized_ndim`` dims; backward by fastnorm.rms_norm_backward."""

    @staticmethod
    def forward(ctx, x, weight, normalized_ndim, eps):
        y, rstd = _call(_rms_norm_fwd_op, _rms_norm_fwd_impl, x, weight, normalized_ndim, eps)
        ctx.save_for_backward(x, rstd, weight)
        ctx.normalized_ndim = normalized_ndim
        return y

    @staticmethod
    def backward(ctx, dy):
        x, rstd, weight = ctx.saved_tensors
        dx, dw = _call(_rms_norm_bwd_op, _rms_norm_bwd_impl, dy, x, rstd, weight, ctx.normalized_ndim)
        return dx, _none_if_absent(dw, weight), None, None


def rms_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """``torch.nn.functional.rms_norm`` on fastnorm kernels: x / sqrt(mean(x^2) + eps) * weight over the
    trailing ``normalized_shape`` dims; ``eps=None`` means ``torch.finfo(input.dtype).eps`` (torch's)."""
    _check("rms_norm", input=input, weight=weight)
    k = _normalized_ndim("rms_norm", input, normalized_shape)
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    return RMSNormFunction.apply(input, weight, k, float(eps))
