"""WeightNorm: reference vs finite differences and torch; kernels (every plan) vs reference; bad input."""

import numpy as np
import pytest

import fastnorm
from fastnorm import norms
from fastnorm import reference as R
from fastnorm._dispatch import CPU

from ._util import FLOATS, assert_close_to_ref, assert_matches_reference, f64, numeric_grad, torch_or_skip


def g_shape(shape, dim):
    if dim is None:
        return ()
    d = dim % len(shape)
    return tuple(s if i == d else 1 for i, s in enumerate(shape))


def _make(rng, shape, dim, dtype=np.float64):
    v = rng.standard_normal(shape).astype(dtype)
    g = (1.0 + rng.random(g_shape(shape, dim))).astype(dtype)
    dw = rng.standard_normal(shape).astype(dtype)
    return v, g, dw


def _fwd_bwd_ref(v, g, dw, dim):
    w, n = R.weight_norm_forward(v, g, dim=dim)
    return (w, n, *R.weight_norm_backward(dw, v, g, n, dim=dim))


def _check_kernels(v, g, dw, dim):
    w, n = fastnorm.weight_norm_forward(v, g, dim=dim)
    dv, dg = fastnorm.weight_norm_backward(dw, v, g, n, dim=dim)
    got = (w, n, dv, dg)
    ref64 = _fwd_bwd_ref(*f64(v, g, dw), dim)
    low = _fwd_bwd_ref(v, g, dw, dim) if v.dtype == np.float32 else (None,) * 4
    for name, a, r64, rlo in zip(("w", "norm", "dv", "dg"), got, ref64, low, strict=True):
        assert a.dtype == v.dtype
        assert_matches_reference(a, r64, rlo, name=name)
    return got


# Shapes and dims that select each kernel plan at 2 threads (rows: dim first; flat: long rows after dim or
# dim=None; cols: short rows after dim), plus 1-D and single-element cases.
CASES = [
    ((7, 5), 0),
    ((7, 5), 1),
    ((7, 5), -1),
    ((7, 5), None),
    ((3, 40, 17), 1),
    ((40, 3, 3, 3), 1),
    ((5, 3, 7), 0),
    ((5, 3, 7), -2),
    ((13,), 0),
    ((13,), None),
    ((1, 1), 0),
    ((2, 3, 4, 5), 2),
    ((11, 2, 19), None),
]


# ------------------------------------------------------------------------------------------ reference
@pytest.mark.parametrize(("shape", "dim"), [((4, 3), 0), ((4, 3), 1), ((3, 2, 4), -2), ((3, 4), None), ((5,), 0)])
def test_reference_backward_matches_finite_differences(rng, shape, dim):
    v, g, dw = _make(rng, shape, dim)
    w, n = R.weight_norm_forward(v, g, dim=dim)
    dv, dg = R.weight_norm_backward(dw, v, g, n, dim=dim)
    f = lambda v_, g_: R.weight_norm_forward(v_, g_, dim=dim)[0]
    np.testing.assert_allclose(dv, numeric_grad(f, [v, g], 0, dw), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dg, numeric_grad(f, [v, g], 1, dw), rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("cases", ["CASES", "STREAM_CASES"])
def test_cases_cover_every_plan(cases):
    view = lambda s, d: norms._weight_norm_view("test", s, d)[1]
    modes = {norms._weight_norm_plan(CPU, view(s, d), 2, False, np.float64)[0] for s, d in globals()[cases]}
    assert modes == {norms._WN_ROWS, norms._WN_FLAT, norms._WN_COLS}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("shape", "dim"), CASES)
def test_kernels_match_reference(rng, threads, dtype, shape, dim):
    _check_kernels(*_make(rng, shape, dim, dtype), dim)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("shape", "dim"), [((300, 129), 0), ((129, 300), 1), ((3, 50, 41), None), ((64, 31, 3, 3), 1)])
def test_kernels_match_reference_larger(rng, threads, dtype, shape, dim):
    _check_kernels(*_make(rng, shape, dim, dtype), dim)


# Shapes past one FLAT chunk (32768 elements): rows cut by chunk edges (ROWS at 1 thread, FLAT at 2-3 with
# few rows), dim=None, FLAT with A > 1, and COLS with several chunks.
THREAD_CASES = [
    ((3, 50001), 0),
    ((5, 40000), 0),
    ((130001,), None),
    ((7, 9, 2100), None),
    ((3, 7, 5000), 1),
    ((70001, 3), -1),
    ((9000, 4, 3), 1),
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("shape", "dim"), THREAD_CASES)
def test_bitwise_same_for_every_thread_count(rng, dtype, shape, dim):
    v, g, dw = _make(rng, shape, dim, dtype)
    old = fastnorm.get_num_threads()
    runs = []
    try:
        for nt in (1, 2, 3):
            fastnorm.set_num_threads(nt)
            w, n = fastnorm.weight_norm_forward(v, g, dim=dim)
            runs.append((w, n, *fastnorm.weight_norm_backward(dw, v, g, n, dim=dim)))
    finally:
        fastnorm.set_num_threads(old)
    for run in runs[1:]:
        for a, b, name in zip(runs[0], run, ("w", "norm", "dv", "dg"), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    _check_kernels(v, g, dw, dim)


def test_thread_cases_cover_rows_flat_and_cols():
    view = lambda s, d: norms._weight_norm_view("test", s, d)[1]
    plans = {
        (nt, norms._weight_norm_plan(CPU, view(s, d), nt, False, np.float32)[0])
        for s, d in THREAD_CASES
        for nt in (1, 2)
    }
    assert {(1, norms._WN_ROWS), (2, norms._WN_FLAT), (1, norms._WN_FLAT), (2, norms._WN_COLS)} <= plans


@pytest.mark.parametrize("dtype", FLOATS)
def test_large_offset(rng, threads, dtype):
    v, g, dw = _make(rng, (6, 33), 0, dtype)
    _check_kernels((v + 1e4).astype(dtype), g, dw, 0)
    _check_kernels((v + 1e4).astype(dtype), np.array(1.5, dtype), dw, None)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("shape", "dim"), [((6, 20), 0), ((30, 6), 1), ((3, 6, 20), 1)])
def test_nan_and_zero_slices(rng, threads, dtype, shape, dim):
    v, g, dw = _make(rng, shape, dim, dtype)
    d = dim % len(shape)
    idx = [slice(None)] * len(shape)
    idx[d] = 1
    v[tuple(idx)] = 0.0  # zero norm: 0 * (g / 0) = NaN, like torch
    v[(0,) * d + (3,) + (0,) * (len(shape) - d - 1)] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        w, n, dv, dg = _check_kernels(v, g, dw, dim)
    take = lambda a, i: np.take(a, i, axis=d)
    assert np.isnan(take(w, 1)).all()
    assert np.isnan(take(w, 3)).all()
    assert np.isfinite(take(w, 0)).all()
    assert np.isfinite(take(dv, 2)).all()


@pytest.mark.parametrize(("shape", "dim"), [((0, 3), 0), ((3, 0), 0), ((0, 3), 1), ((2, 0, 3), None)])
def test_empty(shape, dim):
    v = np.zeros(shape)
    g = np.ones(g_shape(shape, dim))
    w, n = fastnorm.weight_norm_forward(v, g, dim=dim)
    dv, dg = fastnorm.weight_norm_backward(v, v, g, n, dim=dim)
    assert w.shape == dv.shape == shape
    assert n.shape == dg.shape == g.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = R.weight_norm_forward(v, g, dim=dim)
    np.testing.assert_array_equal(n, ref[1])


# ------------------------------------------------------------------------------------------ bad input
class _FakeCudaArray:
    __cuda_array_interface__ = {"shape": (4, 1), "typestr": "<f8", "data": (0, False), "version": 3}
    shape = (4, 1)
    dtype = np.dtype(np.float64)


def test_bad_input_raises_and_writes_nothing(rng):
    v, g, dw = _make(rng, (4, 3), 0)
    cases = [
        (dict(v=v, g=g, dim=2), ValueError, "dim"),
        (dict(v=v, g=g, dim=-3), ValueError, "dim"),
        (dict(v=v, g=g, dim=1.0), TypeError, "dim"),
        (dict(v=v, g=g.reshape(4), dim=0), ValueError, "g"),
        (dict(v=v, g=g.T, dim=0), ValueError, "g"),
        (dict(v=v, g=g, dim=None), ValueError, "g"),
        (dict(v=v, g=g.astype(np.float32), dim=0), TypeError, "g"),
        (dict(v=v.astype(np.int32), g=g, dim=0), TypeError, "v"),
        (dict(v=v, g=None, dim=0), TypeError, "g"),
        (dict(v=np.float64(2.0), g=np.float64(1.0), dim=0), ValueError, "dim"),
        (dict(v=v, g=_FakeCudaArray(), dim=0), TypeError, "different devices"),
    ]
    for kwargs, exc, word in cases:
        w0 = np.full(v.shape, 7.0)
        with pytest.raises(exc, match=word):
            fastnorm.weight_norm_forward(**kwargs, out=(w0, None))
        assert (w0 == 7.0).all()
    w, n = fastnorm.weight_norm_forward(v, g)
    bcases = [
        (dict(dw=dw[:3], v=v, g=g, norm=n), ValueError, "dw"),
        (dict(dw=dw, v=v, g=g, norm=n.reshape(4)), ValueError, "norm"),
        (dict(dw=dw, v=v, g=g, norm=n.astype(np.float32)), TypeError, "norm"),
        (dict(dw=dw, v=v, g=g, norm=n, dim=5), ValueError, "dim"),
    ]
    for kwargs, exc, word in bcases:
        dv0, dg0 = np.full(v.shape, 7.0), np.full((4, 1), 7.0)
        with pytest.raises(exc, match=word):
            fastnorm.weight_norm_backward(**kwargs, out=(dv0, dg0))
        assert (dv0 == 7.0).all()
        assert (dg0 == 7.0).all()
    with pytest.raises(ValueError, match="out"):
        fastnorm.weight_norm_forward(v, g, out=(np.empty((4, 3)), np.empty(4)))
    with pytest.raises(ValueError, match="out"):
        fastnorm.weight_norm_forward(v, g, out=(v, None))


def test_remembered_views_keep_checking_dim(rng):
    """Views and plans are remembered per (shape, dim): a bool dim equal to a remembered int one (0 == False)
    is still refused, and a remembered shape still checks g against the dim asked for."""
    v, g, dw = _make(rng, (4, 3), 0)
    w, n = fastnorm.weight_norm_forward(v, g, dim=0)
    for _ in range(2):
        with pytest.raises(TypeError, match="dim"):
            fastnorm.weight_norm_forward(v, g, dim=False)
        with pytest.raises(ValueError, match="g"):
            fastnorm.weight_norm_forward(v, g, dim=1)
        with pytest.raises(TypeError, match="dim"):
            fastnorm.weight_norm_backward(dw, v, g, n, dim=True)
    np.testing.assert_array_equal(fastnorm.weight_norm_forward(v, g, dim=0).w, w)


# ------------------------------------------------------------------------------------------ torch
@pytest.mark.parametrize(
    ("shape", "dim"), [((7, 5), 0), ((7, 5), 1), ((7, 5), -1), ((4, 3, 3, 2), 1), ((4, 3, 5), None), ((6, 2, 3), -2)]
)
def test_matches_torch(rng, shape, dim):
    """float64: fastnorm's error against the NumPy reference in extended precision is at most 2x torch's
    plus 8 ulps (DESIGN.md's criterion)."""
    torch = torch_or_skip()
    v, g, dw = _make(rng, shape, dim)
    vt = torch.tensor(v, requires_grad=True)
    gt = torch.tensor(g, requires_grad=True)
    # torch's _weight_norm: dim=-1 means the whole tensor; our negative dims count from the end.
    tdim = -1 if dim is None else dim % len(shape)
    wt = torch._weight_norm(vt, gt, tdim)
    wt.backward(torch.tensor(dw))
    w, n = fastnorm.weight_norm_forward(v, g, dim=dim)
    dv, dg = fastnorm.weight_norm_backward(dw, v, g, n, dim=dim)
    vl, gl, dwl = (a.astype(np.longdouble) for a in (v, g, dw))
    wl, nl = R.weight_norm_forward(vl, gl, dim=dim)
    dvl, dgl = R.weight_norm_backward(dwl, vl, gl, nl, dim=dim)
    nt = torch.norm_except_dim(vt, 2, tdim).detach()
    for name, got, o, r in (("w", w, wt, wl), ("norm", n, nt, nl), ("dv", dv, vt.grad, dvl), ("dg", dg, gt.grad, dgl)):
        assert_close_to_ref(got, o.detach().reshape(got.shape), r, name=name)


def test_g_shape_matches_torch_module_parameters():
    torch = torch_or_skip()
    from torch.nn.utils.parametrizations import weight_norm

    for dim in (0, 1, None):
        m = weight_norm(torch.nn.Conv2d(3, 4, 3), dim=dim)
        v = m.parametrizations.weight.original1.detach().numpy()
        g = m.parametrizations.weight.original0.detach().numpy()
        assert g.shape == g_shape(v.shape, dim)
        w, _ = fastnorm.weight_norm_forward(v, g, dim=dim)
        w64, _ = R.weight_norm_forward(v.astype(np.float64), g.astype(np.float64), dim=dim)
        assert_close_to_ref(w, m.weight.detach(), w64, name=f"weight (dim={dim})")


# ------------------------------------------------------------------------------------------ streamed outputs
# Every plan with rows and chunk runs of odd lengths: ROWS (at 1 thread, and 2 with many rows), FLAT with
# A == 1 and dim=None, FLAT with A > 1, COLS with one and several chunks.
STREAM_CASES = [
    ((37, 1001), 0),
    ((3, 50001), 0),
    ((130001,), None),
    ((5, 7, 999), 1),
    ((9000, 4, 3), 1),
    ((129, 65, 17), 2),
]


@pytest.fixture
def set_cutoff():
    """The kernels' streaming cut-off (bytes of output) setter; the old value is restored after the test."""
    from fastnorm._kernels.cpu import _weight_norm as k

    old = k.set_weight_norm_stream_min_bytes(1 << 62)
    yield k.set_weight_norm_stream_min_bytes
    k.set_weight_norm_stream_min_bytes(old)


def _offset_empty(shape, dtype, items):
    """An uninitialised C-contiguous array whose data starts ``items`` items past a 64-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + items * dtype.itemsize
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _all_outputs(v, g, dw, dim, items=None):
    """w, norm, dv, dg: allocated (items None) or into out= buffers ``items`` items past a 64-byte boundary."""
    if items is None:
        w, n = fastnorm.weight_norm_forward(v, g, dim=dim)
        return (w, n, *fastnorm.weight_norm_backward(dw, v, g, n, dim=dim))
    w, dv = _offset_empty(v.shape, v.dtype, items), _offset_empty(v.shape, v.dtype, items)
    _, n = fastnorm.weight_norm_forward(v, g, dim=dim, out=(w, None))
    _, dg = fastnorm.weight_norm_backward(dw, v, g, n, dim=dim, out=(dv, None))
    return w, n, dv, dg


def _assert_same_bits(runs):
    for run in runs[1:]:
        for a, b, name in zip(runs[0], run, ("w", "norm", "dv", "dg"), strict=True):
            assert a.dtype == b.dtype
            assert np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)), name


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("shape", "dim"), STREAM_CASES)
def test_streamed_outputs_same_bits(rng, threads, set_cutoff, dtype, shape, dim):
    """Outputs past the streaming cut-off (non-temporal stores, computed in stack blocks) have the bits of
    the cached path, allocated or into out= views 1 and 3 items off a 64-byte boundary (the stores align
    themselves), and match the reference."""
    v, g, dw = _make(rng, shape, dim, dtype)
    cached = _all_outputs(v, g, dw, dim)
    set_cutoff(0)
    _assert_same_bits([cached, _all_outputs(v, g, dw, dim), *(_all_outputs(v, g, dw, dim, k) for k in (0, 1, 3))])
    _check_kernels(v, g, dw, dim)


@pytest.mark.parametrize(("shape", "dim"), [((3, 50001), 0), ((9000, 4, 3), 1), ((130001,), None)])
def test_stream_cutoff_both_sides(rng, set_cutoff, shape, dim):
    """An output of exactly the cut-off is streamed, one byte less is not: both sides give the same bits, at
    every thread count, and the float32 results match the reference."""
    v, g, dw = _make(rng, shape, dim, np.float32)
    runs = []
    old = fastnorm.get_num_threads()
    try:
        for cutoff in (v.nbytes, v.nbytes + 1):
            set_cutoff(cutoff)
            for nt in (1, 2, 3):
                fastnorm.set_num_threads(nt)
                runs.append(_all_outputs(v, g, dw, dim))
    finally:
        fastnorm.set_num_threads(old)
    _assert_same_bits(runs)
    _check_kernels(v, g, dw, dim)


@pytest.mark.parametrize("dim", [0, None])
def test_streamed_bfloat16(rng, threads, set_cutoff, dim):
    """16-bit v runs the float32 kernel on widened copies: streamed or not, the same bits."""
    from fastnorm import _dtypes

    v, g, dw = _make(rng, (70, 1001), dim, np.float32)
    v, dw = v.astype(_dtypes.BFLOAT16), dw.astype(_dtypes.BFLOAT16)
    cached = _all_outputs(v, g, dw, dim)
    set_cutoff(0)
    _assert_same_bits([cached, _all_outputs(v, g, dw, dim), _all_outputs(v, g, dw, dim, 1)])


@pytest.mark.parametrize(("shape", "dim"), [((0, 3), 0), ((3, 0), 1), ((2, 0, 3), None)])
def test_streamed_empty(set_cutoff, shape, dim):
    set_cutoff(0)
    test_empty(shape, dim)
