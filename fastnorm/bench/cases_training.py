"""Benchmark cases: one training step (forward + backward + AdamW step) of a norm-heavy block, float32.

The block is every normalization layer in a row on an (N, C, L) activation:
LayerNorm(L) -> GroupNorm(16, C) -> BatchNorm1d(C) -> InstanceNorm1d(C, affine) -> RMSNorm(L), then
``y.backward(dy)`` and an AdamW step over its parameters, ``zero_grad`` after. Providers:

- ``fastnorm``: the ``fastnorm.torch.nn`` modules and ``fastnorm.torch.optim.AdamW``,
- ``torch``: the ``torch.nn`` modules and ``torch.optim.AdamW`` with its defaults (what a user gets),
- ``torch fused``: the same with ``AdamW(fused=True)`` (torch's fastest CPU optimizer).

Same thread count for both libraries (the report's). Minimal bytes: every norm reads x and writes y
forward, reads dy and x and writes dx backward (20 bytes per element per norm in float32), plus AdamW's
28 bytes per parameter; the bound is a copy-like stream (one read, one write) of the activation.
"""

from __future__ import annotations

import numpy as np

from ._core import Case, torch_or_none

FULL_SHAPES = [(64, 128, 256), (32, 256, 1024)]
QUICK_SHAPES = [(16, 64, 256)]
N_NORMS = 5
# Steady state, as in a training loop: the first steps also pay for the optimizer state and for the
# allocator settling (glibc serves the first large per-step arrays from fresh, page-faulting mmaps).
WARMUP_STEPS = 15


def _inputs(n, c, length):
    def make(rng):
        return {
            "x": rng.standard_normal((n, c, length), dtype=np.float32),
            "dy": rng.standard_normal((n, c, length), dtype=np.float32),
        }

    return make


def _block(ns, c, length):
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        ns.LayerNorm(length),
        ns.GroupNorm(16, c),
        ns.BatchNorm1d(c),
        ns.InstanceNorm1d(c, affine=True),
        ns.RMSNorm(length),
    )


def _provider(impl: str):
    def factory(s):
        torch = torch_or_none()
        x, dy = torch.from_numpy(s["x"]), torch.from_numpy(s["dy"])
        if impl == "fastnorm":
            import fastnorm.torch.nn as fnn
            import fastnorm.torch.optim as foptim

            block, opt_cls, kw = _block(fnn, x.shape[1], x.shape[2]), foptim.AdamW, {}
        else:
            block, opt_cls = _block(torch.nn, x.shape[1], x.shape[2]), torch.optim.AdamW
            kw = {"fused": True} if impl == "torch fused" else {}
        opt = opt_cls(block.parameters(), lr=1e-3, **kw)

        def step():
            y = block(x)
            y.backward(dy)
            opt.step()
            opt.zero_grad()
            return y

        for _ in range(WARMUP_STEPS):
            step()
        return step

    return factory


def cases(quick: bool) -> list[Case]:
    if torch_or_none() is None:
        return []
    providers = {name: _provider(name) for name in ("fastnorm", "torch", "torch fused")}
    out = []
    for n, c, length in QUICK_SHAPES if quick else FULL_SHAPES:
        elems = n * c * length
        n_params = 3 * length + 6 * c  # LayerNorm weight + bias, RMSNorm weight; Group/Batch/InstanceNorm w + b
        nbytes = N_NORMS * 20 * elems + 28 * n_params
        out.append(
            Case(
                "training_step",
                f"5 norms ({n}, {c}, {length}) + AdamW",
                _inputs(n, c, length),
                providers,
                nbytes,
                (1, 0, 1),
                elems,
                tags=("training",),
            )
        )
    return out
