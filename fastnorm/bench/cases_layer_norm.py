"""Benchmark cases: LayerNorm and RMSNorm, forward and backward, (M, N) rows, in float32, bfloat16, float16.

16-bit cases: x, dy and the parameters in the 16-bit dtype (a bf16/fp16 model), statistics float32; bytes
and the streaming bound count 2-byte items. Providers: fastnorm, the NumPy reference (float32 and, at sizes
where it finishes in seconds, float16; NumPy has no bfloat16 arithmetic of its own) and torch's op on the
same dtype (its bf16/fp16 CPU kernels). Until the 16-bit kernels exist, fastnorm's 16-bit rows are skipped
with the op's TypeError.
"""

from __future__ import annotations

import numpy as np

import fastnorm

from ._core import DTYPES, Case, as_torch, declared_case, op_providers, random_array, stream_elements, torch_or_none

FULL_SHAPES = [(4096, 1024), (8192, 768), (16384, 4096)]
QUICK_SHAPES = [(2048, 1024), (4096, 4096)]
QUICK_HALF_SHAPES = QUICK_SHAPES[:1]  # --quick: 16-bit cases on the small shape only
EPS = 1e-5
# NumPy's float16 arithmetic is scalar (about 10x float32): its reference runs only up to this many elements.
NUMPY_HALF_MAX = 1 << 23


def _inputs(m, n, dtype="float32"):
    def make(rng):
        x = random_array(rng, (m, n), dtype)
        w = random_array(rng, n, dtype)
        b = random_array(rng, n, dtype)
        dy = random_array(rng, (m, n), dtype)
        # The saved statistics (float32 for 16-bit data) from the float32 kernels on the rounded inputs: the
        # backward cases do not depend on the 16-bit forward existing.
        x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
        _, mean, rstd = fastnorm.layer_norm_forward(x32, w32, b32, eps=EPS)
        _, rms_rstd = fastnorm.rms_norm_forward(x32, w32, eps=EPS)
        return dict(x=x, w=w, b=b, dy=dy, mean=mean, rstd=rstd, rms_rstd=rms_rstd)

    return make


def _t(torch, s, *keys):
    return tuple(as_torch(torch, s[k]) for k in keys)


# ------------------------------------------------------------------------------------------ providers
def _torch_ln_fwd(s):
    torch = torch_or_none()
    x, w, b = _t(torch, s, "x", "w", "b")
    shape = (x.shape[-1],)
    return lambda: torch.nn.functional.layer_norm(x, shape, w, b, EPS)


def _torch_ln_bwd(s):
    # ATen's own backward kernel, called directly: torch's best case (no autograd overhead).
    torch = torch_or_none()
    x, w, b, dy = _t(torch, s, "x", "w", "b", "dy")
    shape = [x.shape[-1]]
    _, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, w, b, EPS)
    mask = [True, True, True]
    return lambda: torch.ops.aten.native_layer_norm_backward(dy, x, shape, mean, rstd, w, b, mask)


def _torch_rms_fwd(s):
    torch = torch_or_none()
    x, w = _t(torch, s, "x", "w")
    shape = (x.shape[-1],)
    return lambda: torch.nn.functional.rms_norm(x, shape, w, EPS)


def _torch_rms_bwd(s):
    # What a torch user gets: autograd through F.rms_norm (the graph is built once, outside the timing).
    torch = torch_or_none()
    x, w, dy = _t(torch, s, "x", "w", "dy")
    x, w = x.requires_grad_(), w.requires_grad_()
    y = torch.nn.functional.rms_norm(x, (x.shape[-1],), w, EPS)
    return lambda: torch.autograd.grad(y, (x, w), dy, retain_graph=True)


# the public calls' arguments from the case's inputs (fastnorm, fastnorm out= and numpy providers follow)
_ARGS = {
    "layer_norm_forward": lambda s: dict(x=s["x"], weight=s["w"], bias=s["b"], eps=EPS),
    "layer_norm_backward": lambda s: dict(dy=s["dy"], x=s["x"], mean=s["mean"], rstd=s["rstd"], weight=s["w"],
                                          bias=s["b"]),
    "rms_norm_forward": lambda s: dict(x=s["x"], weight=s["w"], eps=EPS),
    "rms_norm_backward": lambda s: dict(dy=s["dy"], x=s["x"], rstd=s["rms_rstd"], weight=s["w"]),
}  # fmt: skip


def _providers(dtype, size, op, tch):
    p = op_providers(op, _ARGS[op])
    if not (dtype == "float32" or (dtype == "float16" and size <= NUMPY_HALF_MAX)):
        del p["numpy"]
    if torch_or_none() is not None:
        p["torch"] = tch
    return p


def cases(quick: bool) -> list[Case]:
    out = []
    for dtype in DTYPES:
        shapes = QUICK_SHAPES if quick else FULL_SHAPES
        if dtype != "float32" and quick:
            shapes = QUICK_HALF_SHAPES
        for m, n in shapes:
            label = f"({m}, {n})"
            mn, make = m * n, _inputs(m, n, dtype)
            sl = stream_elements(mn, dtype)
            # the inputs as the declarations read them (bytes): data and parameters in the dtype, statistics float32
            inputs = {"x": ((m, n), dtype), "dy": ((m, n), dtype), "w": (n, dtype)}
            inputs |= {"b": (n, dtype)} | {k: (m, "float32") for k in ("mean", "rstd", "rms_rstd")}
            moved = {  # op: (streams, torch provider)
                "layer_norm_forward": ((1, 0, 1), _torch_ln_fwd),
                "layer_norm_backward": ((2, 0, 1), _torch_ln_bwd),
                "rms_norm_forward": ((1, 0, 1), _torch_rms_fwd),
                "rms_norm_backward": ((2, 0, 1), _torch_rms_bwd),
            }
            out += [
                declared_case(op, label, make, inputs, _ARGS[op], _providers(dtype, mn, op, tch), st, sl, dtype=dtype)
                for op, (st, tch) in moved.items()
            ]
    return out
