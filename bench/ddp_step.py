"""Benchmark (not a test): time per training step of examples/ddp_train.py on 2 CPU processes (gloo,
fastnorm SyncBatchNorm + fused AdamW under DDP) against the same model on one process with plain
BatchNorm, and the share of the 2-process step spent in communication.

    python bench/ddp_step.py [--steps 50] [--batch 128] [--json out.json]

Both runs use one thread per process (OMP_NUM_THREADS=1) and the same global batch. On a shared or
loaded machine the figures are noisy: run it on a quiet one, several times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))  # the examples' shared helpers
sys.path.insert(0, ROOT)  # this checkout's fastnorm when it is not installed
from _common import write_json  # noqa: E402

from fastnorm._config import cpu_model  # noqa: E402

EXAMPLE = os.path.join(ROOT, "examples", "ddp_train.py")


def _run(cmd: list[str], out: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd + ["--json", out], env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    print(proc.stdout.strip().splitlines()[-1])
    with open(out) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--json")
    args = ap.parse_args()
    common = [EXAMPLE, "--bench", str(args.steps), "--batch", str(args.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        single = _run([sys.executable, *common, "--plain-bn"], os.path.join(tmp, "one.json"))
        multi = _run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *common],
            os.path.join(tmp, "two.json"),
        )
    res = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "one_process_plain_bn_ms": single["step_ms"],
        "two_process_sync_bn_ms": multi["step_ms"],
        "ratio_two_over_one": multi["step_ms"] / single["step_ms"],
        "syncbn_comm_ms": multi["syncbn_comm_ms"],
        "grad_comm_ms": multi["grad_comm_ms"],
        "comm_share": multi["comm_share"],
        "syncbn_collectives_per_step": multi["syncbn_collectives_per_step"],
        "steps": args.steps,
        "global_batch": args.batch,
    }
    print(
        f"CPU: {res['cpu']} ({res['cores']} logical cores)\n"
        f"one process, plain BatchNorm:     {res['one_process_plain_bn_ms']:.2f} ms/step\n"
        f"two processes, SyncBatchNorm+DDP: {res['two_process_sync_bn_ms']:.2f} ms/step "
        f"({res['ratio_two_over_one']:.2f}x), communication {100 * res['comm_share']:.0f}% of the step "
        f"(SyncBatchNorm {res['syncbn_comm_ms']:.2f} ms in {res['syncbn_collectives_per_step']:.0f} collectives, "
        f"gradient all-reduce {res['grad_comm_ms']:.2f} ms)"
    )
    write_json(args.json, res, indent=1)


if __name__ == "__main__":
    main()
