"""Drop-in ``torch.nn`` modules whose forward runs fastnorm kernels.

Each class subclasses the torch module of the same name and only replaces ``forward``, so constructor
arguments, parameter and buffer names, ``state_dict`` keys, ``reset_parameters``, ``repr`` and
``isinstance(m, torch.nn.LayerNorm)`` are torch's: a torch checkpoint loads as it is, and back.

Fallback: on a dtype or device fastnorm does not handle (CPU float16/bfloat16, MPS, ...) a module runs
torch's own forward and warns once per class and reason (``FastnormFallbackWarning``). The functional ops
in ``fastnorm.torch.functional`` raise ``TypeError`` instead.

``swap_modules(model)`` replaces, in place, every torch normalization module of the classes above by the
fastnorm one, sharing the same parameter and buffer tensors (an optimizer built before keeps working).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional as F
from ._common import FastnormFallbackWarning, batch_norm_args, warn_once

__all__ = [
    "FastnormFallbackWarning",
    "LayerNorm",
    "RMSNorm",
    "AddLayerNorm",
    "AddRMSNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "GroupNorm",
    "LocalResponseNorm",
    "WeightNormLinear",
    "CosineLinear",
    "weight_norm_weight",
    "swap_modules",
]


_warned: set[tuple[str, str]] = set()


def _fallback(module: torch.nn.Module, *tensors: Tensor | None) -> bool:
    """True (after a one-time warning) when the fastnorm kernels cannot take these tensors."""
    reason = F.unsupported_reason(*tensors, op=module._fastnorm_op)
    if reason is None:
        return False
    warn_once(_warned, f"fastnorm.torch.nn.{type(module).__name__}", reason)
    return True


class _Forward:
    """``forward(input)``: ``F.<_fastnorm_op>(input, *attributes)`` with the module attributes named in
    ``_args`` (the functional op's arguments after the input, in its order); torch's own forward where
    fastnorm cannot take the input or the tensor attributes."""

    _fastnorm_op: str
    _args: tuple

    def forward(self, input: Tensor) -> Tensor:
        args = [getattr(self, a) for a in self._args]
        if _fallback(self, input, *(a for a in args if isinstance(a, Tensor))):
            return super().forward(input)
        return getattr(F, self._fastnorm_op)(input, *args)


class LayerNorm(_Forward, torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` (same arguments and state) on fastnorm's LayerNorm kernels."""

    _fastnorm_op, _args = "layer_norm", ("normalized_shape", "weight", "bias", "eps")


class RMSNorm(_Forward, torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` (same arguments and state; ``eps=None``: finfo(dtype).eps) on fastnorm kernels."""

    _fastnorm_op, _args = "rms_norm", ("normalized_shape", "weight", "eps")


class AddLayerNorm(torch.nn.LayerNorm):
    """Fused residual add + LayerNorm: ``forward(x, residual) -> (y, h)`` with ``h = x + residual`` and
    ``y = LayerNorm(h)`` (``fastnorm.torch.functional.add_layer_norm``).

    Constructor, parameters and state_dict keys are ``torch.nn.LayerNorm``'s (a LayerNorm checkpoint loads as
    it is). A pre-norm block carries the residual stream through it: ``y, h = norm(sublayer_out, h)``. On a
    dtype or device fastnorm does not handle it computes ``x + residual`` and torch's LayerNorm (with a
    ``FastnormFallbackWarning``).
    """

    _fastnorm_op = "add_layer_norm"

    def forward(self, x: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        if _fallback(self, x, residual, self.weight, self.bias):
            h = x + residual
            return super().forward(h), h
        return F.add_layer_norm(x, residual, self.normalized_shape, self.weight, self.bias, self.eps)


class AddRMSNorm(torch.nn.RMSNorm):
    """Fused residual add + RMSNorm: ``forward(x, residual) -> (y, h)`` with ``h = x + residual`` and
    ``y = RMSNorm(h)`` (``fastnorm.torch.functional.add_rms_norm``; ``eps=None``: finfo(dtype).eps).

    Constructor, parameters and state_dict keys are ``torch.nn.RMSNorm``'s. On a dtype or device fastnorm
    does not handle it computes ``x + residual`` and torch's RMSNorm (with a ``FastnormFallbackWarning``).
    """

    _fastnorm_op = "add_rms_norm"

    def forward(self, x: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        if _fallback(self, x, residual, self.weight):
            h = x + residual
            return super().forward(h), h
        return F.add_rms_norm(x, residual, self.normalized_shape, self.weight, self.eps)


class _BatchNormForward:
    """torch's ``_BatchNorm.forward`` (momentum / cumulative average, num_batches_tracked, which statistics
    normalize and which are updated) with the kernel call on fastnorm."""

    _fastnorm_op = "batch_norm"

    def forward(self, input: Tensor) -> Tensor:
        if _fallback(self, input, self.weight, self.bias, self.running_mean, self.running_var):
            return super().forward(input)
        self._check_input_dim(input)
        running_mean, running_var, bn_training, factor = batch_norm_args(self)
        return F.batch_norm(input, running_mean, running_var, self.weight, self.bias, bn_training, factor, self.eps)


class BatchNorm1d(_BatchNormForward, torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` ((N, C) or (N, C, L)) on fastnorm's BatchNorm kernels."""


class BatchNorm2d(_BatchNormForward, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` ((N, C, H, W)) on fastnorm's BatchNorm kernels."""


class BatchNorm3d(_BatchNormForward, torch.nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` ((N, C, D, H, W)) on fastnorm's BatchNorm kernels."""


class _InstanceNormApply:
    """torch's ``_InstanceNorm`` (input checks, unbatched inputs) with the kernel call on fastnorm."""

    _fastnorm_op = "instance_norm"

    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        if _fallback(self, input, self.weight, self.bias, self.running_mean, self.running_var):
            return super()._apply_instance_norm(input)
        return F.instance_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )


class InstanceNorm1d(_InstanceNormApply, torch.nn.InstanceNorm1d):
    """``torch.nn.InstanceNorm1d`` ((N, C, L) or (C, L)) on fastnorm's InstanceNorm kernels."""


class InstanceNorm2d(_InstanceNormApply, torch.nn.InstanceNorm2d):
    """``torch.nn.InstanceNorm2d`` ((N, C, H, W) or (C, H, W)) on fastnorm's InstanceNorm kernels."""


class InstanceNorm3d(_InstanceNormApply, torch.nn.InstanceNorm3d):
    """``torch.nn.InstanceNorm3d`` ((N, C, D, H, W) or (C, D, H, W)) on fastnorm's InstanceNorm kernels."""


class GroupNorm(_Forward, torch.nn.GroupNorm):
    """``torch.nn.GroupNorm`` on fastnorm's GroupNorm kernels."""

    _fastnorm_op, _args = "group_norm", ("num_groups", "weight", "bias", "eps")


class LocalResponseNorm(_Forward, torch.nn.LocalResponseNorm):
    """``torch.nn.LocalResponseNorm`` on fastnorm's LRN kernels."""

    _fastnorm_op, _args = "local_response_norm", ("size", "alpha", "beta", "k")


class WeightNormLinear(torch.nn.Module):
    """A linear layer with a weight-normalized weight, ``y = x @ w.T + bias`` with ``w = g * v / ||v||``
    (the norm over every dim but ``dim``), on fastnorm's WeightNorm kernels.

    Parameters and state_dict keys are those of ``torch.nn.utils.weight_norm(torch.nn.Linear(...), dim=dim)``:
    ``weight_g`` (out, 1) for dim=0, ``weight_v`` (out, in), ``bias`` (out,); initialized like it (v from
    Linear's init, g = ||v||, so w starts equal to Linear's weight). Checkpoints of the newer
    ``torch.nn.utils.parametrizations.weight_norm`` (``parametrizations.weight.original0/1``) load too.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dim: int = 0, device=None, dtype=None):
        super().__init__()
        if dim not in (0, 1, -1, -2):
            raise ValueError(f"WeightNormLinear: dim must be 0 or 1 (a dim of the (out, in) weight), got {dim}")
        lin = torch.nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.in_features, self.out_features, self.dim = in_features, out_features, dim % 2
        v = lin.weight.detach()
        self.weight_g = torch.nn.Parameter(torch.norm_except_dim(v, 2, self.dim).clone())
        self.weight_v = torch.nn.Parameter(v.clone())
        self.bias = lin.bias

    @property
    def weight(self) -> Tensor:
        """The effective weight g * v / ||v|| (computed, differentiable)."""
        return weight_norm_weight(self.weight_v, self.weight_g, self.dim)

    def forward(self, input: Tensor) -> Tensor:
        return torch.nn.functional.linear(input, self.weight, self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for new, old in (("original0", "weight_g"), ("original1", "weight_v")):
            key = f"{prefix}parametrizations.weight.{new}"
            if key in state_dict:
                state_dict[prefix + old] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}, dim={self.dim}"


def weight_norm_weight(v: Tensor, g: Tensor, dim: int) -> Tensor:
    """w = g * v / ||v|| on fastnorm (torch's ``_weight_norm`` where fastnorm cannot run)."""
    if F.unsupported_reason(v, g, op="weight_norm") is not None:
        return torch._weight_norm(v, g, dim)
    return F.weight_norm(v, g, dim)


class CosineLinear(torch.nn.Module):
    """Cosine-normalized linear layer (no bias): ``y[..., o] = cos(x, weight[o])``, i.e.
    ``F.linear(F.normalize(x, eps=eps), F.normalize(weight, eps=eps))``, on fastnorm's kernels.

    ``weight`` (out, in) is initialized like ``torch.nn.Linear``'s and has its state_dict key, so a bias-free
    ``torch.nn.Linear`` checkpoint loads as it is. Outputs lie in [-1, 1]; scale them (a temperature) before
    a softmax.
    """

    _fastnorm_op = "cosine_linear"

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-8, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.eps = in_features, out_features, eps
        lin = torch.nn.Linear(in_features, out_features, bias=False, device=device, dtype=dtype)
        self.weight = lin.weight

    def forward(self, input: Tensor) -> Tensor:
        if _fallback(self, input, self.weight):
            nf = torch.nn.functional.normalize
            x, w = nf(input, dim=-1, eps=self.eps), nf(self.weight, dim=-1, eps=self.eps)
            return torch.nn.functional.linear(x, w)
        return F.cosine_linear(input, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, eps={self.eps}"


_SWAPS: dict[type, type] = {
    torch.nn.LayerNorm: LayerNorm,
    torch.nn.RMSNorm: RMSNorm,
    torch.nn.BatchNorm1d: BatchNorm1d,
    torch.nn.BatchNorm2d: BatchNorm2d,
    torch.nn.BatchNorm3d: BatchNorm3d,
    torch.nn.InstanceNorm1d: InstanceNorm1d,
    torch.nn.InstanceNorm2d: InstanceNorm2d,
    torch.nn.InstanceNorm3d: InstanceNorm3d,
    torch.nn.GroupNorm: GroupNorm,
    torch.nn.LocalResponseNorm: LocalResponseNorm,
}


def swap_modules(model: torch.nn.Module) -> int:
    """Replace in place every submodule whose type is exactly a torch class with a fastnorm twin.

    The new module shares the old one's parameters, buffers, hooks and training flag (no copy). Returns the
    number of modules replaced. ``model`` itself is not replaced (wrap a bare norm module in a container).
    """
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            cls = _SWAPS.get(type(child))
            if cls is None:
                continue
            new = cls.__new__(cls)
            new.__dict__.update(child.__dict__)
            setattr(parent, name, new)
            count += 1
    return count


# Modules defined beside their functional ops, re-exported here so every drop-in module is in one namespace.
from .distributed import SyncBatchNorm  # noqa: E402
from .losses import CrossEntropyLoss, JSDLoss, KLDivLoss  # noqa: E402

__all__ += ["SyncBatchNorm", "CrossEntropyLoss", "KLDivLoss", "JSDLoss"]
