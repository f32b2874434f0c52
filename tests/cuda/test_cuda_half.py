"""16-bit storage on the CUDA backend (issue 13): the bfloat16 bit helpers (round to nearest even, NaN kept,
bit-exact against ml_dtypes), the backend's astype/copyto kernels, and bfloat16/float16 LayerNorm, RMSNorm,
BatchNorm, InstanceNorm and GroupNorm against the float64 reference with DESIGN.md's criterion (the other
result: the reference evaluated in float32 from the same 16-bit inputs, rounded to 16 bits), including
large-offset inputs, float32 parameters entering the kernels (the public layer's rule) and 16-bit ones
(converted by the launchers), and gradients written in the parameter's dtype."""

from __future__ import annotations

import numpy as np
import pytest

import fastnorm
from fastnorm import reference as R

from ._half_util import (
    BF16,
    F16,
    F32,
    F64,
    backend,
    close,
    cosine_reference,
    data,
    empty,
    f32,
    f64,
    host,
    kernels,
    param,
)
from ._half_util import row_norm_bwd_ref as ln_bwd_ref
from ._half_util import row_norm_ref as ln_ref
from ._half_util import to_dev as _to_dev
from .conftest import SIM

EPS = 1e-5


@pytest.fixture
def dev(cuda):
    return lambda *a: _to_dev(cuda, *a)


# ------------------------------------------------------------------------------------------ bit helpers
def _special_f32_bits() -> np.ndarray:
    """float32 bit patterns around every bfloat16 value of a strided subset of all 65536 patterns (and all
    subnormal, inf/NaN and largest-finite ones): the value itself, the tie below the next value, the tie
    +- 1 ulp, and NaNs with low payload bits only (which must not round to inf)."""
    hi = np.arange(0, 1 << 16, 13, dtype=np.uint32)
    spec = np.concatenate([np.arange(0, 256), np.arange(0x7F00, 0x8100), np.arange(0xFF00, 0x10000)])
    hi = np.unique(np.concatenate([hi, spec.astype(np.uint32)]))
    base = hi << 16
    pats = np.concatenate([base, base | 0x8000, base | 0x7FFF, base | 0x8001, base | 0x0001, base | 0xFFFF])
    return np.unique(pats.astype(np.uint32))


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")
@pytest.mark.skipif(not SIM, reason="device functions are called from the host only on the simulator")
def test_bf16_helpers_match_ml_dtypes():
    from fastnorm._kernels.cuda._common import bf16_to_f32, f32_to_bf16

    bits = _special_f32_bits()
    vals = bits.view(np.float32)
    got = np.array([f32_to_bf16(v) for v in vals], dtype=np.uint16)
    want = vals.astype(BF16).view(np.uint16)
    nan = np.isnan(vals)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    # NaN: quieted, sign and top payload bits kept (fastnorm_half.h's rule), never inf
    np.testing.assert_array_equal(got[nan], ((bits[nan] >> 16) | 0x40).astype(np.uint16))
    assert np.isnan(got[nan].view(BF16).astype(np.float32)).all()
    # widening: exact, every pattern of this subset (and the values it produced)
    h = np.unique(np.concatenate([got, (bits >> 16).astype(np.uint16)]))
    wide = np.array([bf16_to_f32(v) for v in h], dtype=np.float32)
    np.testing.assert_array_equal(wide.view(np.uint32), h.astype(np.uint32) << 16)


def test_bf16_rounding_cases_exact(dev):
    # ties to even, both directions, overflow to inf, subnormals, signed zero, NaN, through the kernels
    vals = np.array(
        [
            1.0 + 2**-8,
            1.0 + 3 * 2**-8,
            1.0 + 2**-8 + 2**-20,
            -(1.0 + 2**-8),
            3.3895314e38,
            3.40282e38,
            np.inf,
            -np.inf,
            np.nan,
            -np.nan,
            1e-40,
            -1e-40,
            2**-133 * 1.5,
            0.0,
            -0.0,
            65504.0,
            1e-3,
        ],
        dtype=np.float32,
    )
    be = backend()
    got = host(be.astype(dev(vals), BF16))
    assert got.dtype == BF16
    nan = np.isnan(vals)
    np.testing.assert_array_equal(got.view(np.uint16)[~nan], vals.astype(BF16).view(np.uint16)[~nan])
    assert np.isnan(got[nan].astype(np.float32)).all()
    assert got.view(np.uint16)[0] == 0x3F80
    assert got.view(np.uint16)[1] == 0x3F82
    assert got.view(np.uint16)[5] == 0x7F80  # rounds up past the largest finite: inf


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (F32, BF16),
        (BF16, F32),
        (F32, F16),
        (F16, F32),
        (F64, BF16),
        (F64, F16),
        (BF16, F16),
        (F16, BF16),
        (BF16, F64),
        (F32, F64),
        (F64, F32),
    ],
    ids=lambda d: np.dtype(d).name,
)
def test_astype_and_copyto(rng, dev, src, dst):
    be = backend()
    a = np.concatenate(
        [rng.standard_normal(40) * 10.0 ** rng.integers(-6, 6, 40), [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-30, 7e4]]
    ).astype(src)
    want = a.astype(dst) if not (src == F64 and dst == BF16) else a.astype(F32).astype(BF16)
    d = dev(a)
    got = host(be.astype(d, dst))
    assert got.dtype == dst
    nan = np.isnan(want.astype(np.float64))
    bits = f"u{np.dtype(dst).itemsize}"
    np.testing.assert_array_equal(got.view(bits)[~nan], want.view(bits)[~nan])
    assert np.isnan(got[nan].astype(np.float64)).all()
    assert be.astype(d, src) is d  # same dtype: the array itself
    out = dev(np.zeros(a.shape, dst))
    be.copyto(out, d)
    np.testing.assert_array_equal(host(out).view(bits)[~nan], want.view(bits)[~nan])
    with pytest.raises(ValueError, match="shapes"):
        be.copyto(dev(np.zeros(3, dst)), d)


def test_backend_dtypes():
    be = backend()
    assert BF16 in be.float_dtypes
    assert F16 in be.float_dtypes
    assert be.stat_dtype(BF16) == F32
    assert be.stat_dtype(F16) == F32
    assert be.stat_dtype(F64) == F64
    z = host(be.zeros((3,), BF16))
    assert z.dtype == BF16
    assert not z.view(np.uint16).any()


# ------------------------------------------------------------------------------------------ LayerNorm / RMSNorm
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("dt", [BF16, F16], ids=lambda d: d.name)
@pytest.mark.parametrize("offset", [0.0, 1e3], ids=["centered", "offset1e3"])
def test_row_norms_16bit_kernels(rng, dev, cuda, rms, dt, offset):
    """The kernels as the public layer calls them under the 16-bit rule: x, y, dy, dx 16-bit; weight/bias,
    mean/rstd, dweight/dbias float32."""
    K, be = kernels(), backend()
    m, n = 5, 37
    x, dy = data(rng, (m, n), dt, offset), data(rng, (m, n), dt)
    w, b = param(rng, n, F32), param(rng, n, F32, bias=True)
    X, W, B, DY = dev(x, w, b, dy)
    y, mean, rstd = empty(cuda, (m, n), dt), empty(cuda, (m,), F32), empty(cuda, (m,), F32)
    if rms:
        K.rms_norm_forward(X, W, y, rstd, EPS, 1)
    else:
        K.layer_norm_forward(X, W, B, y, mean, rstd, EPS, 1)
    ref = ln_ref(*f64(x, w, b), rms)
    oth = ln_ref(*f32(x, w, b), rms)
    assert host(y).dtype == dt
    assert host(rstd).dtype == F32
    close(host(y), oth[0].astype(dt), ref[0], "y")
    close(host(rstd), oth[2], ref[2], "rstd")
    if not rms:
        close(host(mean), oth[1], ref[1], "mean")

    nt = be.threads(m * n)
    dx, dw, db = empty(cuda, (m, n), dt), empty(cuda, (n,), F32), empty(cuda, (n,), F32)
    part = lambda: empty(cuda, (nt, n), F64)
    none2 = empty(cuda, (0, 0), F32)
    if rms:
        K.rms_norm_backward(DY, X, rstd, W, dx, dw, part(), none2, nt)
    else:
        K.layer_norm_backward(DY, X, mean, rstd, W, dx, dw, db, part(), none2, part(), none2, nt)
    stats = (None if rms else host(mean), host(rstd))
    ref = ln_bwd_ref(*f64(dy, x, *stats, w, b), rms)
    oth = ln_bwd_ref(*f32(dy, x, *stats, w, b), rms)
    close(host(dx), oth[0].astype(dt), ref[0], "dx")
    close(host(dw), oth[1], ref[1], "dweight")
    if not rms:
        close(host(db), oth[2], ref[2], "dbias")


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_row_norms_bf16_streaming(rng, dev, cuda, rms, monkeypatch):
    from fastnorm._kernels.cuda import layer_norm as L

    monkeypatch.setattr(L, "MAX_TEAM", 32)
    monkeypatch.setattr(L, "MAX_VPT", 2)
    assert L.row_config(100, L.FWD_VPT)[2] == 0
    assert L.bwd_config(100, BF16)[2] == 0
    x, w, b, dy = (
        data(rng, (2, 100), BF16, 5.0),
        param(rng, 100, BF16),  # (the public op on this branch takes parameters in x's dtype)
        param(rng, 100, BF16, True),
        data(rng, (2, 100), BF16),
    )
    X, W, B, DY = dev(x, w, b, dy)
    if rms:
        fwd = fastnorm.rms_norm_forward(X, W, eps=EPS)
        ref, oth = ln_ref(*f64(x, w, None), True), ln_ref(*f32(x, w, None), True)
    else:
        fwd = fastnorm.layer_norm_forward(X, W, B, eps=EPS)
        ref, oth = ln_ref(*f64(x, w, b), False), ln_ref(*f32(x, w, b), False)
    close(host(fwd.y), oth[0].astype(BF16), ref[0], "y")
    close(host(fwd.rstd), oth[2], ref[2], "rstd")
    if rms:
        bwd = fastnorm.rms_norm_backward(DY, X, fwd.rstd, W)
        stats = (None, host(fwd.rstd))
    else:
        bwd = fastnorm.layer_norm_backward(DY, X, fwd.mean, fwd.rstd, W, B)
        stats = (host(fwd.mean), host(fwd.rstd))
    ref = ln_bwd_ref(*f64(dy, x, *stats, w, b), rms)
    oth = ln_bwd_ref(*f32(dy, x, *stats, w, b), rms)
    close(host(bwd.dx), oth[0].astype(BF16), ref[0], "dx")
    close(host(bwd.dweight), oth[1].astype(BF16), ref[1], "dweight")


@pytest.mark.parametrize("dt", [BF16, F16], ids=lambda d: d.name)
def test_layer_norm_16bit_params_public(rng, dev, dt):
    """16-bit weight/bias (converted to float32 by the launcher) through the public op: dweight/dbias come
    back in the parameter's dtype, rounded once from the float32 sums."""
    m, n = 4, 40
    x, dy = data(rng, (m, n), dt), data(rng, (m, n), dt)
    w, b = param(rng, n, dt), param(rng, n, dt, bias=True)
    X, W, B, DY = dev(x, w, b, dy)
    fwd = fastnorm.layer_norm_forward(X, W, B, eps=EPS)
    ref, oth = ln_ref(*f64(x, w, b), False), ln_ref(*f32(x, w, b), False)
    close(host(fwd.y), oth[0].astype(dt), ref[0], "y")
    bwd = fastnorm.layer_norm_backward(DY, X, fwd.mean, fwd.rstd, W, B)
    assert host(bwd.dweight).dtype == dt
    assert host(bwd.dbias).dtype == dt
    stats = (host(fwd.mean), host(fwd.rstd))
    ref = ln_bwd_ref(*f64(dy, x, *stats, w, b), False)
    oth = ln_bwd_ref(*f32(dy, x, *stats, w, b), False)
    close(host(bwd.dx), oth[0].astype(dt), ref[0], "dx")
    close(host(bwd.dweight), oth[1].astype(dt), ref[1], "dweight")
    close(host(bwd.dbias), oth[2].astype(dt), ref[2], "dbias")


# ------------------------------------------------------------------------------------------ channel norms
def _bn_work(be, cuda, n, c, length, backward):
    if length > 1:
        return empty(cuda, (n * c + (c if backward else 0), 2), F64)
    chunks = max(1, min(be.threads(n * c), n))
    return empty(cuda, (chunks + (1 if backward else 0), 2 * c), F64)


@pytest.mark.parametrize("shape", [(3, 4, 5), (9, 4, 1)], ids=["first", "last"])
@pytest.mark.parametrize("offset", [0.0, 1e3], ids=["centered", "offset1e3"])
def test_batch_norm_bf16_kernels(rng, dev, cuda, shape, offset):
    """Channels first (segment kernels) and last (column kernels); running statistics float32, updated."""
    K, be = kernels(), backend()
    n, c, length = shape
    x, dy = data(rng, shape, BF16, offset), data(rng, shape, BF16)
    w, b = param(rng, c, F32), param(rng, c, F32, True)
    rm, rv = rng.standard_normal(c).astype(F32), (1 + rng.random(c)).astype(F32)
    X, W, B, DY, RM, RV = dev(x, w, b, dy, rm, rv)
    y, mean, rstd = empty(cuda, shape, BF16), empty(cuda, (c,), F32), empty(cuda, (c,), F32)
    none = empty(cuda, (0,), F32)
    K.batch_norm_forward(
        X, W, B, RM, RV, y, mean, rstd, _bn_work(be, cuda, n, c, length, False), none, EPS, 0.1, True, 1
    )
    rm64, rv64 = rm.astype(F64), rv.astype(F64)
    ref = R.batch_norm_forward(*f64(x, w, b), rm64, rv64, training=True, momentum=0.1, eps=EPS)
    rm32, rv32 = rm.copy(), rv.copy()
    oth = R.batch_norm_forward(*f32(x, w, b), rm32, rv32, training=True, momentum=0.1, eps=EPS)
    close(host(y), oth[0].astype(BF16), ref[0], "y")
    close(host(mean), oth[1], ref[1], "mean")
    close(host(rstd), oth[2], ref[2], "rstd")
    close(host(RM), rm32, rm64, "running_mean")
    close(host(RV), rv32, rv64, "running_var")

    dx, dw, db = empty(cuda, shape, BF16), empty(cuda, (c,), F32), empty(cuda, (c,), F32)
    K.batch_norm_backward(DY, X, mean, rstd, W, dx, dw, db, _bn_work(be, cuda, n, c, length, True), none, True, 1)
    st = (host(mean), host(rstd))
    ref = R.batch_norm_backward(*f64(dy, x, *st, w, b), training=True)
    oth = R.batch_norm_backward(*f32(dy, x, *st, w, b), training=True)
    close(host(dx), oth[0].astype(BF16), ref[0], "dx")
    close(host(dw), oth[1], ref[1], "dweight")
    close(host(db), oth[2], ref[2], "dbias")


@pytest.mark.parametrize("op", ["group", "instance"])
@pytest.mark.parametrize("dt", [BF16, F16], ids=lambda d: d.name)
def test_group_instance_norm_16bit_kernels(rng, dev, cuda, op, dt):
    K = kernels()
    n, c, length = 2, 4, 6
    g = 2 if op == "group" else c
    shape = (n, c, length)
    x, dy = data(rng, shape, dt, 3.0), data(rng, shape, dt)
    w, b = param(rng, c, F32), param(rng, c, F32, True)
    X, W, B, DY = dev(x, w, b, dy)
    y, mean, rstd = empty(cuda, shape, dt), empty(cuda, (n, g), F32), empty(cuda, (n, g), F32)
    work = empty(cuda, (n * c, 2), F64)
    none = empty(cuda, (0,), F32)
    if op == "group":
        K.group_norm_forward(X, W, B, y, mean, rstd, EPS, 1)
        ref = R.group_norm_forward(f64(x)[0], g, *f64(w, b), eps=EPS)
        oth = R.group_norm_forward(f32(x)[0], g, *f32(w, b), eps=EPS)
    else:
        K.instance_norm_forward(X, W, B, none, none, y, mean, rstd, work, EPS, 0.1, True, 1)
        ref = R.instance_norm_forward(*f64(x, w, b), eps=EPS)
        oth = R.instance_norm_forward(*f32(x, w, b), eps=EPS)
    close(host(y), oth[0].astype(dt), ref[0], "y")
    close(host(mean), oth[1], ref[1], "mean")
    close(host(rstd), oth[2], ref[2], "rstd")
    dx, dw, db = empty(cuda, shape, dt), empty(cuda, (c,), F32), empty(cuda, (c,), F32)
    if op == "group":
        K.group_norm_backward(DY, X, mean, rstd, W, dx, dw, db, work, 1)
    else:
        K.instance_norm_backward(DY, X, mean, rstd, W, dx, dw, db, work, True, 1)
    st = (host(mean), host(rstd))
    if op == "group":
        ref = R.group_norm_backward(*f64(dy, x, *st), g, *f64(w, b))
        oth = R.group_norm_backward(*f32(dy, x, *st), g, *f32(w, b))
    else:
        ref = R.instance_norm_backward(*f64(dy, x, *st, w, b))
        oth = R.instance_norm_backward(*f32(dy, x, *st, w, b))
    close(host(dx), oth[0].astype(dt), ref[0], "dx")
    close(host(dw), oth[1], ref[1], "dweight")
    close(host(db), oth[2], ref[2], "dbias")


def test_channel_norms_bf16_public(rng, dev):
    """The public ops with bfloat16 weights, biases and running statistics (the launchers convert the
    parameters; running statistics and gradients are written in their own dtype)."""
    shape = (3, 4, 5)
    x, dy = data(rng, shape, BF16), data(rng, shape, BF16)
    w, b = param(rng, 4, BF16), param(rng, 4, BF16, True)
    rm, rv = np.zeros(4, BF16), np.ones(4, BF16)
    X, W, B, DY, RM, RV = dev(x, w, b, dy, rm, rv)
    fwd = fastnorm.batch_norm_forward(X, W, B, running_mean=RM, running_var=RV, eps=EPS)
    rm64, rv64 = rm.astype(F64), rv.astype(F64)
    ref = R.batch_norm_forward(*f64(x, w, b), rm64, rv64, eps=EPS)
    rm32, rv32 = rm.astype(F32), rv.astype(F32)
    oth = R.batch_norm_forward(*f32(x, w, b), rm32, rv32, eps=EPS)
    close(host(fwd.y), oth[0].astype(BF16), ref[0], "y")
    assert host(RM).dtype == BF16
    close(host(RM), rm32.astype(BF16), rm64, "running_mean")
    close(host(RV), rv32.astype(BF16), rv64, "running_var")
    bwd = fastnorm.batch_norm_backward(DY, X, fwd.mean, fwd.rstd, W, B)
    st = (host(fwd.mean), host(fwd.rstd))
    ref = R.batch_norm_backward(*f64(dy, x, *st, w, b))
    oth = R.batch_norm_backward(*f32(dy, x, *st, w, b))
    assert host(bwd.dweight).dtype == BF16
    for got, o, r, name in zip(bwd, oth, ref, ("dx", "dweight", "dbias"), strict=True):
        close(host(got), o.astype(BF16), r, name)


# ------------------------------------------------------------------------------------------ LRN / WeightNorm
@pytest.mark.parametrize("scale_dt", [F32, BF16], ids=["scale_f32", "scale_bf16"])
def test_local_response_norm_bf16(rng, dev, cuda, scale_dt):
    from fastnorm._kernels.cuda import lrn

    from .test_cuda_misc import lrn_ref

    x, dy = data(rng, (2, 6, 5), BF16), data(rng, (2, 6, 5), BF16)
    size, alpha, beta, k = 5, 0.3, 0.75, 2.0
    ry, rs, rdx = lrn_ref(x.astype(F64), dy.astype(F64), size, alpha, beta, k)
    X, DY = dev(x, dy)
    y, scale = empty(cuda, x.shape, BF16), empty(cuda, x.shape, scale_dt)
    scratch = empty(cuda, (1, 1), F64)
    lrn.local_response_norm_forward(X, y, scale, scratch, size, alpha, beta, k, 1)
    # the other result: the exact value rounded to the output dtype (no torch bf16 LRN on the GPU here)
    close(host(y), ry.astype(BF16), ry, "y")
    close(host(scale), rs.astype(scale_dt), rs, "scale")
    dx = empty(cuda, x.shape, BF16)
    lrn.local_response_norm_backward(DY, X, y, scale, dx, scratch, size, alpha, beta, 1)
    # dx at the kernel's own (rounded) y and scale
    y64, s64 = host(y).astype(F64), host(scale).astype(F64)
    t = dy.astype(F64) * y64 / s64
    acc = np.zeros_like(t)
    for j in range(x.shape[1]):
        lo, hi = max(0, j - (size - 1) // 2), min(x.shape[1] - 1, j + size // 2)
        acc[:, j] = t[:, lo : hi + 1].sum(axis=1)
    want = dy.astype(F64) * s64**-beta - 2 * alpha * beta / size * x.astype(F64) * acc
    close(host(dx), want.astype(BF16), want, "dx")


def test_weight_norm_bf16(rng, dev, cuda):
    from fastnorm._kernels.cuda import weight_norm as W

    adb = (3, 4, 5)
    v, dwt = data(rng, adb, BF16), data(rng, adb, BF16)
    g = param(rng, adb[1], F32)
    v64, g64, dw64 = (a.astype(F64) for a in (v, g, dwt))
    nrm = np.sqrt((v64**2).sum(axis=(0, 2)))
    w_ref = v64 * (g64 / nrm)[None, :, None]
    V, G, DW = dev(v, g, dwt)
    w, norm = empty(cuda, adb, BF16), empty(cuda, adb[1], F32)
    none2, none1 = empty(cuda, (0, 0), F64), empty(cuda, (0,), F32)
    W.weight_norm_forward(V, G, w, norm, none2, none1, 0, 1)
    close(host(w), w_ref.astype(BF16), w_ref, "w")
    close(host(norm), nrm.astype(F32), nrm, "norm")
    n32 = host(norm).astype(F64)
    dot = (dw64 * v64).sum(axis=(0, 2))
    dg_ref = dot / n32
    dv_ref = (g64 / n32)[None, :, None] * dw64 - (g64 * dot / n32**3)[None, :, None] * v64
    dv, dg = empty(cuda, adb, BF16), empty(cuda, adb[1], F32)
    W.weight_norm_backward(DW, V, G, norm, dv, dg, none2, empty(cuda, (0, 0), F32), 0, 1)
    close(host(dv), dv_ref.astype(BF16), dv_ref, "dv")
    close(host(dg), dg_ref.astype(F32), dg_ref, "dg")


@pytest.mark.parametrize("wdt", [BF16, F32], ids=["w_bf16", "w_f32"])
def test_cosine_linear_bf16(rng, dev, cuda, wdt):
    """bfloat16 CosineLinear on CUDA: the launchers on bfloat16 data (uint16 bits; float32 norms and
    coefficients) and the public ops on bfloat16 device arrays (their float32 path on widened copies, the
    outputs rounded once), against the float64 reference; the other result is the float32 reference on
    the same 16-bit inputs, rounded to bfloat16."""
    from fastnorm._kernels.cuda import weight_norm as W

    eps = 1e-8
    x, w, dy = data(rng, (5, 7), BF16), data(rng, (4, 7), wdt), data(rng, (5, 4), BF16)
    x[3] = 0  # a zero row: its norm is clamped at eps, and its correction coefficient is 0
    names = ("y", "x_norm", "w_norm", "gs", "cx", "cw", "dx", "dw")
    data_out = ("y", "gs", "dx", "dw")

    def expect(w, y_saved):
        """The float64 reference and the other result (the float32 reference on the same 16-bit inputs,
        data outputs rounded to bfloat16), the backward from the y the forward stored."""
        ref = cosine_reference(*f64(x, w, dy), eps, None if y_saved is None else y_saved.astype(F64))
        r32 = cosine_reference(*f32(x, w, dy), eps, None if y_saved is None else y_saved.astype(F32))
        return dict(zip(names, ref)), {n: a.astype(BF16) if n in data_out else a for n, a in zip(names, r32)}

    wk = w.astype(BF16)  # the launchers take data and w in one dtype
    X, WB, DY = dev(x, wk, dy)
    y = dev((x.astype(F64) @ wk.astype(F64).T).astype(BF16))  # holds the product
    x_norm, w_norm = empty(cuda, 5, F32), empty(cuda, 4, F32)
    W.cosine_linear_forward(X, WB, y, x_norm, w_norm, eps, 1)
    gs, cx, cw = empty(cuda, (5, 4), BF16), empty(cuda, 5, F32), empty(cuda, 4, F32)
    W.cosine_linear_backward_pre(DY, y, x_norm, w_norm, gs, cx, cw, empty(cuda, (2, 4), F64), eps, 1)
    gs64 = host(gs).astype(F64)
    dx, dw = dev((gs64 @ wk.astype(F64)).astype(BF16), (gs64.T @ x.astype(F64)).astype(BF16))
    W.cosine_linear_backward_post(X, WB, cx, cw, dx, dw, 1)
    (refs, lowp), (refs_b, lowp_b) = expect(wk, None), expect(wk, host(y))
    for i, (name, got) in enumerate(zip(names, (y, x_norm, w_norm, gs, cx, cw, dx, dw))):
        assert host(got).dtype == (BF16 if name in data_out else F32), name
        r, o = (refs, lowp) if i < 3 else (refs_b, lowp_b)
        close(host(got), o[name], r[name], "kernel " + name)

    f = fastnorm.cosine_linear_forward(*dev(x, w), eps=eps)
    g = fastnorm.cosine_linear_backward(*dev(dy, x, w), f.y, f.x_norm, f.w_norm, eps=eps)
    assert host(f.y).dtype == host(g.dx).dtype == BF16
    assert host(g.dw).dtype == wdt
    (refs, lowp), (refs_b, lowp_b) = expect(w, None), expect(w, host(f.y))
    for i, (name, got) in enumerate(zip(("y", "x_norm", "w_norm", "dx", "dw"), (*f, *g))):
        r, o = (refs, lowp) if i < 3 else (refs_b, lowp_b)
        close(host(got), o[name].astype(wdt) if name == "dw" else o[name], r[name], "public " + name)
