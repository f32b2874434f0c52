"""Optimal transport: wasserstein_1d (vs SciPy, vs POT's quantile formula, gradients by finite differences)
and log-domain Sinkhorn (kernel vs the NumPy re-derivation of POT's loop, gradients by finite differences),
batching, odd sizes, thread-count invariance, bad input, and the torch bindings."""

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R
from fastnorm.reference import transport as RT

from ._util import (
    FLOATS,
    assert_close_to_ref,
    assert_matches_reference,
    assert_thread_count_invariant,
    numeric_grad,
    torch_or_skip,
)

SIZES = [(1, 1), (1, 4), (5, 1), (3, 3), (7, 13), (64, 33)]


def _w(rng, shape, zeros=False):
    w = rng.random(shape) + 0.05
    if zeros:
        w[..., ::3] = 0.0
    return w


def _scipy():
    return pytest.importorskip("scipy.stats")


# ================================================================================= wasserstein_1d
@pytest.mark.parametrize(("n", "m"), SIZES)
@pytest.mark.parametrize("weighted", ["none", "u", "both", "zeros"])
def test_w1_matches_scipy(rng, n, m, weighted):
    ss = _scipy()
    u = rng.standard_normal((3, n))
    v = rng.standard_normal((3, m)) * 1.5 + 0.2
    v[:, : m // 2] = np.round(v[:, : m // 2])  # ties inside v
    uw = _w(rng, u.shape, weighted == "zeros") if weighted != "none" else None
    vw = _w(rng, v.shape, weighted == "zeros") if weighted in ("both", "zeros") else None
    if weighted == "zeros":
        uw[:, 1 % n] += 0.1  # keep a positive sum
        vw[:, 1 % m] += 0.1
    got = fastnorm.wasserstein_1d(u, v, uw, vw)
    want = [
        ss.wasserstein_distance(u[i], v[i], None if uw is None else uw[i], None if vw is None else vw[i])
        for i in range(3)
    ]
    want = np.asarray(want)  # float64: SciPy's result is the other and the reference, so the slack bounds
    assert_close_to_ref(got, want, want, name="kernel", ulps=64)
    assert_close_to_ref(R.wasserstein_1d(u, v, uw, vw), want, want, name="reference", ulps=64)


def _pot_formula(u, v, a, b, p):
    """POT's ot.wasserstein_1d, written out (normalized weights, quantile functions on the merged cumweights)."""
    su, sv = np.argsort(u), np.argsort(v)
    ucw, vcw = np.cumsum(a[su] / a.sum()), np.cumsum(b[sv] / b.sum())
    qs = np.sort(np.concatenate([ucw, vcw]))
    uq = u[su][np.clip(np.searchsorted(ucw, qs), 0, len(u) - 1)]
    vq = v[sv][np.clip(np.searchsorted(vcw, qs), 0, len(v) - 1)]
    return np.sum(np.diff(np.concatenate([[0.0], qs])) * np.abs(uq - vq) ** p)


@pytest.mark.parametrize("p", [1, 1.5, 2, 3.25])
def test_w1_reference_is_pots_formula(rng, p):
    u, v = rng.standard_normal(9), rng.standard_normal(14) + 0.5
    a, b = _w(rng, 9), _w(rng, 14)
    np.testing.assert_allclose(R.wasserstein_1d(u, v, a, b, p=p), _pot_formula(u, v, a, b, p), rtol=1e-12)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("p", [1, 1.5, 2, 3.25])
@pytest.mark.parametrize(("n", "m"), [(1, 1), (6, 6), (17, 5), (130, 257)])
def test_w1_kernel_matches_reference(rng, threads, dtype, p, n, m):
    u = rng.standard_normal((2, 3, n)).astype(dtype)
    v = (rng.standard_normal((2, 3, m)) + 0.3).astype(dtype)
    for uw, vw in [(None, None), (_w(rng, u.shape).astype(dtype), _w(rng, v.shape).astype(dtype))]:
        got = fastnorm.wasserstein_1d(u, v, uw, vw, p=p)
        assert got.shape == (2, 3)
        assert got.dtype == dtype
        ref = R.wasserstein_1d(*(None if x is None else x.astype(np.float64) for x in (u, v, uw, vw)), p=p)
        assert_matches_reference(got, ref, name=f"W p={p}")


def test_w1_known_values():
    assert fastnorm.wasserstein_1d(np.array([0.0, 1, 3]), np.array([5.0, 6, 8])) == pytest.approx(5.0)
    w = fastnorm.wasserstein_1d(np.array([0.0, 1]), np.array([0.0, 1]), np.array([3.0, 1]), np.array([2.0, 2]))
    assert w == pytest.approx(0.25)
    # p = 2 between two point masses: |x - y|^2
    assert fastnorm.wasserstein_1d(np.array([1.0]), np.array([4.0]), p=2) == pytest.approx(9.0)


@pytest.mark.parametrize("p", [1, 1.5, 2, 3])
def test_w1_reference_backward_matches_finite_differences(rng, p):
    u = rng.standard_normal((2, 5))
    v = rng.standard_normal((2, 7)) + 0.4
    a, b = _w(rng, u.shape), _w(rng, v.shape)
    g = rng.standard_normal(2)

    def f(u_, v_, a_, b_):
        return R.wasserstein_1d(u_, v_, a_, b_, p=p)

    du, dv, da, db = R.wasserstein_1d_backward(g, u, v, a, b, p=p)
    for idx, got in enumerate((du, dv, da, db)):
        np.testing.assert_allclose(got, numeric_grad(f, [u, v, a, b], idx, g), rtol=1e-6, atol=1e-8)
    # uniform weights, equal sizes: every breakpoint is a tie; the values' gradient is still smooth
    v2 = rng.standard_normal((2, 5))
    du, dv, da, db = R.wasserstein_1d_backward(g, u, v2, p=p)
    assert da is None
    assert db is None

    def f2(u_, v_):
        return R.wasserstein_1d(u_, v_, p=p)

    np.testing.assert_allclose(du, numeric_grad(f2, [u, v2], 0, g), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dv, numeric_grad(f2, [u, v2], 1, g), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("p", [1, 2, 2.5])
@pytest.mark.parametrize("weighted", [False, True])
def test_w1_backward_kernel_matches_reference(rng, threads, dtype, p, weighted):
    u = rng.standard_normal((3, 11)).astype(dtype)
    v = (rng.standard_normal((3, 8)) + 0.2).astype(dtype)
    uw = _w(rng, u.shape, zeros=True).astype(dtype) if weighted else None
    vw = _w(rng, v.shape).astype(dtype) if weighted else None
    g = rng.standard_normal(3).astype(dtype)
    got = fastnorm.wasserstein_1d_backward(g, u, v, uw, vw, p=p)
    ref = R.wasserstein_1d_backward(*(None if x is None else x.astype(np.float64) for x in (g, u, v, uw, vw)), p=p)
    for x, r, name in zip(got, ref, ("du", "dv", "du_weights", "dv_weights")):
        if x is not None:
            assert x.dtype == dtype
        assert_matches_reference(x, r, name=name)


def test_w1_threads_bitwise_and_empty_batch(rng):
    u, v = rng.standard_normal((40, 301)), rng.standard_normal((40, 200))
    uw = _w(rng, u.shape)
    assert_thread_count_invariant(
        lambda: (
            fastnorm.wasserstein_1d(u, v, uw, p=1.5),
            *fastnorm.wasserstein_1d_backward(np.ones(40), u, v, uw, p=1.5)[:3],
        )
    )
    e = fastnorm.wasserstein_1d(np.zeros((0, 4)), np.zeros((0, 3)))
    assert e.shape == (0,)
    du, dv, _, _ = fastnorm.wasserstein_1d_backward(np.zeros(0), np.zeros((0, 4)), np.zeros((0, 3)))
    assert du.shape == (0, 4)
    assert dv.shape == (0, 3)


def test_w1_nan_propagates_and_noncontiguous_input(rng):
    u = rng.standard_normal((4, 10))[:, ::2]  # not contiguous
    v = rng.standard_normal((4, 6))
    np.testing.assert_allclose(fastnorm.wasserstein_1d(u, v), R.wasserstein_1d(u, v), rtol=1e-12)
    u2 = np.array(u)
    u2[1, 2] = np.nan
    w = fastnorm.wasserstein_1d(u2, v)
    assert np.isnan(w[1])
    assert np.isfinite(np.delete(w, 1)).all()
    ww = fastnorm.wasserstein_1d(u2, v, np.ones(u2.shape), np.ones(v.shape))  # the weighted sort path
    assert np.isnan(ww[1])
    assert np.isfinite(np.delete(ww, 1)).all()
    np.testing.assert_allclose(np.delete(ww, 1), np.delete(w, 1), rtol=1e-12)


@pytest.fixture
def no_kernels(monkeypatch):
    """Any kernel call fails the test: bad input must be rejected before."""
    import fastnorm._kernels.cpu as K

    def boom(*a, **k):
        raise AssertionError("a kernel ran on bad input")

    for name in ("wasserstein_1d", "wasserstein_1d_backward", "sinkhorn", "sinkhorn_backward"):
        monkeypatch.setattr(K, name, boom)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(u_weights=-np.ones(4)), ValueError, "u_weights must be finite and non-negative"),
        (dict(v_weights=np.zeros(3)), ValueError, "v_weights must have a positive"),
        (dict(v_weights=np.array([1.0, np.nan, 1.0])), ValueError, "v_weights must be finite"),
        (dict(u_weights=np.ones(3)), ValueError, "u_weights must have shape"),
        (dict(p=0.5), ValueError, "p must be finite and >= 1"),
        (dict(p=np.inf), ValueError, "p must be finite"),
        (dict(v_values=np.ones((2, 3))), ValueError, "leading"),
        (dict(v_values=np.ones(0)), ValueError, "cannot be empty"),
        (dict(v_values=np.ones(3, np.float32)), TypeError, "must match"),
        (dict(u_values=np.ones(4, np.int64)), TypeError, "u_values has dtype int64"),
        (dict(u_values=np.float64(1.0)), ValueError, "at least 1 dim"),
    ],
)
def test_w1_bad_input(no_kernels, kwargs, exc, match):
    args = dict(u_values=np.arange(4.0), v_values=np.arange(3.0))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        fastnorm.wasserstein_1d(**args)


def test_w1_backward_bad_grad_and_gpu_arrays(no_kernels):
    with pytest.raises(ValueError, match="grad must have shape"):
        fastnorm.wasserstein_1d_backward(np.ones(2), np.ones((3, 4)), np.ones((3, 2)))

    class FakeDev:
        shape = (4,)
        dtype = np.dtype(np.float64)
        __cuda_array_interface__ = {"shape": (4,), "typestr": "<f8", "data": (0, False), "version": 3}

    with pytest.raises(TypeError, match="(CPU only|different devices)"):
        fastnorm.wasserstein_1d(FakeDev(), np.ones(4))


# ======================================================================================== sinkhorn
def _problem(rng, lead, n, m, dtype=np.float64, shared=False):
    a = rng.random(n) + 0.1 if shared else rng.random(lead + (n,)) + 0.1
    b = rng.random(m) + 0.1 if shared else rng.random(lead + (m,)) + 0.1
    a = a / a.sum(-1, keepdims=True)
    b = b / b.sum(-1, keepdims=True)
    c = rng.random(lead + (n, m))
    return a.astype(dtype), b.astype(dtype), c.astype(dtype)


@pytest.mark.parametrize(
    ("lead", "n", "m"),
    [((), 1, 1), ((), 1, 5), ((2,), 5, 1), ((), 7, 13), ((3,), 6, 4), ((2, 2), 9, 9), ((1,), 40, 70)],
)
@pytest.mark.parametrize("shared", [False, True])
def test_sinkhorn_kernel_matches_reference(rng, threads, lead, n, m, shared):
    a, b, c = _problem(rng, lead, n, m, shared=shared)
    res = fastnorm.sinkhorn(a, b, c, 0.05, tol=1e-11, return_plan=True)
    v, P, it, err = R.sinkhorn(a, b, c, 0.05, tol=1e-11)
    assert res.value.shape == lead
    assert res.plan.shape == c.shape
    assert res.n_iter.dtype == np.int64
    np.testing.assert_array_equal(res.n_iter, it)
    np.testing.assert_allclose(res.value, v, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(res.plan, P, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(res.err, err, rtol=1e-3, atol=1e-13)
    assert np.all(res.err < 1e-11)
    np.testing.assert_allclose(res.plan.sum(-1), np.broadcast_to(a, lead + (n,)), rtol=1e-9)


def test_sinkhorn_float32_matches_float64_reference(rng):
    a, b, c = _problem(rng, (2,), 30, 20, np.float32)
    res = fastnorm.sinkhorn(a, b, c, 0.1, tol=1e-7, return_plan=True)
    assert res.value.dtype == res.plan.dtype == np.float32
    v, P, _, _ = R.sinkhorn(a.astype(np.float64), b.astype(np.float64), c.astype(np.float64), 0.1, tol=1e-7)
    assert_matches_reference(res.value, v, name="value")
    assert_matches_reference(res.plan, P, name="plan")


def test_sinkhorn_small_reg_is_stable_and_near_exact_ot(rng):
    # points on a line, cost |x - y| in [0, 1]: the entropic value tends to W_1 as reg -> 0
    x, y = np.sort(rng.random(40)), rng.random(50)
    a, b = np.full(40, 1 / 40), np.full(50, 1 / 50)
    c = np.abs(x[:, None] - y[None, :])
    res = fastnorm.sinkhorn(a, b, c, 1e-3, max_iter=20000, tol=1e-5, return_plan=True)
    assert np.isfinite(res.value)
    assert np.isfinite(res.plan).all()
    assert res.err < 1e-5
    assert res.n_iter < 20000
    w1 = fastnorm.wasserstein_1d(x, y)
    assert abs(res.value - w1) < 5e-3, (res.value, w1)
    v, _, it, _ = R.sinkhorn(a, b, c, 1e-3, max_iter=20000, tol=1e-5)
    assert it == res.n_iter
    np.testing.assert_allclose(res.value, v, rtol=1e-8)


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e5])
def test_sinkhorn_one_pass_shift_falls_back_when_potentials_jump(rng, scale):
    """The CPU half-steps shift each row by its previous log-sum-exp; costs of 1e5 / reg = 1e-3 make the
    potentials jump by ~1e8 between the first iterations (the shifted sum overflows or vanishes: the exact
    two-pass form takes over), and the iterates must stay those of the reference."""
    a, b, c = _problem(rng, (2,), 9, 14)
    c = c * scale
    res = fastnorm.sinkhorn(a, b, c, 1e-3, max_iter=40, tol=0.0, return_plan=True)
    v, P, it, err = R.sinkhorn(a, b, c, 1e-3, max_iter=40, tol=0.0)
    assert np.isfinite(res.plan).all()
    # exponents u + v - C / reg cancel terms of size max(C) / reg: any float64 evaluation order is off by
    # ~eps * max(C) / reg in them, i.e. relatively in the plan
    cond = np.finfo(np.float64).eps * c.max() / 1e-3
    np.testing.assert_allclose(res.value, v, rtol=1e-9 + 50 * cond)
    np.testing.assert_allclose(res.plan, P, rtol=1e-6 + 50 * cond, atol=1e-14)


def test_sinkhorn_zero_masses_and_max_iter_zero(rng):
    a, b, c = _problem(rng, (), 6, 5)
    a[2] = 0.0
    b[0] = 0.0
    a, b = a / a.sum(), b / b.sum()
    res = fastnorm.sinkhorn(a, b, c, 0.1, tol=1e-12, return_plan=True)
    v, P, it, _ = R.sinkhorn(a, b, c, 0.1, tol=1e-12)
    assert np.all(res.plan[2] == 0)
    assert np.all(res.plan[:, 0] == 0)
    np.testing.assert_allclose(res.value, v, rtol=1e-10)
    np.testing.assert_allclose(res.plan, P, rtol=1e-9, atol=1e-15)
    r0 = fastnorm.sinkhorn(a, b, c, 0.1, max_iter=0, return_plan=True)
    v0, P0, it0, e0 = R.sinkhorn(a, b, c, 0.1, max_iter=0)
    assert r0.n_iter == it0 == 0
    np.testing.assert_allclose(r0.plan, P0, rtol=1e-12)
    np.testing.assert_allclose(r0.err, e0, rtol=1e-10)
    r3 = fastnorm.sinkhorn(a, b, c, 0.1, max_iter=3, tol=0.0)
    assert r3.n_iter == 3
    assert r3.plan is None


def test_sinkhorn_threads_bitwise(rng):
    for lead in [(1,), (5,)]:  # one problem: rows over threads; several: problems over threads
        a, b, c = _problem(rng, lead, 37, 29)
        assert_thread_count_invariant(
            lambda a=a, b=b, c=c: fastnorm.sinkhorn(a, b, c, 0.02, tol=1e-10, return_plan=True)
        )


def test_sinkhorn_empty_batch():
    res = fastnorm.sinkhorn(np.ones(3) / 3, np.ones(2) / 2, np.zeros((0, 3, 2)), 0.1, return_plan=True)
    assert res.value.shape == (0,)
    assert res.plan.shape == (0, 3, 2)
    assert res.n_iter.shape == (0,)


# ------------------------------------------------------------------------------- sinkhorn gradients
def _converged(a, b, c, reg):
    return R.sinkhorn(a, b, c, reg, max_iter=100000, tol=1e-15)


def test_sinkhorn_reference_gradients_match_finite_differences(rng):
    a, b, c = _problem(rng, (2,), 4, 5)
    reg = 0.3
    g = np.array([1.0, -0.5])
    _, P, _, _ = _converged(a, b, c, reg)

    def transport(c_):
        return _converged(a, b, c_, reg)[0]

    def regularized(c_):
        v, P_, _, _ = _converged(a, b, c_, reg)
        return RT.sinkhorn_regularized_value(v, P_, reg)

    for objective, f in (("transport", transport), ("regularized", regularized)):
        got = R.sinkhorn_backward(g, a, b, c, P, reg, objective=objective)
        np.testing.assert_allclose(got, numeric_grad(f, [c], 0, g, h=1e-5), rtol=1e-5, atol=1e-8, err_msg=objective)
    # the transport cost's gradient is not the plan: the difference is what the plan's motion adds
    assert np.abs(R.sinkhorn_backward(g, a, b, c, P, reg) - g[:, None, None] * P).max() > 1e-3


@pytest.mark.parametrize("objective", ["transport", "regularized"])
@pytest.mark.parametrize("shared", [False, True])
def test_sinkhorn_backward_matches_reference(rng, objective, shared):
    a, b, c = _problem(rng, (3,), 6, 8, shared=shared)
    a[..., 1] = 0.0  # a zero-mass row
    a = a / a.sum(-1, keepdims=True)
    reg = 0.2
    res = fastnorm.sinkhorn(a, b, c, reg, tol=1e-14, max_iter=100000, return_plan=True)
    g = rng.standard_normal(3)
    got = fastnorm.sinkhorn_backward(g, a, b, c, res.plan, reg, objective=objective)
    ref = R.sinkhorn_backward(g, a, b, c, res.plan, reg, objective=objective)
    np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-10)
    assert np.all(got[:, 1] == 0)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(reg=0.0), ValueError, "reg must be finite and > 0"),
        (dict(reg=-1.0), ValueError, "reg must be"),
        (dict(a=np.array([0.5, -0.5, 1.0])), ValueError, "a must be finite and non-negative"),
        (dict(b=np.zeros(2)), ValueError, "b must have a positive"),
        (dict(b=np.array([0.3, 0.3])), ValueError, "same total mass"),
        (dict(a=np.ones(4) / 4), ValueError, "a must have shape"),
        (dict(cost=np.ones(3)), ValueError, "at least 2 dims"),
        (dict(cost=np.ones((3, 0))), ValueError, "empty side"),
        (dict(cost=np.ones((3, 2), np.float32)), TypeError, "must match"),
        (dict(max_iter=-1), ValueError, "max_iter must be >= 0"),
        (dict(tol=-1.0), ValueError, "tol must be"),
        (dict(a=np.ones((4, 3)) / 3), ValueError, "a must have shape"),
    ],
)
def test_sinkhorn_bad_input(no_kernels, kwargs, exc, match):
    args = dict(a=np.ones(3) / 3, b=np.ones(2) / 2, cost=np.ones((3, 2)), reg=0.1)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        fastnorm.sinkhorn(**args)


def test_sinkhorn_backward_bad_input(no_kernels):
    a, b, c = np.ones(3) / 3, np.ones(2) / 2, np.ones((3, 2))
    with pytest.raises(ValueError, match="objective must be"):
        fastnorm.sinkhorn_backward(1.0, a, b, c, c, 0.1, objective="entropy")
    with pytest.raises(ValueError, match="plan must have shape"):
        fastnorm.sinkhorn_backward(np.float64(1.0), a, b, c, np.ones((2, 3)), 0.1)


# ========================================================================================== torch
def test_torch_wasserstein_1d_gradcheck():
    torch = torch_or_skip()
    from fastnorm.torch import transport as TT

    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 6, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(2, 4, dtype=torch.float64, generator=g, requires_grad=True)
    uw = (torch.rand(2, 6, dtype=torch.float64, generator=g) + 0.1).requires_grad_()
    vw = (torch.rand(2, 4, dtype=torch.float64, generator=g) + 0.1).requires_grad_()
    for p in (1.0, 2.0, 2.5):
        assert torch.autograd.gradcheck(lambda *t, p=p: TT.wasserstein_1d(*t, p=p), (u, v, uw, vw), eps=1e-6, atol=1e-6)
    w = TT.wasserstein_1d(u, v)
    assert w.shape == (2,)
    np.testing.assert_allclose(w.detach().numpy(), R.wasserstein_1d(u.detach().numpy(), v.detach().numpy()))
    with pytest.raises(TypeError, match="dtype"):
        TT.wasserstein_1d(u.detach().half(), v.detach().half())


@pytest.mark.parametrize("objective", ["transport", "regularized"])
def test_torch_sinkhorn_gradcheck(objective):
    torch = torch_or_skip()
    from fastnorm.torch import transport as TT

    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 4, dtype=torch.float64, generator=g) + 0.1
    a = a / a.sum(-1, keepdim=True)
    b = torch.full((3,), 1 / 3, dtype=torch.float64)
    c = torch.rand(2, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)

    def f(c_):
        return TT.sinkhorn(a, b, c_, 0.3, max_iter=100000, tol=1e-14, objective=objective)

    assert torch.autograd.gradcheck(f, (c,), eps=1e-6, atol=1e-6)
    val = f(c)
    res = fastnorm.sinkhorn(a.numpy(), b.numpy(), c.detach().numpy(), 0.3, max_iter=100000, tol=1e-14, return_plan=True)
    want = res.value if objective == "transport" else RT.sinkhorn_regularized_value(res.value, res.plan, 0.3)
    np.testing.assert_allclose(val.detach().numpy(), want, rtol=1e-12)
    with pytest.raises(ValueError, match="not implemented"):
        TT.sinkhorn(a.requires_grad_(), b, c, 0.3)


def test_kernel_exp_accuracy_and_edges():
    from fastnorm._kernels.cpu._transport import exp_kernel

    x = np.concatenate([np.linspace(-708, 709, 200001), np.random.default_rng(0).uniform(-40, 1, 100000)])
    y = np.empty_like(x)
    exp_kernel(x, y)
    ref = np.exp(x)
    # a few ulps near 0; beyond, the range reduction x - k ln2 costs up to ~0.9 |x| ulps when the compiler
    # reassociates it (-fassociative-math, no FMA: the baseline build): the same order as the rounding the
    # kernels' arguments already carry
    bound = np.finfo(np.float64).eps * (4 + np.abs(x))
    assert np.all(np.abs(y - ref) <= bound * ref)
    edges = np.array([-np.inf, -800.0, np.nan, 710.0, np.inf, 0.0])
    out = np.empty_like(edges)
    exp_kernel(edges, out)
    np.testing.assert_array_equal(out, [0.0, 0.0, np.nan, np.inf, np.inf, 1.0])


def test_torch_sinkhorn_transport_grad_matches_numpy_with_zero_masses(rng):
    torch = torch_or_skip()
    from fastnorm.torch import transport as TT

    a, b, c = _problem(rng, (2,), 5, 4)
    a[:, 3] = 0.0
    b[:, 0] = 0.0
    a, b = a / a.sum(-1, keepdims=True), b / b.sum(-1, keepdims=True)
    ct = torch.from_numpy(c).requires_grad_()
    val = TT.sinkhorn(torch.from_numpy(a), torch.from_numpy(b), ct, 0.25, max_iter=100000, tol=1e-14)
    val.backward(torch.tensor([1.5, -2.0], dtype=torch.float64))
    res = fastnorm.sinkhorn(a, b, c, 0.25, max_iter=100000, tol=1e-14, return_plan=True)
    want = fastnorm.sinkhorn_backward(np.array([1.5, -2.0]), a, b, c, res.plan, 0.25)
    np.testing.assert_allclose(ct.grad.numpy(), want, rtol=1e-7, atol=1e-11)
    assert np.all(want[:, 3] == 0)
    assert np.all(want[:, :, 0] == 0)


# ============================================================================================ out=
def _sentinel(shape, dtype):
    return np.full(shape, -7.0, dtype)


def test_w1_out_writes_in_place(rng):
    u, v = rng.standard_normal((3, 6)), rng.standard_normal((3, 4))
    uw, vw = _w(rng, u.shape), _w(rng, v.shape)
    out = _sentinel(3, np.float64)
    got = fastnorm.wasserstein_1d(u, v, uw, vw, p=2, out=out)
    assert got is out
    np.testing.assert_array_equal(out, fastnorm.wasserstein_1d(u, v, uw, vw, p=2))
    g = rng.standard_normal(3)
    want = fastnorm.wasserstein_1d_backward(g, u, v, uw, vw, p=2)
    bufs = (_sentinel(u.shape, u.dtype), None, _sentinel(u.shape, u.dtype), _sentinel(v.shape, v.dtype))
    res = fastnorm.wasserstein_1d_backward(g, u, v, uw, vw, p=2, out=bufs)
    assert res[0] is bufs[0]
    assert res[2] is bufs[2]
    assert res[3] is bufs[3]
    for x, y in zip(res, want):
        np.testing.assert_array_equal(x, y)
    # a 0-d result (one pair of 1-D distributions)
    out0 = np.empty((), np.float64)
    assert fastnorm.wasserstein_1d(u[0], v[0], out=out0) is out0
    np.testing.assert_array_equal(out0, fastnorm.wasserstein_1d(u[0], v[0]))


def _bad_outs(shape, dtype, aliased):
    """(buffer, message) pairs a checked out= must refuse."""
    ro = np.zeros(shape, dtype)
    ro.flags.writeable = False
    wide = np.zeros(shape[:-1] + (2 * shape[-1],) if shape else (2,), dtype)
    return [
        (np.zeros(shape + (1,), dtype), "must have shape"),
        (np.zeros(shape, np.float32 if dtype == np.float64 else np.float64), "must have dtype"),
        (ro, "read-only"),
        (aliased, "overlaps input"),
    ] + ([(wide[..., ::2], "C-contiguous")] if shape else [])


def test_w1_out_bad_buffers_raise_and_write_nothing(rng, no_kernels):
    u, v = rng.standard_normal((3, 6)), rng.standard_normal((3, 4))
    for buf, match in _bad_outs((3,), np.float64, u.reshape(-1)[:3]):
        before = buf.copy()
        with pytest.raises(ValueError, match=match):
            fastnorm.wasserstein_1d(u, v, out=buf)
        np.testing.assert_array_equal(buf, before)
    g = np.ones(3)
    for buf, match in _bad_outs(u.shape, np.float64, u):
        before = buf.copy()
        with pytest.raises(ValueError, match=match):
            fastnorm.wasserstein_1d_backward(g, u, v, out=(buf, None, None, None))
        np.testing.assert_array_equal(buf, before)
    du, dv = _sentinel(u.shape, u.dtype), _sentinel(v.shape, v.dtype)
    with pytest.raises(ValueError, match="slot with no output"):  # no u_weights: no du_weights slot
        fastnorm.wasserstein_1d_backward(g, u, v, out=(du, dv, _sentinel(u.shape, u.dtype), None))
    with pytest.raises(ValueError, match="overlap"):
        fastnorm.wasserstein_1d_backward(g, u, u.copy(), out=(du, du, None, None))
    with pytest.raises(ValueError, match="4 entries"):
        fastnorm.wasserstein_1d_backward(g, u, v, out=(du, dv))
    assert (du == -7).all()
    assert (dv == -7).all()


def test_sinkhorn_out_writes_in_place(rng):
    a, b, c = _problem(rng, (2,), 4, 5)
    want = fastnorm.sinkhorn(a, b, c, 0.5, return_plan=True)
    bufs = (_sentinel(2, c.dtype), _sentinel(c.shape, c.dtype), np.full(2, -7, np.int64), _sentinel(2, np.float64))
    res = fastnorm.sinkhorn(a, b, c, 0.5, return_plan=True, out=bufs)
    for x, buf, y in zip(res, bufs, want):
        assert x is buf
        np.testing.assert_array_equal(x, y)
    part = fastnorm.sinkhorn(a, b, c, 0.5, out=(None, None, None, bufs[3]))  # only err given
    assert part.err is bufs[3]
    assert part.plan is None
    g = np.array([1.5, -0.5])
    for objective in ("transport", "regularized"):
        d = _sentinel(c.shape, c.dtype)
        got = fastnorm.sinkhorn_backward(g, a, b, c, want.plan, 0.5, objective=objective, out=d)
        assert got is d
        np.testing.assert_array_equal(d, fastnorm.sinkhorn_backward(g, a, b, c, want.plan, 0.5, objective=objective))


def test_sinkhorn_out_bad_buffers_raise_and_write_nothing(rng, no_kernels):
    a, b, c = _problem(rng, (2,), 4, 5)
    value = _sentinel(2, c.dtype)
    for buf, match in _bad_outs((2,), np.float64, c.reshape(-1)[:2]):
        before = buf.copy()
        with pytest.raises(ValueError, match=match):
            fastnorm.sinkhorn(a, b, c, 0.5, out=(buf, None, None, None))
        np.testing.assert_array_equal(buf, before)
    with pytest.raises(ValueError, match="slot with no output"):  # a plan buffer without return_plan
        fastnorm.sinkhorn(a, b, c, 0.5, out=(value, _sentinel(c.shape, c.dtype), None, None))
    with pytest.raises(ValueError, match="n_iter must have dtype int64"):
        fastnorm.sinkhorn(a, b, c, 0.5, out=(value, None, _sentinel(2, np.float64), None))
    with pytest.raises(ValueError, match="overlap"):
        fastnorm.sinkhorn(a, b, c, 0.5, out=(value, None, None, value))
    assert (value == -7).all()
    plan = np.full(c.shape, 0.05)
    for buf, match in _bad_outs(c.shape, np.float64, plan):
        before = buf.copy()
        with pytest.raises(ValueError, match=match):
            fastnorm.sinkhorn_backward(np.ones(2), a, b, c, plan, 0.5, out=buf)
        np.testing.assert_array_equal(buf, before)


# ------------------------------------------------------------------------------- torch.library / compile
def test_torch_transport_opcheck():
    torch = torch_or_skip()
    from fastnorm.torch import transport as TT

    g = torch.Generator().manual_seed(5)
    u = torch.randn(2, 6, dtype=torch.float64, generator=g)
    v = torch.randn(2, 4, dtype=torch.float64, generator=g)
    uw = torch.rand(2, 6, dtype=torch.float64, generator=g) + 0.1
    gr = torch.randn(2, dtype=torch.float64, generator=g)
    a = torch.full((3,), 1 / 3, dtype=torch.float64)
    c = torch.rand(2, 3, 3, dtype=torch.float64, generator=g)
    cases = [
        (TT._w1d_fwd_op, (u, v, uw, None, 1.0)),
        (TT._w1d_fwd_op, (u, v, None, None, 2.5)),
        (TT._w1d_bwd_op, (gr, u, v, uw, None, 2.0)),
        (TT._w1d_bwd_op, (gr, u, v, None, None, 1.0)),
        (TT._sinkhorn_op, (a, a, c, 0.5, 50, 1e-9)),
    ]
    for op, args in cases:
        result = torch.library.opcheck(op, args)
        assert all(r == "SUCCESS" for r in result.values()), (op, result)


def test_torch_transport_compile_fullgraph_uses_custom_ops():
    torch = torch_or_skip()
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    from fastnorm.torch import transport as TT

    graphs = []

    def compiler(gm, example_inputs):
        graphs.append(gm.code)
        return make_boxed_func(gm.forward)

    a = torch.full((3,), 1 / 3, dtype=torch.float64)
    b = a.clone()  # (Dynamo does not trace an autograd.Function given one tensor twice)

    def f(u, v, uw, c):
        return TT.wasserstein_1d(u, v, uw, p=2.0).sum() + TT.sinkhorn(a, b, c, 0.5, objective="regularized").sum()

    def inputs():
        g = torch.Generator().manual_seed(6)
        return [
            torch.randn(2, 6, dtype=torch.float64, generator=g).requires_grad_(),
            torch.randn(2, 4, dtype=torch.float64, generator=g).requires_grad_(),
            (torch.rand(2, 6, dtype=torch.float64, generator=g) + 0.1).requires_grad_(),
            torch.rand(2, 3, 3, dtype=torch.float64, generator=g).requires_grad_(),
        ]

    torch._dynamo.reset()
    compiled = torch.compile(f, backend=aot_autograd(fw_compiler=compiler, bw_compiler=compiler), fullgraph=True)
    xc, xe = inputs(), inputs()
    out, eager = compiled(*xc), f(*xe)
    torch.testing.assert_close(out, eager)
    for gc, ge in zip(torch.autograd.grad(out, xc), torch.autograd.grad(eager, xe), strict=True):
        torch.testing.assert_close(gc, ge)
    code = "\n".join(graphs)
    for op in ("fastnorm.wasserstein_1d", "fastnorm.wasserstein_1d_backward", "fastnorm.sinkhorn"):
        assert op in code, f"{op} not in the compiled graphs"
