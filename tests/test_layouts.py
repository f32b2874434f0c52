"""Memory layouts of every norm op's arrays: unaligned, byte-swapped, read-only and strided inputs work
(copied in when a kernel cannot read them), while ``out=`` buffers and running statistics a kernel would
write in place are refused with a ValueError naming the argument and the real reason, before anything is
written.
"""

from __future__ import annotations

import tracemalloc

import ml_dtypes
import numpy as np
import pytest

import fastnorm

from ._util import byteswapped, unaligned


def readonly(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


def strided(a):
    """A non-contiguous view holding ``a``'s values (every other element of a wider array)."""
    a = np.asarray(a)
    if a.ndim == 0:
        return a.copy()
    wide = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


LAYOUTS = {"unaligned": unaligned, "byteswapped": byteswapped, "readonly": readonly, "strided": strided}


# (op, forward array arguments, options of both directions, outputs the backward reads, gradient names
# (None: dx, dweight, dbias));
# the backward takes dy (dw for weight_norm) shaped as the first output, the forward's arrays but the
# running statistics, and the saved outputs.
_RUNNING = ("x", "w6", "b6", "running_mean", "running_var")
_SPECS = [
    ("layer_norm", ("x", "weight", "bias"), {}, ("mean", "rstd"), None),
    ("rms_norm", ("x", "weight"), {}, ("rstd",), ("dx", "dweight")),
    ("batch_norm", _RUNNING, dict(training=False), ("mean", "rstd"), None),
    ("instance_norm", _RUNNING, dict(use_input_stats=False), ("mean", "rstd"), None),
    ("group_norm", ("x", "w6", "b6"), dict(num_groups=3), ("mean", "rstd"), None),
    ("local_response_norm", ("x",), dict(size=3), ("y", "scale"), ("dx",)),
    ("weight_norm", ("v", "g"), {}, ("norm",), ("dv", "dg")),
    ("cosine_linear", ("xc", "w"), {}, ("y", "x_norm", "w_norm"), ("dx", "dw")),
]
# names in _SPECS that stand for a differently shaped array of the same argument
_ALIAS = {"w6": "weight", "b6": "bias", "xc": "x"}


def _cases(dtype):
    """(op name, function, array arguments, other arguments, output names), forward then backward per op."""
    rng = np.random.default_rng(7)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def pos(*shape):
        return (rng.random(shape) + 0.5).astype(dtype)

    arrays = dict(x=r(4, 6, 5), weight=r(5), bias=r(5), w6=r(6), b6=r(6), running_mean=r(6), running_var=pos(6))
    arrays.update(v=r(6, 5), g=pos(6, 1), xc=r(4, 5), w=r(3, 5))
    cases = []
    for op, names, opts, saved, grads in _SPECS:
        fwd, bwd = getattr(fastnorm, f"{op}_forward"), getattr(fastnorm, f"{op}_backward")
        args = {_ALIAS.get(n, n): arrays[n] for n in names}
        res = fwd(**args, **opts)
        cases.append((f"{op}_forward", fwd, args, opts, res._fields))
        first = "dw" if op == "weight_norm" else "dy"
        bargs = {first: r(*res[0].shape), **{k: v for k, v in args.items() if not k.startswith("running")}}
        bargs.update({k: getattr(res, k) for k in saved})
        cases.append((f"{op}_backward", bwd, bargs, opts, grads or ("dx", "dweight", "dbias")))
    return cases


def _as_tuple(r):
    return tuple(r) if isinstance(r, tuple) else (r,)


def _equal(got, ref, what):
    for a, b in zip(_as_tuple(got), _as_tuple(ref), strict=True):
        if b is None:
            assert a is None, what
            continue
        assert a.dtype == b.dtype, what
        assert a.dtype.isnative, what
        np.testing.assert_array_equal(a, b, err_msg=what)


CASES32 = _cases(np.float32)
OP_IDS = [c[0] for c in CASES32]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("index", range(len(CASES32)), ids=OP_IDS)
def test_input_layouts_give_the_same_result(index, layout, dtype):
    name, fn, arrays, kwargs, _ = _cases(dtype)[index]
    ref = fn(**arrays, **kwargs)
    for arg in arrays:
        changed = dict(arrays, **{arg: LAYOUTS[layout](arrays[arg])})
        before = changed[arg].copy()
        got = fn(**changed, **kwargs)
        _equal(got, ref, f"{name}: {arg} {layout}")
        np.testing.assert_array_equal(changed[arg], before)  # inputs are never written


def test_big_endian_input_message_names_byte_order():
    # once the self-contradictory "has dtype float32; expected one of float32, float64"
    with pytest.raises(TypeError, match=r"layer_norm_forward: x has dtype int32"):
        fastnorm.layer_norm_forward(np.ones((2, 3), ">i4"))
    y = fastnorm.layer_norm_forward(np.arange(6.0, dtype=">f4").reshape(2, 3)).y
    assert y.dtype == np.float32
    assert y.dtype.isnative


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (unaligned, "not aligned"),
        (byteswapped, "non-native byte order"),
        (readonly, "read-only"),
        (strided, "C-contiguous"),
    ],
    ids=["unaligned", "byteswapped", "readonly", "strided"],
)
@pytest.mark.parametrize("index", range(len(CASES32)), ids=OP_IDS)
def test_bad_out_buffers_are_refused_before_anything_is_written(index, make, reason):
    name, fn, arrays, kwargs, fields = CASES32[index]
    ref = _as_tuple(fn(**arrays, **kwargs))
    snapshot = {k: v.copy() for k, v in arrays.items()}
    for slot, field in enumerate(fields):
        if ref[slot] is None:
            continue
        sentinels = [None if r is None else np.full_like(r, 7) for r in ref]
        bad = make(sentinels[slot])
        out = [*sentinels[:slot], bad, *sentinels[slot + 1 :]]
        before = [None if o is None else o.copy() for o in out]
        with pytest.raises(ValueError, match=f"{name}: out buffer for {field} .*{reason}"):
            fn(**arrays, **kwargs, out=tuple(out) if len(out) > 1 else out[0])
        for o, b in zip(out, before):
            if o is not None:
                np.testing.assert_array_equal(o, b)
    for k, v in arrays.items():
        np.testing.assert_array_equal(v, snapshot[k])


@pytest.mark.parametrize("op", ["batch_norm_forward", "instance_norm_forward"])
@pytest.mark.parametrize(
    ("make", "reason"),
    [(unaligned, "not aligned"), (byteswapped, "non-native byte order"), (readonly, "read-only")],
    ids=["unaligned", "byteswapped", "readonly"],
)
@pytest.mark.parametrize("which", ["running_mean", "running_var"])
def test_running_stats_updated_in_place_must_be_writable_native_aligned(op, make, reason, which):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    stats = dict(running_mean=np.zeros(3, np.float32), running_var=np.ones(3, np.float32))
    stats[which] = make(stats[which])
    before = {k: v.copy() for k, v in stats.items()}
    fn = getattr(fastnorm, op)
    with pytest.raises(ValueError, match=f"{op}: {which} is updated in place but .*{reason}"):
        fn(x, **stats)
    for k, v in stats.items():
        np.testing.assert_array_equal(v, before[k])
    # in evaluation they are only read: any layout works, same result as a plain array
    plain = fn(x, running_mean=np.zeros(3, np.float32), running_var=np.ones(3, np.float32), **{_eval(op): False})
    _equal(fn(x, **stats, **{_eval(op): False}), plain, f"{op} eval with {which}")


def _eval(op):
    return "training" if op.startswith("batch") else "use_input_stats"


def test_unaligned_torch_tensor_through_functional():
    torch = pytest.importorskip("torch")
    import fastnorm.torch.functional as TF

    ref = torch.randn(2, 3, 5)
    raw = bytearray(ref.numel() * 4 + 1)
    t = torch.frombuffer(raw, dtype=torch.float32, count=ref.numel(), offset=1).view(2, 3, 5)
    t.copy_(ref)
    assert t.data_ptr() % 4 != 0
    torch.testing.assert_close(TF.layer_norm(t, (5,)), TF.layer_norm(ref, (5,)), rtol=0, atol=0)
    torch.testing.assert_close(TF.group_norm(t, 3), TF.group_norm(ref, 3), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------- 16-bit data
HALF = [np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)]
HALF_IDS = ["bf16", "f16"]
# 16-bit x (and residual) with float32 parameters: x's layout must not change a bit of any output
HALF_OPS = {
    "layer_norm_forward": lambda x, w, res: fastnorm.layer_norm_forward(x, w, w),
    "rms_norm_forward": lambda x, w, res: fastnorm.rms_norm_forward(x, w),
    "batch_norm_forward": lambda x, w, res: fastnorm.batch_norm_forward(x, axis=-1),
    "add_rms_norm_forward": lambda x, w, res: fastnorm.add_rms_norm_forward(x, res, w),
}


def _half_inputs(dtype):
    rng = np.random.default_rng(5)
    x = (1e3 + rng.standard_normal((64, 48))).astype(dtype)  # a large offset: statistics must be float32
    return x, (rng.random(48) + 0.5).astype(np.float32), rng.standard_normal((64, 48)).astype(dtype)


def _bits_equal(got, ref, what):
    for a, b in zip(_as_tuple(got), _as_tuple(ref), strict=True):
        assert a.dtype == b.dtype, what
        assert a.dtype.isnative, what
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=what)


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("op", sorted(HALF_OPS))
def test_unaligned_16bit_input_gives_bitwise_the_same_outputs(op, dtype):
    x, w, res = _half_inputs(dtype)
    u = unaligned(x)
    assert u.ctypes.data % 2 == 1
    _bits_equal(HALF_OPS[op](u, w, res), HALF_OPS[op](x, w, res), f"{op}: unaligned x")
    if op == "add_rms_norm_forward":
        _bits_equal(HALF_OPS[op](x, w, unaligned(res)), HALF_OPS[op](x, w, res), f"{op}: unaligned residual")


@pytest.mark.parametrize("op", sorted(HALF_OPS))
def test_byteswapped_float16_input_gives_bitwise_the_same_outputs(op):
    x, w, res = _half_inputs(np.float16)
    big = x.astype(">f2")
    assert not big.dtype.isnative
    assert np.array_equal(big, x)
    _bits_equal(HALF_OPS[op](big, w, res), HALF_OPS[op](x, w, res), f"{op}: '>f2' x")


def _peak_bytes(call):
    """The peak of the memory NumPy allocates (traced) while ``call()`` runs."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("op", sorted(HALF_OPS))
def test_read_only_16bit_input_is_read_in_place(op, dtype):
    """A read-only 16-bit x gives the same bits and costs no copy of x: the peak of the traced allocations
    is that of a writeable x (a copy of x would add x.nbytes)."""
    x, w, res = _half_inputs(dtype)
    x = np.repeat(x, 64, axis=0)  # 393 kB: a copy stands well above the allocator's noise
    res = np.repeat(res, 64, axis=0)
    ro = readonly(x)
    _bits_equal(HALF_OPS[op](ro, w, res), HALF_OPS[op](x, w, res), f"{op}: read-only x")
    writeable = min(_peak_bytes(lambda: HALF_OPS[op](x, w, res)) for _ in range(2))
    read_only = min(_peak_bytes(lambda: HALF_OPS[op](ro, w, res)) for _ in range(2))
    assert read_only < writeable + x.nbytes // 2, f"{op}: {read_only} bytes at peak vs {writeable} (x: {x.nbytes})"


def _at_offset(shape, dtype, offset):
    """An empty array of ``shape`` whose data starts ``offset`` bytes past a 64-byte boundary."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.empty(nbytes + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    return buf[start : start + nbytes].view(dtype).reshape(shape)


def _channel_outputs(x, dy, w, b, y, dx):
    """y and dx of BatchNorm (channels first and last), GroupNorm and InstanceNorm, written into y, dx."""
    xl, dyl = (np.ascontiguousarray(np.moveaxis(a, 1, -1)) for a in (x, dy))
    yl, dxl = y.reshape(xl.shape), dx.reshape(xl.shape)
    res = []
    for op, args, xs, dys, kw in [
        ("batch_norm", (), x, dy, {}),
        ("batch_norm", (), xl, dyl, {"axis": -1}),
        ("group_norm", (2,), x, dy, {}),
        ("instance_norm", (), x, dy, {}),
    ]:
        ys, dxs = (y, dx) if xs is x else (yl, dxl)
        fwd, bwd = getattr(fastnorm, op + "_forward"), getattr(fastnorm, op + "_backward")
        _, mean, rstd = fwd(xs, *args, w, b, **kw, out=(ys, None, None))
        res.append(ys.copy())
        bwd(dys, xs, mean, rstd, *args, w, b, **kw, out=(dxs, None, None))
        res.append(dxs.copy())
    return res


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16])
def test_streamed_channel_outputs_do_not_depend_on_out_alignment(rng, threads, dtype):
    # Streamed (non-temporal) output passes store whole aligned vectors and do the unaligned head and tail
    # separately; every value must still come out as the unstreamed pass computes it, wherever out= sits.
    from ._channel import streaming_stores

    shape = (4, 6, 9, 7)
    pd = np.float32 if np.dtype(dtype).itemsize == 2 else dtype
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(6).astype(pd), rng.standard_normal(6).astype(pd)
    want = _channel_outputs(x, dy, w, b, np.empty(shape, dtype), np.empty(shape, dtype))
    with streaming_stores():
        for offset in range(0, 64, np.dtype(dtype).itemsize):
            got = _channel_outputs(x, dy, w, b, _at_offset(shape, dtype, offset), _at_offset(shape, dtype, offset))
            for g, r in zip(got, want):
                assert g.tobytes() == r.tobytes(), offset
