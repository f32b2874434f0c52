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
with a fake (meta) implementation, both generated from the op's declaration by ``fastnorm.torch._bind``.
Eager calls go straight to the kernel; while Dynamo traces, the autograd Functions call the custom ops
instead, so graphs hold opaque ``fastnorm::*`` nodes and ``fullgraph=True`` compiles without graph breaks.
Double backward is not supported.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

import fastnorm
import fastnorm._dispatch
from fastnorm._backend.cpu import CPU
from fastnorm._spec import REGISTRY

from . import _bind
from ._bind import call as _call  # noqa: F401  (losses.py, transport.py use it from here)
from ._common import _arr, _ten, fill_docs  # noqa: F401  (distributed.py, losses.py use them from here)

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


# Whether an op's CPU kernels take 16-bit data is declared with the op (``OpSpec.half``; a contract test
# checks that the public function agrees) and asked once per (op, dtype) through the op's probe: a TypeError
# means "not on this build" (tests replace a probe to stand for such a build).
def _probe_inputs(dt):
    return np.ones((2, 2, 2), dt), np.ones((2, 1, 1), dt), np.ones((2, 2), dt)


def _declared_half_probe(spec):
    def probe(a, *_):
        if not spec.half or np.dtype(a.dtype) not in CPU.float_dtypes:
            raise TypeError(f"{spec.name}: {spec.primary} has dtype {np.dtype(a.dtype).name}; no 16-bit CPU kernels")

    return probe


# the torch layer's op names: a forward declaration's name without "_forward" (kl_div, js_div: as declared)
_HALF_PROBES = {s.name.removesuffix("_forward"): _declared_half_probe(s) for s in REGISTRY.values()}
_half_reasons: dict = {}


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


def _bool_arg(op: str, name: str, value) -> bool:
    """A Python bool, else TypeError (torch's argument parser: ``'False'``, 1 and numpy.bool_ are refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"fastnorm.torch.functional.{op}(): argument '{name}' must be bool, not {type(value).__name__}")
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


# ------------------------------------------------------------------------------------------- bindings
# One line per op: custom ops, fakes and autograd generated from the declarations (fastnorm/norms/*.py).
LAYER_NORM = _bind.bind_pair("layer_norm")
RMS_NORM = _bind.bind_pair("rms_norm")
BATCH_NORM = _bind.bind_pair("batch_norm", fixed={"axis": 1}, update="training")
INSTANCE_NORM = _bind.bind_pair("instance_norm", update="use_input_stats")
GROUP_NORM = _bind.bind_pair("group_norm")
LOCAL_RESPONSE_NORM = _bind.bind_pair("local_response_norm")
WEIGHT_NORM = _bind.bind_pair("weight_norm", returns=("w",))
COSINE_LINEAR = _bind.bind_pair("cosine_linear")

LayerNormFunction = LAYER_NORM.function
RMSNormFunction = RMS_NORM.function
BatchNormFunction = BATCH_NORM.function
InstanceNormFunction = INSTANCE_NORM.function
GroupNormFunction = GROUP_NORM.function
LocalResponseNormFunction = LOCAL_RESPONSE_NORM.function
WeightNormFunction = WEIGHT_NORM.function
CosineLinearFunction = COSINE_LINEAR.function


# ------------------------------------------------------------------------------------------- LayerNorm
def layer_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``torch.nn.functional.layer_norm`` on fastnorm kernels over the trailing ``normalized_shape`` dims::

        y = (x - mean) / sqrt(var + eps) * weight + bias        (biased variance)

    Parameters
    ----------
    %(trailing)s
    weight, bias : Tensor, optional
        ``normalized_shape``.
    eps : float
        Added to the variance.

    Returns
    -------
    Tensor
        y, like input; differentiable in input, weight and bias.
    """
    _check("layer_norm", input=input, weight=weight, bias=bias)
    k = _normalized_ndim("layer_norm", input, normalized_shape)
    return LAYER_NORM.apply(input, weight, bias, k, float(eps))


# --------------------------------------------------------------------------------------------- RMSNorm
def rms_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """``torch.nn.functional.rms_norm`` on fastnorm kernels over the trailing ``normalized_shape`` dims::

        y = x / sqrt(mean(x^2) + eps) * weight

    Parameters
    ----------
    %(trailing)s
    weight : Tensor, optional
        ``normalized_shape``.
    eps : float, optional
        None means ``torch.finfo(input.dtype).eps`` (torch's default).

    Returns
    -------
    Tensor
        y, like input.
    """
    _check("rms_norm", input=input, weight=weight)
    k = _normalized_ndim("rms_norm", input, normalized_shape)
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    return RMS_NORM.apply(input, weight, k, float(eps))


# ------------------------------------------------------------------------------------------- BatchNorm
def _with_running_stats(op, binding, torch_fn, flag_name, input, running_mean, running_var, weight, bias, flag,
                        momentum, eps):  # fmt: skip
    """BatchNorm / InstanceNorm: torch's argument checks, torch's own op for an input with no elements or
    fewer than 2 dims (nothing to compute: torch's result or error, no running-statistics update)."""
    _check(op, input=input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    flag = _bool_arg(op, flag_name, flag)
    momentum, eps = _float_arg(op, "momentum", momentum), _float_arg(op, "eps", eps)
    if input.dim() < 2 or input.numel() == 0:
        return torch_fn(input, running_mean, running_var, weight, bias, flag, momentum, eps)
    return binding.apply(input, weight, bias, running_mean, running_var, flag, momentum, eps)


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
    """``torch.nn.functional.batch_norm`` on fastnorm kernels, channels on axis 1 of (N, C, *)::

        y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c

    Parameters
    ----------
    input : Tensor
        (N, C, *). An input with no elements, or of fewer than 2 dims, is handed to
        ``torch.nn.functional.batch_norm`` (torch's result or error; no running-statistics update).
    running_mean, running_var : Tensor or None
        (C,). In training (if given) updated in place with ``momentum`` (unbiased variance), whatever their
        layout (non-contiguous ones through a contiguous copy); otherwise they normalize.
    weight, bias : Tensor, optional
        (C,).
    training : bool
        A bool (TypeError otherwise, e.g. for ``'False'``), as torch.
    momentum : float
        Any float (``None`` is a TypeError, as in torch's functional; the modules' ``momentum=None``
        cumulative average works).
    eps : float
        > 0 in training, >= 0 in evaluation.

    Returns
    -------
    Tensor
        y, like input.
    """
    args = (input, running_mean, running_var, weight, bias, training, momentum, eps)
    return _with_running_stats("batch_norm", BATCH_NORM, torch.nn.functional.batch_norm, "training", *args)


# ------------------------------------------------------------------------------------------- InstanceNorm
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
    positions of (N, C, *)::

        y = (x - mean_nc) / sqrt(var_nc + eps) * weight_c + bias_c

    Parameters
    ----------
    input : Tensor
        (N, C, *). No elements, or fewer than 2 dims: handed to ``torch.nn.functional.instance_norm``.
    running_mean, running_var : Tensor, optional
        (C,), updated in place (any layout) with ``use_input_stats``.
    weight, bias : Tensor, optional
        (C,).
    use_input_stats : bool
        A bool, as torch.
    momentum, eps : float
        Any float, as torch.

    Returns
    -------
    Tensor
        y, like input.
    """
    args = (input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
    torch_fn = torch.nn.functional.instance_norm
    return _with_running_stats("instance_norm", INSTANCE_NORM, torch_fn, "use_input_stats", *args)


# ------------------------------------------------------------------------------------------- GroupNorm
def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``torch.nn.functional.group_norm`` on fastnorm kernels: (N, C, *) normalized per (n, group of
    C / num_groups channels)::

        y = (x - mean_ng) / sqrt(var_ng + eps) * weight_c + bias_c

    Parameters
    ----------
    input : Tensor
        (N, C, *), C divisible by num_groups.
    num_groups : int
    weight, bias : Tensor, optional
        (C,).
    eps : float

    Returns
    -------
    Tensor
        y, like input.
    """
    _check("group_norm", input=input, weight=weight, bias=bias)
    return GROUP_NORM.apply(input, int(num_groups), weight, bias, float(eps))


# ------------------------------------------------------------------------------------- LocalResponseNorm
def local_response_norm(input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> Tensor:
    """``torch.nn.functional.local_response_norm`` on fastnorm kernels (channels on axis 1 of (N, C, *))::

        y = x * (k + alpha / size * sum of x^2 over the channel window [c - size//2, c + (size-1)//2])^-beta

    Parameters
    ----------
    input : Tensor
        (N, C, *), at least 3 dims (as torch).
    size : int
        The window length.
    alpha, beta, k : float

    Returns
    -------
    Tensor
        y, like input.
    """
    _check("local_response_norm", input=input)
    if input.dim() < 3:
        raise ValueError(
            f"fastnorm.torch.functional.local_response_norm: expected 3D or higher dimensionality input "
            f"(got {input.dim()} dimensions), as torch"
        )
    return LOCAL_RESPONSE_NORM.apply(input, int(size), float(alpha), float(beta), float(k))


# ------------------------------------------------------------------------------------------- WeightNorm
def weight_norm(v: Tensor, g: Tensor, dim: int | None = 0) -> Tensor:
    """``torch._weight_norm(v, g, dim)`` on fastnorm kernels::

        w = g * v / norm(v),   the norm over every dim except ``dim``

    Parameters
    ----------
    v : Tensor
    g : Tensor
        v's shape with size 1 on every dim but ``dim`` (as ``torch.nn.utils.weight_norm``).
    dim : int or None
        As in torch, ``None`` or ``-1`` takes the norm over the whole tensor (g then has shape ()).

    Returns
    -------
    Tensor
        w, like v.
    """
    _check("weight_norm", v=v, g=g)
    if dim is not None:
        dim = int(dim)
        dim = None if dim == -1 else dim % v.dim()
    return WEIGHT_NORM.apply(v, g, dim)


# ------------------------------------------------------------------------------------------- CosineLinear
def cosine_linear(input: Tensor, weight: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine-normalized linear map on fastnorm kernels::

        y = F.linear(F.normalize(input, eps=eps), F.normalize(weight, eps=eps))

    Parameters
    ----------
    input : Tensor
        (*, D).
    weight : Tensor
        (O, D).
    eps : float
        Each norm is clamped at eps.

    Returns
    -------
    Tensor
        (*, O), every entry a cosine similarity.
    """
    _check("cosine_linear", input=input, weight=weight)
    return COSINE_LINEAR.apply(input, weight, float(eps))


fill_docs(globals(), __all__)

# Fused residual add + norm, defined in their own module (its ``__all__`` lists them).
from . import add_norm as _add_norm  # noqa: E402
from .add_norm import *  # noqa: E402, F403

__all__ += _add_norm.__all__
