"""Swap fastnorm's modules and optimizer into a PyTorch model and train both side by side.

    python examples/torch_swap.py           # 30 epochs, writes torch_swap.png
    python examples/torch_swap.py --quick   # 2 epochs (what the tests run)

A torch model with BatchNorm1d, LayerNorm, GroupNorm and RMSNorm is copied; in the copy
``fastnorm.torch.nn.swap_modules`` replaces the norm layers by fastnorm's (same parameters, same
state_dict keys) and ``fastnorm.torch.optim.AdamW`` replaces ``torch.optim.AdamW`` (same arguments, same
state dict, driven by the same cosine LR scheduler). Both train on the same batches: the loss curves
agree to float32 rounding. The fastnorm model's checkpoint then loads into a plain torch model, and the
optimizer state into torch's AdamW.

Speed: at this toy size (batches of 64 x 128 features) a step is a few milliseconds of per-call overhead
for both libraries, and the printed ms/step are about even; fastnorm's fused kernels pay off on larger
activations (``python -m fastnorm.bench --ops training_step``).
"""

from __future__ import annotations

import copy
import os
import sys
import time

# A small model: one thread is fastest (OpenMP/BLAS thread start-up and contention cost more than the work
# saves). Set OMP_NUM_THREADS to override; it has to be set before NumPy and torch are imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

import fastnorm
import fastnorm.torch.nn as fnn
import fastnorm.torch.optim as foptim

# the examples' shared helpers (examples/_common.py)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import batches, digits_parser, finish, progress, setup


def build_model(hidden: int = 128) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden),
        torch.nn.BatchNorm1d(hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.LayerNorm(hidden),
        torch.nn.GELU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.GroupNorm(8, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.RMSNorm(hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    acc = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train()
    return acc


def main(argv: list[str] | None = None) -> dict:
    ap = digits_parser(__doc__, "2 epochs", "torch_swap.png", lr=2e-3, threads="torch and fastnorm CPU threads")
    setters = (torch.set_num_threads, fastnorm.set_num_threads)
    args, epochs, (x_train, y_train, x_test, y_test, data_name) = setup(argv, ap, (2, 30), *setters)
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
    x_test, y_test = torch.from_numpy(x_test), torch.from_numpy(y_test)
    print(f"data: {data_name}, {len(y_train)} train / {len(y_test)} test")

    torch.manual_seed(args.seed)
    torch_model = build_model()
    fast_model = copy.deepcopy(torch_model)
    n_swapped = fnn.swap_modules(fast_model)
    print(f"swapped {n_swapped} norm modules for fastnorm's")

    steps_per_epoch = sum(1 for _ in batches(len(y_train), args.batch_size, np.random.default_rng(0)))
    runs = {}
    for name, model, opt_cls in (
        ("torch", torch_model, torch.optim.AdamW),
        ("fastnorm", fast_model, foptim.AdamW),
    ):
        opt = opt_cls(model.parameters(), lr=args.lr, weight_decay=1e-2)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        rng = np.random.default_rng(args.seed + 1)  # same batches for both runs
        losses, seconds = [], 0.0
        for _epoch in progress(range(epochs), epochs, name):
            for idx in batches(len(y_train), args.batch_size, rng):
                if len(idx) < 2:
                    continue
                idx = torch.from_numpy(idx)
                start = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                seconds += time.perf_counter() - start
                losses.append(loss.item())
        runs[name] = {
            "losses": losses,
            "test_accuracy": accuracy(model, x_test, y_test),
            "ms_per_step": 1e3 * seconds / len(losses),
            "optimizer": opt,
        }
        r = runs[name]
        print(
            f"{name:>8}: loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
            f"held-out accuracy {r['test_accuracy']:.3f}, {r['ms_per_step']:.2f} ms/step"
        )

    diff = float(np.max(np.abs(np.subtract(runs["torch"]["losses"], runs["fastnorm"]["losses"]))))
    print(f"largest per-step loss difference, torch vs fastnorm: {diff:.2e}")

    # Checkpoints interchange: the fastnorm model's state loads into a plain torch model, AdamW's too.
    plain = build_model()
    plain.load_state_dict(fast_model.state_dict())
    torch_opt = torch.optim.AdamW(plain.parameters(), lr=args.lr, weight_decay=1e-2)
    torch_opt.load_state_dict(runs["fastnorm"]["optimizer"].state_dict())
    reload_acc = accuracy(plain, x_test, y_test)
    print(f"fastnorm checkpoint in a plain torch model: held-out accuracy {reload_acc:.3f}")

    metrics = {
        "data": data_name,
        "swapped": n_swapped,
        "losses": {k: v["losses"] for k, v in runs.items()},
        "test_accuracy": {k: v["test_accuracy"] for k, v in runs.items()},
        "ms_per_step": {k: v["ms_per_step"] for k, v in runs.items()},
        "max_loss_diff": diff,
        "reloaded_accuracy": reload_acc,
    }
    panels = [("training loss per step", "step", metrics["losses"])]
    return finish(args, metrics, panels, "torch modules + torch.optim.AdamW vs fastnorm.torch swapped in")


if __name__ == "__main__":
    main()
