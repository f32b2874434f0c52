"""The column sums of the norm backward: dweight/dbias from the float64 partial rows, in a fixed order."""

from __future__ import annotations

import numpy as np
from numba import cuda

from . import _common as cc

RED_COLS = 32  # columns per block of the partial-row reduction
RED_GROUPS = 8  # chunk groups per block (block = RED_COLS * RED_GROUPS threads)


def _make_reduce(dtype, dtype_b=None):
    """The partial-row reduction writing ``oa`` in ``dtype`` and ``ob`` in ``dtype_b`` (default: the same);
    16-bit outputs round the float32 result once (bfloat16 as uint16 bits)."""
    st_a = cc.storer(dtype)
    st_b = cc.storer(dtype if dtype_b is None else dtype_b)
    from numba import float64

    bc, bg = RED_COLS, RED_GROUPS

    def reduce_partials(pa, pb, oa, ob, c):
        """oa[j] = sum_i pa[i, j] and ob[j] = sum_i pb[i, j] over i < c, in a fixed order.

        Chunk group q of the block sums its contiguous range of partial rows; group 0 then adds the group
        sums in order. An output of length 0 is skipped.
        """
        n = max(oa.shape[0], ob.shape[0])
        buf = cuda.shared.array((2, bg, bc), float64)
        tid = cuda.threadIdx.x
        q = tid // bc
        cl = tid - q * bc
        j = cuda.blockIdx.x * bc + cl
        want_a = oa.size > 0
        want_b = ob.size > 0
        per = (c + bg - 1) // bg
        lo = min(c, q * per)
        hi = min(c, lo + per)
        sa = np.float64(0)
        sb = np.float64(0)
        if j < n:
            for i in range(lo, hi):
                if want_a:
                    sa += pa[i, j]
                if want_b:
                    sb += pb[i, j]
        buf[0, q, cl] = sa
        buf[1, q, cl] = sb
        cuda.syncthreads()
        if q == 0 and j < n:
            for k in range(1, bg):
                sa += buf[0, k, cl]
                sb += buf[1, k, cl]
            if want_a:
                oa[j] = st_a(sa)
            if want_b:
                ob[j] = st_b(sb)

    return reduce_partials


def _reduce_kernel(dtype, dtype_b=None) -> cc.Kernel:
    dt = np.dtype(dtype)
    db = dt if dtype_b is None else np.dtype(dtype_b)

    def build():
        p2 = cc.arr(np.float64, 2)
        sig = f"void({p2}, {p2}, {cc.arr(dt, 1)}, {cc.arr(db, 1)}, int64)"
        return cc.Kernel(_make_reduce(dt, db), sig, cc.register_cap(RED_COLS * RED_GROUPS, np.float64))

    return cc.cached(("reduce_partials", dt, db, RED_COLS, RED_GROUPS), build)


def reduce_partials(pa, pb, oa, ob, c: int, stream, dt_a=None, dt_b=None) -> None:
    """Launch the reduction; ``dt_a``/``dt_b``: the outputs' dtypes when they are uint16 views of bfloat16."""
    n = max(oa.shape[0], ob.shape[0])
    if n == 0:
        return
    dt_a = np.dtype(oa.dtype if dt_a is None else dt_a)
    dt_b = np.dtype(ob.dtype if dt_b is None else dt_b)
    if oa.shape[0] == 0:
        oa, dt_a = cc.empty_device((0,), dt_b), dt_b
    if ob.shape[0] == 0:
        ob, dt_b = cc.empty_device((0,), dt_a), dt_a
    k = _reduce_kernel(dt_a, dt_b)
    k.launch(-(-n // RED_COLS), RED_COLS * RED_GROUPS, stream, pa, pb, _kv(oa), _kv(ob), c)


def _kv(a):
    """A device array as the kernels read it (bfloat16 as uint16)."""
    return cc.kview(a)
