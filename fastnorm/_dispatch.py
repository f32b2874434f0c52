"""Which backend an array belongs to, and the per-backend primitives the public layer needs.

A ``numpy.ndarray`` (or anything ``numpy.asarray`` takes) runs on the CPU kernels; an object with
``__cuda_array_interface__`` (Numba device arrays, CuPy arrays, PyTorch CUDA tensors) runs on the
CUDA kernels. The CUDA backend, and with it numba-cuda, is imported on the first GPU call only.

Each backend offers the same small interface, so the public ops are written once:

- ``name``: ``"cpu"`` or ``"cuda"``
- ``float_dtypes``: the dtypes its kernels accept
- ``stat_dtype(dtype)``: dtype of statistics / accumulators for inputs of ``dtype``
- ``asarray(a)``: the C-contiguous, aligned, native array a kernel may read (a copy only if needed)
- ``empty(shape, dtype)``: a new output on the backend
- ``is_own_output(a)``: whether ``a`` is an array this backend may write into as given
- ``threads(work)``: the thread count for a kernel touching ``work`` elements
- ``kernels``: the kernel namespace (``fastnorm._kernels.cpu`` or ``fastnorm._kernels.cuda``)
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings

import numpy as np

from . import _backend, _dtypes

# Below this many elements a kernel runs on one thread: the OpenMP fork/join costs more than it saves.
SERIAL_BELOW = 32768

_lock = threading.Lock()
_num_threads: int | None = None
# True in a process created by os.fork() from one that had imported fastnorm (see _after_fork_in_child).
_forked_child = False


def _after_fork_in_child() -> None:
    """Fork handler: a forked child runs the CPU kernels on one thread until told otherwise.

    GNU OpenMP (libgomp) is not fork-safe: once the parent has run a multi-threaded parallel region, the
    child inherits a thread pool whose threads do not exist, and its first multi-threaded region waits
    for them forever. A one-thread region never touches the pool, so the child is safe at 1 thread (what
    PyTorch's DataLoader workers do with ``torch.set_num_threads(1)``).
    """
    global _lock, _num_threads, _forked_child
    _lock = threading.Lock()  # the parent's lock may have been held by another thread at fork time
    _num_threads = 1
    _forked_child = True


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _runtime():
    return importlib.import_module("fastnorm._kernels.cpu._runtime")


def openmp_enabled() -> bool:
    """True if the CPU kernels were compiled with OpenMP (False means they always run on one thread)."""
    return _runtime().openmp_enabled()


def get_num_threads() -> int:
    """Threads the CPU kernels use (kernels on fewer than ``SERIAL_BELOW`` elements use one).

    Returns
    -------
    int
        ``set_num_threads``'s value if it was called in this process, else OpenMP's default
        (``OMP_NUM_THREADS``, or the number of cores). In a process forked (``os.fork``, a ``fork``
        ``multiprocessing`` context, PyTorch ``DataLoader`` workers on Linux) from one that imported
        fastnorm it is 1 until ``set_num_threads`` is called in the child: GNU OpenMP is not fork-safe.
    """
    if _num_threads is not None:
        return _num_threads
    return _runtime().max_threads()


def set_num_threads(n: int) -> None:
    """Set the number of threads the CPU kernels (norms and optimizers) use.

    Parameters
    ----------
    n : int
        Thread count, >= 1. It applies to this process only; a forked child starts at 1.

    Notes
    -----
    Fork safety: fastnorm registers an ``os.register_at_fork`` handler, so a forked child runs every
    kernel on one thread (PyTorch does the same in its DataLoader workers). Calling ``set_num_threads(n)``
    with n > 1 in a forked child is honoured, as ``torch.set_num_threads`` is, but at the caller's risk:
    if the parent ran a multi-threaded OpenMP region, GNU OpenMP's inherited thread pool makes the child's
    first multi-threaded kernel hang. A ``RuntimeWarning`` says so. Use the ``spawn`` or ``forkserver``
    start method for multi-threaded workers.
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: n must be an int >= 1, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    if _forked_child and n > 1 and openmp_enabled():
        warnings.warn(
            f"fastnorm.set_num_threads({int(n)}) in a forked child process: GNU OpenMP is not fork-safe, and "
            "if the parent ran a multi-threaded kernel the child's first multi-threaded kernel hangs; "
            "use the 'spawn' or 'forkserver' start method for multi-threaded workers",
            RuntimeWarning,
            stacklevel=2,
        )
    with _lock:
        _num_threads = int(n)


class CpuBackend:
    name = "cpu"
    float_dtypes = _dtypes.FULL + _dtypes.HALF

    @property
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
