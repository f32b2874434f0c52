"""The functional steps: lists of arrays updated in place, one fused kernel call per parameter dtype."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _dtypes
from .. import _validation as V
from .._backend import backend_of
from . import _doc
from . import _plan as P
from ._algos import ALGOS, Algo, check_precision

__all__ = ["sgd_step", "adagrad_step", "adadelta_step", "rmsprop_step", "adam_step", "adamw_step", "run_step"]


def _steps(op, step, n) -> np.ndarray:
    """One step number (>= 1) per tensor, from an int or a sequence of ints."""
    if np.ndim(step) == 0:
        return np.full(n, V.integer(op, "step", step, low=1), dtype=np.int64)
    steps = np.asarray(step)
    if steps.shape != (n,) or steps.dtype.kind not in "iu":
        raise ValueError(f"{op}: step must be an int or {n} ints (one per tensor), got shape {steps.shape}")
    if n and steps.min() < 1:
        raise ValueError(f"{op}: step numbers count from 1, got {int(steps.min())}")
    return steps.astype(np.int64)


def run_step(op: str, spec: Algo, values: dict, *, new_state=None) -> None:
    """The one entry of every functional step: check the hyperparameters (``values``: the step's
    arguments), the lists and the options' state, build the plan and run it.

    ``new_state``: SGD's rule
    for None entries of its momentum buffers (the first step: a buffer is allocated, set to g, stored in
    the caller's list).
    """
    h = spec.check(op, values)
    master, sr, seed = check_precision(op, values["master_params"], values["stochastic_rounding"], values["seed"])
    params = V.array_list(op, "params", values["params"])
    grads = V.array_list(op, "grads", values["grads"])
    if len(grads) != len(params):
        raise ValueError(f"{op}: grads has {len(grads)} entries for {len(params)} parameters")
    n = len(params)
    steps = _steps(op, values["step"], n) if spec.takes_step else np.ones(n, np.int64)
    be = backend_of(op, params=params[:1])
    states, first, fresh = {}, None, []
    for name, arg, use in zip(spec.streams, spec.args, spec.needed(h), strict=True):
        given = values.get(arg)
        if not use:
            continue
        if given is None or (new_state is not None and not isinstance(given, list)):
            fill = ", a list (None entries: first step)" if new_state is not None else ""
            raise TypeError(f"{op}: the options need {arg}{fill}")
        states[name] = V.array_list(op, arg, given)
        if new_state is not None:
            if len(given) != n:
                raise ValueError(f"{op}: {arg} has {len(given)} entries for {n} parameters")
            first, fresh = new_state(be, params, states[name])
    info = P.gather_params(be, op, params)
    rows = {
        name: P.gather_like(be, op, arg, states[name], params, writeable=True, stat=True)[0]
        for name, arg in zip(spec.streams, spec.args, strict=True)
        if name in states
    }
    mptr = None
    if master is not None:
        master = V.array_list(op, "master_params", master)
        mptr, _ = P.gather_like(be, op, "master_params", master, params, writeable=True, allow_none=True, stat=True)
        for i in range(n):
            if (mptr[i] != 0) != (info[2, i] >= 2):
                what = "is None" if mptr[i] == 0 else "is given"
                raise ValueError(
                    f"{op}: master_params[{i}] {what} but params[{i}] is {P.CODE_DTYPES[info[2, i]].name} "
                    "(a float32 master copy for each bfloat16/float16 parameter, None for the others)"
                )
    avoid = P.state_ranges(op, info, list(rows.values()), mptr)
    gptr, grads = P.gather_like(be, op, "grads", grads, params, writeable=False, avoid=avoid)
    half = bool((info[2] >= 2).any())
    plan = P.build(spec, info, rows, mptr)
    P.run(
        be,
        spec,
        h,
        plan,
        info[1],
        gptr,
        steps,
        first=first,
        g32=P.grad_f32(be, grads, info[2]) if half else None,
        sr_keys=P.rounding_keys(seed, steps, np.arange(n)) if half and sr else None,
        master=mptr is not None,
    )
    for i in fresh:
        values["momentum_buffers"][i] = states["momentum_buffer"][i]


def _first_buffers(be, params: list, bufs: list):
    """SGD's None momentum buffers: zeros (so ``0 * b`` is 0) in the state dtype, validated with the rest
    before anything is written; returns (first-step flags, indices of the new buffers)."""
    first = np.array([b is None for b in bufs], dtype=bool)
    fresh = []
    for i in np.flatnonzero(first):
        p = params[i]
        if be.is_own_output(p):
            shape, dtype, _ = be.array_info(p)
            if dtype in P.CODE_DTYPES:
                bufs[i] = be.zeros(shape, _dtypes.stat_dtype(dtype))
                fresh.append(i)
    return first, fresh


@_doc.fill(ALGOS["sgd"], "SGD")
def sgd_step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    momentum_buffers: list | None = None,
    *,
    lr: float = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    master_params: list | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> None:
    """SGD step in place, like ``torch.optim.SGD`` (``fastnorm.reference.optim.sgd_step``)::

        g = g + weight_decay * p
        momentum != 0:  b = g (first step), else b = momentum * b + (1 - dampening) * g
                        g = g + momentum * b if nesterov else b
        p = p - lr * g

    Parameters
    ----------
    %(arrays)s
    momentum_buffers : list, optional
        Needed when momentum != 0: one entry per parameter; None entries are the first step: a buffer is
        allocated, set to g and stored in the list.
    """
    run_step("sgd_step", ALGOS["sgd"], locals(), new_state=_first_buffers)


@_doc.fill(ALGOS["adagrad"], "Adagrad")
def adagrad_step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    state_sums: Sequence[np.ndarray],
    *,
    step: int | Sequence[int],
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
    master_params: list | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> None:
    """Adagrad step in place, like ``torch.optim.Adagrad``::

        g = g + weight_decay * p;  clr = lr / (1 + (step - 1) * lr_decay)
        sum = sum + g * g;  p = p - clr * g / (sqrt(sum) + eps)

    Parameters
    ----------
    %(arrays)s
    %(step)s
    state_sums : list of arrays
        The sums of squared gradients, updated in place.
    """
    run_step("adagrad_step", ALGOS["adagrad"], locals())


@_doc.fill(ALGOS["adadelta"], "Adadelta")
def adadelta_step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    square_avgs: Sequence[np.ndarray],
    acc_deltas: Sequence[np.ndarray],
    *,
    lr: float = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    maximize: bool = False,
    master_params: list | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> None:
    """Adadelta step in place, like ``torch.optim.Adadelta`` (all state starts at zero)::

        g = g + weight_decay * p;  square_avg = rho * square_avg + (1 - rho) * g * g
        delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
        acc_delta = rho * acc_delta + (1 - rho) * delta * delta;  p = p - lr * delta

    Parameters
    ----------
    %(arrays)s
    square_avgs, acc_deltas : list of arrays
        The running averages of g * g and of delta * delta, updated in place.
    """
    run_step("adadelta_step", ALGOS["adadelta"], locals())


@_doc.fill(ALGOS["rmsprop"], "RMSprop")
def rmsprop_step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    square_avgs: Sequence[np.ndarray],
    grad_avgs: Sequence[np.ndarray] | None = None,
    momentum_buffers: Sequence[np.ndarray] | None = None,
    *,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    maximize: bool = False,
    master_params: list | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> None:
    """RMSprop step in place, like ``torch.optim.RMSprop`` (all state starts at zero)::

        g = g + weight_decay * p;  square_avg = alpha * square_avg + (1 - alpha) * g * g
        centered: grad_avg = grad_avg + (1 - alpha) * (g - grad_avg)
                  avg = sqrt(square_avg - grad_avg^2) + eps
        else:     avg = sqrt(square_avg) + eps
        momentum > 0: b = momentum * b + g / avg, p = p - lr * b;  else p = p - lr * g / avg

    Parameters
    ----------
    %(arrays)s
    square_avgs : list of arrays
        The running average of g * g, updated in place.
    grad_avgs, momentum_buffers : list of arrays, optional
        Needed when ``centered``, when ``momentum > 0``.
    """
    run_step("rmsprop_step", ALGOS["rmsprop"], locals())


@_doc.fill(ALGOS["adam"], "Adam", " (``betas=(beta1, beta2)``)")
def adam_step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    exp_avgs: Sequence[np.ndarray],
    exp_avg_sqs: Sequence[np.ndarray],
    max_exp_avg_sqs: Sequence[np.ndarray] | None = None,
    *,
    step: int | Sequence[int],
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    master_params: list | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> None:
    """Adam step in place, like ``torch.optim.Adam``; AdamW with ``decoupled_weight_decay``::

        Adam: g = g + weight_decay * p        AdamW: p = p * (1 - lr * weight_decay)
        exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
        amsgrad: max_exp_avg_sq = maximum(max_exp_avg_sq, exp_avg_sq), used in place of exp_avg_sq
        p = p - lr / (1 - beta1**step) * exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - beta2**step) + eps)

    Parameters
    ----------
    %(arrays)s
    %(step)s
    exp_avgs, exp_avg_sqs : list of arrays
        The running averages of g and of g * g, updated in place.
    max_exp_avg_sqs : list of arrays, optional
        Needed when ``amsgrad``.
    """
    run_step("adam_step", ALGOS["adam"], locals())


@_doc.fill(ALGOS["adamw"], "AdamW")
def adamw_step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    exp_avgs: Sequence[np.ndarray],
    exp_avg_sqs: Sequence[np.ndarray],
    max_exp_avg_sqs: Sequence[np.ndarray] | None = None,
    *,
    step: int | Sequence[int],
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    maximize: bool = False,
    master_params: list | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> None:
    """AdamW step in place, like ``torch.optim.AdamW``: ``adam_step`` with decoupled weight decay
    (``p = p * (1 - lr * weight_decay)`` before the Adam update).

    Parameters
    ----------
    %(arrays)s
    exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step
        As ``adam_step``.
    """
    run_step("adamw_step", ALGOS["adamw"], {**locals(), **ALGOS["adamw"].fixed})
