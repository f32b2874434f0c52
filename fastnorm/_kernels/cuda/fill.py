"""Small device helpers of the CUDA backend: fill a buffer, gather a strided array into a contiguous one."""

from __future__ import annotations

import numpy as np
from numba import cuda, from_dtype

from ._common import BF16, F16, SIM, Kernel, cached, current_stream, kview, loader, nbname, sm_count
from ._common import f32_to_bf16 as _to_bf16


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
    """dst[:] = value for a contiguous 1-D device array (bfloat16: its uint16 view, filled with the bits of
    bfloat16(value))."""
    dt = np.dtype(dst.dtype)
    if dt == BF16:
        value = float(np.asarray(value, BF16).view(np.uint16))
        dst, dt = kview(dst), np.dtype(np.uint16)
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
    # a copy moves bits: any dtype as the unsigned integer of its width (bfloat16's typestr is only 'V2')
    item = np.dtype(iface["typestr"]).itemsize
    dt = np.dtype(f"u{item}")
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
        {"shape": (span,), "strides": None, "typestr": dt.str, "data": (ptr - base * item, False), "version": 2},
        owner=src,
        sync=False,
    )
    stream = current_stream()
    d_shape = cuda.to_device(np.asarray(shape, dtype=np.int64), stream=stream)
    d_est = cuda.to_device(np.asarray(est, dtype=np.int64), stream=stream)
    flat = out.reshape(out.size)
    if flat.dtype != dt:
        flat = flat.view(dt)
    name = _nbname(dt)
    k = cached(
        ("gather", dt),
        lambda: Kernel(_make_gather(dt), f"void({name}[::1], {name}[::1], int64[::1], int64[::1], int64)"),
    )
    k.launch(_grid(flat.shape[0], 256), 256, stream, view, flat, d_shape, d_est, base)
    return out


# ------------------------------------------------------------------------------------------ conversions
def _make_convert(src_dt, dst_dt):
    """dst[i] = src[i] converted: widening exact; into float16 one rounding to nearest even (NumPy's
    astype), into bfloat16 through float32 (ml_dtypes' astype), float32/float64 plain casts."""
    load = loader(src_dt)
    if dst_dt == BF16:
        cvt = _to_bf16
    elif dst_dt == F16:

        @cuda.jit(device=True)
        def cvt(v):
            return np.float16(v)

    else:
        out = dst_dt.type

        @cuda.jit(device=True)
        def cvt(v):
            return out(v)

    def convert_kernel(src, dst):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < dst.shape[0]:
            dst[i] = cvt(load(src[i]))
            i += step

    return convert_kernel


def _convert_kernel(sdt: np.dtype, ddt: np.dtype) -> Kernel:
    return cached(
        ("convert", sdt, ddt), lambda: Kernel(_make_convert(sdt, ddt), f"void({nbname(sdt)}[::1], {nbname(ddt)}[::1])")
    )


def convert(src, dst, src_dtype, dst_dtype) -> None:
    """``dst[:] = src`` converting ``src_dtype`` to ``dst_dtype`` (float16/32/64, bfloat16), for contiguous
    1-D device arrays of the same length as the kernels take them (bfloat16 as uint16: ``kdev``)."""
    n = dst.shape[0]
    if n == 0:
        return
    block = 64 if SIM else 256
    k = _convert_kernel(np.dtype(src_dtype), np.dtype(dst_dtype))
    k.launch(_grid(n, block), block, current_stream(), src, dst)


_plans: dict = {}


def convert_plan(src_dtype, dst_dtype, n: int):
    """``convert``'s launch for ``n`` > 0 elements as a launch plan (``_launch.Plan``, real GPU only): the
    same kernel and configuration, slots (src, dst)."""
    from ._launch import ArgTemplate, Plan, core_kernel

    sdt, ddt = np.dtype(src_dtype), np.dtype(dst_dtype)
    key = (sdt, ddt, n)
    plan = _plans.get(key)
    if plan is None:
        if len(_plans) >= 256:
            _plans.clear()
        tpl = ArgTemplate()
        slots = (tpl.array((n,), sdt.itemsize), tpl.array((n,), ddt.itemsize))
        plan = _plans[key] = Plan(core_kernel(_convert_kernel(sdt, ddt)), _grid(n, 256), 256, tpl, slots)
    return plan
