"""The optimizer steps' 128-bit form for float32/float64 parameters (``optim`` launches it when every
address of a call's table is 16-byte aligned): the chunking, per-tensor pieces and update formulas of
``_optim_kernels``, with each piece's aligned middle read and written one 128-bit access per stream per
thread (4 float32 / 2 float64 elements) and its unaligned head and tail element by element.
"""

from __future__ import annotations

import ctypes
import functools

from numba import cuda, types

from ._common import SIM
from ._optim_kernels import U, _chunked, _float_parts, _make_mem


def _make_vmem(nbty, ctype):
    """Device functions ``ldv(dst, addr, i)`` / ``stv(addr, i, src)``: the 16 bytes of elements i .. i + w - 1
    (w = 16 / element size; element i 16-byte aligned) of the array at address ``addr`` to / from the
    thread-local array dst / src, as one 128-bit access (``ld.global.v4`` / ``.v2``, not read-only: the
    kernels read and write the same addresses)."""
    w = 16 // ctypes.sizeof(ctype)
    if SIM:
        ld, st = _make_mem(nbty, ctype)

        @cuda.jit(device=True)
        def ldv(dst, addr, i):
            for e in range(w):
                dst[e] = ld(addr, i + e)

        @cuda.jit(device=True)
        def stv(addr, i, src):
            for e in range(w):
                st(addr, i + e, src[e])

        return ldv, stv
    from llvmlite import ir
    from numba.cuda.extending import intrinsic

    from ._vec import load_to_local, store_from_local

    def vptr(context, builder, addr, i):
        """Global-space <w x elt>* to element i of the array at address ``addr``."""
        et = context.get_value_type(nbty)
        p = builder.gep(builder.inttoptr(addr, et.as_pointer(1)), [i])
        return builder.bitcast(p, ir.PointerType(ir.VectorType(et, w), 1))

    @intrinsic
    def ldv(typingctx, dst, addr, i):
        sig = types.void(dst, types.uint64, types.uint64)

        def codegen(context, builder, sig, args):
            ptr = vptr(context, builder, args[1], args[2])
            return load_to_local(context, builder, ptr, w, sig.args[0], args[0], False)

        return sig, codegen

    @intrinsic
    def stv(typingctx, addr, i, src):
        sig = types.void(types.uint64, types.uint64, src)

        def codegen(context, builder, sig, args):
            return store_from_local(context, builder, vptr(context, builder, args[0], args[1]), w, sig.args[2], args[2])

        return sig, codegen

    return ldv, stv


@functools.cache
def _vmem(f64: bool):
    return _make_vmem(*((types.float64, ctypes.c_double) if f64 else (types.float32, ctypes.c_float)))


def _make_vec_kernel(algo: int, flags: int, f64: bool, block: int, chunk: int):
    """The kernel for float32/float64 parameters with 128-bit accesses (4 float32 / 2 float64 elements),
    for tables whose every used address is 16-byte aligned (the launcher checks): per piece of a tensor, the
    elements before its first 16-byte boundary and after its last one element by element, the groups between
    them one 128-bit load per stream per thread, all loads of a group before its stores. The same update per
    element as ``_make_kernel``: the same bits."""
    nbt, ld, st, update, element, (use0, use1, use2) = _float_parts(algo, flags, f64)
    w = 2 if f64 else 4
    ldv, stv = _vmem(f64)
    bu, wu, one = U(block), U(w), U(1)

    @cuda.jit(device=True)
    def move(v, addr, j, store):
        if store:
            stv(addr, j, v)
        else:
            ldv(v, addr, j)

    @cuda.jit(device=True)
    def states(v0, v1, v2, a0, a1, a2, j, store):
        """The group at j of the state streams the options use: loaded into v0.. or (``store``) stored."""
        if use0:
            move(v0, a0, j, store)
        if use1:
            move(v1, a1, j, store)
        if use2:
            move(v2, a2, j, store)

    @cuda.jit(device=True)
    def piece(tab, t, pa, ga, a0, a1, a2, i, stop, k):
        tid = U(cuda.threadIdx.x)
        start = i - tid
        a = min(stop, (start + wu - one) // wu * wu)  # the piece's first group boundary
        z = max(a, stop // wu * wu)  # ... and its last
        pv = cuda.local.array(w, nbt)
        gv = cuda.local.array(w, nbt)
        v0 = cuda.local.array(w, nbt)
        v1 = cuda.local.array(w, nbt)
        v2 = cuda.local.array(w, nbt)
        j = a + tid * wu
        while j < z:
            ldv(pv, pa, j)
            ldv(gv, ga, j)
            states(v0, v1, v2, a0, a1, a2, j, False)
            for q in range(w):
                pv[q], v0[q], v1[q], v2[q] = update(pv[q], gv[q], v0[q], v1[q], v2[q], k)
            stv(pa, j, pv)
            states(v0, v1, v2, a0, a1, a2, j, True)
            j += bu * wu
        nh = a - start
        q = tid
        while q < nh + (stop - z):  # the head [start, a) and the tail [z, stop), element by element (one loop)
            j = start + q if q < nh else z + (q - nh)
            st(pa, j, element(ld(pa, j), ld(ga, j), a0, a1, a2, j, k))
            q += bu

    return _chunked(piece, algo, flags, f64, block, chunk)
