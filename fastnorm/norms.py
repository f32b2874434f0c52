"""Public normalization ops: validate -> canonicalize shape -> allocate -> dispatch to a kernel.

Every op takes NumPy arrays (CPU kernels) or CUDA arrays (``__cuda_array_interface__``: Numba, CuPy,
PyTorch CUDA tensors; CUDA kernels), returns a named tuple of outputs, and accepts ``out=``: a tuple with
one entry per output, each None (allocate) or a C-contiguous, writeable buffer of the exact shape and dtype.
Non-contiguous inputs are copied to contiguous first. Gradients of absent parameters are None.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _validation as V
from ._dispatch import backend_of

Array = Any  # numpy.ndarray on the CPU; any object with __cuda_array_interface__ on the GPU


class LayerNormForward(NamedTuple):
    y: Array
    mean: Array
    rstd: Array


class LayerNormBackward(NamedTuple):
    dx: Array
    dweight: Array | None
    dbias: Array | None


class RMSNormForward(NamedTuple):
    y: Array
    rstd: Array


class RMSNormBackward(NamedTuple):
    dx: Array
    dweight: Array | None


def _absent(be, dtype):
    """Kernels take a length-0 array for an absent optional parameter or unwanted gradient."""
    return be.empty((0,), dtype)


def _partials(be, want: bool, n_chunks: int, n: int, dtype) -> tuple:
    """Scratch for a deterministic column reduction (dweight/dbias): per-chunk float64 partial rows and
    per-chunk short-run accumulator rows in the input dtype (see the backward kernels)."""
    if not want:
        return be.empty((0, 0), np.float64), be.empty((0, 0), dtype)
    return be.empty((n_chunks, n), np.float64), be.empty((n_chunks, n), dtype)


# --------------------------------------------------------------------------------------------- LayerNorm
def layer_norm_forward(
    x: Array,
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    eps: float = 1e-5,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> LayerNormForward:
    """LayerNorm over the last ``normalized_ndim`` dims, like ``torch.nn.functional.layer_norm``.

    Per row r of N = prod(x.shape[-normalized_ndim:]) elements::

        mean = sum(r) / N,  var = sum((r - mean)^2) / N,  rstd = 1 / sqrt(var + eps)
        y = (r - mean) * rstd * weight + bias

    Shapes: x (*, *normalized_shape) -> y like x; weight, bias normalized_shape (each optional);
    mean, rstd x.shape[:-normalized_ndim] (in x's dtype; float32 for float16 on the GPU).
    ``out=(y, mean, rstd)`` (entries may be None). Returns ``LayerNormForward(y, mean, rstd)``.
    """
    op = "layer_norm_forward"
    be = backend_of(op, x=x, weight=weight, bias=bias, out=out)
    x = V.float_input(be, op, "x", x)
    lead, norm, m, n = V.split_rows(op, x.shape, normalized_ndim)
    weight = V.param(be, op, "weight", weight, norm, x.dtype)
    bias = V.param(be, op, "bias", bias, norm, x.dtype)
    eps = V.scalar(op, "eps", eps, low=0.0)
    sd = be.stat_dtype(x.dtype)
    y, mean, rstd = V.outputs(
        be, op, out, [("y", x.shape, x.dtype), ("mean", lead, sd), ("rstd", lead, sd)], (x, weight, bias)
    )
    absent = _absent(be, x.dtype)
    be.kernels.layer_norm_forward(
        x.reshape(m, n),
        absent if weight is None else weight.reshape(n),
        absent if bias is None else bias.reshape(n),
        y.reshape(m, n),
        mean.reshape(m),
        rstd.reshape(m),
        eps,
        be.threads(m * n),
    )
    return LayerNormForward(y, mean, rstd)


def layer_norm_backward(
    dy: Array,
    x: Array,
    mean: Array,
    rstd: Array,
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> LayerNormBackward:
    """Gradients of ``layer_norm_forward`` given ``dy`` and the saved ``mean``, ``rstd``.

    With xhat = (x - mean) * rstd and g = dy * weight (dy without weight), per row of N elements::

        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
        dweight = sum_rows(dy * xhat),  dbias = sum_rows(dy)

    ``bias`` is only used to know whether dbias is wanted (its values do not enter the gradient).
    Shapes as in the forward. ``out=(dx, dweight, dbias)``. Returns ``LayerNormBackward(dx, dweight, dbias)``;
    dweight/dbias are None when weight/bias are None. dweight and dbias are bitwise reproducible for a
    given thread count.
    """
    op = "layer_norm_backward"
    be = backend_of(op, dy=dy, x=x, mean=mean, rstd=rstd, weight=weight, bias=bias, out=out)
    x = V.float_input(be, op, "x", x)
    lead, norm, m, n = V.split_rows(op, x.shape, normalized_ndim)
    dy = V.required(be, op, "dy", dy, x.shape, x.dtype)
    sd = be.stat_dtype(x.dtype)
    mean = V.required(be, op, "mean", mean, lead, sd)
    rstd = V.required(be, op, "rstd", rstd, lead, sd)
    weight = V.param(be, op, "weight", weight, norm, x.dtype)
    bias = V.param(be, op, "bias", bias, norm, x.dtype)
    dx, dweight, dbias = V.outputs(
        be,
        op,
        out,
        [
            ("dx", x.shape, x.dtype),
            None if weight is None else ("dweight", norm, x.dtype),
            None if bias is None else ("dbias", norm, x.dtype),
        ],
        (dy, x, mean, rstd, weight, bias),
    )
    nt = be.threads(m * n)
    absent = _absent(be, x.dtype)
    be.kernels.layer_norm_backward(
        dy.reshape(m, n),
        x.reshape(m, n),
        mean.reshape(m),
        rstd.reshape(m),
        absent if weight is None else weight.reshape(n),
        dx.reshape(m, n),
        absent if dweight is None else dweight.reshape(n),
        absent if dbias is None else dbias.reshape(n),
        *_partials(be, dweight is not None, nt, n, x.dtype),
        *_partials(be, dbias is not None, nt, n, x.dtype),
        nt,
    )
    return LayerNormBackward(dx, dweight, dbias)


# --------------------------------------------------------------------------------------------- RMSNorm
def rms_norm_forward(
    x: Array,
    weight: Array | None = None,
    *,
    eps: float = 1e-6,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> RMSNormForward:
    """RMSNorm over the last ``normalized_ndim`` dims, like ``torch.nn.functional.rms_norm``.

    Per row r of N elements: ``rstd = 1 / sqrt(sum(r^2) / N + eps)``, ``y = r * rstd * weight``.

    Shapes: x (*, *normalized_shape) -> y like x; weight normalized_shape (optional);
    rstd x.shape[:-normalized_ndim]. ``out=(y, rstd)``. Returns ``RMSNormForward(y, rstd)``.
    """
    op = "rms_norm_forward"
    be = backend_of(op, x=x, weight=weight, out=out)
    x = V.float_input(be, op, "x", x)
    lead, norm, m, n = V.split_rows(op, x.shape, normalized_ndim)
    weight = V.param(be, op, "weight", weight, norm, x.dtype)
    eps = V.scalar(op, "eps", eps, low=0.0)
    y, rstd = V.outputs(
        be, op, out, [("y", x.shape, x.dtype), ("rstd", lead, be.stat_dtype(x.dtype))], (x, weight)
    )
    be.kernels.rms_norm_forward(
        x.reshape(m, n),
        _absent(be, x.dtype) if weight is None else weight.reshape(n),
        y.reshape(m, n),
        rstd.reshape(m),
        eps,
        be.threads(m * n),
    )
    return RMSNormForward(y, rstd)


def rms_norm_backward(
    dy: Array,
    x: Array,
    rstd: Array,
    weight: Array | None = None,
    *,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> RMSNormBackward:
    """Gradients of ``rms_norm_forward`` given ``dy`` and the saved ``rstd``.

    With xhat = x * rstd and g = dy * weight (dy without weight), per row of N elements::

        dx = rstd * (g - xhat * mean(g * xhat)),   dweight = sum_rows(dy * xhat)

    ``out=(dx, dweight)``. Returns ``RMSNormBackward(dx, dweight)``; dweight is None without weight.
    """
    op = "rms_norm_backward"
    be = backend_of(op, dy=dy, x=x, rstd=rstd, weight=weight, out=out)
    x = V.float_input(be, op, "x", x)
    lead, norm, m, n = V.split_rows(op, x.shape, normalized_ndim)
    dy = V.required(be, op, "dy", dy, x.shape, x.dtype)
    rstd = V.required(be, op, "rstd", rstd, lead, be.stat_dtype(x.dtype))
    weight = V.param(be, op, "weight", weight, norm, x.dtype)
    dx, dweight = V.outputs(
        be,
        op,
        out,
        [("dx", x.shape, x.dtype), None if weight is None else ("dweight", norm, x.dtype)],
        (dy, x, rstd, weight),
    )
    nt = be.threads(m * n)
    absent = _absent(be, x.dtype)
    be.kernels.rms_norm_backward(
        dy.reshape(m, n),
        x.reshape(m, n),
        rstd.reshape(m),
        absent if weight is None else weight.reshape(n),
        dx.reshape(m, n),
        absent if dweight is None else dweight.reshape(n),
        *_partials(be, dweight is not None, nt, n, x.dtype),
        nt,
    )
    return RMSNormBackward(dx, dweight)
