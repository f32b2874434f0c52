"""Fused residual add + LayerNorm / RMSNorm CUDA kernels (issue 13 item 3), called as the public layer calls
them (``be.kernels.add_*``, COMMON.md's signatures): h = x + residual rounded to x's dtype (bit-exact), y the
norm of that h, dx = the norm's backward at h + dh (the gradient of x and of residual), against the float64
reference with DESIGN.md's criterion, in float32, float64, float16 and bfloat16; register and streaming
rows, absent weight/bias/dh/dweight, gradients written in float32 or in a 16-bit parameter's dtype."""

from __future__ import annotations

import numpy as np
import pytest

from ._half_util import BF16, F16, F32, F64, HALF, at_offset, backend, close, data, empty, f64, host, kernels, param
from ._half_util import row_norm_bwd_ref as bwd_ref
from ._half_util import row_norm_ref as fwd_ref
from ._half_util import to_dev as _to_dev

EPS = 1e-5
DTYPES = [F32, F64, F16, BF16]


@pytest.fixture
def dev(cuda):
    return lambda *a: _to_dev(cuda, *a)


def _sum(x, res, dt):
    """h = x + residual as the kernels define it: computed in the accumulation type, rounded to x's dtype."""
    acc = np.float64 if dt == F64 else np.float32
    return (x.astype(acc) + res.astype(acc)).astype(dt)


def _check(got, other, ref, name, dt):
    if dt == F64:
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12, err_msg=name)
    else:
        close(got, other, ref, name)


def _run(cuda, rng, dt, rms, m, n, *, affine=True, with_dh=True, offset=0.0, grad_dtype=None, at=None):
    """Forward then backward through the kernel launchers, each checked against the float64 reference;
    ``at``: {array name: elements past an aligned start} (x, res, w, b, y, h, dy, dh, dx). Returns the
    host results {y, h, mean, rstd, dx, dw, db}."""
    K, be = kernels(), backend()
    at = at or {}

    def put(name, a):
        return None if a is None else at_offset(cuda, a, at.get(name, 0))

    pdt = F32 if dt in HALF else dt
    gdt = pdt if grad_dtype is None else grad_dtype
    x, res, dy = data(rng, (m, n), dt, offset), data(rng, (m, n), dt), data(rng, (m, n), dt)
    dh = data(rng, (m, n), dt) if with_dh else None
    w = param(rng, n, pdt) if affine else None
    b = param(rng, n, pdt, True) if affine and not rms else None
    X, RES, DY, DH, W, B = (put(k, a) for k, a in zip(("x", "res", "dy", "dh", "w", "b"), (x, res, dy, dh, w, b)))
    absent = empty(cuda, (0,), dt)
    y, h = put("y", np.zeros((m, n), dt)), put("h", np.zeros((m, n), dt))
    sd = F32 if dt in HALF else dt
    mean, rstd = empty(cuda, (m,), sd), empty(cuda, (m,), sd)
    if rms:
        K.add_rms_norm_forward(X, RES, absent if W is None else W, y, h, rstd, EPS, 1)
    else:
        K.add_layer_norm_forward(
            X, RES, absent if W is None else W, absent if B is None else B, y, h, mean, rstd, EPS, 1
        )

    # h: exactly the rounded sum; y, mean, rstd: the norm of that h
    hh = _sum(x, res, dt)
    bits = f"u{np.dtype(dt).itemsize}"
    assert host(h).dtype == dt
    np.testing.assert_array_equal(host(h).view(bits), hh.view(bits))
    lo = F64 if dt == F64 else F32
    ref = fwd_ref(*f64(hh, w, b), rms)
    oth = fwd_ref(*(None if a is None else a.astype(lo) for a in (hh, w, b)), rms)
    _check(host(y), oth[0].astype(dt), ref[0], "y", dt)
    _check(host(rstd), oth[2], ref[2], "rstd", dt)
    if not rms:
        _check(host(mean), oth[1], ref[1], "mean", dt)

    nt = be.threads(m * n)
    dx = put("dx", np.zeros((m, n), dt))
    dw = empty(cuda, (n,), gdt) if affine else empty(cuda, (0,), pdt)
    db = empty(cuda, (n,), gdt) if affine and not rms else empty(cuda, (0,), pdt)
    pw = empty(cuda, (nt, n) if affine else (0, 0), F64)
    pb = empty(cuda, (nt, n) if affine and not rms else (0, 0), F64)
    acc = empty(cuda, (0, 0), dt)
    dh_arg = absent if DH is None else DH
    if rms:
        K.add_rms_norm_backward(DY, dh_arg, h, rstd, absent if W is None else W, dx, dw, pw, acc, nt)
    else:
        K.add_layer_norm_backward(
            DY, dh_arg, h, mean, rstd, absent if W is None else W, dx, dw, db, pw, acc, pb, acc, nt
        )
    st = (None if rms else host(mean), host(rstd))
    ref = list(bwd_ref(*f64(dy, hh, *st, w, b), rms))
    oth = list(bwd_ref(*(None if a is None else np.asarray(a).astype(lo) for a in (dy, hh, *st, w, b)), rms))
    if dh is not None:
        ref[0] = ref[0] + dh.astype(F64)
        oth[0] = oth[0] + dh.astype(lo)
    assert host(dx).dtype == dt
    _check(host(dx), oth[0].astype(dt), ref[0], "dx", dt)
    if affine:
        assert host(dw).dtype == gdt
        _check(host(dw), oth[1].astype(gdt), ref[1], "dweight", dt)
        if not rms:
            _check(host(db), oth[2].astype(gdt), ref[2], "dbias", dt)
    out = {"y": y, "h": h, "mean": None if rms else mean, "rstd": rstd, "dx": dx, "dw": dw, "db": db}
    return {k: host(v) for k, v in out.items()}


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: d.name)
def test_add_norm_matches_reference(cuda, rng, dt, rms):
    _run(cuda, rng, dt, rms, 5, 37)


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("dt", [BF16, F16], ids=lambda d: d.name)
def test_add_norm_large_offset(cuda, rng, dt, rms):
    _run(cuda, rng, dt, rms, 3, 40, offset=1e3)


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_add_norm_no_affine_no_dh(cuda, rng, rms):
    _run(cuda, rng, BF16, rms, 4, 33, affine=False, with_dh=False)


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_add_norm_16bit_gradients(cuda, rng, rms):
    # dweight/dbias in the (16-bit) parameter's dtype: the float32 sums rounded once by the reduction
    _run(cuda, rng, BF16, rms, 4, 40, grad_dtype=BF16)


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("dt", [F32, BF16], ids=lambda d: d.name)
def test_add_norm_streaming_rows(cuda, rng, dt, rms, monkeypatch):
    from fastnorm._kernels.cuda import layer_norm as L

    monkeypatch.setattr(L, "MAX_TEAM", 32)
    monkeypatch.setattr(L, "MAX_VPT", 2)
    assert L.row_config(100, L.FWD_VPT)[2] == 0
    assert L.bwd_config(100, dt)[2] == 0
    _run(cuda, rng, dt, rms, 2, 100, offset=2.0)


def test_add_norm_16bit_params_converted(cuda, dev, rng):
    """A bfloat16 weight/bias (not the public layer's float32) is converted by the launcher: the same result
    as the float32 copy of it."""
    K = kernels()
    m, n = 3, 24
    x, res = data(rng, (m, n), BF16), data(rng, (m, n), BF16)
    w16, b16 = param(rng, n, BF16), param(rng, n, BF16, True)
    outs = []
    for w, b in ((w16, b16), (w16.astype(F32), b16.astype(F32))):
        X, RES, W, B = dev(x, res, w, b)
        y, h = empty(cuda, (m, n), BF16), empty(cuda, (m, n), BF16)
        mean, rstd = empty(cuda, (m,), F32), empty(cuda, (m,), F32)
        K.add_layer_norm_forward(X, RES, W, B, y, h, mean, rstd, EPS, 1)
        outs.append(host(y).view(np.uint16))
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_add_norm_h_nan_inf(cuda, dev):
    """Non-finite sums propagate: an inf in x makes its row's h inf and y NaN; other rows are untouched."""
    K = kernels()
    x = np.ones((2, 32), BF16)
    x[0, 3] = np.inf
    res = np.full((2, 32), 0.5, BF16)
    X, RES = dev(x, res)
    absent = empty(cuda, (0,), BF16)
    y, h = empty(cuda, (2, 32), BF16), empty(cuda, (2, 32), BF16)
    mean, rstd = empty(cuda, (2,), F32), empty(cuda, (2,), F32)
    K.add_layer_norm_forward(X, RES, absent, absent, y, h, mean, rstd, EPS, 1)
    hh = host(h).astype(np.float32)
    assert np.isinf(hh[0, 3])
    assert (hh[1] == 1.5).all()
    assert np.isnan(host(y).astype(np.float32)[0]).all()
    np.testing.assert_array_equal(host(y).astype(np.float32)[1], 0.0)


# ------------------------------------------------------------------------------------------ public ops
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("pdt", [F32, BF16], ids=["params_f32", "params_bf16"])
def test_public_add_norm_on_device(cuda, dev, rng, rms, pdt):
    """``fastnorm.add_*_norm_forward/backward`` with device arrays: bfloat16 data, float32 or bfloat16
    parameters (gradients back in the parameter's dtype), dh given; vs the float64 reference."""
    A = pytest.importorskip("fastnorm.add_norm")
    m, n = 3, 40
    x, res, dy, dh = (data(rng, (m, n), BF16) for _ in range(4))
    w, b = param(rng, n, pdt), param(rng, n, pdt, True)
    X, RES, DY, DH, W, B = dev(x, res, dy, dh, w, b)
    if rms:
        fwd = A.add_rms_norm_forward(X, RES, W, eps=EPS)
        stats = (None, host(fwd.rstd))
    else:
        fwd = A.add_layer_norm_forward(X, RES, W, B, eps=EPS)
        stats = (host(fwd.mean), host(fwd.rstd))
    hh = _sum(x, res, BF16)
    np.testing.assert_array_equal(host(fwd.h).view(np.uint16), hh.view(np.uint16))
    bb = None if rms else b
    ref = fwd_ref(*f64(hh, w, bb), rms)
    oth = fwd_ref(*(None if a is None else a.astype(F32) for a in (hh, w, bb)), rms)
    close(host(fwd.y), oth[0].astype(BF16), ref[0], "y")
    if rms:
        bwd = A.add_rms_norm_backward(DY, DH, fwd.h, fwd.rstd, W)
    else:
        bwd = A.add_layer_norm_backward(DY, DH, fwd.h, fwd.mean, fwd.rstd, W, B)
    ref = list(bwd_ref(*f64(dy, hh, *stats, w, bb), rms))
    oth = list(bwd_ref(*(None if a is None else np.asarray(a).astype(F32) for a in (dy, hh, *stats, w, bb)), rms))
    close(host(bwd.dx), (oth[0] + dh.astype(F32)).astype(BF16), ref[0] + dh.astype(F64), "dx")
    assert host(bwd.dweight).dtype == pdt
    close(host(bwd.dweight), oth[1].astype(pdt), ref[1], "dweight")
    if not rms:
        close(host(bwd.dbias), oth[2].astype(pdt), ref[2], "dbias")


# ------------------------------------------------------------------------------------------ 128-bit forms
# The fused kernels' 128-bit forms (``_row_vec``): forward where x, residual, weight, bias, y and h all start
# on a 16-byte boundary, backward where dy, dh, h, weight and dx do, rows of a multiple of 4 float32 / 8
# 16-bit elements with such a count per thread. (5, 128) float32: warp teams, one group of 4 per thread,
# persistent; (3, 512): warp teams of 16 elements per thread (the one-row vector forward); (3, 1000):
# 128-thread teams, 250 / 125 groups (the last lanes one group, not two), persistent. One array a single
# element off a boundary, odd / prime / not-a-multiple-of-8 rows, N = 1: the scalar kernels.
VEC_CASES = [
    (F32, (5, 128), {}, (True, True)),
    (F32, (3, 512), {}, (True, True)),
    (F32, (3, 1000), {}, (True, True)),
    (F32, (5, 128), {"res": 1}, (False, True)),
    (F32, (5, 128), {"h": 1}, (False, False)),
    (F32, (5, 128), {"y": 1}, (False, True)),
    (F32, (5, 128), {"b": 1}, (False, True)),
    (F32, (5, 128), {"dh": 1}, (True, False)),
    (F32, (5, 128), {"dx": 1}, (True, False)),
    (F32, (3, 131), {}, (False, False)),
    (F32, (4, 1), {}, (False, False)),
    (BF16, (5, 256), {}, (True, True)),
    (BF16, (2, 512), {}, (True, True)),
    (BF16, (3, 1000), {}, (True, True)),
    (BF16, (5, 256), {"res": 1}, (False, True)),
    (BF16, (5, 256), {"x": 1}, (False, True)),
    (BF16, (3, 260), {}, (False, False)),
    (F16, (5, 256), {}, (True, True)),
    (F16, (3, 1000), {"h": 1}, (False, False)),
    (F16, (3, 257), {}, (False, False)),
]


def _vec_id(c):
    dt, shape, at, vec = c
    where = ",".join(f"{k}+{v}" for k, v in at.items()) or "aligned"
    return f"{np.dtype(dt).name}-{shape[0]}x{shape[1]}-{where}-" + "/".join("vec" if v else "scalar" for v in vec)


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize(("dt", "shape", "at", "vec"), VEC_CASES, ids=[_vec_id(c) for c in VEC_CASES])
def test_add_norm_vector_kernels_and_their_scalar_fallback(rng, cuda, picked, rms, dt, shape, at, vec):
    """Which form the launchers pick (forward, backward), and its results against the float64 reference."""
    if rms and "b" in at:
        pytest.skip("RMSNorm has no bias")
    fwd_vec, bwd_vec = vec
    if "x" in at:  # (x is not an input of the backward: h is)
        bwd_vec = True
    _run(cuda, rng, dt, rms, *shape, offset=2.0, at=at)
    assert picked["fwd"] == [fwd_vec]
    assert picked["bwd"] == [bwd_vec]


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize(
    ("dt", "shape"), [(F32, (7, 128)), (BF16, (5, 1000)), (F16, (9, 256))], ids=["float32", "bfloat16", "float16"]
)
def test_add_norm_vector_forward_forms_agree(rng, cuda, picked, monkeypatch, rms, dt, shape):
    """The persistent, the one-row vector and the scalar fused forward: h bitwise equal in all three (the
    same rounded sums); the persistent form's y, mean, rstd bitwise the one-row vector form's (same
    arithmetic and reduction order per row, over PERSIST_BLOCKS = 2 blocks striding the rows)."""
    from fastnorm._kernels.cuda import layer_norm as L

    seed = int(rng.integers(1 << 30))
    monkeypatch.setattr(L, "PERSIST_BLOCKS", 2)
    outs = []
    for vec, persist in ((True, True), (True, False), (False, False)):
        monkeypatch.setattr(L, "FWD_VEC", vec)
        monkeypatch.setattr(L, "FWD_PERSIST", persist)
        outs.append(_run(cuda, np.random.default_rng(seed), dt, rms, *shape, offset=2.0))
    assert picked["fwd"] == [True, True, False]
    assert picked["persist"] == [True, False, False]
    for name in ("y", "h", "mean", "rstd"):
        if outs[0][name] is not None:
            np.testing.assert_array_equal(outs[0][name].view(np.uint8), outs[1][name].view(np.uint8), err_msg=name)
    np.testing.assert_array_equal(outs[0]["h"].view(np.uint8), outs[2]["h"].view(np.uint8))


@pytest.mark.parametrize("dt", [F32, BF16], ids=lambda d: np.dtype(d).name)
def test_add_norm_vector_kernels_on_no_rows(cuda, picked, dt):
    """M = 0: the forward launches nothing; the vector backward writes zero dweight/dbias."""
    K = kernels()
    n, p = 256, 2
    X, RES, Y, H, DY, DH, DX = (empty(cuda, (0, n), dt) for _ in range(7))
    mean, rstd = empty(cuda, (0,), F32), empty(cuda, (0,), F32)
    W, B = cuda.to_device(np.ones(n, F32)), cuda.to_device(np.zeros(n, F32))
    K.add_layer_norm_forward(X, RES, W, B, Y, H, mean, rstd, EPS, 1)
    dw, db = cuda.to_device(np.full(n, np.nan, F32)), cuda.to_device(np.full(n, np.nan, F32))
    parts = [cuda.to_device(np.full((p, n), np.nan)) for _ in range(2)]
    none2 = empty(cuda, (0, 0), F32)
    K.add_layer_norm_backward(DY, DH, H, mean, rstd, W, DX, dw, db, parts[0], none2, parts[1], none2, p)
    assert picked["fwd"] == []
    assert picked["bwd"] == [True]
    assert not host(dw).any()
    assert not host(db).any()
