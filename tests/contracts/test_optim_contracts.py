"""The contracts every optimizer keeps (functional step and class), written once over ``OPTIM_CASES``.

Reference parity by DESIGN.md's criterion over several steps, multi-tensor lists with odd sizes and empty
tensors, thread-count invariance (bitwise), and nothing written on error (params and state unchanged when
a later gradient or state tensor is bad). Parametrized over device ("cpu"; "cuda" on a GPU or under
NUMBA_ENABLE_CUDASIM=1).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnorm

from .._util import assert_close_to_ref, assert_matches_reference
from ..cases import OPTIM_CASES, OptimCase, class_reference
from ._devices import DEVICES

SIZES = [0, 1, 3, 17, 0, 101, 4099, 2]
SMALL_SIZES = [5, 0, 1, 23, 0, 40]


PARAMS = [
    pytest.param(dev, case, opts, id=f"{dev}-{case.name}-{i}")
    for dev in DEVICES
    for case in OPTIM_CASES
    for i, opts in enumerate(case.options)
]
CPU_PARAMS = [p for p in PARAMS if p.values[0] == "cpu"] or [
    pytest.param(
        None,
        None,
        None,
        marks=pytest.mark.skip(reason="CPU contract: runs in the ordinary (non-simulator) process"),
        id="cpu",
    )
]
# Error messages must start with the name of the function called.
ERROR_PARAMS = PARAMS


def _names(arg):
    """An argument's name or the name of one of its entries ('exp_avgs' or 'exp_avg[2]')."""
    entry = {"state_sums": "sum"}.get(arg, arg[:-1] if arg.endswith("s") else arg)
    return rf"\b({arg}|{entry}\[\d+\])"


def _problem(sizes, dtype, n_steps, seed):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(n_steps)]
    return rng, params, grads


def _copy(lists, dtype=None):
    return [[None if a is None else np.array(a, dtype=dtype or a.dtype) for a in lst] for lst in lists]


def _run_functional(fn, case: OptimCase, params, grads_seq, state, kw, dev=None):
    for k, grads in enumerate(grads_seq):
        extra = {"step": 1 + k} if case.has_step else {}
        if dev is not None:
            grads = [dev.put(g) for g in grads]
        fn(params, grads, *state, **kw, **extra)


def _to(dev, lists):
    return [[None if a is None else dev.put(a) for a in lst] for lst in lists]


def _back(dev, lists):
    return [[None if a is None else dev.get(a) for a in lst] for lst in lists]


# ------------------------------------------------------------------------------------------ reference parity
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("device", "case", "opts"), PARAMS, indirect=["device"])
def test_functional_matches_reference(device, case, opts, dtype):
    sizes = SMALL_SIZES if device.small else SIZES
    rng, params, grads = _problem(sizes, dtype, 3, seed=1)
    state = case.init_state(rng, params)
    p_k, s_k = [device.put(p.copy()) for p in params], _to(device, _copy(state))
    p_lo, s_lo = [p.copy() for p in params], _copy(state)
    wide = np.float64 if dtype == np.float32 else np.longdouble  # the reference in higher precision
    p_w, s_w = [p.astype(wide) for p in params], _copy(state, wide)
    _run_functional(case.functional, case, p_k, grads, s_k, opts, device)
    _run_functional(case.reference, case, p_lo, grads, s_lo, opts)
    _run_functional(case.reference, case, p_w, [[g.astype(wide) for g in gs] for gs in grads], s_w, opts)
    p_k, s_k = [device.get(p) for p in p_k], _back(device, s_k)
    for i in range(len(sizes)):
        assert p_k[i].dtype == dtype
        assert p_k[i].shape == (sizes[i],)
        assert_close_to_ref(p_k[i], p_lo[i], p_w[i], name=f"param {i}")
        for name, lk, lw, llo in zip(case.states, s_k, s_w, s_lo, strict=True):
            if lw[i] is not None and lk[i] is not None:
                assert_close_to_ref(lk[i], llo[i], lw[i], name=f"{name}[{i}]")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("device", "case", "opts"), PARAMS, indirect=["device"])
def test_class_matches_reference(device, case, opts, dtype):
    """The class over 4 steps (one parameter skipped on one step) equals the reference functional step
    started from the class's initial state, with per-tensor step numbers."""
    sizes = SMALL_SIZES if device.small else SIZES
    _, params, grads = _problem(sizes, dtype, 4, seed=2)
    grads[1][2] = None  # skipped: its state and step count do not advance
    dev_params = [device.put(p.copy()) for p in params]
    opt = case.cls(dev_params, **case.class_kwargs(opts))
    for gs in grads:
        opt.step([None if g is None else device.put(g) for g in gs])
    got = [device.get(p) for p in dev_params]
    p64 = class_reference(case, params, grads, opts, np.float64)
    lo = class_reference(case, params, grads, opts) if dtype == np.float32 else [None] * len(params)
    for i in range(len(sizes)):
        assert_matches_reference(got[i], p64[i], lo[i], name=f"param {i}")


# ------------------------------------------------------------------------------------------ threads
@pytest.mark.parametrize(("device", "case", "opts"), CPU_PARAMS, indirect=["device"])
def test_thread_count_invariance(device, case, opts):
    """Elementwise updates: 1 and 2 threads (chunks crossing tensor boundaries) give the same bits, for the
    functional step and the class, and a repeated 2-thread run the same bits again."""
    sizes = [int(n) for n in np.random.default_rng(3).integers(0, 300, size=120)] + [0, 5000, 1]
    results = []
    old = fastnorm.get_num_threads()
    try:
        for nt in (1, 2, 2):
            fastnorm.set_num_threads(nt)
            rng, params, grads = _problem(sizes, np.float32, 2, seed=4)
            state = case.init_state(rng, params)
            _run_functional(case.functional, case, params, grads, state, opts)
            cparams = [p.copy() for p in params]
            opt = case.cls(cparams, **case.class_kwargs(opts))
            for gs in grads:
                opt.step(gs)
            results.append((params, state, cparams))
    finally:
        fastnorm.set_num_threads(old)
    (p1, s1, c1), *others = results
    for p2, s2, c2 in others:
        for a, b in zip(p1 + c1, p2 + c2, strict=True):
            np.testing.assert_array_equal(a, b)
        for la, lb in zip(s1, s2, strict=True):
            for a, b in zip(la, lb, strict=True):
                if a is not None:
                    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------ bad input
BAD_LATER = {
    "grad-shape": (ValueError, lambda g, dt: np.zeros(g.shape + (1,), dt)),
    "grad-dtype": (TypeError, lambda g, dt: g.astype(np.float64 if dt == np.float32 else np.float32)),
    "grad-int": (TypeError, lambda g, dt: np.zeros(g.shape, np.int32)),
    "grad-complex": (TypeError, lambda g, dt: g.astype(np.complex64)),
}


@pytest.mark.parametrize("bad", list(BAD_LATER))
@pytest.mark.parametrize(("device", "case", "opts"), ERROR_PARAMS, indirect=["device"])
def test_functional_bad_later_grad_writes_nothing(device, case, opts, bad):
    exc, make_bad = BAD_LATER[bad]
    rng, params, grads = _problem([3, 5, 4], np.float32, 1, seed=5)
    state = case.init_state(rng, params)
    grads = grads[0]
    grads[-1] = make_bad(grads[-1], np.float32)
    p_d, s_d = [device.put(p.copy()) for p in params], _to(device, _copy(state))
    extra = {"step": 1} if case.has_step else {}
    with pytest.raises(exc, match=rf"^{case.name}_step: .*{_names('grads')}"):
        case.functional(p_d, [device.put(g) for g in grads], *s_d, **opts, **extra)
    for a, b in zip([device.get(p) for p in p_d], params, strict=True):
        np.testing.assert_array_equal(a, b)
    for la, lb in zip(_back(device, s_d), state, strict=True):
        for a, b in zip(la, lb, strict=True):
            assert (a is None) == (b is None)  # SGD's buffer list keeps its None entries
            if a is not None:
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("device", "case", "opts"), ERROR_PARAMS, indirect=["device"])
def test_functional_bad_later_state_writes_nothing(device, case, opts):
    if case.name == "sgd":
        pytest.skip("SGD's buffers may be None (created by the step); see test_sgd_bad_later_buffer")
    rng, params, grads = _problem([3, 5, 4], np.float32, 1, seed=6)
    state = case.init_state(rng, params)
    state[0][-1] = np.zeros(7, np.float32)
    p_d, s_d = [device.put(p.copy()) for p in params], _to(device, _copy(state))
    extra = {"step": 1} if case.has_step else {}
    with pytest.raises(ValueError, match=rf"^{case.name}_step: .*{_names(case.states[0])}"):
        case.functional(p_d, [device.put(g) for g in grads[0]], *s_d, **opts, **extra)
    for a, b in zip([device.get(p) for p in p_d], params, strict=True):
        np.testing.assert_array_equal(a, b)
    for la, lb in zip(_back(device, s_d), state, strict=True):
        for a, b in zip(la, lb, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_sgd_bad_later_buffer(device):
    rng, params, grads = _problem([3, 5, 4], np.float32, 1, seed=7)
    bufs = [device.put(np.ones(3, np.float32)), None, device.put(np.ones(9, np.float32))]
    p_d = [device.put(p.copy()) for p in params]
    with pytest.raises(ValueError, match=rf"^sgd_step: .*{_names('momentum_buffers')}"):
        fastnorm.optim.sgd_step(p_d, [device.put(g) for g in grads[0]], bufs, lr=0.1, momentum=0.9)
    assert bufs[1] is None
    np.testing.assert_array_equal(device.get(bufs[0]), 1.0)
    for a, b in zip([device.get(p) for p in p_d], params, strict=True):
        np.testing.assert_array_equal(a, b)


def _state_snapshot(opt):
    sd = opt.state_dict()
    return {(i, k): np.array(v, copy=True) for i, e in sd["state"].items() for k, v in e.items()}


@pytest.mark.parametrize("bad", list(BAD_LATER))
@pytest.mark.parametrize(("device", "case", "opts"), PARAMS, indirect=["device"])
def test_class_bad_later_grad_writes_nothing(device, case, opts, bad):
    exc, make_bad = BAD_LATER[bad]
    _, params, grads = _problem([3, 5, 4], np.float32, 2, seed=8)
    p_d = [device.put(p.copy()) for p in params]
    opt = case.cls(p_d, **case.class_kwargs(opts))
    opt.step([device.put(g) for g in grads[0]])  # state exists now
    before_p = [device.get(p).copy() for p in p_d]
    before_s = _state_snapshot(opt)
    gs = list(grads[1])
    gs[-1] = make_bad(gs[-1], np.float32)
    with pytest.raises(exc, match=r"\bgrads?\b"):
        opt.step([device.put(g) for g in gs])
    for a, b in zip([device.get(p) for p in p_d], before_p, strict=True):
        np.testing.assert_array_equal(a, b)
    after_s = _state_snapshot(opt)
    assert after_s.keys() == before_s.keys()
    for k in before_s:
        np.testing.assert_array_equal(after_s[k], before_s[k], err_msg=str(k))


# ------------------------------------------------------------------------------------------ tensor lists
@pytest.mark.parametrize(("device", "case", "opts"), PARAMS, indirect=["device"])
def test_only_empty_tensors_and_single_elements(device, case, opts):
    """Lists made only of empty tensors, or of one-element tensors, step like the reference."""
    for sizes in ([0, 0], [1], [1, 0, 1]):
        rng, params, grads = _problem(sizes, np.float64, 2, seed=9)
        state = case.init_state(rng, params)
        p_k, s_k = [device.put(p.copy()) for p in params], _to(device, _copy(state))
        p_r, s_r = [p.copy() for p in params], _copy(state)
        _run_functional(case.functional, case, p_k, grads, s_k, opts, device)
        _run_functional(case.reference, case, p_r, grads, s_r, opts)
        for a, b in zip([device.get(p) for p in p_k], p_r, strict=True):
            assert_matches_reference(a, b)
