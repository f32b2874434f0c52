"""One benchmark per (case, provider); groups per op and shape; bytes and GB/s in extra_info."""

import numpy as np
import pytest

from fastnorm.bench import _placement

_inputs_cache: dict = {}


def _inputs(case, alignment):
    # Inputs are shared by the providers of one case (built once, kept only for the current case).
    if case.name not in _inputs_cache:
        _inputs_cache.clear()
        _inputs_cache[case.name] = _placement.place(case.make_inputs(np.random.default_rng(0)), alignment)
    return _inputs_cache[case.name]


def test_case(benchmark, case, provider, request):
    alignment = request.config.getoption("--bench-alignment")
    benchmark.group = case.name
    benchmark.extra_info.update(op=case.op, shape=case.label, dtype=case.dtype, provider=provider, bytes=case.nbytes)
    benchmark.extra_info["alignment"] = alignment
    try:
        with _placement.placing(alignment):
            fn = case.providers[provider](_inputs(case, alignment))
        fn()  # a provider that cannot run here (Case.skip_reason) is skipped, not failed
    except Exception as e:
        reason = case.skip_reason(e)
        if reason is None:
            raise
        pytest.skip(reason)
    result = benchmark(fn)
    assert result is not None or provider.startswith("torch")
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["GB/s"] = case.nbytes / stats.stats.median / 1e9


@pytest.fixture(autouse=True, scope="session")
def _report_machine():
    yield
    _inputs_cache.clear()


# ------------------------------------------------------------------------------ the report's measurement
# A fake clock and a fake machine: the stream kernel and the providers advance the clock by their base time
# times the machine's slowness, which doubles after a given number of stream calls (a shared VM whose
# bandwidth moves in the middle of a case). No timing of the real machine.
import json  # noqa: E402

from fastnorm.bench import _report, _rounds  # noqa: E402
from fastnorm.bench._core import Case, Unsupported  # noqa: E402


class _Machine:
    def __init__(self, slow_after=None, factor=2.0):
        self.now, self.stream_calls, self.slow_after, self.factor = 0.0, 0, slow_after, factor
        self.log = []

    def clock(self):
        return self.now

    def slowness(self):
        return self.factor if self.slow_after is not None and self.stream_calls > self.slow_after else 1.0

    def stream(self, base, name="S"):
        def run():
            self.stream_calls += 1
            self.log.append(name)
            self.now += base * self.slowness()

        return run

    def op(self, base, name):
        def run():
            self.log.append(name)
            self.now += base * self.slowness()
            return name

        return run


def _timed(fn, rounds=7):
    return _rounds.Timed(fn, loops=1, rounds=rounds)


def test_rounds_interleave_the_stream_around_every_provider_sample():
    m = _Machine()
    r = _rounds.run_rounds(_timed(m.stream(0.05)), {"A": _timed(m.op(0.04, "A")), "B": _timed(m.op(0.04, "B"), 2)})
    assert "".join(m.log) == "SASBSASBSASASASASAS"  # every provider sample between two stream samples
    assert len(r.stream_s) == 10
    assert r.brackets["B"] == [(1, 2), (3, 4)]
    assert len(r.times["A"]) == 7
    assert len(r.times["B"]) == 2


def test_fraction_of_bound_pairs_each_round_with_its_own_stream_samples():
    # the machine halves its speed after round 2: stream and case slow down together, the same-round fraction
    # does not move; a bound taken from the first stream sample alone would give 0.5 x the right fraction
    m = _Machine(slow_after=3)
    r = _rounds.run_rounds(_timed(m.stream(0.05)), {"A": _timed(m.op(0.04, "A"))}, clock=m.clock)
    stream_bytes, nbytes = 10**9, 6 * 10**8
    expect = (nbytes / 0.04) / (stream_bytes / 0.05)  # 0.75
    assert r.frac("A", nbytes, stream_bytes) == pytest.approx(expect)
    assert sum(f == pytest.approx(expect) for f in r.fracs("A", nbytes, stream_bytes)) == 6  # round 2 straddles
    assert r.moved(stream_bytes) == pytest.approx(1.0)  # 2x: (20 - 10) / 10 GB/s
    assert (nbytes / r.median_time("A")) / (stream_bytes / r.stream_s[0]) == pytest.approx(expect / 2)


def test_ratios_between_providers_are_same_round_medians():
    # "out" sits out rounds 3-6, in which the machine is 3x slower: a ratio of medians would say 3.9
    m = _Machine(slow_after=6, factor=3.0)  # after round 2 (a stream sample after every provider sample)
    timed = {"alloc": _timed(m.op(0.026, "alloc")), "out": _timed(m.op(0.02, "out"), 3)}
    r = _rounds.run_rounds(_timed(m.stream(0.05)), timed, clock=m.clock)
    assert r.ratio("alloc", "out") == pytest.approx(1.3)
    assert r.median_time("alloc") / r.median_time("out") == pytest.approx(3.9)


def test_prepare_gives_slow_calls_fewer_rounds_but_at_least_three():
    m = _Machine()
    assert _rounds.prepare(m.op(0.001, "f"), repeats=9, clock=m.clock).loops == 20
    assert _rounds.prepare(m.op(0.001, "f"), repeats=9, clock=m.clock).rounds == 9
    slow = _rounds.prepare(m.op(2.5, "f"), repeats=9, clock=m.clock)
    assert (slow.loops, slow.rounds) == (1, 3)


def _fake_case(m, alloc=0.026, out=0.02, extra=None):
    providers = {"fastnorm": lambda s: m.op(alloc, "fastnorm"), "fastnorm out=": lambda s: m.op(out, "out")}
    providers |= extra or {}
    x = np.arange(3 * 1000, dtype=np.float32).reshape(3, 1000)
    return Case("fake_op", "(3, 1000)", lambda rng: dict(x=x.copy(), w=np.ones(1000, np.float32)), providers,
                nbytes=6 * 10**8, streams=(1, 0, 1), stream_len=125 * 10**6)  # fmt: skip


def _fake_report(monkeypatch, m, case, **kw):
    def stream_provider(streams, n, nt=False):
        return m.stream(0.1 if nt else 0.05, "NT" if nt else "S")  # the regular stores are faster here

    monkeypatch.setattr(_report, "all_cases", lambda quick: [case])
    monkeypatch.setattr(_report, "stream_provider", stream_provider)
    return _report.run_report(progress=False, clock=m.clock, **kw)


def test_report_records_bound_spread_drift_and_alloc_over_out(monkeypatch):
    m = _Machine(slow_after=17)  # 10 stream calls choose the variant, then the machine slows after round 2
    unsupported = {"other": lambda s: (_ for _ in ()).throw(Unsupported("not on this build"))}
    rep = _fake_report(monkeypatch, m, _fake_case(m, extra=unsupported))
    rows = {r["provider"]: r for r in rep["rows"]}
    assert rows["other"]["skipped"] == "Unsupported: not on this build"
    fast, out = rows["fastnorm"], rows["fastnorm out="]
    assert out["frac"] == pytest.approx((6e8 / 0.02) / (1e9 / 0.05))  # 1.5: stream bytes 2 x 4 x 125e6
    assert fast["alloc_over_out"] == pytest.approx(1.3)
    assert "alloc_over_out" not in out
    assert fast["speedup"] == {}
    assert fast["bound_drift"]
    assert fast["bound_moved"] == pytest.approx(1.0)
    assert (fast["bound_min_gbps"], fast["bound_max_gbps"]) == (pytest.approx(10.0), pytest.approx(20.0))
    (case,) = rep["cases"]
    assert case["stream_nt"] is False
    assert case["bound_drift"]
    assert case["rounds"] == 7
    assert case["alloc_over_out"] == {"fastnorm": pytest.approx(1.3)}
    assert case["alignment"] == rep["alignment"] == "numpy"
    assert rep["bound_method"] == "interleaved"
    assert len(case["stream_gbps"]) == 15  # one before round 0, one after each of the 2 x 7 provider samples
    json.dumps(rep)
    table = _report.format_table(rep)
    assert "alloc/out" in table
    assert "1.30x" in table
    assert "100%!" in table
    assert "bound moved more than the threshold during 1 case(s): fake_op (3, 1000) f32" in table
    assert "input alignment: numpy" in table


def test_report_does_not_flag_a_steady_bound(monkeypatch):
    m = _Machine()
    rep = _fake_report(monkeypatch, m, _fake_case(m), drift=0.05)
    assert not rep["cases"][0]["bound_drift"]
    assert rep["cases"][0]["bound_moved"] == pytest.approx(0.0, abs=1e-12)
    assert "!" not in _report.format_table(rep).split("moved alloc/out")[1]


def test_report_places_the_inputs_by_the_alignment(monkeypatch):
    for alignment, offset in (("64", 64), ("page", 0)):
        m = _Machine()
        rep = _fake_report(monkeypatch, m, _fake_case(m), alignment=alignment)
        assert rep["cases"][0]["input_offsets"] == {alignment: {"x": offset, "w": offset}}
        assert rep["alignment"] == alignment
        assert f"input alignment: {alignment}" in _report.format_table(rep)
    with pytest.raises(ValueError, match="alignment"):
        _fake_report(monkeypatch, _Machine(), _fake_case(m), alignment="32")


def test_report_compares_alignments_in_the_same_rounds(monkeypatch):
    m = _Machine()
    rep = _fake_report(monkeypatch, m, _fake_case(m), compare_alignments=["page", "numpy"])
    assert rep["compare_alignments"] == ["page"]
    rows = {r["provider"]: r for r in rep["rows"]}
    assert list(rows) == ["fastnorm", "fastnorm out=", "fastnorm [page]", "fastnorm out= [page]"]
    assert [r["alignment"] for r in rows.values()] == ["numpy", "numpy", "page", "page"]
    assert rows["fastnorm"]["speedup"] == {"fastnorm [page]": pytest.approx(1.0)}
    assert rows["fastnorm out= [page]"]["speedup"] == {"fastnorm out=": pytest.approx(1.0)}
    assert rows["fastnorm [page]"]["alloc_over_out"] == pytest.approx(1.3)
    offsets = rep["cases"][0]["input_offsets"]
    assert offsets["page"] == {"x": 0, "w": 0}
    assert list(offsets) == ["numpy", "page"]
    assert m.log[-8:] == ["fastnorm", "S", "out", "S"] * 2  # both placements in every round
    assert "'[page]' rows: the same providers in the same rounds" in _report.format_table(rep)


def test_place_copies_values_layout_and_lists():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 300)).astype(np.float32)
    s = dict(x=x, t=x.T, params=[x, x[0]], k=3, scalar=np.float32(2))
    for alignment, offset in (("64", 64), ("page", 0)):
        p = _placement.place(s, alignment)
        for a, b in ((p["x"], x), (p["t"], x.T), (p["params"][0], x), (p["params"][1], x[0])):
            assert a is not b
            assert a.ctypes.data % 4096 == offset
            assert a.dtype == b.dtype
            assert a.strides == b.strides
            assert np.array_equal(a, b)
        assert p["k"] == 3
        assert p["scalar"] is s["scalar"]
        assert _placement.page_offsets(p) == {"x": offset, "t": offset, "params": offset}
    assert _placement.place(s, "numpy") is s
    strided = x[:, ::2]
    assert _placement.place(strided, "page") is strided  # not dense: kept where it is


def test_out_buffers_follow_the_alignment_in_force():
    from fastnorm.bench._core import op_providers

    x = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)
    p = op_providers("layer_norm_forward", lambda s: dict(x=s["x"]))
    for alignment, offset in (("64", 64), ("page", 0)):
        with _placement.placing(alignment):
            fn = p["fastnorm out="](_placement.place(dict(x=x), alignment))
        assert [a.ctypes.data % 4096 for a in fn() if a is not None] == [offset] * 3
    assert _placement.empty((3, 5), np.float32).shape == (3, 5)  # outside: NumPy's own placement


def test_cli_records_the_alignment_and_threshold(tmp_path):
    from fastnorm.bench.__main__ import main

    path = tmp_path / "r.json"
    argv = ["--quick", "--ops", "no_such_op", "--no-progress", "--input-alignment", "page", "--bound-drift", "0.3"]
    assert main([*argv, "--json", str(path)]) == 0
    rep = json.loads(path.read_text())
    assert (rep["alignment"], rep["drift_threshold"], rep["rows"], rep["cases"]) == ("page", 0.3, [], [])
    with pytest.raises(SystemExit):
        main(["--input-alignment", "32"])


def test_format_table_reads_a_report_from_before_the_interleaved_bound():
    import pathlib

    path = pathlib.Path(__file__).parent / "results_rows_zen5_2026-12-01_s6_r1.json"
    table = _report.format_table(json.loads(path.read_text()))
    assert "bound = same-run streaming kernel" in table
    assert "layer_norm_forward" in table
