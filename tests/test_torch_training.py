"""A small model trained for a few hundred steps with fastnorm's modules and optimizer follows the same loss
curve as with torch's (float64: to ~1e-9; float32: to float rounding), and ends at the same parameters."""

import pytest

import fastnorm

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


def _run(impl, opt_name, dtype, steps):
    kw = {"lr": 3e-3, "weight_decay": 1e-2} if opt_name == "AdamW" else {"lr": 0.01, "momentum": 0.9}
    model = _net(dtype)
    if impl == "fastnorm":
        assert FN.swap_modules(model) == 5
    opt = getattr(FO if impl == "fastnorm" else torch.optim, opt_name)(model.parameters(), **kw)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    x, y = _data(dtype)
    return model, _train(model, opt, sched, x, y, steps)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("opt_name", ["AdamW", "SGD"])
def test_training_follows_torch(dtype, opt_name):
    steps = 300
    fast, lf = _run("fastnorm", opt_name, dtype, steps)
    ref, lt = _run("torch", opt_name, dtype, steps)
    assert sum(lt[-20:]) < 0.5 * sum(lt[:20]), "the model did not learn"
    if dtype == torch.float64:
        assert lf == pytest.approx(lt, rel=1e-9, abs=1e-12)
        tol = {"rtol": 1e-7, "atol": 1e-9}
    else:
        assert lf == pytest.approx(lt, rel=2e-5, abs=2e-5)
        # and fastnorm's float32 run is as close to the float64 truth as torch's own float32 run
        _, truth = _run("torch", opt_name, torch.float64, steps)
        err_fast = max(abs(a - b) for a, b in zip(lf, truth, strict=True))
        err_torch = max(abs(a - b) for a, b in zip(lt, truth, strict=True))
        assert err_fast <= 3 * err_torch + 1e-6, (err_fast, err_torch)
        tol = {"rtol": 1e-3, "atol": 1e-4}
    for (k, a), b in zip(fast.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k, **tol)
    fast.eval()
    ref.eval()
    x, _ = _data(dtype)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), **tol)
