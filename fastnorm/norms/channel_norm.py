"""BatchNorm, InstanceNorm and GroupNorm: statistics per channel, per (n, c) and per (n, group).

Each views x as (N, C, L): channels on axis 1 and L = prod(spatial) (BatchNorm also takes channels-last
(*, C) as (M, C, 1)). 16-bit x: data in x's dtype, statistics float32, parameters and running statistics in
x's dtype or float32 (they enter the kernels in float32; results are rounded back once).
"""

from __future__ import annotations

import numpy as np

from .. import _dtypes
from .. import _validation as V
from .. import reference as R
from .._dispatch import backend_of
from .._doc import fill_doc
from .._spec import STAT, AffineGrads, Array, NormStats, OpSpec, Out, Scratch, args, grad, like, ops, register
from ._common import empty_reduction, eval_stats, fill, opt, round_back, stat_outputs, to_stat

BatchNormForward = InstanceNormForward = GroupNormForward = NormStats
BatchNormBackward = InstanceNormBackward = GroupNormBackward = AffineGrads


def _channels(d) -> tuple:
    """(C,): the channel count of x, on axis 1 or (channels-last, ``axis=-1``) the last axis."""
    x, axis = d.x, d.get("axis", 1)
    return (x[-1] if axis in (-1, len(x) - 1) and len(x) > 2 else x[1],)


def _grads() -> tuple:
    return (Out("dx", like("x")), grad("dweight", "weight"), grad("dbias", "bias"))


def _declare(name, spelling, stat_shape, reference, fwd: bool, scratch=()) -> OpSpec:
    outputs = (Out("y", like("x")), Out("mean", stat_shape, STAT), Out("rstd", stat_shape, STAT))
    result = NormStats if fwd else AffineGrads
    return register(OpSpec(name, args(spelling), outputs if fwd else _grads(), result, "channel_norm", reference,
                           scratch=scratch))  # fmt: skip


# Scratch plans, from the (N, C, L) view (``n``, ``c``, ``l``) and BatchNorm's ``training``: float64 moment
# pairs per (n, c) slice, or per row chunk of channels-last data (L = 1: ``_bn_row_chunks``); BatchNorm's
# per-channel coefficients (4 rows of C, padded) in the statistic dtype.
_PAIRS = Scratch("work", lambda d: (d.n * d.c, 2))
_COEF = Scratch("coef", lambda d: (4, d.c + 8), STAT)


def _bn_work(d) -> tuple:
    if not d.training:
        return (1, 2)
    return (d.n * d.c, 2) if d.l > 1 else (_bn_row_chunks(d.n), 5 * d.c)


def _bn_bwd_work(d) -> tuple:
    return (d.n * d.c + d.c, 2) if d.l > 1 else (_bn_row_chunks(d.n) + 1, 2 * d.c)


BATCH_NORM_FWD = _declare(
    "batch_norm_forward",
    "x weight? bias? running_mean?! running_var?! :training=bool :momentum=float :eps=float :axis=int",
    _channels, R.batch_norm_forward, True, (Scratch("work", _bn_work), _COEF),
)  # fmt: skip
BATCH_NORM_BWD = _declare(
    "batch_norm_backward", "dy x mean rstd weight? bias? :training=bool :axis=int", None, R.batch_norm_backward,
    False, (Scratch("work", _bn_bwd_work), _COEF),
)  # fmt: skip
INSTANCE_NORM_FWD = _declare(
    "instance_norm_forward",
    "x weight? bias? running_mean?! running_var?! :use_input_stats=bool :momentum=float :eps=float",
    lambda d: tuple(d.x[:2]), R.instance_norm_forward, True, (_PAIRS,),
)  # fmt: skip
INSTANCE_NORM_BWD = _declare(
    "instance_norm_backward", "dy x mean rstd weight? bias? :use_input_stats=bool", None,
    R.instance_norm_backward, False, (_PAIRS,),
)  # fmt: skip
GROUP_NORM_FWD = _declare(
    "group_norm_forward", "x :num_groups=int weight? bias? :eps=float", lambda d: (d.x[0], d.num_groups),
    R.group_norm_forward, True,
)  # fmt: skip
GROUP_NORM_BWD = _declare(
    "group_norm_backward", "dy x mean rstd :num_groups=int weight? bias?", None, R.group_norm_backward, False,
    (_PAIRS,),
)  # fmt: skip

__all__ = [s.name for s in ops("channel_norm")]  # the public functions below, one per declaration


# ------------------------------------------------------------------------------------------- shared
def _affine(be, op, x, c, weight, bias) -> dict:
    pdt = _dtypes.param_dtypes(x.dtype)
    return {"weight": V.param(be, op, "weight", weight, (c,), pdt), "bias": V.param(be, op, "bias", bias, (c,), pdt)}


def _running_stats(be, op, running_mean, running_var, c, dtype, update, others):
    """Running statistics: both or neither; checked for an in-place update when ``update``, else read.

    Beside 16-bit x they may be in x's dtype or float32 (``_dtypes.param_dtypes``), each on its own."""
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must both be given or both be None")
    if running_mean is None:
        return None, None
    dtypes = _dtypes.param_dtypes(dtype)
    if not update:
        return (
            V.param(be, op, "running_mean", running_mean, (c,), dtypes),
            V.param(be, op, "running_var", running_var, (c,), dtypes),
        )
    given = [V.dtype_of(a) if hasattr(a, "dtype") else None for a in (running_mean, running_var)]
    for name, dt in zip(("running_mean", "running_var"), given):
        if len(dtypes) > 1 and dt is not None and dt not in dtypes:
            raise TypeError(
                f"{op}: {name} has dtype {dt} but must match the input's dtype {np.dtype(dtype).name} or be float32"
            )
    # (a non-array fails in V.inout, with its message)
    rm_dtype, rv_dtype = (dt if dt in dtypes else dtype for dt in given)
    running_mean = V.inout(be, op, "running_mean", running_mean, (c,), rm_dtype, others)
    running_var = V.inout(be, op, "running_var", running_var, (c,), rv_dtype, [*others, ("running_mean", running_mean)])
    return running_mean, running_var


def _statistics_forward(spec, arrays: dict, out, axis: int, mode: tuple, eps_rule, eps, momentum):
    """BatchNorm / InstanceNorm forward: validation, running statistics, outputs, the kernel
    ``(x, weight, bias, running_mean, running_var, y, mean, rstd, *scratch, eps, momentum, update, nt)``
    (the scratch from the declared plan).

    ``mode``: (name, value, what one statistic is over, its count from (N, C, L)): ``update`` (training /
    use_input_stats) needs a count above 1, its absence the running statistics. ``eps_rule(op, eps,
    update)`` checks eps."""
    op = spec.name
    be = backend_of(op, **arrays, out=out)
    x = V.float_input(be, op, "x", arrays["x"])
    ncl = V.split_channels(op, x.shape, axis)
    name, update, per, count = mode
    update = V.flag(op, name, update)
    a = {**arrays, "x": x, **_affine(be, op, x, ncl[1], arrays["weight"], arrays["bias"])}
    eps = eps_rule(op, eps, update)
    momentum = V.scalar(op, "momentum", momentum, finite=False)
    if update and count(ncl) == 1:
        raise ValueError(f"{op}: {name} needs more than 1 {per}, got x of shape {tuple(x.shape)}")
    if not update and (a["running_mean"] is None or a["running_var"] is None):
        raise TypeError(f"{op}: running_mean and running_var are required when {name}=False")
    attrs = {"axis": axis} if spec is BATCH_NORM_FWD else {}
    a["running_mean"], a["running_var"] = _running_stats(
        be,
        op,
        a["running_mean"],
        a["running_var"],
        ncl[1],
        x.dtype,
        update,
        [(k, a[k]) for k in ("x", "weight", "bias")],
    )
    y, mean, rstd = spec.outputs_for(be, out, a, **attrs)
    rm, rv = a["running_mean"], a["running_var"]
    if x.size == 0:
        if not update:
            eval_stats(be, mean, rstd, rm, rv, eps)
        else:
            empty_reduction(be, mean, rstd)
            if spec is INSTANCE_NORM_FWD and ncl[0] == 0 and rm is not None:  # torch: a mean over no instances
                fill(be, rm, np.nan)
                fill(be, rv, np.nan)
        return NormStats(y, mean, rstd)
    sd = be.stat_dtype(x.dtype)
    params = to_stat(be, sd, a["weight"], a["bias"], rm, rv)
    getattr(be.kernels, op)(
        x.reshape(ncl), *(opt(be, p, sd) for p in params), y.reshape(ncl), mean, rstd,
        *spec.scratch_for(be, x.dtype, n=ncl[0], c=ncl[1], l=ncl[2], training=update), eps, momentum, update,
        be.threads(x.size),
    )  # fmt: skip
    if update:
        round_back(be, (rm, rv), params[2:])
    return NormStats(y, mean, rstd)


def _channel_backward(spec, arrays: dict, out, axis: int, plan):
    """Every channel backward: validation, outputs, the kernel
    ``(dy, x, mean, rstd, weight, dx, dweight, dbias, *scratch, *tail, nt)`` and the 16-bit round trip; the
    scratch from the declared plan.

    ``plan((N, C, L)) -> (statistics' shape, tail)`` checks and supplies what is the op's own."""
    op = spec.name
    be = backend_of(op, **arrays, out=out)
    x = V.float_input(be, op, "x", arrays["x"])
    ncl = V.split_channels(op, x.shape, axis)
    stat_shape, tail = plan(ncl)
    c = ncl[1]
    dy = V.required(be, op, "dy", arrays["dy"], x.shape, x.dtype)
    sd = be.stat_dtype(x.dtype)
    mean = V.required(be, op, "mean", arrays["mean"], stat_shape, sd)
    rstd = V.required(be, op, "rstd", arrays["rstd"], stat_shape, sd)
    a = dict(dy=dy, x=x, mean=mean, rstd=rstd, **_affine(be, op, x, c, arrays["weight"], arrays["bias"]))
    dx, dweight, dbias = spec.outputs_for(be, out, a)
    if x.size == 0:
        fill(be, dweight, 0.0)
        fill(be, dbias, 0.0)
        return AffineGrads(dx, dweight, dbias)
    (w32,) = to_stat(be, sd, a["weight"])
    dw32, db32 = stat_outputs(be, sd, dweight, dbias)
    getattr(be.kernels, op)(
        dy.reshape(ncl), x.reshape(ncl), mean, rstd, opt(be, w32, sd), dx.reshape(ncl), opt(be, dw32, sd),
        opt(be, db32, sd), *spec.scratch_for(be, x.dtype, n=ncl[0], c=ncl[1], l=ncl[2]), *tail, be.threads(x.size),
    )  # fmt: skip
    round_back(be, (dweight, dbias), (dw32, db32))
    return AffineGrads(dx, dweight, dbias)


# ------------------------------------------------------------------------------------------- BatchNorm
def _batch_norm_eps(op: str, eps, training: bool) -> float:
    """torch's rule: eps > 0 while training (the variance of a constant channel is 0), >= 0 otherwise."""
    eps = V.scalar(op, "eps", eps, finite=False)
    if training and eps <= 0:
        raise ValueError(f"{op}: eps must be > 0 in training, got {eps!r}")
    if eps < 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps!r}")
    return eps


def _input_stats_eps(op: str, eps, use_input_stats: bool) -> float:
    """InstanceNorm's eps: any float, as torch."""
    return V.scalar(op, "eps", eps, finite=False)


def _bn_row_chunks(m: int) -> int:
    """Row chunks of channels-last BatchNorm statistics over m rows: a function of the shape only (chunks
    of at least 512 rows, at most 64), so the statistics do not depend on the thread count."""
    return max(1, min(64, m // 512))


@fill_doc(BATCH_NORM_FWD)
def batch_norm_forward(
    x: Array,
    weight: Array | None = None,
    bias: Array | None = None,
    running_mean: Array | None = None,
    running_var: Array | None = None,
    *,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    axis: int = 1,
    out: tuple | None = None,
) -> NormStats:
    """BatchNorm, like ``torch.nn.functional.batch_norm``; channel ``axis`` 1 (N, C, *) or -1 (*, C).

    training, per channel over its n values (every axis but the channel axis)::

        mean = sum(x_c) / n,  var = sum((x_c - mean)^2) / n,  rstd = 1 / sqrt(var + eps)
        running_mean <- (1 - momentum) * running_mean + momentum * mean            (in place, if given)
        running_var  <- (1 - momentum) * running_var + momentum * var * n / (n - 1)

    evaluation (``training=False``): mean = running_mean, rstd = 1 / sqrt(running_var + eps) (required,
    not updated). y = (x - mean) * rstd * weight + bias.

    Parameters
    ----------
    x : array
        (N, C, *) with axis=1, any rank >= 2, or (*, C) with axis=-1 (channels-last). 16-bit x (bfloat16,
        float16): statistics accumulated in float64 from the float32-widened values, y rounded once.
    weight, bias : array of shape (C,), optional
        In x's dtype, or float32 beside 16-bit x.
    running_mean, running_var : array of shape (C,), optional
        Both or neither; required in evaluation. In training they are updated in place: C-contiguous,
        aligned, native, writeable, in x's dtype (or float32 beside 16-bit x; updated in float64 and
        rounded once: keep them float32, a bfloat16 running_var loses the small updates).
    training : bool
        A bool (TypeError otherwise), as torch. One value per channel (N * L = 1) in training is a
        ValueError.
    momentum : float
        Any float (outside [0, 1] extrapolates; for torch's ``momentum=None`` cumulative average pass
        1 / batches seen, as ``fastnorm.torch.nn.BatchNorm*`` do).
    eps : float
        > 0 in training, >= 0 in evaluation.
    axis : int
        1 or -1.
    %(out)s

    Returns
    -------
    NormStats
        ``(y, mean, rstd)`` (also ``BatchNormForward``): y like x, mean and rstd (C,) in the statistic dtype,
        what ``batch_norm_backward`` takes in either mode. Empty x (N, C or L zero): nothing is normalized,
        the running statistics are not updated; mean, rstd are (0, NaN) in training and the running
        statistics' in evaluation.
    """
    arrays = dict(x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    mode = ("training", training, "value per channel", lambda ncl: ncl[0] * ncl[2])
    return _statistics_forward(BATCH_NORM_FWD, arrays, out, axis, mode, _batch_norm_eps, eps, momentum)


@fill_doc(BATCH_NORM_BWD)
def batch_norm_backward(
    dy: Array,
    x: Array,
    mean: Array,
    rstd: Array,
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    training: bool = True,
    axis: int = 1,
    out: tuple | None = None,
) -> AffineGrads:
    """Gradients of ``batch_norm_forward`` given ``dy`` and the ``mean``, ``rstd`` it returned.

    With xhat = (x - mean) * rstd and g = dy * weight (dy without weight), per channel over its n values::

        training:   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
        evaluation: dx = rstd * g           (running statistics are constants)
        dweight = sum(dy * xhat),  dbias = sum(dy)

    Parameters
    ----------
    dy, x : array
        As in the forward (same shape and dtype).
    mean, rstd : array of shape (C,)
        Returned by the forward.
    weight, bias : array of shape (C,), optional
        The forward's parameters; ``bias`` only says whether dbias is wanted.
    training, axis :
        As in the forward.
    %(out)s

    Returns
    -------
    AffineGrads
        ``(dx, dweight, dbias)`` (also ``BatchNormBackward``); dweight/dbias in the dtype of weight/bias (sums
        in float64, rounded once), None when absent; bitwise reproducible for a given thread count.
    """

    def plan(ncl):
        return (ncl[1],), (V.flag("batch_norm_backward", "training", training),)

    arrays = dict(dy=dy, x=x, mean=mean, rstd=rstd, weight=weight, bias=bias)
    return _channel_backward(BATCH_NORM_BWD, arrays, out, axis, plan)


# --------------------------------------------------------------------------------------------- InstanceNorm
@fill_doc(INSTANCE_NORM_FWD)
def instance_norm_forward(
    x: Array,
    weight: Array | None = None,
    bias: Array | None = None,
    running_mean: Array | None = None,
    running_var: Array | None = None,
    *,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    out: tuple | None = None,
) -> NormStats:
    """InstanceNorm, like ``torch.nn.functional.instance_norm``: statistics per (n, c) over the L positions.

    use_input_stats, per instance (n, c)::

        mean = sum(x_nc) / L,  var = sum((x_nc - mean)^2) / L,  rstd = 1 / sqrt(var + eps)
        running_mean <- (1 - momentum) * running_mean + momentum * mean_n(mean)       (in place, if given)
        running_var  <- (1 - momentum) * running_var + momentum * mean_n(var * L / (L - 1))

    else: mean[n, c] = running_mean[c], rstd[n, c] = 1 / sqrt(running_var[c] + eps) (required).
    y = (x - mean) * rstd * weight[c] + bias[c].

    Parameters
    ----------
    x : array
        (N, C, *), any rank >= 2 (L = prod(spatial) must not be 1 with use_input_stats, as torch).
    weight, bias, running_mean, running_var : array of shape (C,), optional
        As ``batch_norm_forward``'s (16-bit x: in x's dtype or float32).
    use_input_stats : bool
        A bool, as torch.
    momentum, eps : float
        Any float, as torch.
    %(out)s

    Returns
    -------
    NormStats
        ``(y, mean, rstd)`` (also ``InstanceNormForward``): mean, rstd (N, C) in the statistic dtype. Empty
        x: nothing is normalized; mean, rstd are (0, NaN) with use_input_stats, else the running statistics'.
        As torch, running statistics are left as they are when L = 0 and become NaN when N = 0 (the update
        is a mean over the N instances).
    """
    arrays = dict(x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    mode = ("use_input_stats", use_input_stats, "spatial value per instance", lambda ncl: ncl[2])
    return _statistics_forward(INSTANCE_NORM_FWD, arrays, out, 1, mode, _input_stats_eps, eps, momentum)


@fill_doc(INSTANCE_NORM_BWD)
def instance_norm_backward(
    dy: Array,
    x: Array,
    mean: Array,
    rstd: Array,
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    use_input_stats: bool = True,
    out: tuple | None = None,
) -> AffineGrads:
    """Gradients of ``instance_norm_forward`` given ``dy`` and the ``mean``, ``rstd`` (N, C) it returned.

    With xhat = (x - mean) * rstd and g = dy * weight[c], per instance over its L values::

        use_input_stats: dx = rstd * (g - mean(g) - xhat * mean(g * xhat));  else dx = rstd * g
        dweight[c] = sum_{n, l} dy * xhat,  dbias[c] = sum_{n, l} dy

    Parameters
    ----------
    dy, x : array, shape (N, C, *)
    mean, rstd : array of shape (N, C)
    weight, bias : array of shape (C,), optional
    use_input_stats : bool
    %(out)s

    Returns
    -------
    AffineGrads
        ``(dx, dweight, dbias)`` (also ``InstanceNormBackward``).
    """

    def plan(ncl):
        return ncl[:2], (V.flag("instance_norm_backward", "use_input_stats", use_input_stats),)

    arrays = dict(dy=dy, x=x, mean=mean, rstd=rstd, weight=weight, bias=bias)
    return _channel_backward(INSTANCE_NORM_BWD, arrays, out, 1, plan)


# --------------------------------------------------------------------------------------------- GroupNorm
def _num_groups(op, num_groups, c):
    g = V.integer(op, "num_groups", num_groups, low=1)
    if c % g:
        raise ValueError(f"{op}: the {c} channels are not divisible by num_groups={g}")
    return g


@fill_doc(GROUP_NORM_FWD)
def group_norm_forward(
    x: Array,
    num_groups: int,
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    eps: float = 1e-5,
    out: tuple | None = None,
) -> NormStats:
    """GroupNorm, like ``torch.nn.functional.group_norm``: statistics per (n, group) of C/num_groups channels.

    Per (n, g) over its C/G * L values::

        mean = sum(x_ng) / (C/G * L),  var = mean((x_ng - mean)^2),  rstd = 1 / sqrt(var + eps)
        y = (x - mean) * rstd * weight[c] + bias[c]

    Parameters
    ----------
    x : array
        (N, C, *), any rank >= 2, C divisible by num_groups. 16-bit x: statistics from the float32-widened
        values, y rounded once.
    num_groups : int
        G >= 1.
    weight, bias : array of shape (C,), optional
        In x's dtype, or float32 beside 16-bit x.
    eps : float
        Any float, as in torch.
    %(out)s

    Returns
    -------
    NormStats
        ``(y, mean, rstd)`` (also ``GroupNormForward``): mean, rstd (N, num_groups) in the statistic dtype.
        Empty groups (C = 0 or L = 0) give mean 0 and rstd NaN, as torch.
    """
    op = "group_norm_forward"
    be = backend_of(op, x=x, weight=weight, bias=bias, out=out)
    x = V.float_input(be, op, "x", x)
    ncl = V.split_channels(op, x.shape, 1)
    g = _num_groups(op, num_groups, ncl[1])
    a = {"x": x, **_affine(be, op, x, ncl[1], weight, bias)}
    eps = V.scalar(op, "eps", eps, finite=False)
    y, mean, rstd = GROUP_NORM_FWD.outputs_for(be, out, a, num_groups=g)
    if x.size == 0:
        empty_reduction(be, mean, rstd)
        return NormStats(y, mean, rstd)
    sd = be.stat_dtype(x.dtype)
    w32, b32 = to_stat(be, sd, a["weight"], a["bias"])
    be.kernels.group_norm_forward(
        x.reshape(ncl), opt(be, w32, sd), opt(be, b32, sd), y.reshape(ncl), mean, rstd, eps, be.threads(x.size)
    )
    return NormStats(y, mean, rstd)


@fill_doc(GROUP_NORM_BWD)
def group_norm_backward(
    dy: Array,
    x: Array,
    mean: Array,
    rstd: Array,
    num_groups: int,
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    out: tuple | None = None,
) -> AffineGrads:
    """Gradients of ``group_norm_forward`` given ``dy`` and the ``mean``, ``rstd`` (N, num_groups) it gave.

    With xhat = (x - mean) * rstd and g = dy * weight[c], per (n, group) over its values::

        dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dweight[c] = sum dy * xhat,  dbias[c] = sum dy

    Parameters
    ----------
    dy, x : array, shape (N, C, *)
    mean, rstd : array of shape (N, num_groups)
    num_groups : int
    weight, bias : array of shape (C,), optional
    %(out)s

    Returns
    -------
    AffineGrads
        ``(dx, dweight, dbias)`` (also ``GroupNormBackward``); dweight/dbias None when weight/bias are None,
        bitwise reproducible. For an empty x, dweight = dbias = 0 (torch's kernel gives NaN for dweight when
        the spatial size is 0: 0 * rstd with rstd NaN; a sum over no elements is 0).
    """

    def plan(ncl):
        return (ncl[0], _num_groups("group_norm_backward", num_groups, ncl[1])), ()

    arrays = dict(dy=dy, x=x, mean=mean, rstd=rstd, weight=weight, bias=bias)
    return _channel_backward(GROUP_NORM_BWD, arrays, out, 1, plan)
