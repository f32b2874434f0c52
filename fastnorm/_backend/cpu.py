"""The CPU backend: NumPy arrays, the Cython/OpenMP kernels of ``fastnorm._kernels.cpu``."""

from __future__ import annotations

import functools
import importlib

import numpy as np

from .. import _dispatch, _dtypes

__all__ = ["CpuBackend", "CPU"]


class CpuBackend:
    """``fastnorm._backend.Backend`` on NumPy arrays (thread count from ``fastnorm._dispatch``)."""

    name = "cpu"
    array_type = "numpy.ndarray"
    device = "the CPU"
    float_dtypes = _dtypes.FULL + _dtypes.HALF
    on_host = True

    @functools.cached_property
    def kernels(self):
        return importlib.import_module("fastnorm._kernels.cpu")

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

    @staticmethod
    def empty(shape, dtype):
        return np.empty(shape, dtype=dtype)

    @staticmethod
    def zeros(shape, dtype):
        return np.zeros(shape, dtype=dtype)

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
