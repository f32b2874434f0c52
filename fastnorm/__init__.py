"""fastnorm: fused CPU (Cython + OpenMP) and GPU (Numba-CUDA) kernels for normalization, optimizers and
the divergences at the end of the network.

NumPy arrays run on the CPU kernels; arrays with ``__cuda_array_interface__`` on the CUDA kernels.
``fastnorm.reference`` holds the NumPy specification of every op. Each op module lists its public ops
in its ``__all__``; this package re-exports them.
"""

from . import add_norm, batch_norm_stages, divergence, nn, norms, optim, reference, stats, transport
from ._backend.cpu import empty_cache
from ._config import show_config
from ._dispatch import get_num_threads, openmp_enabled, set_num_threads
from ._version import __version__
from .add_norm import *  # noqa: F403
from .batch_norm_stages import *  # noqa: F403
from .divergence import *  # noqa: F403
from .norms import *  # noqa: F403
from .transport import *  # noqa: F403

__all__ = [
    "__version__",
    "show_config",
    "empty_cache",
    "get_num_threads",
    "set_num_threads",
    "openmp_enabled",
    "nn",
    "optim",
    "reference",
    "stats",
    "transport",
    *norms.__all__,
    *add_norm.__all__,
    *batch_norm_stages.__all__,
    *divergence.__all__,
    *transport.__all__,
]
