"""The floating dtypes fastnorm computes in or stores: float64, float32 and two 16-bit storage formats.

bfloat16 is ``ml_dtypes.bfloat16`` (the NumPy extension dtype JAX and TensorFlow use); NumPy arrays of it
reach the CPU kernels as ``uint16`` views, torch bfloat16 tensors zero-copy through the same view. 16-bit
inputs are stored in 16 bits and computed in float32: their statistics, optimizer state and accumulators
are float32 (``stat_dtype``).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

FLOAT64 = np.dtype(np.float64)
FLOAT32 = np.dtype(np.float32)
FLOAT16 = np.dtype(np.float16)
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

FULL = (FLOAT32, FLOAT64)
HALF = (FLOAT16, BFLOAT16)
# Kernel format codes of the 16-bit formats (FN_BF16 / FN_F16 in fastnorm_half.h).
HALF_FORMAT = {BFLOAT16: 0, FLOAT16: 1}


def is_half(dtype) -> bool:
    """True for float16 and bfloat16."""
    return dtype is not None and np.dtype(dtype) in HALF


def stat_dtype(dtype) -> np.dtype:
    """The dtype of statistics, state and accumulators for data of ``dtype``: float32 for 16-bit data."""
    dtype = np.dtype(dtype)
    return FLOAT32 if dtype in HALF else dtype


def param_dtypes(dtype) -> tuple:
    """The dtypes a parameter (weight, bias) may have beside data of ``dtype``: the same, or float32 beside
    16-bit data (torch's mixed-dtype LayerNorm, apex's fp32 parameters)."""
    dtype = np.dtype(dtype)
    return (dtype, FLOAT32) if dtype in HALF else (dtype,)


def from_name(name: str) -> np.dtype | None:
    """``"bfloat16"``, ``"torch.bfloat16"``, ``"float32"``, ... as a NumPy dtype; None if unknown."""
    name = str(name).rpartition(".")[2]
    if name == "bfloat16":
        return BFLOAT16
    try:
        return np.dtype(name)
    except TypeError:
        return None


def as_bits(a: np.ndarray) -> np.ndarray:
    """A 16-bit float array as its uint16 bit patterns (a view), the form the CPU kernels take."""
    return a.view(np.uint16)
