"""NumPy optimizer references: hand-computed steps, torch.optim trajectories, the documented forms."""

import math

import numpy as np
import pytest

from fastnorm.reference import optim as R

from ._util import assert_close_to_ref, torch_or_skip

SHAPES = [(3,), (5, 7), (1,), (2, 3, 5), (13,)]


# ---------------------------------------------------------------------------------- hand-computed
def _one(x):
    return [np.array([x], dtype=np.float64)]


def test_sgd_by_hand():
    p = _one(1.0)
    R.sgd_step(p, _one(0.5), lr=0.1)
    assert p[0][0] == pytest.approx(1.0 - 0.1 * 0.5)

    # momentum 0.9, dampening 0.1, weight decay 0.2: g' = g + 0.2 p, b1 = g', b2 = 0.9 b1 + 0.9 g'
    p, bufs = _one(1.0), [None]
    R.sgd_step(p, _one(0.5), bufs, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.2)
    g1 = 0.5 + 0.2 * 1.0
    p1 = 1.0 - 0.1 * g1
    assert bufs[0][0] == pytest.approx(g1)
    assert p[0][0] == pytest.approx(p1)
    R.sgd_step(p, _one(0.5), bufs, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.2)
    g2 = 0.5 + 0.2 * p1
    b2 = 0.9 * g1 + 0.9 * g2
    assert bufs[0][0] == pytest.approx(b2)
    assert p[0][0] == pytest.approx(p1 - 0.1 * b2)

    # nesterov, maximize: g = -grad; p -= lr * (g + mu * b)
    p, bufs = _one(1.0), [None]
    R.sgd_step(p, _one(0.5), bufs, lr=0.1, momentum=0.9, nesterov=True, maximize=True)
    assert p[0][0] == pytest.approx(1.0 - 0.1 * (-0.5 + 0.9 * -0.5))


def test_adagrad_by_hand():
    p, s = _one(1.0), _one(0.1)
    R.adagrad_step(p, _one(0.5), s, step=1, lr=0.1, lr_decay=0.5, eps=1e-3)
    s1 = 0.1 + 0.25
    p1 = 1.0 - 0.1 * 0.5 / (math.sqrt(s1) + 1e-3)
    assert s[0][0] == pytest.approx(s1)
    assert p[0][0] == pytest.approx(p1)
    R.adagrad_step(p, _one(-1.0), s, step=2, lr=0.1, lr_decay=0.5, eps=1e-3, weight_decay=0.1)
    g = -1.0 + 0.1 * p1
    s2 = s1 + g * g
    assert s[0][0] == pytest.approx(s2)
    assert p[0][0] == pytest.approx(p1 - 0.1 / 1.5 * g / (math.sqrt(s2) + 1e-3))


def test_adadelta_by_hand():
    p, sq, acc = _one(1.0), _one(0.0), _one(0.0)
    R.adadelta_step(p, _one(0.5), sq, acc, lr=1.0, rho=0.9, eps=1e-6)
    sq1 = 0.1 * 0.25
    d = math.sqrt(1e-6) / math.sqrt(sq1 + 1e-6) * 0.5
    assert sq[0][0] == pytest.approx(sq1)
    assert acc[0][0] == pytest.approx(0.1 * d * d)
    assert p[0][0] == pytest.approx(1.0 - d)


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_rmsprop_by_hand(centered, momentum):
    p, sq, ga, b = _one(1.0), _one(0.0), _one(0.0), _one(0.0)
    for _ in range(2):
        R.rmsprop_step(p, _one(0.5), sq, ga, b, lr=0.01, alpha=0.9, eps=1e-8, momentum=momentum, centered=centered)
    sq_h = 0.1 * 0.25
    sq_h = 0.9 * sq_h + 0.1 * 0.25
    ga1 = 0.1 * 0.5
    ga_h = ga1 + 0.1 * (0.5 - ga1)
    assert sq[0][0] == pytest.approx(sq_h)

    def avg(s, a):
        return math.sqrt(s - a * a) + 1e-8 if centered else math.sqrt(s) + 1e-8

    a1, a2 = avg(0.1 * 0.25, ga1), avg(sq_h, ga_h)
    if momentum:
        b1 = 0.5 / a1
        b2 = 0.5 * b1 + 0.5 / a2
        expect = 1.0 - 0.01 * b1 - 0.01 * b2
        assert b[0][0] == pytest.approx(b2)
    else:
        expect = 1.0 - 0.01 * 0.5 / a1 - 0.01 * 0.5 / a2
    assert p[0][0] == pytest.approx(expect)
    if centered:
        assert ga[0][0] == pytest.approx(ga_h)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_by_hand(decoupled, amsgrad):
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.99, 1e-8, 0.1
    p, m, v, vmax = _one(1.0), _one(0.0), _one(0.0), _one(0.0)
    pe, me, ve, vmaxe = 1.0, 0.0, 0.0, 0.0
    for t, gv in [(1, 0.5), (2, -0.1), (3, 0.05)]:
        R.adam_step(
            p, _one(gv), m, v, vmax, step=t, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd,
            amsgrad=amsgrad, decoupled_weight_decay=decoupled,
        )  # fmt: skip
        g = gv
        if decoupled:
            pe *= 1 - lr * wd
        else:
            g += wd * pe
        me = b1 * me + (1 - b1) * g
        ve = b2 * ve + (1 - b2) * g * g
        vmaxe = max(vmaxe, ve)
        vv = vmaxe if amsgrad else ve
        pe -= lr / (1 - b1**t) * me / (math.sqrt(vv) / math.sqrt(1 - b2**t) + eps)
        assert m[0][0] == pytest.approx(me)
        assert v[0][0] == pytest.approx(ve)
        assert p[0][0] == pytest.approx(pe)
    if amsgrad:
        assert vmax[0][0] == pytest.approx(vmaxe)
    # the first Adam step moves each coordinate by about lr (bias correction makes m/sqrt(v) = sign(g))
    q = [np.array([3.0, -2.0])]
    R.adam_step(q, [np.array([1e-3, -50.0])], [np.zeros(2)], [np.zeros(2)], step=1, lr=0.1)
    np.testing.assert_allclose(q[0], [2.9, -1.9], rtol=1e-6)


def test_reference_keeps_dtype_and_rejects_length_mismatch():
    p = [np.ones(4, np.float32)]
    R.adam_step(p, [np.ones(4, np.float32)], [np.zeros(4, np.float32)], [np.zeros(4, np.float32)], step=1)
    assert p[0].dtype == np.float32
    with pytest.raises(ValueError, match="zip"):  # zip(strict=True)
        R.adam_step(p, [], [np.zeros(4, np.float32)], [np.zeros(4, np.float32)], step=1)


# ---------------------------------------------------------------------------------- vs torch.optim
def _problem(dtype, seed=0, steps=25):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]
    return params, grads


def _torch_run(torch, cls, params, grads, kw, lr_schedule=None):
    tp = [torch.tensor(p, requires_grad=True) for p in params]
    opt = cls(tp, foreach=False, **kw)
    for k, gs in enumerate(grads):
        if lr_schedule is not None:
            opt.param_groups[0]["lr"] = lr_schedule(k)
        for t, g in zip(tp, gs, strict=True):
            t.grad = torch.tensor(g)
        opt.step()
    return [t.detach().numpy() for t in tp], opt


# name -> (torch class name, reference runner factory, option sets)
SGD_OPTS = [
    {"lr": 0.05},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01},
    {"lr": 0.05, "momentum": 0.8, "nesterov": True, "maximize": True},
    {"lr": 0.05, "weight_decay": 0.1, "maximize": True},
]
ADAGRAD_OPTS = [
    {"lr": 0.1},
    {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01, "initial_accumulator_value": 0.3, "eps": 1e-6},
    {"lr": 0.1, "maximize": True},
]
ADADELTA_OPTS = [{}, {"lr": 0.5, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.05, "maximize": True}]
RMSPROP_OPTS = [
    {},
    {"alpha": 0.9, "centered": True},
    {"momentum": 0.7, "weight_decay": 0.02},
    {"lr": 0.003, "alpha": 0.95, "eps": 1e-6, "centered": True, "momentum": 0.5, "maximize": True},
]
ADAM_OPTS = [
    {"lr": 0.01},
    {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.05},
    {"lr": 0.01, "amsgrad": True, "maximize": True},
    {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "decoupled_weight_decay": True},
]


def _ref_run(name, params, grads, kw, lr_schedule=None):
    """Run the reference the way the torch class does (state created at its first step)."""
    kw = dict(kw)
    ps = [p.copy() for p in params]
    n = len(ps)
    zeros = lambda: [np.zeros_like(p) for p in ps]
    if name == "sgd":
        state = ([None] * n,)
    elif name == "adagrad":
        init = kw.pop("initial_accumulator_value", 0.0)
        state = ([np.full_like(p, init) for p in ps],)
    elif name == "adadelta":
        state = (zeros(), zeros())
    elif name == "rmsprop":
        state = (zeros(), zeros(), zeros())
    else:
        kw["beta1"], kw["beta2"] = kw.pop("betas", (0.9, 0.999))
        state = (zeros(), zeros(), zeros())
    for k, gs in enumerate(grads):
        if lr_schedule is not None:
            kw["lr"] = lr_schedule(k)
        step = {"step": k + 1} if name in ("adagrad", "adam", "adamw") else {}
        getattr(R, f"{name}_step")(ps, gs, *state, **kw, **step)
    return ps, state


CASES = (
    [("sgd", "SGD", o) for o in SGD_OPTS]
    + [("adagrad", "Adagrad", o) for o in ADAGRAD_OPTS]
    + [("adadelta", "Adadelta", o) for o in ADADELTA_OPTS]
    + [("rmsprop", "RMSprop", o) for o in RMSPROP_OPTS]
    + [("adam", "Adam", o) for o in ADAM_OPTS]
    + [
        ("adamw", "AdamW", {"lr": 0.01}),
        ("adamw", "AdamW", {"lr": 0.01, "weight_decay": 0.3, "amsgrad": True}),
    ]
)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("name", "cls", "kw"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_reference_matches_torch_trajectory(name, cls, kw, dtype):
    torch = torch_or_skip()
    params, grads = _problem(dtype)
    want, _ = _torch_run(torch, getattr(torch.optim, cls), params, grads, kw)
    got, _ = _ref_run(name, params, grads, kw)
    wide = np.float64 if dtype == np.float32 else np.longdouble  # the reference in higher precision
    truth, _ = _ref_run(name, [p.astype(wide) for p in params], [[g.astype(wide) for g in gs] for gs in grads], kw)
    for i, (g, w, t) in enumerate(zip(got, want, truth, strict=True)):
        assert g.dtype == dtype
        assert_close_to_ref(g, w, t, name=f"param {i}", ulps=32)


def test_reference_matches_torch_with_lr_schedule():
    torch = torch_or_skip()
    params, grads = _problem(np.float64, seed=3)
    sched = lambda k: 0.02 * 0.9**k
    for name, cls, kw in [
        ("sgd", "SGD", {"momentum": 0.9}),
        ("adam", "Adam", {}),
        ("adagrad", "Adagrad", {}),
    ]:
        want, _ = _torch_run(torch, getattr(torch.optim, cls), params, grads, kw, sched)
        got, _ = _ref_run(name, params, grads, kw, sched)
        wide = [[g.astype(np.longdouble) for g in gs] for gs in grads]
        truth, _ = _ref_run(name, [p.astype(np.longdouble) for p in params], wide, kw, sched)
        for i, (g, w, t) in enumerate(zip(got, want, truth, strict=True)):
            assert_close_to_ref(g, w, t, name=f"{name} param {i}", ulps=32)


# ---------------------------------------------------------------------------------- documented forms
def test_heavy_ball_form_equals_sgd_momentum_at_constant_lr():
    """m = mu*m + lr*g; p -= m  is torch's  b = mu*b + g; p -= lr*b  with m = lr*b."""
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(6)
    target = rng.standard_normal(6)
    lr, mu = 0.1, 0.9
    p, bufs = [p0.copy()], [None]
    q, m = p0.copy(), np.zeros(6)
    for _ in range(30):
        R.sgd_step(p, [p[0] - target], bufs, lr=lr, momentum=mu)  # gradient of |p - target|^2 / 2
        m = mu * m + lr * (q - target)
        q = q - m
    np.testing.assert_allclose(p[0], q, rtol=1e-12, atol=1e-12)


def test_lookahead_nesterov_equals_nesterov_true():
    """v = mu*v - lr*grad(x + mu*v); x += v  is  nesterov=True on the look-ahead point q = x + mu*v."""
    rng = np.random.default_rng(6)
    a = np.abs(rng.standard_normal(5)) + 0.5  # f(x) = sum(a * x^2) / 2, grad = a * x
    x0 = rng.standard_normal(5)
    lr, mu = 0.05, 0.9
    x, v = x0.copy(), np.zeros(5)
    q, bufs = [x0.copy()], [None]
    for _ in range(40):
        v = mu * v - lr * a * (x + mu * v)
        x = x + v
        R.sgd_step(q, [a * q[0]], bufs, lr=lr, momentum=mu, nesterov=True)
        np.testing.assert_allclose(q[0], x + mu * v, rtol=1e-10, atol=1e-12)


def test_full_batch_vs_minibatch_is_only_the_gradient():
    """Full-batch GD, SGD and mini-batch SGD are one update fed different gradients."""
    rng = np.random.default_rng(7)
    X, y = rng.standard_normal((32, 3)), rng.standard_normal(32)
    w0 = np.zeros(3)

    def grad(w, idx):
        r = X[idx] @ w - y[idx]
        return X[idx].T @ r / len(idx)

    full, mini = [w0.copy()], [w0.copy()]
    for k in range(4):
        R.sgd_step(full, [grad(full[0], np.arange(32))], lr=0.1)
        R.sgd_step(mini, [grad(mini[0], np.arange(8 * k, 8 * k + 8))], lr=0.1)
    w = w0.copy()
    for _ in range(4):
        w -= 0.1 * grad(w, np.arange(32))
    np.testing.assert_allclose(full[0], w, rtol=1e-14)
    assert not np.allclose(mini[0], w)
