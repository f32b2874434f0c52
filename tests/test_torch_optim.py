"""fastnorm.torch.optim: same trajectories as torch.optim, LR schedulers, state dicts both ways, fallback."""

import copy
import warnings

import numpy as np
import pytest

from ._util import assert_close_to_ref

torch = pytest.importorskip("torch")
FO = pytest.importorskip("fastnorm.torch.optim")

CONFIGS = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "maximize": True}),
    ("Adagrad", {"lr": 0.1}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.05, "initial_accumulator_value": 0.1, "weight_decay": 0.01}),
    ("Adadelta", {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.8, "weight_decay": 0.1, "maximize": True}),
    ("RMSprop", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5, "weight_decay": 0.05}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "amsgrad": True, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01, "decoupled_weight_decay": True, "weight_decay": 0.1, "maximize": True}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "amsgrad": True, "eps": 1e-6}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}" for n, kw in CONFIGS]


def _model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).to(dtype)


def _data(dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 5, generator=g, dtype=dtype), torch.randn(16, 3, generator=g, dtype=dtype)


def _train(model, opt, steps, x, y, sched=None):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return losses


# Slack of the error criterion, in ulps of the largest value. float32 runs have an independent float64
# reference, and the 2x-torch term carries the bound; a float64 run's reference is torch's own float64
# run, so the bound is the slack alone: 8 ulps per step of training (the gradients depend on the
# parameters, so rounding differences propagate). No fixed rtol against torch.
ULPS = 8.0 * 25


def _ulps(dtype) -> float:
    return 16.0 if dtype in (torch.float32, np.float32) else ULPS


def _assert_params_close(m_fast, m_other, m_ref, ulps=None):
    """fastnorm's parameters vs torch's same-dtype ones, both against ``m_ref`` (torch in float64 from the
    same inputs cast up; for float64 runs ``m_ref`` is ``m_other`` and the bound is the slack)."""
    for (n, a), b, r in zip(m_fast.named_parameters(), m_other.parameters(), m_ref.parameters(), strict=True):
        assert a.dtype == b.dtype
        assert_close_to_ref(a, b, r, name=n, ulps=_ulps(a.dtype) if ulps is None else ulps)


def _assert_same(m1, m2):
    """Bitwise equal parameters (both stepped by torch's own implementation)."""
    for (n, a), b in zip(m1.named_parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b), n


def _ref64(name, kw, dtype, steps):
    """torch's optimizer in float64 on the float64 cast of a ``dtype`` model and data: the reference."""
    m = _model(dtype).double()
    x, y = (t.double() for t in _data(dtype))
    opt = getattr(torch.optim, name)(m.parameters(), **kw)
    return m, opt, _train(m, opt, steps, x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=IDS)
def test_trajectory_matches_torch(name, kw, dtype, monkeypatch):
    calls = []
    import fastnorm.optim as fo

    algo = {"AdamW": "adam"}.get(name, name.lower())
    real = getattr(fo, f"{algo}_step")
    monkeypatch.setattr(fo, f"{algo}_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    m_fast, m_ref = _model(dtype), _model(dtype)
    opt_fast = getattr(FO, name)(m_fast.parameters(), **kw)
    opt_ref = getattr(torch.optim, name)(m_ref.parameters(), **kw)
    x, y = _data(dtype)
    lf = _train(m_fast, opt_fast, 25, x, y)
    lr = _train(m_ref, opt_ref, 25, x, y)
    assert len(calls) == 25, "the fastnorm kernel did not run once per step"
    m64, opt64, l64 = _ref64(name, kw, dtype, 25)
    _assert_params_close(m_fast, m_ref, m64)
    npt = np.float32 if dtype == torch.float32 else np.float64
    assert_close_to_ref(np.array(lf, npt), np.array(lr, npt), np.array(l64), name="losses", ulps=_ulps(dtype))
    for p_f, p_r, p_64 in zip(m_fast.parameters(), m_ref.parameters(), m64.parameters(), strict=True):
        sf, sr, s64 = opt_fast.state[p_f], opt_ref.state[p_r], opt64.state[p_64]
        assert sf.keys() == sr.keys()
        for k in sf:
            assert sf[k].dtype == sr[k].dtype
            assert_close_to_ref(sf[k], sr[k], s64[k], name=k, ulps=_ulps(dtype))


def test_param_groups_and_params_without_grad():
    m_fast, m_ref = _model(), _model()
    frozen = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))  # never gets a gradient

    def groups(m, extra):
        return [
            {"params": list(m[0].parameters()), "lr": 0.05},
            {"params": list(m[2].parameters()) + [extra], "lr": 0.01, "betas": (0.5, 0.9)},
        ]

    frozen_ref = torch.nn.Parameter(frozen.detach().clone())
    opt_fast = FO.Adam(groups(m_fast, frozen), weight_decay=0.01)
    opt_ref = torch.optim.Adam(groups(m_ref, frozen_ref), weight_decay=0.01)
    x, y = _data(torch.float64)
    _train(m_fast, opt_fast, 10, x, y)
    _train(m_ref, opt_ref, 10, x, y)
    _assert_params_close(m_fast, m_ref, m_ref)
    assert torch.equal(frozen, torch.ones(3, dtype=torch.float64))
    assert frozen not in opt_fast.state


def test_mixed_dtypes_in_one_group():
    def make():
        torch.manual_seed(0)
        return [torch.nn.Parameter(torch.randn(4, dtype=torch.float32)), torch.nn.Parameter(torch.randn(6))]

    pf, pr, p64 = make(), make(), make()
    pf[1].data = pf[1].data.double()
    pr[1].data = pr[1].data.double()
    for p in p64:
        p.data = p.data.double()
    of, orf, o64 = FO.Adam(pf, lr=0.1), torch.optim.Adam(pr, lr=0.1), torch.optim.Adam(p64, lr=0.1)
    for _ in range(5):
        for ps, o in ((pf, of), (pr, orf), (p64, o64)):
            o.zero_grad()
            (ps[0].sin().sum() + ps[1].cos().sum()).backward()
            o.step()
    for a, b, r in zip(pf, pr, p64, strict=True):
        assert a.dtype == b.dtype
        assert_close_to_ref(a, b, r)


@pytest.mark.parametrize(
    "make_sched",
    [
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=20),  # also cycles beta1
    ],
    ids=["StepLR", "CosineAnnealingLR", "OneCycleLR"],
)
def test_lr_schedulers(make_sched):
    m_fast, m_ref = _model(), _model()
    opt_fast, opt_ref = FO.Adam(m_fast.parameters(), lr=0.01), torch.optim.Adam(m_ref.parameters(), lr=0.01)
    s_fast, s_ref = make_sched(opt_fast), make_sched(opt_ref)
    x, y = _data(torch.float64)
    _train(m_fast, opt_fast, 20, x, y, s_fast)
    _train(m_ref, opt_ref, 20, x, y, s_ref)
    assert opt_fast.param_groups[0]["lr"] == opt_ref.param_groups[0]["lr"]
    _assert_params_close(m_fast, m_ref, m_ref)


def test_reduce_lr_on_plateau():
    m = _model()
    opt = FO.SGD(m.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    sched.step(1.0)
    sched.step(2.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=IDS)
@pytest.mark.parametrize("direction", ["torch_to_fastnorm", "fastnorm_to_torch"])
def test_state_dict_interchange(name, kw, direction):
    """Train k steps with one, save, load into the other, train on: same as torch throughout."""
    x, y = _data(torch.float64)
    first, second = (torch.optim, FO) if direction == "torch_to_fastnorm" else (FO, torch.optim)
    m1 = _model()
    o1 = getattr(first, name)(m1.parameters(), **kw)
    _train(m1, o1, 7, x, y)
    m2 = _model(seed=5)
    m2.load_state_dict(m1.state_dict())
    o2 = getattr(second, name)(m2.parameters(), **kw)
    o2.load_state_dict(copy.deepcopy(o1.state_dict()))
    _train(m2, o2, 8, x, y)
    m_ref = _model()
    o_ref = getattr(torch.optim, name)(m_ref.parameters(), **kw)
    _train(m_ref, o_ref, 15, x, y)
    _assert_params_close(m2, m_ref, m_ref)
    sd2, sd_ref = o2.state_dict(), o_ref.state_dict()
    assert sd2["param_groups"] == sd_ref["param_groups"]
    for i, s in sd_ref["state"].items():
        assert sd2["state"][i].keys() == s.keys()
        for k in s:
            assert_close_to_ref(sd2["state"][i][k], s[k], s[k], name=k, ulps=ULPS)


def test_same_state_dict_layout_as_torch():
    for name, kw in CONFIGS:
        m_fast, m_ref = _model(), _model()
        of, orf = (
            getattr(FO, name)(m_fast.parameters(), **kw),
            getattr(torch.optim, name)(m_ref.parameters(), **kw),
        )
        x, y = _data(torch.float64)
        _train(m_fast, of, 2, x, y)
        _train(m_ref, orf, 2, x, y)
        a, b = of.state_dict(), orf.state_dict()
        assert a["param_groups"] == b["param_groups"], name
        assert {k: sorted(v) for k, v in a["state"].items()} == {k: sorted(v) for k, v in b["state"].items()}
        for i in b["state"]:
            if "step" in b["state"][i]:
                assert a["state"][i]["step"].dtype == b["state"][i]["step"].dtype
        assert isinstance(of, getattr(torch.optim, name))


def test_closure_returns_loss():
    m = _model()
    opt = FO.SGD(m.parameters(), lr=0.1)
    x, y = _data(torch.float64)

    def closure():
        opt.zero_grad()
        loss = ((m(x) - y) ** 2).mean()
        loss.backward()
        return loss

    l0 = opt.step(closure)
    l1 = opt.step(closure)
    assert l1 < l0


def test_fallback_warns_once_and_matches_torch(monkeypatch):
    monkeypatch.setattr(FO, "_warned", set())
    torch.manual_seed(0)
    m_fast = torch.nn.Linear(3, 2).to(torch.complex64)  # complex parameters: fastnorm does not step them
    m_ref = copy.deepcopy(m_fast)
    opt_fast = FO.Adam(m_fast.parameters(), lr=0.01)
    opt_ref = torch.optim.Adam(m_ref.parameters(), lr=0.01)
    x = torch.randn(4, 3, dtype=torch.complex64)

    def train(m, opt, n):
        for _ in range(n):
            opt.zero_grad()
            m(x).abs().sum().backward()
            opt.step()

    with pytest.warns(FO.FastnormFallbackWarning, match="complex64"):
        train(m_fast, opt_fast, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(m_fast, opt_fast, 3)
    train(m_ref, opt_ref, 4)
    _assert_same(m_fast, m_ref)


def test_fallback_only_for_the_unsupported_group(monkeypatch):
    monkeypatch.setattr(FO, "_warned", set())
    m32 = torch.nn.Linear(3, 2)
    m16 = torch.nn.Linear(3, 2).to(torch.complex64)  # the unsupported group (complex parameters)
    opt = FO.SGD([{"params": m32.parameters()}, {"params": m16.parameters()}], lr=0.1)
    ref32, ref16, ref64 = copy.deepcopy(m32), copy.deepcopy(m16), copy.deepcopy(m32).double()
    ref = torch.optim.SGD([{"params": ref32.parameters()}, {"params": ref16.parameters()}], lr=0.1)
    o64 = torch.optim.SGD([{"params": ref64.parameters()}, {"params": copy.deepcopy(m16).parameters()}], lr=0.1)
    x = torch.randn(4, 3)
    for mods, o in (((m32, m16), opt), ((ref32, ref16), ref), ((ref64, o64.param_groups[1]["params"]), o64)):
        o.zero_grad()
        if isinstance(mods[1], list):  # the float64 reference of the float32 layer (the complex one: unused)
            mods[0](x.double()).sum().backward()
            o.step()
            continue
        (mods[0](x).sum() + mods[1](x.to(torch.complex64)).abs().sum()).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FO.FastnormFallbackWarning)
            o.step()
    _assert_params_close(m32, ref32, ref64)
    _assert_same(m16, ref16)


def test_differentiable_falls_back(monkeypatch):
    monkeypatch.setattr(FO, "_warned", set())
    m = _model()
    opt = FO.SGD(m.parameters(), lr=0.1, differentiable=True)
    x, y = _data(torch.float64)
    # torch's own differentiable step then runs, and (for leaf parameters) raises what torch raises
    with (
        pytest.warns(FO.FastnormFallbackWarning, match="differentiable"),
        pytest.raises(RuntimeError, match="leaf"),
    ):
        _train(m, opt, 1, x, y)


def test_sparse_grad_raises():
    emb = torch.nn.Embedding(10, 3, sparse=True).double()
    opt = FO.SGD(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_hyperparameter_validation_is_torch():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="Invalid learning rate"):
        FO.Adam(p, lr=-1.0)
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        FO.SGD(p, lr=0.1, nesterov=True)  # nesterov needs momentum > 0 (torch's check)


def test_loaded_non_contiguous_state_is_made_contiguous():
    m_fast, m_ref = _model(), _model()
    o_ref = torch.optim.Adam(m_ref.parameters(), lr=0.01)
    x, y = _data(torch.float64)
    _train(m_ref, o_ref, 3, x, y)
    sd = copy.deepcopy(o_ref.state_dict())
    w = sd["state"][0]["exp_avg"]  # the (7, 5) weight of the first layer
    sd["state"][0]["exp_avg"] = w.t().contiguous().t()  # same values, column-major
    assert not sd["state"][0]["exp_avg"].is_contiguous()
    m_fast.load_state_dict(m_ref.state_dict())
    o_fast = FO.Adam(m_fast.parameters(), lr=0.01)
    o_fast.load_state_dict(sd)
    _train(m_fast, o_fast, 3, x, y)
    _train(m_ref, o_ref, 3, x, y)
    _assert_params_close(m_fast, m_ref, m_ref)
