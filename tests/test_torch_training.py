"""A small model trained for a few hundred steps with fastnorm's modules and optimizer follows the same loss
curve as with torch's and ends at the same parameters, by the error criterion against torch in float64."""

import numpy as np
import pytest

import fastnorm

from ._util import assert_close_to_ref

torch = pytest.importorskip("torch")
FN = pytest.importorskip("fastnorm.torch.nn")
FO = pytest.importorskip("fastnorm.torch.optim")


@pytest.fixture(autouse=True)
def _one_thread():
    """A tiny model: one thread each for torch and fastnorm (much faster on a busy machine)."""
    old = torch.get_num_threads(), fastnorm.get_num_threads()
    torch.set_num_threads(1)
    fastnorm.set_num_threads(1)
    yield
    torch.set_num_threads(old[0])
    fastnorm.set_num_threads(old[1])


def _net(dtype):
    """Every norm module, smooth activations (a ReLU flipped by a rounding difference would fork the runs)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 32, bias=False),  # a bias before BatchNorm has no gradient, only rounding noise
        torch.nn.BatchNorm1d(32),
        torch.nn.GELU(),
        torch.nn.Linear(32, 32),
        torch.nn.LayerNorm(32),
        torch.nn.Tanh(),
        torch.nn.Unflatten(1, (4, 8)),
        torch.nn.GroupNorm(2, 4),
        torch.nn.GELU(),
        torch.nn.InstanceNorm1d(4, affine=True),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.RMSNorm(32),
        torch.nn.Linear(32, 3),
    ).to(dtype)


def _data(dtype, n=256):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 12, generator=g, dtype=torch.float64).to(dtype)  # the same data in both dtypes
    y = (x[:, 0] > 0).long() + (x[:, 1] + x[:, 2] > 0).long()
    return x, y


def _train(model, opt, sched, x, y, steps, batch=32):
    g = torch.Generator().manual_seed(2)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def _run(impl, opt_name, dtype, steps, data_dtype=None):
    """Train; ``data_dtype``: round the data to it first (the float64 reference of a float32 run)."""
    kw = {"lr": 3e-3, "weight_decay": 1e-2} if opt_name == "AdamW" else {"lr": 0.01, "momentum": 0.9}
    model = _net(dtype)
    if impl == "fastnorm":
        assert FN.swap_modules(model) == 5
    opt = getattr(FO if impl == "fastnorm" else torch.optim, opt_name)(model.parameters(), **kw)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    x, y = _data(data_dtype or dtype)
    return model, _train(model, opt, sched, x.to(dtype), y, steps)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("opt_name", ["AdamW", "SGD"])
def test_training_follows_torch(dtype, opt_name):
    steps = 300
    fast, lf = _run("fastnorm", opt_name, dtype, steps)
    ref, lt = _run("torch", opt_name, dtype, steps)
    assert sum(lt[-20:]) < 0.5 * sum(lt[:20]), "the model did not learn"
    # The error criterion: against torch in float64 on the same (float32-rounded) data and initial weights,
    # fastnorm's float32 run is within 2x torch's float32 error; a float64 run's reference is torch's own
    # float64 run, and the bound is the slack: ulps of the largest value per step of training.
    if dtype == torch.float32:
        truth_model, truth = _run("torch", opt_name, torch.float64, steps, data_dtype=torch.float32)
        npt, ulps = np.float32, 16.0
    else:
        truth_model, truth = ref, lt
        npt, ulps = np.float64, 8.0 * steps
    assert_close_to_ref(np.array(lf, npt), np.array(lt, npt), np.array(truth), name="losses", ulps=ulps)
    truth_sd = truth_model.state_dict()
    for (k, a), b in zip(fast.state_dict().items(), ref.state_dict().values(), strict=True):
        if a.is_floating_point():
            assert_close_to_ref(a, b, truth_sd[k], name=k, ulps=ulps)
        else:
            assert torch.equal(a, b), k  # num_batches_tracked
    fast.eval()
    ref.eval()
    truth_model.eval()
    x, _ = _data(dtype)
    with torch.no_grad():
        assert_close_to_ref(fast(x), ref(x), truth_model(x.double()), name="outputs", ulps=ulps)
