"""fastnorm.torch.functional driven by PyTorch's own sample inputs (``common_methods_invocations.op_db``).

For every sample torch generates for ``nn.functional.{layer_norm, rms_norm, batch_norm, instance_norm,
group_norm, local_response_norm}`` (float32 and float64, requires_grad=True): where torch raises, fastnorm
raises too; otherwise fastnorm must run and its output, every input gradient and the running statistics it
updates must meet DESIGN.md's error criterion: fastnorm's error against torch's float64 result at most
twice torch's own same-dtype error plus a few ulps of slack. Dtypes fastnorm's CPU kernels lack raise a
clear TypeError (the ``fastnorm.torch.nn`` modules fall back to torch instead), never a wrong answer.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
FF = pytest.importorskip("fastnorm.torch.functional")
cmi = pytest.importorskip("torch.testing._internal.common_methods_invocations")

OPS = ["layer_norm", "rms_norm", "batch_norm", "instance_norm", "group_norm", "local_response_norm"]
DTYPES = [torch.float32, torch.float64]


def _opinfo(name):
    infos = [o for o in cmi.op_db if o.name == f"nn.functional.{name}" and o.variant_test_name == ""]
    assert len(infos) == 1, name
    return infos[0]


@functools.cache
def _samples(name, dtype):
    # sample_inputs draws random tensors: seeded, and cached (tests work on private copies)
    torch.manual_seed(0)
    return list(_opinfo(name).sample_inputs("cpu", dtype, requires_grad=True))


PARAMS = [(name, dtype, i) for name in OPS for dtype in DTYPES for i in range(len(_samples(name, dtype)))]


def _map(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def _copy(t, dtype=None):
    """A private copy of a sample tensor (same strides), a fresh leaf when it requires grad."""
    c = torch.empty_strided(t.size(), t.stride(), dtype=dtype or t.dtype)
    with torch.no_grad():
        c.copy_(t)
    return c.requires_grad_(t.requires_grad)


def _tensors(obj):
    out = []
    _map(obj, out.append)
    return out


def _call(fn, sample, dtype=None):
    """fn on private copies of the sample; returns (output or exception, tensors passed, output grads)."""
    inp = _copy(sample.input, dtype)
    args = _map(list(sample.args), lambda t: _copy(t, dtype))
    kwargs = _map(dict(sample.kwargs), lambda t: _copy(t, dtype))
    tensors = [inp, *_tensors(args), *_tensors(kwargs)]
    try:
        out = fn(inp, *args, **kwargs)
    except Exception as e:
        return e, tensors, None
    leaves = [t for t in tensors if t.requires_grad]
    grads = None
    if out.requires_grad and leaves:
        gen = torch.Generator().manual_seed(1)
        dy = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
        grads = torch.autograd.grad(out, leaves, dy, allow_unused=True)
    return out.detach(), tensors, grads


def _check(got, other, ref, name, dtype):
    """The error criterion; entries where torch's own same-dtype result and the float64 reference disagree
    on being finite (a variance + negative eps at the edge of 0) are left out."""
    if ref is None:
        assert got is None or not torch.any(got), name  # an unused input: no gradient (or zeros)
        return
    assert got is not None, f"{name}: no gradient"
    got, other, ref = (t.detach().double() for t in (got, other, ref))
    assert got.shape == ref.shape, name
    fin_r, fin_o = torch.isfinite(ref), torch.isfinite(other)
    keep = fin_r == fin_o
    assert torch.equal(torch.isfinite(got)[keep], fin_r[keep]), f"{name}: non-finite pattern differs"
    nonfinite = keep & ~fin_r
    assert torch.equal(got[nonfinite].isnan(), ref[nonfinite].isnan()), f"{name}: NaN vs inf"
    assert torch.equal(got[nonfinite & ~ref.isnan()], ref[nonfinite & ~ref.isnan()]), f"{name}: inf sign"
    m = keep & fin_r
    if not torch.any(m):
        return
    err = (got[m] - ref[m]).abs().max().item()
    err_torch = (other[m] - ref[m]).abs().max().item()
    scale = max(ref[m].abs().max().item(), 1.0)
    # float64 results are compared with torch's float64 (the reference itself): a few hundred ulps
    ulps = 8 if dtype == torch.float32 else 256
    bound = 2 * err_torch + ulps * torch.finfo(dtype).eps * scale
    assert err <= bound, f"{name}: error {err:.3g} > 2 x torch's {err_torch:.3g} + slack ({bound:.3g})"


@pytest.mark.parametrize(("name", "dtype", "index"), PARAMS, ids=[f"{n}-{str(d)[6:]}-{i}" for n, d, i in PARAMS])
def test_op_db_samples(name, dtype, index):
    sample = _samples(name, dtype)[index]
    torch_fn = getattr(torch.nn.functional, name)
    out_t, tens_t, grads_t = _call(torch_fn, sample)
    out_f, tens_f, grads_f = _call(getattr(FF, name), sample)
    if isinstance(out_t, Exception):
        assert isinstance(out_f, Exception), f"torch raised {out_t!r}, fastnorm returned a result"
        return
    if isinstance(out_f, Exception):
        raise AssertionError(f"torch accepts this sample ({sample}) but fastnorm raised {out_f!r}")
    out_r, tens_r, grads_r = _call(torch_fn, sample, torch.float64)
    assert out_f.dtype == out_t.dtype
    assert out_f.shape == out_t.shape
    _check(out_f, out_t, out_r, "output", dtype)
    for i, (f, t, r) in enumerate(zip(tens_f, tens_t, tens_r)):
        if not t.requires_grad:  # running statistics: updated (or left) as torch does
            _check(f, t, r, f"tensor #{i} after the call", dtype)
    if grads_t is not None:
        assert grads_f is not None
        assert len(grads_f) == len(grads_t)
        for i, (f, t, r) in enumerate(zip(grads_f, grads_t, grads_r)):
            _check(f, t, r, f"gradient #{i}", dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.complex64], ids=str)
@pytest.mark.parametrize("name", OPS)
def test_dtypes_fastnorm_lacks_raise_a_clear_error(name, dtype):
    torch.manual_seed(0)
    info = _opinfo(name)
    if dtype not in info.supported_dtypes("cpu"):
        pytest.skip(f"torch has no CPU {name} for {dtype}")
    if FF.unsupported_reason(torch.empty(0, dtype=dtype), op=name) is None:
        pytest.skip(f"fastnorm's {name} kernels take {dtype} (tested in tests/test_torch_half.py)")
    for sample in info.sample_inputs("cpu", dtype, requires_grad=dtype.is_floating_point):
        FF_call = getattr(FF, name)
        with pytest.raises(TypeError, match=rf"fastnorm.torch.functional.{name}: dtype {dtype} is not supported"):
            FF_call(sample.input, *sample.args, **sample.kwargs)


def test_samples_cover_the_issue_cases():
    """The op_db samples include what issue 12 found refused: momentum outside [0, 1], negative eps, an
    empty 1-D batch norm input, an empty batch."""
    seen = set()
    for name in OPS:
        for s in _samples(name, torch.float32):
            m, e = s.kwargs.get("momentum"), s.kwargs.get("eps")
            if m is not None and not 0 <= m <= 1:
                seen.add("momentum")
            if e is not None and e < 0:
                seen.add(f"negative eps {name}")
            if s.input.numel() == 0:
                seen.add(f"empty {name}")
    assert {"momentum", "negative eps layer_norm", "negative eps group_norm", "empty batch_norm"} <= seen, seen
    assert np.all([name in {o.name.removeprefix("nn.functional.") for o in cmi.op_db} for name in OPS])
