"""What every part of fastnorm.torch shares (a leaf module: torch and NumPy only)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._dtypes import BFLOAT16


class FastnormFallbackWarning(UserWarning):
    """A fastnorm module, loss or optimizer ran torch's own implementation (unsupported dtype or device)."""


def _arr(t: Tensor | None):
    """A tensor as a fastnorm kernel input: a zero-copy NumPy view on the CPU (bfloat16 as
    ``ml_dtypes.bfloat16``), the tensor itself on CUDA."""
    if t is None:
        return None
    t = t.detach()
    if t.device.type != "cpu":
        return t
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BFLOAT16)
    return t.numpy()


def _ten(a, like: Tensor) -> Tensor | None:
    """A fastnorm result as a tensor on ``like``'s device (zero-copy)."""
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        if a.dtype == BFLOAT16:
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)
    return torch.as_tensor(a, device=like.device)
