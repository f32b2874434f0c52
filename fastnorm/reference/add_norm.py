"""NumPy references of the fused residual add + norm ops: the add, then the plain norm references.

Each computes in the input's dtype, like the other references: ``h = x + residual`` in x's dtype, then
``layer_norm_forward`` / ``rms_norm_forward`` of ``h``; the backward is the norm's backward of ``h`` plus
``dh``. Signatures match ``fastnorm.add_norm`` (without ``out=``).
"""

from __future__ import annotations

from .norms import layer_norm_backward, layer_norm_forward, rms_norm_backward, rms_norm_forward

__all__ = [
    "add_layer_norm_forward",
    "add_layer_norm_backward",
    "add_rms_norm_forward",
    "add_rms_norm_backward",
]


def _plus(a, b):
    """a + b, or a when b is None."""
    return a if b is None else (a + b).astype(a.dtype)


def add_layer_norm_forward(x, residual, weight=None, bias=None, *, eps=1e-5, normalized_ndim=1):
    """h = x + residual;  y = LayerNorm(h) over the last ``normalized_ndim`` dims.

    Per row of h with N elements: mean = sum(h) / N, var = sum((h - mean)^2) / N,
    rstd = 1 / sqrt(var + eps), y = (h - mean) * rstd * weight + bias.
    Returns (y, h, mean, rstd).
    """
    h = (x + residual).astype(x.dtype)
    y, mean, rstd = layer_norm_forward(h, weight, bias, eps=eps, normalized_ndim=normalized_ndim)
    return y, h, mean, rstd


def add_layer_norm_backward(dy, dh, h, mean, rstd, weight=None, bias=None, *, normalized_ndim=1):
    """Gradients of ``add_layer_norm_forward``: dx = LayerNorm's dx at h + dh (the gradient of x and of
    residual); dweight, dbias as LayerNorm's (None without weight / bias). dh may be None (zero).
    Returns (dx, dweight, dbias).
    """
    dx, dweight, dbias = layer_norm_backward(dy, h, mean, rstd, weight, bias, normalized_ndim=normalized_ndim)
    return _plus(dx, dh), dweight, dbias


def add_rms_norm_forward(x, residual, weight=None, *, eps=1e-6, normalized_ndim=1):
    """h = x + residual;  y = RMSNorm(h): rstd = 1 / sqrt(sum(h^2) / N + eps), y = h * rstd * weight.
    Returns (y, h, rstd).
    """
    h = (x + residual).astype(x.dtype)
    y, rstd = rms_norm_forward(h, weight, eps=eps, normalized_ndim=normalized_ndim)
    return y, h, rstd


def add_rms_norm_backward(dy, dh, h, rstd, weight=None, *, normalized_ndim=1):
    """Gradients of ``add_rms_norm_forward``: dx = RMSNorm's dx at h + dh; dweight as RMSNorm's.
    Returns (dx, dweight).
    """
    dx, dweight = rms_norm_backward(dy, h, rstd, weight, normalized_ndim=normalized_ndim)
    return _plus(dx, dh), dweight
