"""Every public norm op on every empty dimension: each output is defined (never uninitialized memory).

Each call runs twice with ``out=`` buffers pre-filled with two different garbage patterns; a slot the op
forgot to write would keep its garbage and differ between the runs. The values follow torch 2.13:
statistics of an empty reduction are mean 0 and rstd NaN (torch's ``var = 0/0``), evaluation-mode
statistics come from the running statistics, an empty batch leaves the running statistics untouched,
and gradients of parameters are sums over no elements (0). The torch functional drop-ins are compared
with torch itself on the same empty inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

from ._util import assert_close_to_ref

GARBAGE = (np.float32(-7.75e30), np.float32(1234.5))
EPS = 1e-5


def _call(fn, args: dict, kwargs: dict, template):
    """Run fn twice with out= pre-filled with the two garbage patterns; the results must agree."""
    results = []
    for g in GARBAGE:
        out = tuple(None if t is None else np.full(t.shape, g, t.dtype) for t in template)
        r = fn(**args, **kwargs, out=out if len(out) > 1 else out[0])
        r = tuple(r) if isinstance(r, tuple) else (r,)
        for got, buf in zip(r, out):
            assert got is buf  # written in place
        results.append(tuple(None if a is None else a.copy() for a in r))
    for a, b in zip(*results):
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg="an output was not written (garbage survived)")
    return results[0]


def _same_as_reference(got, ref):
    """The NumPy specification (fastnorm.reference) defines the same empty cases."""
    ref = tuple(ref) if isinstance(ref, tuple) else (ref,)
    for g, r in zip(got, ref, strict=True):
        if r is None:
            assert g is None
        else:
            np.testing.assert_allclose(g, r, rtol=1e-6, equal_nan=True)


def _expect(got, value, shape):
    assert got.shape == tuple(shape)
    np.testing.assert_array_equal(got, np.full(shape, value, got.dtype))


def _channel_backward(op, x, mean, rstd, w, b, **opts):
    """The backward of a channel norm on an empty input: dx of x's shape, parameter gradients that are sums
    over no elements (0; torch's GroupNorm kernel gives NaN for dweight when L = 0, as 0 * NaN), and the
    reference's values."""
    args = dict(dy=x, x=x, mean=mean, rstd=rstd, weight=w, bias=b)
    dx, dw, db = _call(getattr(fastnorm, f"{op}_backward"), args, opts, (x, w, b))
    assert dx.shape == x.shape
    for g, p in ((dw, w), (db, b)):
        if p is not None:
            _expect(g, 0.0, p.shape)
    _same_as_reference((dx, dw, db), getattr(R, f"{op}_backward")(**args, **opts))


def _running(c, dtype=np.float32):
    rng = np.random.default_rng(c)
    return rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)


# ------------------------------------------------------------------------------------ row norms
ROW_SHAPES = [((0, 4), 1), ((3, 0), 1), ((2, 0, 3), 1), ((2, 3, 0), 2), ((0,), 1), ((0, 0), 2), ((3, 0, 0), 1)]


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "k"), ROW_SHAPES)
@pytest.mark.parametrize("affine", [False, True])
def test_row_norm_empty(op, shape, k, affine, dtype):
    x = np.zeros(shape, dtype)
    lead, norm = shape[: len(shape) - k], shape[len(shape) - k :]
    params = {"weight": np.ones(norm, dtype) if affine else None}
    if op == "layer_norm":
        params["bias"] = np.full(norm, 0.5, dtype) if affine else None
    stats = ("mean", "rstd") if op == "layer_norm" else ("rstd",)
    opts = dict(normalized_ndim=k)
    tmpl = (x, *(np.empty(lead, dtype) for _ in stats))
    y, *saved = _call(getattr(fastnorm, f"{op}_forward"), dict(x=x, **params), opts, tmpl)
    assert y.shape == shape
    for name, a in zip(stats, saved, strict=True):
        _expect(a, 0.0 if name == "mean" else np.nan, lead)
    _same_as_reference((y, *saved), getattr(R, f"{op}_forward")(x, **params, **opts))
    saved = dict(zip(stats, saved, strict=True))
    grads = _call(getattr(fastnorm, f"{op}_backward"), dict(dy=x, x=x, **saved, **params), opts, (x, *params.values()))
    assert grads[0].shape == shape
    if affine:
        for g in grads[1:]:
            _expect(g, 0.0, norm)
    _same_as_reference(grads, getattr(R, f"{op}_backward")(x, x, **saved, **params, **opts))


# ---------------------------------------------------------------------------------- channel norms
BN_SHAPES = [((0, 3), 1), ((0, 3, 4), 1), ((2, 3, 0), 1), ((2, 0, 4), 1), ((0, 0), 1), ((0, 4, 3), -1), ((2, 0, 3), -1)]


@pytest.mark.parametrize(("shape", "axis"), BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [False, True])
def test_batch_norm_empty(shape, axis, training, affine):
    x = np.zeros(shape, np.float32)
    c = shape[axis]
    w = np.full(c, 2.0, np.float32) if affine else None
    b = np.full(c, 0.5, np.float32) if affine else None
    rm, rv = _running(c)
    rm0, rv0 = rm.copy(), rv.copy()
    tmpl = (x, np.empty(c, np.float32), np.empty(c, np.float32))
    args = dict(x=x, weight=w, bias=b, running_mean=rm, running_var=rv)
    y, mean, rstd = _call(fastnorm.batch_norm_forward, args, dict(training=training, axis=axis), tmpl)
    assert y.shape == shape
    np.testing.assert_array_equal(rm, rm0)  # an empty batch does not update the running statistics
    np.testing.assert_array_equal(rv, rv0)
    if training:
        _expect(mean, 0.0, (c,))
        _expect(rstd, np.nan, (c,))
    else:
        np.testing.assert_array_equal(mean, rm)
        assert_close_to_ref(rstd, 1 / np.sqrt(rv + rv.dtype.type(EPS)), 1 / np.sqrt(rv.astype(np.float64) + EPS))
    rm_r, rv_r = rm0.copy(), rv0.copy()
    _same_as_reference((y, mean, rstd), R.batch_norm_forward(x, w, b, rm_r, rv_r, training=training, axis=axis))
    _same_as_reference((rm, rv), (rm_r, rv_r))
    if training:  # without running statistics too
        y2, mean2, rstd2 = _call(fastnorm.batch_norm_forward, dict(x=x, weight=w, bias=b), dict(axis=axis), tmpl)
        _expect(mean2, 0.0, (c,))
        _expect(rstd2, np.nan, (c,))
    _channel_backward("batch_norm", x, mean, rstd, w, b, training=training, axis=axis)


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 3, 0), (2, 0, 4), (0, 3, 0), (6, 8, 0), (2, 3, 0, 5)])
@pytest.mark.parametrize(
    ("use_input_stats", "with_running"),
    [(True, True), (True, False), (False, True)],
    ids=["stats", "stats-nostate", "eval"],
)  # evaluation needs running statistics
@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_empty(shape, use_input_stats, with_running, affine):
    x = np.zeros(shape, np.float32)
    n, c = shape[:2]
    w = np.full(c, 2.0, np.float32) if affine else None
    b = np.full(c, 0.5, np.float32) if affine else None
    rm, rv = _running(c) if with_running else (None, None)
    rm0 = None if rm is None else rm.copy()
    rv0 = None if rv is None else rv.copy()
    tmpl = (x, np.empty((n, c), np.float32), np.empty((n, c), np.float32))
    args = dict(x=x, weight=w, bias=b, running_mean=rm, running_var=rv)
    y, mean, rstd = _call(fastnorm.instance_norm_forward, args, dict(use_input_stats=use_input_stats), tmpl)
    assert y.shape == shape
    if with_running and use_input_stats and n == 0:  # torch: a mean over no instances
        _expect(rm, np.nan, (c,))
        _expect(rv, np.nan, (c,))
    elif with_running:
        np.testing.assert_array_equal(rm, rm0)
        np.testing.assert_array_equal(rv, rv0)
    rm_r = None if rm0 is None else rm0.copy()
    rv_r = None if rv0 is None else rv0.copy()
    ref = R.instance_norm_forward(x, w, b, rm_r, rv_r, use_input_stats=use_input_stats)
    _same_as_reference((y, mean, rstd), ref)
    if with_running:
        _same_as_reference((rm, rv), (rm_r, rv_r))
    if use_input_stats:
        _expect(mean, 0.0, (n, c))
        _expect(rstd, np.nan, (n, c))
    else:
        np.testing.assert_array_equal(mean, np.broadcast_to(rm, (n, c)))
        lo, hi = 1 / np.sqrt(rv + rv.dtype.type(EPS)), 1 / np.sqrt(rv.astype(np.float64) + EPS)
        assert_close_to_ref(rstd, np.broadcast_to(lo, (n, c)), np.broadcast_to(hi, (n, c)), name="rstd")
    _channel_backward("instance_norm", x, mean, rstd, w, b, use_input_stats=use_input_stats)


@pytest.mark.parametrize(
    ("shape", "groups"), [((0, 4, 3), 2), ((6, 8, 0), 2), ((2, 0, 3), 1), ((2, 0, 3), 3), ((0, 0), 1)]
)
@pytest.mark.parametrize("affine", [False, True])
def test_group_norm_empty(shape, groups, affine):
    x = np.zeros(shape, np.float32)
    n, c = shape[:2]
    w = np.full(c, 2.0, np.float32) if affine else None
    b = np.full(c, 0.5, np.float32) if affine else None
    tmpl = (x, np.empty((n, groups), np.float32), np.empty((n, groups), np.float32))
    y, mean, rstd = _call(fastnorm.group_norm_forward, dict(x=x, weight=w, bias=b), dict(num_groups=groups), tmpl)
    assert y.shape == shape
    _expect(mean, 0.0, (n, groups))
    _expect(rstd, np.nan, (n, groups))
    _same_as_reference((y, mean, rstd), R.group_norm_forward(x, groups, w, b))
    _channel_backward("group_norm", x, mean, rstd, w, b, num_groups=groups)


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0), (0, 3), (2, 0)])
def test_local_response_norm_empty(shape):
    x = np.zeros(shape, np.float32)
    y, scale = _call(fastnorm.local_response_norm_forward, dict(x=x), dict(size=3), (x, x))
    assert y.shape == scale.shape == shape
    _same_as_reference((y, scale), R.local_response_norm_forward(x, 3))
    (dx,) = _call(fastnorm.local_response_norm_backward, dict(dy=x, x=x, y=y, scale=scale), dict(size=3), (x,))
    assert dx.shape == shape


# ---------------------------------------------------------------------------------- WeightNorm, CosineLinear
@pytest.mark.parametrize(
    ("vshape", "dim"), [((0, 3), 0), ((3, 0), 0), ((3, 0), 1), ((0, 3), 1), ((0,), None), ((2, 0), None)]
)
def test_weight_norm_empty(vshape, dim):
    v = np.zeros(vshape, np.float32)
    gshape = () if dim is None else tuple(s if i == dim else 1 for i, s in enumerate(vshape))
    g = np.full(gshape, 2.0, np.float32)
    w, norm = _call(fastnorm.weight_norm_forward, dict(v=v, g=g), dict(dim=dim), (v, g))
    assert w.shape == vshape
    _expect(norm, 0.0, gshape)  # the norm of no elements
    with np.errstate(all="ignore"):
        _same_as_reference((w, norm), R.weight_norm_forward(v, g, dim=dim))
    dv, dg = _call(fastnorm.weight_norm_backward, dict(dw=v, v=v, g=g, norm=norm), dict(dim=dim), (v, g))
    assert dv.shape == vshape
    _expect(dg, np.nan, gshape)  # dot / norm = 0 / 0, as torch
    with np.errstate(all="ignore"):
        _same_as_reference((dv, dg), R.weight_norm_backward(v, v, g, norm, dim=dim))
    dv, dg = _call(
        fastnorm.weight_norm_backward,
        dict(dw=v, v=v, g=g, norm=np.full(gshape, 3.0, np.float32)),
        dict(dim=dim),
        (v, g),
    )
    _expect(dg, 0.0, gshape)


@pytest.mark.parametrize(
    ("xshape", "wshape"), [((0, 4), (5, 4)), ((3, 0), (5, 0)), ((3, 4), (0, 4)), ((2, 0, 4), (5, 4)), ((0, 0), (0, 0))]
)
def test_cosine_linear_empty(xshape, wshape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xshape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    lead, o = xshape[:-1], wshape[0]
    tmpl = (np.empty((*lead, o), np.float32), np.empty(lead, np.float32), np.empty(o, np.float32))
    y, x_norm, w_norm = _call(fastnorm.cosine_linear_forward, dict(x=x, w=w), {}, tmpl)
    _expect(y, 0.0, (*lead, o))  # empty, or D = 0: every cosine is 0 / eps^2 * 0 = 0 (torch: 0)
    _same_as_reference((y, x_norm, w_norm), R.cosine_linear_forward(x, w))
    for name, got, a in (("x_norm", x_norm, x), ("w_norm", w_norm, w)):
        assert_close_to_ref(got, np.linalg.norm(a, axis=-1), np.linalg.norm(a.astype(np.float64), axis=-1), name=name)
    dy = rng.standard_normal((*lead, o)).astype(np.float32)
    dx, dw = _call(
        fastnorm.cosine_linear_backward, dict(dy=dy, x=x, w=w, y=y, x_norm=x_norm, w_norm=w_norm), {}, (x, w)
    )
    _expect(dx, 0.0, xshape)  # no output depends on x (O = 0) or x is empty
    _same_as_reference((dx, dw), R.cosine_linear_backward(dy, x, w, y, x_norm, w_norm))
    if math_prod(lead) == 0:
        _expect(dw, 0.0, wshape)


def math_prod(shape):
    return int(np.prod(shape, dtype=np.int64))


# ---------------------------------------------------------------------------------- against torch
def _grads(torch, fn, x, *params):
    x = x.clone().requires_grad_(True)
    params = [None if p is None else p.clone().requires_grad_(True) for p in params]
    y = fn(x, *params)
    y.backward(torch.ones_like(y))
    return [y.detach(), x.grad, *[None if p is None else p.grad for p in params]]


TORCH_CASES = [
    ("layer_norm", (0, 4), lambda F, x, w, b: F.layer_norm(x, (4,), w, b), 4),
    ("layer_norm", (2, 3, 0), lambda F, x, w, b: F.layer_norm(x, (3, 0), w, b), (3, 0)),
    ("layer_norm", (2, 0, 3), lambda F, x, w, b: F.layer_norm(x, (3,), w, b), 3),
    ("layer_norm", (0,), lambda F, x, w, b: F.layer_norm(x, (0,), w, b), (0,)),
    ("rms_norm", (0, 4), lambda F, x, w, b: F.rms_norm(x, (4,), w), 4),
    ("rms_norm", (3, 0), lambda F, x, w, b: F.rms_norm(x, (0,), w), (0,)),
    ("group_norm", (0, 4, 3), lambda F, x, w, b: F.group_norm(x, 2, w, b), 4),
    ("group_norm", (2, 0, 3), lambda F, x, w, b: F.group_norm(x, 1, w, b), 0),
    ("local_response_norm", (0, 3, 4), lambda F, x, w, b: F.local_response_norm(x, 2), None),
    ("local_response_norm", (2, 3, 0), lambda F, x, w, b: F.local_response_norm(x, 2), None),
    ("batch_norm", (0, 3), lambda F, x, w, b: F.batch_norm(x, None, None, w, b, True), 3),
    ("batch_norm", (2, 3, 0), lambda F, x, w, b: F.batch_norm(x, None, None, w, b, True), 3),
    ("batch_norm", (0,), lambda F, x, w, b: F.batch_norm(x, None, None, None, None, True), None),
    ("instance_norm", (2, 3, 0), lambda F, x, w, b: F.instance_norm(x, None, None, w, b), 3),
    ("instance_norm", (0, 3, 4), lambda F, x, w, b: F.instance_norm(x), None),
]


@pytest.mark.parametrize(("name", "shape", "call", "pshape"), TORCH_CASES, ids=[f"{c[0]}-{c[1]}" for c in TORCH_CASES])
def test_torch_functional_empty_matches_torch(name, shape, call, pshape):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    import fastnorm.torch.functional as TF

    x = torch.randn(shape)
    p = [None, None] if pshape is None else [torch.randn(pshape), torch.randn(pshape)]
    want = _grads(torch, lambda *a: call(F, *a), x, *p)
    got = _grads(torch, lambda *a: call(TF, *a), x, *p)
    for g, t in zip(got, want):
        if t is None:
            assert g is None
        else:
            torch.testing.assert_close(g, t, equal_nan=True)


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (2, 3, 0)])
@pytest.mark.parametrize("module", ["BatchNorm1d", "InstanceNorm1d"])
def test_torch_modules_empty_batch_match_torch(shape, module):
    torch = pytest.importorskip("torch")
    import fastnorm.torch.nn as fnn

    if module == "InstanceNorm1d" and len(shape) == 2:
        shape = (3, 0)  # an unbatched (C, L) input
    kwargs = dict(track_running_stats=True) if module == "InstanceNorm1d" else {}
    ours, ref = getattr(fnn, module)(3, **kwargs), getattr(torch.nn, module)(3, **kwargs)
    x = torch.randn(shape)
    for m in (ours, ref):
        m.train()
        y = m(x)
        assert y.shape == x.shape
    for (k, a), (k2, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(a, b, equal_nan=True)  # torch: N = 0 makes InstanceNorm's stats NaN
