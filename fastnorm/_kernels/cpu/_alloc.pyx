"""The CPU backend's output allocator: large NumPy arrays from a bounded cache of freed blocks.

A fresh large output costs the kernel's time again in page faults: glibc maps it anew on every call and the
operating system zeroes each page on first touch. ``empty`` and ``zeros`` allocate arrays of at least
``MIN_BYTES`` under a NumPy data-memory handler (``HANDLER_NAME``, C in fastnorm_pool.h) that keeps the
blocks those arrays free, up to ``limit()`` bytes, least recently freed evicted first, and reuses them for
later requests of the same size class. An array remembers its handler, so it is freed into the pool
whenever and on whatever thread it dies; the handler is active only inside these two functions, so other
NumPy arrays never use it. Smaller arrays, and all arrays while the limit is 0, come from NumPy's default
handler.

The limit is read once, at import: ``FASTNORM_CPU_POOL=0`` turns the pool off, ``FASTNORM_CPU_POOL_MB``
sets it in MiB (default: 1024, at most an eighth of the physical memory).
"""

import math
import os

import numpy as np

cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_New

cnp.import_array()


cdef extern from "fastnorm_pool.h" nogil:
    ctypedef struct fn_pool_stats:
        size_t limit, cached_bytes, cached_blocks, live_bytes, live_blocks
        unsigned long long hits, misses, evictions
    size_t FN_POOL_MIN_BYTES
    cnp.PyDataMem_Handler fn_pool_handler
    void fn_pool_set_hugepages(int on)
    int fn_pool_init()
    size_t fn_pool_trim(size_t target)
    void fn_pool_set_limit(size_t limit)
    void fn_pool_get_stats(fn_pool_stats *out)


HANDLER_NAME = "fastnorm_cpu_pool"
MIN_BYTES = FN_POOL_MIN_BYTES
ENV_OFF = "FASTNORM_CPU_POOL"
ENV_MB = "FASTNORM_CPU_POOL_MB"

cdef object _HANDLER = PyCapsule_New(<void *>&fn_pool_handler, "mem_handler", NULL)
cdef size_t _limit = 0  # a copy of fn_pool.limit, read without the lock by empty()/zeros()

if fn_pool_init() != 0:
    raise ImportError("fastnorm: the CPU pool could not register its fork handlers")


def default_limit():
    """The limit without environment variables: 1 GiB, at most an eighth of the physical memory."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        ram = 0
    return min(1 << 30, ram // 8) if ram > 0 else 1 << 30


def limit_from_env(environ):
    """The limit the environment mapping ``environ`` asks for (see the module docstring)."""
    if environ.get(ENV_OFF, "1") == "0":
        return 0
    text = environ.get(ENV_MB, "")
    if not text:
        return default_limit()
    try:
        mb = float(text)
    except ValueError:
        mb = math.nan
    if not (0 <= mb < 2.0**43):
        raise ValueError(f"{ENV_MB}={text!r}: expected a number of MiB >= 0 (0 turns the CPU pool off)")
    return int(mb * 2**20)


def limit():
    """The most bytes the pool keeps cached (0: off)."""
    return _limit


def set_limit(nbytes):
    """Set the limit to ``nbytes`` (0 turns the pool off) and evict down to it; returns the old limit."""
    global _limit
    cdef size_t n
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError(f"set_limit: nbytes must be an int >= 0, got {type(nbytes).__name__} {nbytes!r}")
    if nbytes < 0:
        raise ValueError(f"set_limit: nbytes must be an int >= 0, got {nbytes!r}")
    old, n = _limit, min(nbytes, 1 << 62)
    fn_pool_set_limit(n)
    _limit = n
    return old


def release():
    """Give every cached block back to the system; returns the bytes given back."""
    return fn_pool_trim(0)


def stats():
    """The pool's counters: ``limit``, ``cached_bytes``/``cached_blocks`` (free blocks kept),
    ``live_bytes``/``live_blocks`` (blocks held by arrays), ``hits``/``misses`` (requests of at least
    ``MIN_BYTES`` served from the cache / from the system) and ``evictions`` (cached blocks given back to the
    system, by the limit or ``release``). Bytes are capacities."""
    cdef fn_pool_stats s
    fn_pool_get_stats(&s)
    return {
        "limit": s.limit,
        "cached_bytes": s.cached_bytes,
        "cached_blocks": s.cached_blocks,
        "live_bytes": s.live_bytes,
        "live_blocks": s.live_blocks,
        "hits": s.hits,
        "misses": s.misses,
        "evictions": s.evictions,
    }


cdef Py_ssize_t _nbytes(shape, cnp.dtype dtype):
    """The bytes of an array of ``shape``; -1 when ``shape`` is not a plain int or tuple of ints >= 0 or the
    product overflows (np.empty then raises its own error or allocates without the pool)."""
    cdef Py_ssize_t n = dtype.itemsize, d
    try:
        if isinstance(shape, (tuple, list)):
            for s in shape:
                d = s
                if d < 0 or (d and n > (<Py_ssize_t>(<size_t>-1 >> 1)) // d):
                    return -1
                n *= d
            return n
        d = shape
    except (TypeError, OverflowError):
        return -1
    return -1 if d < 0 or (d and n > (<Py_ssize_t>(<size_t>-1 >> 1)) // d) else n * d


cdef object _pooled(fn, shape, dtype):
    cdef cnp.dtype dt = dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)
    if _limit == 0 or _nbytes(shape, dt) < <Py_ssize_t>FN_POOL_MIN_BYTES:
        return fn(shape, dt)
    old = cnp.PyDataMem_SetHandler(_HANDLER)
    try:
        return fn(shape, dt)
    finally:
        cnp.PyDataMem_SetHandler(old)


def empty(shape, dtype):
    """``np.empty(shape, dtype)`` (C order), from the pool when it has at least ``MIN_BYTES``."""
    return _pooled(np.empty, shape, dtype)


def zeros(shape, dtype):
    """``np.zeros(shape, dtype)`` (C order), from the pool when it has at least ``MIN_BYTES``."""
    return _pooled(np.zeros, shape, dtype)


cdef _follow_numpy_hugepages():
    """Advise huge pages for fresh blocks as NumPy's default handler does (``_set_madvise_hugepage``)."""
    core = getattr(np, "_core", None) or np.core
    get = getattr(core.multiarray, "_get_madvise_hugepage", None)
    if get is not None:
        fn_pool_set_hugepages(1 if get() else 0)


_follow_numpy_hugepages()
set_limit(limit_from_env(os.environ))
