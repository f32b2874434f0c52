"""Small device helpers of the CUDA backend: fill a buffer, gather a strided array into a contiguous one."""

from __future__ import annotations

import numpy as np
from numba import cuda, from_dtype

from ._common import Kernel, cached, current_stream, sm_count


def _nbname(dt) -> str:
    return str(from_dtype(np.dtype(dt)))


def _grid(size: int, block: int) -> int:
    return max(1, min(-(-size // block), 32 * sm_count()))


def _make_fill(dt):
    cast = np.dtype(dt).type

    def fill_kernel(dst, value):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        v = cast(value)
        while i < dst.shape[0]:
            dst[i] = v
            i += step

    return fill_kernel


def fill(dst, value: float) -> None:
    """dst[:] = value for a contiguous 1-D device array."""
    dt = np.dtype(dst.dtype)
    k = cached(("fill", dt), lambda: Kernel(_make_fill(dt), f"void({_nbname(dt)}[::1], float64)"))
    k.launch(_grid(dst.shape[0], 256), 256, current_stream(), dst, float(value))


def _make_gather(dt):
    def gather_kernel(src, dst, shape, est, base):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        nd = shape.shape[0]
        while i < dst.shape[0]:
            r = i
            off = base
            for d in range(nd - 1, -1, -1):
                q = r // shape[d]
                off += (r - q * shape[d]) * est[d]
                r = q
            dst[i] = src[off]
            i += step

    return gather_kernel


def gather(src, iface: dict, out):
    """Copy the strided device array ``src`` (its array interface ``iface``) into contiguous ``out``."""
    dt = np.dtype(iface["typestr"])
    item = dt.itemsize
    shape = tuple(iface["shape"])
    strides = tuple(iface["strides"])
    if any(s % item for s in strides):
        raise ValueError("fastnorm: cannot copy a CUDA array whose strides are not multiples of its itemsize")
    est = [s // item for s in strides]
    ptr = iface["data"][0]
    # elements from the lowest address spanned to element (0, ..., 0)
    base = -sum((n - 1) * s for n, s in zip(shape, est, strict=True) if s < 0)
    span = 1 + sum((n - 1) * abs(s) for n, s in zip(shape, est, strict=True))
    view = cuda.from_cuda_array_interface(
        {"shape": (span,), "strides": None, "typestr": dt.str, "data": (ptr - base * item, False),
         "version": 2},
        owner=src,
        sync=False,
    )
    stream = current_stream()
    d_shape = cuda.to_device(np.asarray(shape, dtype=np.int64), stream=stream)
    d_est = cuda.to_device(np.asarray(est, dtype=np.int64), stream=stream)
    flat = out.reshape(out.size)
    name = _nbname(dt)
    k = cached(
        ("gather", dt),
        lambda: Kernel(_make_gather(dt), f"void({name}[::1], {name}[::1], int64[::1], int64[::1], int64)"),
    )
    k.launch(_grid(flat.shape[0], 256), 256, stream, view, flat, d_shape, d_est, base)
    return out
