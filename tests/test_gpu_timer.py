"""The GPU benchmark's timer (fastnorm/bench/gpu.py) against a scripted fake ``torch.cuda``: no GPU needed.

The fake models one GPU queue in virtual time: the host clock advances by a scripted cost per call, the
device runs queued work in order, an event completes when the work queued before it is done, and
``torch.cuda._sleep(cycles)`` runs at a clock rate the test scripts (cold for the first calls, boosted
later, or ignored). This checks what the timer must do on hardware: calibrate after a warm-up, hide the
host behind a held stream and check that it did (``start.query()`` False when the sample is queued),
retry with a longer hold when it did not, and say so in the result when it never did.
"""

from __future__ import annotations

import json
import types

import pytest

from fastnorm.bench.gpu import Timer, Timing, format_cuda_table

RATE = 2.0e6  # cycles per millisecond of the scripted GPU clock
LAUNCH_MS = 0.004  # host cost of queueing a kernel or an event


class FakeGPU:
    """One device queue in virtual milliseconds, and the host clock beside it."""

    def __init__(self, cold_sleeps: int = 2, cold_factor: float = 5.0):
        self.host = 0.0
        self.busy_until = 0.0
        self.sleeps = 0
        self.cold_sleeps = cold_sleeps
        self.cold_factor = cold_factor
        self.rate_scale = 1.0  # > 1 after calibration: the clock boosted, sleeps end sooner
        self.ignore_sleep = False
        self.queries = 0

    def enqueue(self, device_ms: float) -> None:
        self.host += LAUNCH_MS
        start = max(self.host, self.busy_until)
        self.busy_until = start + device_ms

    def sleep(self, cycles: int) -> None:
        self.sleeps += 1
        if self.sleeps == 1:
            self.host += 3.0  # lazy module load on the first call
        rate = RATE * self.rate_scale
        if self.sleeps <= self.cold_sleeps:
            rate /= self.cold_factor  # idle clocks
        self.enqueue(0.0 if self.ignore_sleep else cycles / rate)

    def clock(self) -> float:
        return self.host / 1e3

    def torch(self):
        gpu = self

        class Event:
            def __init__(self, enable_timing: bool = False):
                assert enable_timing
                self.t = None

            def record(self):
                gpu.enqueue(0.0)
                self.t = gpu.busy_until

            def query(self):
                gpu.queries += 1
                return gpu.host >= self.t

            def synchronize(self):
                gpu.host = max(gpu.host, self.t)

            def elapsed_time(self, other):
                assert self.t is not None
                assert other.t is not None
                assert gpu.host >= other.t
                return other.t - self.t

        def synchronize():
            gpu.host = max(gpu.host, gpu.busy_until)

        cuda = types.SimpleNamespace(Event=Event, synchronize=synchronize, _sleep=gpu.sleep)
        return types.SimpleNamespace(cuda=cuda)

    def op(self, host_ms: float, device_ms: float):
        def fn():
            self.host += host_ms
            self.enqueue(device_ms)

        return fn


def make(gpu: FakeGPU, **kw) -> Timer:
    return Timer(gpu.torch(), clock=gpu.clock, **kw)


def test_calibration_warms_up_before_measuring():
    gpu = FakeGPU(cold_sleeps=2, cold_factor=5.0)
    t = make(gpu)
    # a single cold 2M-cycle sleep (the old calibration) would give RATE / 5
    assert t.cycles_per_ms == pytest.approx(RATE, rel=1e-3)
    assert all(r == pytest.approx(RATE, rel=1e-3) for r in t.calibration["cycles_per_ms"])
    assert t.calibration["cycles"] / RATE >= 20.0  # calibrated over >= 20 ms


def test_device_time_hides_a_host_bound_call():
    gpu = FakeGPU()
    t = make(gpu)
    r = t(gpu.op(host_ms=0.5, device_ms=0.01), repeats=5)
    assert isinstance(r, Timing)
    assert r.valid is True
    assert r.invalid_samples == 0
    assert r.retries == 0
    # events around back-to-back device work: the kernel plus the per-event marker gaps, never host time
    assert r.median_ms == pytest.approx(0.01, abs=1e-6)
    assert r.min_ms <= r.median_ms
    assert r.host_ms == pytest.approx(0.5 + LAUNCH_MS, rel=1e-6)
    assert gpu.queries >= 5  # every sample was checked


def test_end_to_end_mode_includes_host_time():
    gpu = FakeGPU()
    t = make(gpu)
    r = t(gpu.op(host_ms=0.5, device_ms=0.01), repeats=3, hide_host=False)
    assert r.valid is None
    assert r.median_ms == pytest.approx(0.5 + LAUNCH_MS, rel=0.05)


def test_device_bound_call_is_measured_as_device_time():
    gpu = FakeGPU()
    t = make(gpu)
    r = t(gpu.op(host_ms=0.01, device_ms=2.0), repeats=3)
    assert r.valid is True
    assert r.median_ms == pytest.approx(2.0, rel=1e-6)


def test_hold_too_short_is_detected_and_retried_longer():
    gpu = FakeGPU()
    t = make(gpu)
    gpu.rate_scale = 8.0  # clocks boosted after calibration: every hold ends 8x sooner than computed
    r = t(gpu.op(host_ms=0.5, device_ms=0.01), repeats=4)
    assert r.retries > 0
    assert r.valid is True
    assert r.invalid_samples == 0
    assert r.median_ms == pytest.approx(0.01, abs=1e-6)


def test_unhideable_host_time_is_reported_invalid():
    gpu = FakeGPU()
    t = make(gpu, max_retries=2)
    gpu.ignore_sleep = True  # nothing holds the stream: host time leaks into every sample
    r = t(gpu.op(host_ms=0.5, device_ms=0.01), repeats=3)
    assert r.valid is False
    assert r.invalid_samples == 3
    assert r.retries == 3 * 2
    assert r.median_ms > 0.4  # what an unchecked timer would have called device time
    d = r.as_dict()
    json.dumps(d)
    assert d["valid"] is False
    assert d["invalid_samples"] == 3
    assert len(d["samples_ms"]) == 3


def test_table_marks_rows_whose_host_time_was_not_hidden():
    row = dict(
        op="layer_norm_forward",
        label="(4, 8) float32",
        provider="fastnorm",
        note="",
        gpu_ms=0.5,
        gpu_gbps=1.0,
        gpu_frac_copy=0.1,
        e2e_ms=0.5,
        e2e_frac_copy=0.1,
        gpu_valid=False,
    )
    report = {
        "machine": dict(
            fastnorm="x", gpu="G", sm_count=1, torch="t", cuda_runtime_torch="c", numba="n", numba_cuda="nc", cupy=None
        ),
        "copy_gbps": 10.0,
        "timer": {"cycles_per_ms": RATE},
        "rows": [row, dict(row, gpu_valid=True)],
    }
    lines = format_cuda_table(report).splitlines()
    assert "0.500!" in lines[-2]
    assert "0.500!" not in lines[-1]
