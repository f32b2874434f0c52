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

import numpy as np
from numba import cuda

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

# The kernels' scalar arguments after the tables, in order, with their values when an algorithm has none.
_SCALARS = (("lr", 0.0), ("wd", 0.0), ("sgn", 1.0), ("eps", 0.0), ("mu", 0.0), ("rho", 0.0), ("alpha", 0.0),
            ("omb1", 0.0), ("beta2", 0.0), ("decay", 1.0))  # fmt: skip


_NAMES, _DEFAULTS = tuple(n for n, _ in _SCALARS), tuple(d for _, d in _SCALARS)


def _scalars(h: dict, u0: float, u1: float) -> tuple:
    """The kernels' scalar arguments from an entry point's ``hyper`` dict and the uniform per-tensor values."""
    return (*map(h.get, _NAMES, _DEFAULTS), u0, u1)


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
    handles = _handles.get((dst, stream))  # (the bindings' handle objects, made once per table and stream)
    if handles is None:
        if len(_handles) >= 256:
            _handles.clear()
        handles = _handles[(dst, stream)] = (cu.CUdeviceptr(dst), cu.CUstream(stream))
    err = cu.cuMemcpyHtoDAsync(handles[0], addr, nbytes, handles[1])[0]
    if err:
        LA._check(err, "cuMemcpyHtoDAsync")
    err = cu.cuEventRecord(ev, handles[1])[0]
    if err:
        LA._check(err, "cuEventRecord")


_handles: dict = {}  # (device address, stream) -> (CUdeviceptr, CUstream)


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
    stream = launch_stream()  # (the parameters' library's current stream)
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
    key = (offsets.dtype.char, offsets.tobytes())  # (a plan's offsets rarely change: their checks are kept)
    sizes = _SIZES.get(key)
    if sizes is None:
        sizes = np.diff(offsets)
        if (sizes < 0).any():
            raise ValueError("optimizer kernel: offsets must not decrease")
        if len(_SIZES) >= 64:
            _SIZES.clear()
        _SIZES[key] = sizes
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
_SIZES: dict = {}  # offsets' (dtype, bytes) -> their tensor sizes, checked not negative


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


from ._optim_arrays import dtype_code, gather_like, gather_params, launch_stream  # noqa: E402,F401  (launchers of this module)
