"""Runtime ISA dispatch of the CPU kernels: the target chooser, the CPU-feature probe, and every target this
machine can run checked against the float64 reference (the error criterion of tests/_util.py)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R
from fastnorm._kernels import cpu
from fastnorm._kernels.cpu import _cpuinfo, _isa

from ._util import assert_close_to_ref, assert_matches_reference, f64

V2 = {"sse3", "ssse3", "sse4_1", "sse4_2", "popcnt", "cx16", "lahf_lm"}
V3 = V2 | {"avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "lzcnt", "movbe", "xsave"}
V4 = V3 | {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"}
ALL = ("baseline", "avx2", "avx512")


# ------------------------------------------------------------------------------------------ chooser
@pytest.mark.parametrize(
    ("features", "built", "expected"),
    [
        (set(), ALL, "baseline"),
        (V2, ALL, "baseline"),
        (V3, ALL, "avx2"),
        (V4, ALL, "avx512"),
        (V4, ("baseline", "avx2"), "avx2"),
        (V4, ("baseline",), "baseline"),
        (V4, ("baseline", "avx512"), "avx512"),
        (V3 - {"bmi2"}, ALL, "baseline"),  # AVX2 without BMI2 (some VMs): not x86-64-v3
        (V3 - {"fma"}, ALL, "baseline"),
        (V3 | {"avx512f", "avx512cd"}, ALL, "avx2"),  # Xeon Phi: AVX-512F/CD without BW/DQ/VL
        (V4 - {"avx512vl"}, ALL, "avx2"),
        (V4 | {"avx512_bf16", "amx_tile"}, ALL + ("native",), "avx512"),  # native is never chosen alone
    ],
)
def test_chooser_picks_best_supported_target(features, built, expected):
    assert _isa.choose_target(features, built) == expected
    assert _isa.choose_target(features, built, "auto") == expected
    assert _isa.choose_target(features, built, "") == expected


def test_chooser_honours_a_supported_request():
    assert _isa.choose_target(V4, ALL, "baseline") == "baseline"
    assert _isa.choose_target(V4, ALL, "AVX2") == "avx2"
    assert _isa.choose_target(V4, ALL, " avx512 ") == "avx512"
    assert _isa.choose_target(V3, ALL + ("native",), "native") == "native"


def test_chooser_warns_and_falls_back_when_the_cpu_lacks_the_target():
    with pytest.warns(RuntimeWarning, match="lacks avx512bw.*using avx2"):
        assert _isa.choose_target(V3 | {"avx512f"}, ALL, "avx512") == "avx2"
    with pytest.warns(RuntimeWarning, match="lacks.*avx2.*using baseline"):
        assert _isa.choose_target(V2, ALL, "avx2") == "baseline"


def test_chooser_warns_when_the_target_is_not_built():
    with pytest.warns(RuntimeWarning, match="no avx512 kernels.*using avx2"):
        assert _isa.choose_target(V4, ("baseline", "avx2"), "avx512") == "avx2"
    with pytest.warns(RuntimeWarning, match="no native kernels"):
        assert _isa.choose_target(V4, ALL, "native") == "avx512"


def test_chooser_rejects_unknown_names_and_missing_baseline():
    with pytest.raises(ValueError, match="FASTNORM_CPU_TARGET='sse9'.*auto, avx512, avx2, baseline"):
        _isa.choose_target(V4, ALL, "sse9")
    with pytest.raises(RuntimeError, match="no baseline"):
        _isa.choose_target(V4, ("avx2",))


# ------------------------------------------------------------------------------------------ the probe
_PROC_NAME = {"sse3": "pni", "lzcnt": "abm"}  # Linux's /proc/cpuinfo spelling where it differs


def _proc_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@pytest.mark.skipif(not _cpuinfo.probe_supported(), reason="no CPUID probe on this platform")
def test_probe_agrees_with_proc_cpuinfo():
    flags = _proc_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    got = cpu.CPU_FEATURES
    for name in _cpuinfo.FEATURE_NAMES:
        # The probe also requires OS support (XCR0) for AVX state; Linux lists a flag only when usable too.
        assert (name in got) == (_PROC_NAME.get(name, name) in flags), name


def test_selected_target_is_the_chooser_s_answer():
    assert "baseline" in cpu.BUILT_TARGETS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = _isa.choose_target(cpu.CPU_FEATURES, cpu.BUILT_TARGETS, os.environ.get(_isa.ENV_VAR))
    assert cpu.TARGET == expected
    assert cpu.TARGET in cpu.runnable_targets()
    # The family names are the selected target's modules, also for direct imports.
    from fastnorm._kernels.cpu import _layer_norm

    assert _layer_norm is cpu.target_module("_layer_norm")
    assert _layer_norm.__name__.endswith("_layer_norm_" + cpu.TARGET)
    assert sys.modules["fastnorm._kernels.cpu._layer_norm"] is _layer_norm


def test_every_kernel_file_is_a_dispatched_family():
    here = os.path.join(os.path.dirname(cpu.__file__), "*.pyx")
    stems = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(here)}
    if not stems:
        pytest.skip("installed without sources")
    assert stems - {"_runtime", "_cpuinfo", "_stream", "_alloc"} == set(cpu.FAMILIES)


def test_x86_builds_carry_the_vector_targets():
    if not _cpuinfo.probe_supported():
        pytest.skip("not x86 with a GCC-compatible compiler")
    if os.environ.get("FASTNORM_TARGETS"):
        pytest.skip("a build restricted with FASTNORM_TARGETS")
    assert {"baseline", "avx2", "avx512"} <= set(cpu.BUILT_TARGETS)


def test_show_config():
    cfg = fastnorm.show_config(mode="dicts")
    t = cfg["cpu_target"]
    assert t["selected"] == cpu.TARGET
    assert t["built"] == list(cpu.BUILT_TARGETS)
    assert cfg["build"]["openmp"] == fastnorm.openmp_enabled()
    assert cfg["threads"] == fastnorm.get_num_threads()
    with pytest.raises(ValueError, match="mode"):
        fastnorm.show_config(mode="json")


def test_show_config_prints(capsys):
    assert fastnorm.show_config() is None
    out = capsys.readouterr().out
    assert f"cpu target       : {cpu.TARGET}" in out
    assert "targets built" in out
    assert "OpenMP" in out


def _import_with_target(value):
    env = dict(os.environ)
    env[_isa.ENV_VAR] = value
    code = "import fastnorm._kernels.cpu as c; print(c.TARGET)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_env_var_forces_the_baseline():
    r = _import_with_target("baseline")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "baseline"


def test_env_var_unknown_target_is_an_error():
    r = _import_with_target("avx1024")
    assert r.returncode != 0
    assert "FASTNORM_CPU_TARGET='avx1024'" in r.stderr


def test_env_var_unsupported_target_warns():
    missing = [t for t in ("avx512", "avx2") if t in cpu.BUILT_TARGETS and not _isa.supported(t, cpu.CPU_FEATURES)]
    if not missing:
        pytest.skip("this CPU runs every built target")
    r = _import_with_target(missing[0])
    assert r.returncode == 0, r.stderr
    assert "RuntimeWarning" in r.stderr
    assert "this CPU lacks" in r.stderr
    # falls back to the automatic choice (not this process's target, which the env var may have forced)
    assert r.stdout.strip() == _isa.choose_target(cpu.CPU_FEATURES, cpu.BUILT_TARGETS, None)


# ------------------------------------------------------------------------------------------ every target
RUNNABLE = cpu.runnable_targets()


@pytest.fixture(params=RUNNABLE)
def target(request, monkeypatch):
    """Route the public ops to the kernels of one target (every exported kernel name, for this test)."""
    t = request.param
    for family in cpu.FAMILIES:
        mod = cpu.target_module(family, t)
        for name in cpu.__all__:
            if hasattr(mod, name):
                monkeypatch.setattr(cpu, name, getattr(mod, name))
    return t


def _rand(rng, shape, dtype, loc=0.0, scale=1.0):
    return (rng.standard_normal(shape) * scale + loc).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 33), (64, 1000), (3, 4099)])
def test_layer_and_rms_norm_per_target(target, dtype, shape, monkeypatch):
    monkeypatch.setattr(fastnorm._dispatch, "_num_threads", None)  # restored after the test
    rng = np.random.default_rng(1)
    n = shape[-1]
    x, w, b, dy = (
        _rand(rng, shape, dtype, 3.0, 2.0),
        _rand(rng, n, dtype),
        _rand(rng, n, dtype),
        _rand(rng, shape, dtype),
    )
    for nt in (1, 2):
        fastnorm.set_num_threads(nt)
        got = fastnorm.layer_norm_forward(x, w, b)
        ref64, ref32 = R.layer_norm_forward(*f64(x, w, b)), R.layer_norm_forward(x, w, b)
        for name, g, r64, r32 in zip(("y", "mean", "rstd"), got, ref64, ref32):
            assert_matches_reference(g, r64, r32, name=f"{target} ln {name}")
        gb = fastnorm.layer_norm_backward(dy, x, got.mean, got.rstd, w, b)
        rb64 = R.layer_norm_backward(*f64(dy, x), *f64(got.mean, got.rstd), *f64(w, b))
        rb32 = R.layer_norm_backward(dy, x, got.mean, got.rstd, w, b)
        for name, g, r64, r32 in zip(("dx", "dweight", "dbias"), gb, rb64, rb32):
            assert_matches_reference(g, r64, r32, name=f"{target} ln {name}")
        rf = fastnorm.rms_norm_forward(x, w)
        for name, g, r64, r32 in zip(("y", "rstd"), rf, R.rms_norm_forward(*f64(x, w)), R.rms_norm_forward(x, w)):
            assert_matches_reference(g, r64, r32, name=f"{target} rms {name}")
        rg = fastnorm.rms_norm_backward(dy, x, rf.rstd, w)
        rg64 = R.rms_norm_backward(*f64(dy, x, rf.rstd, w))
        rg32 = R.rms_norm_backward(dy, x, rf.rstd, w)
        for name, g, r64, r32 in zip(("dx", "dweight"), rg, rg64, rg32):
            assert_matches_reference(g, r64, r32, name=f"{target} rms {name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_norms_per_target(target, dtype):
    rng = np.random.default_rng(2)
    x, dy = _rand(rng, (4, 6, 5, 7), dtype, 1.0, 3.0), _rand(rng, (4, 6, 5, 7), dtype)
    w, b = _rand(rng, 6, dtype), _rand(rng, 6, dtype)
    got = fastnorm.batch_norm_forward(x, w, b, training=True)
    ref64, ref32 = R.batch_norm_forward(*f64(x, w, b), training=True), R.batch_norm_forward(x, w, b, training=True)
    assert_matches_reference(got[0], ref64[0], ref32[0], name=f"{target} bn y")
    g = fastnorm.group_norm_forward(x, 3, w, b)
    gr64, gr32 = R.group_norm_forward(*f64(x), 3, *f64(w, b)), R.group_norm_forward(x, 3, w, b)
    assert_matches_reference(g[0], gr64[0], gr32[0], name=f"{target} gn y")
    gb = fastnorm.group_norm_backward(dy, x, g.mean, g.rstd, 3, w, b)
    gb64 = R.group_norm_backward(*f64(dy, x, g.mean, g.rstd), 3, *f64(w, b))
    gb32 = R.group_norm_backward(dy, x, g.mean, g.rstd, 3, w, b)
    for name, a, r64, r32 in zip(("dx", "dweight", "dbias"), gb, gb64, gb32):
        assert_matches_reference(a, r64, r32, name=f"{target} gn {name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_norm_and_cosine_per_target(target, dtype):
    rng = np.random.default_rng(3)
    v, g = _rand(rng, (16, 8, 3), dtype), _rand(rng, (16, 1, 1), dtype)
    got = fastnorm.weight_norm_forward(v, g, dim=0)
    ref64, ref32 = R.weight_norm_forward(*f64(v, g), dim=0), R.weight_norm_forward(v, g, dim=0)
    assert_matches_reference(got[0], ref64[0], ref32[0], name=f"{target} wn w")
    x, w = _rand(rng, (9, 40), dtype), _rand(rng, (5, 40), dtype)
    cy = fastnorm.cosine_linear_forward(x, w)
    c64, c32 = R.cosine_linear_forward(*f64(x, w)), R.cosine_linear_forward(x, w)
    assert_matches_reference(cy[0], c64[0], c32[0], name=f"{target} cosine y")


def test_adam_per_target(target):
    from fastnorm.optim import Adam

    rng = np.random.default_rng(4)
    p = [_rand(rng, (1000,), np.float32), _rand(rng, (37, 3), np.float32)]
    g = [_rand(rng, a.shape, np.float32) for a in p]
    refs = {dt: [a.astype(dt) for a in p] for dt in (np.float64, np.float32)}  # the same update in each dtype
    opt = Adam(p, lr=1e-2)
    moments = {dt: ([np.zeros_like(a) for a in q], [np.zeros_like(a) for a in q]) for dt, q in refs.items()}
    for step in range(1, 4):
        opt.step(g)
        for dt, q in refs.items():
            m, v = moments[dt]
            c = dt  # constants in the update's dtype
            for i, gi in enumerate(g):
                gi = gi.astype(dt)
                m[i] = c(0.9) * m[i] + c(0.1) * gi
                v[i] = c(0.999) * v[i] + c(0.001) * gi**2
                q[i] -= c(1e-2) * (m[i] / c(1 - 0.9**step)) / (np.sqrt(v[i] / c(1 - 0.999**step)) + c(1e-8))
    # DESIGN.md's criterion: within 2x the float32 NumPy update's error against float64, plus 8 ulps
    for i, (a, r32, r64) in enumerate(zip(p, refs[np.float32], refs[np.float64], strict=True)):
        assert_close_to_ref(a, r32, r64, name=f"{target} adam param {i}")


def test_compare_targets_times_the_out_call_on_every_other_target(monkeypatch):
    """``--compare-targets`` adds ``fastnorm@<t>`` and ``fastnorm out=@<t>`` rows, and the plain rows' speed-ups
    name them: the median over rounds of (other target's time / this target's time) in the same round."""
    import statistics

    import fastnorm._kernels.cpu as cpu
    from fastnorm.bench import _rounds
    from fastnorm.bench._report import run_report

    others = [t for t in cpu.runnable_targets() if t != cpu.TARGET]
    if not others:
        pytest.skip("this CPU runs one target only")
    seen = {}
    ratio = _rounds.Rounds.ratio

    def spy(self, num, den):
        seen[(num, den)] = statistics.median(a / b for a, b in zip(self.times[num], self.times[den], strict=True))
        return ratio(self, num, den)

    monkeypatch.setattr(_rounds.Rounds, "ratio", spy)
    rows = run_report(quick=True, ops=["rms_norm_forward"], repeats=1, progress=False, compare_targets=True,
                      dtypes=["float32"])["rows"]  # fmt: skip
    case = [r for r in rows if r["op"] == "rms_norm_forward"]
    providers = {r["provider"] for r in case}
    for t in others:
        assert {f"fastnorm@{t}", f"fastnorm out=@{t}"} <= providers
    by = {r["provider"]: r for r in case if r["label"] == case[-1]["label"]}
    for base in ("fastnorm", "fastnorm out="):
        assert {f"{base}@{t}" for t in others} <= set(by[base]["speedup"])
        for t in others:
            assert by[base]["speedup"][f"{base}@{t}"] == pytest.approx(seen[(f"{base}@{t}", base)])
