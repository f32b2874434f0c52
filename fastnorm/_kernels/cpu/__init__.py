"""CPU kernels (Cython + OpenMP), one name per op; see each ``_<family>.pyx`` for the signatures."""

from ._batch_norm_stages import (
    batch_norm_backward_elemt,
    batch_norm_backward_reduce,
    batch_norm_elemt,
    batch_norm_gather_stats,
    batch_norm_stats,
)
from ._channel_norm import (
    batch_norm_backward,
    batch_norm_forward,
    group_norm_backward,
    group_norm_forward,
    instance_norm_backward,
    instance_norm_forward,
)
from ._layer_norm import layer_norm_backward, layer_norm_forward, rms_norm_backward, rms_norm_forward
from ._lrn import local_response_norm_backward, local_response_norm_forward, lrn_scratch_len

# Optimizer steps: kernels over address tables, plus the C-level array checks fastnorm.optim runs first.
from ._optim import (
    adadelta_step,
    adagrad_step,
    adam_step,
    gather_like,
    gather_params,
    rmsprop_step,
    sgd_step,
)
from ._weight_norm import (
    cosine_linear_backward_post,
    cosine_linear_backward_pre,
    cosine_linear_forward,
    weight_norm_backward,
    weight_norm_forward,
)

__all__ = [
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
    "local_response_norm_forward",
    "local_response_norm_backward",
    "lrn_scratch_len",
    "weight_norm_forward",
    "weight_norm_backward",
    "cosine_linear_forward",
    "cosine_linear_backward_pre",
    "cosine_linear_backward_post",
    "sgd_step",
    "adagrad_step",
    "adadelta_step",
    "rmsprop_step",
    "adam_step",
    "gather_params",
    "gather_like",
    "batch_norm_forward",
    "batch_norm_backward",
    "instance_norm_forward",
    "instance_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
    "batch_norm_stats",
    "batch_norm_gather_stats",
    "batch_norm_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_backward_elemt",
]
