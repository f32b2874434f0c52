"""Shared plumbing of the row-wise losses (``fastnorm.divergence``, ``fastnorm._cross_entropy``): result
tuples, option checks, host round trips of the small per-row vectors, ``out=`` tuples, in-place checks and
the reductions.

16-bit inputs (bfloat16, float16): data, losses and gradients stay in the input's dtype, parameters enter the
kernels in float32 and every per-row statistic and reduction is float32/float64 (``_dtypes`` conventions).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import _dtypes
from . import _validation as V
from ._backend import host

Array = Any

CE_REDUCTIONS = ("none", "sum", "mean")
KL_REDUCTIONS = ("none", "sum", "mean", "batchmean")
GRAD_MODES = (None, "out", "inplace")


class SoftmaxCrossEntropyForward(NamedTuple):
    loss: Array
    lse: Array
    grad: Array | None


class DivergenceForward(NamedTuple):
    loss: Array
    dinput: Array | None
    dtarget: Array | None


class DivergenceBackward(NamedTuple):
    dinput: Array | None
    dtarget: Array | None


def choice(op: str, name: str, value, allowed: tuple):
    if value not in allowed:
        raise ValueError(f"{op}: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def to_be(be, a: np.ndarray):
    """A small host array on backend ``be``."""
    if be.on_host:
        return a
    from numba import cuda

    if a.dtype in _dtypes.HALF:
        return be.astype(cuda.to_device(a.astype(np.float32)), a.dtype)
    return cuda.to_device(a)


def host_cast(a: np.ndarray, dtype) -> np.ndarray:
    """Float64 host values in ``dtype``; into a 16-bit dtype through float32 (torch's float32 loss rounded
    once; the CUDA backend rounds the same way)."""
    if np.dtype(dtype) in _dtypes.HALF:
        a = np.asarray(a, np.float32)
    return np.asarray(a).astype(dtype)


def absent(be, dtype, ndim: int = 1):
    """An empty array standing for an absent kernel argument."""
    return be.empty((0,) * ndim, dtype)


def _data_ptr(be, a) -> int:
    try:
        if isinstance(a, np.ndarray):
            return a.__array_interface__["data"][0]
        return int(be._iface(a)["data"][0])
    except Exception:
        return -1


def check_inplace(op: str, be, name: str, a, given) -> None:
    """grad='inplace' writes over ``given``: it must be the very buffer the kernel reads (no copy made)."""
    if _data_ptr(be, a) != _data_ptr(be, given) or _data_ptr(be, a) == -1:
        raise ValueError(
            f"{op}: grad='inplace' overwrites {name} with the gradient, so {name} must be a C-contiguous, "
            "aligned, native float array that is used as given (this one would be copied first)"
        )
    if not be.is_writeable(a):
        raise ValueError(f"{op}: grad='inplace' but {name} is read-only")


def rows(op: str, name: str, a) -> tuple[tuple, int, int]:
    """(leading shape, M, V) for rows along the last axis; a needs at least 1 dim and V >= 1."""
    if len(a.shape) == 0:
        raise ValueError(f"{op}: {name} must have at least 1 dim (rows are along the last axis), got a 0-d array")
    v = int(a.shape[-1])
    if v == 0:
        raise ValueError(f"{op}: {name} has an empty last axis (shape {tuple(a.shape)}); need V >= 1")
    lead = tuple(a.shape[:-1])
    return lead, math.prod(lead), v


def out_tuple(op: str, out, names: str):
    """``out`` as a 3-tuple of buffers (entries may be None), or None."""
    if out is None:
        return None
    if not isinstance(out, (list, tuple)):
        raise TypeError(f"{op}: out must be a tuple ({names}), got {type(out).__name__}")
    if len(out) != 3:
        raise ValueError(f"{op}: out must have 3 entries ({names}), got {len(out)}")
    return tuple(out)


def _mean(s: float, reduction: str, div: float) -> float:
    if reduction in ("mean", "batchmean"):
        return s / div if div != 0 else math.nan
    return s


def reduced(be, row_losses, reduction: str, div: float, dtype, out_buf):
    """Sum the float64 row losses in fixed order, divide for "mean"/"batchmean": a 0-d array of ``dtype``
    (written into ``out_buf`` if given); a 16-bit loss is the float64 result rounded once."""
    s = _mean(float(np.sum(host(be, row_losses))), reduction, div)
    if out_buf is None:
        return to_be(be, host_cast(np.asarray(s), dtype))
    out_buf[...] = host_cast(np.asarray(s), dtype)
    return out_buf


def rows_out(be, row_losses, dtype, shape, out_buf):
    """Unreduced row losses in ``dtype`` (into ``out_buf`` if given)."""
    vals = host_cast(host(be, row_losses), dtype).reshape(shape)
    if out_buf is None:
        return to_be(be, vals)
    out_buf[...] = vals
    return out_buf


def check_out_scalar(be, op: str, out_buf, spec: tuple, inputs):
    """The loss's ``out=`` buffer checked against its declared ``(name, shape, dtype)`` (CPU only)."""
    if out_buf is None:
        return None
    if not be.on_host:
        raise ValueError(f"{op}: an out= buffer for the loss is supported on the CPU only")
    return V.outputs(be, op, (out_buf,), [spec], inputs)[0]


def scalar_dloss(op: str, be, dloss, reduction: str, div: float) -> float:
    """A reduced loss's upstream gradient (a real scalar) divided by the mean's denominator."""
    dh = np.asarray(host(be, dloss) if hasattr(dloss, "shape") else dloss)
    if dh.size != 1 or (dh.dtype.kind not in "fiu" and dh.dtype not in _dtypes.HALF):
        raise ValueError(f"{op}: dloss must be a real scalar for reduction={reduction!r}, got shape {dh.shape}")
    return _mean(float(dh.reshape(()).astype(np.float64)), reduction, div)


def grad_scale(reduction: str, div: float) -> float:
    """The factor of a fused gradient: 1 / denominator for the means, 1 otherwise."""
    return _mean(1.0, reduction, div)
