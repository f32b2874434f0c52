"""Same-round timing: a case's providers and its streaming bound, interleaved.

On a shared VM the bandwidth a streaming kernel gets moves by up to 2x within minutes (Zen 5, session 6:
Adam's streams at 78 GB/s in one section and 132 GB/s two minutes later), so a bound measured once and set
against a case timed later says as much about the machine as about the kernel. Here a case runs in rounds,
and every provider sample sits between two stream samples of its own (one sample: enough calls to last
``min_time``): stream, A, stream, B, stream, A, stream, B, ..., stream. A sample's bound is the bandwidth of
the mean of its two bracketing stream samples, taken right before and after it whatever the other providers
cost; a provider's fraction of the bound is the median over its samples of (bytes / its time) / (its
bound), in which a slow-down of the whole machine that hits both sides cancels. Ratios between providers
(allocating / ``out=``, the speed-ups) are medians over rounds of same-round ratios. ``moved`` is how far the
bound moved across one sample: the largest (faster / slower - 1) of a bracketing pair (2x: 1.0); a case
whose bound moved more than a threshold is flagged.

Every sample follows a stream sample, which swept the caches: all providers start alike (no order bias);
a sample's calls (at least ``min_time`` of them) re-warm what fits, so cache-resident cases pay for one cold
call per sample.

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
    """The samples of one case: ``stream_s`` (seconds per stream call, in the order taken), ``times``
    (provider -> seconds per call in rounds 0, 1, ...; a slow provider may sit out the last ones) and
    ``brackets`` (provider -> the indices in ``stream_s`` of the stream samples before and after each of its
    samples)."""

    stream_s: list[float]
    times: dict[str, list[float]] = field(default_factory=dict)
    brackets: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def bounds(self, stream_bytes: int) -> list[float]:
        """The bound (bytes/s) of each provider sample, in the order taken: the stream's bandwidth over the mean
        of consecutive stream samples."""
        s = self.stream_s
        return [stream_bytes / ((s[r] + s[r + 1]) / 2) for r in range(len(s) - 1)]

    def stream_bandwidths(self, stream_bytes: int) -> list[float]:
        return [stream_bytes / t for t in self.stream_s]

    def moved(self, stream_bytes: int) -> float:
        """The largest faster / slower - 1 of two stream samples that bracket one provider sample."""
        s = self.stream_s
        return max((max(s[i], s[i + 1]) / min(s[i], s[i + 1]) - 1 for i in range(len(s) - 1)), default=0.0)

    def median_time(self, name: str) -> float:
        return statistics.median(self.times[name])

    def fracs(self, name: str, nbytes: int, stream_bytes: int) -> list[float]:
        """Per sample: (``nbytes`` / the provider's time) / the bound of its own bracketing stream samples."""
        s = self.stream_s
        bounds = (stream_bytes / ((s[i] + s[j]) / 2) for i, j in self.brackets[name])
        return [nbytes / t / b for t, b in zip(self.times[name], bounds, strict=True)]

    def frac(self, name: str, nbytes: int, stream_bytes: int) -> float:
        return statistics.median(self.fracs(name, nbytes, stream_bytes))

    def ratio(self, num: str, den: str) -> float:
        """Median over the rounds both ran of time(``num``) / time(``den``)."""
        return statistics.median(a / b for a, b in zip(self.times[num], self.times[den], strict=False))


def run_rounds(stream: Timed, timed: dict[str, Timed], clock: Clock = time.perf_counter) -> Rounds:
    """Sample the providers in ``timed`` in rounds (each in order, each round), with a ``stream`` sample
    before the first and after every provider sample. The number of rounds is the most any provider takes
    (``Timed.rounds``); a provider takes part in the first ``rounds`` of them."""
    n = max((t.rounds for t in timed.values()), default=0)
    out = Rounds(stream_s=[], times={name: [] for name in timed}, brackets={name: [] for name in timed})
    out.stream_s.append(sample(stream, clock))
    for r in range(n):
        for name, t in timed.items():
            if r < t.rounds:
                out.times[name].append(sample(t, clock))
                out.stream_s.append(sample(stream, clock))
                k = len(out.stream_s) - 1
                out.brackets[name].append((k - 1, k))
    return out
