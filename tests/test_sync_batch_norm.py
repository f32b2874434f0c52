"""BatchNorm stages (fastnorm.batch_norm_stats ... batch_norm_backward_elemt): references against finite
differences and the fused BatchNorm, kernels against references, composition over one process and over
split batches (unequal and empty) against BatchNorm over the concatenated batch."""

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R
from fastnorm._dtypes import BFLOAT16, FLOAT16
from fastnorm.reference import sync_batch_norm as RS

from ._channel import FakeCudaArray, as64, assert_raises_unchanged, copy, readonly, strided
from ._util import FLOATS, assert_close_to_ref, assert_matches_reference, assert_thread_count_invariant
from .cuda._half_util import close, f32, lowp, run_stages

SHAPES = [
    ((7, 3), 1),
    ((5, 4, 9), 1),
    ((3, 5, 6, 7), 1),
    ((2, 3, 4, 5, 3), 1),
    ((1, 1, 13), 1),
    ((2, 2, 4111), 1),
    ((4, 6, 5), -1),
    ((3, 5, 7, 11), -1),
    ((17, 2), -1),
    ((613, 3), -1),
]


def channels(shape, axis):
    return shape[1] if axis == 1 else shape[-1]


def data(rng, shape, dtype, offset=0.7, scale=1.5):
    return (rng.normal(size=shape) * scale + offset).astype(dtype)


def params(rng, c, dtype, affine=True):
    if not affine:
        return None, None
    return (rng.normal(size=c) + 1.5).astype(dtype), rng.normal(size=c).astype(dtype)


def split(x, sizes, axis):
    """x cut along its batch axis (axis 0) into pieces of the given sizes (0 allowed)."""
    cuts = np.cumsum(sizes)[:-1]
    assert sum(sizes) == x.shape[0]
    return np.split(x, cuts, axis=0)


# ------------------------------------------------------------------------------------------ references
def _stages_forward(parts, w, b, axis, eps, lib=RS, rm=None, rv=None, momentum=0.1):
    stats = [lib.batch_norm_stats(p, axis=axis) for p in parts]
    means = np.stack([s[0] for s in stats])
    m2s = np.stack([s[1] for s in stats])
    counts = np.array([s[2] for s in stats])
    mean, invstd = lib.batch_norm_gather_stats(means, m2s, counts, rm, rv, momentum=momentum, eps=eps)
    ys = [lib.batch_norm_elemt(p, mean, invstd, w, b, axis=axis) for p in parts]
    return ys, mean, invstd, counts


def _stages_backward(dys, parts, mean, invstd, w, counts, axis, lib=RS):
    red = [lib.batch_norm_backward_reduce(g, p, mean, invstd, w, axis=axis) for g, p in zip(dys, parts)]
    sum_dy = np.sum([r[0] for r in red], axis=0).astype(mean.dtype)
    sum_dy_xmu = np.sum([r[1] for r in red], axis=0).astype(mean.dtype)
    dxs = [
        lib.batch_norm_backward_elemt(g, p, mean, invstd, w, sum_dy, sum_dy_xmu, counts, axis=axis)
        for g, p in zip(dys, parts)
    ]
    dw = None if w is None else np.sum([r[2] for r in red], axis=0)
    db = np.sum([r[3] for r in red], axis=0)
    return dxs, dw, db


@pytest.mark.parametrize(("shape", "axis"), [((4, 3), 1), ((5, 2, 3), 1), ((5, 3, 2, 2), 1), ((5, 2, 3), -1)])
@pytest.mark.parametrize("sizes", [None, (2, 0, 3)], ids=["one", "split"])
def test_reference_stages_backward_matches_finite_differences(rng, shape, axis, sizes):
    """The composed stage backward is the gradient of the composed stage forward (float64, central FD)."""
    from ._util import numeric_grad

    x = data(rng, shape, np.float64)
    c = channels(shape, axis)
    w, b = params(rng, c, np.float64)
    sizes = sizes or (shape[0],)
    if sum(sizes) != shape[0]:
        sizes = (shape[0] - 3, 0, 3)

    def fwd(x, w, b):
        ys, *_ = _stages_forward(split(x, sizes, axis), w, b, axis, 1e-3)
        return np.concatenate(ys, axis=0)

    dy = rng.normal(size=shape)
    parts = split(x, sizes, axis)
    _, mean, invstd, counts = _stages_forward(parts, w, b, axis, 1e-3)
    dxs, dw, db = _stages_backward(split(dy, sizes, axis), parts, mean, invstd, w, counts, axis)
    for i, got in enumerate([np.concatenate(dxs, axis=0), dw, db]):
        num = numeric_grad(fwd, [x, w, b], i, dy)
        np.testing.assert_allclose(got, num, rtol=1e-5, atol=1e-7, err_msg=f"gradient of argument {i}")


@pytest.mark.parametrize(("shape", "axis"), [((6, 3), 1), ((5, 4, 3), 1), ((4, 3, 5), -1)])
def test_reference_stages_equal_batch_norm_reference(rng, shape, axis):
    x = data(rng, shape, np.float64)
    c = channels(shape, axis)
    w, b = params(rng, c, np.float64)
    rm, rv = rng.normal(size=c), rng.random(c) + 0.5
    rm2, rv2 = rm.copy(), rv.copy()
    ys, mean, invstd, counts = _stages_forward([x], w, b, axis, 1e-4, rm=rm, rv=rv, momentum=0.3)
    y_ref, m_ref, r_ref = R.batch_norm_forward(x, w, b, rm2, rv2, eps=1e-4, momentum=0.3, axis=axis)
    for got, ref in [(ys[0], y_ref), (mean, m_ref), (invstd, r_ref), (rm, rm2), (rv, rv2)]:
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    dy = rng.normal(size=shape)
    dxs, dw, db = _stages_backward([dy], [x], mean, invstd, w, counts, axis)
    ref = R.batch_norm_backward(dy, x, m_ref, r_ref, w, b, axis=axis)
    for got, r in zip([dxs[0], dw, db], ref):
        np.testing.assert_allclose(got, r, rtol=1e-10, atol=1e-12)


def test_reference_gather_is_chan_formula(rng):
    parts = [rng.normal(size=(n, 3)) * 2 + 5 for n in (4, 1, 7)]
    whole = np.concatenate(parts)
    stats = [RS.batch_norm_stats(p) for p in parts]
    mean, invstd = RS.batch_norm_gather_stats(
        np.stack([s[0] for s in stats]), np.stack([s[1] for s in stats]), [s[2] for s in stats], eps=0.0
    )
    np.testing.assert_allclose(mean, whole.mean(0), rtol=1e-13)
    np.testing.assert_allclose(invstd, 1 / whole.std(0), rtol=1e-12)


# ------------------------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("shape", "axis"), SHAPES)
def test_stats_matches_reference(rng, threads, dtype, shape, axis):
    x = data(rng, shape, dtype)
    mean, m2, count = fastnorm.batch_norm_stats(x, axis=axis)
    rmean, rm2, rcount = RS.batch_norm_stats(as64(x), axis=axis)
    lmean, lm2, _ = RS.batch_norm_stats(x, axis=axis)
    assert count == rcount == x.size // channels(shape, axis)
    assert mean.dtype == m2.dtype == dtype
    assert_matches_reference(mean, rmean, lmean, name="mean")
    assert_matches_reference(m2, rm2, lm2, name="m2")


@pytest.mark.parametrize(("shape", "axis"), [((64, 4, 33), 1), ((257, 5), -1), ((3, 2, 5000), 1)])
def test_stats_stable_at_large_offset(rng, threads, shape, axis):
    """x = 1e4 + noise in float32: M2 within a few float32 ulps of the exact value (no E[x^2] - E[x]^2)."""
    x = data(rng, shape, np.float32, offset=1e4, scale=1.0)
    mean, m2, _ = fastnorm.batch_norm_stats(x, axis=axis)
    rmean, rm2, _ = RS.batch_norm_stats(as64(x), axis=axis)
    np.testing.assert_allclose(m2, rm2, rtol=1e-5)
    np.testing.assert_allclose(mean, rmean, rtol=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("counts", [(5, 3, 9), (4, 0, 2), (0, 0, 7), (1, 1)])
@pytest.mark.parametrize("running", [True, False])
def test_gather_stats_matches_reference(rng, threads, dtype, counts, running):
    c = 6
    parts = [data(rng, (n, c), dtype) for n in counts]
    stats = [fastnorm.batch_norm_stats(p) for p in parts]
    means = np.stack([s.mean for s in stats])
    m2s = np.stack([s.m2 for s in stats])
    cnt = np.array([s.count for s in stats])
    rm, rv = (rng.normal(size=c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)) if running else (None, None)
    rm_k, rv_k, rm_64, rv_64, rm_lp, rv_lp = copy(rm), copy(rv), as64(rm), as64(rv), copy(rm), copy(rv)
    got = fastnorm.batch_norm_gather_stats(means, m2s, cnt, rm_k, rv_k, momentum=0.3, eps=1e-4)
    ref = RS.batch_norm_gather_stats(as64(means), as64(m2s), cnt, rm_64, rv_64, momentum=0.3, eps=1e-4)
    lowp = RS.batch_norm_gather_stats(means, m2s, cnt, rm_lp, rv_lp, momentum=0.3, eps=1e-4)
    for name, g, r, lp in zip(
        ["mean", "invstd", "running_mean", "running_var"],
        [*got, rm_k, rv_k],
        [*ref, rm_64, rv_64],
        [*lowp, rm_lp, rv_lp],
    ):
        assert_matches_reference(g, r, lp, name=name)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("shape", "axis"), SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_elemt_and_backward_stages_match_reference(rng, threads, dtype, shape, axis, affine):
    x = data(rng, shape, dtype)
    dy = data(rng, shape, dtype, offset=0.1)
    c = channels(shape, axis)
    w, b = params(rng, c, dtype, affine)
    mean = (rng.normal(size=c) * 0.1 + 0.7).astype(dtype)
    invstd = (rng.random(c) + 0.5).astype(dtype)
    f64 = [as64(a) for a in (dy, x, mean, invstd, w, b)]

    y = fastnorm.batch_norm_elemt(x, mean, invstd, w, b, axis=axis)
    assert_matches_reference(
        y, RS.batch_norm_elemt(*f64[1:], axis=axis), RS.batch_norm_elemt(x, mean, invstd, w, b, axis=axis), name="y"
    )

    got = fastnorm.batch_norm_backward_reduce(dy, x, mean, invstd, w, axis=axis)
    ref = RS.batch_norm_backward_reduce(*f64[:5], axis=axis)
    lowp = RS.batch_norm_backward_reduce(dy, x, mean, invstd, w, axis=axis)
    for name, g, r, lp in zip(["sum_dy", "sum_dy_xmu", "dweight", "dbias"], got, ref, lowp):
        assert_matches_reference(g, r, lp, name=name)

    n = x.size // c
    sum_dy, sum_dy_xmu = got.sum_dy, got.sum_dy_xmu
    dx = fastnorm.batch_norm_backward_elemt(dy, x, mean, invstd, w, sum_dy, sum_dy_xmu, n, axis=axis)
    ref = RS.batch_norm_backward_elemt(*f64[:5], as64(sum_dy), as64(sum_dy_xmu), n, axis=axis)
    lowp = RS.batch_norm_backward_elemt(dy, x, mean, invstd, w, sum_dy, sum_dy_xmu, n, axis=axis)
    assert_matches_reference(dx, ref, lowp, name="dx")


# ------------------------------------------------------------------------------------------ composition
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("shape", "axis"), SHAPES)
def test_stages_over_one_process_equal_batch_norm(rng, threads, dtype, shape, axis):
    """stats -> gather(P=1) -> elemt and reduce -> backward_elemt, against the float64 BatchNorm reference,
    within the error bound of fastnorm.batch_norm_forward/backward's own error."""
    x = data(rng, shape, dtype)
    dy = data(rng, shape, dtype, offset=0.2)
    c = channels(shape, axis)
    w, b = params(rng, c, dtype)
    rm, rv = rng.normal(size=c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)
    rm_s, rv_s, rm_f, rv_f, rm_64, rv_64 = copy(rm), copy(rv), copy(rm), copy(rv), as64(rm), as64(rv)
    ys, mean, invstd, counts = _stages_forward([x], w, b, axis, 1e-4, fastnorm, rm_s, rv_s, momentum=0.2)
    fused = fastnorm.batch_norm_forward(x, w, b, rm_f, rv_f, momentum=0.2, eps=1e-4, axis=axis)
    ref = R.batch_norm_forward(as64(x), as64(w), as64(b), rm_64, rv_64, momentum=0.2, eps=1e-4, axis=axis)
    for name, got, fu, r in zip(
        ["y", "mean", "invstd", "running_mean", "running_var"],
        [ys[0], mean, invstd, rm_s, rv_s],
        [*fused, rm_f, rv_f],
        [*ref, rm_64, rv_64],
    ):
        assert_matches_reference(got, r, fu, name=name)
    dxs, dw, db = _stages_backward([dy], [x], mean, invstd, w, counts, axis, fastnorm)
    fused_b = fastnorm.batch_norm_backward(dy, x, fused.mean, fused.rstd, w, b, axis=axis)
    ref_b = R.batch_norm_backward(as64(dy), as64(x), ref[1], ref[2], as64(w), as64(b), axis=axis)
    for name, got, fu, r in zip(["dx", "dweight", "dbias"], [dxs[0], dw, db], fused_b, ref_b):
        assert_matches_reference(got, r, fu, name=name)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(
    ("shape", "axis", "sizes"),
    [
        ((9, 4, 5), 1, (4, 5)),
        ((10, 3, 2, 3), 1, (3, 0, 7)),
        ((11, 5, 3), -1, (6, 0, 0, 5)),
        ((12, 3), 1, (1, 11)),
        ((40, 7), -1, (13, 27)),
    ],
)
def test_stages_over_split_batches_equal_concatenated(rng, threads, dtype, shape, axis, sizes):
    """P processes with unequal and empty batches give BatchNorm over the concatenated batch: outputs,
    input gradients, summed parameter gradients, running statistics."""
    x = data(rng, shape, dtype, offset=3.0)
    dy = data(rng, shape, dtype, offset=0.2)
    c = channels(shape, axis)
    w, b = params(rng, c, dtype)
    rm, rv = rng.normal(size=c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)
    rm_s, rv_s, rm_f, rv_f, rm_64, rv_64 = copy(rm), copy(rv), copy(rm), copy(rv), as64(rm), as64(rv)
    parts = split(x, sizes, axis)
    ys, mean, invstd, counts = _stages_forward(parts, w, b, axis, 1e-5, fastnorm, rm_s, rv_s)
    np.testing.assert_array_equal(counts, [p.size // c for p in parts])
    fused = fastnorm.batch_norm_forward(x, w, b, rm_f, rv_f, axis=axis)
    ref = R.batch_norm_forward(as64(x), as64(w), as64(b), rm_64, rv_64, axis=axis)
    for name, got, fu, r in zip(
        ["y", "mean", "invstd", "running_mean", "running_var"],
        [np.concatenate(ys), mean, invstd, rm_s, rv_s],
        [*fused, rm_f, rv_f],
        [*ref, rm_64, rv_64],
    ):
        assert_matches_reference(got, r, fu, name=name)
    dxs, dw, db = _stages_backward(split(dy, sizes, axis), parts, mean, invstd, w, counts, axis, fastnorm)
    fused_b = fastnorm.batch_norm_backward(dy, x, fused.mean, fused.rstd, w, b, axis=axis)
    ref_b = R.batch_norm_backward(as64(dy), as64(x), ref[1], ref[2], as64(w), as64(b), axis=axis)
    for name, got, fu, r in zip(["dx", "dweight", "dbias"], [np.concatenate(dxs), dw, db], fused_b, ref_b):
        assert_matches_reference(got, r, fu, name=name)


def test_split_batches_stable_at_large_offset(rng):
    """float32 x = 1e4 + noise over three processes: the combined variance keeps float32 accuracy."""
    x = data(rng, (30, 4, 17), np.float32, offset=1e4, scale=1.0)
    parts = split(x, (7, 0, 23), 1)
    _, mean, invstd, _ = _stages_forward(parts, None, None, 1, 1e-5, fastnorm)
    _, rmean, rinv = R.batch_norm_forward(as64(x), eps=1e-5)
    np.testing.assert_allclose(invstd, rinv, rtol=2e-5)
    np.testing.assert_allclose(mean, rmean, rtol=1e-6)


# ------------------------------------------------------------------------------------------ API details
def test_empty_batch_stats_and_reduce(rng):
    x = np.empty((0, 3, 4), np.float32)
    mean, m2, count = fastnorm.batch_norm_stats(x)
    assert count == 0
    assert not mean.any()
    assert not m2.any()
    s = fastnorm.batch_norm_backward_reduce(
        x, x, np.ones(3, np.float32), np.ones(3, np.float32), np.ones(3, np.float32)
    )
    assert all(not a.any() for a in s)
    assert s.dweight.shape == (3,)
    y = fastnorm.batch_norm_elemt(x, np.ones(3, np.float32), np.ones(3, np.float32))
    assert y.shape == x.shape
    dx = fastnorm.batch_norm_backward_elemt(
        x, x, *(np.ones(3, np.float32),) * 2, None, *(np.ones(3, np.float32),) * 2, 5
    )
    assert dx.shape == x.shape


def test_out_buffers_are_written_in_place(rng):
    x = data(rng, (5, 3, 4), np.float64)
    mean, m2 = np.empty(3), np.empty(3)
    res = fastnorm.batch_norm_stats(x, out=(mean, m2))
    assert res.mean is mean
    assert res.m2 is m2
    y = np.empty_like(x)
    assert fastnorm.batch_norm_elemt(x, mean, 1 / np.sqrt(m2 / 20 + 1e-5), out=y) is y
    mi = np.empty(3), np.empty(3)
    g = fastnorm.batch_norm_gather_stats(mean[None], m2[None], [20], out=mi)
    assert g.mean is mi[0]
    assert g.invstd is mi[1]
    np.testing.assert_allclose(y, R.batch_norm_forward(x)[0], rtol=1e-12, atol=1e-12)


def test_non_contiguous_and_readonly_inputs(rng):
    x = data(rng, (4, 3, 6), np.float32)
    xs, xr = strided(x), readonly(x)
    ref = fastnorm.batch_norm_stats(x)
    for a in (xs, xr):
        got = fastnorm.batch_norm_stats(a)
        np.testing.assert_array_equal(got.mean, ref.mean)
        np.testing.assert_array_equal(got.m2, ref.m2)


def test_results_independent_of_thread_count(rng):
    x = data(rng, (37, 5, 33), np.float32)
    dy = data(rng, (37, 5, 33), np.float32)

    def run():
        m, m2, _ = fastnorm.batch_norm_stats(x)
        inv = (1 / np.sqrt(m2 / (x.size // 5) + 1e-5)).astype(np.float32)
        return m, m2, *fastnorm.batch_norm_backward_reduce(dy, x, m, inv, m)

    assert_thread_count_invariant(run)


def test_bad_input_raises_before_writing(rng):
    x = data(rng, (4, 3, 5), np.float32)
    m = np.zeros(3, np.float32)
    v = np.ones(3, np.float32)
    with pytest.raises(TypeError, match="batch_norm_stats: x has dtype int64"):
        fastnorm.batch_norm_stats(np.ones((3, 2), np.int64))
    with pytest.raises(ValueError, match="batch_norm_stats: axis must be 1"):
        fastnorm.batch_norm_stats(x, axis=0)
    with pytest.raises(ValueError, match="batch_norm_elemt: mean must have shape"):
        fastnorm.batch_norm_elemt(x, np.zeros(4, np.float32), v)
    with pytest.raises(TypeError, match="batch_norm_elemt: invstd has dtype float64"):
        fastnorm.batch_norm_elemt(x, m, np.ones(3))
    with pytest.raises(ValueError, match="batch_norm_gather_stats: counts must have shape"):
        fastnorm.batch_norm_gather_stats(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), [1, 2, 3])
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fastnorm.batch_norm_gather_stats(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), [1, 0])
    with pytest.raises(ValueError, match="counts must be finite and >= 0"):
        fastnorm.batch_norm_gather_stats(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), [5, -1])
    with pytest.raises(ValueError, match="means must be a \\(P, C\\) array"):
        fastnorm.batch_norm_gather_stats(np.zeros(3, np.float32), np.zeros(3, np.float32), [5])
    with pytest.raises(ValueError, match="both be given or both be None"):
        fastnorm.batch_norm_gather_stats(np.zeros((1, 3)), np.zeros((1, 3)), [5], running_mean=np.zeros(3))
    with pytest.raises(ValueError, match="batch_norm_backward_elemt: count must be finite and > 0"):
        fastnorm.batch_norm_backward_elemt(x, x, m, v, None, m, m, 0)
    with pytest.raises(TypeError, match="arguments live on different devices"):
        fastnorm.batch_norm_elemt(x, FakeCudaArray((3,)), v)
    rm, rv = np.zeros(3, np.float32), readonly(np.ones(3, np.float32))
    assert_raises_unchanged(
        ValueError,
        lambda: fastnorm.batch_norm_gather_stats(
            np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), [3, 4], rm, rv
        ),
        [rm, rv],
        match="running_var is updated in place but is read-only",
    )
    out = np.empty((4, 3, 5), np.float64)
    with pytest.raises(ValueError, match="out buffer for y must have dtype float32"):
        fastnorm.batch_norm_elemt(x, m, v, out=out)


# ------------------------------------------------------------------------------------------ 16-bit storage
HALF = [BFLOAT16, FLOAT16]
HALF_IDS = ["bf16", "f16"]
HALF_CASES = [
    ((6, 3, 5), 1, (2, 0, 4)),
    ((2, 2, 700), 1, (1, 1)),
    ((5, 4), 1, (5,)),
    ((40, 3), -1, (13, 27)),
    ((7, 4, 3), -1, (3, 0, 4)),
]


@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("pdt", ["x", "f32"])
@pytest.mark.parametrize(("shape", "axis", "sizes"), HALF_CASES, ids=str)
@pytest.mark.parametrize("offset", [0.5, 1e3], ids=["small", "offset1e3"])
def test_16bit_stages_match_reference(rng, threads, dt, pdt, shape, axis, sizes, offset):
    """bfloat16/float16 data over split batches: every output within DESIGN.md's bound of the float64
    BatchNorm reference on the widened inputs, the other result being the float32 stage references on the
    widened inputs (data outputs rounded once to x's dtype); dtypes as documented."""
    x = data(rng, shape, dt, offset=offset, scale=1.0)
    dy = data(rng, shape, dt, offset=0.2)
    c = channels(shape, axis)
    w, b = params(rng, c, dt if pdt == "x" else np.float32)
    rm, rv = rng.normal(size=c).astype(np.float32), (rng.random(c) + 0.5).astype(np.float32)
    rm_s, rv_s, rm_32, rv_32, rm_64, rv_64 = copy(rm), copy(rv), copy(rm), copy(rv), as64(rm), as64(rv)
    parts, dys = split(x, sizes, axis), split(dy, sizes, axis)
    y, mean, invstd, dx, dw, db, red = run_stages(fastnorm, parts, dys, w, b, axis, rm_s, rv_s)
    assert y.dtype == dx.dtype == dt
    assert mean.dtype == invstd.dtype == np.float32
    assert all(r[0].dtype == r[1].dtype == np.float32 and r[2].dtype == r[3].dtype == w.dtype for r in red)
    x32, dy32, w32, b32 = f32(x, dy, w, b)
    y32, mean32, inv32, dx32, dw32, db32, _ = run_stages(
        RS, split(x32, sizes, axis), split(dy32, sizes, axis), w32, b32, axis, rm_32, rv_32
    )
    ref = R.batch_norm_forward(as64(x), as64(w), as64(b), rm_64, rv_64, momentum=0.2, axis=axis)
    ref_b = R.batch_norm_backward(as64(dy), as64(x), ref[1], ref[2], as64(w), as64(b), axis=axis)
    for name, got, other, r in [
        ("y", y, lowp(y32, dt), ref[0]),
        ("mean", mean, mean32, ref[1]),
        ("invstd", invstd, inv32, ref[2]),
        ("running_mean", rm_s, rm_32, rm_64),
        ("running_var", rv_s, rv_32, rv_64),
        ("dx", dx, lowp(dx32, dt), ref_b[0]),
        ("dweight", dw, dw32, ref_b[1]),
        ("dbias", db, db32, ref_b[2]),
    ]:
        if name in ("dweight", "dbias"):  # float64 sums of per-process results in w's dtype
            got = got.astype(w.dtype)
        close(got, other, r, name)


@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
@pytest.mark.parametrize(("shape", "axis"), [((4, 3, 9), 1), ((2, 5, 1500), 1), ((33, 6), -1), ((5, 3, 7), -1)])
def test_16bit_stages_are_the_float32_kernels_rounded_once(rng, threads, dt, shape, axis):
    """Widening is exact and the 16-bit kernels run the float32 kernels' arithmetic on the widened values:
    statistics and sums are the float32 kernels' on x.astype(float32) (to float32 rounding), and y, dx
    are the float32 kernels' outputs rounded once (up to a last-bit difference where the tile split
    changes a vector/scalar FMA contraction)."""
    x, dy = data(rng, shape, dt, offset=3.0), data(rng, shape, dt)
    c = channels(shape, axis)
    w, b = params(rng, c, np.float32)
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
    s16, s32 = (fastnorm.batch_norm_stats(a, axis=axis) for a in (x, x32))
    # float32 statistics and sums: within DESIGN.md's bound of the float32 kernel's (bitwise equal on avx2)
    ref = RS.batch_norm_stats(x.astype(np.float64), axis=axis)
    assert_close_to_ref(s16.mean, s32.mean, ref[0], name="mean", sample_slack=True)
    assert_close_to_ref(s16.m2, s32.m2, ref[1], name="m2", sample_slack=True)
    mean, invstd = fastnorm.batch_norm_gather_stats(s32.mean[None], s32.m2[None], [s32.count])
    pairs = [tuple(fastnorm.batch_norm_elemt(a, mean, invstd, w, b, axis=axis) for a in (x, x32))]
    r16, r32 = (
        fastnorm.batch_norm_backward_reduce(g, a, mean, invstd, w, axis=axis) for g, a in ((dy, x), (dy32, x32))
    )
    r64 = RS.batch_norm_backward_reduce(*map(as64, (dy, x, mean, invstd, w)), axis=axis)
    for name, a16, a32, a64 in zip(r32._fields, r16, r32, r64):
        assert_close_to_ref(a16, a32, a64, name=name, sample_slack=True)
    pairs.append(
        tuple(
            fastnorm.batch_norm_backward_elemt(g, a, mean, invstd, w, r32.sum_dy, r32.sum_dy_xmu, s32.count, axis=axis)
            for g, a in ((dy, x), (dy32, x32))
        )
    )
    for got, want32 in pairs:
        want = want32.astype(dt)
        d = np.abs(as64(got) - as64(want)) / (_half_eps(dt) * np.maximum(np.abs(as64(want)), 1e-30))
        assert d.max() <= 1.0, d.max()
        assert np.mean(got.view(np.uint16) == want.view(np.uint16)) >= 0.99


def _half_eps(dt):
    import ml_dtypes

    return float(ml_dtypes.finfo(dt).eps)


@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
def test_16bit_running_stats_and_out_buffers(rng, dt):
    """16-bit running statistics (a 16-bit module's buffers) are updated in float64 and rounded into their
    dtype; ``out=`` buffers of the documented dtypes are written in place; float16 weight with bfloat16 x,
    16-bit means and float64 statistics are TypeErrors naming the argument, raised before any write."""
    x = data(rng, (6, 4, 3), dt)
    s = fastnorm.batch_norm_stats(x)
    rm, rv = np.zeros(4, dt), np.ones(4, dt)
    rm32, rv32 = rm.astype(np.float32), rv.astype(np.float32)
    fastnorm.batch_norm_gather_stats(s.mean[None], s.m2[None], [s.count], rm, rv, momentum=0.5)
    fastnorm.batch_norm_gather_stats(s.mean[None], s.m2[None], [s.count], rm32, rv32, momentum=0.5)
    np.testing.assert_array_equal(rm.view(np.uint16), rm32.astype(dt).view(np.uint16))
    np.testing.assert_array_equal(rv.view(np.uint16), rv32.astype(dt).view(np.uint16))
    mean, m2 = np.empty(4, np.float32), np.empty(4, np.float32)
    assert fastnorm.batch_norm_stats(x, out=(mean, m2)).mean is mean
    y = np.empty_like(x)
    inv = np.ones(4, np.float32)
    assert fastnorm.batch_norm_elemt(x, mean, inv, out=y) is y
    w = np.ones(4, dt)
    outs = (np.empty(4, np.float32), np.empty(4, np.float32), np.empty(4, dt), np.empty(4, dt))
    got = fastnorm.batch_norm_backward_reduce(x, x, mean, inv, w, out=outs)
    assert all(g is o for g, o in zip(got, outs))
    np.testing.assert_array_equal(got.dbias.astype(np.float32), got.sum_dy.astype(dt).astype(np.float32))
    other = FLOAT16 if dt == BFLOAT16 else BFLOAT16
    keep = y.copy()
    with pytest.raises(TypeError, match="batch_norm_elemt: weight has dtype"):
        fastnorm.batch_norm_elemt(x, mean, inv, np.ones(4, other), out=y)
    np.testing.assert_array_equal(y.view(np.uint16), keep.view(np.uint16))
    with pytest.raises(TypeError, match="batch_norm_elemt: mean has dtype float64"):
        fastnorm.batch_norm_elemt(x, mean.astype(np.float64), inv)
    with pytest.raises(TypeError, match="batch_norm_gather_stats: means has dtype"):
        fastnorm.batch_norm_gather_stats(s.mean[None].astype(dt), s.m2[None], [s.count])
    with pytest.raises(TypeError, match="batch_norm_backward_reduce: dy has dtype float32"):
        fastnorm.batch_norm_backward_reduce(x.astype(np.float32), x, mean, inv)


STAGES = ("batch_norm_stats", "batch_norm_gather_stats", "batch_norm_elemt", "batch_norm_backward_reduce",
          "batch_norm_backward_elemt")  # fmt: skip


@pytest.mark.parametrize("dt", ["bfloat16", "float16"])
def test_torch_sync_batch_norm_runs_16bit_modules_on_the_stage_kernels(monkeypatch, tmp_path, dt):
    """fastnorm.torch's SyncBatchNorm function on a 16-bit module (its weight, bias and running statistics
    16-bit, as ``module.to(torch.bfloat16)`` leaves them) and 16-bit input, through a one-process gloo
    group: the five stage kernels run (no torch fallback), outputs and gradients keep the module's dtypes,
    and each is within 2x torch's same-dtype BatchNorm2d error (+ 8 units of the dtype) of float64's."""
    torch = pytest.importorskip("torch")
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from fastnorm.torch.distributed import SyncBatchNorm, _SyncBatchNormFunction

    calls = []
    for name in STAGES:
        fn = getattr(fastnorm, name)
        monkeypatch.setattr(fastnorm, name, lambda *a, _f=fn, _n=name, **k: calls.append(_n) or _f(*a, **k))
    dtype = getattr(torch, dt)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 4, 3, 3, generator=gen) * 2 + 1).to(dtype)
    g = torch.randn(6, 4, 3, 3, generator=gen).to(dtype)
    mods = [SyncBatchNorm(4, eps=1e-4).to(dtype), torch.nn.BatchNorm2d(4, eps=1e-4).to(dtype)]
    mods.append(torch.nn.BatchNorm2d(4, eps=1e-4).double())
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        res = []
        for i, m in enumerate(mods):
            with torch.no_grad():
                m.weight.copy_(torch.linspace(0.5, 2.0, 4))
                m.bias.copy_(torch.linspace(-1.0, 1.0, 4))
            xx = (x.double() if i == 2 else x).clone().requires_grad_(True)
            if i == 0:  # the synchronized path (a one-process group takes the local one in forward())
                args = (m.weight, m.bias, m.running_mean, m.running_var, 1e-4, 0.1, dist.group.WORLD, 1, 4)
                y = _SyncBatchNormFunction.apply(xx, *args)
            else:
                y = m(xx)
            (y * (g.double() if i == 2 else g)).sum().backward()
            res.append((y, xx.grad, m.weight.grad, m.bias.grad, m.running_mean, m.running_var))
    finally:
        dist.destroy_process_group()
    assert calls == list(STAGES)
    assert all(a.dtype == dtype for a in res[0])
    eps = float(torch.finfo(dtype).eps)
    for name, got, other, ref in zip(("y", "dx", "dweight", "dbias", "running_mean", "running_var"), *res):
        got, other, ref = (a.detach().double() for a in (got, other, ref))
        err, other_err = (float((a - ref).abs().max()) for a in (got, other))
        bound = 2 * other_err + 8 * eps * max(1.0, float(ref.abs().max()))
        assert err <= bound, f"{name}: {err:.3g} > {bound:.3g}"
