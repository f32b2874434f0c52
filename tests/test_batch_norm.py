import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

from . import _channel as ch
from ._channel import STATS, check_all, copy
from ._util import FLOATS, assert_close_to_ref, byteswapped, torch_and_wider_ref, torch_or_skip, unaligned


def make(rng, shape, axis, dtype, affine="both", offset=0.7):
    return ch.make(rng, shape, dtype, affine, offset, axis=1 if axis == 1 else -1)


def forward_all(x, w, b, rm, rv, mode, axis, **kw):
    return ch.forward_all("batch_norm", x, w, b, rm, rv, mode, axis=axis, **kw)


# ----------------------------------------------------------------------------------------- references
@pytest.mark.parametrize(("shape", "axis"), [((4, 3), 1), ((3, 2, 3), 1), ((2, 3, 2, 2), 1), ((3, 2, 3), -1)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", ch.AFFINE)
def test_reference_backward_matches_finite_differences(rng, shape, axis, training, affine):
    x, w, b, rm, rv = make(rng, shape, axis, np.float64, affine)

    def fwd(x, w, b):
        return R.batch_norm_forward(x, w, b, rm, rv, training=training, eps=1e-3, axis=axis)[0]

    def bwd(dy, x, w, b):
        _, mean, rstd = R.batch_norm_forward(x, w, b, copy(rm), copy(rv), training=training, eps=1e-3, axis=axis)
        return R.batch_norm_backward(dy, x, mean, rstd, w, b, training=training, axis=axis)

    ch.fd_check(fwd, bwd, [x, w, b], rng)


def test_reference_running_stats_formula(rng):
    x = rng.normal(size=(4, 3, 5))
    rm, rv = np.zeros(3), np.ones(3)
    R.batch_norm_forward(x, running_mean=rm, running_var=rv, momentum=0.25)
    np.testing.assert_allclose(rm, 0.25 * x.mean(axis=(0, 2)))
    np.testing.assert_allclose(rv, 0.75 + 0.25 * x.var(axis=(0, 2), ddof=1))


# ------------------------------------------------------------------------------------- kernels vs references


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(
    ("shape", "axis"), [((3, 5, 6, 7), 1), ((4, 6, 37), 1), ((13, 2), -1), ((5, 6, 7), -1), ((150, 9), -1)]
)
@pytest.mark.parametrize("training", [True, False])
def test_streaming_stores_match_reference(rng, threads, dtype, shape, axis, training):
    # large outputs are written with non-temporal stores (unaligned heads, vector bodies, scalar tails)
    x, w, b, rm, rv = make(rng, shape, axis, dtype)
    dy = rng.normal(size=shape).astype(dtype)
    with ch.streaming_stores():
        got, ref, lowp = forward_all(x, w, b, rm, rv, "train" if training else "eval", axis)
        g = fastnorm.batch_norm_backward(dy, x, got[1], got[2], w, b, training=training, axis=axis)
    check_all(got, ref, lowp, STATS)
    ch.check_backward("batch_norm", g, dy, x, got[1], got[2], w, b, training=training, axis=axis)


@pytest.mark.parametrize("training", [True, False])
def test_few_large_channels(rng, threads, training):
    # 3 channels on 2 threads do not split evenly: the (n, c) slices are shared between threads, one
    # cache-sized channel block at a time (here > 4 MB per channel, so one channel per block).
    if threads == 1:
        pytest.skip("one thread takes whole channels")
    x, w, b, rm, rv = make(rng, (2, 3, 2**19 + 3), 1, np.float32)
    got, ref, lowp = forward_all(x, w, b, rm, rv, "train" if training else "eval", 1)
    check_all(got, ref, lowp, STATS)
    dy = rng.normal(size=x.shape).astype(np.float32)
    g = fastnorm.batch_norm_backward(dy, x, got[1], got[2], w, b, training=training)
    ch.check_backward("batch_norm", g, dy, x, got[1], got[2], w, b, training=training)


@pytest.mark.parametrize("dtype", FLOATS)
def test_channels_last_equals_channels_first(rng, threads, dtype):
    x, w, b, rm, rv = make(rng, (4, 6, 5, 3), 1, dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    first = fastnorm.batch_norm_forward(x, w, b, axis=1)
    xl, dyl = np.moveaxis(x, 1, -1).copy(), np.moveaxis(dy, 1, -1).copy()
    last = fastnorm.batch_norm_forward(xl, w, b, axis=-1)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.moveaxis(last.y, -1, 1), first.y, **tol)
    np.testing.assert_allclose(last.mean, first.mean, **tol)
    g1 = fastnorm.batch_norm_backward(dy, x, first.mean, first.rstd, w, b, axis=1)
    g2 = fastnorm.batch_norm_backward(dyl, xl, last.mean, last.rstd, w, b, axis=3)  # axis = ndim - 1
    np.testing.assert_allclose(np.moveaxis(g2.dx, -1, 1), g1.dx, **tol)
    np.testing.assert_allclose(g2.dweight, g1.dweight, **tol)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("shape", "axis"), [((6, 4, 7), 1), ((40, 5), -1)])
def test_running_stats_after_several_steps(rng, threads, dtype, shape, axis):
    """DESIGN.md's criterion: float32 within 2x the float32 NumPy reference's error against float64; float64
    within 2x the float64 reference's error against extended precision (plus 8 ulps)."""
    c = shape[1] if axis == 1 else shape[-1]
    wide = np.float64 if dtype == np.float32 else np.longdouble
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    rm_lo, rv_lo = np.zeros(c, dtype), np.ones(c, dtype)
    rm_w, rv_w = np.zeros(c, wide), np.ones(c, wide)
    for step in range(5):
        x = (rng.normal(size=shape) * (1 + step) + step).astype(dtype)
        fastnorm.batch_norm_forward(x, running_mean=rm, running_var=rv, momentum=0.2, axis=axis)
        R.batch_norm_forward(x, running_mean=rm_lo, running_var=rv_lo, momentum=0.2, axis=axis)
        R.batch_norm_forward(x.astype(wide), running_mean=rm_w, running_var=rv_w, momentum=0.2, axis=axis)
    assert_close_to_ref(rm, rm_lo, rm_w, name="running_mean")
    assert_close_to_ref(rv, rv_lo, rv_w, name="running_var")


# ----------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("shape", "axis"), [((4, 3, 6), 1), ((30, 4), -1)])
@pytest.mark.parametrize("training", [True, False])
def test_nan_propagates_like_reference(rng, threads, dtype, shape, axis, training):
    x, w, b, rm, rv = make(rng, shape, axis, dtype)
    x[(1,) * x.ndim] = np.nan
    got, ref, lowp = forward_all(x, w, b, rm, rv, "train" if training else "eval", axis)
    assert np.isnan(got[0]).any()
    assert np.isfinite(got[0]).any()
    check_all(got, ref, lowp, STATS)
    dy = rng.normal(size=shape).astype(dtype)
    g = fastnorm.batch_norm_backward(dy, x, got[1], got[2], w, b, training=training, axis=axis)
    ch.check_backward("batch_norm", g, dy, x, got[1], got[2], w, b, training=training, axis=axis)


@pytest.mark.parametrize(("shape", "axis"), [((8, 3, 700), 1), ((3000, 4), -1)])
def test_large_offset_float32_statistics(rng, threads, shape, axis):
    x, w, b, rm, rv = make(rng, shape, axis, np.float32, offset=1e4)
    got, ref, lowp = forward_all(x, w, b, rm, rv, "train", axis)
    check_all(got, ref, lowp, STATS)
    # the variance (~2.25) must be right to float32 precision, not swamped by the mean (1e4)
    np.testing.assert_allclose(got[2], ref[2], rtol=2e-6)
    np.testing.assert_allclose(got[4], ref[4], rtol=2e-6)


# ----------------------------------------------------------------------------------------- bad input
# Only what tests/contracts does not check (the contracts: each array argument's dtype (int32, complex64) and
# shape, out= shape and length, x of 0/1 dims, and the options of BAD_OPTIONS there).
def test_bad_input_raises_and_writes_nothing(rng):
    x, w, b, rm, rv = make(rng, (4, 3, 5), 1, np.float32)
    fwd, watched = ch.bad_forward_table("batch_norm", x, w, b, rm, rv, 3)
    y, mean, rstd = watched[2:]
    cases = [
        (TypeError, fwd(running_var=np.ones(3, np.float64))),
        (TypeError, fwd(bias=np.ones(3, np.float64))),
        (TypeError, fwd(running_var=[1.0, 1.0, 1.0])),
        (ValueError, fwd(running_var=ch.strided(np.ones(3, np.float32)))),
        (ValueError, fwd(running_var=ch.readonly(rv))),
        (ValueError, fwd(running_var=None)),
        (ValueError, fwd(running_var=rm)),
        (ValueError, fwd(running_mean=w)),
        (ValueError, fwd(training=False, eps=-1e-5)),  # eps >= 0 in evaluation (> 0 in training: BAD_OPTIONS)
        (ValueError, fwd(running_var=unaligned(rv))),
        (ValueError, fwd(running_var=byteswapped(rv))),
        (ValueError, fwd(x=x[:1, :, :1])),  # one value per channel in training
        (ValueError, fwd(out=(y, rm, rstd))),  # out aliases running_mean
        (ValueError, fwd(out=(y, mean, mean))),
        (TypeError, fwd(running_mean=ch.FakeCudaArray((3,)))),
        (TypeError, fwd(training=False, running_mean=None, running_var=None)),
    ]
    for exc, call in cases:
        ch.assert_raises_unchanged(exc, call, watched)


def test_bad_backward_input_raises_and_writes_nothing(rng):
    x, w, b, *_ = make(rng, (4, 3, 5), 1, np.float32)
    dy = np.ones_like(x)
    mean, rstd = np.zeros(3, np.float32), np.ones(3, np.float32)
    dx, dw, db = np.full_like(x, 7), np.full(3, 7, np.float32), np.full(3, 7, np.float32)
    watched = [dx, dw, db]

    bwd = ch.caller(fastnorm.batch_norm_backward, dy=dy, x=x, mean=mean, rstd=rstd, weight=w, bias=b, out=(dx, dw, db))

    cases = [
        (TypeError, bwd(rstd=np.ones(3, np.float64))),
        (TypeError, bwd(mean=None)),
        (TypeError, bwd(dy=dy.astype(np.float64))),
        (ValueError, bwd(out=(dx, dw, dy))),  # out aliases an input
        (ValueError, bwd(bias=None)),  # a dbias buffer without bias
        (TypeError, bwd(weight=ch.FakeCudaArray((3,)))),
    ]
    for exc, call in cases:
        ch.assert_raises_unchanged(exc, call, watched)


# ----------------------------------------------------------------------------------------- PyTorch
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", FLOATS)
def test_matches_torch(rng, threads, channels_last, training, dtype):
    """DESIGN.md's criterion: fastnorm's error against a wider reference (torch in float64 for float32; the
    NumPy reference in extended precision for float64) is at most 2x torch's same-dtype error + 8 ulps."""
    torch = torch_or_skip()
    F = torch.nn.functional
    x, w, b, rm, rv = make(rng, (5, 4, 6, 7), 1, dtype)
    dy = rng.normal(size=x.shape).astype(dtype)

    def run_torch(wide):
        xt, wt, bt = (torch.tensor(a.astype(wide), requires_grad=True) for a in (x, w, b))
        rmt, rvt = torch.tensor(rm.astype(wide)), torch.tensor(rv.astype(wide))
        yt = F.batch_norm(xt, rmt, rvt, wt, bt, training=training, momentum=0.3, eps=1e-4)
        yt.backward(torch.tensor(dy.astype(wide)))
        return yt.detach(), xt.grad, wt.grad, bt.grad, rmt, rvt

    def run_ref(xl, wl, bl, rml, rvl, dyl):
        yl, ml, sl = R.batch_norm_forward(xl, wl, bl, rml, rvl, training=training, momentum=0.3, eps=1e-4)
        return (yl, *R.batch_norm_backward(dyl, xl, ml, sl, wl, bl, training=training), rml, rvl)

    other, ref = torch_and_wider_ref(run_torch, run_ref, dtype, (x, w, b, rm, rv, dy))
    axis = -1 if channels_last else 1
    to = (lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))) if channels_last else (lambda a: a)
    back = (lambda a: np.moveaxis(a, -1, 1)) if channels_last else (lambda a: a)
    y, mean, rstd = fastnorm.batch_norm_forward(
        to(x), w, b, rm, rv, training=training, momentum=0.3, eps=1e-4, axis=axis
    )
    dx, dw, db = fastnorm.batch_norm_backward(to(dy), to(x), mean, rstd, w, b, training=training, axis=axis)
    got = (back(y), back(dx), dw, db, rm, rv)
    for name, g, o, r in zip(("y", "dx", "dweight", "dbias", "running_mean", "running_var"), got, other, ref):
        assert_close_to_ref(g, o, r, name=name)


@pytest.mark.parametrize("channels_last", [False, True])
def test_running_stats_match_torch_after_several_steps(rng, threads, channels_last):
    """float64: fastnorm's error against the NumPy reference in extended precision is at most 2x torch's
    plus 8 ulps (DESIGN.md's criterion)."""
    torch = torch_or_skip()
    bn = torch.nn.BatchNorm2d(5, momentum=0.15).double()
    rm, rv = np.zeros(5), np.ones(5)
    rml, rvl = np.zeros(5, np.longdouble), np.ones(5, np.longdouble)
    for step in range(4):
        x = rng.normal(size=(3, 5, 4, 6)) * (step + 1) - step
        bn(torch.tensor(x))
        R.batch_norm_forward(x.astype(np.longdouble), running_mean=rml, running_var=rvl, momentum=0.15)
        xx = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_last else x
        fastnorm.batch_norm_forward(xx, running_mean=rm, running_var=rv, momentum=0.15, axis=-1 if channels_last else 1)
    assert_close_to_ref(rm, bn.running_mean, rml, name="running_mean")
    assert_close_to_ref(rv, bn.running_var, rvl, name="running_var")
