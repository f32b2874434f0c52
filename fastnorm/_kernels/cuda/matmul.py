"""out = a @ b on the GPU for the public layer's cosine_linear (``CudaBackend.matmul``): PyTorch's or CuPy's
GEMM (cuBLAS) on zero-copy views when either is importable, else a plain shared-memory tiled kernel."""

from __future__ import annotations

import sys

import numpy as np
from numba import cuda

from ._common import ACC, SIM, Kernel, arr, cached, current_stream, register_cap

TILE = 16


def _make_gemm(dtype):
    acc = ACC[np.dtype(dtype)]
    out = np.dtype(dtype).type
    from numba import float32, float64

    acc_nb = float32 if acc is np.float32 else float64

    def gemm(a, b, c):
        sa = cuda.shared.array((TILE, TILE), acc_nb)
        sb = cuda.shared.array((TILE, TILE), acc_nb)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row = cuda.blockIdx.y * TILE + ty
        col = cuda.blockIdx.x * TILE + tx
        m, kk = a.shape
        n = b.shape[1]
        s = acc(0)
        for t0 in range(0, kk, TILE):
            sa[ty, tx] = acc(a[row, t0 + tx]) if row < m and t0 + tx < kk else acc(0)
            sb[ty, tx] = acc(b[t0 + ty, col]) if t0 + ty < kk and col < n else acc(0)
            cuda.syncthreads()
            for q in range(TILE):
                s += sa[ty, q] * sb[q, tx]
            cuda.syncthreads()
        if row < m and col < n:
            c[row, col] = out(s)

    return gemm


def matmul(a, b, out, contiguous) -> None:
    """out = a @ b (2-D); ``contiguous`` makes a C-contiguous device array of its argument."""
    if SIM:
        np.matmul(a._ary, b._ary, out=out._ary)
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        ta, tb, to = (torch.as_tensor(x, device="cuda") for x in (a, b, out))
        torch.matmul(ta, tb, out=to)
        return
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        cupy.matmul(cupy.asarray(a), cupy.asarray(b), out=cupy.asarray(out))
        return
    a, b = contiguous(a), contiguous(b)
    m, n = out.shape
    if m == 0 or n == 0:
        return
    dt = np.dtype(out.dtype)
    a2 = arr(dt, 2)
    regs = register_cap(TILE * TILE, ACC[dt])
    k = cached(("gemm", dt), lambda: Kernel(_make_gemm(dt), f"void({a2}, {a2}, {a2})", regs))
    k.launch2d((-(-n // TILE), -(-m // TILE)), (TILE, TILE), current_stream(), a, b, out)
