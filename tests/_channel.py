"""Helpers shared by the BatchNorm / InstanceNorm / GroupNorm tests."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from ._util import assert_matches_reference, numeric_grad

AFFINE = ["none", "weight", "bias", "both"]


def affine_params(rng, c, dtype, affine):
    """(weight, bias) for an affine option; weight away from 0 so gradients are not degenerate."""
    w = (rng.normal(size=c) + 1.5).astype(dtype) if affine in ("weight", "both") else None
    b = rng.normal(size=c).astype(dtype) if affine in ("bias", "both") else None
    return w, b


def running_stats(rng, c, dtype):
    return rng.normal(size=c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)


def copy(a):
    return None if a is None else np.array(a, copy=True)


def as64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def check_all(got, ref64, ref_lowp, names):
    """Each output against the float64 reference (float32: within slack x the float32 reference's error)."""
    assert len(got) == len(ref64) == len(names)
    for i, name in enumerate(names):
        lowp = None if ref_lowp is None else ref_lowp[i]
        assert_matches_reference(got[i], ref64[i], lowp, name=name)


def fd_check(forward, backward, arrays, rng, rtol=1e-5, atol=1e-7):
    """Reference backward against central finite differences of the reference forward, in float64.

    forward(*arrays) -> y; backward(dy, *arrays) -> one gradient per array (None where the array is None).
    """
    y = forward(*arrays)
    dy = rng.normal(size=y.shape)
    grads = backward(dy, *arrays)
    assert len(grads) == len(arrays)
    for i, a in enumerate(arrays):
        if a is None:
            assert grads[i] is None
            continue
        num = numeric_grad(forward, arrays, i, dy)
        np.testing.assert_allclose(grads[i], num, rtol=rtol, atol=atol, err_msg=f"gradient of argument {i}")


def assert_raises_unchanged(exc, call, watched, match=None):
    """``call()`` raises ``exc`` and leaves every array in ``watched`` bitwise unchanged."""
    before = [np.array(a, copy=True) for a in watched]
    with pytest.raises(exc, match=match):
        call()
    for a, b in zip(watched, before, strict=True):
        np.testing.assert_array_equal(a, b)


def strided(a):
    """A non-contiguous view with the values of ``a`` (every other element of a twice-as-long last axis)."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    big[..., ::2] = a
    v = big[..., ::2]
    assert not v.flags.c_contiguous and np.array_equal(v, a)
    return v


def readonly(a):
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


class FakeCudaArray:
    """Looks like a GPU array to the dispatcher; mixing it with NumPy arrays must raise before any use."""

    def __init__(self, shape, dtype=np.float32):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (0, False), "version": 3}


@contextlib.contextmanager
def streaming_stores():
    """Make the channel-norm kernels write every output with non-temporal stores (normally only >= 16 MB)."""
    from fastnorm._kernels.cpu import _channel_norm

    old = _channel_norm.set_stream_min_bytes(0)
    try:
        yield
    finally:
        _channel_norm.set_stream_min_bytes(old)
