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

from . import _bind
from ._common import fill_docs
from .functional import _check, _normalized_ndim

__all__ = ["add_layer_norm", "add_rms_norm"]


# x and residual get the same gradient (h = x + residual); both y and h are differentiable outputs.
ADD_LAYER_NORM = _bind.bind_pair("add_layer_norm", returns=("y", "h"), also={"residual": "dx"}, on_op=True)
ADD_RMS_NORM = _bind.bind_pair("add_rms_norm", returns=("y", "h"), also={"residual": "dx"}, on_op=True)
AddLayerNormFunction = ADD_LAYER_NORM.function
AddRMSNormFunction = ADD_RMS_NORM.function


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
    %(add_trailing)s
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
    return ADD_LAYER_NORM.apply(x, residual, weight, bias, k, float(eps))


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
    %(add_trailing)s
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
    return ADD_RMS_NORM.apply(x, residual, weight, k, float(eps))


fill_docs(globals(), __all__)
