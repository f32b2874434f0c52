"""16-bit (bfloat16, float16) inputs of the row-wise losses: softmax cross-entropy, entropy, KL and JS.

The kernels widen each row to float32 and run the float32 row code, so the 16-bit results are checked two
ways: bit for bit against the float32 kernel on the widened inputs, rounded once to the 16-bit dtype; and
against the float64 reference with DESIGN.md's criterion (at most twice torch's same-dtype error, or the
float32 reference rounded to 16 bits where torch has no op, plus a small slack).
"""

import ml_dtypes
import numpy as np
import pytest

import fastnorm
from fastnorm.reference import divergence as R

from ._util import assert_close_to_ref

HALVES = [np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)]
HALF_IDS = ["bf16", "f16"]
SHAPES = [(1, 1), (3, 5), (7, 130), (4, 1031)]


def _bits(a):
    return np.asarray(a).view(np.uint16)


def assert_rounded_once(got, f32, dtype, name):
    """``got`` (16-bit) is the float32 result rounded to nearest even once, bit for bit."""
    want = np.asarray(f32, np.float32).astype(dtype)
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
    np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=f"{name}: not the float32 result rounded once")


def _torch_of(a):
    torch = pytest.importorskip("torch")
    a = np.asarray(a)
    if a.dtype == HALVES[0]:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _np_of(t):
    import torch

    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(HALVES[0])
    return t.numpy()


def _logits(rng, shape, dtype, offset=0.0, scale=3.0):
    return (offset + scale * rng.standard_normal(shape)).astype(dtype)


def _log_probs(rng, shape, dtype):
    x = 2.0 * rng.standard_normal(shape)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(dtype)


CE_OPTIONS = [
    dict(),
    dict(reduction="sum", label_smoothing=0.1),
    dict(reduction="none", weighted=True),
    dict(reduction="mean", weighted=True, label_smoothing=0.2, ignore=True),
    dict(probs=True),
    dict(probs=True, weighted=True, label_smoothing=0.1, reduction="none"),
]


def _ce_case(rng, shape, dtype, opts, offset=0.0, scale=3.0):
    n, v = shape
    x = _logits(rng, shape, dtype, offset, scale)
    if opts.get("probs"):
        p = rng.random(shape) + 0.01
        t = (p / p.sum(-1, keepdims=True)).astype(dtype)
    else:
        t = rng.integers(0, v, size=n)
        if opts.get("ignore") and n > 1:
            t[::2] = -100
    w = (rng.random(v) + 0.5).astype(np.float32) if opts.get("weighted") else None
    kw = {k: opts[k] for k in ("reduction", "label_smoothing") if k in opts}
    return x, t, w, kw


def _f32(a):
    return None if a is None else (a.astype(np.float32) if a.dtype.kind == "f" or a.dtype in HALVES else a)


# --------------------------------------------------------------------------------------- bit exactness
@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("opts", CE_OPTIONS)
def test_ce_half_is_float32_kernel_rounded_once(rng, threads, dtype, shape, opts):
    x, t, w, kw = _ce_case(rng, shape, dtype, opts)
    loss, lse, g = fastnorm.softmax_cross_entropy_forward(x, t, weight=w, grad="out", **kw)
    loss32, lse32, g32 = fastnorm.softmax_cross_entropy_forward(x.astype(np.float32), _f32(t), weight=w, grad="out",
                                                                **kw)  # fmt: skip
    assert_rounded_once(g, g32, dtype, "grad")
    assert_rounded_once(np.asarray(loss), loss32, dtype, "loss")
    np.testing.assert_array_equal(lse, lse32)
    # the same gradient in place over the logits, and from the backward kernel
    xi = x.copy()
    r = fastnorm.softmax_cross_entropy_forward(xi, t, weight=w, grad="inplace", **kw)
    assert r.grad is xi
    np.testing.assert_array_equal(_bits(xi), _bits(g))
    d = np.ones(lse.shape, dtype) if kw.get("reduction") == "none" else 1.0
    gb = fastnorm.softmax_cross_entropy_backward(d, x, t, lse, weight=w, **kw)
    gb32 = fastnorm.softmax_cross_entropy_backward(
        d if np.isscalar(d) else d.astype(np.float32), x.astype(np.float32), _f32(t), lse32, weight=w, **kw
    )
    assert_rounded_once(gb, gb32, dtype, "backward grad")


@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("reduction", ["none", "batchmean"])
def test_kl_js_entropy_half_are_float32_kernels_rounded_once(rng, threads, dtype, reduction):
    shape = (5, 67)
    x, y = _log_probs(rng, shape, dtype), _log_probs(rng, shape, dtype)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    for name, fwd, bwd, kw in [
        ("kl", fastnorm.kl_div, fastnorm.kl_div_backward, dict(log_target=True)),
        ("js", fastnorm.js_div, fastnorm.js_div_backward, dict(beta=0.3, labels=np.array([0, -100, 1, 2, 3]))),
        ("js_fused", fastnorm.js_div, fastnorm.js_div_backward, dict(beta=0.5)),
    ]:
        gt = name != "js_fused"
        f16 = fwd(x, y, reduction=reduction, grad="out", grad_target=gt, **kw)
        f32 = fwd(x32, y32, reduction=reduction, grad="out", grad_target=gt, **kw)
        assert_rounded_once(np.asarray(f16.loss), f32.loss, dtype, f"{name} loss")
        assert_rounded_once(f16.dinput, f32.dinput, dtype, f"{name} dinput")
        if gt:
            assert_rounded_once(f16.dtarget, f32.dtarget, dtype, f"{name} dtarget")
        d16 = (rng.standard_normal(shape).astype(dtype)) if reduction == "none" else 0.5
        d32 = d16.astype(np.float32) if reduction == "none" else 0.5
        b16 = bwd(d16, x, y, reduction=reduction, target_grad=True, **kw)
        b32 = bwd(d32, x32, y32, reduction=reduction, target_grad=True, **kw)
        assert_rounded_once(b16.dinput, b32.dinput, dtype, f"{name} backward dinput")
        assert_rounded_once(b16.dtarget, b32.dtarget, dtype, f"{name} backward dtarget")
    p = (rng.random(shape) + 0.01).astype(dtype)
    h16, h32 = fastnorm.entropy(p, base=2.0), fastnorm.entropy(p.astype(np.float32), base=2.0)
    assert_rounded_once(h16, h32, dtype, "entropy")
    dh = rng.standard_normal(shape[0]).astype(dtype)
    assert_rounded_once(
        fastnorm.entropy_backward(dh, p), fastnorm.entropy_backward(dh.astype(np.float32), p.astype(np.float32)),
        dtype, "entropy backward",
    )  # fmt: skip


# ---------------------------------------------------------------------------- error vs float64 reference
@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("opts", CE_OPTIONS)
@pytest.mark.parametrize("offset", [0.0, 1e4], ids=["centered", "offset1e4"])
def test_ce_half_error_vs_torch(rng, dtype, opts, offset):
    torch = pytest.importorskip("torch")
    # at 1e4 a bfloat16 step is 64: spread the logits over a few hundred so that the softmax is not one-hot
    x, t, w, kw = _ce_case(rng, (16, 300), dtype, opts, offset=offset, scale=300.0 if offset else 3.0)
    loss, lse, g = fastnorm.softmax_cross_entropy_forward(x, t, weight=w, grad="out", **kw)
    x64 = x.astype(np.float64)
    t64 = t.astype(np.float64) if opts.get("probs") else t
    w64 = None if w is None else w.astype(np.float64)
    ref_loss, _ = R.softmax_cross_entropy_forward(x64, t64, weight=w64, **kw)
    d = np.ones(ref_loss.shape) if kw.get("reduction") == "none" else 1.0
    ref_g = R.softmax_cross_entropy_backward(d, x64, t64, weight=w64, **kw)
    xt = _torch_of(x).clone().requires_grad_()
    tt = _torch_of(t) if opts.get("probs") else torch.from_numpy(t)
    wt = None if w is None else torch.from_numpy(w).to(xt.dtype)
    tl = torch.nn.functional.cross_entropy(xt, tt, weight=wt, **kw)
    tl.sum().backward()
    assert str(tl.dtype).endswith(("bfloat16", "float16"))
    assert np.asarray(loss).dtype == dtype
    assert_close_to_ref(np.asarray(loss), _np_of(tl), ref_loss, name="loss")
    assert_close_to_ref(g, _np_of(xt.grad), ref_g, name="grad")
    assert np.all(np.isfinite(lse))


@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_half_error_vs_torch(rng, dtype, reduction, log_target):
    torch = pytest.importorskip("torch")
    x = _log_probs(rng, (8, 257), dtype)
    y = _log_probs(rng, (8, 257), dtype) if log_target else np.exp(_log_probs(rng, (8, 257), np.float64)).astype(dtype)
    r = fastnorm.kl_div(x, y, reduction=reduction, log_target=log_target, grad="out")
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    ref = R.kl_div(x64, y64, reduction=reduction, log_target=log_target)
    d = np.ones(x.shape) if reduction == "none" else 1.0
    ref_dx = R.kl_div_backward(d, x64, y64, reduction=reduction, log_target=log_target)[0]
    xt = _torch_of(x).clone().requires_grad_()
    tl = torch.nn.functional.kl_div(xt, _torch_of(y), reduction=reduction, log_target=log_target)
    tl.sum().backward()
    assert_close_to_ref(np.asarray(r.loss), _np_of(tl), ref, name="loss")
    assert_close_to_ref(r.dinput, _np_of(xt.grad), ref_dx, name="dx")


@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_js_entropy_half_error_vs_rounded_reference(rng, dtype, beta):
    """No torch op: the other result is the reference computed in float32 on the 16-bit inputs and rounded."""
    x, y = _log_probs(rng, (6, 301), dtype), _log_probs(rng, (6, 301), dtype)
    r = fastnorm.js_div(x, y, beta=beta, reduction="none", grad="out")
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    rounded = R.js_div(x.astype(np.float32), y.astype(np.float32), beta=beta, reduction="none").astype(dtype)
    ref = R.js_div(x64, y64, beta=beta, reduction="none")
    assert_close_to_ref(r.loss, rounded, ref, name="js")
    ref_dx = R.js_div_backward(np.ones(x.shape), x64, y64, beta=beta, reduction="none")[0]
    rounded_dx = R.js_div_backward(np.ones(x.shape, np.float32), x.astype(np.float32), y.astype(np.float32),
                                   beta=beta, reduction="none")[0].astype(dtype)  # fmt: skip
    assert_close_to_ref(r.dinput, rounded_dx, ref_dx, name="js dx")
    p = (1e3 + 30 * rng.random((6, 301))).astype(dtype)  # large offset: the normalization sum in float32
    h = fastnorm.entropy(p)
    h_ref = R.entropy(p.astype(np.float64))
    h_rounded = R.entropy(p.astype(np.float32)).astype(dtype)
    assert_close_to_ref(h, h_rounded, h_ref, name="entropy")


def test_ce_half_stable_for_logits_of_magnitude_1e4(rng):
    bf16 = HALVES[0]
    x = np.array([[1e4, -1e4, 0.0, 9984.0], [-1e4, -1e4, -1e4, -1e4]], np.float64).astype(bf16)
    t = np.array([0, 2])
    loss, lse, g = fastnorm.softmax_cross_entropy_forward(x, t, reduction="none", grad="out")
    ref, ref_lse = R.softmax_cross_entropy_forward(x.astype(np.float64), t, reduction="none")
    assert np.all(np.isfinite(loss.astype(np.float32)))
    assert np.all(np.isfinite(g.astype(np.float32)))
    loss32, lse32 = R.softmax_cross_entropy_forward(x.astype(np.float32), t, reduction="none")
    assert_close_to_ref(lse, lse32, ref_lse, name="lse")
    assert_close_to_ref(loss, loss32.astype(bf16), ref, name="loss")


# ---------------------------------------------------------------------------------- dtype combinations
def test_half_bad_dtype_combinations_rejected_before_writing(rng):
    bf16, f16 = HALVES
    x = _logits(rng, (3, 5), bf16)
    g = np.full((3, 5), 7, bf16)
    with pytest.raises(TypeError, match="target"):
        fastnorm.softmax_cross_entropy_forward(x, np.full((3, 5), 0.2, f16), grad="out", out=(None, None, g))
    with pytest.raises(TypeError, match="weight"):
        fastnorm.softmax_cross_entropy_forward(x, np.array([0, 1, 2]), weight=np.ones(5), grad="out",
                                               out=(None, None, g))  # fmt: skip
    with pytest.raises(ValueError, match="grad"):
        fastnorm.softmax_cross_entropy_forward(x, np.array([0, 1, 2]), grad="out", out=(None, None, g.astype(f16)))
    assert np.all(g.astype(np.float32) == 7)
    with pytest.raises(TypeError, match="target"):
        fastnorm.kl_div(x, x.astype(np.float32))
    with pytest.raises(TypeError, match="target"):
        fastnorm.js_div(x, x.astype(f16))
    with pytest.raises(TypeError, match="dh"):
        fastnorm.entropy_backward(np.ones(3, np.float32), np.abs(x))
    with pytest.raises(TypeError, match="dloss"):
        fastnorm.kl_div_backward(np.ones((3, 5), f16), x, x, reduction="none")
    # a bfloat16 weight beside bfloat16 logits is accepted (the parameter may be the data's dtype or float32)
    loss = fastnorm.softmax_cross_entropy_forward(x, np.array([0, 1, 2]), weight=np.ones(5, bf16)).loss
    assert loss.dtype == bf16
