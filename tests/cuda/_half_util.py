"""Helpers of the 16-bit CUDA tests: device arrays, the kernel namespace, the DESIGN.md error criterion for
bfloat16/float16 results."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from .._util import assert_close_to_ref

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
HALF = (BF16, F16)


def stat(dt):
    return F32 if np.dtype(dt) in HALF else np.dtype(dt)


def to_dev(cuda, *arrays):
    out = tuple(None if a is None else cuda.to_device(np.array(a, order="C")) for a in arrays)
    return out if len(out) != 1 else out[0]


def host(a):
    return None if a is None else a.copy_to_host()


def backend():
    from fastnorm._dispatch import cuda_backend

    return cuda_backend()


def kernels():
    import fastnorm._kernels.cuda as K

    return K


def empty(cuda, shape, dtype):
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def lowp(a, dt):
    """The float32 (or float64) result of a reference evaluated in the kernel's precision, rounded to the
    data dtype ``dt`` when that is 16-bit (the "other" of the criterion when torch is not used)."""
    return None if a is None else np.asarray(a).astype(dt)


def close(got, other, ref, name=""):
    """DESIGN.md's criterion for any dtype: 16-bit results are compared in float32 with the slack counted
    in units of the 16-bit format (8 of them at the reference's scale)."""
    got = np.asarray(got)
    dt = got.dtype
    assert dt in (BF16, F16, F32, F64), (name, dt)
    ulps = 8.0
    if dt in HALF:
        ulps = 8.0 * float(ml_dtypes.finfo(dt).eps) / float(np.finfo(np.float32).eps)
        got = got.astype(np.float32)
        other = np.asarray(other).astype(np.float32)
    assert_close_to_ref(got, np.asarray(other), np.asarray(ref, np.float64), name=name, ulps=ulps)


def f32(*arrays):
    return tuple(None if a is None else np.asarray(a, np.float32) for a in arrays)


def f64(*arrays):
    return tuple(None if a is None else np.asarray(a, np.float64) for a in arrays)


def data(rng, shape, dt, offset=0.0):
    return (offset + rng.standard_normal(shape)).astype(dt)


def param(rng, n, dt, bias=False):
    v = rng.standard_normal(n) if bias else 1 + 0.5 * rng.standard_normal(n)
    return v.astype(dt)
