"""Public batch_norm / instance_norm / group_norm forward and backward on device arrays vs the same calls
on NumPy arrays (the CPU kernels, themselves tested against the references and torch): training with
running statistics updated in place, evaluation, channels-last BatchNorm, affine on and off."""

from __future__ import annotations

import numpy as np
import pytest

import fastnorm

from .conftest import host


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Small thread blocks: the simulator runs one Python thread per CUDA thread."""
    from fastnorm._kernels.cuda import channel_norm as K

    monkeypatch.setattr(K, "COLS", 8)
    monkeypatch.setattr(K, "PHASES", 4)
    monkeypatch.setattr(K, "BLOCK", 32)
    monkeypatch.setattr(K, "SEG_BLOCK", 32)


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


def _same(got, want, dtype, what):
    """Device results (a NamedTuple) equal to the CPU ones, field by field (None where the CPU has None)."""
    assert type(got) is type(want)
    for field, g, w in zip(want._fields, got, want, strict=True):
        if w is None:
            assert g is None, f"{what}.{field}"
            continue
        assert not isinstance(g, np.ndarray), f"{what}.{field} came back on the host"
        g = host(g)
        assert g.shape == w.shape and g.dtype == w.dtype, f"{what}.{field}"
        np.testing.assert_allclose(g, w, err_msg=f"{what}.{field}", **_tol(dtype))


def _data(rng, shape, c, dtype):
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.3 * rng.standard_normal(c)).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    rm = (0.1 * rng.standard_normal(c)).astype(dtype)
    rv = (1 + 0.1 * np.abs(rng.standard_normal(c))).astype(dtype)
    return x, dy, w, b, rm, rv


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(
    ("shape", "axis", "dtype"),
    [((3, 5, 4), 1, np.float32), ((2, 3, 5), -1, np.float64), ((4, 3), 1, np.float64)],
    ids=str,
)
def test_batch_norm(rng, on_gpu, shape, axis, dtype, affine, training):
    c = shape[axis]
    x, dy, w, b, rm, rv = _data(rng, shape, c, dtype)
    if not affine:
        w = b = None
    rm_cpu, rv_cpu = rm.copy(), rv.copy()
    d_rm, d_rv = on_gpu(rm, rv)
    kw = dict(training=training, momentum=0.2, eps=1e-4, axis=axis)
    want = fastnorm.batch_norm_forward(x, w, b, rm_cpu, rv_cpu, **kw)
    dx_, ddy = on_gpu(x, dy)
    dw_, db_ = (on_gpu(w, b)) if affine else (None, None)
    got = fastnorm.batch_norm_forward(dx_, dw_, db_, d_rm, d_rv, **kw)
    _same(got, want, dtype, "forward")
    np.testing.assert_allclose(host(d_rm), rm_cpu, **_tol(dtype))  # updated in place in training
    np.testing.assert_allclose(host(d_rv), rv_cpu, **_tol(dtype))
    if not training:
        np.testing.assert_array_equal(host(d_rm), rm)
    bkw = dict(training=training, axis=axis)
    want_b = fastnorm.batch_norm_backward(dy, x, want.mean, want.rstd, w, b, **bkw)
    got_b = fastnorm.batch_norm_backward(ddy, dx_, got.mean, got.rstd, dw_, db_, **bkw)
    _same(got_b, want_b, dtype, "backward")


def test_batch_norm_training_without_running_stats(rng, on_gpu):
    x, dy, w, b, _, _ = _data(rng, (3, 4, 5), 4, np.float32)
    want = fastnorm.batch_norm_forward(x, w, b)
    got = fastnorm.batch_norm_forward(*on_gpu(x, w, b))
    _same(got, want, np.float32, "forward")


@pytest.mark.parametrize("use_input_stats", [True, False])
@pytest.mark.parametrize(("affine", "dtype"), [(True, np.float32), (False, np.float64)], ids=str)
def test_instance_norm(rng, on_gpu, affine, dtype, use_input_stats):
    shape = (3, 4, 2, 3)
    x, dy, w, b, rm, rv = _data(rng, shape, 4, dtype)
    if not affine:
        w = b = None
    rm_cpu, rv_cpu = rm.copy(), rv.copy()
    d_rm, d_rv = on_gpu(rm, rv)
    kw = dict(use_input_stats=use_input_stats, momentum=0.3, eps=1e-5)
    want = fastnorm.instance_norm_forward(x, w, b, rm_cpu, rv_cpu, **kw)
    dx_, ddy = on_gpu(x, dy)
    dw_, db_ = (on_gpu(w, b)) if affine else (None, None)
    got = fastnorm.instance_norm_forward(dx_, dw_, db_, d_rm, d_rv, **kw)
    _same(got, want, dtype, "forward")
    np.testing.assert_allclose(host(d_rm), rm_cpu, **_tol(dtype))
    np.testing.assert_allclose(host(d_rv), rv_cpu, **_tol(dtype))
    if use_input_stats:
        assert not np.allclose(rm_cpu, rm)  # the running stats did move
    want_b = fastnorm.instance_norm_backward(dy, x, want.mean, want.rstd, w, b, use_input_stats=use_input_stats)
    got_b = fastnorm.instance_norm_backward(ddy, dx_, got.mean, got.rstd, dw_, db_, use_input_stats=use_input_stats)
    _same(got_b, want_b, dtype, "backward")


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(
    ("shape", "groups", "dtype"),
    [((2, 6, 5), 3, np.float32), ((3, 4, 1, 3), 1, np.float64), ((2, 5, 3), 5, np.float32)],
    ids=str,
)
def test_group_norm(rng, on_gpu, shape, groups, dtype, affine):
    x, dy, w, b, _, _ = _data(rng, shape, shape[1], dtype)
    if not affine:
        w = b = None
    want = fastnorm.group_norm_forward(x, groups, w, b, eps=1e-4)
    dx_, ddy = on_gpu(x, dy)
    dw_, db_ = (on_gpu(w, b)) if affine else (None, None)
    got = fastnorm.group_norm_forward(dx_, groups, dw_, db_, eps=1e-4)
    _same(got, want, dtype, "forward")
    want_b = fastnorm.group_norm_backward(dy, x, want.mean, want.rstd, groups, w, b)
    got_b = fastnorm.group_norm_backward(ddy, dx_, got.mean, got.rstd, groups, dw_, db_)
    _same(got_b, want_b, dtype, "backward")


def test_mixing_host_and_device_raises(rng, on_gpu):
    x, _, w, b, rm, rv = _data(rng, (2, 3, 4), 3, np.float32)
    before = rm.copy()
    with pytest.raises(TypeError, match="batch_norm_forward: .*different devices.*running_mean"):
        fastnorm.batch_norm_forward(on_gpu(x), on_gpu(w), on_gpu(b), rm, on_gpu(rv))
    np.testing.assert_array_equal(rm, before)
    with pytest.raises(TypeError, match="group_norm_forward: .*different devices"):
        fastnorm.group_norm_forward(on_gpu(x), 3, w)
