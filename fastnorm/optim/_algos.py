"""Each optimizer algorithm declared once: hyperparameters (defaults, valid ranges), state streams, the
per-tensor scalars and the kernel call. The functional steps, the classes, ``fastnorm.torch.optim`` and
the tests read these declarations; nothing below them names an algorithm."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import _validation as V

__all__ = ["Hp", "Algo", "ALGOS", "MASTER", "PRECISION", "number", "check_precision", "check_options"]

MASTER = "master_param"  # the state key of the float32 master copy of a 16-bit parameter


def number(v):
    """A 0-d array or tensor hyperparameter (torch allows ``lr=torch.tensor(0.01)``) as its number; any
    other value unchanged (``V.scalar`` then checks it)."""
    if isinstance(v, np.ndarray) and v.shape == () and v.dtype.kind in "fiu":
        return v.item()
    if hasattr(v, "detach") and getattr(v, "shape", None) == () and not getattr(v, "requires_grad", False):
        return v.item()  # a 0-d torch tensor
    return v


@dataclass(frozen=True)
class Hp:
    """One hyperparameter, declared once: its default and valid range (a bool default: a flag; an int
    default: an integer)."""

    default: float | bool
    low: float | None = None
    high: float | None = None
    high_open: bool = False

    def check(self, op: str, name: str, value):
        if isinstance(self.default, bool):
            return V.flag(op, name, value)
        if isinstance(self.default, int):
            return V.integer(op, name, number(value), low=self.low, high=self.high)
        return V.scalar(op, name, number(value), low=self.low, high=self.high, high_open=self.high_open)


def _exclusive(op: str, master: bool, stochastic: bool, what: str = "master_weights=True") -> None:
    if master and stochastic:
        raise ValueError(
            f"{op}: {what} and stochastic_rounding=True exclude each other (with master weights the "
            "parameter is the master rounded to nearest even)"
        )


# Options of 16-bit (bfloat16/float16) parameters, in every class (no-ops for float32/float64 parameters):
# a float32 master copy updated by the step and rounded to nearest even into the parameter, or
# stochastic rounding of the parameter write with a seed (see ``fastnorm.optim``).
PRECISION = {
    "master_weights": Hp(False),
    "stochastic_rounding": Hp(False),
    "seed": Hp(0, low=0, high=2**63 - 1),
}


def check_precision(op: str, master_params, stochastic_rounding, seed) -> tuple:
    """The 16-bit options of a functional step, checked: (master_params or None, stochastic, seed)."""
    sr = PRECISION["stochastic_rounding"].check(op, "stochastic_rounding", stochastic_rounding)
    seed = PRECISION["seed"].check(op, "seed", seed)
    _exclusive(op, master_params is not None, sr, "master_params")
    return master_params, sr, seed


def check_options(op: str, values: dict) -> dict:
    """The classes' 16-bit options (``PRECISION``'s names, all present in ``values``), checked and converted."""
    h = {k: hp.check(op, k, values[k]) for k, hp in PRECISION.items()}
    _exclusive(op, h["master_weights"], h["stochastic_rounding"])
    return h


@dataclass(frozen=True)
class Algo:
    """An optimizer algorithm, declared once.

    ``hyper``: its hyperparameters in the functional step's names and order (``class_only``: those only
    the classes take); ``streams``: its state, in the kernels' table order, with ``args`` the functional
    step's argument holding each; ``needed(h)``: which streams the options use; ``scalars(h, t)``: the
    per-tensor columns from the step numbers ``t`` (a float when all tensors share it, else an array),
    and ``first_step`` the row that replaces them on a tensor's first step (SGD: ``b = g``);
    ``kernel(k, h, tab, offsets, per_tensor, code, n_threads, half)``: the kernel call; ``fill(group)``:
    the value new state starts at (Adagrad's ``initial_accumulator_value``; it then exists from the
    constructor on); ``counts_steps``: whether the state dict keeps ``step`` (SGD: only with stochastic
    rounding, whose keys use it); ``takes_step``: the functional step takes ``step`` (its scalars use
    the step number); ``fixed``: hyperparameters held at one value (AdamW's decoupled weight decay),
    arguments of neither its class nor its functional step.
    """

    name: str
    hyper: dict
    streams: tuple
    args: tuple
    needed: Callable[[dict], tuple]
    kernel: Callable
    scalars: Callable[[dict, object], tuple] = lambda h, t: ()
    first_step: tuple | None = None
    class_only: dict = field(default_factory=lambda: dict(PRECISION))
    extra_check: Callable[[str, dict], None] | None = None
    fill: Callable[[dict], float] | None = None
    counts_steps: bool = True
    takes_step: bool = False
    fixed: dict = field(default_factory=dict)

    def check(self, op: str, values: dict) -> dict:
        """``values`` (functional names) checked and converted (floats, bools), in declaration order."""
        specs = {**self.hyper, **self.class_only}
        h = {k: specs[k].check(op, k, values[k]) for k in specs if k in values}
        _exclusive(op, h.get("master_weights", False), h.get("stochastic_rounding", False))
        for k, v in self.fixed.items():
            if h.get(k, v) != v:
                raise ValueError(f"{op}: {k} must stay {v} in {self.name} (it is fixed by the algorithm)")
        if self.extra_check is not None:
            self.extra_check(op, h)
        return h

    def class_defaults(self) -> dict:
        """The classes' defaults: torch's names (``betas`` for beta1, beta2)."""
        d = {k: p.default for k, p in {**self.hyper, **self.class_only}.items()}
        if "beta1" in d:
            d = {
                ("betas" if k == "beta1" else k): ((d["beta1"], d["beta2"]) if k == "beta1" else v)
                for k, v in d.items()
                if k != "beta2"
            }
        return d

    def used(self, h: dict) -> tuple:
        """The names of the streams the options use."""
        return tuple([name for name, use in zip(self.streams, self.needed(h), strict=True) if use])

    def per_tensor(self, h: dict, steps: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
        """Per-tensor scalars (T, k) in double, from the step numbers (one computation when all tensors are
        at the same step, the usual case) and the first-step flags."""
        n = steps.shape[0]
        uniform = n > 0 and steps[0] == steps[-1] and bool((steps == steps[0]).all())
        cols = self.scalars(h, float(steps[0]) if uniform else steps.astype(np.float64))
        out = np.empty((n, len(cols)))
        for c, col in enumerate(cols):
            out[:, c] = col
        if first is not None and self.first_step is not None:
            out[first] = self.first_step
        return out


def _sign(h: dict) -> bool:
    return h["maximize"]


def _sgd(k, h, tab, off, pt, code, nt, half):
    k.sgd_step(tab, off, pt, h["lr"], h["momentum"], h["weight_decay"], h["nesterov"], _sign(h), code, nt, half)


def _adagrad(k, h, tab, off, pt, code, nt, half):
    k.adagrad_step(tab, off, pt, h["weight_decay"], h["eps"], _sign(h), code, nt, half)


def _adadelta(k, h, tab, off, pt, code, nt, half):
    k.adadelta_step(tab, off, h["lr"], h["rho"], h["eps"], h["weight_decay"], _sign(h), code, nt, half)


def _rmsprop(k, h, tab, off, pt, code, nt, half):
    k.rmsprop_step(
        tab,
        off,
        h["lr"],
        h["alpha"],
        h["eps"],
        h["weight_decay"],
        h["momentum"],
        h["centered"],
        _sign(h),
        code,
        nt,
        half,
    )


def _adam(k, h, tab, off, pt, code, nt, half):
    wd, decoupled = h["weight_decay"], h["decoupled_weight_decay"]
    decay = 1.0 - h["lr"] * wd if decoupled else 1.0  # AdamW: p *= 1 - lr * wd; Adam: g += wd * p
    k.adam_step(
        tab,
        off,
        pt,
        h["beta1"],
        h["beta2"],
        h["eps"],
        0.0 if decoupled else wd,
        decay,
        h["amsgrad"],
        _sign(h),
        code,
        nt,
        half,
    )


def _adam_scalars(h, t):
    return h["lr"] / (1.0 - h["beta1"] ** t), np.sqrt(1.0 - h["beta2"] ** t)


def _check_nesterov(op: str, h: dict) -> None:
    if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
        raise ValueError(f"{op}: nesterov=True requires momentum > 0 and dampening = 0")


_LR = Hp(1e-3, low=0.0)
_WD = Hp(0.0, low=0.0)
_FLAG = Hp(False)
_BETA = dict(low=0.0, high=1.0, high_open=True)
_ADAM_HYPER = {
    "lr": _LR,
    "beta1": Hp(0.9, **_BETA),
    "beta2": Hp(0.999, **_BETA),
    "eps": Hp(1e-8, low=0.0),
    "weight_decay": _WD,
    "amsgrad": _FLAG,
    "maximize": _FLAG,
    "decoupled_weight_decay": _FLAG,
}
_ADAM = dict(
    streams=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    args=("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
    needed=lambda h: (True, True, h["amsgrad"]),
    kernel=_adam,
    scalars=_adam_scalars,
    takes_step=True,
)
ALGOS = {
    "sgd": Algo(
        "sgd",
        {
            "lr": _LR,
            "momentum": Hp(0.0, low=0.0),
            "dampening": Hp(0.0),
            "weight_decay": _WD,
            "nesterov": _FLAG,
            "maximize": _FLAG,
        },
        ("momentum_buffer",),
        ("momentum_buffers",),
        lambda h: (h["momentum"] != 0,),
        _sgd,
        scalars=lambda h, t: (h["momentum"], 1.0 - h["dampening"]),
        first_step=(0.0, 1.0),  # b = 0 * b + 1 * g = g
        extra_check=_check_nesterov,
        counts_steps=False,
    ),  # fmt: skip
    "adagrad": Algo(
        "adagrad",
        {
            "lr": Hp(1e-2, low=0.0),
            "lr_decay": Hp(0.0, low=0.0),
            "weight_decay": _WD,
            "eps": Hp(1e-10, low=0.0),
            "maximize": _FLAG,
        },
        ("sum",),
        ("state_sums",),
        lambda h: (True,),
        _adagrad,
        scalars=lambda h, t: (h["lr"] / (1.0 + (t - 1.0) * h["lr_decay"]),),
        class_only={"initial_accumulator_value": Hp(0.0, low=0.0), **PRECISION},
        fill=lambda group: float(group["initial_accumulator_value"]),
        takes_step=True,
    ),  # fmt: skip
    "adadelta": Algo(
        "adadelta",
        {
            "lr": Hp(1.0, low=0.0),
            "rho": Hp(0.9, low=0.0, high=1.0),
            "eps": Hp(1e-6, low=0.0),
            "weight_decay": _WD,
            "maximize": _FLAG,
        },
        ("square_avg", "acc_delta"),
        ("square_avgs", "acc_deltas"),
        lambda h: (True, True),
        _adadelta,
    ),  # fmt: skip
    "rmsprop": Algo(
        "rmsprop",
        {
            "lr": Hp(1e-2, low=0.0),
            "alpha": Hp(0.99, low=0.0),
            "eps": Hp(1e-8, low=0.0),
            "weight_decay": _WD,
            "momentum": Hp(0.0, low=0.0),
            "centered": _FLAG,
            "maximize": _FLAG,
        },
        ("square_avg", "grad_avg", "momentum_buffer"),
        ("square_avgs", "grad_avgs", "momentum_buffers"),
        lambda h: (True, h["centered"], h["momentum"] > 0),
        _rmsprop,
    ),  # fmt: skip
    "adam": Algo("adam", _ADAM_HYPER, **_ADAM),
    "adamw": Algo(
        "adamw",
        {**_ADAM_HYPER, "weight_decay": Hp(1e-2, low=0.0), "decoupled_weight_decay": Hp(True)},
        fixed={"decoupled_weight_decay": True},
        **_ADAM,
    ),
}
