"""fastnorm.optim robustness: unaligned and byte-swapped arrays (no hang), hyperparameters read by value,
state dicts validated before anything changes."""

from __future__ import annotations

import contextlib
import copy
import signal

import ml_dtypes
import numpy as np
import pytest

import fastnorm._kernels.cpu as K
from fastnorm import optim as O
from fastnorm.reference import optim as R

from ._util import assert_close_to_ref


@contextlib.contextmanager
def deadline(seconds: int = 20):
    """Fail (TimeoutError) instead of hanging: the hangs fixed here were Python-level retry loops, which a
    SIGALRM interrupts."""

    def _raise(signum, frame):
        raise TimeoutError(f"did not finish within {seconds} s (hang)")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def unaligned(values, dtype=np.float32, writeable=True) -> np.ndarray:
    """A C-contiguous array of ``values`` at an odd byte offset (not aligned to its element size)."""
    values = np.asarray(values, dtype)
    buf = np.zeros(values.nbytes + 1, np.uint8)
    a = buf[1:].view(dtype).reshape(values.shape)
    a[...] = values
    assert a.flags.c_contiguous
    assert not a.flags.aligned
    a.flags.writeable = writeable
    return a


def _wide(arrays):
    return [a.astype(np.float64 if a.dtype == np.float32 else np.longdouble) for a in arrays]


# ---------------------------------------------------------------------------------- functional steps
STEPS = {
    "sgd": (lambda p, g, s: O.sgd_step(p, g, s[0], lr=0.1, momentum=0.9), 1),
    "adagrad": (lambda p, g, s: O.adagrad_step(p, g, s[0], step=1, lr=0.1), 1),
    "adadelta": (lambda p, g, s: O.adadelta_step(p, g, s[0], s[1]), 2),
    "rmsprop": (lambda p, g, s: O.rmsprop_step(p, g, s[0], s[1], s[2], centered=True, momentum=0.5), 3),
    "adam": (lambda p, g, s: O.adam_step(p, g, s[0], s[1], s[2], step=1, amsgrad=True), 3),
    "adamw": (lambda p, g, s: O.adamw_step(p, g, s[0], s[1], step=1), 2),
}
REFS = {
    "sgd": lambda p, g, s: R.sgd_step(p, g, s[0], lr=0.1, momentum=0.9),
    "adagrad": lambda p, g, s: R.adagrad_step(p, g, s[0], step=1, lr=0.1),
    "adadelta": lambda p, g, s: R.adadelta_step(p, g, s[0], s[1]),
    "rmsprop": lambda p, g, s: R.rmsprop_step(p, g, s[0], s[1], s[2], centered=True, momentum=0.5),
    "adam": lambda p, g, s: R.adam_step(p, g, s[0], s[1], s[2], step=1, amsgrad=True),
    "adamw": lambda p, g, s: R.adamw_step(p, g, s[0], s[1], step=1),
}


def _state(name, params):
    n = STEPS[name][1]
    if name == "sgd":
        return [[None] * len(params)]
    return [[np.zeros_like(p) for p in params] for _ in range(n)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["unaligned", "big-endian", "unaligned-readonly"])
@pytest.mark.parametrize("name", list(STEPS))
def test_unaligned_or_byteswapped_grads_are_copied_in(name, layout, dtype):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(7).astype(dtype), rng.standard_normal((2, 3)).astype(dtype)]
    g = [rng.standard_normal(p.shape).astype(dtype) for p in params]
    if layout == "big-endian":
        grads = [g[0].astype(np.dtype(dtype).newbyteorder(">")), g[1]]
    else:
        grads = [unaligned(g[0], dtype, writeable=layout == "unaligned"), g[1]]
    want, wide = [p.copy() for p in params], _wide(params)
    state, state_ref, state_wide = _state(name, params), _state(name, params), _state(name, params)
    state_wide = [[None if a is None else _wide([a])[0] for a in lst] for lst in state_wide]
    with deadline():
        STEPS[name][0](params, grads, state)
    REFS[name](want, g, state_ref)
    REFS[name](wide, _wide(g), state_wide)
    for i, (a, b, c) in enumerate(zip(params, want, wide, strict=True)):
        assert_close_to_ref(a, b, c, name=f"param {i}")


@pytest.mark.parametrize(
    ("where", "make", "match"),
    [
        ("params", lambda p: unaligned(p), r"params\[0\] is not aligned"),
        ("params", lambda p: p.astype(">f4"), r"params\[0\] is big-endian"),
        ("params", lambda p: unaligned(p, writeable=False), r"params\[0\] is not aligned"),
        ("exp_avgs", lambda p: unaligned(np.zeros_like(p)), r"exp_avgs\[0\] is not aligned"),
        ("exp_avgs", lambda p: np.zeros_like(p).astype(">f4"), r"exp_avgs\[0\] is big-endian"),
        ("exp_avgs", lambda p: np.zeros(14, np.float32)[::2], r"exp_avgs\[0\] must be C-contiguous"),
    ],
)
def test_unaligned_or_byteswapped_buffers_written_in_place_are_refused(where, make, match):
    rng = np.random.default_rng(1)
    p = rng.standard_normal(7).astype(np.float32)
    params, grads = [p.copy()], [rng.standard_normal(7).astype(np.float32)]
    m, v = [np.zeros(7, np.float32)], [np.zeros(7, np.float32)]
    if where == "params":
        params = [make(p)]
    else:
        m = [make(p)]
    before = [a.copy() for a in params + m + v]
    with deadline(), pytest.raises(ValueError, match=match):
        O.adam_step(params, grads, m, v, step=1)
    for a, b in zip(params + m + v, before, strict=True):
        np.testing.assert_array_equal(a, b)
    with deadline(), pytest.raises(ValueError, match=r"is not aligned|big-endian|C-contiguous"):
        O.Adam(params if where == "params" else [unaligned(p)])


@pytest.mark.parametrize("cls", ["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW"])
def test_classes_take_unaligned_grads(cls):
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(7).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    twin = [p.copy() for p in params]
    opt, opt2 = getattr(O, cls)(params, lr=0.01), getattr(O, cls)(twin, lr=0.01)
    for _ in range(3):
        gs = [rng.standard_normal(7).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
        with deadline():
            opt.step([unaligned(gs[0], writeable=False), gs[1].astype(">f4")])
        opt2.step(gs)
    for a, b in zip(params, twin, strict=True):
        np.testing.assert_array_equal(a, b)  # the copies hold the same values: the same bits result


def test_torch_optim_takes_unaligned_grads():
    torch = pytest.importorskip("torch")
    from fastnorm.torch import optim as FO

    p = torch.nn.Parameter(torch.arange(7, dtype=torch.float32))
    q = torch.nn.Parameter(p.detach().clone())
    buf = bytearray(4 * 7 + 1)
    g = torch.frombuffer(buf, dtype=torch.float32, count=7, offset=1)
    g.copy_(torch.linspace(-1, 1, 7))
    q64 = torch.nn.Parameter(p.detach().double())
    opt, ref, ref64 = FO.Adam([p], lr=0.1), torch.optim.Adam([q], lr=0.1), torch.optim.Adam([q64], lr=0.1)
    p.grad, q.grad, q64.grad = g, g.clone(), g.double()
    with deadline():
        opt.step()
    ref.step()
    ref64.step()
    assert_close_to_ref(p.detach(), q.detach(), q64.detach(), name="parameter")


# ---------------------------------------------------------------------------------- hyperparameters by value
def test_betas_list_changed_in_place_is_used_and_checked():
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(6)]
    betas = [0.9, 0.999]
    opt = O.Adam([{"params": params, "betas": betas}], lr=0.1)
    ref, m, v = [params[0].copy()], [np.zeros(6)], [np.zeros(6)]
    grads = [[rng.standard_normal(6)] for _ in range(3)]
    opt.step(grads[0])
    R.adam_step(ref, grads[0], m, v, step=1, lr=0.1, beta1=0.9, beta2=0.999)
    opt.param_groups[0]["betas"][0] = 0.5  # the same list object, changed in place
    opt.step(grads[1])
    R.adam_step(ref, grads[1], m, v, step=2, lr=0.1, beta1=0.5, beta2=0.999)
    wide = [params[0].astype(np.longdouble)]
    assert_close_to_ref(params[0], ref[0], ref[0], ulps=16)
    del wide
    opt.param_groups[0]["betas"][1] = 1.5  # invalid: refused before anything is written
    before = params[0].copy()
    with pytest.raises(ValueError, match="beta2"):
        opt.step(grads[2])
    np.testing.assert_array_equal(params[0], before)


def test_zero_d_array_hyperparameter_written_in_place_is_reread():
    params = [np.ones(3)]
    lr = np.array(0.1)
    opt = O.SGD(params, lr=lr)
    opt.step([np.ones(3)])
    np.testing.assert_allclose(params[0], 0.9, rtol=0, atol=1e-15)
    lr[()] = 0.5
    opt.step([np.ones(3)])
    np.testing.assert_allclose(params[0], 0.4, rtol=0, atol=1e-15)
    lr[()] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step([np.ones(3)])


# ---------------------------------------------------------------------------------- load_state_dict
def _trained(cls, kw, seed=4):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(5), rng.standard_normal((2, 3))]
    opt = getattr(O, cls)(params, **kw)
    for _ in range(2):
        opt.step([rng.standard_normal(5), rng.standard_normal((2, 3))])
    return params, opt


def _snapshot(opt):
    sd = opt.state_dict()
    return copy.deepcopy(sd), [dict(g) for g in opt.param_groups]


def _assert_unchanged(opt, snap):
    sd, groups = snap
    now = opt.state_dict()
    assert now["param_groups"] == sd["param_groups"]
    assert sorted(now["state"]) == sorted(sd["state"])
    for i, entry in sd["state"].items():
        assert sorted(now["state"][i]) == sorted(entry)
        for k, a in entry.items():
            np.testing.assert_array_equal(now["state"][i][k], a)
    for g, h in zip(opt.param_groups, groups, strict=True):
        assert g.keys() == h.keys()
        assert all(g[k] is h[k] for k in g if k != "params")


def _bad(sd, edit):
    sd = copy.deepcopy(sd)
    edit(sd)
    return sd


BAD_STATE_DICTS = [
    ("Adam", {}, lambda sd: sd["state"][0].pop("exp_avg_sq"), ValueError, "lacks 'exp_avg_sq'"),
    ("Adam", {}, lambda sd: sd["state"][1].pop("step"), ValueError, "lacks 'step'"),
    ("Adam", {"amsgrad": True}, lambda sd: sd["state"][0].pop("max_exp_avg_sq"), ValueError, "max_exp_avg_sq"),
    ("Adam", {}, lambda sd: sd["param_groups"][0].update(amsgrad=True), ValueError, "max_exp_avg_sq"),
    ("Adam", {}, lambda sd: sd["state"][0].update(step="three"), TypeError, r"state\[0\]\['step'\] must be a number"),
    ("Adam", {}, lambda sd: sd["state"][0].update(step=[1, 2]), TypeError, "must be a number"),
    ("Adam", {}, lambda sd: sd["state"][0].update(step=-1.0), ValueError, "whole number"),
    ("Adam", {}, lambda sd: sd["state"][0].update(step=2.5), ValueError, "whole number"),
    ("Adam", {}, lambda sd: sd["state"][1].update(exp_avg=np.zeros(6)), ValueError, "shape"),
    ("Adam", {}, lambda sd: sd["state"][1].update(exp_avg=np.array(["a"] * 6).reshape(2, 3)), TypeError, "numeric"),
    ("Adam", {}, lambda sd: sd["state"][1].update(exp_avg=np.zeros((2, 3), complex)), TypeError, "numeric"),
    ("Adam", {}, lambda sd: sd["state"][0].update(momentum_buffer=np.zeros(5)), ValueError, "another optimizer"),
    ("Adam", {}, lambda sd: sd["param_groups"][0].update(betas=(0.9, 1.5)), ValueError, "beta2"),
    ("Adam", {}, lambda sd: sd["param_groups"][0].update(lr=-1.0), ValueError, "lr"),
    ("Adam", {}, lambda sd: sd["param_groups"][0].update(betas=(0.9,)), TypeError, "betas"),
    ("Adam", {}, lambda sd: sd["param_groups"][0].update(params=[0, 0]), ValueError, "two places"),
    ("Adam", {}, lambda sd: sd["state"].update({7: {}}), ValueError, "no group lists"),
    ("Adam", {}, lambda sd: sd.update(state=[]), TypeError, "must be a dict"),
    ("RMSprop", {"centered": True}, lambda sd: sd["state"][0].pop("grad_avg"), ValueError, "grad_avg"),
    ("RMSprop", {"momentum": 0.5}, lambda sd: sd["state"][0].pop("momentum_buffer"), ValueError, "momentum_buffer"),
    ("Adagrad", {}, lambda sd: sd["state"][0].pop("sum"), ValueError, "lacks 'sum'"),
    ("Adadelta", {}, lambda sd: sd["state"][0].pop("acc_delta"), ValueError, "acc_delta"),
    ("SGD", {"momentum": 0.9}, lambda sd: sd["state"][0].update(step=np.array(1.0)), ValueError, "does not keep"),
    (
        "SGD",
        {"momentum": 0.9},
        lambda sd: sd["param_groups"][0].update(nesterov=True, dampening=0.5),
        ValueError,
        "nesterov",
    ),
]


@pytest.mark.parametrize(
    ("cls", "kw", "edit", "err", "match"), BAD_STATE_DICTS, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_STATE_DICTS)]
)
def test_bad_state_dict_is_refused_and_changes_nothing(cls, kw, edit, err, match):
    _, opt = _trained(cls, kw)
    snap = _snapshot(opt)
    bad = _bad(snap[0], edit)
    with pytest.raises(err, match=match):
        opt.load_state_dict(bad)
    _assert_unchanged(opt, snap)


def test_sgd_state_dict_into_rmsprop_is_refused():
    _, sgd = _trained("SGD", {"momentum": 0.9})
    _, rms = _trained("RMSprop", {"momentum": 0.9})
    snap = _snapshot(rms)
    with pytest.raises(ValueError, match="lacks 'step', 'square_avg'"):
        rms.load_state_dict(sgd.state_dict())
    _assert_unchanged(rms, snap)


def test_state_dict_entries_may_be_empty_or_missing():
    """A parameter without state (never stepped) is allowed: its state is made at its next step."""
    params, opt = _trained("Adam", {})
    sd = opt.state_dict()
    sd["state"].pop(1)
    sd["state"][0] = {}
    opt.load_state_dict(sd)
    opt.step([np.ones(5), np.ones((2, 3))])
    assert float(opt.state_dict()["state"][1]["step"]) == 1.0
    assert float(opt.state_dict()["state"][0]["step"]) == 1.0


def test_step_accepts_torch_and_numpy_numbers():
    _, opt = _trained("Adam", {})
    sd = opt.state_dict()
    sd["state"][0]["step"] = np.int64(2)
    sd["state"][1]["step"] = 2
    opt.load_state_dict(sd)
    assert float(opt.state_dict()["state"][0]["step"]) == 2.0


# ---------------------------------------------------------------------------------- where the arrays start
def _placed(values, dtype, offset: int) -> np.ndarray:
    """A copy of ``values`` in ``dtype`` starting ``offset`` bytes past a 64-byte boundary."""
    values = np.asarray(values, np.float32).astype(dtype)
    buf = np.zeros(values.nbytes + 128, np.uint8)
    s = (-buf.ctypes.data) % 64 + offset
    a = buf[s : s + values.nbytes].view(values.dtype)
    a[...] = values
    return a


PLACED_STEPS = {  # name -> step(params, grads, s0, s1, s2, master, t); every state stream an option uses
    "sgd": lambda p, g, s, m, t: O.sgd_step(p, g, s[0], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, **m),
    "adagrad": lambda p, g, s, m, t: O.adagrad_step(p, g, s[0], step=t, lr=0.1, weight_decay=0.1, **m),
    "adadelta": lambda p, g, s, m, t: O.adadelta_step(p, g, s[0], s[1], weight_decay=0.1, **m),
    "rmsprop": lambda p, g, s, m, t: O.rmsprop_step(p, g, s[0], s[1], s[2], centered=True, momentum=0.5, **m),
    "adam": lambda p, g, s, m, t: O.adam_step(p, g, s[0], s[1], s[2], step=t, amsgrad=True, weight_decay=0.1, **m),
    "adamw": lambda p, g, s, m, t: O.adamw_step(p, g, s[0], s[1], step=t, lr=0.01, **m),
}


def _placed_run(name, dtype, offsets, sizes, master):
    """Two steps over tensors whose streams start at ``offsets`` = (param, grad, state, master) bytes past a
    64-byte boundary; the bytes of every array afterwards."""
    rng = np.random.default_rng(3)
    sdt = np.float32 if np.dtype(dtype).itemsize == 2 else dtype
    p = [_placed(rng.standard_normal(n), dtype, offsets[0]) for n in sizes]
    s = [[_placed(np.abs(rng.standard_normal(n)) * (j > 0), sdt, offsets[2]) for n in sizes] for j in range(3)]
    m = [_placed(a.astype(np.float32), np.float32, offsets[3]) for a in p]
    for t in (1, 2):
        g = [_placed(rng.standard_normal(n), dtype, offsets[1]) for n in sizes]
        PLACED_STEPS[name](p, g, s, {"master_params": m} if master else {}, t)
    return [a.tobytes() for a in p + s[0] + s[1] + s[2] + (m if master else [])]


@pytest.mark.parametrize("target", K.runnable_targets())
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16+master"])
@pytest.mark.parametrize("name", list(PLACED_STEPS))
def test_bits_do_not_depend_on_where_the_arrays_start(name, dtype, target):
    """The kernels do a head up to the next 64-byte boundary apart where every stream shares one misalignment
    (NumPy's large arrays start 16 bytes past a page), and bfloat16 Adam streams its write-only parameters in
    aligned lines: neither may change a bit, whatever the offsets and lengths (heads, tails, short tensors)."""
    master = dtype.endswith("+master")
    dt = ml_dtypes.bfloat16 if master else np.dtype(dtype)
    sizes = [1, 255, 256, 300, 1037, 4133]
    with K.use_target(target):
        want = _placed_run(name, dt, (0, 0, 0, 0), sizes, master)
        step = 8 if dt == np.float64 else 4
        placements = [(o, o, o, o) for o in range(step, 64, step)]
        placements += [(16, 16, 16, 48), (18, 16, 16, 16), (16, 20, 16, 16), (6, 2, 4, 36)] if master else []
        placements += [(16, 16, 32, 16), (16, 0, 16, 16)] if not master else []
        for offsets in placements:
            got = _placed_run(name, dt, offsets, sizes, master)
            assert got == want, f"{name} {dtype} on {target}: arrays at {offsets} bytes past 64 give other bits"
