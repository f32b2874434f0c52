"""CUDA optimizer steps over bfloat16/float16 parameters (and a float32 one beside them), against the float64
NumPy reference trajectory with DESIGN.md's criterion (``assert_close_to_ref``): after the steps, the device
parameter's distance to the float64 trajectory (same initial values, same gradients, float64 state, never
rounded) is at most twice that of the reference run in float32 in the same configuration (float32 state,
the float32 result rounded to nearest even into the 16-bit parameter after every step: kept as the master
copy with master weights, else replaced by the rounded value), plus a slack in units of the 16-bit format
at the reference's scale: 2, and with stochastic rounding one more per step (its rounding error is below
one unit of the result, round-to-nearest's below half). The float32 state and master copies: the same
criterion against the float32 reference's (slack 8 float32 units, ``assert_close_to_ref``'s default).
Stochastic rounding's bits: the CPU kernel's, the same counter-based random bits (bitwise, tested on exact
float32 values below).

Small shapes: these run on the simulator (NUMBA_ENABLE_CUDASIM=1) too."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from fastnorm import optim as O
from fastnorm.optim._algos import ALGOS
from fastnorm.reference import optim as R

from .._util import assert_close_to_ref
from ._half_util import close_to_cpu
from .conftest import host

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
HALVES = [pytest.param(BF16, id="bf16"), pytest.param(F16, id="f16")]
CASES = [
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("Adagrad", {"lr": 0.05, "weight_decay": 0.01}),
    ("Adadelta", {}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("AdamW", {"lr": 0.01}),
]
OPTIONS = [
    pytest.param({}, id="rne"),
    pytest.param({"master_weights": True}, id="master"),
    pytest.param({"stochastic_rounding": True, "seed": 17}, id="sr"),
]
STEPS = 3


def _bits(a):
    return np.asarray(a).view(np.uint16)


def _reference(name, kw, p0, grads, dtype, half, master):
    """The reference trajectory of one tensor in ``dtype`` (float64: never rounded; float32 with a 16-bit
    ``half``: rounded to nearest even into the parameter after every step, kept unrounded as the master with
    ``master``). Returns (the parameter as stored, the unrounded value, {state name: array})."""
    algo = ALGOS[name.lower()]
    p = p0.astype(dtype)
    st = {a: [None] if algo.name == "sgd" else [np.zeros(p.shape, dtype)] for a in algo.args}  # (SGD: b = g first)
    stored = p
    for k, g in enumerate(grads, start=1):
        step = {"step": k} if algo.name in ("adagrad", "adam", "adamw") else {}
        args = {a: st[a] for a, on in zip(algo.args, algo.needed({**_defaults(algo), **kw})) if on}
        getattr(R, f"{algo.name}_step")([p], [g.astype(dtype)], **args, **step, **kw)
        stored = p if half is None else p.astype(half)
        if half is not None and not master:
            p[...] = stored.astype(dtype)
    return stored, p, {s: st[a][0] for s, a in zip(algo.streams, algo.args)}


def _defaults(algo):
    return {k: hp.default for k, hp in algo.hyper.items()}


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize(("name", "kw"), CASES, ids=[c[0] for c in CASES])
def test_class_steps_against_the_float64_reference(name, kw, half, opts, on_gpu):
    rng = np.random.default_rng(0)
    shapes = [(5, 7), (40,), (0,), (3,)]
    p0 = [rng.standard_normal(s).astype(half) for s in shapes] + [rng.standard_normal(9).astype(np.float32)]
    dev, cpu = [on_gpu(a) for a in p0], [a.copy() for a in p0]
    o_dev, o_cpu = getattr(O, name)(dev, **kw, **opts), getattr(O, name)(cpu, **kw, **opts)
    grads = [[] for _ in p0]
    for k in range(STEPS):
        # 16-bit gradients, and float32 ones for the first parameter on odd steps
        gs = [rng.standard_normal(a.shape).astype(a.dtype) for a in p0]
        if k % 2:
            gs[0] = gs[0].astype(np.float32) * np.float32(1.001)
        o_dev.step([on_gpu(g) for g in gs])
        o_cpu.step(gs)
        for i, g in enumerate(gs):
            grads[i].append(g)
    master, sr = bool(opts.get("master_weights")), bool(opts.get("stochastic_rounding"))
    sd_dev, sd_cpu = o_dev.state_dict(), o_cpu.state_dict()
    # the CPU kernel's step, state and stochastic-rounding bits (the same counter-based keys): the criterion
    # below bounds the trajectory, this one a wrong update that stays within it for a few steps
    for i, (d, c) in enumerate(zip(dev, cpu, strict=True)):
        close_to_cpu(host(d), c)
        for s, v in sd_cpu["state"][i].items():
            if s != "step":
                close_to_cpu(np.asarray(sd_dev["state"][i][s]), np.asarray(v))
    for i, (a0, d) in enumerate(zip(p0, dev, strict=True)):
        if a0.size == 0:
            continue
        lp = half if a0.dtype == half else None
        got = host(d)
        assert got.dtype == a0.dtype
        ref, ref_p, ref_st = _reference(name, kw, a0, grads[i], F64, None, False)
        oth, oth_p, oth_st = _reference(name, kw, a0, grads[i], F32, lp, master)
        ulps = (2.0 + (STEPS if sr else 0)) if lp is not None else 8.0
        assert_close_to_ref(got, oth, ref, name=f"{name} param {i}", ulps=ulps)
        if lp is None or sr:
            # (stochastic rounding moves the parameter, and so the state of a weight-decayed gradient, off
            # the round-to-nearest comparator's path: its parameters are held to the criterion, not its state)
            continue
        st = sd_dev["state"][i]
        for s in ref_st:
            if s in st:
                assert_close_to_ref(np.asarray(st[s]), oth_st[s], ref_st[s], name=f"{name} {s} {i}")
        if master:
            assert_close_to_ref(np.asarray(st[O.MASTER]), oth_p, ref_p, name=f"{name} master {i}")
            # the device parameter is its device master rounded to nearest even
            np.testing.assert_array_equal(_bits(np.asarray(st[O.MASTER]).astype(half)), _bits(got))
    # the device optimizer reloads its own state dict and continues identically
    o_dev2 = getattr(O, name)([on_gpu(host(d)) for d in dev], **kw, **opts)
    o_dev2.load_state_dict(sd_dev)
    gs = [rng.standard_normal(a.shape).astype(a.dtype) for a in p0]
    o_dev.step([on_gpu(g) for g in gs])
    o_dev2.step([on_gpu(g) for g in gs])
    for a, b in zip(o_dev.param_groups[0]["params"], o_dev2.param_groups[0]["params"], strict=True):
        np.testing.assert_array_equal(np.asarray(host(a)).view(np.uint8), np.asarray(host(b)).view(np.uint8))


@pytest.mark.parametrize("half", HALVES)
def test_functional_stochastic_rounding_and_specials_match_the_cpu(half, on_gpu):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(600) * np.exp(rng.uniform(-12, 12, 600))).astype(np.float32)
    x[:5] = [np.inf, -np.inf, np.nan, 7e4, 1e-7]
    p = np.zeros(600, half)
    d = on_gpu(p)
    O.sgd_step([p], [-x], lr=1.0, stochastic_rounding=True, seed=99)
    O.sgd_step([d], [on_gpu(-x)], lr=1.0, stochastic_rounding=True, seed=99)
    got = np.asarray(host(d))
    np.testing.assert_array_equal(_bits(got)[3:], _bits(p)[3:])
    assert got[0] == np.inf
    assert got[1] == -np.inf
    assert np.isnan(got[2])
    # round to nearest even (no options) of the same values
    q, e = np.zeros(600, half), on_gpu(np.zeros(600, half))
    O.sgd_step([q], [-x], lr=1.0)
    O.sgd_step([e], [on_gpu(-x)], lr=1.0)
    np.testing.assert_array_equal(_bits(host(e))[3:], _bits(q)[3:])
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(_bits(q)[3:], _bits(x.astype(half))[3:])


def test_device_errors_name_the_argument(on_gpu):
    p = on_gpu(np.zeros(4, BF16))
    g = on_gpu(np.zeros(4, BF16))
    with pytest.raises(TypeError, match=r"exp_avgs\[0\] has dtype bfloat16; expected float32"):
        O.adam_step([p], [g], [on_gpu(np.zeros(4, BF16))], [on_gpu(np.zeros(4, np.float32))], step=1)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float64"):
        O.sgd_step([p], [on_gpu(np.zeros(4, np.float64))])
    with pytest.raises(ValueError, match=r"master_params\[0\] is None"):
        O.sgd_step([p], [g], master_params=[None])
