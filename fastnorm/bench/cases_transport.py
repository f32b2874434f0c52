"""Benchmark cases: optimal transport. ``wasserstein_1d`` on 10^6 samples per side against SciPy's
``wasserstein_distance``, and log-domain Sinkhorn against the NumPy log-domain loop (POT's ``sinkhorn_log``
re-derived in ``fastnorm.reference``), float64.

Sinkhorn runs a fixed number of iterations (``tol=0``) so both sides do the same work. The bytes are the
declarations' (``fastnorm.transport``): Sinkhorn's iterations each read the cost matrix once per half-step
(the u-update reads C, the v-update C^T), 16 bytes per entry per iteration in float64; the bound is a
read-only stream over one matrix (it stays in the cache that a real iteration also reads from, when it fits).
wasserstein_1d: its inputs read once, its outputs written (the sort is the real work: it is O(n log n), not a
stream; the %bound is not meaningful there).
"""

from __future__ import annotations

import numpy as np

import fastnorm
from fastnorm import reference as R

from ._core import Case, declared_case

SINKHORN_ITERS = 100
REG = 1e-2


def _scipy():
    try:
        import scipy.stats

        return scipy.stats
    except ImportError:
        return None


# ------------------------------------------------------------------------------------- wasserstein_1d
def _w1_inputs(n, weighted):
    def make(rng):
        s = {"u": rng.standard_normal(n), "v": rng.standard_normal(n) * 1.3 + 0.2}
        if weighted:
            s["uw"], s["vw"] = rng.random(n), rng.random(n)
        else:
            s["uw"] = s["vw"] = None
        return s

    return make


_ARGS = {
    "wasserstein_1d": lambda s: dict(u_values=s["u"], v_values=s["v"], u_weights=s["uw"], v_weights=s["vw"]),
    "wasserstein_1d_backward": lambda s: dict(grad=np.float64(1.0), u_values=s["u"], v_values=s["v"],
                                              u_weights=s["uw"], v_weights=s["vw"]),
    "sinkhorn": lambda s: dict(a=s["a"], b=s["b"], cost=s["c"], reg=REG, max_iter=SINKHORN_ITERS, tol=0.0),
}  # fmt: skip


def _fn(op: str):
    """fastnorm's call of ``op`` in ``_ARGS``."""

    def provider(s):
        kw, fn = _ARGS[op](s), getattr(fastnorm, op)
        return lambda: fn(**kw)

    return provider


def _scipy_w1(s):
    ss = _scipy()
    return lambda: ss.wasserstein_distance(s["u"], s["v"], s["uw"], s["vw"])


# ------------------------------------------------------------------------------------------- sinkhorn
def _sk_inputs(lead, n, m):
    def make(rng):
        a = rng.random(lead + (n,)) + 0.1
        b = rng.random(lead + (m,)) + 0.1
        return {
            "a": a / a.sum(-1, keepdims=True),
            "b": b / b.sum(-1, keepdims=True),
            "c": rng.random(lead + (n, m)),
        }

    return make


def _np_sk(s):
    return lambda: R.sinkhorn(s["a"], s["b"], s["c"], REG, max_iter=SINKHORN_ITERS, tol=0.0)


def cases(quick: bool) -> list[Case]:
    out = []
    n = 10**5 if quick else 10**6
    samples = (n, np.float64)
    for weighted in (False, True):
        providers = {"fastnorm": _fn("wasserstein_1d")}
        if _scipy() is not None:
            providers["scipy"] = _scipy_w1
        label = f"{n} vs {n}" + (" weighted" if weighted else "")
        inputs = dict(u=samples, v=samples, uw=samples if weighted else None, vw=samples if weighted else None)
        make, args = _w1_inputs(n, weighted), _ARGS["wasserstein_1d"]
        w1 = declared_case("wasserstein_1d", label, make, inputs, args, providers, (1, 0, 0), 1, tags=("transport",))
        w1.stream_len = w1.nbytes // 4  # the bound reads the case's bytes
        out.append(w1)
    inputs = dict(u=samples, v=samples, uw=None, vw=None)
    make, args = _w1_inputs(n, False), _ARGS["wasserstein_1d_backward"]
    provider = {"fastnorm": _fn("wasserstein_1d_backward")}
    out.append(declared_case("wasserstein_1d_backward", f"{n} vs {n}", make, inputs, args, provider, (1, 0, 1), 4 * n,
                             tags=("transport",)))  # fmt: skip
    shapes = [((), 300, 300)] if quick else [((), 1000, 1000), ((16,), 200, 200)]
    for lead, nn, mm in shapes:
        inputs = dict(a=(lead + (nn,), np.float64), b=(lead + (mm,), np.float64))
        inputs["c"] = (lead + (nn, mm), np.float64)
        label, make = f"{lead + (nn, mm)} x {SINKHORN_ITERS} it", _sk_inputs(lead, nn, mm)
        providers = {"fastnorm": _fn("sinkhorn"), "numpy": _np_sk}
        entries = int(np.prod(lead, dtype=np.int64)) * nn * mm
        out.append(declared_case("sinkhorn", label, make, inputs, _ARGS["sinkhorn"], providers, (1, 0, 0), 2 * entries,
                                 tags=("transport",)))  # fmt: skip
    return out
