"""Optimal-transport CUDA kernels (simulator or GPU) vs the NumPy reference: wasserstein_1d (the device row
sort, the merge walk, the backward with weights, NaN, out=) and Sinkhorn (public op on device arrays,
batching, shared masses, early stop per problem, the regularized backward, out=), bad input before any
launch."""

from __future__ import annotations

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

from .._util import assert_matches_reference
from .conftest import host


def _problem(rng, lead, n, m, dtype, shared=False):
    a = rng.random(n if shared else lead + (n,)) + 0.1
    b = rng.random(m if shared else lead + (m,)) + 0.1
    a = a / a.sum(-1, keepdims=True)
    b = b / b.sum(-1, keepdims=True)
    return a.astype(dtype), b.astype(dtype), rng.random(lead + (n, m)).astype(dtype)


def _check(got, want, dtype, name):
    tol = dict(rtol=2e-5, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, err_msg=name, **tol)


@pytest.mark.parametrize(
    ("lead", "n", "m", "dtype", "shared"),
    [
        ((), 1, 1, np.float64, False),
        ((2,), 5, 3, np.float64, False),
        ((2,), 4, 6, np.float32, True),
        ((), 11, 2, np.float32, False),  # n above the simulator's block of 8: the strided loops
    ],
)
def test_sinkhorn_matches_reference(rng, on_gpu, lead, n, m, dtype, shared):
    a, b, c = _problem(rng, lead, n, m, dtype, shared)
    reg, tol = 0.5, 1e-6 if dtype == np.float32 else 1e-10
    res = fastnorm.sinkhorn(*on_gpu(a, b, c), reg, tol=tol, max_iter=300, return_plan=True)
    v, P, it, err = R.sinkhorn(*(x.astype(np.float64) for x in (a, b, c)), reg, tol=tol, max_iter=300)
    _check(host(res.value), v, dtype, "value")
    _check(host(res.plan), P, dtype, "plan")
    np.testing.assert_array_equal(host(res.n_iter), it)
    np.testing.assert_allclose(host(res.err), err, rtol=1e-3, atol=1e-12)
    assert host(res.value).dtype == dtype
    assert host(res.plan).shape == c.shape


def test_sinkhorn_problems_stop_independently_and_max_iter(rng, on_gpu):
    # one easy problem (uniform cost: converged at once) beside a harder one
    a, b, c = _problem(rng, (2,), 4, 5, np.float64)
    c[0] = 0.3
    res = fastnorm.sinkhorn(*on_gpu(a, b, c), 0.5, tol=1e-10, max_iter=200)
    v, _, it, err = R.sinkhorn(a, b, c, 0.5, tol=1e-10, max_iter=200)
    assert res.plan is None
    np.testing.assert_array_equal(host(res.n_iter), it)
    assert it[0] < it[1]
    _check(host(res.value), v, np.float64, "value")
    r3 = fastnorm.sinkhorn(*on_gpu(a, b, c), 0.2, tol=0.0, max_iter=3)
    v3, _, it3, e3 = R.sinkhorn(a, b, c, 0.2, tol=0.0, max_iter=3)
    np.testing.assert_array_equal(host(r3.n_iter), [3, 3])
    _check(host(r3.value), v3, np.float64, "value after 3 iterations")
    np.testing.assert_allclose(host(r3.err), e3, rtol=1e-9, atol=1e-15)


def test_sinkhorn_regularized_backward(rng, on_gpu):
    a, b, c = _problem(rng, (2,), 3, 4, np.float32)
    res = fastnorm.sinkhorn(*on_gpu(a, b, c), 0.5, tol=1e-6, return_plan=True)
    g = np.array([2.0, -1.0], np.float32)
    d = fastnorm.sinkhorn_backward(on_gpu(g), *on_gpu(a, b, c), res.plan, 0.5, objective="regularized")
    np.testing.assert_allclose(host(d), g[:, None, None] * host(res.plan), rtol=1e-6)
    with pytest.raises(TypeError, match="CPU only"):
        fastnorm.sinkhorn_backward(on_gpu(g), *on_gpu(a, b, c), res.plan, 0.5)


def test_bad_input_before_any_launch(on_gpu, monkeypatch):
    import fastnorm._kernels.cuda.transport as T
    import fastnorm._kernels.cuda.wasserstein as W

    def boom(*args, **kwargs):
        raise AssertionError("a kernel ran on bad input")

    monkeypatch.setattr(T, "_kernels", boom)
    monkeypatch.setattr(W, "_w1d_kernels", boom)
    a, b, c = np.ones(3) / 3, np.ones(2) / 2, np.ones((3, 2))
    with pytest.raises(ValueError, match="reg must be"):
        fastnorm.sinkhorn(*on_gpu(a, b, c), 0.0)
    with pytest.raises(ValueError, match="a must be finite and non-negative"):
        fastnorm.sinkhorn(*on_gpu(-a, b, c), 0.1)
    with pytest.raises(ValueError, match="same total mass"):
        fastnorm.sinkhorn(*on_gpu(a, 2 * b, c), 0.1)
    with pytest.raises(TypeError, match="different devices"):
        fastnorm.sinkhorn(a, on_gpu(b), on_gpu(c), 0.1)
    with pytest.raises(ValueError, match="u_weights must be finite and non-negative"):
        fastnorm.wasserstein_1d(*on_gpu(a, b, -a))
    with pytest.raises(ValueError, match="v_weights must have a positive"):
        fastnorm.wasserstein_1d(*on_gpu(a, b, None, 0 * b))
    with pytest.raises(TypeError, match="expected one of float32, float64"):
        fastnorm.wasserstein_1d(*on_gpu(a.astype(np.float16), b.astype(np.float16)))
    with pytest.raises(ValueError, match="grad must have shape"):
        fastnorm.wasserstein_1d_backward(*on_gpu(np.ones(2), a, b))
    with pytest.raises(ValueError, match="out buffer for out must have shape"):
        fastnorm.wasserstein_1d(*on_gpu(a, b), out=on_gpu(np.ones(1)))
    with pytest.raises(TypeError, match="objective='transport' runs on the CPU only"):
        fastnorm.sinkhorn_backward(*on_gpu(np.ones(()), a, b, c, c / 6), 0.1)


# ----------------------------------------------------------------------------------- wasserstein_1d
def test_sort_rows_is_a_stable_sort_with_nan_last(rng, on_gpu):
    from fastnorm._kernels.cuda import transport as T

    x = rng.integers(0, 4, (3, 11)).astype(np.float64)  # many ties; 11 values: a padded width of 16
    x[1, 3] = x[1, 7] = np.nan
    w = rng.random(x.shape)
    width = T.sort_width(11)
    assert width == 16
    assert T.sort_width(1) == 1
    assert T.sort_width(8) == 8
    xs, ws, idx = on_gpu(np.zeros_like(x), np.zeros_like(w), np.zeros((3, width), np.int32))
    T.sort_rows(*on_gpu(x, w), xs, ws, idx, 1)
    order = np.argsort(x, axis=-1, kind="stable")  # NaN last, ties by index
    np.testing.assert_array_equal(host(idx)[:, :11], order)
    np.testing.assert_array_equal(host(idx)[:, 11:], np.tile(np.arange(11, 16), (3, 1)))
    np.testing.assert_array_equal(host(xs), np.take_along_axis(x, order, -1))
    np.testing.assert_array_equal(host(ws), np.take_along_axis(w, order, -1))
    back = on_gpu(np.zeros_like(w))
    T.unsort_rows(ws, idx, back, 1)
    np.testing.assert_array_equal(host(back), w)


def _w1_inputs(rng, lead, n, m, dtype, weighted):
    u = rng.standard_normal(lead + (n,)).astype(dtype)
    v = (rng.standard_normal(lead + (m,)) + 0.3).astype(dtype)
    uw = (rng.random(lead + (n,)) + 0.05).astype(dtype) if weighted else None
    vw = (rng.random(lead + (m,)) + 0.05).astype(dtype) if weighted else None
    if weighted and n > 2:
        uw[..., ::3] = 0  # zero weights: breakpoints that coincide
    return u, v, uw, vw


@pytest.mark.parametrize(
    ("lead", "n", "m", "dtype", "weighted", "p"),
    [
        ((), 1, 1, np.float64, False, 1),
        ((3,), 5, 7, np.float64, True, 1),
        ((2,), 9, 4, np.float32, False, 2),  # n above the simulator's block: several sort stages
        ((2, 1), 3, 6, np.float32, True, 2.5),
        ((), 1, 4, np.float64, True, 1.5),
    ],
)
def test_wasserstein_1d_matches_reference(rng, on_gpu, lead, n, m, dtype, weighted, p):
    u, v, uw, vw = _w1_inputs(rng, lead, n, m, dtype, weighted)
    f64 = [None if x is None else x.astype(np.float64) for x in (u, v, uw, vw)]
    got = host(fastnorm.wasserstein_1d(*on_gpu(u, v, uw, vw), p=p))
    assert got.dtype == dtype
    assert got.shape == lead
    want = R.wasserstein_1d(*f64, p=p)
    want32 = R.wasserstein_1d(u, v, uw, vw, p=p) if dtype == np.float32 else None
    assert_matches_reference(got, want, want32, name="W")
    g = rng.standard_normal(lead).astype(dtype)
    res = fastnorm.wasserstein_1d_backward(*on_gpu(g, u, v, uw, vw), p=p)
    ref = R.wasserstein_1d_backward(g.astype(np.float64), *f64, p=p)
    ref32 = R.wasserstein_1d_backward(g, u, v, uw, vw, p=p) if dtype == np.float32 else (None,) * 4
    for x, r, r32, name in zip(res, ref, ref32, ("du", "dv", "du_weights", "dv_weights")):
        assert (x is None) == (r is None), name
        if x is not None:
            assert host(x).dtype == dtype
            assert_matches_reference(host(x), r, r32, name=name)


def test_wasserstein_1d_matches_the_cpu_kernel_with_nan_and_out(rng, on_gpu):
    u, v, uw, vw = _w1_inputs(rng, (4,), 6, 5, np.float64, True)
    u[2, 1] = np.nan
    cpu = fastnorm.wasserstein_1d(u, v, uw, vw, p=1)
    out = on_gpu(np.full(4, -7.0))
    got = fastnorm.wasserstein_1d(*on_gpu(u, v, uw, vw), p=1, out=out)
    assert got is out
    np.testing.assert_allclose(host(out), cpu, rtol=1e-13, atol=1e-15)  # NaN in the same row only
    assert np.isnan(host(out)[2])
    assert np.isfinite(np.delete(host(out), 2)).all()
    g = rng.standard_normal(4)
    bufs = on_gpu(*(np.full(x.shape, -7.0) for x in (u, v, uw)))
    res = fastnorm.wasserstein_1d_backward(*on_gpu(g, u, v, uw, vw), p=1, out=(*bufs, None))
    assert all(r is b for r, b in zip(res, bufs))
    for x, y in zip(res, fastnorm.wasserstein_1d_backward(g, u, v, uw, vw, p=1)):
        np.testing.assert_allclose(host(x), y, rtol=1e-12, atol=1e-14)


def test_sinkhorn_out_on_device(rng, on_gpu):
    a, b, c = _problem(rng, (2,), 2, 3, np.float64)
    want = fastnorm.sinkhorn(a, b, c, 0.5, tol=0.0, max_iter=3, return_plan=True)
    bufs = on_gpu(np.zeros(2), np.zeros(c.shape), np.zeros(2, np.int64), np.zeros(2))
    res = fastnorm.sinkhorn(*on_gpu(a, b, c), 0.5, tol=0.0, max_iter=3, return_plan=True, out=bufs)
    for x, buf, y in zip(res, bufs, want):
        assert x is buf
        _check(host(x), y, np.float64, "sinkhorn out")
    d = on_gpu(np.zeros(c.shape))
    g = np.array([1.0, 2.0])
    got = fastnorm.sinkhorn_backward(*on_gpu(g, a, b, c), res.plan, 0.5, objective="regularized", out=d)
    assert got is d
    np.testing.assert_allclose(host(d), g[:, None, None] * host(res.plan), rtol=1e-12)
