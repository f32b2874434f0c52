import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

from . import _channel as ch
from ._channel import STATS, check_all, copy, make
from ._util import FLOATS, assert_close_to_ref, torch_and_wider_ref, torch_or_skip

# "train": use_input_stats with running statistics; "train_no_running": without; "eval": the running ones
MODES = ["train", "train_no_running", "eval"]


def forward_all(x, w, b, rm, rv, mode, **kw):
    return ch.forward_all("instance_norm", x, w, b, rm, rv, mode, **kw)


@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 2, 2, 3)])
@pytest.mark.parametrize("use_input_stats", [True, False])
@pytest.mark.parametrize("affine", ch.AFFINE)
def test_reference_backward_matches_finite_differences(rng, shape, use_input_stats, affine):
    x, w, b, rm, rv = make(rng, shape, np.float64, affine)

    def fwd(x, w, b):
        return R.instance_norm_forward(x, w, b, rm, rv, use_input_stats=use_input_stats, eps=1e-3)[0]

    def bwd(dy, x, w, b):
        _, mean, rstd = R.instance_norm_forward(x, w, b, copy(rm), copy(rv), use_input_stats=use_input_stats, eps=1e-3)
        return R.instance_norm_backward(dy, x, mean, rstd, w, b, use_input_stats=use_input_stats)

    ch.fd_check(fwd, bwd, [x, w, b], rng)


@pytest.mark.parametrize("dtype", FLOATS)
def test_running_stats_after_several_steps(rng, threads, dtype):
    """DESIGN.md's criterion: float32 within 2x the float32 NumPy reference's error against float64; float64
    within 2x the float64 reference's error against extended precision (plus 8 ulps)."""
    wide = np.float64 if dtype == np.float32 else np.longdouble
    rm, rv = np.zeros(4, dtype), np.ones(4, dtype)
    rm_lo, rv_lo = np.zeros(4, dtype), np.ones(4, dtype)
    rm_w, rv_w = np.zeros(4, wide), np.ones(4, wide)
    for step in range(5):
        x = (rng.normal(size=(3, 4, 9)) * (1 + step) + step).astype(dtype)
        fastnorm.instance_norm_forward(x, running_mean=rm, running_var=rv, momentum=0.2)
        R.instance_norm_forward(x, running_mean=rm_lo, running_var=rv_lo, momentum=0.2)
        R.instance_norm_forward(x.astype(wide), running_mean=rm_w, running_var=rv_w, momentum=0.2)
    assert_close_to_ref(rm, rm_lo, rm_w, name="running_mean")
    assert_close_to_ref(rv, rv_lo, rv_w, name="running_var")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(2, 3, 5), (5, 7, 11), (2, 3, 3, 2, 5)])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_streaming_stores_match_reference(rng, threads, dtype, shape, use_input_stats):
    x, w, b, rm, rv = make(rng, shape, dtype)
    dy = rng.normal(size=shape).astype(dtype)
    with ch.streaming_stores():
        got, ref, lowp = forward_all(x, w, b, rm, rv, "train" if use_input_stats else "eval")
        g = fastnorm.instance_norm_backward(dy, x, got[1], got[2], w, b, use_input_stats=use_input_stats)
    check_all(got, ref, lowp, STATS)
    ch.check_backward("instance_norm", g, dy, x, got[1], got[2], w, b, use_input_stats=use_input_stats)


@pytest.mark.parametrize("dtype", FLOATS)
def test_nan_propagates_like_reference(rng, threads, dtype):
    x, w, b, rm, rv = make(rng, (3, 4, 6), dtype)
    x[1, 2, 3] = np.nan
    for mode in MODES:
        got, ref, lowp = forward_all(x, w, b, rm, rv, mode)
        assert np.isnan(got[0]).any()
        assert np.isfinite(got[0]).any()
        check_all(got, ref, lowp, STATS)


def test_large_offset_float32_statistics(rng, threads):
    x, w, b, rm, rv = make(rng, (3, 4, 3000), np.float32, offset=1e4)
    got, ref, lowp = forward_all(x, w, b, rm, rv, "train")
    check_all(got, ref, lowp, STATS)
    np.testing.assert_allclose(got[2], ref[2], rtol=2e-6)
    np.testing.assert_allclose(got[4], ref[4], rtol=2e-6)


# Only what tests/contracts does not check (see tests/test_batch_norm.py).
def test_bad_input_raises_and_writes_nothing(rng):
    x, w, b, rm, rv = make(rng, (4, 3, 5), np.float32)
    fwd, watched = ch.bad_forward_table("instance_norm", x, w, b, rm, rv, (4, 3))
    cases = [
        (TypeError, fwd(running_var=np.ones(3, np.float64))),
        (ValueError, fwd(running_var=ch.readonly(rv))),
        (ValueError, fwd(running_var=ch.strided(np.ones(3, np.float32)))),
        (ValueError, fwd(running_mean=None)),
        (ValueError, fwd(running_var=rm)),
        (ValueError, fwd(x=x[:, :, :1])),  # one spatial value with use_input_stats
        (TypeError, fwd(use_input_stats=False, running_mean=None, running_var=None)),
        (TypeError, fwd(bias=ch.FakeCudaArray((3,)))),
    ]
    for exc, call in cases:
        ch.assert_raises_unchanged(exc, call, watched)
    dx = np.full_like(x, 7)
    stats = dict(mean=np.zeros((4, 3), np.float32), rstd=np.ones((4, 3), np.float32))
    bwd = ch.caller(fastnorm.instance_norm_backward, dy=x, x=x, **stats, out=(dx, None, None))
    ch.assert_raises_unchanged(TypeError, bwd(dy=x.astype(np.float64)), [dx])


@pytest.mark.parametrize("use_input_stats", [True, False])
@pytest.mark.parametrize("dtype", FLOATS)
def test_matches_torch(rng, threads, use_input_stats, dtype):
    """DESIGN.md's criterion: fastnorm's error against a wider reference (torch in float64 for float32; the
    NumPy reference in extended precision for float64) is at most 2x torch's same-dtype error + 8 ulps."""
    torch = torch_or_skip()
    x, w, b, rm, rv = make(rng, (3, 5, 4, 6), dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    kw = dict(use_input_stats=use_input_stats, momentum=0.3, eps=1e-4)

    def run_torch(wide):
        xt, wt, bt = (torch.tensor(a.astype(wide), requires_grad=True) for a in (x, w, b))
        rmt, rvt = torch.tensor(rm.astype(wide)), torch.tensor(rv.astype(wide))
        yt = torch.nn.functional.instance_norm(xt, rmt, rvt, wt, bt, **kw)
        yt.backward(torch.tensor(dy.astype(wide)))
        return yt.detach(), xt.grad, wt.grad, bt.grad, rmt, rvt

    def run_ref(xl, wl, bl, rml, rvl, dyl):
        yl, ml, sl = R.instance_norm_forward(xl, wl, bl, rml, rvl, **kw)
        return (yl, *R.instance_norm_backward(dyl, xl, ml, sl, wl, bl, use_input_stats=use_input_stats), rml, rvl)

    other, ref = torch_and_wider_ref(run_torch, run_ref, dtype, (x, w, b, rm, rv, dy))
    y, mean, rstd = fastnorm.instance_norm_forward(x, w, b, rm, rv, **kw)
    dx, dw, db = fastnorm.instance_norm_backward(dy, x, mean, rstd, w, b, use_input_stats=use_input_stats)
    got = (y, dx, dw, db, rm, rv)
    for name, g, o, r in zip(("y", "dx", "dweight", "dbias", "running_mean", "running_var"), got, other, ref):
        assert_close_to_ref(g, o, r, name=name)


def test_running_stats_match_torch_after_several_steps(rng, threads):
    """float64: fastnorm's error against the NumPy reference in extended precision is at most 2x torch's
    plus 8 ulps (DESIGN.md's criterion)."""
    torch = torch_or_skip()
    norm = torch.nn.InstanceNorm1d(4, momentum=0.15, track_running_stats=True).double()
    rm, rv = np.zeros(4), np.ones(4)
    rml, rvl = np.zeros(4, np.longdouble), np.ones(4, np.longdouble)
    for step in range(4):
        x = rng.normal(size=(3, 4, 7)) * (step + 1) - step
        norm(torch.tensor(x))
        R.instance_norm_forward(x.astype(np.longdouble), running_mean=rml, running_var=rvl, momentum=0.15)
        fastnorm.instance_norm_forward(x, running_mean=rm, running_var=rv, momentum=0.15)
    assert_close_to_ref(rm, norm.running_mean, rml, name="running_mean")
    assert_close_to_ref(rv, norm.running_var, rvl, name="running_var")
