"""Public row-wise losses and divergences: validate -> canonicalize to (M, V) rows -> allocate -> dispatch.

- ``softmax_cross_entropy_forward`` / ``_backward``: ``torch.nn.functional.cross_entropy`` semantics, the
  forward optionally fused with the gradient (``fastnorm._cross_entropy``, re-exported here).
- ``entropy`` / ``entropy_backward``: ``scipy.stats.entropy`` (rows normalized to sum 1).
- ``kl_div`` / ``kl_div_backward``: ``torch.nn.functional.kl_div``.
- ``js_div`` / ``js_div_backward``: Liger-Kernel's generalized Jensen-Shannon divergence.

NumPy arrays run on the CPU kernels, ``__cuda_array_interface__`` arrays on the CUDA kernels (the targets'
range check and the mean's denominator read the (small) target vector on the host: one device-to-host copy).
Inputs may be float32, float64, bfloat16 or float16; 16-bit inputs are computed in float32, and losses and
gradients are returned in the input's dtype (as torch does), each rounded once. Reduced losses are 0-d
arrays of the input dtype; per-row statistics (log-sum-exp) are float64.
"""

from __future__ import annotations

import math

import numpy as np

from . import _loss_common as L
from . import _validation as V
from . import reference as R
from ._backend import host
from ._cross_entropy import softmax_cross_entropy_backward as softmax_cross_entropy_backward
from ._cross_entropy import softmax_cross_entropy_forward as softmax_cross_entropy_forward
from ._dispatch import backend_of
from ._loss_common import Array, DivergenceBackward, DivergenceForward, SoftmaxCrossEntropyForward
from ._spec import LOSS, OpSpec, Out, args, exports, like, register

_RESULT_TYPES = (SoftmaxCrossEntropyForward, DivergenceForward, DivergenceBackward)


def _declare(name, arg_spec, outputs, result, primary, torch_op=None) -> OpSpec:
    """A loss of this module."""
    return register(OpSpec(name, args(arg_spec), outputs, result, "divergence", getattr(R, name), primary=primary,
                           group=LOSS, torch_op=torch_op))  # fmt: skip


def _without_axis(d) -> tuple:
    """entropy's H: p's shape without ``axis``."""
    return tuple(n for i, n in enumerate(d.p) if i != d.axis % len(d.p))


ENTROPY = _declare("entropy", "p :axis=int :base=float?", (Out("H", _without_axis),), None, "p")
ENTROPY_BWD = _declare("entropy_backward", "dh p :axis=int :base=float?", (Out("dp", like("p")),), None, "p")
# kl_div / js_div: the loss (elementwise for "none"), and the gradients fused into the forward when asked
_PAIR_FWD = (
    Out("loss", lambda d: d.input if d.reduction == "none" else ()),
    Out("dinput", like("input"), when=lambda d: d.grad == "out"),
    Out("dtarget", like("input"), when=lambda d: d.grad_target),
)
_PAIR_BWD = (
    Out("dinput", like("input"), when=lambda d: d.input_grad),
    Out("dtarget", like("input"), when=lambda d: d.target_grad),
)


KL = _declare("kl_div", "input target :reduction=str :log_target=bool :grad=str :grad_target=bool", _PAIR_FWD,
              DivergenceForward, "input", "kl_div_forward")  # fmt: skip
KL_BWD = _declare("kl_div_backward", "dloss input target :reduction=str :log_target=bool :input_grad=bool "
                  ":target_grad=bool", _PAIR_BWD, DivergenceBackward, "input", "kl_div_backward")  # fmt: skip
JS = _declare("js_div", "input target labels? :beta=float :ignore_index=int :reduction=str :grad=str "
              ":grad_target=bool", _PAIR_FWD, DivergenceForward, "input", "js_div_forward")  # fmt: skip
JS_BWD = _declare("js_div_backward", "dloss input target labels? :beta=float :ignore_index=int :reduction=str "
                  ":input_grad=bool :target_grad=bool", _PAIR_BWD, DivergenceBackward, "input",
                  "js_div_backward")  # fmt: skip

__all__ = exports("divergence")
_PAIR_SPEC = {s.name: s for s in (KL, KL_BWD, JS, JS_BWD)}


# ------------------------------------------------------------------------------------------- entropy
def _entropy_rows(op, be, p, axis):
    p = V.float_input(be, op, "p", p)
    nd = len(p.shape)
    if nd == 0:
        raise ValueError(f"{op}: p must have at least 1 dim, got a 0-d array")
    ax = V.integer(op, "axis", axis, low=-nd, high=nd - 1) % nd
    if ax != nd - 1:
        if be.name != "cpu":
            raise ValueError(f"{op}: on CUDA only axis=-1 is supported, got axis={axis}")
        p = np.ascontiguousarray(np.moveaxis(p, ax, -1))
    lead, m, v = L.rows(op, "p", p)
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
    (h,) = V.outputs(be, op, out, ENTROPY.layout_for(be, dict(p=p), axis=-1), (p,))
    be.kernels.entropy_forward(p.reshape(m, v), h.reshape(m), ilb, be.threads(m * v))
    return h


def entropy_backward(
    dh: Array, p: Array, *, axis: int = -1, base: float | None = None, out: Array | None = None
) -> Array:
    """Gradient of ``entropy`` with respect to p, times ``dh`` (one value per distribution)::

        dp_j = -dh (log(q_j) + H) / (S log(base)),   S = sum(p), q = p / S, H the natural-log entropy

    (+inf where p_j = 0, the entropy's one-sided derivative).

    Parameters
    ----------
    dh : array
        Upstream gradient, p's shape without ``axis``, p's dtype.
    p, axis, base
        As given to ``entropy``.
    out : array, optional
        Buffer for dp (only with axis=-1).

    Returns
    -------
    array
        dp, p's shape and dtype (16-bit: the float32 result rounded once).
    """
    op = "entropy_backward"
    be = backend_of(op, dh=dh, p=p, out=out)
    p, ax, lead, m, v = _entropy_rows(op, be, p, axis)
    dh = V.required(be, op, "dh", dh, lead, p.dtype)
    ilb = _inv_log_base(op, base)
    if ax != len(p.shape) - 1 and out is not None:
        raise ValueError(f"{op}: out= is only supported with axis=-1")
    (dp,) = V.outputs(be, op, out, ENTROPY_BWD.layout_for(be, dict(p=p)), (p, dh))
    be.kernels.entropy_backward(dh.reshape(m), p.reshape(m, v), dp.reshape(m, v), ilb, be.threads(m * v))
    if ax != len(p.shape) - 1:
        dp = np.moveaxis(dp, -1, ax)
    return dp


# -------------------------------------------------------------------------------------------- KL / JS
def _pair(op, be, input, target):
    x = V.float_input(be, op, "input", input)
    lead, m, v = L.rows(op, "input", x)
    t = V.required(be, op, "target", target, x.shape, x.dtype)
    return x, t, lead, m, v


def _divisor(reduction: str, v: int, rows: int, batch: int) -> int:
    """The mean's denominator: rows * V elements for "mean", the batch size for "batchmean"."""
    if reduction == "mean":
        return rows * v
    if reduction == "batchmean":
        return batch
    return 1


def _fused_forward(op, be, x_in, x, t, m, v, reduction, grad, grad_target, out, div, extra) -> DivergenceForward:
    """Common body of kl_div / js_div: outputs, the kernel ``<op>_forward(x, t, *pre, rows, elem, dx, dt, *post,
    gscale, threads)`` with ``extra = (pre, post)``, reduction."""
    if grad == "inplace":
        L.check_inplace(op, be, "input", x, x_in)
    out = L.out_tuple(op, out, "loss, dinput, dtarget")
    specs = _PAIR_SPEC[op].layout_for(be, dict(input=x), reduction=reduction, grad=grad, grad_target=grad_target)
    loss_buf = None if out is None else out[0]
    if reduction != "none":
        dx, dt = V.outputs(be, op, None if out is None else out[1:], specs[1:], (x, t))
        loss_buf = L.check_out_scalar(be, op, loss_buf, specs[0], (x, t, dx, dt))
        elem = None
    else:
        elem, dx, dt = V.outputs(be, op, out, specs, (x, t))
    if grad == "inplace":
        dx = x
    row_losses = be.empty((m,), np.float64)
    gscale = L.grad_scale(reduction, div) if grad is not None or grad_target else 0.0
    a2 = L.absent(be, x.dtype, 2)
    pre, post = extra
    rows = (a2 if a is None else a.reshape(m, v) for a in (elem, dx, dt))
    kernel = getattr(be.kernels, f"{op}_forward")
    kernel(x.reshape(m, v), t.reshape(m, v), *pre, row_losses, *rows, *post, gscale, be.threads(m * v))
    loss = elem if reduction == "none" else L.reduced(be, row_losses, reduction, div, x.dtype, loss_buf)
    return DivergenceForward(loss, x_in if grad == "inplace" else dx, dt)


def _backward(op, be, dloss, x, t, m, v, reduction, div, input_grad, target_grad, out, extra) -> DivergenceBackward:
    """Common body of the backwards: dloss (elementwise for "none", else a scalar folded into the scale),
    outputs, the kernel ``<op>(dloss_rows, x, t, *pre, dx, dt, *post, scale, threads)``, ``extra = (pre, post)``."""
    if reduction == "none":
        d, s = V.required(be, op, "dloss", dloss, x.shape, x.dtype), 1.0
    else:
        d, s = None, L.scalar_dloss(op, be, dloss, reduction, div)
    specs = _PAIR_SPEC[op].layout_for(be, dict(input=x), input_grad=input_grad, target_grad=target_grad)
    dx, dt = V.outputs(be, op, out, specs, (x, d))
    a2 = L.absent(be, x.dtype, 2)
    pre, post = extra
    d, dx2, dt2 = (a2 if a is None else a.reshape(m, v) for a in (d, dx, dt))
    getattr(be.kernels, op)(d, x.reshape(m, v), t.reshape(m, v), *pre, dx2, dt2, *post, s, be.threads(m * v))
    return DivergenceBackward(dx, dt)


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
    input, target : arrays of one shape (at least 1-D) and one dtype
        float32, float64, bfloat16 or float16 (16-bit: computed in float32).
    reduction : {"none", "sum", "mean", "batchmean"}
    log_target : bool
        Whether ``target`` holds log-probabilities.
    grad : {None, "out", "inplace"}
        "out": write dinput to a new or ``out=`` buffer; "inplace": over ``input``.
    grad_target : bool
        Also write dtarget.
    out : tuple, optional
        (loss, dinput, dtarget) buffers (entries may be None).

    Returns
    -------
    DivergenceForward
        (loss, dinput, dtarget): loss 0-d (input's shape for "none") in input's dtype, the gradients in
        input's dtype or None.
    """
    op = "kl_div"
    grad = L.choice(op, "grad", grad, L.GRAD_MODES)
    reduction = L.choice(op, "reduction", reduction, L.KL_REDUCTIONS)
    be = backend_of(op, input=input, target=target, out=out)
    x, t, lead, m, v = _pair(op, be, input, target)
    div = _divisor(reduction, v, m, x.shape[0])
    extra = ((), (bool(log_target),))
    return _fused_forward(op, be, input, x, t, m, v, reduction, grad, bool(grad_target), out, div, extra)


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
    """Gradients of ``kl_div`` with respect to input (and target when ``target_grad``), times ``dloss``.

    With d = ``dloss`` (elementwise for "none"; for the reductions the scalar divided by the mean's
    denominator)::

        dinput = -d target                     (log_target: -d exp(target))
        dtarget = d (log(target) + 1 - input)   (log_target: d exp(target) (target - input + 1))

    Parameters
    ----------
    dloss : scalar or array
        A scalar for "sum"/"mean"/"batchmean", an array of input's shape and dtype for "none".
    input, target, reduction, log_target
        As given to ``kl_div``.
    input_grad, target_grad : bool
        Which gradients to compute.
    out : tuple, optional
        (dinput, dtarget) buffers.

    Returns
    -------
    DivergenceBackward
        (dinput, dtarget), input's shape and dtype (None for those not asked).
    """
    op = "kl_div_backward"
    reduction = L.choice(op, "reduction", reduction, L.KL_REDUCTIONS)
    be = backend_of(op, dloss=dloss if hasattr(dloss, "shape") else None, input=input, target=target, out=out)
    x, t, lead, m, v = _pair(op, be, input, target)
    div = _divisor(reduction, v, m, x.shape[0])
    extra = ((), (bool(log_target),))
    return _backward(op, be, dloss, x, t, m, v, reduction, div, input_grad, target_grad, out, extra)


def _js_keep(op, be, labels, ignore_index, lead, m):
    """(keep mask on the backend or an empty one, number of kept rows)."""
    ii = V.integer(op, "ignore_index", ignore_index, low=-(2**63), high=2**63 - 1)
    if labels is None:
        return L.absent(be, np.uint8), m
    lh = np.asarray(host(be, labels))
    if lh.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers, got dtype {lh.dtype}")
    if lh.shape != lead:
        raise ValueError(f"{op}: labels must have shape {lead} (one per row), got {lh.shape}")
    keep = np.ascontiguousarray((lh.reshape(m) != ii).astype(np.uint8))
    return L.to_be(be, keep), int(keep.sum())


def _js_setup(op, be, input, target, labels, ignore_index, beta, reduction):
    reduction = L.choice(op, "reduction", reduction, L.KL_REDUCTIONS)
    beta = V.scalar(op, "beta", beta, low=0.0, high=1.0)
    x, t, lead, m, v = _pair(op, be, input, target)
    keep, k = _js_keep(op, be, labels, ignore_index, lead, m)
    return x, t, m, v, keep, beta, reduction, _divisor(reduction, v, k, k)


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
    input, target : arrays of one shape (at least 1-D) and one dtype
        Log-probabilities; float32, float64, bfloat16 or float16 (16-bit: computed in float32).
    beta : float
        Weight in [0, 1].
    reduction : {"none", "sum", "mean", "batchmean"}
    labels : integer array, optional
        Of the rows' shape (input.shape[:-1]); ``ignore_index`` marks rows to skip.
    ignore_index : int
    grad, grad_target, out
        As in ``kl_div``.

    Returns
    -------
    DivergenceForward
        (loss, dinput, dtarget) in input's dtype.
    """
    op = "js_div"
    grad = L.choice(op, "grad", grad, L.GRAD_MODES)
    be = backend_of(op, input=input, target=target, labels=labels, out=out)
    x, t, m, v, keep, beta, reduction, div = _js_setup(op, be, input, target, labels, ignore_index, beta, reduction)
    return _fused_forward(op, be, input, x, t, m, v, reduction, grad, bool(grad_target), out, div, ((keep,), (beta,)))


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
    """Gradients of ``js_div`` with respect to input (and target when ``target_grad``), times ``dloss``.

    With d = ``dloss`` (elementwise for "none"; for the reductions the scalar divided by the mean's
    denominator), M = beta P + (1 - beta) Q, zero on ignored rows::

        dinput = d (1 - beta) Q (log Q - log M),   dtarget = d beta P (log P - log M)

    Parameters
    ----------
    input, target, beta, reduction, labels, ignore_index
        As given to ``js_div``.
    dloss, input_grad, target_grad, out
        As in ``kl_div_backward``.

    Returns
    -------
    DivergenceBackward
        (dinput, dtarget) as in ``kl_div_backward``; zero on ignored rows.
    """
    op = "js_div_backward"
    be = backend_of(
        op, dloss=dloss if hasattr(dloss, "shape") else None, input=input, target=target, labels=labels, out=out
    )
    x, t, m, v, keep, beta, reduction, div = _js_setup(op, be, input, target, labels, ignore_index, beta, reduction)
    extra = ((keep,), (beta,))
    return _backward(op, be, dloss, x, t, m, v, reduction, div, input_grad, target_grad, out, extra)
