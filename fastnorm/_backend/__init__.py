"""The backend interface every public op is written against, and which backend an array belongs to.

Layout (no import cycle: ``_detect`` is a leaf; ``cpu`` reads the thread settings of
``fastnorm._dispatch``, which imports no backend; ``cuda``, the only module that imports numba-cuda, is
loaded on the first GPU call):

- ``_detect``: ``array_kind``, ``on_cuda``, ``dtype_of`` (NumPy only);
- ``cpu``: ``CpuBackend`` (NumPy arrays, ``fastnorm._kernels.cpu``);
- ``cuda``: ``CudaBackend`` (any ``__cuda_array_interface__`` object, ``fastnorm._kernels.cuda``).

``Backend`` lists the primitives the public layer (``_validation``, ``norms``, ``optim``) calls on a
backend object; both backends implement all of them, so the public layer never asks which one it has.
On the CUDA backend each primitive reads pointer, shape, dtype and contiguity straight from the array's
own type (torch tensor, CuPy array, Numba device array; the ``__cuda_array_interface__`` dict only for
other types) and does integer arithmetic on them, so validating a call costs microseconds.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ._detect import _KINDS, array_kind, dtype_of, on_cuda
from .cpu import CPU, CpuBackend

__all__ = [
    "Backend",
    "CPU",
    "CpuBackend",
    "array_kind",
    "on_cuda",
    "dtype_of",
    "backend_of",
    "cuda_backend",
    "to_host",
    "host",
]
_ = _KINDS  # the type -> kind cache, shared with the CUDA array adapters


@runtime_checkable
class Backend(Protocol):
    """What the public layer needs from a backend (CPU or CUDA)."""

    name: str
    """``"cpu"`` or ``"cuda"``."""
    array_type: str
    """What its arrays are, for messages: ``"numpy.ndarray"`` or ``"CUDA array"``."""
    device: str
    """Where its arrays live, for messages: ``"the CPU"`` or ``"the GPU (CUDA)"``."""
    float_dtypes: tuple
    """The NumPy dtypes its kernels take."""
    on_host: bool
    """Whether its arrays are NumPy arrays in host memory. Then array-likes (lists, scalars) are converted
    with ``np.asarray`` and a non-native byte order is accepted (``asarray`` copies it to native order);
    device arrays are never converted and always native."""

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

    def array_info(self, a) -> tuple[tuple, np.dtype, int]:
        """``(shape, dtype, address)`` of an array of this backend (``is_own_output(a)``): the shape as a
        tuple, the NumPy dtype (bfloat16 as ``ml_dtypes.bfloat16``), the address of its first byte."""

    def is_contiguous(self, a) -> bool:
        """Whether ``a`` is C-contiguous."""

    def is_aligned(self, a) -> bool:
        """Whether ``a``'s address is a multiple of its element size."""

    def is_writeable(self, a) -> bool:
        """Whether ``a`` may be written."""

    def out_layout(self, a) -> tuple[tuple, bool, bool, Any] | None:
        """``(shape, C-contiguous, writeable, span)`` of an ``out=`` buffer read at once (shape a tuple, span
        as ``span(a)``, None where the backend has no ``span``); None if ``a`` is not an array of this backend
        (``is_own_output``)."""

    row_calls: Any
    """None, or a module whose ``forward(be, spec, arrays, eps, normalized_ndim, out)`` /
    ``backward(be, spec, arrays, normalized_ndim, out)`` run a LayerNorm/RMSNorm call of the usual form
    checked on the backend's own array records, and return its result (None: the call takes the general
    path, which also gives every error)."""

    span: Any
    """``span(a)``: the ``[lo, hi)`` byte addresses of array ``a`` (an empty range for a zero-size array), so that a
    call compares each array's span once in integer arithmetic; None where ``may_share_memory`` on each pair
    is the cheaper check (the CPU: one NumPy C call)."""

    def may_share_memory(self, a, b) -> bool:
        """Whether the memory spans of ``a`` and ``b`` overlap (a conservative answer for strided arrays)."""

    def matmul(self, a, b, out) -> None:
        """``out = a @ b`` (2-D, C-contiguous)."""

    def launch_for(self, params: list) -> None:
        """The optimizer launches that follow update ``params`` (CUDA: on their library's current stream on
        their device; nothing to do on the host)."""

    def to_device(self, a: np.ndarray) -> Any:
        """A new C-contiguous array of this backend holding a copy of the host array ``a``."""

    def to_host(self, a) -> np.ndarray:
        """A host NumPy copy of ``a`` (an array of this backend)."""

    def threads(self, work: int) -> int:
        """CPU: threads for a kernel touching ``work`` elements. CUDA: the bound on the partial rows of a
        column reduction (the row count of its scratch)."""


_cuda_backend = None


def cuda_backend():
    """The CUDA backend, imported on first use; a clear RuntimeError when it cannot run."""
    global _cuda_backend
    if _cuda_backend is None:
        try:
            mod = importlib.import_module("fastnorm._backend.cuda")
        except ImportError as e:  # numba / numba-cuda missing
            raise RuntimeError(
                "fastnorm: a GPU array was passed but the CUDA backend needs numba-cuda "
                f"(pip install 'fastnorm[cuda]'): {e}"
            ) from None
        _cuda_backend = mod.make_backend()
    return _cuda_backend


_DEVICE_KINDS = frozenset(("cupy", "numba", "sim", "dev"))  # kinds that are on CUDA whatever the object


def _where(a) -> bool:
    """``on_cuda(a)`` with the type lookup inlined for the common kinds (a per-call hot spot)."""
    k = _KINDS.get(type(a))
    if k == "torch":
        return a.is_cuda
    if k == "numpy":
        return False
    if k in _DEVICE_KINDS:
        return True
    return on_cuda(a)


def backend_of(op: str, **arrays):
    """The backend shared by every non-None array in ``arrays`` (name -> array).

    Mixing host and device arrays is a ``TypeError`` naming which argument lives where.
    Lists/tuples of arrays (optimizer params) are looked into.
    """
    seen = None  # the one answer of on_cuda so far; a second answer is the error below
    for a in arrays.values():
        if a is None:
            continue
        if isinstance(a, (tuple, list)):
            for item in a:
                if item is not None:
                    c = _where(item)
                    if seen is None:
                        seen = c
                    elif c != seen:
                        _mixed(op, arrays)
        else:
            c = _where(a)
            if seen is None:
                seen = c
            elif c != seen:
                _mixed(op, arrays)
    if seen is None or not seen:
        return CPU
    return _cuda_backend or cuda_backend()


def _mixed(op: str, arrays: dict):
    """The TypeError of ``backend_of`` for arrays on different devices, naming each argument."""
    where = {}
    for name, a in arrays.items():
        if a is None:
            continue
        if isinstance(a, (list, tuple)):
            for i, item in enumerate(a):
                if item is not None:
                    where[f"{name}[{i}]"] = on_cuda(item)
        else:
            where[name] = on_cuda(a)
    gpu = [n for n, c in where.items() if c]
    cpu = [n for n, c in where.items() if not c]
    raise TypeError(
        f"{op}: arguments live on different devices: {', '.join(gpu)} on the GPU (CUDA), "
        f"{', '.join(cpu)} on the CPU; move them to one device"
    )


def to_host(a) -> np.ndarray:
    """A host NumPy copy of ``a``: a CUDA array (copied from the device), or anything NumPy reads."""
    return cuda_backend().to_host(a) if on_cuda(a) else np.array(a, copy=True)


def host(be, a) -> np.ndarray:
    """``a``'s values as a NumPy array: ``a`` itself on a host backend (no copy), else a copy from the
    device (small arrays: statistics, targets, weights read by the public layer)."""
    return np.asarray(a) if be.on_host else be.to_host(a)
