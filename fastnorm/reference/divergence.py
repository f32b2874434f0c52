"""NumPy reference implementations of the row-wise losses and divergences: softmax cross-entropy, entropy,
KL divergence and the generalized Jensen-Shannon divergence.

Plain, readable NumPy: the specification the kernels are tested against. Each computes in the input's
dtype (per-row statistics and reductions in float64, as the kernels do). Rows are the last axis;
signatures match the public ops in ``fastnorm`` (without ``out=`` and the fused-gradient options).
"""

from __future__ import annotations

import numpy as np

_REDUCTIONS_CE = ("none", "sum", "mean")
_REDUCTIONS_KL = ("none", "sum", "mean", "batchmean")


def _rows(x):
    x = np.asarray(x)
    return x.reshape(1, -1) if x.ndim == 1 else x.reshape(-1, x.shape[-1])


def _logsumexp(x2):
    mx = x2.max(axis=1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0)
    return (mx + np.log(np.exp(x2 - mx).sum(axis=1, keepdims=True)))[:, 0]


def _ce_parts(logits, target, weight, ignore_index, label_smoothing):
    """Per-row loss, per-row gradient of that loss, the mean's denominator and lse (all float64 except grad)."""
    x = _rows(logits)
    dt = x.dtype
    n, v = x.shape
    lse = _logsumexp(x.astype(np.float64))
    logp = x - lse[:, None].astype(dt)
    p = np.exp(logp)
    w = np.ones(v, dt) if weight is None else np.asarray(weight, dt)
    eps = label_smoothing
    if np.asarray(target).dtype.kind == "f":  # class probabilities
        y = _rows(target).astype(dt)
        y = (1 - eps) * y + eps / v
        loss = -(w * y * logp).sum(axis=1, dtype=np.float64)
        grad = p * (w * y).sum(axis=1, keepdims=True) - w * y
        return loss, grad, float(n), lse
    t = np.asarray(target).reshape(-1).astype(np.int64)
    keep = t != ignore_index
    ts = np.where(keep, t, 0)
    rows = np.arange(n)
    wt = np.where(keep, w[ts], 0).astype(dt)
    nll = -logp[rows, ts]
    smooth = -(w * logp).sum(axis=1)
    loss = np.where(keep, (1 - eps) * wt * nll + (eps / v) * smooth, 0).astype(np.float64)
    onehot = np.zeros_like(x)
    onehot[rows, ts] = 1
    grad = (1 - eps) * wt[:, None] * (p - onehot) + (eps / v) * (w.sum() * p - w)
    grad = np.where(keep[:, None], grad, 0)
    denom = float(wt.astype(np.float64).sum()) if weight is not None else float(keep.sum())
    return loss, grad.astype(dt), denom, lse


def softmax_cross_entropy_forward(
    logits, target, *, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean"
):
    """Cross-entropy of softmax(logits) against ``target`` (``torch.nn.functional.cross_entropy``).

    logits (N, V) or (V,). target: class indices (N,) or () (ints; ``ignore_index`` rows contribute
    nothing), or class probabilities of logits' shape. With logp = log_softmax(logits), eps =
    ``label_smoothing``, w = ``weight`` (ones if None)::

        indices:        loss_i = (1 - eps) w[t_i] (-logp[i, t_i]) + eps / V * sum_j w_j (-logp[i, j])
        probabilities:  loss_i = -sum_j w_j y'_ij logp[i, j],   y' = (1 - eps) y + eps / V

    reduction "none": (loss_i) (shape of target for indices; (N,) for probabilities); "sum": sum_i loss_i;
    "mean": sum_i loss_i / sum_{i not ignored} w[t_i] for indices (NaN when every row is ignored),
    / N for probabilities. Returns (loss, lse) with lse = logsumexp(logits) per row (float64).
    """
    loss, _, denom, lse = _ce_parts(logits, target, weight, ignore_index, label_smoothing)
    dt = np.asarray(logits).dtype
    if reduction == "none":
        shape = np.shape(logits)[:-1]
        return loss.astype(dt).reshape(shape), lse.reshape(shape)
    s = loss.sum()
    if reduction == "mean":
        s = s / denom if denom != 0 else np.nan
    return np.asarray(s, dtype=dt), lse.reshape(np.shape(logits)[:-1])


def softmax_cross_entropy_backward(
    dloss, logits, target, *, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean"
):
    """d(loss)/d(logits) of ``softmax_cross_entropy_forward`` times ``dloss`` (a scalar for "sum" and
    "mean", one value per row for "none"). Per row, with p = softmax(logits)::

        indices:        dlogits = (1 - eps) w[t] (p - onehot(t)) + eps / V (sum(w) p - w)
        probabilities:  dlogits = p sum_j w_j y'_j - w y'

    scaled by dloss (per row for "none"), divided by the mean's denominator for "mean".
    """
    _, grad, denom, _ = _ce_parts(logits, target, weight, ignore_index, label_smoothing)
    dt = grad.dtype
    d = np.asarray(dloss, dtype=np.float64)
    if reduction == "none":
        scale = d.reshape(-1, 1)
    elif reduction == "sum":
        scale = d
    else:
        scale = d / denom if denom != 0 else d * np.nan
    return (grad * np.asarray(scale, dt)).reshape(np.shape(logits))


# ------------------------------------------------------------------------------------------- entropy
def entropy(p, *, axis=-1, base=None):
    """Shannon entropy of each distribution along ``axis``, normalized like ``scipy.stats.entropy``::

        q = p / sum(p),  H = -sum_j q_j log(q_j) / log(base)      (0 log 0 = 0; natural log if base is None)

    A negative entry gives -inf (scipy's ``entr``); a zero-sum row gives NaN.
    """
    p = np.moveaxis(np.asarray(p), axis, -1)
    dt = p.dtype
    q = p / p.sum(axis=-1, keepdims=True, dtype=np.float64).astype(dt)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.where(q > 0, -q * np.log(np.where(q > 0, q, 1)), np.where(q == 0, 0, -np.inf))
    e = np.where(np.isnan(q), np.nan, e)
    h = e.sum(axis=-1, dtype=np.float64)
    if base is not None:
        h = h / np.log(base)
    return h.astype(dt)


def entropy_backward(dh, p, *, axis=-1, base=None):
    """Gradient of ``entropy`` times ``dh`` (one value per distribution)::

        dp_j = -dh (log(q_j) + H) / (S log(base)),   S = sum(p), q = p / S, H natural-log entropy

    (+inf where p_j = 0: the entropy's one-sided derivative there).
    """
    p = np.moveaxis(np.asarray(p), axis, -1)
    dt = p.dtype
    s = p.sum(axis=-1, keepdims=True, dtype=np.float64)
    q = p / s
    h = entropy(p.astype(np.float64), axis=-1)[..., None]
    with np.errstate(divide="ignore"):
        dp = -(np.log(q) + h) / s
    if base is not None:
        dp = dp / np.log(base)
    dp = dp * np.asarray(dh, np.float64)[..., None]
    return np.moveaxis(dp.astype(dt), -1, axis)


# -------------------------------------------------------------------------------------------- KL
def _reduce(elem, reduction, numel_div, batch_div):
    dt = elem.dtype
    if reduction == "none":
        return elem
    s = elem.sum(dtype=np.float64)
    if reduction == "mean":
        s = s / numel_div if numel_div else np.nan
    elif reduction == "batchmean":
        s = s / batch_div if batch_div else np.nan
    return np.asarray(s, dtype=dt)


def _xlogy_self(t):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(t == 0, 0, t * np.log(np.where(t == 0, 1, t)))


def kl_div(input, target, *, reduction="mean", log_target=False):
    """``torch.nn.functional.kl_div``: input holds log-probabilities log q; elementwise::

        log_target=False:  l = target (log(target) - input)        (0 where target == 0)
        log_target=True:   l = exp(target) (target - input)

    reduction "none": l; "sum": sum(l); "mean": sum(l) / l.size; "batchmean": sum(l) / input.shape[0].
    """
    x = np.asarray(input)
    t = np.asarray(target, dtype=x.dtype)
    elem = np.exp(t) * (t - x) if log_target else _xlogy_self(t) - t * x
    return _reduce(elem.astype(x.dtype), reduction, x.size, x.shape[0] if x.ndim else 1)


def _scale(dloss, reduction, numel_div, batch_div):
    d = np.asarray(dloss, dtype=np.float64)
    if reduction == "mean":
        return d / numel_div if numel_div else d * np.nan
    if reduction == "batchmean":
        return d / batch_div if batch_div else d * np.nan
    return d


def kl_div_backward(dloss, input, target, *, reduction="mean", log_target=False):
    """Gradients of ``kl_div`` with respect to input and target, times ``dloss`` (elementwise for "none")::

        log_target=False:  dinput = -target,           dtarget = log(target) + 1 - input
        log_target=True:   dinput = -exp(target),      dtarget = exp(target) (target - input + 1)

    Returns (dinput, dtarget).
    """
    x = np.asarray(input)
    t = np.asarray(target, dtype=x.dtype)
    sc = _scale(dloss, reduction, x.size, x.shape[0] if x.ndim else 1).astype(x.dtype)
    if log_target:
        et = np.exp(t)
        return (-et * sc).astype(x.dtype), (et * (t - x + 1) * sc).astype(x.dtype)
    with np.errstate(divide="ignore"):
        return (-t * sc).astype(x.dtype), ((np.log(t) + 1 - x) * sc).astype(x.dtype)


# -------------------------------------------------------------------------------------------- JS
def _js_parts(x, y, beta):
    """Elementwise loss, d/dx, d/dy of the generalized JSD (Liger's definition), 0 log 0 = 0."""
    q, p = np.exp(x), np.exp(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        if beta == 0.0:
            pyx = np.where(p == 0, 0, p * (y - x))
            return pyx, -p, pyx + p
        if beta == 1.0:
            qxy = np.where(q == 0, 0, q * (x - y))
            return qxy, qxy + q, -q
        m = beta * p + (1 - beta) * q
        logm = np.log(m)
        py = np.where(p == 0, 0, p * y)
        qx = np.where(q == 0, 0, q * x)
        mlm = np.where(m == 0, 0, m * logm)
        elem = beta * py + (1 - beta) * qx - mlm
        dx = np.where(q == 0, 0, (1 - beta) * q * (x - logm))
        dy = np.where(p == 0, 0, beta * p * (y - logm))
    return elem, dx, dy


def _js_keep(x2, labels, ignore_index):
    if labels is None:
        return np.ones(x2.shape[0], bool)
    return np.asarray(labels).reshape(-1) != ignore_index


def js_div(input, target, *, beta=0.5, reduction="batchmean", labels=None, ignore_index=-100):
    """Generalized Jensen-Shannon divergence (Liger-Kernel's JSD), row-wise over the last axis.

    input = log Q (the student's log-probabilities), target = log P (the teacher's), M = beta P + (1-beta) Q::

        JSD_beta = beta KL(P || M) + (1 - beta) KL(Q || M)
                 = sum_j beta P_j log P_j + (1 - beta) Q_j log Q_j - M_j log M_j
        beta = 0: KL(P || Q) = sum_j P_j (log P_j - log Q_j);   beta = 1: KL(Q || P)

    Rows whose ``labels`` entry equals ``ignore_index`` contribute nothing. reduction "none": the
    elementwise terms; "sum"; "batchmean": sum / (rows not ignored) (Liger's); "mean": sum / (V * rows
    not ignored). 0 log 0 = 0.
    """
    x = np.asarray(input)
    y = np.asarray(target, dtype=x.dtype)
    x2, y2 = _rows(x), _rows(y)
    keep = _js_keep(x2, labels, ignore_index)
    elem, _, _ = _js_parts(x2, y2, beta)
    elem = np.where(keep[:, None], elem, 0).astype(x.dtype)
    k = int(keep.sum())
    return _reduce(elem.reshape(x.shape), reduction, k * x2.shape[1], k)


def js_div_backward(dloss, input, target, *, beta=0.5, reduction="batchmean", labels=None, ignore_index=-100):
    """Gradients of ``js_div`` with respect to input and target, times ``dloss`` (elementwise for "none")::

        dinput = (1 - beta) Q (log Q - log M),   dtarget = beta P (log P - log M)
        beta = 0: dinput = -P, dtarget = P (log P - log Q) + P;   beta = 1: dinput = Q (log Q - log P) + Q,
        dtarget = -Q

    Returns (dinput, dtarget); zero on ignored rows.
    """
    x = np.asarray(input)
    y = np.asarray(target, dtype=x.dtype)
    x2, y2 = _rows(x), _rows(y)
    keep = _js_keep(x2, labels, ignore_index)
    k = int(keep.sum())
    _, dx, dy = _js_parts(x2, y2, beta)
    sc = _scale(dloss, reduction, k * x2.shape[1], k)
    if reduction == "none":
        sc = np.asarray(sc).reshape(x2.shape)
    sc = np.asarray(sc).astype(x.dtype)
    dx = np.where(keep[:, None], dx * sc, 0).astype(x.dtype).reshape(x.shape)
    dy = np.where(keep[:, None], dy * sc, 0).astype(x.dtype).reshape(x.shape)
    return dx, dy


# The public functions of this module, in order: the names of the public ops (fastnorm.divergence declares
# its ops with these references, so it cannot be imported here; a contract test checks the two lists agree).
__all__ = [n for n, f in list(globals().items()) if callable(f) and not n.startswith("_") and f.__module__ == __name__]
