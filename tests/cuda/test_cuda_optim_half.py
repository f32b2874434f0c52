"""CUDA optimizer steps over bfloat16/float16 parameters against the CPU kernels: the same float32 update
(identical up to the last float32 bit where the simulator's Python arithmetic rounds a square root
differently: at most one unit of the 16-bit format in a parameter), the same round-to-nearest-even and
stochastic rounding with the same counter-based random bits (bitwise, tested on exact float32 values).

Small shapes: these run on the simulator (NUMBA_ENABLE_CUDASIM=1) too."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from fastnorm import optim as O

from .conftest import host

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
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


def _bits(a):
    return np.asarray(a).view(np.uint16)


def _close(got, want):
    """Device and CPU run the same float32 operations in the same order; they may differ only where a square
    root or an FMA contraction rounds differently (an ulp of one operand per step). So a float32 state is
    within 8 float32 ulps at the array's scale (no per-element rtol: a state can be a cancellation's small
    result), and a 16-bit parameter, that float32 value rounded once, at most one unit (bit patterns of
    same-sign values) and mostly equal."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    if want.dtype.itemsize == 2:
        assert (np.signbit(got.astype(np.float32)) == np.signbit(want.astype(np.float32))).all()
        diff = np.abs(_bits(got).astype(np.int64) - _bits(want).astype(np.int64))
        assert diff.max(initial=0) <= 1
        assert (diff == 0).sum() >= 0.9 * diff.size
    elif want.size:
        bound = 8 * np.finfo(np.float32).eps * np.max(np.abs(want))
        assert np.max(np.abs(got.astype(np.float64) - want)) <= bound


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize(("name", "kw"), CASES, ids=[c[0] for c in CASES])
def test_class_steps_match_the_cpu(name, kw, half, opts, on_gpu):
    rng = np.random.default_rng(0)
    shapes = [(5, 7), (40,), (0,), (3,)]
    p0 = [rng.standard_normal(s).astype(half) for s in shapes] + [rng.standard_normal(9).astype(np.float32)]
    cpu = [a.copy() for a in p0]
    dev = [on_gpu(a) for a in p0]
    o_cpu = getattr(O, name)(cpu, **kw, **opts)
    o_dev = getattr(O, name)(dev, **kw, **opts)
    for k in range(3):
        # 16-bit gradients, and float32 ones for the first parameter on odd steps
        gs = [rng.standard_normal(a.shape).astype(a.dtype) for a in p0]
        if k % 2:
            gs[0] = gs[0].astype(np.float32) * np.float32(1.001)
        o_cpu.step(gs)
        o_dev.step([on_gpu(g) for g in gs])
    for a, d in zip(cpu, dev, strict=True):
        _close(host(d), a)
    sd_cpu, sd_dev = o_cpu.state_dict(), o_dev.state_dict()
    for i, st in sd_cpu["state"].items():
        assert sorted(st) == sorted(sd_dev["state"][i])
        for k, v in st.items():
            _close(sd_dev["state"][i][k], v)
    if opts.get("master_weights"):
        for i in range(4):  # the device parameter is its device master rounded to nearest even
            np.testing.assert_array_equal(_bits(sd_dev["state"][i][O.MASTER].astype(half)), _bits(host(dev[i])))
    # the device optimizer reloads its own state dict and continues identically
    o_dev2 = getattr(O, name)([on_gpu(a) for a in cpu], **kw, **opts)
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
