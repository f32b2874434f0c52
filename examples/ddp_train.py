"""Data-parallel training on CPU processes: a small convolutional net with fastnorm's SyncBatchNorm and its
fused AdamW, under DistributedDataParallel on the gloo backend.

    torchrun --nproc-per-node 2 examples/ddp_train.py --quick     # 2 processes, a few epochs
    torchrun --nproc-per-node 2 examples/ddp_train.py             # 2 processes, 15 epochs
    python examples/ddp_train.py --plain-bn                       # one process, plain BatchNorm
    torchrun --nproc-per-node 2 examples/ddp_train.py --bench 50  # time 50 steps, communication share

Every global batch of ``--batch`` images is cut into one slice per process; ``SyncBatchNorm`` normalizes
each slice with the statistics of the whole global batch (one all-gather of packed statistics per layer
in the forward, one in the backward), so the run computes what one process would on the whole batch, and
DDP averages the gradients (the loss is scaled so the average is the global batch's mean-loss gradient).
torch's own ``torch.nn.SyncBatchNorm`` refuses CPU tensors; this one runs on them (and on CUDA tensors
with NCCL, which this example does not exercise). Data: scikit-learn's 8x8 digits (a generated
digits-like set without scikit-learn), see examples/_common.py.

``--bench N``: N timed training steps after 5 warm-up steps; prints (and writes with ``--json``) the time
per step, the time spent in SyncBatchNorm's collectives and in DDP's gradient all-reduce, and their share
of the step. For the timing, DDP's all-reduce runs through a blocking comm hook (no overlap with the
backward), so the share is an upper bound. bench/ddp_step.py runs it on 2 processes and on one process with
plain BatchNorm and prints both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
import torch.distributed as dist

try:
    import fastnorm  # noqa: F401
except ImportError:  # a source checkout run as `torchrun examples/ddp_train.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastnorm.torch.nn as fnn
import fastnorm.torch.optim as foptim
from fastnorm.torch.distributed import SyncBatchNorm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import load_data, write_json


def build_model(width: int = 16) -> torch.nn.Sequential:
    """Conv -> BN -> ReLU, twice, pooled, then a linear classifier (8x8 single-channel images)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, width, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(width),
        torch.nn.ReLU(),
        torch.nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(2 * width),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * width * 16, 10),
    )


class CommTimer:
    """Wall time spent in collectives: SyncBatchNorm's (wrapped torch.distributed functions) and DDP's
    gradient all-reduce (a blocking comm hook)."""

    def __init__(self):
        self.bn = 0.0
        self.grad = 0.0
        self.calls = 0
        for name in ("all_gather_single", "all_gather_into_tensor"):
            fn = getattr(dist, name, None)
            if fn is not None:
                setattr(dist, name, self._wrap(fn))

    def _wrap(self, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            self.bn += time.perf_counter() - t
            self.calls += 1
            return out

        return timed

    def hook(self, state, bucket):
        t = time.perf_counter()
        buf = bucket.buffer()
        dist.all_reduce(buf)
        buf.div_(dist.get_world_size())
        self.grad += time.perf_counter() - t
        fut = torch.futures.Future()
        fut.set_result(buf)
        return fut

    def reset(self):
        self.bn = self.grad = 0.0
        self.calls = 0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 epochs on 512 training images (the tests)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=128, help="global batch size (over every process)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--plain-bn", action="store_true", help="plain BatchNorm (fastnorm's), no synchronization")
    ap.add_argument("--bench", type=int, default=0, metavar="N", help="time N training steps instead of training")
    ap.add_argument("--json", help="write the metrics here (rank 0)")
    args = ap.parse_args(argv)

    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1

    x_tr, y_tr, x_te, y_te, data_name = load_data(seed=0)
    if args.quick:
        x_tr, y_tr, args.epochs = x_tr[:512], y_tr[:512], 3
    x_tr = torch.from_numpy(x_tr.reshape(-1, 1, 8, 8))
    y_tr = torch.from_numpy(y_tr)
    x_te, y_te = torch.from_numpy(x_te.reshape(-1, 1, 8, 8)), torch.from_numpy(y_te)

    model = build_model()
    if args.plain_bn:
        fnn.swap_modules(model)
    else:
        model = SyncBatchNorm.convert_sync_batchnorm(model)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    opt = foptim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-2)
    timer = None
    if distributed and args.bench:
        timer = CommTimer()
        net.register_comm_hook(None, timer.hook)

    def step(xb, yb, n_global):
        # this process's slice of the global batch; the loss scaled so DDP's average is the global mean
        lo, hi = rank * len(xb) // world, (rank + 1) * len(xb) // world
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(xb[lo:hi]), yb[lo:hi], reduction="sum") * (world / n_global)
        loss.backward()
        opt.step()
        return loss.item() / world

    rng = np.random.default_rng(1)
    metrics: dict = {"world_size": world, "data": data_name, "sync_bn": not args.plain_bn}
    if args.bench:
        idx = torch.from_numpy(rng.permutation(len(x_tr))[: args.batch])
        xb, yb = x_tr[idx], y_tr[idx]
        for _ in range(5):
            step(xb, yb, len(xb))
        if timer:
            timer.reset()
        if distributed:
            dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.bench):
            step(xb, yb, len(xb))
        elapsed = time.perf_counter() - t0
        per_step = elapsed / args.bench
        metrics.update(step_ms=1e3 * per_step, steps=args.bench, batch=args.batch)
        if timer:
            metrics.update(
                syncbn_comm_ms=1e3 * timer.bn / args.bench,
                grad_comm_ms=1e3 * timer.grad / args.bench,
                syncbn_collectives_per_step=timer.calls / args.bench,
                comm_share=(timer.bn + timer.grad) / elapsed,
            )
        if distributed:  # report the slowest rank's step time
            t = torch.tensor([per_step])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            metrics["step_ms"] = 1e3 * float(t)
        if rank == 0:
            comm = ""
            if timer:
                comm = (
                    f", SyncBatchNorm collectives {metrics['syncbn_comm_ms']:.2f} ms "
                    f"({metrics['syncbn_collectives_per_step']:.0f}/step), gradient all-reduce "
                    f"{metrics['grad_comm_ms']:.2f} ms, communication {100 * metrics['comm_share']:.0f}% of the step"
                )
            bn = "plain BatchNorm" if args.plain_bn else "SyncBatchNorm"
            print(f"{world} process(es), {bn}, global batch {args.batch}: {metrics['step_ms']:.2f} ms/step{comm}")
    else:
        losses = []
        for epoch in range(args.epochs):
            perm = torch.from_numpy(rng.permutation(len(x_tr)))
            net.train()
            tot, nb = 0.0, 0
            for s in range(0, len(perm) - args.batch + 1, args.batch):
                idx = perm[s : s + args.batch]
                tot += step(x_tr[idx], y_tr[idx], len(idx))
                nb += 1
            losses.append(tot / max(1, nb))
            net.eval()
            with torch.no_grad():
                acc = float((model(x_te).argmax(1) == y_te).float().mean())
            if rank == 0:
                print(f"epoch {epoch + 1}/{args.epochs}: loss {losses[-1]:.4f}, held-out accuracy {acc:.3f}")
        metrics.update(epoch_losses=losses, test_accuracy=acc)
        # every process holds the same parameters and running statistics (they are synchronized)
        if distributed:
            flat = torch.cat(
                [p.detach().flatten() for p in model.parameters()] + [b.flatten() for b in model.buffers()]
            )
            ref = flat.clone()
            dist.broadcast(ref, 0)
            metrics["max_param_diff_to_rank0"] = float((flat - ref).abs().max())
            d = torch.tensor([metrics["max_param_diff_to_rank0"]])
            dist.all_reduce(d, op=dist.ReduceOp.MAX)
            metrics["max_param_diff_to_rank0"] = float(d)
    if rank == 0:
        write_json(args.json, metrics, indent=1)
    if distributed:
        dist.barrier()  # no rank tears gloo down while another still has a collective in flight
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main()
