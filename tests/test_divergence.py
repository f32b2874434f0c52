"""Softmax cross-entropy, entropy, KL and JS divergence: references vs torch/SciPy and finite differences,
kernels vs references (error criterion), every option, shapes, out= and in-place gradients, bad input,
thread-count invariance."""

import numpy as np
import pytest

import fastnorm
from fastnorm import divergence as D
from fastnorm.reference import divergence as R

from ._util import (
    FLOATS,
    assert_close_to_ref,
    assert_matches_reference,
    assert_thread_count_invariant,
    f64,
    numeric_grad,
)

SHAPES = [(1, 1), (3, 5), (7, 13), (5, 1025), (2, 4099), (33, 64)]


def logits_of(rng, shape, dtype, scale=3.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def targets_of(rng, n, v, ignore=False):
    t = rng.integers(0, v, size=n)
    if ignore and n > 1:
        t[:: max(2, n // 2)] = -100
    return t


def probs_of(rng, shape, dtype):
    p = rng.random(shape) + 0.01
    return (p / p.sum(-1, keepdims=True)).astype(dtype)


def log_probs_of(rng, shape, dtype):
    x = rng.standard_normal(shape)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(dtype)


# ----------------------------------------------------------------------------- references are the spec
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("probs", [False, True])
def test_reference_ce_matches_torch(rng, reduction, weighted, smoothing, probs):
    torch = pytest.importorskip("torch")
    x = logits_of(rng, (9, 7), np.float64)
    t = probs_of(rng, (9, 7), np.float64) if probs else targets_of(rng, 9, 7, ignore=True)
    w = rng.random(7) + 0.5 if weighted else None
    kw = dict(weight=w, label_smoothing=smoothing, reduction=reduction)
    loss, lse = R.softmax_cross_entropy_forward(x, t, **kw)
    xt = torch.from_numpy(x).requires_grad_()
    tl = torch.nn.functional.cross_entropy(
        xt,
        torch.from_numpy(t),
        weight=None if w is None else torch.from_numpy(w),
        label_smoothing=smoothing,
        reduction=reduction,
    )
    # float64 against torch's float64 (both the other result and the reference): the bound is the slack
    assert_close_to_ref(loss, tl, tl, name="loss", ulps=64)
    lse_t = torch.logsumexp(xt, 1)
    assert_close_to_ref(lse, lse_t, lse_t, name="lse", ulps=64)
    d = rng.standard_normal(tl.shape)
    tl.backward(torch.from_numpy(d))
    g = R.softmax_cross_entropy_backward(d, x, t, **kw)
    assert_close_to_ref(g, xt.grad, xt.grad, name="grad", ulps=64)


def test_reference_ce_all_ignored_is_nan_like_torch():
    torch = pytest.importorskip("torch")
    x = np.zeros((3, 4))
    t = np.full(3, -100)
    loss, _ = R.softmax_cross_entropy_forward(x, t)
    assert np.isnan(loss)
    assert np.isnan(torch.nn.functional.cross_entropy(torch.from_numpy(x), torch.from_numpy(t)).item())


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("probs", [False, True])
def test_reference_ce_backward_matches_finite_differences(rng, weighted, probs):
    x = logits_of(rng, (4, 6), np.float64)
    t = probs_of(rng, (4, 6), np.float64) if probs else np.array([1, -100, 5, 0])
    w = rng.random(6) + 0.5 if weighted else None
    kw = dict(weight=w, label_smoothing=0.1, reduction="none")
    dy = rng.standard_normal(4)
    g = R.softmax_cross_entropy_backward(dy, x, t, **kw)
    num = numeric_grad(lambda x_: R.softmax_cross_entropy_forward(x_, t, **kw)[0], [x], 0, dy)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


def test_reference_entropy_matches_scipy(rng):
    stats = pytest.importorskip("scipy.stats")
    p = rng.random((5, 11))
    p[0, 3] = 0.0
    for axis in (-1, 0):
        for base in (None, 2.0):
            want = stats.entropy(p, axis=axis, base=base)  # float64: SciPy's result bounds by the slack
            assert_close_to_ref(R.entropy(p, axis=axis, base=base), want, want, name=f"{axis=} {base=}", ulps=64)


@pytest.mark.parametrize("base", [None, 10.0])
def test_reference_entropy_backward_matches_finite_differences(rng, base):
    p = rng.random((3, 7)) + 0.1
    dh = rng.standard_normal(3)
    g = R.entropy_backward(dh, p, base=base)
    num = numeric_grad(lambda p_: R.entropy(p_, base=base), [p], 0, dh)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_reference_kl_matches_torch(rng, reduction, log_target):
    torch = pytest.importorskip("torch")
    x = log_probs_of(rng, (6, 9), np.float64)
    t = log_probs_of(rng, (6, 9), np.float64) if log_target else probs_of(rng, (6, 9), np.float64)
    if not log_target:
        t[0, 0] = 0.0
    xt = torch.from_numpy(x).requires_grad_()
    tt = torch.from_numpy(t).requires_grad_()
    tl = torch.nn.functional.kl_div(xt, tt, reduction=reduction, log_target=log_target)
    got = R.kl_div(x, t, reduction=reduction, log_target=log_target)
    # float64 against torch's float64 (both the other result and the reference): the bound is the slack
    assert_close_to_ref(got, tl, tl, name="loss", ulps=64)
    d = rng.standard_normal(tl.shape)
    tl.backward(torch.from_numpy(d))
    gx, gt = R.kl_div_backward(d, x, t, reduction=reduction, log_target=log_target)
    assert_close_to_ref(gx, xt.grad, xt.grad, name="dinput", ulps=64)
    if not log_target:  # torch's xlogy gradient at target == 0 is its own convention
        gt, tg = gt[:, 1:], tt.grad.numpy()[:, 1:]
    else:
        tg = tt.grad.numpy()
    assert_close_to_ref(gt, tg, tg, name="dtarget", ulps=64)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_reference_js_matches_definition(rng, beta):
    special = pytest.importorskip("scipy.special")
    x = log_probs_of(rng, (4, 8), np.float64)
    y = log_probs_of(rng, (4, 8), np.float64)
    q, p = np.exp(x), np.exp(y)
    if beta == 0.0:
        want = special.rel_entr(p, q).sum() / 4
    elif beta == 1.0:
        want = special.rel_entr(q, p).sum() / 4
    else:
        m = beta * p + (1 - beta) * q
        want = (beta * special.rel_entr(p, m) + (1 - beta) * special.rel_entr(q, m)).sum() / 4
    np.testing.assert_allclose(R.js_div(x, y, beta=beta), want, rtol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("log_target", [False, True])
def test_reference_kl_js_backward_match_finite_differences(rng, beta, log_target):
    x = log_probs_of(rng, (3, 5), np.float64)
    y = log_probs_of(rng, (3, 5), np.float64)
    d = rng.standard_normal((3, 5))
    gx, gy = R.js_div_backward(d, x, y, beta=beta, reduction="none")
    f = lambda a, b: R.js_div(a, b, beta=beta, reduction="none")
    np.testing.assert_allclose(gx, numeric_grad(f, [x, y], 0, d), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gy, numeric_grad(f, [x, y], 1, d), rtol=1e-6, atol=1e-8)
    t = y if log_target else np.exp(y)
    gx, gt = R.kl_div_backward(d, x, t, reduction="none", log_target=log_target)
    f = lambda a, b: R.kl_div(a, b, reduction="none", log_target=log_target)
    np.testing.assert_allclose(gx, numeric_grad(f, [x, t], 0, d), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gt, numeric_grad(f, [x, t], 1, d), rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- kernels vs reference
def _ce_case(rng, shape, dtype, probs, weighted, ignore):
    n, v = shape
    x = logits_of(rng, shape, dtype)
    t = probs_of(rng, shape, dtype) if probs else targets_of(rng, n, v, ignore)
    w = (rng.random(v) + 0.5).astype(dtype) if weighted else None
    return x, t, w


def _lse_same_dtype(x):
    """The comparator of lse (stored in float64, summed in x's dtype): logsumexp computed in float32 for
    float32 logits; None for float64 ones (then held elementwise to the float64 reference)."""
    if x.dtype != np.float32:
        return None
    m = x.max(axis=-1, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))[..., 0]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_ce_forward_backward_match_reference(rng, threads, dtype, shape, probs, weighted):
    x, t, w = _ce_case(rng, shape, dtype, probs, weighted, ignore=True)
    for reduction in ("none", "sum", "mean"):
        for eps in (0.0, 0.15):
            kw = dict(weight=w, label_smoothing=eps, reduction=reduction)
            loss, lse, g = D.softmax_cross_entropy_forward(x, t, grad="out", **kw)
            x64, tt64, kw64 = x.astype(np.float64), t.astype(np.float64) if probs else t, dict(kw, weight=f64(w)[0])
            r64, lse64 = R.softmax_cross_entropy_forward(x64, tt64, **kw64)
            r32, _ = R.softmax_cross_entropy_forward(x, t, **kw)
            assert loss.dtype == dtype
            assert lse.dtype == np.float64
            assert_matches_reference(loss, r64, r32, name=f"loss {reduction} eps={eps}")
            assert_close_to_ref(lse, _lse_same_dtype(x), lse64, name="lse")
            d = np.ones(loss.shape) if reduction == "none" else 1.0
            g64 = R.softmax_cross_entropy_backward(d, x64, tt64, **kw64)
            g32 = R.softmax_cross_entropy_backward(d, x, t, **kw)
            assert_matches_reference(g, g64, g32, name=f"fused grad {reduction}")
            dl = rng.standard_normal(loss.shape).astype(dtype) if reduction == "none" else 0.7
            gb = D.softmax_cross_entropy_backward(dl, x, t, lse, **kw)
            assert_matches_reference(
                gb,
                R.softmax_cross_entropy_backward(dl, x64, tt64, **kw64),
                R.softmax_cross_entropy_backward(dl, x, t, **kw),
                name=f"backward {reduction}",
            )


@pytest.mark.parametrize("dtype", FLOATS)
def test_ce_stable_for_large_logits(rng, dtype):
    x = (1e4 + 30 * rng.standard_normal((6, 257))).astype(dtype)
    x[1] *= -1
    t = targets_of(rng, 6, 257)
    loss, lse, g = D.softmax_cross_entropy_forward(x, t, reduction="none", grad="out", label_smoothing=0.1)
    x64 = x.astype(np.float64)
    r64, lse64 = R.softmax_cross_entropy_forward(x64, t, reduction="none", label_smoothing=0.1)
    assert np.all(np.isfinite(loss))
    assert np.all(np.isfinite(g))
    assert_matches_reference(loss, r64, R.softmax_cross_entropy_forward(x, t, reduction="none", label_smoothing=0.1)[0])
    assert_close_to_ref(lse, _lse_same_dtype(x), lse64, name="lse")
    g64 = R.softmax_cross_entropy_backward(np.ones(6), x64, t, reduction="none", label_smoothing=0.1)
    assert_matches_reference(
        g, g64, R.softmax_cross_entropy_backward(np.ones(6), x, t, reduction="none", label_smoothing=0.1)
    )
    gb = D.softmax_cross_entropy_backward(np.ones(6, dtype), x, t, lse, reduction="none", label_smoothing=0.1)
    assert_matches_reference(gb, g64, g)


def test_ce_inplace_gradient(rng):
    x, t, w = _ce_case(rng, (17, 301), np.float32, False, True, True)
    keep = x.copy()
    loss, lse, g = D.softmax_cross_entropy_forward(x, t, weight=w, grad="inplace", label_smoothing=0.05)
    assert g is x
    assert np.shares_memory(g, x)
    ref_loss, _ = R.softmax_cross_entropy_forward(
        keep.astype(np.float64), t, weight=w.astype(np.float64), label_smoothing=0.05
    )
    g2 = D.softmax_cross_entropy_forward(keep, t, weight=w, grad="out", label_smoothing=0.05).grad
    np.testing.assert_array_equal(g, g2)
    assert_matches_reference(
        loss, ref_loss, R.softmax_cross_entropy_forward(keep, t, weight=w, label_smoothing=0.05)[0]
    )


def test_ce_out_buffers(rng):
    x, t, _ = _ce_case(rng, (5, 9), np.float64, False, False, False)
    bufs = (np.empty((5,)), np.empty(5), np.empty((5, 9)))
    loss, lse, g = D.softmax_cross_entropy_forward(x, t, reduction="none", grad="out", out=bufs)
    assert loss is bufs[0]
    assert lse is bufs[1]
    assert g is bufs[2]
    r, _ = R.softmax_cross_entropy_forward(x, t, reduction="none")
    np.testing.assert_allclose(loss, r, rtol=1e-12)
    o = np.empty((5, 9))
    gb = D.softmax_cross_entropy_backward(np.ones(5), x, t, lse, reduction="none", out=o)
    assert gb is o
    assert np.shares_memory(gb, o)
    np.testing.assert_allclose(gb, g, rtol=1e-12, atol=1e-15)


def test_ce_1d_logits_and_int32_targets(rng):
    x = logits_of(rng, (11,), np.float64)
    loss, lse, g = D.softmax_cross_entropy_forward(x, np.int32(4), reduction="none", grad="out")
    assert loss.shape == ()
    assert lse.shape == ()
    assert g.shape == (11,)
    r, _ = R.softmax_cross_entropy_forward(x[None], np.array([4]), reduction="none")
    np.testing.assert_allclose(loss, r[0], rtol=1e-12)
    x2 = logits_of(rng, (4, 6), np.float32)
    t32 = np.array([0, 5, 2, 1], np.int32)
    np.testing.assert_array_equal(
        D.softmax_cross_entropy_forward(x2, t32).loss, D.softmax_cross_entropy_forward(x2, t32.astype(np.int64)).loss
    )


def test_ce_all_ignored_and_empty():
    x = np.zeros((3, 4), np.float32)
    t = np.full(3, -100)
    loss, _, g = D.softmax_cross_entropy_forward(x, t, grad="out")
    assert np.isnan(loss)
    assert np.all(g == 0)
    assert D.softmax_cross_entropy_forward(x, t, reduction="sum").loss == 0
    e = np.zeros((0, 5), np.float32)
    assert np.isnan(D.softmax_cross_entropy_forward(e, np.zeros(0, np.int64)).loss)
    assert D.softmax_cross_entropy_forward(e, np.zeros(0, np.int64), reduction="none").loss.shape == (0,)


def test_ce_bad_input_nothing_written(rng):
    x = logits_of(rng, (4, 5), np.float32)
    keep = x.copy()
    op = "softmax_cross_entropy_forward"
    with pytest.raises(ValueError, match=f"{op}: target has class index 5"):
        D.softmax_cross_entropy_forward(x, np.array([0, 1, 5, 2]), grad="inplace")
    with pytest.raises(ValueError, match="target has class index -3"):
        D.softmax_cross_entropy_forward(x, np.array([0, -3, 1, 2]), grad="inplace")
    np.testing.assert_array_equal(x, keep)
    with pytest.raises(ValueError, match="target .* must have shape"):
        D.softmax_cross_entropy_forward(x, np.array([0, 1]))
    with pytest.raises(TypeError, match="target must be class indices"):
        D.softmax_cross_entropy_forward(x, np.array([True, False, True, True]))
    with pytest.raises(ValueError, match="reduction"):
        D.softmax_cross_entropy_forward(x, np.zeros(4, int), reduction="batchmean")
    with pytest.raises(ValueError, match="label_smoothing"):
        D.softmax_cross_entropy_forward(x, np.zeros(4, int), label_smoothing=1.5)
    with pytest.raises(ValueError, match="grad"):
        D.softmax_cross_entropy_forward(x, np.zeros(4, int), grad="yes")
    with pytest.raises(ValueError, match="weight must have shape"):
        D.softmax_cross_entropy_forward(x, np.zeros(4, int), weight=np.ones(4, np.float32))
    with pytest.raises(TypeError, match="weight has dtype float64"):
        D.softmax_cross_entropy_forward(x, np.zeros(4, int), weight=np.ones(5))
    with pytest.raises(ValueError, match="inplace"):
        D.softmax_cross_entropy_forward(
            np.asfortranarray(logits_of(rng, (4, 5), np.float32)), np.zeros(4, int), grad="inplace"
        )
    ro = x.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        D.softmax_cross_entropy_forward(ro, np.zeros(4, int), grad="inplace")
    with pytest.raises(ValueError, match="logits must be"):
        D.softmax_cross_entropy_forward(np.zeros((2, 3, 4), np.float32), np.zeros((2, 4), int))
    lse = D.softmax_cross_entropy_forward(x, np.zeros(4, int)).lse
    with pytest.raises(ValueError, match="dloss must be a real scalar"):
        D.softmax_cross_entropy_backward(np.ones(4), x, np.zeros(4, int), lse)
    with pytest.raises(TypeError, match="lse has dtype float32"):
        D.softmax_cross_entropy_backward(1.0, x, np.zeros(4, int), lse.astype(np.float32))
    o = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="out buffer for grad must have shape"):
        D.softmax_cross_entropy_forward(x, np.zeros(4, int), grad="out", out=(None, None, o[:, :4]))


def test_ce_thread_count_invariance(rng):
    x, t, w = _ce_case(rng, (64, 3001), np.float32, False, True, True)

    def run():
        f = D.softmax_cross_entropy_forward(x, t, weight=w, grad="out", label_smoothing=0.1)
        return *f, D.softmax_cross_entropy_backward(0.5, x, t, f.lse, weight=w, label_smoothing=0.1)

    assert_thread_count_invariant(run)


# ----------------------------------------------------------------------------------------- entropy
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES + [(2, 3, 4)])
@pytest.mark.parametrize("base", [None, 2.0])
def test_entropy_matches_reference(rng, threads, dtype, shape, base):
    p = (rng.random(shape) + 0.01).astype(dtype)
    h = fastnorm.entropy(p, base=base)
    assert h.shape == shape[:-1]
    assert h.dtype == dtype
    assert_matches_reference(h, R.entropy(p.astype(np.float64), base=base), R.entropy(p, base=base))
    dh = rng.standard_normal(shape[:-1]).astype(dtype)
    dp = fastnorm.entropy_backward(dh, p, base=base)
    assert_matches_reference(dp, R.entropy_backward(*f64(dh, p), base=base), R.entropy_backward(dh, p, base=base))


def test_entropy_axis_zeros_and_scipy(rng):
    stats = pytest.importorskip("scipy.stats")
    p = rng.random((6, 5))
    p[2, 1] = 0.0
    p[3] = 0.0
    p[4, 0] = -1.0
    for axis in (0, 1, -1):
        want = stats.entropy(p, axis=axis)  # float64: SciPy's result bounds by the slack
        assert_close_to_ref(fastnorm.entropy(p, axis=axis), want, want, name=f"entropy {axis=}", ulps=64)
    dp = fastnorm.entropy_backward(np.ones(5), p, axis=0)
    assert dp.shape == p.shape
    ok = p.copy()
    ok[3] = 1.0
    ok[4, 0] = 1.0
    np.testing.assert_allclose(
        fastnorm.entropy_backward(np.ones(5), ok, axis=0), R.entropy_backward(np.ones(5), ok, axis=0), rtol=1e-10
    )
    assert np.isinf(fastnorm.entropy_backward(np.ones(6), p)[2, 1])


def test_entropy_bad_input():
    with pytest.raises(ValueError, match="entropy: base"):
        fastnorm.entropy(np.ones(3), base=1.0)
    with pytest.raises(TypeError, match="entropy: p has dtype int64"):
        fastnorm.entropy(np.ones(3, np.int64))
    with pytest.raises(ValueError, match="entropy: axis"):
        fastnorm.entropy(np.ones(3), axis=2)
    with pytest.raises(ValueError, match="entropy_backward: dh must have shape"):
        fastnorm.entropy_backward(np.ones(2), np.ones((3, 4)))


# ----------------------------------------------------------------------------------------- KL / JS
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES + [(2, 3, 5)])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_matches_reference(rng, threads, dtype, shape, log_target):
    x = log_probs_of(rng, shape, dtype)
    t = log_probs_of(rng, shape, dtype) if log_target else probs_of(rng, shape, dtype)
    if not log_target and shape[-1] > 2:
        t[..., 1] = 0
    for reduction in ("none", "sum", "mean", "batchmean"):
        kw = dict(reduction=reduction, log_target=log_target)
        loss, dx, dt = fastnorm.kl_div(x, t, grad="out", grad_target=True, **kw)
        assert_matches_reference(loss, R.kl_div(*f64(x, t), **kw), R.kl_div(x, t, **kw), name=reduction)
        d = np.ones(np.shape(loss)) if reduction == "none" else 1.0
        rx64, rt64 = R.kl_div_backward(d, *f64(x, t), **kw)
        rx32, rt32 = R.kl_div_backward(d, x, t, **kw)
        assert_matches_reference(dx, rx64, rx32, name="fused dinput")
        fin = np.isfinite(rt64)
        assert_matches_reference(dt[fin], rt64[fin], rt32[fin], name="fused dtarget")
        dl = rng.standard_normal(np.shape(loss)).astype(dtype) if reduction == "none" else 1.3
        bx, bt = fastnorm.kl_div_backward(dl, x, t, target_grad=True, **kw)
        rx64, rt64 = R.kl_div_backward(dl, *f64(x, t), **kw)
        rx32, rt32 = R.kl_div_backward(dl, x, t, **kw)
        assert_matches_reference(bx, rx64, rx32, name="dinput")
        assert_matches_reference(bt[fin], rt64[fin], rt32[fin], name="dtarget")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 1.0])
def test_js_matches_reference(rng, threads, dtype, shape, beta):
    x = log_probs_of(rng, shape, dtype)
    y = log_probs_of(rng, shape, dtype)
    labels = targets_of(rng, shape[0], 5, ignore=True)
    for reduction in ("none", "sum", "mean", "batchmean"):
        for lab in (None, labels):
            kw = dict(beta=beta, reduction=reduction, labels=lab)
            loss, dx, dy = fastnorm.js_div(x, y, grad="out", grad_target=True, **kw)
            assert_matches_reference(loss, R.js_div(*f64(x, y), **kw), R.js_div(x, y, **kw), name=reduction)
            d = np.ones(np.shape(loss)) if reduction == "none" else 1.0
            r64, r32 = R.js_div_backward(d, *f64(x, y), **kw), R.js_div_backward(d, x, y, **kw)
            assert_matches_reference(dx, r64[0], r32[0], name="fused dinput")
            assert_matches_reference(dy, r64[1], r32[1], name="fused dtarget")
            dl = rng.standard_normal(np.shape(loss)).astype(dtype) if reduction == "none" else 0.9
            bx, by = fastnorm.js_div_backward(dl, x, y, target_grad=True, **kw)
            r64, r32 = R.js_div_backward(dl, *f64(x, y), **kw), R.js_div_backward(dl, x, y, **kw)
            assert_matches_reference(bx, r64[0], r32[0], name="dinput")
            assert_matches_reference(by, r64[1], r32[1], name="dtarget")


def test_js_zero_probabilities_are_zero_not_nan():
    with np.errstate(divide="ignore"):
        x = np.log(np.array([[0.5, 0.5, 0.0]]))
        y = np.log(np.array([[0.0, 0.5, 0.5]]))
        loss, dx, dy = fastnorm.js_div(x, y, grad="out", grad_target=True)
    assert np.isfinite(loss)
    assert np.all(np.isfinite(dx))
    assert np.all(np.isfinite(dy))
    np.testing.assert_allclose(loss, np.log(2) / 2, rtol=1e-12)


def test_kl_js_inplace_and_out(rng):
    x = log_probs_of(rng, (7, 33), np.float32)
    y = log_probs_of(rng, (7, 33), np.float32)
    keep = x.copy()
    want = fastnorm.js_div(keep, y, grad="out")
    got = fastnorm.js_div(x, y, grad="inplace")
    assert got.dinput is x
    np.testing.assert_array_equal(x, want.dinput)
    np.testing.assert_array_equal(got.loss, want.loss)
    bufs = (np.empty((), np.float32), np.empty((7, 33), np.float32), np.empty((7, 33), np.float32))
    r = fastnorm.kl_div(keep, y, log_target=True, grad="out", grad_target=True, out=bufs)
    assert r.loss is bufs[0]
    assert r.dinput is bufs[1]
    assert r.dtarget is bufs[2]
    ob = (np.empty((7, 33), np.float32), None)
    b = fastnorm.kl_div_backward(np.float32(1.0), keep, y, log_target=True, out=ob)
    assert b.dinput is ob[0]
    assert b.dtarget is None
    np.testing.assert_array_equal(b.dinput, r.dinput)


def test_kl_js_bad_input(rng):
    x = log_probs_of(rng, (3, 4), np.float32)
    with pytest.raises(ValueError, match="kl_div: target must have shape"):
        fastnorm.kl_div(x, x[:, :3])
    with pytest.raises(ValueError, match="kl_div: reduction"):
        fastnorm.kl_div(x, x, reduction="avg")
    with pytest.raises(ValueError, match="js_div: beta"):
        fastnorm.js_div(x, x, beta=1.5)
    with pytest.raises(ValueError, match="js_div: labels must have shape"):
        fastnorm.js_div(x, x, labels=np.zeros(2, int))
    with pytest.raises(ValueError, match="kl_div_backward: dinput|dloss must have shape"):
        fastnorm.kl_div_backward(np.ones((3, 3), np.float32), x, x, reduction="none")
    with pytest.raises(ValueError, match="js_div: input must have at least 1 dim"):
        fastnorm.js_div(np.float32(1.0), np.float32(1.0))


def test_kl_js_entropy_thread_count_invariance(rng):
    x = log_probs_of(rng, (48, 2049), np.float32)
    y = log_probs_of(rng, (48, 2049), np.float32)
    assert_thread_count_invariant(
        lambda: (
            *fastnorm.js_div(x, y, grad="out", grad_target=True),
            *fastnorm.kl_div(x, y, log_target=True, grad="out"),
            fastnorm.entropy(np.exp(y)),
            fastnorm.entropy_backward(np.ones(48, np.float32), np.exp(y)),
        )
    )


def test_exp_log_special_values():
    """Kernels' exp/log at the edges: -inf logits give exactly zero probability; log 0 handled."""
    x = np.array([[0.0, -np.inf, 1.0, -200.0]], np.float32)
    loss, lse, g = D.softmax_cross_entropy_forward(x, np.array([2]), grad="out", reduction="sum")
    assert g[0, 1] == 0
    assert np.isfinite(loss)
    np.testing.assert_allclose(lse[0], np.log(1 + np.e), rtol=1e-6)
    xn = np.array([[np.nan, 0.0, 1.0]])
    assert np.isnan(D.softmax_cross_entropy_forward(xn, np.array([1])).loss)
    assert np.isnan(fastnorm.entropy(np.array([0.5, np.nan])))


# ------------------------------------------------------------------------------------ NumPy loss layer
def test_nn_cross_entropy_loss_layer(rng):
    from fastnorm.nn import CrossEntropyLoss

    x, t, w = _ce_case(rng, (12, 17), np.float64, False, True, True)
    kw = dict(weight=w, label_smoothing=0.1)
    fn = CrossEntropyLoss(**kw)
    loss = fn(x, t)
    ref, _ = R.softmax_cross_entropy_forward(x, t, **kw)
    assert isinstance(loss, float)
    assert np.isclose(loss, ref, rtol=1e-12)
    g = fn.backward()
    np.testing.assert_allclose(g, R.softmax_cross_entropy_backward(1.0, x, t, **kw), rtol=1e-11, atol=1e-15)
    buf = fn._buf
    fn(x, t)
    assert fn.backward() is buf  # the gradient buffer is reused across steps
    np.testing.assert_allclose(fn.backward(2.0), 2 * g, rtol=1e-12)
    x2 = x.copy()
    fi = CrossEntropyLoss(reduction="none", inplace=True)
    per_row = fi(x2, t)
    assert per_row.shape == (12,)
    assert np.shares_memory(fi.backward(), x2)
    d = rng.standard_normal(12)
    np.testing.assert_allclose(
        fi.backward(d), R.softmax_cross_entropy_backward(d, x, t, reduction="none"), rtol=1e-11, atol=1e-15
    )
    with pytest.raises(RuntimeError, match="forward first"):
        CrossEntropyLoss().backward()


def test_cross_entropy_refuses_uint64_targets_past_int64_and_huge_ignore_index():
    """A uint64 class index >= 2**63 would wrap to a negative int64 (-100 is ignore_index's default, so the
    row would be silently ignored): refused by value; an ignore_index outside int64 is a ValueError, not an
    OverflowError from the kernel call."""
    x = np.zeros((4, 5), np.float32)
    t = np.array([0, 2**64 - 100, 2, 1], np.uint64)
    with pytest.raises(ValueError, match=r"target has class index 18446744073709551516 outside \[0, 5\)"):
        fastnorm.softmax_cross_entropy_forward(x, t, reduction="none")
    with pytest.raises(ValueError, match="ignore_index must be"):
        fastnorm.softmax_cross_entropy_forward(x, np.zeros(4, np.int64), ignore_index=2**70)
    with pytest.raises(ValueError, match="ignore_index must be"):
        fastnorm.js_div(np.log(np.full((4, 5), 0.2)), np.full((4, 5), 0.2), ignore_index=2**70)
