"""A recording CUDA driver under the real (non-simulator) host path: what one call does, without a GPU.

``install()`` runs fastnorm's real CUDA host path (validation, the CUDA backend, the adapters, launch
plans, numba-cuda's own launch path for the ops that still use it, cuda.core's ``LaunchConfig`` and its
argument packing ``ParamHolder``) on a machine without a GPU. What is stubbed is the driver, and every
call into it is counted:

- the CUDA context: ``memalloc`` counts an allocation (``cuMemAlloc``), its finalizer a free;
- numba-cuda's ``driver`` object: every driver call is recorded by name; copies, memsets, frees and
  synchronizations pass as no-ops (so that they can be counted), host allocations return host memory;
  anything else raises (an unexpected driver call in the measured path is an error);
- the launch (``cuda.core.launch``, fastnorm's and numba-cuda's): counted with its stream handle and
  kernel, after the arguments were packed for real;
- the CUDA driver bindings fastnorm calls itself (events, async copies): recorded;
- module loading and PTX generation: stubbed (kernels are typed and lowered for real, not compiled to
  PTX: that is ``tools/cuda_ptx_check.py``'s job, which needs NVVM);
- the caller's stream getters: torch's returns ``TORCH_STREAM``, CuPy's ``CUPY_STREAM``.

``FakeCudaTensor`` is a real ``torch.Tensor`` (CPU memory) that says it is a CUDA tensor and counts how
often its ``__cuda_array_interface__`` and ``detach()`` are used; outputs allocated for it come from
``torch.empty`` (torch's allocator, invisible to the driver, as on a GPU).

The scenarios measured with it and the command line are ``_host_scenarios.py``'s. This module is a test
and benchmark tool: it patches numba-cuda process-wide, so use it in a process of
its own (``python -m fastnorm._kernels.cuda._recording`` or ``python -m fastnorm.bench --host-overhead``).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import sys

COUNTS: collections.Counter = collections.Counter()
LAUNCHES: list = []  # (kernel name, stream handle) of each launch since the last reset()
ARGS: list = []  # the flat argument tuple of each launch since the last reset()
TORCH_STREAM = 0x7A7A00
CUPY_STREAM = 0xC0C000
CATEGORIES = ("alloc", "free", "copy", "memset", "sync", "launch")


def category(name: str) -> str | None:
    """The category of a CUDA driver function name (None: counted by name only)."""
    if name.startswith(("cuMemAlloc", "cuMemHostAlloc", "cuMemAllocHost", "cuMemAllocManaged")):
        return "alloc"
    if name.startswith(("cuMemFree", "cuMemHostFree")):
        return "free"
    if name.startswith("cuMemcpy"):
        return "copy"
    if name.startswith(("cuMemset", "cuMemsetD")):
        return "memset"
    if name in ("cuCtxSynchronize", "cuStreamSynchronize", "cuEventSynchronize", "cuStreamQuery"):
        return "sync"
    return None


def record(name: str) -> None:
    COUNTS["driver " + name] += 1
    cat = category(name)
    if cat is not None:
        COUNTS[cat] += 1


def reset() -> None:
    COUNTS.clear()
    LAUNCHES.clear()
    ARGS.clear()


_installed = False


def install() -> None:
    """Stub and record the CUDA driver under numba-cuda, cuda.core and fastnorm (idempotent)."""
    global _installed
    if _installed:
        return
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        raise RuntimeError("the recording driver runs the real host path: unset NUMBA_ENABLE_CUDASIM")
    from cuda.bindings import driver as binding
    from cuda.core._kernel_arg_handler import ParamHolder
    from numba import cuda
    from numba.cuda import codegen as CG
    from numba.cuda import dispatcher as D
    from numba.cuda.cudadrv import devicearray as DA
    from numba.cuda.cudadrv import devices
    from numba.cuda.cudadrv import driver as drv

    class FakeDevice:
        id = 0
        compute_capability = (9, 0)
        MULTIPROCESSOR_COUNT = 132
        MAX_THREADS_PER_BLOCK = 1024
        name = b"recording driver (no GPU)"

    class FakeContext:
        device = FakeDevice()
        handle = 0

        def __init__(self):
            self._next = 1 << 40

        def memalloc(self, size):
            record("cuMemAlloc")
            ptr = self._next
            self._next += (size + 4095) & ~4095

            def free():
                record("cuMemFree")

            return drv.MemoryPointer(self, binding.CUdeviceptr(ptr), size, finalizer=free)

        def memhostalloc(self, size, mapped=False, portable=False, wc=False):
            record("cuMemHostAlloc")
            buf = (ctypes.c_byte * max(1, size))()
            return drv.PinnedMemory(self, ctypes.addressof(buf), size, owner=buf)

        def get_active_blocks_per_multiprocessor(self, cufunc, block, smem, flags=None):
            return max(1, min(2048 // block, 65536 // (64 * block)))

        def synchronize(self):
            record("cuCtxSynchronize")

        def create_external_stream(self, ptr):
            return drv.Stream(binding.CUstream(ptr), external=True)

        def deallocations(self):
            return contextlib.nullcontext()

    ctx = FakeContext()
    devices._runtime.get_or_create_context = lambda devnum=None: ctx
    devices._runtime.ensure_context = lambda: contextlib.nullcontext()
    cuda.is_available = lambda: True

    class RecordingDriver:
        PASS = (
            "cuMemcpy",
            "cuMemset",
            "cuMemFree",
            "cuCtxSynchronize",
            "cuStreamSynchronize",
            "cuEventSynchronize",
            "cuMemHostFree",
        )

        def __getattr__(self, name):
            def call(*a, **k):
                record(name)
                if name.startswith(self.PASS):
                    return None
                if name == "get_device":
                    return FakeDevice()
                raise RuntimeError(f"unexpected CUDA driver call {name} in the recorded path")

            return call

    drv.driver = RecordingDriver()
    D.get_current_device = lambda: FakeDevice()
    D._Kernel.bind = lambda self: None

    class FakeKernel:
        def __init__(self, name):
            self.name = name

    class FakeCufunc:
        attrs = None

        def __init__(self, name):
            self.kernel = FakeKernel(name)
            self.name = name

    def get_cufunc(self):
        f = getattr(self, "_recording_cufunc", None)
        if f is None:
            f = self._recording_cufunc = FakeCufunc(self.name)
        return f

    CG.CUDACodeLibrary.get_cufunc = get_cufunc
    if os.environ.get("FASTNORM_RECORD_NVVM", "0") == "0":
        CG.CUDACodeLibrary.get_asm_str = lambda self, cc=None: ""

    class StreamHolder:
        def __init__(self, handle):
            self.handle = int(handle)

        def __cuda_stream__(self):
            return (0, self.handle)

    def fake_launch(stream, config, kernel, *args):
        ParamHolder(args)  # the argument packing cuda.core.launch does
        COUNTS["launch"] += 1
        h = stream.handle if isinstance(stream, StreamHolder) else int(getattr(stream, "handle", 0) or 0)
        LAUNCHES.append((getattr(kernel, "name", "?"), h))
        ARGS.append(args)

    def to_core_stream(stream):
        if not stream:
            return StreamHolder(0)
        if isinstance(stream, StreamHolder):
            return stream
        h = getattr(stream, "handle", stream)
        return StreamHolder(int(getattr(h, "value", h) or 0))

    D.launch = fake_launch

    class RecordingBindings:
        """The cuda.bindings driver calls fastnorm makes itself (events, async copies)."""

        CUevent_flags = binding.CUevent_flags

        def __getattr__(self, name):
            if name.startswith("CU"):  # handle types and enums: the real ones
                return getattr(binding, name)

            def call(*a, **k):
                record(name)
                if name == "cuEventCreate":
                    return (0, object())
                if name == "cuEventQuery":
                    return (0,)
                return (0,)

            return call

    # counts of interface dicts and Numba array objects
    cai = DA.DeviceNDArrayBase.__cuda_array_interface__.fget

    def counted_cai(self):
        COUNTS["interface dict (numba array)"] += 1
        return cai(self)

    DA.DeviceNDArrayBase.__cuda_array_interface__ = property(counted_cai)
    init = DA.DeviceNDArrayBase.__init__

    def counted_init(self, *a, **k):
        COUNTS["numba array created"] += 1
        init(self, *a, **k)

    DA.DeviceNDArrayBase.__init__ = counted_init

    from . import _common

    _common._launch_stream = to_core_stream
    _common._sm_count = 132
    try:
        from . import _launch
    except ImportError:  # an older fastnorm without launch plans (to measure it the same way)
        _launch = None
    if _launch is not None:
        _launch.launch = fake_launch
        _launch.stream_from_handle = StreamHolder
        _launch.torch_stream = lambda device: TORCH_STREAM
        _launch.cupy_stream = lambda device: CUPY_STREAM
        _launch.cu = RecordingBindings()
        _launch._streams.clear()
    _installed = True


def fake_cuda_tensor_type():
    """A ``torch.Tensor`` subclass whose instances say they are CUDA tensors (see the module docstring)."""
    import torch

    class FakeCudaTensor(torch.Tensor):
        __torch_function__ = torch._C._disabled_torch_function_impl

        is_cuda = True  # (a class attribute, read at the cost of torch's own C getter; not a Python property)

        @property
        def __cuda_array_interface__(self):
            COUNTS["interface dict (torch)"] += 1
            return {
                "shape": tuple(self.shape),
                "strides": None,
                "typestr": self.numpy().dtype.str,
                "data": (self.data_ptr(), False),
                "version": 2,
            }

        def detach(self):
            COUNTS["torch detach"] += 1
            return super().detach()

    return FakeCudaTensor


def fake_cuda_tensor(cls, shape, dtype="float32"):
    import torch

    t = torch.randn(*shape, dtype=getattr(torch, dtype))
    return torch.Tensor._make_subclass(cls, t)


def install_fake_cupy():
    """A stand-in ``cupy`` module in ``sys.modules`` (host memory behind the pointers): ``ndarray`` with the
    attributes the adapters read, ``empty``, and a current stream ``CUPY_STREAM``. Its arrays count their
    interface dicts. Installed only for the CuPy scenarios (it changes which stream Numba inputs use)."""
    import types

    import numpy as np

    mod = types.ModuleType("cupy")

    class ndarray:
        def __init__(self, shape, dtype, base=None):
            self._h = np.empty(shape, dtype) if base is None else base
            self.shape = tuple(self._h.shape)
            self.dtype = self._h.dtype
            self.strides = self._h.strides
            self.size = self._h.size
            self.ndim = self._h.ndim
            self.data = types.SimpleNamespace(ptr=self._h.ctypes.data)
            self.flags = types.SimpleNamespace(c_contiguous=self._h.flags.c_contiguous)
            self.device = types.SimpleNamespace(id=0)

        def reshape(self, *shape):
            return ndarray(None, None, self._h.reshape(*shape))

        @property
        def __cuda_array_interface__(self):
            COUNTS["interface dict (cupy)"] += 1
            return {
                "shape": self.shape,
                "strides": None,
                "typestr": self.dtype.str,
                "data": (self.data.ptr, False),
                "version": 3,
                "stream": CUPY_STREAM,
            }

    ndarray.__module__ = "cupy"
    mod.ndarray = ndarray
    mod.empty = lambda shape, dtype=np.float32: ndarray(shape, dtype)
    mod.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: 0),
        get_current_stream=lambda: types.SimpleNamespace(ptr=CUPY_STREAM),
    )
    sys.modules["cupy"] = mod
    return mod


# ------------------------------------------------------------------------------------------ command line
def run(*args, **kwargs) -> list[dict]:
    """``_host_scenarios.run``: the rows of every scenario (see there)."""
    from ._host_scenarios import run as _run

    return _run(*args, **kwargs)


def format_rows(rows: list[dict]) -> str:
    from ._host_scenarios import format_rows as _format

    return _format(rows)


def main(argv=None) -> int:
    from ._host_scenarios import main as _main

    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
