"""Benchmark cases: fused softmax cross-entropy forward + backward, KL and JS forward + backward, entropy;
float32 (M, V) rows. Also ``peak_memory_report()``: the extra peak memory of one cross-entropy forward +
backward, fastnorm's and torch's, from the peak RSS of a fresh process per provider; and ``side_by_side()``
(``python -m fastnorm.bench.cases_divergence [--quick] [--threads 2]``): the issue-15 targets measured in one
process, each provider's calls interleaved with the others' (medians of repeats, ratios), with the CPU
model and the load average, for machines shared with other work.

Bytes moved by a perfect fused kernel: cross-entropy fwd+bwd reads the logits once and writes the gradient
once (8 bytes per element; in place the same bytes in one read-write stream); KL/JS fwd+bwd read input and
target and write the input's gradient (12 bytes per element); entropy reads p (4 bytes per element).
"""

from __future__ import annotations

import numpy as np

import fastnorm
from fastnorm import reference as R

from ._core import Case, declared_case, op_providers, torch_or_none
from ._placement import empty_like

CE_FULL = [(8192, 32000)]
CE_QUICK = [(1024, 32000)]
DIV_FULL = [(4096, 32000)]
DIV_QUICK = [(1024, 8192)]


def _ce_inputs(m, v):
    def make(rng):
        x = rng.standard_normal((m, v), dtype=np.float32)
        t = rng.integers(0, v, size=m)
        t[::17] = -100
        return dict(x=x, t=t)

    return make


def _div_inputs(m, v):
    def make(rng):
        a = rng.standard_normal((m, v), dtype=np.float32)
        b = rng.standard_normal((m, v), dtype=np.float32)
        x = a - np.log(np.exp(a).sum(1, keepdims=True))
        y = b - np.log(np.exp(b).sum(1, keepdims=True))
        return dict(x=x.astype(np.float32), y=y.astype(np.float32), p=np.exp(y).astype(np.float32))

    return make


# ------------------------------------------------------------------------------------------ cross-entropy
def _fn_ce(s):
    return lambda: fastnorm.softmax_cross_entropy_forward(s["x"], s["t"], grad="out")


def _fn_ce_out(s):
    g = empty_like(s["x"])
    return lambda: fastnorm.softmax_cross_entropy_forward(s["x"], s["t"], grad="out", out=(None, None, g))


def _fn_ce_inplace(s):
    # Overwrites its own copy of the logits with the gradient every call (the values stay in [-1, 1]).
    x = s["x"].copy()
    return lambda: fastnorm.softmax_cross_entropy_forward(x, s["t"], grad="inplace")


def _np_ce(s):
    def run():
        loss, _ = R.softmax_cross_entropy_forward(s["x"], s["t"])
        return loss, R.softmax_cross_entropy_backward(1.0, s["x"], s["t"])

    return run


def _torch_fwd_bwd(s, other: str, loss_fn):
    """torch's forward + backward of ``loss_fn(x, s[other])`` with x = s["x"] requiring grad."""
    torch = torch_or_none()
    x = torch.from_numpy(s["x"]).requires_grad_()
    y = torch.from_numpy(s[other])

    def run():
        x.grad = None
        loss = loss_fn(x, y)
        loss.backward()
        return loss

    return run


def _torch_ce(s):
    return _torch_fwd_bwd(s, "t", lambda x, t: torch_or_none().nn.functional.cross_entropy(x, t))


# ------------------------------------------------------------------------------------------ KL / JS / entropy
def _np_kl(s):
    def run():
        return (R.kl_div(s["x"], s["y"], reduction="batchmean", log_target=True),
                R.kl_div_backward(1.0, s["x"], s["y"], reduction="batchmean", log_target=True)[0])  # fmt: skip

    return run


def _torch_kl(s):
    kl = torch_or_none().nn.functional.kl_div
    return _torch_fwd_bwd(s, "y", lambda x, y: kl(x, y, reduction="batchmean", log_target=True))


def _np_js(s):
    return lambda: (R.js_div(s["x"], s["y"]), R.js_div_backward(1.0, s["x"], s["y"])[0])


def _torch_js(s):
    # torch has no JSD: the composed ops of fastnorm.torch.losses' fallback, with autograd.
    from fastnorm.torch.losses import _js_torch

    return _torch_fwd_bwd(s, "y", lambda x, y: _js_torch(x, y, None, 0.5, -100, "batchmean"))


def _np_entropy(s):
    return lambda: R.entropy(s["p"])


def _torch_entropy(s):
    torch = torch_or_none()
    p = torch.from_numpy(s["p"])

    def run():
        q = p / p.sum(-1, keepdim=True)
        return torch.special.entr(q).sum(-1)

    return run


def _providers(quick: bool, **p):
    # The NumPy references at the full shapes take ~10 s a call (several logits-sized temporaries): quick only.
    if not quick:
        p.pop("numpy", None)
    if torch_or_none() is None:
        p = {k: v for k, v in p.items() if not k.startswith("torch")}
    return p


# the fastnorm calls (the loss with its fused gradient) as keyword arguments: the cases' bytes are their
# declarations' (the in-place cross-entropy moves the bytes of grad="out": logits read, gradient written)
_ARGS = {
    "softmax_cross_entropy_forward": lambda s: dict(logits=s["x"], target=s["t"], grad="out"),
    "kl_div": lambda s: dict(input=s["x"], target=s["y"], reduction="batchmean", log_target=True, grad="out"),
    "js_div": lambda s: dict(input=s["x"], target=s["y"], beta=0.5, grad="out"),
    "entropy": lambda s: dict(p=s["p"]),
}


def _fn(op: str):
    """The ``fastnorm`` provider of ``op``: its call in ``_ARGS``."""
    return op_providers(op, _ARGS[op])["fastnorm"]


def cases(quick: bool) -> list[Case]:
    out = []
    for m, n in CE_QUICK if quick else CE_FULL:
        inputs = dict(x=((m, n), "float32"), t=(m, np.int64))
        out.append(declared_case("softmax_cross_entropy_forward", f"({m}, {n}) fwd+bwd", _ce_inputs(m, n), inputs,
                                 _ARGS["softmax_cross_entropy_forward"],
                                 _providers(quick, **{"fastnorm": _fn_ce, "fastnorm out=": _fn_ce_out,
                                                      "fastnorm inplace": _fn_ce_inplace, "numpy": _np_ce,
                                                      "torch": _torch_ce}), (1, 0, 1), m * n))  # fmt: skip
    for m, n in DIV_QUICK if quick else DIV_FULL:
        make, inputs = _div_inputs(m, n), {k: ((m, n), "float32") for k in ("x", "y", "p")}
        out += [
            declared_case("kl_div", f"({m}, {n}) fwd+bwd log_target", make, inputs, _ARGS["kl_div"],
                          _providers(quick, fastnorm=_fn("kl_div"), numpy=_np_kl, torch=_torch_kl), (2, 0, 1), m * n),
            declared_case("js_div", f"({m}, {n}) fwd+bwd beta=0.5", make, inputs, _ARGS["js_div"],
                          _providers(quick, fastnorm=_fn("js_div"), numpy=_np_js, torch=_torch_js), (2, 0, 1), m * n),
            declared_case("entropy", f"({m}, {n})", make, inputs, _ARGS["entropy"],
                          _providers(quick, fastnorm=_fn("entropy"), numpy=_np_entropy, torch=_torch_entropy),
                          (1, 0, 0), m * n),
        ]  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------ peak memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _peak_child(provider: str, m: int, v: int) -> int:
    """In a fresh process: how far the resident set size peaks above its level once the logits and targets
    exist (every page touched), over one cross-entropy forward + backward (bytes). Linux: the peak (VmHWM)
    is reset to the current RSS first (``/proc/self/clear_refs``), so earlier peaks (imports, input
    generation) do not hide the op's."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, v), dtype=np.float32)
    t = rng.integers(0, v, size=m)
    run = None
    if provider == "torch":
        torch = torch_or_none()
        xt = torch.from_numpy(x).requires_grad_()
        tt = torch.from_numpy(t)

        def run():
            torch.nn.functional.cross_entropy(xt, tt).backward()
    else:

        def run():
            fastnorm.softmax_cross_entropy_forward(x, t, grad=provider)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - before) * 1024


def peak_memory_report(m: int = 8192, v: int = 32000) -> dict:
    """Extra peak memory (bytes beyond the logits and targets) of one cross-entropy forward + backward, by
    the peak resident set size in a fresh process per provider (Linux): fastnorm grad="out" (a new gradient
    buffer), grad="inplace" (over the logits), torch ``F.cross_entropy(x, t).backward()``."""
    import subprocess
    import sys

    rep = {"shape": (m, v), "logits_bytes": 4 * m * v}
    for provider in ("out", "inplace", "torch"):
        code = f"from fastnorm.bench.cases_divergence import _peak_child; print(_peak_child({provider!r}, {m}, {v}))"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rep[provider] = int(r.stdout.strip().splitlines()[-1])
    return rep


# ------------------------------------------------------------------------------------- side by side
def _interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds per provider; one call of each per round (after one warm-up call each), so a change in
    the machine's load hits every provider alike."""
    import time

    for f in fns.values():
        f()
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def _side_by_side_cases(quick: bool) -> list:
    """(name, target ratio, baseline provider, the Case) for the issue-15 speed targets."""
    from . import cases_transport

    by_op: dict = {}
    for c in cases(quick) + cases_transport.cases(quick):
        by_op.setdefault(c.op, c)
    want = [("softmax_cross_entropy_forward", 2.0, "torch"), ("kl_div", 2.0, "torch"), ("js_div", 2.0, "torch"),
            ("wasserstein_1d", 1.0, "scipy"), ("sinkhorn", 3.0, "numpy")]  # fmt: skip
    return [(op, target, base, by_op[op]) for op, target, base in want if op in by_op]


def _one_thread(fn, threads: int):
    def run():
        fastnorm.set_num_threads(1)
        try:
            return fn()
        finally:
            fastnorm.set_num_threads(threads)

    return run


def side_by_side(quick: bool = False, threads: int = 2, repeats: int = 5, memory: bool = True, ops: tuple = ()) -> dict:
    """Time fastnorm against the issue's baselines side by side (``ops``: only ops containing one of these
    strings); returns a JSON-able report."""
    import os

    from fastnorm._config import cpu_model

    fastnorm.set_num_threads(threads)
    torch = torch_or_none()
    if torch is not None:
        torch.set_num_threads(threads)
    rep = {"cpu": cpu_model(), "threads": threads, "load_average_before": os.getloadavg(), "rows": []}
    rng = np.random.default_rng(0)
    for op, target, base, case in _side_by_side_cases(quick):
        if ops and not any(o in op for o in ops):
            continue
        s = case.make_inputs(rng)
        fns = {}
        for name, factory in case.providers.items():
            if name == "numpy" and base != "numpy":
                continue
            fns[name] = factory(s)
        if base not in fns:
            continue
        if op == "sinkhorn" and threads > 1:
            # one thread beside the others: the half-steps end in OpenMP barriers, which a machine shared with
            # other work turns into waits for a descheduled thread
            fns["fastnorm 1 thread"] = _one_thread(fns["fastnorm"], threads)
        t = _interleaved(fns, repeats)
        ratio = {k: t[base] / v for k, v in t.items() if k != base}
        rep["rows"].append(dict(op=op, label=case.label, baseline=base, target=target, seconds=t, speedup=ratio))
        del s, fns
    if memory and torch is not None:
        m, v = CE_QUICK[0] if quick else CE_FULL[0]
        rep["ce_peak_memory"] = peak_memory_report(m, v)
    rep["load_average_after"] = os.getloadavg()
    return rep


def format_side_by_side(rep: dict) -> str:
    la = ", ".join(f"{x:.1f}" for x in rep["load_average_before"])
    lines = [f"CPU: {rep['cpu']}; {rep['threads']} threads; load average before: {la}, after: "
             + ", ".join(f"{x:.1f}" for x in rep["load_average_after"])]  # fmt: skip
    for r in rep["rows"]:
        times = "  ".join(f"{k} {1e3 * v:.1f} ms" for k, v in r["seconds"].items())
        fast = max((v, k) for k, v in r["speedup"].items() if k.startswith("fastnorm"))
        lines.append(f"{r['op']} {r['label']}: {times}  -> best {fast[1]} {fast[0]:.2f}x {r['baseline']} "
                     f"(target {r['target']:g}x: {'met' if fast[0] >= r['target'] else 'MISSED'})")  # fmt: skip
    mem = rep.get("ce_peak_memory")
    if mem:
        mb = 1 << 20
        mib = {k: f"{mem[k] / mb:.0f} MiB" for k in ("logits_bytes", "out", "inplace", "torch")}
        lines.append(
            f"cross-entropy {mem['shape']} fwd+bwd extra peak RSS (logits {mib['logits_bytes']}): "
            f"fastnorm grad='out' {mib['out']}, grad='inplace' {mib['inplace']}, torch {mib['torch']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m fastnorm.bench.cases_divergence", description=side_by_side.__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--ops", nargs="*", default=(), help="only ops whose name contains one of these strings")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    report = side_by_side(a.quick, a.threads, a.repeats, not a.no_memory, tuple(a.ops))
    print(format_side_by_side(report))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
