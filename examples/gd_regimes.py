"""Gradient-descent regimes and optimizers side by side, on one figure, with fastnorm's NumPy layers.

    python examples/gd_regimes.py           # writes gd_regimes.png
    python examples/gd_regimes.py --quick   # fewer epochs and a data subset (what the tests run)

Same model (64 -> Linear(64) -> LayerNorm -> ReLU -> Linear(10)), same initial weights, same data
(scikit-learn's digits, or a generated digits-like set) for every run; only the batching and the
optimizer change.

Left panel, plain SGD (``p -= lr * g``) fed three ways, loss per epoch:
- full-batch gradient descent: one exact-gradient step per epoch (smooth but slow per epoch),
- mini-batch SGD (32 samples): many noisy steps per epoch,
- stochastic GD (1 sample, LayerNorm has no batch statistics so batch 1 is fine): the most steps and
  the most noise; a smaller learning rate keeps it stable.
They are one update rule fed different batches (fastnorm.optim.SGD in each case). The printed table also
gives each run's wall time: per epoch, the stochastic regime pays one Python-level step per sample.

Right panel, mini-batch training with every fastnorm optimizer: SGD, SGD + momentum, SGD + Nesterov,
Adagrad, Adadelta, RMSprop, Adam, AdamW. Momentum in torch's form ``b = mu*b + g; p -= lr*b`` is the
"heavy ball" ``m = mu*m + lr*g; p -= m`` with m = lr*b (the same iterates while lr is constant).
"""

from __future__ import annotations

import os
import sys
import time

# A small model: one thread is fastest (OpenMP/BLAS thread start-up and contention cost more than the work
# saves). Set OMP_NUM_THREADS to override; it has to be set before NumPy is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

import fastnorm.optim as optim
from fastnorm import nn

# the examples' shared helpers (examples/_common.py)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import batches, digits_parser, finish, progress, setup

REGIMES = {  # name: (batch size, or None for the whole training set; SGD learning rate)
    "full-batch GD": (None, 0.2),
    "mini-batch SGD (32)": (32, 0.05),
    "stochastic GD (1)": (1, 0.005),
}

OPTIMIZERS = {  # name: (class, keyword arguments); mini-batches of 32
    "SGD": (optim.SGD, {"lr": 0.05}),
    "SGD momentum 0.9": (optim.SGD, {"lr": 0.01, "momentum": 0.9}),
    "SGD Nesterov 0.9": (optim.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    "Adagrad": (optim.Adagrad, {"lr": 0.05}),
    "Adadelta": (optim.Adadelta, {"lr": 1.0}),
    "RMSprop": (optim.RMSprop, {"lr": 1e-3}),
    "Adam": (optim.Adam, {"lr": 1e-3}),
    "AdamW": (optim.AdamW, {"lr": 1e-3, "weight_decay": 1e-2}),
}


def build_model(seed: int) -> nn.Sequential:
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(64, 64, rng=rng), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 10, rng=rng))


def full_loss(model: nn.Module, loss_fn, x, y) -> float:
    return loss_fn(model(x), y)


def train(model, opt, x, y, batch_size, epochs, seed) -> list[float]:
    """Training-set loss before training and after each epoch (whole set, so regimes compare fairly)."""
    loss_fn = nn.CrossEntropyLoss()
    grads = model.grads()
    rng = np.random.default_rng(seed)
    history = [full_loss(model, loss_fn, x, y)]
    for _ in range(epochs):
        for idx in batches(len(y), batch_size or len(y), rng):
            loss_fn(model(x[idx]), y[idx])
            model.backward(loss_fn.backward())
            opt.step(grads)
        history.append(full_loss(model, loss_fn, x, y))
    return history


def accuracy(model, x, y) -> float:
    return float((model(x).argmax(axis=1) == y).mean())


def main(argv: list[str] | None = None) -> dict:
    ap = digits_parser(__doc__, "fewer epochs on a subset", "gd_regimes.png")
    args, epochs, (x, y, x_test, y_test, data_name) = setup(argv, ap, (5, 20))
    if args.quick:
        x, y = x[:600], y[:600]
    print(f"data: {data_name}, {len(y)} train / {len(y_test)} test; {epochs} epochs per run")

    runs = [("regime", name, optim.SGD, {"lr": lr}, bs) for name, (bs, lr) in REGIMES.items()]
    runs += [("optimizer", name, cls, kw, 32) for name, (cls, kw) in OPTIMIZERS.items()]
    regimes, optimizers, results = {}, {}, {}
    bar = progress(runs, len(runs), "gd_regimes")
    for kind, name, cls, kw, bs in bar:
        bar.set_postfix_str(name)
        model = build_model(args.seed)  # same initial weights for every run
        start = time.perf_counter()
        hist = train(model, cls(model.parameters(), **kw), x, y, bs, epochs, args.seed + 1)
        acc = accuracy(model, x_test, y_test)
        (regimes if kind == "regime" else optimizers)[name] = hist
        results[name] = {"losses": hist, "test_accuracy": acc, "seconds": time.perf_counter() - start}

    print(f"{'run':<22} {'epoch 1 loss':>12} {'last loss':>10} {'held-out acc':>12} {'seconds':>8}")
    for name, r in results.items():
        print(f"{name:<22} {r['losses'][1]:>12.4f} {r['losses'][-1]:>10.4f} {r['test_accuracy']:>12.3f} "
              f"{r['seconds']:>8.2f}")  # fmt: skip
    initial_loss = next(iter(results.values()))["losses"][0]  # the same model and data in every run
    metrics = {"data": data_name, "initial_loss": initial_loss, "runs": results}
    panels = [
        ("SGD: full-batch vs mini-batch vs stochastic", "epoch", regimes),
        ("optimizers (mini-batch 32)", "epoch", optimizers),
    ]
    title = f"fastnorm.optim on a NumPy MLP with LayerNorm ({data_name})"
    return finish(args, metrics, panels, title, start=0)


if __name__ == "__main__":
    main()
