"""Benchmark cases: BatchNorm (NCHW, channels-last), GroupNorm, InstanceNorm; forward and backward, in
float32, bfloat16 and float16.

16-bit cases: x and dy in the 16-bit dtype, weight, bias and running statistics float32 (torch's mixed-dtype
CPU norms, as under autocast), statistics float32; bytes and the streaming bound count 2-byte data items.
The NumPy reference runs in float32 and, at sizes where it finishes in seconds, float16.

BatchNorm forward is training mode with running statistics updated (what a training step does). torch's
backward is ATen's own kernel called directly where it has one (batch norm, group norm: torch's best case, no
autograd overhead); instance norm has none (it is composite over batch norm), so autograd is timed there.
"""

from __future__ import annotations

import numpy as np

import fastnorm
from fastnorm import reference as R

from ._core import DTYPES, Case, as_torch, np_dtype, random_array, stream_elements, torch_or_none

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

    def fn_fwd(s):
        return lambda: fastnorm.batch_norm_forward(
            s["x"], s["w"], s["b"], s["rm"], s["rv"], momentum=MOMENTUM, eps=EPS, axis=axis
        )

    def fn_fwd_out(s):
        out = (np.empty_like(s["x"]), np.empty_like(s["w"]), np.empty_like(s["w"]))
        return lambda: fastnorm.batch_norm_forward(
            s["x"], s["w"], s["b"], s["rm"], s["rv"], momentum=MOMENTUM, eps=EPS, axis=axis, out=out
        )

    def np_fwd(s):
        rm, rv = s["rm"].copy(), s["rv"].copy()
        return lambda: R.batch_norm_forward(s["x"], s["w"], s["b"], rm, rv, momentum=MOMENTUM, eps=EPS, axis=axis)

    def torch_fwd(s):
        torch = torch_or_none()
        x = _torch_nchw(torch, s["x"], channels_last)
        w, b = as_torch(torch, s["w"]), as_torch(torch, s["b"])
        rm, rv = as_torch(torch, s["rm"].copy()), as_torch(torch, s["rv"].copy())
        return lambda: torch.nn.functional.batch_norm(x, rm, rv, w, b, True, MOMENTUM, EPS)

    def fn_bwd(s):
        return lambda: fastnorm.batch_norm_backward(
            s["dy"], s["x"], s["bn_mean"], s["bn_rstd"], s["w"], s["b"], axis=axis
        )

    def fn_bwd_out(s):
        out = (np.empty_like(s["x"]), np.empty_like(s["w"]), np.empty_like(s["w"]))
        return lambda: fastnorm.batch_norm_backward(
            s["dy"], s["x"], s["bn_mean"], s["bn_rstd"], s["w"], s["b"], axis=axis, out=out
        )

    def np_bwd(s):
        return lambda: R.batch_norm_backward(s["dy"], s["x"], s["bn_mean"], s["bn_rstd"], s["w"], s["b"], axis=axis)

    def torch_bwd(s):
        torch = torch_or_none()
        x, dy = (_torch_nchw(torch, s[k], channels_last) for k in ("x", "dy"))
        w, b = as_torch(torch, s["w"]), as_torch(torch, s["b"])
        rm, rv = as_torch(torch, s["rm"].copy()), as_torch(torch, s["rv"].copy())
        _, mean, invstd = torch.ops.aten.native_batch_norm(x, w, b, rm, rv, True, MOMENTUM, EPS)
        mask = [True, True, True]
        return lambda: torch.ops.aten.native_batch_norm_backward(dy, x, w, rm, rv, mean, invstd, True, EPS, mask)

    return (fn_fwd, fn_fwd_out, np_fwd, torch_fwd), (fn_bwd, fn_bwd_out, np_bwd, torch_bwd)


# ------------------------------------------------------------------------------------------ GroupNorm
def _gn_providers(groups):
    def fn_fwd(s):
        return lambda: fastnorm.group_norm_forward(s["x"], groups, s["w"], s["b"], eps=EPS)

    def fn_fwd_out(s):
        out = (np.empty_like(s["x"]), np.empty_like(s["gn_mean"]), np.empty_like(s["gn_rstd"]))
        return lambda: fastnorm.group_norm_forward(s["x"], groups, s["w"], s["b"], eps=EPS, out=out)

    def np_fwd(s):
        return lambda: R.group_norm_forward(s["x"], groups, s["w"], s["b"], eps=EPS)

    def torch_fwd(s):
        torch = torch_or_none()
        x, w, b = (as_torch(torch, s[k]) for k in ("x", "w", "b"))
        return lambda: torch.nn.functional.group_norm(x, groups, w, b, EPS)

    def fn_bwd(s):
        return lambda: fastnorm.group_norm_backward(s["dy"], s["x"], s["gn_mean"], s["gn_rstd"], groups, s["w"], s["b"])

    def fn_bwd_out(s):
        out = (np.empty_like(s["x"]), np.empty_like(s["w"]), np.empty_like(s["w"]))
        return lambda: fastnorm.group_norm_backward(
            s["dy"], s["x"], s["gn_mean"], s["gn_rstd"], groups, s["w"], s["b"], out=out
        )

    def np_bwd(s):
        return lambda: R.group_norm_backward(s["dy"], s["x"], s["gn_mean"], s["gn_rstd"], groups, s["w"], s["b"])

    def torch_bwd(s):
        torch = torch_or_none()
        x, dy, w, b = (as_torch(torch, s[k]) for k in ("x", "dy", "w", "b"))
        n, c = x.shape[:2]
        hw = x[0, 0].numel()
        _, mean, rstd = torch.ops.aten.native_group_norm(x, w, b, n, c, hw, groups, EPS)
        mask = [True, True, True]
        return lambda: torch.ops.aten.native_group_norm_backward(dy, x, mean, rstd, w, n, c, hw, groups, mask)

    return (fn_fwd, fn_fwd_out, np_fwd, torch_fwd), (fn_bwd, fn_bwd_out, np_bwd, torch_bwd)


# ------------------------------------------------------------------------------------------ InstanceNorm
def _in_providers():
    def fn_fwd(s):
        return lambda: fastnorm.instance_norm_forward(s["x"], s["w"], s["b"], eps=EPS)

    def fn_fwd_out(s):
        out = (np.empty_like(s["x"]), np.empty_like(s["in_mean"]), np.empty_like(s["in_rstd"]))
        return lambda: fastnorm.instance_norm_forward(s["x"], s["w"], s["b"], eps=EPS, out=out)

    def np_fwd(s):
        return lambda: R.instance_norm_forward(s["x"], s["w"], s["b"], eps=EPS)

    def torch_fwd(s):
        torch = torch_or_none()
        x, w, b = (as_torch(torch, s[k]) for k in ("x", "w", "b"))
        return lambda: torch.nn.functional.instance_norm(x, None, None, w, b, True, MOMENTUM, EPS)

    def fn_bwd(s):
        return lambda: fastnorm.instance_norm_backward(s["dy"], s["x"], s["in_mean"], s["in_rstd"], s["w"], s["b"])

    def fn_bwd_out(s):
        out = (np.empty_like(s["x"]), np.empty_like(s["w"]), np.empty_like(s["w"]))
        return lambda: fastnorm.instance_norm_backward(
            s["dy"], s["x"], s["in_mean"], s["in_rstd"], s["w"], s["b"], out=out
        )

    def np_bwd(s):
        return lambda: R.instance_norm_backward(s["dy"], s["x"], s["in_mean"], s["in_rstd"], s["w"], s["b"])

    def torch_bwd(s):
        # No ATen kernel of its own: what a torch user gets, autograd through F.instance_norm.
        torch = torch_or_none()
        x = as_torch(torch, s["x"]).requires_grad_()
        w = as_torch(torch, s["w"]).requires_grad_()
        b = as_torch(torch, s["b"]).requires_grad_()
        dy = as_torch(torch, s["dy"])
        y = torch.nn.functional.instance_norm(x, None, None, w, b, True, MOMENTUM, EPS)
        return lambda: torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)

    return (fn_fwd, fn_fwd_out, np_fwd, torch_fwd), (fn_bwd, fn_bwd_out, np_bwd, torch_bwd)


def _providers(dtype, numel, fn, fn_out, ref, tch):
    p = {"fastnorm": fn, "fastnorm out=": fn_out}
    if dtype == "float32" or (dtype == "float16" and numel <= NUMPY_HALF_MAX):
        p["numpy"] = ref
    if torch_or_none() is not None:
        p["torch"] = tch
    return p


def _pair(op, label, make, providers, fwd_bytes, bwd_bytes, numel, dtype):
    """Forward and backward cases; ``*_bytes`` are (data elements, float32 elements) moved."""
    fwd, bwd = providers
    isz, sl = np_dtype(dtype).itemsize, stream_elements(numel, dtype)

    def nbytes(counts):
        return isz * counts[0] + 4 * counts[1]

    return [
        Case(f"{op}_forward", label, make, _providers(dtype, numel, *fwd), nbytes(fwd_bytes), (1, 0, 1), sl,
             dtype=dtype),
        Case(f"{op}_backward", label, make, _providers(dtype, numel, *bwd), nbytes(bwd_bytes), (2, 0, 1), sl,
             dtype=dtype),
    ]  # fmt: skip


def cases(quick: bool) -> list[Case]:
    out = []
    for dtype in DTYPES:
        for shape in BN_QUICK if quick else BN_FULL:
            numel, c = int(np.prod(shape)), shape[1]
            fwd_bytes = (2 * numel, 8 * c)  # x, y; weight, bias, running stats in and out, mean, rstd
            bwd_bytes = (3 * numel, 5 * c)  # dy, x, dx; mean, rstd, weight, dweight, dbias
            for channels_last in (False, True):
                n, c_, h, w = shape
                label = f"{(n, h, w, c_)} NHWC" if channels_last else f"{shape} NCHW"
                make = _inputs(shape, channels_last, dtype=dtype)
                providers = _bn_providers(channels_last)
                out += _pair("batch_norm", label, make, providers, fwd_bytes, bwd_bytes, numel, dtype)
        for shape, groups in GN_QUICK if quick else GN_FULL:
            numel, (n, c) = int(np.prod(shape)), shape[:2]
            make = _inputs(shape, groups=groups, dtype=dtype)
            gn = ((2 * numel, 2 * c + 2 * n * groups), (3 * numel, 3 * c + 2 * n * groups))
            out += _pair("group_norm", f"{shape} G={groups}", make, _gn_providers(groups), *gn, numel, dtype)
            inn = ((2 * numel, 2 * c + 2 * n * c), (3 * numel, 3 * c + 2 * n * c))
            out += _pair("instance_norm", f"{shape}", make, _in_providers(), *inn, numel, dtype)
    return out
