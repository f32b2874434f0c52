"""Differentiable fastnorm ops on torch tensors, with ``torch.nn.functional``'s signatures and defaults.

Each op is a ``torch.autograd.Function`` whose forward calls the fastnorm forward kernel and saves what the
backward kernel needs. CPU tensors (float32/float64, and bfloat16/float16 for the ops whose CPU kernels take
16-bit data) reach the kernels zero-copy as NumPy views (bfloat16 as ``ml_dtypes.bfloat16``); CUDA tensors
(the CUDA backend's dtypes) through ``__cuda_array_interface__``, on torch's current stream (fastnorm's CUDA
backend, for the ops it has kernels for). 16-bit data keeps float32 statistics; weight and bias may be in the
data's dtype or float32, and their gradients come back in their own dtype. Other dtypes or devices raise
``TypeError``, a missing CUDA backend or CUDA kernel ``RuntimeError`` (the ``fastnorm.torch.nn`` modules
fall back to torch instead, with a warning).

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
import fastnorm._dispatch

from ._common import _arr, _ten

_CPU_DTYPES = (torch.float32, torch.float64)
_HALF_DTYPES = (torch.bfloat16, torch.float16)
_CUDA_DTYPES = (torch.float16, torch.float32, torch.float64)

__all__ = [
    "unsupported_reason",
    "layer_norm",
    "rms_norm",
    "batch_norm",
    "instance_norm",
    "group_norm",
    "local_response_norm",
    "weight_norm",
    "cosine_linear",
]


# ------------------------------------------------------------------------------------------- plumbing
_NO_CUDA_BACKEND = "fastnorm's CUDA backend is not available"
_cuda_error: list = []  # [message or None], filled on the first CUDA tensor


def _cuda_backend_error() -> str | None:
    if not _cuda_error:
        try:
            fastnorm._dispatch.cuda_backend()
            _cuda_error.append(None)
        except RuntimeError as e:
            _cuda_error.append(f"{_NO_CUDA_BACKEND} ({e})")
    return _cuda_error[0]


# A tiny forward call per op: whether its CPU kernels take 16-bit data is asked of the op itself, once per
# (op, dtype), so the torch layer follows the kernels as they gain dtypes (a TypeError means "not yet").
def _probe_inputs(dt):
    return np.ones((2, 2, 2), dt), np.ones((2, 1, 1), dt), np.ones((2, 2), dt)


_HALF_PROBES = {
    "layer_norm": lambda a, g, m: fastnorm.layer_norm_forward(a),
    "rms_norm": lambda a, g, m: fastnorm.rms_norm_forward(a),
    "batch_norm": lambda a, g, m: fastnorm.batch_norm_forward(a),
    "instance_norm": lambda a, g, m: fastnorm.instance_norm_forward(a),
    "group_norm": lambda a, g, m: fastnorm.group_norm_forward(a, 1),
    "local_response_norm": lambda a, g, m: fastnorm.local_response_norm_forward(a, 1),
    "weight_norm": lambda a, g, m: fastnorm.weight_norm_forward(a, g, dim=0),
    "cosine_linear": lambda a, g, m: fastnorm.cosine_linear_forward(m, m),
}
_half_reasons: dict = {}


def _register_half_probe(op: str, probe) -> None:
    """``probe(x3d, g, x2d)`` calls op's forward on tiny arrays of one 16-bit dtype (used by add_norm.py)."""
    _HALF_PROBES[op] = probe


def _cpu_half_reason(op: str | None, dtype: torch.dtype) -> str | None:
    """Why ``op``'s CPU kernels do not take ``dtype`` (bfloat16/float16), or None when they do."""
    if op is None or op not in _HALF_PROBES:
        return f"dtype {dtype} is not supported on the CPU by {op or 'this op'} (float32, float64)"
    key = (op, dtype)
    if key not in _half_reasons:
        dt = _arr(torch.empty(0, dtype=dtype)).dtype
        try:
            _HALF_PROBES[op](*_probe_inputs(dt))
            _half_reasons[key] = None
        except TypeError as e:
            _half_reasons[key] = f"dtype {dtype} is not supported on the CPU by {op} on this build ({e})"
    return _half_reasons[key]


def _cuda_dtype_ok(dtype: torch.dtype) -> bool:
    """float16/32/64, and bfloat16 where the CUDA backend has it."""
    if dtype in _CUDA_DTYPES:
        return True
    if dtype != torch.bfloat16 or _cuda_backend_error() is not None:
        return False
    return _arr(torch.empty(0, dtype=dtype)).dtype in fastnorm._dispatch.cuda_backend().float_dtypes


def unsupported_reason(*tensors: Tensor | None, op: str | None = None) -> str | None:
    """Why fastnorm cannot run on these tensors (a message), or None if it can; with ``op`` (e.g.
    ``"batch_norm"``), also whether the CUDA backend has that op's kernels and whether its CPU kernels take
    16-bit data (asked of the op once per dtype: bfloat16/float16 CPU tensors need ``op``)."""
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t, Tensor):
            return f"expected a torch.Tensor, got {type(t).__name__}"
        dev = t.device.type
        if dev == "cpu":
            if t.dtype in _HALF_DTYPES:
                reason = _cpu_half_reason(op, t.dtype)
                if reason is not None:
                    return reason
            elif t.dtype not in _CPU_DTYPES:
                return f"dtype {t.dtype} is not supported on the CPU (float32, float64, bfloat16, float16)"
        elif dev == "cuda":
            if not _cuda_dtype_ok(t.dtype):
                return f"dtype {t.dtype} is not supported on CUDA (float16, float32, float64)"
            err = _cuda_backend_error()
            if err is not None:
                return err
            if op is not None and not hasattr(fastnorm._dispatch.cuda_backend().kernels, f"{op}_forward"):
                return f"fastnorm has no CUDA kernel for {op}"
        else:
            return f"device {t.device} is not supported (cpu, cuda)"
    return None


def _check(op: str, **tensors: Tensor | None) -> None:
    """TypeError for an unsupported dtype or device, RuntimeError when the CUDA backend cannot load."""
    reason = unsupported_reason(*tensors.values(), op=op)
    if reason is not None:
        cls = TypeError if reason.startswith(("dtype", "device", "expected")) else RuntimeError
        raise cls(f"fastnorm.torch.functional.{op}: {reason}")


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


def _bool_arg(op: str, name: str, value) -> bool:
    """A Python bool, else TypeError (torch's argument parser: ``'False'``, 1 and numpy.bool_ are refused)."""
    if not isinstance(value, bool):
        raise TypeError(
            f"fastnorm.torch.functional.{op}(): argument '{name}' must be bool, not {type(value).__name__}"
        )
    return value


def _float_arg(op: str, name: str, value) -> float:
    """A real number (torch's ``float`` arguments: Python/NumPy numbers, one-element tensors), else TypeError;
    ``momentum=None`` in particular is a TypeError, as in ``torch.nn.functional.batch_norm``."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        return float(value)
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"fastnorm.torch.functional.{op}(): argument '{name}' must be float, not {type(value).__name__}"
        )
    return float(value)


def _kernel_writable(t: Tensor) -> bool:
    """Whether a kernel can update ``t`` in place: contiguous and aligned to its items."""
    return t.is_contiguous() and t.data_ptr() % t.element_size() == 0


def _run_updating(fn, running_mean: Tensor | None, running_var: Tensor | None, update: bool):
    """``fn(running_mean, running_var)``, with contiguous stand-ins when the statistics are updated in place
    but the kernels cannot write them (non-contiguous or unaligned: torch updates any layout), copied
    back into the caller's tensors after the kernel ran."""
    if not update or running_mean is None or running_var is None:
        return fn(running_mean, running_var)
    stats = [running_mean, running_var]
    work = [t if _kernel_writable(t) else t.contiguous(memory_format=torch.contiguous_format).clone() for t in stats]
    result = fn(*work)
    for t, w in zip(stats, work):
        if w is not t:
            with torch.no_grad():
                t.copy_(w)
    return result


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
def _layer_norm_fwd_impl(x: Tensor, weight: Tensor | None, bias: Tensor | None, normalized_ndim: int, eps: float):
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
    dx, dw = fastnorm.rms_norm_backward(_arr(dy), _arr(x), _arr(rstd), _arr(weight), normalized_ndim=normalized_ndim)
    return _ten(dx, x), _empty_if_none(_ten(dw, x), x)


@custom_op("fastnorm::rms_norm_forward", mutates_args=())
def _rms_norm_fwd_op(x: Tensor, weight: Tensor | None, normalized_ndim: int, eps: float) -> tuple[Tensor, Tensor]:
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


# ------------------------------------------------------------------------------------------- BatchNorm
def _batch_norm_fwd_impl(x, weight, bias, running_mean, running_var, training: bool, momentum: float, eps: float):
    # running statistics cross as NumPy views (CPU) / the tensors (CUDA): updated in place when training
    def run(rm, rv):
        return fastnorm.batch_norm_forward(
            _arr(x), _arr(weight), _arr(bias), _arr(rm), _arr(rv), training=training, momentum=momentum, eps=eps
        )

    y, mean, rstd = _run_updating(run, running_mean, running_var, training)
    return _ten(y, x), _ten(mean, x), _ten(rstd, x)


def _batch_norm_bwd_impl(dy, x, mean, rstd, weight, bias, training: bool):
    dx, dw, db = fastnorm.batch_norm_backward(
        _arr(dy), _arr(x), _arr(mean), _arr(rstd), _arr(weight), _arr(bias), training=training
    )
    return _ten(dx, x), _empty_if_none(_ten(dw, x), x), _empty_if_none(_ten(db, x), x)


@custom_op("fastnorm::batch_norm_forward", mutates_args=("running_mean", "running_var"))
def _batch_norm_fwd_op(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return _batch_norm_fwd_impl(x, weight, bias, running_mean, running_var, training, momentum, eps)


@_batch_norm_fwd_op.register_fake
def _(x, weight, bias, running_mean, running_var, training, momentum, eps):
    c = x.shape[1]
    sd = _stat_dtype(x.dtype)
    return torch.empty_like(x), x.new_empty((c,), dtype=sd), x.new_empty((c,), dtype=sd)


@custom_op("fastnorm::batch_norm_backward", mutates_args=())
def _batch_norm_bwd_op(
    dy: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return _batch_norm_bwd_impl(dy, x, mean, rstd, weight, bias, training)


def _channel_bwd_fake(dy, x, mean, rstd, weight, bias, *rest):
    return (
        torch.empty_like(x),
        _empty_if_none(None if weight is None else torch.empty_like(weight), x),
        _empty_if_none(None if bias is None else torch.empty_like(bias), x),
    )


_batch_norm_bwd_op.register_fake(_channel_bwd_fake)


class BatchNormFunction(torch.autograd.Function):
    """y = BatchNorm(x) (channel axis 1); running statistics updated in place when training."""

    @staticmethod
    def forward(ctx, x, running_mean, running_var, weight, bias, training, momentum, eps):
        y, mean, rstd = _call(
            _batch_norm_fwd_op, _batch_norm_fwd_impl,
            x, weight, bias, running_mean, running_var, training, momentum, eps,
        )  # fmt: skip
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.training = training
        return y

    @staticmethod
    def backward(ctx, dy):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        dx, dw, db = _call(_batch_norm_bwd_op, _batch_norm_bwd_impl, dy, x, mean, rstd, weight, bias, ctx.training)
        return dx, None, None, _none_if_absent(dw, weight), _none_if_absent(db, bias), None, None, None


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``torch.nn.functional.batch_norm`` on fastnorm kernels, channels on axis 1 of (N, C, *).

    training: batch statistics per channel; running_mean/running_var (if given) updated in place with
    ``momentum`` (unbiased variance), whatever their layout (non-contiguous ones are updated through a
    contiguous copy). Otherwise the running statistics normalize. Shapes: (C,) for all four vectors.

    Arguments as torch: ``training`` a bool (TypeError otherwise, e.g. for ``'False'``), ``momentum`` any
    float (``None`` is a TypeError, as in torch's functional; the modules' ``momentum=None`` cumulative
    average works), ``eps`` > 0 in training and >= 0 in evaluation. An input with no elements, or of fewer
    than 2 dims, is handed to ``torch.nn.functional.batch_norm`` (nothing to compute; torch's result or
    error, and no running-statistics update)."""
    _check(
        "batch_norm",
        input=input,
        running_mean=running_mean,
        running_var=running_var,
        weight=weight,
        bias=bias,
    )
    training = _bool_arg("batch_norm", "training", training)
    momentum = _float_arg("batch_norm", "momentum", momentum)
    eps = _float_arg("batch_norm", "eps", eps)
    if input.dim() < 2 or input.numel() == 0:
        return torch.nn.functional.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    return BatchNormFunction.apply(input, running_mean, running_var, weight, bias, training, momentum, eps)


# ------------------------------------------------------------------------------------------- InstanceNorm
def _instance_norm_fwd_impl(x, weight, bias, running_mean, running_var, use_input_stats: bool, momentum, eps):
    def run(rm, rv):
        return fastnorm.instance_norm_forward(
            _arr(x), _arr(weight), _arr(bias), _arr(rm), _arr(rv),
            use_input_stats=use_input_stats, momentum=momentum, eps=eps,
        )  # fmt: skip

    y, mean, rstd = _run_updating(run, running_mean, running_var, use_input_stats)
    return _ten(y, x), _ten(mean, x), _ten(rstd, x)


def _instance_norm_bwd_impl(dy, x, mean, rstd, weight, bias, use_input_stats: bool):
    dx, dw, db = fastnorm.instance_norm_backward(
        _arr(dy), _arr(x), _arr(mean), _arr(rstd), _arr(weight), _arr(bias), use_input_stats=use_input_stats
    )
    return _ten(dx, x), _empty_if_none(_ten(dw, x), x), _empty_if_none(_ten(db, x), x)


@custom_op("fastnorm::instance_norm_forward", mutates_args=("running_mean", "running_var"))
def _instance_norm_fwd_op(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    use_input_stats: bool,
    momentum: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return _instance_norm_fwd_impl(x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps)


@_instance_norm_fwd_op.register_fake
def _(x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps):
    nc = tuple(x.shape[:2])
    sd = _stat_dtype(x.dtype)
    return torch.empty_like(x), x.new_empty(nc, dtype=sd), x.new_empty(nc, dtype=sd)


@custom_op("fastnorm::instance_norm_backward", mutates_args=())
def _instance_norm_bwd_op(
    dy: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    use_input_stats: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return _instance_norm_bwd_impl(dy, x, mean, rstd, weight, bias, use_input_stats)


_instance_norm_bwd_op.register_fake(_channel_bwd_fake)


class InstanceNormFunction(torch.autograd.Function):
    """y = InstanceNorm(x) per (n, c); running statistics updated in place with use_input_stats."""

    @staticmethod
    def forward(ctx, x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps):
        y, mean, rstd = _call(
            _instance_norm_fwd_op, _instance_norm_fwd_impl,
            x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps,
        )  # fmt: skip
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.use_input_stats = use_input_stats
        return y

    @staticmethod
    def backward(ctx, dy):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        dx, dw, db = _call(
            _instance_norm_bwd_op,
            _instance_norm_bwd_impl,
            dy,
            x,
            mean,
            rstd,
            weight,
            bias,
            ctx.use_input_stats,
        )
        return dx, None, None, _none_if_absent(dw, weight), _none_if_absent(db, bias), None, None, None


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``torch.nn.functional.instance_norm`` on fastnorm kernels: statistics per (n, c) over the spatial
    positions of (N, C, *); running statistics (C,) updated in place (any layout) with ``use_input_stats``.

    Arguments as torch: ``use_input_stats`` a bool, ``momentum`` and ``eps`` any float. An input with no
    elements, or of fewer than 2 dims, is handed to ``torch.nn.functional.instance_norm`` (torch's result
    or error; no running-statistics update)."""
    _check(
        "instance_norm",
        input=input,
        running_mean=running_mean,
        running_var=running_var,
        weight=weight,
        bias=bias,
    )
    use_input_stats = _bool_arg("instance_norm", "use_input_stats", use_input_stats)
    momentum = _float_arg("instance_norm", "momentum", momentum)
    eps = _float_arg("instance_norm", "eps", eps)
    if input.dim() < 2 or input.numel() == 0:
        return torch.nn.functional.instance_norm(
            input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps
        )
    return InstanceNormFunction.apply(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)


# ------------------------------------------------------------------------------------------- GroupNorm
def _group_norm_fwd_impl(x, num_groups: int, weight, bias, eps: float):
    y, mean, rstd = fastnorm.group_norm_forward(_arr(x), num_groups, _arr(weight), _arr(bias), eps=eps)
    return _ten(y, x), _ten(mean, x), _ten(rstd, x)


def _group_norm_bwd_impl(dy, x, mean, rstd, num_groups: int, weight, bias):
    dx, dw, db = fastnorm.group_norm_backward(
        _arr(dy), _arr(x), _arr(mean), _arr(rstd), num_groups, _arr(weight), _arr(bias)
    )
    return _ten(dx, x), _empty_if_none(_ten(dw, x), x), _empty_if_none(_ten(db, x), x)


@custom_op("fastnorm::group_norm_forward", mutates_args=())
def _group_norm_fwd_op(
    x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    return _group_norm_fwd_impl(x, num_groups, weight, bias, eps)


@_group_norm_fwd_op.register_fake
def _(x, num_groups, weight, bias, eps):
    ng = (x.shape[0], num_groups)
    sd = _stat_dtype(x.dtype)
    return torch.empty_like(x), x.new_empty(ng, dtype=sd), x.new_empty(ng, dtype=sd)


@custom_op("fastnorm::group_norm_backward", mutates_args=())
def _group_norm_bwd_op(
    dy: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    num_groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    return _group_norm_bwd_impl(dy, x, mean, rstd, num_groups, weight, bias)


@_group_norm_bwd_op.register_fake
def _(dy, x, mean, rstd, num_groups, weight, bias):
    return _channel_bwd_fake(dy, x, mean, rstd, weight, bias)


class GroupNormFunction(torch.autograd.Function):
    """y = GroupNorm(x) with statistics per (n, group of C / num_groups channels)."""

    @staticmethod
    def forward(ctx, x, num_groups, weight, bias, eps):
        y, mean, rstd = _call(_group_norm_fwd_op, _group_norm_fwd_impl, x, num_groups, weight, bias, eps)
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.num_groups = num_groups
        return y

    @staticmethod
    def backward(ctx, dy):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        dx, dw, db = _call(_group_norm_bwd_op, _group_norm_bwd_impl, dy, x, mean, rstd, ctx.num_groups, weight, bias)
        return dx, None, _none_if_absent(dw, weight), _none_if_absent(db, bias), None


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``torch.nn.functional.group_norm`` on fastnorm kernels: (N, C, *) normalized per (n, group);
    per-channel weight and bias (C,)."""
    _check("group_norm", input=input, weight=weight, bias=bias)
    return GroupNormFunction.apply(input, int(num_groups), weight, bias, float(eps))


# ------------------------------------------------------------------------------------- LocalResponseNorm
def _lrn_fwd_impl(x, size: int, alpha: float, beta: float, k: float):
    y, scale = fastnorm.local_response_norm_forward(_arr(x), size, alpha=alpha, beta=beta, k=k)
    return _ten(y, x), _ten(scale, x)


def _lrn_bwd_impl(dy, x, y, scale, size: int, alpha: float, beta: float, k: float):
    dx = fastnorm.local_response_norm_backward(
        _arr(dy), _arr(x), _arr(y), _arr(scale), size, alpha=alpha, beta=beta, k=k
    )
    return _ten(dx, x)


@custom_op("fastnorm::local_response_norm_forward", mutates_args=())
def _lrn_fwd_op(x: Tensor, size: int, alpha: float, beta: float, k: float) -> tuple[Tensor, Tensor]:
    return _lrn_fwd_impl(x, size, alpha, beta, k)


@_lrn_fwd_op.register_fake
def _(x, size, alpha, beta, k):
    return torch.empty_like(x), torch.empty_like(x)


@custom_op("fastnorm::local_response_norm_backward", mutates_args=())
def _lrn_bwd_op(
    dy: Tensor, x: Tensor, y: Tensor, scale: Tensor, size: int, alpha: float, beta: float, k: float
) -> Tensor:
    return _lrn_bwd_impl(dy, x, y, scale, size, alpha, beta, k)


@_lrn_bwd_op.register_fake
def _(dy, x, y, scale, size, alpha, beta, k):
    return torch.empty_like(x)


class LocalResponseNormFunction(torch.autograd.Function):
    """y = x * (k + alpha / size * window_sum(x^2))^-beta across channels."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        y, scale = _call(_lrn_fwd_op, _lrn_fwd_impl, x, size, alpha, beta, k)
        ctx.save_for_backward(x, y, scale)
        ctx.args = (size, alpha, beta, k)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, y, scale = ctx.saved_tensors
        return _call(_lrn_bwd_op, _lrn_bwd_impl, dy, x, y, scale, *ctx.args), None, None, None, None


def local_response_norm(input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> Tensor:
    """``torch.nn.functional.local_response_norm`` on fastnorm kernels (channels on axis 1 of (N, C, *))::

    y = x * (k + alpha / size * sum of x^2 over the channel window [c - size//2, c + (size-1)//2])^-beta
    """
    _check("local_response_norm", input=input)
    if input.dim() < 3:
        raise ValueError(
            f"fastnorm.torch.functional.local_response_norm: expected 3D or higher dimensionality input "
            f"(got {input.dim()} dimensions), as torch"
        )
    return LocalResponseNormFunction.apply(input, int(size), float(alpha), float(beta), float(k))


# ------------------------------------------------------------------------------------------- WeightNorm
def _weight_norm_fwd_impl(v, g, dim: int | None):
    w, norm = fastnorm.weight_norm_forward(_arr(v), _arr(g), dim=dim)
    return _ten(w, v), _ten(norm, v)


def _weight_norm_bwd_impl(dw, v, g, norm, dim: int | None):
    dv, dg = fastnorm.weight_norm_backward(_arr(dw), _arr(v), _arr(g), _arr(norm), dim=dim)
    return _ten(dv, v), _ten(dg, v)


@custom_op("fastnorm::weight_norm_forward", mutates_args=())
def _weight_norm_fwd_op(v: Tensor, g: Tensor, dim: int | None) -> tuple[Tensor, Tensor]:
    return _weight_norm_fwd_impl(v, g, dim)


@_weight_norm_fwd_op.register_fake
def _(v, g, dim):
    return torch.empty_like(v), torch.empty_like(g)


@custom_op("fastnorm::weight_norm_backward", mutates_args=())
def _weight_norm_bwd_op(dw: Tensor, v: Tensor, g: Tensor, norm: Tensor, dim: int | None) -> tuple[Tensor, Tensor]:
    return _weight_norm_bwd_impl(dw, v, g, norm, dim)


@_weight_norm_bwd_op.register_fake
def _(dw, v, g, norm, dim):
    return torch.empty_like(v), torch.empty_like(g)


class WeightNormFunction(torch.autograd.Function):
    """w = g * v / ||v|| with the norm over every dim but ``dim``."""

    @staticmethod
    def forward(ctx, v, g, dim):
        w, norm = _call(_weight_norm_fwd_op, _weight_norm_fwd_impl, v, g, dim)
        ctx.save_for_backward(v, g, norm)
        ctx.dim = dim
        return w

    @staticmethod
    def backward(ctx, dw):
        v, g, norm = ctx.saved_tensors
        dv, dg = _call(_weight_norm_bwd_op, _weight_norm_bwd_impl, dw, v, g, norm, ctx.dim)
        return dv, dg, None


def weight_norm(v: Tensor, g: Tensor, dim: int | None = 0) -> Tensor:
    """``torch._weight_norm(v, g, dim)`` on fastnorm kernels: w = g * v / norm(v), the norm taken over every
    dim except ``dim``; g has v's shape with size 1 on those dims (as ``torch.nn.utils.weight_norm``).

    As in torch, ``dim=None`` or ``dim=-1`` takes the norm over the whole tensor (g then has shape ())."""
    _check("weight_norm", v=v, g=g)
    if dim is not None:
        dim = int(dim)
        dim = None if dim == -1 else dim % v.dim()
    return WeightNormFunction.apply(v, g, dim)


# ------------------------------------------------------------------------------------------- CosineLinear
def _cosine_linear_fwd_impl(x, w, eps: float):
    y, x_norm, w_norm = fastnorm.cosine_linear_forward(_arr(x), _arr(w), eps=eps)
    return _ten(y, x), _ten(x_norm, x), _ten(w_norm, x)


def _cosine_linear_bwd_impl(dy, x, w, y, x_norm, w_norm, eps: float):
    dx, dw = fastnorm.cosine_linear_backward(_arr(dy), _arr(x), _arr(w), _arr(y), _arr(x_norm), _arr(w_norm), eps=eps)
    return _ten(dx, x), _ten(dw, x)


@custom_op("fastnorm::cosine_linear_forward", mutates_args=())
def _cosine_linear_fwd_op(x: Tensor, w: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return _cosine_linear_fwd_impl(x, w, eps)


@_cosine_linear_fwd_op.register_fake
def _(x, w, eps):
    return x.new_empty((*x.shape[:-1], w.shape[0])), x.new_empty(x.shape[:-1]), w.new_empty(w.shape[:1])


@custom_op("fastnorm::cosine_linear_backward", mutates_args=())
def _cosine_linear_bwd_op(
    dy: Tensor, x: Tensor, w: Tensor, y: Tensor, x_norm: Tensor, w_norm: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    return _cosine_linear_bwd_impl(dy, x, w, y, x_norm, w_norm, eps)


@_cosine_linear_bwd_op.register_fake
def _(dy, x, w, y, x_norm, w_norm, eps):
    return torch.empty_like(x), torch.empty_like(w)


class CosineLinearFunction(torch.autograd.Function):
    """y = (x / max(|x|, eps)) @ (w / max(|w|, eps)).T, row norms over the last dim."""

    @staticmethod
    def forward(ctx, x, w, eps):
        y, x_norm, w_norm = _call(_cosine_linear_fwd_op, _cosine_linear_fwd_impl, x, w, eps)
        ctx.save_for_backward(x, w, y, x_norm, w_norm)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, y, x_norm, w_norm = ctx.saved_tensors
        dx, dw = _call(_cosine_linear_bwd_op, _cosine_linear_bwd_impl, dy, x, w, y, x_norm, w_norm, ctx.eps)
        return dx, dw, None


def cosine_linear(input: Tensor, weight: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine-normalized linear map, ``F.linear(F.normalize(input, eps=eps), F.normalize(weight, eps=eps))``
    on fastnorm kernels: input (*, D), weight (O, D) -> (*, O), every entry a cosine similarity."""
    _check("cosine_linear", input=input, weight=weight)
    return CosineLinearFunction.apply(input, weight, float(eps))


# Fused residual add + norm, defined in their own module (custom ops with register_autograd).
from .add_norm import add_layer_norm, add_rms_norm  # noqa: E402

__all__ += ["add_layer_norm", "add_rms_norm"]
