"""Optimizers: fused multi-tensor steps and ``torch.optim``-style classes, on NumPy or CUDA arrays.

Names, hyperparameters, defaults and update formulas are ``torch.optim``'s (``fastnorm.reference.optim``
holds them as plain NumPy), so switching gives the same numbers. Every step updates all tensors of a
parameter group in one kernel call: the kernel gets a table of the arrays' addresses and walks them as
one flat index space, one streaming pass per tensor (p, g and the state read once, written once).

Functional steps update lists of arrays in place::

    sgd_step(params, grads, momentum_buffers=None, *, lr, momentum, dampening, weight_decay, nesterov,
             maximize)
    adagrad_step(params, grads, state_sums, *, step, lr, lr_decay, weight_decay, eps, maximize)
    adadelta_step(params, grads, square_avgs, acc_deltas, *, lr, rho, eps, weight_decay, maximize)
    rmsprop_step(params, grads, square_avgs, grad_avgs=None, momentum_buffers=None, *, lr, alpha, eps,
                 weight_decay, momentum, centered, maximize)
    adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, step, lr, beta1, beta2, eps,
              weight_decay, amsgrad, maximize, decoupled_weight_decay)
    adamw_step(...)   # adam_step with decoupled weight decay, weight_decay=1e-2

The classes ``SGD``, ``Adagrad``, ``Adadelta``, ``RMSprop``, ``Adam``, ``AdamW`` keep the state::

    opt = Adam(params, lr=1e-3)          # params: a list of arrays, or a list of dicts (parameter groups)
    opt.step(grads)                      # grads: one array (or None: skipped) per parameter, in order
    opt.param_groups[0]["lr"] = 1e-4     # hyperparameters are read at every step (schedulers work)
    sd = opt.state_dict(); opt.load_state_dict(sd)

Arrays: parameters and state must be C-contiguous, writeable float32/float64 NumPy arrays, or
bfloat16 (``ml_dtypes.bfloat16``) / float16 parameters with float32 state (see below) (updated in
place; they cannot be copied), or all CUDA arrays (anything with ``__cuda_array_interface__``: Numba
device arrays, CuPy arrays, PyTorch CUDA tensors), which run the same steps on the GPU (state the
classes allocate is then Numba device arrays; ``state_dict()`` returns host NumPy copies). Mixing host
and device arrays in one call is a ``TypeError`` naming the argument. State has its parameter's shape
and dtype (float32 for a 16-bit parameter); gradients must match their parameter's shape and dtype (or
be float32 beside a 16-bit parameter; a gradient that is non-contiguous,
not aligned to its element size, or byte-swapped is copied in). Parameters and state, updated in place,
must be native-endian, aligned, C-contiguous and writeable: otherwise a ``ValueError`` names the argument
and the reason. Hyperparameters are numbers (Python or NumPy scalars, 0-d arrays), read by value and
checked at every step; each algorithm declares them once, with defaults and valid ranges, in ``ALGOS``.
Scalar constants (bias corrections, lr * weight_decay) are computed in double and rounded to the
parameter's dtype once. Everything is checked before anything is written: a bad argument raises
``TypeError`` (type, dtype) or ``ValueError`` (shape, layout, value) and leaves parameters and state
untouched.

16-bit parameters (bfloat16, float16)
-------------------------------------
A bfloat16 or float16 parameter keeps float32 state; its gradient may be 16-bit or float32. A step widens
the parameter (and a 16-bit gradient) to float32 exactly, runs the float32 update (the very operations
of the float32 path) and writes the result back:

- by default rounded to nearest even (NaN kept);
- ``master_weights=True`` (classes; functional steps: ``master_params``, a float32 array per 16-bit
  parameter, None beside float32/float64 ones): the float32 master copy is what the step reads and updates,
  and the parameter receives ``round_to_nearest_even(master)`` in the same pass (apex's / torch's
  mixed-precision recipe: the master trajectory is bitwise the float32 optimizer's). The classes create
  the master from the parameter at its first step and keep it in the state under ``"master_param"``
  (``MASTER``), which ``state_dict`` returns and ``load_state_dict`` checks like the other state (required
  for a 16-bit parameter of a group with ``master_weights``, refused otherwise). With float32/float64
  parameters the option is a no-op (no copy is kept);
- ``stochastic_rounding=True`` (pure 16-bit training): the write rounds the float32 result to one of its two
  16-bit neighbours, the upper with probability equal to the distance from the lower over their spacing
  (bfloat16: 16 random bits added below the kept mantissa, then truncated; float16: the same probability,
  compared with 24 random bits; inf, NaN and float16 values beyond 65504 round to nearest), so the
  rounding is unbiased. The random bits are a counter-based hash (splitmix64) of (seed, step, tensor index,
  element index), see ``rounding_keys``: reproducible for a seed, independent of the thread count and of
  the chunking. The classes use their group's ``seed`` (default 0), each parameter's step count (SGD
  counts steps too, and keeps ``step`` in its state dict when ``stochastic_rounding``) and the parameter's
  position across groups; the functional steps use ``seed``, the ``step`` argument (1 for the steps
  without one: pass a different ``seed`` at every call) and the position in the list. Combined with
  ``master_weights`` it is a ``ValueError`` (the master already carries the exact value); with
  float32/float64 parameters it is a no-op.

The gradient-descent family in these terms
------------------------------------------
- Full-batch gradient descent, stochastic gradient descent and mini-batch SGD are all ``SGD`` (with
  ``momentum=0``: ``p -= lr * g``); they differ only in the gradient the caller passes: of the loss on
  the whole training set, on one example, or averaged over a mini-batch.
- Momentum (heavy ball): textbooks often write ``m = mu * m + lr * g; p -= m``. torch (and fastnorm)
  keep ``b = mu * b + g; p -= lr * b``. With a constant learning rate the two are the same method,
  ``m = lr * b``; when lr changes, the torch form rescales the past too (``m`` keeps old steps at their
  old lr). ``dampening = mu`` turns ``b`` into an exponential average of the gradients.
- Nesterov momentum: the look-ahead form ``v = mu * v - lr * grad(p + mu * v); p += v`` evaluates the
  gradient at the look-ahead point. ``nesterov=True`` stores that point instead: with ``q = p + mu * v``
  and ``v = -lr * b`` it becomes ``b = mu * b + grad(q); q -= lr * (grad(q) + mu * b)``, so the parameter
  held is the look-ahead one and the gradient is taken where it is (constant lr; the two trajectories
  meet at the end because ``p = q - mu * v``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import _dtypes
from . import _validation as V
from ._dispatch import CPU, backend_of, on_cuda

__all__ = [
    "sgd_step",
    "adagrad_step",
    "adadelta_step",
    "rmsprop_step",
    "adam_step",
    "adamw_step",
    "Optimizer",
    "SGD",
    "Adagrad",
    "Adadelta",
    "RMSprop",
    "Adam",
    "AdamW",
    "MASTER",
    "rounding_keys",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# Parameter dtypes, in the order of the kernels' dtype codes (0 float32, 1 float64, 2 bfloat16, 3 float16).
_CODE_DTYPES = (_dtypes.FLOAT32, _dtypes.FLOAT64, _dtypes.BFLOAT16, _dtypes.FLOAT16)
_PARAM_DTYPES = frozenset(_CODE_DTYPES)
_ITEMSIZE = np.array([4, 8, 2, 2], np.int64)
_STATE_CODE = np.array([0, 1, 0, 0], np.int64)  # the state of a 16-bit parameter is float32
MASTER = "master_param"  # the state key of the float32 master copy of a 16-bit parameter


_kernels = None


def _k():
    global _kernels
    if _kernels is None:
        _kernels = CPU.kernels
    return _kernels


def _kern(be):
    return _k() if be is CPU else be.kernels


_NOWHERE = (np.zeros(0, np.int64), np.zeros(0, np.int64))


# ------------------------------------------------------------------------------------------ backends
def _backend(op: str, params: list):
    """The backend of the first parameter; every other array is checked against it when gathered."""
    return backend_of(op, params=params[:1])


def _meta(be, a):
    """(shape, dtype) of an array of backend ``be``, or None when ``a`` is not one."""
    if be is CPU:
        return (a.shape, a.dtype) if isinstance(a, np.ndarray) else None
    if not on_cuda(a):
        return None
    try:
        ai = be._iface(a)
        return tuple(ai["shape"]), _dev_dtype(be, a)
    except Exception:
        return None


def _full(be, shape, dtype, value: float):
    """A new state array on backend ``be`` filled with ``value``."""
    if value == 0:
        return be.zeros(shape, dtype)
    if be is CPU:
        return np.full(shape, value, dtype)
    return _to_device(be, np.full(shape, value, dtype))


def _to_device(be, a: np.ndarray):
    """A new C-contiguous array of backend ``be`` holding a copy of the host array ``a``."""
    if be is CPU:
        return np.array(a, order="C", copy=True)
    d = be.empty(a.shape, a.dtype)
    if a.size:
        d.copy_to_device(np.ascontiguousarray(a))
    return d


def _to_host(be, a) -> np.ndarray:
    """A host NumPy copy of ``a`` (an array of backend ``be``, or any array NumPy or CUDA can read)."""
    if isinstance(a, np.ndarray):
        return a.copy()
    if on_cuda(a):
        from ._dispatch import cuda_backend

        return cuda_backend().asarray(a).copy_to_host()
    return np.array(a)


def _addr(be, a) -> int:
    if be is CPU:
        return a.__array_interface__["data"][0]
    return be._iface(a)["data"][0]


# ------------------------------------------------------------------------------------------ array checks
def _wanted(ref_dtype, *, stat: bool, writeable: bool) -> tuple:
    """The dtypes an array may have beside a parameter of ``ref_dtype`` (None: the array is a parameter):
    state (``stat``) the parameter's state dtype (float32 beside a 16-bit parameter); a gradient the
    parameter's dtype, or float32 beside a 16-bit parameter."""
    if ref_dtype is None:
        return _CODE_DTYPES
    if stat:
        return (_dtypes.stat_dtype(ref_dtype),)
    if not writeable and _dtypes.is_half(ref_dtype):
        return (ref_dtype, _dtypes.FLOAT32)
    return (ref_dtype,)


def _what(want: tuple, ref) -> str:
    names = " or ".join(d.name for d in want)
    return names if ref is None else f"{names} for its {np.dtype(ref).name} parameter"


def _usable(op: str, name: str, a, ref, *, writeable: bool, copy_ok: bool, be=CPU, stat: bool = False):
    """``a`` itself when the kernels can use it, a native, aligned, C-contiguous copy when only its layout
    is wrong and ``copy_ok`` (gradients: read, never written); otherwise the error saying why.

    Memory overlap is not checked here (see ``_gather_like``).
    """
    if be is not CPU:
        return _usable_device(be, op, name, a, ref, writeable=writeable, copy_ok=copy_ok, stat=stat)
    if not isinstance(a, np.ndarray):
        if on_cuda(a):
            raise TypeError(
                f"{op}: arguments live on different devices: {name} on the GPU (CUDA), the parameters "
                "on the CPU; move them to one device"
            )
        raise TypeError(f"{op}: {name} must be a numpy.ndarray, got {type(a).__name__}")
    native = a.dtype.newbyteorder("=")
    rdt = None if ref is None else ref.dtype
    want = _wanted(rdt, stat=stat, writeable=writeable)
    if native not in want:
        raise TypeError(f"{op}: {name} has dtype {a.dtype.name}; expected {_what(want, rdt)}")
    if ref is not None and a.shape != ref.shape:
        raise ValueError(f"{op}: {name} has shape {a.shape} but its parameter has shape {ref.shape}")
    if a.dtype.isnative and a.flags.c_contiguous and a.flags.aligned:
        if writeable and not a.flags.writeable:
            raise ValueError(f"{op}: {name} is read-only (it is updated in place)")
        return a
    if copy_ok:  # a fresh allocation: native byte order, aligned, C-contiguous
        return np.array(a, dtype=native, order="C", copy=True)
    if not a.dtype.isnative:
        why = f"is big-endian ({a.dtype.str}); pass it in native byte order"
    elif not a.flags.aligned:
        why = "is not aligned to its element size (e.g. a view at an odd byte offset)"
    else:
        why = "must be C-contiguous"
    raise ValueError(f"{op}: {name} {why} (it is updated in place, so it cannot be copied)")


def _usable_device(be, op: str, name: str, a, ref, *, writeable: bool, copy_ok: bool, stat: bool = False):
    """``_usable`` for the CUDA backend (``a`` and ``ref``: CUDA arrays)."""
    if not on_cuda(a):
        if a is None or not hasattr(a, "__array__"):
            raise TypeError(f"{op}: {name} must be a CUDA array, got {type(a).__name__}")
        raise TypeError(
            f"{op}: arguments live on different devices: {name} on the CPU, the parameters on the GPU (CUDA); "
            "move them to one device"
        )
    ai = be._iface(a)
    dtype = _dev_dtype(be, a)
    rdt = None if ref is None else _dev_dtype(be, ref)
    want = _wanted(rdt, stat=stat, writeable=writeable)
    if dtype.newbyteorder("=") not in want:
        raise TypeError(f"{op}: {name} has dtype {dtype.name}; expected {_what(want, rdt)}")
    if not dtype.isnative:
        raise ValueError(f"{op}: {name} is big-endian ({dtype.str}); CUDA arrays must be in native byte order")
    shape = tuple(ai["shape"])
    if ref is not None and shape != tuple(be._iface(ref)["shape"]):
        raise ValueError(f"{op}: {name} has shape {shape} but its parameter has shape {tuple(be._iface(ref)['shape'])}")
    if ai["data"][0] % dtype.itemsize:
        raise ValueError(f"{op}: {name} is not aligned to its element size")
    if not be.is_contiguous(a):
        if copy_ok:
            return be.asarray(a)
        raise ValueError(f"{op}: {name} must be C-contiguous (it is updated in place, so it cannot be copied)")
    if writeable and ai["data"][1]:
        raise ValueError(f"{op}: {name} is read-only (it is updated in place)")
    return a


def _dev_dtype(be, a) -> np.dtype:
    """The dtype of a CUDA array (bfloat16 from the CUDA kernels' own reading: a 2-byte raw typestr)."""
    from ._kernels.cuda.optim import dtype_code  # (be is the CUDA backend: numba-cuda is importable)

    code = dtype_code(a)
    return _CODE_DTYPES[code] if code >= 0 else np.dtype(be._iface(a)["typestr"])


def _nbytes(be, a) -> int:
    shape, dtype = _meta(be, a)
    return math.prod(shape) * dtype.itemsize


def _as_list(op: str, name: str, arrays) -> list:
    if isinstance(arrays, np.ndarray) or not isinstance(arrays, (list, tuple)):
        raise TypeError(f"{op}: {name} must be a list or tuple of arrays, got {type(arrays).__name__}")
    return list(arrays)


def _gather_params(op: str, params: list, name: str = "params", be=CPU) -> np.ndarray:
    """(3, n) int64: address, size, dtype code (``_CODE_DTYPES``) of each parameter array (all checked usable)."""
    info = np.empty((3, len(params)), np.int64)
    bad = _kern(be).gather_params(params, info)
    if bad >= 0:
        _usable(op, f"{name}[{bad}]", params[bad], None, writeable=True, copy_ok=False, be=be)
        raise AssertionError(f"{op}: {name}[{bad}] was refused by the kernels' check for no reason found")
    return info


def _gather_like(op, name, arrays, params, *, writeable, allow_none=False, avoid=_NOWHERE, be=CPU, stat=False):
    """Addresses of ``arrays`` (each matching its parameter, outside the sorted byte ranges ``avoid``).

    The kernels' fast check accepts the usual case; otherwise one pass over the entries raises the
    first error, or (gradients) replaces the entries with a bad layout by copies: returns (addresses,
    arrays) with ``arrays`` holding the copies (keep it alive while the kernel runs). ``stat``: the arrays
    are state (float32 beside 16-bit parameters); gradients of 16-bit parameters may be float32.
    """
    if len(arrays) != len(params):
        raise ValueError(f"{op}: {name} has {len(arrays)} entries for {len(params)} parameters")
    ptrs = np.empty(len(params), np.intp)
    if _kern(be).gather_like(arrays, params, ptrs, writeable, allow_none, avoid[0], avoid[1], stat) < 0:
        return ptrs, arrays
    arrays = list(arrays)
    for i, a in enumerate(arrays):
        if a is None:
            if not allow_none:
                raise TypeError(f"{op}: {name}[{i}] is None")
            ptrs[i] = 0
            continue
        a = arrays[i] = _usable(
            op, f"{name}[{i}]", a, params[i], writeable=writeable, copy_ok=not writeable, be=be, stat=stat
        )
        ptrs[i] = lo = _addr(be, a)
        hi = lo + _nbytes(be, a)
        k = int(np.searchsorted(avoid[0], hi, side="left"))  # ranges starting before hi; the last may meet
        if hi > lo and k > 0 and avoid[1][k - 1] > lo:
            raise ValueError(f"{op}: {name}[{i}] shares memory with a parameter or state array")
    return ptrs, arrays


def _ranges(op: str, what: str, ptrs: np.ndarray, info: np.ndarray):
    """The byte ranges [lo, hi) of arrays (addresses ``ptrs``, sizes/dtypes from ``info``), sorted;
    ValueError if two overlap."""
    nbytes = info[1] * _ITEMSIZE[info[2]]
    keep = nbytes > 0
    lo = ptrs[keep].astype(np.int64)
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], (lo + nbytes[keep])[order]
    if lo.size > 1 and np.any(lo[1:] < hi[:-1]):
        raise ValueError(f"{op}: {what} overlap in memory (each must be a separate array)")
    return lo, hi


# ------------------------------------------------------------------------------------------ hyperparameters
def _num(v):
    """A 0-d array or tensor hyperparameter (torch allows ``lr=torch.tensor(0.01)``) as its number; any
    other value unchanged (``V.scalar`` then checks it)."""
    if isinstance(v, np.ndarray) and v.shape == () and v.dtype.kind in "fiu":
        return v.item()
    if hasattr(v, "detach") and getattr(v, "shape", None) == () and not getattr(v, "requires_grad", False):
        return v.item()  # a 0-d torch tensor
    return v


def _lr(op, lr):
    return V.scalar(op, "lr", _num(lr), low=0.0)


def _nonneg(op, name, v):
    return V.scalar(op, name, _num(v), low=0.0)


def _flag(op, name, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a bool, got {type(v).__name__}")
    return bool(v)


def _beta(op, name, v):
    return V.scalar(op, name, _num(v), low=0.0, high=1.0, high_open=True)


@dataclass(frozen=True)
class Hp:
    """One hyperparameter, declared once: its default and valid range (a bool default: a flag)."""

    default: float | bool
    low: float | None = None
    high: float | None = None
    high_open: bool = False

    def check(self, op: str, name: str, value):
        if isinstance(self.default, bool):
            return _flag(op, name, value)
        if isinstance(self.default, int):
            return V.integer(op, name, _num(value), low=self.low, high=self.high)
        return V.scalar(op, name, _num(value), low=self.low, high=self.high, high_open=self.high_open)


@dataclass(frozen=True)
class Algo:
    """An optimizer algorithm, declared once: its hyperparameters in the functional step's names and order
    (``class_only``: those only the class takes), its state streams in the kernels' table order, and
    which streams the options use. The functional steps, the classes (defaults, checks, state dicts) and
    the tests read it."""

    name: str
    hyper: dict
    streams: tuple
    needed: Callable[[dict], tuple]
    class_only: dict = field(default_factory=dict)
    extra_check: Callable[[str, dict], None] | None = None

    def check(self, op: str, values: dict) -> dict:
        """``values`` (functional names) checked and converted (floats, bools), in declaration order."""
        specs = {**self.hyper, **self.class_only}
        h = {k: specs[k].check(op, k, values[k]) for k in specs if k in values}
        if h.get("master_weights") and h.get("stochastic_rounding"):
            raise ValueError(
                f"{op}: master_weights=True and stochastic_rounding=True exclude each other (with master weights "
                "the parameter is the master rounded to nearest even)"
            )
        if self.extra_check is not None:
            self.extra_check(op, h)
        return h

    def class_defaults(self) -> dict:
        """The classes' defaults: torch's names (``betas`` for beta1, beta2)."""
        d = {k: p.default for k, p in {**self.hyper, **self.class_only}.items()}
        if "beta1" in d:
            d = {("betas" if k == "beta1" else k): ((d["beta1"], d["beta2"]) if k == "beta1" else v)
                 for k, v in d.items() if k != "beta2"}
        return d


def _check_nesterov(op: str, h: dict) -> None:
    if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
        raise ValueError(f"{op}: nesterov=True requires momentum > 0 and dampening = 0")


def _check_decoupled(op: str, h: dict) -> None:
    if not h.get("decoupled_weight_decay", True):
        raise ValueError(f"{op}: decoupled_weight_decay must stay True (use Adam for L2 weight decay)")


# Options of 16-bit (bfloat16/float16) parameters, in every class (no-ops for float32/float64 parameters):
# a float32 master copy updated by the step and rounded to nearest even into the parameter, or
# stochastic rounding of the parameter write with a seed (see ``Optimizer``).
_PRECISION = {
    "master_weights": Hp(False),
    "stochastic_rounding": Hp(False),
    "seed": Hp(0, low=0, high=2**63 - 1),
}
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
_ADAM_STREAMS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
ALGOS = {
    "sgd": Algo(
        "sgd",
        {"lr": _LR, "momentum": Hp(0.0, low=0.0), "dampening": Hp(0.0), "weight_decay": _WD,
         "nesterov": _FLAG, "maximize": _FLAG},
        ("momentum_buffer",),
        lambda h: (h["momentum"] != 0,),
        class_only=_PRECISION,
        extra_check=_check_nesterov,
    ),
    "adagrad": Algo(
        "adagrad",
        {"lr": Hp(1e-2, low=0.0), "lr_decay": Hp(0.0, low=0.0), "weight_decay": _WD, "eps": Hp(1e-10, low=0.0),
         "maximize": _FLAG},
        ("sum",),
        lambda h: (True,),
        class_only={"initial_accumulator_value": Hp(0.0, low=0.0), **_PRECISION},
    ),
    "adadelta": Algo(
        "adadelta",
        {"lr": Hp(1.0, low=0.0), "rho": Hp(0.9, low=0.0, high=1.0), "eps": Hp(1e-6, low=0.0), "weight_decay": _WD,
         "maximize": _FLAG},
        ("square_avg", "acc_delta"),
        lambda h: (True, True),
        class_only=_PRECISION,
    ),
    "rmsprop": Algo(
        "rmsprop",
        {"lr": Hp(1e-2, low=0.0), "alpha": Hp(0.99, low=0.0), "eps": Hp(1e-8, low=0.0), "weight_decay": _WD,
         "momentum": Hp(0.0, low=0.0), "centered": _FLAG, "maximize": _FLAG},
        ("square_avg", "grad_avg", "momentum_buffer"),
        lambda h: (True, h["centered"], h["momentum"] > 0),
        class_only=_PRECISION,
    ),
    "adam": Algo("adam", _ADAM_HYPER, _ADAM_STREAMS, lambda h: (True, True, h["amsgrad"]), class_only=_PRECISION),
    "adamw": Algo(
        "adamw",
        {**_ADAM_HYPER, "weight_decay": Hp(1e-2, low=0.0), "decoupled_weight_decay": Hp(True)},
        _ADAM_STREAMS,
        lambda h: (True, True, h["amsgrad"]),
        class_only=_PRECISION,
        extra_check=_check_decoupled,
    ),
}


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


# ------------------------------------------------------------------------------------------ kernel launch
# State streams of each algorithm, in the kernels' table order (rows 2..).
_STREAMS = {name: algo.streams for name, algo in ALGOS.items()}

# The functional steps' argument holding each stream (named in errors).
_ARG = {
    "momentum_buffer": "momentum_buffers",
    "sum": "state_sums",
    "square_avg": "square_avgs",
    "acc_delta": "acc_deltas",
    "grad_avg": "grad_avgs",
    "exp_avg": "exp_avgs",
    "exp_avg_sq": "exp_avg_sqs",
    "max_exp_avg_sq": "max_exp_avg_sqs",
}


def _needed(algo: str, h: dict) -> tuple[bool, ...]:
    """Which state streams the options use."""
    return ALGOS[algo].needed(h)


def _per_tensor(algo: str, h: dict, steps: np.ndarray, first: np.ndarray | None) -> np.ndarray:
    """Per-tensor scalars (T, k) in double: from the step numbers (vectorized; one computation when
    all tensors are at the same step, the usual case) and SGD's first-step flags."""
    n = steps.shape[0]
    if algo == "sgd":
        out = np.empty((n, 2))
        out[:] = (h["momentum"], 1.0 - h["dampening"])
        if first is not None:
            out[first] = (0.0, 1.0)  # first step: b = 0 * 0 + 1 * g = g
        return out
    if algo not in ("adagrad", "adam"):
        return np.empty((n, 0))
    uniform = n > 0 and steps[0] == steps[-1] and bool((steps == steps[0]).all())
    t = float(steps[0]) if uniform else steps.astype(np.float64)
    if algo == "adagrad":
        clr = h["lr"] / (1.0 + (t - 1.0) * h["lr_decay"])
        cols = (clr,)
    else:
        b1t = h["beta1"] ** t if uniform else np.power(h["beta1"], t)
        b2t = h["beta2"] ** t if uniform else np.power(h["beta2"], t)
        cols = (h["lr"] / (1.0 - b1t), np.sqrt(1.0 - b2t))
    out = np.empty((n, len(cols)))
    for c, col in enumerate(cols):
        out[:, c] = col
    return out


def _launch(
    be, algo: str, h: dict, tab: np.ndarray, offsets: np.ndarray, pt: np.ndarray, code: int, half=None
) -> None:
    """One kernel call over the tensors of ``tab`` (rows: param, grad, state streams; 16-bit parameters:
    the 8 rows of ``_half_table``) of dtype ``code``; ``half``: (master weights, stochastic rounding)."""
    k = _kern(be)
    nt = be.threads(int(offsets[-1]))
    mx = h["maximize"]
    code = int(code)
    if algo == "sgd":
        k.sgd_step(tab, offsets, pt, h["lr"], h["momentum"], h["weight_decay"], h["nesterov"], mx, code, nt, half)
    elif algo == "adagrad":
        k.adagrad_step(tab, offsets, pt, h["weight_decay"], h["eps"], mx, code, nt, half)
    elif algo == "adadelta":
        k.adadelta_step(tab, offsets, h["lr"], h["rho"], h["eps"], h["weight_decay"], mx, code, nt, half)
    elif algo == "rmsprop":
        k.rmsprop_step(
            tab,
            offsets,
            h["lr"],
            h["alpha"],
            h["eps"],
            h["weight_decay"],
            h["momentum"],
            h["centered"],
            mx,
            code,
            nt,
            half,
        )
    else:
        decoupled = h["decoupled_weight_decay"]
        wd = h["weight_decay"]
        k.adam_step(
            tab,
            offsets,
            pt,
            h["beta1"],
            h["beta2"],
            h["eps"],
            0.0 if decoupled else wd,
            1.0 - h["lr"] * wd if decoupled else 1.0,
            h["amsgrad"],
            mx,
            code,
            nt,
            half,
        )


def _offsets(sizes: np.ndarray) -> np.ndarray:
    off = np.zeros(sizes.shape[0] + 1, np.int64)
    np.cumsum(sizes, out=off[1:])
    return off


# ------------------------------------------------------------------------------------------ 16-bit parameters
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (the kernels' ``fn_mix64``), elementwise on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def rounding_keys(seed: int, steps, index) -> np.ndarray:
    """The stochastic-rounding key of each tensor: ``mix64(mix64(mix64(seed) + step) + index)`` (uint64,
    wrapping; ``mix64`` is splitmix64's finalizer). Element ``i`` of a tensor rounds with the random bits
    ``mix64(key + (i + 1) * 0x9E3779B97F4A7C15) >> 32``: a counter-based generator, so the result depends
    only on (seed, step, tensor index, element index), never on the thread count or the chunking.

    Parameters
    ----------
    seed : int
        The optimizer's seed, 0 <= seed < 2**63.
    steps : array_like of int
        Per tensor: the number of this update (from 1).
    index : array_like of int
        Per tensor: its index (position in the parameter list, counted across groups in a class).

    Returns
    -------
    numpy.ndarray
        int64 (the uint64 keys' bits), one per tensor.
    """
    with np.errstate(over="ignore"):
        s = _mix64(np.array([seed], np.uint64))
        z = _mix64(s + np.asarray(steps, np.int64).astype(np.uint64))
        z = _mix64(z + np.asarray(index, np.int64).astype(np.uint64))
    return z.view(np.int64)


def _half_table(tab: np.ndarray, master, keys, g32) -> np.ndarray:
    """The 8-row table of 16-bit parameters: ``tab``'s rows (param, grad, state streams), then the master
    copies' addresses (0: none), the rounding keys, 1 where the gradient is float32."""
    out = np.zeros((8, tab.shape[1]), np.intp)
    out[: tab.shape[0]] = tab
    if master is not None:
        out[5] = master
    if keys is not None:
        out[6] = keys
    out[7] = g32
    return out


def _grad_f32(grads: list, codes: np.ndarray, be) -> np.ndarray:
    """1 where a 16-bit parameter's gradient is float32 (0 elsewhere, and for None)."""
    out = np.zeros(len(grads), np.intp)
    for i in np.flatnonzero(codes >= 2):
        g = grads[i]
        if g is not None:
            out[i] = (g.dtype if be is CPU else _dev_dtype(be, g)) == _dtypes.FLOAT32
    return out


def _run_codes(be, algo, h, tab, sizes, codes, pt, half=None):
    """Launch once per parameter dtype present. ``half`` (with 16-bit parameters): (master addresses or None,
    rounding keys or None, float32-gradient flags), one entry per tensor of ``tab``."""
    if codes.size == 0:
        return
    uniform = bool((codes == codes[0]).all())
    for code in (codes[:1] if uniform else np.unique(codes)):
        if uniform:
            idx, t, p, sz = slice(None), tab, pt, sizes
        else:
            idx = np.flatnonzero(codes == code)
            t, p, sz = np.ascontiguousarray(tab[:, idx]), np.ascontiguousarray(pt[idx]), sizes[idx]
        flags = None
        if code >= 2:
            master, keys, g32 = half
            t = _half_table(t, None if master is None else master[idx], None if keys is None else keys[idx], g32[idx])
            flags = (master is not None, keys is not None)
        _launch(be, algo, h, t, _offsets(sz), p, int(code), flags)


# ------------------------------------------------------------------------------------------ functional steps
def _functional(
    op, algo, h, params, grads, states: dict, steps=None, first=None, be=None, master=None, sr=False, seed=0
):
    """Validate the lists, check no written array overlaps another (nor a gradient one), launch.

    ``states``: stream name -> list of arrays (absent for a stream the options do not use). ``master``:
    the master_params list (or None); ``sr``, ``seed``: stochastic rounding of 16-bit parameters.
    """
    params = _as_list(op, "params", params)
    grads = _as_list(op, "grads", grads)
    if len(grads) != len(params):
        raise ValueError(f"{op}: grads has {len(grads)} entries for {len(params)} parameters")
    if be is None:
        be = _backend(op, params)
    info = _gather_params(op, params, be=be)
    names = _STREAMS[algo]
    for name, use in zip(names, _needed(algo, h)):
        if use and states.get(name) is None:  # the public steps ask for these; never reach a kernel without
            raise TypeError(f"{op}: the options need the {name} state list")
    half = bool((info[2] >= 2).any())
    tab = np.zeros((2 + len(names), len(params)), np.intp)
    tab[0] = info[0]
    rows = []
    for r, name in enumerate(names):
        if states.get(name) is not None:
            tab[2 + r], _ = _gather_like(op, _ARG[name], states[name], params, writeable=True, be=be, stat=True)
            rows.append(tab[2 + r])
    mptr = None
    if master is not None:
        master = _as_list(op, "master_params", master)
        mptr, _ = _gather_like(
            op, "master_params", master, params, writeable=True, allow_none=True, be=be, stat=True
        )
        for i in range(len(params)):
            if (mptr[i] != 0) != (info[2, i] >= 2):
                what = "is None" if mptr[i] == 0 else "is given"
                raise ValueError(
                    f"{op}: master_params[{i}] {what} but params[{i}] is {_CODE_DTYPES[info[2, i]].name} "
                    "(a float32 master copy for each bfloat16/float16 parameter, None for the others)"
                )
    sinfo = info.copy()
    sinfo[2] = _STATE_CODE[info[2]]
    infos = [info] + [sinfo] * len(rows)
    if mptr is not None:
        minfo = sinfo.copy()
        minfo[1] = np.where(mptr != 0, info[1], 0)
        rows.append(mptr)
        infos.append(minfo)
    avoid = _ranges(op, "parameters and state arrays", np.concatenate([tab[0]] + rows), np.concatenate(infos, 1))
    tab[1], grads = _gather_like(op, "grads", grads, params, writeable=False, avoid=avoid, be=be)
    if steps is None:
        steps = np.ones(len(params), np.int64)
    extra = None
    if half:
        keys = rounding_keys(seed, steps, np.arange(len(params))) if sr else None
        extra = (mptr, keys, _grad_f32(grads, info[2], be))
    _run_codes(be, algo, h, tab, info[1], info[2], _per_tensor(algo, h, steps, first), extra)


def _precision(op, master_params, stochastic_rounding, seed):
    """The 16-bit options of a functional step, checked: (master_params or None, stochastic, seed)."""
    sr = _flag(op, "stochastic_rounding", stochastic_rounding)
    seed = V.integer(op, "seed", _num(seed), low=0, high=2**63 - 1)
    if sr and master_params is not None:
        raise ValueError(
            f"{op}: master_params and stochastic_rounding=True exclude each other (with master weights the "
            "parameter is the master rounded to nearest even)"
        )
    return master_params, sr, seed


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

    ``momentum_buffers`` (needed when momentum != 0): a list with one entry per parameter; None entries
    are the first step: a buffer is allocated, set to g and stored in the list.

    16-bit parameters (every functional step): see "16-bit parameters" in the module docstring for
    ``master_params``, ``stochastic_rounding`` and ``seed``.
    """
    op = "sgd_step"
    h = ALGOS["sgd"].check(op, locals())
    prec = _precision(op, master_params, stochastic_rounding, seed)
    params = _as_list(op, "params", params)
    be = _backend(op, params)
    states, first, new = {}, None, []
    if h["momentum"] != 0:
        if not isinstance(momentum_buffers, list):
            raise TypeError(f"{op}: momentum != 0 needs momentum_buffers, a list (None entries: first step)")
        if len(momentum_buffers) != len(params):
            raise ValueError(f"{op}: momentum_buffers has {len(momentum_buffers)} entries for {len(params)} parameters")
        first = np.array([b is None for b in momentum_buffers], dtype=bool)
        bufs = list(momentum_buffers)
        for i in np.flatnonzero(first):
            # validated with the rest below before anything is written; zeros so 0 * b is 0
            meta = _meta(be, params[i])
            if meta is not None and meta[1] in _PARAM_DTYPES:
                bufs[i] = be.zeros(meta[0], _dtypes.stat_dtype(meta[1]))
                new.append(i)
        states["momentum_buffer"] = bufs
    _functional(op, "sgd", h, params, grads, states, first=first, be=be, master=prec[0], sr=prec[1], seed=prec[2])
    for i in new:
        momentum_buffers[i] = states["momentum_buffer"][i]


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

    ``step``: this update's number (from 1), one int or one per tensor.
    """
    op = "adagrad_step"
    h = ALGOS["adagrad"].check(op, locals())
    m, sr, sd = _precision(op, master_params, stochastic_rounding, seed)
    n = len(_as_list(op, "params", params))
    states = {"sum": _as_list(op, "state_sums", state_sums)}
    _functional(op, "adagrad", h, params, grads, states, _steps(op, step, n), master=m, sr=sr, seed=sd)


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
    """Adadelta step in place, like ``torch.optim.Adadelta``::

        g = g + weight_decay * p;  square_avg = rho * square_avg + (1 - rho) * g * g
        delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
        acc_delta = rho * acc_delta + (1 - rho) * delta * delta;  p = p - lr * delta

    All state starts at zero.
    """
    op = "adadelta_step"
    h = ALGOS["adadelta"].check(op, locals())
    m, sr, sd = _precision(op, master_params, stochastic_rounding, seed)
    states = {
        "square_avg": _as_list(op, "square_avgs", square_avgs),
        "acc_delta": _as_list(op, "acc_deltas", acc_deltas),
    }
    _functional(op, "adadelta", h, params, grads, states, master=m, sr=sr, seed=sd)


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
    """RMSprop step in place, like ``torch.optim.RMSprop`` (``grad_avgs`` when centered, ``momentum_buffers``
    when momentum > 0; all state starts at zero)::

        g = g + weight_decay * p;  square_avg = alpha * square_avg + (1 - alpha) * g * g
        centered: grad_avg = grad_avg + (1 - alpha) * (g - grad_avg)
                  avg = sqrt(square_avg - grad_avg^2) + eps
        else:     avg = sqrt(square_avg) + eps
        momentum > 0: b = momentum * b + g / avg, p = p - lr * b;  else p = p - lr * g / avg
    """
    op = "rmsprop_step"
    h = ALGOS["rmsprop"].check(op, locals())
    m, sr, sd = _precision(op, master_params, stochastic_rounding, seed)
    states = {"square_avg": _as_list(op, "square_avgs", square_avgs)}
    if h["centered"]:
        if grad_avgs is None:
            raise TypeError(f"{op}: centered=True needs grad_avgs")
        states["grad_avg"] = _as_list(op, "grad_avgs", grad_avgs)
    if h["momentum"] > 0:
        if momentum_buffers is None:
            raise TypeError(f"{op}: momentum > 0 needs momentum_buffers")
        states["momentum_buffer"] = _as_list(op, "momentum_buffers", momentum_buffers)
    _functional(op, "rmsprop", h, params, grads, states, master=m, sr=sr, seed=sd)


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
    """Adam step in place, like ``torch.optim.Adam``; AdamW with ``decoupled_weight_decay``.

    ``step``: this update's number (from 1), one int or one per tensor. ``max_exp_avg_sqs`` when amsgrad::

        Adam: g = g + weight_decay * p        AdamW: p = p * (1 - lr * weight_decay)
        exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
        amsgrad: max_exp_avg_sq = maximum(max_exp_avg_sq, exp_avg_sq), used in place of exp_avg_sq
        p = p - lr / (1 - beta1**step) * exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - beta2**step) + eps)
    """
    _adam("adam_step", **locals())


def _adam(
    op: str,
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    max_exp_avg_sqs,
    *,
    step,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    amsgrad,
    maximize,
    decoupled_weight_decay,
    master_params=None,
    stochastic_rounding=False,
    seed=0,
) -> None:
    h = ALGOS["adam"].check(op, locals())
    m, sr, sd = _precision(op, master_params, stochastic_rounding, seed)
    n = len(_as_list(op, "params", params))
    states = {
        "exp_avg": _as_list(op, "exp_avgs", exp_avgs),
        "exp_avg_sq": _as_list(op, "exp_avg_sqs", exp_avg_sqs),
    }
    if h["amsgrad"]:
        if max_exp_avg_sqs is None:
            raise TypeError(f"{op}: amsgrad=True needs max_exp_avg_sqs")
        states["max_exp_avg_sq"] = _as_list(op, "max_exp_avg_sqs", max_exp_avg_sqs)
    _functional(op, "adam", h, params, grads, states, _steps(op, step, n), master=m, sr=sr, seed=sd)


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
    """AdamW step in place, like ``torch.optim.AdamW``: ``adam_step`` with decoupled weight decay."""
    _adam(
        "adamw_step",
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        step=step,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        decoupled_weight_decay=True,
        master_params=master_params,
        stochastic_rounding=stochastic_rounding,
        seed=seed,
    )


# ------------------------------------------------------------------------------------------ classes
def _by_value(v):
    """A snapshot of a hyperparameter that compares equal only to an equal value of the same type: a list
    changed in place (``betas[0] = 0.5``) or a 0-d array written to no longer matches the cached one."""
    if isinstance(v, (list, tuple)):
        return (type(v), tuple(_by_value(x) for x in v))
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
    """Per parameter group: the state, the step counts and the cached kernel tables."""

    def __init__(self, n: int, start: int = 0):
        self.state: list[dict] = [{} for _ in range(n)]  # per parameter: stream name -> private array
        self.steps = np.zeros(n, np.int64)
        self.index = np.arange(start, start + n, dtype=np.int64)  # numbered across groups (rounding keys)
        self.info = None  # (3, n) addresses / sizes / dtype codes the tables were built for
        self.tables = None  # [(code, idx, tab, offsets)] per dtype present: tab rows param, grad, state...
        self.ready = None  # the state streams every parameter has (then nothing to allocate)
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
    """

    _algo = ""  # the kernels' algorithm
    _spec = ""  # the declaration in ALGOS (AdamW: its own defaults, Adam's kernels)
    _defaults: dict = {}
    _extra_keys: tuple = ()  # hyperparameter keys a torch state_dict may carry that fastnorm ignores

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self._groups: list[_Group] = []
        self._avoid = _NOWHERE  # sorted byte ranges of all parameters (gradients must not meet them)
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

    @property
    def _name(self) -> str:
        return type(self).__name__

    # ---- hyperparameters
    def _hyper(self, group: dict) -> dict:
        """The group's hyperparameters checked against the algorithm's declaration (``ALGOS``)."""
        values = dict(group)
        if "betas" in group:
            betas = group["betas"]
            if not isinstance(betas, (tuple, list)) or len(betas) != 2:
                raise TypeError(f"{self._name}: betas must be a pair of floats, got {betas!r}")
            values["beta1"], values["beta2"] = betas
        return ALGOS[self._spec].check(self._name, values)

    def _group_hyper(self, group: dict, gd: _Group | None = None) -> dict:
        """The group's hyperparameters, checked (re-checked only when one changed since the last step)."""
        try:
            key = tuple(_by_value(group[k]) for k in self._defaults)
        except KeyError:
            missing = [k for k in self._defaults if k not in group]
            raise ValueError(f"{self._name}: parameter group lacks {', '.join(missing)}") from None
        if gd is not None and gd.hyper_key == key:
            return gd.hyper
        h = self._hyper(group)
        if gd is not None:
            gd.hyper_key, gd.hyper = key, h
        return h

    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters with its own hyperparameters (the others from the defaults)."""
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
        group["params"] = _as_list(op, "params", ps)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._group_hyper(group)
        every = [*self.param_groups, group]
        be = backend_of(op, params=[p for g in every for p in g["params"]])
        infos = [_gather_params(op, g["params"], be=be) for g in every]
        info = np.concatenate(infos, axis=1)
        avoid = _ranges(op, "parameters (one listed twice, or views of one array)", info[0], info)
        self.param_groups.append(group)
        self._groups.append(_Group(len(group["params"]), sum(len(g.steps) for g in self._groups)))
        self._avoid = avoid
        self._be = be
        self._init_group(len(self.param_groups) - 1)

    def _init_group(self, gi: int) -> None:
        """Eager state initialization (Adagrad); lazy (at the first step with a gradient) otherwise."""

    def _new_state(self, name: str, p: np.ndarray, group: dict) -> np.ndarray:
        shape, dtype = _meta(self._be, p)
        if name == MASTER:  # the parameter's value, exactly (float32 holds every bfloat16/float16 value)
            return _to_device(self._be, _to_host(self._be, p).astype(np.float32))
        return self._be.zeros(shape, _dtypes.stat_dtype(dtype))

    def _needed_at(self, needed: tuple, h: dict, code: int) -> tuple:
        """The state a parameter of dtype ``code`` keeps: the algorithm's streams, and its master copy."""
        return needed + (MASTER,) if code >= 2 and h["master_weights"] else needed

    # ---- step
    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        """One update of every parameter that has a gradient (``grads``: one per parameter, None skips).

        Everything (hyperparameters, parameters, gradients, overlaps) is checked for all groups before
        any array is written.
        """
        op = self._name
        grads = _as_list(op, "grads", grads)
        n_total = sum(len(g["params"]) for g in self.param_groups)
        if len(grads) != n_total:
            raise ValueError(f"{op}: grads has {len(grads)} entries for {n_total} parameters")
        hypers, infos, moved = [], [], False
        for gi, (group, gd) in enumerate(zip(self.param_groups, self._groups, strict=True)):
            hypers.append(self._group_hyper(group, gd))
            params = group["params"]
            if not isinstance(params, list):
                params = group["params"] = _as_list(op, "params", params)
            if len(params) != len(gd.steps):
                raise ValueError(
                    f"{op}: parameter group {gi} had {len(gd.steps)} parameters and now has {len(params)}; "
                    "add parameters with add_param_group"
                )
            info = _gather_params(op, params, f"param_groups[{gi}]['params']", be=self._be)
            if gd.info is not None and np.array_equal(info, gd.info):
                info = None  # unchanged: the cached tables hold
            else:
                if gd.info is not None and not np.array_equal(info[1:], gd.info[1:]):
                    raise ValueError(f"{op}: a parameter of group {gi} changed size or dtype")
                moved = True  # an array was replaced: re-check overlaps, rebuild the tables
            infos.append(info)
        avoid = self._avoid
        if moved:
            info = np.concatenate([gd.info if i is None else i for i, gd in zip(infos, self._groups, strict=True)], 1)
            avoid = _ranges(op, "parameters (views of one array)", info[0], info)
        plans, start = [], 0
        for gi, group in enumerate(self.param_groups):
            n = len(group["params"])
            gptr, gs = _gather_like(
                op,
                "grads",
                grads[start : start + n],
                group["params"],
                writeable=False,
                allow_none=True,
                avoid=avoid,
                be=self._be,
            )
            plans.append((gi, hypers[gi], infos[gi], gptr, gs))
            start += n
        # everything is checked: from here on nothing raises
        self._avoid = avoid
        for gi, h, info, gptr, gs in plans:
            self._apply(gi, h, info, gptr, gs)
            del gs  # the gradients (and any contiguous copies) are alive until their kernel is done

    def _apply(self, gi: int, h: dict, info: np.ndarray | None, gptr: np.ndarray, gs: list) -> None:
        """Allocate missing state, count the step, launch (``info``: new parameter addresses or None;
        ``gs``: the group's gradients)."""
        gd, algo = self._groups[gi], self._algo
        if info is not None:
            gd.info, gd.tables = info, None
        active = gptr != 0
        everyone = bool(active.all())
        needed = tuple(name for name, use in zip(_STREAMS[algo], _needed(algo, h), strict=True) if use)
        key = (needed, h["master_weights"])
        first = None
        if gd.ready != key:  # some parameter lacks state: allocate it for the active ones
            group = self.param_groups[gi]
            if not h["master_weights"]:  # turned off: the parameters hold the values from now on
                for st in gd.state:
                    st.pop(MASTER, None)
            for i in np.flatnonzero(active):
                for name in self._needed_at(needed, h, gd.info[2, i]):
                    if name not in gd.state[i]:
                        gd.state[i][name] = self._new_state(name, group["params"][i], group)
                        if name == "momentum_buffer" and algo == "sgd":  # a new buffer: b = g on this step
                            first = np.zeros(len(active), bool) if first is None else first
                            first[i] = True
            gd.tables = None
            if all(n in st for st, c in zip(gd.state, gd.info[2]) for n in self._needed_at(needed, h, c)):
                gd.ready = key
        if gd.tables is None:
            gd.tables = self._build_tables(gd, h)
        gd.steps[active] += 1  # SGD too: the step number enters the stochastic-rounding keys
        g32 = _grad_f32(gs, gd.info[2], self._be) if gd.info[2].max(initial=0) >= 2 else None
        for code, idx, tab, offsets in gd.tables:
            if everyone:
                sel, sel_tab, sel_off = idx, tab, offsets
                tab[1] = gptr if idx.size == gptr.size else gptr[idx]
            else:
                keep = active[idx]
                sel = idx[keep]
                if sel.size == 0:
                    continue
                sel_tab = np.ascontiguousarray(tab[:, keep])
                sel_tab[1] = gptr[sel]
                sel_off = _offsets(gd.info[1, sel])
            pt = _per_tensor(algo, h, gd.steps[sel], None if first is None else first[sel])
            flags = None
            if code >= 2:
                master, sr = bool(h["master_weights"]), bool(h["stochastic_rounding"])
                if sr:
                    sel_tab[6] = rounding_keys(h["seed"], gd.steps[sel], gd.index[sel])
                sel_tab[7] = g32[sel]
                flags = (master, sr)
            _launch(self._be, algo, h, sel_tab, sel_off, pt, code, flags)

    def _build_tables(self, gd: _Group, h: dict):
        """Per dtype present: (code, parameter indices, address table, offsets); 16-bit parameters get
        ``_half_table``'s 8 rows (keys and gradient flags filled at each step)."""
        tables = []
        names = _STREAMS[self._algo]
        for want in range(len(_CODE_DTYPES)):
            idx = np.flatnonzero(gd.info[2] == want)
            if idx.size == 0:
                continue
            tab = np.zeros((8 if want >= 2 else 2 + len(names), idx.size), np.intp)
            tab[0] = gd.info[0, idx]
            for r, name in enumerate(names):
                tab[2 + r] = [_addr(self._be, gd.state[i][name]) if name in gd.state[i] else 0 for i in idx]
            if want >= 2 and h["master_weights"]:
                tab[5] = [_addr(self._be, gd.state[i][MASTER]) if MASTER in gd.state[i] else 0 for i in idx]
            tables.append((want, idx, tab, _offsets(gd.info[1, idx])))
        return tables

    # ---- state dicts
    def state_dict(self) -> dict:
        """Like torch's: ``{"state": {index: {name: array, "step": 0-d float32}}, "param_groups": [...]}``.

        Parameters are numbered across groups in order; arrays are copies (plain NumPy, ``np.savez``-able),
        host copies for an optimizer on the GPU (``load_state_dict`` moves them back to the device).
        """
        state, groups, index = {}, [], 0
        for group, gd in zip(self.param_groups, self._groups, strict=True):
            ids = []
            counted = self._algo != "sgd" or bool(group.get("stochastic_rounding"))
            for i, st in enumerate(gd.state):
                if st or (counted and gd.steps[i]):  # torch too has state only for stepped parameters
                    entry = {"step": np.array(float(gd.steps[i]), np.float32)} if counted else {}
                    entry.update((name, _to_host(self._be, a)) for name, a in st.items())
                    state[index] = entry
                ids.append(index)
                index += 1
            g = {k: v for k, v in group.items() if k != "params"}
            g["params"] = ids
            groups.append(g)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and state from ``state_dict()`` (or a torch state dict converted with
        ``.numpy()``). State is copied into the parameters' dtype (and onto the GPU for GPU parameters:
        host or CUDA arrays are accepted).

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
        new_groups, hypers, new_state, where = [], [], [], {}
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
                if k != "params" and (k in self._defaults or k not in self._extra_keys):
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
            new_state.append(([{} for _ in ids], np.zeros(len(ids), np.int64)))
        names = _STREAMS[self._algo]
        for idx, entry in saved_state.items():
            if idx not in where:
                raise ValueError(f"{op}: state_dict has state for parameter {idx!r}, which no group lists")
            if not isinstance(entry, dict):
                raise TypeError(f"{op}: state[{idx!r}] must be a dict, got {type(entry).__name__}")
            gi, pos = where[idx]
            st, steps = new_state[gi]
            p = self.param_groups[gi]["params"][pos]
            shape, dtype = _meta(self._be, p)
            half = dtype in _dtypes.HALF
            master = half and hypers[gi]["master_weights"]
            counted = self._algo != "sgd" or hypers[gi]["stochastic_rounding"]
            keeps = ("step",) * counted + names + (MASTER,) * master
            unknown = [k for k in entry if k not in keeps]
            if unknown:
                bad = unknown[0]
                why = (
                    f"kept only for a bfloat16/float16 parameter with master_weights=True (this one: {dtype.name}, "
                    f"master_weights={hypers[gi]['master_weights']})"
                    if bad == MASTER
                    else f"which {op} does not keep (its state: {', '.join(keeps)}); is it another optimizer's state?"
                )
                raise ValueError(f"{op}: state[{idx!r}] has an entry {bad!r}, {why}")
            present = {k for k, v in entry.items() if v is not None}
            if not present:
                continue  # no state yet: made at the parameter's next step, as for a new parameter
            # SGD: a missing momentum buffer means the next step is its first (torch's rule)
            used = _needed(self._algo, hypers[gi])
            need = [] if self._algo == "sgd" else ["step", *(n for n, u in zip(names, used, strict=True) if u)]
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
                a = _to_host(self._be, value) if on_cuda(value) else _host_array(value)
                if a is None or (a.dtype.kind not in "fiu" and a.dtype not in _dtypes.HALF):
                    what = type(value).__name__ if a is None else f"dtype {a.dtype}"
                    raise TypeError(f"{op}: state[{idx!r}][{name!r}] must be a real numeric array, got {what}")
                if a.shape != shape:
                    raise ValueError(f"{op}: state[{idx!r}][{name!r}] has shape {a.shape}, its parameter {shape}")
                st[pos][name] = np.array(a, dtype=_dtypes.stat_dtype(dtype), order="C", copy=True)
        if self._be is not CPU:  # checked on the host: now move the state to the device
            new_state = [
                ([{k: _to_device(self._be, a) for k, a in d.items()} for d in st], steps) for st, steps in new_state
            ]
        for gi, (group, (st, steps)) in enumerate(zip(new_groups, new_state, strict=True)):
            self.param_groups[gi].clear()
            self.param_groups[gi].update(group)
            gd = self._groups[gi]
            gd.state, gd.steps, gd.tables, gd.ready = st, steps, None, None
            gd.hyper_key = gd.hyper = None

    def __repr__(self) -> str:
        lines = [f"{self._name} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """Stochastic gradient descent, like ``torch.optim.SGD`` (see ``sgd_step``; the module docstring
    relates it to full-batch / mini-batch gradient descent, heavy-ball and look-ahead Nesterov momentum)."""

    _algo = "sgd"
    _spec = "sgd"
    _defaults = ALGOS["sgd"].class_defaults()
    _extra_keys = ("foreach", "differentiable", "fused")

    def __init__(
        self,
        params,
        lr=1e-3,
        momentum=0.0,
        dampening=0.0,
        weight_decay=0.0,
        nesterov=False,
        *,
        maximize=False,
        master_weights=False,
        stochastic_rounding=False,
        seed=0,
    ):
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                maximize=maximize,
                master_weights=master_weights,
                stochastic_rounding=stochastic_rounding,
                seed=seed,
            ),
        )


class Adagrad(Optimizer):
    """Adagrad, like ``torch.optim.Adagrad`` (see ``adagrad_step``); state made at construction."""

    _algo = "adagrad"
    _spec = "adagrad"
    _defaults = ALGOS["adagrad"].class_defaults()
    _extra_keys = ("foreach", "differentiable", "fused")

    def __init__(
        self,
        params,
        lr=1e-2,
        lr_decay=0.0,
        weight_decay=0.0,
        initial_accumulator_value=0.0,
        eps=1e-10,
        *,
        maximize=False,
        master_weights=False,
        stochastic_rounding=False,
        seed=0,
    ):
        super().__init__(
            params,
            dict(
                lr=lr,
                lr_decay=lr_decay,
                eps=eps,
                weight_decay=weight_decay,
                initial_accumulator_value=initial_accumulator_value,
                maximize=maximize,
                master_weights=master_weights,
                stochastic_rounding=stochastic_rounding,
                seed=seed,
            ),
        )


    def _new_state(self, name, p, group):
        if name == MASTER:
            return super()._new_state(name, p, group)
        shape, dtype = _meta(self._be, p)
        return _full(self._be, shape, _dtypes.stat_dtype(dtype), float(group["initial_accumulator_value"]))

    def _init_group(self, gi):
        group, gd = self.param_groups[gi], self._groups[gi]
        for i, p in enumerate(group["params"]):
            gd.state[i]["sum"] = self._new_state("sum", p, group)


class Adadelta(Optimizer):
    """Adadelta, like ``torch.optim.Adadelta`` (see ``adadelta_step``)."""

    _algo = "adadelta"
    _spec = "adadelta"
    _defaults = ALGOS["adadelta"].class_defaults()
    _extra_keys = ("foreach", "differentiable", "capturable")

    def __init__(
        self,
        params,
        lr=1.0,
        rho=0.9,
        eps=1e-6,
        weight_decay=0.0,
        *,
        maximize=False,
        master_weights=False,
        stochastic_rounding=False,
        seed=0,
    ):
        super().__init__(
            params,
            dict(
                lr=lr,
                rho=rho,
                eps=eps,
                weight_decay=weight_decay,
                maximize=maximize,
                master_weights=master_weights,
                stochastic_rounding=stochastic_rounding,
                seed=seed,
            ),
        )


class RMSprop(Optimizer):
    """RMSprop, like ``torch.optim.RMSprop`` (see ``rmsprop_step``)."""

    _algo = "rmsprop"
    _spec = "rmsprop"
    _defaults = ALGOS["rmsprop"].class_defaults()
    _extra_keys = ("foreach", "differentiable", "capturable")

    def __init__(
        self,
        params,
        lr=1e-2,
        alpha=0.99,
        eps=1e-8,
        weight_decay=0.0,
        momentum=0.0,
        centered=False,
        *,
        maximize=False,
        master_weights=False,
        stochastic_rounding=False,
        seed=0,
    ):
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                alpha=alpha,
                eps=eps,
                centered=centered,
                weight_decay=weight_decay,
                maximize=maximize,
                master_weights=master_weights,
                stochastic_rounding=stochastic_rounding,
                seed=seed,
            ),
        )


class Adam(Optimizer):
    """Adam, like ``torch.optim.Adam`` (see ``adam_step``); ``decoupled_weight_decay=True`` is AdamW."""

    _algo = "adam"
    _spec = "adam"
    _defaults = ALGOS["adam"].class_defaults()
    _extra_keys = ("foreach", "differentiable", "fused", "capturable")

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        amsgrad=False,
        *,
        maximize=False,
        decoupled_weight_decay=False,
        master_weights=False,
        stochastic_rounding=False,
        seed=0,
    ):
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                amsgrad=amsgrad,
                maximize=maximize,
                decoupled_weight_decay=decoupled_weight_decay,
                master_weights=master_weights,
                stochastic_rounding=stochastic_rounding,
                seed=seed,
            ),
        )


class AdamW(Adam):
    """AdamW, like ``torch.optim.AdamW``: Adam with decoupled weight decay (default 1e-2)."""

    _spec = "adamw"
    _defaults = ALGOS["adamw"].class_defaults()

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        amsgrad=False,
        *,
        maximize=False,
        master_weights=False,
        stochastic_rounding=False,
        seed=0,
    ):
        Optimizer.__init__(
            self,
            params,
            dict(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                amsgrad=amsgrad,
                maximize=maximize,
                decoupled_weight_decay=True,
                master_weights=master_weights,
                stochastic_rounding=stochastic_rounding,
                seed=seed,
            ),
        )

