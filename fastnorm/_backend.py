"""The backend interface every public op is written against, and where an array lives.

A leaf module: NumPy only. It imports neither the dispatch layer nor numba-cuda nor torch (an array's
kind is read from its type, and the libraries it belongs to are only looked up in ``sys.modules``, where
they are when such an array exists).

``Backend`` lists the primitives the public layer (``_validation``, ``norms``, ``optim``) calls on a
backend object; ``fastnorm._dispatch.CpuBackend`` and ``fastnorm._kernels.cuda._backend.CudaBackend``
implement it. On the CUDA backend each primitive reads pointer, shape, dtype and contiguity straight from
the array's own type (torch tensor, CuPy array, Numba device array; the ``__cuda_array_interface__`` dict
only for other types) and does integer arithmetic on them, so validating a call costs microseconds.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Backend", "array_kind", "on_cuda"]


@runtime_checkable
class Backend(Protocol):
    """What the public layer needs from a backend (CPU or CUDA)."""

    name: str
    """``"cpu"`` or ``"cuda"``."""
    float_dtypes: tuple
    """The NumPy dtypes its kernels take."""

    @property
    def kernels(self) -> Any:
        """The kernel namespace: one launcher per op, with the CPU kernels' names and signatures."""

    def stat_dtype(self, dtype) -> np.dtype:
        """The dtype of statistics (mean, rstd) and accumulators for inputs of ``dtype``."""

    def asarray(self, a) -> Any:
        """``a`` as a C-contiguous array a kernel may read: ``a``'s own memory when it is contiguous, else a
        contiguous copy. Its ``.shape`` is a tuple, ``.dtype`` a NumPy dtype, ``.reshape`` a view."""

    def empty(self, shape: tuple, dtype) -> Any:
        """A new C-contiguous output (on the CUDA backend: from the allocator of the caller's arrays)."""

    def zeros(self, shape: tuple, dtype) -> Any:
        """``empty`` filled with zeros."""

    def astype(self, a, dtype) -> Any:
        """``a`` converted to ``dtype`` (``a`` itself when it has that dtype); 16-bit results rounded to nearest
        even. For small arrays: parameters of 16-bit ops enter the kernels in ``stat_dtype``."""

    def copyto(self, dst, src) -> None:
        """``dst[...] = src`` converting the dtype (round to nearest even into 16 bits); same shape."""

    def is_own_output(self, a) -> bool:
        """Whether ``a`` is an array of this backend (one its kernels may write)."""

    def is_contiguous(self, a) -> bool:
        """Whether ``a`` is C-contiguous."""

    def is_writeable(self, a) -> bool:
        """Whether ``a`` may be written."""

    def may_share_memory(self, a, b) -> bool:
        """Whether the memory spans of ``a`` and ``b`` overlap (a conservative answer for strided arrays)."""

    def threads(self, work: int) -> int:
        """CPU: threads for a kernel touching ``work`` elements. CUDA: the bound on the partial rows of a
        column reduction (the row count of its scratch)."""


# type -> kind ("numpy", "torch", "cupy", "numba", "sim", "cai", or None for a host object)
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
    ``__cuda_array_interface__`` type) or None (anything else). Cached per type."""
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
