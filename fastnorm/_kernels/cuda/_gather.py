"""Optimizer arrays whose layout did not change since the last step: checked in a few C-level passes.

A training loop that drops its gradients between steps (torch's ``zero_grad(set_to_none=True)``, or new
Numba/CuPy arrays per step) hands the optimizer a list of new objects at new addresses, with the shapes,
dtypes and contiguity of the previous step's; torch parameters are the same objects every step, but a
torch tensor's storage and layout can change under the same object (``p.data = ...``, ``set_``, ``t_``,
``resize_``, ``as_strided_``: some of them without a new address or a version bump), so nothing about a
torch tensor is trusted from an earlier step. ``optim.gather_params`` / ``gather_like`` check such a list
entry by entry once (their result gives the layout remembered here); later steps compare each field of the
whole list against that layout with ``map`` over attribute getters and the tensor type's own unbound
methods (no Python call per array), read the addresses the same way, and check alignment and overlap with
the avoided ranges in NumPy. Any difference (another type, shape, dtype, device kind, contiguity, a None,
an unaligned or overlapping address) answers "not handled", and the caller's entry-by-entry check runs and
says what is wrong.
"""

from __future__ import annotations

import sys
from itertools import repeat
from operator import attrgetter, is_, methodcaller

import numpy as np

from ..._backend import _KINDS

_NOWHERE = np.zeros(0, np.int64)

# per kind: (address getter, getter of the fields that must equal the remembered layout's, contiguity test)
# (the type is one of the fields: an object of another type does not match, or has not the attributes)
_GETTERS = {
    "numba": (attrgetter("gpu_data.device_pointer"), attrgetter("__class__", "shape", "dtype", "strides"), None),
    "cupy": (attrgetter("data.ptr"), attrgetter("__class__", "shape", "dtype", "flags.c_contiguous"), None),
}


def _getters(tp, kind: str):
    """The getters for arrays of type ``tp``: torch tensors' address and contiguity through ``TensorBase``'s
    unbound methods (a third of ``methodcaller``'s cost) unless ``tp`` overrides them."""
    if kind != "torch":
        return _GETTERS[kind]
    tb = sys.modules["torch"]._C.TensorBase
    ptr = tb.data_ptr if tp.data_ptr is tb.data_ptr else methodcaller("data_ptr")
    contig = tb.is_contiguous if tp.is_contiguous is tb.is_contiguous else methodcaller("is_contiguous")
    return (ptr, attrgetter("__class__", "shape", "dtype", "is_cuda"), contig)


_layouts: dict = {}  # key -> _Layout
_MAX = 64


class _Layout:
    __slots__ = ("strong", "getters", "fields", "items", "nbytes", "moved", "extra")

    def __init__(self, strong, getters, fields, items, nbytes, extra):
        self.strong, self.getters, self.fields, self.items, self.nbytes = strong, getters, fields, items, nbytes
        self.moved = False  # whether the last list that matched was made of other objects
        self.extra = extra  # what the caller derived from the checked records (read back by ``extra``)


def moving(key) -> bool:
    """Whether the arrays last matched for ``key`` had moved (the caller then asks ``addresses`` first)."""
    lay = _layouts.get(key)
    return lay is not None and lay.moved


def current(key):
    """The layout remembered for ``key`` (an object that is replaced whenever another layout is), or None."""
    return _layouts.get(key)


def extra(key):
    """The ``extra`` value remembered with the layout of ``key``."""
    return _layouts[key].extra


def remember(key, strong, arrays, metas, extra=None) -> None:
    """Remember the layout of ``arrays`` (just accepted by the entry-by-entry check; ``metas`` their
    ``_optim_arrays._meta`` records) for ``key``, with the objects ``strong`` that must be the same next time."""
    if not arrays:
        return
    tp = type(arrays[0])
    kind = _KINDS.get(tp)
    if kind not in ("numba", "torch", "cupy") or not all(map(is_, map(type, arrays), repeat(tp))):
        return
    g = _getters(tp, kind)
    fields = list(map(g[1], arrays))
    items = np.array([m[2] for m in metas], np.int64)
    nbytes = np.array([m[1] for m in metas], np.int64)
    if len(_layouts) >= _MAX:
        _layouts.clear()
    _layouts[key] = _Layout(tuple(strong), g, fields, items, nbytes, extra)


def addresses(key, strong, arrays, avoid_lo=_NOWHERE, avoid_hi=_NOWHERE, moved: bool | None = None):
    """The addresses of ``arrays`` (an int64 array) if they have the layout remembered for ``key`` and pass
    the alignment and overlap checks, else None. ``moved``: what ``moving(key)`` says next when they pass."""
    lay = _layouts.get(key)
    if lay is None or len(arrays) != lay.items.shape[0] or not all(map(is_, strong, lay.strong)):
        return None
    ptr, getter, contig = lay.getters
    try:
        if list(map(getter, arrays)) != lay.fields or contig is not None and not all(map(contig, arrays)):
            return None
        p = np.fromiter(map(ptr, arrays), np.int64, len(arrays))
    except (AttributeError, TypeError):  # another type of object, or a Numba array without memory
        return None
    if (p % lay.items).any():
        return None
    if avoid_lo.size:
        hi = p + lay.nbytes
        k = np.searchsorted(avoid_lo, hi, side="left")
        if ((hi > p) & (k > 0) & (avoid_hi[k - 1] > p)).any():  # (k = 0 reads the last range: masked)
            return None
    if moved is not None:
        lay.moved = moved
    return p
