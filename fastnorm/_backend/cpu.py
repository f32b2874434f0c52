"""The CPU backend: NumPy arrays, the Cython/OpenMP kernels of ``fastnorm._kernels.cpu``."""

from __future__ import annotations

import importlib
import sys

import numpy as np

from .. import _dispatch, _dtypes
from ._base import BackendBase

__all__ = ["CpuBackend", "CPU", "empty_cache"]


def _pool():
    """``fastnorm._kernels.cpu._alloc``: the allocator of large outputs (a bounded cache of freed blocks)."""
    return importlib.import_module("fastnorm._kernels.cpu._alloc")


def empty_cache() -> None:
    """Give back to the system the memory fastnorm keeps cached for reuse by later outputs.

    Large CPU outputs (1 MiB and up) come from a cache of blocks that earlier outputs freed, so repeated calls
    of the same shapes touch no fresh pages; it holds at most ``FASTNORM_CPU_POOL_MB`` MiB (default 1024, at
    most an eighth of the physical memory; ``FASTNORM_CPU_POOL=0`` turns it off). This frees those cached
    blocks, and those of the CUDA backend's device pool when the CUDA backend is in use. Arrays that are still
    alive keep their memory; ``fastnorm.show_config()`` reports what the CPU cache holds.
    """
    _pool().release()
    cuda = getattr(sys.modules.get("fastnorm._backend"), "_cuda_backend", None)
    if cuda is not None and getattr(cuda, "pool", None) is not None:
        cuda.pool.release()


class CpuBackend(
    BackendBase, name="cpu", array_type="numpy.ndarray", device="the CPU", on_host=True, kernels="fastnorm._kernels.cpu"
):
    """``fastnorm._backend.Backend`` on NumPy arrays (thread count from ``fastnorm._dispatch``)."""

    stat_dtype = staticmethod(_dtypes.stat_dtype)

    @staticmethod
    def asarray(a):
        # A copy only when a kernel cannot read ``a`` as it is: not C-contiguous, unaligned (e.g.
        # np.frombuffer(..., offset=1); np.ascontiguousarray returns those unchanged), or byte-swapped.
        # Read-only arrays are fine (kernels take const views). The shape is kept, 0-d included.
        a = np.asarray(a)
        if a.flags.c_contiguous and a.flags.aligned and a.dtype.isnative:
            return a
        return np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)

    # Outputs and scratch of 1 MiB and up come from the pool of fastnorm._kernels.cpu._alloc. The first call
    # imports it and puts its functions on the instance, in place of these methods.
    def empty(self, shape, dtype):
        self.empty = _pool().empty
        return self.empty(shape, dtype)

    def zeros(self, shape, dtype):
        self.zeros = _pool().zeros
        return self.zeros(shape, dtype)

    @staticmethod
    def astype(a, dtype):
        return a if a.dtype == dtype else a.astype(dtype)

    @staticmethod
    def copyto(dst, src):
        np.copyto(dst, src, casting="unsafe")

    @staticmethod
    def is_own_output(a):
        return isinstance(a, np.ndarray)

    @staticmethod
    def array_info(a):
        return a.shape, a.dtype, a.__array_interface__["data"][0]

    @staticmethod
    def is_contiguous(a):
        return a.flags.c_contiguous

    @staticmethod
    def is_aligned(a):
        return a.flags.aligned

    @staticmethod
    def is_writeable(a):
        return a.flags.writeable

    @staticmethod
    def out_layout(a):
        if not isinstance(a, np.ndarray):
            return None
        flags = a.flags
        return a.shape, flags.c_contiguous, flags.writeable, None

    row_calls = None  # no shortcut for the row ops' usual calls

    span = None  # no byte-span primitive: one NumPy C call per pair (may_share_memory) is cheaper

    @staticmethod
    def may_share_memory(a, b):
        return np.may_share_memory(a, b)

    @staticmethod
    def matmul(a, b, out) -> None:
        np.matmul(a, b, out=out)

    @staticmethod
    def to_device(a: np.ndarray) -> np.ndarray:
        return np.array(a, order="C", copy=True)

    @staticmethod
    def to_host(a) -> np.ndarray:
        return np.array(a, copy=True)

    @staticmethod
    def threads(work):
        return 1 if work < _dispatch.SERIAL_BELOW else _dispatch.get_num_threads()


CPU = CpuBackend()
