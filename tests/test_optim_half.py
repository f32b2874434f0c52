"""Optimizers over bfloat16 and float16 parameters: float32 state, float32 master weights, stochastic rounding.

Error criterion (DESIGN.md): after 20 steps, fastnorm's distance to the float64 NumPy reference trajectory
(same initial parameters, same 16-bit gradients) is at most twice torch's distance in the same
configuration (torch's optimizer over a float32 copy with float32 state, rounded into the 16-bit parameter
by hand after every step: kept as a master copy, or replaced by the rounded value without master weights),
plus two units of the 16-bit format at the scale of the reference.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fastnorm
from fastnorm import optim as O
from fastnorm.reference import optim as R

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALVES = [pytest.param(BF16, id="bf16"), pytest.param(F16, id="f16")]

CONFIGS = [
    ("sgd", {"lr": 0.05}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("adagrad", {"lr": 0.05, "weight_decay": 0.01}),
    ("adadelta", {"lr": 1.0}),
    ("rmsprop", {"lr": 0.01}),
    ("rmsprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ("adam", {"lr": 0.01, "amsgrad": True}),
    ("adam", {"lr": 0.01, "weight_decay": 0.01}),
    ("adamw", {"lr": 0.01}),
]
IDS = [f"{a}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for a, kw in CONFIGS]
CLASSES = {algo: cls.__name__ for algo, cls in O.CLASSES.items()}
STEPS = 20


def _state(algo: str, kw: dict, p: np.ndarray, dtype) -> dict:
    """The state lists a functional step takes (one tensor), zero-initialized in ``dtype``."""
    z = lambda: [np.zeros(p.shape, dtype)]
    if algo == "sgd":
        return {"momentum_buffers": [None]} if kw.get("momentum") else {}
    if algo == "adagrad":
        return {"state_sums": z()}
    if algo == "adadelta":
        return {"square_avgs": z(), "acc_deltas": z()}
    if algo == "rmsprop":
        st = {"square_avgs": z()}
        if kw.get("centered"):
            st["grad_avgs"] = z()
        if kw.get("momentum"):
            st["momentum_buffers"] = z()
        return st
    st = {"exp_avgs": z(), "exp_avg_sqs": z()}
    if kw.get("amsgrad"):
        st["max_exp_avg_sqs"] = z()
    return st


def _run(mod, algo, kw, p, grads, state_dtype, **extra):
    """``STEPS`` functional steps of ``mod`` (fastnorm.optim or the reference) on the one tensor ``p``;
    ``extra``: master_params / stochastic_rounding / seed. Returns the list of parameters after each step."""
    st = _state(algo, kw, p, state_dtype)
    out = []
    for k, g in enumerate(grads, start=1):
        step = {"step": k} if algo in ("adagrad", "adam", "adamw") else {}
        getattr(mod, f"{algo}_step")([p], [g], **st, **step, **kw, **extra)
        out.append(p.copy())
    return out


def _torch_run(algo, kw, p0, grads, half, master: bool):
    """torch's trajectory in the same configuration: its optimizer over a float32 copy of the parameter
    (float32 state) whose value is the 16-bit parameter: with master weights the copy is kept and rounded
    into the parameter after every step; without, the copy is replaced by the rounded parameter after every
    step (16-bit storage, float32 state: torch's own optimizer over 16-bit parameters keeps 16-bit state,
    which in float16 underflows to NaN for Adam's default eps)."""
    torch = pytest.importorskip("torch")
    tdt = torch.bfloat16 if half == BF16 else torch.float16
    w = torch.tensor(p0.astype(np.float32), dtype=torch.float32)
    w.requires_grad_(True)
    opt = getattr(torch.optim, CLASSES[algo])([w], foreach=False, **kw)
    out = []
    for g in grads:
        w.grad = torch.tensor(g.astype(np.float32), dtype=w.dtype)
        opt.step()
        rounded = w.detach().to(tdt).to(torch.float32)
        if not master:
            with torch.no_grad():
                w.copy_(rounded)
        out.append(rounded.numpy().astype(np.float64))
    return out


def _check(got, other, ref, half, name, ulps=2.0):
    """max|got - ref| <= 2 max|other - ref| + ulps * eps(half) * max(1, max|ref|)."""
    g, o, r = (np.asarray(a, np.float64) for a in (got, other, ref))
    err, oerr = np.max(np.abs(g - r)), np.max(np.abs(o - r))
    bound = 2 * oerr + ulps * float(ml_dtypes.finfo(half).eps) * max(1.0, float(np.max(np.abs(r))))
    assert err <= bound, f"{name}: error {err:.3g} > bound {bound:.3g} (torch's error {oerr:.3g})"


def _problem(half, n=2048, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    p0 = (offset + rng.standard_normal(n)).astype(half)
    grads = [rng.standard_normal(n).astype(half) for _ in range(STEPS)]
    return p0, grads


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize(("algo", "kw"), CONFIGS, ids=IDS)
def test_trajectory_without_master_weights(algo, kw, half):
    p0, grads = _problem(half)
    ref = _run(R, algo, kw, p0.astype(np.float64), [g.astype(np.float64) for g in grads], np.float64)
    p = p0.copy()
    got = _run(O, algo, kw, p, grads, np.float32)
    tor = _torch_run(algo, kw, p0, grads, half, master=False)
    assert got[-1].dtype == half
    _check(got[-1], tor[-1], ref[-1], half, f"{algo} {half.name}")


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize(("algo", "kw"), CONFIGS, ids=IDS)
@pytest.mark.parametrize("offset", [0.0, 1e3], ids=["centered", "offset1e3"])
def test_trajectory_with_master_weights(algo, kw, half, offset):
    """The master (float32) and the parameter (its rounding) against torch over a float32 copy; after every
    step the parameter is exactly the master rounded to nearest even."""
    p0, grads = _problem(half, offset=offset)
    ref = _run(R, algo, kw, p0.astype(np.float64), [g.astype(np.float64) for g in grads], np.float64)
    p, master = p0.copy(), p0.astype(np.float32)
    st = _state(algo, kw, p, np.float32)
    for k, g in enumerate(grads, start=1):
        step = {"step": k} if algo in ("adagrad", "adam", "adamw") else {}
        getattr(O, f"{algo}_step")([p], [g], **st, **step, **kw, master_params=[master])
        np.testing.assert_array_equal(p.view(np.uint16), master.astype(half).view(np.uint16))
    tor = _torch_run(algo, kw, p0, grads, half, master=True)
    _check(p, tor[-1], ref[-1], half, f"{algo} {half.name} master")
    # the master itself is the float32 trajectory: bitwise the float32 optimizer's on float32 parameters
    p32 = p0.astype(np.float32)
    f32 = _run(O, algo, kw, p32, [g.astype(np.float32) for g in grads], np.float32)
    np.testing.assert_array_equal(master, f32[-1])


@pytest.mark.parametrize("half", HALVES)
def test_float32_gradients_of_16_bit_parameters(half):
    """A float32 gradient is used as is (not rounded to 16 bits first)."""
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(1000).astype(half)
    g = rng.standard_normal(1000).astype(np.float32)
    p, master = p0.copy(), p0.astype(np.float32)
    O.sgd_step([p], [g], lr=0.1, master_params=[master])
    np.testing.assert_array_equal(master, p0.astype(np.float32) - np.float32(0.1) * g)
    q = p0.copy()
    O.sgd_step([q], [g], lr=0.1)
    np.testing.assert_array_equal(q.view(np.uint16), master.astype(half).view(np.uint16))


# ------------------------------------------------------------------------------------------ stochastic rounding
def _mix64(z):
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _bf16_sr_reference(x32: np.ndarray, key: int) -> np.ndarray:
    """Stochastic rounding to bfloat16 as documented: 16 random bits added below the kept mantissa."""
    idx = np.arange(x32.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        r = _mix64(np.uint64(key) + (idx + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    u = x32.view(np.uint32).astype(np.uint64)
    out = ((u + (r >> np.uint64(16))) >> np.uint64(16)).astype(np.uint16)
    special = ~np.isfinite(x32)
    out[special] = x32[special].astype(BF16).view(np.uint16)
    return out


def _sr_once(half, x32: np.ndarray, seed=7, threads=None):
    """One SGD step p = 0 - 1 * (-x) with stochastic rounding: the parameter becomes SR(x)."""
    p = np.zeros(x32.shape, half)
    old = fastnorm.get_num_threads()
    try:
        if threads:
            fastnorm.set_num_threads(threads)
        O.sgd_step([p], [-x32], lr=1.0, stochastic_rounding=True, seed=seed)
    finally:
        fastnorm.set_num_threads(old)
    return p


def test_bf16_stochastic_rounding_is_the_documented_function():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(5000) * np.exp(rng.uniform(-20, 20, 5000))).astype(np.float32)
    x[:6] = [np.inf, -np.inf, np.nan, 0.0, -0.0, 3.3895314e38]
    p = _sr_once(BF16, x, seed=11)
    key = int(O.rounding_keys(11, [1], [0])[0]) & (2**64 - 1)
    want = _bf16_sr_reference(np.float32(0) - (-x), key)  # the float32 value the step computes
    got = p.view(np.uint16)
    np.testing.assert_array_equal(got[3:], want[3:])
    assert np.isnan(p[2])
    assert p[0] == np.inf
    assert p[1] == -np.inf


@pytest.mark.parametrize("half", HALVES)
def test_stochastic_rounding_is_unbiased(half):
    """The mean of N independent roundings of x is x within 5 standard deviations of the mean, sd =
    spacing * sqrt(q (1 - q) / N) with q the probability of rounding up; and each rounding is one of the
    two neighbours of x."""
    n = 1 << 16
    info = ml_dtypes.finfo(half)
    tiny_sub = float(info.smallest_subnormal)
    values = [
        1.0 + 1 / 3 * 2.0**-(info.nmant),
        -(2.0 + 0.8 * 2.0 ** (1 - info.nmant)),
        0.1,
        -3.7e-3,
        tiny_sub * 2.3,
        -tiny_sub * 0.4,
        1000.0 + 1 / 7,
    ]
    for v in values:
        x32 = np.float32(v)
        x = np.full(n, x32, np.float32)
        p = _sr_once(half, x, seed=12345).astype(np.float64)
        seen = np.unique(p)
        assert seen.size == 2, (v, seen)  # x is not representable: its two neighbours, both drawn
        lo, hi = seen
        nearest = float(x32.astype(half))
        assert lo <= float(x32) <= hi, v
        assert nearest in (lo, hi), v
        mid = np.float32(np.float32(lo) + np.float32(hi - lo) * np.float32(0.5))  # no 16-bit value between
        assert float(mid.astype(half)) in (lo, hi), v
        q = (float(x32) - lo) / (hi - lo)
        sd = (hi - lo) * np.sqrt(q * (1 - q) / n)
        assert abs(p.mean() - float(x32)) <= 5 * sd, (v, p.mean(), float(x32), sd)
        up = (p == hi).mean()
        assert abs(up - q) <= 5 * np.sqrt(q * (1 - q) / n), (v, up, q)


@pytest.mark.parametrize("half", HALVES)
def test_stochastic_rounding_keeps_representable_values_and_specials(half):
    x = np.array([0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, np.nan, 1e6], np.float32)
    p = _sr_once(half, x)
    assert p[0] == 0
    assert p[1] == 0
    assert p[2] == 1
    assert p[3] == -2.5
    assert p[4] == np.inf
    assert p[5] == -np.inf
    assert np.isnan(p[6])
    with np.errstate(over="ignore"):  # float16: beyond the largest finite value, round to nearest (inf)
        assert p[7] == x[7].astype(half)


@pytest.mark.parametrize("half", HALVES)
def test_stochastic_rounding_reproducible_and_thread_independent(half):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(200_000).astype(np.float32)  # several chunks of the CPU kernel
    a = _sr_once(half, x, seed=5, threads=1)
    b = _sr_once(half, x, seed=5, threads=2)
    c = _sr_once(half, x, seed=6, threads=2)
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))
    assert (a.view(np.uint16) != c.view(np.uint16)).mean() > 0.2  # another seed, other roundings


@pytest.mark.parametrize("half", HALVES)
def test_class_stochastic_rounding_tracks_the_float32_trajectory(half):
    """Pure 16-bit Adam with stochastic rounding drifts no further from the float32 trajectory than a few
    16-bit units, while round-to-nearest loses the small updates of parameters near 1e3 entirely."""
    rng = np.random.default_rng(4)
    p0 = (256.0 + rng.standard_normal(4096)).astype(half)
    grads = [rng.standard_normal(4096).astype(np.float32) for _ in range(40)]
    p_sr, p_rne, p32 = p0.copy(), p0.copy(), p0.astype(np.float32)
    o_sr = O.Adam([p_sr], lr=1e-2, stochastic_rounding=True, seed=9)
    o_rne = O.Adam([p_rne], lr=1e-2)
    o32 = O.Adam([p32], lr=1e-2)
    for g in grads:
        o_sr.step([g])
        o_rne.step([g])
        o32.step([g])
    drift = p32.astype(np.float64) - p0.astype(np.float64)  # about 0.4 on average in magnitude
    sr_mean_err = np.mean(p_sr.astype(np.float64) - p32)
    assert abs(sr_mean_err) <= 0.05 * np.mean(np.abs(drift))  # unbiased: the errors cancel on average
    assert np.array_equal(p_rne, p0) or np.mean(np.abs(p_rne.astype(np.float64) - p32)) > np.mean(
        np.abs(p_sr.astype(np.float64) - p32)
    )


# ------------------------------------------------------------------------------------------ classes, state dicts
@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("algo", list(CLASSES))
def test_class_master_weights_state_dict_round_trip(algo, half):
    rng = np.random.default_rng(5)
    kw = {"momentum": 0.9} if algo == "sgd" else {}
    shapes = [(3, 5), (7,), (0,), (4, 4)]
    p = [rng.standard_normal(s).astype(half) for s in shapes] + [rng.standard_normal(6).astype(np.float32)]
    opt = getattr(O, CLASSES[algo])(p, lr=1e-2, master_weights=True, **kw)
    grads = lambda: [rng.standard_normal(a.shape).astype(a.dtype) for a in p]
    for _ in range(3):
        opt.step(grads())
    sd = opt.state_dict()
    for i, a in enumerate(p):
        st = sd["state"][i]
        if a.dtype == half:
            assert st[O.MASTER].dtype == np.float32
            np.testing.assert_array_equal(st[O.MASTER].astype(half).view(np.uint16), a.view(np.uint16))
        else:
            assert O.MASTER not in st
        assert all(v.dtype == np.float32 for k, v in st.items() if k != "step")
    q = [a.copy() for a in p]
    opt2 = getattr(O, CLASSES[algo])(q, lr=1e-2, master_weights=True, **kw)
    opt2.load_state_dict(sd)
    for _ in range(2):
        g = grads()
        opt.step(g)
        opt2.step(g)
    for a, b in zip(p, q, strict=True):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    # validated like the rest of the state
    bad = opt.state_dict()
    del bad["state"][0][O.MASTER]
    with pytest.raises(ValueError, match="master_param"):
        opt2.load_state_dict(bad)
    bad = opt.state_dict()
    bad["state"][4][O.MASTER] = np.zeros(6, np.float32)  # the float32 parameter keeps none
    with pytest.raises(ValueError, match="master_param"):
        opt2.load_state_dict(bad)
    bad = opt.state_dict()
    bad["state"][1][O.MASTER] = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="shape"):
        opt2.load_state_dict(bad)
    plain = getattr(O, CLASSES[algo])([a.copy() for a in p], lr=1e-2, **kw)
    plain.load_state_dict(opt.state_dict())  # the options come with the groups, as other hyperparameters
    assert plain.param_groups[0]["master_weights"] is True


def test_class_stochastic_rounding_state_dict_continues_identically():
    rng = np.random.default_rng(6)
    p = [rng.standard_normal(300).astype(BF16), rng.standard_normal((4, 9)).astype(F16)]
    for cls, kw in ((O.SGD, {"momentum": 0.5}), (O.AdamW, {})):
        a = [x.copy() for x in p]
        opt = cls(a, lr=1e-2, stochastic_rounding=True, seed=42, **kw)
        gs = [[rng.standard_normal(x.shape).astype(np.float32) for x in p] for _ in range(4)]
        for g in gs[:2]:
            opt.step(g)
        sd = opt.state_dict()
        assert sd["state"][0]["step"] == 2
        assert sd["param_groups"][0]["seed"] == 42
        b = [x.copy() for x in a]
        opt2 = cls(b, lr=1e-2, stochastic_rounding=True, seed=42, **kw)
        opt2.load_state_dict(sd)
        for g in gs[2:]:
            opt.step(g)
            opt2.step(g)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x.view(np.uint16), y.view(np.uint16))


def test_master_weights_with_float32_parameters_is_a_no_op():
    rng = np.random.default_rng(7)
    p, q = rng.standard_normal(50).astype(np.float32), None
    q = p.copy()
    g = rng.standard_normal(50).astype(np.float32)
    a, b = O.Adam([p], master_weights=True), O.Adam([q])
    a.step([g])
    b.step([g])
    np.testing.assert_array_equal(p, q)
    assert O.MASTER not in a.state_dict()["state"][0]


# ------------------------------------------------------------------------------------------ errors
def test_errors_before_anything_is_written():
    rng = np.random.default_rng(8)
    p = rng.standard_normal(10).astype(BF16)
    keep = p.copy()
    g = rng.standard_normal(10).astype(BF16)
    m, v = [np.zeros(10, np.float32)], [np.zeros(10, np.float32)]
    with pytest.raises(ValueError, match="exclude each other"):
        O.Adam([p], master_weights=True, stochastic_rounding=True)
    with pytest.raises(ValueError, match="exclude each other"):
        O.adam_step([p], [g], m, v, step=1, master_params=[p.astype(np.float32)], stochastic_rounding=True)
    with pytest.raises(TypeError, match=r"exp_avgs\[0\] has dtype bfloat16; expected float32"):
        O.adam_step([p], [g], [np.zeros(10, BF16)], v, step=1)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float64; expected bfloat16 or float32"):
        O.adam_step([p], [g.astype(np.float64)], m, v, step=1)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float16"):
        O.adam_step([p], [g.astype(np.float16)], m, v, step=1)
    with pytest.raises(ValueError, match=r"master_params\[0\] is None"):
        O.adam_step([p], [g], m, v, step=1, master_params=[None])
    q = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"master_params\[0\] is given"):
        O.sgd_step([q], [q.copy()], master_params=[np.zeros(3, np.float32)])
    with pytest.raises(TypeError, match=r"master_params\[0\] has dtype bfloat16"):
        O.sgd_step([p], [g], master_params=[p.copy()])
    with pytest.raises(ValueError, match=r"master_params\[0\] has shape"):
        O.sgd_step([p], [g], master_params=[np.zeros(11, np.float32)])
    buf = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="overlap|shares memory"):
        O.adam_step([p], [g], [buf], [buf], step=1)
    with pytest.raises(ValueError, match="seed"):
        O.sgd_step([p], [g], stochastic_rounding=True, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        O.SGD([p], seed=1.5)
    with pytest.raises(TypeError, match="stochastic_rounding"):
        O.sgd_step([p], [g], stochastic_rounding=1)
    np.testing.assert_array_equal(p.view(np.uint16), keep.view(np.uint16))
    assert not m[0].any()
    assert not v[0].any()
    opt = O.SGD([p], lr=0.1)
    opt.param_groups[0]["stochastic_rounding"] = True
    opt.param_groups[0]["master_weights"] = True
    with pytest.raises(ValueError, match="exclude each other"):
        opt.step([g])
    np.testing.assert_array_equal(p.view(np.uint16), keep.view(np.uint16))


# ------------------------------------------------------------------------------------------ torch
@pytest.mark.parametrize("half", HALVES)
def test_torch_optim_matches_the_numpy_classes(half):
    torch = pytest.importorskip("torch")
    from fastnorm.torch import optim as FO

    tdt = torch.bfloat16 if half == BF16 else torch.float16
    rng = np.random.default_rng(9)
    p0 = rng.standard_normal((8, 16)).astype(half)
    grads = [rng.standard_normal((8, 16)).astype(half) for _ in range(5)]
    for opts in ({}, {"master_weights": True}, {"stochastic_rounding": True, "seed": 3}):
        w = torch.nn.Parameter(torch.from_numpy(p0.astype(np.float32)).to(tdt))
        opt = FO.AdamW([w], lr=1e-2, **opts)
        p = p0.copy()
        ref = O.AdamW([p], lr=1e-2, **opts)
        for g in grads:
            w.grad = torch.from_numpy(g.astype(np.float32)).to(tdt)
            opt.step()
            ref.step([g])
        got = w.detach().to(torch.float32).numpy()
        np.testing.assert_array_equal(got, p.astype(np.float32))
        st = opt.state[w]
        assert st["exp_avg"].dtype == torch.float32
        assert ("master_param" in st) == bool(opts.get("master_weights"))
        sd = opt.state_dict()
        opt2 = FO.AdamW([torch.nn.Parameter(w.detach().clone())], lr=1e-2, **opts)
        opt2.load_state_dict(sd)
        st2 = next(iter(opt2.state.values()))
        assert all(v.dtype == torch.float32 for k, v in st2.items())


# ------------------------------------------------------------------------------------------ ISA targets
ADAM_OPTIONS = [
    pytest.param("adam", {}, id="adam"),
    pytest.param("adam", {"weight_decay": 0.1, "amsgrad": True}, id="adam-wd-amsgrad"),
    pytest.param("adamw", {"maximize": True}, id="adamw-maximize"),
]


@pytest.mark.parametrize("g32", [False, True], ids=["g16", "g32"])
@pytest.mark.parametrize("master", [False, True], ids=["plain", "master"])
@pytest.mark.parametrize(("algo", "kw"), ADAM_OPTIONS)
def test_bf16_adam_bitwise_the_same_on_every_target(algo, kw, master, g32):
    """bfloat16 Adam: the avx512 target's one-pass loop (in-register conversions, parameter results shifted
    into 64-byte lines and streamed, masked first and last lines) gives the bits of the other targets' blocked
    float32 path: lengths that are not multiples of 16, parameters starting off a 64-byte boundary and
    misaligned unlike their state, NaN, inf and subnormal values."""
    from fastnorm._kernels import cpu

    rng = np.random.default_rng(9)
    sizes, cut = [5, 16, 333, 4099, 70001], 3
    p0 = [rng.standard_normal(n + cut).astype(np.float32) for n in sizes]
    grads = []
    for _ in range(3):
        gs = [(rng.standard_normal(n) * 10.0 ** rng.integers(-9, 3, n)).astype(np.float32) for n in sizes]
        gs[3][::97], gs[3][1::89], gs[4][::53], gs[4][1::7] = np.nan, np.inf, -np.inf, 1e-41
        grads.append(gs if g32 else [g.astype(BF16) for g in gs])
    p0[4][::31], p0[2][::11] = np.nan, 1e-40
    results = {}
    for target in cpu.runnable_targets():
        with cpu.use_target(target):
            # p[cut:]: 2-byte aligned views, so the streamed lines start after a masked partial one
            p = [a.astype(BF16)[(cut if i % 2 else 0) :] for i, a in enumerate(p0)]
            p = [a if a.size == n else a[:n] for a, n in zip(p, sizes, strict=True)]
            opt = getattr(O, CLASSES[algo])(p, lr=1e-2, master_weights=master, **kw)
            for gs in grads:
                opt.step(gs)
            st = opt.state_dict()["state"]
            results[target] = [a.view(np.uint16).copy() for a in p] + [
                np.ascontiguousarray(v).view(np.uint8) for i in sorted(st) for v in st[i].values()
            ]
    base = results.pop("baseline")
    for target, got in results.items():
        for k, (a, b) in enumerate(zip(got, base, strict=True)):
            np.testing.assert_array_equal(a, b, err_msg=f"{target} array {k} differs from baseline")
