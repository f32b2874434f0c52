"""Fused residual add + LayerNorm / RMSNorm: reference vs finite differences, kernels vs the unfused
composition, empty shapes, bad input, dh=None, 1-element rows. Reference parity, out=, read-only inputs and
thread-count invariance are in tests/contracts (cases add_layer_norm, add_rms_norm)."""

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

from ._util import FLOATS, assert_close_to_ref, f64, numeric_grad


def make(rng, shape, dtype, affine=True, ndim=1):
    x = (1.5 * rng.standard_normal(shape) + 0.3).astype(dtype)
    res = rng.standard_normal(shape).astype(dtype)
    norm = shape[len(shape) - ndim :]
    w = (1 + 0.5 * rng.standard_normal(norm)).astype(dtype) if affine else None
    b = rng.standard_normal(norm).astype(dtype) if affine else None
    dy = rng.standard_normal(shape).astype(dtype)
    dh = rng.standard_normal(shape).astype(dtype)
    return x, res, w, b, dy, dh


# ------------------------------------------------------------------------------- reference is the spec
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("ndim", [1, 2])
def test_reference_layer_norm_matches_finite_differences(rng, affine, ndim):
    x, res, w, b, dy, dh = make(rng, (3, 4, 5), np.float64, affine, ndim)
    y, h, mean, rstd = R.add_layer_norm_forward(x, res, w, b, normalized_ndim=ndim)
    dx, dw, db = R.add_layer_norm_backward(dy, dh, h, mean, rstd, w, b, normalized_ndim=ndim)

    def loss_terms(x_, r_, w_, b_):
        # sum(y * dy) + sum(h * dh): dh is the gradient arriving on h
        y_, h_, _, _ = R.add_layer_norm_forward(x_, r_, w_, b_, normalized_ndim=ndim)
        return y_ * dy + h_ * dh

    ones = np.ones_like(x)
    args = [x, res, w, b]
    np.testing.assert_allclose(dx, numeric_grad(loss_terms, args, 0, ones), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, numeric_grad(loss_terms, args, 1, ones), rtol=1e-6, atol=1e-7)
    if affine:
        np.testing.assert_allclose(dw, numeric_grad(loss_terms, args, 2, ones), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(db, numeric_grad(loss_terms, args, 3, ones), rtol=1e-6, atol=1e-7)
    else:
        assert dw is None
        assert db is None


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("ndim", [1, 2])
def test_reference_rms_norm_matches_finite_differences(rng, affine, ndim):
    x, res, w, _, dy, dh = make(rng, (3, 4, 5), np.float64, affine, ndim)
    y, h, rstd = R.add_rms_norm_forward(x, res, w, normalized_ndim=ndim)
    dx, dw = R.add_rms_norm_backward(dy, dh, h, rstd, w, normalized_ndim=ndim)

    def loss_terms(x_, r_, w_):
        y_, h_, _ = R.add_rms_norm_forward(x_, r_, w_, normalized_ndim=ndim)
        return y_ * dy + h_ * dh

    ones = np.ones_like(x)
    np.testing.assert_allclose(dx, numeric_grad(loss_terms, [x, res, w], 0, ones), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, numeric_grad(loss_terms, [x, res, w], 1, ones), rtol=1e-6, atol=1e-7)
    if affine:
        np.testing.assert_allclose(dw, numeric_grad(loss_terms, [x, res, w], 2, ones), rtol=1e-6, atol=1e-7)
    else:
        assert dw is None


def test_reference_is_the_add_then_the_norm(rng):
    x, res, w, b, dy, dh = make(rng, (4, 6), np.float64)
    y, h, mean, rstd = R.add_layer_norm_forward(x, res, w, b, eps=1e-3)
    np.testing.assert_array_equal(h, x + res)
    for got, want in zip((y, mean, rstd), R.layer_norm_forward(x + res, w, b, eps=1e-3), strict=True):
        np.testing.assert_array_equal(got, want)
    dx, _, _ = R.add_layer_norm_backward(dy, dh, h, mean, rstd, w, b)
    np.testing.assert_array_equal(dx, R.layer_norm_backward(dy, h, mean, rstd, w, b)[0] + dh)


# ------------------------------------------------------------------------------- kernels vs the reference
def _ln_all(x, res, w, b, dy, dh, ndim=1):
    y, h, mean, rstd = fastnorm.add_layer_norm_forward(x, res, w, b, normalized_ndim=ndim)
    grads = fastnorm.add_layer_norm_backward(dy, dh, h, mean, rstd, w, b, normalized_ndim=ndim)
    return (y, h, mean, rstd), tuple(grads)


def _rms_all(x, res, w, dy, dh, ndim=1):
    y, h, rstd = fastnorm.add_rms_norm_forward(x, res, w, normalized_ndim=ndim)
    grads = fastnorm.add_rms_norm_backward(dy, dh, h, rstd, w, normalized_ndim=ndim)
    return (y, h, rstd), tuple(grads)


def test_normalized_ndim_3(rng):
    ndim = 3  # 1 and 2 are in the contract suite
    x, res, w, b, dy, dh = make(rng, (3, 4, 5, 6), np.float64, True, ndim)
    fwd, bwd = _ln_all(x, res, w, b, dy, dh, ndim)
    ref_f = R.add_layer_norm_forward(x, res, w, b, normalized_ndim=ndim)
    ref_b = R.add_layer_norm_backward(dy, dh, *ref_f[1:], w, b, normalized_ndim=ndim)
    for got, want in zip(fwd + bwd, ref_f + ref_b, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    fwd, bwd = _rms_all(x, res, w, dy, dh, ndim)
    ref_f = R.add_rms_norm_forward(x, res, w, normalized_ndim=ndim)
    ref_b = R.add_rms_norm_backward(dy, dh, *ref_f[1:], w, normalized_ndim=ndim)
    for got, want in zip(fwd + bwd, ref_f + ref_b, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(64, 4099), (300, 17)], ids=str)
def test_matches_the_unfused_composition(rng, threads, shape):
    """The fused op against fastnorm's add followed by layer_norm / rms_norm, both measured against the
    float64 reference (DESIGN.md's criterion); h is the same rounded sum bitwise."""
    x, res, w, b, dy, dh = make(rng, shape, np.float32)
    fwd, bwd = _ln_all(x, res, w, b, dy, dh)
    h = x + res
    np.testing.assert_array_equal(fwd[1], h)
    y, mean, rstd = fastnorm.layer_norm_forward(h, w, b)
    dx, dw, db = fastnorm.layer_norm_backward(dy, h, mean, rstd, w, b)
    ref_f = R.add_layer_norm_forward(*f64(x, res, w, b))
    ref_b = R.add_layer_norm_backward(*f64(dy, dh, h, mean, rstd, w, b))
    for got, unfused, ref, name in zip(
        (fwd[0], fwd[2], fwd[3]) + bwd,
        (y, mean, rstd, dx + dh, dw, db),
        (ref_f[0], *ref_f[2:]) + ref_b,
        ("y", "mean", "rstd", "dx", "dweight", "dbias"),
        strict=True,
    ):
        assert_close_to_ref(got, unfused, ref, name=name)
    fwd, bwd = _rms_all(x, res, w, dy, dh)
    np.testing.assert_array_equal(fwd[1], h)
    y, rstd = fastnorm.rms_norm_forward(h, w)
    dx, dw = fastnorm.rms_norm_backward(dy, h, rstd, w)
    ref_f = R.add_rms_norm_forward(*f64(x, res, w))
    ref_b = R.add_rms_norm_backward(*f64(dy, dh, h, rstd, w))
    for got, unfused, ref, name in zip(
        (fwd[0], fwd[2]) + bwd,
        (y, rstd, dx + dh, dw),
        (ref_f[0], ref_f[2]) + ref_b,
        ("y", "rstd", "dx", "dweight"),
        strict=True,
    ):
        assert_close_to_ref(got, unfused, ref, name=name)


def test_large_offset_statistics_stay_accurate(rng, threads):
    x, res, w, b, _, _ = make(rng, (64, 4096), np.float32)
    x = (x + 1e4).astype(np.float32)
    y, h, mean, rstd = fastnorm.add_layer_norm_forward(x, res, w, b)
    y64, _, _, r64 = R.add_layer_norm_forward(*f64(x, res, w, b))
    np.testing.assert_allclose(rstd, r64, rtol=1e-5)
    assert_close_to_ref(y, R.add_layer_norm_forward(x, res, w, b)[0], y64)


# ------------------------------------------------------------------------------- options and edge cases
def test_dh_none_is_dh_zero(rng, threads):
    x, res, w, b, dy, _ = make(rng, (37, 129), np.float32)
    y, h, mean, rstd = fastnorm.add_layer_norm_forward(x, res, w, b)
    zeros = np.zeros_like(x)
    for a, z in zip(
        fastnorm.add_layer_norm_backward(dy, None, h, mean, rstd, w, b),
        fastnorm.add_layer_norm_backward(dy, zeros, h, mean, rstd, w, b),
        strict=True,
    ):
        np.testing.assert_array_equal(a, z)
    # without dh, dx is exactly layer_norm_backward's
    for a, z in zip(
        fastnorm.add_layer_norm_backward(dy, None, h, mean, rstd, w, b),
        fastnorm.layer_norm_backward(dy, h, mean, rstd, w, b),
        strict=True,
    ):
        np.testing.assert_array_equal(a, z)
    y, h, rstd = fastnorm.add_rms_norm_forward(x, res, w)
    for a, z in zip(
        fastnorm.add_rms_norm_backward(dy, None, h, rstd, w),
        fastnorm.add_rms_norm_backward(dy, zeros, h, rstd, w),
        strict=True,
    ):
        np.testing.assert_array_equal(a, z)


@pytest.mark.parametrize("dtype", FLOATS)
def test_one_element_rows(rng, threads, dtype):
    """N = 1: h - mean = 0, so y = bias, dx = dh exactly (NaN where an input is NaN); RMSNorm's y = h * rstd."""
    x, res, w, b, dy, dh = make(rng, (40000, 1), dtype)
    x[3, 0] = np.nan
    y, h, mean, rstd = fastnorm.add_layer_norm_forward(x, res, w, b)
    np.testing.assert_array_equal(h, x + res)
    np.testing.assert_array_equal(mean, (x + res)[:, 0])
    np.testing.assert_array_equal(np.delete(y, 3, axis=0), np.broadcast_to(b, (39999, 1)))
    assert np.isnan(y[3, 0])
    dx, dw, db = fastnorm.add_layer_norm_backward(dy, dh, h, mean, rstd, w, b)
    np.testing.assert_array_equal(np.delete(dx, 3, axis=0), np.delete(dh, 3, axis=0))
    assert np.isnan(dx[3, 0])
    assert np.isnan(dw[0])
    np.testing.assert_allclose(db, dy.sum(0, dtype=np.float64), rtol=1e-5)
    dx, _, _ = fastnorm.add_layer_norm_backward(dy, None, h, mean, rstd, w, b)
    np.testing.assert_array_equal(np.delete(dx, 3, axis=0), 0)
    y, h, rstd = fastnorm.add_rms_norm_forward(x, res, w)
    ref = R.add_rms_norm_forward(*f64(x, res, w))
    assert_close_to_ref(y, R.add_rms_norm_forward(x, res, w)[0], ref[0])
    dx, dw = fastnorm.add_rms_norm_backward(dy, dh, h, rstd, w)
    ref_b = R.add_rms_norm_backward(*f64(dy, dh, h, rstd, w))
    assert_close_to_ref(dx, R.add_rms_norm_backward(dy, dh, h, rstd, w)[0], ref_b[0])


def test_nan_propagates_to_its_row_only(rng):
    x, res, w, b, dy, dh = make(rng, (4, 9), np.float32)
    res[2, 3] = np.nan
    y, h, mean, rstd = fastnorm.add_layer_norm_forward(x, res, w, b)
    assert np.isnan(y[2]).all()
    assert np.isfinite(np.delete(y, 2, axis=0)).all()
    assert np.isnan(h[2, 3])
    assert np.isfinite(np.delete(h[2], 3)).all()
    dx, dw, db = fastnorm.add_layer_norm_backward(dy, dh, h, mean, rstd, w, b)
    assert np.isnan(dx[2]).all()
    assert np.isfinite(np.delete(dx, 2, axis=0)).all()
    assert np.isnan(dw).all()
    assert np.isfinite(db).all()


@pytest.mark.parametrize(
    "shape",
    [(0, 8), (4, 0), (0, 3, 5), (3, 0, 2)],
    ids=str,
)
def test_empty_shapes(shape):
    x = np.zeros(shape, np.float32)
    w, b = np.ones(shape[-1:], np.float32), np.zeros(shape[-1:], np.float32)
    out = tuple(np.full(s, 7.0, np.float32) for s in (shape, shape, shape[:-1], shape[:-1]))
    y, h, mean, rstd = fastnorm.add_layer_norm_forward(x, x, w, b, out=out)
    assert y.shape == h.shape == shape
    assert mean.shape == rstd.shape == shape[:-1]
    np.testing.assert_array_equal(mean, 0)
    assert np.isnan(rstd).all()
    dw_out = np.full(shape[-1:], 7.0, np.float32)
    dx, dw, db = fastnorm.add_layer_norm_backward(x, x, h, mean, rstd, w, b, out=(None, dw_out, None))
    assert dx.shape == shape
    assert dw is dw_out
    np.testing.assert_array_equal(dw, 0)
    np.testing.assert_array_equal(db, 0)
    y, h, rstd = fastnorm.add_rms_norm_forward(x, x, w)
    assert y.shape == h.shape == shape
    assert rstd.shape == shape[:-1]
    assert np.isnan(rstd).all()
    dx, dw = fastnorm.add_rms_norm_backward(x, None, h, rstd, w)
    assert dx.shape == shape
    np.testing.assert_array_equal(dw, 0)


# ------------------------------------------------------------------------------- bad input
# (a wrong dtype or shape of every argument, bad options: tests/contracts/test_norm_contracts.py)
def test_required_inputs_are_named(rng):
    x, res, w, b, dy, dh = make(rng, (4, 6), np.float32)
    _, h, mean, rstd = fastnorm.add_layer_norm_forward(x, res, w, b)
    with pytest.raises(TypeError, match=r"^add_layer_norm_forward: residual is required"):
        fastnorm.add_layer_norm_forward(x, None, w, b)
    with pytest.raises(TypeError, match=r"^add_layer_norm_backward: mean is required"):
        fastnorm.add_layer_norm_backward(dy, dh, h, None, rstd, w, b)


def test_bad_out_writes_nothing(rng):
    x, res, w, b, dy, dh = make(rng, (4, 6), np.float32)
    y, h, mean, rstd = fastnorm.add_layer_norm_forward(x, res, w, b)
    bufs = [np.full((4, 6), -7.0, np.float32), np.full((4, 6), -7.0, np.float32)]
    with pytest.raises(ValueError, match="add_layer_norm_forward: out must have 4 entries"):
        fastnorm.add_layer_norm_forward(x, res, w, b, out=tuple(bufs))
    with pytest.raises(ValueError, match="out buffer for h overlaps input"):
        fastnorm.add_layer_norm_forward(x, res, w, b, out=(bufs[0], res, None, None))
    with pytest.raises(ValueError, match="out buffers for h and y overlap"):
        fastnorm.add_layer_norm_forward(x, res, w, b, out=(bufs[0], bufs[0], None, None))
    with pytest.raises(ValueError, match="out buffer for mean must have shape"):
        fastnorm.add_layer_norm_forward(x, res, w, b, out=(bufs[0], bufs[1], np.empty(3, np.float32), None))
    with pytest.raises(ValueError, match="out buffer for dx overlaps input"):
        fastnorm.add_layer_norm_backward(dy, dh, h, mean, rstd, w, b, out=(dh, None, None))
    with pytest.raises(ValueError, match="slot with no output"):
        fastnorm.add_rms_norm_backward(dy, dh, h, rstd, None, out=(bufs[0], np.empty(6, np.float32)))
    for a in bufs:
        np.testing.assert_array_equal(a, -7.0)
