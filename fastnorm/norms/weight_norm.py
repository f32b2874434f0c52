"""WeightNorm (w = g * v / |v|, the norm over every axis but ``dim``) and the cosine-normalized linear layer."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import _dtypes
from .. import _validation as V
from .. import reference as R
from .._backend import host
from .._dispatch import backend_of
from .._doc import fill_doc
from .._spec import STAT, Array, OpSpec, Out, args, like, ops, register
from ._common import fill, put, round_back, stat_outputs, to_stat


# ----------------------------------------------------------------------------------------------- WeightNorm
class WeightNormForward(NamedTuple):
    w: Array
    norm: Array


class WeightNormBackward(NamedTuple):
    dv: Array
    dg: Array


WEIGHT_NORM_FWD = register(OpSpec(
    "weight_norm_forward", args("v g :dim=int?"), (Out("w", like("v")), Out("norm", like("g"), STAT)),
    WeightNormForward, "weight_norm", R.weight_norm_forward, primary="v",
))  # fmt: skip
WEIGHT_NORM_BWD = register(OpSpec(
    "weight_norm_backward", args("dw v g norm :dim=int?"), (Out("dv", like("v")), Out("dg", like("g"), "g")),
    WeightNormBackward, "weight_norm", R.weight_norm_backward, primary="v",
))  # fmt: skip


# Plans of the WeightNorm kernels (fastnorm/_kernels/cpu/_weight_norm.pyx).
_WN_ROWS, _WN_FLAT, _WN_COLS = 0, 1, 2
# Views and plans of the shapes seen (a parameter's shape recurs every step): at most _MEMO_MAX of each.
_VIEWS: dict = {}
_PLANS: dict = {}
_MEMO_MAX = 256


def _memo(table: dict, key, value):
    if len(table) >= _MEMO_MAX:
        table.clear()
    table[key] = value
    return value


def _weight_norm_view(op: str, shape: tuple, dim) -> tuple[tuple, tuple[int, int, int]]:
    """g's shape (size 1 except along dim; () for dim=None) and the (A, D, B) view of v."""
    plain = dim is None or type(dim) is int  # only these are remembered (never a bool, as 0 == False)
    hit = _VIEWS.get((shape, dim)) if plain else None
    if hit is not None:
        return hit
    if dim is None:
        return _memo(_VIEWS, (shape, dim), ((), (1, 1, math.prod(shape))))
    if len(shape) == 0:
        raise ValueError(f"{op}: dim must be None for a 0-d v, got {dim!r}")
    d = V.integer(op, "dim", dim, low=-len(shape), high=len(shape) - 1)
    d %= len(shape)
    gshape = tuple(s if i == d else 1 for i, s in enumerate(shape))
    view = gshape, (math.prod(shape[:d]), shape[d], math.prod(shape[d + 1 :]))
    return _memo(_VIEWS, (shape, dim), view) if plain else view


def _weight_norm_plan(be, adb: tuple[int, int, int], n_threads: int, backward: bool, dtype):
    """(mode, part, fac): the kernel plan and its scratch (see the kernel module's docstring)."""
    key = (adb, n_threads, backward)
    plan = _PLANS.get(key)
    if plan is None:
        from fastnorm._kernels.cpu import weight_norm_plan  # a function of the shape: the CPU kernels' plan

        plan = _memo(_PLANS, key, weight_norm_plan(*adb, n_threads, backward))
    mode, part_shape, fac_shape = plan
    return mode, be.empty(part_shape, np.float64), be.empty(fac_shape, dtype)


@fill_doc(WEIGHT_NORM_FWD)
def weight_norm_forward(v: Array, g: Array, *, dim: int | None = 0, out: tuple | None = None) -> WeightNormForward:
    """Weight normalization, like ``torch._weight_norm`` (``torch.nn.utils.weight_norm``)::

        norm = sqrt(sum(v^2 over every axis except dim)),   w = g * v / norm

    Parameters
    ----------
    v : array
        Any shape. 16-bit v (bfloat16, float16): computed in float32 from widened copies of v and g
        (parameter-sized), w rounded once.
    g : array
        v's shape with size 1 on every axis but ``dim`` (() for dim=None); in v's dtype, or float32 beside
        16-bit v.
    dim : int or None
        The kept axis (negative counts from the end); None takes the norm over the whole tensor.
    %(out)s

    Returns
    -------
    WeightNormForward
        ``(w, norm)``: w like v; norm like g in the statistic dtype (float32 for 16-bit v, as
        ``torch._weight_norm_interface``). A zero norm gives inf/NaN, as in torch.
    """
    op = "weight_norm_forward"
    be = backend_of(op, v=v, g=g, out=out)
    v = V.float_input(be, op, "v", v)
    gshape, adb = _weight_norm_view(op, v.shape, dim)
    g = V.required(be, op, "g", g, gshape, _dtypes.param_dtypes(v.dtype))
    sd = be.stat_dtype(v.dtype)
    w, norm = WEIGHT_NORM_FWD.outputs_for(be, out, {"v": v, "g": g})
    if v.size == 0:
        fill(be, norm, 0.0)  # the norm of no elements
        return WeightNormForward(w, norm)
    # 16-bit v: a parameter, small; the float32 kernel on widened copies, w rounded once.
    v32, g32 = to_stat(be, sd, v, g)
    (w32,) = stat_outputs(be, sd, w)
    nt = be.threads(v.size)
    mode, part, fac = _weight_norm_plan(be, adb, nt, False, sd)
    be.kernels.weight_norm_forward(
        v32.reshape(adb), g32.reshape(adb[1]), w32.reshape(adb), norm.reshape(adb[1]), part, fac, mode, nt
    )
    round_back(be, (w,), (w32,))
    return WeightNormForward(w, norm)


@fill_doc(WEIGHT_NORM_BWD)
def weight_norm_backward(
    dw: Array, v: Array, g: Array, norm: Array, *, dim: int | None = 0, out: tuple | None = None
) -> WeightNormBackward:
    """Gradients of ``weight_norm_forward`` given ``dw`` and the saved ``norm``.

    With dot = sum(dw * v over every axis except dim)::

        dg = dot / norm,   dv = g / norm * (dw - v * dot / norm^2)

    Parameters
    ----------
    dw, v : array
        The gradient of w and the forward's v (same shape and dtype).
    g, norm : array
        The forward's g and its saved norm (statistic dtype).
    dim : int or None
        As in the forward.
    %(out)s

    Returns
    -------
    WeightNormBackward
        ``(dv, dg)``: dv in v's dtype, dg in g's dtype; bitwise the same for any thread count.
    """
    op = "weight_norm_backward"
    be = backend_of(op, dw=dw, v=v, g=g, norm=norm, out=out)
    v = V.float_input(be, op, "v", v)
    gshape, adb = _weight_norm_view(op, v.shape, dim)
    dw = V.required(be, op, "dw", dw, v.shape, v.dtype)
    g = V.required(be, op, "g", g, gshape, _dtypes.param_dtypes(v.dtype))
    sd = be.stat_dtype(v.dtype)
    norm = V.required(be, op, "norm", norm, gshape, sd)
    dv, dg = WEIGHT_NORM_BWD.outputs_for(be, out, dict(dw=dw, v=v, g=g, norm=norm))
    if v.size == 0:
        with np.errstate(all="ignore"):  # dot = 0: dg = 0 / norm (NaN for a zero norm, as torch)
            put(be, dg, np.float64(0.0) / host(be, norm).astype(np.float64))
        return WeightNormBackward(dv, dg)
    dw32, v32, g32 = to_stat(be, sd, dw, v, g)
    dv32, dg32 = stat_outputs(be, sd, dv, dg)
    nt = be.threads(v.size)
    mode, part, fac = _weight_norm_plan(be, adb, nt, True, sd)
    d = adb[1]
    be.kernels.weight_norm_backward(
        dw32.reshape(adb),
        v32.reshape(adb),
        g32.reshape(d),
        norm.reshape(d),
        dv32.reshape(adb),
        dg32.reshape(d),
        part,
        fac,
        mode,
        nt,
    )
    round_back(be, (dv, dg), (dv32, dg32))
    return WeightNormBackward(dv, dg)


# --------------------------------------------------------------------------------------------- CosineLinear
class CosineLinearForward(NamedTuple):
    y: Array
    x_norm: Array
    w_norm: Array


class CosineLinearBackward(NamedTuple):
    dx: Array
    dw: Array


def _cos_lead(d) -> tuple:
    return tuple(d.x[:-1])


COSINE_LINEAR_FWD = register(OpSpec(
    "cosine_linear_forward", args("x w :eps=float"),
    (Out("y", lambda d: (*d.x[:-1], d.w[0])), Out("x_norm", _cos_lead, STAT), Out("w_norm", lambda d: d.w[:1], STAT)),
    CosineLinearForward, "weight_norm", R.cosine_linear_forward,
))  # fmt: skip
COSINE_LINEAR_BWD = register(OpSpec(
    "cosine_linear_backward", args("dy x w y x_norm w_norm :eps=float"),
    (Out("dx", like("x")), Out("dw", like("w"), "w")), CosineLinearBackward, "weight_norm",
    R.cosine_linear_backward,
))  # fmt: skip

__all__ = [s.name for s in ops("weight_norm")]  # the public functions below, one per declaration


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


@fill_doc(COSINE_LINEAR_FWD)
def cosine_linear_forward(x: Array, w: Array, *, eps: float = 1e-8, out: tuple | None = None) -> CosineLinearForward:
    """Cosine-normalized linear layer: the cosine similarity of every row of x with every row of w::

        x_norm = |x| (L2 over the last axis),   w_norm = |w| (L2 over each row)
        y = (x @ w.T) / (max(x_norm, eps) * max(w_norm, eps))

    i.e. ``F.linear(F.normalize(x, eps=eps), F.normalize(w, eps=eps))``, and ``F.cosine_similarity`` of every
    pair of rows (it too clamps each norm at eps separately). The product is one BLAS call (NumPy's, with its
    own thread pool); the norms and the scaling are fused kernels.

    Parameters
    ----------
    x : array, shape (*, D)
        16-bit x (bfloat16, float16): computed in float32 on widened copies (the product too), y rounded once.
    w : array, shape (O, D)
        In x's dtype, or float32 beside 16-bit x.
    eps : float
        > 0; each norm is clamped at eps.
    %(out)s

    Returns
    -------
    CosineLinearForward
        ``(y, x_norm, w_norm)``: y (*, O) in x's dtype; the unclamped norms x_norm (*) and w_norm (O,) in the
        statistic dtype.
    """
    op = "cosine_linear_forward"
    be = backend_of(op, x=x, w=w, out=out)
    x, w, eps, m, d, o = _cosine_args(be, op, x, w, eps)
    sd = be.stat_dtype(x.dtype)
    y, x_norm, w_norm = COSINE_LINEAR_FWD.outputs_for(be, out, {"x": x, "w": w})
    if sd != x.dtype:  # 16-bit: float32 product and norms of the widened inputs, y rounded once
        x32, w32 = to_stat(be, sd, x, w)
        (y32,) = stat_outputs(be, sd, y)
        cosine_linear_forward(x32, w32, eps=eps, out=(y32, x_norm, w_norm))
        round_back(be, (y,), (y32,))
        return CosineLinearForward(y, x_norm, w_norm)
    x2, y2 = x.reshape(m, d), y.reshape(m, o)
    _matmul(be, x2, w.T, y2)
    nt = be.threads(m * o + (m + o) * d)
    be.kernels.cosine_linear_forward(x2, w, y2, x_norm.reshape(m), w_norm, eps, nt)
    return CosineLinearForward(y, x_norm, w_norm)


@fill_doc(COSINE_LINEAR_BWD)
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

    The clamp has zero derivative below eps (as ``F.normalize``'s ``clamp_min``; torch's ``cosine_similarity``
    instead differentiates the norm through its clamp).

    Parameters
    ----------
    dy, y : array, shape (*, O)
        The gradient of y and the saved y (x's dtype).
    x, w : array
        The forward's inputs.
    x_norm, w_norm : array
        Saved by the forward (statistic dtype).
    eps : float
        As in the forward.
    %(out)s

    Returns
    -------
    CosineLinearBackward
        ``(dx, dw)`` in the dtypes of x and w; bitwise reproducible for a given thread count (and BLAS).
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
    dx, dw = COSINE_LINEAR_BWD.outputs_for(be, out, dict(dy=dy, x=x, w=w, y=y, x_norm=x_norm, w_norm=w_norm))
    if sd != x.dtype:  # 16-bit: the float32 backward on widened copies, dx and dw rounded once
        dy32, x32, w32, y32 = to_stat(be, sd, dy, x, w, y)
        dx32, dw32 = stat_outputs(be, sd, dx, dw)
        cosine_linear_backward(dy32, x32, w32, y32, x_norm, w_norm, eps=eps, out=(dx32, dw32))
        round_back(be, (dx, dw), (dx32, dw32))
        return CosineLinearBackward(dx, dw)
    nt = be.threads(m * o)
    n_chunks = max(1, min(nt, m))
    gs, cx, cw = be.empty((m, o), x.dtype), be.empty((m,), x.dtype), be.empty((o,), x.dtype)
    be.kernels.cosine_linear_backward_pre(
        dy.reshape(m, o),
        y.reshape(m, o),
        x_norm.reshape(m),
        w_norm,
        gs,
        cx,
        cw,
        be.empty((n_chunks, o), np.float64),
        eps,
        nt,
    )
    x2, dx2 = x.reshape(m, d), dx.reshape(m, d)
    _matmul(be, gs, w, dx2)
    _matmul(be, gs.T, x2, dw)
    be.kernels.cosine_linear_backward_post(x2, w, cx, cw, dx2, dw, be.threads((m + o) * d))
    return CosineLinearBackward(dx, dw)
