"""What every part of fastnorm.torch shares (a leaf module: torch and NumPy only)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from .._doc import render
from .._dtypes import BFLOAT16


class FastnormFallbackWarning(UserWarning):
    """A fastnorm module, loss or optimizer ran torch's own implementation (unsupported dtype or device)."""


# numpydoc entries shared by the trailing-dims norms (layer_norm, rms_norm and their fused-add forms)
_TRAILING = """normalized_shape : int or sequence of int
    The trailing dims normalized together."""
DOC = {
    "trailing": f"""input : Tensor
    (*, *normalized_shape).
{_TRAILING}""",
    "add_trailing": f"""x, residual : Tensor
    Same shape and dtype (float32, float64; bfloat16/float16 where the CPU kernels take them), ending
    with ``normalized_shape``. h is rounded to their dtype once, then normalized.
{_TRAILING}""",
}


def fill_docs(namespace: dict, names) -> None:
    """In the docstrings of the functions ``names`` of a module (its ``globals()``), each line that is only
    ``%(key)s`` becomes the entry ``DOC[key]``, indented as the placeholder was (``help()`` then shows the
    complete text)."""
    for name in names:
        fn = namespace[name]
        if fn.__doc__:
            fn.__doc__ = render(fn.__doc__, DOC)


def warn_once(seen: set, where: str, reason: str, instead: str = "running torch's implementation instead") -> None:
    """A ``FastnormFallbackWarning`` "<where>: <reason>; <instead>", once per (where, reason) in ``seen``
    (each module keeps its own set, which tests may reset), pointing at the caller's caller."""
    if (where, reason) not in seen:
        seen.add((where, reason))
        warnings.warn(f"{where}: {reason}; {instead}", FastnormFallbackWarning, stacklevel=4)


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


def batch_norm_args(m) -> tuple:
    """torch's ``_BatchNorm.forward`` bookkeeping for BatchNorm module ``m``: in training with running
    statistics, count the batch (``num_batches_tracked``); returns the arguments of ``batch_norm``
    ``(running_mean, running_var, training, momentum)`` (momentum None: the cumulative average's factor)."""
    factor = 0.0 if m.momentum is None else m.momentum
    if m.training and m.track_running_stats and m.num_batches_tracked is not None:
        m.num_batches_tracked.add_(1)
        if m.momentum is None:  # cumulative moving average
            factor = 1.0 / float(m.num_batches_tracked)
    bn_training = m.training or (m.running_mean is None and m.running_var is None)
    update_or_use = not m.training or m.track_running_stats
    running = (m.running_mean, m.running_var) if update_or_use else (None, None)
    return *running, bn_training, factor
