"""BatchNorm stages (fastnorm.batch_norm_stats ... batch_norm_backward_elemt) on device arrays against the
same calls on NumPy arrays (the CPU kernels, tested against the references in tests/test_sync_batch_norm.py)
and against the float64 references: channels-first and channels-last, float32/float64, affine on and off,
split batches with an empty one, running statistics updated in place on the device."""

from __future__ import annotations

import numpy as np
import pytest

import fastnorm
from fastnorm.reference import sync_batch_norm as RS

from .conftest import host


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Small thread blocks: the simulator runs one Python thread per CUDA thread."""
    from fastnorm._kernels.cuda import batch_norm_stages as S
    from fastnorm._kernels.cuda import channel_norm as K

    monkeypatch.setattr(K, "COLS", 8)
    monkeypatch.setattr(K, "PHASES", 4)
    monkeypatch.setattr(K, "BLOCK", 32)
    monkeypatch.setattr(K, "SEG_BLOCK", 32)
    monkeypatch.setattr(S, "_T", 32)


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


def _close(got, want, dtype, what):
    assert not isinstance(got, np.ndarray), f"{what} came back on the host"
    g = host(got)
    assert g.shape == want.shape and g.dtype == want.dtype, what
    np.testing.assert_allclose(g, want, err_msg=what, **_tol(dtype))


CASES = [
    ((3, 5, 4), 1, np.float32),
    ((2, 3, 5), -1, np.float64),
    ((9, 3), 1, np.float32),
    ((4, 2, 3, 3), 1, np.float64),
]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(("shape", "axis", "dtype"), CASES, ids=str)
def test_stages_match_cpu(rng, on_gpu, shape, axis, dtype, affine):
    c = shape[1] if axis == 1 else shape[-1]
    x = (rng.standard_normal(shape) * 2 + 30.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.3 * rng.standard_normal(c)).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    dx_, ddy, dw, db = on_gpu(x, dy, w, b)

    st = fastnorm.batch_norm_stats(x, axis=axis)
    dst = fastnorm.batch_norm_stats(dx_, axis=axis)
    assert dst.count == st.count
    _close(dst.mean, st.mean, dtype, "mean")
    _close(dst.m2, st.m2, dtype, "m2")
    ref = RS.batch_norm_stats(x.astype(np.float64), axis=axis)
    np.testing.assert_allclose(host(dst.m2), ref[1], rtol=1e-5 if dtype == np.float32 else 1e-12)

    mean = (st.mean + 0.01).astype(dtype)
    invstd = (1 / np.sqrt(st.m2 / st.count + 1e-5)).astype(dtype)
    dmean, dinv = on_gpu(mean, invstd)
    _close(fastnorm.batch_norm_elemt(dx_, dmean, dinv, dw, db, axis=axis),
           fastnorm.batch_norm_elemt(x, mean, invstd, w, b, axis=axis), dtype, "y")  # fmt: skip

    red = fastnorm.batch_norm_backward_reduce(dy, x, mean, invstd, w, axis=axis)
    dred = fastnorm.batch_norm_backward_reduce(ddy, dx_, dmean, dinv, dw, axis=axis)
    for name, g, want in zip(red._fields, dred, red):
        if want is None:
            assert g is None, name
        else:
            _close(g, want, dtype, name)

    n = st.count
    ds1, ds2 = on_gpu(red.sum_dy, red.sum_dy_xmu)
    _close(
        fastnorm.batch_norm_backward_elemt(ddy, dx_, dmean, dinv, dw, ds1, ds2, n, axis=axis),
        fastnorm.batch_norm_backward_elemt(dy, x, mean, invstd, w, red.sum_dy, red.sum_dy_xmu, n, axis=axis),
        dtype,
        "dx",
    )


@pytest.mark.parametrize("device_counts", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_batches_with_empty_one(rng, cuda, on_gpu, dtype, device_counts):
    """Three 'processes' (one empty) combined on the device equal the CPU combine; running stats in place."""
    c = 3
    parts = [(rng.standard_normal((n, c, 5)) + 4).astype(dtype) for n in (2, 0, 3)]
    stats = [fastnorm.batch_norm_stats(on_gpu(p)) for p in parts]
    assert [s.count for s in stats] == [10, 0, 15]
    means = np.stack([host(s.mean) for s in stats])
    m2s = np.stack([host(s.m2) for s in stats])
    assert not means[1].any() and not m2s[1].any()
    counts = np.array([s.count for s in stats], dtype=np.float64)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    drm, drv = on_gpu(rm, rv)
    cnt = cuda.to_device(counts) if device_counts else counts
    g = fastnorm.batch_norm_gather_stats(*on_gpu(means, m2s), cnt, drm, drv, momentum=0.3, eps=1e-4)
    want = fastnorm.batch_norm_gather_stats(means, m2s, counts, rm, rv, momentum=0.3, eps=1e-4)
    _close(g.mean, want.mean, dtype, "mean")
    _close(g.invstd, want.invstd, dtype, "invstd")
    _close(drm, rm, dtype, "running_mean")
    _close(drv, rv, dtype, "running_var")
    whole = np.concatenate(parts).astype(np.float64)
    np.testing.assert_allclose(host(g.mean), whole.mean(axis=(0, 2)), **_tol(dtype))


def test_empty_batch_on_device(on_gpu):
    x = on_gpu(np.empty((0, 2, 3), np.float32))
    st = fastnorm.batch_norm_stats(x)
    assert st.count == 0 and not host(st.mean).any() and not host(st.m2).any()
    one = on_gpu(np.ones(2, np.float32))
    red = fastnorm.batch_norm_backward_reduce(x, x, one, one, one)
    assert all(not host(a).any() for a in red)


def test_float16_is_refused(on_gpu):
    x = on_gpu(np.ones((2, 3), np.float16))
    with pytest.raises(TypeError, match="batch_norm_stats: x has dtype float16; expected one of float32, float64"):
        fastnorm.batch_norm_stats(x)
