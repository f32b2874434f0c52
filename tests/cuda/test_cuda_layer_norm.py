"""LayerNorm and RMSNorm on the CUDA backend: kernels vs the references on device arrays, every launch form
(warp / multi-warp teams, several rows per block, register and streaming rows, row chunks of the
backward), float16/32/64, options, out=, layouts, bad input; on a real GPU also CuPy and torch tensors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

from .._util import assert_matches_reference, f64
from .conftest import SIM, host, hw_only

DTYPES = [np.float32, np.float64, np.float16]
EPS = 1e-5


def make(rng, shape, dtype, affine=True, ndim=1, offset=0.0):
    x = (rng.standard_normal(shape) + offset).astype(dtype)
    norm = shape[len(shape) - ndim :]
    w = (1 + 0.5 * rng.standard_normal(norm)).astype(dtype) if affine else None
    b = rng.standard_normal(norm).astype(dtype) if affine else None
    dy = rng.standard_normal(shape).astype(dtype)
    return x, w, b, dy


def lowp(fn, dtype, *arrays, **kw):
    """The reference in the kernel's precision: float32 math for float32 and float16 inputs (the float16
    kernels accumulate in float32), outputs rounded to the input dtype, statistics kept in float32."""
    if dtype == np.float64:
        return None
    cast = [None if a is None else np.asarray(a, np.float32) for a in arrays]
    out = fn(*cast, **kw)
    return out


def check_forward(op, got, x, w, b, ndim=1):
    """Compare (y, mean, rstd) or (y, rstd) from the device with the references."""
    dt = x.dtype
    if op == "ln":
        r64 = R.layer_norm_forward(*f64(x, w, b), eps=EPS, normalized_ndim=ndim)
        rlo = lowp(R.layer_norm_forward, dt, x, w, b, eps=EPS, normalized_ndim=ndim)
        names = ("y", "mean", "rstd")
    else:
        r64 = R.rms_norm_forward(*f64(x, w), eps=EPS, normalized_ndim=ndim)
        rlo = lowp(R.rms_norm_forward, dt, x, w, eps=EPS, normalized_ndim=ndim)
        names = ("y", "rstd")
    stat = np.float32 if dt == np.float16 else dt
    for i, (g, name) in enumerate(zip(got, names, strict=True)):
        g = host(g)
        assert g.dtype == (dt if name == "y" else stat), name
        lo = None if rlo is None else (rlo[i].astype(dt) if name == "y" else rlo[i])
        assert_matches_reference(g, r64[i], lo, name=name)


def check_backward(op, got, dy, x, stats, w, b, ndim=1):
    """Compare (dx, dweight[, dbias]) with the references evaluated at the kernel's own statistics."""
    dt = x.dtype
    stats = [host(s) for s in stats]
    if op == "ln":
        r64 = R.layer_norm_backward(*f64(dy, x, *stats, w, b), normalized_ndim=ndim)
        rlo = lowp(R.layer_norm_backward, dt, dy, x, *stats, w, b, normalized_ndim=ndim)
        names = ("dx", "dweight", "dbias")
    else:
        r64 = R.rms_norm_backward(*f64(dy, x, *stats, w), normalized_ndim=ndim)
        rlo = lowp(R.rms_norm_backward, dt, dy, x, *stats, w, normalized_ndim=ndim)
        names = ("dx", "dweight")
    for i, (g, name) in enumerate(zip(got, names, strict=True)):
        g = host(g)
        if g is not None:
            assert g.dtype == dt, name
        lo = None if rlo is None or rlo[i] is None else rlo[i].astype(dt)
        assert_matches_reference(g, r64[i], lo, name=name)


def run(op, on_gpu, x, w, b, dy, ndim=1):
    """Forward then backward on the device; checks both against the references."""
    dx_, dw_, db_, ddy = on_gpu(x, w, b, dy)
    if op == "ln":
        fwd = fastnorm.layer_norm_forward(dx_, dw_, db_, eps=EPS, normalized_ndim=ndim)
        check_forward(op, fwd, x, w, b, ndim)
        bwd = fastnorm.layer_norm_backward(ddy, dx_, fwd.mean, fwd.rstd, dw_, db_, normalized_ndim=ndim)
        check_backward(op, bwd, dy, x, (fwd.mean, fwd.rstd), w, b, ndim)
    else:
        fwd = fastnorm.rms_norm_forward(dx_, dw_, eps=EPS, normalized_ndim=ndim)
        check_forward(op, fwd, x, w, b, ndim)
        bwd = fastnorm.rms_norm_backward(ddy, dx_, fwd.rstd, dw_, normalized_ndim=ndim)
        check_backward(op, bwd, dy, x, (fwd.rstd,), w, b, ndim)
    return fwd, bwd


# ------------------------------------------------------------------------------------------ vs reference
# (5, 37): 32-thread teams, 4 rows per block (one partly empty), ragged last elements;
# (3, 300): 64-thread teams (two warps, the cross-warp reduction).
@pytest.mark.parametrize("op", ["ln", "rms"])
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((5, 37), d) for d in (np.float32, np.float64, np.float16)] + [((3, 300), d) for d in (np.float32, np.float16)],
    ids=lambda v: np.dtype(v).name if isinstance(v, type) else str(v),
)
def test_matches_reference(rng, on_gpu, op, shape, dtype):
    x, w, b, dy = make(rng, shape, dtype)
    run(op, on_gpu, x, w, None if op == "rms" else b, dy)


def at_offset(cuda, a, k: int):
    """A device copy of ``a`` that starts ``k`` elements past a 256-byte boundary (C-contiguous)."""
    if k == 0:
        return cuda.to_device(a)
    base = cuda.to_device(np.concatenate([np.zeros(k, a.dtype), a.ravel()]))
    return base[k:].reshape(a.shape)


# The float32 forward's 128-bit form runs for register rows of a multiple of 4 elements with every array
# 16-byte aligned; any other case takes the scalar kernel. (5, 128): warp teams, 4 rows per block, one
# group of 4 per thread; (3, 1000): 128-thread teams, 250 groups (the last lanes hold one group, not two).
@pytest.mark.parametrize("op", ["ln", "rms"])
@pytest.mark.parametrize(
    ("shape", "offsets", "vec"),
    [
        ((5, 128), {}, True),
        ((3, 1000), {}, True),
        ((5, 128), {"x": 1}, False),
        ((5, 128), {"y": 2}, False),
        ((5, 128), {"w": 3}, False),
        ((3, 130), {}, False),
        ((4, 36), {}, False),  # 2 elements per thread: no group of 4
    ],
    ids=["n128", "n1000", "x+1", "y+2", "w+3", "n130", "n36"],
)
def test_vector_forward_and_its_scalar_fallback(rng, cuda, monkeypatch, op, shape, offsets, vec):
    from fastnorm._kernels.cuda import layer_norm as L

    picked = []
    get = L._get

    def spy(*args, **kw):
        if args[0] == "fwd":
            picked.append(bool(kw.get("vec", args[9] if len(args) > 9 else False)))
        return get(*args, **kw)

    monkeypatch.setattr(L, "_get", spy)
    monkeypatch.setattr(L, "_plans", {})  # (on a GPU: the launch plans pick the kernel once per key)
    x, w, b, _ = make(rng, shape, np.float32)
    b = b if op == "ln" else None
    dx, dw = at_offset(cuda, x, offsets.get("x", 0)), at_offset(cuda, w, offsets.get("w", 0))
    y = at_offset(cuda, np.zeros_like(x), offsets.get("y", 0))
    if op == "ln":
        got = fastnorm.layer_norm_forward(dx, dw, cuda.to_device(b), eps=EPS, out=(y, None, None))
    else:
        got = fastnorm.rms_norm_forward(dx, dw, eps=EPS, out=(y, None))
    assert picked == [vec]
    assert got[0] is y
    check_forward(op, got, x, w, b)


def _simulated_shuffles(monkeypatch):
    """The simulator has no warp shuffles: ``shfl_xor_sync`` for one-block launches of whole warps, from
    the simulator's own block barriers (the shuffle trees of the GPU kernels then run on the simulator)."""
    import threading

    from numba.cuda.simulator import kernelapi

    def shfl_xor_sync(self, mask, v, off):
        th = threading.current_thread()
        slots = self.__dict__.setdefault("_shfl_slots", {})
        tid = th.threadIdx.x
        slots[tid] = v
        th.syncthreads()
        got = slots[tid ^ off]
        th.syncthreads()
        return got

    monkeypatch.setattr(kernelapi.FakeCUDAModule, "shfl_xor_sync", shfl_xor_sync, raising=False)


def _moments_kernel(tm, cols: int):
    """Kernel (x, cnt, out): thread i summarizes x[i, :cnt[i]] (two passes, mean as hi + lo) and merges
    with ``tm`` (one team, row slot 0); out[i] = (mean, M2) as thread i got them."""
    f32 = np.float32

    def kern(x, cnt, out):
        buf = _nbcuda.shared.array((4, 1, cols), f32)  # noqa: F821 (set by the test)
        i = _nbcuda.threadIdx.x  # noqa: F821
        c = cnt[i]
        s = f32(0)
        for k in range(c):
            s += x[i, k]
        hi = s / f32(c) if c > 0 else f32(0)
        r = f32(0)
        q = f32(0)
        for k in range(c):
            d = x[i, k] - hi
            r += d
            q += d * d
        lo = r / f32(c) if c > 0 else f32(0)
        m, m2 = tm(f32(c), hi, lo, q - r * lo, buf, np.uint64(0), np.uint64(i))
        out[i, 0] = m
        out[i, 1] = m2

    return kern


@pytest.mark.parametrize("team", [32, 128])
def test_team_moments_one_reduction_is_as_accurate_as_two_passes(rng, cuda, monkeypatch, team):
    """The LayerNorm forward's one-barrier row moments: per-thread (count, hi + lo, M2) merged by the warp
    shuffle tree (``USE_SHUFFLE``, the GPU's form; simulated shuffles under the simulator), then across
    warps. Mean 1e4 against a spread of 1 (a naive E[x^2] - E[x]^2 or plain Chan merge of rounded means
    loses digits), threads with 0-3 elements; every thread gets the same bits; error within the float32
    two-pass reference's (tests/_util criterion)."""
    from fastnorm._kernels.cuda import _common as cc

    from .._util import assert_close_to_ref

    if SIM:
        _simulated_shuffles(monkeypatch)
    monkeypatch.setattr(cc, "USE_SHUFFLE", True)
    tm = cc.make_team_moments(team)
    monkeypatch.setitem(globals(), "_nbcuda", cuda)  # (the simulator swaps module globals that are numba.cuda)
    kern = cuda.jit(_moments_kernel(tm, cc.team_buf_cols(team)))
    f32 = np.float32
    cnt = rng.integers(0, 4, team).astype(np.int32)
    x = (rng.standard_normal((team, 3)) + 1e4).astype(f32)
    out = cuda.to_device(np.zeros((team, 2), f32))
    kern[1, team](cuda.to_device(x), cuda.to_device(cnt), out)
    got = out.copy_to_host()
    assert (got == got[0]).all(), "threads disagree"
    vals = np.concatenate([x[i, : cnt[i]] for i in range(team)])
    v64 = vals.astype(np.float64)
    m64 = v64.mean()
    m32 = vals.mean(dtype=f32)
    q32 = ((vals - m32) ** 2).sum(dtype=f32)
    assert_close_to_ref(got[0, 0:1], np.array([m32]), np.array([m64]), name="mean")
    assert_close_to_ref(got[0, 1:2], np.array([q32]), np.array([((v64 - m64) ** 2).sum()]), name="M2")


@pytest.mark.parametrize("wb", [(True, False), (False, True), (False, False)], ids=["w", "b", "none"])
def test_affine_variants(rng, on_gpu, wb):
    """The forward launcher's compile-time weight/bias variants (each kernel has only the terms it was
    given): every combination, forward and backward, against the references."""
    x, w, b, dy = make(rng, (5, 37), np.float32)
    w, b = (w if wb[0] else None), (b if wb[1] else None)
    run("ln", on_gpu, x, w, b, dy)
    if not wb[1]:
        run("rms", on_gpu, x, w, None, dy)


@pytest.mark.parametrize("op", ["ln", "rms"])
def test_streaming_rows(rng, on_gpu, op, monkeypatch):
    # Rows longer than MAX_TEAM * MAX_VPT take the streaming kernels (made small here).
    from fastnorm._kernels.cuda import layer_norm as L

    monkeypatch.setattr(L, "MAX_TEAM", 32)
    monkeypatch.setattr(L, "MAX_VPT", 2)
    assert L.row_config(100, L.FWD_VPT)[2] == 0
    assert L.bwd_config(100, np.float32)[2] == 0
    x, w, b, dy = make(rng, (3, 100), np.float32)
    run(op, on_gpu, x, w, None if op == "rms" else b, dy)


def test_register_partials_when_shared_memory_is_too_small(rng, on_gpu, monkeypatch):
    from fastnorm._kernels.cuda import layer_norm as L
    from fastnorm._kernels.cuda import row_kernels as RK

    monkeypatch.setattr(RK, "SMEM_PARTIAL_BYTES", 0)
    assert L.bwd_config(37, np.float32)[2] > 0
    x, w, b, dy = make(rng, (5, 37), np.float32)
    run("ln", on_gpu, x, w, b, dy)


@pytest.mark.parametrize("op", ["ln", "rms"])
def test_partials_in_shared_memory_registers_or_both_are_bitwise_equal(rng, on_gpu, op, monkeypatch):
    # (5, 37): 32-thread teams, 2 elements per thread: one partial row is 32 * 2 * 4 = 256 bytes. With room
    # for two rows both live in shared memory; for one, dweight's does (LayerNorm's dbias in registers);
    # for none, both in registers. Each thread sums its columns in the same order: the same bits.
    from fastnorm._kernels.cuda import _common
    from fastnorm._kernels.cuda import layer_norm as L
    from fastnorm._kernels.cuda import row_kernels as RK

    x, w, b, dy = make(rng, (5, 37), np.float32)
    if op == "rms":
        b = None
    got = []
    for room in (2 * 256, 256, 0):
        monkeypatch.setattr(RK, "SMEM_PARTIAL_BYTES", room)
        want = min(room // 256, 1 if op == "rms" else 2)
        assert RK.smem_parts(np.float32, 32, 2, op == "rms") == want
        assert L.bwd_config(37, np.float32, op == "rms") == (32, 4, 2)
        monkeypatch.setattr(_common, "_cache", {})  # compile the kernels for this room
        _, bwd = run(op, on_gpu, x, w, b, dy)
        got.append([host(a) for a in bwd])
    for other in got[1:]:
        for a, c in zip(got[0], other, strict=True):
            assert a.tobytes() == c.tobytes()


def test_normalized_ndim_2_and_leading_dims(rng, on_gpu):
    x, w, b, dy = make(rng, (2, 3, 4, 5), np.float32, ndim=2)
    fwd, _ = run("ln", on_gpu, x, w, b, dy, ndim=2)
    assert fwd.mean.shape == (2, 3)


def test_one_dimensional_input(rng, on_gpu):
    x, w, b, dy = make(rng, (33,), np.float32)
    fwd, _ = run("ln", on_gpu, x, w, b, dy)
    assert fwd.mean.shape == ()
    assert fwd.y.shape == (33,)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_zero_rows(on_gpu, dtype):
    x = np.zeros((0, 8), dtype)
    dx_, dw_, db_ = on_gpu(x, np.ones(8, dtype), np.zeros(8, dtype))
    fwd = fastnorm.layer_norm_forward(dx_, dw_, db_)
    assert fwd.y.shape == (0, 8)
    assert fwd.mean.shape == (0,)
    bwd = fastnorm.layer_norm_backward(dx_, dx_, fwd.mean, fwd.rstd, dw_, db_)
    np.testing.assert_array_equal(host(bwd.dweight), 0)
    np.testing.assert_array_equal(host(bwd.dbias), 0)


def test_large_offset_statistics_stay_accurate(rng, on_gpu):
    # mean 1e4 against a spread of 1: E[x^2] - E[x]^2 in float32 would lose every digit.
    x, w, b, dy = make(rng, (4, 256), np.float32, offset=1e4)
    fwd, _ = run("ln", on_gpu, x, w, b, dy)
    np.testing.assert_allclose(host(fwd.rstd), R.layer_norm_forward(*f64(x, w, b))[2], rtol=1e-5)


def test_nan_propagates_to_its_row_only(rng, on_gpu):
    x, w, b, dy = make(rng, (4, 37), np.float32)
    x[1, 5] = np.nan
    fwd, bwd = run("ln", on_gpu, x, w, b, dy)
    y, dx = host(fwd.y), host(bwd.dx)
    assert np.isnan(y[1]).all()
    assert np.isfinite(np.delete(y, 1, axis=0)).all()
    assert np.isnan(dx[1]).all()
    assert np.isfinite(np.delete(dx, 1, axis=0)).all()
    assert np.isnan(host(bwd.dweight)).all()  # every column sums over the NaN row


def test_few_partial_rows_match_many(rng, on_gpu, monkeypatch):
    # The column sums take as many row chunks as the scratch allows: 1 chunk and 7 chunks agree.
    from fastnorm._dispatch import cuda_backend

    x, w, b, dy = make(rng, (7, 37), np.float64)
    dx_, dw_, db_, ddy = on_gpu(x, w, b, dy)
    fwd = fastnorm.layer_norm_forward(dx_, dw_, db_)
    many = fastnorm.layer_norm_backward(ddy, dx_, fwd.mean, fwd.rstd, dw_, db_)
    monkeypatch.setattr(cuda_backend(), "max_partials", 1)
    one = fastnorm.layer_norm_backward(ddy, dx_, fwd.mean, fwd.rstd, dw_, db_)
    for u, v in zip(many, one, strict=True):
        np.testing.assert_allclose(host(u), host(v), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------ buffers, layouts


def test_bad_out_buffers(rng, on_gpu, cuda):
    x, w, b, _ = make(rng, (5, 37), np.float32)
    dx_, dw_, db_ = on_gpu(x, w, b)
    with pytest.raises(TypeError, match=r"x, weight, bias on the GPU.*out\[0\] on the CPU"):
        fastnorm.layer_norm_forward(dx_, dw_, db_, out=(np.empty((5, 37), np.float32), None, None))
    with pytest.raises(ValueError, match="overlaps input"):
        fastnorm.layer_norm_forward(dx_, dw_, db_, out=(dx_, None, None))
    with pytest.raises(ValueError, match="must have dtype float32"):
        fastnorm.layer_norm_forward(dx_, dw_, db_, out=(cuda.device_array((5, 37), np.float64), None, None))
    big = cuda.device_array((5, 74), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        fastnorm.layer_norm_forward(dx_, dw_, db_, out=(big[:, ::2], None, None))


def test_mixing_host_and_device_arrays_names_the_argument(rng, on_gpu):
    x, w, b, dy = make(rng, (5, 37), np.float32)
    dx_ = on_gpu(x)
    with pytest.raises(TypeError, match=r"x on the GPU.*weight on the CPU"):
        fastnorm.layer_norm_forward(dx_, w)
    with pytest.raises(TypeError, match=r"dy, x on the GPU.*rstd on the CPU"):
        fastnorm.rms_norm_backward(on_gpu(dy), dx_, np.ones(5, np.float32))


def test_bad_input_raises_before_anything_is_written(rng, on_gpu, cuda):
    x, w, b, _ = make(rng, (5, 37), np.float32)
    dx_, db_ = on_gpu(x, b)
    y = cuda.to_device(np.full((5, 37), 7.0, np.float32))
    with pytest.raises(ValueError, match="weight must have shape"):
        fastnorm.layer_norm_forward(dx_, on_gpu(w[:36]), db_, out=(y, None, None))
    with pytest.raises(TypeError, match="weight has dtype float64 but must match"):
        fastnorm.layer_norm_forward(dx_, on_gpu(w.astype(np.float64)), db_, out=(y, None, None))
    with pytest.raises(TypeError, match="x has dtype int32"):
        fastnorm.layer_norm_forward(on_gpu(x.astype(np.int32)), out=(y, None, None))
    with pytest.raises(TypeError, match="eps must be a real number"):  # any float eps is allowed, as torch
        fastnorm.rms_norm_forward(dx_, eps="1e-6")
    np.testing.assert_array_equal(host(y), 7.0)


def test_stat_dtype_of_float16_is_float32(rng, on_gpu):
    x, w, b, _ = make(rng, (3, 37), np.float16)
    dx_, dw_, db_ = on_gpu(x, w, b)
    fwd = fastnorm.layer_norm_forward(dx_, dw_, db_)
    assert fwd.y.dtype == np.float16
    assert fwd.mean.dtype == fwd.rstd.dtype == np.float32
    with pytest.raises(TypeError, match="mean has dtype float16 but must match"):
        fastnorm.layer_norm_backward(dx_, dx_, on_gpu(host(fwd.mean).astype(np.float16)), fwd.rstd, dw_, db_)


# ------------------------------------------------------------------------------------------ package
def test_import_fastnorm_does_not_import_numba():
    code = "import sys, fastnorm; print('numba' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


def test_reduction_form_matches_the_machine():
    from fastnorm._kernels.cuda import _common

    if SIM:
        assert not _common.USE_SHUFFLE  # the simulator has no warp shuffles
    else:
        assert _common.USE_SHUFFLE == (os.environ.get("FASTNORM_CUDA_SHUFFLE", "1") != "0")


# ------------------------------------------------------------------------------------------ real GPU only
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((64, 4096), np.float32),
        ((33, 4096), np.float16),
        ((16, 8192), np.float32),
        ((4, 65536), np.float32),
        ((1000, 128), np.float32),
        ((257, 1024), np.float64),
    ],
    ids=str,
)
@pytest.mark.parametrize("op", ["ln", "rms"])
def test_hw_launch_shapes(rng, on_gpu, op, shape, dtype):
    hw_only()
    x, w, b, dy = make(rng, shape, dtype)
    run(op, on_gpu, x, w, None if op == "rms" else b, dy)


def test_hw_torch_tensors_in_and_out_without_copies(rng):
    hw_only()
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    F = torch.nn.functional
    x = torch.randn(64, 1024, device="cuda", requires_grad=True)
    w = torch.randn(1024, device="cuda")
    b = torch.randn(1024, device="cuda")
    y, mean, rstd = fastnorm.layer_norm_forward(x, w, b, eps=EPS)
    ty = torch.as_tensor(y, device="cuda")  # zero-copy through __cuda_array_interface__
    assert ty.data_ptr() == y.__cuda_array_interface__["data"][0]
    torch.testing.assert_close(ty, F.layer_norm(x.detach(), (1024,), w, b, EPS), rtol=1e-5, atol=1e-5)
    # out= torch buffers, written in place, returned as given; on a non-default torch stream
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())  # x, w were made on the default stream
    with torch.cuda.stream(s):
        out = (torch.empty(64, 1024, device="cuda"), torch.empty(64, device="cuda"))
        res = fastnorm.rms_norm_forward(x, w, eps=EPS, out=out)
        ref = F.rms_norm(x.detach(), (1024,), w, EPS)
    s.synchronize()
    assert res.y is out[0]
    assert res.rstd is out[1]
    torch.testing.assert_close(out[0], ref, rtol=1e-5, atol=1e-5)
    # backward against autograd
    dy = torch.randn(64, 1024, device="cuda")
    dx, dw, db = fastnorm.layer_norm_backward(dy, x, mean, rstd, w, b)
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    F.layer_norm(xr, (1024,), wr, br, EPS).backward(dy)
    for got, want in ((dx, xr.grad), (dw, wr.grad), (db, br.grad)):
        torch.testing.assert_close(torch.as_tensor(got, device="cuda"), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="bfloat16"):
        fastnorm.layer_norm_forward(x.to(torch.bfloat16))


def test_hw_cupy_arrays_in_and_out_without_copies(rng):
    hw_only()
    cp = pytest.importorskip("cupy")
    x = cp.asarray(rng.standard_normal((32, 512)).astype(np.float32))
    w = cp.asarray(rng.standard_normal(512).astype(np.float32))
    y, rstd = fastnorm.rms_norm_forward(x, w)
    cy = cp.asarray(y)  # zero-copy through __cuda_array_interface__
    assert cy.data.ptr == y.__cuda_array_interface__["data"][0]
    ref = R.rms_norm_forward(*f64(cp.asnumpy(x), cp.asnumpy(w)))[0]
    np.testing.assert_allclose(cp.asnumpy(cy), ref, rtol=1e-5, atol=1e-5)
    out = (cp.empty((32, 512), cp.float32), cp.empty(32, cp.float32))
    res = fastnorm.rms_norm_forward(x, w, out=out)
    assert res.y is out[0]
    np.testing.assert_allclose(cp.asnumpy(out[0]), ref, rtol=1e-5, atol=1e-5)
    # a non-contiguous CuPy input goes through the device-side gather copy
    xt = cp.asarray(rng.standard_normal((512, 32)).astype(np.float32)).T
    y2, _ = fastnorm.rms_norm_forward(xt, w)
    ref2 = R.rms_norm_forward(*f64(cp.asnumpy(xt), cp.asnumpy(w)))[0]
    np.testing.assert_allclose(y2.copy_to_host(), ref2, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ absent arrays
# Numba's real device arrays slice through numba.cuda.cudadrv.dummyarray, which gives a dimension of stride 0
# a length of 1 whatever the slice: a (0, 0) array (C strides (0, itemsize)) sliced [:0] has shape (1, 0).
# rms_norm_backward without weight once passed such a "dw_part[:0]" as the dbias partials, and the backward
# kernel (testing shape[0] > 0) stored float64 partial rows through its null pointer on the H200.
def _numba_dummyarray():
    """numba-cuda's real device-array slicing module (the simulator replaces it with a stub): loaded from
    its file, it is pure Python."""
    import importlib.util

    import numba_cuda

    path = os.path.join(os.path.dirname(numba_cuda.__file__), "numba", "cuda", "cudadrv", "dummyarray.py")
    if not os.path.exists(path):
        pytest.skip("numba-cuda's dummyarray module not found")
    spec = importlib.util.spec_from_file_location("_fastnorm_numba_dummyarray", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_numba_slicing_of_an_empty_stride0_dim_is_not_empty():
    # Documents the Numba behaviour the launchers must avoid (pure Python, no device needed).
    dummyarray = _numba_dummyarray()

    a = dummyarray.Array.from_desc(0, (0, 0), (0, 8), 8)
    assert a[:0].shape in ((1, 0), (0, 0))  # (1, 0) with numba-cuda 0.30.4; fine if Numba fixes it


@pytest.mark.skipif(not SIM, reason="simulator only: patches the simulator's device-array slicing")
@pytest.mark.parametrize("op", ["ln", "rms"])
@pytest.mark.parametrize("affine", [False, True])
def test_launchers_slice_device_arrays_as_numba_does(rng, on_gpu, op, affine, monkeypatch):
    # Simulator arrays slice like NumPy; make every slice a launcher takes of a device array also check
    # that Numba's real slicing (dummyarray) gives the same shape, so a launcher that makes an "empty"
    # argument by slicing an empty array fails here instead of writing through a null pointer on a GPU.
    from fastnorm._kernels.cuda import _common

    dummyarray = _numba_dummyarray()

    plain = _common.SimArray.__getitem__

    def numba_like(self, idx):
        ret = plain(self, idx)
        a = self._ary
        if a.ndim and isinstance(ret, _common.SimArray) and a.flags.c_contiguous:
            strides = [a.itemsize] * a.ndim  # Numba's C strides: (0, 8) for (0, 0), not NumPy's (8, 8)
            for i in range(a.ndim - 2, -1, -1):
                strides[i] = strides[i + 1] * a.shape[i + 1]
            real = dummyarray.Array.from_desc(0, a.shape, tuple(strides), a.itemsize)[idx].shape
            assert tuple(real) == ret.shape, f"Numba's device array gives {real} for {a.shape}[{idx}]"
        return ret

    monkeypatch.setattr(_common.SimArray, "__getitem__", numba_like)
    x, w, b, dy = make(rng, (4, 37), np.float32, affine=affine)
    run(op, on_gpu, x, w, None if op == "rms" else b, dy)


@pytest.mark.parametrize("stream", [False, True])
def test_backward_kernel_skips_size0_partials_of_any_shape(rng, on_gpu, cuda, stream, monkeypatch):
    # The kernels test size, not shape[0]: (1, 0) partial arrays (what Numba's slicing can make) are absent.
    from fastnorm._kernels.cuda import layer_norm as L

    if stream:
        monkeypatch.setattr(L, "MAX_TEAM", 32)
        monkeypatch.setattr(L, "MAX_VPT", 1)
    x, _, _, dy = make(rng, (4, 37), np.float32)
    assert (L.bwd_config(37, np.float32)[2] == 0) == stream
    fwd = fastnorm.rms_norm_forward(on_gpu(x), eps=EPS)
    dx = cuda.device_array(x.shape, np.float32)
    dx2 = cuda.device_array(x.shape, np.float32)
    no_w = cuda.device_array((0,), np.float32)
    odd = cuda.device_array((1, 0), np.float64)
    L.rms_norm_backward(on_gpu(dy), on_gpu(x), fwd.rstd, no_w, dx, no_w, odd, None, 1)
    zero = np.zeros(4, np.float32)
    L.layer_norm_backward(on_gpu(dy), on_gpu(x), on_gpu(zero), fwd.rstd, no_w, dx2, no_w, no_w, odd, None, odd, None, 1)
    rstd = host(fwd.rstd)
    assert_matches_reference(host(dx), R.rms_norm_backward(*f64(dy, x, rstd))[0], None, name="dx")
    assert_matches_reference(host(dx2), R.layer_norm_backward(*f64(dy, x, zero, rstd))[0], None, name="dx")
