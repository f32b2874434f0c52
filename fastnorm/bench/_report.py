"""The roofline report: every case, every provider, GB/s, fraction of the same-run streaming bound, speed-ups."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import statistics
import sys
import time

import numpy as np

from ._core import all_cases, short_dtype, stream_nbytes, stream_provider, torch_or_none
from ._placement import check_alignment, page_offsets, place, placing
from ._rounds import Rounds, Timed, prepare, run_rounds, sample

# a case whose bound moved more than this across one sample (faster / slower - 1 of its stream samples) is flagged
DRIFT = 0.2


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


def _stream_timed(case, repeats: int, clock) -> tuple[bool, Timed]:
    """The stream kernel for ``case``'s bound, ready to sample: of regular and non-temporal stores into the
    write-only streams, the faster over three samples each (a bound for a kernel using either)."""
    best = None
    for nt in (False, True) if case.streams[2] else (False,):
        t = prepare(stream_provider(case.streams, case.stream_len, nt), repeats=repeats, clock=clock)
        s = statistics.median(sample(t, clock) for _ in range(3))
        if best is None or s < best[0]:
            best = (s, nt, t)
    return best[1], best[2]


def _alloc_partner(pname: str) -> str | None:
    """The ``out=`` provider an allocating fastnorm provider is set against (``fastnorm@avx2`` ->
    ``fastnorm out=@avx2``, ``fastnorm [page]`` -> ``fastnorm out= [page]``), or None."""
    if not pname.startswith("fastnorm") or "out=" in pname:
        return None
    return "fastnorm out=" + pname[len("fastnorm") :]


def _split_alignment(pname: str, alignment: str) -> tuple[str, str]:
    """``"torch [page]"`` -> ``("torch", "page")``; a name without a placement is on ``alignment``'s inputs."""
    if pname.endswith("]") and " [" in pname:
        base, _, placed = pname[:-1].rpartition(" [")
        return base, placed
    return pname, alignment


def _case_rows(case, rounds: Rounds, stream_bytes: int, drift: float, alignment: str) -> tuple[list[dict], dict]:
    """The report rows of a case's timed providers, and the case's own record (bound, spread, alloc/out)."""
    bounds = rounds.bounds(stream_bytes)
    bw = rounds.stream_bandwidths(stream_bytes)
    moved = rounds.moved(stream_bytes)
    bound = dict(
        bound_gbps=statistics.median(bounds) / 1e9,
        bound_min_gbps=min(bw) / 1e9,
        bound_max_gbps=max(bw) / 1e9,
        bound_moved=moved,
        bound_drift=moved > drift,
    )
    rows, alloc = [], {}
    for pname in rounds.times:
        t = rounds.median_time(pname)
        fracs = rounds.fracs(pname, case.nbytes, stream_bytes)
        base, placed = _split_alignment(pname, alignment)
        row = dict(op=case.op, label=case.label, dtype=case.dtype, provider=pname, alignment=placed, ms=t * 1e3)
        row |= dict(gbps=case.nbytes / t / 1e9, **bound, frac=statistics.median(fracs))
        row |= dict(frac_range=[min(fracs), max(fracs)], rounds=len(fracs))
        if pname.startswith("fastnorm"):
            split = {p: _split_alignment(p, alignment) for p in rounds.times}
            others = [p for p, (b, a) in split.items() if a == placed and not b.startswith("fastnorm")]
            if base in _TARGETED:
                others += [p for p, (b, a) in split.items() if a == placed and b.startswith(base + "@")]
            others += [p for p, (b, a) in split.items() if b == base and a != placed]
            row["speedup"] = {p: rounds.ratio(p, pname) for p in others}
            partner = _alloc_partner(pname)
            if partner in rounds.times:
                row["alloc_over_out"] = alloc[pname] = rounds.ratio(pname, partner)
        rows.append(row)
    record = dict(op=case.op, label=case.label, dtype=case.dtype, nbytes=case.nbytes, streams=list(case.streams))
    record |= dict(stream_len=case.stream_len, stream_bytes=stream_bytes, stream_gbps=[b / 1e9 for b in bw])
    record |= dict(bound, rounds=max(map(len, rounds.times.values()), default=0), alloc_over_out=alloc)
    return rows, record


def run_report(
    quick: bool = False,
    ops: list[str] | None = None,
    repeats: int = 7,
    progress: bool = True,
    seed: int = 0,
    compare_targets: bool = False,
    dtypes: list[str] | None = None,
    alignment: str = "numpy",
    drift: float = DRIFT,
    compare_alignments: list[str] | None = None,
    clock=time.perf_counter,
) -> dict:
    """Run every case (whose op name contains one of ``ops``, if given); return the report as a dict.

    Each case runs in rounds (``_rounds``): the streaming kernel with the case's streams, then each provider
    once, with a stream sample before the first and after every provider sample, so every provider sample is
    bracketed by stream samples taken just before and after it. Rows: one per (case, provider) with ms (median
    over rounds), GB/s (the case's minimal bytes / ms), bound_gbps (median of the samples' bounds),
    bound_min_gbps / bound_max_gbps (the case's stream samples), bound_moved (the largest faster / slower - 1 of
    a bracketing pair), bound_drift (moved more than ``drift``), frac (median over the provider's samples of
    bytes / time / that sample's bound), frac_range, rounds. fastnorm rows also carry ``speedup``:
    provider -> median same-round time(provider) / time(fastnorm), and the allocating ones ``alloc_over_out``:
    median same-round time(allocating) / time(``out=``). With ``compare_targets``, each case also runs
    fastnorm on every other ISA target this CPU runs (providers ``fastnorm@<target>`` and
    ``fastnorm out=@<target>``, in the same rounds), and the fastnorm and fastnorm out= rows' speedups include
    them: the selected target's gain over, e.g., the baseline build.

    ``alignment`` (``_placement``): ``numpy`` times the inputs as the case builds them; ``64`` and ``page``
    time copies of the same values placed 64 bytes past a page / on a page, with ``out=`` buffers alike. Each
    of ``compare_alignments`` adds every provider again on inputs placed that way (``<provider> [<alignment>]``,
    in the same rounds: an A/B of the placement), and each fastnorm row's speedups include its own provider
    on the other placements. Every row carries ``alignment``. ``report["cases"]`` has one record per case:
    its stream samples, bound, spread, drift flag, the inputs' offsets past a page per alignment and the
    alloc/out ratios.

    ``dtypes`` keeps only the cases of those data dtypes (``float32``, ``bfloat16``, ``float16``). Every row
    carries ``dtype``; a provider that cannot run its case on this build (``Case.skip_reason``: a 16-bit case
    whose op raises TypeError for the dtype, or ``Unsupported``) gives a row with ``skipped`` (the reason)
    and no timings.
    """
    from fastnorm._kernels import cpu as kernels

    alignments = [check_alignment(alignment)]
    alignments += [a for a in map(check_alignment, compare_alignments or ()) if a not in alignments]
    targets = [t for t in kernels.runnable_targets() if t != kernels.TARGET] if compare_targets else []
    cases = [
        c for c in all_cases(quick) if (not ops or any(o in c.op for o in ops)) and (not dtypes or c.dtype in dtypes)
    ]
    rng = np.random.default_rng(seed)
    rows, records = [], []
    stream_key, stream = None, None
    for i, case in enumerate(cases):
        key = (case.streams, case.stream_len)
        if key != stream_key:
            stream = None  # free the last streams' arrays first
            _progress(f"[{i}/{len(cases)}] streaming kernel {case.streams} x {case.stream_len}", progress)
            stream, stream_key = _stream_timed(case, repeats, clock), key
        nt, stream_t = stream
        raw = case.make_inputs(rng)
        placed = {a: place(raw, a) for a in alignments}
        del raw
        timed, skipped = {}, {}
        for a in alignments:
            with placing(a):
                for pname, factory in _with_targets(case, targets).items():
                    name = pname if a == alignment else f"{pname} [{a}]"
                    _progress(f"[{i}/{len(cases)}] {case.name} {name}: warm-up", progress)
                    target = pname.partition("@")[2]
                    ctx = functools.partial(kernels.use_target, target) if target else contextlib.nullcontext
                    try:
                        with ctx():
                            fn = factory(placed[a])
                        timed[name] = prepare(fn, repeats=repeats, clock=clock, context=ctx)
                    except Exception as e:
                        reason = case.skip_reason(e)
                        if reason is None:
                            raise
                        skipped[name] = reason
        n = max((t.rounds for t in timed.values()), default=0)
        _progress(f"[{i}/{len(cases)}] {case.name}: {len(timed)} providers x {n} rounds", progress)
        rounds = run_rounds(stream_t, timed, clock)
        offsets = {a: page_offsets(v) for a, v in placed.items()}
        del placed, timed
        for pname, reason in skipped.items():
            rows.append(dict(op=case.op, label=case.label, dtype=case.dtype, provider=pname, skipped=reason))
        if rounds.times:
            case_rows, record = _case_rows(case, rounds, stream_nbytes(case.streams, case.stream_len), drift, alignment)
            rows += case_rows
            record |= dict(stream_nt=nt, alignment=alignment, compare_alignments=alignments[1:])
            records.append(record | dict(input_offsets=offsets))
    _progress("", progress)
    return {
        "machine": machine_info(),
        "quick": quick,
        "repeats": repeats,
        "alignment": alignment,
        "compare_alignments": alignments[1:],
        "bound_method": "interleaved",
        "drift_threshold": drift,
        "rows": rows,
        "cases": records,
    }


_ALIGNMENT_TEXT = {
    "numpy": "as NumPy allocates them (large arrays 16 bytes past a page: what a NumPy user gets)",
    "64": "copies of the same values 64 bytes past a page (64-byte aligned, as torch places large tensors)",
    "page": "copies of the same values on a page boundary (as fastnorm's pooled outputs)",
}


def _method_lines(report: dict) -> list[str]:
    if report.get("bound_method") != "interleaved":  # a report from before the interleaved bound
        return [
            "times: median of repeats; GB/s = minimal bytes / time; bound = same-run streaming kernel with the "
            "same read/write streams; speed-up = other's time / fastnorm's time"
        ]
    alignment = report.get("alignment", "numpy")
    return [
        "times: median over rounds; GB/s = minimal bytes / median time; each case runs in rounds, every provider "
        "sample between two samples of the streaming kernel with the case's read/write streams",
        "bound = median of the samples' bounds (the stream samples just before and after each); %bound = "
        "median over samples of (bytes / time) / that sample's own bound (so not GB/s / bound)",
        f"moved = largest faster / slower - 1 of two stream samples around one sample; '!' = moved more than "
        f"{100 * report.get('drift_threshold', DRIFT):.0f}%: the bound changed during the case, its %bound is "
        "doubtful",
        "alloc/out = median same-round time(fastnorm allocating) / time(fastnorm out=); speed-up = median "
        "same-round other's time / fastnorm's time",
        f"input alignment: {alignment}: inputs {_ALIGNMENT_TEXT.get(alignment, alignment)}; out= buffers alike",
        *(
            f"'[{a}]' rows: the same providers in the same rounds on inputs {_ALIGNMENT_TEXT.get(a, a)}"
            for a in report.get("compare_alignments", [])
        ),
    ]


def format_table(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"fastnorm {m['fastnorm']} on {m['cpu']} ({m['logical_cpus']} logical CPUs), {m['threads']} threads, "
        f"OpenMP {'on' if m['openmp'] else 'OFF'}, numpy {m['numpy']}, torch {m['torch'] or 'not installed'}",
        f"CPU kernels: {m.get('cpu_target', '?')} target (built: {', '.join(m.get('cpu_targets_built', []))}; "
        f"this CPU runs: {', '.join(m.get('cpu_targets_runnable', []))}), "
        f"{'portable' if m.get('portable_build') else 'source'} build",
        *_method_lines(report),
        "",
        "16-bit rows: bytes and bound counted in 16-bit items (statistics float32); skipped: the provider "
        "cannot run the case on this build (reason given)",
        "",
        f"{'op':<28} {'shape':<22} {'dtype':<5} {'provider':<22} {'ms':>8} {'GB/s':>7} {'bound':>6} {'%bound':>7}"
        f" {'moved':>6} {'alloc/out':>9}  speed-up",
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
        moved = f"{100 * r['bound_moved']:.0f}%{'!' if r['bound_drift'] else ''}" if "bound_moved" in r else ""
        alloc = f"{r['alloc_over_out']:.2f}x" if "alloc_over_out" in r else ""
        lines.append(
            f"{op:<28} {label:<22} {dt:<5} {r['provider']:<22} {r['ms']:>8.3f} {r['gbps']:>7.2f} "
            f"{r['bound_gbps']:>6.1f} {100 * r['frac']:>6.1f}% {moved:>6} {alloc:>9}  {sp}"
        )
    flagged = [f"{c['op']} {c['label']} {short_dtype(c['dtype'])}" for c in report.get("cases", []) if c["bound_drift"]]
    if flagged:
        lines += ["", f"bound moved more than the threshold during {len(flagged)} case(s): " + "; ".join(flagged)]
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
