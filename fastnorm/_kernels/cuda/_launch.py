"""Launch plans: a compiled kernel, its launch configuration and a prebuilt flat argument list.

A plan is built once per (op, dtype, shape, flags, device) and cached. A call fills the pointer and
scalar slots of the argument template and hands it to ``cuda.core.launch`` on the caller's current stream:
no Numba array objects, no per-argument marshalling, no per-launch ``Stream`` objects (they are cached
per handle). Streams: torch inputs launch on torch's current stream, CuPy inputs on CuPy's, Numba inputs
on torch's (when torch has initialized CUDA), else CuPy's, else the default stream. An input whose
producer stream differs (another library's current stream, or a version-3 interface ``stream``) is
ordered before the launch with an event recorded on its stream and waited on by the launch stream: the
device waits, the host never does.

The module-level ``launch``, ``stream_from_handle``, ``torch_stream``, ``cupy_stream`` and ``cu`` (the
CUDA driver bindings) are the only ways out to the driver: the recording layer (``_recording.py``)
replaces them to count what a call does on a machine without a GPU.
"""

from __future__ import annotations

import ctypes
import sys

from cuda.bindings import driver as cu
from cuda.core import LaunchConfig, Stream
from cuda.core import launch as launch

from . import _common

_streams: dict = {}


def stream_from_handle(handle: int):
    return Stream.from_handle(handle)


def core_stream(handle: int):
    """The cuda.core ``Stream`` for a raw handle, made once per handle (it does not own the stream)."""
    s = _streams.get(handle)
    if s is None:
        if len(_streams) > 256:
            _streams.clear()
        s = _streams[handle] = stream_from_handle(handle)
    return s


def torch_stream(device: int) -> int:
    """torch's current stream on ``device``, as a raw handle."""
    torch = sys.modules["torch"]
    try:
        return torch._C._cuda_getCurrentRawStream(device)
    except (AttributeError, TypeError):
        return int(torch.cuda.current_stream(device).cuda_stream)


def cupy_stream(device: int) -> int:
    return int(sys.modules["cupy"].cuda.get_current_stream().ptr)


def caller_stream(kind: str, device: int) -> int:
    """The stream a call on inputs of library ``kind`` launches on."""
    if kind == "torch":
        return torch_stream(max(device, 0))
    if kind == "cupy":
        return cupy_stream(device)
    return _common.current_stream_ptr()


_events: dict = {}


def _same_stream(a: int, b: int) -> bool:
    # 0 and 1 (CU_STREAM_LEGACY) name the same legacy default stream
    return a == b or (a in (0, 1) and b in (0, 1))


def order_after(producer: int, consumer: int) -> None:
    """Make work queued next on ``consumer`` wait for the work queued so far on ``producer`` (device-side)."""
    if _same_stream(producer, consumer):
        return
    ev = _events.get(None)
    if ev is None:
        err, ev = cu.cuEventCreate(cu.CUevent_flags.CU_EVENT_DISABLE_TIMING)
        _check(err, "cuEventCreate")
        _events[None] = ev
    _check(cu.cuEventRecord(ev, cu.CUstream(producer))[0], "cuEventRecord")
    _check(cu.cuStreamWaitEvent(cu.CUstream(consumer), ev, 0)[0], "cuStreamWaitEvent")


def _check(err, what: str) -> None:
    if err is not None and int(err) != 0:
        raise RuntimeError(f"fastnorm: {what} failed: {err}")


def input_streams(arrays, kind: str, stream: int) -> None:
    """Order ``stream`` after the producer stream of every input that names another one."""
    cupy_done = False
    for d in arrays:
        if d is None:
            continue
        s = d.stream
        if s is not None:
            if not _same_stream(s, stream):
                order_after(s, stream)
        elif d.kind == "cupy" and kind != "cupy" and not cupy_done:
            cupy_done = True
            order_after(cupy_stream(d.device), stream)


# ------------------------------------------------------------------------------------------ arguments
I64 = ctypes.c_int64
F64 = ctypes.c_double


_F64S: dict = {}  # float -> its c_double argument (hyperparameters repeat from launch to launch; never mutated)


class ArgTemplate:
    """The flat parameter list of a Numba kernel (what ``numba.cuda`` builds per call, built once here).

    Each array parameter is ``meminfo, parent, nitems, itemsize, data, *shape, *strides`` (C-contiguous
    strides), each int64 ``c_int64``, each float64 ``c_double``. ``array(shape, itemsize)`` adds an array and
    returns the index of its data pointer; ``f64()`` / ``i64(value)`` add scalars (a slot index for
    ``f64``, filled per call).
    """

    def __init__(self):
        self.values: list = []

    def array(self, shape: tuple, itemsize: int) -> int:
        from ._arrays import c_strides

        n = 1
        for s in shape:
            n *= s
        slot = len(self.values) + 4
        self.values += [0, 0, n, itemsize, 0, *shape, *c_strides(shape, itemsize)]
        return slot

    def f64(self) -> int:
        self.values.append(F64(0.0))
        return len(self.values) - 1

    def i64(self, v: int) -> None:
        self.values.append(I64(int(v)))


class Plan:
    """One launch: the compiled kernel (cuda.core ``Kernel``), its ``LaunchConfig`` and argument template."""

    __slots__ = ("kernel", "config", "values", "slots", "scalars", "extra")

    def __init__(self, kernel, grid: int, block: int, tpl: ArgTemplate, slots: tuple, scalars: tuple = (), extra=None):
        self.kernel = kernel
        self.config = LaunchConfig(grid=(int(grid), 1, 1), block=(int(block), 1, 1), shmem_size=0)
        self.values = tpl.values
        self.slots = slots
        self.scalars = scalars
        self.extra = extra

    def launch(self, stream: int, ptrs, scalars=()) -> None:
        a = self.values.copy()  # the template with this call's addresses and scalars
        for i, p in zip(self.slots, ptrs, strict=True):
            a[i] = p
        for i, v in zip(self.scalars, scalars, strict=True):
            c = _F64S.get(v)
            if c is None:
                if len(_F64S) >= 4096:
                    _F64S.clear()
                c = _F64S[v] = F64(v)
            a[i] = c
        s = _streams.get(stream)
        launch(core_stream(stream) if s is None else s, self.config, self.kernel, *a)


def core_kernel(k) -> object:
    """The cuda.core ``Kernel`` of a compiled ``_common.Kernel`` (the module is loaded once per context)."""
    ck = getattr(k, "_core", None)
    if ck is None:
        ck = k._core = k._k._codelibrary.get_cufunc().kernel
    return ck
