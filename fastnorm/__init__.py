"""fastnorm: fused CPU (Cython + OpenMP) and GPU (Numba-CUDA) kernels for normalization and optimizers.

NumPy arrays run on the CPU kernels; arrays with ``__cuda_array_interface__`` on the CUDA kernels.
``fastnorm.reference`` holds the NumPy specification of every op.
"""

from . import optim, reference
from ._dispatch import get_num_threads, openmp_enabled, set_num_threads
from .batch_norm_stages import (
    batch_norm_backward_elemt,
    batch_norm_backward_reduce,
    batch_norm_elemt,
    batch_norm_gather_stats,
    batch_norm_stats,
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

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "reference",
    "optim",
    "get_num_threads",
    "set_num_threads",
    "openmp_enabled",
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
    "batch_norm_forward",
    "batch_norm_backward",
    "instance_norm_forward",
    "instance_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
]
__all__ += [
    "local_response_norm_forward",
    "local_response_norm_backward",
    "weight_norm_forward",
    "weight_norm_backward",
    "cosine_linear_forward",
    "cosine_linear_backward",
]

__all__ += [
    "batch_norm_stats",
    "batch_norm_gather_stats",
    "batch_norm_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_backward_elemt",
]

# NumPy layers for training loops (fastnorm.nn); imports NumPy only.
from . import nn  # noqa: E402

__all__ += ["nn"]
