"""Benchmark cases: BatchNorm (NCHW, channels-last), GroupNorm, InstanceNorm; forward and backward, in
float32, bfloat16 and float16.

16-bit cases: x and dy in the 16-bit dtype, weight, bias and running statistics float32 (torch's mixed-dtype
CPU norms, as under autocast), statistics float32; bytes (the declarations', on those dtypes) and the streaming
bound count 2-byte data items.
The NumPy reference runs in float32 and, at sizes where it finishes in seconds, float16.

BatchNorm forward is training mode with running statistics updated (what a training step does). torch's
backward is ATen's own kernel called directly where it has one (batch norm, group norm: torch's best case, no
autograd overhead); instance norm has none (it is composite over batch norm), so autograd is timed there.
"""

from __future__ import annotations

import numpy as np

import fastnorm

from ._core import DTYPES, Case, as_torch, declared_case, op_providers, random_array, stream_elements, torch_or_none

EPS = 1e-5
MOMENTUM = 0.1
# (N, C, H, W)
BN_FULL = [(64, 64, 56, 56), (16, 3, 224, 224)]
BN_QUICK = [(16, 64, 28, 28)]
GN_FULL = [((32, 128, 56, 56), 32)]
GN_QUICK = [((8, 128, 28, 28), 32)]
NUMPY_HALF_MAX = 1 << 23  # NumPy's float16 arithmetic is scalar: its reference runs up to this many elements


def _inputs(shape, channels_last=False, groups=None, dtype="float32"):
    """x, dy (NCHW, or NHWC when channels_last) in ``dtype``, float32 weight, bias, running stats and the
    forward's saved stats (from the float32 kernels on the rounded x: no dependence on 16-bit kernels)."""

    def make(rng):
        n, c, h, w_ = shape
        s = (n, h, w_, c) if channels_last else shape
        x = random_array(rng, s, dtype)
        dy = random_array(rng, s, dtype)
        w = rng.standard_normal(c, dtype=np.float32)
        b = rng.standard_normal(c, dtype=np.float32)
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        d = dict(x=x, dy=dy, w=w, b=b, rm=rm, rv=rv)
        x32 = x.astype(np.float32)
        axis = -1 if channels_last else 1
        d["bn_mean"], d["bn_rstd"] = fastnorm.batch_norm_forward(x32, w, b, axis=axis, eps=EPS)[1:]
        if not channels_last:
            if groups is not None:
                d["gn_mean"], d["gn_rstd"] = fastnorm.group_norm_forward(x32, groups, w, b, eps=EPS)[1:]
            d["in_mean"], d["in_rstd"] = fastnorm.instance_norm_forward(x32, w, b, eps=EPS)[1:]
        return d

    return make


def _torch_nchw(torch, a, channels_last):
    """A torch NCHW view of an array (NHWC memory stays NHWC: torch's channels_last format)."""
    t = as_torch(torch, a)
    return t.permute(0, 3, 1, 2) if channels_last else t


# ------------------------------------------------------------------------------------------ BatchNorm
def _bn_providers(channels_last):
    axis = -1 if channels_last else 1
    fwd = lambda s: dict(x=s["x"], weight=s["w"], bias=s["b"], running_mean=s["rm"], running_var=s["rv"],
                         momentum=MOMENTUM, eps=EPS, axis=axis)  # fmt: skip
    bwd = lambda s: dict(dy=s["dy"], x=s["x"], mean=s["bn_mean"], rstd=s["bn_rstd"], weight=s["w"], bias=s["b"],
                         axis=axis)  # fmt: skip

    def torch_fwd(s):
        torch = torch_or_none()
        x = _torch_nchw(torch, s["x"], channels_last)
        w, b = as_torch(torch, s["w"]), as_torch(torch, s["b"])
        rm, rv = as_torch(torch, s["rm"].copy()), as_torch(torch, s["rv"].copy())
        return lambda: torch.nn.functional.batch_norm(x, rm, rv, w, b, True, MOMENTUM, EPS)

    def torch_bwd(s):
        torch = torch_or_none()
        x, dy = (_torch_nchw(torch, s[k], channels_last) for k in ("x", "dy"))
        w, b = as_torch(torch, s["w"]), as_torch(torch, s["b"])
        rm, rv = as_torch(torch, s["rm"].copy()), as_torch(torch, s["rv"].copy())
        _, mean, invstd = torch.ops.aten.native_batch_norm(x, w, b, rm, rv, True, MOMENTUM, EPS)
        mask = [True, True, True]
        return lambda: torch.ops.aten.native_batch_norm_backward(dy, x, w, rm, rv, mean, invstd, True, EPS, mask)

    return (fwd, torch_fwd), (bwd, torch_bwd)


# ------------------------------------------------------------------------------------------ GroupNorm
def _gn_providers(groups):
    fwd = lambda s: dict(x=s["x"], num_groups=groups, weight=s["w"], bias=s["b"], eps=EPS)
    bwd = lambda s: dict(dy=s["dy"], x=s["x"], mean=s["gn_mean"], rstd=s["gn_rstd"], num_groups=groups,
                         weight=s["w"], bias=s["b"])  # fmt: skip

    def torch_fwd(s):
        torch = torch_or_none()
        x, w, b = (as_torch(torch, s[k]) for k in ("x", "w", "b"))
        return lambda: torch.nn.functional.group_norm(x, groups, w, b, EPS)

    def torch_bwd(s):
        torch = torch_or_none()
        x, dy, w, b = (as_torch(torch, s[k]) for k in ("x", "dy", "w", "b"))
        n, c = x.shape[:2]
        hw = x[0, 0].numel()
        _, mean, rstd = torch.ops.aten.native_group_norm(x, w, b, n, c, hw, groups, EPS)
        mask = [True, True, True]
        return lambda: torch.ops.aten.native_group_norm_backward(dy, x, mean, rstd, w, n, c, hw, groups, mask)

    return (fwd, torch_fwd), (bwd, torch_bwd)


# ------------------------------------------------------------------------------------------ InstanceNorm
def _in_providers():
    fwd = lambda s: dict(x=s["x"], weight=s["w"], bias=s["b"], eps=EPS)
    bwd = lambda s: dict(dy=s["dy"], x=s["x"], mean=s["in_mean"], rstd=s["in_rstd"], weight=s["w"], bias=s["b"])

    def torch_fwd(s):
        torch = torch_or_none()
        x, w, b = (as_torch(torch, s[k]) for k in ("x", "w", "b"))
        return lambda: torch.nn.functional.instance_norm(x, None, None, w, b, True, MOMENTUM, EPS)

    def torch_bwd(s):
        # No ATen kernel of its own: what a torch user gets, autograd through F.instance_norm.
        torch = torch_or_none()
        x = as_torch(torch, s["x"]).requires_grad_()
        w = as_torch(torch, s["w"]).requires_grad_()
        b = as_torch(torch, s["b"]).requires_grad_()
        dy = as_torch(torch, s["dy"])
        y = torch.nn.functional.instance_norm(x, None, None, w, b, True, MOMENTUM, EPS)
        return lambda: torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)

    return (fwd, torch_fwd), (bwd, torch_bwd)


def _providers(dtype, numel, op, kwargs, tch):
    p = op_providers(op, kwargs)
    if not (dtype == "float32" or (dtype == "float16" and numel <= NUMPY_HALF_MAX)):
        del p["numpy"]
    if torch_or_none() is not None:
        p["torch"] = tch
    return p


def _pair(op, label, make, providers, inputs, numel, dtype):
    """Forward and backward cases; ``inputs``: what ``make`` builds, as (shape, dtype) (their bytes)."""
    sl = stream_elements(numel, dtype)
    return [
        declared_case(name, label, make, inputs, p[0], _providers(dtype, numel, name, *p), streams, sl, dtype=dtype)
        for name, p, streams in zip((f"{op}_forward", f"{op}_backward"), providers, ((1, 0, 1), (2, 0, 1)))
    ]


def _shapes(shape, c, dtype, stats: dict) -> dict:
    """``_inputs``' arrays as (shape, dtype): x, dy of ``shape`` in ``dtype``; the float32 parameters and running
    statistics of the ``c`` channels and the saved statistics (``stats``: name -> shape)."""
    inputs = {"x": (shape, dtype), "dy": (shape, dtype)}
    inputs |= {k: (c, "float32") for k in ("w", "b", "rm", "rv")}
    return inputs | {k: (s, "float32") for k, s in stats.items()}


def cases(quick: bool) -> list[Case]:
    out = []
    for dtype in DTYPES:
        for shape in BN_QUICK if quick else BN_FULL:
            numel, c = int(np.prod(shape)), shape[1]
            for channels_last in (False, True):
                n, c_, h, w = shape
                label = f"{(n, h, w, c_)} NHWC" if channels_last else f"{shape} NCHW"
                make = _inputs(shape, channels_last, dtype=dtype)
                inputs = _shapes((n, h, w, c_) if channels_last else shape, c, dtype, {"bn_mean": c, "bn_rstd": c})
                out += _pair("batch_norm", label, make, _bn_providers(channels_last), inputs, numel, dtype)
        for shape, groups in GN_QUICK if quick else GN_FULL:
            numel, (n, c) = int(np.prod(shape)), shape[:2]
            make = _inputs(shape, groups=groups, dtype=dtype)
            stats = {"gn_mean": (n, groups), "gn_rstd": (n, groups), "in_mean": (n, c), "in_rstd": (n, c)}
            inputs = _shapes(shape, c, dtype, stats)
            out += _pair("group_norm", f"{shape} G={groups}", make, _gn_providers(groups), inputs, numel, dtype)
            out += _pair("instance_norm", f"{shape}", make, _in_providers(), inputs, numel, dtype)
    return out
