"""The contracts every public norm op keeps, each written once over the op table of ``tests/cases.py``.

Reference parity (DESIGN.md's criterion: float32 error against the float64 reference at most twice the
float32 NumPy reference's plus a few ulps; float64 about 1e-10), ``out=`` written in place and returned,
every output element written, nothing written on error, non-contiguous and read-only inputs, thread-count
invariance, bitwise repeatability, dtype errors (TypeError) and shape errors (ValueError) naming the
argument. Parametrized over cases x device ("cpu"; "cuda" on a GPU or under NUMBA_ENABLE_CUDASIM=1).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import fastnorm

from .._util import assert_matches_reference
from ..cases import (
    OP_CASES,
    array_names,
    as_tuple,
    copy_kwargs,
    first_valid_shape,
    opts_id,
    shape_id,
)
from ._devices import DEVICES, SIM, put_kwargs

cpu_only = pytest.mark.skipif(SIM, reason="CPU contract: runs in the ordinary (non-simulator) process")

FLOATS = (np.float32, np.float64)

# Ops whose results depend on the thread count today, as (case, options id) -> reason (none).
NOT_THREAD_INVARIANT: dict[tuple[str, str], str] = {}


def _ids(*parts):
    return "-".join(p for p in parts if p)


def _grid(options="all", dtypes=FLOATS, shapes="all", devices=DEVICES, known=None):
    """(device, case, opts, shape, dtype) params over every legal combination; ``known(case, opts, shape,
    dtype)`` gives the reason of a known failure (the param is then xfail(strict=True))."""
    params = []
    for dev in devices:
        for case in OP_CASES:
            small = dev == "cuda"
            all_shapes = case.small_shapes if small else case.shapes
            every = options == "all" and not (small and shapes != "all")
            for k, opts in enumerate(case.options if every else case.options[:1]):
                chosen = all_shapes if shapes == "all" and not small else [first_valid_shape(case, opts, small)]
                for shape in chosen:
                    if not case.valid(shape, opts):
                        continue
                    # the simulator runs one Python thread per CUDA thread: float64 for the first options only
                    for dt in dtypes if not small or k == 0 else dtypes[:1]:
                        ident = _ids(dev, case.name, opts_id(opts), shape_id(shape), np.dtype(dt).name)
                        reason = known and known(dev, case, opts, shape, dt)
                        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                        params.append(pytest.param(dev, case, opts, shape, dt, marks=marks, id=ident))
    return params


def _call(dev, fn, kwargs, inout=(), out=None):
    """Run a public op on ``dev``; returns (outputs on the host, running stats after, device kwargs, result)."""
    dk = put_kwargs(dev, kwargs)
    res = fn(**dk) if out is None else fn(**dk, out=out)
    got = [dev.get(a) for a in as_tuple(res)]
    return got + [dev.get(dk[n]) for n in inout], dk, res


def _ref(fn, kwargs, inout=(), dtype=None):
    k = copy_kwargs(kwargs, dtype)
    return list(as_tuple(fn(**k))) + [k[n] for n in inout]


def _perturbed(kwargs, dtype):
    """``kwargs`` in float64 with every float array moved by up to one rounding of ``dtype`` (relative)."""
    rng, eps = np.random.default_rng(11), np.finfo(dtype).eps
    k = copy_kwargs(kwargs, np.float64)
    for n, a in k.items():
        if isinstance(a, np.ndarray) and a.dtype == np.float64:
            k[n] = a * (1 + eps * rng.uniform(-1, 1, a.shape))
    return k


def _check_parity(dev, fn, ref_fn, kwargs, names, inout, dtype):
    got, _, _ = _call(dev, fn, copy_kwargs(kwargs), inout)
    ref64 = _ref(ref_fn, kwargs, inout, np.float64)
    lowp = _ref(ref_fn, kwargs, inout) if dtype == np.float32 else [None] * len(ref64)
    # The float32 NumPy reference can be lucky on an ill-conditioned output (a gradient that cancels to ~0):
    # what rounding the inputs to float32 alone does to the float64 result is an error any float32 kernel may
    # have, whatever its instruction set, so the comparator is the larger of the two.
    pert = _ref(ref_fn, _perturbed(kwargs, dtype), inout, np.float64) if dtype == np.float32 else lowp
    names = list(names) + list(inout)
    assert len(got) == len(ref64) == len(names)
    for g, r, lo, pe, name in zip(got, ref64, lowp, pert, names, strict=True):
        if g is not None:
            assert g.dtype == dtype, f"{name}: dtype {g.dtype}"
        if lo is not None and pe is not None and r is not None:
            with np.errstate(invalid="ignore"):
                far = np.abs(np.asarray(pe, np.float64) - r) > np.abs(np.asarray(lo, np.float64) - r)
            lo = np.where(far, pe, lo)
        assert_matches_reference(g, r, lo, name=name)


# --------------------------------------------------------------------------------------- reference parity
@pytest.mark.parametrize(("device", "case", "opts", "shape", "dtype"), _grid(), indirect=["device"])
def test_reference_parity(device, case, opts, shape, dtype):
    inp = case.make(np.random.default_rng(7), shape, dtype, **opts)
    with np.errstate(all="ignore"):  # the references' own 0/0 on empty inputs
        _check_parity(device, case.fwd, case.ref_fwd, inp.fwd, case.fwd_names, inp.inout, dtype)
        _check_parity(device, case.bwd, case.ref_bwd, inp.bwd, case.bwd_names, (), dtype)


@cpu_only
@pytest.mark.parametrize(
    ("device", "case", "opts", "shape", "dtype"),
    _grid(dtypes=(np.float32,), shapes="one", devices=["cpu"]),
    indirect=["device"],
)
def test_reference_parity_one_thread(device, case, opts, shape, dtype):
    old = fastnorm.get_num_threads()
    fastnorm.set_num_threads(1)
    try:
        test_reference_parity(device, case, opts, shape, dtype)
    finally:
        fastnorm.set_num_threads(old)


# --------------------------------------------------------------------------------------- out= buffers
def _out_buffers(dev, outputs, fill):
    return tuple(None if o is None else dev.full(o.shape, o.dtype, fill) for o in outputs)


@pytest.mark.parametrize(("device", "case", "opts", "shape", "dtype"), _grid(shapes="one"), indirect=["device"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_out_is_written_in_place_and_returned(device, case, opts, shape, dtype, direction):
    inp = case.make(np.random.default_rng(3), shape, dtype, **opts)
    fn, kwargs = (case.fwd, inp.fwd) if direction == "forward" else (case.bwd, inp.bwd)
    inout = inp.inout if direction == "forward" else ()
    want, _, _ = _call(device, fn, copy_kwargs(kwargs), inout)
    n_out = len(want) - len(inout)
    # NaN-filled buffers: an element the kernel forgets to write stays NaN and fails the comparison.
    out = _out_buffers(device, want[:n_out], np.nan)
    got, _, res = _call(device, fn, copy_kwargs(kwargs), inout, out=out)
    for r, o in zip(as_tuple(res), out, strict=True):
        assert r is o, "the op must return the out= buffers themselves"
    if device.name == "cpu":
        for r, o in zip(as_tuple(res), out, strict=True):
            assert o is None or np.shares_memory(r, o)
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
        else:
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_out_tuple_may_hold_none_entries(device, case):
    opts = case.options[0]
    shape = first_valid_shape(case, opts, device.small)
    inp = case.make(np.random.default_rng(4), shape, np.float64, **opts)
    want, _, _ = _call(device, case.fwd, copy_kwargs(inp.fwd), inp.inout)
    n_out = len(case.fwd_names)
    out = list(_out_buffers(device, want[:n_out], 0.0))
    out[0] = None  # allocated by the op
    got, _, res = _call(device, case.fwd, copy_kwargs(inp.fwd), inp.inout, out=tuple(out))
    for r, o in zip(as_tuple(res)[1:], out[1:], strict=True):
        assert r is o
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


# --------------------------------------------------------------------------------------- empty dims
def _empty_params():
    """Every case on shapes with an empty dimension (legal ones only)."""
    params = []
    known: dict = {}
    extra = {
        "group_norm": [(2, 6, 0), (0, 6, 3)],
        "instance_norm": [(2, 3, 0), (0, 3, 4)],
        "batch_norm": [(0, 3, 4), (0, 3)],
        "batch_norm_channels_last": [(0, 3), (0, 2, 3)],
        "layer_norm": [(0, 8), (0, 3, 5)],
        "rms_norm": [(0, 8), (0, 3, 5)],
        "add_layer_norm": [(0, 8), (0, 3, 5)],
        "add_rms_norm": [(0, 8), (0, 3, 5)],
        "local_response_norm": [(0, 3, 4), (2, 0, 4), (2, 3, 0), (2, 3, 0, 5)],
        "cosine_linear": [(0, 3, 2), (3, 4, 0)],
    }
    for dev in DEVICES:
        for case in OP_CASES:
            for shape in extra.get(case.name, []):
                for opts in case.options if dev == "cpu" else case.options[:1]:
                    if not _rows_ok(case, opts, shape):
                        continue
                    if case.name == "instance_norm" and shape == (2, 3, 0) and opts["mode"] != "eval":
                        continue  # use_input_stats needs more than 1 spatial value: a ValueError
                    if case.name.startswith("batch_norm") and opts["mode"] != "eval":
                        continue  # training on an empty batch: issue 12 "drop-in fidelity" (torch allows it)
                    if case.name == "instance_norm" and shape[0] == 0 and opts["mode"] == "train":
                        continue  # an empty batch cannot update the running statistics
                    if opts is not case.options[0] and not case.name.endswith(("norm", "last")):
                        continue
                    reason = known.get((case.name, shape_id(shape)))
                    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                    ident = _ids(dev, case.name, opts_id(opts), shape_id(shape))
                    params.append(pytest.param(dev, case, opts, shape, marks=marks, id=ident))
    return params


def _rows_ok(case, opts, shape):
    return not case.name.endswith("rms_norm") and not case.name.startswith("layer_norm") or case.valid(shape, opts)


@pytest.mark.parametrize(("device", "case", "opts", "shape"), _empty_params(), indirect=["device"])
def test_empty_dims_give_fully_written_outputs(device, case, opts, shape):
    """Every output of an op on an empty dimension has the right shape and is fully written: the same
    values whether the out= buffers started as NaN or as 0 (so nothing is left uninitialized)."""
    inp = case.make(np.random.default_rng(5), shape, np.float64, **opts)
    want, _, _ = _call(device, case.fwd, copy_kwargs(inp.fwd), inp.inout)
    n_out = len(case.fwd_names)
    runs = []
    for fill in (np.nan, 0.0):
        out = _out_buffers(device, want[:n_out], fill)
        got, _, _ = _call(device, case.fwd, copy_kwargs(inp.fwd), inp.inout, out=out)
        runs.append(got)
    for a, b, name in zip(*runs, list(case.fwd_names) + list(inp.inout), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=f"{name} is not fully written")


# --------------------------------------------------------------------------------------- layouts
def _transposed(a):
    """Same values and shape, Fortran order (not C-contiguous for ndim >= 2 with two sizes > 1)."""
    return np.array(a, order="F", copy=True)


def _reversed(a):
    """Same values and shape, negative strides along axis 0."""
    if a.ndim == 0:
        return a
    return np.ascontiguousarray(a[::-1])[::-1]


LAYOUTS = {"transposed": _transposed, "strided": None, "reversed": _reversed}


def _layout_params():
    params = []
    for dev in DEVICES:
        for case in OP_CASES:
            for layout in LAYOUTS if dev == "cpu" else ["strided"]:
                for direction in ("forward", "backward"):
                    ident = _ids(dev, case.name, layout, direction)
                    params.append(pytest.param(dev, case, layout, direction, id=ident))
    return params


def _relayout(dev, kwargs, skip, layout):
    out = {}
    for k, v in kwargs.items():
        if not isinstance(v, np.ndarray) or k in skip:
            out[k] = dev.put(v)
        elif layout == "strided":
            out[k] = dev.strided(v)
        else:
            out[k] = LAYOUTS[layout](v)
    return out


@pytest.mark.parametrize(("device", "case", "layout", "direction"), _layout_params(), indirect=["device"])
def test_non_contiguous_inputs_give_the_same_result(device, case, layout, direction):
    opts = case.options[0]
    shape = first_valid_shape(case, opts, device.small)
    inp = case.make(np.random.default_rng(6), shape, np.float32, **opts)
    fn, kwargs = (case.fwd, inp.fwd) if direction == "forward" else (case.bwd, inp.bwd)
    inout = inp.inout if direction == "forward" else ()
    want, _, _ = _call(device, fn, copy_kwargs(kwargs), inout)
    dk = _relayout(device, copy_kwargs(kwargs), inout, layout)
    got = [device.get(a) for a in as_tuple(fn(**dk))] + [device.get(dk[n]) for n in inout]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@cpu_only
@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_read_only_inputs_work(case, direction):
    opts = case.options[0]
    inp = case.make(np.random.default_rng(8), first_valid_shape(case, opts), np.float64, **opts)
    fn, kwargs = (case.fwd, inp.fwd) if direction == "forward" else (case.bwd, inp.bwd)
    inout = inp.inout if direction == "forward" else ()
    want = list(as_tuple(fn(**copy_kwargs(kwargs))))
    ro = copy_kwargs(kwargs)
    for k in array_names(ro):
        if k not in inout:
            ro[k].flags.writeable = False
    for g, w in zip(as_tuple(fn(**ro)), want, strict=True):
        np.testing.assert_array_equal(g, w)


# --------------------------------------------------------------------------------------- determinism
# Shapes checked for thread-count invariance besides _bigger_shape: channels-last BatchNorm with few rows
# and many channels (its threads split the channels) and with more rows than one statistics chunk.
EXTRA_THREAD_SHAPES = {"batch_norm_channels_last": ((4, 3, 1375), (2, 8200), (1100, 15))}


def _thread_params():
    params = []
    for case in OP_CASES:
        for opts in case.options:
            reason = NOT_THREAD_INVARIANT.get((case.name, opts_id(opts)))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            for shape in (_bigger_shape(case, opts), *EXTRA_THREAD_SHAPES.get(case.name, ())):
                pid = _ids(case.name, opts_id(opts)) + ("" if shape == _bigger_shape(case, opts) else f"-{shape}")
                params.append(pytest.param(case, opts, shape, marks=marks, id=pid))
    return params


def _bigger_shape(case, opts):
    """The largest legal shape of the case up to 16500 elements: enough work for two threads to split it
    (the known thread-count dependences above are recorded for these shapes)."""
    legal = [s for s in case.shapes if case.valid(s, opts) and math.prod(s) <= 16500]
    return max(legal, key=math.prod)


@cpu_only
@pytest.mark.parametrize(("case", "opts", "shape"), _thread_params())
def test_thread_count_invariance(case, opts, shape):
    """1 and 2 threads give bitwise equal outputs, gradients and running statistics."""
    inp = case.make(np.random.default_rng(9), shape, np.float32, **opts)
    old = fastnorm.get_num_threads()
    runs = []
    try:
        for nt in (1, 2):
            fastnorm.set_num_threads(nt)
            f = _ref(case.fwd, inp.fwd, inp.inout)
            b = _ref(case.bwd, inp.bwd)
            runs.append(f + b)
    finally:
        fastnorm.set_num_threads(old)
    names = list(case.fwd_names) + list(inp.inout) + list(case.bwd_names)
    for a, b, name in zip(*runs, names, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize(
    ("device", "case", "opts", "shape", "dtype"), _grid(shapes="one", dtypes=(np.float32,)), indirect=["device"]
)
def test_bitwise_repeatable(device, case, opts, shape, dtype):
    if device.name == "cpu":
        shape = _bigger_shape(case, opts)
    inp = case.make(np.random.default_rng(10), shape, dtype, **opts)
    runs = []
    for _ in range(2):
        f, _, _ = _call(device, case.fwd, copy_kwargs(inp.fwd), inp.inout)
        b, _, _ = _call(device, case.bwd, copy_kwargs(inp.bwd))
        runs.append(f + b)
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------- bad input
def _bad_dtype_params():
    """Each array argument of each op in a dtype the kernels cannot take: a TypeError naming it."""
    params = []
    for dev in DEVICES:
        bad = ["int32", "complex64"]
        for case in OP_CASES:
            opts = case.options[0]
            inp = case.make(np.random.default_rng(0), first_valid_shape(case, opts, dev == "cuda"), np.float32, **opts)
            for direction, kwargs in (("forward", inp.fwd), ("backward", inp.bwd)):
                for arg in array_names(kwargs):
                    for dt in bad:
                        if dt == "float16" and arg in ("x", "v"):
                            continue  # 16-bit data is taken on the CPU too (issue 13); beside float32 x it is not
                        ident = _ids(dev, case.name, direction, arg, dt)
                        params.append(pytest.param(dev, case, direction, arg, dt, id=ident))
    return params


def _expect_error_nothing_written(dev, case, direction, mutate, exc, names):
    """Call with valid out= buffers and running stats and one bad argument (``mutate`` edits the kwargs):
    ``exc`` is raised, its message names the op and every name in ``names``, nothing is written."""
    opts = case.options[0]
    inp = case.make(np.random.default_rng(11), first_valid_shape(case, opts, dev.small), np.float32, **opts)
    fn, kwargs = (case.fwd, inp.fwd) if direction == "forward" else (case.bwd, inp.bwd)
    inout = inp.inout if direction == "forward" else ()
    with np.errstate(all="ignore"):  # the reference's outputs give the out= buffers' shapes and dtypes
        want = _ref(case.ref_fwd if direction == "forward" else case.ref_bwd, kwargs)
    n_out = len(case.fwd_names if direction == "forward" else case.bwd_names)
    out = list(_out_buffers(dev, want[:n_out], -7.0))
    kw = copy_kwargs(kwargs)
    out = mutate(kw, out)
    dk = put_kwargs(dev, kw)
    before = {k: dev.get(v).copy() for k, v in dk.items() if v is not None and hasattr(v, "shape")}
    out_before = [None if o is None or not hasattr(o, "shape") else dev.get(o).copy() for o in out]
    with pytest.raises(exc) as err:
        fn(**dk, out=tuple(out))
    msg = str(err.value)
    assert msg.startswith(f"{fn.__name__}: "), msg
    for name in names:
        assert re.search(rf"\b{re.escape(name)}\b", msg), f"{name!r} not named in: {msg}"
    for k, v in before.items():
        np.testing.assert_array_equal(dev.get(dk[k]), v, err_msg=f"{k} was written")
    for o, b in zip(out, out_before, strict=True):
        if b is not None:
            np.testing.assert_array_equal(dev.get(o), b, err_msg="an out= buffer was written")
    assert set(inout) <= set(before)


@pytest.mark.parametrize(("device", "case", "direction", "arg", "bad_dtype"), _bad_dtype_params(), indirect=["device"])
def test_dtype_error_names_the_argument(device, case, direction, arg, bad_dtype):
    def mutate(kw, out):
        kw[arg] = np.asarray(kw[arg] * 3).astype(bad_dtype)
        return out

    _expect_error_nothing_written(device, case, direction, mutate, TypeError, [arg])


def _shape_params():
    params = []
    for dev in DEVICES:
        for case in OP_CASES:
            opts = case.options[0]
            inp = case.make(np.random.default_rng(0), first_valid_shape(case, opts, dev == "cuda"), np.float32, **opts)
            prim = case.primary
            for direction, kwargs in (("forward", inp.fwd), ("backward", inp.bwd)):
                for arg in array_names(kwargs):
                    if arg in (prim, case.bwd_primary):
                        continue  # it sets every other shape; see test_bad_primary_shape
                    for how in ("extra_dim", "shorter"):
                        params.append(
                            pytest.param(dev, case, direction, arg, how, id=_ids(dev, case.name, direction, arg, how))
                        )
                params.append(
                    pytest.param(
                        dev, case, direction, "out", "out_shape", id=_ids(dev, case.name, direction, "out", "out_shape")
                    )
                )
                params.append(
                    pytest.param(
                        dev,
                        case,
                        direction,
                        "out",
                        "out_length",
                        id=_ids(dev, case.name, direction, "out", "out_length"),
                    )
                )
    return params


def _reshape_bad(a, how):
    if how == "extra_dim":
        return a.reshape(a.shape + (1,)) if a.ndim else a.reshape(1, 1)
    flat = a.reshape(-1)
    if a.ndim <= 1:
        return np.concatenate([flat, flat[:1]]) if flat.size else np.zeros(1, a.dtype)
    return a[..., :-1] if a.shape[-1] > 1 else np.concatenate([a, a], axis=-1)


@pytest.mark.parametrize(("device", "case", "direction", "arg", "how"), _shape_params(), indirect=["device"])
def test_shape_error_names_the_argument(device, case, direction, arg, how):
    names = [arg]

    def mutate(kw, out):
        if how == "out_length":
            return [*out, None]
        if how == "out_shape":
            last = max(i for i, o in enumerate(out) if o is not None)
            host = device.get(out[last])
            out[last] = device.put(np.zeros(host.shape + (2,), host.dtype))
            names.append((case.fwd_names if direction == "forward" else case.bwd_names)[last])
            return out
        kw[arg] = np.ascontiguousarray(_reshape_bad(kw[arg], how))
        return out

    _expect_error_nothing_written(device, case, direction, mutate, ValueError, names)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("case", [c for c in OP_CASES if c.bad_primary_shapes], ids=lambda c: c.name)
def test_bad_primary_shape(device, case):
    opts = case.options[0]
    inp = case.make(np.random.default_rng(12), first_valid_shape(case, opts, device.small), np.float32, **opts)
    for shape in case.bad_primary_shapes:
        kw = put_kwargs(device, {**copy_kwargs(inp.fwd), case.primary: np.ones(shape, np.float32)})
        with pytest.raises(ValueError, match=rf"^{case.fwd.__name__}: .*\b{case.primary}\b"):
            case.fwd(**kw)


# Options that are never legal: a TypeError (wrong type) or ValueError (value) naming the option.
BAD_OPTIONS = {
    "layer_norm": [("eps", "1e-5", TypeError), ("normalized_ndim", 0, ValueError), ("normalized_ndim", 1.0, TypeError)],
    "rms_norm": [("eps", "1e-5", TypeError), ("normalized_ndim", 0, ValueError), ("normalized_ndim", 9, ValueError)],
    "add_layer_norm": [
        ("eps", "1e-5", TypeError),
        ("normalized_ndim", 0, ValueError),
        ("normalized_ndim", 1.0, TypeError),
        ("normalized_ndim", 9, ValueError),
    ],
    "add_rms_norm": [("eps", "1e-5", TypeError), ("normalized_ndim", 9, ValueError)],
    "batch_norm": [
        ("eps", "1e-5", TypeError),
        ("eps", 0.0, ValueError),  # torch: eps > 0 in training
        ("eps", -1e-5, ValueError),
        ("momentum", "0.1", TypeError),
        ("momentum", None, TypeError),
        ("training", "False", TypeError),
        ("training", None, TypeError),
        ("axis", 2, ValueError),
        ("axis", 0, ValueError),
        ("axis", 1.0, TypeError),
    ],
    "batch_norm_channels_last": [("eps", None, TypeError), ("axis", -2, ValueError)],
    "instance_norm": [
        ("eps", "1e-5", TypeError),
        ("momentum", None, TypeError),
        ("use_input_stats", "False", TypeError),
    ],
    "group_norm": [
        ("num_groups", 0, ValueError),
        ("num_groups", 7, ValueError),
        ("num_groups", 1.5, TypeError),
        ("num_groups", 3.0, TypeError),  # an integral float too
        ("eps", "1e-5", TypeError),
    ],
    "local_response_norm": [
        ("size", 0, ValueError),
        ("size", -2, ValueError),
        ("size", 2.5, TypeError),
        ("size", 2.0, TypeError),
        ("alpha", "1", TypeError),
        ("alpha", float("nan"), ValueError),
        ("beta", float("inf"), ValueError),
        ("k", 0.0, ValueError),
        ("k", -1.0, ValueError),
    ],
    "weight_norm_dim0": [("dim", 99, ValueError), ("dim", 0.5, TypeError)],
    "weight_norm_dim_other": [("dim", -99, ValueError)],
    "weight_norm_dim_none": [("dim", "all", TypeError)],
    "cosine_linear": [
        ("eps", "1e-8", TypeError),
        ("eps", 0.0, ValueError),
        ("eps", -1e-8, ValueError),
        ("eps", float("nan"), ValueError),
    ],
}


def _option_params():
    params = []
    for dev in DEVICES:
        for case in OP_CASES:
            for arg, value, exc in BAD_OPTIONS[case.name]:
                for direction in ("forward", "backward"):
                    opts = case.options[0]
                    inp = case.make(np.random.default_rng(0), first_valid_shape(case, opts), np.float32, **opts)
                    if arg not in (inp.fwd if direction == "forward" else inp.bwd):
                        continue
                    ident = _ids(dev, case.name, direction, f"{arg}={value!r}")
                    params.append(pytest.param(dev, case, direction, arg, value, exc, id=ident))
    return params


@pytest.mark.parametrize(("device", "case", "direction", "arg", "value", "exc"), _option_params(), indirect=["device"])
def test_bad_option_names_it_and_writes_nothing(device, case, direction, arg, value, exc):
    def mutate(kw, out):
        kw[arg] = value
        return out

    _expect_error_nothing_written(device, case, direction, mutate, exc, [arg])


def test_every_registered_op_has_a_contract_case():
    """The op list of this suite is the registry's: a newly declared op cannot skip the contracts."""
    from fastnorm._spec import NORM, REGISTRY, ops

    covered = {s for case in OP_CASES for s in (case.fwd.__name__, case.bwd.__name__)}
    norms = {s.name for s in ops(group=NORM)}
    assert covered == norms, f"ops without a contract case in tests/cases.py: {norms - covered}"
    for case in OP_CASES:  # each case runs the declared public function and reference
        for fn, ref in ((case.fwd, case.ref_fwd), (case.bwd, case.ref_bwd)):
            assert getattr(fastnorm, fn.__name__) is fn
            assert REGISTRY[fn.__name__].reference is ref
