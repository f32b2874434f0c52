"""fastnorm: fused CPU (Cython + OpenMP) and GPU (Numba-CUDA) kernels for normalization and optimizers.

NumPy arrays run on the CPU kernels; arrays with ``__cuda_array_interface__`` on the CUDA kernels.
``fastnorm.reference`` holds the NumPy specification of every op.
"""

from . import optim, reference
from ._config import show_config
from ._dispatch import get_num_threads, openmp_enabled, set_num_threads
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

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "reference",
    "optim",
    "get_num_threads",
    "set_num_threads",
    "openmp_enabled",
    "show_config",
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
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "entropy",
    "entropy_backward",
    "kl_div",
    "kl_div_backward",
    "js_div",
    "js_div_backward",
]
# Optimal transport and model-selection criteria.
from . import stats, transport  # noqa: E402
from .transport import sinkhorn, sinkhorn_backward, wasserstein_1d, wasserstein_1d_backward  # noqa: E402

__all__ += ["stats", "transport", "wasserstein_1d", "wasserstein_1d_backward", "sinkhorn", "sinkhorn_backward"]

# NumPy layers for training loops (fastnorm.nn); imports NumPy only.
from . import nn  # noqa: E402

__all__ += ["nn"]
