"""Same-round timing: a case's providers and its streaming bound, interleaved.

On a shared VM the bandwidth a streaming kernel gets moves by up to 2x within minutes (Zen 5, session 6:
Adam's streams at 78 GB/s in one section and 132 GB/s two minutes later), so a bound measured once and set
against a case timed later says as much about the machine as about the kernel. Here a case runs in rounds:
round r times the stream kernel once (one sample: enough calls to last ``min_time``), then each provider
once; a last stream sample closes the final round, so every provider sample has a stream sample just before
and just after it (stream, A, B, stream, A, B, ..., stream). Round r's bound is the bandwidth of the mean of
its two bracketing stream samples; a provider's fraction of the bound is the median over its rounds of
(bytes / its time in round r) / (round r's bound), a same-round ratio, in which a slow-down of the whole
machine that hits both sides cancels. Ratios between providers (allocating / ``out=``, the speed-ups) are
medians of same-round ratios too. ``moved`` is how far the stream samples of the case spread: the fastest
one's bandwidth / the slowest one's - 1 (a bound that moved by 2x: 1.0); a case whose bound moved more than
a threshold is flagged.

Each sample starts after the stream kernel (or another provider) has swept the caches; its calls (at least
``min_time`` of them) re-warm what fits, so cache-resident cases pay for one cold call per sample.

The clock is a parameter (tests drive it with a fake one).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Clock = Callable[[], float]


@dataclass
class Timed:
    """A callable ready to sample: ``loops`` calls per sample, in at most ``rounds`` rounds."""

    fn: Callable[[], Any]
    loops: int
    rounds: int
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def prepare(
    fn: Callable[[], Any],
    *,
    repeats: int = 7,
    min_time: float = 0.02,
    max_total: float = 6.0,
    warmup: int = 1,
    clock: Clock = time.perf_counter,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Timed:
    """Warm ``fn`` up and size its samples: enough calls per sample to last ``min_time`` (tiny ops are not
    timer-bound), and ``repeats`` samples, fewer (at least 3) where they would take more than ``max_total``
    seconds (the NumPy references at large sizes)."""
    with context():
        for _ in range(warmup):
            fn()
        t0 = clock()
        fn()
        once = max(clock() - t0, 1e-7)
    loops = max(1, int(min_time / once))
    rounds = max(3, min(repeats, int(max_total / (once * loops))))
    return Timed(fn, loops, rounds, context)


def sample(t: Timed, clock: Clock = time.perf_counter) -> float:
    """Seconds per call of ``t.fn`` over one sample of ``t.loops`` calls."""
    with t.context():
        t0 = clock()
        for _ in range(t.loops):
            t.fn()
        return (clock() - t0) / t.loops


@dataclass
class Rounds:
    """The samples of one case: ``stream_s`` (seconds per stream call, one more than the rounds) and
    ``times`` (provider -> seconds per call in rounds 0, 1, ...; a slow provider may sit out the last ones)."""

    stream_s: list[float]
    times: dict[str, list[float]] = field(default_factory=dict)

    def bounds(self, stream_bytes: int) -> list[float]:
        """Round r's bound (bytes/s): the stream's bandwidth over the mean of the samples before and after r."""
        s = self.stream_s
        return [stream_bytes / ((s[r] + s[r + 1]) / 2) for r in range(len(s) - 1)]

    def stream_bandwidths(self, stream_bytes: int) -> list[float]:
        return [stream_bytes / t for t in self.stream_s]

    def moved(self, stream_bytes: int) -> float:
        """max / min - 1 of the stream samples' bandwidths during the case."""
        bw = self.stream_bandwidths(stream_bytes)
        return max(bw) / min(bw) - 1

    def median_time(self, name: str) -> float:
        return statistics.median(self.times[name])

    def fracs(self, name: str, nbytes: int, stream_bytes: int) -> list[float]:
        """Per round: (``nbytes`` / the provider's time) / the round's bound."""
        return [nbytes / t / b for t, b in zip(self.times[name], self.bounds(stream_bytes), strict=False)]

    def frac(self, name: str, nbytes: int, stream_bytes: int) -> float:
        return statistics.median(self.fracs(name, nbytes, stream_bytes))

    def ratio(self, num: str, den: str) -> float:
        """Median over the rounds both ran of time(``num``) / time(``den``)."""
        return statistics.median(a / b for a, b in zip(self.times[num], self.times[den], strict=False))


def run_rounds(stream: Timed, timed: dict[str, Timed], clock: Clock = time.perf_counter) -> Rounds:
    """Sample ``stream`` and the providers in ``timed`` in rounds: stream, each provider (in order), ...,
    stream. The number of rounds is the most any provider takes (``Timed.rounds``); a provider takes part in
    the first ``rounds`` of them."""
    n = max((t.rounds for t in timed.values()), default=0)
    out = Rounds(stream_s=[], times={name: [] for name in timed})
    for r in range(n):
        out.stream_s.append(sample(stream, clock))
        for name, t in timed.items():
            if r < t.rounds:
                out.times[name].append(sample(t, clock))
    out.stream_s.append(sample(stream, clock))
    return out
