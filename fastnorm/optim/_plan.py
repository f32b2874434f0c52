"""From lists of arrays to kernel calls: address tables, overlap checks, one launch per parameter dtype.

A *plan* is what a step needs beyond the values: per parameter dtype present, the parameters' indices, the
address table (rows: param, grad, the algorithm's state streams; 16-bit parameters: 8 rows, see
``half_table``) and the offsets that lay the tensors end to end. The functional steps build one per call;
the classes keep theirs while no parameter moves. Both run it with ``run``.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _dtypes
from .. import _validation as V
from ._algos import Algo

__all__ = [
    "NOWHERE",
    "CODE_DTYPES",
    "gather_params",
    "gather_like",
    "ranges",
    "offsets",
    "build",
    "run",
    "rounding_keys",
    "grad_f32",
]

# Parameter dtypes, in the order of the kernels' dtype codes (0 float32, 1 float64, 2 bfloat16, 3 float16).
CODE_DTYPES = (_dtypes.FLOAT32, _dtypes.FLOAT64, _dtypes.BFLOAT16, _dtypes.FLOAT16)
_ITEMSIZE = np.array([4, 8, 2, 2], np.int64)
STATE_CODE = np.array([0, 1, 0, 0], np.int64)  # the state of a 16-bit parameter is float32
HALF_ROWS = 8  # the table of 16-bit parameters: param, grad, 3 streams, master, rounding key, float32-grad flag
NOWHERE = (np.zeros(0, np.int64), np.zeros(0, np.int64))


# ------------------------------------------------------------------------------------------ arrays
def gather_params(be, op: str, params: list, name: str = "params") -> np.ndarray:
    """(3, n) int64: address, size, dtype code (``CODE_DTYPES``) of each parameter (all checked usable)."""
    info = np.empty((3, len(params)), np.int64)
    bad = be.kernels.gather_params(params, info)
    if bad >= 0:
        V.state_array(be, op, f"{name}[{bad}]", params[bad], writeable=True, copy_ok=False)
        raise AssertionError(f"{op}: {name}[{bad}] was refused by the kernels' check for no reason found")
    return info


def gather_like(be, op, name, arrays, params, *, writeable, allow_none=False, avoid=NOWHERE, stat=False):
    """Addresses of ``arrays`` (each matching its parameter, outside the sorted byte ranges ``avoid``).

    The kernels' fast check accepts the usual case; otherwise one pass over the entries raises the first
    error (``V.state_array``), or (gradients) replaces the entries with a bad layout by copies: returns
    (addresses, arrays) with ``arrays`` holding the copies (keep it alive while the kernel runs). ``stat``:
    the arrays are state (float32 beside 16-bit parameters); gradients of 16-bit parameters may be float32.
    """
    if len(arrays) != len(params):
        raise ValueError(f"{op}: {name} has {len(arrays)} entries for {len(params)} parameters")
    ptrs = np.empty(len(params), np.intp)
    if be.kernels.gather_like(arrays, params, ptrs, writeable, allow_none, avoid[0], avoid[1], stat) < 0:
        return ptrs, arrays
    arrays = list(arrays)
    for i, a in enumerate(arrays):
        if a is None:
            if not allow_none:
                raise TypeError(f"{op}: {name}[{i}] is None")
            ptrs[i] = 0
            continue
        a = arrays[i] = V.state_array(
            be, op, f"{name}[{i}]", a, params[i], writeable=writeable, copy_ok=not writeable, stat=stat
        )
        shape, dtype, lo = be.array_info(a)
        ptrs[i] = lo
        hi = lo + math.prod(shape) * dtype.itemsize
        k = int(np.searchsorted(avoid[0], hi, side="left"))  # ranges starting before hi; the last may meet
        if hi > lo and k > 0 and avoid[1][k - 1] > lo:
            raise ValueError(f"{op}: {name}[{i}] shares memory with a parameter or state array")
    return ptrs, arrays


def ranges(op: str, what: str, ptrs: np.ndarray, info: np.ndarray):
    """The byte ranges [lo, hi) of arrays (addresses ``ptrs``, sizes/dtypes from ``info``), sorted;
    ValueError if two overlap."""
    nbytes = info[1] * _ITEMSIZE[info[2]]
    keep = nbytes > 0
    lo = ptrs[keep].astype(np.int64)
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], (lo + nbytes[keep])[order]
    if lo.size > 1 and np.any(lo[1:] < hi[:-1]):
        raise ValueError(f"{op}: {what} overlap in memory (each must be a separate array)")
    return lo, hi


def state_ranges(op: str, info: np.ndarray, rows: list, master: np.ndarray | None):
    """``ranges`` of the parameters (``info``), the state rows (addresses per parameter) and the master
    copies (0: none): the memory no gradient may share."""
    sinfo = info.copy()
    sinfo[2] = STATE_CODE[info[2]]
    infos = [info] + [sinfo] * len(rows)
    if master is not None:
        minfo = sinfo.copy()
        minfo[1] = np.where(master != 0, info[1], 0)
        rows = [*rows, master]
        infos.append(minfo)
    return ranges(op, "parameters and state arrays", np.concatenate([info[0], *rows]), np.concatenate(infos, 1))


def grad_f32(be, grads: list, codes: np.ndarray) -> np.ndarray:
    """1 where a 16-bit parameter's gradient is float32 (0 elsewhere, and for None)."""
    out = np.zeros(len(grads), np.intp)
    f32 = _dtypes.FLOAT32
    for i in np.flatnonzero(codes >= 2).tolist():
        g = grads[i]
        if g is not None:  # a NumPy array's own dtype: array_info's interface dict costs ~1 us an array
            out[i] = (g.dtype if type(g) is np.ndarray else be.array_info(g)[1]) == f32
    return out


# ------------------------------------------------------------------------------------------ stochastic rounding
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (the kernels' ``fn_mix64``), elementwise on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def rounding_keys(seed: int, steps, index) -> np.ndarray:
    """The stochastic-rounding key of each tensor: ``mix64(mix64(mix64(seed) + step) + index)`` (uint64,
    wrapping; ``mix64`` is splitmix64's finalizer). Element ``i`` of a tensor rounds with the random bits
    ``mix64(key + (i + 1) * 0x9E3779B97F4A7C15) >> 32``: a counter-based generator, so the result depends
    only on (seed, step, tensor index, element index), never on the thread count or the chunking.

    Parameters
    ----------
    seed : int
        The optimizer's seed, 0 <= seed < 2**63.
    steps : array_like of int
        Per tensor: the number of this update (from 1).
    index : array_like of int
        Per tensor: its index (position in the parameter list, counted across groups in a class).

    Returns
    -------
    numpy.ndarray
        int64 (the uint64 keys' bits), one per tensor.
    """
    with np.errstate(over="ignore"):
        s = _mix64(np.array([seed], np.uint64))
        z = _mix64(s + np.asarray(steps, np.int64).astype(np.uint64))
        z = _mix64(z + np.asarray(index, np.int64).astype(np.uint64))
    return z.view(np.int64)


# ------------------------------------------------------------------------------------------ plans
def offsets(sizes: np.ndarray) -> np.ndarray:
    off = np.zeros(sizes.shape[0] + 1, np.int64)
    np.cumsum(sizes, out=off[1:])
    return off


def build(spec: Algo, info: np.ndarray, rows: dict, master: np.ndarray | None) -> list:
    """The plan: per dtype code present, (code, parameter indices, table, offsets). ``rows``: stream name
    -> the state addresses of every parameter (0: none); ``master``: the master copies' addresses or None.
    Row 1 (gradients), and for 16-bit parameters rows 6 and 7 (keys, gradient flags), are filled by ``run``.
    """
    plan = []
    codes = info[2]
    n = codes.shape[0]
    uniform = n == 0 or bool((codes == codes[0]).all())  # the usual case: one dtype, one table
    for code in codes[:1].tolist() if uniform else range(len(CODE_DTYPES)):
        idx = np.arange(n) if uniform else np.flatnonzero(codes == code)
        if idx.size == 0:
            continue
        tab = np.zeros((HALF_ROWS if code >= 2 else 2 + len(spec.streams), idx.size), np.intp)
        tab[0] = info[0, idx]
        for r, name in enumerate(spec.streams):
            if name in rows:
                tab[2 + r] = rows[name][idx]
        if code >= 2 and master is not None:
            tab[5] = master[idx]
        plan.append((code, idx, tab, offsets(info[1, idx])))
    return plan


def run(
    be,
    spec: Algo,
    h: dict,
    plan: list,
    sizes: np.ndarray,
    gptr: np.ndarray,
    steps: np.ndarray,
    *,
    first=None,
    g32=None,
    sr_keys=None,
    master: bool = False,
) -> None:
    """One kernel call per dtype of ``plan`` over the tensors that have a gradient (``gptr`` != 0).

    ``steps``: each tensor's update number (the per-tensor scalars); ``first``: SGD's first-step flags;
    ``g32``: float32-gradient flags and ``sr_keys`` (or None) the rounding keys of 16-bit parameters;
    ``master``: whether the 16-bit tables hold master copies.
    """
    active = gptr != 0
    everyone = bool(active.all())
    k = be.kernels
    for code, idx, tab, off in plan:
        if everyone:
            sel = idx
            tab[1] = gptr if idx.size == gptr.size else gptr[idx]
        else:
            keep = active[idx]
            sel = idx[keep]
            if sel.size == 0:
                continue
            tab = np.ascontiguousarray(tab[:, keep])
            tab[1] = gptr[sel]
            off = offsets(sizes[sel])
        flags = None
        if code >= 2:
            if sr_keys is not None:
                tab[6] = sr_keys[sel]
            tab[7] = g32[sel]
            flags = (master, sr_keys is not None)
        pt = spec.per_tensor(h, steps[sel], None if first is None else first[sel])
        spec.kernel(k, h, tab, off, pt, int(code), be.threads(int(off[-1])), flags)
