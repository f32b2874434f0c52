"""``fastnorm.torch.optim`` on the CUDA kernels, bfloat16/float16/float32 parameters, master weights and
stochastic rounding included (issue 13).

What runs here: the torch optimizers' own path (torch's ``_init_group``, fastnorm's 16-bit state, the
generic ``_fastnorm_group`` call into ``fastnorm.optim``) with every tensor handed to ``fastnorm.optim`` as
a device array sharing the tensor's memory: on a GPU that device array is the CUDA tensor itself (the
backend reads its pointer, shape and dtype); here (no GPU, torch cannot create CUDA tensors) it is the
simulator's device array over the CPU tensor's memory, so the step runs the CUDA backend's checks, plans
and kernels (simulated). The result must equal the same optimizer's CPU-kernel run: bitwise for the
16-bit parameters up to one unit where the simulator's Python arithmetic rounds a square root differently
(as in test_cuda_optim_half.py). Torch CUDA tensors themselves are not exercised here (no GPU)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastnorm.torch import optim as FO  # noqa: E402
from fastnorm.torch._common import _arr  # noqa: E402

from ._half_util import close_to_cpu as _close  # noqa: E402
from .conftest import SIM  # noqa: E402

CASES = [
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("Adagrad", {"lr": 0.05}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("AdamW", {"lr": 0.01}),
]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
OPTIONS = [{}, {"master_weights": True}, {"stochastic_rounding": True, "seed": 5}]


def _run(name, kw, opts, dtype, steps=3):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in ((5, 7), (40,), (3,))]
    opt = getattr(FO, name)(params, **kw, **opts)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(dtype)
        opt.step()
    return params, opt


@pytest.mark.parametrize("opts", OPTIONS, ids=["rne", "master", "sr"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("name", "kw"), CASES, ids=[c[0] for c in CASES])
def test_torch_optimizers_run_on_the_cuda_kernels(name, kw, opts, dtype, monkeypatch):
    if not SIM:
        pytest.skip("the simulator stand-in for CUDA tensors (on a GPU, real CUDA tensors apply)")
    assert FO.route([torch.empty(2, dtype=dtype, device="meta")]) is not None  # (the decision: see compat tests)
    cpu_params, cpu_opt = _run(name, kw, opts, dtype)
    with monkeypatch.context() as m:
        from fastnorm._kernels.cuda._common import SimArray

        seen = []  # the simulator's device array over each tensor's own memory (no copy)
        m.setattr(FO, "_np", lambda t: seen.append(SimArray(_arr(t))) or seen[-1])
        m.setattr(FO, "_as_tensor", lambda a, like: torch.from_numpy(np.asarray(a._ary)))
        dev_params, dev_opt = _run(name, kw, opts, dtype)
    assert seen, "fastnorm.optim was not called"
    for a, b in zip(dev_params, cpu_params, strict=True):
        got, want = _arr(a.detach()), _arr(b.detach())
        _close(got, want)
    for p_dev, p_cpu in zip(dev_params, cpu_params, strict=True):
        sd, sc = dev_opt.state[p_dev], cpu_opt.state[p_cpu]
        assert sorted(sd) == sorted(sc)
        for k, v in sc.items():
            if k == "step":
                assert float(sd[k]) == float(v)
                continue
            assert sd[k].dtype == v.dtype  # float32 state beside a 16-bit parameter, on both paths
            _close(_arr(sd[k]), _arr(v))
    if opts.get("master_weights") and dtype != torch.float32:
        for p in dev_params:  # the parameter is its master rounded to nearest even
            assert torch.equal(dev_opt.state[p]["master_param"].to(dtype), p.detach())
