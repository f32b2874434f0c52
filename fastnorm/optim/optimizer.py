"""``torch.optim``-style classes: parameter groups, lazily made state, state dicts.

Each class is its algorithm's declaration (``ALGOS``) plus an explicit constructor signature. A step
checks everything, then runs the same plan runner as the functional steps (``_plan.run``), with the
address tables kept between steps while no parameter moves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from .. import _dtypes
from .. import _validation as V
from .._backend import CPU, backend_of, on_cuda, to_host
from . import _plan as P
from ._algos import ALGOS, MASTER, Algo

__all__ = ["Optimizer", "SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW", "CLASSES"]


def _by_value(v):
    """A snapshot of a hyperparameter that compares equal only to an equal value of the same type: a list
    changed in place (``betas[0] = 0.5``) or a 0-d array written to no longer matches the cached one."""
    t = type(v)
    if t is float or t is int or t is bool or t is str:
        return (t, v)
    if isinstance(v, (list, tuple)):
        return (type(v), tuple([_by_value(x) for x in v]))
    if isinstance(v, np.ndarray):
        return (np.ndarray, v.dtype.str, v.shape, v.tobytes())
    if hasattr(v, "detach") and hasattr(v, "tolist"):  # a torch tensor (lr as a 0-d tensor)
        return (type(v), str(v.dtype), v.detach().cpu().tolist())
    try:
        hash(v)
    except TypeError:
        return (type(v), id(v), repr(v))  # unhashable and unknown: re-validated whenever its repr changes
    return (type(v), v)


def _host_array(v) -> np.ndarray | None:
    """``v`` (NumPy array, CPU torch tensor, nested list, number) as a NumPy array; None if it is none."""
    if hasattr(v, "detach"):
        v = v.detach()
    try:
        a = np.asarray(v)
    except Exception:
        return None
    return None if a.dtype == object else a


def _step_number(op: str, where: str, v) -> int:
    """A saved ``step`` (int, float, 0-d array or tensor) as an int; TypeError/ValueError naming ``where``."""
    a = _host_array(v)
    if a is None or a.shape != () or a.dtype.kind not in "fiu":
        got = type(v).__name__ if a is None or a.shape == () else f"an array of shape {a.shape}"
        raise TypeError(f"{op}: {where} must be a number (int, float or 0-d array), got {got}")
    s = float(a)
    if not (math.isfinite(s) and s >= 0 and s == math.floor(s)):
        raise ValueError(f"{op}: {where} must be a whole number >= 0, got {s}")
    return int(s)


class _Group:
    """Per parameter group: the state, the step counts and the cached plan."""

    def __init__(self, n: int, start: int = 0):
        self.state: list[dict] = [{} for _ in range(n)]  # per parameter: stream name -> private array
        self.steps = np.zeros(n, np.int64)
        self.index = np.arange(start, start + n, dtype=np.int64)  # numbered across groups (rounding keys)
        self.info = None  # (3, n) addresses / sizes / dtype codes the plan was built for
        self.plan = None  # _plan.build's tables
        self.ready = None  # the state every parameter has (then nothing to allocate)
        self.hyper_key = None  # the raw hyperparameters last validated, and the result
        self.hyper = None


class Optimizer:
    """Base class: parameter groups, ``step(grads)``, ``state_dict()`` / ``load_state_dict()``.

    ``param_groups`` is a list of dicts like torch's: ``"params"`` (the arrays) and the hyperparameters,
    read and checked at every step. ``step(grads)`` takes one gradient per parameter (None: the parameter
    is skipped, as torch skips ``p.grad is None``), in the order of ``param_groups`` then ``"params"``.
    The state arrays are private (``state_dict()`` returns copies), so the kernel's address tables of
    the state are built once; parameter addresses are re-read (in C) at every step and the tables
    rebuilt only when one changed.

    Parameters
    ----------
    params : list of arrays, or list of dicts
        The parameters, or parameter groups (dicts with ``"params"`` and hyperparameters).
    defaults : dict
        The constructor's hyperparameters (the declaration's names; ``betas`` for Adam's pair).
    """

    spec: Algo  # the algorithm's declaration
    _extra_keys: tuple = ("foreach", "differentiable", "fused", "capturable")  # torch keys fastnorm ignores

    def __init__(self, params, defaults: dict):
        self.defaults = {**self.spec.class_defaults(), **defaults}
        self.param_groups: list[dict] = []
        self._groups: list[_Group] = []
        self._avoid = P.NOWHERE  # sorted byte ranges of all parameters (gradients must not meet them)
        self._be = CPU  # the backend of the parameters (all groups share one)
        if isinstance(params, (np.ndarray, dict)) or on_cuda(params):
            raise TypeError(
                f"{self._name}: params must be a list of arrays or of dicts, not one {type(params).__name__}"
            )
        params = list(params) if isinstance(params, Iterable) else params
        if not isinstance(params, list) or not params:
            raise ValueError(f"{self._name}: got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group)

    @classmethod
    def _declared(cls, values: dict) -> dict:
        """The constructor's arguments (its ``locals()``) that the declaration names."""
        keys = cls.spec.class_defaults()
        return {k: v for k, v in values.items() if k in keys}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._defaults = cls.spec.class_defaults()  # the declaration's defaults, in torch's names

    @property
    def _name(self) -> str:
        return type(self).__name__

    # ---- hyperparameters
    def _hyper(self, group: dict) -> dict:
        """The group's hyperparameters checked against the algorithm's declaration."""
        values = dict(group)
        if "betas" in group:
            betas = group["betas"]
            if not isinstance(betas, (tuple, list)) or len(betas) != 2:
                raise TypeError(f"{self._name}: betas must be a pair of floats, got {betas!r}")
            values["beta1"], values["beta2"] = betas
        return self.spec.check(self._name, values)

    def _group_hyper(self, group: dict, gd: _Group | None = None) -> dict:
        """The group's hyperparameters, checked (re-checked only when one changed since the last step)."""
        keys = self._defaults  # the declaration's hyperparameter names (``spec.class_defaults()``)
        try:
            key = tuple([_by_value(group[k]) for k in keys])
        except KeyError:
            missing = [k for k in keys if k not in group]
            raise ValueError(f"{self._name}: parameter group lacks {', '.join(missing)}") from None
        if gd is not None and gd.hyper_key == key:
            return gd.hyper
        h = self._hyper(group)
        if gd is not None:
            gd.hyper_key, gd.hyper = key, h
        return h

    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters with its own hyperparameters (the others from the defaults).

        Parameters
        ----------
        param_group : dict
            ``"params"`` (an array or a list of arrays) and any hyperparameters.
        """
        op = self._name
        if not isinstance(param_group, dict):
            raise TypeError(f"{op}: a parameter group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        ps = group.get("params")
        if isinstance(ps, np.ndarray) or on_cuda(ps):
            ps = [ps]
        elif isinstance(ps, (set, dict)):
            raise TypeError(f"{op}: params must be an ordered collection (a list), not a {type(ps).__name__}")
        elif isinstance(ps, Iterable) and not isinstance(ps, (list, tuple, str, bytes)):
            ps = list(ps)
        group["params"] = V.array_list(op, "params", ps)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._group_hyper(group)
        every = [*self.param_groups, group]
        be = backend_of(op, params=[p for g in every for p in g["params"]])
        info = np.concatenate([P.gather_params(be, op, g["params"]) for g in every], axis=1)
        avoid = P.ranges(op, "parameters (one listed twice, or views of one array)", info[0], info)
        self.param_groups.append(group)
        self._groups.append(_Group(len(group["params"]), sum(len(g.steps) for g in self._groups)))
        self._avoid = avoid
        self._be = be
        if self.spec.fill is not None:  # state made at construction (Adagrad's initial accumulator)
            gd = self._groups[-1]
            for i, p in enumerate(group["params"]):
                for name in self.spec.streams:
                    gd.state[i][name] = self._new_state(name, p, group)

    def _new_state(self, name: str, p, group: dict):
        be = self._be
        shape, dtype, _ = be.array_info(p)
        if name == MASTER:  # the parameter's value, exactly (float32 holds every bfloat16/float16 value)
            return be.to_device(be.to_host(p).astype(np.float32))
        fill = 0.0 if self.spec.fill is None else self.spec.fill(group)
        if fill == 0:
            return be.zeros(shape, _dtypes.stat_dtype(dtype))
        return be.to_device(np.full(shape, fill, _dtypes.stat_dtype(dtype)))

    @staticmethod
    def _keeps(needed: tuple, h: dict, code: int) -> tuple:
        """The state a parameter of dtype ``code`` keeps: the algorithm's streams, and its master copy."""
        return needed + (MASTER,) if code >= 2 and h["master_weights"] else needed

    # ---- step
    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        """One update of every parameter that has a gradient.

        Everything (hyperparameters, parameters, gradients, overlaps) is checked for all groups before
        any array is written.

        Parameters
        ----------
        grads : list of arrays or None
            One per parameter, in the order of ``param_groups``; None skips a parameter.

        Returns
        -------
        None
        """
        op = self._name
        grads = V.array_list(op, "grads", grads)
        n_total = sum(len(g["params"]) for g in self.param_groups)
        if len(grads) != n_total:
            raise ValueError(f"{op}: grads has {len(grads)} entries for {n_total} parameters")
        hypers, infos, moved = [], [], False
        for gi, (group, gd) in enumerate(zip(self.param_groups, self._groups, strict=True)):
            hypers.append(self._group_hyper(group, gd))
            params = group["params"]
            if not isinstance(params, list):
                params = group["params"] = V.array_list(op, "params", params)
            if len(params) != len(gd.steps):
                raise ValueError(
                    f"{op}: parameter group {gi} had {len(gd.steps)} parameters and now has {len(params)}; "
                    "add parameters with add_param_group"
                )
            info = P.gather_params(self._be, op, params, f"param_groups[{gi}]['params']")
            if gd.info is not None and info.shape == gd.info.shape and info.tobytes() == gd.info.tobytes():
                info = None  # unchanged: the cached plan holds
            else:
                if gd.info is not None and not np.array_equal(info[1:], gd.info[1:]):
                    raise ValueError(f"{op}: a parameter of group {gi} changed size or dtype")
                moved = True  # an array was replaced: re-check overlaps, rebuild the plan
            infos.append(info)
        avoid = self._avoid
        if moved:
            info = np.concatenate([gd.info if i is None else i for i, gd in zip(infos, self._groups, strict=True)], 1)
            avoid = P.ranges(op, "parameters (views of one array)", info[0], info)
        todo, start = [], 0
        for gi, group in enumerate(self.param_groups):
            n = len(group["params"])
            gptr, gs = P.gather_like(
                self._be,
                op,
                "grads",
                grads[start : start + n],
                group["params"],
                writeable=False,
                allow_none=True,
                avoid=avoid,
            )
            todo.append((gi, hypers[gi], infos[gi], gptr, gs))
            start += n
        # everything is checked: from here on nothing raises
        self._avoid = avoid
        for gi, h, info, gptr, gs in todo:
            self._apply(gi, h, info, gptr, gs)
            del gs  # the gradients (and any contiguous copies) are alive until their kernel is done

    def _apply(self, gi: int, h: dict, info: np.ndarray | None, gptr: np.ndarray, gs: list) -> None:
        """Allocate missing state, count the step, run the plan (``info``: new parameter addresses or None;
        ``gs``: the group's gradients)."""
        gd, spec = self._groups[gi], self.spec
        if info is not None:
            gd.info, gd.plan = info, None
        active = gptr != 0
        needed = spec.used(h)
        key = (needed, h["master_weights"])
        first = None
        if gd.ready != key:  # some parameter lacks state: allocate it for the active ones
            group = self.param_groups[gi]
            if not h["master_weights"]:  # turned off: the parameters hold the values from now on
                for st in gd.state:
                    st.pop(MASTER, None)
            for i in np.flatnonzero(active):
                for name in self._keeps(needed, h, gd.info[2, i]):
                    if name not in gd.state[i]:
                        gd.state[i][name] = self._new_state(name, group["params"][i], group)
                        if spec.first_step is not None and name != MASTER:  # a new buffer: b = g on this step
                            first = np.zeros(len(active), bool) if first is None else first
                            first[i] = True
            gd.plan = None
            if all(n in st for st, c in zip(gd.state, gd.info[2]) for n in self._keeps(needed, h, c)):
                gd.ready = key
        if gd.plan is None:
            gd.plan = self._build_plan(gd, h)
        gd.steps[active] += 1  # SGD too: the step number enters the stochastic-rounding keys
        half = gd.info[2].max(initial=0) >= 2
        sr = half and h["stochastic_rounding"]
        self._be.launch_for(self.param_groups[gi]["params"])
        P.run(
            self._be,
            spec,
            h,
            gd.plan,
            gd.info[1],
            gptr,
            gd.steps,
            first=first,
            g32=P.grad_f32(self._be, gs, gd.info[2]) if half else None,
            sr_keys=P.rounding_keys(h["seed"], gd.steps, gd.index) if sr else None,
            master=bool(h["master_weights"]),
        )

    def _build_plan(self, gd: _Group, h: dict) -> list:
        """The plan of the group's state (missing state: address 0)."""

        def addresses(name):
            return np.array([self._be.array_info(st[name])[2] if name in st else 0 for st in gd.state], np.intp)

        rows = {name: addresses(name) for name in self.spec.streams}
        return P.build(self.spec, gd.info, rows, addresses(MASTER) if h["master_weights"] else None)

    # ---- state dicts
    def state_dict(self) -> dict:
        """Like torch's: ``{"state": {index: {name: array, "step": 0-d float32}}, "param_groups": [...]}``.

        Parameters are numbered across groups in order; arrays are copies (plain NumPy, ``np.savez``-able),
        host copies for an optimizer on the GPU (``load_state_dict`` moves them back to the device).

        Returns
        -------
        dict
            The state and the parameter groups (``"params"``: the indices).
        """
        state, groups, index = {}, [], 0
        for group, gd in zip(self.param_groups, self._groups, strict=True):
            ids = []
            counted = self.spec.counts_steps or bool(group.get("stochastic_rounding"))
            for i, st in enumerate(gd.state):
                if st or (counted and gd.steps[i]):  # torch too has state only for stepped parameters
                    entry = {"step": np.array(float(gd.steps[i]), np.float32)} if counted else {}
                    entry.update((name, self._be.to_host(a)) for name, a in st.items())
                    state[index] = entry
                ids.append(index)
                index += 1
            g = {k: v for k, v in group.items() if k != "params"}
            g["params"] = ids
            groups.append(g)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and state from ``state_dict()`` (or a torch state dict converted with
        ``.numpy()``). State is copied into the parameters' state dtype (and onto the GPU for GPU
        parameters: host or CUDA arrays are accepted).

        The whole dict is checked before anything changes (on error the optimizer is untouched): the
        group hyperparameters as the constructor checks them; each parameter's state entry is empty
        or complete for the algorithm and the group's options (e.g. Adam: ``step``, ``exp_avg``,
        ``exp_avg_sq``, and ``max_exp_avg_sq`` with amsgrad; SGD: ``momentum_buffer``, or nothing: the
        next step is its first), ``step`` a whole number >= 0, each state array of its parameter's shape.

        Parameters
        ----------
        state_dict : dict
            ``{"state": {index: {name: array}}, "param_groups": [{"params": [index, ...], ...}]}``.
        """
        op = self._name
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise TypeError(f"{op}: state_dict must be a dict with 'state' and 'param_groups'")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)):
            raise TypeError(f"{op}: state_dict['param_groups'] must be a list, got {type(saved_groups).__name__}")
        if not isinstance(saved_state, dict):
            raise TypeError(f"{op}: state_dict['state'] must be a dict, got {type(saved_state).__name__}")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{op}: state_dict has {len(saved_groups)} parameter groups, the optimizer {len(self.param_groups)}"
            )
        new_groups, hypers, where = self._load_groups(saved_groups)
        new_state = [([{} for _ in g["params"]], np.zeros(len(g["params"]), np.int64)) for g in self.param_groups]
        for idx, entry in saved_state.items():
            if idx not in where:
                raise ValueError(f"{op}: state_dict has state for parameter {idx!r}, which no group lists")
            if not isinstance(entry, dict):
                raise TypeError(f"{op}: state[{idx!r}] must be a dict, got {type(entry).__name__}")
            gi, pos = where[idx]
            st, steps = new_state[gi]
            self._load_entry(idx, entry, self.param_groups[gi]["params"][pos], hypers[gi], gi, st, steps, pos)
        be = self._be  # checked on the host: now move the state to the backend
        new_state = [([{k: be.to_device(a) for k, a in d.items()} for d in st], steps) for st, steps in new_state]
        for gi, (group, (st, steps)) in enumerate(zip(new_groups, new_state, strict=True)):
            self.param_groups[gi].clear()
            self.param_groups[gi].update(group)
            gd = self._groups[gi]
            gd.state, gd.steps, gd.plan, gd.ready = st, steps, None, None
            gd.hyper_key = gd.hyper = None

    def _load_groups(self, saved_groups) -> tuple:
        """The saved groups merged into copies of the current ones and checked: (groups, hyperparameters,
        saved parameter id -> (group, position))."""
        op = self._name
        keys = self.spec.class_defaults()
        new_groups, hypers, where = [], [], {}
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            if not isinstance(saved, dict) or not isinstance(saved.get("params"), (list, tuple)):
                raise TypeError(f"{op}: state_dict's param_groups[{gi}] must be a dict with a 'params' list")
            ids = list(saved["params"])
            if len(ids) != len(group["params"]):
                raise ValueError(
                    f"{op}: state_dict's group {gi} has {len(ids)} parameters, the optimizer's {len(group['params'])}"
                )
            g = dict(group)
            for k, v in saved.items():
                if k != "params" and (k in keys or k not in self._extra_keys):
                    g[k] = tuple(v) if isinstance(v, list) else v
            hypers.append(self._group_hyper(g))
            new_groups.append(g)
            for pos, idx in enumerate(ids):
                try:
                    seen = idx in where
                except TypeError:
                    raise TypeError(f"{op}: state_dict's param_groups[{gi}]['params'] holds {idx!r}") from None
                if seen:
                    raise ValueError(f"{op}: state_dict lists parameter {idx!r} in two places")
                where[idx] = (gi, pos)
        return new_groups, hypers, where

    def _load_entry(self, idx, entry: dict, p, h: dict, gi: int, st: list, steps: np.ndarray, pos: int) -> None:
        """Check one parameter's saved state and put host copies of it into ``st[pos]`` / ``steps[pos]``."""
        op, spec = self._name, self.spec
        shape, dtype, _ = self._be.array_info(p)
        master = dtype in _dtypes.HALF and h["master_weights"]
        counted = spec.counts_steps or h["stochastic_rounding"]
        keeps = ("step",) * counted + spec.streams + (MASTER,) * master
        unknown = [k for k in entry if k not in keeps]
        if unknown:
            bad = unknown[0]
            why = (
                f"kept only for a bfloat16/float16 parameter with master_weights=True (this one: {dtype.name}, "
                f"master_weights={h['master_weights']})"
                if bad == MASTER
                else f"which {op} does not keep (its state: {', '.join(keeps)}); is it another optimizer's state?"
            )
            raise ValueError(f"{op}: state[{idx!r}] has an entry {bad!r}, {why}")
        present = {k for k, v in entry.items() if v is not None}
        if not present:
            return  # no state yet: made at the parameter's next step, as for a new parameter
        # SGD: a missing momentum buffer means the next step is its first (torch's rule)
        need = [] if spec.first_step is not None else ["step", *spec.used(h)]
        need += [MASTER] * master
        missing = [n for n in need if n not in present]
        if missing:
            raise ValueError(
                f"{op}: state[{idx!r}] lacks {', '.join(map(repr, missing))} (needed with group {gi}'s options)"
            )
        for name in sorted(present):
            value = entry[name]
            if name == "step":
                steps[pos] = _step_number(op, f"state[{idx!r}]['step']", value)
                continue
            a = to_host(value) if on_cuda(value) else _host_array(value)
            if a is None or (a.dtype.kind not in "fiu" and a.dtype not in _dtypes.HALF):
                what = type(value).__name__ if a is None else f"dtype {a.dtype}"
                raise TypeError(f"{op}: state[{idx!r}][{name!r}] must be a real numeric array, got {what}")
            if a.shape != shape:
                raise ValueError(f"{op}: state[{idx!r}][{name!r}] has shape {a.shape}, its parameter {shape}")
            st[pos][name] = np.array(a, dtype=_dtypes.stat_dtype(dtype), order="C", copy=True)

    def __repr__(self) -> str:
        lines = [f"{self._name} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """Stochastic gradient descent, like ``torch.optim.SGD`` (see ``sgd_step``; ``fastnorm.optim``'s
    docstring relates it to full-batch / mini-batch gradient descent, heavy-ball and Nesterov momentum)."""

    spec = ALGOS["sgd"]

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, master_weights=False, stochastic_rounding=False, seed=0):  # fmt: skip
        super().__init__(params, self._declared(locals()))


class Adagrad(Optimizer):
    """Adagrad, like ``torch.optim.Adagrad`` (see ``adagrad_step``); state made at construction."""

    spec = ALGOS["adagrad"]

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 *, maximize=False, master_weights=False, stochastic_rounding=False, seed=0):  # fmt: skip
        super().__init__(params, self._declared(locals()))


class Adadelta(Optimizer):
    """Adadelta, like ``torch.optim.Adadelta`` (see ``adadelta_step``)."""

    spec = ALGOS["adadelta"]

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False,
                 master_weights=False, stochastic_rounding=False, seed=0):  # fmt: skip
        super().__init__(params, self._declared(locals()))


class RMSprop(Optimizer):
    """RMSprop, like ``torch.optim.RMSprop`` (see ``rmsprop_step``)."""

    spec = ALGOS["rmsprop"]

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 maximize=False, master_weights=False, stochastic_rounding=False, seed=0):  # fmt: skip
        super().__init__(params, self._declared(locals()))


class Adam(Optimizer):
    """Adam, like ``torch.optim.Adam`` (see ``adam_step``); ``decoupled_weight_decay=True`` is AdamW."""

    spec = ALGOS["adam"]

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 maximize=False, decoupled_weight_decay=False, master_weights=False, stochastic_rounding=False,
                 seed=0):  # fmt: skip
        super().__init__(params, self._declared(locals()))


class AdamW(Adam):
    """AdamW, like ``torch.optim.AdamW``: Adam with decoupled weight decay (default 1e-2)."""

    spec = ALGOS["adamw"]

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, master_weights=False, stochastic_rounding=False, seed=0):  # fmt: skip
        Optimizer.__init__(self, params, self._declared(locals()))


CLASSES = {cls.spec.name: cls for cls in (SGD, Adagrad, Adadelta, RMSprop, Adam, AdamW)}  # declaration -> class
