"""The CPU kernels' thread settings (thread count, fork safety), and the old home of the backends.

The backends and ``backend_of`` live in ``fastnorm._backend`` (``Backend`` protocol, ``CpuBackend``,
``CudaBackend``). This module imports none of them, so there is no import cycle: ``fastnorm._backend.cpu``
reads ``SERIAL_BELOW`` and ``get_num_threads`` from here. The names it used to define (``CPU``,
``CpuBackend``, ``backend_of``, ``cuda_backend``, ``on_cuda``, ``_cuda_backend``) still resolve, to
``fastnorm._backend``'s objects, on first access.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings

import numpy as np

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


_MOVED = ("CPU", "CpuBackend", "backend_of", "cuda_backend", "on_cuda", "_cuda_backend", "Backend")


def __getattr__(name: str):
    if name in _MOVED:  # the backends' names, kept for callers of the old path (read at each access)
        from . import _backend

        return getattr(_backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
