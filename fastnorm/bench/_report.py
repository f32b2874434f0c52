"""The roofline report: every case, every provider, GB/s, fraction of the same-run streaming bound, speed-ups."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time

import numpy as np

from ._core import all_cases, short_dtype, stream_bound_gbps, time_call, torch_or_none


def machine_info() -> dict:
    import fastnorm
    from fastnorm._config import cpu_model
    from fastnorm._kernels import cpu as kernels
    from fastnorm._kernels.cpu import _runtime

    torch = torch_or_none()
    return {
        "cpu": cpu_model(),
        "cpu_target": kernels.TARGET,
        "cpu_targets_built": list(kernels.BUILT_TARGETS),
        "cpu_targets_runnable": list(kernels.runnable_targets()),
        "logical_cpus": os.cpu_count(),
        "threads": fastnorm.get_num_threads(),
        "openmp": fastnorm.openmp_enabled(),
        "portable_build": _runtime.portable_build(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "fastnorm": fastnorm.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def _progress(msg: str, enabled: bool) -> None:
    if enabled:
        sys.stderr.write("\r\033[K" + msg)
        sys.stderr.flush()


_TARGETED = ("fastnorm", "fastnorm out=")  # the providers timed again on each other target


def _with_targets(case, targets):
    """The case's providers plus ``<provider>@<target>`` for the fastnorm calls (allocating, and ``out=`` where
    the case has it: the kernel alone, without the fresh-page faults that make allocating calls at DRAM sizes
    vary from call to call) on each other target."""
    extra = {f"{p}@{t}": case.providers[p] for p in _TARGETED if p in case.providers for t in targets}
    return {**case.providers, **extra}


def run_report(
    quick: bool = False,
    ops: list[str] | None = None,
    repeats: int = 7,
    progress: bool = True,
    seed: int = 0,
    compare_targets: bool = False,
    dtypes: list[str] | None = None,
) -> dict:
    """Run every case (whose op name contains one of ``ops``, if given); return the report as a dict.

    Rows: one per (case, provider) with ms, GB/s (the case's minimal bytes / time), bound_gbps (the streaming
    kernel with the case's streams, measured just before the case) and frac (GB/s / bound). fastnorm rows
    also carry ``speedup``: provider -> time(provider) / time(fastnorm). With ``compare_targets``, each case
    also runs fastnorm on every other ISA target this CPU runs (providers ``fastnorm@<target>`` and
    ``fastnorm out=@<target>``, timed side by side in this process), and the fastnorm and fastnorm out= rows'
    speedups include them: the selected target's gain over, e.g., the baseline build.

    ``dtypes`` keeps only the cases of those data dtypes (``float32``, ``bfloat16``, ``float16``). Every row
    carries ``dtype``; a provider that cannot run its case on this build (``Case.skip_reason``: a 16-bit case
    whose op raises TypeError for the dtype, or ``Unsupported``) gives a row with ``skipped`` (the reason)
    and no timings.
    """
    from fastnorm._kernels import cpu as kernels

    targets = [t for t in kernels.runnable_targets() if t != kernels.TARGET] if compare_targets else []
    cases = [
        c for c in all_cases(quick) if (not ops or any(o in c.op for o in ops)) and (not dtypes or c.dtype in dtypes)
    ]
    rng = np.random.default_rng(seed)
    rows = []
    bounds: dict = {}
    total = sum(len(_with_targets(c, targets)) for c in cases)
    done = 0
    for case in cases:
        key = (case.streams, case.stream_len)
        if key not in bounds:
            _progress(f"[{done}/{total}] streaming bound {case.streams} x {case.stream_len}", progress)
            bounds[key] = stream_bound_gbps(case.streams, case.stream_len, repeats=repeats)
        bound = bounds[key]
        inputs = case.make_inputs(rng)
        times, skipped = {}, {}
        for pname, factory in _with_targets(case, targets).items():
            done += 1
            _progress(f"[{done}/{total}] {case.name} {pname}", progress)
            target = pname.partition("@")[2]
            with kernels.use_target(target) if target else contextlib.nullcontext():
                try:
                    times[pname] = time_call(factory(inputs), repeats=repeats)
                except Exception as e:
                    reason = case.skip_reason(e)
                    if reason is None:
                        raise
                    skipped[pname] = reason
        del inputs
        for pname, reason in skipped.items():
            rows.append(dict(op=case.op, label=case.label, dtype=case.dtype, provider=pname, skipped=reason))
        for pname, t in times.items():
            gbps = case.nbytes / t / 1e9
            row = dict(
                op=case.op,
                label=case.label,
                dtype=case.dtype,
                provider=pname,
                ms=t * 1e3,
                gbps=gbps,
                bound_gbps=bound,
                frac=gbps / bound,
            )
            if pname.startswith("fastnorm"):
                row["speedup"] = {p: tp / t for p, tp in times.items() if not p.startswith("fastnorm")}
                if pname in _TARGETED:
                    row["speedup"].update({p: tp / t for p, tp in times.items() if p.startswith(pname + "@")})
            rows.append(row)
    _progress("", progress)
    return {"machine": machine_info(), "quick": quick, "repeats": repeats, "rows": rows}


def format_table(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"fastnorm {m['fastnorm']} on {m['cpu']} ({m['logical_cpus']} logical CPUs), {m['threads']} threads, "
        f"OpenMP {'on' if m['openmp'] else 'OFF'}, numpy {m['numpy']}, torch {m['torch'] or 'not installed'}",
        f"CPU kernels: {m.get('cpu_target', '?')} target (built: {', '.join(m.get('cpu_targets_built', []))}; "
        f"this CPU runs: {', '.join(m.get('cpu_targets_runnable', []))}), "
        f"{'portable' if m.get('portable_build') else 'source'} build",
        "times: median of repeats; GB/s = minimal bytes / time; bound = same-run streaming kernel with the "
        "same read/write streams; speed-up = other's time / fastnorm's time",
        "",
        "16-bit rows: bytes and bound counted in 16-bit items (statistics float32); skipped: the provider "
        "cannot run the case on this build (reason given)",
        "",
        f"{'op':<28} {'shape':<22} {'dtype':<5} {'provider':<22} {'ms':>8} {'GB/s':>7} {'bound':>6} {'%bound':>7}"
        "  speed-up",
    ]
    prev = None
    for r in report["rows"]:
        dtype = r.get("dtype", "float32")
        name = (r["op"], r["label"], dtype)
        if prev is not None and name != prev:
            lines.append("")
        op, label, dt = (r["op"], r["label"], short_dtype(dtype)) if name != prev else ("", "", "")
        prev = name
        if "skipped" in r:
            lines.append(f"{op:<28} {label:<22} {dt:<5} {r['provider']:<22} skipped: {r['skipped']}")
            continue
        sp = ", ".join(f"{p} {v:.2f}x" for p, v in r.get("speedup", {}).items())
        lines.append(
            f"{op:<28} {label:<22} {dt:<5} {r['provider']:<22} {r['ms']:>8.3f} {r['gbps']:>7.2f} "
            f"{r['bound_gbps']:>6.1f} {100 * r['frac']:>6.1f}%  {sp}"
        )
    return "\n".join(lines)


def plot_report(report: dict, path: str) -> None:
    """Horizontal bars: fraction of the streaming bound per case and provider (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in report["rows"] if "skipped" not in r]

    def key(r):
        return f"{r['op']} {r['label']} {short_dtype(r.get('dtype', 'float32'))}"

    names = list(dict.fromkeys(key(r) for r in timed))
    providers = list(dict.fromkeys(r["provider"] for r in timed))
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(names) * max(1, len(providers)) / 2 + 1.5))
    h = 0.8 / len(providers)
    for k, p in enumerate(providers):
        vals = {key(r): r["frac"] for r in timed if r["provider"] == p}
        ys = [i + k * h for i in range(len(names))]
        ax.barh(ys, [100 * vals.get(n, 0.0) for n in names], height=h, label=p)
    ax.set_yticks([i + 0.4 - h / 2 for i in range(len(names))])
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("% of the same-run streaming bound")
    m = report["machine"]
    ax.set_title(f"fastnorm vs NumPy / torch, {m['threads']} threads, {m['cpu']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
