"""fastnorm.nn: NumPy layers' backward vs finite differences, the parameters()/grads() contract, the loss."""

import subprocess
import sys

import numpy as np
import pytest

import fastnorm
from fastnorm import nn

from ._util import assert_close_to_ref, torch_or_skip


def _check_module_grads(module, x, rng, h=1e-6, rtol=1e-6, atol=1e-8):
    """backward's dx and parameter grads vs central differences of sum(module(x) * dy), float64."""
    y = module.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = module.backward(dy)
    grads = [g.copy() for g in module.grads()]

    def loss():
        return float(np.sum(module.forward(x) * dy))

    def numeric(a):
        g = np.zeros_like(a)
        flat, gflat = a.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            fp = loss()
            flat[i] = old - h
            fm = loss()
            flat[i] = old
            gflat[i] = (fp - fm) / (2 * h)
        return g

    np.testing.assert_allclose(dx, numeric(x), rtol=rtol, atol=atol, err_msg="dx")
    params = module.parameters()
    assert len(params) == len(grads)
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        assert g.shape == p.shape
        np.testing.assert_allclose(g, numeric(p), rtol=rtol, atol=atol, err_msg=f"param {i}")


@pytest.mark.parametrize("bias", [True, False])
def test_linear_grads(rng, bias):
    lin = nn.Linear(5, 3, bias=bias, rng=0, dtype=np.float64)
    _check_module_grads(lin, rng.standard_normal((2, 4, 5)), rng)


@pytest.mark.parametrize(("affine", "bias"), [(True, True), (True, False), (False, False)])
def test_layer_norm_grads(rng, threads, affine, bias):
    ln = nn.LayerNorm((3, 5), elementwise_affine=affine, bias=bias, dtype=np.float64)
    for p in ln.parameters():
        p[...] = rng.standard_normal(p.shape)
    _check_module_grads(ln, rng.standard_normal((4, 3, 5)), rng)


@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm_grads(rng, threads, affine):
    rn = nn.RMSNorm(7, eps=1e-6, elementwise_affine=affine, dtype=np.float64)
    for p in rn.parameters():
        p[...] = rng.standard_normal(p.shape)
    _check_module_grads(rn, rng.standard_normal((6, 7)), rng)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5)])
def test_batch_norm_grads(rng, threads, training, shape):
    bn = nn.BatchNorm(3, dtype=np.float64)
    for p in bn.parameters():
        p[...] = rng.standard_normal(p.shape)
    bn.running_mean[...] = rng.standard_normal(3)
    bn.running_var[...] = rng.random(3) + 0.5
    bn.train(training)
    _check_module_grads(bn, rng.standard_normal(shape), rng)


def test_batch_norm_untracked_and_no_affine(rng):
    bn = nn.BatchNorm(4, affine=False, track_running_stats=False, dtype=np.float64)
    assert bn.parameters() == []
    assert bn.running_mean is None
    bn.eval()  # no running statistics: batch statistics in eval too, like torch
    x = rng.standard_normal((5, 4))
    np.testing.assert_allclose(bn(x), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-10)
    _check_module_grads(bn, x, rng)


def test_batch_norm_running_stats_and_eval_match_torch(rng):
    torch = torch_or_skip()
    """DESIGN.md's criterion: fastnorm's error against torch in float64 on the same inputs is at most 2x
    torch's float32 error plus 8 ulps."""
    bn = nn.BatchNorm(3, momentum=0.2)
    tbn = torch.nn.BatchNorm1d(3, momentum=0.2)
    tbn64 = torch.nn.BatchNorm1d(3, momentum=0.2).double()

    def both(x):
        return tbn(torch.from_numpy(x)).detach(), tbn64(torch.from_numpy(x.astype(np.float64))).detach()

    for step in range(3):
        x = rng.standard_normal((8, 3, 4)).astype(np.float32)
        assert_close_to_ref(bn(x), *both(x), name=f"train step {step}")
    assert_close_to_ref(bn.running_mean, tbn.running_mean, tbn64.running_mean, name="running_mean")
    assert_close_to_ref(bn.running_var, tbn.running_var, tbn64.running_var, name="running_var")
    bn.eval()
    tbn.eval()
    tbn64.eval()
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    assert_close_to_ref(bn(x), *both(x), name="eval")


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_grads(rng, threads, affine):
    gn = nn.GroupNorm(2, 6, affine=affine, dtype=np.float64)
    for p in gn.parameters():
        p[...] = rng.standard_normal(p.shape)
    _check_module_grads(gn, rng.standard_normal((3, 6, 4)), rng)


def test_layer_norm_matches_reference(rng):
    ln = nn.LayerNorm(11)
    ln.weight[...] = rng.standard_normal(11)
    ln.bias[...] = rng.standard_normal(11)
    x = rng.standard_normal((9, 11)).astype(np.float32)
    y_ref, _, _ = fastnorm.reference.layer_norm_forward(
        x.astype(np.float64), ln.weight.astype(np.float64), ln.bias.astype(np.float64)
    )
    y_lo, _, _ = fastnorm.reference.layer_norm_forward(x, ln.weight, ln.bias)
    assert_close_to_ref(ln(x), y_lo, y_ref, name="y")  # within 2x the float32 reference's error
    assert ln(x).dtype == np.float32


def test_rms_norm_default_eps_is_finfo(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32) * 1e-4
    y = nn.RMSNorm(4, elementwise_affine=False)(x)
    eps = np.finfo(np.float32).eps
    ref = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1, keepdims=True) + eps)
    lo = x / np.sqrt((x**2).mean(axis=1, keepdims=True) + eps)  # the same in float32
    assert lo.dtype == np.float32
    assert_close_to_ref(y, lo, ref, name="y")  # a float64 eps (2e-16) would leave y ~ 1e-4 larger


def test_sequential_end_to_end_grads(rng):
    model = nn.Sequential(
        nn.Linear(6, 8, rng=1, dtype=np.float64),
        nn.LayerNorm(8, dtype=np.float64),
        nn.Tanh(),
        nn.Linear(8, 8, rng=2, dtype=np.float64),
        nn.RMSNorm(8, eps=1e-5, dtype=np.float64),
        nn.ReLU(),
        nn.Linear(8, 3, rng=3, dtype=np.float64),
    )
    for p in model.parameters():
        p += 0.1 * rng.standard_normal(p.shape)
    _check_module_grads(model, rng.standard_normal((5, 6)), rng, rtol=1e-5, atol=1e-7)


def test_grads_are_stable_arrays_in_parameter_order(rng):
    model = nn.Sequential(nn.Linear(4, 5, rng=0), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 2, bias=False, rng=1))
    params, grads = model.parameters(), model.grads()
    assert [p.shape for p in params] == [(5, 4), (5,), (5,), (5,), (2, 5)]
    assert [g.shape for g in grads] == [p.shape for p in params]
    x = rng.standard_normal((3, 4)).astype(np.float32)
    for _ in range(2):
        model(x)
        model.backward(np.ones((3, 2), np.float32))
        assert all(a is b for a, b in zip(grads, model.grads(), strict=True))
        assert all(np.any(g != 0) for g in grads)
    model.zero_grad()
    assert all(not np.any(g) for g in model.grads())


def test_backward_overwrites_not_accumulates(rng):
    lin = nn.Linear(3, 2, rng=0, dtype=np.float64)
    x = rng.standard_normal((4, 3))
    lin(x)
    lin.backward(np.ones((4, 2)))
    first = lin.dweight.copy()
    lin(x)
    lin.backward(np.ones((4, 2)))
    np.testing.assert_array_equal(lin.dweight, first)


@pytest.mark.parametrize("opt_name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_parameters_and_grads_feed_fastnorm_optim(rng, opt_name):
    import fastnorm.optim

    x = rng.standard_normal((64, 10)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int64) + 2 * (x[:, 3] > 0)
    model = nn.Sequential(
        nn.Linear(10, 32, rng=0), nn.BatchNorm(32), nn.ReLU(), nn.Linear(32, 32, rng=1), nn.LayerNorm(32),
        nn.ReLU(), nn.Linear(32, 4, rng=2),
    )  # fmt: skip
    lr = {"SGD": 0.1, "Adagrad": 0.05}.get(opt_name, 1e-2)
    opt = getattr(fastnorm.optim, opt_name)(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(60):
        losses.append(loss_fn(model(x), y))
        model.backward(loss_fn.backward())
        opt.step(model.grads())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    model.eval()
    assert (model(x).argmax(axis=1) == y).mean() > 0.8


def test_train_eval_propagates():
    model = nn.Sequential(nn.Linear(2, 2, rng=0), nn.Sequential(nn.ReLU(), nn.LayerNorm(2)))
    model.eval()
    assert not model.training
    assert not model[1].training
    assert not model[1][1].training
    model.train()
    assert model[1][1].training


def test_softmax_cross_entropy_grad_and_value(rng):
    logits = rng.standard_normal((5, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2])
    loss, grad = nn.softmax_cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(5), labels])), rel=1e-12)
    num = np.zeros_like(logits)
    h = 1e-6
    for i in range(logits.size):
        d = np.zeros(logits.size)
        d[i] = h
        d = d.reshape(logits.shape)
        num.reshape(-1)[i] = (
            nn.softmax_cross_entropy(logits + d, labels)[0] - nn.softmax_cross_entropy(logits - d, labels)[0]
        ) / (2 * h)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


def test_softmax_cross_entropy_stable_and_matches_torch(rng):
    torch = torch_or_skip()
    logits = (rng.standard_normal((6, 5)) * 300).astype(np.float32)
    labels = rng.integers(0, 5, 6)
    loss, grad = nn.softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss)
    assert np.all(np.isfinite(grad))
    t, t64 = (torch.tensor(logits.astype(dt), requires_grad=True) for dt in (np.float32, np.float64))
    tl, tl64 = (torch.nn.functional.cross_entropy(a, torch.tensor(labels)) for a in (t, t64))
    tl.backward()
    tl64.backward()
    # DESIGN.md's criterion against torch in float64 on the same logits (the loss is a Python float: its
    # bound is 2x torch's float32 error plus 8 float64 ulps)
    assert_close_to_ref(loss, tl.detach(), tl64.detach(), name="loss")
    assert_close_to_ref(grad, t.grad, t64.grad, name="grad")


def test_softmax_cross_entropy_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        nn.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels"):
        nn.softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="logits"):
        nn.softmax_cross_entropy(np.zeros(3), np.array([0]))


def test_linear_matches_torch_init_shapes_and_output(rng):
    torch = torch_or_skip()
    lin = nn.Linear(7, 3, rng=0)
    x = rng.standard_normal((4, 7)).astype(np.float32)
    tl = torch.nn.Linear(7, 3)
    with torch.no_grad():
        tl.weight.copy_(torch.from_numpy(lin.weight))
        tl.bias.copy_(torch.from_numpy(lin.bias))
    tl64 = torch.nn.Linear(7, 3).double()
    with torch.no_grad():
        tl64.weight.copy_(torch.from_numpy(lin.weight.astype(np.float64)))
        tl64.bias.copy_(torch.from_numpy(lin.bias.astype(np.float64)))
    want, want64 = tl(torch.from_numpy(x)).detach(), tl64(torch.from_numpy(x.astype(np.float64))).detach()
    assert_close_to_ref(lin(x), want, want64, name="y")
    assert np.abs(lin.weight).max() <= 1 / np.sqrt(7)


def test_import_fastnorm_does_not_import_torch():
    code = "import sys, fastnorm, fastnorm.nn; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
