"""BatchNorm split into stages: the building blocks of a synchronized BatchNorm across processes.

A data-parallel BatchNorm computes per-process statistics, exchanges them, and normalizes every process's
batch with the statistics of the concatenated batch; its backward does the same with two per-channel
sums. Each stage here is one fused kernel (CPU: Cython + OpenMP; GPU: Numba-CUDA), named after torch's
own stage op::

    mean, m2, count = batch_norm_stats(x)                       # local, per channel
    # ... gather (mean, m2, count) from every process: rows of means, m2s; counts ...
    mean, invstd = batch_norm_gather_stats(means, m2s, counts, running_mean, running_var)
    y = batch_norm_elemt(x, mean, invstd, weight, bias)
    sum_dy, sum_dy_xmu, dweight, dbias = batch_norm_backward_reduce(dy, x, mean, invstd, weight)
    # ... sum sum_dy, sum_dy_xmu over the processes ...
    dx = batch_norm_backward_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, counts)

Over one process the composition is ``batch_norm_forward`` / ``batch_norm_backward``. Statistics are
(mean, M2 = sum of squared deviations, count), combined with Chan's parallel-variance formula, so they stay
accurate when the mean is large against the spread and processes may hold unequal or empty batches.
Channel ``axis`` 1 ((N, C, *)) or -1 (channels-last (*, C)); float32, float64, and 16-bit storage
(bfloat16 as ``ml_dtypes.bfloat16``, float16): 16-bit data (x, dy, y, dx) keeps its dtype, the
statistics and per-channel sums (mean, m2, invstd, sum_dy, sum_dy_xmu) are float32 and accumulate in
float64, weight/bias may be x's dtype or float32 (they enter the kernels in float32), dweight/dbias come
back in weight's dtype, and every 16-bit output is the float32 result rounded once to nearest even. Every
op validates before any kernel runs and accepts ``out=`` buffers, like the other fastnorm ops.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import _dtypes
from . import _validation as V
from . import reference as R
from ._dispatch import backend_of
from ._spec import DATA, STAGES, STAT, OpSpec, Out, Scratch, args, channels, exports, like, register
from .norms._common import opt, round_back, stat_outputs, to_stat

Array = Any  # numpy.ndarray on the CPU; any object with __cuda_array_interface__ on the GPU

_DTYPES = _dtypes.FULL


class BatchNormStats(NamedTuple):
    mean: Array
    m2: Array
    count: int


class BatchNormGatherStats(NamedTuple):
    mean: Array
    invstd: Array


class BatchNormBackwardReduce(NamedTuple):
    sum_dy: Array
    sum_dy_xmu: Array
    dweight: Array | None
    dbias: Array


def _declare(name, arg_spec, outputs, result, primary="x", scratch=()) -> OpSpec:
    """A stage; the data stages take 16-bit x, ``batch_norm_gather_stats`` takes statistics (never 16-bit)."""
    return register(OpSpec(name, args(arg_spec), outputs, result, "batch_norm_stages", getattr(R, name),
                           primary=primary, group=STAGES, half=primary == "x", scratch=scratch))  # fmt: skip


def _row_work(per_row: int) -> Scratch:
    """float64 scratch of the reduction kernels, from the (N, C, L) view and the thread count: (N*C, 2)
    per-slice pairs for L > 1, else one partial row of ``per_row`` * C values per chunk of rows (as many
    chunks as threads, at most N)."""
    return Scratch("work", lambda d: (d.n * d.c, 2) if d.l > 1 else (max(1, min(d.threads, d.n)), per_row * d.c))


_COEF = Scratch("coef", lambda d: (4, d.c), STAT)  # the elementwise stages' per-channel coefficients


def _gathered(d) -> tuple:
    """(C,) of the gathered (P, C) statistics."""
    return (d.means[1],)


STATS = _declare("batch_norm_stats", "x :axis=int", (Out("mean", channels, STAT), Out("m2", channels, STAT)),
                 BatchNormStats, scratch=(_row_work(5),))  # fmt: skip
GATHER = _declare(
    "batch_norm_gather_stats",
    "means m2s counts running_mean?! running_var?! :momentum=float :eps=float",
    (Out("mean", _gathered, DATA), Out("invstd", _gathered, DATA)),
    BatchNormGatherStats,
    primary="means",
)
ELEMT = _declare(
    "batch_norm_elemt", "x mean invstd weight? bias? :axis=int", (Out("y", like("x")),), None, scratch=(_COEF,)
)
BACKWARD_REDUCE = _declare(
    "batch_norm_backward_reduce",
    "dy x mean invstd weight? :axis=int",
    (
        Out("sum_dy", channels, STAT),
        Out("sum_dy_xmu", channels, STAT),
        Out("dweight", channels, "weight", when="weight"),
        Out("dbias", channels, ("weight", STAT)),
    ),
    BatchNormBackwardReduce,
    scratch=(_row_work(2),),
)
BACKWARD_ELEMT = _declare("batch_norm_backward_elemt", "dy x mean invstd weight? sum_dy sum_dy_xmu :count=float "
                          ":axis=int", (Out("dx", like("x")),), None, scratch=(_COEF,))  # fmt: skip

__all__ = exports("batch_norm_stages", "BatchNormStats", "BatchNormGatherStats", "BatchNormBackwardReduce")


def _input(be, op: str, name: str, a, dtype=None):
    """A float32/float64 input (statistics: there are no 16-bit ones), C-contiguous (copied if not)."""
    dt = None if a is None else V.dtype_of(a)
    if dt is not None and dt in be.float_dtypes and dt not in _DTYPES:
        raise TypeError(f"{op}: {name} has dtype {dt.name}; expected one of float32, float64")
    return V.float_input(be, op, name, a, dtype, half=False)


def _total_count(op: str, count) -> float:
    """``count`` (a number, or a 1-D array of per-process counts on the host) as one float > 0."""
    if isinstance(count, (int, float, np.integer, np.floating)) and not isinstance(count, bool):
        total = float(count)
    else:
        try:
            a = np.asarray(count)
        except Exception:
            a = None
        if a is None or a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise TypeError(
                f"{op}: count must be a number or a 1-D host array of per-process counts, got {type(count).__name__}"
            )
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"{op}: count must hold finite counts >= 0")
        total = float(np.sum(a, dtype=np.float64))
    if not math.isfinite(total) or total <= 0:
        raise ValueError(f"{op}: count must be finite and > 0 (values per channel over every process), got {total}")
    return total


# ------------------------------------------------------------------------------------------- forward
def batch_norm_stats(x: Array, *, axis: int = 1, out: tuple | None = None) -> BatchNormStats:
    """Per-channel statistics of the local batch (``torch.batch_norm_stats``, with M2 instead of invstd).

    Over the n values x_c of channel c (every axis but the channel axis)::

        mean = sum(x_c) / n,   m2 = sum((x_c - mean)^2),   count = n

    accumulated in float64 around shifted values and merged with Chan's formula (accurate when the mean
    is large against the spread). An empty batch (n = 0) gives mean = m2 = 0, count = 0.

    Parameters
    ----------
    x : array (N, C, *) with axis=1, or (*, C) with axis=-1 (channels-last); float32, float64, bfloat16
        or float16.
    axis : 1 or -1, the channel axis.
    out : optional (mean, m2) buffers of shape (C,) and the statistic dtype (entries may be None).

    Returns
    -------
    BatchNormStats(mean, m2, count): mean, m2 of shape (C,) in x's dtype (float32 for 16-bit x); count a
    Python int.
    """
    op = "batch_norm_stats"
    be = backend_of(op, x=x, out=out)
    x = V.float_input(be, op, "x", x)
    n, c, length = V.split_channels(op, x.shape, axis)
    mean, m2 = V.outputs(be, op, out, STATS.layout_for(be, dict(x=x), axis=axis), (x,))
    nt = be.threads(n * c * length)
    (work,) = STATS.scratch_for(be, x.dtype, n=n, c=c, l=length, threads=nt)
    be.kernels.batch_norm_stats(x.reshape(n, c, length), mean, m2, work, nt)
    return BatchNormStats(mean, m2, int(n * length))


def _counts(be, op: str, counts, p: int):
    """Per-process counts as a float64 (P,) array on the backend (a host array is copied to the GPU)."""
    from ._dispatch import on_cuda

    if on_cuda(counts):
        if be.name == "cpu":
            raise TypeError(f"{op}: counts is on the GPU but means is on the CPU; move them to one device")
        if V.dtype_of(counts) != np.float64:
            raise TypeError(f"{op}: counts on the GPU must be a float64 array, got {counts.dtype}")
        counts = be.asarray(counts)
        V.check_shape(op, "counts", counts, (p,))
        return counts
    try:
        a = np.asarray(counts)
    except Exception:
        a = None
    if a is None or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"{op}: counts must be a 1-D array of numbers, got {type(counts).__name__}")
    V.check_shape(op, "counts", a, (p,))
    a = np.ascontiguousarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{op}: counts must be finite and >= 0, got {a.tolist()}")
    if a.sum() <= 1:
        raise ValueError(
            f"{op}: training needs more than 1 value per channel over all processes, got counts {a.tolist()}"
        )
    if be.name == "cpu":
        return a
    from numba import cuda

    return cuda.to_device(a) if not be._c.SIM else be._c.SimArray(a)


def batch_norm_gather_stats(
    means: Array,
    m2s: Array,
    counts: Array,
    running_mean: Array | None = None,
    running_var: Array | None = None,
    *,
    momentum: float = 0.1,
    eps: float = 1e-5,
    out: tuple | None = None,
) -> BatchNormGatherStats:
    """Combine P processes' statistics into the batch statistics (``torch.batch_norm_gather_stats_with_counts``).

    With rows p of ``means``, ``m2s`` (from ``batch_norm_stats``) and n_p = counts[p], n = sum_p n_p,
    in float64 (Chan et al.'s parallel variance; processes with n_p = 0 contribute nothing)::

        mean = sum_p n_p mean_p / n
        M2   = sum_p (m2_p + n_p (mean_p - mean)^2),     invstd = 1 / sqrt(M2 / n + eps)
        running_mean <- (1 - momentum) running_mean + momentum mean              (in place, if given)
        running_var  <- (1 - momentum) running_var  + momentum M2 / (n - 1)      (unbiased, in place)

    Parameters
    ----------
    means, m2s : arrays (P, C), float32 or float64 (the statistic dtype of the data: float32 for 16-bit x).
    counts : (P,) per-process counts (host array of numbers; on the GPU also a float64 device array,
        whose values are not checked). n must exceed 1.
    running_mean, running_var : optional (C,) arrays of means' dtype, or bfloat16/float16 beside float32
        means (a 16-bit module's buffers: updated in float64, stored in float32, rounded once more to
        their dtype; both 16-bit ones in one format), updated in place (both or neither).
    momentum : in [0, 1].
    eps : > 0.
    out : optional (mean, invstd) buffers.

    Returns
    -------
    BatchNormGatherStats(mean, invstd), each (C,) in means' dtype.
    """
    op = "batch_norm_gather_stats"
    be = backend_of(op, means=means, m2s=m2s, running_mean=running_mean, running_var=running_var, out=out)
    means = _input(be, op, "means", means)
    if len(means.shape) != 2:
        raise ValueError(f"{op}: means must be a (P, C) array (one row per process), got shape {tuple(means.shape)}")
    p, c = means.shape
    if p < 1 or c < 1:
        raise ValueError(f"{op}: means must have at least one process and one channel, got shape {(p, c)}")
    m2s = V.required(be, op, "m2s", m2s, (p, c), means.dtype)
    momentum = V.scalar(op, "momentum", momentum, low=0.0, high=1.0)
    eps = V.scalar(op, "eps", eps, low=0.0, low_open=True)
    counts = _counts(be, op, counts, p)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must both be given or both be None")
    if running_mean is not None:
        rm_dtype, rv_dtype = _running_dtype(running_mean, means), _running_dtype(running_var, means)
        if rm_dtype != rv_dtype and rm_dtype in _dtypes.HALF and rv_dtype in _dtypes.HALF:
            raise TypeError(
                f"{op}: running_var has dtype {rv_dtype.name} but running_mean has {rm_dtype.name}; 16-bit running "
                "statistics must share one format"
            )
        others = [("means", means), ("m2s", m2s)]
        running_mean = V.inout(be, op, "running_mean", running_mean, (c,), rm_dtype, others)
        others.append(("running_mean", running_mean))
        running_var = V.inout(be, op, "running_var", running_var, (c,), rv_dtype, others)
    specs = GATHER.layout_for(be, dict(means=means))
    mean, invstd = V.outputs(be, op, out, specs, (means, m2s, running_mean, running_var))
    running32 = to_stat(be, means.dtype, running_mean, running_var)
    be.kernels.batch_norm_gather_stats(
        means, m2s, counts, *(opt(be, a, means.dtype) for a in running32), mean, invstd, eps, momentum, 1
    )
    round_back(be, (running_mean, running_var), running32)
    return BatchNormGatherStats(mean, invstd)


def _running_dtype(a, means):
    """The dtype a running statistic is checked against: its own when it is 16-bit beside float32 means,
    else means' (a mismatch is then V.inout's TypeError)."""
    dt = V.dtype_of(a) if hasattr(a, "dtype") else None
    return dt if means.dtype == _dtypes.FLOAT32 and dt in _dtypes.HALF else means.dtype


def _stats_args(be, op, x, mean, invstd, weight, axis):
    """x and the per-channel arrays every later stage takes: mean, invstd in the statistic dtype ``sd``;
    weight in x's dtype or (16-bit x) float32."""
    x = V.float_input(be, op, "x", x)
    n, c, length = V.split_channels(op, x.shape, axis)
    sd = be.stat_dtype(x.dtype)
    mean = V.required(be, op, "mean", mean, (c,), sd)
    invstd = V.required(be, op, "invstd", invstd, (c,), sd)
    weight = V.param(be, op, "weight", weight, (c,), _dtypes.param_dtypes(x.dtype))
    return x, n, c, length, sd, mean, invstd, weight


def batch_norm_elemt(
    x: Array,
    mean: Array,
    invstd: Array,
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    axis: int = 1,
    out: Array | None = None,
) -> Array:
    """Normalize with given statistics (``torch.batch_norm_elemt``)::

        y = (x - mean) * invstd * weight + bias            (per channel; weight 1, bias 0 when None)

    Parameters
    ----------
    x : (N, C, *) with axis=1 or (*, C) with axis=-1; float32, float64, bfloat16 or float16.
    mean, invstd : (C,) in the statistic dtype (x's; float32 for 16-bit x), from ``batch_norm_gather_stats``.
    weight, bias : optional (C,), x's dtype or (16-bit x) float32.
    out : optional y buffer of x's shape and dtype.

    Returns
    -------
    y, of x's shape and dtype.
    """
    op = "batch_norm_elemt"
    be = backend_of(op, x=x, mean=mean, invstd=invstd, weight=weight, bias=bias, out=out)
    x, n, c, length, sd, mean, invstd, weight = _stats_args(be, op, x, mean, invstd, weight, axis)
    bias = V.param(be, op, "bias", bias, (c,), _dtypes.param_dtypes(x.dtype))
    (y,) = V.outputs(be, op, out, ELEMT.layout_for(be, dict(x=x)), (x, mean, invstd, weight, bias))
    be.kernels.batch_norm_elemt(
        x.reshape(n, c, length),
        mean,
        invstd,
        *(opt(be, p, sd) for p in to_stat(be, sd, weight, bias)),
        y.reshape(n, c, length),
        *ELEMT.scratch_for(be, x.dtype, c=c),
        be.threads(n * c * length),
    )
    return y


# ------------------------------------------------------------------------------------------- backward
def batch_norm_backward_reduce(
    dy: Array,
    x: Array,
    mean: Array,
    invstd: Array,
    weight: Array | None = None,
    *,
    axis: int = 1,
    out: tuple | None = None,
) -> BatchNormBackwardReduce:
    """Per-channel sums of the local batch for the backward (``torch.batch_norm_backward_reduce``)::

        sum_dy = sum(dy),   sum_dy_xmu = sum(dy * (x - mean))
        dweight = sum_dy_xmu * invstd   (None without weight),   dbias = sum_dy

    dweight and dbias are this process's share of the parameter gradients (data parallelism sums or
    averages them over the processes, as for any parameter); sum_dy and sum_dy_xmu are to be summed over
    the processes and passed to ``batch_norm_backward_elemt``. Accumulated in float64, fixed order.

    Parameters
    ----------
    dy, x : (N, C, *) with axis=1 or (*, C) with axis=-1; float32, float64, bfloat16 or float16.
    mean, invstd : (C,) in the statistic dtype (the statistics the forward normalized with).
    weight : optional (C,), x's dtype or (16-bit x) float32; only says whether dweight is wanted and
        which dtype dweight and dbias have.
    out : optional (sum_dy, sum_dy_xmu, dweight, dbias) buffers of shape (C,).

    Returns
    -------
    BatchNormBackwardReduce(sum_dy, sum_dy_xmu, dweight, dbias), each (C,): sum_dy, sum_dy_xmu in the
    statistic dtype (x's; float32 for 16-bit x); dweight, dbias in weight's dtype (dbias in the statistic
    dtype without weight).
    """
    op = "batch_norm_backward_reduce"
    be = backend_of(op, dy=dy, x=x, mean=mean, invstd=invstd, weight=weight, out=out)
    x, n, c, length, sd, mean, invstd, weight = _stats_args(be, op, x, mean, invstd, weight, axis)
    dy = V.required(be, op, "dy", dy, x.shape, x.dtype)
    specs = BACKWARD_REDUCE.layout_for(be, dict(x=x, weight=weight), axis=axis)
    sum_dy, sum_dy_xmu, dweight, dbias = V.outputs(be, op, out, specs, (dy, x, mean, invstd, weight))
    nt = be.threads(n * c * length)
    (work,) = BACKWARD_REDUCE.scratch_for(be, x.dtype, n=n, c=c, l=length, threads=nt)
    grads32 = stat_outputs(be, sd, dweight, dbias)
    be.kernels.batch_norm_backward_reduce(
        dy.reshape(n, c, length),
        x.reshape(n, c, length),
        mean,
        invstd,
        sum_dy,
        sum_dy_xmu,
        *(opt(be, g, sd) for g in grads32),
        work,
        nt,
    )
    round_back(be, (dweight, dbias), grads32)
    return BatchNormBackwardReduce(sum_dy, sum_dy_xmu, dweight, dbias)


def batch_norm_backward_elemt(
    dy: Array,
    x: Array,
    mean: Array,
    invstd: Array,
    weight: Array | None,
    sum_dy: Array,
    sum_dy_xmu: Array,
    count,
    *,
    axis: int = 1,
    out: Array | None = None,
) -> Array:
    """dx of BatchNorm from the per-channel sums over every process (``torch.batch_norm_backward_elemt``)::

        dx = invstd * weight * (dy - sum_dy / n - (x - mean) * invstd^2 * sum_dy_xmu / n)

    where n = ``count`` is the number of values per channel over every process.

    Parameters
    ----------
    dy, x : (N, C, *) with axis=1 or (*, C) with axis=-1; float32, float64, bfloat16 or float16.
    mean, invstd : (C,) in the statistic dtype (float32 for 16-bit x), the statistics of the forward.
    weight : (C,) in x's dtype or (16-bit x) float32, or None (1).
    sum_dy, sum_dy_xmu : (C,) in the statistic dtype, ``batch_norm_backward_reduce``'s sums summed over
        processes.
    count : the total n (a number > 0), or a 1-D host array of per-process counts (summed).
    out : optional dx buffer.

    Returns
    -------
    dx, of x's shape and dtype.
    """
    op = "batch_norm_backward_elemt"
    be = backend_of(
        op, dy=dy, x=x, mean=mean, invstd=invstd, weight=weight, sum_dy=sum_dy, sum_dy_xmu=sum_dy_xmu, out=out
    )
    x, n, c, length, sd, mean, invstd, weight = _stats_args(be, op, x, mean, invstd, weight, axis)
    dy = V.required(be, op, "dy", dy, x.shape, x.dtype)
    sum_dy = V.required(be, op, "sum_dy", sum_dy, (c,), sd)
    sum_dy_xmu = V.required(be, op, "sum_dy_xmu", sum_dy_xmu, (c,), sd)
    total = _total_count(op, count)
    specs = BACKWARD_ELEMT.layout_for(be, dict(x=x))
    (dx,) = V.outputs(be, op, out, specs, (dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu))
    (w32,) = to_stat(be, sd, weight)
    be.kernels.batch_norm_backward_elemt(
        dy.reshape(n, c, length),
        x.reshape(n, c, length),
        mean,
        invstd,
        opt(be, w32, sd),
        sum_dy,
        sum_dy_xmu,
        dx.reshape(n, c, length),
        *BACKWARD_ELEMT.scratch_for(be, x.dtype, c=c),
        total,
        be.threads(n * c * length),
    )
    return dx
