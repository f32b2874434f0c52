"""NumPy reference implementations of the normalization ops: the specification the kernels are tested against.

Plain, readable NumPy with no tricks; each computes in the input's dtype. Signatures match the public
ops in ``fastnorm`` (without ``out=``) and PyTorch's formulas and defaults. Empty inputs as torch 2.13:
the mean of no elements is 0, a variance of no elements NaN (so rstd is NaN), parameter gradients are
sums over no elements (0), and an empty batch leaves the running statistics alone (InstanceNorm with
N = 0: their mean over no instances, NaN).
"""

from __future__ import annotations

import numpy as np


def _mean(a, axis, keepdims=False, empty=np.nan):
    """``a.mean(axis)``; where there is nothing to average, ``empty`` (torch: a mean of no elements is 0, a
    variance NaN), without NumPy's "mean of empty slice" warning."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    count = int(np.prod([a.shape[i] for i in axes], dtype=np.int64))
    total = a.sum(axis=axis, keepdims=keepdims)
    if count == 0:
        return np.full_like(total, empty)
    return total / a.dtype.type(count)


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
    mean = _mean(x2, 1, empty=0)
    var = _mean((x2 - mean[:, None]) ** 2, 1)
    rstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
    y = (x2 - mean[:, None]) * rstd[:, None]
    if weight is not None:
        y = y * weight.reshape(1, weight.size)
    if bias is not None:
        y = y + bias.reshape(1, bias.size)
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
    g = dy2 * weight.reshape(1, weight.size) if weight is not None else dy2
    dx = r * (g - _mean(g, 1, True) - xhat * _mean(g * xhat, 1, True))
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
    rstd = 1.0 / np.sqrt(_mean(x2 * x2, 1) + x.dtype.type(eps))
    y = x2 * rstd[:, None]
    if weight is not None:
        y = y * weight.reshape(1, weight.size)
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
    g = dy2 * weight.reshape(1, weight.size) if weight is not None else dy2
    dx = r * (g - xhat * _mean(g * xhat, 1, True))
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
    x3 = x.reshape(x.shape[0], x.shape[1], int(np.prod(x.shape[2:], dtype=np.int64)))
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
    shp = (x.shape[0], x.shape[1], int(np.prod(x.shape[2:], dtype=np.int64)))
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


# --------------------------------------------------------------------------------------------- channel norms
def _channels_first(x, axis):
    """x viewed as (N, C, *): the channel axis (1, or -1 for channels-last) moved to position 1."""
    return x if axis == 1 or x.ndim == 2 else np.moveaxis(x, -1, 1)


def _channels_back(y, axis):
    return y if axis == 1 or y.ndim == 2 else np.moveaxis(y, 1, -1)


def _affine(y, weight, bias, shape):
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


# --------------------------------------------------------------------------------------------- BatchNorm
def batch_norm_forward(
    x,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    *,
    training=True,
    momentum=0.1,
    eps=1e-5,
    axis=1,
):
    """BatchNorm (``torch.nn.functional.batch_norm``); channel axis 1 ((N, C, *)) or -1 (channels-last).

    training, per channel c over the n values of every other axis:
        mean = sum(x_c) / n,  var = sum((x_c - mean)^2) / n (biased),  rstd = 1 / sqrt(var + eps)
        running_mean <- (1 - momentum) * running_mean + momentum * mean                 (in place, if given)
        running_var  <- (1 - momentum) * running_var + momentum * var * n / (n - 1)     (unbiased, in place)
    evaluation: mean = running_mean, rstd = 1 / sqrt(running_var + eps); nothing updated.
    y = (x - mean) * rstd * weight + bias, broadcast along the channel axis.
    Shapes: x (N, C, *) or (*, C); weight, bias, running_mean, running_var, mean, rstd (C,).
    Returns (y, mean, rstd).
    """
    xc = _channels_first(x, axis)
    red = (0,) + tuple(range(2, xc.ndim))
    shape = (1, xc.shape[1]) + (1,) * (xc.ndim - 2)
    if training:
        n = xc.size // max(xc.shape[1], 1)
        mean = _mean(xc, red, empty=0)
        var = _mean((xc - mean.reshape(shape)) ** 2, red)
        rstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
        if running_mean is not None and n > 0:  # an empty batch does not update them (torch)
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        if running_var is not None and n > 0:
            running_var[...] = (1 - momentum) * running_var + momentum * var * (n / (n - 1))
    else:
        mean = running_mean.copy()
        rstd = 1.0 / np.sqrt(running_var + x.dtype.type(eps))
    y = _affine((xc - mean.reshape(shape)) * rstd.reshape(shape), weight, bias, shape)
    return _channels_back(y, axis).astype(x.dtype), mean.astype(x.dtype), rstd.astype(x.dtype)


def batch_norm_backward(dy, x, mean, rstd, weight=None, bias=None, *, training=True, axis=1):
    """Gradients of ``batch_norm_forward``.

    With xhat = (x - mean) * rstd and g = dy * weight (dy if no weight), per channel over its n values:
        training:   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
        evaluation: dx = rstd * g          (the running statistics are constants)
        dweight = sum(dy * xhat),  dbias = sum(dy)
    Returns (dx, dweight, dbias); dweight is None without weight, dbias None without bias.
    """
    xc, dyc = _channels_first(x, axis), _channels_first(dy, axis)
    red = (0,) + tuple(range(2, xc.ndim))
    shape = (1, xc.shape[1]) + (1,) * (xc.ndim - 2)
    r = rstd.reshape(shape)
    xhat = (xc - mean.reshape(shape)) * r
    g = dyc * weight.reshape(shape) if weight is not None else dyc
    if training:
        dx = r * (g - _mean(g, red, True) - xhat * _mean(g * xhat, red, True))
    else:
        dx = r * g
    dweight = (dyc * xhat).sum(axis=red).astype(x.dtype) if weight is not None else None
    dbias = dyc.sum(axis=red).astype(x.dtype) if bias is not None else None
    return _channels_back(dx, axis).astype(x.dtype), dweight, dbias


# --------------------------------------------------------------------------------------------- InstanceNorm
def instance_norm_forward(
    x,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    *,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
):
    """InstanceNorm (``torch.nn.functional.instance_norm``): statistics per (n, c) over the L spatial values.

    use_input_stats, per instance (n, c):
        mean = sum(x_nc) / L,  var = sum((x_nc - mean)^2) / L (biased),  rstd = 1 / sqrt(var + eps)
        running_mean <- (1 - momentum) * running_mean + momentum * mean over n of mean       (if given)
        running_var  <- (1 - momentum) * running_var + momentum * mean over n of var * L / (L - 1)
    otherwise: mean[n, c] = running_mean[c], rstd[n, c] = 1 / sqrt(running_var[c] + eps).
    y = (x - mean) * rstd * weight[c] + bias[c].
    Shapes: x (N, C, *); weight, bias, running stats (C,); mean, rstd (N, C). Returns (y, mean, rstd).
    """
    n, c = x.shape[:2]
    length = int(np.prod(x.shape[2:], dtype=np.int64))
    x3 = x.reshape(n, c, length)
    if use_input_stats:
        mean = _mean(x3, 2, empty=0)
        var = _mean((x3 - mean[:, :, None]) ** 2, 2)
        rstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
        update = not (n > 0 and length == 0)  # torch: no update for L = 0; N = 0 gives NaN (mean over n)
        if running_mean is not None and update:
            running_mean[...] = (1 - momentum) * running_mean + momentum * _mean(mean, 0)
        if running_var is not None and update:
            with np.errstate(all="ignore"):
                unbiased = var * (length / (length - 1))
            running_var[...] = (1 - momentum) * running_var + momentum * _mean(unbiased, 0)
    else:
        mean = np.broadcast_to(running_mean, (n, c)).copy()
        rstd = np.broadcast_to(1.0 / np.sqrt(running_var + x.dtype.type(eps)), (n, c)).copy()
    y = _affine((x3 - mean[:, :, None]) * rstd[:, :, None], weight, bias, (1, c, 1))
    return y.reshape(x.shape).astype(x.dtype), mean.astype(x.dtype), rstd.astype(x.dtype)


def instance_norm_backward(dy, x, mean, rstd, weight=None, bias=None, *, use_input_stats=True):
    """Gradients of ``instance_norm_forward``.

    With xhat = (x - mean) * rstd and g = dy * weight, per instance (n, c) over its L values:
        use_input_stats: dx = rstd * (g - mean(g) - xhat * mean(g * xhat));  else dx = rstd * g
        dweight[c] = sum over n and L of dy * xhat,  dbias[c] = sum over n and L of dy
    Returns (dx, dweight, dbias); dweight is None without weight, dbias None without bias.
    """
    n, c = x.shape[:2]
    shp = (n, c, int(np.prod(x.shape[2:], dtype=np.int64)))
    x3, dy3 = x.reshape(shp), dy.reshape(shp)
    r = rstd[:, :, None]
    xhat = (x3 - mean[:, :, None]) * r
    g = dy3 * weight.reshape(1, weight.size, 1) if weight is not None else dy3
    if use_input_stats:
        dx = r * (g - _mean(g, 2, True) - xhat * _mean(g * xhat, 2, True))
    else:
        dx = r * g
    dweight = (dy3 * xhat).sum(axis=(0, 2)).astype(x.dtype) if weight is not None else None
    dbias = dy3.sum(axis=(0, 2)).astype(x.dtype) if bias is not None else None
    return dx.reshape(x.shape).astype(x.dtype), dweight, dbias


# --------------------------------------------------------------------------------------------- GroupNorm
def group_norm_forward(x, num_groups, weight=None, bias=None, *, eps=1e-5):
    """GroupNorm (``torch.nn.functional.group_norm``): statistics per (n, group) over C / num_groups
    channels and every spatial position; affine per channel.

    Per (n, g) over its values: mean, var (biased), rstd = 1 / sqrt(var + eps);
    y = (x - mean) * rstd * weight[c] + bias[c].
    Shapes: x (N, C, *) with C divisible by num_groups; weight, bias (C,); mean, rstd (N, num_groups).
    Returns (y, mean, rstd).
    """
    n, c = x.shape[:2]
    length = int(np.prod(x.shape[2:], dtype=np.int64))
    xg = x.reshape(n, num_groups, c // num_groups * length)
    mean = _mean(xg, 2, empty=0)
    var = _mean((xg - mean[:, :, None]) ** 2, 2)
    rstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
    xhat = ((xg - mean[:, :, None]) * rstd[:, :, None]).reshape(n, c, length)
    y = _affine(xhat, weight, bias, (1, c, 1))
    return y.reshape(x.shape).astype(x.dtype), mean.astype(x.dtype), rstd.astype(x.dtype)


def group_norm_backward(dy, x, mean, rstd, num_groups, weight=None, bias=None):
    """Gradients of ``group_norm_forward``.

    With xhat = (x - mean) * rstd and g = dy * weight[c], per (n, group) over its values:
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
        dweight[c] = sum over n and positions of dy * xhat,  dbias[c] = sum of dy
    Returns (dx, dweight, dbias); dweight is None without weight, dbias None without bias.
    """
    n, c = x.shape[:2]
    length = int(np.prod(x.shape[2:], dtype=np.int64))
    dy3 = dy.reshape(n, c, length)
    xg = x.reshape(n, num_groups, c // num_groups * length)
    r = rstd[:, :, None]
    xhat_g = (xg - mean[:, :, None]) * r
    g = (dy3 * weight.reshape(1, weight.size, 1) if weight is not None else dy3).reshape(xg.shape)
    dx = r * (g - _mean(g, 2, True) - xhat_g * _mean(g * xhat_g, 2, True))
    xhat = xhat_g.reshape(dy3.shape)
    dweight = (dy3 * xhat).sum(axis=(0, 2)).astype(x.dtype) if weight is not None else None
    dbias = dy3.sum(axis=(0, 2)).astype(x.dtype) if bias is not None else None
    return dx.reshape(x.shape).astype(x.dtype), dweight, dbias


# The public references: every *_forward / *_backward function defined above, in definition order.
__all__ = [n for n, f in list(globals().items()) if n.endswith(("_forward", "_backward")) and callable(f)]
