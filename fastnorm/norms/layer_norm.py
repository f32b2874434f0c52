"""LayerNorm and RMSNorm over the trailing dims of x, and the row launchers the fused add + norm ops share.

A row op views x as (M, N) rows of N = prod(x.shape[-normalized_ndim:]) elements. The launchers below
validate, allocate from the declaration and call the row kernels for the plain ops (x) and the fused
residual-add ops (x + residual -> h; the backward takes the extra ``dh``) alike.
"""

from __future__ import annotations

import numpy as np

from .. import _dtypes
from .. import _validation as V
from .. import reference as R
from .._backend import host
from .._dispatch import backend_of
from .._doc import fill_doc
from .._spec import (
    STAT,
    AffineGrads,
    Array,
    NormStats,
    OpSpec,
    Out,
    ScaleGrads,
    ScaleStats,
    args,
    grad,
    lead,
    like,
    ops,
    register,
)
from ._common import empty_reduction, fill, opt, partials, put, round_back, stat_outputs, to_stat

LayerNormForward = NormStats
LayerNormBackward = AffineGrads
RMSNormForward = ScaleStats
RMSNormBackward = ScaleGrads


def declare_rows(
    name: str, family: str, stats: tuple, params: tuple, results: tuple, references: tuple, fused: bool = False
) -> tuple[OpSpec, OpSpec]:
    """Register the forward and backward declarations of row op ``name`` (``<name>_forward/_backward``).

    forward ``x [residual] <params>? :normalized_ndim :eps -> y [h] <stats>`` (y, h like x; the statistics
    of shape ``lead`` in the statistic dtype); backward ``dy [dh?] x|h <stats> <params>? :normalized_ndim ->
    dx d<param>`` (dx like its primary input, a parameter's gradient only when the parameter is given).
    ``fused``: the residual-add variant (input ``residual``, output ``h``, the backward on h and dh)."""
    p, data = ("h", "x residual") if fused else ("x", "x")
    optional = " ".join(f"{k}?" for k in params)
    fwd_out = (Out("y", like("x")), *[Out("h", like("x"))] * fused, *(Out(k, lead, STAT) for k in stats))
    bwd_args = " ".join(("dy", *["dh?"] * fused, p, *stats, optional, ":normalized_ndim=int"))
    bwd_out = (Out("dx", like(p)), *(grad(f"d{k}", k) for k in params))
    return (
        register(OpSpec(f"{name}_forward", args(f"{data} {optional} :normalized_ndim=int :eps=float"), fwd_out,
                        results[0], family, references[0])),
        register(OpSpec(f"{name}_backward", args(bwd_args), bwd_out, results[1], family, references[1], primary=p)),
    )  # fmt: skip


LAYER_NORM_FWD, LAYER_NORM_BWD = declare_rows(
    "layer_norm", "layer_norm", ("mean", "rstd"), ("weight", "bias"), (NormStats, AffineGrads),
    (R.layer_norm_forward, R.layer_norm_backward),
)  # fmt: skip
RMS_NORM_FWD, RMS_NORM_BWD = declare_rows(
    "rms_norm", "layer_norm", ("rstd",), ("weight",), (ScaleStats, ScaleGrads),
    (R.rms_norm_forward, R.rms_norm_backward),
)  # fmt: skip

__all__ = [s.name for s in ops("layer_norm")]  # the public functions below, one per declaration

_PARAMS = ("weight", "bias")
_STATS = ("mean", "rstd")


# ----------------------------------------------------------------------------------------- launchers
def rows_forward(spec: OpSpec, arrays: dict, eps, normalized_ndim, out):
    """A row forward (LayerNorm, RMSNorm, and their fused add variants with ``residual``).

    ``arrays``: the public arguments by name in the declared order. The kernel takes the data inputs as
    (M, N), the parameters (N,) in the statistic dtype, the data outputs (M, N), the statistics (M,), eps
    and the thread count."""
    op = spec.name
    be = backend_of(op, **arrays, out=out)
    if be.row_calls is not None and (done := be.row_calls.forward(be, spec, arrays, eps, normalized_ndim, out)):
        return done
    x = V.float_input(be, op, "x", arrays["x"])
    _, norm, m, n = V.split_rows(op, x.shape, normalized_ndim)
    a = {"x": x}
    if "residual" in arrays:
        a["residual"] = V.required(be, op, "residual", arrays["residual"], x.shape, x.dtype)
    params = [k for k in _PARAMS if k in arrays]
    for k in params:
        a[k] = V.param(be, op, k, arrays[k], norm, _dtypes.param_dtypes(x.dtype))
    eps = V.scalar(op, "eps", eps, finite=False)
    res = spec.outputs_for(be, out, a, normalized_ndim=normalized_ndim)
    k = len(a) - len(params)  # data inputs (x[, residual]) = data outputs (y[, h])
    data, stats = res[:k], res[k:]
    if m * n == 0:
        empty_reduction(be, *([None] * (2 - len(stats)) + stats))
        return spec.result(*res)
    sd = be.stat_dtype(x.dtype)
    rows = [x.reshape(m, n)] if k == 1 else [x.reshape(m, n), a["residual"].reshape(m, n)]
    for p in to_stat(be, sd, *[a[name] for name in params]):
        rows.append(opt(be, p, sd, n))
    for t in data:
        rows.append(t.reshape(m, n))
    for s in stats:
        rows.append(s.reshape(m))
    getattr(be.kernels, op)(*rows, eps, be.threads(m * n))
    return spec.result(*res)


def rows_backward(spec: OpSpec, arrays: dict, normalized_ndim, out):
    """A row backward (the gradients of ``rows_forward``'s ops; the fused ones take ``dh`` and ``h``).

    The kernel takes dy[, dh], x (or h) as (M, N), the statistics (M,), the weight (N,) in the statistic
    dtype, dx (M, N), the parameter gradients (N,) in the statistic dtype, two partial-row scratch arrays
    per gradient and the thread count."""
    op, p = spec.name, spec.primary
    be = backend_of(op, **arrays, out=out)
    if be.row_calls is not None and (done := be.row_calls.backward(be, spec, arrays, normalized_ndim, out)):
        return done
    x = V.float_input(be, op, p, arrays[p])
    lead_, norm, m, n = V.split_rows(op, x.shape, normalized_ndim, name=p)
    a = {"dy": V.required(be, op, "dy", arrays["dy"], x.shape, x.dtype)}
    if "dh" in arrays:
        a["dh"] = V.param(be, op, "dh", arrays["dh"], x.shape, x.dtype)
    a[p] = x
    sd = be.stat_dtype(x.dtype)
    stats = [k for k in _STATS if k in arrays]
    for k in stats:
        a[k] = V.required(be, op, k, arrays[k], lead_, sd)
    for k in _PARAMS:
        if k in arrays:
            a[k] = V.param(be, op, k, arrays[k], norm, _dtypes.param_dtypes(x.dtype))
    res = spec.outputs_for(be, out, a, normalized_ndim=normalized_ndim)
    dx, grads = res[0], res[1:]
    if m * n == 0:
        for g in grads:
            fill(be, g, 0.0)
        return spec.result(*res)
    nt = be.threads(m * n)
    (w,) = to_stat(be, sd, a["weight"])
    g32 = stat_outputs(be, sd, *grads)
    kargs = [a["dy"].reshape(m, n)]
    if "dh" in a:
        kargs.append(opt(be, a["dh"], x.dtype, (m, n)))
    kargs.append(x.reshape(m, n))
    for k in stats:
        kargs.append(a[k].reshape(m))
    kargs += (opt(be, w, sd, n), dx.reshape(m, n))
    for g in g32:
        kargs.append(opt(be, g, sd, n))
    rows = be.kernels.bwd_chunks(m, n) if be.on_host else nt  # the CPU kernels' chunks (a function of the shape)
    for slot, g in enumerate(grads):
        kargs += partials(be, g is not None, rows, n, sd, slot)
    getattr(be.kernels, op)(*kargs, nt)
    round_back(be, grads, g32)
    if n == 1 and "mean" in a:
        one = _layer_norm_dx_one(be, a["dy"], x, a["mean"], a["rstd"], a["weight"])
        if a.get("dh") is not None:
            one = one + host(be, a["dh"]).reshape(-1).astype(one.dtype)
        put(be, dx, one.astype(V.dtype_of(x)).reshape(x.shape))
    return spec.result(*res)


def _layer_norm_dx_one(be, dy, x, mean, rstd, weight) -> np.ndarray:
    """dx of rows of one element, flat, in the statistic dtype: xhat = 0 and g - mean(g) = 0 exactly, so
    dx = 0 (NaN where an input is not finite, as torch); the kernel's rounding of mean(g) need not cancel g
    exactly."""
    sd = be.stat_dtype(V.dtype_of(x))
    dy, x = host(be, dy).reshape(-1).astype(sd), host(be, x).reshape(-1).astype(sd)
    mean, rstd = host(be, mean).reshape(-1), host(be, rstd).reshape(-1)
    with np.errstate(all="ignore"):
        g = dy if weight is None else dy * host(be, weight).reshape(-1).astype(sd)
        xhat = (x - mean) * rstd
        return (rstd * ((g - g) - xhat * (g * xhat))).astype(sd)


# ------------------------------------------------------------------------------------------- LayerNorm
@fill_doc(LAYER_NORM_FWD)
def layer_norm_forward(
    x: Array,
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    eps: float = 1e-5,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> NormStats:
    """LayerNorm over the last ``normalized_ndim`` dims, like ``torch.nn.functional.layer_norm``.

    Per row r of N = prod(x.shape[-normalized_ndim:]) elements::

        mean = sum(r) / N,  var = sum((r - mean)^2) / N,  rstd = 1 / sqrt(var + eps)
        y = (r - mean) * rstd * weight + bias

    Parameters
    ----------
    x : array, shape (*, *normalized_shape)
        float32, float64, or 16-bit storage (``ml_dtypes.bfloat16``, ``np.float16``: computed in float32,
        y rounded to nearest even once).
    weight, bias : array of shape normalized_shape, optional
        In x's dtype, or float32 beside 16-bit x (torch's mixed-dtype LayerNorm).
    eps : float
        Added to the variance; any float, as in torch (0 or negative: rstd is inf/NaN for constant rows).
    %(normalized_ndim)s
    %(out)s

    Returns
    -------
    NormStats
        ``(y, mean, rstd)`` (also importable as ``LayerNormForward``): y like x; mean, rstd of shape
        x.shape[:-normalized_ndim] in the statistic dtype (x's; float32 for 16-bit x). Empty rows (N = 0)
        give mean 0 and rstd NaN, as torch.
    """
    return rows_forward(LAYER_NORM_FWD, dict(x=x, weight=weight, bias=bias), eps, normalized_ndim, out)


@fill_doc(LAYER_NORM_BWD)
def layer_norm_backward(
    dy: Array,
    x: Array,
    mean: Array,
    rstd: Array,
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> AffineGrads:
    """Gradients of ``layer_norm_forward`` given ``dy`` and the saved ``mean``, ``rstd``.

    With xhat = (x - mean) * rstd and g = dy * weight (dy without weight), per row of N elements::

        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
        dweight = sum_rows(dy * xhat),  dbias = sum_rows(dy)

    Parameters
    ----------
    dy, x : array, shape (*, *normalized_shape)
        The gradient of y and the forward's input (same dtype).
    mean, rstd : array, shape x.shape[:-normalized_ndim]
        Saved by the forward (statistic dtype).
    %(affine_bwd)s
    %(normalized_ndim_bwd)s
    %(out)s

    Returns
    -------
    AffineGrads
        ``(dx, dweight, dbias)`` (also ``LayerNormBackward``); dweight/dbias in the parameter's dtype, None
        when the parameter is None. Every output is bitwise the same for any thread count.
    """
    arrays = dict(dy=dy, x=x, mean=mean, rstd=rstd, weight=weight, bias=bias)
    return rows_backward(LAYER_NORM_BWD, arrays, normalized_ndim, out)


# --------------------------------------------------------------------------------------------- RMSNorm
@fill_doc(RMS_NORM_FWD)
def rms_norm_forward(
    x: Array,
    weight: Array | None = None,
    *,
    eps: float = 1e-6,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> ScaleStats:
    """RMSNorm over the last ``normalized_ndim`` dims, like ``torch.nn.functional.rms_norm``.

    Per row r of N elements::

        rstd = 1 / sqrt(sum(r^2) / N + eps),   y = r * rstd * weight

    Parameters
    ----------
    x : array, shape (*, *normalized_shape)
        float32, float64 or 16-bit (computed in float32, y rounded once).
    weight : array of shape normalized_shape, optional
        In x's dtype, or float32 beside 16-bit x.
    eps : float
        Added to the mean square; any float, as in torch.
    %(normalized_ndim)s
    %(out)s

    Returns
    -------
    ScaleStats
        ``(y, rstd)`` (also ``RMSNormForward``): y like x, rstd x.shape[:-normalized_ndim] in the statistic
        dtype. Empty rows (N = 0) give rstd NaN, as torch.
    """
    return rows_forward(RMS_NORM_FWD, dict(x=x, weight=weight), eps, normalized_ndim, out)


@fill_doc(RMS_NORM_BWD)
def rms_norm_backward(
    dy: Array,
    x: Array,
    rstd: Array,
    weight: Array | None = None,
    *,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> ScaleGrads:
    """Gradients of ``rms_norm_forward`` given ``dy`` and the saved ``rstd``.

    With xhat = x * rstd and g = dy * weight (dy without weight), per row of N elements::

        dx = rstd * (g - xhat * mean(g * xhat)),   dweight = sum_rows(dy * xhat)

    Parameters
    ----------
    dy, x : array, shape (*, *normalized_shape)
        The gradient of y and the forward's input.
    rstd : array, shape x.shape[:-normalized_ndim]
        Saved by the forward.
    %(scale_bwd)s
    %(normalized_ndim_bwd)s
    %(out)s

    Returns
    -------
    ScaleGrads
        ``(dx, dweight)`` (also ``RMSNormBackward``); dweight in the weight's dtype, None without weight.
    """
    return rows_backward(RMS_NORM_BWD, dict(dy=dy, x=x, rstd=rstd, weight=weight), normalized_ndim, out)
