import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

from ._channel import (
    AFFINE,
    FakeCudaArray,
    affine_params,
    as64,
    assert_raises_unchanged,
    check_all,
    copy,
    fd_check,
    readonly,
    running_stats,
    streaming_stores,
    strided,
)
from ._util import FLOATS, torch_or_skip

# (N, C, *spatial): 1-D to 3-D spatial, odd and prime sizes, one instance / channel, L > a moments block
SHAPES = [(2, 3, 5), (3, 4, 2, 3), (2, 3, 3, 2, 5), (1, 1, 13), (5, 7, 11), (2, 1, 4111)]
MODES = ["input_stats", "input_stats_running", "running"]


def make(rng, shape, dtype, affine="both", offset=0.7):
    x = (rng.normal(size=shape) * 1.5 + offset).astype(dtype)
    w, b = affine_params(rng, shape[1], dtype, affine)
    rm, rv = running_stats(rng, shape[1], dtype)
    return x, w, b, rm, rv


def forward_all(x, w, b, rm, rv, mode, **kw):
    use = mode != "running"
    if mode == "input_stats":
        rm = rv = None
    rm_k, rv_k, rm_64, rv_64, rm_lp, rv_lp = copy(rm), copy(rv), as64(rm), as64(rv), copy(rm), copy(rv)
    got = fastnorm.instance_norm_forward(x, w, b, rm_k, rv_k, use_input_stats=use, **kw)
    ref = R.instance_norm_forward(as64(x), as64(w), as64(b), rm_64, rv_64, use_input_stats=use, **kw)
    lowp = R.instance_norm_forward(x, w, b, rm_lp, rv_lp, use_input_stats=use, **kw)
    return (*got, rm_k, rv_k), (*ref, rm_64, rv_64), (*lowp, rm_lp, rv_lp)


NAMES = ["y", "mean", "rstd", "running_mean", "running_var"]


@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 2, 2, 3)])
@pytest.mark.parametrize("use_input_stats", [True, False])
@pytest.mark.parametrize("affine", AFFINE)
def test_reference_backward_matches_finite_differences(rng, shape, use_input_stats, affine):
    x, w, b, rm, rv = make(rng, shape, np.float64, affine)

    def fwd(x, w, b):
        return R.instance_norm_forward(x, w, b, rm, rv, use_input_stats=use_input_stats, eps=1e-3)[0]

    def bwd(dy, x, w, b):
        _, mean, rstd = R.instance_norm_forward(x, w, b, copy(rm), copy(rv), use_input_stats=use_input_stats, eps=1e-3)
        return R.instance_norm_backward(dy, x, mean, rstd, w, b, use_input_stats=use_input_stats)

    fd_check(fwd, bwd, [x, w, b], rng)


@pytest.mark.parametrize("dtype", FLOATS)
def test_running_stats_after_several_steps(rng, threads, dtype):
    rm, rv = np.zeros(4, dtype), np.ones(4, dtype)
    rm64, rv64 = as64(rm), as64(rv)
    for step in range(5):
        x = (rng.normal(size=(3, 4, 9)) * (1 + step) + step).astype(dtype)
        fastnorm.instance_norm_forward(x, running_mean=rm, running_var=rv, momentum=0.2)
        R.instance_norm_forward(as64(x), running_mean=rm64, running_var=rv64, momentum=0.2)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(rm, rm64, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(rv, rv64, rtol=rtol)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(2, 3, 5), (5, 7, 11), (2, 3, 3, 2, 5)])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_streaming_stores_match_reference(rng, threads, dtype, shape, use_input_stats):
    x, w, b, rm, rv = make(rng, shape, dtype)
    dy = rng.normal(size=shape).astype(dtype)
    with streaming_stores():
        got, ref, lowp = forward_all(x, w, b, rm, rv, "input_stats_running" if use_input_stats else "running")
        g = fastnorm.instance_norm_backward(dy, x, got[1], got[2], w, b, use_input_stats=use_input_stats)
    check_all(got, ref, lowp, NAMES)
    gref = R.instance_norm_backward(*map(as64, (dy, x, got[1], got[2], w, b)), use_input_stats=use_input_stats)
    glow = R.instance_norm_backward(dy, x, got[1], got[2], w, b, use_input_stats=use_input_stats)
    check_all(g, gref, glow, ["dx", "dweight", "dbias"])


@pytest.mark.parametrize("dtype", FLOATS)
def test_nan_propagates_like_reference(rng, threads, dtype):
    x, w, b, rm, rv = make(rng, (3, 4, 6), dtype)
    x[1, 2, 3] = np.nan
    for mode in MODES:
        got, ref, lowp = forward_all(x, w, b, rm, rv, mode)
        assert np.isnan(got[0]).any() and np.isfinite(got[0]).any()
        check_all(got, ref, lowp, NAMES)


def test_large_offset_float32_statistics(rng, threads):
    x, w, b, rm, rv = make(rng, (3, 4, 3000), np.float32, offset=1e4)
    got, ref, lowp = forward_all(x, w, b, rm, rv, "input_stats_running")
    check_all(got, ref, lowp, NAMES)
    np.testing.assert_allclose(got[2], ref[2], rtol=2e-6)
    np.testing.assert_allclose(got[4], ref[4], rtol=2e-6)


def test_empty_batch(rng):
    x = np.zeros((0, 3, 4), np.float32)
    y, mean, rstd = fastnorm.instance_norm_forward(x)
    assert y.shape == x.shape and mean.shape == (0, 3)
    g = fastnorm.instance_norm_backward(x, x, mean, rstd, np.ones(3, np.float32), np.ones(3, np.float32))
    np.testing.assert_array_equal(g.dweight, 0)
    np.testing.assert_array_equal(g.dbias, 0)


def test_bad_input_raises_and_writes_nothing(rng):
    x, w, b, rm, rv = make(rng, (4, 3, 5), np.float32)
    y, mean, rstd = np.full_like(x, 7), np.full((4, 3), 7, np.float32), np.full((4, 3), 7, np.float32)
    watched = [rm, rv, y, mean, rstd]

    def fwd(**kw):
        args = dict(x=x, weight=w, bias=b, running_mean=rm, running_var=rv, out=(y, mean, rstd))
        args.update(kw)
        return lambda: fastnorm.instance_norm_forward(**args)

    cases = [
        (ValueError, fwd(weight=np.ones(4, np.float32))),
        (ValueError, fwd(running_mean=np.zeros(4, np.float32))),
        (TypeError, fwd(running_var=np.ones(3, np.float64))),
        (ValueError, fwd(running_var=readonly(rv))),
        (ValueError, fwd(running_var=strided(np.ones(3, np.float32)))),
        (ValueError, fwd(running_mean=None)),
        (ValueError, fwd(running_var=rm)),
        (TypeError, fwd(momentum=None)),
        (TypeError, fwd(use_input_stats="False")),
        (ValueError, fwd(x=x[:, :, :1])),  # one spatial value with use_input_stats
        (ValueError, fwd(x=np.zeros(5, np.float32))),
        (TypeError, fwd(x=x.astype(np.float16))),
        (TypeError, fwd(use_input_stats=False, running_mean=None, running_var=None)),
        (ValueError, fwd(out=(y, mean))),
        (ValueError, fwd(out=(y, mean, np.empty((3, 4), np.float32)))),
        (TypeError, fwd(bias=FakeCudaArray((3,)))),
    ]
    for exc, call in cases:
        assert_raises_unchanged(exc, call, watched)
    dx = np.full_like(x, 7)
    for exc, kw in [
        (ValueError, dict(mean=np.zeros(3, np.float32))),
        (ValueError, dict(rstd=np.ones((4, 4), np.float32))),
        (TypeError, dict(dy=x.astype(np.float64))),
    ]:
        args = dict(
            dy=x,
            x=x,
            mean=np.zeros((4, 3), np.float32),
            rstd=np.ones((4, 3), np.float32),
            out=(dx, None, None),
        )
        args.update(kw)
        assert_raises_unchanged(exc, lambda args=args: fastnorm.instance_norm_backward(**args), [dx])


@pytest.mark.parametrize("use_input_stats", [True, False])
@pytest.mark.parametrize("dtype", FLOATS)
def test_matches_torch(rng, threads, use_input_stats, dtype):
    torch = torch_or_skip()
    x, w, b, rm, rv = make(rng, (3, 5, 4, 6), dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    rmt, rvt = torch.tensor(rm), torch.tensor(rv)
    yt = torch.nn.functional.instance_norm(
        xt, rmt, rvt, wt, bt, use_input_stats=use_input_stats, momentum=0.3, eps=1e-4
    )
    yt.backward(torch.tensor(dy))
    y, mean, rstd = fastnorm.instance_norm_forward(
        x, w, b, rm, rv, use_input_stats=use_input_stats, momentum=0.3, eps=1e-4
    )
    dx, dw, db = fastnorm.instance_norm_backward(dy, x, mean, rstd, w, b, use_input_stats=use_input_stats)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(y, yt.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol)
    np.testing.assert_allclose(dw, wt.grad.numpy(), **tol)
    np.testing.assert_allclose(db, bt.grad.numpy(), **tol)
    np.testing.assert_allclose(rm, rmt.numpy(), **tol)
    np.testing.assert_allclose(rv, rvt.numpy(), **tol)


def test_running_stats_match_torch_after_several_steps(rng, threads):
    torch = torch_or_skip()
    norm = torch.nn.InstanceNorm1d(4, momentum=0.15, track_running_stats=True).double()
    rm, rv = np.zeros(4), np.ones(4)
    for step in range(4):
        x = rng.normal(size=(3, 4, 7)) * (step + 1) - step
        norm(torch.tensor(x))
        fastnorm.instance_norm_forward(x, running_mean=rm, running_var=rv, momentum=0.15)
    np.testing.assert_allclose(rm, norm.running_mean.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rv, norm.running_var.numpy(), rtol=1e-12)
