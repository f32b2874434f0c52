"""fastnorm.optim on CUDA arrays: the public functional steps and classes on device arrays vs the NumPy
references (and the CPU classes), state dicts (host copies out, host or device arrays in), and mixing
host and device arrays raising TypeError before anything is written. Small tensors of odd sizes with
small blocks and chunks, so that chunks span several tensors on the simulator too."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fastnorm import optim as O
from fastnorm.reference import optim as R

from .conftest import host

SIZES = [5, 1, 23, 0, 40]

# functional name -> (state lists, takes step=, option sets)
FUNCTIONAL = {
    "sgd": (
        1,
        False,
        [
            {"lr": 0.05, "weight_decay": 0.1, "maximize": True},
            {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01},
            {"lr": 0.05, "momentum": 0.8, "nesterov": True},
        ],
    ),
    "adagrad": (1, True, [{"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01, "eps": 1e-6, "maximize": True}]),
    "adadelta": (2, False, [{"lr": 0.5, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.05, "maximize": True}]),
    "rmsprop": (
        3,
        False,
        [
            {"alpha": 0.9},
            {"lr": 0.003, "alpha": 0.95, "eps": 1e-6, "centered": True, "momentum": 0.5, "maximize": True},
        ],
    ),
    "adam": (
        3,
        True,
        [
            {"lr": 0.01, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6, "weight_decay": 0.05},
            {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "maximize": True},
        ],
    ),
    "adamw": (3, True, [{"lr": 0.01, "weight_decay": 0.3, "amsgrad": True}]),
}
FCASES = [(name, kw) for name, (_, _, opts) in FUNCTIONAL.items() for kw in opts]
FIDS = [f"{name}-{i}" for i, (name, _) in enumerate(FCASES)]


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    """Small blocks and chunks: a few elements exercise chunks crossing tensors (and the simulator is fast)."""
    from fastnorm._kernels.cuda import optim as K

    monkeypatch.setattr(K, "BLOCK", 32)
    monkeypatch.setattr(K, "UNROLL", 2)
    monkeypatch.setattr(K, "CHUNK", 16)


def _state(name, params, rng):
    n_lists, _, _ = FUNCTIONAL[name]
    if name == "sgd":
        return [[None] * len(params)]
    lists = []
    for j in range(n_lists):
        if name == "rmsprop" and j == 1:  # centered needs square_avg >= grad_avg^2
            lists.append([np.zeros_like(p) for p in params])
        elif (name, j) in (("adam", 0), ("adamw", 0), ("rmsprop", 2)):
            lists.append([(rng.standard_normal(p.shape) * 0.01).astype(p.dtype) for p in params])
        else:
            lists.append([(np.abs(rng.standard_normal(p.shape)) * 0.1).astype(p.dtype) for p in params])
    return lists


def _run(mod, name, params, grads_seq, state, kw):
    _, has_step, _ = FUNCTIONAL[name]
    for k, grads in enumerate(grads_seq):
        getattr(mod, f"{name}_step")(params, grads, *state, **kw, **({"step": 1 + k} if has_step else {}))


def _problem(dtype, n_steps, seed=0, sizes=SIZES):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(n_steps)]
    return rng, params, grads


def _to_dev(on_gpu, lists):
    return [None if a is None else on_gpu(a) for a in lists]


def test_functional_noncontiguous_device_grad_and_per_tensor_steps(on_gpu):
    rng, params, grads = _problem(np.float64, 1, seed=1, sizes=[7, 9])
    wide = [rng.standard_normal(2 * p.size) for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    d_params, d_m, d_v = _to_dev(on_gpu, params), _to_dev(on_gpu, m), _to_dev(on_gpu, v)
    d_grads = [on_gpu(w)[::2] for w in wide]  # strided device views: copied on the device
    O.adam_step(d_params, d_grads, d_m, d_v, step=[1, 3], lr=0.1)
    R.adam_step(params, [w[::2] for w in wide], m, v, step=[1, 3], lr=0.1)
    for a, b in zip(d_params, params, strict=True):
        np.testing.assert_allclose(host(a), b, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------- classes
CLASS_CASES = [
    (O.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (O.Adagrad, {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.2}),
    (O.Adadelta, {"lr": 0.5, "weight_decay": 0.02}),
    (O.RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.5}),
    (O.Adam, {"lr": 0.01, "amsgrad": True, "weight_decay": 0.01}),
    (O.AdamW, {"lr": 0.01, "maximize": True}),
]
CIDS = [cls.__name__ for cls, _ in CLASS_CASES]


def _class_problem(seed=3):
    """Two groups, float32 and float64 tensors mixed in the first."""
    rng = np.random.default_rng(seed)
    shapes = [(3, 5), (1,), (17,), (2, 2, 3)]
    dts = [np.float32, np.float64, np.float32, np.float64]
    params = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dts, strict=True)]
    grads = [[rng.standard_normal(p.shape).astype(p.dtype) for p in params] for _ in range(3)]
    grads[1][2] = None  # skipped on that step
    return params, grads


def _groups(params, kw):
    return [{"params": params[:3]}, {"params": params[3:], "lr": kw["lr"] * 0.5}]


@pytest.mark.parametrize(("cls", "kw"), [CLASS_CASES[0], CLASS_CASES[4]], ids=[CIDS[0], CIDS[4]])
def test_state_dict_round_trip_on_device(cls, kw, on_gpu):
    params, grads = _class_problem(seed=4)
    d_params = _to_dev(on_gpu, params)
    opt = cls(_groups(d_params, kw), **kw)
    opt.step(_to_dev(on_gpu, grads[0]))
    sd = opt.state_dict()
    # a copy of the parameters restored from host state continues bit-identically
    d_copy = _to_dev(on_gpu, [host(p) for p in d_params])
    other = cls(_groups(d_copy, kw), **kw)
    other.load_state_dict(sd)
    # and from device state arrays too
    sd_dev = {
        "state": {i: {k: (v if k == "step" else on_gpu(v)) for k, v in e.items()} for i, e in sd["state"].items()},
        "param_groups": sd["param_groups"],
    }
    d_third = _to_dev(on_gpu, [host(p) for p in d_params])
    third = cls(_groups(d_third, kw), **kw)
    third.load_state_dict(sd_dev)
    g = [None if a is None else on_gpu(a) for a in grads[2]]
    for o in (opt, other, third):
        o.step(g)
    for a, b, c in zip(d_params, d_copy, d_third, strict=True):
        np.testing.assert_array_equal(host(b), host(a))
        np.testing.assert_array_equal(host(c), host(a))
    # state_dict arrays are copies: changing them changes nothing
    sd2 = opt.state_dict()
    for entry in sd2["state"].values():
        for v in entry.values():
            v[...] = 7
    for entry in opt.state_dict()["state"].values():
        for k, v in entry.items():
            if k != "step":
                assert not (v == 7).all()


# ---------------------------------------------------------------------------------- host / device mixing
def test_functional_mixing_host_and_device_raises_before_writing(on_gpu):
    rng, params, grads = _problem(np.float32, 1, sizes=[4, 6])
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    d_params, d_grads = _to_dev(on_gpu, params), _to_dev(on_gpu, grads[0])
    d_m, d_v = _to_dev(on_gpu, m), _to_dev(on_gpu, v)
    before = [host(p) for p in d_params]
    cases = [
        ((d_params, grads[0], d_m, d_v), "grads[0]"),
        ((d_params, d_grads, d_m, [d_v[0], v[1]]), "exp_avg_sqs[1]"),
        (([d_params[0], params[1]], d_grads, d_m, d_v), "params[1]"),
        ((params, d_grads, m, v), "grads[0]"),
        ((params, grads[0], m, [v[0], d_v[1]]), "exp_avg_sqs[1]"),
    ]
    for args, name in cases:
        with pytest.raises(TypeError, match=rf"adam_step: arguments live on different devices: .*{re.escape(name)}"):
            O.adam_step(*args, step=1, lr=0.1)
    for a, b in zip(d_params, before, strict=True):
        np.testing.assert_array_equal(host(a), b)
    np.testing.assert_array_equal(host(d_m[0]), 0)
    bufs = [None, None]
    with pytest.raises(TypeError, match=r"sgd_step: .*different devices: .*grads\[1\]"):
        O.sgd_step(d_params, [d_grads[0], grads[0][1]], bufs, lr=0.1, momentum=0.9)
    assert bufs == [None, None]


def test_class_mixing_host_and_device_raises(on_gpu):
    params, grads = _class_problem(seed=5)
    d_params = _to_dev(on_gpu, params)
    with pytest.raises(TypeError, match="Adam: .*devices"):
        O.Adam([d_params[0], params[1]])
    opt = O.Adam(d_params[:2], lr=0.1)
    with pytest.raises(TypeError, match="Adam: .*devices"):
        opt.add_param_group({"params": [params[2]]})
    before = [host(p) for p in d_params[:2]]
    with pytest.raises(TypeError, match=r"Adam: .*different devices: .*grads\[1\]"):
        opt.step([on_gpu(grads[0][0]), grads[0][1]])
    for a, b in zip(d_params[:2], before, strict=True):
        np.testing.assert_array_equal(host(a), b)
    assert opt.state_dict()["state"] == {}
    opt.step(_to_dev(on_gpu, grads[0][:2]))  # still usable
    assert set(opt.state_dict()["state"]) == {0, 1}
