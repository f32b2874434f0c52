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

from typing import NamedTuple

from .. import reference as R
from .._doc import fill_doc
from .._spec import AffineGrads, Array, ScaleGrads, ops
from .layer_norm import declare_rows, rows_backward, rows_forward


class AddLayerNormForward(NamedTuple):
    y: Array
    h: Array
    mean: Array
    rstd: Array


class AddRMSNormForward(NamedTuple):
    y: Array
    h: Array
    rstd: Array


AddLayerNormBackward = AffineGrads
AddRMSNormBackward = ScaleGrads


ADD_LAYER_NORM_FWD, ADD_LAYER_NORM_BWD = declare_rows(
    "add_layer_norm", "add_norm", ("mean", "rstd"), ("weight", "bias"), (AddLayerNormForward, AffineGrads),
    (R.add_layer_norm_forward, R.add_layer_norm_backward), fused=True,
)  # fmt: skip
ADD_RMS_NORM_FWD, ADD_RMS_NORM_BWD = declare_rows(
    "add_rms_norm", "add_norm", ("rstd",), ("weight",), (AddRMSNormForward, ScaleGrads),
    (R.add_rms_norm_forward, R.add_rms_norm_backward), fused=True,
)  # fmt: skip

__all__ = [s.name for s in ops("add_norm")]  # the public functions below, one per declaration


@fill_doc(ADD_LAYER_NORM_FWD)
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
    %(normalized_ndim)s
    %(out)s

    Returns
    -------
    AddLayerNormForward
        ``(y, h, mean, rstd)``: y and h like x; mean and rstd of shape x.shape[:-normalized_ndim] in the
        statistic dtype (x's dtype; float32 for 16-bit x). Empty rows (N = 0) give mean 0, rstd NaN.
    """
    arrays = dict(x=x, residual=residual, weight=weight, bias=bias)
    return rows_forward(ADD_LAYER_NORM_FWD, arrays, eps, normalized_ndim, out)


@fill_doc(ADD_LAYER_NORM_BWD)
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
) -> AffineGrads:
    """Gradients of ``add_layer_norm_forward`` given ``dy``, ``dh`` and the saved ``h``, ``mean``, ``rstd``.

    With hhat = (h - mean) * rstd and g = dy * weight (dy without weight), per row of N elements::

        dx = rstd * (g - mean(g) - hhat * mean(g * hhat)) + dh
        dweight = sum_rows(dy * hhat),  dbias = sum_rows(dy)

    ``dx`` is the gradient of both ``x`` and ``residual``.

    Parameters
    ----------
    %(residual_grads)s
    h, mean, rstd : arrays
        Saved by the forward: h (*, *normalized_shape), mean and rstd h.shape[:-normalized_ndim] in the
        statistic dtype.
    %(affine_bwd)s
    %(normalized_ndim_bwd)s
    %(out)s

    Returns
    -------
    AddLayerNormBackward
        ``(dx, dweight, dbias)``; dweight/dbias in the parameter's dtype, None when the parameter is None.
        Bitwise the same for any thread count.
    """
    arrays = dict(dy=dy, dh=dh, h=h, mean=mean, rstd=rstd, weight=weight, bias=bias)
    return rows_backward(ADD_LAYER_NORM_BWD, arrays, normalized_ndim, out)


@fill_doc(ADD_RMS_NORM_FWD)
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
    %(normalized_ndim)s
    %(out)s

    Returns
    -------
    AddRMSNormForward
        ``(y, h, rstd)``: y and h like x; rstd of shape x.shape[:-normalized_ndim] in the statistic dtype.
        Empty rows (N = 0) give rstd NaN.
    """
    arrays = dict(x=x, residual=residual, weight=weight)
    return rows_forward(ADD_RMS_NORM_FWD, arrays, eps, normalized_ndim, out)


@fill_doc(ADD_RMS_NORM_BWD)
def add_rms_norm_backward(
    dy: Array,
    dh: Array | None,
    h: Array,
    rstd: Array,
    weight: Array | None = None,
    *,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> ScaleGrads:
    """Gradients of ``add_rms_norm_forward`` given ``dy``, ``dh`` and the saved ``h``, ``rstd``.

    With hhat = h * rstd and g = dy * weight (dy without weight), per row of N elements::

        dx = rstd * (g - hhat * mean(g * hhat)) + dh,   dweight = sum_rows(dy * hhat)

    ``dx`` is the gradient of both ``x`` and ``residual``.

    Parameters
    ----------
    %(residual_grads)s
    h, rstd : arrays
        Saved by the forward: h (*, *normalized_shape), rstd h.shape[:-normalized_ndim].
    %(scale_bwd)s
    %(normalized_ndim_bwd)s
    %(out)s

    Returns
    -------
    AddRMSNormBackward
        ``(dx, dweight)``; dweight in the weight's dtype, None without weight. Bitwise the same for any
        thread count.
    """
    arrays = dict(dy=dy, dh=dh, h=h, rstd=rstd, weight=weight)
    return rows_backward(ADD_RMS_NORM_BWD, arrays, normalized_ndim, out)
