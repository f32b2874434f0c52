"""The 128-bit forms of the LayerNorm/RMSNorm row kernels (``_row_vec``): which kernel the launchers pick
(vector for float32 rows of a multiple of 4 and 16-bit rows of a multiple of 8 elements with every array
16-byte aligned, scalar otherwise: a view offset by one element, odd N, N = 1, empty), their results
against the float64 reference (DESIGN.md's criterion, ``assert_close_to_ref``), the backward's dweight/dbias
bitwise equal to the scalar kernel's at the same chunk count and between repeated calls."""

from __future__ import annotations

import numpy as np
import pytest

from ._half_util import BF16, F16, F32, F64, at_offset, close, data, empty, f32, f64, host, kernels, param
from ._half_util import row_norm_bwd_ref as bwd_ref
from ._half_util import row_norm_ref as fwd_ref

EPS = 1e-5
P = 2  # partial rows given to the backward: the chunk count is min(P, resident teams, M) = 2 on any device


def _run(cuda, rng, dt, shape, rms, offsets=None):
    """Forward, then backward, through the kernel launchers on arrays placed at ``offsets`` (elements past
    an aligned start, per name); returns the host results and the inputs."""
    offsets = offsets or {}
    K = kernels()
    m, n = shape
    x, dy = data(rng, shape, dt, 3.0), data(rng, shape, dt)
    w, b = param(rng, n, F32), param(rng, n, F32, bias=True)
    X, DY = at_offset(cuda, x, offsets.get("x", 0)), at_offset(cuda, dy, offsets.get("dy", 0))
    W, B = at_offset(cuda, w, offsets.get("w", 0)), cuda.to_device(b)
    y = at_offset(cuda, np.zeros(shape, dt), offsets.get("y", 0))
    mean, rstd = empty(cuda, (m,), F32), empty(cuda, (m,), F32)
    if rms:
        K.rms_norm_forward(X, W, y, rstd, EPS, 1)
    else:
        K.layer_norm_forward(X, W, B, y, mean, rstd, EPS, 1)
    dx = at_offset(cuda, np.zeros(shape, dt), offsets.get("dx", 0))
    dw, db = empty(cuda, (n,), F32), empty(cuda, (n,), F32)
    none2 = empty(cuda, (0, 0), F32)
    parts = [empty(cuda, (P, n), F64) for _ in range(2)]
    if rms:
        K.rms_norm_backward(DY, X, rstd, W, dx, dw, parts[0], none2, P)
    else:
        K.layer_norm_backward(DY, X, mean, rstd, W, dx, dw, db, parts[0], none2, parts[1], none2, P)
    out = {"y": host(y), "mean": None if rms else host(mean), "rstd": host(rstd), "dx": host(dx), "dw": host(dw)}
    out["db"] = None if rms else host(db)
    return out, (x, dy, w, None if rms else b)


def _check(out, inputs, dt, rms):
    x, dy, w, b = inputs
    ref, oth = fwd_ref(*f64(x, w, b), rms), fwd_ref(*f32(x, w, b), rms)
    close(out["y"], oth[0].astype(dt), ref[0], "y")
    close(out["rstd"], oth[2], ref[2], "rstd")
    if not rms:
        close(out["mean"], oth[1], ref[1], "mean")
    stats = (out["mean"], out["rstd"])
    ref, oth = bwd_ref(*f64(dy, x, *stats, w, b), rms), bwd_ref(*f32(dy, x, *stats, w, b), rms)
    close(out["dx"], oth[0].astype(dt), ref[0], "dx")
    close(out["dw"], oth[1], ref[1], "dweight")
    if not rms:
        close(out["db"], oth[2], ref[2], "dbias")


# (5, 128) float32: warp teams, 4 rows per block, one group of 4 per thread; (3, 1000): 128-thread teams,
# 250 groups (the last lanes hold one group, not two); (5, 256) 16-bit: one group of 8 per thread; (3, 1000)
# 16-bit: 125 groups of 8. Misaligned views (one element past a 16-byte boundary), rows not a multiple of a
# vector (odd, prime, even but not a multiple of 8 for 16-bit), N = 1: the scalar kernels.
CASES = [
    (F32, (5, 128), {}, True),
    (F32, (3, 1000), {}, True),
    (F32, (5, 128), {"x": 1}, False),
    (F32, (5, 128), {"dy": 1}, False),
    (F32, (5, 128), {"dx": 1}, False),
    (F32, (5, 128), {"w": 1}, False),
    (F32, (3, 131), {}, False),
    (F32, (4, 1), {}, False),
    (BF16, (5, 256), {}, True),
    (BF16, (3, 1000), {}, True),
    (BF16, (5, 256), {"x": 1}, False),
    (BF16, (5, 256), {"dx": 1}, False),
    (BF16, (3, 260), {}, False),
    (F16, (5, 256), {}, True),
    (F16, (3, 1000), {}, True),
    (F16, (5, 256), {"dy": 1}, False),
    (F16, (3, 257), {}, False),
]


def _id(c):
    dt, shape, off, vec = c
    where = ",".join(f"{k}+{v}" for k, v in off.items()) or "aligned"
    return f"{np.dtype(dt).name}-{shape[0]}x{shape[1]}-{where}-{'vec' if vec else 'scalar'}"


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize(("dt", "shape", "offsets", "vec"), CASES, ids=[_id(c) for c in CASES])
def test_vector_kernels_and_their_scalar_fallback(rng, cuda, picked, rms, dt, shape, offsets, vec):
    out, inputs = _run(cuda, rng, dt, shape, rms, offsets)
    # (the forward reads neither dy nor dx: a misplaced one leaves it the vector kernel)
    fwd_vec = vec or (bool(offsets) and set(offsets) <= {"dy", "dx"})
    assert picked["fwd"] == [fwd_vec]
    assert picked["bwd"] == [vec]
    _check(out, inputs, dt, rms)


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize(
    ("dt", "shape"),
    [(F32, (5, 128)), (F32, (3, 1000)), (BF16, (3, 1000)), (F16, (5, 256))],
    ids=["float32-5x128", "float32-3x1000", "bfloat16-3x1000", "float16-5x256"],
)
def test_vector_backward_weight_grads_are_the_scalar_kernels_bits(rng, cuda, picked, monkeypatch, rms, dt, shape):
    """dweight/dbias add the same products per column in the same row order as the scalar kernel (the
    chunk count is fixed by P): the same bits, and the same again on a repeated call."""
    from fastnorm._kernels.cuda import layer_norm as L

    seed = int(rng.integers(1 << 30))
    vec1, _ = _run(cuda, np.random.default_rng(seed), dt, shape, rms)
    vec2, _ = _run(cuda, np.random.default_rng(seed), dt, shape, rms)
    monkeypatch.setattr(L, "BWD_VEC", False)
    scal, _ = _run(cuda, np.random.default_rng(seed), dt, shape, rms)
    assert picked["bwd"] == [True, True, False]
    for name in ("dw", "db", "dx"):
        if vec1[name] is None:
            continue
        np.testing.assert_array_equal(vec1[name].view(np.uint8), vec2[name].view(np.uint8), err_msg=name)
        if name != "dx":  # (dx's row sums add each thread's elements in another order)
            np.testing.assert_array_equal(vec1[name].view(np.uint8), scal[name].view(np.uint8), err_msg=name)


@pytest.mark.parametrize("dt", [F32, BF16], ids=lambda d: np.dtype(d).name)
def test_vector_backward_of_no_rows_writes_zero_weight_grads(cuda, picked, dt):
    K = kernels()
    n = 256
    X, DY, dx = (empty(cuda, (0, n), dt) for _ in range(3))
    mean, rstd = empty(cuda, (0,), F32), empty(cuda, (0,), F32)
    W = cuda.to_device(np.ones(n, F32))
    dw, db = cuda.to_device(np.full(n, np.nan, F32)), cuda.to_device(np.full(n, np.nan, F32))
    parts = [cuda.to_device(np.full((P, n), np.nan)) for _ in range(2)]
    none2 = empty(cuda, (0, 0), F32)
    K.layer_norm_backward(DY, X, mean, rstd, W, dx, dw, db, parts[0], none2, parts[1], none2, P)
    assert picked["bwd"] == [True]
    assert not host(dw).any()
    assert not host(db).any()


@pytest.mark.parametrize("rms", [False, True], ids=["add_ln", "add_rms"])
@pytest.mark.parametrize("dt", [F32, BF16], ids=lambda d: np.dtype(d).name)
def test_fused_add_backward_takes_the_vector_kernel(rng, cuda, picked, rms, dt):
    """The fused add + norm backward shares the row kernels: its vector form adds dh before the rounding."""
    K = kernels()
    m, n = 3, 256
    h, dy, dh = data(rng, (m, n), dt, 2.0), data(rng, (m, n), dt), data(rng, (m, n), dt)
    w = param(rng, n, F32)
    H, DY, DH, W = (cuda.to_device(a) for a in (h, dy, dh, w))
    mean, rstd = empty(cuda, (m,), F32), empty(cuda, (m,), F32)
    y = empty(cuda, (m, n), dt)
    if rms:
        K.rms_norm_forward(H, W, y, rstd, EPS, 1)
    else:
        K.layer_norm_forward(H, W, empty(cuda, (0,), F32), y, mean, rstd, EPS, 1)
    dx, dw, db = empty(cuda, (m, n), dt), empty(cuda, (n,), F32), empty(cuda, (n,), F32)
    parts = [empty(cuda, (P, n), F64) for _ in range(2)]
    none2 = empty(cuda, (0, 0), F32)
    if rms:
        K.add_rms_norm_backward(DY, DH, H, rstd, W, dx, dw, parts[0], none2, P)
    else:
        K.add_layer_norm_backward(DY, DH, H, mean, rstd, W, dx, dw, db, parts[0], none2, parts[1], none2, P)
    assert picked["bwd"] == [True]
    stats = (None if rms else host(mean), host(rstd))
    ref = bwd_ref(*f64(dy, h, *stats, w, None), rms)
    oth = bwd_ref(*f32(dy, h, *stats, w, None), rms)
    close(host(dx), (oth[0] + f32(dh)[0]).astype(dt), ref[0] + f64(dh)[0], "dx")
    close(host(dw), oth[1], ref[1], "dweight")


# One warp per row for forward rows up to FWD_WARP_ROWS (512) elements: N = 1, odd, prime, and just below,
# at and above the threshold (513: the 8-elements-per-thread teams again, 128 threads).
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize(("n", "team"), [(1, 32), (37, 32), (257, 32), (509, 32), (512, 32), (513, 128)])
def test_warp_per_row_forward(rng, cuda, picked, rms, n, team):
    from fastnorm._kernels.cuda import layer_norm as L

    t, r, vpt = L.fwd_config(n)
    assert (t, r * t) == (team, L.BLOCK_THREADS)
    assert 0 < vpt <= L.MAX_VPT
    for dt in (F32, BF16):
        out, inputs = _run(cuda, rng, dt, (3, n), rms)
        _check(out, inputs, dt, rms)
    assert picked["fwd"] == [n == 512] * 2  # (the vector form where N allows)


# The persistent forward (vector rows of at most PERSIST_VPT elements per thread): a grid of PERSIST_BLOCKS
# blocks strides over the rows (several rows per team, a last partial stride), weight/bias in registers,
# the next row prefetched. Same per-row arithmetic and reduction order as the one-row-per-team kernel.
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize(
    ("dt", "shape"),
    [(F32, (19, 128)), (F32, (5, 1000)), (BF16, (5, 1000)), (F16, (11, 256))],
    ids=["float32-19x128", "float32-5x1000", "bfloat16-5x1000", "float16-11x256"],
)
def test_persistent_forward_is_the_one_row_kernels_bits(rng, cuda, picked, monkeypatch, rms, affine, dt, shape):
    from fastnorm._kernels.cuda import layer_norm as L

    K = kernels()
    m, n = shape
    x = data(rng, shape, dt, 3.0)
    w, b = (param(rng, n, F32), param(rng, n, F32, bias=True)) if affine else (None, None)
    b = None if rms else b
    X = cuda.to_device(x)
    W, B = (empty(cuda, (0,), F32) if a is None else cuda.to_device(a) for a in (w, b))
    monkeypatch.setattr(L, "PERSIST_BLOCKS", 2)
    outs = []
    for persist in (True, False):
        monkeypatch.setattr(L, "FWD_PERSIST", persist)
        y, mean, rstd = empty(cuda, shape, dt), empty(cuda, (m,), F32), empty(cuda, (m,), F32)
        if rms:
            K.rms_norm_forward(X, W, y, rstd, EPS, 1)
        else:
            K.layer_norm_forward(X, W, B, y, mean, rstd, EPS, 1)
        outs.append([host(y), None if rms else host(mean), host(rstd)])
    assert picked["persist"] == [True, False]
    for got, one_row in zip(outs[0], outs[1], strict=True):
        if got is not None:
            np.testing.assert_array_equal(got.view(np.uint8), one_row.view(np.uint8))
    ref, oth = fwd_ref(*f64(x, w, b), rms), fwd_ref(*f32(x, w, b), rms)
    close(outs[0][0], oth[0].astype(dt), ref[0], "y")
    close(outs[0][2], oth[2], ref[2], "rstd")
    if not rms:
        close(outs[0][1], oth[1], ref[1], "mean")
