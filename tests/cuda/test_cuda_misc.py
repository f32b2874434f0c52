"""LocalResponseNorm, WeightNorm and CosineLinear CUDA kernels, called with the arguments the public layer
passes the CPU kernels, vs NumPy formulas of torch's semantics; and the GEMM fallback kernel."""

from __future__ import annotations

import numpy as np
import pytest

from ._half_util import cosine_reference
from .conftest import host


def check(got, want, dtype, name=""):
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(np.asarray(host(got), np.float64), want, err_msg=name, **tol)


def lrn_ref(x, dy, size, alpha, beta, k):
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    n, c, length = x.shape
    sq = np.zeros_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - size // 2), min(c - 1, ch + (size - 1) // 2)
        sq[:, ch] = (x[:, lo : hi + 1] ** 2).sum(axis=1)
    scale = k + alpha / size * sq
    y = x * scale**-beta
    t = dy * y / scale
    acc = np.zeros_like(x)
    for j in range(c):
        lo, hi = max(0, j - (size - 1) // 2), min(c - 1, j + size // 2)
        acc[:, j] = t[:, lo : hi + 1].sum(axis=1)
    dx = dy * scale**-beta - 2 * alpha * beta / size * x * acc
    return y, scale, dx


@pytest.mark.parametrize(("size", "dtype"), [(5, np.float32), (2, np.float64), (9, np.float32)])
def test_local_response_norm(rng, on_gpu, cuda, size, dtype):
    from fastnorm._kernels.cuda import lrn

    x = rng.standard_normal((2, 6, 5)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    alpha, beta, k = 0.3, 0.75, 2.0
    ry, rs, rdx = lrn_ref(x, dy, size, alpha, beta, k)
    dx_, ddy = on_gpu(x, dy)
    y, scale = cuda.device_array(x.shape, dtype), cuda.device_array(x.shape, dtype)
    scratch = cuda.device_array((1, lrn.lrn_scratch_len(0, 0)), np.float64)
    lrn.local_response_norm_forward(dx_, y, scale, scratch, size, alpha, beta, k, 1)
    check(y, ry, dtype, "y")
    check(scale, rs, dtype, "scale")
    dxo = cuda.device_array(x.shape, dtype)
    lrn.local_response_norm_backward(ddy, dx_, y, scale, dxo, scratch, size, alpha, beta, 1)
    check(dxo, rdx, dtype, "dx")


@pytest.mark.parametrize(("adb", "dtype"), [((1, 4, 9), np.float32), ((3, 2, 5), np.float64), ((6, 3, 1), np.float32)])
def test_weight_norm(rng, on_gpu, cuda, adb, dtype):
    from fastnorm._kernels.cuda import weight_norm as W

    v = rng.standard_normal(adb).astype(dtype)
    g = rng.standard_normal(adb[1]).astype(dtype)
    dwt = rng.standard_normal(adb).astype(dtype)
    v64, g64, dw64 = (a.astype(np.float64) for a in (v, g, dwt))
    nrm = np.sqrt((v64**2).sum(axis=(0, 2)))
    w_ref = v64 * (g64 / nrm)[None, :, None]
    dot = (dw64 * v64).sum(axis=(0, 2))
    dg_ref = dot / nrm
    dv_ref = (g64 / nrm)[None, :, None] * dw64 - (g64 * dot / nrm**3)[None, :, None] * v64
    dv_, dg_, ddw = on_gpu(v, g, dwt)
    w, norm = cuda.device_array(adb, dtype), cuda.device_array(adb[1], dtype)
    none2, none1 = cuda.device_array((0, 0), np.float64), cuda.device_array(0, dtype)
    W.weight_norm_forward(dv_, dg_, w, norm, none2, none1, 0, 1)
    check(w, w_ref, dtype, "w")
    check(norm, nrm, dtype, "norm")
    dv, dg = cuda.device_array(adb, dtype), cuda.device_array(adb[1], dtype)
    W.weight_norm_backward(ddw, dv_, dg_, norm, dv, dg, none2, cuda.device_array((0, 0), dtype), 0, 1)
    check(dv, dv_ref, dtype, "dv")
    check(dg, dg_ref, dtype, "dg")


def test_cosine_linear(rng, on_gpu, cuda):
    from fastnorm._kernels.cuda import matmul as MM
    from fastnorm._kernels.cuda import weight_norm as W

    eps = 1e-8
    x = rng.standard_normal((5, 7)).astype(np.float32)
    x[3] = 0  # a zero row: its norm is clamped at eps, and its correction coefficient is 0
    w = rng.standard_normal((4, 7)).astype(np.float32)
    dy = rng.standard_normal((5, 4)).astype(np.float32)
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    y_ref, xn, _wn, gs, cx, cw, dx_ref, dw_ref = cosine_reference(x64, w64, dy64, eps)
    dx_, dw_, ddy = on_gpu(x, w, dy)
    y = cuda.device_array((5, 4), np.float32)
    MM.matmul(dx_, on_gpu(np.ascontiguousarray(w.T)), y, lambda a: a)
    x_norm, w_norm = cuda.device_array(5, np.float32), cuda.device_array(4, np.float32)
    W.cosine_linear_forward(dx_, dw_, y, x_norm, w_norm, eps, 1)
    check(y, y_ref, np.float32, "y")
    check(x_norm, xn, np.float32, "x_norm")
    gsd, cxd, cwd = (
        cuda.device_array((5, 4), np.float32),
        cuda.device_array(5, np.float32),
        cuda.device_array(4, np.float32),
    )
    W.cosine_linear_backward_pre(ddy, y, x_norm, w_norm, gsd, cxd, cwd, cuda.device_array((2, 4), np.float64), eps, 1)
    check(gsd, gs, np.float32, "gs")
    check(cxd, cx, np.float32, "cx")
    check(cwd, cw, np.float32, "cw")
    dxo, dwo = cuda.to_device((gs @ w64).astype(np.float32)), cuda.to_device((gs.T @ x64).astype(np.float32))
    W.cosine_linear_backward_post(dx_, dw_, cxd, cwd, dxo, dwo, 1)
    check(dxo, dx_ref, np.float32, "dx")
    check(dwo, dw_ref, np.float32, "dw")


def test_gemm_fallback_kernel(rng, on_gpu, cuda):
    from fastnorm._kernels.cuda import _common as C
    from fastnorm._kernels.cuda import matmul as MM

    a = rng.standard_normal((5, 19)).astype(np.float32)
    b = rng.standard_normal((19, 3)).astype(np.float32)
    k = C.Kernel(MM._make_gemm(np.dtype(np.float32)), "void(float32[:, ::1], float32[:, ::1], float32[:, ::1])")
    out = cuda.device_array((5, 3), np.float32)
    k.launch2d((1, 1), (MM.TILE, MM.TILE), 0, on_gpu(a), on_gpu(b), out)
    check(out, a.astype(np.float64) @ b, np.float32)


# ------------------------------------------------------------------------------------------ public ops on GPU
def _close(got, want, dtype=np.float32):
    check(got, np.asarray(want, np.float64), dtype)


def test_kernel_namespace_matches_cpu(cuda):
    """The package's namespace is its modules' marked launchers; every launcher with a CPU kernel of
    the same name takes the same parameters (the public layer calls either backend's with one argument list)."""
    import importlib
    import inspect
    import pkgutil

    import fastnorm._kernels.cpu as C
    import fastnorm._kernels.cuda as K

    declared = set()
    for info in pkgutil.iter_modules(K.__path__):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{K.__name__}.{info.name}")
            declared |= {n for n, v in vars(module).items() if getattr(v, "fastnorm_launcher", False)}
    assert set(K.__all__) == declared
    assert set(K.__all__) - set(C.__all__) == {"sort_rows", "sort_width", "unsort_rows"}
    for name in set(K.__all__) & set(C.__all__):
        cuda_params = list(inspect.signature(getattr(K, name)).parameters)
        assert cuda_params == list(inspect.signature(getattr(C, name)).parameters), name
