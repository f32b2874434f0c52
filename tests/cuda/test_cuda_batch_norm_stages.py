"""BatchNorm stages (fastnorm.batch_norm_stats ... batch_norm_backward_elemt) on device arrays against the
same calls on NumPy arrays (the CPU kernels, tested against the references in tests/test_sync_batch_norm.py)
and against the float64 references: channels-first and channels-last, float32/float64, affine on and off,
split batches with an empty one, running statistics updated in place on the device; bfloat16/float16
data against the float64 references with DESIGN.md's criterion."""

from __future__ import annotations

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R
from fastnorm.reference import sync_batch_norm as RS

from .._util import assert_close_to_ref
from ._half_util import BF16, F16, F32, close, data, f32, f64, lowp, param, run_stages
from .conftest import host

pytestmark = pytest.mark.usefixtures("small_channel_blocks")


def _close(got, want, ref64, what):
    """DESIGN.md's criterion with the CPU kernel's result ``want`` as the same-dtype comparator: a float32
    result's error vs the float64 reference ``ref64`` at most 2x the CPU's; a float64 result elementwise
    within assert_close_to_ref's float64 tolerance of the CPU's (sums in another order)."""
    assert not isinstance(got, np.ndarray), f"{what} came back on the host"
    g = host(got)
    assert (g.shape, g.dtype) == (want.shape, want.dtype), what
    if g.dtype == np.float64:
        assert_close_to_ref(g, None, want, name=what)
    else:
        assert_close_to_ref(g, want, ref64, name=what, sample_slack=True)


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
    ref = RS.batch_norm_stats(*f64(x), axis=axis)
    _close(dst.mean, st.mean, ref[0], "mean")
    _close(dst.m2, st.m2, ref[1], "m2")

    mean = (st.mean + 0.01).astype(dtype)
    invstd = (1 / np.sqrt(st.m2 / st.count + 1e-5)).astype(dtype)
    dmean, dinv = on_gpu(mean, invstd)
    x64, dy64, mean64, inv64, w64, b64 = f64(x, dy, mean, invstd, w, b)
    _close(fastnorm.batch_norm_elemt(dx_, dmean, dinv, dw, db, axis=axis),
           fastnorm.batch_norm_elemt(x, mean, invstd, w, b, axis=axis),
           RS.batch_norm_elemt(x64, mean64, inv64, w64, b64, axis=axis), "y")  # fmt: skip

    red = fastnorm.batch_norm_backward_reduce(dy, x, mean, invstd, w, axis=axis)
    dred = fastnorm.batch_norm_backward_reduce(ddy, dx_, dmean, dinv, dw, axis=axis)
    red64 = RS.batch_norm_backward_reduce(dy64, x64, mean64, inv64, w64, axis=axis)
    for name, g, want, r in zip(red._fields, dred, red, red64):
        if want is None:
            assert g is None, name
        else:
            _close(g, want, r, name)

    n = st.count
    ds1, ds2 = on_gpu(red.sum_dy, red.sum_dy_xmu)
    _close(
        fastnorm.batch_norm_backward_elemt(ddy, dx_, dmean, dinv, dw, ds1, ds2, n, axis=axis),
        fastnorm.batch_norm_backward_elemt(dy, x, mean, invstd, w, red.sum_dy, red.sum_dy_xmu, n, axis=axis),
        RS.batch_norm_backward_elemt(dy64, x64, mean64, inv64, w64, *f64(red.sum_dy, red.sum_dy_xmu), n, axis=axis),
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
    assert not means[1].any()
    assert not m2s[1].any()
    counts = np.array([s.count for s in stats], dtype=np.float64)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    drm, drv = on_gpu(rm, rv)
    cnt = cuda.to_device(counts) if device_counts else counts
    rm64, rv64 = rm.astype(np.float64), rv.astype(np.float64)  # copies: updated in place
    g = fastnorm.batch_norm_gather_stats(*on_gpu(means, m2s), cnt, drm, drv, momentum=0.3, eps=1e-4)
    want = fastnorm.batch_norm_gather_stats(means, m2s, counts, rm, rv, momentum=0.3, eps=1e-4)
    ref = RS.batch_norm_gather_stats(*f64(means, m2s), counts, rm64, rv64, momentum=0.3, eps=1e-4)
    _close(g.mean, want.mean, ref[0], "mean")
    _close(g.invstd, want.invstd, ref[1], "invstd")
    _close(drm, rm, rm64, "running_mean")
    _close(drv, rv, rv64, "running_var")
    whole = np.concatenate(parts).astype(np.float64)
    other = want.mean if dtype == np.float32 else None  # float64: elementwise to the float64 mean
    assert_close_to_ref(host(g.mean), other, whole.mean(axis=(0, 2)), name="mean of the whole batch")


def test_empty_batch_on_device(on_gpu):
    x = on_gpu(np.empty((0, 2, 3), np.float32))
    st = fastnorm.batch_norm_stats(x)
    assert st.count == 0
    assert not host(st.mean).any()
    assert not host(st.m2).any()
    one = on_gpu(np.ones(2, np.float32))
    red = fastnorm.batch_norm_backward_reduce(x, x, one, one, one)
    assert all(not host(a).any() for a in red)


@pytest.mark.parametrize(
    ("dt", "shape", "axis", "sizes"),
    [(BF16, (3, 4, 5), 1, (2, 1)), (F16, (9, 3), -1, (4, 0, 5)), (BF16, (7, 2), -1, (7,))],
    ids=str,
)
def test_16bit_stages_match_reference(rng, on_gpu, dt, shape, axis, sizes):
    """16-bit data with a 16-bit weight, a float32 bias, a 16-bit running mean and a float32 running var
    (a module's mixed buffers): results on the device within the bound of the float32 stage references
    (data rounded once to x's dtype) against the float64 BatchNorm reference; dtypes as on the CPU."""
    c = shape[1] if axis == 1 else shape[-1]
    x, dy = data(rng, shape, dt, 20.0), data(rng, shape, dt)
    w, b = param(rng, c, dt), param(rng, c, F32, bias=True)
    rm, rv = np.zeros(c, dt), np.ones(c, F32)
    drm, drv = on_gpu(rm, rv)
    cuts = np.cumsum(sizes)[:-1]
    parts, dys = np.split(x, cuts), np.split(dy, cuts)
    y, mean, invstd, dx, dw, db, red = run_stages(
        fastnorm, parts, dys, w, b, axis, drm, drv, to=lambda a: None if a is None else on_gpu(a), back=host
    )
    assert y.dtype == dx.dtype == dt
    assert mean.dtype == invstd.dtype == F32
    assert all(r[0].dtype == r[1].dtype == F32 and r[2].dtype == r[3].dtype == dt for r in red)
    assert host(drm).dtype == dt
    assert host(drv).dtype == F32
    rm32, rv32 = f32(rm, rv)
    y32, mean32, inv32, dx32, dw32, db32, _ = run_stages(RS, *(f32(*parts), f32(*dys)), *f32(w, b), axis, rm32, rv32)
    rm64, rv64 = rm.astype(np.float64), rv.astype(np.float64)  # copies: updated in place
    ref = R.batch_norm_forward(*f64(x, w, b), rm64, rv64, momentum=0.2, axis=axis)
    ref_b = R.batch_norm_backward(*f64(dy, x), ref[1], ref[2], *f64(w, b), axis=axis)
    for name, got, other, r in [
        ("y", y, lowp(y32, dt), ref[0]),
        ("mean", mean, mean32, ref[1]),
        ("invstd", invstd, inv32, ref[2]),
        ("running_mean", host(drm), lowp(rm32, dt), rm64),
        ("running_var", host(drv), rv32, rv64),
        ("dx", dx, lowp(dx32, dt), ref_b[0]),
        ("dweight", dw.astype(dt), dw32, ref_b[1]),
        ("dbias", db.astype(dt), db32, ref_b[2]),
    ]:
        close(got, other, r, name)
