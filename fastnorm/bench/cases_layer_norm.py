"""Benchmark cases: LayerNorm and RMSNorm, forward and backward, float32, (M, N) rows."""

from __future__ import annotations

import numpy as np

import fastnorm
from fastnorm import reference as R

from ._core import Case, torch_or_none

FULL_SHAPES = [(4096, 1024), (8192, 768), (16384, 4096)]
QUICK_SHAPES = [(2048, 1024), (4096, 4096)]
EPS = 1e-5


def _inputs(m, n):
    def make(rng):
        x = rng.standard_normal((m, n), dtype=np.float32)
        w = rng.standard_normal(n, dtype=np.float32)
        b = rng.standard_normal(n, dtype=np.float32)
        dy = rng.standard_normal((m, n), dtype=np.float32)
        y, mean, rstd = fastnorm.layer_norm_forward(x, w, b, eps=EPS)
        _, rms_rstd = fastnorm.rms_norm_forward(x, w, eps=EPS)
        return dict(x=x, w=w, b=b, dy=dy, mean=mean, rstd=rstd, rms_rstd=rms_rstd)

    return make


# ------------------------------------------------------------------------------------------ providers
def _fn_ln_fwd(s):
    return lambda: fastnorm.layer_norm_forward(s["x"], s["w"], s["b"], eps=EPS)


def _fn_ln_fwd_out(s):
    out = (np.empty_like(s["x"]), np.empty_like(s["mean"]), np.empty_like(s["rstd"]))
    return lambda: fastnorm.layer_norm_forward(s["x"], s["w"], s["b"], eps=EPS, out=out)


def _np_ln_fwd(s):
    return lambda: R.layer_norm_forward(s["x"], s["w"], s["b"], eps=EPS)


def _torch_ln_fwd(s):
    torch = torch_or_none()
    x, w, b = (torch.from_numpy(s[k]) for k in ("x", "w", "b"))
    shape = (x.shape[-1],)
    return lambda: torch.nn.functional.layer_norm(x, shape, w, b, EPS)


def _fn_ln_bwd(s):
    return lambda: fastnorm.layer_norm_backward(s["dy"], s["x"], s["mean"], s["rstd"], s["w"], s["b"])


def _fn_ln_bwd_out(s):
    out = (np.empty_like(s["x"]), np.empty_like(s["w"]), np.empty_like(s["b"]))
    return lambda: fastnorm.layer_norm_backward(s["dy"], s["x"], s["mean"], s["rstd"], s["w"], s["b"], out=out)


def _np_ln_bwd(s):
    return lambda: R.layer_norm_backward(s["dy"], s["x"], s["mean"], s["rstd"], s["w"], s["b"])


def _torch_ln_bwd(s):
    # ATen's own backward kernel, called directly: torch's best case (no autograd overhead).
    torch = torch_or_none()
    x, w, b, dy = (torch.from_numpy(s[k]) for k in ("x", "w", "b", "dy"))
    shape = [x.shape[-1]]
    _, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, w, b, EPS)
    mask = [True, True, True]
    return lambda: torch.ops.aten.native_layer_norm_backward(dy, x, shape, mean, rstd, w, b, mask)


def _fn_rms_fwd(s):
    return lambda: fastnorm.rms_norm_forward(s["x"], s["w"], eps=EPS)


def _fn_rms_fwd_out(s):
    out = (np.empty_like(s["x"]), np.empty_like(s["rms_rstd"]))
    return lambda: fastnorm.rms_norm_forward(s["x"], s["w"], eps=EPS, out=out)


def _np_rms_fwd(s):
    return lambda: R.rms_norm_forward(s["x"], s["w"], eps=EPS)


def _torch_rms_fwd(s):
    torch = torch_or_none()
    x, w = torch.from_numpy(s["x"]), torch.from_numpy(s["w"])
    shape = (x.shape[-1],)
    return lambda: torch.nn.functional.rms_norm(x, shape, w, EPS)


def _fn_rms_bwd(s):
    return lambda: fastnorm.rms_norm_backward(s["dy"], s["x"], s["rms_rstd"], s["w"])


def _fn_rms_bwd_out(s):
    out = (np.empty_like(s["x"]), np.empty_like(s["w"]))
    return lambda: fastnorm.rms_norm_backward(s["dy"], s["x"], s["rms_rstd"], s["w"], out=out)


def _np_rms_bwd(s):
    return lambda: R.rms_norm_backward(s["dy"], s["x"], s["rms_rstd"], s["w"])


def _torch_rms_bwd(s):
    # What a torch user gets: autograd through F.rms_norm (the graph is built once, outside the timing).
    torch = torch_or_none()
    x = torch.from_numpy(s["x"]).requires_grad_()
    w = torch.from_numpy(s["w"]).requires_grad_()
    dy = torch.from_numpy(s["dy"])
    y = torch.nn.functional.rms_norm(x, (x.shape[-1],), w, EPS)
    return lambda: torch.autograd.grad(y, (x, w), dy, retain_graph=True)


def _providers(fn, fn_out, ref, tch):
    p = {"fastnorm": fn, "fastnorm out=": fn_out, "numpy": ref}
    if torch_or_none() is not None:
        p["torch"] = tch
    return p


def cases(quick: bool) -> list[Case]:
    out = []
    for m, n in QUICK_SHAPES if quick else FULL_SHAPES:
        label = f"({m}, {n})"
        mn, make = m * n, _inputs(m, n)
        fwd_bytes = 4 * (2 * mn + 2 * n + 2 * m)
        bwd_bytes = 4 * (3 * mn + 4 * n + 2 * m)
        out += [
            Case("layer_norm_forward", label, make,
                 _providers(_fn_ln_fwd, _fn_ln_fwd_out, _np_ln_fwd, _torch_ln_fwd), fwd_bytes, (1, 0, 1), mn),
            Case("layer_norm_backward", label, make,
                 _providers(_fn_ln_bwd, _fn_ln_bwd_out, _np_ln_bwd, _torch_ln_bwd), bwd_bytes, (2, 0, 1), mn),
            Case("rms_norm_forward", label, make,
                 _providers(_fn_rms_fwd, _fn_rms_fwd_out, _np_rms_fwd, _torch_rms_fwd),
                 fwd_bytes - 4 * (n + m), (1, 0, 1), mn),
            Case("rms_norm_backward", label, make,
                 _providers(_fn_rms_bwd, _fn_rms_bwd_out, _np_rms_bwd, _torch_rms_bwd),
                 bwd_bytes - 4 * (2 * n + m), (2, 0, 1), mn),
        ]
    return out
