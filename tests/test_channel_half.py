"""bfloat16 / float16 storage for BatchNorm, InstanceNorm, GroupNorm, LocalResponseNorm, WeightNorm and
CosineLinear on the CPU (issue 13 item 1).

Criterion (DESIGN.md): every output's error against the float64 reference (run on the 16-bit inputs cast
up, exactly) is at most 2x the error of torch's same-dtype op, or, where torch has no 16-bit CPU kernel and
for the float32 statistics, of the NumPy reference run in float32 on the widened inputs with its result
rounded once to the output's dtype; plus one unit of the output dtype at the output's scale.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fastnorm
import fastnorm._kernels.cpu as K
from fastnorm import reference as R
from fastnorm._dtypes import BFLOAT16, FLOAT16, FLOAT32

from ._util import assert_close_to_ref, assert_thread_count_invariant

HALF = [BFLOAT16, FLOAT16]
HALF_IDS = ["bf16", "f16"]


# ------------------------------------------------------------------------------------------ helpers
def _eps(dtype) -> float:
    dtype = np.dtype(dtype)
    return float(ml_dtypes.finfo(dtype).eps) if dtype == BFLOAT16 else float(np.finfo(dtype).eps)


def _wide(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().double().numpy()
    return np.asarray(a).astype(np.float64)


def lowp(a, dtype):
    """The float32 reference's result rounded once to ``dtype``."""
    return None if a is None else np.asarray(a, np.float32).astype(dtype)


def w32(*arrays):
    return [None if a is None else np.asarray(a).astype(np.float32) for a in arrays]


def w64(*arrays):
    return [None if a is None else np.asarray(a).astype(np.float64) for a in arrays]


def torch_t(a, requires_grad=False):
    torch = pytest.importorskip("torch")
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype == BFLOAT16:
        t = torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a.copy())
    return t.requires_grad_(requires_grad)


def data(rng, shape, dtype, offset=0.0):
    return (offset + rng.standard_normal(shape)).astype(np.float32).astype(dtype)


def param(rng, c, dtype, center=1.0):
    return (center + 0.3 * rng.standard_normal(c)).astype(np.float32).astype(dtype)


# ------------------------------------------------------------------------------------------ BatchNorm
BN_SHAPES = [
    ((6, 5, 7, 9), 1),
    ((4, 3, 5000), 1),  # 3 channels over 2 threads: shared channel blocks; slices longer than a block
    ((37, 6), -1),
    ((300, 600), -1),  # channels-last: more than a strip of channels, more than a row block
]


def _bn(rng, dt, pdt, rdt, shape, axis, training, offset=0.0, nan=False):
    c = shape[axis]
    x = data(rng, shape, dt, offset)
    if nan:
        x.reshape(-1)[3] = np.nan
    dy = data(rng, shape, dt)
    w, b = param(rng, c, pdt), param(rng, c, pdt, 0.0)
    rm = (offset + 0.1 * rng.standard_normal(c)).astype(np.float32).astype(rdt)
    rv = (1 + rng.random(c)).astype(np.float32).astype(rdt)
    rm_f, rv_f = rm.copy(), rv.copy()
    y, mean, rstd = fastnorm.batch_norm_forward(x, w, b, rm_f, rv_f, training=training, axis=axis)
    dx, dw, db = fastnorm.batch_norm_backward(dy, x, mean, rstd, w, b, training=training, axis=axis)
    assert y.dtype == dx.dtype == dt
    assert mean.dtype == rstd.dtype == FLOAT32
    assert dw.dtype == db.dtype == pdt
    assert rm_f.dtype == rv_f.dtype == rdt
    checks = []
    for wide in (w64, w32):
        rm_r, rv_r = wide(rm, rv)
        xr, dyr, wr, br = wide(x, dy, w, b)
        fy, fm, fr = R.batch_norm_forward(xr, wr, br, rm_r, rv_r, training=training, axis=axis)
        meanr, rstdr = wide(mean, rstd)  # backward from the same saved statistics
        bd = R.batch_norm_backward(dyr, xr, meanr, rstdr, wr, br, training=training, axis=axis)
        checks.append((fy, fm, fr, rm_r, rv_r, *bd))
    ref, f32 = checks
    names = ["y", "mean", "rstd", "running_mean", "running_var", "dx", "dweight", "dbias"]
    got = [y, mean, rstd, rm_f, rv_f, dx, dw, db]
    other = [lowp(a, g.dtype) for a, g in zip(f32, got)]
    if not nan and axis == 1:
        pytest.importorskip("torch")
        import torch.nn.functional as F

        tx, tw, tb = torch_t(x, True), torch_t(w, True), torch_t(b, True)
        trm, trv = torch_t(rm.astype(pdt)), torch_t(rv.astype(pdt))  # torch: running stats in w's dtype
        ty = F.batch_norm(tx, trm, trv, tw, tb, training=training)
        ty.backward(torch_t(dy))
        other[0], other[5], other[6], other[7] = ty, tx.grad, tw.grad, tb.grad
    if not training:
        names, got, ref, other = names[:3] + names[5:], got[:3] + got[5:], ref[:3] + ref[5:], other[:3] + other[5:]
    return names, got, other, ref


@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("pdt", ["x", "f32"])
@pytest.mark.parametrize(("shape", "axis"), BN_SHAPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm(rng, threads, dt, pdt, shape, axis, training):
    pdt = dt if pdt == "x" else FLOAT32
    for n, g, o, r in zip(*_bn(rng, dt, pdt, FLOAT32 if pdt == FLOAT32 else dt, shape, axis, training)):
        assert_close_to_ref(g, o, r, name=n, ulps=1.0)


@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("rdt", ["x", "f32"])
def test_batch_norm_running_stats_dtypes(rng, dt, rdt):
    # float32 parameters with running statistics in x's dtype (torch refuses the mixture; accepted here)
    rdt = dt if rdt == "x" else FLOAT32
    for n, g, o, r in zip(*_bn(rng, dt, FLOAT32, rdt, (5, 4, 6, 6), 1, True)):
        assert_close_to_ref(g, o, r, name=n, ulps=1.0)


@pytest.mark.parametrize(("shape", "axis"), BN_SHAPES[:3])
def test_batch_norm_large_offset(rng, shape, axis):
    for n, g, o, r in zip(*_bn(rng, BFLOAT16, FLOAT32, FLOAT32, shape, axis, True, offset=1e3)):
        assert_close_to_ref(g, o, r, name=n, ulps=1.0)


@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
@pytest.mark.parametrize(("shape", "axis"), BN_SHAPES[:3])
def test_batch_norm_nan_propagates(rng, dt, shape, axis):
    for n, g, o, r in zip(*_bn(rng, dt, dt, FLOAT32, shape, axis, True, nan=True)):
        assert_close_to_ref(g, o, r, name=n, ulps=1.0)


# ------------------------------------------------------------------------------------------ GroupNorm
GN_CASES = [((3, 8, 5, 7), 4), ((2, 6, 4500), 3), ((5, 4), 2), ((2, 6, 9), 6)]


def _gn(rng, dt, pdt, shape, groups, offset=0.0, nan=False):
    c = shape[1]
    x, dy = data(rng, shape, dt, offset), data(rng, shape, dt)
    if nan:
        x.reshape(-1)[5] = np.inf
    w, b = param(rng, c, pdt), param(rng, c, pdt, 0.0)
    y, mean, rstd = fastnorm.group_norm_forward(x, groups, w, b)
    dx, dw, db = fastnorm.group_norm_backward(dy, x, mean, rstd, groups, w, b)
    assert y.dtype == dx.dtype == dt
    assert mean.dtype == FLOAT32
    assert dw.dtype == db.dtype == pdt
    got = [y, mean, rstd, dx, dw, db]
    refs = []
    for wide in (w64, w32):
        xr, dyr, wr, br = wide(x, dy, w, b)
        meanr, rstdr = wide(mean, rstd)
        refs.append(
            (*R.group_norm_forward(xr, groups, wr, br), *R.group_norm_backward(dyr, xr, meanr, rstdr, groups, wr, br))
        )
    other = [lowp(a, g.dtype) for a, g in zip(refs[1], got)]
    if not nan:
        pytest.importorskip("torch")
        import torch.nn.functional as F

        tx, tw, tb = torch_t(x, True), torch_t(w, True), torch_t(b, True)
        ty = F.group_norm(tx, groups, tw, tb)
        ty.backward(torch_t(dy))
        other[0], other[3], other[4], other[5] = ty, tx.grad, tw.grad, tb.grad
    return ["y", "mean", "rstd", "dx", "dweight", "dbias"], got, other, refs[0]


@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("pdt", ["x", "f32"])
@pytest.mark.parametrize(("shape", "groups"), GN_CASES)
def test_group_norm(rng, threads, dt, pdt, shape, groups):
    for n, g, o, r in zip(*_gn(rng, dt, dt if pdt == "x" else FLOAT32, shape, groups)):
        assert_close_to_ref(g, o, r, name=n, ulps=1.0)


def test_group_norm_large_offset_and_inf(rng):
    for n, g, o, r in zip(*_gn(rng, BFLOAT16, FLOAT32, (3, 8, 5, 7), 4, offset=1e3)):
        assert_close_to_ref(g, o, r, name=n, ulps=1.0)
    for n, g, o, r in zip(*_gn(rng, FLOAT16, FLOAT16, (3, 8, 5, 7), 4, nan=True)):
        assert_close_to_ref(g, o, r, name=n, ulps=1.0)


# ------------------------------------------------------------------------------------------ InstanceNorm
def _in(rng, dt, pdt, shape, use_input_stats, offset=0.0):
    c = shape[1]
    x, dy = data(rng, shape, dt, offset), data(rng, shape, dt)
    w, b = param(rng, c, pdt), param(rng, c, pdt, 0.0)
    rm = (0.1 * rng.standard_normal(c)).astype(np.float32)
    rv = (1 + rng.random(c)).astype(np.float32)
    rm_f, rv_f = rm.copy(), rv.copy()
    y, mean, rstd = fastnorm.instance_norm_forward(x, w, b, rm_f, rv_f, use_input_stats=use_input_stats)
    dx, dw, db = fastnorm.instance_norm_backward(dy, x, mean, rstd, w, b, use_input_stats=use_input_stats)
    assert y.dtype == dx.dtype == dt
    assert mean.dtype == FLOAT32
    assert dw.dtype == pdt
    got = [y, mean, rstd, rm_f, rv_f, dx, dw, db]
    refs = []
    for wide in (w64, w32):
        xr, dyr, wr, br, rmr, rvr = wide(x, dy, w, b, rm, rv)
        fwd = R.instance_norm_forward(xr, wr, br, rmr, rvr, use_input_stats=use_input_stats)
        meanr, rstdr = wide(mean, rstd)
        bwd = R.instance_norm_backward(dyr, xr, meanr, rstdr, wr, br, use_input_stats=use_input_stats)
        refs.append((*fwd, rmr, rvr, *bwd))
    other = [lowp(a, g.dtype) for a, g in zip(refs[1], got)]
    pytest.importorskip("torch")
    import torch.nn.functional as F

    tx, tw, tb = torch_t(x, True), torch_t(w, True), torch_t(b, True)
    ty = F.instance_norm(tx, torch_t(rm), torch_t(rv), tw, tb, use_input_stats=use_input_stats)
    ty.backward(torch_t(dy))
    other[0], other[5], other[6], other[7] = ty, tx.grad, tw.grad, tb.grad
    return ["y", "mean", "rstd", "running_mean", "running_var", "dx", "dweight", "dbias"], got, other, refs[0]


@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("pdt", ["x", "f32"])
@pytest.mark.parametrize("shape", [(3, 4, 6, 7), (2, 3, 5000)])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm(rng, threads, dt, pdt, shape, use_input_stats):
    for n, g, o, r in zip(*_in(rng, dt, dt if pdt == "x" else FLOAT32, shape, use_input_stats)):
        assert_close_to_ref(g, o, r, name=n, ulps=1.0)


def test_instance_norm_large_offset(rng):
    for n, g, o, r in zip(*_in(rng, BFLOAT16, FLOAT32, (3, 4, 6, 7), True, offset=1e3)):
        assert_close_to_ref(g, o, r, name=n, ulps=1.0)


# ------------------------------------------------------------------------------------------ LRN
@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
@pytest.mark.parametrize(("shape", "size", "beta"), [((3, 7, 5, 6), 3, 0.75), ((2, 40, 33), 5, 0.6), ((4, 3), 4, 1.0)])
def test_local_response_norm(rng, threads, dt, shape, size, beta):
    # torch has no 16-bit CPU LRN: the other result is the float32 reference rounded once
    x, dy = data(rng, shape, dt), data(rng, shape, dt)
    x.reshape(-1)[1] = np.nan
    kw = dict(alpha=0.5, beta=beta, k=1.0)
    y, scale = fastnorm.local_response_norm_forward(x, size, **kw)
    dx = fastnorm.local_response_norm_backward(dy, x, y, scale, size, **kw)
    assert y.dtype == dx.dtype == dt
    assert scale.dtype == FLOAT32
    (ry, rs), (oy, os_) = (R.local_response_norm_forward(w(x)[0], size, **kw) for w in (w64, w32))
    assert_close_to_ref(y, lowp(oy, dt), ry, name="y", ulps=1.0)
    assert_close_to_ref(scale, os_, rs, name="scale", ulps=1.0)
    rdx = R.local_response_norm_backward(*w64(dy, x, y, scale), size, **kw)
    odx = R.local_response_norm_backward(*w32(dy, x, y, scale), size, **kw)
    assert_close_to_ref(dx, lowp(odx, dt), rdx, name="dx", ulps=1.0)


# ------------------------------------------------------------------------------------------ WeightNorm
@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("pdt", ["x", "f32"])
@pytest.mark.parametrize(("shape", "dim"), [((6, 5, 3), 0), ((64, 300), 0), ((4, 6, 5), -1), ((7, 9), None)])
def test_weight_norm(rng, threads, dt, pdt, shape, dim):
    pdt = dt if pdt == "x" else FLOAT32
    v, dw = data(rng, shape, dt), data(rng, shape, dt)
    gshape = () if dim is None else tuple(s if i == dim % len(shape) else 1 for i, s in enumerate(shape))
    g = (1 + rng.random(gshape)).astype(np.float32).astype(pdt)
    w, norm = fastnorm.weight_norm_forward(v, g, dim=dim)
    dv, dg = fastnorm.weight_norm_backward(dw, v, g, norm, dim=dim)
    assert w.dtype == dv.dtype == dt
    assert norm.dtype == FLOAT32
    assert dg.dtype == pdt
    refs = [
        (*R.weight_norm_forward(*wide(v, g), dim=dim), *R.weight_norm_backward(*wide(dw, v, g, norm), dim=dim))
        for wide in (w64, w32)
    ]
    got = [w, norm, dv, dg]
    other = [lowp(a, b.dtype) for a, b in zip(refs[1], got)]
    if dim is not None:
        torch = pytest.importorskip("torch")
        tv, tg = torch_t(v, True), torch_t(g.astype(dt), True)
        tw = torch._weight_norm(tv, tg, dim % len(shape))
        tw.backward(torch_t(dw))
        other[0], other[2] = tw, tv.grad
    for n, a, o, r in zip(["w", "norm", "dv", "dg"], got, other, refs[0]):
        assert_close_to_ref(a, o, r, name=n, ulps=1.0)


# ------------------------------------------------------------------------------------------ CosineLinear
@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("pdt", ["x", "f32"])
def test_cosine_linear(rng, threads, dt, pdt):
    pdt = dt if pdt == "x" else FLOAT32
    x, wt = data(rng, (3, 7, 16), dt), data(rng, (5, 16), pdt)
    dy = data(rng, (3, 7, 5), dt)
    y, xn, wn = fastnorm.cosine_linear_forward(x, wt)
    dx, dw = fastnorm.cosine_linear_backward(dy, x, wt, y, xn, wn)
    assert y.dtype == dx.dtype == dt
    assert xn.dtype == wn.dtype == FLOAT32
    assert dw.dtype == pdt
    refs = [
        (*R.cosine_linear_forward(*wide(x, wt)), *R.cosine_linear_backward(*wide(dy, x, wt, y, xn, wn)))
        for wide in (w64, w32)
    ]
    got = [y, xn, wn, dx, dw]
    for n, a, o, r in zip(["y", "x_norm", "w_norm", "dx", "dw"], got, refs[1], refs[0]):
        assert_close_to_ref(a, lowp(o, a.dtype), r, name=n, ulps=1.0)


# ------------------------------------------------------------------------------------------ out=, threads, ISA
def _all_ops(rng, dt, ops=fastnorm, cast=lambda a: a):
    """Every op forward + backward on one set of 16-bit inputs of > 32768 elements; returns the outputs.

    ``ops=R, cast=w64`` (or ``w32``) runs the NumPy reference on the same inputs widened to float64 (float32).
    """
    x, dy = data(rng, (4, 8, 40, 41), dt), data(rng, (4, 8, 40, 41), dt)
    w, b = param(rng, 8, dt), param(rng, 8, FLOAT32, 0.0)
    rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
    x, dy, w, b, rm, rv = (cast(a) for a in (x, dy, w, b, rm, rv))
    xl, dyl = x.reshape(-1, 8), dy.reshape(-1, 8)
    outs = []
    f = ops.batch_norm_forward(x, w, b, rm, rv)
    outs += [*f, rm, rv, *ops.batch_norm_backward(dy, x, f[1], f[2], w, b)]
    f = ops.batch_norm_forward(xl, w, b, axis=-1)
    outs += [*f[:1], *ops.batch_norm_backward(dyl, xl, f[1], f[2], w, b, axis=-1)]
    f = ops.group_norm_forward(x, 4, w, b)
    outs += [*f, *ops.group_norm_backward(dy, x, f[1], f[2], 4, w, b)]
    f = ops.instance_norm_forward(x, w, b)
    outs += [*f, *ops.instance_norm_backward(dy, x, f[1], f[2], w, b)]
    f = ops.local_response_norm_forward(x, 3)
    outs += [*f, ops.local_response_norm_backward(dy, x, f[0], f[1], 3)]
    return outs


@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
def test_bitwise_same_for_any_thread_count(rng, dt):
    assert_thread_count_invariant(lambda: _all_ops(np.random.default_rng(5), dt), counts=(1, 2, 3))


@pytest.mark.parametrize("target", K.runnable_targets())
@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
def test_every_isa_target(target, dt):
    """Each target's outputs against the float64 reference, with DESIGN.md's criterion: at most twice the
    error of the float32 reference's result rounded once to the output dtype (what a correct kernel can
    reach whatever its vector width and FMA use) plus one unit of the output dtype."""
    with K.use_target(target):
        got = _all_ops(np.random.default_rng(6), dt)
    ref64 = _all_ops(np.random.default_rng(6), dt, R, lambda a: a.astype(np.float64))
    ref32 = _all_ops(np.random.default_rng(6), dt, R, lambda a: a.astype(np.float32))
    for i, (g, r64, r32) in enumerate(zip(got, ref64, ref32, strict=True)):
        if g is None:
            continue
        g = np.asarray(g)
        assert_close_to_ref(g, lowp(r32, g.dtype), r64, name=f"{target} output {i}", ulps=1.0)


@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
def test_out_buffers_written_in_place(rng, dt):
    x, dy = data(rng, (3, 4, 5, 6), dt), data(rng, (3, 4, 5, 6), dt)
    w = param(rng, 4, FLOAT32)
    out = (np.empty_like(x), np.empty(4, np.float32), np.empty(4, np.float32))
    f = fastnorm.batch_norm_forward(x, w, out=out)
    assert all(a is b for a, b in zip(f, out))
    outb = (np.empty_like(x), np.empty(4, np.float32), None)
    bk = fastnorm.batch_norm_backward(dy, x, f.mean, f.rstd, w, out=outb)
    assert bk.dx is outb[0]
    assert bk.dweight is outb[1]
    w16 = w.astype(dt)
    outg = (np.empty_like(x), np.empty(4, dt), None)
    fg = fastnorm.group_norm_forward(x, 2, w16)
    gb = fastnorm.group_norm_backward(dy, x, fg.mean, fg.rstd, 2, w16, out=outg)
    assert gb.dx is outg[0]
    assert gb.dweight is outg[1]
    ref = R.group_norm_backward(*w64(dy, x, fg.mean, fg.rstd), 2, *w64(w16))
    other = lowp(R.group_norm_backward(*w32(dy, x, fg.mean, fg.rstd), 2, *w32(w16))[1], dt)
    assert_close_to_ref(gb.dweight, other, ref[1], name="dw", ulps=1.0)
    lo = (np.empty_like(x), np.empty(x.shape, np.float32))
    lr = fastnorm.local_response_norm_forward(x, 3, out=lo)
    assert lr.y is lo[0]
    assert lr.scale is lo[1]
    with pytest.raises(ValueError, match="scale"):
        fastnorm.local_response_norm_forward(x, 3, out=(np.empty_like(x), np.empty_like(x)))
    with pytest.raises(ValueError, match="dweight"):
        fastnorm.batch_norm_backward(dy, x, f.mean, f.rstd, w, out=(None, np.empty(4, dt), None))


@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
def test_bad_dtypes_are_type_errors(rng, dt):
    x = data(rng, (3, 4, 5), dt)
    with pytest.raises(TypeError, match="weight"):
        fastnorm.batch_norm_forward(x, np.ones(4, np.float64))
    with pytest.raises(TypeError, match="running_mean"):
        fastnorm.batch_norm_forward(x, None, None, np.zeros(4, np.float64), np.ones(4, np.float32))
    with pytest.raises(TypeError, match="mean"):
        fastnorm.batch_norm_backward(x, x, np.zeros(4, dt), np.ones(4, np.float32))
    other = FLOAT16 if dt == BFLOAT16 else BFLOAT16
    with pytest.raises(TypeError, match="weight"):
        fastnorm.group_norm_forward(x, 2, np.ones(4, other))
    with pytest.raises(TypeError, match="g"):
        fastnorm.weight_norm_forward(x, np.ones((3, 1, 1), np.float64))


def _ulp_diff(a, b):
    """|a - b| in units of the 16-bit dtype's spacing at b (both 16-bit arrays of one dtype)."""
    a64, b64 = _wide(a), _wide(b)
    spacing = _eps(b.dtype) * np.maximum(np.abs(b64), float(ml_dtypes.finfo(b.dtype).smallest_normal))
    return np.abs(a64 - b64) / spacing


@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
@pytest.mark.parametrize(("shape", "axis"), BN_SHAPES)
def test_16bit_results_are_the_float32_kernels_rounded_once(rng, threads, dt, shape, axis):
    """Widening is exact and the 16-bit kernels run the float32 kernels' arithmetic on the widened values:
    their outputs are the float32 kernels' outputs on x.astype(float32) rounded once (up to a last-bit
    difference where the tile split changes a vector/scalar FMA contraction), and their float32
    statistics are the same numbers."""
    x, dy = data(rng, shape, dt, 3.0), data(rng, shape, dt)
    c = shape[axis]
    w, b = param(rng, c, FLOAT32), param(rng, c, FLOAT32, 0.0)
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
    pairs = []
    f16, f32 = (fastnorm.batch_norm_forward(a, w, b, axis=axis) for a in (x, x32))
    g16 = fastnorm.batch_norm_backward(dy, x, f16.mean, f16.rstd, w, b, axis=axis)
    g32 = fastnorm.batch_norm_backward(dy32, x32, f32.mean, f32.rstd, w, b, axis=axis)
    pairs += [(f16.y, f32.y), (g16.dx, g32.dx)]
    # the float32 statistics: within DESIGN.md's bound of the float32 kernel's (bitwise equal on avx2)
    ref = R.batch_norm_forward(*w64(x, w, b), axis=axis)
    ref_dw = R.batch_norm_backward(*w64(dy, x), ref[1], ref[2], *w64(w, b), axis=axis)[1]
    for n, got, other, r in [("mean", f16.mean, f32.mean, ref[1]), ("rstd", f16.rstd, f32.rstd, ref[2]),
                             ("dweight", g16.dweight, g32.dweight, ref_dw)]:  # fmt: skip
        assert_close_to_ref(got, other, r, name=n, sample_slack=True)
    if axis == 1 and len(shape) > 2:
        for fn in (
            lambda a: fastnorm.group_norm_forward(a, 1, w, b).y,
            lambda a: fastnorm.instance_norm_forward(a, w, b).y,
            lambda a: fastnorm.local_response_norm_forward(a, 3, alpha=0.5).y,
        ):
            pairs.append((fn(x), fn(x32)))
    for got, ref32 in pairs:
        want = ref32.astype(dt)
        d = _ulp_diff(got, want)
        assert d.max() <= 1.0, d.max()
        assert np.mean(got.view(np.uint16) == want.view(np.uint16)) >= 0.99


@pytest.mark.parametrize("target", K.runnable_targets())
@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
def test_streamed_outputs_are_the_plain_outputs(target, dt):
    """Large 16-bit outputs are written with non-temporal stores (each rounded group of 8 values): the same
    bits as plain stores, also into out= buffers one item off a 16-byte boundary (unaligned heads)."""
    from ._channel import streaming_stores

    with K.use_target(target):
        plain = _all_ops(np.random.default_rng(7), dt)
        with streaming_stores():
            streamed = _all_ops(np.random.default_rng(7), dt)
            rng = np.random.default_rng(8)
            x, dy = data(rng, (3, 5, 7, 5), dt), data(rng, (3, 5, 7, 5), dt)
            w = param(rng, 5, FLOAT32)
            y, dx = (np.empty(x.size + 1, dt)[1:].reshape(x.shape) for _ in range(2))
            for axis in (1, -1):
                f = fastnorm.batch_norm_forward(
                    x, w, axis=axis, out=(y, np.empty(5, np.float32), np.empty(5, np.float32))
                )
                g = fastnorm.batch_norm_backward(dy, x, f.mean, f.rstd, w, axis=axis, out=(dx, None, None))
                fa = fastnorm.batch_norm_forward(x, w, axis=axis)
                ga = fastnorm.batch_norm_backward(dy, x, fa.mean, fa.rstd, w, axis=axis)
                streamed += [f.y.copy(), g.dx.copy()]
                plain += [fa.y, ga.dx]
    for i, (s, p) in enumerate(zip(streamed, plain, strict=True)):
        if s is not None:
            np.testing.assert_array_equal(np.asarray(s).view(np.uint8), np.asarray(p).view(np.uint8), err_msg=str(i))


@pytest.mark.parametrize("target", K.runnable_targets())
@pytest.mark.parametrize("dt", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("shape", [(3, 4, 4100), (5, 6, 37), (2, 4, 9000)])
def test_segment_statistics_equal_the_float32_kernel(target, dt, shape):
    """The segment moments read 16-bit values straight into registers (AVX2 targets) or through float32
    tiles (baseline): either way the float32 kernel's arithmetic on x.astype(float32), so the same bits."""
    rng = np.random.default_rng(9)
    x = data(rng, shape, dt, 3.0)
    x32 = x.astype(np.float32)
    with K.use_target(target):
        for fn in (
            lambda a: fastnorm.batch_norm_forward(a)[1:],
            lambda a: fastnorm.group_norm_forward(a, 2)[1:],
            lambda a: fastnorm.instance_norm_forward(a)[1:],
        ):
            for got, want in zip(fn(x), fn(x32), strict=True):
                np.testing.assert_array_equal(got, want)
