"""Benchmark cases: optimizer steps (SGD with momentum, Adagrad, Adadelta, RMSprop, Adam, AdamW), float32,
and Adam over bfloat16 parameters with float32 master weights.

Each case is one ``opt.step(grads)`` over one big tensor or over 200 tensors of mixed sizes (a model's
weights and biases). Providers: the fastnorm class, the NumPy reference, and torch.optim with
``foreach=False`` (a loop of per-tensor ops), ``foreach=True`` (multi-tensor ops) and ``fused=True``
(ATen's fused CPU kernel; SGD, Adagrad, Adam, AdamW only). All providers update the same arrays (torch
tensors share the NumPy memory); each keeps its own optimizer state. Bytes: the gradient read once, the
parameter and each state array read and written once.

The bfloat16 case (``adam_step`` ... ``bfloat16``): bfloat16 parameters and gradients; fastnorm keeps float32
master weights and float32 state (``master_weights=True``), torch's optimizers (``fused=True``, ``foreach=True``)
run on the same bfloat16 parameters with their own (bfloat16) state, as a user of torch would. Bytes are
fastnorm's recipe: the bfloat16 gradient read (2 bytes), the bfloat16 parameter written (2: not read, the master
holds its value; streamed in whole 64-byte lines whatever its offset, so no read-for-ownership of its lines either),
the master and both moments read and written (24): 28 bytes per parameter, each stream touched once. torch's fused
step on bfloat16 parameters with bfloat16 state moves 14 (parameter read and written 4, gradient 2, moments 8), so at
the memory bound the float32-master recipe takes twice torch's bytes: it can match torch only where torch is not at
its own bound.
"""

from __future__ import annotations

import numpy as np

from fastnorm import optim as O
from fastnorm.reference import optim as R

from ._core import Case, as_torch, np_dtype, torch_or_none

M = 1_000_000
FULL_SIZES = [("10M", [10 * M]), ("50M", [50 * M]), ("200 tensors, 10M", 200)]
QUICK_SIZES = [("2M", [2 * M]), ("200 tensors, 2M", 200)]

# name -> (fastnorm class / torch class name, hyperparameters, state arrays, has a fused torch kernel)
ALGOS = {
    "sgd_step": ("SGD", {"lr": 1e-3, "momentum": 0.9}, 1, True),
    "adagrad_step": ("Adagrad", {"lr": 1e-3}, 1, True),
    "adadelta_step": ("Adadelta", {"lr": 1e-3}, 2, False),
    "rmsprop_step": ("RMSprop", {"lr": 1e-3}, 1, False),
    "adam_step": ("Adam", {"lr": 1e-3}, 2, True),
    "adamw_step": ("AdamW", {"lr": 1e-3}, 2, True),
}


def mixed_sizes(n_tensors: int, total: int, seed: int = 0) -> list[int]:
    """Half weights of mixed sizes, half small biases (1/100 of the weights' mean), summing to ``total``."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.2, 1.8, n_tensors // 2)
    biases = np.full(n_tensors - n_tensors // 2, weights.mean() / 100)
    share = np.concatenate([weights, biases])
    sizes = np.maximum(1, np.floor(share / share.sum() * total)).astype(np.int64)
    sizes[0] += total - sizes.sum()
    return [int(s) for s in sizes]


def _inputs(sizes, dtype="float32"):
    dt = np_dtype(dtype)

    def make(rng):
        params = [rng.standard_normal(n, dtype=np.float32).astype(dt) for n in sizes]
        grads = [rng.standard_normal(n, dtype=np.float32).astype(dt) for n in sizes]
        return {"params": params, "grads": grads}

    return make


# ---------------------------------------------------------------------------------- providers
def _fastnorm(cls, kw):
    def factory(s):
        opt = getattr(O, cls)(s["params"], **kw)
        grads = s["grads"]

        def run():
            opt.step(grads)
            return opt

        return run

    return factory


def _numpy(op, kw):
    fn = getattr(R, op)

    def factory(s):
        params, grads = s["params"], s["grads"]
        if op == "sgd_step":
            args = [[None] * len(params)]  # momentum buffers, made at the first step
        else:
            n_state = ALGOS[op][2]
            args = [[np.zeros_like(p) for p in params] for _ in range(n_state)]
        step = [0]

        def run():
            step[0] += 1
            k = {"step": step[0]} if op in ("adagrad_step", "adam_step", "adamw_step") else {}
            fn(params, grads, *args, **kw, **k)
            return params

        return run

    return factory


def _torch(cls, kw, mode):
    def factory(s):
        torch = torch_or_none()
        tp = [as_torch(torch, p).requires_grad_() for p in s["params"]]
        for t, g in zip(tp, s["grads"]):
            t.grad = as_torch(torch, g)
        opts = {"fused": True} if mode == "fused" else {"foreach": mode == "foreach"}
        opt = getattr(torch.optim, cls)(tp, **kw, **opts)

        def run():
            opt.step()
            return opt

        return run

    return factory


def cases(quick: bool) -> list[Case]:
    have_torch = torch_or_none() is not None
    out = []
    for label, spec in QUICK_SIZES if quick else FULL_SIZES:
        if isinstance(spec, int):
            total = (2 if quick else 10) * M
            sizes = mixed_sizes(spec, total)
        else:
            sizes = spec
        n = sum(sizes)
        for op, (cls, kw, n_state, fused) in ALGOS.items():
            providers = {"fastnorm": _fastnorm(cls, kw), "numpy": _numpy(op, kw)}
            if have_torch:
                providers["torch foreach=False"] = _torch(cls, kw, "loop")
                providers["torch foreach=True"] = _torch(cls, kw, "foreach")
                if fused:
                    providers["torch fused=True"] = _torch(cls, kw, "fused")
            streams = (1, 1 + n_state, 0)  # g read; p and the state read and written
            nbytes = 4 * n * (1 + 2 * (1 + n_state))
            out.append(Case(op, label, _inputs(sizes), providers, nbytes, streams, n, tags=("optim",)))
        out.append(_bf16_master_adam(label, sizes, have_torch))
    return out


def _bf16_master_adam(label: str, sizes: list[int], have_torch: bool) -> Case:
    """Adam over bfloat16 parameters: fastnorm with float32 master weights vs torch on the same parameters."""
    kw = ALGOS["adam_step"][1]
    providers = {"fastnorm": _fastnorm("Adam", {**kw, "master_weights": True})}
    if have_torch:
        providers["torch foreach=True"] = _torch("Adam", kw, "foreach")
        providers["torch fused=True"] = _torch("Adam", kw, "fused")
    n = sum(sizes)
    # the bound's streams (n float32 each): master, m, v read and written; one read stream for the 2 + 2 bytes of
    # the bfloat16 gradient read and parameter write (the streaming kernel takes at most 4 read-write streams)
    streams = (1, 3, 0)
    return Case(
        "adam_step",
        label,
        _inputs(sizes, "bfloat16"),
        providers,
        28 * n,
        streams,
        n,
        tags=("optim",),
        dtype="bfloat16",
    )
