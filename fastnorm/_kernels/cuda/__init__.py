"""CUDA kernels (Numba-CUDA), one launcher per op with the CPU kernel's name and signature.

Importing this module imports numba; ``fastnorm`` imports it only on the first GPU call. Launchers take
Numba device arrays or any ``__cuda_array_interface__`` object (converted zero-copy), preallocated outputs
and scalars; the trailing ``n_threads`` is the CPU thread count there and, here, the bound on the number of
partial rows of a column reduction (the row count of the scratch the public layer passes).
"""

from .batch_norm_stages import (
    batch_norm_backward_elemt,
    batch_norm_backward_reduce,
    batch_norm_elemt,
    batch_norm_gather_stats,
    batch_norm_stats,
)
from .channel_norm import (
    batch_norm_backward,
    batch_norm_forward,
    group_norm_backward,
    group_norm_forward,
    instance_norm_backward,
    instance_norm_forward,
)
from .divergence import (
    entropy_backward,
    entropy_forward,
    js_div_backward,
    js_div_forward,
    kl_div_backward,
    kl_div_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .layer_norm import (
    add_layer_norm_backward,
    add_layer_norm_forward,
    add_rms_norm_backward,
    add_rms_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
    rms_norm_backward,
    rms_norm_forward,
)
from .lrn import local_response_norm_backward, local_response_norm_forward, lrn_scratch_len
from .optim import (
    adadelta_step,
    adagrad_step,
    adam_step,
    gather_like,
    gather_params,
    rmsprop_step,
    sgd_step,
)
from .transport import (
    sinkhorn,
    sinkhorn_backward,
    sort_rows,
    sort_width,
    unsort_rows,
    wasserstein_1d,
    wasserstein_1d_backward,
)
from .weight_norm import (
    cosine_linear_backward_post,
    cosine_linear_backward_pre,
    cosine_linear_forward,
    weight_norm_backward,
    weight_norm_forward,
)

__all__ = [
    "adadelta_step",
    "adagrad_step",
    "adam_step",
    "add_layer_norm_backward",
    "add_layer_norm_forward",
    "add_rms_norm_backward",
    "add_rms_norm_forward",
    "batch_norm_backward",
    "batch_norm_backward_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_elemt",
    "batch_norm_forward",
    "batch_norm_gather_stats",
    "batch_norm_stats",
    "cosine_linear_backward_post",
    "cosine_linear_backward_pre",
    "cosine_linear_forward",
    "entropy_backward",
    "entropy_forward",
    "gather_like",
    "gather_params",
    "group_norm_backward",
    "group_norm_forward",
    "instance_norm_backward",
    "instance_norm_forward",
    "js_div_backward",
    "js_div_forward",
    "kl_div_backward",
    "kl_div_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "local_response_norm_backward",
    "local_response_norm_forward",
    "lrn_scratch_len",
    "rms_norm_backward",
    "rms_norm_forward",
    "rmsprop_step",
    "sgd_step",
    "sinkhorn",
    "sinkhorn_backward",
    "softmax_cross_entropy_backward",
    "softmax_cross_entropy_forward",
    "sort_rows",
    "sort_width",
    "unsort_rows",
    "wasserstein_1d",
    "wasserstein_1d_backward",
    "weight_norm_backward",
    "weight_norm_forward",
]
