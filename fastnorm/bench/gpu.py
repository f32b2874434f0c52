"""GPU benchmark behind ``python -m fastnorm.bench --device cuda``: CUDA-event timings of the CUDA kernels
against the same-run device-to-device copy bandwidth and against PyTorch's native CUDA ops.

Two timings per provider:

- ``gpu``: device time. A ``torch.cuda._sleep`` kernel holds the stream while the host queues the timed
  calls, so the events measure the calls back to back on the GPU, without host (Python, launch) overhead.
- ``e2e``: calls issued back to back with no such help: what a Python loop gets (host overhead included
  where it exceeds the kernel time).

GB/s = the op's minimal bytes (read once + written once) / time; ``%copy`` = GB/s / the same-run copy
bandwidth (``torch.Tensor.copy_`` between two device buffers, bytes read + written). Needs torch with CUDA
(the reference ops and the events); CuPy is not needed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from .gpu_timer import Timer, Timing, copy_gbps, profiler_kernel_ms

__all__ = [
    "GpuCase",
    "Timer",
    "Timing",
    "copy_gbps",
    "cuda_cases",
    "format_cuda_table",
    "profiler_kernel_ms",
    "run_cuda_report",
    "sweep",
]
EPS = 1e-5


@dataclass
class GpuCase:
    op: str
    label: str
    nbytes: int
    providers: dict  # name -> () -> zero-argument callable (set-up done by the factory)
    note: str = ""


# ------------------------------------------------------------------------------------------ cases
def _norm_cases(torch, m: int, n: int, dtype) -> list[GpuCase]:
    from numba import cuda

    import fastnorm

    F = torch.nn.functional
    tdt = {np.float32: torch.float32, np.float16: torch.float16}[dtype]
    it = np.dtype(dtype).itemsize
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(m, n, device="cuda", generator=g).to(tdt)
    w = (1 + 0.1 * torch.randn(n, device="cuda", generator=g)).to(tdt)
    b = torch.randn(n, device="cuda", generator=g).to(tdt)
    dy = torch.randn(m, n, device="cuda", generator=g).to(tdt)
    nx, nw, nb, ndy = (cuda.as_cuda_array(t) for t in (x, w, b, dy))
    y, mean, rstd = fastnorm.layer_norm_forward(nx, nw, nb, eps=EPS)
    _, rrstd = fastnorm.rms_norm_forward(nx, nw, eps=EPS)
    shape = [n]
    _, tmean, trstd = torch.ops.aten.native_layer_norm(x, shape, w, b, EPS)
    label = f"({m}, {n}) {np.dtype(dtype).name}"
    sd = 4  # statistics are float32 for float16 and float32 inputs

    def dev_like(a):
        return cuda.device_array(a.shape, a.dtype)

    def ln_fwd():
        out = (dev_like(nx), dev_like(mean), dev_like(rstd))
        return lambda: fastnorm.layer_norm_forward(nx, nw, nb, eps=EPS, out=out)

    def ln_fwd_torch_io():
        out = (torch.empty_like(x), torch.empty(m, device="cuda"), torch.empty(m, device="cuda"))
        return lambda: fastnorm.layer_norm_forward(x, w, b, eps=EPS, out=out)

    def ln_bwd():
        out = (dev_like(nx), dev_like(nw), dev_like(nb))
        return lambda: fastnorm.layer_norm_backward(ndy, nx, mean, rstd, nw, nb, out=out)

    def rms_fwd():
        out = (dev_like(nx), dev_like(rrstd))
        return lambda: fastnorm.rms_norm_forward(nx, nw, eps=EPS, out=out)

    def rms_bwd():
        out = (dev_like(nx), dev_like(nw))
        return lambda: fastnorm.rms_norm_backward(ndy, nx, rrstd, nw, out=out)

    def t_ln_fwd():
        return lambda: F.layer_norm(x, shape, w, b, EPS)

    def t_ln_bwd():
        mask = [True, True, True]
        return lambda: torch.ops.aten.native_layer_norm_backward(dy, x, shape, tmean, trstd, w, b, mask)

    def t_rms_fwd():
        return lambda: F.rms_norm(x, shape, w, EPS)

    def t_rms_bwd():
        # what a torch user gets: autograd through F.rms_norm (graph built once, outside the timing)
        xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
        yr = F.rms_norm(xr, shape, wr, EPS)
        return lambda: torch.autograd.grad(yr, (xr, wr), dy, retain_graph=True)

    mn = m * n
    fwd = it * (2 * mn + 2 * n) + sd * 2 * m
    bwd = it * (3 * mn + 3 * n) + sd * 2 * m
    return [
        GpuCase(
            "layer_norm_forward",
            label,
            fwd,
            {"fastnorm": ln_fwd, "fastnorm torch-io": ln_fwd_torch_io, "torch": t_ln_fwd},
        ),
        GpuCase("layer_norm_backward", label, bwd, {"fastnorm": ln_bwd, "torch": t_ln_bwd}),
        GpuCase("rms_norm_forward", label, fwd - it * n - sd * m, {"fastnorm": rms_fwd, "torch": t_rms_fwd}),
        GpuCase(
            "rms_norm_backward",
            label,
            bwd - 2 * it * n - sd * m,
            {"fastnorm": rms_bwd, "torch": t_rms_bwd},
            note="torch: autograd through F.rms_norm",
        ),
    ]


def _adam_case(torch, n_tensors: int, total: int) -> list[GpuCase]:
    """Adam over ``n_tensors`` float32 tensors of ``total`` elements together: fastnorm vs torch fused."""
    import fastnorm

    label = f"{n_tensors} tensors, {total / 1e6:.0f}M params fp32"
    nbytes = 28 * total  # read p, g, m, v; write p, m, v
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 2 * total // n_tensors, n_tensors)
    sizes = np.maximum(1, (sizes * (total / sizes.sum())).astype(np.int64))
    params = [torch.randn(int(s), device="cuda") for s in sizes]
    grads = [torch.randn_like(p) for p in params]

    def t_adam():
        ps = [p.clone().requires_grad_() for p in params]
        for p, g in zip(ps, grads, strict=True):
            p.grad = g
        opt = torch.optim.Adam(ps, lr=1e-3, fused=True)
        return opt.step

    def fn_adam_kernel():
        # what fastnorm.optim does per step on the GPU: the address table (built once here), the
        # per-tensor bias corrections, one launch of the multi-tensor kernel
        from fastnorm._kernels.cuda import optim as O

        ps = [p.clone() for p in params]
        ms = [torch.zeros_like(p) for p in params]
        vs = [torch.zeros_like(p) for p in params]
        info = np.empty((3, len(ps)), np.int64)
        assert O.gather_params(ps, info) == -1
        tab = np.zeros((5, len(ps)), np.intp)
        tab[0] = info[0]
        no = np.zeros(0, np.int64)
        for r, arrs in ((1, grads), (2, ms), (3, vs)):
            assert O.gather_like(arrs, ps, tab[r], r > 1, False, no, no) == -1
        off = np.zeros(len(ps) + 1, np.int64)
        np.cumsum(info[1], out=off[1:])
        state = {"step": 0, "keep": (ps, ms, vs)}

        def step():
            state["step"] += 1
            t = state["step"]
            pt = np.tile([1e-3 / (1 - 0.9**t), np.sqrt(1 - 0.999**t)], (len(ps), 1))
            O.adam_step(tab, off, pt, 0.9, 0.999, 1e-8, 0.0, 1.0, False, False, False, 1)

        return step

    providers = {"fastnorm kernel": fn_adam_kernel, "torch fused": t_adam}
    note = "fastnorm kernel: the CUDA adam_step launcher on a prebuilt address table"
    optim = getattr(fastnorm, "optim", None)
    if optim is not None and hasattr(optim, "Adam"):

        def fn_adam():
            ps = [p.clone() for p in params]
            opt = optim.Adam(ps, lr=1e-3)
            return lambda: opt.step(grads)

        providers = {"fastnorm": fn_adam, **providers}
    return [GpuCase("adam_step", label, nbytes, providers, note=note)]


def cuda_cases(torch, quick: bool, shapes: list | None = None, adam_total: int | None = None) -> list[GpuCase]:
    """The GPU cases: norms at ``shapes`` ((M, N, dtype) triples; a default list if None), Adam over 200
    tensors of ``adam_total`` elements together (0: no Adam case)."""
    if shapes is None:
        shapes = [(16384, 4096, np.float32), (4096, 1024, np.float32)]
        if not quick:
            shapes += [(16384, 4096, np.float16), (8192, 768, np.float32), (65536, 256, np.float32)]
    out = []
    for m, n, dt in shapes:
        out += _norm_cases(torch, m, n, dt)
    if adam_total is None:
        adam_total = 20_000_000 if quick else 100_000_000
    if adam_total:
        out += _adam_case(torch, 200, adam_total)
    return out


# ------------------------------------------------------------------------------------------ knob sweep
def sweep(torch, timer: Timer, repeats: int) -> list[dict]:
    """LayerNorm fwd/bwd at (16384, 4096) float32 under other launch shapes (device time), to tune the
    defaults on real hardware. Each setting compiles its own kernels."""
    import fastnorm
    from fastnorm._kernels.cuda import _common as C
    from fastnorm._kernels.cuda import layer_norm as L

    m, n = 16384, 4096
    cases = {c.op: c for c in _norm_cases(torch, m, n, np.float32)}
    settings = [
        ("default", {}),
        ("FWD_VPT=4", {"FWD_VPT": 4}),
        ("FWD_VPT=16", {"FWD_VPT": 16}),
        ("BWD_VPT=4", {"BWD_VPT": 4}),
        ("BWD_VPT=16", {"BWD_VPT": 16}),
        ("BWD_WAVES=2", {"BWD_WAVES": 2}),
        ("one-row forward (not persistent)", {"FWD_PERSIST": False}),
        ("scalar rows (no 128-bit accesses)", {"FWD_VEC": False, "BWD_VEC": False}),
        ("shared-memory reductions", {"USE_SHUFFLE": False}),
    ]
    rows = []
    for name, knobs in settings:
        saved = {}
        for k, v in knobs.items():
            mod = C if k == "USE_SHUFFLE" else L
            saved[(mod, k)] = getattr(mod, k)
            setattr(mod, k, v)
        C._cache.clear()
        L._plans.clear()  # (the launch plans hold the kernels their launch shapes picked)
        try:
            for op in ("layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward"):
                c = cases[op]
                try:
                    t = timer(c.providers["fastnorm"](), repeats=repeats)
                    ms = t.median_ms
                    rows.append(
                        dict(
                            setting=name,
                            op=op,
                            label=c.label,
                            ms=ms,
                            min_ms=t.min_ms,
                            valid=t.valid,
                            gbps=c.nbytes / ms / 1e6,
                        )
                    )
                except Exception as e:  # a setting that cannot launch is a finding, not a crash
                    rows.append(dict(setting=name, op=op, label=c.label, error=f"{type(e).__name__}: {e}"))
                print(f"sweep {name} {op}: {rows[-1].get('ms', rows[-1].get('error'))}", file=sys.stderr)
        finally:
            for (mod, k), v in saved.items():
                setattr(mod, k, v)
            C._cache.clear()
            L._plans.clear()
    del fastnorm
    return rows


# ------------------------------------------------------------------------------------------ report
def machine_info(torch) -> dict:
    import numba

    import fastnorm

    try:
        import numba_cuda

        nbc = numba_cuda.__version__
    except Exception:
        nbc = None
    try:
        import cupy

        cp = cupy.__version__
    except Exception:
        cp = None
    p = torch.cuda.get_device_properties(0)
    return {
        "gpu": p.name,
        "sm_count": p.multi_processor_count,
        "memory_gib": round(p.total_memory / 2**30, 1),
        "cuda_runtime_torch": torch.version.cuda,
        "torch": torch.__version__,
        "numba": numba.__version__,
        "numba_cuda": nbc,
        "cupy": cp,
        "numpy": np.__version__,
        "fastnorm": fastnorm.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def run_cuda_report(
    quick: bool = False,
    ops: list[str] | None = None,
    repeats: int = 7,
    do_sweep: bool | None = None,
    profile: bool = True,
    shapes: list | None = None,
    adam_total: int | None = None,
) -> dict:
    """Run the GPU cases (whose op contains one of ``ops``, if given); return the report as a dict."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("the CUDA benchmark needs torch with a CUDA GPU")
    timer = Timer(torch)
    cases = [c for c in cuda_cases(torch, quick, shapes, adam_total) if not ops or any(o in c.op for o in ops)]
    biggest = max([c.nbytes for c in cases] + [1 << 28])
    bw = copy_gbps(torch, timer, min(biggest // 2, 2 << 30), repeats)
    rows = []
    partial = os.environ.get("FASTNORM_CUDA_BENCH_PARTIAL")  # a JSON file rewritten after every case

    def report(sweeps=()):
        return {
            "machine": machine_info(torch),
            "quick": quick,
            "repeats": repeats,
            "copy_gbps": bw,
            "timer": {"cycles_per_ms": timer.cycles_per_ms, "calibration": timer.calibration},
            "rows": rows,
            "sweep": list(sweeps),
        }

    print(f"copy bandwidth {bw:.0f} GB/s", file=sys.stderr)
    for c in cases:
        res = {}
        for pname, factory in c.providers.items():
            try:
                fn = factory()
                res[pname] = {"gpu": timer(fn, repeats=repeats), "e2e": timer(fn, repeats=repeats, hide_host=False)}
                if profile:
                    try:
                        res[pname]["profiler_ms"] = profiler_kernel_ms(torch, fn)
                    except Exception as e:  # no CUPTI: the cross-check is missing, not the row
                        res[pname]["profiler_error"] = f"{type(e).__name__}: {e}"
            except Exception as e:
                res[pname] = {"error": f"{type(e).__name__}: {e}"}
        ref = next((v for k, v in res.items() if k.startswith("torch") and "error" not in v), None)
        for pname, r in res.items():
            row = dict(op=c.op, label=c.label, provider=pname, note=c.note, nbytes=c.nbytes, copy_gbps=bw)
            if "error" in r:
                row["error"] = r["error"]
            else:
                for mode in ("gpu", "e2e"):
                    t = r[mode]
                    row[f"{mode}_ms"] = t.median_ms
                    row[f"{mode}_min_ms"] = t.min_ms
                    row[f"{mode}_gbps"] = c.nbytes / t.median_ms / 1e6
                    row[f"{mode}_frac_copy"] = row[f"{mode}_gbps"] / bw
                    row[f"{mode}_timing"] = t.as_dict()
                    if ref is not None and pname.startswith("fastnorm"):
                        row[f"{mode}_speedup_vs_torch"] = ref[mode].median_ms / t.median_ms
                row["gpu_valid"] = r["gpu"].valid
                for k in ("profiler_ms", "profiler_error"):
                    if k in r:
                        row[k] = r[k]
            rows.append(row)
            print(
                f"{c.op} {c.label} {pname}: "
                + (
                    row.get("error")
                    or f"gpu {row['gpu_ms']:.4f} ms (min {row['gpu_min_ms']:.4f}, valid {row['gpu_valid']}, "
                    f"{100 * row['gpu_frac_copy']:.1f}% copy), e2e {row['e2e_ms']:.4f} ms"
                    + (f", profiler {row['profiler_ms']:.4f} ms" if row.get("profiler_ms") else "")
                ),
                file=sys.stderr,
            )
        if partial:
            with open(partial, "w") as f:
                json.dump(report(), f, indent=1)
    if do_sweep is None:
        do_sweep = not ops
    sweeps = sweep(torch, timer, max(3, repeats // 2)) if do_sweep else []
    return report(sweeps)


def format_cuda_table(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"fastnorm {m['fastnorm']} on {m['gpu']} ({m['sm_count']} SMs), torch {m['torch']} (CUDA "
        f"{m['cuda_runtime_torch']}), numba {m['numba']}, numba-cuda {m['numba_cuda']}, cupy {m['cupy']}",
        f"same-run device copy bandwidth (torch copy_, read + write): {report['copy_gbps']:.0f} GB/s",
        f"timer: torch.cuda._sleep at {report.get('timer', {}).get('cycles_per_ms', float('nan')):.0f} cycles/ms; "
        "gpu = device time (median; host time hidden behind a held stream, checked per sample: "
        "'!' = not hidden, the figure contains host time); e2e = back-to-back calls from Python; "
        "x torch = torch's time / fastnorm's (same mode)",
        "",
        f"{'op':<22} {'case':<28} {'provider':<18} {'gpu ms':>8} {'GB/s':>6} {'%copy':>6} {'x torch':>7} "
        f"{'e2e ms':>8} {'%copy':>6} {'x torch':>7}",
    ]
    prev = None
    for r in report["rows"]:
        key = (r["op"], r["label"])
        if prev is not None and key != prev:
            lines.append("")
        op, label = key if key != prev else ("", "")
        prev = key
        if "error" in r:
            lines.append(f"{op:<22} {label:<28} {r['provider']:<18} ERROR {r['error'][:120]}")
            continue
        sg = r.get("gpu_speedup_vs_torch")
        se = r.get("e2e_speedup_vs_torch")
        bad = "!" if r.get("gpu_valid") is False else " "
        lines.append(
            f"{op:<22} {label:<28} {r['provider']:<18} {r['gpu_ms']:>7.3f}{bad} {r['gpu_gbps']:>6.0f} "
            f"{100 * r['gpu_frac_copy']:>5.1f}% {'' if sg is None else f'{sg:.2f}x':>7} "
            f"{r['e2e_ms']:>8.3f} {100 * r['e2e_frac_copy']:>5.1f}% {'' if se is None else f'{se:.2f}x':>7}"
        )
        if r.get("note") and r["provider"].startswith("torch"):
            lines[-1] += f"   ({r['note']})"
    if report.get("sweep"):
        lines += ["", "launch-shape sweep, (16384, 4096) float32, device time:"]
        for r in report["sweep"]:
            if "error" in r:
                lines.append(f"  {r['setting']:<26} {r['op']:<22} ERROR {r['error'][:100]}")
            else:
                frac = r["gbps"] / report["copy_gbps"]
                lines.append(
                    f"  {r['setting']:<26} {r['op']:<22} {r['ms']:8.3f} ms {r['gbps']:6.0f} GB/s "
                    f"{100 * frac:5.1f}% copy"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m fastnorm.bench.gpu``: the GPU report for chosen shapes and dtypes (see ``--help``)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fastnorm.bench.gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="16384x4096,4096x1024,8192x768", help="MxN,MxN,...")
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument("--adam-total", type=float, default=100e6, help="Adam: elements over 200 tensors (0: none)")
    ap.add_argument("--ops", nargs="*")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sweep", action="store_true", help="also the launch-shape sweep")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiler cross-check")
    ap.add_argument("--json", metavar="FILE", help="also write the report as JSON ('-': only JSON, on stdout)")
    args = ap.parse_args(argv)
    shapes = [
        (int(m), int(n), np.dtype(d).type)
        for d in args.dtypes.split(",")
        for m, n in (s.split("x") for s in args.shapes.split(","))
    ]
    report = run_cuda_report(
        ops=args.ops,
        repeats=args.repeats,
        do_sweep=args.sweep,
        profile=not args.no_profile,
        shapes=shapes,
        adam_total=int(args.adam_total),
    )
    from fastnorm._kernels.cuda._host_scenarios import emit

    emit(report, args.json, format_cuda_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
