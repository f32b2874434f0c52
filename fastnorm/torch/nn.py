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

import warnings

import torch
from torch import Tensor

from . import functional as F

__all__ = [
    "FastnormFallbackWarning",
    "LayerNorm",
    "RMSNorm",
    "swap_modules",
]


class FastnormFallbackWarning(UserWarning):
    """A fastnorm module ran torch's own implementation (unsupported dtype or device)."""


_warned: set[tuple[str, str]] = set()


def _fallback(module: torch.nn.Module, *tensors: Tensor | None) -> bool:
    """True (after a one-time warning) when the fastnorm kernels cannot take these tensors."""
    reason = F.unsupported_reason(*tensors)
    if reason is None:
        return False
    key = (type(module).__name__, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"fastnorm.torch.nn.{type(module).__name__}: {reason}; running torch's implementation instead",
            FastnormFallbackWarning,
            stacklevel=3,
        )
    return True


class LayerNorm(torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` (same arguments and state) on fastnorm's LayerNorm kernels."""

    def forward(self, input: Tensor) -> Tensor:
        if _fallback(self, input, self.weight, self.bias):
            return super().forward(input)
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` (same arguments and state; ``eps=None``: finfo(dtype).eps) on fastnorm kernels."""

    def forward(self, input: Tensor) -> Tensor:
        if _fallback(self, input, self.weight):
            return super().forward(input)
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)


_SWAPS: dict[type, type] = {
    torch.nn.LayerNorm: LayerNorm,
    torch.nn.RMSNorm: RMSNorm,
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
