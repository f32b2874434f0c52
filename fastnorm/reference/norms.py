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


# ---------------------------------------------------------------------------------------- LocalResponseNorm
def _lrn_window_sum(a, before, after):
    """s[:, c] = sum of a[:, c'], c' in [c - before, c + after] inside [0, C) (zero padding); a (N, C, L)."""
    n, c, L = a.shape
    padded = np.zeros((n, c + before + after, L), dtype=a.dtype)
    padded[:, before : before + c] = a
    s = np.zeros_like(a)
    for i in range(before + after + 1):
        s += padded[:, i : i + c]
    return s


def local_response_norm_forward(x, size, *, alpha=1e-4, beta=0.75, k=1.0):
    """LocalResponseNorm across channels (``torch.nn.functional.local_response_norm``).

    x has shape (N, C, *) (2-D (N, C) allowed: no spatial dims). For channel c the window is
    c' in [c - size//2, c + (size-1)//2], zero-padded outside [0, C):
        scale = k + alpha / size * sum over the window of x[:, c']^2
        y = x * scale^(-beta)
    Returns (y, scale), both shaped like x.
    """
    t = x.dtype.type
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    scale = t(k) + t(alpha / size) * _lrn_window_sum(x3 * x3, size // 2, (size - 1) // 2)
    y = x3 * scale ** t(-beta)
    return y.reshape(x.shape), scale.reshape(x.shape)


def local_response_norm_backward(dy, x, y, scale, size, *, alpha=1e-4, beta=0.75, k=1.0):
    """Gradient of ``local_response_norm_forward`` with respect to x (``k`` only enters through ``scale``).

    Channel j is in the window of channels c in [j - (size-1)//2, j + size//2] (the mirrored window), so
        dx[:, j] = dy[:, j] * scale[:, j]^(-beta)
                   - 2 * alpha * beta / size * x[:, j] * sum over that window of dy * y / scale at c
    Shapes: all like x. Returns dx.
    """
    t = x.dtype.type
    shp = (x.shape[0], x.shape[1], -1)
    x3, dy3, y3, s3 = x.reshape(shp), dy.reshape(shp), y.reshape(shp), scale.reshape(shp)
    back = _lrn_window_sum(dy3 * y3 / s3, (size - 1) // 2, size // 2)
    dx = dy3 * s3 ** t(-beta) - t(2.0 * alpha * beta / size) * x3 * back
    return dx.reshape(x.shape)


# ----------------------------------------------------------------------------------------------- WeightNorm
def _weight_norm_axes(ndim, dim):
    """The reduced axes and g's shape rule: every axis except ``dim`` (all axes when dim is None)."""
    if dim is None:
        return tuple(range(ndim))
    dim = dim % ndim
    return tuple(i for i in range(ndim) if i != dim)


def weight_norm_forward(v, g, *, dim=0):
    """Weight normalization (``torch._weight_norm`` / ``torch.nn.utils.weight_norm``).

        norm = sqrt(sum of v^2 over every axis except ``dim``)     (over all axes when dim is None)
        w = g * v / norm
    Shapes: v any; g and norm have v's shape with size 1 on every axis except ``dim`` (shape () when
    dim is None); w like v. Returns (w, norm).
    """
    axes = _weight_norm_axes(v.ndim, dim)
    norm = np.sqrt((v * v).sum(axis=axes, keepdims=dim is not None))
    w = v * (g / norm)
    return w.astype(v.dtype), norm.astype(v.dtype)


def weight_norm_backward(dw, v, g, norm, *, dim=0):
    """Gradients of ``weight_norm_forward``.

    With dot = sum of dw * v over every axis except ``dim`` (shaped like g):
        dg = dot / norm
        dv = g / norm * (dw - v * dot / norm^2)
    Returns (dv, dg).
    """
    axes = _weight_norm_axes(v.ndim, dim)
    dot = (dw * v).sum(axis=axes, keepdims=dim is not None)
    dg = dot / norm
    dv = (g / norm) * (dw - v * (dot / (norm * norm)))
    return dv.astype(v.dtype), dg.astype(v.dtype)


# --------------------------------------------------------------------------------------------- CosineLinear
def cosine_linear_forward(x, w, *, eps=1e-8):
    """Cosine-normalized linear layer: cosine similarity of every row of x with every row of w.

        x_norm = |x| (L2 over the last axis),  w_norm = |w| (L2 over rows)
        y = (x @ w.T) / (max(x_norm, eps) * max(w_norm, eps))
    i.e. ``F.linear(F.normalize(x, eps=eps), F.normalize(w, eps=eps))`` and, row by row,
    ``F.cosine_similarity`` (which clamps each norm at eps separately too).
    Shapes: x (*, D), w (O, D) -> y (*, O), x_norm (*), w_norm (O,). The norms are the unclamped ones.
    Returns (y, x_norm, w_norm).
    """
    t = x.dtype.type
    x_norm = np.sqrt((x * x).sum(axis=-1))
    w_norm = np.sqrt((w * w).sum(axis=-1))
    y = (x @ w.T) / np.maximum(x_norm, t(eps))[..., None] / np.maximum(w_norm, t(eps))
    return y.astype(x.dtype), x_norm.astype(x.dtype), w_norm.astype(x.dtype)


def cosine_linear_backward(dy, x, w, y, x_norm, w_norm, *, eps=1e-8):
    """Gradients of ``cosine_linear_forward`` (the clamp at eps has zero derivative below eps, as in
    ``F.normalize``; at a norm >= eps the norm is differentiated).

    With nx = max(x_norm, eps), nw = max(w_norm, eps), G = dy / (nx[:, None] * nw[None, :]):
        dx = G @ w - x * [x_norm >= eps] * sum_o(dy * y) / nx^2
        dw = G.T @ x - w * [w_norm >= eps] * sum_b(dy * y) / nw^2
    Shapes as in the forward. Returns (dx, dw).
    """
    t = x.dtype.type
    d = x.shape[-1]
    o, m = w.shape[0], int(np.prod(x.shape[:-1]))
    x2, dy2, y2, xn = x.reshape(m, d), dy.reshape(m, o), y.reshape(m, o), x_norm.reshape(m)
    nx, nw = np.maximum(xn, t(eps)), np.maximum(w_norm, t(eps))
    g = dy2 / nx[:, None] / nw[None, :]
    cx = np.where(xn >= t(eps), (dy2 * y2).sum(axis=1) / (nx * nx), t(0))
    cw = np.where(w_norm >= t(eps), (dy2 * y2).sum(axis=0) / (nw * nw), t(0))
    dx = g @ w - x2 * cx[:, None]
    dw = g.T @ x2 - w * cw[:, None]
    return dx.reshape(x.shape).astype(x.dtype), dw.astype(x.dtype)
