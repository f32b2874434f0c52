"""fastnorm.optim: fused multi-tensor kernels against the references and torch, state dicts, bad input."""

import io

import numpy as np
import pytest

import fastnorm
from fastnorm import optim as O
from fastnorm.reference import optim as R

from ._util import FLOATS, assert_close_to_ref, torch_or_skip
from .cases import OPTIM_CASES

# functional name -> (state lists it takes, whether it takes step=, option sets): the contract suite's table
FUNCTIONAL = {c.name: (list(c.states), c.has_step, list(c.options)) for c in OPTIM_CASES}


def _init_state(name, params, rng):
    """State lists in the functional signature; positive second moments, random first moments."""
    kinds, _, _ = FUNCTIONAL[name]
    state = []
    for kind in kinds:
        if name == "sgd":
            state.append([None] * len(params))
        elif kind in ("state_sums", "square_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "acc_deltas"):
            state.append([(np.abs(rng.standard_normal(p.shape)) * 0.1).astype(p.dtype) for p in params])
        else:
            state.append([(rng.standard_normal(p.shape) * 0.01).astype(p.dtype) for p in params])
    if name == "rmsprop":  # centered needs square_avg >= grad_avg^2: start from grad_avg = 0
        state[1] = [np.zeros_like(p) for p in params]
    return state


def _copy(state, dtype=None):
    return [
        [None if a is None else np.array(a, dtype=dtype or a.dtype) for a in lst] if lst is not None else None
        for lst in state
    ]


def _run(mod, name, params, grads_seq, state, kw, first_step=1):
    _, has_step, _ = FUNCTIONAL[name]
    for k, grads in enumerate(grads_seq):
        extra = {"step": first_step + k} if has_step else {}
        getattr(mod, f"{name}_step")(params, grads, *state, **kw, **extra)


def _problem(sizes, dtype, n_steps, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(n_steps)]
    return rng, params, grads


def _wide(dtype):
    """The reference's precision for results of ``dtype``: float64 for float32, extended for float64."""
    return np.float64 if np.dtype(dtype) == np.float32 else np.longdouble


def _check_against_reference(name, kw, sizes, dtype, n_steps=3, seed=0):
    """The kernel vs the NumPy reference in the same dtype, both against the reference run in higher
    precision on the same inputs cast up (the error criterion of ``assert_close_to_ref``)."""
    rng, params, grads = _problem(sizes, dtype, n_steps, seed)
    state = _init_state(name, params, rng)
    wide = _wide(dtype)
    p_k, s_k = [p.copy() for p in params], _copy(state)
    p_lo, s_lo = [p.copy() for p in params], _copy(state)
    p_w, s_w = [p.astype(wide) for p in params], _copy(state, wide)
    g_w = [[g.astype(wide) for g in gs] for gs in grads]
    _run(O, name, p_k, grads, s_k, kw)
    _run(R, name, p_lo, grads, s_lo, kw)
    _run(R, name, p_w, g_w, s_w, kw)
    for i in range(len(sizes)):
        assert p_k[i].dtype == dtype
        assert_close_to_ref(p_k[i], p_lo[i], p_w[i], name=f"{name} param {i}")
        for j, (lk, lw, llo) in enumerate(zip(s_k, s_w, s_lo, strict=True)):
            if lk[i] is not None and lw[i] is not None:
                assert_close_to_ref(lk[i], llo[i], lw[i], name=f"{name} state {j} tensor {i}")


def _assert_lists_close(got, other, ref, name=""):
    """``assert_close_to_ref`` over lists of arrays (None entries must match)."""
    assert len(got) == len(other) == len(ref)
    for i, (g, o, r) in enumerate(zip(got, other, ref, strict=True)):
        assert (g is None) == (r is None), f"{name}[{i}]"
        if g is not None:
            assert g.dtype == o.dtype
            assert_close_to_ref(g, o, r, name=f"{name}[{i}]")


def _widen(arrays):
    return [None if a is None else np.asarray(a).astype(_wide(np.asarray(a).dtype)) for a in arrays]


# ---------------------------------------------------------------------------------- kernels vs references
# (each option set against the reference, thread-count invariance: tests/contracts/test_optim_contracts.py)
@pytest.mark.parametrize("name", list(FUNCTIONAL))
def test_large_and_tiny_tensors(name, threads):
    _, _, opts = FUNCTIONAL[name]
    _check_against_reference(name, opts[-1], [1, 17, 4099, 65537, 1_000_003], np.float32, n_steps=2)


@pytest.mark.parametrize("name", list(FUNCTIONAL))
def test_nan_and_inf_propagate_like_reference(name):
    _, _, opts = FUNCTIONAL[name]
    for kw in opts:
        rng, params, grads = _problem([37], np.float64, 2, seed=4)
        grads[0][0][3] = np.nan
        grads[1][0][7] = np.inf
        params[0][11] = np.inf
        state = _init_state(name, params, rng)
        p_k, s_k = [p.copy() for p in params], _copy(state)
        p_r, s_r = [p.copy() for p in params], _copy(state)
        p_w, s_w = _widen(params), _copy(state, np.longdouble)
        with np.errstate(all="ignore"):
            _run(O, name, p_k, grads, s_k, kw)
            _run(R, name, p_r, grads, s_r, kw)
            _run(R, name, p_w, [_widen(gs) for gs in grads], s_w, kw)
        np.testing.assert_array_equal(np.isnan(p_k[0]), np.isnan(p_r[0]), err_msg=f"{name} {kw}")
        np.testing.assert_array_equal(np.isinf(p_k[0]), np.isinf(p_r[0]), err_msg=f"{name} {kw}")
        assert_close_to_ref(p_k[0], p_r[0], p_w[0], name=f"{name} {kw}")


def test_mixed_dtypes_zero_size_and_0d_tensors(threads):
    rng = np.random.default_rng(5)
    shapes = [(), (0,), (3, 0), (7,), (4, 5)]
    dts = [np.float32, np.float64, np.float32, np.float64, np.float32]
    params = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dts, strict=True)]
    grads = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dts, strict=True)]
    ms, vs = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    want, wide = [p.copy() for p in params], _widen(params)
    wm, wv = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    O.adam_step(params, grads, ms, vs, step=1, lr=0.1)
    R.adam_step(want, grads, wm, wv, step=1, lr=0.1)
    R.adam_step(wide, _widen(grads), _widen(wm), _widen(wv), step=1, lr=0.1)
    for a, b in zip(params, want, strict=True):
        assert a.dtype == b.dtype
        assert a.shape == b.shape
    _assert_lists_close(params, want, wide)


def test_per_tensor_steps_and_sgd_first_step_per_tensor():
    rng, params, grads = _problem([5, 9, 2], np.float64, 1, seed=6)
    m, v = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    p_r, m_r, v_r = [p.copy() for p in params], [x.copy() for x in m], [x.copy() for x in v]
    p_w = _widen(params)
    O.adam_step(params, grads[0], m, v, step=[1, 5, 100])
    R.adam_step(p_r, grads[0], m_r, v_r, step=[1, 5, 100])
    R.adam_step(p_w, _widen(grads[0]), _widen(m_r), _widen(v_r), step=[1, 5, 100])
    _assert_lists_close(params, p_r, p_w, "params")
    # SGD: buffers None for some tensors only: those take b = g, the others the momentum update
    bufs = [None, rng.standard_normal(9), None]
    bufs_r = [None, bufs[1].copy(), None]
    ps, ps_r, ps_w, bufs_w = [p.copy() for p in params], [p.copy() for p in params], _widen(params), _widen(bufs)
    O.sgd_step(ps, grads[0], bufs, lr=0.1, momentum=0.9, dampening=0.2)
    R.sgd_step(ps_r, grads[0], bufs_r, lr=0.1, momentum=0.9, dampening=0.2)
    R.sgd_step(ps_w, _widen(grads[0]), bufs_w, lr=0.1, momentum=0.9, dampening=0.2)
    _assert_lists_close(ps + bufs, ps_r + bufs_r, ps_w + bufs_w, "params+buffers")
    np.testing.assert_array_equal(bufs[0], grads[0][0])


def test_readonly_and_noncontiguous_grads():
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(10), rng.standard_normal((4, 6))]
    g0 = rng.standard_normal(10)
    g0.flags.writeable = False
    g1 = rng.standard_normal((6, 4)).T  # not C-contiguous: copied
    want, wide = [p.copy() for p in params], _widen(params)
    O.sgd_step(params, [g0, g1], lr=0.1)
    R.sgd_step(want, [g0, g1], lr=0.1)
    R.sgd_step(wide, _widen([g0, g1]), lr=0.1)
    _assert_lists_close(params, want, wide)


# ---------------------------------------------------------------------------------- bad input
def _adam_args(dtype=np.float32):
    rng = np.random.default_rng(8)
    params = [rng.standard_normal(n).astype(dtype) for n in (3, 5)]
    grads = [rng.standard_normal(n).astype(dtype) for n in (3, 5)]
    m = [rng.standard_normal(n).astype(dtype) for n in (3, 5)]
    v = [np.abs(rng.standard_normal(n)).astype(dtype) for n in (3, 5)]
    return params, grads, m, v


def _bad_cases():
    f32 = np.float32
    cases = []

    def case(label, err, mutate, **kw):
        cases.append(pytest.param(mutate, kw, err, id=label))

    case("grads-length", ValueError, lambda p, g, m, v: (p, g[:1], m, v))
    case("grads-shape", ValueError, lambda p, g, m, v: (p, [g[0], np.zeros(6, f32)], m, v))
    case("grads-dtype", TypeError, lambda p, g, m, v: (p, [g[0], g[1].astype(np.float64)], m, v))
    case("grads-int", TypeError, lambda p, g, m, v: (p, [g[0], np.zeros(5, np.int32)], m, v))
    case("grads-none", TypeError, lambda p, g, m, v: (p, [g[0], None], m, v))
    case("grads-not-list", TypeError, lambda p, g, m, v: (p, g[0], m, v))
    case("state-shape", ValueError, lambda p, g, m, v: (p, g, [m[0], np.zeros((5, 1), f32)], v))
    case("state-dtype", TypeError, lambda p, g, m, v: (p, g, m, [v[0], v[1].astype(np.float64)]))
    case("state-length", ValueError, lambda p, g, m, v: (p, g, m[:1], v))
    case("param-int", TypeError, lambda p, g, m, v: ([p[0], np.zeros(5, np.int64)], g, m, v))
    case("param-list", TypeError, lambda p, g, m, v: ([p[0], [0.0] * 5], g, m, v))
    case("param-noncontig", ValueError, lambda p, g, m, v: ([p[0], np.zeros(10, f32)[::2]], g, m, v))
    case("param-readonly", ValueError, lambda p, g, m, v: ([p[0], _readonly(p[1])], g, m, v))
    case("param-bigendian", ValueError, lambda p, g, m, v: ([p[0], p[1].astype(">f4")], g, m, v))
    case("state-noncontig", ValueError, lambda p, g, m, v: (p, g, [m[0], np.zeros(10, f32)[::2]], v))
    case("state-readonly", ValueError, lambda p, g, m, v: (p, g, [m[0], _readonly(m[1])], v))
    case("state-aliases-param", ValueError, lambda p, g, m, v: (p, g, [m[0], p[1]], v))
    case("state-aliases-state", ValueError, lambda p, g, m, v: (p, g, m, [v[0], m[1]]))
    case("grad-aliases-param", ValueError, lambda p, g, m, v: (p, [g[0], p[1]], m, v))
    case("param-twice", ValueError, lambda p, g, m, v: ([p[0], p[0]], [g[0], g[0]], [m[0], m[1][:3]], v))
    case("negative-lr", ValueError, lambda *a: a, lr=-1e-3)
    case("nan-lr", ValueError, lambda *a: a, lr=float("nan"))
    case("negative-eps", ValueError, lambda *a: a, eps=-1e-8)
    case("beta1-one", ValueError, lambda *a: a, beta1=1.0)
    case("beta2-negative", ValueError, lambda *a: a, beta2=-0.1)
    case("wd-negative", ValueError, lambda *a: a, weight_decay=-0.1)
    case("lr-string", TypeError, lambda *a: a, lr="0.1")
    case("amsgrad-no-state", TypeError, lambda *a: a, amsgrad=True)
    case("step-zero", ValueError, lambda *a: a, step=0)
    case("step-length", ValueError, lambda *a: a, step=[1, 2, 3])
    case("step-float", TypeError, lambda *a: a, step=1.5)
    return cases


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize(("mutate", "kw", "err"), _bad_cases())
def test_adam_step_bad_input_raises_and_writes_nothing(mutate, kw, err):
    params, grads, m, v = _adam_args()
    before = [a.copy() for a in params + m + v]
    args = mutate(params, grads, m, v)
    kw = {"step": 1, **kw}
    with pytest.raises(err):
        O.adam_step(*args, **kw)
    for a, b in zip(params + m + v, before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("fn", "kw", "err"),
    [
        ("sgd", {"momentum": 0.0, "nesterov": True}, ValueError),
        ("sgd", {"momentum": 0.9, "nesterov": True, "dampening": 0.1}, ValueError),
        ("sgd", {"momentum": -0.9}, ValueError),
        ("sgd", {"momentum": 0.9, "nesterov": 1}, TypeError),
        ("adagrad", {"lr_decay": -1.0}, ValueError),
        ("adadelta", {"rho": 1.5}, ValueError),
        ("rmsprop", {"alpha": -0.5}, ValueError),
        ("rmsprop", {"momentum": -0.5}, ValueError),
    ],
)
def test_other_bad_hyperparameters(fn, kw, err):
    params, grads, m, v = _adam_args()
    before = [p.copy() for p in params]
    state = {"sgd": ([None, None],), "adagrad": (m,), "adadelta": (m, v), "rmsprop": (v, m, m)}[fn]
    extra = {"step": 1} if fn == "adagrad" else {}
    with pytest.raises(err):
        getattr(O, f"{fn}_step")(params, grads, *state, **kw, **extra)
    for a, b in zip(params, before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_sgd_bad_buffers_keep_list_untouched():
    params, grads, _, _ = _adam_args()
    bufs = [None, None]
    with pytest.raises(ValueError, match=r"sgd_step: grads\[1\] has shape"):
        O.sgd_step(params, [grads[0], grads[1][:2]], bufs, momentum=0.9)
    assert bufs == [None, None]
    with pytest.raises(TypeError):
        O.sgd_step(params, grads, (None, None), momentum=0.9)  # needs a list it can fill


# ---------------------------------------------------------------------------------- classes vs torch
CLASS_CASES = [
    ("SGD", {"lr": 0.05}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "maximize": True}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01, "initial_accumulator_value": 0.3}),
    ("Adagrad", {"lr": 0.1, "eps": 1e-6, "maximize": True}),
    ("Adadelta", {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.05, "maximize": True}),
    ("RMSprop", {}),
    ("RMSprop", {"alpha": 0.9, "centered": True, "momentum": 0.5, "weight_decay": 0.02}),
    ("RMSprop", {"lr": 0.003, "eps": 1e-6, "centered": True, "maximize": True}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.05, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.3, "amsgrad": True}),
]
SHAPES = [(3,), (5, 7), (1,), (2, 3, 5), (13,), (101,)]


def _torch_grads(rng, dtype, n_steps, skip=None):
    out = []
    for k in range(n_steps):
        gs = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        if skip is not None:
            gs = [None if skip(k, i) else g for i, g in enumerate(gs)]
        out.append(gs)
    return out


def _groups(params, kw, split):
    """Two parameter groups, the second with its own lr (and weight_decay where the algorithm has it)."""
    if not split:
        return params
    other = {"lr": kw.get("lr", 0.01) * 0.5}
    return [{"params": params[:3]}, {"params": params[3:], **other}]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("split", [False, True], ids=["one-group", "two-groups"])
@pytest.mark.parametrize(("cls", "kw"), CLASS_CASES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CLASS_CASES)])
def test_class_matches_torch_trajectory(cls, kw, split, dtype):
    """12 steps, some parameters without a gradient on some steps, lr changed every 5 steps.

    (One thread count: the kernels' results do not depend on it, see the bitwise test above.)
    """
    torch = torch_or_skip()
    rng = np.random.default_rng(9)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = _torch_grads(rng, dtype, 12, skip=lambda k, i: (k + i) % 7 == 3)
    tp = [torch.tensor(p, requires_grad=True) for p in params]
    t64 = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params]  # the reference
    topt = getattr(torch.optim, cls)(_groups(tp, kw, split), foreach=False, **kw)
    o64 = getattr(torch.optim, cls)(_groups(t64, kw, split), foreach=False, **kw)
    opt = getattr(O, cls)(_groups(params, kw, split), **kw)
    for k, gs in enumerate(grads):
        if k % 5 == 4:
            for g1, g2, g3 in zip(opt.param_groups, topt.param_groups, o64.param_groups, strict=True):
                g1["lr"] = g2["lr"] = g3["lr"] = g2["lr"] * 0.7
        for t, t2, g in zip(tp, t64, gs, strict=True):
            t.grad = None if g is None else torch.tensor(g)
            t2.grad = None if g is None else torch.tensor(g, dtype=torch.float64)
        topt.step()
        o64.step()
        opt.step(gs)
    for i, (p, t, r) in enumerate(zip(params, tp, t64, strict=True)):
        assert_close_to_ref(p, t, r, name=f"param {i}", ulps=32)
    # the state dict has torch's layout, names and values
    sd, tsd, sd64 = opt.state_dict(), topt.state_dict(), o64.state_dict()
    assert sorted(sd["state"]) == sorted(tsd["state"])
    for idx, entry in tsd["state"].items():
        assert sorted(sd["state"][idx]) == sorted(k for k, v in entry.items() if v is not None)
        for name, value in entry.items():
            assert_close_to_ref(sd["state"][idx][name], value, sd64["state"][idx][name], name=name, ulps=32)
    for g, tg in zip(sd["param_groups"], tsd["param_groups"], strict=True):
        assert g["params"] == tg["params"]
        for key, value in g.items():
            if key in O._PRECISION and key not in tg:  # fastnorm's 16-bit options
                continue
            assert tg[key] == value, key


def _class_problem(cls, kw, dtype=np.float32, seed=10):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = _torch_grads(rng, dtype, 8, skip=lambda k, i: k == 0 and i == 2)
    return params, grads, getattr(O, cls)(_groups(params, kw, True), **kw)


def _flat(sd):
    """A state dict as flat name -> array (what np.savez stores) and back."""
    flat = {}
    for idx, entry in sd["state"].items():
        for name, a in entry.items():
            flat[f"{idx}/{name}"] = a
    return flat


def _unflat(flat, groups):
    state = {}
    for key, a in flat.items():
        idx, name = key.split("/")
        state.setdefault(int(idx), {})[name] = a
    return {"state": state, "param_groups": groups}


@pytest.mark.parametrize(("cls", "kw"), CLASS_CASES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CLASS_CASES)])
def test_state_dict_round_trip_continues_bit_identically(cls, kw):
    params, grads, opt = _class_problem(cls, kw)
    for gs in grads[:4]:
        opt.step(gs)
    sd = opt.state_dict()
    buf = io.BytesIO()
    np.savez(buf, **_flat(sd))
    buf.seek(0)
    loaded = np.load(buf)
    sd2 = _unflat({k: loaded[k] for k in loaded.files}, sd["param_groups"])

    params2 = [p.copy() for p in params]
    opt2 = getattr(O, cls)(_groups(params2, {}, True))  # default hyperparameters: load restores them
    opt2.load_state_dict(sd2)
    for gs in grads[4:]:
        opt.step(gs)
        opt2.step(gs)
    for a, b in zip(params, params2, strict=True):
        np.testing.assert_array_equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for idx in s1["state"]:
        for name in s1["state"][idx]:
            np.testing.assert_array_equal(s1["state"][idx][name], s2["state"][idx][name])


def test_state_dict_arrays_are_copies():
    params, grads, opt = _class_problem("Adam", {})
    opt.step(grads[0])
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"][...] = 1e9
    assert np.all(opt.state_dict()["state"][0]["exp_avg"] < 1e8)


@pytest.mark.parametrize("cls", ["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW"])
def test_load_torch_state_dict_and_continue_like_torch(cls):
    torch = torch_or_skip()
    kw = {"SGD": {"lr": 0.05, "momentum": 0.9}, "RMSprop": {"centered": True, "momentum": 0.3}}.get(cls, {})
    rng = np.random.default_rng(11)
    params = [rng.standard_normal(s) for s in SHAPES]
    grads = _torch_grads(rng, np.float64, 10)
    tp = [torch.tensor(p, requires_grad=True) for p in params]
    topt = getattr(torch.optim, cls)(tp, foreach=False, **kw)
    for gs in grads[:5]:
        for t, g in zip(tp, gs, strict=True):
            t.grad = torch.tensor(g)
        topt.step()
    tsd = topt.state_dict()
    sd = {
        "state": {
            i: {k: (v.numpy() if v is not None else None) for k, v in e.items()} for i, e in tsd["state"].items()
        },
        "param_groups": tsd["param_groups"],
    }
    mine = [t.detach().numpy().copy() for t in tp]
    opt = getattr(O, cls)(mine)
    opt.load_state_dict(sd)
    for key, value in kw.items():
        assert opt.param_groups[0][key] == value
    for gs in grads[5:]:
        for t, g in zip(tp, gs, strict=True):
            t.grad = torch.tensor(g)
        topt.step()
        opt.step(gs)
    for p, t in zip(mine, tp, strict=True):  # float64: torch's run is the reference, the bound the slack
        assert_close_to_ref(p, t, t, ulps=32)


def test_bad_state_dict_changes_nothing():
    params, grads, opt = _class_problem("Adam", {"amsgrad": True})
    opt.step(grads[0])
    good = opt.state_dict()
    bad = opt.state_dict()
    bad["param_groups"][1]["lr"] = 0.5
    bad["state"][4]["exp_avg"] = np.zeros((2, 2), np.float32)  # wrong shape, found after group 1's lr
    with pytest.raises(ValueError, match=r"Adam: state\[4\]\['exp_avg'\] has shape"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"] == good["param_groups"]
    for idx in good["state"]:
        for name in good["state"][idx]:
            np.testing.assert_array_equal(after["state"][idx][name], good["state"][idx][name])
    for mutate, err in [
        (lambda s: s["param_groups"].pop(), ValueError),
        (lambda s: s["param_groups"][0]["params"].pop(), ValueError),
        (lambda s: s["param_groups"][0].update(betas=(1.0, 0.9)), ValueError),
        (lambda s: s["state"][0].update(step=np.float32(1.5)), ValueError),
        (lambda s: s["state"][0].update(bogus=np.zeros(3)), ValueError),
        (lambda s: s["state"].update({99: {}}), ValueError),
        (lambda s: s.pop("state"), TypeError),
    ]:
        sd = opt.state_dict()
        mutate(sd)
        with pytest.raises(err):
            opt.load_state_dict(sd)
    np.testing.assert_array_equal(opt.state_dict()["state"][0]["exp_avg"], good["state"][0]["exp_avg"])


# ---------------------------------------------------------------------------------- class behaviour
def _snapshot(params, opt):
    sd = opt.state_dict()
    return [p.copy() for p in params], sd


def _assert_same(snap, params, opt):
    ps, sd = snap
    for a, b in zip(params, ps, strict=True):
        np.testing.assert_array_equal(a, b)
    now = opt.state_dict()
    assert now["param_groups"] == sd["param_groups"]
    assert sorted(now["state"]) == sorted(sd["state"])
    for idx in sd["state"]:
        for name in sd["state"][idx]:
            np.testing.assert_array_equal(now["state"][idx][name], sd["state"][idx][name])


@pytest.mark.parametrize("cls", ["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW"])
def test_class_bad_step_changes_nothing(cls):
    kw = {"SGD": {"momentum": 0.9}}.get(cls, {})
    params, grads, opt = _class_problem(cls, kw)
    opt.step(grads[1])
    snap = _snapshot(params, opt)
    g = grads[2]
    bad_lists = [
        g[:-1],  # too short
        g[:-1] + [g[-1].astype(np.float64)],  # dtype
        g[:-1] + [g[-1][:-1]],  # shape (group 1's kernel would run first if checks were per group)
        g[:-1] + [params[0]],  # not its parameter's shape
        g[:-1] + [params[-1]],  # aliases a parameter
        g[:-1] + ["x"],
    ]
    for bad in bad_lists:
        with pytest.raises((TypeError, ValueError)):
            opt.step(bad)
        _assert_same(snap, params, opt)
    for key, value in [("lr", -1.0), ("eps", -1.0), ("weight_decay", float("inf"))]:
        if key in opt.param_groups[1]:
            old = opt.param_groups[1][key]
            opt.param_groups[1][key] = value
            with pytest.raises(ValueError, match=rf"{cls}: {key} must be finite"):
                opt.step(g)
            opt.param_groups[1][key] = old
            _assert_same(snap, params, opt)
    params[1].flags.writeable = False
    with pytest.raises(ValueError, match=r"\['params'\]\[1\] is read-only"):
        opt.step(g)
    params[1].flags.writeable = True
    _assert_same(snap, params, opt)
    opt.step(g)  # and it still works


def test_class_constructor_checks():
    rng = np.random.default_rng(12)
    p = rng.standard_normal(10)
    with pytest.raises(ValueError, match=r"SGD: nesterov"):
        O.SGD([p], momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match=r"Adam: beta2"):
        O.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"Adam: lr"):
        O.Adam([p], lr=-1.0)
    with pytest.raises(ValueError, match=r"Adam: parameters .* overlap"):
        O.Adam([p, p])  # a parameter twice
    with pytest.raises(ValueError, match=r"Adam: parameters .* overlap"):
        O.Adam([p[:6], p[4:]])  # overlapping views
    with pytest.raises(ValueError, match=r"Adam: parameters .* overlap"):
        O.Adam([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ValueError, match=r"Adam: params\[0\] must be C-contiguous"):
        O.Adam([np.zeros(10)[::2]])
    with pytest.raises(TypeError):
        O.Adam([np.zeros(3, np.int32)])
    with pytest.raises(TypeError):
        O.Adam(p)
    with pytest.raises(ValueError, match=r"Adam: got an empty parameter list"):
        O.Adam([])
    with pytest.raises(ValueError, match=r"AdamW: weight_decay"):
        O.AdamW([p], weight_decay=-0.1)
    opt = O.Adam([p], lr=0.1)
    with pytest.raises(ValueError, match=r"Adam: parameters .* overlap"):
        opt.add_param_group({"params": [p[2:4]]})
    assert len(opt.param_groups) == 1


def test_param_groups_hyperparameters_and_add_param_group():
    rng = np.random.default_rng(13)
    a, b, c = rng.standard_normal(4), rng.standard_normal(6), rng.standard_normal(3)
    opt = O.SGD([{"params": [a]}, {"params": [b], "lr": 0.5, "momentum": 0.9}], lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.1
    assert opt.param_groups[0]["momentum"] == 0.0
    assert opt.param_groups[1]["lr"] == 0.5
    ga, gb, gc = rng.standard_normal(4), rng.standard_normal(6), rng.standard_normal(3)
    wa, wb = a - 0.1 * ga, b - 0.5 * gb
    opt.step([ga, gb])
    np.testing.assert_allclose(a, wa, rtol=1e-15)
    np.testing.assert_allclose(b, wb, rtol=1e-15)
    opt.add_param_group({"params": c, "lr": 1.0})
    wc = c - 1.0 * gc
    opt.step([None, None, gc])
    np.testing.assert_allclose(c, wc, rtol=1e-15)
    np.testing.assert_allclose(a, wa, rtol=1e-15)  # None: skipped
    opt.param_groups[0]["params"].append(rng.standard_normal(2))
    with pytest.raises(ValueError, match="add_param_group"):
        opt.step([ga, gb, gc, None])


def test_options_turned_on_later_allocate_state():
    """amsgrad / momentum switched on between steps: the new state starts like torch's would."""
    rng = np.random.default_rng(14)
    params = [rng.standard_normal(7), rng.standard_normal(3)]
    grads = [[rng.standard_normal(7), rng.standard_normal(3)] for _ in range(4)]
    opt = O.SGD(params, lr=0.1)
    ref, wide = [p.copy() for p in params], _widen(params)
    bufs, bufs_w = [None, None], [None, None]
    opt.step(grads[0])
    R.sgd_step(ref, grads[0], lr=0.1)
    R.sgd_step(wide, _widen(grads[0]), lr=0.1)
    opt.param_groups[0]["momentum"] = 0.9
    for gs in grads[1:]:
        opt.step(gs)
        R.sgd_step(ref, gs, bufs, lr=0.1, momentum=0.9)
        R.sgd_step(wide, _widen(gs), bufs_w, lr=0.1, momentum=0.9)
    _assert_lists_close(params, ref, wide, "SGD")

    opt = O.Adam(params, lr=0.1)
    ref, wide = [p.copy() for p in params], _widen(params)
    m, v, vmax = ([np.zeros_like(p) for p in params] for _ in range(3))
    mw, vw, vmaxw = (_widen(x) for x in (m, v, vmax))
    opt.step(grads[0])
    R.adam_step(ref, grads[0], m, v, step=1, lr=0.1)
    R.adam_step(wide, _widen(grads[0]), mw, vw, step=1, lr=0.1)
    opt.param_groups[0]["amsgrad"] = True
    for t, gs in enumerate(grads[1:], start=2):
        opt.step(gs)
        R.adam_step(ref, gs, m, v, vmax, step=t, lr=0.1, amsgrad=True)
        R.adam_step(wide, _widen(gs), mw, vw, vmaxw, step=t, lr=0.1, amsgrad=True)
    _assert_lists_close(params, ref, wide, "Adam")
    assert "max_exp_avg_sq" in opt.state_dict()["state"][0]


def test_mixed_dtype_group_and_noncontiguous_grads_in_class():
    rng = np.random.default_rng(15)
    params = [rng.standard_normal(5).astype(np.float32), rng.standard_normal((3, 4))]
    ref, wide = [p.copy() for p in params], _widen(params)
    m, v = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    mw, vw = _widen(m), _widen(v)
    opt = O.Adam(params, lr=0.05)
    for t in range(1, 4):
        gs = [rng.standard_normal(5).astype(np.float32), rng.standard_normal((4, 3)).T]
        opt.step(gs)
        R.adam_step(ref, gs, m, v, step=t, lr=0.05)
        R.adam_step(wide, _widen(gs), mw, vw, step=t, lr=0.05)
    _assert_lists_close(params, ref, wide)
    assert params[0].dtype == np.float32
    assert params[1].dtype == np.float64


def test_repr_and_exports():
    opt = O.AdamW([np.zeros(3)])
    assert "AdamW" in repr(opt)
    assert "weight_decay: 0.01" in repr(opt)
    assert fastnorm.optim is O
    for name in O.__all__:
        assert hasattr(O, name)


def test_kernel_checks_table_structure():
    """The raw kernels refuse a malformed address table (they trust only the addresses themselves)."""
    from fastnorm._kernels import cpu as K

    p, g, m, v = (np.zeros(3, np.float32) for _ in range(4))
    addr = [a.__array_interface__["data"][0] for a in (p, g, m, v)]
    tab = np.array([[a] for a in addr] + [[0]], np.intp)  # amsgrad off: row 4 may be 0
    off, pt = np.array([0, 3], np.int64), np.ones((1, 2))
    args = (0.9, 0.999, 1e-8, 0.0, 1.0)
    K.adam_step(tab, off, pt, *args, False, False, False, 1)
    for bad_tab, bad_off, bad_pt, ams in [
        (tab, off, pt, True),  # amsgrad needs row 4
        (tab[:4].copy(), off, pt, False),
        (tab, np.array([0, 3, 2], np.int64), pt, False),
        (tab, np.array([1, 3], np.int64), pt, False),
        (tab, off, np.ones((1, 1)), False),
    ]:
        with pytest.raises(ValueError, match="optimizer kernel"):
            K.adam_step(bad_tab, bad_off, bad_pt, *args, ams, False, False, 1)
