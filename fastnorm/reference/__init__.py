"""NumPy reference implementations: the specification of every fastnorm op (NumPy only, no tricks)."""

from . import optim
from .divergence import (
    entropy,
    entropy_backward,
    js_div,
    js_div_backward,
    kl_div,
    kl_div_backward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
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
from .transport import sinkhorn, sinkhorn_backward, wasserstein_1d, wasserstein_1d_backward

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
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "entropy",
    "entropy_backward",
    "kl_div",
    "kl_div_backward",
    "js_div",
    "js_div_backward",
]
__all__ += ["wasserstein_1d", "wasserstein_1d_backward", "sinkhorn", "sinkhorn_backward"]
