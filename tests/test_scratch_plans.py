"""Scratch plans in the op declarations (``OpSpec.scratch``): named as the kernels' parameters, and what the
public functions allocate and pass."""

import inspect

import ml_dtypes
import numpy as np
import pytest

import fastnorm
from fastnorm._kernels import cpu as K
from fastnorm._spec import REGISTRY, Scratch
from fastnorm.norms.channel_norm import _bn_row_chunks

PLANNED = [s for s in REGISTRY.values() if s.scratch]


def test_the_channel_lrn_and_stage_ops_declare_their_scratch():
    names = {s.name for s in PLANNED}
    assert names >= {f"{op}_{d}" for op in ("batch_norm", "instance_norm", "local_response_norm") for d in
                     ("forward", "backward")} | {"group_norm_backward"}  # fmt: skip
    stages = ("stats", "elemt", "backward_reduce", "backward_elemt")
    assert names >= {f"batch_norm_{s}" for s in stages} | {"sinkhorn"}


@pytest.mark.parametrize("spec", PLANNED, ids=lambda s: s.name)
def test_declared_scratch_is_the_kernels_scratch_parameters_in_order(spec):
    params = list(inspect.signature(getattr(K, spec.name)).parameters)
    names = [s.name for s in spec.scratch]
    assert [p for p in params if p in names] == names


def _record(monkeypatch, op):
    """Replace the CPU kernel of ``op`` by a recorder that runs it: the list of its calls' arguments by name."""
    real, calls = getattr(K, op), []
    params = list(inspect.signature(real).parameters)

    def kernel(*a):
        calls.append(dict(zip(params, a, strict=True)))
        return real(*a)

    monkeypatch.setattr(K, op, kernel)
    return calls


def _x(shape, dtype=np.float32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def _channel_calls(op, x, **kw):
    """(forward args, backward args) of a channel op's calls on x."""
    fwd, bwd = getattr(fastnorm, f"{op}_forward"), getattr(fastnorm, f"{op}_backward")
    axis = {"axis": kw.pop("axis")} if "axis" in kw else {}
    res = fwd(x, **axis, **kw)
    bkw = {k: v for k, v in kw.items() if k in ("num_groups", "training", "use_input_stats")}
    bwd(x, x, res.mean, res.rstd, **axis, **bkw)


# (op, x shape, options, {scratch name: (shape forward, shape backward)}, with N, C, L of the (N, C, L) view
_CASES = [
    ("batch_norm", (4, 3, 5), {}, {"work": ((12, 2), (15, 2)), "coef": ((4, 11), (4, 11))}),
    ("batch_norm", (2048, 6), {"axis": -1}, {"work": ((4, 30), (5, 12)), "coef": ((4, 14), (4, 14))}),
    ("instance_norm", (2, 3, 4, 5), {}, {"work": ((6, 2), (6, 2))}),
    ("group_norm", (2, 6, 7), {"num_groups": 3}, {"work": (None, (12, 2))}),
]


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize(("op", "shape", "opts", "expect"), _CASES, ids=[c[0] + str(c[1]) for c in _CASES])
def test_channel_kernels_get_the_planned_scratch(monkeypatch, op, shape, opts, expect, dtype):
    fwd, bwd = _record(monkeypatch, f"{op}_forward"), _record(monkeypatch, f"{op}_backward")
    _channel_calls(op, _x(shape, dtype), **opts)
    stat = np.float32
    for name, (f, b) in expect.items():
        want = stat if name == "coef" else np.float64
        for calls, shp in ((fwd, f), (bwd, b)):
            if shp is not None:
                assert calls[0][name].shape == shp, (name, calls[0][name].shape)
                assert calls[0][name].dtype == want


def test_batch_norm_eval_needs_one_pair(monkeypatch):
    calls = _record(monkeypatch, "batch_norm_forward")
    x, c = _x((4, 3, 5)), np.ones(3, np.float32)
    fastnorm.batch_norm_forward(x, running_mean=c * 0, running_var=c, training=False)
    assert calls[0]["work"].shape == (1, 2)
    assert _bn_row_chunks(2048) == 4  # the channels-last case above: 2048 rows in chunks of 512


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_stages_get_the_planned_scratch(monkeypatch, channels_last):
    calls = {
        op: _record(monkeypatch, f"batch_norm_{op}") for op in ("stats", "elemt", "backward_reduce", "backward_elemt")
    }
    x = _x((5, 4) if channels_last else (3, 4, 6), ml_dtypes.bfloat16)
    axis = -1 if channels_last else 1
    mean, m2, count = fastnorm.batch_norm_stats(x, axis=axis)
    invstd = (1 / np.sqrt(m2 / count + 1e-5)).astype(np.float32)
    fastnorm.batch_norm_elemt(x, mean, invstd, axis=axis)
    r = fastnorm.batch_norm_backward_reduce(x, x, mean, invstd, axis=axis)
    fastnorm.batch_norm_backward_elemt(x, x, mean, invstd, None, r.sum_dy, r.sum_dy_xmu, count=count, axis=axis)
    for op, per_row in (("stats", 5), ("backward_reduce", 2)):
        args = calls[op][0]
        want = (min(args["n_threads"], 5), per_row * 4) if channels_last else (12, 2)
        assert args["work"].shape == want
        assert args["work"].dtype == np.float64
    for op in ("elemt", "backward_elemt"):
        assert calls[op][0]["coef"].shape == (4, 4)
        assert calls[op][0]["coef"].dtype == np.float32  # the statistic dtype of bfloat16 data


@pytest.mark.parametrize("size", [1, 2, 5, 9])
def test_lrn_kernels_get_the_planned_scratch(monkeypatch, size):
    fwd, bwd = _record(monkeypatch, "local_response_norm_forward"), _record(monkeypatch, "local_response_norm_backward")
    x = _x((2, 4, 6))
    y, scale = fastnorm.local_response_norm_forward(x, size)
    fastnorm.local_response_norm_backward(x, x, y, scale, size)
    lo, hi = min(size // 2, 3), min((size - 1) // 2, 3)  # the window clamped to the 4 channels
    for calls in (fwd, bwd):
        s = calls[0]["scratch"]
        assert s.dtype == np.float64
        assert s.shape == (calls[0]["n_threads"], K.lrn_scratch_len(lo, hi))


def test_sinkhorn_gets_the_planned_scratch(monkeypatch):
    calls = _record(monkeypatch, "sinkhorn")
    a, b = np.full((2, 3), 1 / 3, np.float32), np.full((2, 5), 0.2, np.float32)
    fastnorm.sinkhorn(a, b, np.random.default_rng(0).random((2, 3, 5)).astype(np.float32), 0.5, max_iter=3)
    args = calls[0]
    assert (args["cost_t"].shape, args["cost_t"].dtype) == ((2, 5, 3), np.float32)  # (rows, m, n) of the cost's dtype
    assert (args["work"].shape, args["work"].dtype) == ((2, 4 * 3 + 3 * 5), np.float64)


def test_the_public_functions_read_the_declaration(monkeypatch):
    # a larger plan (the kernel uses the rows it needs) reaches the kernel: the declaration is the source
    x = _x((2, 3, 8))
    planned = fastnorm.instance_norm_forward(x)
    spec = REGISTRY["instance_norm_forward"]
    monkeypatch.setitem(spec.__dict__, "scratch", (Scratch("work", lambda d: (d.n * d.c + 7, 2)),))
    calls = _record(monkeypatch, "instance_norm_forward")
    res = fastnorm.instance_norm_forward(x)
    assert calls[0]["work"].shape == (13, 2)
    for a, b in zip(res, planned, strict=True):
        np.testing.assert_array_equal(a, b)
