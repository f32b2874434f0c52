"""CPU kernels (Cython + OpenMP), one name per op; see each ``_<family>.pyx`` for the signatures."""

from ._channel_norm import (
    batch_norm_backward,
    batch_norm_forward,
    group_norm_backward,
    group_norm_forward,
    instance_norm_backward,
    instance_norm_forward,
)
from ._layer_norm import layer_norm_backward, layer_norm_forward, rms_norm_backward, rms_norm_forward

__all__ = ["layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward"]
__all__ += [
    "batch_norm_forward",
    "batch_norm_backward",
    "instance_norm_forward",
    "instance_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
]
