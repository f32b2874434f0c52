"""Which backend an array belongs to, and the per-backend primitives the public layer needs.

A ``numpy.ndarray`` (or anything ``numpy.asarray`` takes) runs on the CPU kernels; an object with
``__cuda_array_interface__`` (Numba device arrays, CuPy arrays, PyTorch CUDA tensors) runs on the
CUDA kernels. The CUDA backend, and with it numba-cuda, is imported on the first GPU call only.

Each backend offers the same small interface, so the public ops are written once:

- ``name``: ``"cpu"`` or ``"cuda"``
- ``float_dtypes``: the dtypes its kernels accept
- ``stat_dtype(dtype)``: dtype of statistics / accumulators for inputs of ``dtype``
- ``asarray(a)``: the C-contiguous array a kernel may read (a copy only if ``a`` is not contiguous)
- ``empty(shape, dtype)``: a new output on the backend
- ``is_own_output(a)``: whether ``a`` is an array this backend may write into as given
- ``threads(work)``: the thread count for a kernel touching ``work`` elements
- ``kernels``: the kernel namespace (``fastnorm._kernels.cpu`` or ``fastnorm._kernels.cuda``)
"""

from __future__ import annotations

import importlib
import threading

import numpy as np

from . import _backend

# Below this many elements a kernel runs on one thread: the OpenMP fork/join costs more than it saves.
SERIAL_BELOW = 32768

_lock = threading.Lock()
_num_threads: int | None = None


def _runtime():
    return importlib.import_module("fastnorm._kernels.cpu._runtime")


def openmp_enabled() -> bool:
    """True if the CPU kernels were compiled with OpenMP (False means they always run on one thread)."""
    return _runtime().openmp_enabled()


def get_num_threads() -> int:
    """Threads the CPU kernels use: ``set_num_threads``'s value, else OpenMP's default (``OMP_NUM_THREADS``)."""
    if _num_threads is not None:
        return _num_threads
    return _runtime().max_threads()


def set_num_threads(n: int) -> None:
    """Set the number of threads the CPU kernels use (an int >= 1)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: n must be an int >= 1, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    with _lock:
        _num_threads = int(n)


class CpuBackend:
    name = "cpu"
    float_dtypes = (np.dtype(np.float32), np.dtype(np.float64))

    @property
    def kernels(self):
        return importlib.import_module("fastnorm._kernels.cpu")

    @staticmethod
    def stat_dtype(dtype):
        return np.dtype(dtype)

    @staticmethod
    def asarray(a):
        # ascontiguousarray copies only when needed; read-only arrays are fine (kernels take const views).
        # It returns shape (1,) for a 0-d array: keep the shape (weight_norm's g and norm for dim=None).
        return np.ascontiguousarray(a).reshape(np.shape(a))

    @staticmethod
    def empty(shape, dtype):
        return np.empty(shape, dtype=dtype)

    @staticmethod
    def zeros(shape, dtype):
        return np.zeros(shape, dtype=dtype)

    @staticmethod
    def is_own_output(a):
        return isinstance(a, np.ndarray)

    @staticmethod
    def is_contiguous(a):
        return a.flags.c_contiguous

    @staticmethod
    def is_writeable(a):
        return a.flags.writeable

    @staticmethod
    def may_share_memory(a, b):
        return np.may_share_memory(a, b)

    @staticmethod
    def threads(work):
        return 1 if work < SERIAL_BELOW else get_num_threads()


CPU = CpuBackend()
_cuda_backend = None


def cuda_backend():
    """The CUDA backend, imported on first use; a clear RuntimeError when it cannot run."""
    global _cuda_backend
    if _cuda_backend is None:
        try:
            mod = importlib.import_module("fastnorm._kernels.cuda._backend")
        except ImportError as e:  # numba / numba-cuda missing
            raise RuntimeError(
                "fastnorm: a GPU array was passed but the CUDA backend needs numba-cuda "
                f"(pip install 'fastnorm[cuda]'): {e}"
            ) from None
        _cuda_backend = mod.make_backend()
    return _cuda_backend


def on_cuda(a) -> bool:
    return _backend.on_cuda(a)  # from the array's type: no __cuda_array_interface__ dict


def backend_of(op: str, **arrays):
    """The backend shared by every non-None array in ``arrays`` (name -> array).

    Mixing host and device arrays is a ``TypeError`` naming which argument lives where.
    Lists/tuples of arrays (optimizer params) are looked into.
    """
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
    if not where:
        return CPU
    kinds = set(where.values())
    if len(kinds) > 1:
        gpu = [n for n, c in where.items() if c]
        cpu = [n for n, c in where.items() if not c]
        raise TypeError(
            f"{op}: arguments live on different devices: {', '.join(gpu)} on the GPU (CUDA), "
            f"{', '.join(cpu)} on the CPU; move them to one device"
        )
    return cuda_backend() if kinds.pop() else CPU
