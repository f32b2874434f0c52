"""The optimizer launchers' array checks: one record per CUDA parameter / state / gradient array (address,
size, dtype code, contiguity), read straight from torch tensors, CuPy and Numba arrays, and the two gathers
that fill the kernels' pointer tables from them (``gather_params``, ``gather_like``; re-exported by
``optim``, whose launchers they are).
"""

from __future__ import annotations

import sys
import threading
from bisect import bisect_left
from operator import is_, methodcaller
from weakref import ref

import numpy as np

from ..._backend import _KINDS, array_kind
from ..._dtypes import BFLOAT16 as _BF16
from . import _gather
from ._common import SIM, launcher

if not SIM:
    from . import _launch as LA
    from ._arrays import adapt

# ------------------------------------------------------------------------------------------ array checks
# A record per array: (ptr, nbytes, itemsize, shape, contiguous, writeable, dcode), dcode the kernels' dtype
# code (0 float32, 1 float64, 2 bfloat16, 3 float16; -1 any other dtype).
_F4, _F8, _F2 = np.dtype("<f4"), np.dtype("<f8"), np.dtype("<f2")
_DCODE = {_F4: 0, _F8: 1, _BF16: 2, _F2: 3}
_TORCH_DCODE: dict = {}  # torch dtype -> dcode, filled on the first torch tensor
_CONTIG: dict = {}  # (shape, strides, itemsize) -> Numba's C-contiguous flag for arrays of that layout


def _meta(a):
    """The record of a CUDA array, or None for anything else. Read straight from torch tensors, CuPy arrays
    and Numba arrays (attributes only, no adapter object: a few hundred nanoseconds per array), through
    the adapters for other ``__cuda_array_interface__`` types, from the NumPy buffer for the simulator's."""
    k = _KINDS.get(type(a)) or array_kind(a)
    if k == "numba":
        g = a.gpu_data
        dt = a.dtype
        shape = a.shape
        item = dt.itemsize
        key = (shape, a.strides, item)
        contig = _CONTIG.get(key)
        if contig is None:
            contig = _contig(key, a)
        try:
            ptr = 0 if g is None else int(g.device_pointer)
        except TypeError:  # a ctypes pointer (older numba-cuda)
            ptr = g.device_pointer_value or 0
        return (ptr, a.size * item, item, shape, contig, True, _DCODE.get(dt, -1))
    if k == "torch":
        if not a.is_cuda:
            return None
        dt = a.dtype
        dc = _TORCH_DCODE.get(dt)
        if dc is None:
            dc = _torch_dcode(dt)
        return (a.data_ptr(), a.nbytes, a.element_size(), a.shape, a.is_contiguous(), True, dc)
    if k == "cupy":
        dt = a.dtype
        return (a.data.ptr, a.nbytes, dt.itemsize, a.shape, a.flags.c_contiguous, True, _DCODE.get(dt, -1))
    if k == "sim":
        return _sim_meta(a)
    if k is None or k == "numpy" or SIM:
        return None
    try:
        d = adapt(a)
    except Exception:
        return None
    dt = d.dtype
    return (d.ptr, d.nbytes, dt.itemsize, d.shape, d.strides is None, not d.readonly, _DCODE.get(dt, -1))


def _contig(key, a) -> bool:
    """Numba's C-contiguous flag of ``a``, remembered for its (shape, strides, itemsize)."""
    if len(_CONTIG) >= 4096:
        _CONTIG.clear()
    c = _CONTIG[key] = bool(a.is_c_contiguous())
    return c


def _torch_dcode(tdt) -> int:
    torch = sys.modules["torch"]
    codes = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
    c = _TORCH_DCODE[tdt] = codes.get(tdt, -1)
    return c


def _sim_meta(a):
    """``_meta``'s record of a simulator device array (the NumPy array behind it)."""
    ary = a._ary
    dt = ary.dtype
    flags = ary.flags
    return (
        ary.__array_interface__["data"][0],
        ary.nbytes,
        dt.itemsize,
        tuple(ary.shape),
        flags.c_contiguous,
        flags.writeable,
        _DCODE.get(dt, -1),
    )


def dtype_code(a) -> int:
    """The kernels' dtype code of a CUDA array (0 float32, 1 float64, 2 bfloat16, 3 float16), -1 otherwise."""
    meta = _meta(a)
    return -1 if meta is None else meta[6]


# Whole lists seen before (the same objects, all of kinds whose pointer never changes: Numba and CuPy
# arrays, and None): their checked result, so that a step with the same parameters and gradients costs a
# few C-level loops over the lists, not a Python loop. Parameters (and the avoid ranges) are held by strong
# references: they live as long as the optimizer anyway. Gradients and state by weak references: a cached
# list never keeps an old gradient's device memory alive (its entry simply stops matching).
_list_cache: dict = {}
_LISTS = 256  # (a step with moving gradients adds one: cleared every few hundred steps)
_imm_types: set = {type(None), np.ndarray}  # (NumPy arrays: the avoid ranges; never a parameter here)
_deref = methodcaller("__call__")
_NONE_REF = type(None)  # stands for the weak reference to None: calling it gives None


def _cached_list(key, strong, weak=()):
    hit = _list_cache.get(key)
    if hit is not None and all(map(is_, strong, hit[0])) and all(map(is_, weak, map(_deref, hit[1]))):
        return hit[2]
    return None


def _remember_list(key, strong, weak, value) -> None:
    for tp in {*map(type, strong), *map(type, weak)}:
        if tp not in _imm_types:
            if _KINDS.get(tp) not in ("numba", "cupy"):
                return
            _imm_types.add(tp)
    try:
        refs = [_NONE_REF if a is None else ref(a) for a in weak]
    except TypeError:  # a type without weak references
        return
    if len(_list_cache) >= _LISTS:
        _list_cache.clear()
    _list_cache[key] = (tuple(strong), refs, value)


def _metas(params: list) -> list:
    """``_meta`` of each parameter (None for a non-array), cached per list of immutable kinds."""
    key = ("metas", tuple(map(id, params)))
    hit = _cached_list(key, params)
    if hit is None:
        hit = list(map(_meta, params))
        _remember_list(key, params, (), hit)
    return hit


_where = threading.local()  # the library and device of the parameters the next launch updates (this thread)


def set_launch_stream(params: list) -> None:
    """The next launches in this thread update ``params`` (``gather_params`` sets it; a multi-group step sets
    it again before each group's launch)."""
    p = params[0] if params else None
    kind = _KINDS.get(type(p)) or "numba"
    _where.at = (kind, p.get_device() if kind == "torch" else p.device.id if kind == "cupy" else -1)


def launch_stream() -> int:
    """The stream the kernels of a step over the parameters set last (``set_launch_stream``, this thread)
    launch on: torch's current stream on their device for torch tensors, CuPy's for CuPy arrays, else
    ``_common.current_stream_ptr``'s."""
    return LA.caller_stream(*getattr(_where, "at", ("numba", -1)))


@launcher
def gather_params(params: list, info: np.ndarray) -> int:
    """Row 0: device address, row 1: size, row 2: dtype code (0 float32, 1 float64, 2 bfloat16, 3 float16),
    of each parameter.

    Returns -1 if every entry is a C-contiguous, writeable float32/float64/bfloat16/float16 CUDA array, else
    the index of the first one that is not (as the CPU helper of the same name does for NumPy arrays).
    """
    n = len(params)
    set_launch_stream(params)
    lkey = ("params-list", id(params), n)  # the same list as before (an optimizer's group), with the same entries
    hit = _cached_list(lkey, params)
    if hit is None:
        key = ("params", tuple(map(id, params)))
        hit = _cached_list(key, params)
        if hit is not None:
            _list_cache[lkey] = _list_cache[key]
    if hit is not None:
        info[:, :n] = hit
        return -1
    p = _gather.addresses(lkey, (), params)  # torch parameters: the same layout, addresses re-read
    if p is not None:
        info[0, :n] = p
        info[1:, :n] = _gather.extra(lkey)
        return -1
    ptrs, sizes, f8 = [], [], []
    metas = _metas(params)
    for i, meta in enumerate(metas):
        if meta is None:
            return i
        ptr, nbytes, item, _, contig, writeable, dcode = meta
        if dcode < 0 or not contig or not writeable or ptr % item:
            return i
        ptrs.append(ptr)
        sizes.append(nbytes // item)
        f8.append(dcode)
    if ptrs:
        info[0, :n] = ptrs
        info[1, :n] = sizes
        info[2, :n] = f8
    _remember_list(key, params, (), info[:, :n].copy())
    if key in _list_cache:
        _list_cache[lkey] = _list_cache[key]
    else:  # objects whose address may change (torch tensors): their layout
        _gather.remember(lkey, (), params, metas, info[1:, :n].copy())
    return -1


@launcher
def gather_like(
    arrays: list,
    params: list,
    ptrs: np.ndarray,
    writeable: bool,
    allow_none: bool,
    avoid_lo: np.ndarray,
    avoid_hi: np.ndarray,
    stat: bool = False,
) -> int:
    """Addresses of ``arrays`` matching ``params`` one to one (dtype, shape, C-contiguous, writeable if
    asked, bytes outside the sorted disjoint ranges ``avoid``); None gives 0 when ``allow_none``. With
    ``stat`` (state arrays) the dtype wanted is the parameter's state dtype (float32 beside 16-bit ones);
    gradients (not ``writeable``) of 16-bit parameters may also be float32.
    Returns -1 if all are usable, else the index of the first that is not."""
    n = ptrs.shape[0]
    if len(arrays) != n or len(params) != n:
        return 0
    # (a torch parameter can change shape under the same object: the layout its check accepted last, too)
    strong = (*params, avoid_lo, avoid_hi, _gather.current(("params-list", id(params), n)))
    lkey = (id(params), n, writeable, allow_none, stat)  # (the entries' identity: in ``strong``)
    # the same objects as a list seen before, or the layout seen before at new addresses (gradients that
    # moved; asked first while they keep moving)
    moving = _gather.moving(lkey)
    hit = _gather.addresses(lkey, strong, arrays, avoid_lo, avoid_hi) if moving else None
    if hit is None:
        key = ("like", tuple(map(id, arrays)), *lkey)
        hit = _cached_list(key, strong, arrays)
        if hit is None and not moving:
            hit = _gather.addresses(lkey, strong, arrays, avoid_lo, avoid_hi, moved=True)
    if hit is not None:
        ptrs[:n] = hit
        return -1
    out, metas = [], []
    los = avoid_lo.tolist() if avoid_lo.size else ()
    his = avoid_hi.tolist() if avoid_hi.size else ()
    refs = _metas(params)
    half_grad = not writeable and not stat
    for i in range(n):
        a = arrays[i]
        if a is None:
            if not allow_none:
                return i
            out.append(0)
            continue
        ref = refs[i]
        meta = _meta(a)
        if meta is None or ref is None:
            return i
        metas.append(meta)
        lo, nbytes, item, shape, contig, wr, dcode = meta
        want = ref[6]
        if want >= 2 and (stat or (half_grad and dcode == 0)):
            want = 0  # float32 state of a 16-bit parameter; a float32 gradient of one
        if dcode != want or not contig or (writeable and not wr) or shape != ref[3] or lo % item:
            return i
        hi = lo + nbytes
        if hi > lo and los:
            k = bisect_left(los, hi)
            if k > 0 and his[k - 1] > lo:
                return i
        out.append(lo)
    if out:
        ptrs[:n] = out
    _remember_list(key, strong, arrays, ptrs[:n].copy())
    if len(metas) == n:
        _gather.remember(lkey, strong, arrays, metas)
    return -1
