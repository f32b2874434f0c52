"""fastnorm.torch.nn: same outputs, gradients, buffers and state_dict keys as the torch modules; checkpoints
load both ways; fallback (one warning) on unsupported dtypes; swap_modules."""

import copy
import warnings
from dataclasses import dataclass, field

import pytest

torch = pytest.importorskip("torch")
FN = pytest.importorskip("fastnorm.torch.nn")

from ._util import assert_close_to_ref  # noqa: E402


@dataclass
class ModCase:
    fast: type
    ref: type
    args: tuple
    shape: tuple
    kwargs: dict = field(default_factory=dict)


CASES = {
    "LayerNorm": ModCase(FN.LayerNorm, torch.nn.LayerNorm, ((4, 6),), (3, 5, 4, 6)),
    "LayerNorm_nobias": ModCase(FN.LayerNorm, torch.nn.LayerNorm, (6,), (7, 6), {"bias": False, "eps": 1e-3}),
    "LayerNorm_noaffine": ModCase(FN.LayerNorm, torch.nn.LayerNorm, (6,), (7, 6), {"elementwise_affine": False}),
    "RMSNorm": ModCase(FN.RMSNorm, torch.nn.RMSNorm, (10,), (2, 3, 10)),
    "RMSNorm_eps": ModCase(FN.RMSNorm, torch.nn.RMSNorm, ((2, 5),), (4, 2, 5), {"eps": 1e-5}),
    "RMSNorm_noaffine": ModCase(FN.RMSNorm, torch.nn.RMSNorm, (5,), (4, 5), {"elementwise_affine": False}),
    "BatchNorm1d_2d_input": ModCase(FN.BatchNorm1d, torch.nn.BatchNorm1d, (5,), (8, 5)),
    "BatchNorm1d": ModCase(FN.BatchNorm1d, torch.nn.BatchNorm1d, (5,), (4, 5, 3), {"momentum": 0.3}),
    "BatchNorm1d_cumulative": ModCase(FN.BatchNorm1d, torch.nn.BatchNorm1d, (3,), (4, 3, 2), {"momentum": None}),
    "BatchNorm2d": ModCase(FN.BatchNorm2d, torch.nn.BatchNorm2d, (4,), (2, 4, 3, 5)),
    "BatchNorm2d_noaffine": ModCase(FN.BatchNorm2d, torch.nn.BatchNorm2d, (4,), (2, 4, 3, 3), {"affine": False}),
    "BatchNorm2d_untracked": ModCase(
        FN.BatchNorm2d, torch.nn.BatchNorm2d, (3,), (2, 3, 2, 2), {"track_running_stats": False}
    ),
    "BatchNorm3d": ModCase(FN.BatchNorm3d, torch.nn.BatchNorm3d, (2,), (2, 2, 3, 2, 2), {"eps": 1e-3}),
    "InstanceNorm1d": ModCase(FN.InstanceNorm1d, torch.nn.InstanceNorm1d, (4,), (3, 4, 6)),
    "InstanceNorm1d_unbatched": ModCase(FN.InstanceNorm1d, torch.nn.InstanceNorm1d, (4,), (4, 6), {"affine": True}),
    "InstanceNorm2d_tracked": ModCase(
        FN.InstanceNorm2d,
        torch.nn.InstanceNorm2d,
        (3,),
        (2, 3, 4, 4),
        {"affine": True, "track_running_stats": True},
    ),
    "InstanceNorm3d": ModCase(FN.InstanceNorm3d, torch.nn.InstanceNorm3d, (2,), (2, 2, 2, 3, 2), {"affine": True}),
    "GroupNorm": ModCase(FN.GroupNorm, torch.nn.GroupNorm, (3, 6), (2, 6, 5)),
    "LocalResponseNorm": ModCase(FN.LocalResponseNorm, torch.nn.LocalResponseNorm, (3,), (2, 5, 4), {"alpha": 0.1}),
    "LocalResponseNorm_4d": ModCase(
        FN.LocalResponseNorm, torch.nn.LocalResponseNorm, (2,), (2, 4, 3, 2), {"alpha": 0.2, "beta": 0.5, "k": 2.0}
    ),
    "GroupNorm_4d_noaffine": ModCase(FN.GroupNorm, torch.nn.GroupNorm, (2, 4), (3, 4, 2, 3), {"affine": False}),
}


def _pair(case, dtype=torch.float32, seed=0):
    """(fastnorm module, torch module) with the same random parameters and buffers."""
    torch.manual_seed(seed)
    ref = case.ref(*case.args, **case.kwargs).to(dtype)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p))
    fast = case.fast(*case.args, **case.kwargs).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return fast, ref


def _ran_fastnorm(out) -> bool:
    """Whether the autograd graph of ``out`` holds a fastnorm node (LayerNormFunctionBackward, ...)."""
    todo, seen = [out.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__.endswith("FunctionBackward"):
            return True
        todo += [n for n, _ in node.next_functions]
    return False


def _run(module, x, dy):
    x = x.clone().requires_grad_()
    out = module(x)
    if isinstance(module, tuple(c.fast for c in CASES.values())):
        assert _ran_fastnorm(out), "the fastnorm autograd Function is not in the graph"
    out.backward(dy)
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", CASES)
def test_same_outputs_and_grads(name, dtype, threads):
    """DESIGN.md's criterion: fastnorm's error against torch's module in float64 (same upcast parameters and
    inputs) at most 2x torch's same-dtype error plus a few ulps."""
    from ._util import assert_close_to_ref

    case = CASES[name]
    fast, ref = _pair(case, dtype)
    ref64 = _pair(case, dtype)[1].double()
    x = torch.randn(case.shape, dtype=dtype)
    dy = torch.randn(case.shape, dtype=dtype)
    ulps = 8 if dtype == torch.float32 else 64
    for mode in ("train", "eval"):
        for m in (fast, ref, ref64):
            getattr(m, mode)()
        y, dx, g = _run(fast, x, dy)
        yr, dxr, gr = _run(ref, x, dy)
        y64, dx64, g64 = _run(ref64, x.double(), dy.double())
        assert_close_to_ref(y, yr, y64, name=f"{mode} output", ulps=ulps)
        assert_close_to_ref(dx, dxr, dx64, name=f"{mode} dx", ulps=ulps)
        assert g.keys() == gr.keys()
        for k in g:
            assert_close_to_ref(g[k], gr[k], g64[k], name=f"{mode} d{k}", ulps=ulps)
        for m in (fast, ref, ref64):
            m.zero_grad()
    states = zip(fast.state_dict().items(), ref.state_dict().items(), ref64.state_dict().items(), strict=True)
    for (kf, bf), (kr, br), (_, b64) in states:
        assert kf == kr
        if bf.dtype.is_floating_point:
            assert_close_to_ref(bf, br, b64, name=kf, ulps=ulps)
        else:
            assert torch.equal(bf, br), kf


@pytest.mark.parametrize("name", CASES)
def test_state_dict_interchange_both_ways(name):
    case = CASES[name]
    torch.manual_seed(3)
    ref = case.ref(*case.args, **case.kwargs)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p))
    fast = case.fast(*case.args, **case.kwargs)
    assert list(fast.state_dict()) == list(ref.state_dict())
    fast.load_state_dict(ref.state_dict(), strict=True)
    back = case.ref(*case.args, **case.kwargs)
    back.load_state_dict(fast.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(fast.state_dict()[k], v)
        assert torch.equal(back.state_dict()[k], v)
    assert isinstance(fast, case.ref)
    assert repr(fast) == repr(ref)


def _no_half_kernels(monkeypatch, op):
    """As on a build whose ``op`` has no 16-bit CPU kernels (its forward raises TypeError for bfloat16)."""
    FF = FN.F

    def probe(*arrays):
        raise TypeError(f"{op}_forward: x has dtype bfloat16; expected one of float32, float64 on cpu")

    monkeypatch.setattr(FF, "_half_reasons", {})
    monkeypatch.setitem(FF._HALF_PROBES, op, probe)


@pytest.mark.parametrize("name", ["LayerNorm", "RMSNorm", "BatchNorm2d", "InstanceNorm2d_tracked", "GroupNorm"])
def test_fallback_warns_once_and_matches_torch(name, monkeypatch):
    case = CASES[name]
    monkeypatch.setattr(FN, "_warned", set())
    fast, ref = _pair(case, torch.bfloat16)
    _no_half_kernels(monkeypatch, fast._fastnorm_op)
    x = torch.randn(case.shape, dtype=torch.bfloat16)
    with pytest.warns(FN.FastnormFallbackWarning, match="bfloat16"):
        y = fast(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast(x)  # second call: no warning
    torch.testing.assert_close(y, ref(x))


def test_batch_norm_channels_last_input():
    """DESIGN.md's criterion against torch's module in float64 on the same (upcast) input."""
    fast, ref = _pair(CASES["BatchNorm2d"])
    ref64 = _pair(CASES["BatchNorm2d"])[1].double()
    x = torch.randn(2, 4, 3, 5).to(memory_format=torch.channels_last)
    dy = torch.randn(2, 4, 3, 5)
    y, dx, g = _run(fast, x, dy)
    yr, dxr, gr = _run(ref, x, dy)
    y64, dx64, g64 = _run(ref64, x.double(), dy.double())
    assert_close_to_ref(y, yr, y64, name="y")
    assert_close_to_ref(dx, dxr, dx64, name="dx")
    for k in g:
        assert_close_to_ref(g[k], gr[k], g64[k], name=k)
    assert_close_to_ref(fast.running_var, ref.running_var, ref64.running_var, name="running_var")


def test_batch_norm_one_value_per_channel_raises_like_torch():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.nn.BatchNorm1d(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        FN.BatchNorm1d(3)(torch.randn(1, 3))


def test_swap_modules_shares_parameters():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16),
        torch.nn.LayerNorm(16),
        torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.RMSNorm(16)),
        torch.nn.BatchNorm1d(16),
        torch.nn.GroupNorm(4, 16),
        torch.nn.Linear(16, 2),
    )
    model.eval()
    params_before = list(model.parameters())
    x = torch.randn(5, 8)
    y_before = model(x)
    y64 = copy.deepcopy(model).double()(x.double())
    assert FN.swap_modules(model) == 4
    assert type(model[1]) is FN.LayerNorm
    assert type(model[3][1]) is FN.RMSNorm
    assert type(model[4]) is FN.BatchNorm1d
    assert type(model[5]) is FN.GroupNorm
    assert model[4].running_var is model.state_dict(keep_vars=True)["4.running_var"]
    assert all(a is b for a, b in zip(params_before, model.parameters(), strict=True))
    assert_close_to_ref(model(x).detach(), y_before.detach(), y64.detach(), name="swapped model")
    assert FN.swap_modules(model) == 0


def _torch_weight_norm_linear(lin, dim=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        return torch.nn.utils.weight_norm(lin, dim=dim)


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_weight_norm_linear_matches_torch_weight_norm(dim, bias, threads):
    torch.manual_seed(0)
    fast = FN.WeightNormLinear(6, 4, bias=bias, dim=dim, dtype=torch.float64)
    torch.manual_seed(0)
    ref = _torch_weight_norm_linear(torch.nn.Linear(6, 4, bias=bias, dtype=torch.float64), dim)
    assert sorted(fast.state_dict()) == sorted(ref.state_dict())
    for k, v in ref.state_dict().items():  # same initialization: w = Linear's init, g = ||v||
        assert_close_to_ref(fast.state_dict()[k], v, v, name=k, ulps=64)  # float64: the slack bounds
    with torch.no_grad():
        fast.weight_g.mul_(1.5)
    ref.load_state_dict(fast.state_dict())
    x, dy = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    y, dx, g = _run(fast, x, dy)
    yr, dxr, gr = _run(ref, x, dy)
    # float64: torch's float64 result is the other result and the reference, so the slack bounds
    assert_close_to_ref(y, yr, yr, name="y", ulps=64)
    assert_close_to_ref(dx, dxr, dxr, name="dx", ulps=64)
    assert g.keys() == gr.keys()
    for k in g:
        assert_close_to_ref(g[k], gr[k], gr[k], name=k, ulps=64)
    assert torch.autograd.gradcheck(
        lambda v, gg: FN.weight_norm_weight(v, gg, dim), (fast.weight_v.detach().requires_grad_(),
                                                          fast.weight_g.detach().requires_grad_())
    )  # fmt: skip


def test_weight_norm_linear_loads_parametrizations_checkpoint():
    torch.manual_seed(1)
    ref = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(5, 3))
    fast = FN.WeightNormLinear(5, 3)
    fast.load_state_dict(ref.state_dict())
    ref64 = copy.deepcopy(ref).double()
    x = torch.randn(4, 5)
    with torch.no_grad():
        assert_close_to_ref(fast(x), ref(x), ref64(x.double()), name="y")
        assert_close_to_ref(fast.weight, ref.weight, ref64.weight, name="weight")


def test_weight_norm_linear_bad_dim():
    with pytest.raises(ValueError, match="dim"):
        FN.WeightNormLinear(3, 2, dim=2)


def test_cosine_linear_matches_torch_and_loads_linear_checkpoint(threads, monkeypatch):
    monkeypatch.setattr(FN, "_warned", set())
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4, bias=False, dtype=torch.float64)
    fast = FN.CosineLinear(6, 4, dtype=torch.float64)
    fast.load_state_dict(lin.state_dict())
    nf = torch.nn.functional.normalize

    class Ref(torch.nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.weight = torch.nn.Parameter(weight.detach().clone())

        def forward(self, x):
            return torch.nn.functional.linear(nf(x, dim=-1, eps=1e-8), nf(self.weight, dim=-1, eps=1e-8))

    ref = Ref(lin.weight)
    x, dy = torch.randn(2, 3, 6, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    y, dx, g = _run(fast, x, dy)
    yr, dxr, gr = _run(ref, x, dy)
    # float64: torch's float64 result is the other result and the reference, so the slack bounds
    assert_close_to_ref(y, yr, yr, name="y", ulps=64)
    assert y.abs().max() <= 1 + 1e-12
    assert_close_to_ref(dx, dxr, dxr, name="dx", ulps=64)
    assert_close_to_ref(g["weight"], gr["weight"], gr["weight"], name="dweight", ulps=64)
    assert list(fast.state_dict()) == ["weight"]
    fast_half = FN.CosineLinear(6, 4).to(torch.bfloat16)
    _no_half_kernels(monkeypatch, "cosine_linear")
    xh, wh = x.to(torch.bfloat16), fast_half.weight.detach()
    with pytest.warns(FN.FastnormFallbackWarning):
        got = fast_half(xh)
    other = torch.nn.functional.linear(nf(xh, dim=-1), nf(wh, dim=-1))  # torch's bfloat16 result
    ref = torch.nn.functional.linear(nf(xh.double(), dim=-1), nf(wh.double(), dim=-1))
    assert got.dtype == torch.bfloat16
    assert_close_to_ref(got, other, ref, name="bfloat16 fallback")


# ------------------------------------------------------------------ accept what torch accepts (issue 12)
@pytest.mark.parametrize("momentum", [None, 2.0, -0.5, 0.0, 1.0])
@pytest.mark.parametrize(
    ("fast", "ref", "shape", "kwargs"),
    [
        (FN.BatchNorm1d, torch.nn.BatchNorm1d, (6, 3, 4), {}),
        (FN.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 2, 3), {}),
        (FN.InstanceNorm1d, torch.nn.InstanceNorm1d, (4, 3, 5), {"track_running_stats": True}),
    ],
    ids=["BatchNorm1d", "BatchNorm2d", "InstanceNorm1d"],
)
def test_momentum_none_and_outside_unit_interval_as_torch(fast, ref, shape, kwargs, momentum):
    from ._util import assert_close_to_ref

    m_f, m_t = fast(3, momentum=momentum, **kwargs), ref(3, momentum=momentum, **kwargs)
    m_64 = ref(3, momentum=momentum, **kwargs).double()
    gen = torch.Generator().manual_seed(11)
    for step in range(3):  # cumulative average (momentum=None) uses num_batches_tracked 1, 2, 3
        x = torch.randn(shape, generator=gen) * (step + 1) + step
        for m in (m_f, m_t, m_64):
            m.train()
        assert_close_to_ref(m_f(x), m_t(x), m_64(x.double()), name=f"train step {step}")
    for (k, a), (k2, b), (_, c) in zip(m_f.state_dict().items(), m_t.state_dict().items(), m_64.state_dict().items()):
        assert k == k2
        if a.dtype.is_floating_point:
            assert_close_to_ref(a, b, c, name=k)
        else:
            assert torch.equal(a, b), k
    for m in (m_f, m_t, m_64):  # evaluation ignores momentum, whatever its value
        m.eval()
    x = torch.randn(shape, generator=gen)
    assert_close_to_ref(m_f(x), m_t(x), m_64(x.double()), name="eval")
