"""The CUDA backend: the primitives of ``fastnorm._backend.Backend`` on GPU arrays.

Inputs are any ``__cuda_array_interface__`` object. Torch tensors, CuPy arrays and Numba device arrays are
read by the adapters of ``_arrays.py`` (pointer, shape, dtype, strides straight from the object: no
interface dict, no ``detach()``, no Numba array); other types through their interface dict. ``asarray``
returns a ``DevArray`` (zero-copy) for a contiguous input; a non-contiguous one is gathered into a new
contiguous array (a copy, on the device). Outputs come from the allocator of the caller's arrays: the
input last passed to ``asarray`` in this thread decides (every op converts its inputs before it allocates):
``torch.empty`` on the tensor's device for torch (torch's caching allocator owns them), ``cupy.empty`` for
CuPy, fastnorm's stream-ordered pool for Numba and other arrays (and for allocations no ``asarray`` of the
same call precedes, such as an optimizer's state: the launchers end a call with ``done()``). Checks
(contiguity, writeability, overlap) are integer arithmetic on the adapted pointers and shapes. Under
``NUMBA_ENABLE_CUDASIM=1`` the "device arrays" are the simulator's (NumPy-backed) arrays and the
simulator's own path is kept.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from functools import partial

import numpy as np

from .. import _dtypes
from ._base import BackendBase
from ._detect import _KINDS
from ._detect import on_cuda as _on_cuda

try:
    from numba import cuda
except ImportError as e:  # re-raised by fastnorm._backend.cuda_backend as a clear RuntimeError
    raise ImportError(f"numba with CUDA support is not installed ({e})") from e


if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
    from numba.cuda.cudadrv.devicearray import DeviceNDArray as _DeviceNDArray
    from numba.cuda.cudadrv.driver import MemoryPointer as _MemoryPointer
else:
    _DeviceNDArray = _MemoryPointer = None
_NEW = object.__new__
_WRITEABLE_KINDS = frozenset(("torch", "cupy", "numba"))  # arrays whose library has no read-only flag
# the fields Numba's constructor sets on a device array (numba-cuda 0.2x-0.3x); a version that sets others
# builds every array with its constructor
_ARRAY_FIELDS = frozenset(("ndim", "_dummy", "shape", "strides", "dtype", "size", "alloc_size", "gpu_data", "stream"))


class DevicePool:
    """Reuses device buffers, so that steady-state calls (a training step's outputs and the column
    reductions' scratch) allocate nothing: ``cuMemAlloc`` costs host time and Numba's batched
    ``cuMemFree`` synchronizes the device, both of which would stall the launch queue.

    Like PyTorch's caching allocator, a freed buffer is reused only for work queued later on the same
    stream (the stream current when it was allocated), so stream order makes the reuse safe. A buffer
    used on another stream by the caller must be kept alive until that work is done (as with torch's
    ``record_stream``). Blocks are reused by exact size; at most ``limit`` bytes are kept free.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.cached = 0
        self._free: dict = {}
        self._lock = threading.Lock()

    def alloc(self, nbytes: int, stream_key: int):
        key = (nbytes, stream_key)
        blk = None
        with self._lock:
            lst = self._free.get(key)
            if lst:
                blk = lst.pop()
                self.cached -= nbytes
        ctx = cuda.current_context()
        if blk is None:
            try:
                blk = ctx.memalloc(nbytes)
            except Exception:  # out of memory: give the cached blocks back and retry once
                self.release()
                blk = ctx.memalloc(nbytes)
        return _MemoryPointer(ctx, blk.device_pointer, nbytes, finalizer=partial(self._give_back, blk, key))

    def _give_back(self, blk, key: tuple) -> None:
        """The finalizer of a block's pointer: the block back to the free list (dropped, so that Numba
        frees it, when the pool is full)."""
        nbytes = key[0]
        with self._lock:
            if self.cached + nbytes <= self.limit:
                self._free.setdefault(key, []).append(blk)
                self.cached += nbytes

    def release(self) -> None:
        """Drop every cached block (Numba frees them)."""
        with self._lock:
            self._free.clear()
            self.cached = 0


class CudaBackend(
    BackendBase,
    name="cuda",
    array_type="CUDA array",
    device="the GPU (CUDA)",
    on_host=False,
    kernels="fastnorm._kernels.cuda",
):
    """``fastnorm._backend.Backend`` on CUDA arrays (see the module docstring)."""

    # Column reductions (dweight/dbias) use at most this many partial rows ...
    max_partials = 1024
    # ... and at least this many elements of work per partial row.
    work_per_partial = 4096

    def __init__(self):
        from .._kernels.cuda import _arrays, _common

        self._c = _common
        self._a = _arrays
        self._tls = threading.local()
        self._empty_torch: dict = {}
        # (shape, dtype) -> (size, nbytes, a Numba array's fields; for size 0 the cached empty array): _pool_empty
        self._layouts: dict = {}
        self.pool = None
        if not _common.SIM:
            self.max_partials = max(64, 8 * _common.sm_count())
            if os.environ.get("FASTNORM_CUDA_POOL", "1") != "0":
                self.pool = DevicePool(limit=int(float(os.environ.get("FASTNORM_CUDA_POOL_MB", "2048")) * 2**20))
        else:
            self.max_partials = 8
            self.work_per_partial = 1
        self.row_calls = None
        if not _common.SIM:
            self.span = _arrays.span_of  # (the method below is the simulator's; this one skips a call)
            from .._kernels.cuda import _row_calls

            self.row_calls = _row_calls

    _STAT = {
        _dtypes.FLOAT16: _dtypes.FLOAT32,
        _dtypes.BFLOAT16: _dtypes.FLOAT32,
        _dtypes.FLOAT32: _dtypes.FLOAT32,
        _dtypes.FLOAT64: _dtypes.FLOAT64,
    }

    @classmethod
    def stat_dtype(cls, dtype):
        d = cls._STAT.get(dtype)
        if d is None:
            d = _dtypes.stat_dtype(dtype)
        return d

    # ------------------------------------------------------------------ arrays
    def _iface(self, a) -> dict:
        if self._c.SIM and isinstance(a, self._c._DevArray):
            return a._ary.__array_interface__
        if self._c.is_torch(a):
            a = a.detach()
        return a.__cuda_array_interface__

    def asarray(self, a):
        """``a`` as a C-contiguous array: a zero-copy ``DevArray`` when contiguous, else a device-side copy.
        Outputs of this call are then allocated by ``a``'s library (see the module docstring)."""
        if self._c.SIM:
            d = self._c.dev(a)
            if not isinstance(d, self._c.SimArray):
                d = self._c.SimArray(d._ary, stream=d.stream)
            if self.is_contiguous(d):
                return d
            return self._contiguous_copy(d)
        d = self._a.adapt(a)
        self._tls.like = d
        if d.strides is None:
            return d
        return self._a.adapt(self._contiguous_copy(d))

    def empty(self, shape, dtype):
        if self._c.SIM:
            return self._c.SimArray(np.empty(tuple(map(int, shape)), np.dtype(dtype)))
        like = getattr(self._tls, "like", None)
        kind = None if like is None else like.kind
        if kind == "torch":
            torch = sys.modules["torch"]
            dev = like.owner.device
            tdt = self._a._TORCH_OF_NP.get(dtype)
            if tdt is None:
                tdt = self._a.torch_dtype_of_np(np.dtype(dtype))
            if 0 in shape:  # absent arguments and empty outputs: one cached empty tensor per kind
                key = (tuple(shape), tdt, dev)
                t = self._empty_torch.get(key)
                if t is None:
                    t = self._empty_torch[key] = torch.empty(shape, dtype=tdt, device=dev)
                return t
            return torch.empty(shape, dtype=tdt, device=dev)
        if kind == "cupy":
            cupy = sys.modules["cupy"]
            if like.device == cupy.cuda.runtime.getDevice():
                return cupy.empty(shape, dtype)
            with cupy.cuda.Device(like.device):
                return cupy.empty(shape, dtype)
        return self._pool_empty(shape, dtype)

    def _pool_empty(self, shape, dtype):
        """A Numba device array from the pool (the allocator of Numba inputs)."""
        key = (shape if type(shape) is tuple else tuple(shape), dtype)
        layout = self._layouts.get(key)
        if layout is None:
            return self._pool_empty_first(key)
        size, nbytes, fields = layout
        if not size:
            return fields  # (a zero-size array: the cached one)
        if self.pool is None:
            return cuda.device_array(key[0], dtype=key[1])
        # a Numba array of a layout seen before: its fields copied, only the memory is new (Numba's
        # constructor re-derives the same layout at every call: about half of an allocation's host time)
        a = _NEW(_DeviceNDArray)
        a.__dict__.update(fields)
        a.gpu_data = self.pool.alloc(nbytes, self._c.current_stream_ptr())
        return a

    def _pool_empty_first(self, key):
        """``_pool_empty`` for a layout not seen yet: Numba's constructor, and the layout remembered."""
        shape, dtype = tuple(map(int, key[0])), np.dtype(key[1])
        size = 1
        for n in shape:
            size *= n
        if len(self._layouts) >= 1024:
            self._layouts.clear()
        if size == 0:
            a = self._layouts[key] = (0, 0, self._c.empty_device(shape, dtype))
            return a[2]
        if self.pool is None:
            return cuda.device_array(shape, dtype=dtype)
        strides, step = [], dtype.itemsize
        for n in reversed(shape):
            strides.append(step)
            step *= n
        nbytes = size * dtype.itemsize
        mem = self.pool.alloc(nbytes, self._c.current_stream_ptr())
        a = _DeviceNDArray(shape, tuple(reversed(strides)), dtype, gpu_data=mem)
        fields = {k: v for k, v in vars(a).items() if k != "gpu_data"}
        if set(vars(a)) <= _ARRAY_FIELDS and a.stream == 0:  # (another Numba's arrays: always its constructor)
            self._layouts[key] = (size, nbytes, fields)
        return a

    def zeros(self, shape, dtype):
        a = self.empty(shape, dtype)
        k = self._a.array_kind(a)
        if k in ("torch", "cupy"):
            a.fill(0)  # the library's own fill, on its current stream
        elif a.size:
            if self._c.SIM:
                a._ary[...] = 0
            else:
                from .._kernels.cuda.fill import fill

                fill(a.reshape(a.size), 0.0)
        return a

    def astype(self, a, dtype):
        """``a`` converted to ``dtype`` on the device (``a`` itself when it has that dtype): float16, bfloat16,
        float32, float64; into float16 one rounding to nearest even, into bfloat16 through float32 (as
        ml_dtypes), NaN kept. Meant for small arrays (parameters of 16-bit ops entering the kernels)."""
        dtype = np.dtype(dtype)
        if type(a) is self._a.DevArray and a.strides is None and not self._c.SIM:  # (validated already)
            self._tls.like = src = a
        else:
            src = self.asarray(a)
        if src.dtype == dtype:
            return a
        out = self.empty(tuple(src.shape), dtype)
        self._convert(src, out, src.dtype, dtype)
        return out

    def copyto(self, dst, src) -> None:
        """``dst[...] = src`` on the device converting the dtype (as ``astype``); same shape, ``dst``
        C-contiguous (an output)."""
        shape = tuple(self.asarray(dst).shape)
        s = self.asarray(src)
        if tuple(s.shape) != shape:
            raise ValueError(f"copyto: shapes {tuple(s.shape)} and {shape} differ")
        self._convert(s, dst, s.dtype, np.dtype(self.asarray(dst).dtype))

    def _convert(self, src, dst, sdt, ddt) -> None:
        from .._kernels.cuda.fill import convert

        kd = self._c.kdev
        n = 1
        for v in src.shape:
            n *= int(v)
        if n:
            convert(kd(src).reshape(n), kd(dst).reshape(n), sdt, ddt)

    def launch_for(self, params: list) -> None:
        from .._kernels.cuda._optim_arrays import set_launch_stream

        set_launch_stream(params)

    def done(self) -> None:
        """End of a call: later allocations that follow no ``asarray`` come from the pool again."""
        self._tls.like = None

    @staticmethod
    def is_own_output(a):
        return _on_cuda(a)

    def is_contiguous(self, a):
        if not self._c.SIM:
            return self._a.is_c_contiguous(a)
        return self._sim_adapt(a).strides is None

    def _sim_adapt(self, a):
        """The simulator's array as the adapters' record (its NumPy buffer's interface dict)."""
        return self._a.from_interface(a, self._iface(a))

    def is_writeable(self, a):
        if not self._c.SIM:
            k = _KINDS.get(type(a)) or self._a.array_kind(a)
            return k in ("torch", "cupy", "numba") or not self._a.adapt(a).readonly
        return not self._iface(a)["data"][1]

    def out_layout(self, a):
        """``(shape, C-contiguous, writeable, span)`` of an ``out=`` buffer from one adapter read; None for an
        array that is not on CUDA."""
        if not _on_cuda(a):
            return None
        if self._c.SIM:
            return tuple(a.shape), self.is_contiguous(a), self.is_writeable(a), self.span(a)
        d = self._a.adapt(a)
        if d.strides is None:
            lo = d.ptr
            span = (lo, lo + d.size * d.dtype.itemsize)
        else:
            span = self._a.span(d)
        return d.shape, d.strides is None, d.kind in _WRITEABLE_KINDS or not d.readonly, span

    def span(self, a) -> tuple[int, int]:
        """[lo, hi) byte addresses of ``a`` (empty for a zero-size array): integers to compare for overlap."""
        if not self._c.SIM:
            return self._a.span_of(a)
        return self._a.span(self._sim_adapt(a))

    def may_share_memory(self, a, b):
        lo1, hi1 = self.span(a)
        lo2, hi2 = self.span(b)
        return lo1 < hi2 and lo2 < hi1 and lo1 < hi1 and lo2 < hi2

    def array_info(self, a):
        """``(shape, dtype, address)`` (bfloat16 as ``ml_dtypes.bfloat16``: a torch bfloat16 tensor, or an
        array whose ``dtype`` is ml_dtypes' while its interface says only ``V2``)."""
        if self._c.SIM:
            d = self._sim_adapt(a)
            dtype = a._ary.dtype if isinstance(a, self._c._DevArray) else d.dtype
        else:
            d = self._a.adapt(a)
            dtype = d.dtype
            if (
                dtype.kind == "V"
                and dtype.itemsize == 2
                and str(getattr(a, "dtype", "")) in ("torch.bfloat16", "bfloat16")
            ):
                dtype = _dtypes.BFLOAT16
        return d.shape, dtype, d.ptr

    def is_aligned(self, a):
        shape, dtype, ptr = self.array_info(a)
        return ptr % dtype.itemsize == 0

    def to_device(self, a: np.ndarray):
        """A new C-contiguous device array (from the pool: see ``done``) holding a copy of ``a``."""
        a = np.array(a, order="C", copy=None)  # (np.ascontiguousarray would make a 0-d array 1-d)
        d = self.empty(a.shape, a.dtype)
        if a.size:
            self._c.kdev(d).copy_to_device(a.view(np.uint16) if a.dtype == _dtypes.BFLOAT16 else a)
        return d

    def to_host(self, a) -> np.ndarray:
        """A host NumPy copy of the CUDA array ``a`` (bfloat16 as ``ml_dtypes.bfloat16``)."""
        shape, dtype, _ = self.array_info(a)
        d = self.asarray(a)
        host = self._c.kdev(d).copy_to_host() if math.prod(shape) else np.empty(shape, dtype)
        return host.view(dtype) if host.dtype != dtype and host.dtype.itemsize == dtype.itemsize else host

    def matmul(self, a, b, out) -> None:
        """out = a @ b on the GPU (cosine_linear's products): cuBLAS through torch or CuPy when available."""
        from .._kernels.cuda.matmul import matmul

        matmul(a, b, out, self.asarray)

    def threads(self, work):
        """Partial rows for the column reductions of an op touching ``work`` elements (>= 1)."""
        return max(1, min(self.max_partials, -(-int(work) // self.work_per_partial)))

    # ------------------------------------------------------------------ copies
    def _contiguous_copy(self, d):
        if self._c.SIM:
            return self._c.SimArray(np.ascontiguousarray(d._ary))
        from .._kernels.cuda.fill import gather

        out = self.empty(d.shape, d.dtype)
        gather(d, self._iface(d), self._a.adapt(out).bits().numba())  # (a copy moves bits: any dtype)
        return out


def make_backend() -> CudaBackend:
    """The CUDA backend, or a RuntimeError saying why there is none."""
    try:
        ok = cuda.is_available()
    except Exception as e:  # a broken driver install
        raise RuntimeError(f"fastnorm: a GPU array was passed but CUDA is not usable: {e}") from None
    if not ok:
        raise RuntimeError(
            "fastnorm: a GPU array was passed but no usable CUDA GPU/driver was found by numba-cuda "
            "(numba.cuda.is_available() is False; NUMBA_ENABLE_CUDASIM=1 runs the CPU simulator)"
        )
    return CudaBackend()
