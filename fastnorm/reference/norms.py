"""NumPy reference implementations of the normalization ops: the specification the kernels are tested against.

Plain, readable NumPy with no tricks; each computes in the input's dtype. Signatures match the public
ops in ``fastnorm`` (without ``out=``) and PyTorch's formulas and defaults.
"""

from __future__ import annotations

import numpy as np


def _rows(x, normalized_ndim):
    lead = x.shape[: x.ndim - normalized_ndim]
    n = int(np.prod(x.shape[x.ndim - normalized_ndim :], dtype=np.int64))
    return x.reshape(int(np.prod(lead, dtype=np.int64)), n), lead


# --------------------------------------------------------------------------------------------- LayerNorm
def layer_norm_forward(x, weight=None, bias=None, *, eps=1e-5, normalized_ndim=1):
    """LayerNorm over the last ``normalized_ndim`` dims (``torch.nn.functional.layer_norm``).

    With each row r of N = prod(x.shape[-normalized_ndim:]) elements:
        mean = sum(r) / N,  var = sum((r - mean)^2) / N  (biased),  rstd = 1 / sqrt(var + eps)
        y = (r - mean) * rstd * weight + bias
    Shapes: x (*, *normalized_shape); weight, bias normalized_shape; mean, rstd x.shape[:-normalized_ndim].
    Returns (y, mean, rstd).
    """
    x2, lead = _rows(x, normalized_ndim)
    mean = x2.mean(axis=1)
    var = ((x2 - mean[:, None]) ** 2).mean(axis=1)
    rstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
    y = (x2 - mean[:, None]) * rstd[:, None]
    if weight is not None:
        y = y * weight.reshape(1, -1)
    if bias is not None:
        y = y + bias.reshape(1, -1)
    return y.reshape(x.shape).astype(x.dtype), mean.reshape(lead), rstd.reshape(lead).astype(x.dtype)


def layer_norm_backward(dy, x, mean, rstd, weight=None, bias=None, *, normalized_ndim=1):
    """Gradients of ``layer_norm_forward``.

    With xhat = (x - mean) * rstd, g = dy * weight (dy if no weight), per row of N elements:
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
        dweight = sum over rows of dy * xhat,   dbias = sum over rows of dy
    Returns (dx, dweight, dbias); dweight is None without weight, dbias None without bias.
    """
    x2, _ = _rows(x, normalized_ndim)
    dy2 = dy.reshape(x2.shape)
    m, r = mean.reshape(-1, 1), rstd.reshape(-1, 1)
    xhat = (x2 - m) * r
    g = dy2 * weight.reshape(1, -1) if weight is not None else dy2
    dx = r * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
    dweight = (dy2 * xhat).sum(axis=0).reshape(weight.shape) if weight is not None else None
    dbias = dy2.sum(axis=0).reshape(bias.shape) if bias is not None else None
    return dx.reshape(x.shape).astype(x.dtype), dweight, dbias


# --------------------------------------------------------------------------------------------- RMSNorm
def rms_norm_forward(x, weight=None, *, eps=1e-6, normalized_ndim=1):
    """RMSNorm over the last ``normalized_ndim`` dims (``torch.nn.functional.rms_norm``).

    Per row r of N elements: rstd = 1 / sqrt(sum(r^2) / N + eps),  y = r * rstd * weight.
    Shapes: x (*, *normalized_shape); weight normalized_shape; rstd x.shape[:-normalized_ndim].
    Returns (y, rstd).
    """
    x2, lead = _rows(x, normalized_ndim)
    rstd = 1.0 / np.sqrt((x2 * x2).mean(axis=1) + x.dtype.type(eps))
    y = x2 * rstd[:, None]
    if weight is not None:
        y = y * weight.reshape(1, -1)
    return y.reshape(x.shape).astype(x.dtype), rstd.reshape(lead).astype(x.dtype)


def rms_norm_backward(dy, x, rstd, weight=None, *, normalized_ndim=1):
    """Gradients of ``rms_norm_forward``.

    With xhat = x * rstd, g = dy * weight (dy if no weight), per row of N elements:
        dx = rstd * (g - xhat * mean(g * xhat)),   dweight = sum over rows of dy * xhat
    Returns (dx, dweight); dweight is None without weight.
    """
    x2, _ = _rows(x, normalized_ndim)
    dy2 = dy.reshape(x2.shape)
    r = rstd.reshape(-1, 1)
    xhat = x2 * r
    g = dy2 * weight.reshape(1, -1) if weight is not None else dy2
    dx = r * (g - xhat * (g * xhat).mean(axis=1, keepdims=True))
    dweight = (dy2 * xhat).sum(axis=0).reshape(weight.shape) if weight is not None else None
    return dx.reshape(x.shape).astype(x.dtype), dweight
