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
forward + backward of add + RMSNorm). Bytes: x, residual read and y, h written forward; dy, dh, h read and
dx written backward; parameters in the data dtype, statistics float32.
"""

from __future__ import annotations

from functools import partial

import numpy as np

import fastnorm
from fastnorm import reference as R

from ._core import DTYPES, Case, Unsupported, as_torch, np_dtype, random_array, stream_elements, torch_or_none

FULL_SHAPES = [(4096, 1024), (16384, 4096)]
QUICK_SHAPES = [(2048, 1024)]
EPS = 1e-5
NUMPY_HALF_MAX = 1 << 23


def _add_norm():
    try:
        from fastnorm import add_norm
    except ImportError as e:
        raise Unsupported(f"fastnorm.add_norm is not in this build ({e})") from None
    return add_norm


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


# ------------------------------------------------------------------------------------------ add + LayerNorm
def _fn_aln_fwd(s):
    f = _add_norm().add_layer_norm_forward
    return lambda: f(s["x"], s["r"], s["w"], s["b"], eps=EPS)


def _fn_aln_fwd_out(s):
    f = _add_norm().add_layer_norm_forward
    out = (np.empty_like(s["x"]), np.empty_like(s["x"]), np.empty_like(s["mean"]), np.empty_like(s["rstd"]))
    return lambda: f(s["x"], s["r"], s["w"], s["b"], eps=EPS, out=out)


def _unfused_ln_fwd(s):
    add, _ = _adder()

    def run():
        h = add(s["x"], s["r"])
        return fastnorm.layer_norm_forward(h, s["w"], s["b"], eps=EPS), h

    return run


def _np_aln_fwd(s):
    return lambda: R.add_layer_norm_forward(s["x"], s["r"], s["w"], s["b"], eps=EPS)


def _torch_aln_fwd(s):
    torch = torch_or_none()
    x, r, w, b = (as_torch(torch, s[k]) for k in ("x", "r", "w", "b"))
    shape = (x.shape[-1],)

    def run():
        h = x + r
        return torch.nn.functional.layer_norm(h, shape, w, b, EPS), h

    return run


def _fn_aln_bwd(s):
    f = _add_norm().add_layer_norm_backward
    return lambda: f(s["dy"], s["dh"], s["h"], s["mean"], s["rstd"], s["w"], s["b"])


def _fn_aln_bwd_out(s):
    f = _add_norm().add_layer_norm_backward
    out = (np.empty_like(s["x"]), np.empty_like(s["w"]), np.empty_like(s["b"]))
    return lambda: f(s["dy"], s["dh"], s["h"], s["mean"], s["rstd"], s["w"], s["b"], out=out)


def _unfused_ln_bwd(s):
    _, add_ = _adder()

    def run():
        dx, dw, db = fastnorm.layer_norm_backward(s["dy"], s["h"], s["mean"], s["rstd"], s["w"], s["b"])
        add_(dx, s["dh"])
        return dx, dw, db

    return run


def _np_aln_bwd(s):
    return lambda: R.add_layer_norm_backward(s["dy"], s["dh"], s["h"], s["mean"], s["rstd"], s["w"], s["b"])


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


def _torch_aln_bwd(s):
    return _torch_graph(s, "layer_norm")


# ------------------------------------------------------------------------------------------ add + RMSNorm
def _fn_arms_fwd(s):
    f = _add_norm().add_rms_norm_forward
    return lambda: f(s["x"], s["r"], s["w"], eps=EPS)


def _fn_arms_fwd_out(s):
    f = _add_norm().add_rms_norm_forward
    out = (np.empty_like(s["x"]), np.empty_like(s["x"]), np.empty_like(s["rms_rstd"]))
    return lambda: f(s["x"], s["r"], s["w"], eps=EPS, out=out)


def _unfused_rms_fwd(s):
    add, _ = _adder()

    def run():
        h = add(s["x"], s["r"])
        return fastnorm.rms_norm_forward(h, s["w"], eps=EPS), h

    return run


def _np_arms_fwd(s):
    return lambda: R.add_rms_norm_forward(s["x"], s["r"], s["w"], eps=EPS)


def _torch_arms_fwd(s):
    torch = torch_or_none()
    x, r, w = (as_torch(torch, s[k]) for k in ("x", "r", "w"))
    shape = (x.shape[-1],)

    def run():
        h = x + r
        return torch.nn.functional.rms_norm(h, shape, w, EPS), h

    return run


def _fn_arms_bwd(s):
    f = _add_norm().add_rms_norm_backward
    return lambda: f(s["dy"], s["dh"], s["h"], s["rms_rstd"], s["w"])


def _fn_arms_bwd_out(s):
    f = _add_norm().add_rms_norm_backward
    out = (np.empty_like(s["x"]), np.empty_like(s["w"]))
    return lambda: f(s["dy"], s["dh"], s["h"], s["rms_rstd"], s["w"], out=out)


def _unfused_rms_bwd(s):
    _, add_ = _adder()

    def run():
        dx, dw = fastnorm.rms_norm_backward(s["dy"], s["h"], s["rms_rstd"], s["w"])
        add_(dx, s["dh"])
        return dx, dw

    return run


def _np_arms_bwd(s):
    return lambda: R.add_rms_norm_backward(s["dy"], s["dh"], s["h"], s["rms_rstd"], s["w"])


def _torch_arms_bwd(s):
    return _torch_graph(s, "rms_norm")


# ------------------------------------------------------------------------------------------ cases
def _providers(dtype, size, fn, fn_out, unfused, ref, tch):
    p = {"fastnorm": fn, "fastnorm out=": fn_out, "add + fastnorm": unfused}
    if dtype == "float32" or (dtype == "float16" and size <= NUMPY_HALF_MAX):
        p["numpy"] = ref
    if torch_or_none() is not None:
        p["torch"] = tch
    return p


def cases(quick: bool) -> list[Case]:
    out = []
    for dtype in DTYPES:
        isz = np_dtype(dtype).itemsize
        for m, n in QUICK_SHAPES if quick else FULL_SHAPES:
            label = f"({m}, {n})"
            mn, make = m * n, _inputs(m, n, dtype)
            sl = stream_elements(mn, dtype)

            prov = partial(_providers, dtype, mn)
            out += [
                Case(
                    "add_layer_norm_forward",
                    label,
                    make,
                    prov(_fn_aln_fwd, _fn_aln_fwd_out, _unfused_ln_fwd, _np_aln_fwd, _torch_aln_fwd),
                    isz * (4 * mn + 2 * n) + 4 * 2 * m,
                    (2, 0, 2),
                    sl,
                    dtype=dtype,
                ),
                Case(
                    "add_layer_norm_backward",
                    label,
                    make,
                    prov(_fn_aln_bwd, _fn_aln_bwd_out, _unfused_ln_bwd, _np_aln_bwd, _torch_aln_bwd),
                    isz * (4 * mn + 4 * n) + 4 * 2 * m,
                    (3, 0, 1),
                    sl,
                    dtype=dtype,
                ),
                Case(
                    "add_rms_norm_forward",
                    label,
                    make,
                    prov(_fn_arms_fwd, _fn_arms_fwd_out, _unfused_rms_fwd, _np_arms_fwd, _torch_arms_fwd),
                    isz * (4 * mn + n) + 4 * m,
                    (2, 0, 2),
                    sl,
                    dtype=dtype,
                ),
                Case(
                    "add_rms_norm_backward",
                    label,
                    make,
                    prov(_fn_arms_bwd, _fn_arms_bwd_out, _unfused_rms_bwd, _np_arms_bwd, _torch_arms_bwd),
                    isz * (4 * mn + 2 * n) + 4 * m,
                    (3, 0, 1),
                    sl,
                    dtype=dtype,
                ),
            ]
    return out
