"""Public normalization ops: validate -> canonicalize shape -> allocate -> dispatch to a kernel.

Every op takes NumPy arrays (CPU kernels) or CUDA arrays (``__cuda_array_interface__``: Numba, CuPy,
PyTorch CUDA tensors; CUDA kernels), returns a named tuple of outputs, and accepts ``out=``: a tuple with
one entry per output, each None (allocate) or a C-contiguous, writeable buffer of the exact shape and dtype.
Non-contiguous, unaligned or byte-swapped inputs are copied to contiguous native arrays first; read-only
inputs are read in place. Gradients of absent parameters are None.

Empty inputs (a zero-sized dim anywhere) never reach a kernel; every output is defined, as in torch 2.13:
statistics of an empty reduction are ``mean = 0`` and ``rstd = NaN`` (torch's ``var = 0/0``), statistics
that do not reduce (evaluation mode) come from the running statistics, running statistics are not updated
by an empty batch, and parameter gradients are sums over no elements, i.e. 0.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import _dtypes
from . import _validation as V
from ._dispatch import backend_of

__all__ = [
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
    "local_response_norm_forward",
    "local_response_norm_backward",
    "weight_norm_forward",
    "weight_norm_backward",
    "cosine_linear_forward",
    "cosine_linear_backward",
    "batch_norm_forward",
    "batch_norm_backward",
    "instance_norm_forward",
    "instance_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
]

Array = Any  # numpy.ndarray on the CPU; any object with __cuda_array_interface__ on the GPU


class LayerNormForward(NamedTuple):
    y: Array
    mean: Array
    rstd: Array


class LayerNormBackward(NamedTuple):
    dx: Array
    dweight: Array | None
    dbias: Array | None


class RMSNormForward(NamedTuple):
    y: Array
    rstd: Array


class RMSNormBackward(NamedTuple):
    dx: Array
    dweight: Array | None


def _fill(be, a, value: float) -> None:
    """``a[...] = value`` for an output buffer ``a`` of backend ``be`` (results of empty inputs)."""
    if a is None or math.prod(a.shape) == 0:
        return
    if be.name == "cpu":
        a[...] = value
    else:
        _put(be, a, np.full(tuple(a.shape), value, V.dtype_of(a)))


def _put(be, a, host: np.ndarray) -> None:
    """``a[...] = host`` for an output buffer ``a`` of backend ``be`` and a NumPy array ``host``."""
    if math.prod(a.shape) == 0:
        return
    if be.name == "cpu":
        a[...] = host
    else:
        size = math.prod(a.shape)  # copied as 1-D: device arrays differ in how they match shapes
        flat = np.ascontiguousarray(np.broadcast_to(host, tuple(a.shape)), V.dtype_of(a)).reshape(size)
        be.asarray(a).reshape(size).copy_to_device(flat)


def _host(be, a) -> np.ndarray:
    """A NumPy view (CPU) or copy (CUDA) of an array of backend ``be``."""
    return a if be.name == "cpu" else be.asarray(a).copy_to_host()


def _eval_stats(be, mean, rstd, running_mean, running_var, eps: float) -> None:
    """mean = running_mean, rstd = 1 / sqrt(running_var + eps), broadcast over mean's leading dims."""
    rm, rv = _host(be, running_mean), _host(be, running_var)
    with np.errstate(all="ignore"):
        r = 1.0 / np.sqrt(rv.astype(np.float64) + eps)
    _put(be, mean, rm)
    _put(be, rstd, r)


def _empty_reduction(be, mean, rstd) -> None:
    """Statistics of reductions over no elements, as torch: mean 0, rstd NaN."""
    _fill(be, mean, 0.0)
    _fill(be, rstd, np.nan)


def _absent(be, dtype):
    """Kernels take a length-0 array for an absent optional parameter or unwanted gradient."""
    return be.empty((0,), dtype)


def _partials(be, want: bool, n_chunks: int, n: int, dtype) -> tuple:
    """Scratch for a deterministic column reduction (dweight/dbias): per-chunk float64 partial rows and
    per-chunk short-run accumulator rows in the input dtype (see the backward kernels)."""
    if not want:
        return be.empty((0, 0), np.float64), be.empty((0, 0), dtype)
    return be.empty((n_chunks, n), np.float64), be.empty((n_chunks, n), dtype)


# --------------------------------------------------------------------------------------------- LayerNorm
def _stat_params(be, sd, *params) -> tuple:
    """Parameters as the row kernels take them: in the statistic dtype ``sd`` (float32 beside 16-bit data;
    a tiny copy when a parameter is 16-bit)."""
    return tuple(None if p is None else be.astype(p, sd) for p in params)


def _grad_targets(be, sd, *grads) -> tuple:
    """The buffers the row kernels write parameter gradients into (in ``sd``): each gradient itself, or a new
    ``sd`` buffer for a 16-bit parameter's gradient (rounded into it by ``_grads_back``)."""
    return tuple(g if g is None or V.dtype_of(g) == sd else be.empty(g.shape, sd) for g in grads)


def _grads_back(be, grads, targets) -> None:
    """Round each ``_grad_targets`` buffer into its 16-bit gradient (once, to nearest even)."""
    for g, t in zip(grads, targets, strict=True):
        if g is not t:
            be.copyto(g, t)


def layer_norm_forward(
    x: Array,
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    eps: float = 1e-5,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> LayerNormForward:
    """LayerNorm over the last ``normalized_ndim`` dims, like ``torch.nn.functional.layer_norm``.

    Per row r of N = prod(x.shape[-normalized_ndim:]) elements::

        mean = sum(r) / N,  var = sum((r - mean)^2) / N,  rstd = 1 / sqrt(var + eps)
        y = (r - mean) * rstd * weight + bias

    ``eps`` may be any float, as in torch (0 or negative: rstd is inf/NaN for constant rows). Empty rows
    (N = 0) give mean 0 and rstd NaN, as torch.

    Dtypes: float32, float64, and 16-bit storage (``ml_dtypes.bfloat16``, ``np.float16``): 16-bit x is
    computed in float32, y is the float32 result rounded to nearest even once, mean/rstd are float32, and
    weight/bias may be x's dtype or float32 (torch's mixed-dtype LayerNorm).

    Shapes: x (*, *normalized_shape) -> y like x; weight, bias normalized_shape (each optional);
    mean, rstd x.shape[:-normalized_ndim] (in x's dtype; float32 for 16-bit x).
    ``out=(y, mean, rstd)`` (entries may be None). Returns ``LayerNormForward(y, mean, rstd)``.
    """
    op = "layer_norm_forward"
    be = backend_of(op, x=x, weight=weight, bias=bias, out=out)
    x = V.float_input(be, op, "x", x)
    lead, norm, m, n = V.split_rows(op, x.shape, normalized_ndim)
    weight = V.param(be, op, "weight", weight, norm, _dtypes.param_dtypes(x.dtype))
    bias = V.param(be, op, "bias", bias, norm, _dtypes.param_dtypes(x.dtype))
    eps = V.scalar(op, "eps", eps, finite=False)
    sd = be.stat_dtype(x.dtype)
    y, mean, rstd = V.outputs(
        be, op, out, [("y", x.shape, x.dtype), ("mean", lead, sd), ("rstd", lead, sd)], (x, weight, bias)
    )
    if m * n == 0:
        _empty_reduction(be, mean, rstd)
        return LayerNormForward(y, mean, rstd)
    w, b = _stat_params(be, sd, weight, bias)
    absent = _absent(be, sd)
    be.kernels.layer_norm_forward(
        x.reshape(m, n),
        absent if w is None else w.reshape(n),
        absent if b is None else b.reshape(n),
        y.reshape(m, n),
        mean.reshape(m),
        rstd.reshape(m),
        eps,
        be.threads(m * n),
    )
    return LayerNormForward(y, mean, rstd)


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
) -> LayerNormBackward:
    """Gradients of ``layer_norm_forward`` given ``dy`` and the saved ``mean``, ``rstd``.

    With xhat = (x - mean) * rstd and g = dy * weight (dy without weight), per row of N elements::

        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
        dweight = sum_rows(dy * xhat),  dbias = sum_rows(dy)

    ``bias`` is only used to know whether dbias is wanted (its values do not enter the gradient).
    Shapes as in the forward. 16-bit dy/x: computed and accumulated in float32, dx rounded once, mean/rstd
    float32, dweight/dbias in the parameter's dtype. ``out=(dx, dweight, dbias)``. Returns
    ``LayerNormBackward(dx, dweight, dbias)``; dweight/dbias are None when weight/bias are None. Every
    output is bitwise the same for any thread count (the partial-row plan depends on the shape only).
    """
    op = "layer_norm_backward"
    be = backend_of(op, dy=dy, x=x, mean=mean, rstd=rstd, weight=weight, bias=bias, out=out)
    x = V.float_input(be, op, "x", x)
    lead, norm, m, n = V.split_rows(op, x.shape, normalized_ndim)
    dy = V.required(be, op, "dy", dy, x.shape, x.dtype)
    sd = be.stat_dtype(x.dtype)
    mean = V.required(be, op, "mean", mean, lead, sd)
    rstd = V.required(be, op, "rstd", rstd, lead, sd)
    weight = V.param(be, op, "weight", weight, norm, _dtypes.param_dtypes(x.dtype))
    bias = V.param(be, op, "bias", bias, norm, _dtypes.param_dtypes(x.dtype))
    dx, dweight, dbias = V.outputs(
        be,
        op,
        out,
        [
            ("dx", x.shape, x.dtype),
            None if weight is None else ("dweight", norm, V.dtype_of(weight)),
            None if bias is None else ("dbias", norm, V.dtype_of(bias)),
        ],
        (dy, x, mean, rstd, weight, bias),
    )
    if m * n == 0:
        _fill(be, dweight, 0.0)
        _fill(be, dbias, 0.0)
        return LayerNormBackward(dx, dweight, dbias)
    nt = be.threads(m * n)
    (w,) = _stat_params(be, sd, weight)
    dw32, db32 = _grad_targets(be, sd, dweight, dbias)
    absent = _absent(be, sd)
    be.kernels.layer_norm_backward(
        dy.reshape(m, n),
        x.reshape(m, n),
        mean.reshape(m),
        rstd.reshape(m),
        absent if w is None else w.reshape(n),
        dx.reshape(m, n),
        absent if dw32 is None else dw32.reshape(n),
        absent if db32 is None else db32.reshape(n),
        *_partials(be, dweight is not None, nt, n, sd),
        *_partials(be, dbias is not None, nt, n, sd),
        nt,
    )
    _grads_back(be, (dweight, dbias), (dw32, db32))
    if n == 1:
        _put(be, dx, _layer_norm_dx_one(be, dy, x, mean, rstd, weight).astype(V.dtype_of(x)).reshape(x.shape))
    return LayerNormBackward(dx, dweight, dbias)


def _layer_norm_dx_one(be, dy, x, mean, rstd, weight) -> np.ndarray:
    """dx of rows of one element, flat, in the statistic dtype: xhat = 0 and g - mean(g) = 0 exactly, so
    dx = 0 (NaN where an input is not finite, as torch); the kernel's rounding of mean(g) need not cancel g
    exactly."""
    sd = be.stat_dtype(V.dtype_of(x))
    dy, x = _host(be, dy).reshape(-1).astype(sd), _host(be, x).reshape(-1).astype(sd)
    mean, rstd = _host(be, mean).reshape(-1), _host(be, rstd).reshape(-1)
    with np.errstate(all="ignore"):
        g = dy if weight is None else dy * _host(be, weight).reshape(-1).astype(sd)
        xhat = (x - mean) * rstd
        return (rstd * ((g - g) - xhat * (g * xhat))).astype(sd)


# --------------------------------------------------------------------------------------------- RMSNorm
def rms_norm_forward(
    x: Array,
    weight: Array | None = None,
    *,
    eps: float = 1e-6,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> RMSNormForward:
    """RMSNorm over the last ``normalized_ndim`` dims, like ``torch.nn.functional.rms_norm``.

    Per row r of N elements: ``rstd = 1 / sqrt(sum(r^2) / N + eps)``, ``y = r * rstd * weight``.
    ``eps`` may be any float, as in torch. Empty rows (N = 0) give rstd NaN, as torch. 16-bit x: computed
    in float32, y rounded once, rstd float32, weight in x's dtype or float32.

    Shapes: x (*, *normalized_shape) -> y like x; weight normalized_shape (optional);
    rstd x.shape[:-normalized_ndim]. ``out=(y, rstd)``. Returns ``RMSNormForward(y, rstd)``.
    """
    op = "rms_norm_forward"
    be = backend_of(op, x=x, weight=weight, out=out)
    x = V.float_input(be, op, "x", x)
    lead, norm, m, n = V.split_rows(op, x.shape, normalized_ndim)
    weight = V.param(be, op, "weight", weight, norm, _dtypes.param_dtypes(x.dtype))
    eps = V.scalar(op, "eps", eps, finite=False)
    sd = be.stat_dtype(x.dtype)
    y, rstd = V.outputs(be, op, out, [("y", x.shape, x.dtype), ("rstd", lead, sd)], (x, weight))
    if m * n == 0:
        _fill(be, rstd, np.nan)
        return RMSNormForward(y, rstd)
    (w,) = _stat_params(be, sd, weight)
    be.kernels.rms_norm_forward(
        x.reshape(m, n),
        _absent(be, sd) if w is None else w.reshape(n),
        y.reshape(m, n),
        rstd.reshape(m),
        eps,
        be.threads(m * n),
    )
    return RMSNormForward(y, rstd)


def rms_norm_backward(
    dy: Array,
    x: Array,
    rstd: Array,
    weight: Array | None = None,
    *,
    normalized_ndim: int = 1,
    out: tuple | None = None,
) -> RMSNormBackward:
    """Gradients of ``rms_norm_forward`` given ``dy`` and the saved ``rstd``.

    With xhat = x * rstd and g = dy * weight (dy without weight), per row of N elements::

        dx = rstd * (g - xhat * mean(g * xhat)),   dweight = sum_rows(dy * xhat)

    16-bit dy/x: float32 arithmetic, dx rounded once, dweight in the weight's dtype.
    ``out=(dx, dweight)``. Returns ``RMSNormBackward(dx, dweight)``; dweight is None without weight.
    """
    op = "rms_norm_backward"
    be = backend_of(op, dy=dy, x=x, rstd=rstd, weight=weight, out=out)
    x = V.float_input(be, op, "x", x)
    lead, norm, m, n = V.split_rows(op, x.shape, normalized_ndim)
    dy = V.required(be, op, "dy", dy, x.shape, x.dtype)
    sd = be.stat_dtype(x.dtype)
    rstd = V.required(be, op, "rstd", rstd, lead, sd)
    weight = V.param(be, op, "weight", weight, norm, _dtypes.param_dtypes(x.dtype))
    dx, dweight = V.outputs(
        be,
        op,
        out,
        [("dx", x.shape, x.dtype), None if weight is None else ("dweight", norm, V.dtype_of(weight))],
        (dy, x, rstd, weight),
    )
    if m * n == 0:
        _fill(be, dweight, 0.0)
        return RMSNormBackward(dx, dweight)
    nt = be.threads(m * n)
    (w,) = _stat_params(be, sd, weight)
    (dw32,) = _grad_targets(be, sd, dweight)
    absent = _absent(be, sd)
    be.kernels.rms_norm_backward(
        dy.reshape(m, n),
        x.reshape(m, n),
        rstd.reshape(m),
        absent if w is None else w.reshape(n),
        dx.reshape(m, n),
        absent if dw32 is None else dw32.reshape(n),
        *_partials(be, dweight is not None, nt, n, sd),
        nt,
    )
    _grads_back(be, (dweight,), (dw32,))
    return RMSNormBackward(dx, dweight)


# ---------------------------------------------------------------------------------------- LocalResponseNorm
class LocalResponseNormForward(NamedTuple):
    y: Array
    scale: Array


def _lrn_args(op: str, x, size, alpha, beta, k) -> tuple[tuple[int, int, int], int, float, float, float]:
    """(N, C, L) view of x (L = product of the spatial dims, 1 for 2-D) and the checked scalars."""
    if x.ndim < 2:
        raise ValueError(f"{op}: x must have shape (N, C, *) with at least 2 dims, got {tuple(x.shape)}")
    size = V.integer(op, "size", size, low=1, high=2**40)
    alpha = V.scalar(op, "alpha", alpha)
    beta = V.scalar(op, "beta", beta)
    k = V.scalar(op, "k", k, low=0.0, low_open=True)
    n, c = x.shape[0], x.shape[1]
    return (n, c, math.prod(x.shape[2:])), size, alpha, beta, k


def _lrn_scratch(be, c: int, size: int, n_threads: int):
    """Per-thread float64 rows for the kernels' block sums (the window clamped to the channels)."""
    lo, hi = min(size // 2, max(c - 1, 0)), min((size - 1) // 2, max(c - 1, 0))
    return be.empty((n_threads, be.kernels.lrn_scratch_len(lo, hi)), np.float64)


def local_response_norm_forward(
    x: Array,
    size: int,
    *,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 1.0,
    out: tuple | None = None,
) -> LocalResponseNormForward:
    """LocalResponseNorm across channels, like ``torch.nn.functional.local_response_norm``.

    For channel c the window is c' in [c - size//2, c + (size-1)//2] (zero padding outside the channels)::

        scale = k + alpha / size * sum_window(x[:, c']^2),   y = x * scale^(-beta)

    Shapes: x (N, C, *) of any rank >= 3, or (N, C) (torch rejects 2-D; here it is the case of no spatial
    dims) -> y, scale like x. 16-bit x (bfloat16, float16): y in x's dtype, scale float32 (computed in
    float32 from the widened values, y rounded once; torch has no 16-bit CPU LRN). ``out=(y, scale)``.
    Returns ``LocalResponseNormForward(y, scale)``.
    beta in {0.25, 0.5, 0.75, 1} takes a sqrt-based path; other exponents call ``pow`` (several times slower).
    """
    op = "local_response_norm_forward"
    be = backend_of(op, x=x, out=out)
    x = V.float_input(be, op, "x", x)
    ncl, size, alpha, beta, k = _lrn_args(op, x, size, alpha, beta, k)
    specs = [("y", x.shape, x.dtype), ("scale", x.shape, be.stat_dtype(x.dtype))]
    y, scale = V.outputs(be, op, out, specs, (x,))
    if x.size == 0:
        return LocalResponseNormForward(y, scale)
    nt = be.threads(x.size)
    be.kernels.local_response_norm_forward(
        x.reshape(ncl), y.reshape(ncl), scale.reshape(ncl), _lrn_scratch(be, ncl[1], size, nt),
        size, alpha, beta, k, nt,
    )
    return LocalResponseNormForward(y, scale)


def local_response_norm_backward(
    dy: Array,
    x: Array,
    y: Array,
    scale: Array,
    size: int,
    *,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 1.0,
    out: Array | tuple | None = None,
) -> Array:
    """Gradient of ``local_response_norm_forward`` with respect to x, given the saved ``y`` and ``scale``.

    Channel j is in the windows of c in [j - (size-1)//2, j + size//2], so::

        dx_j = dy_j * scale_j^(-beta) - 2 * alpha * beta / size * x_j * sum_c(dy_c * y_c / scale_c)

    ``k`` is checked but enters only through ``scale``. Shapes: all like x. 16-bit x: dy, y, dx in x's
    dtype, scale float32. ``out=dx`` (or ``(dx,)``). Returns dx (an array, not a tuple).
    """
    op = "local_response_norm_backward"
    be = backend_of(op, dy=dy, x=x, y=y, scale=scale, out=out)
    x = V.float_input(be, op, "x", x)
    ncl, size, alpha, beta, k = _lrn_args(op, x, size, alpha, beta, k)
    dy = V.required(be, op, "dy", dy, x.shape, x.dtype)
    y = V.required(be, op, "y", y, x.shape, x.dtype)
    scale = V.required(be, op, "scale", scale, x.shape, be.stat_dtype(x.dtype))
    (dx,) = V.outputs(be, op, out, [("dx", x.shape, x.dtype)], (dy, x, y, scale))
    if x.size == 0:
        return dx
    nt = be.threads(x.size)
    be.kernels.local_response_norm_backward(
        dy.reshape(ncl), x.reshape(ncl), y.reshape(ncl), scale.reshape(ncl), dx.reshape(ncl),
        _lrn_scratch(be, ncl[1], size, nt), size, alpha, beta, nt,
    )
    return dx


# ----------------------------------------------------------------------------------------------- WeightNorm
class WeightNormForward(NamedTuple):
    w: Array
    norm: Array


class WeightNormBackward(NamedTuple):
    dv: Array
    dg: Array


# Plans of the WeightNorm kernels (fastnorm/_kernels/cpu/_weight_norm.pyx).
_WN_ROWS, _WN_FLAT, _WN_COLS = 0, 1, 2


def _weight_norm_view(op: str, shape: tuple, dim) -> tuple[tuple, tuple[int, int, int]]:
    """g's shape (size 1 except along dim; () for dim=None) and the (A, D, B) view of v."""
    if dim is None:
        return (), (1, 1, math.prod(shape))
    if len(shape) == 0:
        raise ValueError(f"{op}: dim must be None for a 0-d v, got {dim!r}")
    d = V.integer(op, "dim", dim, low=-len(shape), high=len(shape) - 1)
    d %= len(shape)
    gshape = tuple(s if i == d else 1 for i, s in enumerate(shape))
    return gshape, (math.prod(shape[:d]), shape[d], math.prod(shape[d + 1 :]))


def _weight_norm_plan(be, adb: tuple[int, int, int], n_threads: int, backward: bool, dtype):
    """(mode, part, fac): the kernel plan and its scratch (see the kernel module's docstring)."""
    from fastnorm._kernels.cpu import weight_norm_plan  # a function of the shape: the CPU kernels' plan

    mode, part_shape, fac_shape = weight_norm_plan(*adb, n_threads, backward)
    return mode, be.empty(part_shape, np.float64), be.empty(fac_shape, dtype)


def weight_norm_forward(
    v: Array, g: Array, *, dim: int | None = 0, out: tuple | None = None
) -> WeightNormForward:
    """Weight normalization, like ``torch._weight_norm`` (``torch.nn.utils.weight_norm``)::

        norm = sqrt(sum(v^2 over every axis except dim)),   w = g * v / norm

    ``dim=None`` takes the norm over the whole tensor (torch's ``dim=None``); negative dims count from the
    end. Shapes: v any; g and norm have v's shape with size 1 on every axis but ``dim`` (() for
    dim=None); w like v. ``out=(w, norm)``. Returns ``WeightNormForward(w, norm)``. A zero norm gives
    inf/NaN, as in torch. 16-bit v (bfloat16, float16): g in v's dtype or float32, w in v's dtype, norm
    float32 (as ``torch._weight_norm_interface``); computed in float32 from widened copies of v and g
    (parameter-sized), w rounded once.
    """
    op = "weight_norm_forward"
    be = backend_of(op, v=v, g=g, out=out)
    v = V.float_input(be, op, "v", v)
    gshape, adb = _weight_norm_view(op, v.shape, dim)
    g = V.required(be, op, "g", g, gshape, _dtypes.param_dtypes(v.dtype))
    sd = be.stat_dtype(v.dtype)
    w, norm = V.outputs(be, op, out, [("w", v.shape, v.dtype), ("norm", gshape, sd)], (v, g))
    if v.size == 0:
        _fill(be, norm, 0.0)  # the norm of no elements
        return WeightNormForward(w, norm)
    # 16-bit v: a parameter, small; the float32 kernel on widened copies, w rounded once.
    v32, g32 = _to_stat(be, sd, v, g)
    (w32,) = _stat_outputs(be, sd, w)
    nt = be.threads(v.size)
    mode, part, fac = _weight_norm_plan(be, adb, nt, False, sd)
    be.kernels.weight_norm_forward(
        v32.reshape(adb), g32.reshape(adb[1]), w32.reshape(adb), norm.reshape(adb[1]), part, fac, mode, nt
    )
    _round_back(be, (w,), (w32,))
    return WeightNormForward(w, norm)


def weight_norm_backward(
    dw: Array, v: Array, g: Array, norm: Array, *, dim: int | None = 0, out: tuple | None = None
) -> WeightNormBackward:
    """Gradients of ``weight_norm_forward`` given ``dw`` and the saved ``norm``.

    With dot = sum(dw * v over every axis except dim)::

        dg = dot / norm,   dv = g / norm * (dw - v * dot / norm^2)

    Shapes as in the forward. ``out=(dv, dg)``. Returns ``WeightNormBackward(dv, dg)``; bitwise
    reproducible for a given thread count. 16-bit v: dw, dv in v's dtype, norm float32, dg in g's dtype.
    """
    op = "weight_norm_backward"
    be = backend_of(op, dw=dw, v=v, g=g, norm=norm, out=out)
    v = V.float_input(be, op, "v", v)
    gshape, adb = _weight_norm_view(op, v.shape, dim)
    dw = V.required(be, op, "dw", dw, v.shape, v.dtype)
    g = V.required(be, op, "g", g, gshape, _dtypes.param_dtypes(v.dtype))
    sd = be.stat_dtype(v.dtype)
    norm = V.required(be, op, "norm", norm, gshape, sd)
    dv, dg = V.outputs(be, op, out, [("dv", v.shape, v.dtype), ("dg", gshape, g.dtype)], (dw, v, g, norm))
    if v.size == 0:
        with np.errstate(all="ignore"):  # dot = 0: dg = 0 / norm (NaN for a zero norm, as torch)
            _put(be, dg, np.float64(0.0) / _host(be, norm).astype(np.float64))
        return WeightNormBackward(dv, dg)
    dw32, v32, g32 = _to_stat(be, sd, dw, v, g)
    dv32, dg32 = _stat_outputs(be, sd, dv, dg)
    nt = be.threads(v.size)
    mode, part, fac = _weight_norm_plan(be, adb, nt, True, sd)
    d = adb[1]
    be.kernels.weight_norm_backward(
        dw32.reshape(adb), v32.reshape(adb), g32.reshape(d), norm.reshape(d), dv32.reshape(adb),
        dg32.reshape(d), part, fac, mode, nt,
    )
    _round_back(be, (dv, dg), (dv32, dg32))
    return WeightNormBackward(dv, dg)


# --------------------------------------------------------------------------------------------- CosineLinear
class CosineLinearForward(NamedTuple):
    y: Array
    x_norm: Array
    w_norm: Array


class CosineLinearBackward(NamedTuple):
    dx: Array
    dw: Array


def _matmul(be, a, b, out) -> None:
    """out = a @ b: NumPy's BLAS on the CPU (its own threads); a GPU backend brings its own ``matmul``."""
    if be.name == "cpu":
        np.matmul(a, b, out=out)
    else:
        be.matmul(a, b, out)


def _cosine_args(be, op: str, x, w, eps):
    """x checked, w checked against it, eps > 0; returns (x, w, eps, M, D, O)."""
    x = V.float_input(be, op, "x", x)
    if x.ndim < 1:
        raise ValueError(f"{op}: x must have shape (*, D) with at least 1 dim, got shape {tuple(x.shape)}")
    if w is None:
        raise TypeError(f"{op}: w is required, got None")
    w = V.float_input(be, op, "w", w, _dtypes.param_dtypes(x.dtype))
    if w.ndim != 2 or w.shape[1] != x.shape[-1]:
        raise ValueError(f"{op}: w must have shape (O, {x.shape[-1]}) (x's last dim), got {tuple(w.shape)}")
    eps = V.scalar(op, "eps", eps, low=0.0, low_open=True)
    return x, w, eps, math.prod(x.shape[:-1]), x.shape[-1], w.shape[0]


def cosine_linear_forward(
    x: Array, w: Array, *, eps: float = 1e-8, out: tuple | None = None
) -> CosineLinearForward:
    """Cosine-normalized linear layer: the cosine similarity of every row of x with every row of w::

        x_norm = |x| (L2 over the last axis),   w_norm = |w| (L2 over each row)
        y = (x @ w.T) / (max(x_norm, eps) * max(w_norm, eps))

    i.e. ``F.linear(F.normalize(x, eps=eps), F.normalize(w, eps=eps))``, and ``F.cosine_similarity``
    of every pair of rows (it too clamps each norm at eps separately). The saved norms are the unclamped
    ones. Shapes: x (*, D), w (O, D) -> y (*, O), x_norm (*), w_norm (O,). ``out=(y, x_norm, w_norm)``.
    The product is one BLAS call (NumPy's, with its own thread pool); the norms and the scaling are fused
    kernels. 16-bit x (bfloat16, float16): w in x's dtype or float32; computed in float32 on widened
    copies (the product too), y rounded once to x's dtype, x_norm and w_norm float32.
    Returns ``CosineLinearForward(y, x_norm, w_norm)``.
    """
    op = "cosine_linear_forward"
    be = backend_of(op, x=x, w=w, out=out)
    x, w, eps, m, d, o = _cosine_args(be, op, x, w, eps)
    lead = x.shape[:-1]
    sd = be.stat_dtype(x.dtype)
    specs = [("y", (*lead, o), x.dtype), ("x_norm", lead, sd), ("w_norm", (o,), sd)]
    y, x_norm, w_norm = V.outputs(be, op, out, specs, (x, w))
    if sd != x.dtype:  # 16-bit: float32 product and norms of the widened inputs, y rounded once
        x32, w32 = _to_stat(be, sd, x, w)
        (y32,) = _stat_outputs(be, sd, y)
        cosine_linear_forward(x32, w32, eps=eps, out=(y32, x_norm, w_norm))
        _round_back(be, (y,), (y32,))
        return CosineLinearForward(y, x_norm, w_norm)
    x2, y2 = x.reshape(m, d), y.reshape(m, o)
    _matmul(be, x2, w.T, y2)
    nt = be.threads(m * o + (m + o) * d)
    be.kernels.cosine_linear_forward(x2, w, y2, x_norm.reshape(m), w_norm, eps, nt)
    return CosineLinearForward(y, x_norm, w_norm)


def cosine_linear_backward(
    dy: Array,
    x: Array,
    w: Array,
    y: Array,
    x_norm: Array,
    w_norm: Array,
    *,
    eps: float = 1e-8,
    out: tuple | None = None,
) -> CosineLinearBackward:
    """Gradients of ``cosine_linear_forward`` given ``dy`` and the saved ``y``, ``x_norm``, ``w_norm``.

    With nx = max(x_norm, eps), nw = max(w_norm, eps) and G = dy / (nx[:, None] * nw[None, :])::

        dx = G @ w   - x * [x_norm >= eps] * sum_o(dy * y) / nx^2
        dw = G.T @ x - w * [w_norm >= eps] * sum_rows(dy * y) / nw^2

    The clamp has zero derivative below eps (as ``F.normalize``'s ``clamp_min``; torch's
    ``cosine_similarity`` instead differentiates the norm through its clamp). Shapes as in the forward.
    16-bit x: dy, y, dx in x's dtype, x_norm/w_norm float32, dw in w's dtype. ``out=(dx, dw)``.
    Returns ``CosineLinearBackward(dx, dw)``; bitwise reproducible for a given thread count (and BLAS).
    """
    op = "cosine_linear_backward"
    be = backend_of(op, dy=dy, x=x, w=w, y=y, x_norm=x_norm, w_norm=w_norm, out=out)
    x, w, eps, m, d, o = _cosine_args(be, op, x, w, eps)
    lead = x.shape[:-1]
    dy = V.required(be, op, "dy", dy, (*lead, o), x.dtype)
    y = V.required(be, op, "y", y, (*lead, o), x.dtype)
    sd = be.stat_dtype(x.dtype)
    x_norm = V.required(be, op, "x_norm", x_norm, lead, sd)
    w_norm = V.required(be, op, "w_norm", w_norm, (o,), sd)
    dx, dw = V.outputs(
        be, op, out, [("dx", x.shape, x.dtype), ("dw", w.shape, w.dtype)], (dy, x, w, y, x_norm, w_norm)
    )
    if sd != x.dtype:  # 16-bit: the float32 backward on widened copies, dx and dw rounded once
        dy32, x32, w32, y32 = _to_stat(be, sd, dy, x, w, y)
        dx32, dw32 = _stat_outputs(be, sd, dx, dw)
        cosine_linear_backward(dy32, x32, w32, y32, x_norm, w_norm, eps=eps, out=(dx32, dw32))
        _round_back(be, (dx, dw), (dx32, dw32))
        return CosineLinearBackward(dx, dw)
    nt = be.threads(m * o)
    n_chunks = max(1, min(nt, m))
    gs, cx, cw = be.empty((m, o), x.dtype), be.empty((m,), x.dtype), be.empty((o,), x.dtype)
    be.kernels.cosine_linear_backward_pre(
        dy.reshape(m, o), y.reshape(m, o), x_norm.reshape(m), w_norm, gs, cx, cw,
        be.empty((n_chunks, o), np.float64), eps, nt,
    )
    x2, dx2 = x.reshape(m, d), dx.reshape(m, d)
    _matmul(be, gs, w, dx2)
    _matmul(be, gs.T, x2, dw)
    be.kernels.cosine_linear_backward_post(x2, w, cx, cw, dx2, dw, be.threads((m + o) * d))
    return CosineLinearBackward(dx, dw)


# --------------------------------------------------------------------------------------------- channel norms
class BatchNormForward(NamedTuple):
    y: Array
    mean: Array
    rstd: Array


class BatchNormBackward(NamedTuple):
    dx: Array
    dweight: Array | None
    dbias: Array | None


class InstanceNormForward(NamedTuple):
    y: Array
    mean: Array
    rstd: Array


class InstanceNormBackward(NamedTuple):
    dx: Array
    dweight: Array | None
    dbias: Array | None


class GroupNormForward(NamedTuple):
    y: Array
    mean: Array
    rstd: Array


class GroupNormBackward(NamedTuple):
    dx: Array
    dweight: Array | None
    dbias: Array | None


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
    running_var = V.inout(
        be, op, "running_var", running_var, (c,), rv_dtype, [*others, ("running_mean", running_mean)]
    )
    return running_mean, running_var


def _to_stat(be, sd, *arrays) -> list:
    """Parameters and running statistics as the kernels take them: in the statistic dtype ``sd`` (float32
    copies of 16-bit ones; float32 / float64 arrays as they are). None stays None."""
    return [None if a is None else be.astype(a, sd) for a in arrays]


def _stat_outputs(be, sd, *arrays) -> list:
    """Buffers for the kernels to write parameter-shaped results into: each array itself when it is in the
    statistic dtype ``sd``, else a new ``sd`` buffer that ``_round_back`` copies into it afterwards."""
    return [None if a is None else a if V.dtype_of(a) == sd else be.empty(tuple(a.shape), sd) for a in arrays]


def _round_back(be, dsts, srcs) -> None:
    """dst[...] = src for each pair whose src is a float32 stand-in (one rounding to dst's 16-bit dtype)."""
    for dst, src in zip(dsts, srcs):
        if dst is not None and src is not dst:
            be.copyto(dst, src)


# --------------------------------------------------------------------------------------------- BatchNorm
def _batch_norm_eps(op: str, eps, training: bool) -> float:
    """torch's rule: eps > 0 while training (the variance of a constant channel is 0), >= 0 otherwise."""
    eps = V.scalar(op, "eps", eps, finite=False)
    if training and eps <= 0:
        raise ValueError(f"{op}: eps must be > 0 in training, got {eps!r}")
    if eps < 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps!r}")
    return eps


def _bn_row_chunks(m: int) -> int:
    """Row chunks of channels-last BatchNorm statistics over m rows: a function of the shape only (chunks
    of at least 512 rows, at most 64), so the statistics do not depend on the thread count."""
    return max(1, min(64, m // 512))


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
) -> BatchNormForward:
    """BatchNorm, like ``torch.nn.functional.batch_norm``; channel ``axis`` 1 (N, C, *) or -1 (*, C).

    training, per channel over its n values (every axis but the channel axis)::

        mean = sum(x_c) / n,  var = sum((x_c - mean)^2) / n,  rstd = 1 / sqrt(var + eps)
        running_mean <- (1 - momentum) * running_mean + momentum * mean            (in place, if given)
        running_var  <- (1 - momentum) * running_var + momentum * var * n / (n - 1)

    evaluation (``training=False``): mean = running_mean, rstd = 1 / sqrt(running_var + eps) (required,
    not updated). y = (x - mean) * rstd * weight + bias.

    Shapes: x (N, C, *) with axis=1, any rank >= 2, or (*, C) with axis=-1 (channels-last); weight, bias,
    running_mean, running_var (C,), all optional in training (running stats both or neither); mean, rstd
    (C,), what ``batch_norm_backward`` takes in either mode. Running statistics must be C-contiguous,
    aligned, native, writeable arrays of x's dtype in training (they are updated in place).

    16-bit x (bfloat16, float16): y in x's dtype; mean, rstd float32; statistics accumulated in float64
    from the float32-widened values; weight, bias and each running statistic in x's dtype or float32
    (torch's CPU rule is all parameters and running statistics in x's dtype, or all float32; both work
    here, and so do mixtures). Running statistics are updated in float64 and rounded once into their
    dtype: keep them float32 (torch's mixed-precision BatchNorm), a bfloat16 running_var loses the
    small updates of a converged estimate.

    As torch: ``training`` must be a bool (TypeError otherwise); ``momentum`` is any float (values
    outside [0, 1] extrapolate; for torch's ``momentum=None`` cumulative average pass 1 / batches seen,
    as ``fastnorm.torch.nn.BatchNorm*`` do); ``eps`` must be > 0 in training and >= 0 in evaluation; one
    value per channel (N * L = 1) in training is a ValueError. Empty x (N, C or L zero): nothing is
    normalized, the running statistics are not updated; mean, rstd are (0, NaN) in training and the
    running statistics' in evaluation. ``out=(y, mean, rstd)``. Returns ``BatchNormForward(y, mean, rstd)``.
    """
    op = "batch_norm_forward"
    be = backend_of(
        op, x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var, out=out
    )
    x = V.float_input(be, op, "x", x)
    n, c, length = V.split_channels(op, x.shape, axis)
    training = V.flag(op, "training", training)
    weight = V.param(be, op, "weight", weight, (c,), _dtypes.param_dtypes(x.dtype))
    bias = V.param(be, op, "bias", bias, (c,), _dtypes.param_dtypes(x.dtype))
    eps = _batch_norm_eps(op, eps, training)
    momentum = V.scalar(op, "momentum", momentum, finite=False)
    if training and n * length == 1:
        raise ValueError(f"{op}: training needs more than 1 value per channel, got x of shape {tuple(x.shape)}")
    if not training and (running_mean is None or running_var is None):
        raise TypeError(f"{op}: running_mean and running_var are required when training=False")
    others = [("x", x), ("weight", weight), ("bias", bias)]
    running_mean, running_var = _running_stats(be, op, running_mean, running_var, c, x.dtype, training, others)
    sd = be.stat_dtype(x.dtype)
    y, mean, rstd = V.outputs(
        be,
        op,
        out,
        [("y", x.shape, x.dtype), ("mean", (c,), sd), ("rstd", (c,), sd)],
        (x, weight, bias, running_mean, running_var),
    )
    if x.size == 0:
        if training:
            _empty_reduction(be, mean, rstd)
        else:
            _eval_stats(be, mean, rstd, running_mean, running_var, eps)
        return BatchNormForward(y, mean, rstd)
    nt = be.threads(x.size)
    if not training:
        work = be.empty((1, 2), np.float64)
    elif length > 1:
        work = be.empty((n * c, 2), np.float64)
    else:
        work = be.empty((_bn_row_chunks(n), 5 * c), np.float64)
    absent = _absent(be, sd)
    w32, b32, rm32, rv32 = _to_stat(be, sd, weight, bias, running_mean, running_var)
    be.kernels.batch_norm_forward(
        x.reshape(n, c, length),
        absent if w32 is None else w32,
        absent if b32 is None else b32,
        absent if rm32 is None else rm32,
        absent if rv32 is None else rv32,
        y.reshape(n, c, length),
        mean,
        rstd,
        work,
        be.empty((4, c + 8), sd),
        eps,
        momentum,
        training,
        nt,
    )
    if training:
        _round_back(be, (running_mean, running_var), (rm32, rv32))
    return BatchNormForward(y, mean, rstd)


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
) -> BatchNormBackward:
    """Gradients of ``batch_norm_forward`` given ``dy`` and the ``mean``, ``rstd`` it returned.

    With xhat = (x - mean) * rstd and g = dy * weight (dy without weight), per channel over its n values::

        training:   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
        evaluation: dx = rstd * g           (running statistics are constants)
        dweight = sum(dy * xhat),  dbias = sum(dy)

    ``bias`` only says whether dbias is wanted. Shapes as in the forward. ``out=(dx, dweight, dbias)``.
    Returns ``BatchNormBackward(dx, dweight, dbias)``; dweight/dbias are None when weight/bias are None,
    bitwise reproducible for a given thread count. 16-bit x: dx in x's dtype, mean/rstd float32,
    dweight/dbias in the dtype of weight/bias (sums in float64, rounded once).
    """
    op = "batch_norm_backward"
    be = backend_of(op, dy=dy, x=x, mean=mean, rstd=rstd, weight=weight, bias=bias, out=out)
    x = V.float_input(be, op, "x", x)
    n, c, length = V.split_channels(op, x.shape, axis)
    training = V.flag(op, "training", training)
    dy = V.required(be, op, "dy", dy, x.shape, x.dtype)
    sd = be.stat_dtype(x.dtype)
    mean = V.required(be, op, "mean", mean, (c,), sd)
    rstd = V.required(be, op, "rstd", rstd, (c,), sd)
    weight = V.param(be, op, "weight", weight, (c,), _dtypes.param_dtypes(x.dtype))
    bias = V.param(be, op, "bias", bias, (c,), _dtypes.param_dtypes(x.dtype))
    dx, dweight, dbias = V.outputs(
        be,
        op,
        out,
        [
            ("dx", x.shape, x.dtype),
            None if weight is None else ("dweight", (c,), weight.dtype),
            None if bias is None else ("dbias", (c,), bias.dtype),
        ],
        (dy, x, mean, rstd, weight, bias),
    )
    if x.size == 0:
        _fill(be, dweight, 0.0)
        _fill(be, dbias, 0.0)
        return BatchNormBackward(dx, dweight, dbias)
    nt = be.threads(x.size)
    work = be.empty((n * c + c, 2) if length > 1 else (_bn_row_chunks(n) + 1, 2 * c), np.float64)
    absent = _absent(be, sd)
    (w32,) = _to_stat(be, sd, weight)
    dw32, db32 = _stat_outputs(be, sd, dweight, dbias)
    be.kernels.batch_norm_backward(
        dy.reshape(n, c, length),
        x.reshape(n, c, length),
        mean,
        rstd,
        absent if w32 is None else w32,
        dx.reshape(n, c, length),
        absent if dw32 is None else dw32,
        absent if db32 is None else db32,
        work,
        be.empty((4, c + 8), sd),
        training,
        nt,
    )
    _round_back(be, (dweight, dbias), (dw32, db32))
    return BatchNormBackward(dx, dweight, dbias)


# --------------------------------------------------------------------------------------------- InstanceNorm
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
) -> InstanceNormForward:
    """InstanceNorm, like ``torch.nn.functional.instance_norm``: statistics per (n, c) over the L positions.

    use_input_stats, per instance (n, c)::

        mean = sum(x_nc) / L,  var = sum((x_nc - mean)^2) / L,  rstd = 1 / sqrt(var + eps)
        running_mean <- (1 - momentum) * running_mean + momentum * mean_n(mean)       (in place, if given)
        running_var  <- (1 - momentum) * running_var + momentum * mean_n(var * L / (L - 1))

    else: mean[n, c] = running_mean[c], rstd[n, c] = 1 / sqrt(running_var[c] + eps) (required).
    y = (x - mean) * rstd * weight[c] + bias[c].

    Shapes: x (N, C, *), any rank >= 2 (L = prod(spatial) must not be 1 with use_input_stats, as torch);
    weight, bias, running stats (C,); mean, rstd (N, C). As torch: ``use_input_stats`` must be a bool,
    ``momentum`` and ``eps`` may be any float. Empty x: nothing is normalized; mean, rstd are (0, NaN)
    with use_input_stats, else the running statistics'. As torch, running statistics are left as they are
    when L = 0 and become NaN when N = 0 (the update is a mean over the N instances). 16-bit x: as
    ``batch_norm_forward`` (mean, rstd float32; parameters and running statistics in x's dtype or
    float32).
    ``out=(y, mean, rstd)``. Returns ``InstanceNormForward(y, mean, rstd)``.
    """
    op = "instance_norm_forward"
    be = backend_of(
        op, x=x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var, out=out
    )
    x = V.float_input(be, op, "x", x)
    n, c, length = V.split_channels(op, x.shape, 1)
    use_input_stats = V.flag(op, "use_input_stats", use_input_stats)
    weight = V.param(be, op, "weight", weight, (c,), _dtypes.param_dtypes(x.dtype))
    bias = V.param(be, op, "bias", bias, (c,), _dtypes.param_dtypes(x.dtype))
    eps = V.scalar(op, "eps", eps, finite=False)
    momentum = V.scalar(op, "momentum", momentum, finite=False)
    if use_input_stats and length == 1:
        raise ValueError(
            f"{op}: use_input_stats needs more than 1 spatial value per instance, "
            f"got x of shape {tuple(x.shape)}"
        )
    if not use_input_stats and (running_mean is None or running_var is None):
        raise TypeError(f"{op}: running_mean and running_var are required when use_input_stats=False")
    running_mean, running_var = _running_stats(
        be,
        op,
        running_mean,
        running_var,
        c,
        x.dtype,
        use_input_stats,
        [("x", x), ("weight", weight), ("bias", bias)],
    )
    sd = be.stat_dtype(x.dtype)
    y, mean, rstd = V.outputs(
        be,
        op,
        out,
        [("y", x.shape, x.dtype), ("mean", (n, c), sd), ("rstd", (n, c), sd)],
        (x, weight, bias, running_mean, running_var),
    )
    if x.size == 0:
        if use_input_stats:
            _empty_reduction(be, mean, rstd)
            if n == 0 and running_mean is not None:  # torch: the running statistics' mean over no instances
                _fill(be, running_mean, np.nan)
                _fill(be, running_var, np.nan)
        else:
            _eval_stats(be, mean, rstd, running_mean, running_var, eps)
        return InstanceNormForward(y, mean, rstd)
    absent = _absent(be, sd)
    w32, b32, rm32, rv32 = _to_stat(be, sd, weight, bias, running_mean, running_var)
    be.kernels.instance_norm_forward(
        x.reshape(n, c, length),
        absent if w32 is None else w32,
        absent if b32 is None else b32,
        absent if rm32 is None else rm32,
        absent if rv32 is None else rv32,
        y.reshape(n, c, length),
        mean,
        rstd,
        be.empty((n * c, 2), np.float64),
        eps,
        momentum,
        use_input_stats,
        be.threads(x.size),
    )
    if use_input_stats:
        _round_back(be, (running_mean, running_var), (rm32, rv32))
    return InstanceNormForward(y, mean, rstd)


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
) -> InstanceNormBackward:
    """Gradients of ``instance_norm_forward`` given ``dy`` and the ``mean``, ``rstd`` (N, C) it returned.

    With xhat = (x - mean) * rstd and g = dy * weight[c], per instance over its L values::

        use_input_stats: dx = rstd * (g - mean(g) - xhat * mean(g * xhat));  else dx = rstd * g
        dweight[c] = sum_{n, l} dy * xhat,  dbias[c] = sum_{n, l} dy

    ``out=(dx, dweight, dbias)``. Returns ``InstanceNormBackward(dx, dweight, dbias)``.
    """
    op = "instance_norm_backward"
    be = backend_of(op, dy=dy, x=x, mean=mean, rstd=rstd, weight=weight, bias=bias, out=out)
    x = V.float_input(be, op, "x", x)
    c = V.split_channels(op, x.shape, 1)[1]
    use_input_stats = V.flag(op, "use_input_stats", use_input_stats)
    grads, args, finish = _groups_backward_args(be, op, dy, x, mean, rstd, c, weight, bias, out)
    if args is not None:
        be.kernels.instance_norm_backward(*args, use_input_stats, be.threads(x.size))
        finish()
    return InstanceNormBackward(*grads)


def _groups_backward_args(be, op, dy, x, mean, rstd, groups, weight, bias, out):
    """Validation and allocation shared by GroupNorm / InstanceNorm backward (mean, rstd (N, groups)).

    Returns ((dx, dweight, dbias), kernel arguments up to the scratch, finish): call ``finish()`` after
    the kernel (it rounds float32 parameter gradients into 16-bit dweight/dbias); for an empty x the
    gradients are already final (dweight = dbias = 0) and the arguments are None.
    """
    n, c, length = V.split_channels(op, x.shape, 1)
    dy = V.required(be, op, "dy", dy, x.shape, x.dtype)
    sd = be.stat_dtype(x.dtype)
    mean = V.required(be, op, "mean", mean, (n, groups), sd)
    rstd = V.required(be, op, "rstd", rstd, (n, groups), sd)
    weight = V.param(be, op, "weight", weight, (c,), _dtypes.param_dtypes(x.dtype))
    bias = V.param(be, op, "bias", bias, (c,), _dtypes.param_dtypes(x.dtype))
    dx, dweight, dbias = V.outputs(
        be,
        op,
        out,
        [
            ("dx", x.shape, x.dtype),
            None if weight is None else ("dweight", (c,), weight.dtype),
            None if bias is None else ("dbias", (c,), bias.dtype),
        ],
        (dy, x, mean, rstd, weight, bias),
    )
    if x.size == 0:
        _fill(be, dweight, 0.0)
        _fill(be, dbias, 0.0)
        return (dx, dweight, dbias), None, None
    absent = _absent(be, sd)
    (w32,) = _to_stat(be, sd, weight)
    dw32, db32 = _stat_outputs(be, sd, dweight, dbias)
    args = [
        dy.reshape(n, c, length),
        x.reshape(n, c, length),
        mean,
        rstd,
        absent if w32 is None else w32,
        dx.reshape(n, c, length),
        absent if dw32 is None else dw32,
        absent if db32 is None else db32,
        be.empty((n * c, 2), np.float64),
    ]
    return (dx, dweight, dbias), args, lambda: _round_back(be, (dweight, dbias), (dw32, db32))


# --------------------------------------------------------------------------------------------- GroupNorm
def _num_groups(op, num_groups, c):
    g = V.integer(op, "num_groups", num_groups, low=1)
    if c % g:
        raise ValueError(f"{op}: the {c} channels are not divisible by num_groups={g}")
    return g


def group_norm_forward(
    x: Array,
    num_groups: int,
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    eps: float = 1e-5,
    out: tuple | None = None,
) -> GroupNormForward:
    """GroupNorm, like ``torch.nn.functional.group_norm``: statistics per (n, group) of C/num_groups channels.

    Per (n, g) over its C/G * L values: mean, var = mean((x - mean)^2), rstd = 1 / sqrt(var + eps);
    y = (x - mean) * rstd * weight[c] + bias[c].

    Shapes: x (N, C, *), any rank >= 2, C divisible by num_groups; weight, bias (C,) (optional);
    mean, rstd (N, num_groups). ``eps`` may be any float, as in torch. Empty groups (C = 0 or L = 0)
    give mean 0 and rstd NaN, as torch. 16-bit x (bfloat16, float16): y in x's dtype, mean and rstd
    float32, weight and bias in x's dtype or float32 (statistics from the float32-widened values, y
    rounded once). ``out=(y, mean, rstd)``. Returns ``GroupNormForward(y, mean, rstd)``.
    """
    op = "group_norm_forward"
    be = backend_of(op, x=x, weight=weight, bias=bias, out=out)
    x = V.float_input(be, op, "x", x)
    n, c, length = V.split_channels(op, x.shape, 1)
    g = _num_groups(op, num_groups, c)
    weight = V.param(be, op, "weight", weight, (c,), _dtypes.param_dtypes(x.dtype))
    bias = V.param(be, op, "bias", bias, (c,), _dtypes.param_dtypes(x.dtype))
    eps = V.scalar(op, "eps", eps, finite=False)
    sd = be.stat_dtype(x.dtype)
    y, mean, rstd = V.outputs(
        be, op, out, [("y", x.shape, x.dtype), ("mean", (n, g), sd), ("rstd", (n, g), sd)], (x, weight, bias)
    )
    if x.size == 0:
        _empty_reduction(be, mean, rstd)
        return GroupNormForward(y, mean, rstd)
    absent = _absent(be, sd)
    w32, b32 = _to_stat(be, sd, weight, bias)
    be.kernels.group_norm_forward(
        x.reshape(n, c, length),
        absent if w32 is None else w32,
        absent if b32 is None else b32,
        y.reshape(n, c, length),
        mean,
        rstd,
        eps,
        be.threads(x.size),
    )
    return GroupNormForward(y, mean, rstd)


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
) -> GroupNormBackward:
    """Gradients of ``group_norm_forward`` given ``dy`` and the ``mean``, ``rstd`` (N, num_groups) it gave.

    With xhat = (x - mean) * rstd and g = dy * weight[c], per (n, group) over its values::

        dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dweight[c] = sum dy * xhat,  dbias[c] = sum dy

    ``out=(dx, dweight, dbias)``. Returns ``GroupNormBackward(dx, dweight, dbias)``; dweight/dbias are
    None when weight/bias are None, bitwise reproducible. For an empty x, dweight = dbias = 0 (torch's
    kernel gives NaN for dweight when the spatial size is 0: 0 * rstd with rstd NaN; a sum over no elements
    is 0).
    """
    op = "group_norm_backward"
    be = backend_of(op, dy=dy, x=x, mean=mean, rstd=rstd, weight=weight, bias=bias, out=out)
    x = V.float_input(be, op, "x", x)
    g = _num_groups(op, num_groups, V.split_channels(op, x.shape, 1)[1])
    grads, args, finish = _groups_backward_args(be, op, dy, x, mean, rstd, g, weight, bias, out)
    if args is not None:
        be.kernels.group_norm_backward(*args, be.threads(x.size))
        finish()
    return GroupNormBackward(*grads)
