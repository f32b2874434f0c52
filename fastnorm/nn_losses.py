"""NumPy loss layers on the fused kernels, for the explicit forward/backward training loops of ``fastnorm.nn``.

``CrossEntropyLoss`` has ``torch.nn.CrossEntropyLoss``'s options and runs ``softmax_cross_entropy_forward``
with the gradient fused into the forward pass: ``loss = loss_fn(logits, target)`` returns the loss and
``loss_fn.backward()`` returns d(loss)/d(logits), already computed. With ``inplace=True`` the gradient is
written over the logits buffer (no extra memory; the logits are gone after the call), else into a buffer the
layer keeps and reuses while the shape and dtype stay the same::

    loss_fn = CrossEntropyLoss(label_smoothing=0.1)
    loss = loss_fn(model(xb), yb)
    model.backward(loss_fn.backward())
"""

from __future__ import annotations

import numpy as np

from .divergence import softmax_cross_entropy_forward

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss:
    """Softmax cross-entropy with torch's options (weight, ignore_index, label_smoothing, reduction).

    Parameters
    ----------
    weight : optional (V,) per-class weights (float, the logits' dtype).
    ignore_index : targets equal to it contribute nothing.
    label_smoothing : eps in [0, 1]: the target becomes (1 - eps) onehot + eps / V.
    reduction : "mean" (over the weights of non-ignored targets), "sum" or "none".
    inplace : write the gradient over the logits given to ``forward`` (zero extra memory).

    ``forward(logits, target)`` returns the loss (a float for "mean"/"sum", an array for "none");
    ``backward(dloss=None)`` returns d(loss)/d(logits) times ``dloss`` (a scalar, or one value per row
    for "none"; None means 1).
    """

    def __init__(
        self,
        weight: np.ndarray | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        *,
        inplace: bool = False,
    ):
        self.weight = weight
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.inplace = inplace
        self._grad: np.ndarray | None = None
        self._buf: np.ndarray | None = None

    def __call__(self, logits, target):
        return self.forward(logits, target)

    def forward(self, logits, target):
        kw = dict(weight=self.weight, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
                  reduction=self.reduction)  # fmt: skip
        if self.inplace:
            res = softmax_cross_entropy_forward(logits, target, grad="inplace", **kw)
        else:
            shape, dtype = np.shape(logits), getattr(logits, "dtype", None)
            if self._buf is None or self._buf.shape != shape or self._buf.dtype != dtype:
                self._buf = None
            res = softmax_cross_entropy_forward(logits, target, grad="out", out=(None, None, self._buf), **kw)
            self._buf = res.grad
        self._grad = res.grad
        return float(res.loss) if self.reduction != "none" else res.loss

    def backward(self, dloss=None) -> np.ndarray:
        if self._grad is None:
            raise RuntimeError("CrossEntropyLoss.backward: call forward first")
        if dloss is None:
            return self._grad
        d = np.asarray(dloss, dtype=self._grad.dtype)
        if self.reduction == "none" and d.ndim > 0:
            d = d.reshape(d.shape + (1,))
        return self._grad * d
