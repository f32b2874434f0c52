"""fastnorm.torch fused residual add + norm: add_layer_norm / add_rms_norm, AddLayerNorm / AddRMSNorm.

gradcheck in float64 (gradients to x, residual, weight, bias through both outputs), DESIGN.md's error
criterion against torch's composition ``h = x + r; F.layer_norm(h) / F.rms_norm(h)`` in float32 and
bfloat16, torch.library.opcheck on the four custom ops, torch.compile(fullgraph=True), modules, bad input.
"""

from __future__ import annotations

import warnings

import pytest

from ._util import assert_close_to_ref

torch = pytest.importorskip("torch")
pytest.importorskip("fastnorm.add_norm")
FF = pytest.importorskip("fastnorm.torch.functional")
FN = pytest.importorskip("fastnorm.torch.nn")
TF = torch.nn.functional


def _leaf(gen, shape, dtype, shift=0.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) + shift).to(dtype).requires_grad_()


def _inputs(gen, dtype, shape=(3, 4, 10), nshape=(10,), weight=True, bias=True, pdtype=None, shift=0.0):
    pdtype = pdtype or dtype
    return dict(
        x=_leaf(gen, shape, dtype, shift),
        r=_leaf(gen, shape, dtype),
        weight=_leaf(gen, nshape, pdtype) if weight else None,
        bias=_leaf(gen, nshape, pdtype) if bias else None,
    )


def _fast(kind, a, nshape, eps):
    if kind == "layer":
        return FF.add_layer_norm(a["x"], a["r"], nshape, a["weight"], a["bias"], eps)
    return FF.add_rms_norm(a["x"], a["r"], nshape, a["weight"], eps)


def _torch(kind, a, nshape, eps):
    h = a["x"] + a["r"]
    if kind == "layer":
        return TF.layer_norm(h, nshape, a["weight"], a["bias"], eps), h
    return TF.rms_norm(h, nshape, a["weight"], eps), h


def _leaves(a):
    return [k for k, v in a.items() if v is not None]


def _detached(a, dtype=None):
    return {k: None if v is None else v.detach().to(dtype or v.dtype).requires_grad_() for k, v in a.items()}


def _run(f, a, dy, dh):
    y, h = f(a)
    outs, grads = ((y, h), (dy.to(y.dtype), dh.to(h.dtype))) if dh is not None else ((y,), (dy.to(y.dtype),))
    g = torch.autograd.grad(outs, [a[k] for k in _leaves(a)], grads)
    return y, h, dict(zip(_leaves(a), g))


VARIANTS = [
    ("layer", True, True),
    ("layer", True, False),
    ("layer", False, False),
    ("rms", True, False),
    ("rms", False, False),
]
IDS = ["ln-affine", "ln-weight", "ln-plain", "rms-weight", "rms-plain"]


@pytest.mark.parametrize(("kind", "weight", "bias"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("nshape", [(5,), (3, 5)], ids=["1d", "2d"])
def test_gradcheck_float64(kind, weight, bias, nshape):
    """Through both outputs (y and the residual stream h): gradients of x, residual, weight, bias."""
    gen = torch.Generator().manual_seed(0)
    a = _inputs(gen, torch.float64, shape=(2, 3, 5), nshape=nshape, weight=weight, bias=bias and kind == "layer")
    keys = _leaves(a)

    def f(*ts):
        b = dict(a, **dict(zip(keys, ts)))
        return _fast(kind, b, nshape, 1e-5)

    assert torch.autograd.gradcheck(f, [a[k] for k in keys], eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_gradcheck_custom_op_autograd(kind):
    """The custom ops' own autograd (register_autograd: the path torch.compile traces), y and h used."""
    gen = torch.Generator().manual_seed(7)
    a = _inputs(gen, torch.float64, shape=(4, 6), nshape=(6,), bias=kind == "layer")
    keys = _leaves(a)
    ops = torch.ops.fastnorm

    def f(*ts):
        b = dict(a, **dict(zip(keys, ts)))
        if kind == "layer":
            return ops.add_layer_norm_forward(b["x"], b["r"], b["weight"], b["bias"], 1, 1e-5)[:2]
        return ops.add_rms_norm_forward(b["x"], b["r"], b["weight"], 1, 1e-5)[:2]

    assert torch.autograd.gradcheck(f, [a[k] for k in keys], eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("used", ["y", "h"])
def test_one_output_used(kind, used):
    """Only y (no gradient on the residual stream: dh absent) or only h (dy absent) reaches the loss."""
    gen = torch.Generator().manual_seed(8)
    a = _inputs(gen, torch.float64, shape=(4, 6), nshape=(6,), bias=kind == "layer")
    b = _detached(a)
    y, h = _fast(kind, a, (6,), 1e-5)
    ty, th = _torch(kind, b, (6,), 1e-5)
    ((y if used == "y" else h) ** 2).sum().backward()
    ((ty if used == "y" else th) ** 2).sum().backward()
    for k in _leaves(a):
        if b[k].grad is None:
            assert a[k].grad is None or not a[k].grad.any(), k
        else:
            assert_close_to_ref(a[k].grad, None, b[k].grad, name=k)  # float64: the helper's float64 tolerance


@pytest.mark.parametrize(("kind", "weight", "bias"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("with_dh", [True, False], ids=["dh", "no-dh"])
@pytest.mark.parametrize("shift", [0.0, 1e3], ids=["centered", "offset"])
def test_matches_torch_composition_float32(kind, weight, bias, with_dh, shift):
    """Error criterion: fastnorm vs float64 <= 2x torch-float32 vs float64 + slack, output and gradients."""
    gen = torch.Generator().manual_seed(1)
    a = _inputs(gen, torch.float32, shape=(16, 96), nshape=(96,), weight=weight, bias=bias, shift=shift)
    dy = torch.randn(16, 96, generator=gen)
    dh = torch.randn(16, 96, generator=gen) if with_dh else None
    got = _run(lambda b: _fast(kind, b, (96,), 1e-5), _detached(a), dy, dh)
    other = _run(lambda b: _torch(kind, b, (96,), 1e-5), _detached(a), dy, dh)
    ref = _run(lambda b: _torch(kind, b, (96,), 1e-5), _detached(a, torch.float64), dy.double(),
               None if dh is None else dh.double())  # fmt: skip
    for i, name in enumerate(("y", "h")):
        assert got[i].dtype == torch.float32
        assert_close_to_ref(got[i], other[i], ref[i], name=f"{kind} {name}")
    for k in got[2]:
        assert got[2][k].dtype == a[k].dtype
        assert_close_to_ref(got[2][k], other[2][k], ref[2][k], name=f"{kind} d{k}")
    # the residual stream is the plain sum, rounded once: bit for bit torch's x + r
    assert torch.equal(got[1], other[1])


def test_gradient_of_x_and_residual_are_separate_tensors():
    gen = torch.Generator().manual_seed(2)
    a = _inputs(gen, torch.float32, shape=(5, 8), nshape=(8,))
    y, h = FF.add_layer_norm(a["x"], a["r"], 8, a["weight"], a["bias"])
    (y.sum() + 2 * h.sum()).backward()
    gx, gr = a["x"].grad, a["r"].grad
    assert torch.equal(gx, gr)
    gx.add_(1.0)  # accumulating into one leaf's grad must not change the other's
    assert not torch.equal(gx, gr)


def _half_supported(op, dt):
    return FF.unsupported_reason(torch.empty(0, dtype=dt), op=op)


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("pdt", ["same", "float32"])
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_half_matches_torch_composition(kind, dt, pdt):
    reason = _half_supported(f"add_{kind}_norm" if kind == "layer" else "add_rms_norm", dt)
    if reason is not None:
        pytest.skip(f"16-bit add_{kind}_norm kernels are not on this branch: {reason}")
    gen = torch.Generator().manual_seed(3)
    pdtype = dt if pdt == "same" else torch.float32
    a = _inputs(gen, dt, shape=(12, 64), nshape=(64,), bias=kind == "layer", pdtype=pdtype, shift=1e3)
    dy = torch.randn(12, 64, generator=gen).to(dt)
    dh = torch.randn(12, 64, generator=gen).to(dt)
    got = _run(lambda b: _fast(kind, b, (64,), 1e-5), _detached(a), dy, dh)
    other = _run(lambda b: _torch(kind, b, (64,), 1e-5), _detached(a), dy, dh)
    ref = _run(lambda b: _torch(kind, b, (64,), 1e-5), _detached(a, torch.float64), dy.double(), dh.double())
    assert got[0].dtype == got[1].dtype == dt
    assert torch.equal(got[1], other[1])  # h = x + r rounded once to the dtype, as torch's add
    assert_close_to_ref(got[0], other[0], ref[0], name=f"{kind} {dt} y")
    for k in got[2]:
        assert got[2][k].dtype == a[k].dtype
        assert_close_to_ref(
            got[2][k], other[2][k].to(got[2][k].dtype), ref[2][k], name=f"{kind} {dt} d{k}", sample_slack=True
        )


# ------------------------------------------------------------------------------------------- custom ops
def _opcheck_samples():
    gen = torch.Generator().manual_seed(4)
    x, r = torch.randn(3, 2, 6, generator=gen), torch.randn(3, 2, 6, generator=gen)
    w, b = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    ops = torch.ops.fastnorm
    y, h, mean, rstd = ops.add_layer_norm_forward(x, r, w, b, 1, 1e-5)
    _, _, rms_rstd = ops.add_rms_norm_forward(x, r, w, 1, 1e-5)
    dy, dh = torch.randn_like(x), torch.randn_like(x)

    def g(t):
        return t.clone().requires_grad_()

    return [
        (ops.add_layer_norm_forward, (g(x), g(r), g(w), g(b), 1, 1e-5)),
        (ops.add_layer_norm_forward, (g(x), g(r), None, None, 2, 1e-5)),
        (ops.add_layer_norm_backward, (dy, dh, h, mean, rstd, w, b, 1)),
        (ops.add_layer_norm_backward, (dy, None, h, mean, rstd, None, None, 1)),
        (ops.add_rms_norm_forward, (g(x), g(r), g(w), 1, 1e-5)),
        (ops.add_rms_norm_forward, (g(x), g(r), None, 1, 1e-5)),
        (ops.add_rms_norm_backward, (dy, dh, h, rms_rstd, w, 1)),
        (ops.add_rms_norm_backward, (dy, None, h, rms_rstd, None, 1)),
    ]


@pytest.mark.parametrize("index", range(8))
def test_opcheck(index):
    op, args = _opcheck_samples()[index]
    torch.library.opcheck(op, args)


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()

    def step(x, r, w, b, w2):
        y, h = FF.add_layer_norm(x, r, (16,), w, b)
        z, h2 = FF.add_rms_norm(torch.tanh(y), h, (16,), w2, 1e-6)
        return (z * z).sum() + h2.sum()

    gen = torch.Generator().manual_seed(5)
    args = [torch.randn(4, 16, generator=gen).requires_grad_() for _ in range(2)]
    args += [torch.randn(16, generator=gen).requires_grad_() for _ in range(3)]
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out_c = compiled(*args)
    grads_c = torch.autograd.grad(out_c, args)
    out_e = step(*args)
    grads_e = torch.autograd.grad(out_e, args)
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- modules
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_modules_follow_functional_and_torch_state(kind):
    cls, base = (FN.AddLayerNorm, torch.nn.LayerNorm) if kind == "layer" else (FN.AddRMSNorm, torch.nn.RMSNorm)
    torch.manual_seed(6)
    ref = base(12, elementwise_affine=True)
    with torch.no_grad():
        ref.weight.normal_()
    m = cls(12)
    assert set(m.state_dict()) == set(ref.state_dict())
    m.load_state_dict(ref.state_dict())
    x, r = torch.randn(5, 12, requires_grad=True), torch.randn(5, 12, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FN.FastnormFallbackWarning)
        y, h = m(x, r)
    if kind == "layer":
        fy, fh = FF.add_layer_norm(x, r, 12, m.weight, m.bias, m.eps)
    else:
        fy, fh = FF.add_rms_norm(x, r, 12, m.weight, m.eps)
    assert torch.equal(y, fy)
    assert torch.equal(h, fh)
    (y.sum() + h.sum()).backward()
    assert m.weight.grad is not None
    assert x.grad is not None
    assert r.grad is not None
    if kind == "layer":
        assert m.bias.grad is not None
    torch.testing.assert_close(y, ref(x + r))


@pytest.mark.parametrize("cls", ["AddLayerNorm", "AddRMSNorm"])
def test_module_falls_back_with_warning_on_unsupported_device(cls):
    m = getattr(FN, cls)(6, device="meta")
    x = torch.empty(2, 6, device="meta")
    with pytest.warns(FN.FastnormFallbackWarning, match="meta"):
        y, h = m(x, x)
    assert y.device.type == h.device.type == "meta"
    assert y.shape == h.shape == x.shape


# ------------------------------------------------------------------------------------------- bad input
def test_bad_input():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="add_layer_norm"):
        FF.add_layer_norm(x, x, (7,))
    with pytest.raises(TypeError, match="add_rms_norm"):
        FF.add_rms_norm(x.to(torch.int32), x.to(torch.int32), (8,))
    with pytest.raises((ValueError, TypeError), match="residual"):
        FF.add_layer_norm(x, torch.randn(3, 9), (8,))
    with pytest.raises((ValueError, TypeError), match="residual"):
        FF.add_rms_norm(x, torch.randn(3, 8, dtype=torch.float64), (8,))
