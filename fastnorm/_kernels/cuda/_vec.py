"""128-bit loads and stores of four float32 elements, for the vector forms of the row kernels.

``ld4(a, row, j)`` -> (a[row, j], ..., a[row, j + 3]) of a C-contiguous 2-D float32 array as one 16-byte
read-only load (PTX ``ld.global.nc.v4.f32``); ``ld4w(w, j)`` the same for a 1-D array; ``st4(a, row, j, v0,
v1, v2, v3)`` one 16-byte store (``st.global.v4.f32``). The caller guarantees 16-byte alignment of the
element at (row, j): base addresses 16-byte aligned, j and the row length multiples of 4 (the launchers
pick the vector kernels only then, ``vec_ok``). The loads are marked invariant: the arrays they read are
not written by the same kernel (outputs never alias inputs), which also lets the compiler issue them ahead
of earlier stores. Under the simulator they are plain element reads and writes (same values).
"""

from __future__ import annotations

from numba import cuda

from ._common import SIM

VEC = 4  # float32 elements per 128-bit access
ALIGN = 16  # bytes


def vec_ok(n: int, itemsize: int, *ptrs: int) -> bool:
    """Whether the vector kernels may run: float32 rows whose length is a multiple of 4 and arrays (given by
    base address; 0 = absent) that all start on a 16-byte boundary."""
    return itemsize == 4 and n % VEC == 0 and all(p % ALIGN == 0 for p in ptrs)


if SIM:

    @cuda.jit(device=True)
    def ld4(a, row, j):
        return a[row, j], a[row, j + 1], a[row, j + 2], a[row, j + 3]

    @cuda.jit(device=True)
    def ld4w(w, j):
        return w[j], w[j + 1], w[j + 2], w[j + 3]

    @cuda.jit(device=True)
    def st4(a, row, j, v0, v1, v2, v3):
        a[row, j] = v0
        a[row, j + 1] = v1
        a[row, j + 2] = v2
        a[row, j + 3] = v3

else:
    from llvmlite import ir
    from numba import types
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic

    _V4 = ir.VectorType(ir.FloatType(), VEC)
    _I32 = ir.IntType(32)

    def _vptr(context, builder, aty, arr, row, j):
        """Global-space <4 x float>* to element (row, j) of a C-contiguous array (1-D: element j)."""
        a = context.make_array(aty)(context, builder, value=arr)
        if aty.ndim == 2:
            n = cgutils.unpack_tuple(builder, a.shape, 2)[1]
            e = builder.add(builder.mul(row, n), j)
        else:
            e = j
        p = builder.bitcast(builder.gep(a.data, [e]), _V4.as_pointer())
        return builder.addrspacecast(p, ir.PointerType(_V4, 1))

    def _load(context, builder, ptr):
        v = builder.load(ptr, align=ALIGN)
        v.set_metadata("invariant.load", builder.module.add_metadata([]))
        return [builder.extract_element(v, ir.Constant(_I32, k)) for k in range(VEC)]

    @intrinsic
    def ld4(typingctx, a, row, j):
        ret = types.UniTuple(types.float32, VEC)
        sig = ret(a, types.uint64, types.uint64)

        def codegen(context, builder, sig, args):
            vals = _load(context, builder, _vptr(context, builder, sig.args[0], args[0], args[1], args[2]))
            return context.make_tuple(builder, ret, vals)

        return sig, codegen

    @intrinsic
    def ld4w(typingctx, w, j):
        ret = types.UniTuple(types.float32, VEC)
        sig = ret(w, types.uint64)

        def codegen(context, builder, sig, args):
            vals = _load(context, builder, _vptr(context, builder, sig.args[0], args[0], None, args[1]))
            return context.make_tuple(builder, ret, vals)

        return sig, codegen

    @intrinsic
    def st4(typingctx, a, row, j, v0, v1, v2, v3):
        sig = types.void(a, types.uint64, types.uint64, types.float32, types.float32, types.float32, types.float32)

        def codegen(context, builder, sig, args):
            v = ir.Constant(_V4, ir.Undefined)
            for k in range(VEC):
                v = builder.insert_element(v, args[3 + k], ir.Constant(_I32, k))
            builder.store(v, _vptr(context, builder, sig.args[0], args[0], args[1], args[2]), align=ALIGN)
            return context.get_dummy_value()

        return sig, codegen
