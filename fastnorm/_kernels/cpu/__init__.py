"""CPU kernels (Cython + OpenMP), one name per op; see each ``_<family>.pyx`` for the signatures."""

from ._layer_norm import layer_norm_backward, layer_norm_forward, rms_norm_backward, rms_norm_forward

__all__ = ["layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward"]
