"""Softmax cross-entropy, entropy, KL and JS on the CUDA backend (device arrays; the simulator in CI):
kernels vs the NumPy references over dtypes, options, ragged rows (V not a multiple of the block),
rows longer than a block, ignored rows, fused and in-place gradients, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import fastnorm
from fastnorm.reference import divergence as R

from .._util import assert_matches_reference, f64
from ._half_util import HALF, close, lowp
from .conftest import SIM, host

DTYPES = [np.float32, np.float64]
V_LONG = 45 if SIM else 300  # above the block size (32 threads per row on the simulator, 256 on a GPU), ragged
SHAPES = [(3, 7), (2, V_LONG)]  # V below and above the block size


def _lo(dtype, arrays):
    return arrays if dtype == np.float32 else None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("probs", [False, True])
def test_ce_matches_reference(rng, on_gpu, dtype, shape, probs):
    n, v = shape
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    if probs:
        t = rng.random(shape).astype(dtype)
        t /= t.sum(-1, keepdims=True)
    else:
        t = rng.integers(0, v, n)
        t[0] = -100
    w = (rng.random(v) + 0.5).astype(dtype)
    kw = dict(weight=w, label_smoothing=0.1)
    x64, t64, w64 = x.astype(np.float64), t.astype(np.float64) if probs else t, w.astype(np.float64)
    for reduction in ("none", "mean"):
        dx, dt, dw = on_gpu(x, t, w)
        loss, lse, g = fastnorm.softmax_cross_entropy_forward(
            dx, dt, weight=dw, label_smoothing=0.1, reduction=reduction, grad="out"
        )
        r64, lse64 = R.softmax_cross_entropy_forward(x64, t64, weight=w64, label_smoothing=0.1, reduction=reduction)
        r32 = R.softmax_cross_entropy_forward(x, t, reduction=reduction, **kw)[0]
        assert_matches_reference(host(loss), r64, _lo(dtype, r32), name="loss")
        np.testing.assert_allclose(host(lse), lse64, rtol=1e-6 if dtype == np.float32 else 1e-12)
        d = np.ones(n) if reduction == "none" else 1.0
        g64 = R.softmax_cross_entropy_backward(d, x64, t64, weight=w64, label_smoothing=0.1, reduction=reduction)
        g32 = R.softmax_cross_entropy_backward(d, x, t, reduction=reduction, **kw)
        assert_matches_reference(host(g), g64, _lo(dtype, g32), name="fused grad")
        gb = fastnorm.softmax_cross_entropy_backward(
            on_gpu(d.astype(dtype)) if reduction == "none" else 1.0,
            dx,
            dt,
            lse,
            weight=dw,
            label_smoothing=0.1,
            reduction=reduction,
        )
        assert_matches_reference(host(gb), g64, _lo(dtype, g32), name="backward")


def test_ce_inplace_and_bad_target(rng, on_gpu):
    x = rng.standard_normal((4, 9)).astype(np.float32)
    t = np.array([1, 8, 0, 3])
    dx = on_gpu(x)
    with pytest.raises(ValueError, match="class index 9"):
        fastnorm.softmax_cross_entropy_forward(dx, on_gpu(np.array([1, 9, 0, 3])), grad="inplace")
    np.testing.assert_array_equal(host(dx), x)
    r = fastnorm.softmax_cross_entropy_forward(dx, on_gpu(t), grad="inplace")
    want = R.softmax_cross_entropy_backward(1.0, x.astype(np.float64), t)
    assert_matches_reference(host(dx), want, R.softmax_cross_entropy_backward(1.0, x, t))
    assert r.grad is dx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_entropy_matches_reference(rng, on_gpu, dtype, shape):
    p = (rng.random(shape) + 0.01).astype(dtype)
    p[0, 0] = 0
    h = fastnorm.entropy(on_gpu(p), base=2.0)
    assert_matches_reference(host(h), R.entropy(p.astype(np.float64), base=2.0), _lo(dtype, R.entropy(p, base=2.0)))
    p[0, 0] = 0.3
    dh = rng.standard_normal(shape[0]).astype(dtype)
    dp = fastnorm.entropy_backward(on_gpu(dh), on_gpu(p))
    assert_matches_reference(host(dp), R.entropy_backward(*f64(dh, p)), _lo(dtype, R.entropy_backward(dh, p)))


def _logp(rng, shape, dtype):
    a = rng.standard_normal(shape)
    return (a - np.log(np.exp(a).sum(-1, keepdims=True))).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_matches_reference(rng, on_gpu, dtype, shape, log_target):
    x = _logp(rng, shape, dtype)
    t = _logp(rng, shape, dtype)
    if not log_target:
        t = np.exp(t)
    for reduction in ("none", "batchmean"):
        kw = dict(reduction=reduction, log_target=log_target)
        loss, dx, dt = fastnorm.kl_div(*on_gpu(x, t), grad="out", grad_target=True, **kw)
        assert_matches_reference(host(loss), R.kl_div(*f64(x, t), **kw), _lo(dtype, R.kl_div(x, t, **kw)))
        d = np.ones(shape) if reduction == "none" else 1.0
        r64, r32 = R.kl_div_backward(d, *f64(x, t), **kw), R.kl_div_backward(d, x, t, **kw)
        assert_matches_reference(host(dx), r64[0], _lo(dtype, r32[0]), name="dinput")
        assert_matches_reference(host(dt), r64[1], _lo(dtype, r32[1]), name="dtarget")
        dl = rng.standard_normal(shape).astype(dtype) if reduction == "none" else 0.5
        bx, bt = fastnorm.kl_div_backward(
            on_gpu(dl) if reduction == "none" else dl, *on_gpu(x, t), target_grad=True, **kw
        )
        r64, r32 = R.kl_div_backward(dl, *f64(x, t), **kw), R.kl_div_backward(dl, x, t, **kw)
        assert_matches_reference(host(bx), r64[0], _lo(dtype, r32[0]), name="dinput")
        assert_matches_reference(host(bt), r64[1], _lo(dtype, r32[1]), name="dtarget")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_js_matches_reference(rng, on_gpu, dtype, beta):
    shape = (3, V_LONG)
    x, y = _logp(rng, shape, dtype), _logp(rng, shape, dtype)
    labels = np.array([0, -100, 2])
    for reduction in ("none", "batchmean"):
        kw = dict(beta=beta, reduction=reduction, labels=labels)
        loss, dx, dy = fastnorm.js_div(
            *on_gpu(x, y), grad="out", grad_target=True, beta=beta, reduction=reduction, labels=on_gpu(labels)
        )
        assert_matches_reference(host(loss), R.js_div(*f64(x, y), **kw), _lo(dtype, R.js_div(x, y, **kw)))
        d = np.ones(shape) if reduction == "none" else 1.0
        r64, r32 = R.js_div_backward(d, *f64(x, y), **kw), R.js_div_backward(d, x, y, **kw)
        assert_matches_reference(host(dx), r64[0], _lo(dtype, r32[0]), name="dinput")
        assert_matches_reference(host(dy), r64[1], _lo(dtype, r32[1]), name="dtarget")
        bx, by = fastnorm.js_div_backward(
            on_gpu(d.astype(dtype)) if reduction == "none" else 1.0,
            *on_gpu(x, y),
            target_grad=True,
            beta=beta,
            reduction=reduction,
            labels=on_gpu(labels),
        )
        assert_matches_reference(host(bx), r64[0], _lo(dtype, r32[0]), name="dinput bwd")
        assert_matches_reference(host(by), r64[1], _lo(dtype, r32[1]), name="dtarget bwd")


@pytest.mark.parametrize("dt", HALF, ids=lambda d: d.name)
def test_half_losses_match_reference(rng, on_gpu, dt):
    """bfloat16/float16 data (uint16 patterns on the device for bfloat16): float64 arithmetic inside, every
    result in the data's dtype, rounded once; class weights enter in float32."""
    n, v = 3, V_LONG
    x = (3 * rng.standard_normal((n, v))).astype(dt)
    t = rng.integers(0, v, n)
    t[1] = -100
    w = (rng.random(v) + 0.5).astype(np.float32)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    kw = dict(label_smoothing=0.1, reduction="none")
    dx = on_gpu(x)
    loss, lse, g = fastnorm.softmax_cross_entropy_forward(dx, on_gpu(t), weight=on_gpu(w), grad="out", **kw)
    assert host(loss).dtype == dt
    assert host(g).dtype == dt
    ref32 = R.softmax_cross_entropy_forward(x.astype(np.float32), t, weight=w, **kw)[0]
    close(host(loss), lowp(ref32, dt), R.softmax_cross_entropy_forward(x64, t, weight=w64, **kw)[0], "ce loss")
    d = np.ones(n)
    g32 = R.softmax_cross_entropy_backward(d, x.astype(np.float32), t, weight=w, **kw)
    g64 = R.softmax_cross_entropy_backward(d, x64, t, weight=w64, **kw)
    close(host(g), lowp(g32, dt), g64, "ce grad")
    gb = fastnorm.softmax_cross_entropy_backward(on_gpu(d.astype(dt)), dx, on_gpu(t), lse, weight=on_gpu(w), **kw)
    close(host(gb), lowp(g32, dt), g64, "ce backward")
    fastnorm.softmax_cross_entropy_forward(dx, on_gpu(t), weight=on_gpu(w), grad="inplace", **kw)
    np.testing.assert_array_equal(host(dx).view(np.uint16), host(g).view(np.uint16))
    # entropy, KL (log target), JS (with an ignored row)
    p = (rng.random((n, v)) + 0.01).astype(dt)
    close(host(fastnorm.entropy(on_gpu(p))), lowp(R.entropy(p.astype(np.float32)), dt), R.entropy(p.astype(np.float64)),
          "entropy")  # fmt: skip
    a, b = _logp(rng, (n, v), dt), _logp(rng, (n, v), dt)
    a32, b32, a64, b64 = a.astype(np.float32), b.astype(np.float32), a.astype(np.float64), b.astype(np.float64)
    kl = fastnorm.kl_div(*on_gpu(a, b), log_target=True, reduction="none", grad="out")
    close(host(kl.loss), lowp(R.kl_div(a32, b32, log_target=True, reduction="none"), dt),
          R.kl_div(a64, b64, log_target=True, reduction="none"), "kl")  # fmt: skip
    labels = np.array([0, -100, 1])
    js = fastnorm.js_div(*on_gpu(a, b), labels=on_gpu(labels), grad="out")
    close(host(js.loss), lowp(R.js_div(a32, b32, labels=labels), dt), R.js_div(a64, b64, labels=labels), "js")
    close(host(js.dinput), lowp(R.js_div_backward(1.0, a32, b32, labels=labels)[0], dt),
          R.js_div_backward(1.0, a64, b64, labels=labels)[0], "js dinput")  # fmt: skip
    assert not host(js.dinput)[1].astype(np.float32).any()
