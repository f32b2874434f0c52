"""fastnorm.torch.optim as a drop-in for torch.optim: step hooks once per step, device routing, and
torch's own optimizer sample inputs (``common_optimizers.optim_db``): what torch accepts works and matches
torch by the error criterion, what torch refuses is refused with torch's error."""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest

from ._util import assert_close_to_ref

torch = pytest.importorskip("torch")
FO = pytest.importorskip("fastnorm.torch.optim")
from torch.optim.optimizer import register_optimizer_step_pre_hook  # noqa: E402

NAMES = ["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW"]


# ---------------------------------------------------------------------------------- step hooks
def _params(case):
    torch.manual_seed(0)
    if case == "complex":
        return [torch.nn.Parameter(torch.randn(4, dtype=torch.complex64))]
    if case == "noncontiguous":
        return [torch.nn.Parameter(torch.randn(3, 4).t())]
    if case == "mixed-groups":
        return [
            {"params": [torch.nn.Parameter(torch.randn(4))]},
            {"params": [torch.nn.Parameter(torch.randn(4).to(torch.bfloat16))]},
        ]
    return [torch.nn.Parameter(torch.randn(4))]


def _all(params):
    return [p for g in params for p in g["params"]] if isinstance(params[0], dict) else params


@pytest.mark.parametrize("case", ["fastnorm", "fused", "complex", "noncontiguous", "mixed-groups"])
@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_step_hooks_fire_once(name, case):
    torch_cls = getattr(torch.optim, name)
    torch_cls([torch.nn.Parameter(torch.zeros(1))])  # torch wraps its own class's step with the hooks now
    params = _params(case)
    kw = {"lr": 0.1, **({"fused": True} if case == "fused" else {})}
    opt = getattr(FO, name)(params, **kw)
    ref = torch_cls(
        [{**g, "params": [p.detach().clone().requires_grad_() for p in g["params"]]} for g in params]
        if isinstance(params[0], dict)
        else [p.detach().clone().requires_grad_() for p in params],
        **kw,
    )
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    glob = register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global"))
    try:
        for o in (opt, ref):
            for p in _all(o.param_groups):
                p.grad = torch.ones_like(p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FO.FastnormFallbackWarning)
            opt.step()
        assert calls == ["global", "pre", "post"]
        calls.clear()
        ref.step()
    finally:
        glob.remove()
    for g, h in zip(opt.param_groups, ref.param_groups, strict=True):
        for p, q in zip(g["params"], h["params"], strict=True):
            if p.dtype in (torch.float32, torch.float64):
                assert_close_to_ref(p, q, q.double())
            else:
                assert torch.equal(p, q)  # torch's own step ran for it


# ---------------------------------------------------------------------------------- device routing
def _fake(device="cuda:0", dtype=torch.float32, contiguous=True):
    """What ``_fallback_reason`` reads of a parameter (no GPU here: the routing decision is tested)."""
    return types.SimpleNamespace(device=torch.device(device), dtype=dtype, is_contiguous=lambda: contiguous)


def test_cuda_tensors_are_routed_to_fastnorm(monkeypatch):
    opt = FO.Adam([torch.nn.Parameter(torch.zeros(2))])
    monkeypatch.setattr(FO, "_cuda_unavailable", lambda: None)
    assert opt._fallback_reason({"params": [_fake(), _fake()]}) is None
    assert opt._fallback_reason({"params": [_fake("cpu"), _fake("cpu")]}) is None
    assert "2 devices" in opt._fallback_reason({"params": [_fake(), _fake("cuda:1")]})
    assert "2 devices" in opt._fallback_reason({"params": [_fake(), _fake("cpu")]})
    for dt in (torch.bfloat16, torch.float16, torch.float64):  # 16-bit CUDA tensors too (issue 13)
        assert opt._fallback_reason({"params": [_fake(dtype=dt), _fake(dtype=torch.float32)]}) is None
        assert FO.route([_fake(dtype=dt)]) is None
    assert "int64" in opt._fallback_reason({"params": [_fake(dtype=torch.int64)]})
    assert "non-contiguous" in opt._fallback_reason({"params": [_fake(contiguous=False)]})
    assert "meta" in opt._fallback_reason({"params": [_fake("meta")]})
    assert "capturable" in opt._fallback_reason({"params": [_fake()], "capturable": True})
    monkeypatch.setattr(FO, "_cuda_unavailable", lambda: "no CUDA backend")
    assert opt._fallback_reason({"params": [_fake()]}) == "no CUDA backend"
    assert opt._fallback_reason({"params": [_fake("cpu")]}) is None  # the CPU does not need it


def test_cuda_tensors_reach_the_kernels_as_themselves():
    """A CUDA tensor goes to fastnorm.optim as the detached tensor (``__cuda_array_interface__``), a CPU
    tensor as a zero-copy NumPy view."""
    detached = types.SimpleNamespace(device=torch.device("cuda:0"))
    t = types.SimpleNamespace(detach=lambda: detached)
    assert FO._np(t) is detached
    p = torch.zeros(3)
    a = FO._np(p)
    assert isinstance(a, np.ndarray)
    assert np.shares_memory(a, p.numpy())
    assert FO._cuda_unavailable() is None or "CUDA" in FO._cuda_unavailable()


# ---------------------------------------------------------------------------------- torch's sample inputs
def _optim_db():
    try:
        from torch.testing._internal.common_optimizers import optim_db
    except Exception as e:  # expecttest missing, or a torch without the test helpers
        pytest.skip(f"torch's optimizer test helpers unavailable: {e}")
    return {o.optim_cls.__name__: o for o in optim_db if o.optim_cls.__name__ in NAMES}


def _sample_params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(5, 3, generator=g, dtype=dtype)),
        torch.nn.Parameter(torch.randn(7, generator=g, dtype=dtype)),
    ]


def _copy_kwargs(kw):
    out = {}
    for k, v in kw.items():
        if isinstance(v, torch.Tensor):
            v = v.clone()
        elif isinstance(v, tuple):
            v = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in v)
        out[k] = v
    return out


def _run(cls, params, kw, grads):
    opt = cls(params, **_copy_kwargs(kw))
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = g.to(p.dtype).clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FO.FastnormFallbackWarning)
            opt.step()
    return opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_torch_sample_inputs_match_torch(name, dtype):
    """Every configuration torch's own optimizer tests use (plus each implementation flag torch's class
    supports on the CPU: foreach, fused): fastnorm's class runs it and matches torch's run by the error
    criterion against torch in float64."""
    info = _optim_db()[name]
    inputs = info.optim_inputs_func(device="cpu", dtype=dtype)
    impls = [{}] + [{impl: True} for impl in info.supported_impls if impl in ("foreach", "fused")]
    g = torch.Generator().manual_seed(1)
    grads = [[torch.randn(5, 3, generator=g, dtype=dtype), torch.randn(7, generator=g, dtype=dtype)] for _ in range(5)]
    ran = 0
    for inp in inputs:
        if inp.params is not None:
            continue  # sample inputs with their own parameters (e.g. complex, sparse) test torch, not the kwargs
        for impl in impls:
            kw = {**inp.kwargs, **impl}
            if kw.get("fused") and (
                kw.get("foreach") or kw.get("differentiable") or isinstance(kw.get("lr"), torch.Tensor)
            ):
                continue
            p_fast, p_ref, p_64 = _sample_params(dtype), _sample_params(dtype), _sample_params(dtype)
            p_64 = [torch.nn.Parameter(p.detach().double()) for p in p_64]
            try:
                ref = _run(getattr(torch.optim, name), p_ref, kw, grads)
            except Exception as e:  # torch refuses the combination: fastnorm must too
                with pytest.raises(type(e)):
                    _run(getattr(FO, name), p_fast, kw, grads)
                continue
            fast = _run(getattr(FO, name), p_fast, kw, grads)
            kw64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
            kw64.pop("fused", None)
            _run(getattr(torch.optim, name), p_64, kw64, grads)
            for i, (a, b, c) in enumerate(zip(p_fast, p_ref, p_64, strict=True)):
                assert a.dtype == dtype
                assert_close_to_ref(a, b, c, name=f"{name} {inp.desc} {impl} param {i}", ulps=40)
            if not any(isinstance(v, (torch.Tensor, tuple)) for v in kw.values()):
                assert fast.state_dict()["param_groups"] == ref.state_dict()["param_groups"]
            ran += 1
    assert ran >= len(inputs) // 2


@pytest.mark.parametrize("name", NAMES)
def test_torch_error_inputs_raise_what_torch_raises(name):
    """torch's own invalid-argument samples: fastnorm's class raises (or warns) exactly as torch's."""
    from torch.testing._internal.common_optimizers import OptimizerErrorEnum

    info = _optim_db()[name]
    for err in info.optim_error_inputs_func(device="cpu", dtype=torch.float32):
        inp = err.optimizer_error_input
        for cls in (getattr(torch.optim, name), getattr(FO, name)):
            params = inp.params if inp.params is not None else _sample_params(torch.float32)
            if err.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
                if issubclass(err.error_type, Warning):
                    with pytest.warns(err.error_type, match=err.error_regex):
                        cls(params, **inp.kwargs)
                else:
                    with pytest.raises(err.error_type, match=err.error_regex):
                        cls(params, **inp.kwargs)
            else:
                opt = cls(params, **inp.kwargs)
                with pytest.raises(err.error_type, match=err.error_regex):
                    opt.step()
