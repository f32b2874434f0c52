"""CPU kernels (Cython + OpenMP), one name per op; see each ``_<family>.pyx`` for the signatures."""

from ._layer_norm import layer_norm_backward, layer_norm_forward, rms_norm_backward, rms_norm_forward

__all__ = ["layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward"]

# Optimizer steps: kernels over address tables, plus the C-level array checks fastnorm.optim runs first.
from ._optim import (  # noqa: E402
    adadelta_step,
    adagrad_step,
    adam_step,
    gather_like,
    gather_params,
    rmsprop_step,
    sgd_step,
)

__all__ += ["sgd_step", "adagrad_step", "adadelta_step", "rmsprop_step", "adam_step"]
__all__ += ["gather_params", "gather_like"]
