"""LocalResponseNorm CUDA kernels on an (N, C, L) view; launchers with the CPU kernels' signatures
(fastnorm/_kernels/cpu/_lrn.pyx).

One thread per element, the window summed directly (``size`` loads from cache per element): every window
sum is formed from its own values only, so a NaN or inf reaches exactly the outputs whose window holds it,
as in torch's computation. Sums in the accumulation type (float32 for float16/float32 inputs). The CPU
kernels' ``scratch`` is not used here (``lrn_scratch_len`` asks for one element per row).

    forward:  scale = k + alpha/size * sum_{c' in [c - size//2, c + (size-1)//2]} x_{c'}^2,  y = x * scale^-beta
    backward: dx_j = dy_j * scale_j^-beta - 2*alpha*beta/size * x_j * sum_{c in [j - (size-1)//2, j + size//2]}
              dy_c * y_c / scale_c
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..._backend._detect import dtype_of as _dtype
from ._common import ACC, SIM, Kernel, arr, cached, current_stream, kdev, launcher, loader, register_cap, storer

U = np.uint64
BLOCK = 64 if SIM else 256


def _make(dtype, backward: bool, scale_dtype=None):
    """Data (x, y, dy, dx) in ``dtype`` (bfloat16 as uint16 bits), ``scale`` in ``scale_dtype`` (default: the
    same); sums in ``ACC[dtype]``, 16-bit outputs rounded once."""
    acc = ACC[np.dtype(dtype)]
    ld, st = loader(dtype), storer(dtype)
    sdt = np.dtype(dtype if scale_dtype is None else scale_dtype)
    lds, sts = loader(sdt), storer(sdt)

    @cuda.jit(device=True)
    def window(af, bf, sf, i, C, L, before, after):
        """The sum over the channels c - before .. c + after (clipped) of element i's channel c: of x^2
        (forward, af = x), or of dy * y / scale (backward, af = dy, bf = y)."""
        c = (i // L) % C
        lo = c - before if c >= before else U(0)
        hi = min(C - U(1), c + after)
        s = acc(0)
        cc = lo
        while cc <= hi:
            e = i - (c - cc) * L if cc <= c else i + (cc - c) * L
            if backward:
                s += ld(af[e]) * ld(bf[e]) / acc(lds(sf[e]))
            else:
                v = ld(af[e])
                s += v * v
            cc += U(1)
        return s

    def lrn_fwd(xf, yf, sf, nc, nl, size, a, beta, k):
        i = U(cuda.grid(1))
        while i < U(xf.shape[0]):
            sc = acc(k) + acc(a) * window(xf, xf, sf, i, U(nc), U(nl), U(size // 2), U((size - 1) // 2))
            sf[i] = sts(sc)
            yf[i] = st(ld(xf[i]) * math.pow(sc, acc(-beta)))
            i += U(cuda.gridsize(1))

    def lrn_bwd(dyf, xf, yf, sf, dxf, nc, nl, size, coef, beta):
        i = U(cuda.grid(1))
        while i < U(xf.shape[0]):
            s = window(dyf, yf, sf, i, U(nc), U(nl), U((size - 1) // 2), U(size // 2))
            dxf[i] = st(ld(dyf[i]) * math.pow(acc(lds(sf[i])), acc(-beta)) - acc(coef) * ld(xf[i]) * s)
            i += U(cuda.gridsize(1))

    return lrn_bwd if backward else lrn_fwd


def _kernel(dt, backward: bool, sdt=None) -> Kernel:
    dt = np.dtype(dt)
    sdt = dt if sdt is None else np.dtype(sdt)
    a1, s1 = arr(dt, 1), arr(sdt, 1)
    if backward:
        sig = f"void({a1}, {a1}, {a1}, {s1}, {a1}, int64, int64, int64, float64, float64)"
    else:
        sig = f"void({a1}, {a1}, {s1}, int64, int64, int64, float64, float64, float64)"
    return cached(
        ("lrn", backward, dt, sdt), lambda: Kernel(_make(dt, backward, sdt), sig, register_cap(BLOCK, ACC[dt]))
    )


def _grid(k: Kernel, total: int) -> int:
    return max(1, min(-(-total // BLOCK), k.resident_blocks(BLOCK) * 4))


def _flat(a):
    return a.reshape(a.size)


@launcher
def lrn_scratch_len(lo: int, hi: int) -> int:
    """Scratch elements per thread row: the GPU kernels need none (one keeps the array non-empty)."""
    return 1


def _run(backward: bool, x, scale, arrays, *scalars) -> None:
    """Launch the forward or backward kernel over the flat ``arrays`` (x's shape) and the scalars after
    (C, L, size, ...)."""
    dt, sdt = _dtype(x), _dtype(scale)
    arrays = [kdev(a) for a in arrays]
    if arrays[0].size == 0:
        return
    kern = _kernel(dt, backward, sdt)
    flat = [_flat(a) for a in arrays]
    kern.launch(_grid(kern, flat[0].shape[0]), BLOCK, current_stream(), *flat, *scalars)


@launcher
def local_response_norm_forward(x, y, scale, scratch, size, alpha, beta, k, n_threads):
    """IN x (N, C, L); OUT y, scale (N, C, L) (scale in x's dtype or, for 16-bit x, float32); SCRATCH unused."""
    _, c, length = x.shape
    _run(False, x, scale, (x, y, scale), c, length, int(size), float(alpha) / size, float(beta), float(k))


@launcher
def local_response_norm_backward(dy, x, y, scale, dx, scratch, size, alpha, beta, n_threads):
    """IN dy, x, y, scale (N, C, L); OUT dx (N, C, L); SCRATCH unused."""
    _, c, length = x.shape
    coef = 2.0 * float(alpha) * float(beta) / size
    _run(True, x, scale, (dy, x, y, scale, dx), c, length, int(size), coef, float(beta))
