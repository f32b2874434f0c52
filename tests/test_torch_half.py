"""fastnorm.torch on CPU bfloat16 / float16 tensors (issue 13): every functional op and its module.

Zero-copy through ``fastnorm.torch._common._arr/_ten`` (bfloat16 as ``ml_dtypes.bfloat16``). Forward and
backward are held to DESIGN.md's error criterion against a float64 reference on the same 16-bit inputs:
fastnorm's error <= 2x the error of torch's op in the same dtype (or, where torch has none, of the float32
computation rounded to the dtype) + a few units of the dtype, with the statistical slack of
``tests/_util.assert_close_to_ref(sample_slack=True)`` for the outputs of few elements (a gradient per
channel: 6 for GroupNorm). Inputs include large offsets (1e3 + noise).

An op whose CPU kernels do not take 16-bit data on this build is skipped with the op's TypeError; its
module then falls back to torch with a FastnormFallbackWarning (tested either way).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import pytest

from ._util import assert_close_to_ref

torch = pytest.importorskip("torch")
FF = pytest.importorskip("fastnorm.torch.functional")
FN = pytest.importorskip("fastnorm.torch.nn")
TF = torch.nn.functional

HALF = [torch.bfloat16, torch.float16]


@dataclass
class Case:
    op: str  # fastnorm op name (the probe in unsupported_reason)
    make: Callable  # (gen, dtype, param_dtype) -> dict of leaf tensors
    fast: Callable  # dict -> tensor (fastnorm.torch.functional)
    ref: Callable  # dict -> tensor (torch)
    module: Callable | None = None  # (dtype, param_dtype) -> (fastnorm module, x shape)


def _leaf(gen, shape, dtype, scale=1.0, shift=0.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype).requires_grad_()


def _pos(gen, shape, dtype):
    return (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5).to(dtype).requires_grad_()


def _rows_make(shift, bias=True, shape=(6, 48)):
    def make(gen, dt, pdt):
        n = shape[-1]
        d = {"x": _leaf(gen, shape, dt, shift=shift), "weight": _pos(gen, (n,), pdt)}
        d["bias"] = _leaf(gen, (n,), pdt) if bias else None
        return d

    return make


def _chan_make(shape, shift=0.0):
    def make(gen, dt, pdt):
        c = shape[1]
        return {"x": _leaf(gen, shape, dt, shift=shift), "weight": _pos(gen, (c,), pdt), "bias": _leaf(gen, (c,), pdt)}

    return make


def _x_make(shape):
    def make(gen, dt, pdt):
        return {"x": _leaf(gen, shape, dt)}

    return make


def _wn_make(gen, dt, pdt):
    return {"v": _leaf(gen, (8, 5, 3), dt), "g": _pos(gen, (8, 1, 1), dt)}


def _cos_make(gen, dt, pdt):
    return {"x": _leaf(gen, (6, 16), dt), "w": _leaf(gen, (5, 16), dt)}


CASES = {
    "layer_norm": Case(
        "layer_norm",
        _rows_make(0.0),
        lambda a: FF.layer_norm(a["x"], (48,), a["weight"], a["bias"], 1e-5),
        lambda a: TF.layer_norm(a["x"], (48,), a["weight"], a["bias"], 1e-5),
        lambda dt, pdt: (FN.LayerNorm(48, dtype=pdt), (6, 48)),
    ),
    "layer_norm_offset": Case(
        "layer_norm",
        _rows_make(1e3),
        lambda a: FF.layer_norm(a["x"], (48,), a["weight"], a["bias"], 1e-5),
        lambda a: TF.layer_norm(a["x"], (48,), a["weight"], a["bias"], 1e-5),
    ),
    "rms_norm": Case(
        "rms_norm",
        _rows_make(0.0, bias=False),
        lambda a: FF.rms_norm(a["x"], (48,), a["weight"], 1e-6),
        lambda a: TF.rms_norm(a["x"], (48,), a["weight"], 1e-6),
        lambda dt, pdt: (FN.RMSNorm(48, eps=1e-6, dtype=pdt), (6, 48)),
    ),
    "rms_norm_offset": Case(
        "rms_norm",
        _rows_make(1e3, bias=False),
        lambda a: FF.rms_norm(a["x"], (48,), a["weight"], 1e-6),
        lambda a: TF.rms_norm(a["x"], (48,), a["weight"], 1e-6),
    ),
    "batch_norm": Case(
        "batch_norm",
        _chan_make((4, 3, 5, 6), shift=1e3),
        lambda a: FF.batch_norm(a["x"], None, None, a["weight"], a["bias"], True, 0.1, 1e-5),
        lambda a: TF.batch_norm(a["x"], None, None, a["weight"], a["bias"], True, 0.1, 1e-5),
        lambda dt, pdt: (FN.BatchNorm2d(3, dtype=pdt), (4, 3, 5, 6)),
    ),
    "instance_norm": Case(
        "instance_norm",
        _chan_make((3, 4, 25)),
        lambda a: FF.instance_norm(a["x"], None, None, a["weight"], a["bias"], True, 0.1, 1e-5),
        lambda a: TF.instance_norm(a["x"], None, None, a["weight"], a["bias"], True, 0.1, 1e-5),
        lambda dt, pdt: (FN.InstanceNorm1d(4, affine=True, dtype=pdt), (3, 4, 25)),
    ),
    "group_norm": Case(
        "group_norm",
        _chan_make((3, 6, 4, 5), shift=1e3),
        lambda a: FF.group_norm(a["x"], 3, a["weight"], a["bias"], 1e-5),
        lambda a: TF.group_norm(a["x"], 3, a["weight"], a["bias"], 1e-5),
        lambda dt, pdt: (FN.GroupNorm(3, 6, dtype=pdt), (3, 6, 4, 5)),
    ),
    "local_response_norm": Case(
        "local_response_norm",
        _x_make((2, 7, 12)),
        lambda a: FF.local_response_norm(a["x"], 3, 1e-2, 0.75, 1.0),
        lambda a: TF.local_response_norm(a["x"], 3, 1e-2, 0.75, 1.0),
        lambda dt, pdt: (FN.LocalResponseNorm(3, 1e-2), (2, 7, 12)),
    ),
    "weight_norm": Case(
        "weight_norm",
        _wn_make,
        lambda a: FF.weight_norm(a["v"], a["g"], 0),
        lambda a: torch._weight_norm(a["v"], a["g"], 0),
    ),
    "cosine_linear": Case(
        "cosine_linear",
        _cos_make,
        lambda a: FF.cosine_linear(a["x"], a["w"], 1e-8),
        lambda a: TF.linear(TF.normalize(a["x"], dim=-1, eps=1e-8), TF.normalize(a["w"], dim=-1, eps=1e-8)),
    ),
}
# Ops whose weight and bias may be float32 beside 16-bit data (torch's mixed-dtype LayerNorm).
MIXED = {"layer_norm", "layer_norm_offset", "rms_norm", "batch_norm", "group_norm", "instance_norm"}


def _skip_unless_supported(op: str, dt) -> None:
    reason = FF.unsupported_reason(torch.empty(0, dtype=dt), op=op)
    if reason is not None:
        pytest.skip(f"16-bit {op} kernels are not on this branch: {reason}")


def _cast(a: dict, dtype) -> dict:
    """Detached leaf copies (requires_grad where a's tensor had it), cast to ``dtype`` when given."""
    return {
        k: None if v is None else v.detach().to(dtype or v.dtype).requires_grad_(v.requires_grad) for k, v in a.items()
    }


def _run(f, a: dict, dy):
    y = f(a)
    leaves = [k for k, v in a.items() if v is not None and v.requires_grad]
    grads = torch.autograd.grad(y, [a[k] for k in leaves], dy.to(y.dtype))
    return y, dict(zip(leaves, grads))


def _other(case: Case, a: dict, dy, dt):
    """torch's op on the 16-bit inputs; where torch has no such kernel, float32 rounded to ``dt``."""
    try:
        return _run(case.ref, _cast(a, None), dy)
    except (RuntimeError, NotImplementedError):
        y, g = _run(case.ref, _cast(a, torch.float32), dy)
        return y.to(dt), {k: v.to(a[k].dtype) for k, v in g.items()}


@pytest.mark.parametrize("param_dtype", ["same", "float32"])
@pytest.mark.parametrize("dt", HALF, ids=["bf16", "f16"])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_backward_error_criterion(name, dt, param_dtype):
    case = CASES[name]
    if param_dtype == "float32" and name not in MIXED:
        pytest.skip("no float32 parameters beside 16-bit data for this op")
    _skip_unless_supported(case.op, dt)
    pdt = dt if param_dtype == "same" else torch.float32
    gen = torch.Generator().manual_seed(13)
    a = case.make(gen, dt, pdt)
    y = case.ref(_cast(a, torch.float64))
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(dt)

    got, ggot = _run(case.fast, _cast(a, None), dy)
    other, gother = _other(case, a, dy, dt)
    ref, gref = _run(case.ref, _cast(a, torch.float64), dy.double())

    assert got.dtype == dt
    assert got.shape == ref.shape
    assert_close_to_ref(got, other, ref, name=f"{name} {dt} forward", sample_slack=True)
    for k, g in ggot.items():
        assert g.dtype == a[k].dtype, f"{name}: d{k} has dtype {g.dtype}, its parameter {a[k].dtype}"
        assert_close_to_ref(g, gother[k].to(g.dtype), gref[k], name=f"{name} {dt} d{k}", sample_slack=True)


@pytest.mark.parametrize("dt", HALF, ids=["bf16", "f16"])
def test_zero_copy_views(dt):
    """_arr/_ten: a 16-bit CPU tensor and its NumPy view share memory, both ways, bit for bit."""
    from fastnorm.torch._common import _arr, _ten

    t = torch.randn(5, 3).to(dt)
    a = _arr(t)
    assert a.dtype == (np.dtype(ml_dtypes.bfloat16) if dt == torch.bfloat16 else np.float16)
    assert a.ctypes.data == t.data_ptr()
    back = _ten(a, t)
    assert back.dtype == dt
    assert back.data_ptr() == t.data_ptr()
    assert torch.equal(back, t)


@pytest.mark.parametrize("dt", HALF, ids=["bf16", "f16"])
@pytest.mark.parametrize("name", [k for k, c in CASES.items() if c.module is not None])
def test_module(name, dt):
    """The module runs fastnorm when the op takes 16-bit data (no warning, the functional op's result bit for
    bit), torch's forward with a FastnormFallbackWarning otherwise."""
    case = CASES[name]
    m, shape = case.module(dt, dt)
    m.train()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(dt)
    supported = FF.unsupported_reason(x, op=case.op) is None
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y = m(x)
    fell_back = any(issubclass(r.category, FN.FastnormFallbackWarning) for r in w)
    assert fell_back == (not supported)
    base = type(m).__mro__[1] if not name.startswith(("batch", "instance")) else type(m).__mro__[2]
    torch_m = base.__new__(base)
    torch_m.__dict__.update(m.__dict__)
    expect = torch_m(x) if not supported else None
    assert y.dtype == dt
    assert y.shape == x.shape
    if supported:
        a = {"x": x, "weight": getattr(m, "weight", None), "bias": getattr(m, "bias", None)}
        if name == "local_response_norm":
            expect = FF.local_response_norm(x, m.size, m.alpha, m.beta, m.k)
        elif name == "batch_norm":
            expect = FF.batch_norm(x, None, None, a["weight"], a["bias"], True, 0.1, m.eps)
        elif name == "instance_norm":
            expect = FF.instance_norm(x, None, None, a["weight"], a["bias"], True, 0.1, m.eps)
        else:
            expect = case.fast({**a, "x": x}) if name != "rms_norm" else FF.rms_norm(x, (48,), m.weight, m.eps)
    assert torch.equal(y, expect)
