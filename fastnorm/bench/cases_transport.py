"""Benchmark cases: optimal transport. ``wasserstein_1d`` on 10^6 samples per side against SciPy's
``wasserstein_distance``, and log-domain Sinkhorn against the NumPy log-domain loop (POT's ``sinkhorn_log``
re-derived in ``fastnorm.reference``), float64.

Sinkhorn runs a fixed number of iterations (``tol=0``) so both sides do the same work. Its minimal bytes:
each iteration reads the cost matrix once per half-step (the u-update reads C, the v-update C^T), 16 bytes
per entry per iteration in float64; the bound is a read-only stream over one matrix (it stays in the cache
that a real iteration also reads from, when it fits). wasserstein_1d's minimal bytes: read both sample
arrays once (the sort is the real work: it is O(n log n), not a stream; the %bound is not meaningful there).
"""

from __future__ import annotations

import numpy as np

import fastnorm
from fastnorm import reference as R

from ._core import Case

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


def _fn_w1(s):
    return lambda: fastnorm.wasserstein_1d(s["u"], s["v"], s["uw"], s["vw"])


def _scipy_w1(s):
    ss = _scipy()
    return lambda: ss.wasserstein_distance(s["u"], s["v"], s["uw"], s["vw"])


def _fn_w1_bwd(s):
    return lambda: fastnorm.wasserstein_1d_backward(np.float64(1.0), s["u"], s["v"], s["uw"], s["vw"])


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


def _fn_sk(s):
    return lambda: fastnorm.sinkhorn(s["a"], s["b"], s["c"], REG, max_iter=SINKHORN_ITERS, tol=0.0)


def _np_sk(s):
    return lambda: R.sinkhorn(s["a"], s["b"], s["c"], REG, max_iter=SINKHORN_ITERS, tol=0.0)


def cases(quick: bool) -> list[Case]:
    out = []
    n = 10**5 if quick else 10**6
    for weighted in (False, True):
        providers = {"fastnorm": _fn_w1}
        if _scipy() is not None:
            providers["scipy"] = _scipy_w1
        label = f"{n} vs {n}" + (" weighted" if weighted else "")
        nbytes = 8 * 2 * n * (2 if weighted else 1)
        out.append(
            Case(
                "wasserstein_1d",
                label,
                _w1_inputs(n, weighted),
                providers,
                nbytes,
                (1, 0, 0),
                nbytes // 4,
                tags=("transport",),
            )
        )
    out.append(
        Case(
            "wasserstein_1d_backward",
            f"{n} vs {n}",
            _w1_inputs(n, False),
            {"fastnorm": _fn_w1_bwd},
            8 * 4 * n,
            (1, 0, 1),
            4 * n,
            tags=("transport",),
        )
    )
    shapes = [((), 300, 300)] if quick else [((), 1000, 1000), ((16,), 200, 200)]
    for lead, nn, mm in shapes:
        entries = int(np.prod(lead, dtype=np.int64)) * nn * mm
        label = f"{lead + (nn, mm)} x {SINKHORN_ITERS} it"
        out.append(
            Case(
                "sinkhorn",
                label,
                _sk_inputs(lead, nn, mm),
                {"fastnorm": _fn_sk, "numpy": _np_sk},
                16 * entries * SINKHORN_ITERS,
                (1, 0, 0),
                2 * entries,
                tags=("transport",),
            )
        )
    return out
