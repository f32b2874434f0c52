"""CosineLinear: reference vs finite differences and torch; kernels vs reference; bad input."""

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

from ._util import FLOATS, assert_close_to_ref, f64, numeric_grad, torch_or_skip


def _make(rng, lead, d, o, dtype=np.float64):
    x = rng.standard_normal((*lead, d)).astype(dtype)
    w = rng.standard_normal((o, d)).astype(dtype)
    dy = rng.standard_normal((*lead, o)).astype(dtype)
    return x, w, dy


def _fwd_bwd_ref(x, w, dy, eps):
    y, xn, wn = R.cosine_linear_forward(x, w, eps=eps)
    return (y, xn, wn, *R.cosine_linear_backward(dy, x, w, y, xn, wn, eps=eps))


def _check_kernels(x, w, dy, eps=1e-8):
    y, xn, wn = fastnorm.cosine_linear_forward(x, w, eps=eps)
    dx, dw = fastnorm.cosine_linear_backward(dy, x, w, y, xn, wn, eps=eps)
    got = (y, xn, wn, dx, dw)
    ref64 = _fwd_bwd_ref(*f64(x, w, dy), eps)
    low = _fwd_bwd_ref(x, w, dy, eps) if x.dtype == np.float32 else (None,) * 5
    for name, a, r64, rlo in zip(("y", "x_norm", "w_norm", "dx", "dw"), got, ref64, low, strict=True):
        assert a.dtype == x.dtype
        assert_close_to_ref(a, rlo, r64, name=name)
    return got


def _shrink_rows(x, w, rows_x, rows_w, norm):
    """Scale some rows of x and w to the given norm (below eps: the clamped branch)."""
    for a, rows in ((x, rows_x), (w, rows_w)):
        for r in rows:
            a[r] *= norm / np.linalg.norm(a[r])


# ------------------------------------------------------------------------------------------ reference
@pytest.mark.parametrize("eps", [1e-8, 0.5])
def test_reference_backward_matches_finite_differences(rng, eps):
    x, w, dy = _make(rng, (5,), 4, 3)
    _shrink_rows(x, w, [1], [2], 0.1)  # clamped when eps = 0.5; others have norms well above 0.5
    y, xn, wn = R.cosine_linear_forward(x, w, eps=eps)
    dx, dw = R.cosine_linear_backward(dy, x, w, y, xn, wn, eps=eps)
    f = lambda x_, w_: R.cosine_linear_forward(x_, w_, eps=eps)[0]
    np.testing.assert_allclose(dx, numeric_grad(f, [x, w], 0, dy), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numeric_grad(f, [x, w], 1, dy), rtol=1e-6, atol=1e-8)


def test_reference_is_cosine_similarity(rng):
    x, w, _ = _make(rng, (4,), 6, 3)
    y, xn, wn = R.cosine_linear_forward(x, w)
    for b in range(4):
        for o in range(3):
            assert np.isclose(y[b, o], x[b] @ w[o] / np.linalg.norm(x[b]) / np.linalg.norm(w[o]), rtol=1e-13)
    np.testing.assert_allclose(xn, np.linalg.norm(x, axis=1), rtol=1e-14)


# ------------------------------------------------------------------------------------------ kernels


@pytest.mark.parametrize("dtype", FLOATS)
def test_clamped_rows(rng, threads, dtype):
    x, w, dy = _make(rng, (9,), 7, 5, dtype)
    _shrink_rows(x, w, [0, 4], [3], 0.1)
    x[6] = 0.0
    got = _check_kernels(x, w, dy, eps=0.5)
    assert (got[0][6] == 0).all()


@pytest.mark.parametrize("dtype", FLOATS)
def test_large_offset(rng, threads, dtype):
    x, w, dy = _make(rng, (8,), 33, 6, dtype)
    _check_kernels((x + 1e4).astype(dtype), w, dy)


@pytest.mark.parametrize("dtype", FLOATS)
def test_nan_propagation(rng, threads, dtype):
    x, w, dy = _make(rng, (6,), 5, 4, dtype)
    x[2, 1] = np.nan
    w[3, 0] = np.inf
    with np.errstate(invalid="ignore"):
        y, xn, wn, dx, dw = _check_kernels(x, w, dy)
    assert np.isnan(y[2]).all()
    assert np.isnan(y[:, 3]).all()
    assert np.isfinite(np.delete(np.delete(y, 2, axis=0), 3, axis=1)).all()


@pytest.mark.parametrize(("lead", "d", "o"), [((0,), 3, 2), ((3,), 0, 2), ((3,), 4, 0)])
def test_empty(rng, lead, d, o):
    x, w, dy = _make(rng, lead, d, o)
    y, xn, wn = fastnorm.cosine_linear_forward(x, w)
    dx, dw = fastnorm.cosine_linear_backward(dy, x, w, y, xn, wn)
    ref = _fwd_bwd_ref(x, w, dy, 1e-8)
    for a, b in zip((y, xn, wn, dx, dw), ref, strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------ bad input
class _FakeCudaArray:
    __cuda_array_interface__ = {"shape": (3, 4), "typestr": "<f8", "data": (0, False), "version": 3}
    shape = (3, 4)
    dtype = np.dtype(np.float64)


# Only what tests/contracts does not check (the arrays' dtypes (int32, complex64) and shapes, x of 0 dims,
# out='s shape and length, and eps (BAD_OPTIONS) are there).
def test_bad_input_raises_and_writes_nothing(rng):
    x, w, dy = _make(rng, (5,), 4, 3)
    cases = [
        (dict(x=x, w=w[0]), ValueError, "w"),
        (dict(x=x, w=w.astype(np.float32)), TypeError, "w"),
        (dict(x=x, w=None), TypeError, "w"),
        (dict(x=x, w=_FakeCudaArray()), TypeError, "different devices"),
    ]
    for kwargs, exc, word in cases:
        y0 = np.full((5, 3), 7.0)
        with pytest.raises(exc, match=word):
            fastnorm.cosine_linear_forward(**kwargs, out=(y0, None, None))
        assert (y0 == 7.0).all()
    y, xn, wn = fastnorm.cosine_linear_forward(x, w)
    bcases = [
        (dict(dy=dy, x=x, w=w, y=y.T, x_norm=xn, w_norm=wn), ValueError, "y"),  # transposed: same size
        (dict(dy=dy, x=x, w=w, y=y, x_norm=xn, w_norm=wn.astype(np.float32)), TypeError, "w_norm"),
    ]
    for kwargs, exc, word in bcases:
        dx0, dw0 = np.full(x.shape, 7.0), np.full(w.shape, 7.0)
        with pytest.raises(exc, match=word):
            fastnorm.cosine_linear_backward(**kwargs, out=(dx0, dw0))
        assert (dx0 == 7.0).all()
        assert (dw0 == 7.0).all()
    with pytest.raises(ValueError, match="out"):
        fastnorm.cosine_linear_backward(dy, x, w, y, xn, wn, out=(x, None))


# ------------------------------------------------------------------------------------------ torch
@pytest.mark.parametrize("eps", [1e-8, 0.5])
def test_matches_torch_normalize_linear(rng, eps):
    """float64: fastnorm's error against the NumPy reference in extended precision is at most 2x torch's
    plus 8 ulps (DESIGN.md's criterion)."""
    torch = torch_or_skip()
    F = torch.nn.functional
    x, w, dy = _make(rng, (2, 7), 6, 5)
    _shrink_rows(x[0], w, [3], [1], 0.1)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = F.linear(F.normalize(xt, dim=-1, eps=eps), F.normalize(wt, dim=-1, eps=eps))
    yt.backward(torch.tensor(dy))
    y, xn, wn = fastnorm.cosine_linear_forward(x, w, eps=eps)
    dx, dw = fastnorm.cosine_linear_backward(dy, x, w, y, xn, wn, eps=eps)
    xl, wl, dyl = (a.astype(np.longdouble) for a in (x, w, dy))
    yl, xnl, wnl = R.cosine_linear_forward(xl, wl, eps=eps)
    dxl, dwl = R.cosine_linear_backward(dyl, xl, wl, yl, xnl, wnl, eps=eps)
    assert_close_to_ref(y, yt, yl, name="y")
    assert_close_to_ref(dx, xt.grad, dxl, name="dx")
    assert_close_to_ref(dw, wt.grad, dwl, name="dw")


def test_forward_matches_torch_cosine_similarity(rng):
    torch = torch_or_skip()
    x, w, _ = _make(rng, (7,), 6, 5, np.float32)
    _shrink_rows(x, w, [2], [4], 0.1)
    yt, yt64 = (
        torch.nn.functional.cosine_similarity(torch.tensor(a)[:, None, :], torch.tensor(b)[None], dim=-1, eps=0.5)
        for a, b in ((x, w), (x.astype(np.float64), w.astype(np.float64)))
    )
    y, _, _ = fastnorm.cosine_linear_forward(x, w, eps=0.5)
    assert_close_to_ref(y, yt, yt64, name="y")
