"""Optimizer steps on the GPU: one launch updates every tensor of a call (multi-tensor apply).

Same entry points and arguments as the CPU kernels (fastnorm/_kernels/cpu/_optim.pyx): a call gets a
table of device addresses ``tensors`` (S, T) (row 0 the parameters, row 1 the gradients, rows 2.. the
algorithm's state streams, 0 for a stream the options do not use), ``offsets`` (T + 1,) that lay the
tensors end to end in one flat index space, and per-tensor scalars. The device code (chunking, raw-address
loads and stores, the update formulas, 16-bit rounding) is in ``_optim_kernels``; this module checks the
tables, uploads them and launches.

The address table and offsets rarely change between steps: their device copy is cached by content.
Per-tensor scalars equal for every tensor (the usual case: all tensors at the same step) are passed as
kernel arguments; otherwise their table is copied to the device.

``gather_params`` / ``gather_like`` mirror the CPU helpers of the same names for CUDA arrays (any
``__cuda_array_interface__`` object, and the simulator's arrays), so ``fastnorm.optim`` can fill the table
from either backend.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from operator import is_, methodcaller
from weakref import ref

import numpy as np
from numba import cuda

from ..._backend import _KINDS, array_kind
from ..._dtypes import BFLOAT16 as _BF16
from . import _gather
from ._common import SIM, Kernel, cached, current_stream, launcher, register_cap, sm_count
from ._optim_kernels import (
    _HALF_ROWS,
    _SIG,
    FN_ADADELTA,
    FN_ADAGRAD,
    FN_ADAM,
    FN_AMSGRAD,
    FN_CENTERED,
    FN_MOMENTUM,
    FN_NESTEROV,
    FN_RMSPROP,
    FN_SGD,
    FN_WD,
    _make_half_kernel,
    _make_kernel,
    _rows_used,
    _shape,
)
from ._optim_vec import _make_vec_kernel

if not SIM:
    from . import _launch as LA
    from ._arrays import adapt

# The kernels' scalar arguments after the tables, in order, with their values when an algorithm has none.
_SCALARS = (("lr", 0.0), ("wd", 0.0), ("sgn", 1.0), ("eps", 0.0), ("mu", 0.0), ("rho", 0.0), ("alpha", 0.0),
            ("omb1", 0.0), ("beta2", 0.0), ("decay", 1.0))  # fmt: skip


def _scalars(h: dict, u0: float, u1: float) -> tuple:
    """The kernels' scalar arguments from an entry point's ``hyper`` dict and the uniform per-tensor values."""
    return (*(h.get(name, default) for name, default in _SCALARS), u0, u1)


BLOCK = 256  # threads per block
UNROLL = 4  # elements per thread in flight
CHUNK = 16384  # flat elements per chunk
BLOCKS_PER_SM = 8
VEC = True  # 128-bit accesses when every address of the table is 16-byte aligned


def _kernel(algo: int, flags: int, f64: bool, vec: bool = False) -> Kernel:
    """The float32/float64 kernel; ``vec``: its 128-bit form (``_make_vec_kernel``)."""
    key = ("optim", algo, flags, f64, BLOCK, UNROLL, CHUNK, vec)
    regs = register_cap(BLOCK, np.float64 if f64 else np.float32)
    if vec:
        return cached(key, lambda: Kernel(_make_vec_kernel(algo, flags, f64, BLOCK, CHUNK), _SIG, regs))
    return cached(key, lambda: Kernel(_make_kernel(algo, flags, f64, BLOCK, UNROLL, CHUNK), _SIG, regs))


def vec_form(algo: int, flags: int, f64: bool) -> bool:
    """Whether the options have a 128-bit kernel: all but float32 AMSGrad and centered RMSprop, whose vector
    forms spill at the 64-register cap (40 and 208 bytes, ptxas 13 sm_90; the scalar centered RMSprop
    spills 60)."""
    return VEC and (f64 or not (algo == FN_ADAM and flags & FN_AMSGRAD or algo == FN_RMSPROP and flags & FN_CENTERED))


def _vec(algo: int, flags: int, f64: bool, tensors: np.ndarray) -> bool:
    """Whether a call takes the 128-bit kernel: options with one (``vec_form``), every tensor of the table
    starting on a 16-byte boundary (absent streams are 0)."""
    return vec_form(algo, flags, f64) and not (tensors & 15).any()


def _half_kernel(algo: int, flags: int, fmt: int, master: bool, sr: bool) -> Kernel:
    key = ("optim-half", algo, flags, fmt, master, sr, BLOCK, CHUNK)
    regs = register_cap(BLOCK, np.float32)
    return cached(key, lambda: Kernel(_make_half_kernel(algo, flags, fmt, master, sr, BLOCK, CHUNK), _SIG, regs))


def _launch_half(algo, flags, code, tensors, offsets, per_tensor, hyper: dict, half) -> None:
    """``_launch`` for 16-bit parameters: the 8-row table, copied to the device with the offsets."""
    if tensors.shape[1] == 0 or int(offsets[-1]) == 0:
        return
    _launch_tables(
        _half_kernel(algo, flags, code - 2, bool(half[0]), bool(half[1])),
        tensors,
        offsets,
        per_tensor,
        hyper,
        _HALF_ROWS,
    )


def _launch_tables(k, tensors, offsets, per_tensor, hyper: dict, rows: int) -> None:
    """Launch ``k`` with device copies of the tables (cached by content; the per-tensor scalars passed as
    arguments when equal for every tensor): the simulator's path, and the GPU's for 16-bit parameters."""
    global _NO_PT
    total = int(offsets[-1])
    stream = current_stream()
    d_tab, d_off = _device_table(tensors, offsets, stream, rows)
    pt = np.asarray(per_tensor, dtype=np.float64)
    u0 = u1 = 0.0
    if pt.size == 0 or (pt == pt[0]).all():
        if pt.size:
            u0, u1 = float(pt[0, 0]), float(pt[0, -1])
        if _NO_PT is None:
            _NO_PT = cuda.device_array((0, 1), np.float64)
        d_pt = _NO_PT
    else:
        d_pt = cuda.to_device(np.ascontiguousarray(pt), stream=stream)
    h = hyper
    grid = min(-(-total // CHUNK), BLOCKS_PER_SM * sm_count())
    k.launch(
        grid,
        BLOCK,
        stream,
        d_tab,
        d_off,
        d_pt,
        *_scalars(h, u0, u1),
    )


# ------------------------------------------------------------------------------------------ tables
_tables: dict = {}


def _device_table(tensors: np.ndarray, offsets: np.ndarray, stream, rows: int = 5):
    """Device copies of the address table (``rows`` rows: 5, or 8 for 16-bit parameters) and offsets,
    cached by content."""
    tab = np.zeros((rows, tensors.shape[1]), np.int64)
    tab[: tensors.shape[0]] = tensors
    off = np.ascontiguousarray(offsets, dtype=np.int64)
    key = tab.tobytes() + b"|" + off.tobytes()
    hit = _tables.get(key)
    if hit is None:
        if len(_tables) >= 16:
            _tables.clear()
        hit = _tables[key] = (cuda.to_device(tab, stream=stream), cuda.to_device(off, stream=stream))
    return hit


_NO_PT = None


class _DevTable:
    """A device copy of a host table (int64 or float64, 1-D) and the host values it holds (as bytes)."""

    __slots__ = ("arr", "ptr", "mirror")

    def __init__(self, n: int, dtype):
        self.arr = cuda.device_array(n, dtype)  # once per (stream, size): not on the steady-state path
        self.ptr = self.arr.gpu_data.device_pointer_value
        self.mirror = None


_dev_tables: dict = {}  # (kind, stream, size, dtype) -> [_DevTable] most recent first
_staging: list = []  # pinned host buffers [array, event or None, address] for the asynchronous uploads
_stage_next = 0
TABLES_PER_KEY = 4


def _stage_copy(buf: np.ndarray, dst: int, stream: int) -> None:
    """``buf`` -> device address ``dst`` with ``cuMemcpyHtoDAsync`` from pinned memory on ``stream``.

    A staging buffer is reused only once the copy that last read it has run (its event, queried, never
    waited on); if none is free yet, another pinned buffer is added: the host never synchronizes."""
    global _stage_next
    cu = LA.cu
    nbytes = buf.nbytes
    slot = None
    for k in range(len(_staging)):
        i = (_stage_next + k) % len(_staging)
        host, ev, _ = _staging[i]
        if host.nbytes >= nbytes and (ev is None or int(cu.cuEventQuery(ev)[0]) == 0):
            slot, _stage_next = i, (i + 1) % len(_staging)
            break
    if slot is None:
        host = cuda.pinned_array(max(nbytes, 1 << 16) // 8 + 1, np.int64)
        _staging.append([host, None, host.ctypes.data])
        slot = len(_staging) - 1
    host, ev, addr = _staging[slot]
    host.view(np.uint8)[:nbytes] = buf.view(np.uint8)
    if ev is None:
        err, ev = cu.cuEventCreate(cu.CUevent_flags.CU_EVENT_DISABLE_TIMING)
        LA._check(err, "cuEventCreate")
        _staging[slot][1] = ev
    LA._check(cu.cuMemcpyHtoDAsync(cu.CUdeviceptr(dst), addr, nbytes, cu.CUstream(stream))[0], "cuMemcpyHtoDAsync")
    LA._check(cu.cuEventRecord(ev, cu.CUstream(stream))[0], "cuEventRecord")


def _upload(kind: str, buf: np.ndarray, stream: int) -> int:
    """The device address of a copy of ``buf`` that kernels queued next on ``stream`` read: one of the
    cached device tables if it already holds these values, else the least recently used one, refreshed
    by an asynchronous copy on ``stream`` (stream order keeps earlier launches reading the old values)."""
    key = (kind, stream, buf.size, buf.dtype)
    lst = _dev_tables.get(key)
    if lst is None:
        lst = _dev_tables[key] = []
    values = buf.tobytes()  # (compared as bytes: one memcmp per cached table)
    for i, e in enumerate(lst):
        if e.mirror == values:
            if i:
                lst.insert(0, lst.pop(i))
            return e.ptr
    e = lst.pop() if len(lst) >= TABLES_PER_KEY else _DevTable(buf.size, buf.dtype)
    _stage_copy(buf, e.ptr, stream)
    e.mirror = values
    lst.insert(0, e)
    return e.ptr


_fast_plans: dict = {}


def _launch_fast(algo, flags, f64, tensors, offsets, pt, hyper: dict, total: int) -> None:
    """``_launch`` on a real GPU: tables uploaded asynchronously when they change, a prebuilt launch."""
    n = tensors.shape[1]
    stream = LA.caller_stream("numba", -1)
    buf = np.zeros(6 * n + 1, np.int64)
    buf[: tensors.shape[0] * n] = tensors.ravel()
    buf[5 * n :] = offsets
    tptr = _upload("tab", buf, stream)
    u0 = u1 = 0.0
    pptr, pk = 0, 0
    if pt.size == 0 or (pt == pt[0]).all():
        if pt.size:
            u0, u1 = float(pt[0, 0]), float(pt[0, -1])
    else:
        pk = pt.shape[1]
        pptr = _upload("pt", np.ascontiguousarray(pt, dtype=np.float64).ravel(), stream)
    grid = min(-(-total // CHUNK), BLOCKS_PER_SM * sm_count())
    vec = _vec(algo, flags, f64, tensors)
    key = (algo, flags, f64, n, pk, grid, vec)
    plan = _fast_plans.get(key)
    if plan is None:
        tpl = LA.ArgTemplate()
        slots = (tpl.array((5, n), 8), tpl.array((n + 1,), 8), tpl.array((n, pk) if pk else (0, 1), 8))
        sc = tuple(tpl.f64() for _ in range(12))
        k = LA.core_kernel(_kernel(algo, flags, f64, vec))
        plan = _fast_plans[key] = LA.Plan(k, grid, BLOCK, tpl, slots, sc)
    h = hyper
    plan.launch(
        stream,
        (tptr, tptr + 40 * n, pptr),
        _scalars(h, u0, u1),
    )


def _launch(algo, flags, code, tensors, offsets, per_tensor, hyper: dict, half=None) -> None:
    tensors = np.asarray(tensors)
    if code >= 2:
        return _launch_half(algo, flags, code, tensors, np.asarray(offsets), per_tensor, hyper, half)
    f64 = code == 1
    n_tensors = tensors.shape[1]
    if n_tensors == 0:
        return
    offsets = np.asarray(offsets)
    total = int(offsets[-1])
    if total == 0:
        return
    if not SIM:
        return _launch_fast(
            algo,
            flags,
            f64,
            tensors,
            np.asarray(offsets, dtype=np.int64),
            np.asarray(per_tensor, dtype=np.float64),
            hyper,
            total,
        )
    _launch_tables(_kernel(algo, flags, f64, _vec(algo, flags, f64, tensors)), tensors, offsets, per_tensor, hyper, 5)


def _check(tensors, offsets, n_rows, used, per_tensor, n_pt):
    """The structure checks of the CPU kernels (``_run`` in _optim.pyx)."""
    n_tensors = tensors.shape[1]
    if tensors.shape[0] != n_rows or offsets.shape[0] != n_tensors + 1 or offsets[0] != 0:
        raise ValueError("optimizer kernel: the address table or the offsets have the wrong shape")
    if n_pt > 0 and (per_tensor.shape[0] != n_tensors or per_tensor.shape[1] != n_pt):
        raise ValueError(f"optimizer kernel: per_tensor must have shape ({n_tensors}, {n_pt})")
    sizes = np.diff(offsets)
    if (sizes < 0).any():
        raise ValueError("optimizer kernel: offsets must not decrease")
    rows = _USED_ROWS.get((used, n_rows))
    if rows is None:
        rows = [r for r in range(n_rows) if (used >> r) & 1]
        # the used rows as a slice when they are the first ones (a view: no copy), else an index list
        rows = _USED_ROWS[(used, n_rows)] = slice(0, len(rows)) if rows == list(range(len(rows))) else rows
    used_rows = tensors[rows]
    if not used_rows.all() and ((used_rows == 0) & (sizes > 0)).any():  # (the first culprit below)
        rows = range(n_rows)[rows] if type(rows) is slice else rows
        for r in rows:
            if ((tensors[r] == 0) & (sizes > 0)).any():
                t = int(np.flatnonzero((tensors[r] == 0) & (sizes > 0))[0])
                raise ValueError(f"optimizer kernel: tensor {t} has no address in row {r}")


_USED_ROWS: dict = {}  # (used-rows bit mask, row count) -> the used rows (a slice when they come first)


# ------------------------------------------------------------------------------------------ entry points
def _step(algo, flags, code, n_rows: int, tensors, offsets, per_tensor, n_pt: int, hyper: dict, half) -> None:
    """One optimizer step: the CPU kernels' structure checks (``n_rows`` table rows for 32/64-bit parameters,
    ``per_tensor`` (T, n_pt), none when n_pt is 0), then the launch."""
    tensors, offsets = np.asarray(tensors), np.asarray(offsets)
    pt = np.asarray(per_tensor) if n_pt > 0 else np.zeros((0, 0))
    _check(tensors, offsets, *_shape(code, half, n_rows, _rows_used(algo, flags)), pt, n_pt)
    _launch(algo, flags, code, tensors, offsets, pt, hyper, half)


@launcher
def sgd_step(tensors, offsets, per_tensor, lr, momentum, weight_decay, nesterov, maximize, code, n_threads, half=None):
    """IN/OUT (3, T) addresses: param, grad, momentum_buffer; per_tensor (T, 2): c1, c2."""
    flags = (FN_WD if weight_decay != 0 else 0) | (FN_MOMENTUM if momentum != 0 else 0)
    flags |= FN_NESTEROV if (nesterov and momentum != 0) else 0
    hyper = dict(lr=lr, wd=weight_decay, sgn=-1.0 if maximize else 1.0, mu=momentum)
    _step(FN_SGD, flags, code, 3, tensors, offsets, per_tensor, 2, hyper, half)


@launcher
def adagrad_step(tensors, offsets, per_tensor, weight_decay, eps, maximize, code, n_threads, half=None):
    """IN/OUT (3, T): param, grad, sum; per_tensor (T, 1): clr."""
    hyper = dict(wd=weight_decay, sgn=-1.0 if maximize else 1.0, eps=eps)
    _step(FN_ADAGRAD, FN_WD if weight_decay != 0 else 0, code, 3, tensors, offsets, per_tensor, 1, hyper, half)


@launcher
def adadelta_step(tensors, offsets, lr, rho, eps, weight_decay, maximize, code, n_threads, half=None):
    """IN/OUT (4, T): param, grad, square_avg, acc_delta."""
    hyper = dict(lr=lr, rho=rho, eps=eps, wd=weight_decay, sgn=-1.0 if maximize else 1.0)
    _step(FN_ADADELTA, FN_WD if weight_decay != 0 else 0, code, 4, tensors, offsets, None, 0, hyper, half)


@launcher
def rmsprop_step(
    tensors, offsets, lr, alpha, eps, weight_decay, momentum, centered, maximize, code, n_threads, half=None
):
    """IN/OUT (5, T): param, grad, square_avg, grad_avg, momentum_buffer."""
    flags = (FN_WD if weight_decay != 0 else 0) | (FN_MOMENTUM if momentum > 0 else 0)
    flags |= FN_CENTERED if centered else 0
    hyper = dict(lr=lr, alpha=alpha, eps=eps, wd=weight_decay, mu=momentum, sgn=-1.0 if maximize else 1.0)
    _step(FN_RMSPROP, flags, code, 5, tensors, offsets, None, 0, hyper, half)


@launcher
def adam_step(
    tensors, offsets, per_tensor, beta1, beta2, eps, weight_decay, decay, amsgrad, maximize, code, n_threads, half=None
):
    """IN/OUT (5, T): param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq; per_tensor (T, 2): step_size, bc2."""
    flags = (FN_WD if weight_decay != 0 else 0) | (FN_AMSGRAD if amsgrad else 0)
    hyper = dict(omb1=1.0 - beta1, beta2=beta2, eps=eps, wd=weight_decay, decay=decay, sgn=-1.0 if maximize else 1.0)
    _step(FN_ADAM, flags, code, 5, tensors, offsets, per_tensor, 2, hyper, half)


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


@launcher
def gather_params(params: list, info: np.ndarray) -> int:
    """Row 0: device address, row 1: size, row 2: dtype code (0 float32, 1 float64, 2 bfloat16, 3 float16),
    of each parameter.

    Returns -1 if every entry is a C-contiguous, writeable float32/float64/bfloat16/float16 CUDA array, else
    the index of the first one that is not (as the CPU helper of the same name does for NumPy arrays).
    """
    n = len(params)
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
    ptrs, sizes, f8 = [], [], []
    for i, meta in enumerate(_metas(params)):
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
    strong = (*params, avoid_lo, avoid_hi)
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
