"""Benchmark cases: LocalResponseNorm, WeightNorm and CosineLinear, forward and backward, float32.

torch providers: ``F.local_response_norm`` (a composite of pad + avg_pool3d + pow on the CPU),
``torch._weight_norm`` (what ``nn.utils.weight_norm`` calls: fused for dim 0 / last, composite otherwise)
and ``F.linear(F.normalize(x), F.normalize(w))``; their backward passes are autograd over a graph built once,
outside the timing. cosine_linear is dominated by its matrix products (BLAS: NumPy's OpenBLAS for fastnorm,
torch's own for torch, both limited to fastnorm's thread count where threadpoolctl is installed), so its
GB/s and fraction of the streaming bound are not meaningful: compare its times.
"""

from __future__ import annotations

import numpy as np

import fastnorm

from ._core import Case, declared_case, op_providers, torch_or_none

LRN_SIZE = 5
LRN_FULL = [(64, 96, 55, 55), (64, 64, 56, 56)]
LRN_QUICK = [(16, 64, 28, 28)]
WN_FULL = [
    ((4096, 4096), 0),
    ((512, 512, 3, 3), 0),
    ((4096, 4096), 1),
    ((4096, 4096), None),
    ((512, 512, 3, 3), 1),
    ((512, 512, 3, 3), None),
]
WN_QUICK = [((1024, 1024), 0), ((1024, 1024), 1), ((256, 128, 3, 3), None)]
COS_FULL = [(1024, 512, 1000), (256, 512, 10000)]
COS_QUICK = [(256, 256, 1000)]
COS_EPS = 1e-8


def _providers(op, tch):
    p = op_providers(op, _ARGS[op])
    if torch_or_none() is not None:
        p["torch"] = tch
    return p


# ------------------------------------------------------------------------------------------ LocalResponseNorm
def _lrn_inputs(shape):
    def make(rng):
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        y, scale = fastnorm.local_response_norm_forward(x, LRN_SIZE)
        return dict(x=x, dy=dy, y=y, scale=scale)

    return make


def _torch_lrn_fwd(s):
    torch = torch_or_none()
    x = torch.from_numpy(s["x"])
    return lambda: torch.nn.functional.local_response_norm(x, LRN_SIZE)


def _torch_lrn_bwd(s):
    torch = torch_or_none()
    x = torch.from_numpy(s["x"]).requires_grad_()
    dy = torch.from_numpy(s["dy"])
    y = torch.nn.functional.local_response_norm(x, LRN_SIZE)
    return lambda: torch.autograd.grad(y, (x,), dy, retain_graph=True)


# ------------------------------------------------------------------------------------------ WeightNorm
def _g_shape(shape, dim):
    return () if dim is None else tuple(n if i == dim else 1 for i, n in enumerate(shape))


def _wn_inputs(shape, dim):
    def make(rng):
        v = rng.standard_normal(shape, dtype=np.float32)
        g = np.asarray(1.0 + rng.random(_g_shape(shape, dim)), dtype=np.float32)
        dw = rng.standard_normal(shape, dtype=np.float32)
        _, norm = fastnorm.weight_norm_forward(v, g, dim=dim)
        return dict(v=v, g=g, dw=dw, norm=norm, dim=dim)

    return make


def _torch_dim(dim):
    return -1 if dim is None else dim  # torch._weight_norm: -1 means the whole tensor


def _torch_wn_fwd(s):
    torch = torch_or_none()
    v, g = torch.from_numpy(s["v"]), torch.from_numpy(s["g"])
    return lambda: torch._weight_norm(v, g, _torch_dim(s["dim"]))


def _torch_wn_bwd(s):
    torch = torch_or_none()
    v = torch.from_numpy(s["v"]).requires_grad_()
    g = torch.from_numpy(s["g"]).requires_grad_()
    dw = torch.from_numpy(s["dw"])
    w = torch._weight_norm(v, g, _torch_dim(s["dim"]))
    return lambda: torch.autograd.grad(w, (v, g), dw, retain_graph=True)


# ------------------------------------------------------------------------------------------ CosineLinear
def _limit_blas_threads():
    """NumPy's BLAS to fastnorm's thread count (as torch is), where threadpoolctl is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(fastnorm.get_num_threads(), user_api="blas")


def _cos_inputs(b, d, o):
    def make(rng):
        x = rng.standard_normal((b, d), dtype=np.float32)
        w = rng.standard_normal((o, d), dtype=np.float32)
        dy = rng.standard_normal((b, o), dtype=np.float32)
        y, x_norm, w_norm = fastnorm.cosine_linear_forward(x, w, eps=COS_EPS)
        return dict(x=x, w=w, dy=dy, y=y, x_norm=x_norm, w_norm=w_norm)

    return make


def _torch_cos(torch, x, w):
    F = torch.nn.functional
    return F.linear(F.normalize(x, dim=-1, eps=COS_EPS), F.normalize(w, dim=-1, eps=COS_EPS))


def _torch_cos_fwd(s):
    torch = torch_or_none()
    x, w = torch.from_numpy(s["x"]), torch.from_numpy(s["w"])
    return lambda: _torch_cos(torch, x, w)


def _torch_cos_bwd(s):
    torch = torch_or_none()
    x = torch.from_numpy(s["x"]).requires_grad_()
    w = torch.from_numpy(s["w"]).requires_grad_()
    dy = torch.from_numpy(s["dy"])
    y = _torch_cos(torch, x, w)
    return lambda: torch.autograd.grad(y, (x, w), dy, retain_graph=True)


# ------------------------------------------------------------------------------------------ cases
def _cos_args(**names):
    """The arguments of a cosine_linear call (NumPy's BLAS limited to fastnorm's threads first)."""

    def kwargs(s):
        _limit_blas_threads()
        return {k: s[v] for k, v in names.items()} | {"eps": COS_EPS}

    return kwargs


# the public calls' arguments from the case's inputs (fastnorm, fastnorm out= and numpy providers follow)
_ARGS = {
    "local_response_norm_forward": lambda s: dict(x=s["x"], size=LRN_SIZE),
    "local_response_norm_backward": lambda s: dict(dy=s["dy"], x=s["x"], y=s["y"], scale=s["scale"], size=LRN_SIZE),
    "weight_norm_forward": lambda s: dict(v=s["v"], g=s["g"], dim=s["dim"]),
    "weight_norm_backward": lambda s: dict(dw=s["dw"], v=s["v"], g=s["g"], norm=s["norm"], dim=s["dim"]),
    "cosine_linear_forward": _cos_args(x="x", w="w"),
    "cosine_linear_backward": _cos_args(dy="dy", x="x", w="w", y="y", x_norm="x_norm", w_norm="w_norm"),
}


def _case(op, label, make, shapes, tch, streams, stream_len, **kw) -> Case:
    """A case whose bytes are ``op``'s declaration's on ``make``'s inputs (``shapes``: float32 arrays' shapes)."""
    inputs = {k: (v, "float32") if isinstance(v, tuple) else v for k, v in shapes.items()}
    return declared_case(op, label, make, inputs, _ARGS[op], _providers(op, tch), streams, stream_len, **kw)


def cases(quick: bool) -> list[Case]:
    out = []
    for shape in LRN_QUICK if quick else LRN_FULL:
        n = int(np.prod(shape))
        label, make = f"{shape} size={LRN_SIZE}", _lrn_inputs(shape)
        shapes = dict.fromkeys(("x", "dy", "y", "scale"), shape)
        out += [
            _case("local_response_norm_forward", label, make, shapes, _torch_lrn_fwd, (1, 0, 2), n),
            _case("local_response_norm_backward", label, make, shapes, _torch_lrn_bwd, (4, 0, 1), n),
        ]
    for shape, dim in WN_QUICK if quick else WN_FULL:
        n, small = int(np.prod(shape)), _g_shape(shape, dim)
        label, make = f"{shape} dim={dim}", _wn_inputs(shape, dim)
        shapes = dict(v=shape, dw=shape, g=small, norm=small, dim=dim)
        out += [
            _case("weight_norm_forward", label, make, shapes, _torch_wn_fwd, (1, 0, 1), n),
            _case("weight_norm_backward", label, make, shapes, _torch_wn_bwd, (2, 0, 1), n),
        ]
    for b, d, o in COS_QUICK if quick else COS_FULL:
        label, make = f"B={b} D={d} O={o}", _cos_inputs(b, d, o)
        shapes = dict(x=(b, d), w=(o, d), dy=(b, o), y=(b, o), x_norm=(b,), w_norm=(o,))
        fwd = _case("cosine_linear_forward", label, make, shapes, _torch_cos_fwd, (2, 0, 1), 1, tags=("blas-bound",))
        bwd = _case("cosine_linear_backward", label, make, shapes, _torch_cos_bwd, (2, 0, 1), 1, tags=("blas-bound",))
        for c in (fwd, bwd):  # the bound streams the case's bytes (its matrix products make it BLAS-bound)
            c.stream_len = c.nbytes // 12
        out += [fwd, bwd]
    return out
