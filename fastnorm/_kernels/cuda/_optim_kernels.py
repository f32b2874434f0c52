"""The device code of the optimizer steps (``fastnorm._kernels.cuda.optim`` launches it): raw-address loads
and stores, the update formulas, the multi-tensor kernels for float32/float64 parameters and for
bfloat16/float16 parameters (float32 state, master copies, stochastic rounding).

The flat index space of a call is cut into chunks of ``chunk`` elements; block b takes chunks b, b + grid, ...;
a chunk walks the pieces of the tensors it covers (found by binary search in the offsets), threads striding
through each piece (coalesced), ``unroll`` elements per thread in flight (all loads issued before any store:
the compiler cannot reorder them across stores through raw pointers). Under the simulator, loads and
stores go through ctypes on the NumPy buffers behind the simulated device arrays.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
from numba import cuda, types

from ._common import SIM, bf16_to_f32, bits_f32, f32_bits, f32_to_bf16

FN_SGD, FN_ADAGRAD, FN_ADADELTA, FN_RMSPROP, FN_ADAM = 0, 1, 2, 3, 4
FN_WD, FN_MOMENTUM, FN_NESTEROV, FN_CENTERED, FN_AMSGRAD = 1, 2, 4, 8, 16


U = np.uint64


# ------------------------------------------------------------------------------------------ raw memory
def _make_mem(nbty, ctype):
    """Device functions ``ld(addr, i)`` / ``st(addr, i, v)``: element i of the array at address ``addr``."""
    if SIM:
        size = ctypes.sizeof(ctype)
        cast = {ctypes.c_double: np.float64, ctypes.c_float: np.float32}.get(ctype, int)
        put = int if cast is int else float

        @cuda.jit(device=True)
        def ld(addr, i):
            return cast(ctype.from_address(int(addr) + size * int(i)).value)

        @cuda.jit(device=True)
        def st(addr, i, v):
            ctype.from_address(int(addr) + size * int(i)).value = put(v)

        return ld, st
    try:
        from numba.cuda.extending import intrinsic
    except ImportError:  # older Numba: the CUDA target lives in numba core
        from numba.core.extending import intrinsic

    @intrinsic
    def ld(typingctx, addr, i):
        sig = nbty(types.uint64, types.uint64)

        def codegen(context, builder, sig, args):
            ptr = builder.inttoptr(args[0], context.get_value_type(nbty).as_pointer(1))  # global space
            return builder.load(builder.gep(ptr, [args[1]]))

        return sig, codegen

    @intrinsic
    def st(typingctx, addr, i, v):
        sig = types.void(types.uint64, types.uint64, nbty)

        def codegen(context, builder, sig, args):
            ptr = builder.inttoptr(args[0], context.get_value_type(nbty).as_pointer(1))  # global space
            builder.store(args[2], builder.gep(ptr, [args[1]]))
            return context.get_dummy_value()

        return sig, codegen

    return ld, st


_MEM: dict = {}


def _mem(f64: bool):
    if f64 not in _MEM:
        _MEM[f64] = _make_mem(types.float64, ctypes.c_double) if f64 else _make_mem(types.float32, ctypes.c_float)
    return _MEM[f64]


# ------------------------------------------------------------------------------------------ update math
# k = (lr, wd, sgn, eps, mu, rho, omr, alpha, oma, omb1, beta2, omb2, decay, c1, c2) rounded to the dtype;
# c1, c2 are the per-tensor scalars (SGD: b = c1*b + c2*g; Adagrad: clr; Adam: step_size, bc2).
# Same operations, in the same order, as the CPU loops in fastnorm_optim.h.
def _make_update(algo: int, flags: int, f64: bool = True):
    from numba import float32, float64

    nbt = float64 if f64 else float32
    wd_on = bool(flags & FN_WD)
    mom = bool(flags & FN_MOMENTUM)
    nest = bool(flags & FN_NESTEROV)
    centered = bool(flags & FN_CENTERED)
    ams = bool(flags & FN_AMSGRAD)

    @cuda.jit(device=True)
    def signed_grad(p, g, k):
        """The gradient as every update reads it: signed (maximize), plus weight_decay * p when on."""
        gi = k[2] * g
        if wd_on:
            gi += k[1] * p
        return gi

    if algo == FN_SGD:

        @cuda.jit(device=True)
        def update(p, g, s0, s1, s2, k):
            gi = signed_grad(p, g, k)
            if mom:
                bi = k[13] * s0 + k[14] * gi
                s0 = bi
                gi = gi + k[4] * bi if nest else bi
            return p - k[0] * gi, s0, s1, s2

    elif algo == FN_ADAGRAD:

        @cuda.jit(device=True)
        def update(p, g, s0, s1, s2, k):
            gi = signed_grad(p, g, k)
            si = s0 + gi * gi
            return p - k[13] * (gi / (math.sqrt(si) + k[3])), si, s1, s2

    elif algo == FN_ADADELTA:

        @cuda.jit(device=True)
        def update(p, g, s0, s1, s2, k):
            gi = signed_grad(p, g, k)
            sqi = k[5] * s0 + k[6] * (gi * gi)
            d = math.sqrt(s1 + k[3]) / math.sqrt(sqi + k[3]) * gi
            acc = k[5] * s1 + k[6] * (d * d)
            return p - k[0] * d, sqi, acc, s2

    elif algo == FN_RMSPROP:

        @cuda.jit(device=True)
        def update(p, g, s0, s1, s2, k):
            gi = signed_grad(p, g, k)
            sqi = k[7] * s0 + k[8] * (gi * gi)
            if centered:
                # both averages and their difference in double (exact products of two floats), as the CPU
                gad = float64(s1) + float64(k[8]) * (float64(gi) - float64(s1))
                sqd = float64(k[7]) * float64(s0) + float64(k[8]) * (float64(gi) * float64(gi))
                s1 = nbt(gad)
                avg = nbt(math.sqrt(sqd - gad * gad)) + k[3]
            else:
                avg = math.sqrt(sqi) + k[3]
            if mom:
                bi = k[4] * s2 + gi / avg
                return p - k[0] * bi, sqi, s1, bi
            return p - k[0] * (gi / avg), sqi, s1, s2

    else:

        @cuda.jit(device=True)
        def update(p, g, s0, s1, s2, k):
            gi = signed_grad(p, g, k)
            pi = p * k[12]
            mi = s0 + k[9] * (gi - s0)
            vi = k[10] * s1 + k[11] * (gi * gi)
            v_new = vi
            if ams:
                vi = s2 if s2 > vi else vi
                s2 = vi
            return pi - k[13] * (mi / (math.sqrt(vi) / k[14] + k[3])), mi, v_new, s2

    return update


def _streams(algo: int, flags: int) -> tuple[bool, bool, bool]:
    """Which state rows (2, 3, 4 of the table) the options read and write."""
    if algo == FN_SGD:
        return bool(flags & FN_MOMENTUM), False, False
    if algo == FN_ADAGRAD:
        return True, False, False
    if algo == FN_ADADELTA:
        return True, True, False
    if algo == FN_RMSPROP:
        return True, bool(flags & FN_CENTERED), bool(flags & FN_MOMENTUM)
    return True, True, bool(flags & FN_AMSGRAD)


def _device_parts(algo: int, flags: int, f64: bool):
    """Device functions shared by the float and the 16-bit kernels: ``locate(off, lo)`` (the tensor holding
    flat element ``lo``: the last t with off[t] <= lo, by binary search), ``consts(...)`` (the update's
    constants in the compute type; c1, c2 from the per-tensor table or the uniform values) and
    ``element(p, g, a0, a1, a2, i, k)`` (one element: its state at i loaded, updated with p and g, stored;
    the new p returned)."""
    T = np.float64 if f64 else np.float32
    ld, st = _mem(f64)
    update = _make_update(algo, flags, f64)
    use0, use1, use2 = _streams(algo, flags)
    zero, one = U(0), U(1)

    @cuda.jit(device=True)
    def element(p, g, a0, a1, a2, i, k):
        s0 = ld(a0, i) if use0 else T(0)
        s1 = ld(a1, i) if use1 else T(0)
        s2 = ld(a2, i) if use2 else T(0)
        p, s0, s1, s2 = update(p, g, s0, s1, s2, k)
        if use0:
            st(a0, i, s0)
        if use1:
            st(a1, i, s1)
        if use2:
            st(a2, i, s2)
        return p

    @cuda.jit(device=True)
    def locate(off, lo):
        a = zero
        b = U(off.shape[0] - 1)
        while b - a > one:
            mid = (a + b) // U(2)
            if U(off[mid]) <= lo:
                a = mid
            else:
                b = mid
        return a

    @cuda.jit(device=True)
    def consts(pt, t, lr, wd, sgn, eps, mu, rho, alpha, omb1, beta2, decay, u0, u1):
        per_tensor = pt.size > 0
        c1 = T(pt[t, 0]) if per_tensor else T(u0)
        c2 = T(pt[t, pt.shape[1] - 1]) if per_tensor else T(u1)
        return (
            T(lr),
            T(wd),
            T(sgn),
            T(eps),
            T(mu),
            T(rho),
            T(1.0 - rho),
            T(alpha),
            T(1.0 - alpha),
            T(omb1),
            T(beta2),
            T(1.0 - beta2),
            T(decay),
            c1,
            c2,
        )

    return locate, consts, element


def _chunked(piece, algo: int, flags: int, f64: bool, block: int, chunk: int):
    """The multi-tensor kernel around ``piece(tab, t, pa, ga, a0, a1, a2, i, stop, k)``, the loop over the
    elements i, i + block, ... < stop of tensor t (``pa``, ``ga``, ``a0``.. its parameter, gradient and state
    addresses, 0 for a stream the options do not use; ``k`` the update's constants): block b takes chunks b,
    b + grid, ... of ``chunk`` flat elements and hands ``piece`` each tensor's part of them."""
    locate, consts, _ = _device_parts(algo, flags, f64)
    use0, use1, use2 = _streams(algo, flags)
    cu, zero, one = U(chunk), U(0), U(1)

    def optim_kernel(tab, off, pt, lr, wd, sgn, eps, mu, rho, alpha, omb1, beta2, decay, u0, u1):
        total = U(off[off.shape[0] - 1])
        tid = U(cuda.threadIdx.x)
        c = U(cuda.blockIdx.x)
        grid = U(cuda.gridDim.x)
        while c * cu < total:
            lo = c * cu
            hi = min(total, lo + cu)
            t = locate(off, lo)
            while lo < hi:
                end = min(hi, U(off[t + one]))
                if end > lo:
                    base = U(off[t])
                    a0 = U(tab[2, t]) if use0 else zero
                    a1 = U(tab[3, t]) if use1 else zero
                    a2 = U(tab[4, t]) if use2 else zero
                    k = consts(pt, t, lr, wd, sgn, eps, mu, rho, alpha, omb1, beta2, decay, u0, u1)
                    piece(tab, t, U(tab[0, t]), U(tab[1, t]), a0, a1, a2, lo - base + tid, end - base, k)
                    lo = end
                t += one
            c += grid

    return optim_kernel


def _float_parts(algo: int, flags: int, f64: bool):
    """(Numba element type, ``ld``, ``st``, ``update``, ``element``, the streams used) of the float32/float64
    kernels."""
    from numba import float32, float64

    _, _, element = _device_parts(algo, flags, f64)
    return (float64 if f64 else float32, *_mem(f64), _make_update(algo, flags, f64), element, _streams(algo, flags))


def _make_kernel(algo: int, flags: int, f64: bool, block: int, unroll: int, chunk: int):
    """The kernel for float32/float64 parameters: ``unroll`` elements per thread in flight."""
    nbt, ld, st, update, element, (use0, use1, use2) = _float_parts(algo, flags, f64)
    bu, uu, one = U(block), U(unroll), U(1)

    @cuda.jit(device=True)
    def piece(tab, t, pa, ga, a0, a1, a2, i, stop, k):
        pv = cuda.local.array(unroll, nbt)
        gv = cuda.local.array(unroll, nbt)
        v0 = cuda.local.array(unroll, nbt)
        v1 = cuda.local.array(unroll, nbt)
        v2 = cuda.local.array(unroll, nbt)
        while i + (uu - one) * bu < stop:
            for q in range(unroll):
                j = i + U(q) * bu
                pv[q] = ld(pa, j)
                gv[q] = ld(ga, j)
                if use0:
                    v0[q] = ld(a0, j)
                if use1:
                    v1[q] = ld(a1, j)
                if use2:
                    v2[q] = ld(a2, j)
            for q in range(unroll):
                pv[q], v0[q], v1[q], v2[q] = update(pv[q], gv[q], v0[q], v1[q], v2[q], k)
            for q in range(unroll):
                j = i + U(q) * bu
                st(pa, j, pv[q])
                if use0:
                    st(a0, j, v0[q])
                if use1:
                    st(a1, j, v1[q])
                if use2:
                    st(a2, j, v2[q])
            i += uu * bu
        while i < stop:
            st(pa, i, element(ld(pa, i), ld(ga, i), a0, a1, a2, i, k))
            i += bu

    return _chunked(piece, algo, flags, f64, block, chunk)


_SIG = (
    "void(int64[:, ::1], int64[::1], float64[:, ::1], float64, float64, float64, float64, float64, float64, "
    "float64, float64, float64, float64, float64, float64)"
)


# ------------------------------------------------------------------------------------------ 16-bit parameters
# bfloat16 / float16 parameters (raw 16-bit loads and stores) with float32 state, gradients in the
# parameter's format or float32, a float32 master copy (table row 5) or stochastic rounding with per-tensor
# keys (row 6); row 7: 1 where the gradient is float32. Conversions are bit-exact with fastnorm_half.h
# (round to nearest even, NaN kept), stochastic rounding and its random bits with fastnorm_optim.h.
FN_BF16, FN_F16 = 0, 1
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_HALF_ROWS = 8
_HELPERS: dict = {}


def _half_helpers():
    """Device functions ``widen(h, fmt)``, ``rne(f, fmt)``, ``rsr(f, fmt, r)`` (stochastic, 32 random bits
    ``r``), ``rbits(key, i)`` (the random bits of element i of the tensor with key ``key``)."""
    if _HELPERS:
        return _HELPERS["all"]
    bits, flt = f32_bits, bits_f32  # _common's bit casts (libdevice on a GPU, NumPy views in the simulator)
    f32 = np.float32

    @cuda.jit(device=True)
    def widen(h, fmt):
        h = int(h)
        if fmt == FN_BF16:
            return bf16_to_f32(h)
        sign = (h & 0x8000) << 16
        em = h & 0x7FFF
        if em >= 0x7C00:
            u = 0x7F800000 | ((em & 0x3FF) << 13)
        elif em >= 0x0400:
            u = (em << 13) + ((127 - 15) << 23)
        else:
            u = bits(f32(em) * f32(5.9604644775390625e-08))
        return flt(u | sign)

    @cuda.jit(device=True)
    def rne(f, fmt):
        if fmt == FN_BF16:
            return int(f32_to_bf16(f))
        u = bits(f)
        sign = (u >> 16) & 0x8000
        a = u & 0x7FFFFFFF
        if a >= 0x47800000:
            o = 0x7E00 if a > 0x7F800000 else 0x7C00
        elif a < 0x38800000:
            o = bits(flt(a) + f32(0.5)) - 0x3F000000
        else:
            o = (a + ((15 - 127) << 23) + 0xFFF + ((a >> 13) & 1)) >> 13
        return o | sign

    @cuda.jit(device=True)
    def rsr(f, fmt, r):
        u = bits(f)
        if fmt == FN_BF16:
            if (u & 0x7FFFFFFF) >= 0x7F800000:
                return rne(f, fmt)
            return (u + (r >> 16)) >> 16
        h = rne(f, fmt)
        a = abs(f32(f))
        if not a < f32(65504.0):
            return h
        ha = abs(widen(h, fmt))
        if ha == a:
            return h
        lo = (h & 0x7FFF) - (1 if ha > a else 0)
        flo = widen(lo, fmt)
        fhi = widen(lo + 1, fmt)
        p = (a - flo) / (fhi - flo)
        q = f32(r >> 8) * f32(5.9604644775390625e-08)
        return (h & 0x8000) | (lo + 1 if q < p else lo)

    if SIM:

        @cuda.jit(device=True)
        def rbits(key, i):
            z = (int(key) + (int(i) + 1) * _GOLDEN) & _MASK64
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
            return (z ^ (z >> 31)) >> 32

    else:
        c0, c1, c2 = np.uint64(_GOLDEN), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
        s30, s27, s31, s32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)

        @cuda.jit(device=True)
        def rbits(key, i):
            z = np.uint64(key) + (np.uint64(i) + np.uint64(1)) * c0
            z = (z ^ (z >> s30)) * c1
            z = (z ^ (z >> s27)) * c2
            return types.int64((z ^ (z >> s31)) >> s32)

    _HELPERS["all"] = (widen, rne, rsr, rbits)
    return _HELPERS["all"]


_MEM16: list = []


def _mem16():
    if not _MEM16:
        _MEM16.append(_make_mem(types.uint16, ctypes.c_uint16))
    return _MEM16[0]


def _make_half_kernel(algo: int, flags: int, fmt: int, master: bool, sr: bool, block: int, chunk: int):
    """The multi-tensor kernel for 16-bit parameters (one element per thread per iteration)."""
    T = np.float32
    ld, st = _mem(False)
    ld16, st16 = _mem16()
    widen, rne, rsr, rbits = _half_helpers()
    _, _, element = _device_parts(algo, flags, False)
    bu, zero = U(block), U(0)

    @cuda.jit(device=True)
    def piece(tab, t, pa, ga, a0, a1, a2, i, stop, k):
        ma = U(tab[5, t]) if master else zero
        key = tab[6, t]
        g32 = tab[7, t] != 0
        while i < stop:
            g = ld(ga, i) if g32 else widen(ld16(ga, i), fmt)
            p = ld(ma, i) if master else widen(ld16(pa, i), fmt)
            p = element(T(p), T(g), a0, a1, a2, i, k)
            if master:
                st(ma, i, p)
            if sr:
                st16(pa, i, np.uint16(rsr(p, fmt, rbits(key, i))))
            else:
                st16(pa, i, np.uint16(rne(p, fmt)))
            i += bu

    return _chunked(piece, algo, flags, False, block, chunk)


def _rows_used(algo: int, flags: int) -> int:
    s0, s1, s2 = _streams(algo, flags)
    return 0b11 | (s0 << 2) | (s1 << 3) | (s2 << 4)


def _shape(code, half, n_rows, used):
    """The table's row count and used rows for parameters of dtype ``code`` (16-bit: 8 rows, row 5 the
    master copies when ``half[0]``)."""
    if code < 2:
        if code not in (0, 1):
            raise ValueError(f"optimizer kernel: unknown dtype code {code}")
        return n_rows, used
    if half is None or len(half) != 2:
        raise ValueError("optimizer kernel: 16-bit parameters need half=(master, stochastic)")
    return _HALF_ROWS, used | (0b100000 if half[0] else 0)
