"""NumPy reference implementations: the specification of every fastnorm op (NumPy only, no tricks)."""

from . import optim
from .norms import (
    batch_norm_backward,
    batch_norm_forward,
    cosine_linear_backward,
    cosine_linear_forward,
    group_norm_backward,
    group_norm_forward,
    instance_norm_backward,
    instance_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
    local_response_norm_backward,
    local_response_norm_forward,
    rms_norm_backward,
    rms_norm_forward,
    weight_norm_backward,
    weight_norm_forward,
)
from .optim import adadelta_step, adagrad_step, adam_step, adamw_step, rmsprop_step, sgd_step
from .sync_batch_norm import (
    batch_norm_backward_elemt,
    batch_norm_backward_reduce,
    batch_norm_elemt,
    batch_norm_gather_stats,
    batch_norm_stats,
)

__all__ = [
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
    "optim",
    "sgd_step",
    "adagrad_step",
    "adadelta_step",
    "rmsprop_step",
    "adam_step",
    "adamw_step",
]
__all__ += [
    "local_response_norm_forward",
    "local_response_norm_backward",
    "weight_norm_forward",
    "weight_norm_backward",
    "cosine_linear_forward",
    "cosine_linear_backward",
    "batch_norm_forward",
    "batch_norm_backward",
    "instance_norm_forward",
    "instance_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
]
__all__ += [
    "batch_norm_stats",
    "batch_norm_gather_stats",
    "batch_norm_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_backward_elemt",
]
