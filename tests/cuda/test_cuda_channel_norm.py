"""BatchNorm / InstanceNorm / GroupNorm CUDA kernels, called with the arguments the public layer passes the
CPU kernels (an (N, C, L) view, scratch shaped as it allocates them), vs NumPy formulas of torch's
semantics: channels first and last, training and evaluation, running statistics, float16/32/64."""

from __future__ import annotations

import numpy as np
import pytest

from ._half_util import channel_data
from .conftest import host

EPS, MOM = 1e-5, 0.1


def tol(dtype):
    return {
        np.float16: dict(rtol=3e-3, atol=3e-3),
        np.float32: dict(rtol=2e-5, atol=2e-5),
        np.float64: dict(rtol=1e-10, atol=1e-10),
    }[dtype]


def check(got, want, dtype, name=""):
    np.testing.assert_allclose(np.asarray(host(got), np.float64), want, err_msg=name, **tol(dtype))


@pytest.fixture
def K():
    from fastnorm._kernels.cuda import channel_norm

    return channel_norm


def stat(dtype):
    return np.float32 if dtype == np.float16 else dtype


def data(rng, shape, dtype):
    return channel_data(rng, shape, shape[1], dtype)


# ------------------------------------------------------------------------------------------ BatchNorm
def bn_ref(x, dy, w, b, rm, rv, training):
    """x (N, C, L) in float64: y, mean, rstd, new rm, new rv, dx, dw, db."""
    x, dy, w, b, rm, rv = (a.astype(np.float64) for a in (x, dy, w, b, rm, rv))
    cnt = x.shape[0] * x.shape[2]
    if training:
        mean = x.mean(axis=(0, 2))
        var = ((x - mean[None, :, None]) ** 2).mean(axis=(0, 2))
        rm2 = MOM * mean + (1 - MOM) * rm
        rv2 = MOM * var * cnt / (cnt - 1) + (1 - MOM) * rv
    else:
        mean, var, rm2, rv2 = rm, rv, rm, rv
    rstd = 1 / np.sqrt(var + EPS)
    xh = (x - mean[None, :, None]) * rstd[None, :, None]
    y = xh * w[None, :, None] + b[None, :, None]
    g = dy * w[None, :, None]
    if training:
        dx = rstd[None, :, None] * (
            g - g.mean(axis=(0, 2), keepdims=True) - xh * (g * xh).mean(axis=(0, 2), keepdims=True)
        )
    else:
        dx = rstd[None, :, None] * g
    return y, mean, rstd, rm2, rv2, dx, (dy * xh).sum(axis=(0, 2)), dy.sum(axis=(0, 2))


@pytest.mark.parametrize(
    ("shape", "dtype", "training"),
    [
        ((3, 4, 5), np.float32, True),
        ((3, 4, 5), np.float64, True),
        ((3, 4, 5), np.float16, True),
        ((7, 5, 1), np.float32, True),
        ((7, 5, 1), np.float64, True),
        ((3, 4, 5), np.float32, False),
        ((7, 5, 1), np.float32, False),
    ],
    ids=str,
)
def test_batch_norm(rng, on_gpu, cuda, K, shape, dtype, training):
    n, c, length = shape
    x, dy, w, b, rm, rv = data(rng, shape, dtype)
    ry, rmean, rrstd, rrm, rrv, rdx, rdw, rdb = bn_ref(x, dy, w, b, rm, rv, training)
    sd = stat(dtype)
    dx_, ddy, dw_, db_, drm, drv = on_gpu(x, dy, w, b, rm, rv)
    y = cuda.device_array(shape, dtype)
    mean, rstd = cuda.device_array(c, sd), cuda.device_array(c, sd)
    chunks = 3
    work = cuda.device_array((1, 2) if not training else (n * c, 2) if length > 1 else (chunks, 5 * c), np.float64)
    coef = cuda.device_array((4, c), dtype)
    K.batch_norm_forward(dx_, dw_, db_, drm, drv, y, mean, rstd, work, coef, EPS, MOM, training, 1)
    check(y, ry, dtype, "y")
    check(mean, rmean, dtype, "mean")
    check(rstd, rrstd, dtype, "rstd")
    check(drm, rrm, dtype, "running_mean")
    check(drv, rrv, dtype, "running_var")
    dxo, dwo, dbo = cuda.device_array(shape, dtype), cuda.device_array(c, dtype), cuda.device_array(c, dtype)
    work = cuda.device_array((n * c + c, 2) if length > 1 else (chunks + 1, 2 * c), np.float64)
    K.batch_norm_backward(ddy, dx_, mean, rstd, dw_, dxo, dwo, dbo, work, coef, training, 1)
    check(dxo, rdx, dtype, "dx")
    check(dwo, rdw, dtype, "dweight")
    check(dbo, rdb, dtype, "dbias")


def test_batch_norm_without_affine_or_running_stats(rng, on_gpu, cuda, K):
    x, dy, *_ = data(rng, (3, 4, 5), np.float32)
    ry, rmean, rrstd, _, _, rdx, _, _ = bn_ref(x, dy, np.ones(4), np.zeros(4), np.zeros(4), np.ones(4), True)
    dx_, ddy = on_gpu(x, dy)
    none = cuda.device_array(0, np.float32)
    y, mean, rstd = (cuda.device_array(shape, np.float32) for shape in (x.shape, 4, 4))
    coef = cuda.device_array((4, 4), np.float32)
    work = cuda.device_array((12, 2), np.float64)
    K.batch_norm_forward(dx_, none, none, none, none, y, mean, rstd, work, coef, EPS, MOM, True, 1)
    check(y, ry, np.float32)
    dxo = cuda.device_array(x.shape, np.float32)
    work = cuda.device_array((16, 2), np.float64)
    K.batch_norm_backward(ddy, dx_, mean, rstd, none, dxo, none, none, work, coef, True, 1)
    check(dxo, rdx, np.float32)


# ------------------------------------------------------------------------------------------ Group/Instance
def gn_ref(x, dy, w, b, groups):
    x, dy, w, b = (a.astype(np.float64) for a in (x, dy, w, b))
    n, c, length = x.shape
    xr = x.reshape(n, groups, -1)
    mean = xr.mean(axis=2)
    var = ((xr - mean[..., None]) ** 2).mean(axis=2)
    rstd = 1 / np.sqrt(var + EPS)
    xh = ((xr - mean[..., None]) * rstd[..., None]).reshape(x.shape)
    y = xh * w[None, :, None] + b[None, :, None]
    g = (dy * w[None, :, None]).reshape(n, groups, -1)
    xhr = xh.reshape(n, groups, -1)
    dx = rstd[..., None] * (g - g.mean(axis=2, keepdims=True) - xhr * (g * xhr).mean(axis=2, keepdims=True))
    return y, mean, rstd, dx.reshape(x.shape), (dy * xh).sum(axis=(0, 2)), dy.sum(axis=(0, 2)), var


@pytest.mark.parametrize(
    ("shape", "groups", "dtype"),
    [((2, 6, 4), 3, np.float32), ((2, 6, 4), 3, np.float16), ((3, 4, 9), 1, np.float64), ((2, 64, 2), 2, np.float32)],
    ids=str,
)
def test_group_norm(rng, on_gpu, cuda, K, shape, groups, dtype):
    n, c, length = shape
    x, dy, w, b, _, _ = data(rng, shape, dtype)
    ry, rmean, rrstd, rdx, rdw, rdb, _ = gn_ref(x, dy, w, b, groups)
    sd = stat(dtype)
    dx_, ddy, dw_, db_ = on_gpu(x, dy, w, b)
    y, mean, rstd = (
        cuda.device_array(shape, dtype),
        cuda.device_array((n, groups), sd),
        cuda.device_array((n, groups), sd),
    )
    K.group_norm_forward(dx_, dw_, db_, y, mean, rstd, EPS, 1)
    check(y, ry, dtype, "y")
    check(mean, rmean, dtype, "mean")
    check(rstd, rrstd, dtype, "rstd")
    dxo, dwo, dbo = cuda.device_array(shape, dtype), cuda.device_array(c, dtype), cuda.device_array(c, dtype)
    K.group_norm_backward(ddy, dx_, mean, rstd, dw_, dxo, dwo, dbo, cuda.device_array((n * c, 2), np.float64), 1)
    check(dxo, rdx, dtype, "dx")
    check(dwo, rdw, dtype, "dweight")
    check(dbo, rdb, dtype, "dbias")


@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm(rng, on_gpu, cuda, K, use_input_stats):
    shape = (3, 4, 6)
    n, c, length = shape
    x, dy, w, b, rm, rv = data(rng, shape, np.float32)
    if use_input_stats:
        ry, rmean, rrstd, rdx, rdw, rdb, var = gn_ref(x, dy, w, b, c)
        rrm = MOM * rmean.mean(axis=0) + (1 - MOM) * rm
        rrv = MOM * (var * length / (length - 1)).mean(axis=0) + (1 - MOM) * rv
    else:
        rmean = np.broadcast_to(rm.astype(np.float64), (n, c))
        rrstd = np.broadcast_to(1 / np.sqrt(rv.astype(np.float64) + EPS), (n, c))
        xh = (x - rmean[..., None]) * rrstd[..., None]
        ry = xh * w[None, :, None] + b[None, :, None]
        rdx = rrstd[..., None] * w[None, :, None] * dy
        rdw, rdb = (dy * xh).sum(axis=(0, 2)), dy.sum(axis=(0, 2))
        rrm, rrv = rm, rv
    dx_, ddy, dw_, db_, drm, drv = on_gpu(x, dy, w, b, rm, rv)
    y, mean, rstd = (
        cuda.device_array(shape, np.float32),
        cuda.device_array((n, c), np.float32),
        cuda.device_array((n, c), np.float32),
    )
    work = cuda.device_array((n * c, 2), np.float64)
    K.instance_norm_forward(dx_, dw_, db_, drm, drv, y, mean, rstd, work, EPS, MOM, use_input_stats, 1)
    check(y, ry, np.float32, "y")
    check(mean, rmean, np.float32, "mean")
    check(rstd, rrstd, np.float32, "rstd")
    check(drm, rrm, np.float32, "running_mean")
    check(drv, rrv, np.float32, "running_var")
    dxo, dwo, dbo = (
        cuda.device_array(shape, np.float32),
        cuda.device_array(c, np.float32),
        cuda.device_array(c, np.float32),
    )
    K.instance_norm_backward(ddy, dx_, mean, rstd, dw_, dxo, dwo, dbo, work, use_input_stats, 1)
    check(dxo, rdx, np.float32, "dx")
    check(dwo, rdw, np.float32, "dweight")
    check(dbo, rdb, np.float32, "dbias")


def test_batch_norm_backward_is_bitwise_reproducible(rng, on_gpu, cuda, K):
    x, dy, w, b, rm, rv = data(rng, (5, 3, 7), np.float32)
    dx_, ddy, dw_ = on_gpu(x, dy, w)
    mean, rstd = on_gpu(x.mean(axis=(0, 2)), 1 / np.sqrt(x.var(axis=(0, 2)) + EPS))
    outs = []
    for _ in range(2):
        o = (cuda.device_array(x.shape, np.float32), cuda.device_array(3, np.float32), cuda.device_array(3, np.float32))
        K.batch_norm_backward(
            ddy,
            dx_,
            mean,
            rstd,
            dw_,
            *o,
            cuda.device_array((18, 2), np.float64),
            cuda.device_array((4, 3), np.float32),
            True,
            1,
        )
        outs.append([host(a) for a in o])
    for a, b2 in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b2)
