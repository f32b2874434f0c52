"""Fused residual add + LayerNorm / RMSNorm: the pre-norm transformer block's ``h = x + residual; y = norm(h)``.

One kernel reads ``x`` and ``residual`` once, writes the new residual stream ``h`` and the normalized ``y``
(the row of ``h`` stays in cache for the statistics), instead of an add that writes ``h`` and a norm that
reads it back. The backward takes the gradient ``dy`` of ``y`` and the gradient ``dh`` arriving on the
residual stream, and returns their sum through the norm once: it is the gradient of both ``x`` and
``residual`` (``h = x + residual``).

Dtypes: float32, float64, and the 16-bit storage formats (``ml_dtypes.bfloat16``, ``np.float16``) where the
backend has them; ``h`` is ``x + residual`` rounded to x's dtype, and the norm normalizes that rounded ``h``
(what the unfused composition computes). Statistics are float32 for 16-bit data, weight/bias may be x's dtype
or float32 beside 16-bit data, and parameter gradients come back in the parameter's dtype. Validation,
``out=`` buffers, empty inputs and thread-count invariance as in ``fastnorm.layer_norm_forward``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _dtypes
from . import _validation as V
from ._dispatch import backend_of
from .norms import (
    _absent,
    _empty_reduction,
    _fill,
    _grad_targets,
    _grads_back,
    _host,
    _layer_norm_dx_one,
    _partials,
    _put,
    _stat_params,
)

__all__ = [
    "add_layer_norm_forward",
    "add_layer_norm_backward",
    "add_rms_norm_forward",
    "add_rms_norm_backward",
]

Array = Any  # numpy.ndarray on the CPU; any object with __cuda_array_interface__ on the GPU


class AddLayerNormForward(NamedTuple):
    y: Array
    h: Array
    mean: Array
    rstd: Array


class AddLayerNormBackward(NamedTuple):
    dx: Array
    dweight: Array | None
    dbias: Array | None


class AddRMSNormForward(NamedTuple):
    y: Array
    h: Array
    rstd: Array


class AddRMSNormBackward(NamedTuple):
    dx: Array
    dweight: Array | None


def _forward_inputs(be, op: str, x, residual, normalized_ndim: int, eps, params: dict):
    """Validated x, residual, row split, parameters (None or arrays), eps and the statistic dtype."""
    x = V.float_input(be, op, "x", x)
    lead, norm, m, n = V.split_rows(op, x.shape, normalized_ndim)
    residual = V.required(be, op, "residual", residual, x.shape, x.dtype)
    pdt = _dtypes.param_dtypes(x.dtype)
    params = {k: V.param(be, op, k, v, norm, pdt) for k, v in params.items()}
    eps = V.scalar(op, "eps", eps, finite=False)
    return x, residual, lead, norm, m, n, params, eps, be.stat_dtype(x.dtype)


def _backward_inputs(be, op: str, dy, dh, h, normalized_ndim: int, stats: dict, params: dict):
    """Validated h (it sets every shape and dtype), dy, dh (optional), saved statistics and parameters."""
    h = V.float_input(be, op, "h", h)
    lead, norm, m, n = V.split_rows(op, h.shape, normalized_ndim, name="h")
    dy = V.required(be, op, "dy", dy, h.shape, h.dtype)
    dh = V.param(be, op, "dh", dh, h.shape, h.dtype)
    sd = be.stat_dtype(h.dtype)
    stats = {k: V.required(be, op, k, v, lead, sd) for k, v in stats.items()}
    pdt = _dtypes.param_dtypes(h.dtype)
    params = {k: V.param(be, op, k, v, norm, pdt) for k, v in params.items()}
    return h, dy, dh, lead, norm, m, n, stats, params, sd


def _grad_spec(name: str, p, norm: tuple):
    return None if p is None else (name, norm, V.dtype_of(p))


# ------------------------------------------------------------------------------------------ LayerNorm
def add_layer_norm_forward(
    x: Array,
    residual: Array,
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    eps: float = 1e-5,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> AddLayerNormForward:
    """Residual add followed by LayerNorm over the last ``normalized_ndim`` dims, in one pass.

    Per row of N = prod(x.shape[-normalized_ndim:]) elements::

        h = x + residual                  (rounded to x's dtype)
        mean = sum(h) / N,  var = sum((h - mean)^2) / N,  rstd = 1 / sqrt(var + eps)
        y = (h - mean) * rstd * weight + bias

    the same values as ``h = x + residual`` followed by ``layer_norm_forward(h, weight, bias)``.

    Parameters
    ----------
    x, residual : array, shape (*, *normalized_shape)
        The block's output and the residual stream, same shape and dtype.
    weight, bias : array of shape normalized_shape, optional
        Affine parameters, in x's dtype (or float32 beside 16-bit x).
    eps : float
        Added to the variance (any float, as in torch).
    normalized_ndim : int
        How many trailing dims form a row (>= 1).
    out : tuple of 4 arrays or None, optional
        ``(y, h, mean, rstd)`` buffers (entries may be None); written in place and returned.

    Returns
    -------
    AddLayerNormForward
        ``(y, h, mean, rstd)``: y and h like x; mean and rstd of shape x.shape[:-normalized_ndim] in the
        statistic dtype (x's dtype; float32 for 16-bit x). Empty rows (N = 0) give mean 0, rstd NaN.
    """
    op = "add_layer_norm_forward"
    be = backend_of(op, x=x, residual=residual, weight=weight, bias=bias, out=out)
    x, residual, lead, norm, m, n, p, eps, sd = _forward_inputs(
        be, op, x, residual, normalized_ndim, eps, {"weight": weight, "bias": bias}
    )
    weight, bias = p["weight"], p["bias"]
    y, h, mean, rstd = V.outputs(
        be,
        op,
        out,
        [("y", x.shape, x.dtype), ("h", x.shape, x.dtype), ("mean", lead, sd), ("rstd", lead, sd)],
        (x, residual, weight, bias),
    )
    if m * n == 0:
        _empty_reduction(be, mean, rstd)
        return AddLayerNormForward(y, h, mean, rstd)
    w, b = _stat_params(be, sd, weight, bias)
    absent = _absent(be, sd)
    be.kernels.add_layer_norm_forward(
        x.reshape(m, n),
        residual.reshape(m, n),
        absent if w is None else w.reshape(n),
        absent if b is None else b.reshape(n),
        y.reshape(m, n),
        h.reshape(m, n),
        mean.reshape(m),
        rstd.reshape(m),
        eps,
        be.threads(m * n),
    )
    return AddLayerNormForward(y, h, mean, rstd)


def add_layer_norm_backward(
    dy: Array,
    dh: Array | None,
    h: Array,
    mean: Array,
    rstd: Array,
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> AddLayerNormBackward:
    """Gradients of ``add_layer_norm_forward`` given ``dy``, ``dh`` and the saved ``h``, ``mean``, ``rstd``.

    With hhat = (h - mean) * rstd and g = dy * weight (dy without weight), per row of N elements::

        dx = rstd * (g - mean(g) - hhat * mean(g * hhat)) + dh
        dweight = sum_rows(dy * hhat),  dbias = sum_rows(dy)

    ``dx`` is the gradient of both ``x`` and ``residual``.

    Parameters
    ----------
    dy : array, shape like h
        Gradient of y.
    dh : array like h, or None
        Gradient arriving on the residual stream h (None: none, as if zero).
    h, mean, rstd : arrays
        Saved by the forward: h (*, *normalized_shape), mean and rstd h.shape[:-normalized_ndim] in the
        statistic dtype.
    weight, bias : array of shape normalized_shape, optional
        The forward's parameters; ``bias`` only says whether dbias is wanted.
    normalized_ndim : int
        As in the forward.
    out : tuple of 3 arrays or None, optional
        ``(dx, dweight, dbias)`` buffers.

    Returns
    -------
    AddLayerNormBackward
        ``(dx, dweight, dbias)``; dweight/dbias in the parameter's dtype, None when the parameter is None.
        Bitwise the same for any thread count.
    """
    op = "add_layer_norm_backward"
    be = backend_of(op, dy=dy, dh=dh, h=h, mean=mean, rstd=rstd, weight=weight, bias=bias, out=out)
    h, dy, dh, lead, norm, m, n, s, p, sd = _backward_inputs(
        be, op, dy, dh, h, normalized_ndim, {"mean": mean, "rstd": rstd}, {"weight": weight, "bias": bias}
    )
    mean, rstd, weight, bias = s["mean"], s["rstd"], p["weight"], p["bias"]
    dx, dweight, dbias = V.outputs(
        be,
        op,
        out,
        [("dx", h.shape, h.dtype), _grad_spec("dweight", weight, norm), _grad_spec("dbias", bias, norm)],
        (dy, dh, h, mean, rstd, weight, bias),
    )
    if m * n == 0:
        _fill(be, dweight, 0.0)
        _fill(be, dbias, 0.0)
        return AddLayerNormBackward(dx, dweight, dbias)
    nt = be.threads(m * n)
    (w,) = _stat_params(be, sd, weight)
    dw32, db32 = _grad_targets(be, sd, dweight, dbias)
    absent, absent_data = _absent(be, sd), _absent(be, h.dtype)
    be.kernels.add_layer_norm_backward(
        dy.reshape(m, n),
        absent_data if dh is None else dh.reshape(m, n),
        h.reshape(m, n),
        mean.reshape(m),
        rstd.reshape(m),
        absent if w is None else w.reshape(n),
        dx.reshape(m, n),
        absent if dw32 is None else dw32.reshape(n),
        absent if db32 is None else db32.reshape(n),
        *_partials(be, dweight is not None, nt, n, sd),
        *_partials(be, dbias is not None, nt, n, sd),
        nt,
    )
    _grads_back(be, (dweight, dbias), (dw32, db32))
    if n == 1:
        one = _layer_norm_dx_one(be, dy, h, mean, rstd, weight)
        if dh is not None:
            one = one + _host(be, dh).reshape(-1).astype(one.dtype)
        _put(be, dx, one.astype(V.dtype_of(h)).reshape(h.shape))
    return AddLayerNormBackward(dx, dweight, dbias)


# ------------------------------------------------------------------------------------------ RMSNorm
def add_rms_norm_forward(
    x: Array,
    residual: Array,
    weight: Array | None = None,
    *,
    eps: float = 1e-6,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> AddRMSNormForward:
    """Residual add followed by RMSNorm over the last ``normalized_ndim`` dims, in one pass.

    Per row of N elements::

        h = x + residual                  (rounded to x's dtype)
        rstd = 1 / sqrt(sum(h^2) / N + eps),   y = h * rstd * weight

    the same values as ``h = x + residual`` followed by ``rms_norm_forward(h, weight)``.

    Parameters
    ----------
    x, residual : array, shape (*, *normalized_shape)
        The block's output and the residual stream, same shape and dtype.
    weight : array of shape normalized_shape, optional
        Scale, in x's dtype (or float32 beside 16-bit x).
    eps : float
        Added to the mean square (any float, as in torch).
    normalized_ndim : int
        How many trailing dims form a row (>= 1).
    out : tuple of 3 arrays or None, optional
        ``(y, h, rstd)`` buffers (entries may be None).

    Returns
    -------
    AddRMSNormForward
        ``(y, h, rstd)``: y and h like x; rstd of shape x.shape[:-normalized_ndim] in the statistic dtype.
        Empty rows (N = 0) give rstd NaN.
    """
    op = "add_rms_norm_forward"
    be = backend_of(op, x=x, residual=residual, weight=weight, out=out)
    x, residual, lead, norm, m, n, p, eps, sd = _forward_inputs(
        be, op, x, residual, normalized_ndim, eps, {"weight": weight}
    )
    weight = p["weight"]
    y, h, rstd = V.outputs(
        be,
        op,
        out,
        [("y", x.shape, x.dtype), ("h", x.shape, x.dtype), ("rstd", lead, sd)],
        (x, residual, weight),
    )
    if m * n == 0:
        _fill(be, rstd, float("nan"))
        return AddRMSNormForward(y, h, rstd)
    (w,) = _stat_params(be, sd, weight)
    be.kernels.add_rms_norm_forward(
        x.reshape(m, n),
        residual.reshape(m, n),
        _absent(be, sd) if w is None else w.reshape(n),
        y.reshape(m, n),
        h.reshape(m, n),
        rstd.reshape(m),
        eps,
        be.threads(m * n),
    )
    return AddRMSNormForward(y, h, rstd)


def add_rms_norm_backward(
    dy: Array,
    dh: Array | None,
    h: Array,
    rstd: Array,
    weight: Array | None = None,
    *,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> AddRMSNormBackward:
    """Gradients of ``add_rms_norm_forward`` given ``dy``, ``dh`` and the saved ``h``, ``rstd``.

    With hhat = h * rstd and g = dy * weight (dy without weight), per row of N elements::

        dx = rstd * (g - hhat * mean(g * hhat)) + dh,   dweight = sum_rows(dy * hhat)

    ``dx`` is the gradient of both ``x`` and ``residual``.

    Parameters
    ----------
    dy : array, shape like h
        Gradient of y.
    dh : array like h, or None
        Gradient arriving on the residual stream h (None: none, as if zero).
    h, rstd : arrays
        Saved by the forward: h (*, *normalized_shape), rstd h.shape[:-normalized_ndim].
    weight : array of shape normalized_shape, optional
        The forward's scale.
    normalized_ndim : int
        As in the forward.
    out : tuple of 2 arrays or None, optional
        ``(dx, dweight)`` buffers.

    Returns
    -------
    AddRMSNormBackward
        ``(dx, dweight)``; dweight in the weight's dtype, None without weight. Bitwise the same for any
        thread count.
    """
    op = "add_rms_norm_backward"
    be = backend_of(op, dy=dy, dh=dh, h=h, rstd=rstd, weight=weight, out=out)
    h, dy, dh, lead, norm, m, n, s, p, sd = _backward_inputs(
        be, op, dy, dh, h, normalized_ndim, {"rstd": rstd}, {"weight": weight}
    )
    rstd, weight = s["rstd"], p["weight"]
    dx, dweight = V.outputs(
        be,
        op,
        out,
        [("dx", h.shape, h.dtype), _grad_spec("dweight", weight, norm)],
        (dy, dh, h, rstd, weight),
    )
    if m * n == 0:
        _fill(be, dweight, 0.0)
        return AddRMSNormBackward(dx, dweight)
    nt = be.threads(m * n)
    (w,) = _stat_params(be, sd, weight)
    (dw32,) = _grad_targets(be, sd, dweight)
    absent = _absent(be, sd)
    be.kernels.add_rms_norm_backward(
        dy.reshape(m, n),
        _absent(be, h.dtype) if dh is None else dh.reshape(m, n),
        h.reshape(m, n),
        rstd.reshape(m),
        absent if w is None else w.reshape(n),
        dx.reshape(m, n),
        absent if dw32 is None else dw32.reshape(n),
        *_partials(be, dweight is not None, nt, n, sd),
        nt,
    )
    _grads_back(be, (dweight,), (dw32,))
    return AddRMSNormBackward(dx, dweight)
