"""Benchmark building blocks shared by ``python -m fastnorm.bench`` and the pytest-benchmark suite in bench/.

A ``Case`` is one op at one shape: how to build its inputs, the providers that run it (fastnorm, the NumPy
reference, torch variants), the minimal bytes a perfect fused kernel moves, and the streams of the matching
streaming-bandwidth bound. Case files are the modules ``fastnorm/bench/cases_*.py``, each with a function
``cases(quick: bool) -> list[Case]``; they are discovered automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A provider is a factory: given the case's inputs (a dict of NumPy arrays), it does its own set-up (torch
# tensors, out= buffers) and returns the zero-argument callable that is timed.
Provider = Callable[[dict], Callable[[], Any]]


@dataclass
class Case:
    op: str                          # public op name, e.g. "layer_norm_forward"
    label: str                       # shape / options, e.g. "(4096, 1024)"
    make_inputs: Callable[[np.random.Generator], dict]
    providers: dict[str, Provider]   # "fastnorm", "fastnorm out=", "numpy", "torch", ...
    nbytes: int                      # bytes a perfect fused kernel reads + writes
    streams: tuple[int, int, int]    # (read-only, read-write, write-only) streams for the bound
    stream_len: int                  # float32 elements per stream (nbytes ~= 4 * stream_len * sum(streams))
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return f"{self.op} {self.label}"


def all_cases(quick: bool = False) -> list[Case]:
    """Every case from every ``fastnorm.bench.cases_*`` module, in module-name order."""
    import fastnorm.bench as pkg

    out: list[Case] = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("cases_"):
            out.extend(importlib.import_module(f"fastnorm.bench.{info.name}").cases(quick))
    return out


def torch_or_none():
    """torch with its CPU thread count matched to fastnorm's, or None where torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    import fastnorm

    torch.set_num_threads(fastnorm.get_num_threads())
    return torch


def time_call(
    fn: Callable[[], Any], *, repeats: int = 7, min_time: float = 0.02, max_total: float = 6.0, warmup: int = 1
) -> float:
    """Median seconds per call of ``fn`` over up to ``repeats`` timed repeats.

    Each repeat loops ``fn`` enough times to last at least ``min_time`` (so tiny ops are not timer-bound);
    the median across repeats resists the noise of a shared machine. Slow calls (the NumPy references at
    large sizes) get fewer repeats, at least 3, so one case stays within about ``max_total`` seconds.
    """
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    loops = max(1, int(min_time / once))
    repeats = max(3, min(repeats, int(max_total / (once * loops))))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - t0) / loops)
    return statistics.median(samples)


def stream_provider(streams: tuple[int, int, int], n: int) -> Callable[[], Any]:
    """The streaming bound's kernel for ``streams`` of ``n`` float32 elements, set up and ready to time."""
    import fastnorm
    from fastnorm._kernels.cpu._stream import stream

    r, u, w = streams
    reads = np.ones((r, n) if r else (0, 0), np.float32)
    updates = np.ones((u, n) if u else (0, 0), np.float32)
    writes = np.empty((w, n) if w else (0, 0), np.float32)
    nt = fastnorm.get_num_threads()
    return lambda: stream(reads, updates, writes, nt)


def stream_bound_gbps(streams: tuple[int, int, int], n: int, repeats: int = 7) -> float:
    """Bandwidth (GB/s, bytes read + written) of the streaming kernel with these streams."""
    r, u, w = streams
    nbytes = 4 * n * (r + 2 * u + w)
    return nbytes / time_call(stream_provider(streams, n), repeats=repeats) / 1e9
