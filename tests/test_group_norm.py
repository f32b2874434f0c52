import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

from . import _channel as ch
from ._channel import as64, check_all
from ._util import FLOATS, assert_close_to_ref, torch_and_wider_ref, torch_or_skip

STATS = ["y", "mean", "rstd"]


def make(rng, shape, dtype, affine="both", offset=0.7):
    return ch.make(rng, shape, dtype, affine, offset)[:3]


def forward_all(x, groups, w, b):
    """The kernel's, the float64 reference's and the same-dtype reference's forward."""
    ref64 = R.group_norm_forward(as64(x), groups, as64(w), as64(b))
    return fastnorm.group_norm_forward(x, groups, w, b), ref64, R.group_norm_forward(x, groups, w, b)


@pytest.mark.parametrize(("shape", "groups"), [((2, 4, 3), 2), ((2, 6, 2, 2), 3), ((3, 2, 3), 1)])
@pytest.mark.parametrize("affine", ch.AFFINE)
def test_reference_backward_matches_finite_differences(rng, shape, groups, affine):
    x, w, b = make(rng, shape, np.float64, affine)

    def fwd(x, w, b):
        return R.group_norm_forward(x, groups, w, b, eps=1e-3)[0]

    def bwd(dy, x, w, b):
        _, mean, rstd = R.group_norm_forward(x, groups, w, b, eps=1e-3)
        return R.group_norm_backward(dy, x, mean, rstd, groups, w, b)

    ch.fd_check(fwd, bwd, [x, w, b], rng)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("shape", "groups"), [((2, 6, 5), 3), ((3, 4, 3, 5), 1), ((5, 9, 11), 3)])
def test_streaming_stores_match_reference(rng, threads, dtype, shape, groups):
    x, w, b = make(rng, shape, dtype)
    dy = rng.normal(size=shape).astype(dtype)
    with ch.streaming_stores():
        got, ref, lowp = forward_all(x, groups, w, b)
        g = fastnorm.group_norm_backward(dy, x, got.mean, got.rstd, groups, w, b)
    check_all(got, ref, lowp, STATS)
    ch.check_backward("group_norm", g, dy, x, got.mean, got.rstd, w, b, groups)


@pytest.mark.parametrize("dtype", FLOATS)
def test_nan_propagates_like_reference(rng, threads, dtype):
    x, w, b = make(rng, (3, 4, 6), dtype)
    x[1, 2, 3] = np.nan
    got, ref, lowp = forward_all(x, 2, w, b)
    assert np.isnan(got.y).any()
    assert np.isfinite(got.y).any()
    check_all(got, ref, lowp, STATS)
    dy = rng.normal(size=x.shape).astype(dtype)
    g = fastnorm.group_norm_backward(dy, x, got.mean, got.rstd, 2, w, b)
    ch.check_backward("group_norm", g, dy, x, got.mean, got.rstd, w, b, 2)


def test_large_offset_float32_statistics(rng, threads):
    x, w, b = make(rng, (3, 4, 2500), np.float32, offset=1e4)
    got, ref, lowp = forward_all(x, 2, w, b)
    check_all(got, ref, lowp, STATS)
    np.testing.assert_allclose(got.rstd, ref[2], rtol=2e-6)


# Only what tests/contracts does not check (see tests/test_batch_norm.py).
def test_bad_input_raises_and_writes_nothing(rng):
    x, w, b = make(rng, (4, 6, 5), np.float32)
    y, mean, rstd = np.full_like(x, 7), np.full((4, 3), 7, np.float32), np.full((4, 3), 7, np.float32)
    watched = [y, mean, rstd]

    fwd = ch.caller(fastnorm.group_norm_forward, x=x, num_groups=3, weight=w, bias=b, out=(y, mean, rstd))

    cases = [
        (ValueError, fwd(num_groups=4)),  # 6 channels not divisible by 4
        (TypeError, fwd(bias=np.ones(6, np.float64))),
        (ValueError, fwd(out=(y, mean, ch.readonly(rstd)))),
        (TypeError, fwd(weight=ch.FakeCudaArray((6,)))),
    ]
    for exc, call in cases:
        ch.assert_raises_unchanged(exc, call, watched)
    dx = np.full_like(x, 7)
    stats = dict(mean=np.zeros((4, 3), np.float32), rstd=np.ones((4, 3), np.float32))
    bwd = ch.caller(fastnorm.group_norm_backward, dy=x, x=x, **stats, num_groups=3, out=(dx, None, None))
    for exc, call in [
        (ValueError, bwd(num_groups=4)),
        (TypeError, bwd(rstd=np.ones((4, 3), np.float64))),
    ]:
        ch.assert_raises_unchanged(exc, call, [dx])


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("shape", "groups"), [((3, 6, 4, 5), 3), ((4, 8, 7), 8), ((2, 4), 1)])
def test_matches_torch(rng, threads, dtype, shape, groups):
    """DESIGN.md's criterion: fastnorm's error against a wider reference (torch in float64 for float32; the
    NumPy reference in extended precision for float64) is at most 2x torch's same-dtype error + 8 ulps."""
    torch = torch_or_skip()
    x, w, b = make(rng, shape, dtype)
    dy = rng.normal(size=shape).astype(dtype)

    def run_torch(wide):
        xt, wt, bt = (torch.tensor(a.astype(wide), requires_grad=True) for a in (x, w, b))
        yt = torch.nn.functional.group_norm(xt, groups, wt, bt, eps=1e-4)
        yt.backward(torch.tensor(dy.astype(wide)))
        return yt.detach(), xt.grad, wt.grad, bt.grad

    def run_ref(xl, wl, bl, dyl):
        yl, ml, sl = R.group_norm_forward(xl, groups, wl, bl, eps=1e-4)
        return (yl, *R.group_norm_backward(dyl, xl, ml, sl, groups, wl, bl))

    other, ref = torch_and_wider_ref(run_torch, run_ref, dtype, (x, w, b, dy))
    y, mean, rstd = fastnorm.group_norm_forward(x, groups, w, b, eps=1e-4)
    dx, dw, db = fastnorm.group_norm_backward(dy, x, mean, rstd, groups, w, b)
    for name, g, o, r in zip(("y", "dx", "dweight", "dbias"), (y, dx, dw, db), other, ref, strict=True):
        assert_close_to_ref(g, o, r, name=name)
