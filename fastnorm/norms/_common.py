"""What the norm ops share (the family modules and ``fastnorm.batch_norm_stages``): empty-input results,
absent arguments, scratch, and the 16-bit parameter round trip (``to_stat`` -> kernel -> ``round_back``)."""

from __future__ import annotations

import math
import threading

import numpy as np

from .. import _validation as V
from .._backend import host


def fill(be, a, value: float) -> None:
    """``a[...] = value`` for an output buffer ``a`` of backend ``be`` (results of empty inputs)."""
    if a is None or math.prod(a.shape) == 0:
        return
    if be.on_host:
        a[...] = value
    else:
        put(be, a, np.full(tuple(a.shape), value, V.dtype_of(a)))


def put(be, a, values: np.ndarray) -> None:
    """``a[...] = values`` for an output buffer ``a`` of backend ``be`` and a NumPy array ``values``."""
    if math.prod(a.shape) == 0:
        return
    if be.on_host:
        a[...] = values
    else:
        size = math.prod(a.shape)  # copied as 1-D: device arrays differ in how they match shapes
        flat = np.ascontiguousarray(np.broadcast_to(values, tuple(a.shape)), V.dtype_of(a)).reshape(size)
        be.asarray(a).reshape(size).copy_to_device(flat)


def eval_stats(be, mean, rstd, running_mean, running_var, eps: float) -> None:
    """mean = running_mean, rstd = 1 / sqrt(running_var + eps), broadcast over mean's leading dims."""
    rm, rv = host(be, running_mean), host(be, running_var)
    with np.errstate(all="ignore"):
        r = 1.0 / np.sqrt(rv.astype(np.float64) + eps)
    put(be, mean, rm)
    put(be, rstd, r)


def empty_reduction(be, mean, rstd) -> None:
    """Statistics of reductions over no elements, as torch: mean 0, rstd NaN (mean may be absent)."""
    fill(be, mean, 0.0)
    fill(be, rstd, np.nan)


def opt(be, a, dtype, shape=None):
    """A kernel argument for an optional array: ``a`` (reshaped to ``shape``), or a length-0 array of
    ``dtype`` when it is absent (the kernels' "not given")."""
    if a is None:
        return be.empty((0,), dtype)
    return a if shape is None else a.reshape(shape)


_SCRATCH = threading.local()  # per Python thread: kernels release the GIL, so threads must not share scratch
_SCRATCH_KEEP = 8  # (slot, shape, dtype) entries kept per thread
# Larger scratch is not kept here (it would stay allocated for the thread's life): it comes from the backend's
# allocator, whose CPU output pool reuses blocks from 1 MiB up.
_SCRATCH_MAX_BYTES = 1 << 20


def _host_scratch(slot: int, shape: tuple, dtype) -> np.ndarray:
    """This thread's scratch array for ``slot`` of that shape and dtype, reused from call to call: the
    kernels overwrite scratch before reading it, and fresh arrays would cost page faults on every call (a
    LayerNorm backward at (4096, 1024) spent a third of its time there)."""
    cache = getattr(_SCRATCH, "arrays", None)
    if cache is None:
        cache = _SCRATCH.arrays = {}
    key = (slot, shape, np.dtype(dtype))
    a = cache.get(key)
    if a is None:
        if len(cache) >= _SCRATCH_KEEP:
            cache.clear()
        a = cache[key] = np.empty(shape, dtype)
    return a


def partials(be, want: bool, n_chunks: int, n: int, dtype, slot: int = 0) -> tuple:
    """Scratch for a deterministic column reduction (dweight/dbias): per-chunk float64 partial rows and
    per-chunk short-run accumulator rows in the input dtype (the CPU kernels'; empty on a device, whose
    kernels keep those sums in registers or shared memory). On the host they are this thread's arrays for
    ``slot`` (one slot per gradient of a call), reused between calls."""
    if not want:
        return be.empty((0, 0), np.float64), be.empty((0, 0), dtype)
    if be.on_host and n_chunks * n * 8 < _SCRATCH_MAX_BYTES:
        return _host_scratch(2 * slot, (n_chunks, n), np.float64), _host_scratch(2 * slot + 1, (n_chunks, n), dtype)
    if be.on_host:
        return be.empty((n_chunks, n), np.float64), be.empty((n_chunks, n), dtype)
    return be.empty((n_chunks, n), np.float64), be.empty((0, 0), dtype)


def to_stat(be, sd, *arrays) -> list:
    """Parameters and running statistics as the kernels take them: in the statistic dtype ``sd`` (float32
    copies of 16-bit ones; float32 / float64 arrays as they are). None stays None."""
    return [None if a is None else be.astype(a, sd) for a in arrays]


def stat_outputs(be, sd, *arrays) -> list:
    """Buffers for the kernels to write parameter-shaped results into: each array itself when it is in the
    statistic dtype ``sd``, else a new ``sd`` buffer that ``round_back`` copies into it afterwards."""
    return [None if a is None else a if V.dtype_of(a) == sd else be.empty(tuple(a.shape), sd) for a in arrays]


def round_back(be, dsts, srcs) -> None:
    """dst[...] = src for each pair whose src is a float32 stand-in (one rounding to dst's 16-bit dtype)."""
    for dst, src in zip(dsts, srcs, strict=True):
        if dst is not None and src is not dst:
            be.copyto(dst, src)
