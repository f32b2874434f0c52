"""128-bit loads and stores for the vector forms of the row kernels: four float32 or eight 16-bit elements
(float16, or bfloat16 as its uint16 bits) per access.

``ldv(dst, a, row, j)`` copies the ``lanes`` elements a[row, j .. j + lanes - 1] of a C-contiguous 2-D
array (1-D: a[j ..]; ``row`` unused) into dst[0 .. lanes - 1] with one 16-byte read-only load (PTX
``ld.global.nc.v4.f32`` / ``.v4.u32`` ...); ``stv(a, row, j, src)`` stores src[0 .. lanes - 1] there with
one 16-byte store. ``dst``/``src`` are thread-local arrays of the array's dtype, indexed only by
constants after unrolling, so they live in registers. The caller guarantees 16-byte alignment of the
element at (row, j): base addresses 16-byte aligned, j and the row length multiples of ``lanes`` (the
launchers pick the vector kernels only then, ``vec_ok``). The loads are marked invariant: the arrays they
read are not written by the same kernel (outputs never alias inputs), which also lets the compiler issue
them ahead of earlier stores. Under the simulator they are plain element copies (same values).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ._common import SIM

ALIGN = 16  # bytes per vector access
VEC = 4  # float32 elements per access (lanes(float32))


def lanes(dtype) -> int:
    """Elements of ``dtype`` per 128-bit access."""
    return ALIGN // np.dtype(dtype).itemsize


def vec_ok(n: int, itemsize: int, *ptrs: int) -> bool:
    """Whether the vector kernels may run: rows of 2- or 4-byte elements whose length is a multiple of a
    vector's elements, and arrays (given by base address; 0 = absent) that all start on a 16-byte boundary."""
    return itemsize in (2, 4) and n % (ALIGN // itemsize) == 0 and all(p % ALIGN == 0 for p in ptrs)


if SIM:

    @cuda.jit(device=True)
    def ldv(dst, a, row, j):
        for e in range(ALIGN // a.dtype.itemsize):
            dst[e] = a[row, j + e] if a.ndim == 2 else a[j + e]

    @cuda.jit(device=True)
    def stv(a, row, j, src):
        for e in range(ALIGN // a.dtype.itemsize):
            a[row, j + e] = src[e]

else:
    from llvmlite import ir
    from numba import types
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic

    _I32 = ir.IntType(32)

    def _vptr(context, builder, aty, arr, row, j):
        """(global-space <lanes x elt>* to element (row, j) of a C-contiguous array (1-D: element j), lanes)."""
        w = 128 // aty.dtype.bitwidth
        a = context.make_array(aty)(context, builder, value=arr)
        if aty.ndim == 2:
            n = cgutils.unpack_tuple(builder, a.shape, 2)[1]
            e = builder.add(builder.mul(row, n), j)
        else:
            e = j
        vt = ir.VectorType(context.get_data_type(aty.dtype), w)
        p = builder.bitcast(builder.gep(a.data, [e]), vt.as_pointer())
        return builder.addrspacecast(p, ir.PointerType(vt, 1)), w

    def _local(context, builder, lty, arr, e):
        """Pointer to element ``e`` of a thread-local array."""
        return builder.gep(context.make_array(lty)(context, builder, value=arr).data, [ir.Constant(_I32, e)])

    def load_to_local(context, builder, ptr, w, lty, arr, invariant: bool):
        """Codegen: the <w x elt> at global ``ptr`` (16-byte aligned) into local array ``arr`` (type ``lty``)."""
        v = builder.load(ptr, align=ALIGN)
        if invariant:
            v.set_metadata("invariant.load", builder.module.add_metadata([]))
        for e in range(w):
            builder.store(builder.extract_element(v, ir.Constant(_I32, e)), _local(context, builder, lty, arr, e))
        return context.get_dummy_value()

    def store_from_local(context, builder, ptr, w, lty, arr):
        """Codegen: local array ``arr``'s first w elements to the <w x elt> at global ``ptr`` (aligned)."""
        v = ir.Constant(ptr.type.pointee, ir.Undefined)
        for e in range(w):
            v = builder.insert_element(v, builder.load(_local(context, builder, lty, arr, e)), ir.Constant(_I32, e))
        builder.store(v, ptr, align=ALIGN)
        return context.get_dummy_value()

    @intrinsic
    def ldv(typingctx, dst, a, row, j):
        if dst.dtype != a.dtype:
            return None
        sig = types.void(dst, a, types.uint64, types.uint64)

        def codegen(context, builder, sig, args):
            ptr, w = _vptr(context, builder, sig.args[1], args[1], args[2], args[3])
            return load_to_local(context, builder, ptr, w, sig.args[0], args[0], True)

        return sig, codegen

    @intrinsic
    def stv(typingctx, a, row, j, src):
        if src.dtype != a.dtype:
            return None
        sig = types.void(a, types.uint64, types.uint64, src)

        def codegen(context, builder, sig, args):
            ptr, w = _vptr(context, builder, sig.args[0], args[0], args[1], args[2])
            return store_from_local(context, builder, ptr, w, sig.args[3], args[3])

        return sig, codegen
