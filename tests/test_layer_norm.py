"""LayerNorm: reference vs finite differences, kernels vs reference, options, layouts, bad input, torch."""

import numpy as np
import pytest

import fastnorm
from fastnorm import _dtypes
from fastnorm import reference as R

from ._util import FLOATS, assert_close_to_ref, f64, numeric_grad, torch_and_wider_ref, torch_or_skip, unaligned


def make(rng, shape, dtype, affine=True, ndim=1, offset=0.0):
    x = (rng.standard_normal(shape) + offset).astype(dtype)
    norm = shape[len(shape) - ndim :]
    w = rng.standard_normal(norm).astype(dtype) if affine else None
    b = rng.standard_normal(norm).astype(dtype) if affine else None
    dy = rng.standard_normal(shape).astype(dtype)
    return x, w, b, dy


# ------------------------------------------------------------------------------- reference is the spec
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("ndim", [1, 2])
def test_reference_backward_matches_finite_differences(rng, affine, ndim):
    x, w, b, dy = make(rng, (3, 4, 5), np.float64, affine, ndim)
    _, mean, rstd = R.layer_norm_forward(x, w, b, normalized_ndim=ndim)
    dx, dw, db = R.layer_norm_backward(dy, x, mean, rstd, w, b, normalized_ndim=ndim)

    def f(x_, w_, b_):
        return R.layer_norm_forward(x_, w_, b_, normalized_ndim=ndim)[0]

    np.testing.assert_allclose(dx, numeric_grad(f, [x, w, b], 0, dy), rtol=1e-6, atol=1e-7)
    if affine:
        np.testing.assert_allclose(dw, numeric_grad(f, [x, w, b], 1, dy), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(db, numeric_grad(f, [x, w, b], 2, dy), rtol=1e-6, atol=1e-7)
    else:
        assert dw is None
        assert db is None


def test_reference_forward_formula():
    x = np.array([[1.0, 2.0, 3.0, 6.0]])
    y, mean, rstd = R.layer_norm_forward(x, eps=0.0)
    assert mean[0] == 3.0
    assert np.isclose(rstd[0], 1 / np.sqrt(3.5))
    np.testing.assert_allclose(y, (x - 3.0) / np.sqrt(3.5))


# ------------------------------------------------------------------------------- kernels vs reference


@pytest.mark.slow
def test_large_m(rng, threads):
    x, w, b, dy = make(rng, (20000, 64), np.float32)
    y, mean, rstd = fastnorm.layer_norm_forward(x, w, b)
    assert_close_to_ref(y, R.layer_norm_forward(x, w, b)[0], R.layer_norm_forward(*f64(x, w, b))[0])
    dx, dw, db = fastnorm.layer_norm_backward(dy, x, mean, rstd, w, b)
    ref = R.layer_norm_backward(*f64(dy, x, mean, rstd, w, b))
    ref32 = R.layer_norm_backward(dy, x, mean, rstd, w, b)
    for got, r64, r32 in zip((dx, dw, db), ref, ref32):
        assert_close_to_ref(got, r32, r64)


def test_large_offset_statistics_stay_accurate(rng, threads):
    # mean 1e4 against a spread of 1: E[x^2] - E[x]^2 in float32 would lose every digit.
    x, w, b, _ = make(rng, (64, 4096), np.float32, offset=1e4)
    y, mean, rstd = fastnorm.layer_norm_forward(x, w, b)
    y64, m64, r64 = R.layer_norm_forward(*f64(x, w, b))
    np.testing.assert_allclose(rstd, r64, rtol=1e-5)
    assert_close_to_ref(y, R.layer_norm_forward(x, w, b)[0], y64)


# ------------------------------------------------------------------------------- layouts, buffers, values


def test_nan_propagates_to_its_row_only(rng):
    x, w, b, dy = make(rng, (4, 9), np.float32)
    x[2, 3] = np.nan
    y, mean, rstd = fastnorm.layer_norm_forward(x, w, b)
    assert np.isnan(y[2]).all()
    assert np.isfinite(np.delete(y, 2, axis=0)).all()
    dx, dw, db = fastnorm.layer_norm_backward(dy, x, mean, rstd, w, b)
    assert np.isnan(dx[2]).all()
    assert np.isfinite(np.delete(dx, 2, axis=0)).all()
    assert np.isnan(dw).all()
    assert np.isfinite(db).all()


# ------------------------------------------------------------------------------- bad input
def _ok(rng):
    return make(rng, (4, 6), np.float32)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(x=np.ones((4, 6), np.int32)), TypeError, "x has dtype int32"),
        (dict(x=np.ones((4, 6), np.int16)), TypeError, "x has dtype int16"),
        (dict(weight=np.ones(6, np.float64)), TypeError, "weight has dtype float64"),
        (dict(weight=np.ones(5, np.float32)), ValueError, r"weight must have shape \(6,\)"),
        (dict(bias=np.ones((1, 6), np.float32)), ValueError, r"bias must have shape \(6,\)"),
        (dict(eps="1e-5"), TypeError, "eps must be a real number"),
        (dict(normalized_ndim=0), ValueError, "normalized_ndim must be >= 1"),
        (dict(normalized_ndim=3), ValueError, "normalized_ndim=3 but x has only 2 dims"),
        (dict(normalized_ndim=1.0), TypeError, "normalized_ndim must be an int"),
        (dict(x=None), TypeError, "x must be an array"),
    ],
)
def test_bad_forward_input(rng, kwargs, exc, match):
    x, w, b, _ = _ok(rng)
    args = dict(x=x, weight=w, bias=b)
    args.update({k: v for k, v in kwargs.items() if k in args})
    opts = {k: v for k, v in kwargs.items() if k not in args}
    with pytest.raises(exc, match="layer_norm_forward: " + match):
        fastnorm.layer_norm_forward(args["x"], args["weight"], args["bias"], **opts)


@pytest.mark.parametrize(
    ("out", "exc", "match"),
    [
        ((np.empty((4, 5), np.float32), None, None), ValueError, r"out buffer for y must have shape \(4, 6\)"),
        ((np.empty((4, 6), np.float64), None, None), ValueError, "out buffer for y must have dtype float32"),
        ((np.empty((6, 4), np.float32).T, None, None), ValueError, "y must be C-contiguous"),
        ((None, None), ValueError, "out must have 3 entries"),
        (([[0.0] * 6] * 4, None, None), TypeError, "must be a numpy.ndarray"),
    ],
)
def test_bad_out_buffers_write_nothing(rng, out, exc, match):
    x, w, b, _ = _ok(rng)
    keep = [None if o is None or not isinstance(o, np.ndarray) else o.copy() for o in out]
    with pytest.raises(exc, match=match):
        fastnorm.layer_norm_forward(x, w, b, out=out)
    for o, k in zip(out, keep):
        if k is not None:
            np.testing.assert_array_equal(o, k)


def test_read_only_and_aliasing_out_rejected(rng):
    x, w, b, dy = _ok(rng)
    ro = np.empty_like(x)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="out buffer for y is read-only"):
        fastnorm.layer_norm_forward(x, w, b, out=(ro, None, None))
    with pytest.raises(ValueError, match="overlaps input"):
        fastnorm.layer_norm_forward(x, w, b, out=(x, None, None))
    y, mean, rstd = fastnorm.layer_norm_forward(x, w, b)
    with pytest.raises(ValueError, match="slot with no output"):
        fastnorm.layer_norm_backward(dy, x, mean, rstd, None, b, out=(None, np.empty(6, np.float32), None))


def test_bad_backward_input(rng):
    x, w, b, dy = _ok(rng)
    y, mean, rstd = fastnorm.layer_norm_forward(x, w, b)
    with pytest.raises(ValueError, match=r"layer_norm_backward: dy must have shape \(4, 6\)"):
        fastnorm.layer_norm_backward(dy[:3], x, mean, rstd, w, b)
    with pytest.raises(ValueError, match=r"mean must have shape \(4,\)"):
        fastnorm.layer_norm_backward(dy, x, mean[:2], rstd, w, b)
    with pytest.raises(TypeError, match="rstd has dtype float64"):
        fastnorm.layer_norm_backward(dy, x, mean, rstd.astype(np.float64), w, b)
    with pytest.raises(TypeError, match="mean is required"):
        fastnorm.layer_norm_backward(dy, x, None, rstd, w, b)


# ------------------------------------------------------------------------------- against torch
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("shape", "ndim"), [((4, 7, 33), 1), ((3, 5, 6), 2)])
def test_matches_torch(rng, dtype, shape, ndim):
    """DESIGN.md's criterion: fastnorm's error against a wider reference (torch in float64 for float32; the
    NumPy reference in extended precision for float64) is at most 2x torch's same-dtype error + 8 ulps."""
    torch = torch_or_skip()
    x, w, b, dy = make(rng, shape, dtype, ndim=ndim)
    y, mean, rstd = fastnorm.layer_norm_forward(x, w, b, eps=1e-5, normalized_ndim=ndim)
    dx, dw, db = fastnorm.layer_norm_backward(dy, x, mean, rstd, w, b, normalized_ndim=ndim)

    def run_torch(wide):
        tx, tw, tb = (torch.from_numpy(a.astype(wide)).requires_grad_() for a in (x, w, b))
        ty = torch.nn.functional.layer_norm(tx, tuple(shape[-ndim:]), tw, tb, 1e-5)
        ty.backward(torch.from_numpy(dy.astype(wide)))
        return ty.detach(), tx.grad, tw.grad, tb.grad

    def run_ref(xl, wl, bl, dyl):
        yl, ml, rl = R.layer_norm_forward(xl, wl, bl, eps=1e-5, normalized_ndim=ndim)
        return (yl, *R.layer_norm_backward(dyl, xl, ml, rl, wl, bl, normalized_ndim=ndim))

    other, ref = torch_and_wider_ref(run_torch, run_ref, dtype, (x, w, b, dy))
    for name, got, o, r in zip(("y", "dx", "dw", "db"), (y, dx, dw, db), other, ref, strict=True):
        assert_close_to_ref(got, o, r, name=name)


def _offset_empty(shape, dtype, byte_offset):
    """An uninitialised C-contiguous array whose data starts ``byte_offset`` bytes past a 64-byte boundary."""
    dtype = np.dtype(dtype)
    raw = np.empty(int(np.prod(shape)) * dtype.itemsize + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + byte_offset
    return raw[start : start + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("offset", ["0 items", "1 items", "3 items", "1 bytes"])
def test_streaming_stores_with_misaligned_out_buffers(rng, dtype, offset):
    """Outputs above the kernels' streaming cut-off (32 MiB) go through non-temporal stores that need
    aligned addresses: out= views starting 0, 1 or 3 items past a 64-byte boundary give the same bits as
    the allocating call (forward y and h, backward dx); a view 1 byte off is refused."""
    dt = _dtypes.BFLOAT16 if dtype == "bfloat16" else np.dtype(np.float32)
    m, n = (4100, 4099) if dtype == "bfloat16" else (2100, 4099)  # > 32 MiB of output
    x = rng.standard_normal((m, n)).astype(dt)
    r = rng.standard_normal((m, n)).astype(dt)
    w = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    k, unit = offset.split()
    off = int(k) * dt.itemsize
    y0, h0, mean, rstd = fastnorm.add_layer_norm_forward(x, r, w, b)
    if unit == "bytes":  # not item-aligned: refused before any kernel runs
        with pytest.raises(ValueError, match="out buffer for y is not aligned"):
            fastnorm.add_layer_norm_forward(x, r, w, b, out=(unaligned(y0), unaligned(h0), None, None))
        return
    y, h = _offset_empty((m, n), dt, off), _offset_empty((m, n), dt, off)
    fastnorm.add_layer_norm_forward(x, r, w, b, out=(y, h, None, None))
    assert np.array_equal(y.view(np.uint8), y0.view(np.uint8))
    assert np.array_equal(h.view(np.uint8), h0.view(np.uint8))
    dx0 = fastnorm.layer_norm_backward(x, h0, mean, rstd, w, b)[0]
    dx = _offset_empty((m, n), dt, off)
    fastnorm.layer_norm_backward(x, h0, mean, rstd, w, b, out=(dx, None, None))
    assert np.array_equal(dx.view(np.uint8), dx0.view(np.uint8))


def _assert_bits_independent_of_offset(inputs, call):
    """call(*copies), with the inputs copied to arrays that start 0, 4, 16, 32 and 60 bytes past a 64-byte
    boundary, returns the same bits (every array it returns) at every offset."""
    results = []
    for off in (0, 4, 16, 32, 60):
        copies = [_offset_empty(a.shape, a.dtype, off) for a in inputs]
        for c, a in zip(copies, inputs, strict=True):
            c[...] = a
        results.append([np.asarray(a).copy().view(np.uint8) for a in call(*copies) if a is not None])
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other, strict=True))


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize(("m", "n"), [(64, 768), (33, 1000), (5, 100), (2100, 4099)], ids=str)
def test_backward_bits_do_not_depend_on_input_alignment(rng, op, m, n):
    """The backward splits each float32 row where dy and x reach a 64-byte boundary when both share a misalignment
    (NumPy's large arrays start 16 bytes past a page): the same values at every offset give the same bits
    (dx, dweight, dbias), the streamed (> 32 MiB) rows included."""
    f32 = np.dtype(np.float32)
    x0 = rng.standard_normal((m, n)).astype(f32)
    dy0 = rng.standard_normal((m, n)).astype(f32)
    w = rng.standard_normal(n).astype(f32)
    b = rng.standard_normal(n).astype(f32)

    def backward(x, dy):
        if op == "layer_norm":
            _, mean, rstd = fastnorm.layer_norm_forward(x, w, b)
            return fastnorm.layer_norm_backward(dy, x, mean, rstd, w, b)
        _, rstd = fastnorm.rms_norm_forward(x, w)
        return fastnorm.rms_norm_backward(dy, x, rstd, w)

    _assert_bits_independent_of_offset([x0, dy0], backward)


_STREAMED_RMS = pytest.mark.xfail(
    reason="known, not fixed: a streamed (> 32 MiB) float32 RMSNorm output's elements before y's first aligned "
    "vector are computed by the scalar expression, which gcc rounds otherwise than the vector one, so those bits "
    "depend on y's address (every target)",
    strict=False,
)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"])
@pytest.mark.parametrize(("m", "n"), [(64, 768), (33, 1000), (5, 100), (7, 31), (2100, 4099)], ids=str)
def test_forward_bits_do_not_depend_on_input_alignment(request, rng, op, m, n):
    """The float32 forward reads rows that start past a 64-byte boundary as aligned lines shifted into place, and
    stores y from its first 64-byte boundary on where x and y share a misalignment (NumPy's large arrays start 16
    bytes past a page): the same values at every offset of x, residual and y give the same bits (y, h, mean,
    rstd), the streamed (> 32 MiB) rows included."""
    if "rms" in op and m * n * 4 > 32 << 20:
        request.applymarker(_STREAMED_RMS)
    f32 = np.dtype(np.float32)
    x0 = (rng.standard_normal((m, n)) * 3 + 5).astype(f32)
    r0 = rng.standard_normal((m, n)).astype(f32)
    w = rng.standard_normal(n).astype(f32)
    b = rng.standard_normal(n).astype(f32)
    zeros = np.zeros((m, n), f32)

    def forward(x, r, y, h):
        stats = [np.empty(m, f32) for _ in range(2 if op.endswith("layer_norm") else 1)]
        if op == "layer_norm":
            return fastnorm.layer_norm_forward(x, w, b, out=(y, *stats))
        if op == "rms_norm":
            return fastnorm.rms_norm_forward(x, w, out=(y, *stats))
        if op == "add_layer_norm":
            return fastnorm.add_layer_norm_forward(x, r, w, b, out=(y, h, *stats))
        return fastnorm.add_rms_norm_forward(x, r, w, out=(y, h, *stats))

    _assert_bits_independent_of_offset([x0, r0, zeros, zeros], forward)
