"""Benchmark cases: fused residual add + LayerNorm / RMSNorm (``fastnorm.add_norm``), forward and backward.

Forward: ``h = x + residual; y = norm(h)``, returning y and h (the new residual stream). Backward: given dy
(into y) and dh (arriving on the residual stream), ``d = dnorm(dy; h) + dh``, the gradient of both x and
residual, plus dweight (and dbias). Float32, bfloat16 and float16, parameters in the data's dtype.

Providers, side by side:

- ``fastnorm`` / ``fastnorm out=``: the fused op (one pass over the rows);
- ``add + fastnorm``: fastnorm's norm op and a separate add, what a user without the fused op writes. The
  add is torch's (zero-copy, the same thread count) where torch is installed, NumPy's otherwise (NumPy's add
  is single-threaded, and for bfloat16 a slow ml_dtypes loop, which would flatter the fused op);
- ``numpy``: the NumPy references (``fastnorm.reference``: the add, then the norm; float32, and float16 at
  small sizes);
- ``torch``: torch's composition ``h = x + r; F.layer_norm(h) / F.rms_norm(h)`` on the same dtype; its
  backward is autograd over that graph (built once, outside the timing).

The fused op's speed-up over ``add + fastnorm`` is the figure issue 13 asks for (at least 1.4x for
forward + backward of add + RMSNorm). Bytes (the declarations'): x, residual read and y, h written forward;
dy, dh, h read and dx written backward; parameters in the data dtype, statistics float32.
"""

from __future__ import annotations

import numpy as np

import fastnorm

from ._core import (
    DTYPES,
    Case,
    as_torch,
    declared_case,
    np_dtype,
    op_providers,
    random_array,
    stream_elements,
    torch_or_none,
)

FULL_SHAPES = [(4096, 1024), (16384, 4096)]
QUICK_SHAPES = [(2048, 1024)]
EPS = 1e-5
NUMPY_HALF_MAX = 1 << 23


def _inputs(m, n, dtype):
    def make(rng):
        d = {k: random_array(rng, (m, n), dtype) for k in ("x", "r", "dy", "dh")}
        d["w"], d["b"] = random_array(rng, n, dtype), random_array(rng, n, dtype)
        h32 = d["x"].astype(np.float32) + d["r"].astype(np.float32)
        d["h"] = h32.astype(np_dtype(dtype))
        h32 = d["h"].astype(np.float32)
        w32, b32 = d["w"].astype(np.float32), d["b"].astype(np.float32)
        _, d["mean"], d["rstd"] = fastnorm.layer_norm_forward(h32, w32, b32, eps=EPS)
        _, d["rms_rstd"] = fastnorm.rms_norm_forward(h32, w32, eps=EPS)
        return d

    return make


def _adder():
    """(add(a, b) -> new array, add_(a, b): a += b), torch's where installed (see the module docstring)."""
    torch = torch_or_none()
    if torch is None:
        return np.add, lambda a, b: np.add(a, b, out=a)

    def add(a, b):
        t = as_torch(torch, a) + as_torch(torch, b)
        return t.view(torch.int16).numpy().view(a.dtype) if t.dtype == torch.bfloat16 else t.numpy()

    def add_(a, b):
        as_torch(torch, a).add_(as_torch(torch, b))

    return add, add_


# ------------------------------------------------------------------------------------------ providers
# the public calls' arguments from the case's inputs (fastnorm, fastnorm out= and numpy providers follow)
_ARGS = {
    "add_layer_norm_forward": lambda s: dict(x=s["x"], residual=s["r"], weight=s["w"], bias=s["b"], eps=EPS),
    "add_layer_norm_backward": lambda s: dict(dy=s["dy"], dh=s["dh"], h=s["h"], mean=s["mean"], rstd=s["rstd"],
                                              weight=s["w"], bias=s["b"]),
    "add_rms_norm_forward": lambda s: dict(x=s["x"], residual=s["r"], weight=s["w"], eps=EPS),
    "add_rms_norm_backward": lambda s: dict(dy=s["dy"], dh=s["dh"], h=s["h"], rstd=s["rms_rstd"], weight=s["w"]),
}  # fmt: skip


def _unfused(op: str):
    """``add + fastnorm``: the plain norm op and a separate add (before the forward, after the backward)."""
    plain = getattr(fastnorm, op.removeprefix("add_"))

    def provider(s):
        kw, (add, add_) = _ARGS[op](s), _adder()
        if op.endswith("_forward"):
            x, r = kw.pop("x"), kw.pop("residual")

            def run():
                h = add(x, r)
                return plain(h, **kw), h

            return run
        dh, kw["x"] = kw.pop("dh"), kw.pop("h")

        def run():
            res = plain(**kw)
            add_(res[0], dh)
            return res

        return run

    return provider


def _torch_aln_fwd(s):
    torch = torch_or_none()
    x, r, w, b = (as_torch(torch, s[k]) for k in ("x", "r", "w", "b"))
    shape = (x.shape[-1],)

    def run():
        h = x + r
        return torch.nn.functional.layer_norm(h, shape, w, b, EPS), h

    return run


def _torch_arms_fwd(s):
    torch = torch_or_none()
    x, r, w = (as_torch(torch, s[k]) for k in ("x", "r", "w"))
    shape = (x.shape[-1],)

    def run():
        h = x + r
        return torch.nn.functional.rms_norm(h, shape, w, EPS), h

    return run


def _torch_graph(s, norm):
    """torch's composition with its autograd graph built once: timed ``torch.autograd.grad`` over it."""
    torch = torch_or_none()
    x, r, w, b, dy, dh = (as_torch(torch, s[k]) for k in ("x", "r", "w", "b", "dy", "dh"))
    params = (x.requires_grad_(), r.requires_grad_(), w.requires_grad_()) + (
        (b.requires_grad_(),) if norm == "layer_norm" else ()
    )
    h = x + r
    shape = (x.shape[-1],)
    F = torch.nn.functional
    y = F.layer_norm(h, shape, w, b, EPS) if norm == "layer_norm" else F.rms_norm(h, shape, w, EPS)
    return lambda: torch.autograd.grad((y, h), params, (dy, dh), retain_graph=True)


_TORCH = {
    "add_layer_norm_forward": _torch_aln_fwd,
    "add_layer_norm_backward": lambda s: _torch_graph(s, "layer_norm"),
    "add_rms_norm_forward": _torch_arms_fwd,
    "add_rms_norm_backward": lambda s: _torch_graph(s, "rms_norm"),
}


# ------------------------------------------------------------------------------------------ cases
def _providers(dtype, size, op):
    p = op_providers(op, _ARGS[op])
    p["add + fastnorm"] = _unfused(op)
    if not (dtype == "float32" or (dtype == "float16" and size <= NUMPY_HALF_MAX)):
        del p["numpy"]
    if torch_or_none() is not None:
        p["torch"] = _TORCH[op]
    return p


def cases(quick: bool) -> list[Case]:
    out = []
    streams = {"add_layer_norm_forward": (2, 0, 2), "add_layer_norm_backward": (3, 0, 1)}
    streams |= {"add_rms_norm_forward": (2, 0, 2), "add_rms_norm_backward": (3, 0, 1)}
    for dtype in DTYPES:
        for m, n in QUICK_SHAPES if quick else FULL_SHAPES:
            mn = m * n
            inputs = {k: ((m, n), dtype) for k in ("x", "r", "dy", "dh", "h")}
            inputs |= {"w": (n, dtype), "b": (n, dtype)}
            inputs |= {k: (m, "float32") for k in ("mean", "rstd", "rms_rstd")}
            make, sl = _inputs(m, n, dtype), stream_elements(mn, dtype)
            out += [
                declared_case(
                    op, f"({m}, {n})", make, inputs, _ARGS[op], _providers(dtype, mn, op), st, sl, dtype=dtype
                )
                for op, st in streams.items()
            ]
    return out
