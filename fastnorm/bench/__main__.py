"""``python -m fastnorm.bench``: the roofline report. ``--help`` lists the options."""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastnorm.bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small shapes, fewer repeats (about a minute)")
    ap.add_argument("--ops", nargs="*", help="only ops whose name contains one of these strings")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (median taken)")
    ap.add_argument(
        "--dtypes",
        nargs="*",
        choices=["float32", "bfloat16", "float16"],
        help="only cases of these data dtypes (default: all; 16-bit cases where the op has them)",
    )
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for fastnorm and torch")
    ap.add_argument(
        "--input-alignment",
        choices=["numpy", "64", "page"],
        default="numpy",
        help="where the inputs (and out= buffers) start: numpy = as NumPy allocates them (large arrays 16 bytes "
        "past a page, what users get; default), 64 = copies 64 bytes past a page (torch's placement), page = "
        "copies on a page boundary",
    )
    ap.add_argument(
        "--compare-alignment",
        nargs="+",
        choices=["numpy", "64", "page"],
        metavar="ALIGN",
        help="also time every provider on inputs placed this way (numpy, 64, page), in the same rounds as "
        "--input-alignment's: an A/B of the placement (rows '<provider> [ALIGN]')",
    )
    ap.add_argument(
        "--bound-drift",
        type=float,
        default=0.2,
        metavar="FRAC",
        help="flag a case whose streaming bound moved more than this fraction during it (max / min - 1 of the "
        "stream samples interleaved with the case; default 0.2)",
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--json", metavar="FILE", help="save the report as JSON")
    ap.add_argument("--plot", metavar="FILE.png", help="draw fraction-of-bound bars (needs matplotlib)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--cpu-target",
        choices=["auto", "baseline", "avx2", "avx512", "native"],
        help="run the CPU kernels built for this ISA target (sets FASTNORM_CPU_TARGET; default: the best one)",
    )
    ap.add_argument(
        "--compare-targets",
        action="store_true",
        help="also time fastnorm (allocating and out=) on every other ISA target this CPU runs, side by side "
        "(fastnorm@<target>, fastnorm out=@<target>)",
    )
    ap.add_argument(
        "--host-overhead",
        action="store_true",
        help="host time and driver calls per CUDA call under a recording driver (no GPU needed; "
        "run in a process of its own)",
    )
    args = ap.parse_args(argv)
    if args.host_overhead:
        from fastnorm._kernels.cuda import _recording

        rows = _recording.run()
        print(_recording.format_rows(rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return 0

    if args.cpu_target is not None:
        if "fastnorm._kernels.cpu" in sys.modules:
            print("--cpu-target: the CPU kernels are already imported in this process", file=sys.stderr)
            return 2
        os.environ["FASTNORM_CPU_TARGET"] = args.cpu_target

    import fastnorm

    if args.threads is not None:
        fastnorm.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 9)
    if args.device == "cuda":
        if args.input_alignment != "numpy" or args.compare_alignment:
            print("--input-alignment / --compare-alignment: CPU report only", file=sys.stderr)
            return 2
        try:
            from .gpu import format_cuda_table, run_cuda_report
        except ImportError as e:
            print(f"the CUDA benchmark is not available: {e}", file=sys.stderr)
            return 2
        report = run_cuda_report(quick=args.quick, ops=args.ops, repeats=repeats)
        print(format_cuda_table(report))
    else:
        from . import format_table, run_report

        report = run_report(
            quick=args.quick,
            ops=args.ops,
            repeats=repeats,
            progress=not args.no_progress,
            compare_targets=args.compare_targets,
            dtypes=args.dtypes,
            alignment=args.input_alignment,
            drift=args.bound_drift,
            compare_alignments=args.compare_alignment,
        )
        print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        from . import plot_report

        plot_report(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
