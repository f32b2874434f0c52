"""fastnorm.torch.losses: drop-in parity with torch (values and gradients, by the error criterion against a
float64 torch run), every option, torch's layouts, fallbacks, and the JSD module against composed torch ops."""

import warnings

import pytest

torch = pytest.importorskip("torch")

from fastnorm.torch import losses as L  # noqa: E402
from fastnorm.torch.nn import FastnormFallbackWarning  # noqa: E402

from ._util import assert_close_to_ref, capture_backend  # noqa: E402

HALF_DTYPES = [torch.bfloat16, torch.float16]


def _np(t):
    """A result as NumPy; 16-bit tensors widened to float32 (exact), after checking they stayed 16-bit."""
    return t.detach().float().numpy() if t.dtype in HALF_DTYPES else t.detach().numpy()


def _run(fn, *tensors, dloss=None):
    """Value and gradients (of the tensors that require grad) of fn(*tensors)."""
    out = fn(*tensors)
    d = torch.ones_like(out) if dloss is None else dloss.to(out.dtype)
    leaves = [t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(out, leaves, d)
    assert out.dtype == next(t.dtype for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point())
    return _np(out), [_np(g) for g in grads]


def _compare(ours, theirs, make, dtype, seed=0):
    """fastnorm in ``dtype`` and torch in ``dtype`` against torch in float64: fastnorm's error <= 2x torch's."""
    t64 = make(torch.float64, seed)
    t32 = make(dtype, seed)
    r64 = _run(theirs, *t64)
    rlo = _run(theirs, *t32)
    got = _run(ours, *make(dtype, seed))
    # float64: torch's float64 run is both the other result and the reference, so the bound is the slack;
    # 16-bit results are compared as float32: the slack is a few units of the 16-bit dtype
    ulps = {torch.float32: 8, torch.float64: 64}.get(dtype, 4 * torch.finfo(dtype).eps / torch.finfo(torch.float32).eps)
    assert_close_to_ref(got[0], rlo[0], r64[0], name="loss", ulps=ulps)
    assert len(got[1]) == len(r64[1])
    for g, r, lo in zip(got[1], r64[1], rlo[1], strict=True):
        assert_close_to_ref(g, lo, r, name="grad", ulps=ulps)


DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES + HALF_DTYPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["index", "probs", "nd", "1d"])
def test_cross_entropy_matches_torch(dtype, reduction, weighted, smoothing, kind):
    n, v = 13, 37

    def make(dt, seed):
        g = torch.Generator().manual_seed(seed)
        shape = {"index": (n, v), "probs": (n, v), "nd": (4, v, 3), "1d": (v,)}[kind]
        x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dt).requires_grad_()
        if kind == "probs":
            t = torch.rand(shape, generator=g, dtype=torch.float64).softmax(-1).to(dt)
        elif kind == "nd":
            t = torch.randint(0, v, (4, 3), generator=g)
            t[0, 1] = -100
        elif kind == "1d":
            t = torch.tensor(5)
        else:
            t = torch.randint(0, v, (n,), generator=g)
            t[::4] = -100
        w = (torch.rand(v, generator=g, dtype=torch.float64) + 0.5).to(dt) if weighted else None
        return x, t, w

    kw = dict(reduction=reduction, label_smoothing=smoothing)
    _compare(
        lambda x, t, w: L.cross_entropy(x, t, w, **kw),
        lambda x, t, w: torch.nn.functional.cross_entropy(x, t, w, **kw),
        make,
        dtype,
    )


def test_cross_entropy_upstream_gradient_and_module():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 11, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 11, (8,), generator=g)
    m = L.CrossEntropyLoss(label_smoothing=0.2, ignore_index=3)
    assert isinstance(m, torch.nn.CrossEntropyLoss)
    (3.5 * m(x, t)).backward()
    x2 = x.detach().clone().requires_grad_()
    (3.5 * torch.nn.CrossEntropyLoss(label_smoothing=0.2, ignore_index=3)(x2, t)).backward()
    assert_close_to_ref(x.grad, x2.grad, x2.grad, name="module grad", ulps=64)  # float64: the slack bounds
    y = L.cross_entropy(x, t, reduction="none")
    d = torch.randn(8, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad(y, x, d)
    (gx2,) = torch.autograd.grad(torch.nn.functional.cross_entropy(x2, t, reduction="none"), x2, d)
    assert_close_to_ref(gx, gx2, gx2, name="grad with upstream dloss", ulps=64)


def test_cross_entropy_all_ignored_is_nan_and_bad_target_raises():
    x = torch.zeros(3, 4, requires_grad=True)
    assert torch.isnan(L.cross_entropy(x, torch.full((3,), -100)))
    with pytest.raises(ValueError, match="class index 4"):
        L.cross_entropy(x, torch.tensor([0, 4, 1]))


def test_fallbacks_warn_and_match_torch():
    x = torch.randn(4, 6, requires_grad=True)
    t = torch.rand(4, 6).softmax(-1).requires_grad_()
    with pytest.warns(FastnormFallbackWarning, match="require grad"):
        out = L.CrossEntropyLoss()(x, t)
    assert torch.equal(out, torch.nn.functional.cross_entropy(x, t))
    a = torch.randn(4, 6).log_softmax(-1)
    b = torch.rand(1, 6)  # broadcasting target: torch's own
    with pytest.warns(FastnormFallbackWarning, match="broadcasts"):
        out = L.KLDivLoss(reduction="batchmean")(a, b)
    assert torch.equal(out, torch.nn.functional.kl_div(a, b, reduction="batchmean"))


@pytest.mark.parametrize("dtype", DTYPES + HALF_DTYPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("target_grad", [False, True])
def test_kl_div_matches_torch(dtype, reduction, log_target, target_grad):
    def make(dt, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(6, 29, generator=g, dtype=torch.float64).log_softmax(-1).to(dt).requires_grad_()
        t = torch.randn(6, 29, generator=g, dtype=torch.float64).log_softmax(-1)
        t = (t if log_target else t.exp()).to(dt).requires_grad_(target_grad)
        return x, t

    kw = dict(reduction=reduction, log_target=log_target)
    with pytest.warns(UserWarning, match="mean") if reduction == "mean" else _nullcontext():
        _compare(lambda x, t: L.kl_div(x, t, **kw), lambda x, t: torch.nn.functional.kl_div(x, t, **kw), make, dtype)
    m = L.KLDivLoss(**kw)
    assert isinstance(m, torch.nn.KLDivLoss)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("dtype", DTYPES + HALF_DTYPES)
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["none", "batchmean", "sum"])
@pytest.mark.parametrize("with_labels", [False, True])
def test_js_div_matches_composed_torch(dtype, beta, reduction, with_labels):
    def make(dt, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(7, 31, generator=g, dtype=torch.float64).log_softmax(-1).to(dt).requires_grad_()
        y = torch.randn(7, 31, generator=g, dtype=torch.float64).log_softmax(-1).to(dt).requires_grad_()
        lab = torch.tensor([1, -100, 2, 3, -100, 0, 5]) if with_labels else None
        return x, y, lab

    _compare(
        lambda x, y, lab: L.JSDLoss(beta, reduction=reduction)(x, y, lab),
        lambda x, y, lab: L._js_torch(x, y, lab, beta, -100, reduction),
        make,
        dtype,
    )


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_cpu_tensors_run_on_fastnorm_zero_copy(dtype, monkeypatch):
    """16-bit CPU tensors reach the kernels as views of the tensor's memory (no fallback, no copy)."""
    import fastnorm

    x = torch.randn(5, 9).to(dtype).requires_grad_()
    t = torch.tensor([0, 3, -100, 8, 1])
    seen = []
    real = fastnorm.softmax_cross_entropy_forward

    def spy(logits, *a, **k):
        seen.append(logits.__array_interface__["data"][0])
        return real(logits, *a, **k)

    monkeypatch.setattr(fastnorm, "softmax_cross_entropy_forward", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FastnormFallbackWarning)
        loss = L.CrossEntropyLoss()(x, t)
    assert seen[-1] == x.data_ptr()
    assert loss.dtype == dtype
    loss.backward()
    assert x.grad.dtype == dtype
    assert torch.isfinite(x.grad.float()).all()


def test_js_module_repr_and_bad_beta():
    assert "beta=0.25" in repr(L.JSDLoss(0.25))
    with pytest.raises(ValueError, match="beta"):
        L.JSDLoss(2.0)


# ------------------------------------------------------------------------------- torch.library / compile
def _logp(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(*shape, generator=g, dtype=torch.float64), -1)


def test_opcheck_loss_custom_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 4, -100, 0])
    tp = torch.softmax(torch.randn(4, 5, generator=g, dtype=torch.float64), -1)
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    _, lse, _ = L._ce_fwd_impl(x, t, w, -100, 0.1, "none", False)
    lq, lp = _logp(4, 5, seed=1), _logp(4, 5, seed=2)
    dl = torch.randn(4, 5, generator=g, dtype=torch.float64)
    cases = [
        (L._ce_fwd_op, (x, t, w, -100, 0.1, "mean", True)),
        (L._ce_fwd_op, (x, t, None, -100, 0.0, "none", False)),
        (L._ce_fwd_op, (x, tp, None, -100, 0.2, "sum", True)),
        (L._ce_bwd_op, (dl[:, 0].clone(), x, t, lse, w, -100, 0.1, "none")),
        (L._kl_fwd_op, (lq, lp.exp(), "batchmean", False, True, True)),
        (L._kl_fwd_op, (lq, lp, "none", True, False, False)),
        (L._kl_bwd_op, (dl, lq, lp, "none", True, True, True)),
        (L._kl_bwd_op, (dl, lq, lp.exp(), "none", False, True, False)),
        (L._js_fwd_op, (lq, lp, t, 0.3, -100, "batchmean", True, True)),
        (L._js_fwd_op, (lq, lp, None, 0.5, -100, "none", False, False)),
        (L._js_bwd_op, (dl, lq, lp, t, 0.5, -100, "none", True, False)),
    ]
    for op, args in cases:
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), (op, result)


# the fused (reduced) and the unfused ("none": a backward op) paths, each loss once
_COMPILE_CASES = {
    "cross_entropy": (
        lambda x, y, t: L.cross_entropy(x, t, label_smoothing=0.1),
        ("fastnorm.cross_entropy_forward",),
    ),
    "cross_entropy_none": (
        lambda x, y, t: L.cross_entropy(x, t, reduction="none").sum(),
        ("fastnorm.cross_entropy_forward", "fastnorm.cross_entropy_backward"),
    ),
    "kl_div_none": (
        lambda x, y, t: L.kl_div(torch.log_softmax(x, -1), torch.softmax(y, -1), reduction="none").sum(),
        ("fastnorm.kl_div_forward", "fastnorm.kl_div_backward"),
    ),
    "js_div": (
        lambda x, y, t: L.js_div(torch.log_softmax(x, -1), torch.log_softmax(y, -1), t, beta=0.3),
        ("fastnorm.js_div_forward",),
    ),
}


@pytest.mark.parametrize("name", list(_COMPILE_CASES))
def test_torch_compile_fullgraph_uses_custom_ops(name):
    fn, ops = _COMPILE_CASES[name]

    def inputs():
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)
        y = torch.randn(4, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64, requires_grad=True)
        return x, y, torch.tensor([2, -100, 5, 0])

    torch._dynamo.reset()
    backend, graphs = capture_backend()
    compiled = torch.compile(lambda x, y, t: fn(x, y, t) * 3.0, backend=backend, fullgraph=True)
    xc, yc, t = inputs()
    out = compiled(xc, yc, t)
    xe, ye, _ = inputs()
    eager = fn(xe, ye, t) * 3.0
    torch.testing.assert_close(out, eager)
    wrt = (xc, yc) if not name.startswith("cross") else (xc,)
    wrt_e = (xe, ye) if not name.startswith("cross") else (xe,)
    for gc, ge in zip(torch.autograd.grad(out, wrt), torch.autograd.grad(eager, wrt_e), strict=True):
        torch.testing.assert_close(gc, ge)
    code = "\n".join(graphs)
    for op in ops:
        assert op in code, f"{op} not in the compiled graphs"
