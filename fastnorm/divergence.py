"""Public row-wise losses and divergences: validate -> canonicalize to (M, V) rows -> allocate -> dispatch.

- ``softmax_cross_entropy_forward`` / ``_backward``: ``torch.nn.functional.cross_entropy`` semantics, the
  forward optionally fused with the gradient (written to a new or ``out=`` buffer, or in place over the
  logits: zero extra memory, as Liger-Kernel does).
- ``entropy`` / ``entropy_backward``: ``scipy.stats.entropy`` (rows normalized to sum 1).
- ``kl_div`` / ``kl_div_backward``: ``torch.nn.functional.kl_div``.
- ``js_div`` / ``js_div_backward``: Liger-Kernel's generalized Jensen-Shannon divergence.

NumPy arrays run on the CPU kernels, ``__cuda_array_interface__`` arrays on the CUDA kernels (the targets'
range check and the mean's denominator read the (small) target vector on the host: one device-to-host copy).
Reduced losses are 0-d arrays of the input dtype; per-row statistics (log-sum-exp) are float64.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import _validation as V
from ._dispatch import backend_of

__all__ = [
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "entropy",
    "entropy_backward",
    "kl_div",
    "kl_div_backward",
    "js_div",
    "js_div_backward",
]

Array = Any

_CE_REDUCTIONS = ("none", "sum", "mean")
_KL_REDUCTIONS = ("none", "sum", "mean", "batchmean")
_GRAD_MODES = (None, "out", "inplace")


class SoftmaxCrossEntropyForward(NamedTuple):
    loss: Array
    lse: Array
    grad: Array | None


class DivergenceForward(NamedTuple):
    loss: Array
    dinput: Array | None
    dtarget: Array | None


class DivergenceBackward(NamedTuple):
    dinput: Array | None
    dtarget: Array | None


# ------------------------------------------------------------------------------------------- helpers
def _choice(op: str, name: str, value, allowed: tuple):
    if value not in allowed:
        raise ValueError(f"{op}: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def _host(be, a) -> np.ndarray:
    """A (small) array as a NumPy array on the host (a device-to-host copy on CUDA)."""
    if be.name == "cpu":
        return np.asarray(a)
    from ._kernels.cuda._common import dev

    return dev(a).copy_to_host()


def _to_be(be, a: np.ndarray):
    """A small host array on backend ``be``."""
    if be.name == "cpu":
        return a
    from numba import cuda

    return cuda.to_device(a)


def _absent(be, dtype, ndim: int = 1):
    return be.empty((0,) * ndim, dtype)


def _data_ptr(be, a) -> int:
    try:
        if isinstance(a, np.ndarray):
            return a.__array_interface__["data"][0]
        return int(be._iface(a)["data"][0])
    except Exception:
        return -1


def _check_inplace(op: str, be, name: str, a, given) -> None:
    """grad='inplace' writes over ``given``: it must be the very buffer the kernel reads (no copy made)."""
    if _data_ptr(be, a) != _data_ptr(be, given) or _data_ptr(be, a) == -1:
        raise ValueError(
            f"{op}: grad='inplace' overwrites {name} with the gradient, so {name} must be a C-contiguous "
            "float32/float64 array that is used as given (this one would be copied first)"
        )
    if not be.is_writeable(a):
        raise ValueError(f"{op}: grad='inplace' but {name} is read-only")


def _rows(op: str, name: str, a) -> tuple[tuple, int, int]:
    """(leading shape, M, V) for rows along the last axis; a needs at least 1 dim and V >= 1."""
    if len(a.shape) == 0:
        raise ValueError(f"{op}: {name} must have at least 1 dim (rows are along the last axis), got a 0-d array")
    v = int(a.shape[-1])
    if v == 0:
        raise ValueError(f"{op}: {name} has an empty last axis (shape {tuple(a.shape)}); need V >= 1")
    lead = tuple(a.shape[:-1])
    return lead, math.prod(lead), v


def _reduced(be, rows, reduction: str, div: float, dtype, out_buf):
    """Sum the float64 row losses in fixed order, divide for "mean"/"batchmean": a 0-d array of ``dtype``
    (written into ``out_buf`` if given)."""
    s = float(np.sum(_host(be, rows)))
    if reduction in ("mean", "batchmean"):
        s = s / div if div != 0 else math.nan
    if out_buf is None:
        return np.asarray(s, dtype=dtype) if be.name == "cpu" else _to_be(be, np.asarray(s, dtype=dtype))
    out_buf[...] = s
    return out_buf


def _rows_out(be, rows, dtype, shape, out_buf):
    """Unreduced row losses in ``dtype`` (into ``out_buf`` if given)."""
    vals = _host(be, rows).astype(dtype).reshape(shape)
    if out_buf is None:
        return vals if be.name == "cpu" else _to_be(be, vals)
    out_buf[...] = vals
    return out_buf


def _check_out_scalar(be, op: str, out_buf, shape, dtype, inputs):
    if out_buf is None:
        return None
    if be.name != "cpu":
        raise ValueError(f"{op}: an out= buffer for the loss is supported on the CPU only")
    return V.outputs(be, op, (out_buf,), [("loss", shape, dtype)], inputs)[0]


# ------------------------------------------------------------------------------------- cross-entropy
def _ce_common(op, be, logits, target, weight, ignore_index, label_smoothing, reduction):
    """Validated (x2, target arrays, weight, scalars, mean denominator) shared by forward and backward."""
    x = V.float_input(be, op, "logits", logits, half=False)
    if len(x.shape) not in (1, 2):
        raise ValueError(f"{op}: logits must be (N, V) or (V,) (class axis last), got shape {tuple(x.shape)}")
    lead, m, v = _rows(op, "logits", x)
    reduction = _choice(op, "reduction", reduction, _CE_REDUCTIONS)
    eps = V.scalar(op, "label_smoothing", label_smoothing, low=0.0, high=1.0)
    ignore_index = V.integer(op, "ignore_index", ignore_index)
    weight = V.param(be, op, "weight", weight, (v,), x.dtype)
    if target is None:
        raise TypeError(f"{op}: target is required, got None")
    tdt = V.dtype_of(target) if hasattr(target, "dtype") else np.asarray(target).dtype
    if tdt is not None and tdt.kind == "f":
        tp = V.float_input(be, op, "target", target, x.dtype, half=False)
        V.check_shape(op, "target", tp, x.shape)
        tidx = None
        denom = float(m)
    elif tdt is not None and tdt.kind in "iu":
        th = np.asarray(_host(be, target))
        if th.shape != lead:
            raise ValueError(f"{op}: target (class indices) must have shape {lead}, got {th.shape}")
        th = th.reshape(m).astype(np.int64, copy=False)
        kept = th[th != ignore_index]
        if kept.size and (kept.min() < 0 or kept.max() >= v):
            bad = kept[(kept < 0) | (kept >= v)][0]
            raise ValueError(
                f"{op}: target has class index {int(bad)} outside [0, {v}) (and not ignore_index={ignore_index})"
            )
        tp = None
        tidx = np.ascontiguousarray(th)
        if weight is None:
            denom = float(kept.size)
        else:
            wh = _host(be, weight).astype(np.float64)
            denom = float(wh[kept].sum())
    else:
        raise TypeError(
            f"{op}: target must be class indices (an integer array) or class probabilities (logits' float "
            f"dtype), got dtype {getattr(target, 'dtype', type(target).__name__)}"
        )
    wsum = float(_host(be, weight).astype(np.float64).sum()) if weight is not None else float(v)
    return x, lead, m, v, tidx, tp, weight, eps, ignore_index, reduction, denom, wsum


def _ce_kernel_args(be, x, m, v, tidx, tp, weight):
    t_k = _to_be(be, tidx) if tidx is not None else _absent(be, np.int64)
    tp_k = tp.reshape(m, v) if tp is not None else _absent(be, x.dtype, 2)
    w_k = weight if weight is not None else _absent(be, x.dtype)
    return t_k, tp_k, w_k


def softmax_cross_entropy_forward(
    logits: Array,
    target: Array,
    *,
    weight: Array | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    grad: str | None = None,
    out: tuple | None = None,
) -> SoftmaxCrossEntropyForward:
    """Softmax cross-entropy (``torch.nn.functional.cross_entropy``), optionally fused with its gradient.

    With logp = log_softmax(logits) per row, eps = ``label_smoothing``, w = ``weight`` (ones if None)::

        class indices t:      loss_i = (1 - eps) w[t_i] (-logp[i, t_i]) + eps / V sum_j w_j (-logp[i, j])
        probabilities y:      loss_i = -sum_j w_j y'_ij logp[i, j],   y' = (1 - eps) y + eps / V

    Rows with t_i == ``ignore_index`` have loss 0. ``reduction``: "none" (loss_i), "sum", "mean" (sum over
    sum_{i not ignored} w[t_i] for indices, NaN when every row is ignored; / N for probabilities).

    Parameters
    ----------
    logits : (N, V) or (V,) float32/float64 array, class axis last. (torch's (N, V, d1, ...) layout is
        not supported: move the class axis last first.)
    target : int32/int64 class indices of shape (N,) (() for 1-D logits), each in [0, V) or
        ``ignore_index``; or float class probabilities of logits' shape and dtype.
    weight : optional (V,) per-class weights.
    ignore_index, label_smoothing, reduction : as in torch.
    grad : None (loss only), "out" (also write d(loss)/d(logits) into a new or ``out=`` buffer) or
        "inplace" (write it over ``logits``, which must be a writeable C-contiguous float array; zero extra
        memory). For reduction "none" the gradient is that of sum(loss).
    out : optional (loss, lse, grad) buffers (entries may be None); grad only with ``grad="out"``.

    Returns
    -------
    SoftmaxCrossEntropyForward(loss, lse, grad): loss (0-d for "sum"/"mean", else target's shape for
    indices / (N,) for probabilities) in logits' dtype; lse = logsumexp(logits) per row, float64 (for
    ``softmax_cross_entropy_backward``); grad (None without ``grad``; the logits array itself with
    "inplace"). Out-of-range targets raise ValueError before anything is written.
    """
    op = "softmax_cross_entropy_forward"
    grad = _choice(op, "grad", grad, _GRAD_MODES)
    be = backend_of(op, logits=logits, target=target, weight=weight, out=out)
    x_in = logits
    x, lead, m, v, tidx, tp, weight, eps, ii, reduction, denom, wsum = _ce_common(
        op, be, logits, target, weight, ignore_index, label_smoothing, reduction
    )
    if grad == "inplace":
        _check_inplace(op, be, "logits", x, x_in)
    loss_shape = lead if reduction == "none" else ()
    specs = [
        ("loss", loss_shape, x.dtype),
        ("lse", lead, np.float64),
        ("grad", x.shape, x.dtype) if grad == "out" else None,
    ]
    if out is not None and not isinstance(out, (list, tuple)):
        raise TypeError(f"{op}: out must be a tuple (loss, lse, grad), got {type(out).__name__}")
    if out is not None and len(out) != 3:
        raise ValueError(f"{op}: out must have 3 entries (loss, lse, grad), got {len(out)}")
    loss_buf = out[0] if out is not None else None
    inputs = (x, tp, weight)
    lse_g = V.outputs(be, op, None if out is None else (out[1], out[2]), specs[1:], inputs)
    lse, g = lse_g
    loss_buf = _check_out_scalar(be, op, loss_buf, loss_shape, x.dtype, inputs + (lse, g))
    if grad == "inplace":
        g = x
    rows = be.empty((m,), np.float64)
    if grad is None:
        gs = be.empty((0,), np.float64)
    elif reduction == "mean":
        gs = _to_be(be, np.array([1.0 / denom if denom != 0 else math.nan]))
    else:
        gs = _to_be(be, np.array([1.0]))
    t_k, tp_k, w_k = _ce_kernel_args(be, x, m, v, tidx, tp, weight)
    be.kernels.softmax_cross_entropy_forward(
        x.reshape(m, v),
        t_k,
        tp_k,
        w_k,
        gs,
        g.reshape(m, v) if g is not None else _absent(be, x.dtype, 2),
        rows,
        lse.reshape(m),
        ii,
        eps,
        wsum,
        be.threads(m * v),
    )
    if reduction == "none":
        loss = _rows_out(be, rows, x.dtype, loss_shape, loss_buf)
    else:
        loss = _reduced(be, rows, reduction, denom, x.dtype, loss_buf)
    return SoftmaxCrossEntropyForward(loss, lse, x_in if grad == "inplace" else g)


def softmax_cross_entropy_backward(
    dloss: Array | float,
    logits: Array,
    target: Array,
    lse: Array,
    *,
    weight: Array | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    out: Array | None = None,
) -> Array:
    """Gradient of ``softmax_cross_entropy_forward`` with respect to logits, times ``dloss``.

    With p = softmax(logits) = exp(logits - lse) per row::

        class indices:   dlogits_i = dloss_i ((1 - eps) w[t_i] (p_i - onehot(t_i)) + eps / V (sum(w) p_i - w))
        probabilities:   dlogits_i = dloss_i (p_i sum_j w_j y'_ij - w y'_i)

    (zero on ignored rows), where dloss_i = ``dloss`` / (mean's denominator) for "mean", ``dloss`` for
    "sum" (both a scalar), and the per-row ``dloss`` (target's shape) for "none".

    Parameters
    ----------
    dloss : scalar (0-d) for "sum"/"mean", array of the loss's shape for "none".
    logits, target, weight, ignore_index, label_smoothing, reduction : as given to the forward.
    lse : the forward's float64 log-sum-exp per row.
    out : optional buffer for the gradient (logits' shape and dtype).

    Returns
    -------
    dlogits, logits' shape and dtype.
    """
    op = "softmax_cross_entropy_backward"
    be = backend_of(
        op,
        dloss=dloss if hasattr(dloss, "shape") else None,
        logits=logits,
        target=target,
        lse=lse,
        weight=weight,
        out=out,
    )
    x, lead, m, v, tidx, tp, weight, eps, ii, reduction, denom, wsum = _ce_common(
        op, be, logits, target, weight, ignore_index, label_smoothing, reduction
    )
    lse = V.required(be, op, "lse", lse, lead, np.float64)
    if reduction == "none":
        d = V.float_input(be, op, "dloss", dloss, half=False)
        V.check_shape(op, "dloss", d, lead)
        gs = _host(be, d).astype(np.float64).reshape(m)
    else:
        dh = np.asarray(_host(be, dloss) if hasattr(dloss, "shape") else dloss)
        if dh.size != 1 or dh.dtype.kind not in "fiu":
            raise ValueError(f"{op}: dloss must be a real scalar for reduction={reduction!r}, got shape {dh.shape}")
        dv = float(dh.reshape(()))
        if reduction == "mean":
            dv = dv / denom if denom != 0 else math.nan
        gs = np.array([dv])
    (g,) = V.outputs(be, op, out, [("dlogits", x.shape, x.dtype)], (x, tp, weight, lse))
    t_k, tp_k, w_k = _ce_kernel_args(be, x, m, v, tidx, tp, weight)
    be.kernels.softmax_cross_entropy_backward(
        x.reshape(m, v), t_k, tp_k, w_k, lse.reshape(m), _to_be(be, np.ascontiguousarray(gs)), g.reshape(m, v),
        ii, eps, wsum, be.threads(m * v),
    )  # fmt: skip
    return g


# ------------------------------------------------------------------------------------------- entropy
def _entropy_rows(op, be, p, axis):
    p = V.float_input(be, op, "p", p, half=False)
    nd = len(p.shape)
    if nd == 0:
        raise ValueError(f"{op}: p must have at least 1 dim, got a 0-d array")
    ax = V.integer(op, "axis", axis, low=-nd, high=nd - 1) % nd
    if ax != nd - 1:
        if be.name != "cpu":
            raise ValueError(f"{op}: on CUDA only axis=-1 is supported, got axis={axis}")
        p = np.ascontiguousarray(np.moveaxis(p, ax, -1))
    lead, m, v = _rows(op, "p", p)
    return p, ax, lead, m, v


def _inv_log_base(op, base) -> float:
    if base is None:
        return 1.0
    b = V.scalar(op, "base", base, low=0.0, low_open=True)
    if b == 1.0:
        raise ValueError(f"{op}: base must be > 0 and != 1, got {base!r}")
    return 1.0 / math.log(b)


def entropy(p: Array, *, axis: int = -1, base: float | None = None, out: Array | None = None) -> Array:
    """Shannon entropy of each distribution along ``axis`` (``scipy.stats.entropy(p, axis=axis, base=base)``).

    Each distribution is normalized first, as SciPy does::

        q = p / sum(p),   H = -sum_j q_j log(q_j) / log(base)     (0 log 0 = 0; natural log if base is None)

    A negative entry gives -inf, a zero-sum distribution NaN (SciPy's ``entr``).

    Parameters
    ----------
    p : float32/float64 array of (unnormalized) probabilities; axis other than the last is copied.
    axis : the distribution axis.
    base : logarithm base (> 0, != 1), natural if None.
    out : optional buffer of shape p.shape without ``axis``.

    Returns
    -------
    H, p's shape without ``axis``, p's dtype.
    """
    op = "entropy"
    be = backend_of(op, p=p, out=out)
    p, ax, lead, m, v = _entropy_rows(op, be, p, axis)
    ilb = _inv_log_base(op, base)
    (h,) = V.outputs(be, op, out, [("H", lead, p.dtype)], (p,))
    be.kernels.entropy_forward(p.reshape(m, v), h.reshape(m), ilb, be.threads(m * v))
    return h


def entropy_backward(
    dh: Array, p: Array, *, axis: int = -1, base: float | None = None, out: Array | None = None
) -> Array:
    """Gradient of ``entropy`` with respect to p, times ``dh`` (one value per distribution)::

        dp_j = -dh (log(q_j) + H) / (S log(base)),   S = sum(p), q = p / S, H the natural-log entropy

    (+inf where p_j = 0, the entropy's one-sided derivative). Returns dp of p's shape and dtype.
    """
    op = "entropy_backward"
    be = backend_of(op, dh=dh, p=p, out=out)
    p, ax, lead, m, v = _entropy_rows(op, be, p, axis)
    dh = V.required(be, op, "dh", dh, lead, p.dtype)
    ilb = _inv_log_base(op, base)
    if ax != len(p.shape) - 1 and out is not None:
        raise ValueError(f"{op}: out= is only supported with axis=-1")
    (dp,) = V.outputs(be, op, out, [("dp", p.shape, p.dtype)], (p, dh))
    be.kernels.entropy_backward(dh.reshape(m), p.reshape(m, v), dp.reshape(m, v), ilb, be.threads(m * v))
    if ax != len(p.shape) - 1:
        dp = np.moveaxis(dp, -1, ax)
    return dp


# -------------------------------------------------------------------------------------------- KL / JS
def _pair(op, be, input, target):
    x = V.float_input(be, op, "input", input, half=False)
    lead, m, v = _rows(op, "input", x)
    t = V.required(be, op, "target", target, x.shape, x.dtype)
    return x, t, lead, m, v


def _divisors(reduction, numel, batch):
    if reduction == "mean":
        return numel
    if reduction == "batchmean":
        return batch
    return 1


def _fused_forward(op, kernel, be, x, t, lead, m, v, reduction, grad, grad_target, out, div, extra_in, extra_sc, x_in):
    """Common body of kl_div / js_div: outputs, kernel call, reduction."""
    if grad == "inplace":
        _check_inplace(op, be, "input", x, x_in)
    if out is not None and not isinstance(out, (list, tuple)):
        raise TypeError(f"{op}: out must be a tuple (loss, dinput, dtarget), got {type(out).__name__}")
    if out is not None and len(out) != 3:
        raise ValueError(f"{op}: out must have 3 entries (loss, dinput, dtarget), got {len(out)}")
    loss_shape = tuple(x.shape) if reduction == "none" else ()
    specs = [
        ("loss", loss_shape, x.dtype),
        ("dinput", x.shape, x.dtype) if grad == "out" else None,
        ("dtarget", x.shape, x.dtype) if grad_target else None,
    ]
    loss_buf = None if out is None else out[0]
    if reduction != "none":
        dx, dt = V.outputs(be, op, None if out is None else (out[1], out[2]), specs[1:], (x, t))
        loss_buf = _check_out_scalar(be, op, loss_buf, (), x.dtype, (x, t, dx, dt))
        elem = None
    else:
        elem, dx, dt = V.outputs(be, op, out, specs, (x, t))
    if grad == "inplace":
        dx = x
    rows = be.empty((m,), np.float64)
    gscale = 0.0
    if grad is not None or grad_target:
        gscale = (1.0 / div if div != 0 else math.nan) if reduction in ("mean", "batchmean") else 1.0
    a2 = _absent(be, x.dtype, 2)
    kernel(
        x.reshape(m, v), t.reshape(m, v), *extra_in, rows,
        a2 if elem is None else elem.reshape(m, v),
        a2 if dx is None else dx.reshape(m, v),
        a2 if dt is None else dt.reshape(m, v),
        *extra_sc, gscale, be.threads(m * v),
    )  # fmt: skip
    if reduction == "none":
        loss = elem
    else:
        loss = _reduced(be, rows, reduction, div, x.dtype, loss_buf)
    return DivergenceForward(loss, x_in if grad == "inplace" else dx, dt)


def _bwd_scale(op, be, dloss, reduction, x, div):
    """(elementwise dloss array or None, scalar scale) for a backward."""
    if reduction == "none":
        d = V.required(be, op, "dloss", dloss, x.shape, x.dtype)
        return d, 1.0
    dh = np.asarray(_host(be, dloss) if hasattr(dloss, "shape") else dloss)
    if dh.size != 1 or dh.dtype.kind not in "fiu":
        raise ValueError(f"{op}: dloss must be a real scalar for reduction={reduction!r}, got shape {dh.shape}")
    s = float(dh.reshape(()))
    if reduction in ("mean", "batchmean"):
        s = s / div if div != 0 else math.nan
    return None, s


def kl_div(
    input: Array,
    target: Array,
    *,
    reduction: str = "mean",
    log_target: bool = False,
    grad: str | None = None,
    grad_target: bool = False,
    out: tuple | None = None,
) -> DivergenceForward:
    """KL divergence with ``torch.nn.functional.kl_div`` semantics (input holds log-probabilities log q).

    Elementwise, over rows of the last axis::

        log_target=False:  l = target (log(target) - input)       (0 where target == 0)
        log_target=True:   l = exp(target) (target - input)

    reduction "none": l; "sum": sum(l); "mean": sum(l) / l.size; "batchmean": sum(l) / input.shape[0].
    Gradients (fused in the same pass when asked)::

        dinput = -target  (or -exp(target)),   dtarget = log(target) + 1 - input  (or exp(target) (target - input + 1))

    scaled for the reduction ("none": the gradient of sum(l)).

    Parameters
    ----------
    input, target : float32/float64 arrays of one shape (at least 1-D).
    reduction, log_target : as in torch.
    grad : None, "out" (write dinput to a new or ``out=`` buffer) or "inplace" (over ``input``).
    grad_target : also write dtarget.
    out : optional (loss, dinput, dtarget) buffers.

    Returns
    -------
    DivergenceForward(loss, dinput, dtarget): loss 0-d (input's shape for "none"), gradients or None.
    """
    op = "kl_div"
    grad = _choice(op, "grad", grad, _GRAD_MODES)
    reduction = _choice(op, "reduction", reduction, _KL_REDUCTIONS)
    be = backend_of(op, input=input, target=target, out=out)
    x, t, lead, m, v = _pair(op, be, input, target)
    div = _divisors(reduction, m * v, x.shape[0])
    return _fused_forward(
        op,
        be.kernels.kl_div_forward,
        be,
        x,
        t,
        lead,
        m,
        v,
        reduction,
        grad,
        bool(grad_target),
        out,
        div,
        (),
        (bool(log_target),),
        input,
    )


def kl_div_backward(
    dloss: Array | float,
    input: Array,
    target: Array,
    *,
    reduction: str = "mean",
    log_target: bool = False,
    input_grad: bool = True,
    target_grad: bool = False,
    out: tuple | None = None,
) -> DivergenceBackward:
    """Gradients of ``kl_div`` with respect to input (and target when ``target_grad``), times ``dloss``
    (a scalar for "sum"/"mean"/"batchmean", input's shape for "none"); formulas in ``kl_div``.
    Returns DivergenceBackward(dinput, dtarget) (None for those not asked); ``out=(dinput, dtarget)``."""
    op = "kl_div_backward"
    reduction = _choice(op, "reduction", reduction, _KL_REDUCTIONS)
    be = backend_of(op, dloss=dloss if hasattr(dloss, "shape") else None, input=input, target=target, out=out)
    x, t, lead, m, v = _pair(op, be, input, target)
    d, s = _bwd_scale(op, be, dloss, reduction, x, _divisors(reduction, m * v, x.shape[0]))
    dx, dt = V.outputs(
        be,
        op,
        out,
        [("dinput", x.shape, x.dtype) if input_grad else None, ("dtarget", x.shape, x.dtype) if target_grad else None],
        (x, t, d),
    )
    a2 = _absent(be, x.dtype, 2)
    be.kernels.kl_div_backward(
        a2 if d is None else d.reshape(m, v), x.reshape(m, v), t.reshape(m, v),
        a2 if dx is None else dx.reshape(m, v), a2 if dt is None else dt.reshape(m, v),
        bool(log_target), s, be.threads(m * v),
    )  # fmt: skip
    return DivergenceBackward(dx, dt)


def _js_keep(op, be, labels, ignore_index, lead, m):
    """(keep mask on the backend or an empty one, number of kept rows)."""
    if labels is None:
        return _absent(be, np.uint8), m
    ii = V.integer(op, "ignore_index", ignore_index)
    lh = np.asarray(_host(be, labels))
    if lh.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers, got dtype {lh.dtype}")
    if lh.shape != lead:
        raise ValueError(f"{op}: labels must have shape {lead} (one per row), got {lh.shape}")
    keep = np.ascontiguousarray((lh.reshape(m) != ii).astype(np.uint8))
    return _to_be(be, keep), int(keep.sum())


def js_div(
    input: Array,
    target: Array,
    *,
    beta: float = 0.5,
    reduction: str = "batchmean",
    labels: Array | None = None,
    ignore_index: int = -100,
    grad: str | None = None,
    grad_target: bool = False,
    out: tuple | None = None,
) -> DivergenceForward:
    """Generalized Jensen-Shannon divergence (Liger-Kernel's ``LigerJSD``), row-wise over the last axis.

    input = log Q (the student's log-probabilities), target = log P (the teacher's); M = beta P + (1 - beta) Q::

        JSD_beta(P || Q) = beta KL(P || M) + (1 - beta) KL(Q || M)
                         = sum_j beta P_j log P_j + (1 - beta) Q_j log Q_j - M_j log M_j
        beta = 0: KL(P || Q) (forward KL),  beta = 1: KL(Q || P) (reverse KL),  beta = 0.5: symmetric JSD

    with 0 log 0 = 0. Gradients::

        dinput = (1 - beta) Q (log Q - log M),   dtarget = beta P (log P - log M)
        beta = 0: dinput = -P;   beta = 1: dinput = Q (log Q - log P) + Q

    Rows whose ``labels`` entry is ``ignore_index`` contribute nothing. reduction "none" (elementwise),
    "sum", "batchmean" (sum / rows kept; Liger's), "mean" (sum / (V * rows kept)).

    Parameters
    ----------
    input, target : float32/float64 log-probability arrays of one shape (at least 1-D).
    beta : weight in [0, 1].
    labels : optional integer array of the rows' shape (input.shape[:-1]); ignore_index marks rows to skip.
    grad, grad_target, out : as in ``kl_div``.

    Returns
    -------
    DivergenceForward(loss, dinput, dtarget).
    """
    op = "js_div"
    grad = _choice(op, "grad", grad, _GRAD_MODES)
    reduction = _choice(op, "reduction", reduction, _KL_REDUCTIONS)
    beta = V.scalar(op, "beta", beta, low=0.0, high=1.0)
    be = backend_of(op, input=input, target=target, labels=labels, out=out)
    x, t, lead, m, v = _pair(op, be, input, target)
    keep, k = _js_keep(op, be, labels, ignore_index, lead, m)
    div = _divisors(reduction, k * v, k)
    return _fused_forward(
        op,
        be.kernels.js_div_forward,
        be,
        x,
        t,
        lead,
        m,
        v,
        reduction,
        grad,
        bool(grad_target),
        out,
        div,
        (keep,),
        (beta,),
        input,
    )


def js_div_backward(
    dloss: Array | float,
    input: Array,
    target: Array,
    *,
    beta: float = 0.5,
    reduction: str = "batchmean",
    labels: Array | None = None,
    ignore_index: int = -100,
    input_grad: bool = True,
    target_grad: bool = False,
    out: tuple | None = None,
) -> DivergenceBackward:
    """Gradients of ``js_div`` with respect to input (and target when ``target_grad``), times ``dloss``
    (scalar, or input's shape for "none"); zero on ignored rows; formulas in ``js_div``.
    Returns DivergenceBackward(dinput, dtarget)."""
    op = "js_div_backward"
    reduction = _choice(op, "reduction", reduction, _KL_REDUCTIONS)
    beta = V.scalar(op, "beta", beta, low=0.0, high=1.0)
    be = backend_of(
        op, dloss=dloss if hasattr(dloss, "shape") else None, input=input, target=target, labels=labels, out=out
    )
    x, t, lead, m, v = _pair(op, be, input, target)
    keep, k = _js_keep(op, be, labels, ignore_index, lead, m)
    d, s = _bwd_scale(op, be, dloss, reduction, x, _divisors(reduction, k * v, k))
    dx, dt = V.outputs(
        be,
        op,
        out,
        [("dinput", x.shape, x.dtype) if input_grad else None, ("dtarget", x.shape, x.dtype) if target_grad else None],
        (x, t, d),
    )
    a2 = _absent(be, x.dtype, 2)
    be.kernels.js_div_backward(
        a2 if d is None else d.reshape(m, v), x.reshape(m, v), t.reshape(m, v), keep,
        a2 if dx is None else dx.reshape(m, v), a2 if dt is None else dt.reshape(m, v),
        beta, s, be.threads(m * v),
    )  # fmt: skip
    return DivergenceBackward(dx, dt)
