"""Where an array lives and what its dtype is: a leaf module, NumPy only.

It imports neither the backends nor numba-cuda nor torch: an array's kind is read from its type, and the
libraries it may belong to are only looked up in ``sys.modules`` (where they are when such an array
exists). The dispatcher and both backends import it; it imports none of them.
"""

from __future__ import annotations

import sys

import numpy as np

from .._dtypes import from_name

__all__ = ["array_kind", "on_cuda", "dtype_of"]

# type -> kind ("numpy", "torch", "cupy", "numba", "sim", "cai", "dev", or None for a host object)
_KINDS: dict = {np.ndarray: "numpy"}


def _kind_of_type(tp) -> str | None:
    mod = tp.__module__ or ""
    top = mod.partition(".")[0]
    if top == "torch":
        torch = sys.modules.get("torch")
        if torch is not None and issubclass(tp, torch.Tensor):
            return "torch"
    if top == "cupy":
        cupy = sys.modules.get("cupy")
        if cupy is not None and issubclass(tp, cupy.ndarray):
            return "cupy"
    if getattr(tp, "__cuda_ndarray__", False) is True:
        # Numba's device arrays (and subclasses); the simulator's have no device pointer
        return "numba" if hasattr(tp, "device_ctypes_pointer") else "sim"
    torch = sys.modules.get("torch")
    if torch is not None and issubclass(tp, torch.Tensor):  # torch.Tensor subclasses defined elsewhere
        return "torch"
    if hasattr(tp, "__cuda_array_interface__"):
        return "cai"
    return None


def array_kind(a) -> str | None:
    """Which library ``a`` belongs to: ``"numpy"``, ``"torch"`` (CPU or CUDA), ``"cupy"``, ``"numba"``
    (a Numba device array), ``"sim"`` (the CUDA simulator's array), ``"cai"`` (another
    ``__cuda_array_interface__`` type), ``"dev"`` (the CUDA backend's own adapter) or None (anything
    else). Cached per type."""
    tp = type(a)
    k = _KINDS.get(tp, 0)
    if k == 0:
        k = _KINDS[tp] = _kind_of_type(tp)
    return k


def on_cuda(a) -> bool:
    """Whether ``a`` lives on a CUDA device (its kernels are the CUDA backend's).

    Decided from the type (and, for torch, ``Tensor.is_cuda``); no ``__cuda_array_interface__`` dict is
    built for torch, CuPy and Numba arrays. Objects of other types answer through the interface
    (``hasattr``), the simulator's arrays through their ``__cuda_ndarray__`` flag.
    """
    k = _KINDS.get(type(a), 0)
    if k == 0:
        k = array_kind(a)
    if k is None or k == "numpy":
        if k is None and getattr(a, "__cuda_ndarray__", False) is True:
            return True
        return False
    if k == "torch":
        return a.is_cuda
    if k == "cai":
        try:
            return hasattr(a, "__cuda_array_interface__")
        except RuntimeError:
            return True
    return True


def dtype_of(a):
    """The NumPy dtype of an array (torch.float32 -> float32, torch.bfloat16 -> ml_dtypes.bfloat16), or None
    if NumPy has no such dtype."""
    dt = a.dtype
    if isinstance(dt, np.dtype):
        return dt
    try:
        return _DTYPE_OF[dt]  # torch dtypes: NumPy refuses them by an exception, slow on every call
    except (KeyError, TypeError):  # (TypeError: unhashable)
        pass
    try:
        d = np.dtype(dt)
    except TypeError:
        d = from_name(str(dt))
    if d is not None and getattr(dt, "__hash__", None) is not None:
        _DTYPE_OF[dt] = d
    return d


_DTYPE_OF: dict = {}
