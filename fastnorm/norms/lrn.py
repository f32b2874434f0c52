"""LocalResponseNorm across channels of (N, C, *) arrays, viewed as (N, C, L)."""

from __future__ import annotations

import math
from typing import NamedTuple

from .. import _validation as V
from .. import reference as R
from .._dispatch import backend_of
from .._doc import fill_doc
from .._spec import STAT, Array, OpSpec, Out, Scratch, args, like, ops, register


class LocalResponseNormForward(NamedTuple):
    y: Array
    scale: Array


def _window_rows(d) -> tuple:
    """Per-thread float64 rows for the kernels' block sums, of the length the kernel module's
    ``lrn_scratch_len`` gives for the window (``size``) clamped to the ``c`` channels."""
    lo, hi = min(d.size // 2, max(d.c - 1, 0)), min((d.size - 1) // 2, max(d.c - 1, 0))
    return (d.threads, d.kernels.lrn_scratch_len(lo, hi))


_SCRATCH = (Scratch("scratch", _window_rows),)

LRN_FWD = register(OpSpec(
    "local_response_norm_forward",
    args("x :size=int :alpha=float :beta=float :k=float"),
    (Out("y", like("x")), Out("scale", like("x"), STAT)),
    LocalResponseNormForward, "lrn", R.local_response_norm_forward, scratch=_SCRATCH,
))  # fmt: skip
LRN_BWD = register(OpSpec(
    "local_response_norm_backward",
    args("dy x y scale :size=int :alpha=float :beta=float :k=float"),
    (Out("dx", like("x")),),
    None, "lrn", R.local_response_norm_backward, scratch=_SCRATCH,
))  # fmt: skip

__all__ = [s.name for s in ops("lrn")]  # the public functions below, one per declaration


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


@fill_doc(LRN_FWD)
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

    Parameters
    ----------
    x : array
        (N, C, *) of any rank >= 3, or (N, C) (torch rejects 2-D; here it is the case of no spatial dims).
        16-bit x (bfloat16, float16): computed in float32 from the widened values, y rounded once (torch
        has no 16-bit CPU LRN).
    size : int
        The window length (>= 1).
    alpha, beta, k : float
        k > 0. beta in {0.25, 0.5, 0.75, 1} takes a sqrt-based path; other exponents call ``pow`` (several
        times slower).
    %(out)s

    Returns
    -------
    LocalResponseNormForward
        ``(y, scale)``: y like x in x's dtype, scale like x in the statistic dtype.
    """
    op = "local_response_norm_forward"
    be = backend_of(op, x=x, out=out)
    x = V.float_input(be, op, "x", x)
    ncl, size, alpha, beta, k = _lrn_args(op, x, size, alpha, beta, k)
    y, scale = LRN_FWD.outputs_for(be, out, {"x": x})
    if x.size == 0:
        return LocalResponseNormForward(y, scale)
    nt = be.threads(x.size)
    be.kernels.local_response_norm_forward(
        x.reshape(ncl), y.reshape(ncl), scale.reshape(ncl),
        *LRN_FWD.scratch_for(be, x.dtype, c=ncl[1], size=size, threads=nt), size, alpha, beta, k, nt,
    )  # fmt: skip
    return LocalResponseNormForward(y, scale)


@fill_doc(LRN_BWD)
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

    Parameters
    ----------
    dy, x, y : array
        Like x (16-bit x: in x's dtype).
    scale : array
        Like x, in the statistic dtype (float32 for 16-bit x).
    size, alpha, beta, k :
        As in the forward; ``k`` is checked but enters only through ``scale``.
    %(out)s

    Returns
    -------
    array
        dx, like x (an array, not a tuple).
    """
    op = "local_response_norm_backward"
    be = backend_of(op, dy=dy, x=x, y=y, scale=scale, out=out)
    x = V.float_input(be, op, "x", x)
    ncl, size, alpha, beta, k = _lrn_args(op, x, size, alpha, beta, k)
    dy = V.required(be, op, "dy", dy, x.shape, x.dtype)
    y = V.required(be, op, "y", y, x.shape, x.dtype)
    scale = V.required(be, op, "scale", scale, x.shape, be.stat_dtype(x.dtype))
    (dx,) = LRN_BWD.outputs_for(be, out, dict(dy=dy, x=x, y=y, scale=scale))
    if x.size == 0:
        return dx
    nt = be.threads(x.size)
    be.kernels.local_response_norm_backward(
        dy.reshape(ncl), x.reshape(ncl), y.reshape(ncl), scale.reshape(ncl), dx.reshape(ncl),
        *LRN_BWD.scratch_for(be, x.dtype, c=ncl[1], size=size, threads=nt), size, alpha, beta, nt,
    )  # fmt: skip
    return dx
