"""Memory layouts of every norm op's arrays: unaligned, byte-swapped, read-only and strided inputs work
(copied in when a kernel cannot read them), while ``out=`` buffers and running statistics a kernel would
write in place are refused with a ValueError naming the argument and the real reason, before anything is
written.
"""

from __future__ import annotations

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


def _cases(dtype):
    """(op name, function, array arguments, other arguments, output names)."""
    rng = np.random.default_rng(7)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def pos(*shape):
        return (rng.random(shape) + 0.5).astype(dtype)

    x3, w6, b6 = r(4, 6, 5), r(6), r(6)
    ln = fastnorm.layer_norm_forward(x3, r(5), r(5))
    rms = fastnorm.rms_norm_forward(x3)
    rm, rv = r(6), pos(6)
    bn = fastnorm.batch_norm_forward(x3, w6, b6)
    inn = fastnorm.instance_norm_forward(x3, w6, b6)
    gn = fastnorm.group_norm_forward(x3, 3, w6, b6)
    lrn = fastnorm.local_response_norm_forward(x3, 3)
    v, g = r(6, 5), pos(6, 1)
    wn = fastnorm.weight_norm_forward(v, g)
    xc, wc = r(4, 5), r(3, 5)
    cl = fastnorm.cosine_linear_forward(xc, wc)
    w5, b5 = r(5), r(5)
    return [
        ("layer_norm_forward", fastnorm.layer_norm_forward, dict(x=x3, weight=w5, bias=b5), {}, ln._fields),
        (
            "layer_norm_backward",
            fastnorm.layer_norm_backward,
            dict(dy=r(4, 6, 5), x=x3, mean=ln.mean, rstd=ln.rstd, weight=w5, bias=b5),
            {},
            ("dx", "dweight", "dbias"),
        ),
        ("rms_norm_forward", fastnorm.rms_norm_forward, dict(x=x3, weight=w5), {}, rms._fields),
        (
            "rms_norm_backward",
            fastnorm.rms_norm_backward,
            dict(dy=r(4, 6, 5), x=x3, rstd=rms.rstd, weight=w5),
            {},
            ("dx", "dweight"),
        ),
        (
            "batch_norm_forward",
            fastnorm.batch_norm_forward,
            dict(x=x3, weight=w6, bias=b6, running_mean=rm, running_var=rv),
            dict(training=False),
            bn._fields,
        ),
        (
            "batch_norm_backward",
            fastnorm.batch_norm_backward,
            dict(dy=r(4, 6, 5), x=x3, mean=bn.mean, rstd=bn.rstd, weight=w6, bias=b6),
            {},
            ("dx", "dweight", "dbias"),
        ),
        (
            "instance_norm_forward",
            fastnorm.instance_norm_forward,
            dict(x=x3, weight=w6, bias=b6, running_mean=rm, running_var=rv),
            dict(use_input_stats=False),
            inn._fields,
        ),
        (
            "instance_norm_backward",
            fastnorm.instance_norm_backward,
            dict(dy=r(4, 6, 5), x=x3, mean=inn.mean, rstd=inn.rstd, weight=w6, bias=b6),
            {},
            ("dx", "dweight", "dbias"),
        ),
        (
            "group_norm_forward",
            fastnorm.group_norm_forward,
            dict(x=x3, weight=w6, bias=b6),
            dict(num_groups=3),
            gn._fields,
        ),
        (
            "group_norm_backward",
            fastnorm.group_norm_backward,
            dict(dy=r(4, 6, 5), x=x3, mean=gn.mean, rstd=gn.rstd, weight=w6, bias=b6),
            dict(num_groups=3),
            ("dx", "dweight", "dbias"),
        ),
        ("local_response_norm_forward", fastnorm.local_response_norm_forward, dict(x=x3), dict(size=3), lrn._fields),
        (
            "local_response_norm_backward",
            fastnorm.local_response_norm_backward,
            dict(dy=r(4, 6, 5), x=x3, y=lrn.y, scale=lrn.scale),
            dict(size=3),
            ("dx",),
        ),
        ("weight_norm_forward", fastnorm.weight_norm_forward, dict(v=v, g=g), {}, wn._fields),
        (
            "weight_norm_backward",
            fastnorm.weight_norm_backward,
            dict(dw=r(6, 5), v=v, g=g, norm=wn.norm),
            {},
            ("dv", "dg"),
        ),
        ("cosine_linear_forward", fastnorm.cosine_linear_forward, dict(x=xc, w=wc), {}, cl._fields),
        (
            "cosine_linear_backward",
            fastnorm.cosine_linear_backward,
            dict(dy=r(4, 3), x=xc, w=wc, y=cl.y, x_norm=cl.x_norm, w_norm=cl.w_norm),
            {},
            ("dx", "dw"),
        ),
    ]


def _as_tuple(r):
    return tuple(r) if isinstance(r, tuple) else (r,)


def _equal(got, ref, what):
    for a, b in zip(_as_tuple(got), _as_tuple(ref), strict=True):
        if b is None:
            assert a is None, what
            continue
        assert a.dtype == b.dtype and a.dtype.isnative, what
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
    assert y.dtype == np.float32 and y.dtype.isnative


@pytest.mark.parametrize(
    "make, reason",
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
    "make, reason",
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
