"""NumPy references of BatchNorm split into stages, the building blocks of a synchronized (multi-process)
BatchNorm: local statistics, combine of gathered statistics, apply, backward reduce, backward apply.

Composed over one process they are ``batch_norm_forward`` / ``batch_norm_backward``; composed over P
processes (statistics gathered between the stages) they are BatchNorm over the concatenated batch.
Plain NumPy, in the input's dtype (the combine in float64, as the kernels do). Names follow torch's own
stage ops (``torch.batch_norm_stats``, ``torch.batch_norm_gather_stats_with_counts``,
``torch.batch_norm_elemt``, ``torch.batch_norm_backward_reduce``, ``torch.batch_norm_backward_elemt``).
"""

from __future__ import annotations

import numpy as np

from .norms import _channels_back, _channels_first

__all__ = [
    "batch_norm_stats",
    "batch_norm_gather_stats",
    "batch_norm_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_backward_elemt",
]


def _view(x, axis):
    xc = _channels_first(x, axis)
    red = (0,) + tuple(range(2, xc.ndim))
    shape = (1, -1) + (1,) * (xc.ndim - 2)
    return xc, red, shape


def batch_norm_stats(x, *, axis=1):
    """Per-channel statistics of the local batch: (mean, m2, count).

    Over the n = count values x_c of channel c (every axis but the channel axis)::

        mean = sum(x_c) / n,   m2 = sum((x_c - mean)^2)          (n = 0: mean = m2 = 0)

    Two passes (mean first), so m2 stays accurate when the mean is large against the spread.
    Returns mean, m2 of shape (C,) in x's dtype and count (int).
    """
    xc, red, shape = _view(x, axis)
    c = xc.shape[1]
    n = xc.size // c if c else 0
    if n == 0:
        z = np.zeros(c, dtype=x.dtype)
        return z, z.copy(), 0
    mean = xc.mean(axis=red)
    m2 = ((xc - mean.reshape(shape)) ** 2).sum(axis=red)
    return mean.astype(x.dtype), m2.astype(x.dtype), int(n)


def batch_norm_gather_stats(means, m2s, counts, running_mean=None, running_var=None, *, momentum=0.1, eps=1e-5):
    """Combine P processes' statistics (rows of ``means``, ``m2s``, shape (P, C); ``counts`` (P,)).

    Chan et al.'s parallel variance, in float64, with n = sum_p n_p::

        mean = sum_p n_p mean_p / n
        M2   = sum_p (m2_p + n_p (mean_p - mean)^2),   var = M2 / n,   invstd = 1 / sqrt(var + eps)
        running_mean <- (1 - momentum) running_mean + momentum mean                 (in place, if given)
        running_var  <- (1 - momentum) running_var  + momentum M2 / (n - 1)         (unbiased, in place)

    Processes with n_p = 0 contribute nothing. Returns (mean, invstd) of shape (C,) in means' dtype.
    """
    means64 = np.asarray(means, dtype=np.float64)
    m2s64 = np.asarray(m2s, dtype=np.float64)
    n_p = np.asarray(counts, dtype=np.float64)
    n = n_p.sum()
    mean = (n_p[:, None] * means64).sum(axis=0) / n
    m2 = (m2s64 + n_p[:, None] * (means64 - mean) ** 2).sum(axis=0)
    invstd = 1.0 / np.sqrt(m2 / n + eps)
    if running_mean is not None:
        running_mean[...] = (1 - momentum) * running_mean + momentum * mean
    if running_var is not None:
        running_var[...] = (1 - momentum) * running_var + momentum * (m2 / (n - 1))
    dt = np.asarray(means).dtype
    return mean.astype(dt), invstd.astype(dt)


def batch_norm_elemt(x, mean, invstd, weight=None, bias=None, *, axis=1):
    """y = (x - mean) * invstd * weight + bias, per channel (mean, invstd, weight, bias of shape (C,))."""
    xc, _, shape = _view(x, axis)
    y = (xc - mean.reshape(shape)) * invstd.reshape(shape)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return _channels_back(y, axis).astype(x.dtype)


def batch_norm_backward_reduce(dy, x, mean, invstd, weight=None, *, axis=1):
    """Per-channel sums of the local batch for the backward: (sum_dy, sum_dy_xmu, dweight, dbias).

    sum_dy = sum(dy),  sum_dy_xmu = sum(dy * (x - mean)),  dweight = sum_dy_xmu * invstd (None without
    weight),  dbias = sum_dy. sum_dy, sum_dy_xmu in mean's dtype, dweight and dbias in x's dtype.
    """
    xc, red, shape = _view(x, axis)
    dyc = _channels_first(dy, axis)
    sum_dy = dyc.sum(axis=red)
    sum_dy_xmu = (dyc * (xc - mean.reshape(shape))).sum(axis=red)
    dweight = (sum_dy_xmu * invstd).astype(x.dtype) if weight is not None else None
    return sum_dy.astype(mean.dtype), sum_dy_xmu.astype(mean.dtype), dweight, sum_dy.astype(x.dtype)


def batch_norm_backward_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, count, *, axis=1):
    """dx of BatchNorm from the sums over all processes (``count`` values per channel in all)::

        dx = invstd * weight * (dy - sum_dy / count - (x - mean) * invstd^2 * sum_dy_xmu / count)

    ``count``: the total (a number) or the per-process counts (summed). weight None means 1.
    """
    xc, _, shape = _view(x, axis)
    dyc = _channels_first(dy, axis)
    n = float(np.sum(count))
    r = invstd.reshape(shape)
    g = dyc - (sum_dy / n).reshape(shape) - (xc - mean.reshape(shape)) * r * r * (sum_dy_xmu / n).reshape(shape)
    dx = g * r
    if weight is not None:
        dx = dx * weight.reshape(shape)
    return _channels_back(dx, axis).astype(x.dtype)
