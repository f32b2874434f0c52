"""The benchmarks' bytes come from the op declarations (``OpSpec.moved``), and the rule itself."""

import numpy as np
import pytest

import fastnorm
from fastnorm._spec import REGISTRY
from fastnorm.bench._core import all_cases


def _smallest_declared_cases():
    """One quick case per (registered op, dtype): the one that moves the fewest bytes (float16 cases have the
    shapes and item size of the bfloat16 ones: left out)."""
    pick = {}
    for c in all_cases(quick=True):
        key = c.op, c.dtype
        if c.op in REGISTRY and c.dtype != "float16" and (key not in pick or c.nbytes < pick[key].nbytes):
            pick[key] = c
    return list(pick.values())


def test_every_bench_case_of_a_registered_op_is_declared():
    cases = [c for c in all_cases(quick=False) + all_cases(quick=True) if c.op in REGISTRY]
    assert len({c.op for c in cases}) >= 20
    assert [c.name for c in cases if c.args is None] == []


@pytest.mark.parametrize("case", _smallest_declared_cases(), ids=lambda c: c.name)
def test_bench_bytes_equal_the_declaration_on_the_real_inputs(case):
    # the case's bytes (computed from stand-ins of its inputs) are what the declaration says its actual call moves
    inputs = case.make_inputs(np.random.default_rng(0))
    spec, fn = REGISTRY[case.op], getattr(fastnorm, case.op)
    assert case.nbytes == spec.moved_by_call(fn, case.args(inputs))


def _moved(op, **kwargs):
    return REGISTRY[op].moved_by_call(getattr(fastnorm, op), kwargs)


def test_moved_reads_each_argument_once_and_writes_each_output_once():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7)).astype(np.float32)
    w = np.ones(7, np.float32)
    res = fastnorm.layer_norm_forward(x, w)
    assert _moved("layer_norm_forward", x=x, weight=w) == x.nbytes + w.nbytes + sum(a.nbytes for a in res)
    # absent optional inputs and outputs count nothing; 16-bit data with float32 statistics
    xh = x.astype(np.float16)
    res = fastnorm.rms_norm_forward(xh)
    assert res.rstd.dtype == np.float32
    assert _moved("rms_norm_forward", x=xh) == xh.nbytes + sum(a.nbytes for a in res)
    dx = fastnorm.layer_norm_backward(x, x, *fastnorm.layer_norm_forward(x)[1:])
    assert dx.dweight is None
    assert _moved("layer_norm_backward", dy=x, x=x, mean=res.rstd, rstd=res.rstd) == 3 * x.nbytes + 2 * 5 * 4


def test_moved_counts_an_argument_updated_in_place_twice():
    x = np.zeros((4, 3, 5), np.float32)
    c = np.zeros(3, np.float32)
    plain = _moved("batch_norm_forward", x=x)
    assert _moved("batch_norm_forward", x=x, running_mean=c, running_var=c) == plain + 2 * 2 * c.nbytes


def test_moved_uses_a_declared_rule():
    # Sinkhorn reads the cost matrix twice per iteration, whatever its outputs
    a, cost = np.full(4, 0.25), np.zeros((4, 4))
    one = _moved("sinkhorn", a=a, b=a, cost=cost, reg=0.1, max_iter=1)
    assert one == 2 * cost.nbytes
    assert _moved("sinkhorn", a=a, b=a, cost=cost, reg=0.1, max_iter=10) == 10 * one
