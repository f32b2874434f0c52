"""Where a case's arrays start in memory: the bench's input-alignment axis.

NumPy puts every large array 16 bytes past a page boundary (``a.ctypes.data % 4096 == 16``: glibc's mmap'd
chunk header), torch puts large tensors 64 bytes past one, fastnorm's pooled outputs start on one. On the
AVX-512 target a row that starts 16 bytes past a 64-byte line makes every 64-byte access straddle two lines,
which moved kernel times by 5-24% on Zen 5. The alignment is therefore an explicit, reported axis:

- ``numpy``: the arrays as the case builds them (what a NumPy user gets; nothing is copied);
- ``64``: copies of the same values starting 64 bytes past a page (torch's placement: 64-byte aligned);
- ``page``: copies starting on a page boundary (fastnorm's pool outputs).

The ``out=`` buffers a provider makes with :func:`empty` / :func:`empty_like` follow the alignment in force
(:func:`placing`), so a fastnorm ``out=`` call sees the same placement on its inputs and its outputs.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np

PAGE = 4096
ALIGNMENTS = ("numpy", "64", "page")
_PAGE_OFFSET = {"64": 64, "page": 0}  # bytes past a page boundary

_current: contextvars.ContextVar[str] = contextvars.ContextVar("fastnorm_bench_alignment", default="numpy")


def check_alignment(alignment: str) -> str:
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    return alignment


@contextlib.contextmanager
def placing(alignment: str) -> Iterator[None]:
    """Within the block, :func:`empty` and :func:`empty_like` place new arrays by ``alignment``."""
    token = _current.set(check_alignment(alignment))
    try:
        yield
    finally:
        _current.reset(token)


def empty(shape, dtype, alignment: str | None = None) -> np.ndarray:
    """An uninitialized C-contiguous array placed by ``alignment`` (default: the one in force)."""
    alignment = check_alignment(alignment or _current.get())
    dt = np.dtype(dtype)
    if alignment == "numpy":
        return np.empty(shape, dt)
    shape = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    buf = np.empty(nbytes + 2 * PAGE, np.uint8)
    start = (_PAGE_OFFSET[alignment] - buf.ctypes.data) % PAGE
    return buf[start : start + nbytes].view(dt).reshape(shape)


def empty_like(a: np.ndarray, alignment: str | None = None) -> np.ndarray:
    """``empty(a.shape, a.dtype)`` with ``a``'s memory order (dimensions in the order of their strides)."""
    order = _dense_order(a)
    if order is None:
        return empty(a.shape, a.dtype, alignment)
    base = empty(tuple(a.shape[k] for k in order), a.dtype, alignment)
    return base.transpose(np.argsort(order))


def _dense_order(a: np.ndarray) -> tuple[int, ...] | None:
    """The dimensions outermost-first by stride if ``a`` is a dense (gap-free) permutation of a C array."""
    if a.ndim == 0 or a.size == 0 or any(s < 0 for s in a.strides):
        return None
    order = tuple(sorted(range(a.ndim), key=lambda k: -a.strides[k]))
    expect = a.itemsize
    for k in reversed(order):
        if a.shape[k] != 1 and a.strides[k] != expect:
            return None
        expect *= a.shape[k]
    return order


def place(obj, alignment: str):
    """``obj`` (an array, or a dict / list / tuple holding arrays) with every array of at least one dimension
    replaced by a copy placed by ``alignment`` (same values, shape, dtype and memory order); ``numpy``: ``obj``
    itself. Arrays that are not a dense permutation of a C array (strided slices) keep their memory."""
    if check_alignment(alignment) == "numpy":
        return obj
    if isinstance(obj, dict):
        return {k: place(v, alignment) for k, v in obj.items()}
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):
        return type(obj)(place(v, alignment) for v in obj)
    if isinstance(obj, np.ndarray) and obj.ndim >= 1 and _dense_order(obj) is not None:
        out = empty_like(obj, alignment)
        np.copyto(out, obj)
        return out
    return obj


def page_offsets(inputs: dict) -> dict[str, int]:
    """Bytes past a page boundary of each input array (a list or tuple of arrays: its first one), by name."""
    out = {}
    for name, v in inputs.items():
        if isinstance(v, list | tuple) and v and isinstance(v[0], np.ndarray):
            v = v[0]
        if isinstance(v, np.ndarray) and v.ndim >= 1:
            out[name] = int(v.ctypes.data % PAGE)
    return out
