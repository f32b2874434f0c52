"""16-bit storage (bfloat16, float16) for LayerNorm, RMSNorm and the fused residual add + norm on the CPU.

Criteria (DESIGN.md, issue 13): the error against the float64 reference on the same (widened) inputs is at
most twice that of torch's same-dtype op, and twice that of the float32 reference rounded to 16 bits, plus
one unit of the 16-bit format at the output's scale; every 16-bit output is exactly the round-to-nearest-even
of the float32 kernel's result on the widened inputs (one rounding); statistics and float32 parameters'
gradients are the float32 kernel's, bitwise.
"""

import ml_dtypes
import numpy as np
import pytest

import fastnorm
import fastnorm._kernels.cpu as cpu
from fastnorm import reference as R

from ._util import assert_close_to_ref, f64

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALF = [BF16, F16]
SHAPES = [(1, 1), (7, 13), (33, 1025), (4, 4099), (3, 2, 40)]


def _ids(v):
    return np.dtype(v).name if isinstance(v, (np.dtype, type)) else str(v)


def make(rng, shape, dtype, wdtype="same", offset=0.0, scale=1.5):
    """x, residual, weight, bias, dy, dh; weight/bias in x's dtype ("same"), float32, or None."""
    norm = shape[-1:]
    x = (rng.standard_normal(shape) * scale + offset).astype(dtype)
    res = rng.standard_normal(shape).astype(dtype)
    pd = None if wdtype is None else (dtype if wdtype == "same" else np.dtype(wdtype))
    w = None if pd is None else (1 + 0.5 * rng.standard_normal(norm)).astype(pd)
    b = None if pd is None else rng.standard_normal(norm).astype(pd)
    dy = rng.standard_normal(shape).astype(dtype)
    dh = rng.standard_normal(shape).astype(dtype)
    return x, res, w, b, dy, dh


def wide(*arrays):
    """16-bit arrays widened to float32 (exact); float32 arrays and None as they are."""
    return tuple(None if a is None else np.asarray(a).astype(np.float32) for a in arrays)


def bits(a):
    return np.asarray(a).view(np.uint16)


def rne(a32, dtype):
    """float32 -> 16-bit, round to nearest even (ml_dtypes' and NumPy's cast); overflow gives inf."""
    with np.errstate(over="ignore"):
        return np.asarray(a32, np.float32).astype(dtype)


def check16(got, others, ref, name):
    """DESIGN.md's criterion on a 16-bit (or float32) result: ``got``'s error against ``ref`` (float64) is at
    most 2x each comparator's error + one unit of got's 16-bit format (8 float32 units for a float32 result)
    at the scale of ref."""
    dt = np.asarray(got).dtype
    ulps = float(ml_dtypes.finfo(dt).eps) / float(np.finfo(np.float32).eps) if dt in HALF else 8.0
    for other in others:
        assert_close_to_ref(wide(got)[0], wide(other)[0], ref, name=name, ulps=ulps)


def torch_ref(dtype, fn):
    """fn(torch, torch_dtype) run with torch, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    return fn(torch, torch.bfloat16 if dtype == BF16 else torch.float16)


def _t(torch, a, tdt, grad=False):
    if a is None:
        return None
    t = torch.from_numpy(np.asarray(a).astype(np.float32))
    t = t.to(tdt) if np.asarray(a).dtype in HALF else t
    return t.requires_grad_(grad)


# ------------------------------------------------------------------------------- error vs torch / reference
@pytest.mark.parametrize("dtype", HALF, ids=_ids)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("wdtype", ["same", "float32", None], ids=str)
@pytest.mark.parametrize("offset", [0.0, 1e3], ids=["centered", "offset1e3"])
def test_layer_norm_error(rng, threads, dtype, shape, wdtype, offset):
    x, _, w, b, dy, _ = make(rng, shape, dtype, wdtype, offset, 8.0 if offset else 1.5)
    y, mean, rstd = fastnorm.layer_norm_forward(x, w, b)
    dx, dw, db = fastnorm.layer_norm_backward(dy, x, mean, rstd, w, b)
    assert y.dtype == dx.dtype == dtype
    assert mean.dtype == rstd.dtype == np.float32
    assert dw is None or (dw.dtype == w.dtype and db.dtype == b.dtype)
    ref_f = R.layer_norm_forward(*f64(x, w, b))
    ref_b = R.layer_norm_backward(*f64(dy, x, mean, rstd, w, b))
    low_f = R.layer_norm_forward(*wide(x, w, b))
    low_b = R.layer_norm_backward(*wide(dy, x, mean, rstd, w, b))
    rounded = [None if a is None else rne(a, r.dtype) for a, r in zip(low_f + low_b, (y, mean, rstd, dx, dw, db))]

    def run(torch, tdt):
        tx, tw, tb = _t(torch, x, tdt, True), _t(torch, w, tdt, True), _t(torch, b, tdt, True)
        ty = torch.nn.functional.layer_norm(tx, shape[-1:], tw, tb, 1e-5)
        ty.backward(_t(torch, dy, tdt))
        return ty, tx.grad, None if tw is None else tw.grad, None if tb is None else tb.grad

    th = torch_ref(dtype, run)
    got = (y, mean, rstd, dx, dw, db)
    refs = (*ref_f, *ref_b)
    torch_of = dict(zip(("y", "dx", "dweight", "dbias"), th)) if th is not None else {}
    for name, g, r, lo in zip(("y", "mean", "rstd", "dx", "dweight", "dbias"), got, refs, rounded, strict=True):
        if g is None:
            assert r is None
            continue
        others = [lo] + ([torch_of[name].detach()] if torch_of.get(name) is not None else [])
        check16(g, [o.float().numpy() if hasattr(o, "numpy") else o for o in others], r, name)


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("wdtype", ["same", "float32", None], ids=str)
def test_rms_norm_error(rng, threads, dtype, shape, wdtype):
    x, _, w, _, dy, _ = make(rng, shape, dtype, wdtype)
    y, rstd = fastnorm.rms_norm_forward(x, w)
    dx, dw = fastnorm.rms_norm_backward(dy, x, rstd, w)
    assert y.dtype == dx.dtype == dtype
    assert rstd.dtype == np.float32
    assert dw is None or dw.dtype == w.dtype
    refs = (*R.rms_norm_forward(*f64(x, w)), *R.rms_norm_backward(*f64(dy, x, rstd, w)))
    low = (*R.rms_norm_forward(*wide(x, w)), *R.rms_norm_backward(*wide(dy, x, rstd, w)))
    got = (y, rstd, dx, dw)

    def run(torch, tdt):
        tx, tw = _t(torch, x, tdt, True), _t(torch, w, tdt, True)
        ty = torch.nn.functional.rms_norm(tx, shape[-1:], None if tw is None else tw.to(tdt), 1e-6)
        ty.backward(_t(torch, dy, tdt))
        return ty, tx.grad, None if tw is None else tw.grad

    th = torch_ref(dtype, run)
    torch_of = dict(zip(("y", "dx", "dweight"), th)) if th is not None else {}
    for name, g, r, lo in zip(("y", "rstd", "dx", "dweight"), got, refs, low, strict=True):
        if g is None:
            continue
        others = [rne(lo, g.dtype)]
        if torch_of.get(name) is not None:
            others.append(torch_of[name].detach().float().numpy())
        check16(g, others, r, name)


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
@pytest.mark.parametrize("wdtype", ["same", "float32"], ids=str)
def test_add_norm_error(rng, threads, dtype, wdtype):
    """h against the exact sum (comparator: the sum rounded once); the norm's outputs against the float64
    norm of the 16-bit h (what the op normalizes, as the unfused composition does)."""
    x, res, w, b, dy, dh = make(rng, (19, 1031), dtype, wdtype)
    y, h, mean, rstd = fastnorm.add_layer_norm_forward(x, res, w, b)
    dx, dw, db = fastnorm.add_layer_norm_backward(dy, dh, h, mean, rstd, w, b)
    assert h.dtype == y.dtype == dx.dtype == dtype
    assert dw.dtype == w.dtype
    check16(h, [rne(sum(wide(x, res)), dtype)], sum(f64(x, res)), "h")
    refs = (*R.layer_norm_forward(*f64(h, w, b)), *R.add_layer_norm_backward(*f64(dy, dh, h, mean, rstd, w, b)))
    low = (*R.layer_norm_forward(*wide(h, w, b)), *R.add_layer_norm_backward(*wide(dy, dh, h, mean, rstd, w, b)))
    for name, g, r, lo in zip(("y", "mean", "rstd", "dx", "dw", "db"), (y, mean, rstd, dx, dw, db), refs, low):
        check16(g, [rne(lo, g.dtype)], r, name)
    y, h, rstd = fastnorm.add_rms_norm_forward(x, res, w)
    dx, dw = fastnorm.add_rms_norm_backward(dy, dh, h, rstd, w)
    check16(h, [rne(sum(wide(x, res)), dtype)], sum(f64(x, res)), "rms h")
    refs = (*R.rms_norm_forward(*f64(h, w)), *R.add_rms_norm_backward(*f64(dy, dh, h, rstd, w)))
    low = (*R.rms_norm_forward(*wide(h, w)), *R.add_rms_norm_backward(*wide(dy, dh, h, rstd, w)))
    for name, g, r, lo in zip(("y", "rstd", "dx", "dw"), (y, rstd, dx, dw), refs, low):
        check16(g, [rne(lo, g.dtype)], r, name)


def test_large_offset_statistics(rng, threads):
    """x = 1e3 + noise in bfloat16: float32 two-pass statistics stay accurate (no E[x^2] - E[x]^2)."""
    x = (1e3 + 16 * rng.standard_normal((64, 4096))).astype(BF16)
    _, mean, rstd = fastnorm.layer_norm_forward(x)
    _, m64, r64 = R.layer_norm_forward(*f64(x))
    np.testing.assert_allclose(mean, m64, rtol=2e-7)
    np.testing.assert_allclose(rstd, r64, rtol=2e-6)
    _, h, mean, rstd = fastnorm.add_layer_norm_forward(x, x)
    _, _, m64, r64 = R.add_layer_norm_forward(*f64(x, x))
    np.testing.assert_allclose(rstd, r64, rtol=2e-6)


# ------------------------------------------------------------------------------- exactly one rounding
def one_rounding(got, want32, name, exact=False):
    """``got`` (16-bit) is the round-to-nearest-even of a float32 value within 8 float32 units (of the row's
    largest magnitude) of ``want32``, the float32 kernel's result on the widened inputs; exactly of
    ``want32`` when ``exact``. A float32 ``got`` is within that window itself. The window allows the
    last-bit differences that the compiler's reassociation (-fassociative-math) of the same float32 code in
    two inlined copies may give; any other rounding (truncation, a double rounding) misses it at about half
    of the elements."""
    got, want32 = np.asarray(got), np.asarray(want32, np.float32)
    nan = np.isnan(want32)
    np.testing.assert_array_equal(np.isnan(wide(got)[0]), nan, err_msg=f"{name}: NaN pattern")
    if exact:
        np.testing.assert_array_equal(bits(got), bits(rne(want32, got.dtype)), err_msg=name)
        return
    w64 = want32.astype(np.float64)
    finite = np.where(np.isfinite(w64), np.abs(w64), 0.0)
    scale = finite.max(axis=-1, keepdims=True) if w64.ndim > 1 else finite
    lo = (w64 - 8 * float(np.finfo(np.float32).eps) * scale).astype(np.float32)
    hi = (w64 + 8 * float(np.finfo(np.float32).eps) * scale).astype(np.float32)
    if got.dtype in HALF:
        lo, hi = wide(rne(lo, got.dtype))[0], wide(rne(hi, got.dtype))[0]
    g = wide(got)[0]
    ok = nan | ((lo <= g) & (g <= hi))
    assert ok.all(), f"{name}: {np.count_nonzero(~ok)} elements are not one rounding of the float32 result"


def _exact_all(rng, dtype, shape, wdtype):
    """Every op on 16-bit inputs vs the float32 kernels on the widened inputs: 16-bit outputs are one
    rounding to nearest even of the float32 results (h, a single add, exactly), statistics agree. Parameter
    gradients (sums over rows) are checked in test_float32_parameters_beside_16bit_data and the error tests."""
    x, res, w, b, dy, dh = make(rng, shape, dtype, wdtype)
    xw, rw, ww, bw, dyw, dhw = wide(x, res, w, b, dy, dh)
    same = one_rounding

    y, mean, rstd = fastnorm.layer_norm_forward(x, w, b)
    for g, want, name in zip((y, mean, rstd), fastnorm.layer_norm_forward(xw, ww, bw), ("y", "mean", "rstd")):
        same(g, want, name)
    got = fastnorm.layer_norm_backward(dy, x, mean, rstd, w, b)
    same(got.dx, fastnorm.layer_norm_backward(dyw, xw, mean, rstd, ww, bw).dx, "dx")
    y, rstd = fastnorm.rms_norm_forward(x, w)
    for g, want, name in zip((y, rstd), fastnorm.rms_norm_forward(xw, ww), ("rms y", "rms rstd")):
        same(g, want, name)
    got = fastnorm.rms_norm_backward(dy, x, rstd, w)
    same(got.dx, fastnorm.rms_norm_backward(dyw, xw, rstd, ww).dx, "rms dx")
    # fused: h = round(x + residual), then the norm of the rounded h
    y, h, mean, rstd = fastnorm.add_layer_norm_forward(x, res, w, b)
    same(h, xw + rw, "h", exact=True)
    hw = wide(h)[0]
    for g, want, name in zip((y, mean, rstd), fastnorm.layer_norm_forward(hw, ww, bw), ("add y", "add mean", "rstd")):
        same(g, want, name)
    got = fastnorm.add_layer_norm_backward(dy, dh, h, mean, rstd, w, b)
    want = fastnorm.add_layer_norm_backward(dyw, dhw, hw, mean, rstd, ww, bw)
    same(got.dx, want.dx, "add dx")
    y, h, rstd = fastnorm.add_rms_norm_forward(x, res, w)
    same(h, xw + rw, "rms h", exact=True)
    for g, want, name in zip((y, rstd), fastnorm.rms_norm_forward(wide(h)[0], ww), ("add rms y", "add rms rstd")):
        same(g, want, name)
    got = fastnorm.add_rms_norm_backward(dy, None, h, rstd, w)
    want = fastnorm.add_rms_norm_backward(dyw, None, wide(h)[0], rstd, ww)
    same(got.dx, want.dx, "add rms dx")


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (37, 1025), (5, 1536), (3, 4099)], ids=str)
@pytest.mark.parametrize("wdtype", ["same", "float32", None], ids=str)
def test_outputs_are_the_float32_result_rounded_once(rng, threads, dtype, shape, wdtype):
    _exact_all(rng, dtype, shape, wdtype)


@pytest.mark.parametrize("target", cpu.runnable_targets())
@pytest.mark.parametrize("dtype", HALF, ids=_ids)
def test_every_isa_target(rng, target, dtype):
    """Each built instruction-set target (F16C / AVX-512 conversions where built): one rounding, and the
    reference criterion."""
    with cpu.use_target(target):
        _exact_all(rng, dtype, (37, 1031), "float32")
        x, _, w, b, dy, _ = make(rng, (9, 2053), dtype)
        y, mean, rstd = fastnorm.layer_norm_forward(x, w, b)
        dx, _, _ = fastnorm.layer_norm_backward(dy, x, mean, rstd, w, b)
    check16(y, [rne(R.layer_norm_forward(*wide(x, w, b))[0], dtype)], R.layer_norm_forward(*f64(x, w, b))[0], "y")
    low = R.layer_norm_backward(*wide(dy, x, mean, rstd, w, b))[0]
    check16(dx, [rne(low, dtype)], R.layer_norm_backward(*f64(dy, x, mean, rstd, w, b))[0], "dx")


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
def test_residual_add_rounds_to_nearest_even(dtype):
    """h = x + residual rounded once: ties to even, overflow to inf, float16 subnormals, NaN kept."""
    one = np.array(1.0, dtype)
    ulp = float(ml_dtypes.finfo(dtype).eps)
    big = float(ml_dtypes.finfo(dtype).max)
    tiny = float(ml_dtypes.finfo(dtype).smallest_subnormal)
    xs = [1.0, 1.0 + ulp, 1.0, big, -big, np.nan, np.inf, tiny, 3 * tiny, 1.0, 0.0, 2.0]
    rs = [ulp / 2, ulp / 2, ulp / 4, big, -big, 1.0, 1.0, tiny, -tiny, -1.0, -0.0, -ulp / 2]
    x = np.array(xs, np.float64).astype(dtype).reshape(2, 6)
    r = np.array(rs, np.float64).astype(dtype).reshape(2, 6)
    assert one.dtype == dtype
    _, h, _, _ = fastnorm.add_layer_norm_forward(x, r)
    with np.errstate(over="ignore"):
        want = rne(wide(x)[0] + wide(r)[0], dtype)
    np.testing.assert_array_equal(bits(h), bits(want))
    hw = wide(h)[0].reshape(-1)
    assert hw[0] == 1.0
    assert hw[1] == 1.0 + 2 * ulp
    assert hw[3] == np.inf
    assert hw[4] == -np.inf
    assert np.isnan(hw[5])
    assert hw[6] == np.inf
    assert hw[7] == 2 * tiny
    assert hw[8] == 2 * tiny


# ------------------------------------------------------------------------------- values, dtypes, threads
@pytest.mark.parametrize("dtype", HALF, ids=_ids)
def test_nan_and_inf_propagate(rng, dtype):
    x, res, w, b, dy, dh = make(rng, (5, 9), dtype)
    x[1, 2] = np.nan
    x[3, 4] = np.inf
    y, mean, rstd = fastnorm.layer_norm_forward(x, w, b)
    for row in (1, 3):
        assert np.isnan(wide(y)[0][row]).all()
        assert not np.isfinite(mean[row])
    ok = [0, 2, 4]
    assert np.isfinite(wide(y)[0][ok]).all()
    dx, dw, db = fastnorm.layer_norm_backward(dy, x, mean, rstd, w, b)
    assert np.isnan(wide(dx)[0][[1, 3]]).all()
    assert np.isfinite(wide(dx)[0][ok]).all()
    assert np.isnan(wide(dw)[0]).all()
    assert np.isfinite(wide(db)[0]).all()
    y, rstd = fastnorm.rms_norm_forward(x, w)
    assert np.isnan(wide(y)[0][1]).all()
    assert np.isfinite(wide(y)[0][ok]).all()
    assert rstd[3] == 0  # 1 / sqrt(inf)
    dy[0, 0] = np.nan
    dx, h, mean, rstd = fastnorm.add_layer_norm_forward(x, res, w, b)
    g = fastnorm.add_layer_norm_backward(dy, dh, h, mean, rstd, w, b)
    assert np.isnan(wide(g.dx)[0][[0, 1, 3]]).all()
    assert np.isfinite(wide(g.dx)[0][[2, 4]]).all()


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
def test_float32_parameters_beside_16bit_data(rng, dtype):
    """Weights in x's dtype and the same values in float32 give the same outputs; each parameter's gradient
    comes back in its own dtype (the 16-bit one the float32 one rounded)."""
    x, res, w, b, dy, dh = make(rng, (23, 301), dtype)
    w32, b32 = wide(w, b)
    a = fastnorm.layer_norm_forward(x, w, b)
    c = fastnorm.layer_norm_forward(x, w32, b)  # mixed: float32 weight, 16-bit bias
    for u, v in zip(a, c, strict=True):
        np.testing.assert_array_equal(bits(u) if u.dtype in HALF else u, bits(v) if v.dtype in HALF else v)
    g16 = fastnorm.layer_norm_backward(dy, x, a.mean, a.rstd, w, b)
    g32 = fastnorm.layer_norm_backward(dy, x, a.mean, a.rstd, w32, b32)
    assert g16.dweight.dtype == dtype
    assert g32.dweight.dtype == np.float32
    assert g32.dbias.dtype == np.float32
    np.testing.assert_array_equal(bits(g16.dx), bits(g32.dx))
    np.testing.assert_array_equal(bits(g16.dweight), bits(rne(g32.dweight, dtype)))
    np.testing.assert_array_equal(bits(g16.dbias), bits(rne(g32.dbias, dtype)))
    r16 = fastnorm.add_rms_norm_backward(dy, dh, *fastnorm.add_rms_norm_forward(x, res, w)[1:], w)
    r32 = fastnorm.add_rms_norm_backward(dy, dh, *fastnorm.add_rms_norm_forward(x, res, w32)[1:], w32)
    assert r16.dweight.dtype == dtype
    assert r32.dweight.dtype == np.float32
    np.testing.assert_array_equal(bits(r16.dweight), bits(rne(r32.dweight, dtype)))


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
def test_dtype_errors(rng, dtype):
    x, res, w, b, dy, dh = make(rng, (4, 6), dtype)
    other = F16 if dtype == BF16 else BF16
    with pytest.raises(TypeError, match="layer_norm_forward: weight has dtype float64"):
        fastnorm.layer_norm_forward(x, w.astype(np.float64))
    with pytest.raises(TypeError, match=f"layer_norm_forward: bias has dtype {other.name}"):
        fastnorm.layer_norm_forward(x, w, b.astype(other))
    y, mean, rstd = fastnorm.layer_norm_forward(x, w, b)
    with pytest.raises(TypeError, match="layer_norm_backward: dy has dtype float32"):
        fastnorm.layer_norm_backward(dy.astype(np.float32), x, mean, rstd, w, b)
    with pytest.raises(TypeError, match=f"layer_norm_backward: mean has dtype {dtype.name}"):
        fastnorm.layer_norm_backward(dy, x, mean.astype(dtype), rstd, w, b)
    with pytest.raises(TypeError, match=f"add_rms_norm_forward: residual has dtype {other.name}"):
        fastnorm.add_rms_norm_forward(x, res.astype(other), w)
    with pytest.raises(ValueError, match="rms_norm_forward: out buffer for y must have dtype"):
        fastnorm.rms_norm_forward(x, w, out=(np.empty((4, 6), np.float32), None))
    with pytest.raises(ValueError, match="out buffer for dweight must have dtype"):
        fastnorm.rms_norm_backward(dy, x, rstd, w, out=(None, np.empty(6, np.float32)))


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
def test_out_and_empty(rng, dtype):
    x, res, w, b, dy, dh = make(rng, (6, 50), dtype, "float32")
    want = fastnorm.add_layer_norm_forward(x, res, w, b)
    out = (np.empty_like(x), np.empty_like(x), np.empty(6, np.float32), np.empty(6, np.float32))
    got = fastnorm.add_layer_norm_forward(x, res, w, b, out=out)
    for g, o, wt in zip(got, out, want, strict=True):
        assert g is o
        np.testing.assert_array_equal(g.view(np.uint8), wt.view(np.uint8))
    e = np.zeros((0, 50), dtype)
    y, mean, rstd = fastnorm.layer_norm_forward(e, w, b)
    assert y.dtype == dtype
    assert mean.dtype == np.float32
    assert y.shape == (0, 50)
    dx, dw, db = fastnorm.layer_norm_backward(e, e, mean, rstd, w, b)
    assert dx.dtype == dtype
    assert dw.dtype == np.float32
    np.testing.assert_array_equal(dw, 0)
    y, h, rstd = fastnorm.add_rms_norm_forward(np.zeros((3, 0), dtype), np.zeros((3, 0), dtype))
    assert rstd.dtype == np.float32
    assert np.isnan(rstd).all()


def test_thread_count_invariance(rng):
    for dtype in HALF:
        x, res, w, b, dy, dh = make(rng, (700, 263), dtype, "float32")
        old = fastnorm.get_num_threads()
        runs = []
        try:
            for nt in (1, 2):
                fastnorm.set_num_threads(nt)
                f = fastnorm.add_layer_norm_forward(x, res, w, b)
                g = fastnorm.add_layer_norm_backward(dy, dh, *f[1:], w, b)
                f2 = fastnorm.rms_norm_forward(x, w)
                g2 = fastnorm.rms_norm_backward(dy, x, f2.rstd, w)
                runs.append([*f, *g, *f2, *g2])
        finally:
            fastnorm.set_num_threads(old)
        for a, c in zip(*runs, strict=True):
            np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(c).view(np.uint8))
