"""Benchmark building blocks shared by ``python -m fastnorm.bench`` and the pytest-benchmark suite in bench/.

A ``Case`` is one op at one shape: how to build its inputs, the providers that run it (fastnorm, the NumPy
reference, torch variants), the minimal bytes a perfect fused kernel moves, and the streams of the matching
streaming-bandwidth bound. A case of a registered op (``declared_case``) takes its bytes from the op's
declaration (``OpSpec.moved``: each array argument read once, each output written once), evaluated on
stand-ins of the case's inputs, so the bench and the declaration cannot disagree. Case files are the
modules ``fastnorm/bench/cases_*.py``, each with a function
``cases(quick: bool) -> list[Case]``; they are discovered automatically.

dtypes: a case has one data dtype (``float32``, ``bfloat16``, ``float16``); its bytes and its streaming bound
count that dtype's item size (a 16-bit case streams half the bytes of the float32 one). A provider that
cannot run a case on this build (a 16-bit case whose op raises ``TypeError`` for the dtype, or an op this
build lacks: ``Unsupported``) is reported as skipped with the reason instead of failing the run.
"""

from __future__ import annotations

import importlib
import pkgutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _dtypes
from ._placement import empty
from ._rounds import prepare, sample

# A provider is a factory: given the case's inputs (a dict of NumPy arrays), it does its own set-up (torch
# tensors, out= buffers) and returns the zero-argument callable that is timed.
Provider = Callable[[dict], Callable[[], Any]]


@dataclass
class Case:
    op: str  # public op name, e.g. "layer_norm_forward"
    label: str  # shape / options, e.g. "(4096, 1024)"
    make_inputs: Callable[[np.random.Generator], dict]
    providers: dict[str, Provider]  # "fastnorm", "fastnorm out=", "numpy", "torch", ...
    nbytes: int  # bytes a perfect fused kernel reads + writes
    streams: tuple[int, int, int]  # (read-only, read-write, write-only) streams for the bound
    stream_len: int  # float32 elements per stream (nbytes ~= 4 * stream_len * sum(streams))
    tags: tuple[str, ...] = field(default_factory=tuple)
    dtype: str = "float32"  # the data's dtype (x, y, dy, dx); statistics stay float32
    # a case of one registered op: the public call's keyword arguments from the inputs (nbytes is the
    # declaration's for that call)
    args: Callable[[dict], dict] | None = None

    @property
    def name(self) -> str:
        return f"{self.op} {self.label}" + ("" if self.dtype == "float32" else f" {self.dtype}")

    def skip_reason(self, exc: BaseException) -> str | None:
        """Why a provider's failure means "cannot run here" (the message), or None for a real error.

        ``Unsupported`` always; ``TypeError`` only in a 16-bit case (the op does not take the dtype on this
        build, e.g. before its 16-bit kernels exist); anything else is a bug in the benchmark or the op.
        """
        if isinstance(exc, Unsupported) or (isinstance(exc, TypeError) and self.dtype != "float32"):
            return f"{type(exc).__name__}: {exc}"
        return None


class Unsupported(Exception):
    """Raised by a provider's factory when it cannot run on this build (an op or module that is missing)."""


DTYPES = ("float32", "bfloat16", "float16")


def np_dtype(name: str) -> np.dtype:
    """``"float32"``, ``"bfloat16"`` (ml_dtypes), ``"float16"`` as a NumPy dtype."""
    return _dtypes.from_name(name)


def short_dtype(name: str) -> str:
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "float64": "f64"}.get(name, name)


def stream_elements(n_items: int, dtype: str) -> int:
    """The float32 elements of a stream that moves ``n_items`` items of ``dtype`` (its bytes / 4)."""
    return max(1, n_items * np_dtype(dtype).itemsize // 4)


def random_array(rng: np.random.Generator, shape, dtype: str, scale: float = 1.0, shift: float = 0.0):
    """Standard normal (times ``scale``, plus ``shift``) in float32, rounded to ``dtype``."""
    a = rng.standard_normal(shape, dtype=np.float32)
    if scale != 1.0 or shift != 0.0:
        a = a * np.float32(scale) + np.float32(shift)
    return a.astype(np_dtype(dtype))


def as_torch(torch, a: np.ndarray):
    """A NumPy array as a torch tensor sharing its memory (bfloat16 through an int16 view)."""
    if a.dtype == _dtypes.BFLOAT16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


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
    """Median seconds per call of ``fn`` over up to ``repeats`` timed repeats (``_rounds.prepare``: each
    repeat lasts at least ``min_time``; slow calls get fewer repeats, at least 3, within about ``max_total``
    seconds); the median across repeats resists the noise of a shared machine."""
    t = prepare(fn, repeats=repeats, min_time=min_time, max_total=max_total, warmup=warmup)
    return statistics.median(sample(t) for _ in range(t.rounds))


# Streams k = 0, 1, ... start k * STREAM_STAGGER bytes into their own arrays: streams whose addresses agree in
# every bit up to a large power of two (rows of one (k, n) array) collide in DRAM banks and cache sets and ran
# 2.4x slower than the same streams staggered (a fused op's separate arrays rarely line up that way).
STREAM_STAGGER = 4096 + 64


def _stream_arrays(count: int, n: int) -> list[np.ndarray]:
    """``count`` float32 streams of ``n`` elements, each in its own array at its own offset, pages touched."""
    out = []
    for k in range(count):
        off = k * STREAM_STAGGER // 4
        out.append(np.ones(n + off, np.float32)[off:])
    return out


def stream_provider(streams: tuple[int, int, int], n: int, nt: bool = False) -> Callable[[], Any]:
    """The streaming bound's kernel for ``streams`` of ``n`` float32 elements, set up and ready to time.

    ``nt``: non-temporal stores into the write-only streams (skips reading the destination lines)."""
    import fastnorm
    from fastnorm._kernels.cpu._stream import stream

    r, u, w = streams
    reads, updates, writes = _stream_arrays(r, n), _stream_arrays(u, n), _stream_arrays(w, n)
    nt_ok = nt and all(a.ctypes.data % 16 == 0 for a in writes)
    threads = fastnorm.get_num_threads()
    return lambda: stream(reads, updates, writes, threads, nt_ok)


def stream_nbytes(streams: tuple[int, int, int], n: int) -> int:
    """Bytes the streaming kernel moves: each read-write stream counts twice."""
    r, u, w = streams
    return 4 * n * (r + 2 * u + w)


def stream_bound_gbps(streams: tuple[int, int, int], n: int, repeats: int = 7) -> float:
    """Bandwidth (GB/s, bytes read + written) of the streaming kernel with these streams: the faster of regular
    and non-temporal stores into the write-only streams (a bound for a kernel using either)."""
    variants = (False, True) if streams[2] else (False,)
    best = min(time_call(stream_provider(streams, n, nt), repeats=repeats) for nt in variants)
    return stream_nbytes(streams, n) / best / 1e9


def _stand_in(shape, dtype) -> np.ndarray:
    """A zero-memory array of ``shape`` and ``dtype`` (a name or a dtype): an input as a declaration reads it."""
    dt = np_dtype(dtype) if isinstance(dtype, str) else np.dtype(dtype)
    return np.broadcast_to(np.zeros((), dt), shape)


def declared_bytes(op: str, kwargs: dict) -> int:
    """The bytes registered op ``op`` moves in the call ``op(**kwargs)``, by its declaration (``kwargs`` may hold
    zero-memory stand-ins of the arrays)."""
    import fastnorm
    from fastnorm._spec import REGISTRY

    return REGISTRY[op].moved_by_call(getattr(fastnorm, op), kwargs)


def declared_case(op: str, label: str, make, inputs: dict, args, providers, streams, stream_len, **kw) -> Case:
    """The case of registered op ``op`` called as ``op(**args(make(rng)))``; its bytes are the declaration's
    for that call on ``inputs``: what ``make`` builds, by name, ``(shape, dtype)`` for an array, other values
    (None, ints) as they are."""
    like = {k: _stand_in(*v) if isinstance(v, tuple) else v for k, v in inputs.items()}
    return Case(op, label, make, providers, declared_bytes(op, args(like)), streams, stream_len, args=args, **kw)


def op_providers(op: str, kwargs: Callable[[dict], dict]) -> dict[str, Provider]:
    """The ``fastnorm``, ``fastnorm out=`` and ``numpy`` providers of a registered op, from its declaration.

    ``kwargs(inputs)`` gives the public call's keyword arguments from the case's inputs (the reference takes
    the same ones). The ``out=`` buffers have the declared output shapes and dtypes, placed by the input
    alignment in force (``_placement.placing``)."""
    import fastnorm
    from fastnorm._spec import REGISTRY

    spec, fn = REGISTRY[op], getattr(fastnorm, op)

    def fast(s):
        kw = kwargs(s)
        return lambda: fn(**kw)

    def fast_out(s):
        kw = kwargs(s)
        out = tuple(None if o is None else empty(o[1], o[2]) for o in spec.layout_of_call(fn, kw))
        return lambda: fn(**kw, out=out)

    def numpy(s):
        kw = kwargs(s)
        return lambda: spec.reference(**kw)

    return {"fastnorm": fast, "fastnorm out=": fast_out, "numpy": numpy}
