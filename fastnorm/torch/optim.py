"""``torch.optim`` optimizers whose ``step`` runs fastnorm's fused multi-tensor update.

Each class subclasses the torch optimizer of the same name and replaces only ``step``: constructor
arguments and checks, ``param_groups`` keys, per-parameter state names (``step``, ``exp_avg``,
``exp_avg_sq``, ``momentum_buffer``, ``sum``, ``square_avg``, ``acc_delta``, ``grad_avg``, ...),
``state_dict``/``load_state_dict``, ``zero_grad`` and hooks are torch's own. So LR schedulers work
(they write ``group["lr"]``) and state dicts load both ways between ``fastnorm.torch.optim.Adam`` and
``torch.optim.Adam`` (and the other pairs). State is created lazily by torch's own ``_init_group``.

``step`` gathers each parameter group's parameters with a gradient, their ``p.grad`` and state tensors as
zero-copy NumPy views and makes one ``fastnorm.optim.<algo>_step`` call per group, which updates every
tensor of the group in one fused pass (p, grad and state read once, written once).

Devices: CPU tensors run on fastnorm's CPU kernels (as zero-copy NumPy views), CUDA tensors on its CUDA
kernels (the tensors themselves: the CUDA backend reads their pointer, shape and dtype, bfloat16 included;
needs numba-cuda), with ``master_weights`` and ``stochastic_rounding`` on both (``route`` decides). A
group that mixes devices, has a parameter of another dtype than float32/float64/bfloat16/float16,
a non-contiguous parameter, or options fastnorm does not implement (``differentiable``, ``capturable``, ``fused``), is
stepped by torch's own implementation, after a one-time ``FastnormFallbackWarning``; ``foreach`` only
selects among torch's implementations and is ignored. Step pre- and post-hooks run once per ``step``
whichever implementation runs a group. Sparse gradients raise ``RuntimeError``.

16-bit parameters (bfloat16, float16): the state fastnorm steps is float32 (created in float32 for them,
and kept in float32 by ``load_state_dict``, which torch would cast to the parameter's dtype); gradients in
the parameter's dtype or float32. Every class takes three more keyword options, stored in the parameter
groups like torch's when not at their defaults (so default state dicts are torch's): ``master_weights=False``
(a float32 copy of each 16-bit parameter, state key ``"master_param"``, is what the step updates; the
parameter receives it rounded to nearest even),
``stochastic_rounding=False`` (the parameter write rounds stochastically; with ``master_weights`` a
``ValueError``) and ``seed=0`` (see ``fastnorm.optim``: the keys mix the seed, each parameter's ``step``
state and its position among the group's parameters with a gradient; SGD keeps a ``step`` state for
16-bit parameters when ``stochastic_rounding``). Both options are no-ops for float32/float64 parameters.
"""

from __future__ import annotations

import numpy as np
import torch

import fastnorm.optim as _fo

from ._common import FastnormFallbackWarning as FastnormFallbackWarning  # re-exported
from ._common import _arr, warn_once

__all__ = ["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW"]

_warned: set[tuple[str, str]] = set()


def _np(t: torch.Tensor):
    """The array fastnorm's kernels update in place: a zero-copy NumPy view of a CPU tensor, the detached
    tensor itself (``__cuda_array_interface__``) for a CUDA tensor. A DTensor (FSDP2's sharded parameters and
    gradients) is its local shard."""
    to_local = getattr(t, "to_local", None)
    return _arr(to_local() if callable(to_local) else t)


def _as_tensor(a, like: torch.Tensor) -> torch.Tensor:
    """A state array fastnorm allocated (SGD's first momentum buffer) as a tensor sharing its memory."""
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.as_tensor(a, device=like.device)


def _cuda_unavailable() -> str | None:
    """Why fastnorm cannot run CUDA tensors here (None when it can)."""
    try:
        from fastnorm._backend import cuda_backend

        cuda_backend()
    except Exception as e:  # numba-cuda missing or no usable driver
        return f"CUDA parameters but fastnorm's CUDA backend cannot run ({e})"
    return None


def _f(v) -> float:
    """A hyperparameter as a Python float (torch allows 0-dim tensors for lr and betas)."""
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def _steps_plus_one(state_steps: list[torch.Tensor]) -> np.ndarray:
    """The number of the update being made (torch's ``step`` state + 1), one per tensor."""
    if not state_steps:
        return np.zeros(0, np.int64)
    return torch.stack([s.detach().cpu() for s in state_steps]).to(torch.int64).numpy() + 1


def _bump(state_steps: list[torch.Tensor]) -> None:
    if state_steps:
        torch._foreach_add_(state_steps, 1)


_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_HALF = (torch.bfloat16, torch.float16)
_OPTIONS = {k: hp.default for k, hp in _fo._PRECISION.items()}  # the 16-bit options and their defaults


def _full32(p: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    return torch.full_like(p, fill, dtype=torch.float32, memory_format=torch.contiguous_format)


def route(params) -> str | None:
    """Which kernels step a group of parameters: None for fastnorm's (CPU tensors on its CPU kernels, CUDA
    tensors of one device on its CUDA kernels, float32/float64/bfloat16/float16 alike), else the reason
    torch's step runs instead. Reads only ``device``, ``dtype`` and ``is_contiguous()`` of each parameter."""
    devices = set()
    for p in params:
        if p.device.type not in ("cpu", "cuda"):
            return f"parameters on {p.device} (fastnorm runs CPU and CUDA tensors)"
        if p.dtype not in _DTYPES:
            return f"parameter dtype {p.dtype} (float32, float64, bfloat16, float16 supported)"
        if not p.is_contiguous():
            return "a non-contiguous parameter (it is updated in place)"
        devices.add(p.device)
    if len(devices) > 1:
        return f"one group with parameters on {len(devices)} devices"
    if devices and next(iter(devices)).type == "cuda":
        return _cuda_unavailable()
    return None


class _FastnormStep:
    """Mixin: ``step`` runs ``_fastnorm_group`` per parameter group, torch's step where fastnorm cannot."""

    _UNSUPPORTED_FLAGS = ("differentiable", "capturable", "fused")

    def __init__(self, params, *args, master_weights=False, stochastic_rounding=False, seed=0, **kwargs):
        opts = {"master_weights": master_weights, "stochastic_rounding": stochastic_rounding, "seed": seed}
        self._options = self._check_options(opts)
        super().__init__(params, *args, **kwargs)
        if opts != _OPTIONS:  # default options: groups and state dicts as torch's
            self.defaults.update(opts)
            for group in self.param_groups:
                for k, v in opts.items():
                    group.setdefault(k, v)

    def _check_options(self, group: dict) -> dict:
        """The group's 16-bit options (defaults for a group loaded from a plain torch state dict), checked."""
        base = getattr(self, "_options", None) or _OPTIONS
        group = {k: group.get(k, base[k]) for k in _OPTIONS}
        _fo._check_options(f"fastnorm.torch.optim.{type(self).__name__}", group)
        return group

    def _half_state(self, group: dict, p: torch.Tensor, state: dict) -> None:
        """Create the state torch's ``_init_group`` would (in float32) for a 16-bit parameter, if missing: the
        declared streams the options use, at the declared starting value (not SGD's momentum buffer: its
        first step sets it), and ``step`` where it is counted (SGD: for stochastic rounding only)."""
        spec = _fo.ALGOS[self._ALGO]
        if not state and spec.first_step is None:
            for name in spec.used(self._hyper(group)):
                state[name] = _full32(p, 0.0 if spec.fill is None else spec.fill(group))
        if (spec.counts_steps or group.get("stochastic_rounding")) and "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
        if group.get("master_weights") and "master_param" not in state:
            state["master_param"] = p.detach().to(torch.float32, memory_format=torch.contiguous_format).clone()

    def _precision_args(self, group: dict, params: list) -> dict:
        """The 16-bit options of the functional call (master_params only when some parameter is 16-bit)."""
        group = self._check_options(group)
        half = [p.dtype in _HALF for p in params]
        out = {"stochastic_rounding": bool(group["stochastic_rounding"]), "seed": int(group["seed"])}
        if group["master_weights"] and any(half):
            out["master_params"] = [_np(self.state[p]["master_param"]) if h else None for p, h in zip(params, half)]
        return out

    def _prepare_half(self, group: dict) -> None:
        opts = None
        for p in group["params"]:
            if p.grad is not None and p.dtype in _HALF:
                opts = opts or {**group, **self._check_options(group)}
                self._half_state(opts, p, self.state[p])

    def _fallback_reason(self, group: dict) -> str | None:
        """Why fastnorm cannot step this group (torch's step then does), or None."""
        for flag in self._UNSUPPORTED_FLAGS:
            if group.get(flag):
                return f"{flag}=True is not implemented by fastnorm"
        return route(group["params"])

    def _warn_fallback(self, reason: str) -> None:
        warn_once(_warned, f"fastnorm.torch.optim.{type(self).__name__}", reason, "using torch's step instead")

    def _torch_step(self):
        """torch's own ``step`` for this class, without the step-hook wrapper torch puts on every optimizer
        class it constructs (this ``step`` already runs the hooks once)."""
        fn = super().step  # the torch class's step, bound
        raw = getattr(fn, "__func__", fn)
        while getattr(raw, "hooked", False):  # unwrap torch's hook wrapper(s), if any
            raw = raw.__wrapped__
        return raw.__get__(self, type(self))

    @torch.no_grad()
    def step(self, closure=None):
        """One step over every parameter group (``closure`` re-evaluates the loss, as in torch)."""
        reasons = [self._fallback_reason(g) for g in self.param_groups]
        for r in reasons:
            if r:
                self._warn_fallback(r)
        if reasons and all(reasons):
            return self._torch_step()(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, reason in zip(self.param_groups, reasons, strict=True):
            if reason:
                self._torch_group_step(group)
            else:
                for p in group["params"]:
                    if p.grad is not None and p.grad.is_sparse:
                        raise RuntimeError(f"fastnorm.torch.optim.{type(self).__name__}: sparse gradients")
                self._prepare_half(group)
                self._fastnorm_group(group)
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's ``load_state_dict``; then every state tensor is made contiguous (updated in place by the
        kernels; the state torch creates for a contiguous parameter already is)."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(saved_ids, params):
            saved = state_dict["state"].get(i)
            if p.dtype in _HALF and saved and p in self.state:  # torch cast the state to p's dtype: undo
                for k, v in saved.items():
                    if k != "step" and isinstance(v, torch.Tensor) and v.is_floating_point():
                        self.state[p][k] = v.detach().to(p.device, torch.float32).clone()
        for st in self.state.values():
            for k, t in st.items():
                if isinstance(t, torch.Tensor) and t.dim() > 0 and not t.is_contiguous():
                    st[k] = t.contiguous()

    def _torch_group_step(self, group: dict) -> None:
        """torch's step for one group: the other groups are hidden for the call."""
        groups = self.param_groups
        self.param_groups = [group]
        try:
            self._torch_step()()
        finally:
            self.param_groups = groups

    _ALGO = ""  # the declaration in fastnorm.optim.ALGOS (and its functional step)
    _LISTS: tuple = ()  # the lists torch's _init_group fills after params and grads: stream names, "step"
    _FIXED: dict = {}  # hyperparameters the class fixes

    def _hyper(self, group: dict) -> dict:
        """The functional step's hyperparameters, read from the group (torch's names: ``betas``)."""
        out = {}
        for k, hp in _fo.ALGOS[self._ALGO].hyper.items():
            v = group["betas"][k == "beta2"] if k in ("beta1", "beta2") else group.get(k, hp.default)
            out[k] = bool(v) if isinstance(hp.default, bool) else _f(v)
        return {**out, **self._FIXED}

    def _fold_step(self, prec: dict, params: list) -> list:
        """The ``step`` state tensors the call advances beyond torch's (SGD's, for stochastic rounding)."""
        return []

    def _fastnorm_group(self, group: dict) -> None:
        """One ``fastnorm.optim.<algo>_step`` call over the group's parameters that have a gradient."""
        params, grads, lists = [], [], [[] for _ in self._LISTS]
        self._init_group(group, params, grads, *lists)
        if not params:
            return
        spec = _fo.ALGOS[self._ALGO]
        got = dict(zip(self._LISTS, lists, strict=True))
        steps = got.pop("step", None)
        h = self._hyper(group)
        kwargs = dict(h, **self._precision_args(group, params))
        extra = self._fold_step(kwargs, params)
        if spec.takes_step:
            kwargs["step"] = _steps_plus_one(steps)
        arrays = {}
        for name, arg, use in zip(spec.streams, spec.args, spec.needed(h), strict=True):
            if use:
                arrays[name] = [None if t is None else _np(t) for t in got[name]]
                kwargs[arg] = arrays[name]
        getattr(_fo, f"{self._ALGO}_step")([_np(p) for p in params], [_np(g) for g in grads], **kwargs)
        _bump((steps or []) + extra)
        for name, arrs in arrays.items():  # state fastnorm allocated (SGD's first momentum buffers)
            for p, t, a in zip(params, got[name], arrs, strict=True):
                if t is None:
                    self.state[p][name] = _as_tensor(a, p)


class SGD(_FastnormStep, torch.optim.SGD):
    """``torch.optim.SGD`` (momentum, dampening, nesterov, weight_decay, maximize) on ``sgd_step``."""

    _ALGO, _LISTS = "sgd", ("momentum_buffer",)

    def _fold_step(self, prec, params):
        steps = [self.state[p]["step"] for p in params if p.dtype in _HALF and "step" in self.state[p]]
        if prec["stochastic_rounding"] and steps:  # SGD's functional step has no step number: fold it in
            step = int(steps[0].item()) + 1
            prec["seed"] = int(_fo.rounding_keys(prec["seed"], [step], [0])[0]) & (2**63 - 1)
        return steps


class Adagrad(_FastnormStep, torch.optim.Adagrad):
    """``torch.optim.Adagrad`` (lr_decay, weight_decay, initial_accumulator_value, eps, maximize) on
    ``fastnorm.optim.adagrad_step``."""

    _ALGO, _LISTS = "adagrad", ("sum", "step")

    def _half_state(self, group, p, state):
        s = state.get("sum")
        if s is not None and s.dtype != torch.float32:  # torch made it in p's dtype at construction
            fresh = "step" not in state or float(state["step"]) == 0
            init = float(group["initial_accumulator_value"])
            state["sum"] = torch.full_like(p, init, dtype=torch.float32) if fresh else s.to(torch.float32)
        super()._half_state(group, p, state)


class Adadelta(_FastnormStep, torch.optim.Adadelta):
    """``torch.optim.Adadelta`` (lr, rho, eps, weight_decay, maximize) on ``fastnorm.optim.adadelta_step``."""

    _ALGO, _LISTS = "adadelta", ("square_avg", "acc_delta", "step")


class RMSprop(_FastnormStep, torch.optim.RMSprop):
    """``torch.optim.RMSprop`` (alpha, eps, weight_decay, momentum, centered, maximize) on
    ``fastnorm.optim.rmsprop_step``."""

    _ALGO, _LISTS = "rmsprop", ("square_avg", "momentum_buffer", "grad_avg", "step")


class Adam(_FastnormStep, torch.optim.Adam):
    """``torch.optim.Adam`` (betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay) on
    ``fastnorm.optim.adam_step``."""

    _ALGO, _LISTS = "adam", ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step")


class AdamW(Adam, torch.optim.AdamW):
    """``torch.optim.AdamW`` (decoupled weight decay, default 1e-2) on ``fastnorm.optim.adam_step``."""

    _FIXED = _fo.ALGOS["adamw"].fixed
