"""Small NumPy layers for training loops on the fastnorm kernels (no autograd: explicit forward/backward).

Every layer caches in ``forward`` what its ``backward`` needs; ``backward(dy)`` returns ``dx`` and *writes*
(does not accumulate) its parameter gradients into preallocated arrays, so ``grads()`` returns the same
arrays every step, in the order of ``parameters()``. Both lists feed ``fastnorm.optim`` directly::

    model = nn.Sequential(nn.Linear(64, 128), nn.LayerNorm(128), nn.ReLU(), nn.Linear(128, 10))
    loss_fn = nn.CrossEntropyLoss()
    opt = fastnorm.optim.Adam(model.parameters(), lr=1e-3)
    for xb, yb in batches:
        loss = loss_fn(model(xb), yb)
        model.backward(loss_fn.backward())
        opt.step(model.grads())

A layer used twice between two ``backward`` calls is not supported (the cache holds one forward).
Parameter names, shapes and defaults follow ``torch.nn`` (``Linear.weight`` is (out, in)); arrays are
float32 unless ``dtype`` says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from . import norms
from .divergence import softmax_cross_entropy_forward

__all__ = [
    "Module",
    "Sequential",
    "Linear",
    "ReLU",
    "Tanh",
    "Flatten",
    "LayerNorm",
    "RMSNorm",
    "BatchNorm",
    "GroupNorm",
    "CrossEntropyLoss",
    "softmax_cross_entropy",
]


class Module:
    """Base layer: ``forward``/``backward``, ``parameters()``/``grads()``, ``train()``/``eval()``."""

    training: bool = True

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def children(self) -> list[Module]:
        return []

    def _own_parameters(self) -> list[np.ndarray]:
        return [p for p in (getattr(self, "weight", None), getattr(self, "bias", None)) if p is not None]

    def _own_grads(self) -> list[np.ndarray]:
        return [g for g in (getattr(self, "dweight", None), getattr(self, "dbias", None)) if g is not None]

    def _init_affine(self, shape: tuple, dtype, weight: bool, bias: bool) -> None:
        """weight = 1 and bias = 0 of ``shape`` (each only if wanted) and their zeroed gradients."""
        self.weight = np.ones(shape, dtype) if weight else None
        self.bias = np.zeros(shape, dtype) if bias else None
        self.dweight = None if self.weight is None else np.zeros_like(self.weight)
        self.dbias = None if self.bias is None else np.zeros_like(self.bias)

    def parameters(self) -> list[np.ndarray]:
        """The trainable arrays (updated in place by an optimizer)."""
        out = list(self._own_parameters())
        for c in self.children():
            out += c.parameters()
        return out

    def grads(self) -> list[np.ndarray]:
        """The gradient arrays, one per entry of ``parameters()``, filled by ``backward``."""
        out = list(self._own_grads())
        for c in self.children():
            out += c.grads()
        return out

    def train(self, mode: bool = True) -> Module:
        self.training = bool(mode)
        for c in self.children():
            c.train(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for g in self.grads():
            g[...] = 0


class Sequential(Module):
    """Layers applied in order; backward in reverse order."""

    def __init__(self, *layers: Module):
        self.layers = list(layers)

    def children(self) -> list[Module]:
        return self.layers

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


class Linear(Module):
    """y = x @ weight.T + bias over the last dim. weight (out, in), bias (out,); torch's uniform init
    U(-1/sqrt(in), 1/sqrt(in)) from ``rng`` (a Generator or seed)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rng=None, dtype=np.float32):
        rng = _rng(rng)
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.in_features, self.out_features = in_features, out_features
        self.weight = rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype)
        self.bias = rng.uniform(-bound, bound, out_features).astype(dtype) if bias else None
        self.dweight = np.zeros_like(self.weight)
        self.dbias = None if self.bias is None else np.zeros_like(self.bias)
        self._x = None

    def forward(self, x):
        self._x = x
        y = x @ self.weight.T
        if self.bias is not None:
            y += self.bias
        return y

    def backward(self, dy):
        x2 = self._x.reshape(-1, self.in_features)
        dy2 = dy.reshape(-1, self.out_features)
        np.matmul(dy2.T, x2, out=self.dweight)
        if self.dbias is not None:
            np.sum(dy2, axis=0, out=self.dbias)
        return dy @ self.weight


class ReLU(Module):
    def forward(self, x):
        self._mask = x > 0
        return np.where(self._mask, x, x.dtype.type(0))

    def backward(self, dy):
        return np.where(self._mask, dy, dy.dtype.type(0))


class Tanh(Module):
    def forward(self, x):
        self._y = np.tanh(x)
        return self._y

    def backward(self, dy):
        return dy * (1 - self._y * self._y)


class Flatten(Module):
    """(N, *) -> (N, prod(*))."""

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape)


def _shape_tuple(s) -> tuple[int, ...]:
    return (int(s),) if isinstance(s, (int, np.integer)) else tuple(int(d) for d in s)


class LayerNorm(Module):
    """LayerNorm over the trailing ``normalized_shape`` dims (``fastnorm.layer_norm_forward/backward``)."""

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        dtype=np.float32,
    ):
        self.normalized_shape = _shape_tuple(normalized_shape)
        self.eps = eps
        self._init_affine(self.normalized_shape, dtype, elementwise_affine, elementwise_affine and bias)

    def forward(self, x):
        k = len(self.normalized_shape)
        y, self._mean, self._rstd = norms.layer_norm_forward(x, self.weight, self.bias, eps=self.eps, normalized_ndim=k)
        self._x = x
        return y

    def backward(self, dy):
        k = len(self.normalized_shape)
        dx, _, _ = norms.layer_norm_backward(
            dy, self._x, self._mean, self._rstd, self.weight, self.bias,
            normalized_ndim=k, out=(None, self.dweight, self.dbias),
        )  # fmt: skip
        return dx


class RMSNorm(Module):
    """RMSNorm over the trailing ``normalized_shape`` dims (``fastnorm.rms_norm_forward/backward``).
    ``eps=None`` means ``np.finfo(dtype).eps`` (torch's default)."""

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        *,
        dtype=np.float32,
    ):
        self.normalized_shape = _shape_tuple(normalized_shape)
        self.eps = eps
        self._init_affine(self.normalized_shape, dtype, elementwise_affine, False)

    def forward(self, x):
        eps = float(np.finfo(x.dtype).eps) if self.eps is None else self.eps
        y, self._rstd = norms.rms_norm_forward(x, self.weight, eps=eps, normalized_ndim=len(self.normalized_shape))
        self._x = x
        return y

    def backward(self, dy):
        dx, _ = norms.rms_norm_backward(
            dy, self._x, self._rstd, self.weight,
            normalized_ndim=len(self.normalized_shape), out=(None, self.dweight),
        )  # fmt: skip
        return dx


class BatchNorm(Module):
    """BatchNorm over every axis but the channel axis 1 of (N, C) or (N, C, *) inputs, like torch's
    BatchNorm1d/2d/3d (``fastnorm.batch_norm_forward/backward``).

    Training (``train()``): batch statistics, running_mean/running_var (unbiased variance) updated in place
    with ``momentum``. Eval (``eval()``): the running statistics, when ``track_running_stats``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        dtype=np.float32,
    ):
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self._init_affine((num_features,), dtype, affine, affine)
        self.running_mean = np.zeros(num_features, dtype) if track_running_stats else None
        self.running_var = np.ones(num_features, dtype) if track_running_stats else None

    def forward(self, x):
        self._batch_stats = self.training or self.running_mean is None
        y, self._mean, self._rstd = norms.batch_norm_forward(
            x, self.weight, self.bias, self.running_mean, self.running_var,
            training=self._batch_stats, momentum=self.momentum, eps=self.eps,
        )  # fmt: skip
        self._x = x
        return y

    def backward(self, dy):
        dx, _, _ = norms.batch_norm_backward(
            dy, self._x, self._mean, self._rstd, self.weight, self.bias,
            training=self._batch_stats, out=(None, self.dweight, self.dbias),
        )  # fmt: skip
        return dx


class GroupNorm(Module):
    """GroupNorm of (N, C, *) inputs in ``num_groups`` groups of channels (``fastnorm.group_norm_*``);
    per-channel weight and bias like ``torch.nn.GroupNorm``."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *, dtype=np.float32):
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self._init_affine((num_channels,), dtype, affine, affine)

    def forward(self, x):
        y, self._mean, self._rstd = norms.group_norm_forward(x, self.num_groups, self.weight, self.bias, eps=self.eps)
        self._x = x
        return y

    def backward(self, dy):
        dx, _, _ = norms.group_norm_backward(
            dy, self._x, self._mean, self._rstd, self.num_groups, self.weight, self.bias,
            out=(None, self.dweight, self.dbias),
        )  # fmt: skip
        return dx


# -------------------------------------------------------------------------------------------------- loss
def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of (N, K) ``logits`` against integer ``labels`` and its gradient.

    ``loss = mean_i(logsumexp(logits_i) - logits_i[labels_i])``, ``grad = (softmax(logits) - onehot) / N``;
    one fused pass (``fastnorm.softmax_cross_entropy_forward`` with ``grad="out"``).
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy: logits must be (N, K), got shape {logits.shape}")
    n, k = logits.shape
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"softmax_cross_entropy: labels must be {n} integers, got {labels.dtype} {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"softmax_cross_entropy: labels must be in [0, {k})")
    res = softmax_cross_entropy_forward(logits, labels, grad="out")
    return float(res.loss), res.grad


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
