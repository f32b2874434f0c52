"""One table of op cases: every public norm op pair, its inputs factory, shapes and option grid.

The contract suite (``tests/contracts``) and the property suite (``tests/test_properties.py``) read this
table; each contract is written once and runs over every case. A case is a forward/backward pair:

- ``make(rng, shape, dtype, **opts)`` returns ``Inputs(fwd, bwd, inout)``: the keyword arguments of the
  forward and of the backward (the backward's saved statistics come from the NumPy reference forward in
  the input dtype, so the backward is tested on its own), and the names of the forward's arguments that
  are updated in place (running statistics in training).
- ``shapes`` (CPU) and ``small_shapes`` (CUDA simulator): 1, odd, prime and empty sizes where meaningful.
- ``options``: the option grid (dicts of ``make`` options); ``options[0]`` is the richest one (every
  optional argument present), used by the contracts that need only one.
- ``valid(shape, opts)``: whether that combination is a legal call (e.g. BatchNorm training needs more
  than one value per channel); illegal combinations are not generated.
- the public ops, the references and the output names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import numpy as np

import fastnorm
from fastnorm import reference as R
from fastnorm._spec import REGISTRY

AFFINE = ("both", "none", "weight", "bias")


class Inputs(NamedTuple):
    fwd: dict
    bwd: dict
    inout: tuple = ()


@dataclass(frozen=True)
class OpCase:
    name: str
    fwd: Callable
    bwd: Callable
    ref_fwd: Callable
    ref_bwd: Callable
    fwd_names: tuple
    bwd_names: tuple
    make: Callable[..., Inputs]
    shapes: tuple
    small_shapes: tuple
    options: tuple
    primary: str = "x"  # the forward argument whose dtype sets the op's dtype
    bwd_primary: str = ""  # the backward's such argument when it is not named like the forward's
    valid: Callable[[tuple, dict], bool] = field(default=lambda shape, opts: True)
    bad_primary_shapes: tuple = ()  # forward primary shapes that must raise ValueError

    def __repr__(self) -> str:
        return self.name


def opts_id(opts: dict) -> str:
    return "-".join(f"{v}" if k in ("affine", "mode") else f"{k}={v}" for k, v in opts.items()) or "default"


def shape_id(shape: tuple) -> str:
    return "x".join(map(str, shape)) if shape else "0d"


def as_tuple(result) -> tuple:
    """A public op's result as a tuple of outputs (LRN's backward returns one array)."""
    return tuple(result) if isinstance(result, tuple) else (result,)


def _normal(rng, shape, dtype, scale=1.0, offset=0.0):
    return np.asarray(rng.standard_normal(shape) * scale + offset).astype(dtype)


def _affine(rng, shape, dtype, affine):
    w = (1.0 + 0.5 * rng.standard_normal(shape)).astype(dtype) if affine in ("weight", "both") else None
    b = rng.standard_normal(shape).astype(dtype) if affine in ("bias", "both") else None
    return w, b


def _saved(ref_call, x, shapes):
    """The saved outputs of the reference forward; for an empty x that the reference cannot reshape
    (issue 12 item 5), zeros of the given shapes (a backward on an empty x reads none of them but mean/rstd
    of empty groups)."""
    if x.size == 0:
        try:
            return ref_call()
        except ValueError:
            return tuple(np.zeros(sh, x.dtype) for sh in shapes)
    return ref_call()


# --------------------------------------------------------------------------------------------- LayerNorm
def _make_layer_norm(rng, shape, dtype, affine="both", normalized_ndim=1, eps=1e-5):
    x = _normal(rng, shape, dtype, 1.5, 0.3)
    w, b = _affine(rng, shape[len(shape) - normalized_ndim :], dtype, affine)
    _, mean, rstd = R.layer_norm_forward(x, w, b, eps=eps, normalized_ndim=normalized_ndim)
    dy = _normal(rng, shape, dtype)
    nd = dict(normalized_ndim=normalized_ndim)
    return Inputs(
        dict(x=x, weight=w, bias=b, eps=eps, **nd),
        dict(dy=dy, x=x, mean=mean, rstd=rstd, weight=w, bias=b, **nd),
    )


def _make_rms_norm(rng, shape, dtype, affine="weight", normalized_ndim=1, eps=1e-6):
    x = _normal(rng, shape, dtype, 1.5, 0.3)
    w, _ = _affine(rng, shape[len(shape) - normalized_ndim :], dtype, affine)
    _, rstd = R.rms_norm_forward(x, w, eps=eps, normalized_ndim=normalized_ndim)
    dy = _normal(rng, shape, dtype)
    nd = dict(normalized_ndim=normalized_ndim)
    return Inputs(dict(x=x, weight=w, eps=eps, **nd), dict(dy=dy, x=x, rstd=rstd, weight=w, **nd))


def _make_add_layer_norm(rng, shape, dtype, affine="both", normalized_ndim=1, eps=1e-5, dh=True):
    x = _normal(rng, shape, dtype, 1.5, 0.3)
    res = _normal(rng, shape, dtype, 1.0, -0.2)
    w, b = _affine(rng, shape[len(shape) - normalized_ndim :], dtype, affine)
    _, h, mean, rstd = R.add_layer_norm_forward(x, res, w, b, eps=eps, normalized_ndim=normalized_ndim)
    dy = _normal(rng, shape, dtype)
    grad_h = _normal(rng, shape, dtype) if dh else None
    nd = dict(normalized_ndim=normalized_ndim)
    return Inputs(
        dict(x=x, residual=res, weight=w, bias=b, eps=eps, **nd),
        dict(dy=dy, dh=grad_h, h=h, mean=mean, rstd=rstd, weight=w, bias=b, **nd),
    )


def _make_add_rms_norm(rng, shape, dtype, affine="weight", normalized_ndim=1, eps=1e-6, dh=True):
    x = _normal(rng, shape, dtype, 1.5, 0.3)
    res = _normal(rng, shape, dtype, 1.0, -0.2)
    w, _ = _affine(rng, shape[len(shape) - normalized_ndim :], dtype, affine)
    _, h, rstd = R.add_rms_norm_forward(x, res, w, eps=eps, normalized_ndim=normalized_ndim)
    dy = _normal(rng, shape, dtype)
    grad_h = _normal(rng, shape, dtype) if dh else None
    nd = dict(normalized_ndim=normalized_ndim)
    return Inputs(
        dict(x=x, residual=res, weight=w, eps=eps, **nd),
        dict(dy=dy, dh=grad_h, h=h, rstd=rstd, weight=w, **nd),
    )


def _rows_valid(shape, opts):
    k = opts.get("normalized_ndim", 1)
    return len(shape) >= k and math.prod(shape[len(shape) - k :]) > 0


ROW_SHAPES = ((1, 1), (3, 5), (7, 13), (0, 8), (2, 3, 17), (5, 1025), (1, 4099), (300, 17), (2, 65536))
ROW_SMALL = ((1, 1), (3, 5), (0, 8), (2, 3, 7))


# --------------------------------------------------------------------------------------------- channel norms
def _channels(shape, axis):
    return shape[1] if axis == 1 else shape[-1]


def _running(rng, c, dtype):
    return (0.1 * rng.standard_normal(c)).astype(dtype), (1.0 + 0.2 * rng.random(c)).astype(dtype)


def _make_batch_norm(rng, shape, dtype, affine="both", mode="train", axis=1, momentum=0.3, eps=1e-4):
    c = _channels(shape, axis)
    x = _normal(rng, shape, dtype, 1.5, 0.7)
    w, b = _affine(rng, (c,), dtype, affine)
    rm, rv = _running(rng, c, dtype) if mode != "train_no_running" else (None, None)
    training = mode != "eval"
    _, mean, rstd = R.batch_norm_forward(
        x,
        w,
        b,
        None if rm is None else rm.copy(),
        None if rv is None else rv.copy(),
        training=training,
        momentum=momentum,
        eps=eps,
        axis=axis,
    )
    dy = _normal(rng, shape, dtype)
    fwd = dict(
        x=x, weight=w, bias=b, running_mean=rm, running_var=rv, training=training, momentum=momentum, eps=eps, axis=axis
    )
    bwd = dict(dy=dy, x=x, mean=mean, rstd=rstd, weight=w, bias=b, training=training, axis=axis)
    return Inputs(fwd, bwd, ("running_mean", "running_var") if mode == "train" else ())


def _batch_norm_valid(axis):
    def valid(shape, opts):
        if len(shape) < 2:
            return False
        c = _channels(shape, axis)
        return opts.get("mode") == "eval" or math.prod(shape) // max(c, 1) > 1

    return valid


def _make_instance_norm(rng, shape, dtype, affine="both", mode="train", momentum=0.3, eps=1e-4):
    c = shape[1]
    x = _normal(rng, shape, dtype, 1.5, 0.7)
    w, b = _affine(rng, (c,), dtype, affine)
    rm, rv = _running(rng, c, dtype) if mode != "train_no_running" else (None, None)
    use = mode != "eval"
    _, mean, rstd = _saved(
        lambda: R.instance_norm_forward(
            x,
            w,
            b,
            None if rm is None else rm.copy(),
            None if rv is None else rv.copy(),
            use_input_stats=use,
            momentum=momentum,
            eps=eps,
        ),
        x,
        [shape, shape[:2], shape[:2]],
    )
    dy = _normal(rng, shape, dtype)
    fwd = dict(x=x, weight=w, bias=b, running_mean=rm, running_var=rv, use_input_stats=use, momentum=momentum, eps=eps)
    bwd = dict(dy=dy, x=x, mean=mean, rstd=rstd, weight=w, bias=b, use_input_stats=use)
    return Inputs(fwd, bwd, ("running_mean", "running_var") if mode == "train" else ())


def _instance_norm_valid(shape, opts):
    if len(shape) < 2:
        return False
    mode = opts.get("mode")
    length = math.prod(shape[2:])
    if mode == "eval":
        return True
    return length > 1 and not (mode == "train" and shape[0] == 0)


def _groups(c, groups):
    return {"one": 1, "all": c, "mid": next((g for g in (2, 3, 5) if c % g == 0 and g < c), 1)}[groups]


def _make_group_norm(rng, shape, dtype, affine="both", groups="mid", eps=1e-5):
    c = shape[1]
    g = _groups(c, groups)
    x = _normal(rng, shape, dtype, 1.5, 0.7)
    w, b = _affine(rng, (c,), dtype, affine)
    _, mean, rstd = _saved(lambda: R.group_norm_forward(x, g, w, b, eps=eps), x, [shape, (shape[0], g), (shape[0], g)])
    dy = _normal(rng, shape, dtype)
    return Inputs(
        dict(x=x, num_groups=g, weight=w, bias=b, eps=eps),
        dict(dy=dy, x=x, mean=mean, rstd=rstd, num_groups=g, weight=w, bias=b),
    )


def _group_norm_valid(shape, opts):
    # an empty group (C/G * L == 0 values) has no statistics: issue 12 item 5 defines that case.
    return len(shape) >= 2 and shape[1] > 0 and math.prod(shape[2:]) > 0


CHANNEL_SHAPES = (
    (7, 3),
    (5, 4, 9),
    (3, 5, 6, 7),
    (2, 3, 4, 5, 3),
    (1, 1, 13),
    (2, 6, 1),
    (0, 3, 4),
    (2, 2, 4111),
    (2, 1, 4111),
    (5, 7, 11),
    (2, 7, 3, 2),
)
CHANNEL_SMALL = ((4, 3), (2, 3, 5), (0, 3, 4), (2, 2, 3, 2))
CHANNEL_LAST_SHAPES = ((4, 6, 5), (3, 5, 7, 11), (17, 2), (613, 3), (1, 1), (0, 3))
CHANNEL_LAST_SMALL = ((4, 3), (2, 3, 5), (0, 3))


# --------------------------------------------------------------------------------------------- LRN
def _make_lrn(rng, shape, dtype, size=3, alpha=0.5, beta=0.75, k=2.0):
    x = _normal(rng, shape, dtype, 1.5)
    y, scale = _saved(lambda: R.local_response_norm_forward(x, size, alpha=alpha, beta=beta, k=k), x, [shape, shape])
    dy = _normal(rng, shape, dtype)
    kw = dict(size=size, alpha=alpha, beta=beta, k=k)
    return Inputs(dict(x=x, **kw), dict(dy=dy, x=x, y=y, scale=scale, **kw))


LRN_SHAPES = (
    (2, 5, 3),
    (2, 6),
    (1, 1, 1),
    (3, 7, 2, 5),
    (2, 13, 31),
    (2, 4, 3, 2, 5),
    (2, 5, 1100),
    (0, 3, 4),
    (2, 0, 4),
    (2, 3, 0),
)
LRN_SMALL = ((2, 5, 3), (2, 6), (0, 3, 4), (2, 3, 0))


# --------------------------------------------------------------------------------------------- WeightNorm
def _g_shape(shape, dim):
    if dim is None:
        return ()
    d = dim % len(shape)
    return tuple(s if i == d else 1 for i, s in enumerate(shape))


def _make_weight_norm(rng, shape, dtype, dim=0):
    v = _normal(rng, shape, dtype, 1.0, 0.2)
    g = np.asarray(1.0 + 0.5 * rng.standard_normal(_g_shape(shape, dim))).astype(dtype)
    norm = np.asarray(R.weight_norm_forward(v, g, dim=dim)[1])  # a NumPy scalar for dim=None
    dw = _normal(rng, shape, dtype)
    return Inputs(dict(v=v, g=g, dim=dim), dict(dw=dw, v=v, g=g, norm=norm, dim=dim))


def _weight_norm_valid(shape, opts):
    dim = opts["dim"]
    if dim is not None and not -len(shape) <= dim < len(shape):
        return False
    # a zero norm is inf/NaN as in torch: keep every slice non-empty so the values are finite.
    return math.prod(shape) > 0


WN_SHAPES = ((1, 1), (7, 5), (4, 3, 3, 2), (13, 1), (1, 37), (40, 3, 3, 3), (3, 40, 17))
WN_SMALL = ((1, 1), (7, 5), (3, 2, 4))


# --------------------------------------------------------------------------------------------- CosineLinear
def _make_cosine(rng, shape, dtype, eps=1e-8):
    """shape = (*lead, D, O): x (*lead, D), w (O, D)."""
    *lead, d, o = shape
    x = _normal(rng, (*lead, d), dtype, 1.0, 0.3)
    w = _normal(rng, (o, d), dtype, 1.0, -0.2)
    y, xn, wn = R.cosine_linear_forward(x, w, eps=eps)
    dy = _normal(rng, y.shape, dtype)
    return Inputs(dict(x=x, w=w, eps=eps), dict(dy=dy, x=x, w=w, y=y, x_norm=xn, w_norm=wn, eps=eps))


COS_SHAPES = ((7, 5, 3), (13, 31, 17), (2, 3, 4, 6), (9, 5), (1, 1, 1), (0, 3, 2), (3, 4, 0))
COS_SMALL = ((7, 5, 3), (1, 1, 1), (2, 3, 4, 2))


def _cosine_valid(shape, opts):
    return len(shape) >= 2 and shape[-2] > 0  # D == 0 is a ValueError


# --------------------------------------------------------------------------------------------- the table
def _case(name, op, **kw):
    """A case of the registered op pair ``<op>_forward`` / ``<op>_backward``: the public functions, the
    references and the output names come from the declarations (``fastnorm._spec.REGISTRY``)."""
    fwd, bwd = REGISTRY[f"{op}_forward"], REGISTRY[f"{op}_backward"]
    return OpCase(
        name=name,
        fwd=getattr(fastnorm, fwd.name),
        bwd=getattr(fastnorm, bwd.name),
        ref_fwd=fwd.reference,
        ref_bwd=bwd.reference,
        fwd_names=fwd.output_names,
        bwd_names=bwd.output_names,
        **kw,
    )


def _channel_case(name, op, make, options, shapes=CHANNEL_SHAPES, small=CHANNEL_SMALL, **kw):
    """A case of a channel op ((N, C, *) or channels-last data): a 1-D or 0-D x is a ValueError."""
    return _case(name, op, make=make, shapes=shapes, small_shapes=small, options=options,
                 bad_primary_shapes=((5,), ()), **kw)  # fmt: skip


_MODES = ("train", "train_no_running", "eval")
_MODE_OPTIONS = tuple(dict(affine=a, mode=m) for m in _MODES for a in AFFINE)

OP_CASES = [
    # the row ops: an empty row (4, 0) is legal, as in torch; the fused ones also run without dh
    *(
        _case(
            name,
            name,
            make=make,
            shapes=ROW_SHAPES,
            small_shapes=ROW_SMALL,
            options=tuple(dict(affine=a, normalized_ndim=k) for k in (1, 2) for a in affine)
            + ((dict(affine=affine[0], dh=False),) if fused else ()),
            bwd_primary="h" if fused else "",
            valid=_rows_valid,
            bad_primary_shapes=((),),
        )
        for name, make, affine, fused in (
            ("layer_norm", _make_layer_norm, AFFINE, False),
            ("rms_norm", _make_rms_norm, ("weight", "none"), False),
            ("add_layer_norm", _make_add_layer_norm, AFFINE, True),
            ("add_rms_norm", _make_add_rms_norm, ("weight", "none"), True),
        )
    ),
    *(
        _channel_case(
            name,
            "batch_norm",
            partial(_make_batch_norm, axis=axis),
            _MODE_OPTIONS,
            shapes,
            small,
            valid=_batch_norm_valid(axis),
        )
        for name, axis, shapes, small in (
            ("batch_norm", 1, CHANNEL_SHAPES, CHANNEL_SMALL),
            ("batch_norm_channels_last", -1, CHANNEL_LAST_SHAPES, CHANNEL_LAST_SMALL),
        )
    ),
    _channel_case(
        "instance_norm",
        "instance_norm",
        _make_instance_norm,
        _MODE_OPTIONS,
        valid=_instance_norm_valid,
    ),
    _channel_case(
        "group_norm",
        "group_norm",
        _make_group_norm,
        tuple(dict(affine=a, groups=g) for g in ("mid", "one", "all") for a in AFFINE),
        CHANNEL_SHAPES + ((3, 6, 5), (2, 4, 2100)),
        CHANNEL_SMALL + ((2, 6, 3),),
        valid=_group_norm_valid,
    ),
    _channel_case(
        "local_response_norm",
        "local_response_norm",
        _make_lrn,
        tuple(dict(size=s, beta=b) for s in (3, 1, 4, 9) for b in (0.75, 0.6)) + (dict(size=2), dict(size=23)),
        LRN_SHAPES,
        LRN_SMALL,
    ),
    *(
        _case(
            f"weight_norm_{which}",
            "weight_norm",
            make=_make_weight_norm,
            shapes=WN_SHAPES,
            small_shapes=WN_SMALL,
            options=options,
            primary="v",
            valid=_weight_norm_valid,
        )
        for which, options in (
            ("dim0", (dict(dim=0),)),
            ("dim_other", (dict(dim=1), dict(dim=-1))),
            ("dim_none", (dict(dim=None),)),
        )
    ),
    _case(
        "cosine_linear",
        "cosine_linear",
        make=_make_cosine,
        shapes=COS_SHAPES,
        small_shapes=COS_SMALL,
        options=(dict(eps=1e-8), dict(eps=0.5)),
        valid=_cosine_valid,
        bad_primary_shapes=((0,), ()),
    ),
]
CASES_BY_NAME = {c.name: c for c in OP_CASES}


def grid(shapes_of: Callable[[OpCase], tuple], options: str = "all", dtypes=(np.float32, np.float64)):
    """(case, opts, shape, dtype) for every legal combination, as pytest params with readable ids."""
    import pytest

    params = []
    for case in OP_CASES:
        opts_list = case.options if options == "all" else case.options[:1]
        for opts in opts_list:
            for shape in shapes_of(case):
                if not case.valid(shape, opts):
                    continue
                for dt in dtypes:
                    ident = f"{case.name}-{opts_id(opts)}-{shape_id(shape)}-{np.dtype(dt).name}"
                    params.append(pytest.param(case, opts, shape, dt, id=ident))
    return params


def first_valid_shape(case: OpCase, opts: dict, small: bool = False) -> tuple:
    """The first non-empty legal shape of a case (for the contracts that need one representative call)."""
    for shape in case.small_shapes if small else case.shapes:
        if math.prod(shape) > 1 and case.valid(shape, opts):
            return shape
    raise AssertionError(f"{case.name}: no legal non-trivial shape for {opts}")


def array_names(kwargs: dict) -> list:
    return [k for k, v in kwargs.items() if isinstance(v, np.ndarray)]


def copy_kwargs(kwargs: dict, dtype=None) -> dict:
    """Fresh copies of every array (running statistics are updated in place), optionally cast."""
    return {
        k: (np.array(v, dtype=dtype or v.dtype, copy=True) if isinstance(v, np.ndarray) else v)
        for k, v in kwargs.items()
    }


# ------------------------------------------------------------------- the other declared ops (not norms)
# Every op of fastnorm._spec.REGISTRY outside the norm group: ``make(rng, dtype, **opts)`` returns the keyword
# arguments of one public call; ``options`` is its option grid. tests/contracts/test_declared_ops.py checks
# each call's outputs against the declaration (names, shapes, dtypes, which exist) and its ``out=`` buffers.
# The op's numerics are tested in its own file (tests/test_divergence*.py, test_transport.py,
# test_sync_batch_norm.py).
def _logits(rng, dtype, shape=(5, 7)):
    return _normal(rng, shape, dtype, 2.0)


def _log_probs(rng, dtype, shape=(4, 6)):
    z = rng.standard_normal(shape)
    return (z - np.log(np.exp(z).sum(-1, keepdims=True))).astype(dtype)


def _make_ce(rng, dtype, reduction="mean", grad=None, weight=True, backward=False):
    x = _logits(rng, dtype)
    kw = dict(logits=x, target=rng.integers(0, 7, 5), reduction=reduction)
    if weight:
        kw["weight"] = rng.uniform(0.5, 1.5, 7).astype(dtype)
    if not backward:
        return dict(kw, grad=grad)
    lse = fastnorm.softmax_cross_entropy_forward(**kw).lse
    dloss = _normal(rng, (5,), dtype) if reduction == "none" else 0.7
    return dict(kw, dloss=dloss, lse=lse)


def _make_entropy(rng, dtype, axis=-1, base=None, backward=False):
    p = rng.uniform(0.1, 1.0, (4, 6)).astype(dtype)
    kw = dict(p=p, axis=axis, base=base)
    if backward:
        kw["dh"] = _normal(rng, np.delete(p.shape, axis % p.ndim), dtype)
    return kw


def _make_pair(rng, dtype, op="kl", reduction="batchmean", backward=False, want=(True, True), labels=False):
    x = _log_probs(rng, dtype)
    t = _log_probs(rng, dtype) if op == "js" else np.exp(_log_probs(rng, dtype))
    kw = dict(input=x, target=t, reduction=reduction)
    if labels:
        kw.update(labels=np.array([0, -100, 2, 3]), ignore_index=-100)
    if not backward:
        return dict(kw, grad="out" if want[0] else None, grad_target=want[1])
    dloss = _normal(rng, x.shape, dtype) if reduction == "none" else 1.3
    return dict(kw, dloss=dloss, input_grad=want[0], target_grad=want[1])


def _make_w1d(rng, dtype, weighted=True, backward=False):
    u, v = _normal(rng, (3, 5), dtype), _normal(rng, (3, 4), dtype)
    kw = dict(u_values=u, v_values=v, p=1.5)
    if weighted:
        kw.update(
            u_weights=rng.uniform(0.1, 1, u.shape).astype(dtype), v_weights=rng.uniform(0.1, 1, v.shape).astype(dtype)
        )
    if backward:
        kw["grad"] = _normal(rng, (3,), dtype)
    return kw


def _make_sinkhorn(rng, dtype, return_plan=True, objective=None):
    a, b = np.full(4, 0.25, dtype), np.full(5, 0.2, dtype)
    cost = rng.uniform(0, 1, (2, 4, 5)).astype(dtype)
    kw = dict(a=a, b=b, cost=cost, reg=0.5)
    if objective is None:
        return dict(kw, return_plan=return_plan)
    plan = fastnorm.sinkhorn(**kw, return_plan=True).plan
    return dict(kw, grad=_normal(rng, (2,), dtype), plan=plan, objective=objective)


def _make_stage(rng, dtype, stage="stats", axis=1, weight=True, running=True):
    x = _normal(rng, (4, 3, 5) if axis == 1 else (4, 5, 3), dtype, 1.5, 0.3)
    if stage == "stats":
        return dict(x=x, axis=axis)
    if stage == "gather":
        means, m2s = _normal(rng, (2, 3), dtype), rng.uniform(1, 2, (2, 3)).astype(dtype)
        kw = dict(means=means, m2s=m2s, counts=np.array([5, 6]))
        return dict(kw, running_mean=np.zeros(3, dtype), running_var=np.ones(3, dtype)) if running else kw
    mean, invstd = _normal(rng, (3,), dtype), rng.uniform(0.5, 2, 3).astype(dtype)
    w = (1.0 + 0.5 * rng.standard_normal(3)).astype(dtype) if weight else None
    kw = dict(x=x, mean=mean, invstd=invstd, weight=w, axis=axis)
    if stage == "elemt":
        return dict(kw, bias=rng.standard_normal(3).astype(dtype))
    kw["dy"] = _normal(rng, x.shape, dtype)
    if stage == "backward_reduce":
        return kw
    return dict(kw, sum_dy=_normal(rng, (3,), dtype), sum_dy_xmu=_normal(rng, (3,), dtype), count=np.array([20, 40]))


class DeclaredCase(NamedTuple):
    op: str  # the registered op
    make: Callable[..., dict]
    options: tuple
    stat_inputs: tuple = ()  # inputs in the statistic dtype (float32 beside 16-bit data)


_REDUCED = ("none", "sum", "mean")
_PAIR_OPTIONS = tuple(
    dict(reduction=r, want=w) for r in _REDUCED + ("batchmean",) for w in ((True, True), (False, False), (True, False))
)
DECLARED_CASES = [
    DeclaredCase("softmax_cross_entropy_forward", _make_ce, tuple(dict(reduction=r, grad=g, weight=w)
                 for r in _REDUCED for g in (None, "out") for w in (True, False))),
    DeclaredCase("softmax_cross_entropy_backward", partial(_make_ce, backward=True),
                 tuple(dict(reduction=r, weight=w) for r in _REDUCED for w in (True, False))),
    DeclaredCase("entropy", _make_entropy, (dict(), dict(axis=0, base=2.0))),
    DeclaredCase("entropy_backward", partial(_make_entropy, backward=True), (dict(), dict(base=10.0))),
    DeclaredCase("kl_div", _make_pair, _PAIR_OPTIONS),
    DeclaredCase("kl_div_backward", partial(_make_pair, backward=True), _PAIR_OPTIONS),
    DeclaredCase("js_div", partial(_make_pair, op="js"), _PAIR_OPTIONS + (dict(labels=True),)),
    DeclaredCase("js_div_backward", partial(_make_pair, op="js", backward=True), _PAIR_OPTIONS + (dict(labels=True),)),
    DeclaredCase("wasserstein_1d", _make_w1d, (dict(), dict(weighted=False))),
    DeclaredCase("wasserstein_1d_backward", partial(_make_w1d, backward=True), (dict(), dict(weighted=False))),
    DeclaredCase("sinkhorn", _make_sinkhorn, (dict(), dict(return_plan=False))),
    DeclaredCase("sinkhorn_backward", _make_sinkhorn, (dict(objective="regularized"), dict(objective="transport"))),
    DeclaredCase("batch_norm_stats", _make_stage, (dict(), dict(axis=-1))),
    DeclaredCase("batch_norm_gather_stats", partial(_make_stage, stage="gather"), (dict(), dict(running=False))),
    DeclaredCase("batch_norm_elemt", partial(_make_stage, stage="elemt"), (dict(), dict(axis=-1, weight=False)),
                 ("mean", "invstd")),
    DeclaredCase("batch_norm_backward_reduce", partial(_make_stage, stage="backward_reduce"),
                 (dict(), dict(axis=-1, weight=False)), ("mean", "invstd")),
    DeclaredCase("batch_norm_backward_elemt", partial(_make_stage, stage="backward_elemt"),
                 (dict(), dict(axis=-1, weight=False)), ("mean", "invstd", "sum_dy", "sum_dy_xmu")),
]  # fmt: skip


# --------------------------------------------------------------------------------------------- optimizers
@dataclass(frozen=True)
class OptimCase:
    """One optimizer: its functional step, class, reference, state lists and option grid.

    ``options`` are functional keyword arguments; ``class_kwargs`` turns them into the class's.
    """

    name: str
    cls_name: str
    states: tuple  # the functional step's state list arguments, in order
    has_step: bool
    options: tuple

    def __repr__(self) -> str:
        return self.name

    @property
    def functional(self):
        return getattr(fastnorm.optim, f"{self.name}_step")

    @property
    def reference(self):
        return getattr(R.optim, f"{self.name}_step")

    @property
    def cls(self):
        return getattr(fastnorm.optim, self.cls_name)

    def class_kwargs(self, kw: dict) -> dict:
        kw = dict(kw)
        if "beta1" in kw or "beta2" in kw:
            kw["betas"] = (kw.pop("beta1", 0.9), kw.pop("beta2", 0.999))
        return kw

    def init_state(self, rng, params: list) -> list:
        """State lists in the functional signature: positive second moments, random first moments; SGD's
        momentum buffers start as None (the first step creates them)."""
        lists = []
        for kind in self.states:
            if kind == "momentum_buffers" and self.name == "sgd":
                lists.append([None] * len(params))
            elif kind == "grad_avgs":  # centered RMSprop needs square_avg >= grad_avg^2
                lists.append([np.zeros_like(p) for p in params])
            elif kind in ("state_sums", "square_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "acc_deltas"):
                lists.append([np.asarray(np.abs(rng.standard_normal(p.shape)) * 0.1).astype(p.dtype) for p in params])
            else:
                lists.append([np.asarray(rng.standard_normal(p.shape) * 0.01).astype(p.dtype) for p in params])
        return lists

    def zero_state(self, params: list, kw: dict) -> list:
        """The state a freshly built class starts from, as functional state lists."""
        lists = []
        for kind in self.states:
            if kind == "momentum_buffers" and self.name == "sgd":
                lists.append([None] * len(params))
            elif kind == "state_sums":
                lists.append([np.full_like(p, kw.get("initial_accumulator_value", 0.0)) for p in params])
            else:
                lists.append([np.zeros_like(p) for p in params])
        return lists


OPTIM_CASES = [
    OptimCase(
        "sgd",
        "SGD",
        ("momentum_buffers",),
        False,
        (
            dict(lr=0.05),
            dict(lr=0.05, weight_decay=0.1, maximize=True),
            dict(lr=0.05, momentum=0.9),
            dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
            dict(lr=0.05, momentum=0.8, nesterov=True, maximize=True),
            dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.2),
        ),
    ),
    OptimCase(
        "adagrad",
        "Adagrad",
        ("state_sums",),
        True,
        (
            dict(lr=0.1),
            dict(lr=0.1, lr_decay=0.05, weight_decay=0.01, eps=1e-6, maximize=True),
        ),
    ),
    OptimCase(
        "adadelta",
        "Adadelta",
        ("square_avgs", "acc_deltas"),
        False,
        (
            dict(),
            dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.05, maximize=True),
        ),
    ),
    OptimCase(
        "rmsprop",
        "RMSprop",
        ("square_avgs", "grad_avgs", "momentum_buffers"),
        False,
        (
            dict(),
            dict(alpha=0.9, centered=True),
            dict(momentum=0.7, weight_decay=0.02),
            dict(lr=0.003, alpha=0.95, eps=1e-6, centered=True, momentum=0.5, maximize=True),
            dict(centered=True, weight_decay=0.1),
        ),
    ),
    OptimCase(
        "adam",
        "Adam",
        ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
        True,
        (
            dict(lr=0.01),
            dict(lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.05),
            dict(lr=0.01, amsgrad=True, maximize=True),
            dict(lr=0.01, weight_decay=0.1, amsgrad=True),
            dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        ),
    ),
    OptimCase(
        "adamw",
        "AdamW",
        ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
        True,
        (
            dict(lr=0.01),
            dict(lr=0.01, weight_decay=0.3, amsgrad=True, maximize=True),
        ),
    ),
]


def class_reference(case: OptimCase, params: list, grads_seq: list, opts: dict, dtype=None) -> list:
    """What the class gives after ``grads_seq`` (None: a parameter without a gradient that step), computed
    with the reference functional step from the class's initial state, with per-tensor step numbers."""
    ps = [np.array(p, dtype=dtype or p.dtype) for p in params]
    state = case.zero_state(ps, opts)
    steps = [0] * len(ps)
    for gs in grads_seq:
        live = [i for i, g in enumerate(gs) if g is not None]
        for i in live:
            steps[i] += 1
        sub = [[lst[i] for i in live] for lst in state]
        extra = {"step": [steps[i] for i in live]} if case.has_step else {}
        grads = [np.asarray(gs[i], dtype=dtype or ps[i].dtype) for i in live]
        case.reference([ps[i] for i in live], grads, *sub, **opts, **extra)
        for lst, s in zip(state, sub, strict=True):
            for j, i in enumerate(live):
                lst[i] = s[j]
    return ps
