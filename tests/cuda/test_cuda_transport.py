"""Sinkhorn CUDA kernels (simulator or GPU) vs the NumPy reference: public op on device arrays, batching,
shared masses, early stop per problem, the regularized backward, and bad input before any launch."""

from __future__ import annotations

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

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
    "lead,n,m,dtype,shared",
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
    assert host(res.value).dtype == dtype and host(res.plan).shape == c.shape


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

    def boom(*args, **kwargs):
        raise AssertionError("a kernel ran on bad input")

    monkeypatch.setattr(T, "_kernels", boom)
    a, b, c = np.ones(3) / 3, np.ones(2) / 2, np.ones((3, 2))
    with pytest.raises(ValueError, match="reg must be"):
        fastnorm.sinkhorn(*on_gpu(a, b, c), 0.0)
    with pytest.raises(ValueError, match="a must be finite and non-negative"):
        fastnorm.sinkhorn(*on_gpu(-a, b, c), 0.1)
    with pytest.raises(ValueError, match="same total mass"):
        fastnorm.sinkhorn(*on_gpu(a, 2 * b, c), 0.1)
    with pytest.raises(TypeError, match="different devices"):
        fastnorm.sinkhorn(a, on_gpu(b), on_gpu(c), 0.1)
