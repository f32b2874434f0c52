"""The GPU benchmark's timer (``fastnorm/bench/gpu.py``): CUDA-event device time with the host hidden behind a
held stream, checked per sample (see ``Timer``), the same-run copy bandwidth, and the profiler's kernel
durations for the cross-check.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Timing:
    """One timed measurement: per-call milliseconds over ``samples`` (event-timed batches of ``inner`` calls).

    ``valid`` (device-time mode only; None for end-to-end timings): every sample was queued while the GPU
    was still held before the start event, so the events saw no host time. ``invalid_samples`` counts the
    samples that were not (kept, but then ``valid`` is False); ``retries`` the lengthened holds it took.
    """

    median_ms: float
    min_ms: float
    samples: list
    inner: int
    host_ms: float
    hold_ms: float
    valid: bool | None
    invalid_samples: int
    retries: int

    def as_dict(self) -> dict:
        return {
            "median_ms": self.median_ms,
            "min_ms": self.min_ms,
            "samples_ms": list(self.samples),
            "inner": self.inner,
            "host_ms_per_call": self.host_ms,
            "hold_ms": self.hold_ms,
            "valid": self.valid,
            "invalid_samples": self.invalid_samples,
            "retries": self.retries,
        }


class Timer:
    """CUDA-event timer whose device-time mode is checked, not assumed, to hide the host.

    Device time: ``torch.cuda._sleep`` holds the stream while the host queues the timed calls between two
    events; after queueing, ``start.query()`` must still be False (the GPU has not reached the start
    event), otherwise the sample saw host time: the hold is doubled and the sample retried (at most
    ``max_retries`` times, after which the sample is kept and marked invalid). The sleep is calibrated
    after a warm-up (the first ``_sleep`` of a process pays lazy loading and idle clocks) over at least
    ``calib_ms``, best of three (the highest clock: a hold computed from it is never too short for a
    slower clock).

    ``clock`` is the host clock (``time.perf_counter``); tests pass a scripted one with a fake ``torch``.
    """

    def __init__(
        self, torch, *, clock: Callable[[], float] = time.perf_counter, calib_ms: float = 20.0, max_retries: int = 4
    ):
        self.torch = torch
        self.clock = clock
        self.max_retries = max_retries
        cuda = torch.cuda
        for _ in range(3):  # warm-up: module load, event creation, clocks up
            cuda._sleep(100_000)
            self._sleep_ms(100_000)
        cuda.synchronize()
        n = 1_000_000
        ms = self._sleep_ms(n)
        while ms < calib_ms and n < 1 << 42:
            n = int(n * min(64.0, max(2.0, 1.25 * calib_ms / max(ms, 1e-3))))
            ms = self._sleep_ms(n)
        rates = [n / max(self._sleep_ms(n), 1e-6) for _ in range(3)]
        self.cycles_per_ms = max(rates)
        self.calibration = {"cycles": n, "cycles_per_ms": rates}

    def _sleep_ms(self, cycles: int) -> float:
        cuda = self.torch.cuda
        s, e = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        s.record()
        cuda._sleep(int(cycles))
        e.record()
        e.synchronize()
        return s.elapsed_time(e)

    def _hold(self, ms: float) -> None:
        self.torch.cuda._sleep(max(1, int(self.cycles_per_ms * ms)))

    def __call__(self, fn: Callable, repeats: int = 7, target_ms: float = 25.0, hide_host: bool = True) -> Timing:
        """Time ``fn``: ``repeats`` event-timed batches of calls; median and minimum per call."""
        cuda = self.torch.cuda
        for _ in range(2):
            fn()
        cuda.synchronize()
        t0 = self.clock()
        fn()
        cuda.synchronize()
        once_ms = (self.clock() - t0) * 1e3
        inner = int(max(1, min(200, target_ms / max(once_ms, 1e-3))))
        # host time to queue `inner` calls, with the GPU held so that it does not drain the queue
        self._hold(once_ms * inner * 2 + 5)
        t0 = self.clock()
        for _ in range(inner):
            fn()
        host_ms = (self.clock() - t0) * 1e3 / inner
        cuda.synchronize()
        s, e = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        samples, invalid, retries = [], 0, 0
        factor = 1.5
        hold_ms = 0.0
        for _ in range(repeats):
            for attempt in range(self.max_retries + 1):
                if hide_host:
                    hold_ms = host_ms * inner * factor + 2
                    self._hold(hold_ms)
                s.record()
                for _ in range(inner):
                    fn()
                e.record()
                hidden = hide_host and not s.query()
                e.synchronize()
                if not hide_host or hidden:
                    break
                if attempt < self.max_retries:
                    factor *= 2
                    retries += 1
            if hide_host and not hidden:
                invalid += 1
            samples.append(s.elapsed_time(e) / inner)
        return Timing(
            median_ms=statistics.median(samples),
            min_ms=min(samples),
            samples=samples,
            inner=inner,
            host_ms=host_ms,
            hold_ms=hold_ms,
            valid=(invalid == 0) if hide_host else None,
            invalid_samples=invalid,
            retries=retries,
        )


def copy_gbps(torch, timer: Timer, nbytes: int, repeats: int) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second) on buffers of ``nbytes``."""
    n = max(1, nbytes // 4)
    src = torch.ones(n, device="cuda")
    dst = torch.empty_like(src)
    t = timer(lambda: dst.copy_(src), repeats=repeats)
    return 2 * 4 * n / (t.median_ms * 1e-3) / 1e9


def profiler_kernel_ms(torch, fn: Callable, calls: int = 20) -> float | None:
    """Device time per call of the kernels ``fn`` launches, from the profiler (CUPTI), as a cross-check of
    the event timer. None when the profiler reports no kernel."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    total_us = 0.0
    for ev in prof.events():
        if str(getattr(ev, "device_type", "")).endswith("CUDA"):
            total_us += ev.time_range.elapsed_us()
    return total_us / 1e3 / calls if total_us > 0 else None
