"""Kernel numerics: constant and large-offset LayerNorm rows, results independent of the thread count,
one-element LayerNorm gradients, and norms of float32 values whose squares overflow float32."""

from __future__ import annotations

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

from ._util import assert_close_to_ref, assert_matches_reference, f64


@pytest.fixture
def threads(monkeypatch):
    """set_num_threads for one test (the default is restored afterwards)."""
    monkeypatch.setattr(fastnorm._dispatch, "_num_threads", None)
    return fastnorm.set_num_threads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 64, 100, 513, 1000, 4097])
@pytest.mark.parametrize("value", [10000.1, -3.3e7, 0.1, 1e-30])
def test_constant_rows_have_zero_variance(dtype, n, value, threads):
    x = np.full((5, n), value, dtype)
    w, b = np.linspace(0.5, 2, n).astype(dtype), np.linspace(-1, 1, n).astype(dtype)
    for nt in (1, 2):
        threads(nt)
        y, mean, rstd = fastnorm.layer_norm_forward(x, w, b)
        np.testing.assert_array_equal(y, np.broadcast_to(b, x.shape))
        np.testing.assert_array_equal(mean, x[:, 0])
        np.testing.assert_array_equal(rstd, np.full(5, 1 / np.sqrt(np.float64(1e-5)), dtype))
        y0 = fastnorm.layer_norm_forward(x).y
        np.testing.assert_array_equal(y0, np.zeros_like(x))


def _torch_f32_layer_norm(x, eps=1e-5):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x)
    y = torch.nn.functional.layer_norm(t, (x.shape[-1],), eps=eps)
    var, mean = torch.var_mean(t, dim=-1, unbiased=False)
    return y.numpy(), mean.numpy(), (1 / torch.sqrt(var + eps)).numpy()


@pytest.mark.parametrize("noise", [1.0, 1e-2])
@pytest.mark.parametrize("n", [64, 1000, 4097])
def test_large_offset_statistics_as_accurate_as_torch(noise, n):
    rng = np.random.default_rng(0)
    x = (1e4 + noise * rng.standard_normal((8, n))).astype(np.float32)
    got = fastnorm.layer_norm_forward(x)
    ref64 = R.layer_norm_forward(*f64(x))
    try:
        other = _torch_f32_layer_norm(x)
    except pytest.skip.Exception:
        other = R.layer_norm_forward(x)
    for name, g, r64, r32 in zip(("y", "mean", "rstd"), got, ref64, other):
        assert_matches_reference(g, r64, r32, name=name)


SHAPES = [(1, 5), (3, 100000), (64, 1000), (100, 4097), (1000, 33), (257, 96), (4096, 8)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_layer_and_rms_norm_do_not_depend_on_the_thread_count(dtype, shape, threads):
    rng = np.random.default_rng(1)
    n = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w, b = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    results = []
    for nt in (1, 2, 3, 4):
        threads(nt)
        f = fastnorm.layer_norm_forward(x, w, b)
        g = fastnorm.layer_norm_backward(dy, x, f.mean, f.rstd, w, b)
        g_nob = fastnorm.layer_norm_backward(dy, x, f.mean, f.rstd)
        r = fastnorm.rms_norm_forward(x, w)
        rg = fastnorm.rms_norm_backward(dy, x, r.rstd, w)
        results.append([np.asarray(a) for a in (*f, *g, *g_nob, *r, *rg) if a is not None])
    for other in results[1:]:
        for i, (a, c) in enumerate(zip(results[0], other)):
            np.testing.assert_array_equal(a, c, err_msg=f"output {i}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_element_layer_norm_gradient_is_exactly_zero(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 1)).astype(dtype) * 100
    dy = rng.standard_normal((50, 1)).astype(dtype)
    w, b = np.array([1.7], dtype), np.array([0.3], dtype)
    f = fastnorm.layer_norm_forward(x, w, b)
    np.testing.assert_array_equal(f.y, np.full_like(x, b[0]))
    for weight in (w, None):
        dx, dw, db = fastnorm.layer_norm_backward(dy, x, f.mean, f.rstd, weight, b)
        np.testing.assert_array_equal(dx, np.zeros_like(x))
        if weight is not None:
            np.testing.assert_array_equal(dw, np.zeros_like(w))
        wide = np.float64 if dtype == np.float32 else np.longdouble
        assert_close_to_ref(db, dy.sum(0), dy.astype(wide).sum(0), name="dbias")
    dy[3, 0] = np.nan
    dx = fastnorm.layer_norm_backward(dy, x, f.mean, f.rstd, w, b).dx
    assert np.isnan(dx[3, 0])
    assert np.count_nonzero(np.isnan(dx)) == 1


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e-25])
def test_cosine_linear_norms_do_not_overflow_float32(scale):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6, 40)) * scale).astype(np.float32)
    w = rng.standard_normal((5, 40)).astype(np.float32)
    y, x_norm, w_norm = fastnorm.cosine_linear_forward(x, w)
    r64 = R.cosine_linear_forward(*f64(x, w))
    assert np.isfinite(x_norm).all()
    assert np.isfinite(y).all()
    np.testing.assert_allclose(x_norm, r64[1], rtol=1e-5)
    np.testing.assert_allclose(y, r64[0], rtol=1e-4, atol=1e-5)


def test_cosine_linear_matches_torch_where_torch_is_finite():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((6, 40)) * 1e20).astype(np.float32)
    w = rng.standard_normal((5, 40)).astype(np.float32)
    t = torch.nn.functional.linear(
        torch.nn.functional.normalize(torch.from_numpy(x)), torch.nn.functional.normalize(torch.from_numpy(w))
    ).numpy()
    y = fastnorm.cosine_linear_forward(x, w).y
    r64 = R.cosine_linear_forward(*f64(x, w))[0]
    assert_matches_reference(y, r64, t, name="cosine y")


@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_rms_norm_of_huge_and_tiny_float32_rows(scale):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((4, 300)) * scale).astype(np.float32)
    y, rstd = fastnorm.rms_norm_forward(x, eps=0.0)
    r64 = R.rms_norm_forward(*f64(x), eps=0.0)
    np.testing.assert_allclose(y, r64[0], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ streaming bound
@pytest.mark.parametrize("streams", [(1, 0, 0), (1, 0, 1), (2, 0, 1), (2, 0, 2), (3, 0, 1), (4, 0, 3), (1, 4, 0)])
@pytest.mark.parametrize("n", [1, 5, 16384 + 7])
@pytest.mark.parametrize("nt", [False, True])
def test_stream_kernel_touches_every_element_of_every_stream(streams, n, nt):
    # the bound's kernel: s = sum of the read and read-write streams, read-write streams get s / 2, writes s
    from fastnorm._kernels.cpu._stream import stream

    from fastnorm.bench._core import _stream_arrays

    r, u, w = streams
    rng = np.random.default_rng(0)
    reads, updates, writes = _stream_arrays(r, n), _stream_arrays(u, n), _stream_arrays(w, n)
    for a in reads + updates:
        a[:] = rng.integers(-8, 8, n)  # small integers: every sum is exact in any order
    s = np.sum(reads + updates, axis=0, dtype=np.float32)
    stream(reads, updates, writes, 2, nt)
    for a in updates:
        np.testing.assert_array_equal(a, 0.5 * s)
    for a in writes:
        np.testing.assert_array_equal(a, s)


def test_stream_kernel_refuses_too_many_or_uneven_streams():
    from fastnorm._kernels.cpu._stream import stream

    a = [np.zeros(8, np.float32) for _ in range(5)]
    with pytest.raises(ValueError, match="at most 4 read"):
        stream(a, [], [], 1)
    with pytest.raises(ValueError, match="same length"):
        stream(a[:1], [], [np.zeros(9, np.float32)], 1)


# Cases whose bound is deliberately not their own streams (their module docstrings say why): a training step
# is bounded by a copy of its activation, Sinkhorn's matrix stays in the cache across iterations.
_BOUND_BY_PROXY = {"training_step", "sinkhorn"}


def test_bench_bounds_move_the_bytes_of_their_ops():
    # the streaming bound of every bench case moves the case's declared bytes (to 1%: parameters, statistics)
    from fastnorm.bench._core import all_cases, stream_nbytes

    checked = 0
    for case in all_cases(quick=False):
        if case.op in _BOUND_BY_PROXY:
            continue
        moved = stream_nbytes(case.streams, case.stream_len)
        assert abs(moved - case.nbytes) <= 0.01 * case.nbytes, (case.name, case.streams, moved, case.nbytes)
        checked += 1
    assert checked > 50
