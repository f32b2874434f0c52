"""RMSNorm: reference vs finite differences, kernels vs reference, options, layouts, bad input, torch."""

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

from ._util import FLOATS, assert_close_to_ref, f64, numeric_grad, torch_and_wider_ref, torch_or_skip


def make(rng, shape, dtype, affine=True, ndim=1, offset=0.0):
    x = (rng.standard_normal(shape) + offset).astype(dtype)
    w = rng.standard_normal(shape[len(shape) - ndim :]).astype(dtype) if affine else None
    dy = rng.standard_normal(shape).astype(dtype)
    return x, w, dy


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("ndim", [1, 2])
def test_reference_backward_matches_finite_differences(rng, affine, ndim):
    x, w, dy = make(rng, (3, 4, 5), np.float64, affine, ndim)
    _, rstd = R.rms_norm_forward(x, w, normalized_ndim=ndim)
    dx, dw = R.rms_norm_backward(dy, x, rstd, w, normalized_ndim=ndim)

    def f(x_, w_):
        return R.rms_norm_forward(x_, w_, normalized_ndim=ndim)[0]

    np.testing.assert_allclose(dx, numeric_grad(f, [x, w], 0, dy), rtol=1e-6, atol=1e-7)
    if affine:
        np.testing.assert_allclose(dw, numeric_grad(f, [x, w], 1, dy), rtol=1e-6, atol=1e-7)
    else:
        assert dw is None


def test_reference_forward_formula():
    x = np.array([[3.0, 4.0]])
    y, rstd = R.rms_norm_forward(x, eps=0.0)
    np.testing.assert_allclose(rstd, [1 / np.sqrt(12.5)])
    np.testing.assert_allclose(y, x / np.sqrt(12.5))


def test_large_offset(rng, threads):
    x, w, dy = make(rng, (64, 4096), np.float32, offset=1e4)
    y, rstd = fastnorm.rms_norm_forward(x, w)
    y64, r64 = R.rms_norm_forward(*f64(x, w))
    assert_close_to_ref(y, R.rms_norm_forward(x, w)[0], y64)
    dx, dw = fastnorm.rms_norm_backward(dy, x, rstd, w)
    ref = R.rms_norm_backward(*f64(dy, x, r64, w))
    ref32 = R.rms_norm_backward(dy, x, rstd, w)
    for got, r, r32 in zip((dx, dw), ref, ref32):
        assert_close_to_ref(got, r32, r)


def test_nan_propagates_to_its_row_only(rng):
    xn, w, dy = make(rng, (10, 20), np.float32)
    xn[4, 0] = np.nan
    yn, rn = fastnorm.rms_norm_forward(xn, w)
    assert np.isnan(yn[4]).all()
    assert np.isfinite(np.delete(yn, 4, axis=0)).all()
    dx, dw = fastnorm.rms_norm_backward(dy, xn, rn, w)
    assert np.isnan(dx[4]).all()
    assert np.isfinite(np.delete(dx, 4, axis=0)).all()
    assert np.isnan(dw).all()


def test_bad_input(rng):
    x, w, dy = make(rng, (4, 6), np.float32)
    with pytest.raises(TypeError, match="rms_norm_forward: x has dtype int64"):
        fastnorm.rms_norm_forward(np.ones((4, 6), np.int64), w)
    with pytest.raises(ValueError, match=r"rms_norm_forward: weight must have shape \(6,\)"):
        fastnorm.rms_norm_forward(x, w[:5])
    with pytest.raises(TypeError, match="rms_norm_forward: eps must be a real number"):
        fastnorm.rms_norm_forward(x, w, eps="1e-6")
    y, rstd = fastnorm.rms_norm_forward(x, w)
    with pytest.raises(ValueError, match=r"rms_norm_backward: rstd must have shape \(4,\)"):
        fastnorm.rms_norm_backward(dy, x, rstd[:3], w)
    with pytest.raises(TypeError, match="rms_norm_backward: dy has dtype float64"):
        fastnorm.rms_norm_backward(dy.astype(np.float64), x, rstd, w)
    dx_buf = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="out buffer for dweight must have shape"):
        fastnorm.rms_norm_backward(dy, x, rstd, w, out=(dx_buf, np.empty(5, np.float32)))
    assert not dx_buf.any()  # nothing written


@pytest.mark.parametrize("dtype", FLOATS)
def test_matches_torch(rng, dtype):
    """DESIGN.md's criterion: fastnorm's error against a wider reference (torch in float64 for float32; the
    NumPy reference in extended precision for float64) is at most 2x torch's same-dtype error + 8 ulps."""
    torch = torch_or_skip()
    x, w, dy = make(rng, (4, 7, 33), dtype)
    y, rstd = fastnorm.rms_norm_forward(x, w, eps=1e-6)
    dx, dw = fastnorm.rms_norm_backward(dy, x, rstd, w)

    def run_torch(wide):
        tx, tw = (torch.from_numpy(a.astype(wide)).requires_grad_() for a in (x, w))
        ty = torch.nn.functional.rms_norm(tx, (33,), tw, 1e-6)
        ty.backward(torch.from_numpy(dy.astype(wide)))
        return ty.detach(), tx.grad, tw.grad

    def run_ref(xl, wl, dyl):
        yl, rl = R.rms_norm_forward(xl, wl, eps=1e-6)
        return (yl, *R.rms_norm_backward(dyl, xl, rl, wl))

    other, ref = torch_and_wider_ref(run_torch, run_ref, dtype, (x, w, dy))
    for name, got, o, r in zip(("y", "dx", "dw"), (y, dx, dw), other, ref, strict=True):
        assert_close_to_ref(got, o, r, name=name)
