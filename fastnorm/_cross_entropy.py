"""Softmax cross-entropy (``torch.nn.functional.cross_entropy`` semantics), the forward optionally fused with
the gradient (written to a new or ``out=`` buffer, or in place over the logits: zero extra memory, as
Liger-Kernel does). Public through ``fastnorm.divergence`` and ``fastnorm``.

Logits may be float32, float64, bfloat16 or float16. 16-bit logits are computed in float32 (log-sum-exp, row
sums; the per-row statistics are float64), the loss is returned in the logits' dtype as torch does, and the
gradient is the float32 kernel's gradient rounded once to the logits' dtype.
"""

from __future__ import annotations

import numpy as np

from . import _dtypes
from . import _loss_common as L
from . import _validation as V
from . import reference as R
from ._backend import host
from ._dispatch import backend_of
from ._loss_common import Array, SoftmaxCrossEntropyForward
from ._spec import DATA, LOSS, OpSpec, Out, args, like, register, rows_of

_I64 = np.iinfo(np.int64)  # class indices and ignore_index are int64 in the kernels

CE_FWD = register(
    OpSpec(
        "softmax_cross_entropy_forward",
        args("logits target weight? :ignore_index=int :label_smoothing=float :reduction=str :grad=str"),
        (
            Out("loss", lambda d: rows_of("logits")(d) if d.reduction == "none" else ()),
            Out("lse", rows_of("logits"), "float64"),
            Out("grad", like("logits"), DATA, when=lambda d: d.grad == "out"),
        ),
        SoftmaxCrossEntropyForward,
        "divergence",
        R.softmax_cross_entropy_forward,
        primary="logits",
        group=LOSS,
        torch_op="cross_entropy_forward",
    )
)
CE_BWD = register(
    OpSpec(
        "softmax_cross_entropy_backward",
        args("dloss logits target lse weight? :ignore_index=int :label_smoothing=float :reduction=str"),
        (Out("dlogits", like("logits")),),
        None,
        "divergence",
        R.softmax_cross_entropy_backward,
        primary="logits",
        group=LOSS,
        torch_op="cross_entropy_backward",
    )
)

__all__ = ["softmax_cross_entropy_forward", "softmax_cross_entropy_backward", "SoftmaxCrossEntropyForward"]


def _targets(op, be, x, target, lead, m, v, ignore_index, weight):
    """(class indices on the host or None, probabilities or None, mean's denominator)."""
    if target is None:
        raise TypeError(f"{op}: target is required, got None")
    tdt = V.dtype_of(target) if hasattr(target, "dtype") else np.asarray(target).dtype
    if tdt is not None and (tdt.kind == "f" or tdt in _dtypes.HALF):
        tp = V.float_input(be, op, "target", target, x.dtype)
        V.check_shape(op, "target", tp, x.shape)
        return None, tp, float(m)
    if tdt is None or tdt.kind not in "iu":
        raise TypeError(
            f"{op}: target must be class indices (an integer array) or class probabilities (logits' float "
            f"dtype), got dtype {getattr(target, 'dtype', type(target).__name__)}"
        )
    th = np.asarray(host(be, target))
    if th.shape != lead:
        raise ValueError(f"{op}: target (class indices) must have shape {lead}, got {th.shape}")
    if tdt.kind == "u" and th.size and int(th.max()) > _I64.max:
        raise ValueError(f"{op}: target has class index {int(th.max())} outside [0, {v})")
    th = th.reshape(m).astype(np.int64, copy=False)
    kept = th[th != ignore_index]
    if kept.size and (kept.min() < 0 or kept.max() >= v):
        bad = kept[(kept < 0) | (kept >= v)][0]
        raise ValueError(
            f"{op}: target has class index {int(bad)} outside [0, {v}) (and not ignore_index={ignore_index})"
        )
    denom = float(kept.size) if weight is None else float(host(be, weight).astype(np.float64)[kept].sum())
    return np.ascontiguousarray(th), None, denom


def _ce_common(op, be, logits, target, weight, ignore_index, label_smoothing, reduction):
    """Validation shared by forward and backward (everything checked before any kernel runs)."""
    x = V.float_input(be, op, "logits", logits)
    if len(x.shape) not in (1, 2):
        raise ValueError(f"{op}: logits must be (N, V) or (V,) (class axis last), got shape {tuple(x.shape)}")
    lead, m, v = L.rows(op, "logits", x)
    reduction = L.choice(op, "reduction", reduction, L.CE_REDUCTIONS)
    eps = V.scalar(op, "label_smoothing", label_smoothing, low=0.0, high=1.0)
    ignore_index = V.integer(op, "ignore_index", ignore_index, low=_I64.min, high=_I64.max)
    weight = V.param(be, op, "weight", weight, (v,), _dtypes.param_dtypes(x.dtype))
    if weight is not None:
        weight = be.astype(weight, be.stat_dtype(x.dtype))
    tidx, tp, denom = _targets(op, be, x, target, lead, m, v, ignore_index, weight)
    wsum = float(host(be, weight).astype(np.float64).sum()) if weight is not None else float(v)
    return x, lead, m, v, tidx, tp, weight, eps, ignore_index, reduction, denom, wsum


def _ce_kernel_args(be, x, m, v, tidx, tp, weight):
    t_k = L.to_be(be, tidx) if tidx is not None else L.absent(be, np.int64)
    tp_k = tp.reshape(m, v) if tp is not None else L.absent(be, x.dtype, 2)
    w_k = weight if weight is not None else L.absent(be, be.stat_dtype(x.dtype))
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

    with logp[i, j] = x_ij - lse_i, lse_i = m_i + log sum_j exp(x_ij - m_i), m_i = max_j x_ij (stable for
    logits of any magnitude). Rows with t_i == ``ignore_index`` have loss 0. ``reduction``: "none"
    (loss_i), "sum", "mean" (sum over sum_{i not ignored} w[t_i] for indices, NaN when every row is
    ignored; / N for probabilities).

    Parameters
    ----------
    logits : (N, V) or (V,) array, class axis last
        float32, float64, bfloat16 or float16 (16-bit: computed in float32). torch's (N, V, d1, ...)
        layout is not supported: move the class axis last first.
    target : array
        int32/int64 class indices of shape (N,) (() for 1-D logits), each in [0, V) or ``ignore_index``;
        or class probabilities of logits' shape and dtype.
    weight : (V,) array, optional
        Per-class weights, logits' dtype (or float32 beside 16-bit logits).
    ignore_index : int
        Target value whose rows contribute nothing.
    label_smoothing : float
        eps in [0, 1].
    reduction : {"none", "sum", "mean"}
    grad : {None, "out", "inplace"}
        None: loss only; "out": also write d(loss)/d(logits) into a new or ``out=`` buffer; "inplace":
        write it over ``logits`` (a writeable C-contiguous array: zero extra memory). For reduction "none"
        the gradient is that of sum(loss).
    out : tuple, optional
        (loss, lse, grad) buffers (entries may be None); grad only with ``grad="out"``.

    Returns
    -------
    SoftmaxCrossEntropyForward
        (loss, lse, grad): loss (0-d for "sum"/"mean", else target's shape for indices / (N,) for
        probabilities) in logits' dtype; lse = logsumexp(logits) per row, float64 (for
        ``softmax_cross_entropy_backward``); grad in logits' dtype (None without ``grad``; the logits
        array itself with "inplace"). Out-of-range targets raise ValueError before anything is written.
    """
    op = "softmax_cross_entropy_forward"
    grad = L.choice(op, "grad", grad, L.GRAD_MODES)
    be = backend_of(op, logits=logits, target=target, weight=weight, out=out)
    x_in = logits
    x, lead, m, v, tidx, tp, weight, eps, ii, reduction, denom, wsum = _ce_common(
        op, be, logits, target, weight, ignore_index, label_smoothing, reduction
    )
    if grad == "inplace":
        L.check_inplace(op, be, "logits", x, x_in)
    out = L.out_tuple(op, out, "loss, lse, grad")
    loss_spec, *specs = CE_FWD.layout_for(be, dict(logits=x), reduction=reduction, grad=grad)
    inputs = (x, tp, weight)
    lse, g = V.outputs(be, op, None if out is None else out[1:], specs, inputs)
    loss_buf = L.check_out_scalar(be, op, None if out is None else out[0], loss_spec, inputs + (lse, g))
    if grad == "inplace":
        g = x
    row_losses = be.empty((m,), np.float64)
    if grad is None:
        gs = be.empty((0,), np.float64)
    else:
        gs = L.to_be(be, np.array([L.grad_scale(reduction, denom)]))
    t_k, tp_k, w_k = _ce_kernel_args(be, x, m, v, tidx, tp, weight)
    be.kernels.softmax_cross_entropy_forward(
        x.reshape(m, v), t_k, tp_k, w_k, gs, g.reshape(m, v) if g is not None else L.absent(be, x.dtype, 2),
        row_losses, lse.reshape(m), ii, eps, wsum, be.threads(m * v),
    )  # fmt: skip
    if reduction == "none":
        loss = L.rows_out(be, row_losses, x.dtype, loss_spec[1], loss_buf)
    else:
        loss = L.reduced(be, row_losses, reduction, denom, x.dtype, loss_buf)
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
    dloss : scalar or array
        0-d / Python scalar for "sum"/"mean"; an array of the loss's shape and logits' dtype for "none"
        (another dtype is a TypeError, as for ``kl_div_backward``).
    logits, target, weight, ignore_index, label_smoothing, reduction
        As given to the forward.
    lse : array
        The forward's float64 log-sum-exp per row.
    out : array, optional
        Buffer for the gradient (logits' shape and dtype).

    Returns
    -------
    array
        dlogits, logits' shape and dtype (16-bit: the float32 gradient rounded once).
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
        d = V.required(be, op, "dloss", dloss, lead, x.dtype)  # torch's rule: grad_output in logits' dtype
        gs = host(be, d).astype(np.float64).reshape(m)
    else:
        gs = np.array([L.scalar_dloss(op, be, dloss, reduction, denom)])
    (g,) = V.outputs(be, op, out, CE_BWD.layout_for(be, dict(logits=x)), (x, tp, weight, lse))
    t_k, tp_k, w_k = _ce_kernel_args(be, x, m, v, tidx, tp, weight)
    be.kernels.softmax_cross_entropy_backward(
        x.reshape(m, v), t_k, tp_k, w_k, lse.reshape(m), L.to_be(be, np.ascontiguousarray(gs)), g.reshape(m, v),
        ii, eps, wsum, be.threads(m * v),
    )  # fmt: skip
    return g
