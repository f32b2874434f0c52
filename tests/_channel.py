"""Helpers shared by the BatchNorm / InstanceNorm / GroupNorm tests."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

from ._util import assert_close_to_ref, numeric_grad

AFFINE = ["none", "weight", "bias", "both"]
STATS = ["y", "mean", "rstd", "running_mean", "running_var"]
GRADS = ["dx", "dweight", "dbias"]
# the option that chooses batch statistics (training / use_input_stats) per op
_TRAINING = {"batch_norm": "training", "instance_norm": "use_input_stats"}


def affine_params(rng, c, dtype, affine):
    """(weight, bias) for an affine option; weight away from 0 so gradients are not degenerate."""
    w = (rng.normal(size=c) + 1.5).astype(dtype) if affine in ("weight", "both") else None
    b = rng.normal(size=c).astype(dtype) if affine in ("bias", "both") else None
    return w, b


def running_stats(rng, c, dtype):
    return rng.normal(size=c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)


def make(rng, shape, dtype, affine="both", offset=0.7, axis=1):
    """(x, weight, bias, running_mean, running_var) with ``shape[axis]`` channels; x ~ N(offset, 1.5^2).
    GroupNorm takes the first three (the running statistics are drawn last, so x, weight, bias are the same)."""
    c = shape[axis]
    x = (rng.normal(size=shape) * 1.5 + offset).astype(dtype)
    w, b = affine_params(rng, c, dtype, affine)
    rm, rv = running_stats(rng, c, dtype)
    return x, w, b, rm, rv


def forward_all(op, x, w, b, rm, rv, mode, **kw):
    """BatchNorm or InstanceNorm forward in ``mode`` ("train", "train_no_running" or "eval"): the kernel's,
    the float64 reference's and the same-dtype reference's outputs, each followed by its running statistics."""
    kw[_TRAINING[op]] = mode != "eval"
    if mode == "train_no_running":
        rm = rv = None
    rm_k, rv_k, rm_64, rv_64, rm_lp, rv_lp = copy(rm), copy(rv), as64(rm), as64(rv), copy(rm), copy(rv)
    got = getattr(fastnorm, f"{op}_forward")(x, w, b, rm_k, rv_k, **kw)
    ref = getattr(R, f"{op}_forward")(as64(x), as64(w), as64(b), rm_64, rv_64, **kw)
    lowp = getattr(R, f"{op}_forward")(x, w, b, rm_lp, rv_lp, **kw)
    return (*got, rm_k, rv_k), (*ref, rm_64, rv_64), (*lowp, rm_lp, rv_lp)


def check_backward(op, got, dy, x, mean, rstd, w, b, *args, **kw):
    """The kernel's gradients ``got`` against the float64 and the same-dtype reference backward of ``op`` on
    the same saved statistics (``args``: num_groups for group_norm)."""
    ref = getattr(R, f"{op}_backward")
    g64 = ref(*map(as64, (dy, x, mean, rstd)), *args, as64(w), as64(b), **kw)
    check_all(got, g64, ref(dy, x, mean, rstd, *args, w, b, **kw), GRADS)


def copy(a):
    return None if a is None else np.array(a, copy=True)


def as64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def check_all(got, ref64, ref_lowp, names):
    """Each output against the float64 reference: float32 within 2x the float32 reference's error (DESIGN.md's
    criterion), float64 to about 1e-10 (``ref_lowp`` is then the float64 reference itself: no comparator)."""
    assert len(got) == len(ref64) == len(names)
    for i, name in enumerate(names):
        lowp = None if ref_lowp is None or got[i] is None or got[i].dtype == np.float64 else ref_lowp[i]
        assert_close_to_ref(got[i], lowp, ref64[i], name=name)


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


def caller(fn, **defaults):
    """For tables of bad input: ``caller(fn, **defaults)(**changes)`` is a no-argument call of ``fn`` with the
    default arguments updated by ``changes``."""
    return lambda **changes: lambda: fn(**{**defaults, **changes})


def bad_forward_table(op, x, w, b, rm, rv, stat_shape):
    """For a table of bad forward input of BatchNorm/InstanceNorm: ``(fwd, watched)``, where ``fwd(**changes)``
    calls the op with the running statistics and out= buffers prefilled with 7 (``caller``), and ``watched``
    is [running_mean, running_var, y, mean, rstd]: every array the op must leave unchanged on error."""
    y, mean, rstd = np.full_like(x, 7), np.full(stat_shape, 7, x.dtype), np.full(stat_shape, 7, x.dtype)
    args = dict(x=x, weight=w, bias=b, running_mean=rm, running_var=rv, out=(y, mean, rstd))
    return caller(getattr(fastnorm, f"{op}_forward"), **args), [rm, rv, y, mean, rstd]


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
    assert not v.flags.c_contiguous
    assert np.array_equal(v, a)
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
