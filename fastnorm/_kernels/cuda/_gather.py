"""Optimizer arrays whose addresses moved but whose layout did not: checked in a few C-level passes.

A training loop that drops its gradients between steps (torch's ``zero_grad(set_to_none=True)``, or new
Numba/CuPy arrays per step) hands the optimizer a list of new objects at new addresses, with the shapes,
dtypes and contiguity of the previous step's. ``optim.gather_like`` checks such a list entry by entry once
(its result gives the layout remembered here); later steps of the same parameters compare each field of
the whole list against that layout with ``map`` over attribute getters (no Python call per array), read
the new addresses the same way, and check alignment and overlap with the avoided ranges in NumPy. Any
difference (another type, shape, dtype, stride, a None, an unaligned or overlapping address) answers
"not handled", and the caller's entry-by-entry check runs and says what is wrong.
"""

from __future__ import annotations

from itertools import repeat
from operator import attrgetter, is_, methodcaller

import numpy as np

from ..._backend import _KINDS

# per kind: (address getter, getter of the fields that must equal the remembered layout's, contiguity test)
# (the type is one of the fields: an object of another type does not match, or has not the attributes)
_GETTERS = {
    "numba": (attrgetter("gpu_data.device_pointer"), attrgetter("__class__", "shape", "dtype", "strides"), None),
    "torch": (
        methodcaller("data_ptr"),
        attrgetter("__class__", "shape", "dtype", "is_cuda"),
        methodcaller("is_contiguous"),
    ),
    "cupy": (attrgetter("data.ptr"), attrgetter("__class__", "shape", "dtype", "flags.c_contiguous"), None),
}

_layouts: dict = {}  # key -> _Layout
_MAX = 64


class _Layout:
    __slots__ = ("strong", "type", "fields", "items", "nbytes", "moved")

    def __init__(self, strong, tp, fields, items, nbytes):
        self.strong, self.type, self.fields, self.items, self.nbytes = strong, tp, fields, items, nbytes
        self.moved = False  # whether the last list that matched was made of other objects


def moving(key) -> bool:
    """Whether the arrays last matched for ``key`` had moved (the caller then asks ``addresses`` first)."""
    lay = _layouts.get(key)
    return lay is not None and lay.moved


def remember(key, strong, arrays, metas) -> None:
    """Remember the layout of ``arrays`` (just accepted by the entry-by-entry check; ``metas`` their
    ``_optim_arrays._meta`` records) for ``key``, with the objects ``strong`` that must be the same next time."""
    if not arrays:
        return
    tp = type(arrays[0])
    g = _GETTERS.get(_KINDS.get(tp))
    if g is None or not all(map(is_, map(type, arrays), repeat(tp))):
        return
    fields = list(map(g[1], arrays))
    items = np.array([m[2] for m in metas], np.int64)
    nbytes = np.array([m[1] for m in metas], np.int64)
    if len(_layouts) >= _MAX:
        _layouts.clear()
    _layouts[key] = _Layout(tuple(strong), tp, fields, items, nbytes)


def addresses(key, strong, arrays, avoid_lo: np.ndarray, avoid_hi: np.ndarray, moved: bool | None = None):
    """The addresses of ``arrays`` (an int64 array) if they have the layout remembered for ``key`` and pass
    the alignment and overlap checks, else None. ``moved``: what ``moving(key)`` says next when they pass."""
    lay = _layouts.get(key)
    if lay is None or len(arrays) != lay.items.shape[0] or not all(map(is_, strong, lay.strong)):
        return None
    ptr, getter, contig = _GETTERS[_KINDS[lay.type]]
    try:
        if list(map(getter, arrays)) != lay.fields or contig is not None and not all(map(contig, arrays)):
            return None
        p = np.fromiter(map(int, map(ptr, arrays)), np.int64, len(arrays))
    except (AttributeError, TypeError):  # another type of object, or a Numba array without memory
        return None
    if (p % lay.items).any():
        return None
    if avoid_lo.size:
        hi = p + lay.nbytes
        k = np.searchsorted(avoid_lo, hi, side="left")
        if ((hi > p) & (k > 0) & (avoid_hi[np.maximum(k - 1, 0)] > p)).any():
            return None
    if moved is not None:
        lay.moved = moved
    return p
