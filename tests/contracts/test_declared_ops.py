"""The declaration contracts of the registered ops outside the norm group (losses, transport, BatchNorm
stages), over the table ``tests/cases.py`` ``DECLARED_CASES``: a call's outputs are the declared ones (names,
shapes, dtypes, which exist), declared ``out=`` buffers are written in place and returned with the
allocating call's bits, a buffer of another dtype is a ValueError naming that output with nothing written,
and the op is exported and bound to its reference from the declaration. (The norm ops' contracts, which
include these, are in test_norm_contracts.py; each op's numerics are tested in its own file.)
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnorm
from fastnorm._spec import NORM, REGISTRY, ops

from ..cases import DECLARED_CASES, copy_kwargs
from ._devices import SIM

pytestmark = pytest.mark.skipif(SIM, reason="CPU contract: runs in the ordinary (non-simulator) process")

FLOATS = (np.float32, np.float64)


def _params():
    return [
        pytest.param(
            case,
            opts,
            dt,
            id=f"{case.op}-{'-'.join(f'{k}={v}' for k, v in opts.items()) or 'default'}-{np.dtype(dt).name}",
        )  # fmt: skip
        for case in DECLARED_CASES
        for opts in case.options
        for dt in FLOATS
    ]


def _outputs(spec, result) -> tuple:
    """The declared outputs of a result, in declared order (a result type may carry more, e.g. a count)."""
    if spec.result is None:
        return (result,)
    assert isinstance(result, spec.result)
    return tuple(getattr(result, name) for name in spec.output_names)


def _call(case, opts, dtype):
    spec = REGISTRY[case.op]
    kwargs = case.make(np.random.default_rng(7), dtype, **opts)
    fn = getattr(fastnorm, case.op)
    return spec, fn, kwargs, spec.layout_of_call(fn, kwargs)


def _out_arg(spec, bufs):
    return bufs[0] if spec.result is None else tuple(bufs)


@pytest.mark.parametrize(("case", "opts", "dtype"), _params())
def test_outputs_are_the_declared_ones(case, opts, dtype):
    spec, fn, kwargs, layout = _call(case, opts, dtype)
    got = _outputs(spec, fn(**copy_kwargs(kwargs)))
    assert len(got) == len(layout)
    for declared, a in zip(layout, got):
        if declared is None:
            assert a is None
            continue
        name, shape, dt = declared
        assert isinstance(a, np.ndarray), name
        assert (a.shape, a.dtype) == (shape, dt), name


@pytest.mark.parametrize(("case", "opts", "dtype"), _params())
def test_declared_out_buffers_are_written_and_returned(case, opts, dtype):
    spec, fn, kwargs, layout = _call(case, opts, dtype)
    want = _outputs(spec, fn(**copy_kwargs(kwargs)))
    bufs = [None if d is None else np.full(d[1], 7, d[2]) for d in layout]
    got = _outputs(spec, fn(**copy_kwargs(kwargs), out=_out_arg(spec, bufs)))
    for declared, buf, a, w in zip(layout, bufs, got, want):
        if declared is None:
            assert a is None
            continue
        assert a is buf, declared[0]
        np.testing.assert_array_equal(a, w, strict=True, err_msg=declared[0])


def _some_output(p) -> bool:
    return p.values[2] == np.float32 and p.values[1].get("want") != (False, False)


@pytest.mark.parametrize(("case", "opts", "dtype"), [p for p in _params() if _some_output(p)])
def test_out_buffer_of_another_dtype_names_the_output_and_writes_nothing(case, opts, dtype):
    spec, fn, kwargs, layout = _call(case, opts, dtype)
    bad = [i for i, d in enumerate(layout) if d is not None][-1]  # the last: every check before it passes
    other = np.float32 if layout[bad][2] == np.float64 else np.float64
    bufs = [None if d is None else np.full(d[1], 7, other if i == bad else d[2]) for i, d in enumerate(layout)]
    before = [None if b is None else b.copy() for b in bufs]
    given = copy_kwargs(kwargs)
    with pytest.raises(ValueError, match=f"out buffer for {layout[bad][0]} must have dtype"):
        fn(**given, out=_out_arg(spec, bufs))
    for b, b0 in zip(bufs, before):
        if b is not None:
            np.testing.assert_array_equal(b, b0)
    for k, v in kwargs.items():  # running statistics and every other input untouched
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(given[k], v, err_msg=k)


def test_every_declared_op_has_a_case_and_is_wired_from_its_declaration():
    """A newly declared op cannot skip these contracts; its exports and reference come from the declaration."""
    import importlib

    others = {s.name for s in REGISTRY.values() if s.group != NORM}
    assert {c.op for c in DECLARED_CASES} == others
    for spec in REGISTRY.values():
        if spec.group == NORM:
            continue
        module = importlib.import_module(f"fastnorm.{spec.family}")
        assert spec.name in module.__all__
        assert spec.name in fastnorm.__all__
        assert getattr(module, spec.name) is getattr(fastnorm, spec.name)
        assert spec.reference is getattr(fastnorm.reference, spec.name)
    assert fastnorm.reference.divergence.__all__ == fastnorm.divergence.__all__
    assert [s.name for s in ops(group=NORM)] == [s.name for s in REGISTRY.values() if s.group == NORM]


def test_declared_torch_ops_are_registered():
    """The custom op a declaration names exists (its fake is built from the declared outputs; opchecked in
    tests/test_torch_losses.py and tests/test_transport.py)."""
    torch = pytest.importorskip("torch")
    import fastnorm.torch  # noqa: F401  (registers the custom ops)

    named = [s for s in REGISTRY.values() if s.torch_op is not None]
    assert named
    for spec in named:
        assert hasattr(torch.ops.fastnorm, spec.torch_op), spec.name


@pytest.mark.parametrize("case", DECLARED_CASES, ids=lambda c: c.op)
def test_declared_half_support_is_the_functions(case):
    """``OpSpec.half`` (read by the torch layer) says whether the public function takes 16-bit data: with its
    float32 arrays in bfloat16 (the statistics kept in float32) it returns the declared outputs, or raises a
    TypeError naming the primary input."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    spec = REGISTRY[case.op]
    kwargs = case.make(np.random.default_rng(3), np.float32, **case.options[-1])

    def cast(k, v):
        if isinstance(v, np.ndarray) and v.dtype == np.float32 and k not in case.stat_inputs:
            return v.astype(ml_dtypes.bfloat16)
        return v

    half = {k: cast(k, v) for k, v in kwargs.items()}
    fn = getattr(fastnorm, case.op)
    if not spec.half:
        with pytest.raises(TypeError, match=rf"{case.op}: .*\b{spec.primary}\b"):
            fn(**half)
        return
    layout = spec.layout_of_call(fn, half)
    for declared, a in zip(layout, _outputs(spec, fn(**half)), strict=True):
        assert (a is None) == (declared is None)
        if a is not None:
            assert (a.shape, a.dtype) == declared[1:], declared[0]


@pytest.mark.parametrize("spec", [s for s in REGISTRY.values() if s.group != NORM], ids=lambda s: s.name)
def test_reference_defaults_are_the_functions(spec):
    """Each default of the public function (declared once, in its signature) is the reference's, and every
    declared argument is a parameter of both (the reference may omit out= and the fused-gradient options)."""
    import inspect

    fn = inspect.signature(getattr(fastnorm, spec.name)).parameters
    ref = inspect.signature(spec.reference).parameters
    assert set(spec.args_names) <= set(fn), spec.name
    for name, p in ref.items():
        assert name in fn, f"{spec.name}: the reference's {name} is not a parameter of the function"
        assert p.default == fn[name].default, f"{spec.name}: {name} defaults to {p.default!r} vs {fn[name].default!r}"
