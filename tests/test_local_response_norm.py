"""LocalResponseNorm: reference vs finite differences and torch; kernels vs reference; bad input."""

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

from ._util import FLOATS, assert_close_to_ref, f64, numeric_grad, torch_or_skip

OPTS = dict(alpha=0.7, beta=0.75, k=1.3)  # alpha large enough that the window term matters


def _fwd_bwd_ref(x, dy, size, **opts):
    y, s = R.local_response_norm_forward(x, size, **opts)
    return y, s, R.local_response_norm_backward(dy, x, y, s, size, **opts)


def _check_kernels(x, dy, size, **opts):
    """Kernel forward and backward (backward on the kernel's own y, scale) against the references."""
    y, s = fastnorm.local_response_norm_forward(x, size, **opts)
    dx = fastnorm.local_response_norm_backward(dy, x, y, s, size, **opts)
    ref64 = _fwd_bwd_ref(*f64(x, dy), size, **opts)
    low = _fwd_bwd_ref(x, dy, size, **opts) if x.dtype == np.float32 else (None,) * 3
    for name, got, r64, rlo in zip(("y", "scale", "dx"), (y, s, dx), ref64, low, strict=True):
        assert got.dtype == x.dtype
        assert got.shape == x.shape
        assert_close_to_ref(got, rlo, r64, name=name)
    return y, s, dx


# ------------------------------------------------------------------------------------------ reference
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("shape", [(2, 5, 3), (2, 6), (1, 4, 2, 3)])
@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_reference_backward_matches_finite_differences(rng, size, shape, beta):
    opts = dict(OPTS, beta=beta)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    y, s = R.local_response_norm_forward(x, size, **opts)
    dx = R.local_response_norm_backward(dy, x, y, s, size, **opts)
    num = numeric_grad(lambda a: R.local_response_norm_forward(a, size, **opts)[0], [x], 0, dy)
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-8)


def test_reference_window_is_torchs(rng):
    # size 4: channel c sums c-2 .. c+1 (size//2 before, (size-1)//2 after), zero padded, alpha / size.
    x = rng.standard_normal((1, 6, 1))
    _, s = R.local_response_norm_forward(x, 4, alpha=1.0, beta=0.75, k=2.0)
    sq = np.concatenate([[0.0, 0.0], x[0, :, 0] ** 2, [0.0]])
    expect = 2.0 + np.array([sq[c : c + 4].sum() for c in range(6)]) / 4
    np.testing.assert_allclose(s[0, :, 0], expect, rtol=1e-14)


# ------------------------------------------------------------------------------------------ kernels


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("beta", [0.25, 0.5, 0.75, 1.0, 0.6, -0.5, 0.0, 2.0])
def test_every_exponent_path(rng, threads, dtype, beta):
    x = rng.standard_normal((2, 9, 37)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    _check_kernels(x, dy, 3, alpha=0.7, beta=beta, k=1.3)


@pytest.mark.parametrize("dtype", FLOATS)
def test_default_options_and_large_offset(rng, threads, dtype):
    x = (1e4 + rng.standard_normal((2, 16, 45))).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    _check_kernels(x, dy, 5)
    _check_kernels(x, dy, 5, alpha=1e-3, beta=0.75, k=0.5)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("size", [1, 3, 4])
def test_nan_and_inf_reach_exactly_the_windows_that_hold_them(rng, threads, dtype, size):
    # The kernel slides a window sum: a NaN or inf leaving the window must not poison later channels.
    x = rng.standard_normal((2, 12, 20)).astype(dtype)
    x[0, 3, 4] = np.nan
    x[1, 7, 9] = np.inf
    x[1, 2, 9] = -np.inf
    if dtype == np.float64:
        x[0, 5, 11] = 1e200  # the square overflows to inf
    dy = rng.standard_normal(x.shape).astype(dtype)
    dy[1, 9, 15] = np.nan
    with np.errstate(invalid="ignore", over="ignore"):
        y, s, dx = _check_kernels(x, dy, size, **OPTS)
    assert np.isfinite(y[0, :, 0]).all()
    assert not np.isfinite(y[0, 3, 4])
    assert np.isfinite(dx[:, :, 0]).all()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("size", [2, 3, 5])
def test_huge_value_leaving_the_window_does_not_erase_the_rest(rng, threads, dtype, size):
    # A sliding sum (add the entering square, subtract the leaving one) loses every small square added
    # while a huge one was in the sum; the block sums do not.
    x = rng.standard_normal((2, 14, 33)).astype(dtype)
    big = 1e15 if dtype == np.float32 else 1e100
    x[0, 4, :] = big
    x[1, 9, 3] = -big
    dy = rng.standard_normal(x.shape).astype(dtype)
    _check_kernels(x, dy, size, alpha=0.7, beta=0.75, k=1.3)


# ------------------------------------------------------------------------------------------ bad input
class _FakeCudaArray:
    __cuda_array_interface__ = {"shape": (2, 3, 4), "typestr": "<f4", "data": (0, False), "version": 3}
    shape = (2, 3, 4)
    dtype = np.dtype(np.float32)


# Only what tests/contracts does not check (the options, x's dtype and dims, the arrays' shapes and out='s
# shape and length are there).
def test_bad_forward_input_raises_and_writes_nothing(rng):
    x = rng.standard_normal((2, 3, 4))
    for out, exc in [
        ((np.empty(x.shape, np.float32), None), ValueError),
        ((np.empty((2, 3, 8))[:, :, ::2], None), ValueError),
        ((x, None), ValueError),  # aliases the input
    ]:
        with pytest.raises(exc, match="out"):
            fastnorm.local_response_norm_forward(x, 3, out=out)
    with pytest.raises(TypeError, match="different devices"):
        fastnorm.local_response_norm_forward(x, 3, out=(_FakeCudaArray(), None))


def test_bad_backward_input_raises_and_writes_nothing(rng):
    x = rng.standard_normal((2, 3, 4))
    dy = rng.standard_normal(x.shape)
    y, s = fastnorm.local_response_norm_forward(x, 3)
    cases = [
        (dict(dy=dy, x=x, y=y.astype(np.float32), scale=s, size=3), TypeError, "y"),
        (dict(dy=None, x=x, y=y, scale=s, size=3), TypeError, "dy"),
        (dict(dy=dy, x=x, y=y, scale=_FakeCudaArray(), size=3), TypeError, "different devices"),
    ]
    for kwargs, exc, word in cases:
        dx0 = np.full(x.shape, 7.0)
        with pytest.raises(exc, match=word):
            fastnorm.local_response_norm_backward(**kwargs, out=dx0)
        assert (dx0 == 7.0).all()


# ------------------------------------------------------------------------------------------ torch
@pytest.mark.parametrize("shape", [(2, 7, 5), (3, 6, 4, 5), (2, 9, 3, 2, 4)])
@pytest.mark.parametrize(("size", "alpha", "beta", "k"), [(5, 1e-4, 0.75, 1.0), (2, 0.5, 0.6, 2.0), (4, 0.9, 1.0, 0.5)])
def test_matches_torch(rng, shape, size, alpha, beta, k):
    """float64: fastnorm's error against the NumPy reference in extended precision is at most 2x torch's
    plus 8 ulps (DESIGN.md's criterion)."""
    torch = torch_or_skip()
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.local_response_norm(xt, size, alpha=alpha, beta=beta, k=k)
    yt.backward(torch.tensor(dy))
    y, s = fastnorm.local_response_norm_forward(x, size, alpha=alpha, beta=beta, k=k)
    dx = fastnorm.local_response_norm_backward(dy, x, y, s, size, alpha=alpha, beta=beta, k=k)
    xl, dyl = x.astype(np.longdouble), dy.astype(np.longdouble)
    yl, sl = R.local_response_norm_forward(xl, size, alpha=alpha, beta=beta, k=k)
    dxl = R.local_response_norm_backward(dyl, xl, yl, sl, size, alpha=alpha, beta=beta, k=k)
    assert_close_to_ref(y, yt, yl, name="y")
    assert_close_to_ref(dx, xt.grad, dxl, name="dx")


def test_two_dims_is_torch_with_one_spatial_position(rng):
    torch = torch_or_skip()
    x = rng.standard_normal((4, 9)).astype(np.float32)
    yt, yt64 = (
        torch.nn.functional.local_response_norm(torch.tensor(a[:, :, None]), 3, alpha=0.5, beta=0.75, k=1.0)
        for a in (x, x.astype(np.float64))
    )
    y, _ = fastnorm.local_response_norm_forward(x, 3, alpha=0.5)
    assert_close_to_ref(y, yt[:, :, 0], yt64[:, :, 0], name="y")
