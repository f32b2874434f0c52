"""Op declarations: every fact about a public op that more than one layer needs, written once.

A family module (``fastnorm/norms/*.py``; for the other groups ``fastnorm/divergence.py``,
``fastnorm/_cross_entropy.py``, ``fastnorm/transport.py``, ``fastnorm/batch_norm_stages.py``) declares each
of its ops with ``register(OpSpec(...))`` beside the explicit public function. The layers between read the
declaration instead of restating it:

- the public function allocates (or checks) its outputs with ``spec.outputs(...)``;
- ``fastnorm.torch._bind`` builds the ``torch.library`` custom op, its fake (from ``spec.layout``) and the
  autograd glue;
- the exports, the contract tests and the benchmarks loop over ``REGISTRY``.

An output is declared by its name, a shape rule (a function of the inputs' shapes and the op's attributes,
given as a ``Dims``), a dtype rule (``DATA``: the primary input's dtype; ``STAT``: the statistic dtype of
that dtype, float32 beside 16-bit data; the name of an input whose dtype it takes, e.g. ``"weight"`` for
dweight; a fixed dtype name such as ``"float64"``; or a tuple of these, the first that applies) and, for an
output that does not always exist, when it does (``when``: the optional input it is the gradient of, or a
predicate of the attributes, e.g. ``lambda d: d.grad == "out"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from . import _validation as V
from ._backend._detect import dtype_of

Array = Any  # numpy.ndarray on the CPU; any object with __cuda_array_interface__ on the GPU

DATA = "data"
STAT = "stat"

# argument kinds: an array, an optional array, and the attribute types of the torch custom-op schema
TENSOR, OPT_TENSOR = "Tensor", "Tensor?"
INT, OPT_INT, FLOAT, BOOL, STR = "int", "int?", "float", "bool", "str"

# op groups: the norm ops (forward/backward pairs under fastnorm.norms, one contract case each in
# tests/cases.py) and the others, whose contracts are in tests/contracts/test_declared_ops.py
NORM, LOSS, TRANSPORT, STAGES = "norm", "loss", "transport", "stages"


# ------------------------------------------------------------------------------- shared result layouts
class NormStats(NamedTuple):
    """A normalization forward: the output and the per-group statistics."""

    y: Array
    mean: Array
    rstd: Array


class AffineGrads(NamedTuple):
    """A normalization backward: dx, and the gradients of weight and bias (None when absent)."""

    dx: Array
    dweight: Array | None
    dbias: Array | None


class ScaleStats(NamedTuple):
    """An RMS-style forward: the output and the reciprocal root mean square."""

    y: Array
    rstd: Array


class ScaleGrads(NamedTuple):
    """An RMS-style backward: dx and the gradient of weight (None when absent)."""

    dx: Array
    dweight: Array | None


# ----------------------------------------------------------------------------------------- declarations
class Dims(dict):
    """The shapes of an op's arrays (None when absent) and its attributes, by name (also as attributes)."""

    __getattr__ = dict.__getitem__


@dataclass(frozen=True)
class Arg:
    """One argument of the public function (in its positional order; ``out`` excluded)."""

    name: str
    kind: str = TENSOR
    mutable: bool = False  # updated in place (running statistics)


@dataclass(frozen=True)
class Out:
    name: str
    shape: Callable[[Dims], tuple]
    dtype: str | tuple = DATA
    # the output exists only when this (optional) input is given, or when this predicate of the dims holds
    when: str | Callable[[Dims], bool] | None = None


@dataclass(frozen=True)
class Scratch:
    """A scratch array the op's kernel takes, named as the kernel's parameter. ``shape`` is a function of the
    ``Dims`` the public function passes to ``OpSpec.scratch_for`` (the op's canonical sizes and modes, the
    thread count) and ``kernels`` (the backend's kernel namespace: the plan functions the kernel modules
    export); ``dtype`` a dtype name, ``DATA`` (the data's dtype) or ``STAT`` (its statistic dtype)."""

    name: str
    shape: Callable[[Dims], tuple]
    dtype: str = "float64"


def like(name: str) -> Callable[[Dims], tuple]:
    """Shape rule: the shape of input ``name``."""
    return lambda d: d[name]


def lead(d: Dims, name: str = "x") -> tuple:
    """The leading dims of a row op's array (all but the last ``normalized_ndim``)."""
    shape = d[name]
    return tuple(shape[: len(shape) - d.normalized_ndim])


def rows_of(name: str) -> Callable[[Dims], tuple]:
    """Shape rule: the leading dims of input ``name`` (all but the last: one value per row)."""
    return lambda d: tuple(d[name][:-1])


def channels(d: Dims, name: str = "x") -> tuple:
    """Shape rule: (C,), C the size of the channel axis ``axis`` (1 or -1) of input ``name``."""
    return (d[name][d.axis],)


def grad(name: str, of: str) -> Out:
    """The gradient of optional input ``of``: its shape and dtype, present only when ``of`` is."""
    return Out(name, like(of), dtype=of, when=of)


def args(spec: str) -> tuple[Arg, ...]:
    """Arguments from a compact spelling: ``"x weight? bias? running_mean?! :training=bool :eps=float"``
    (``?`` optional array, ``!`` updated in place, ``:name=kind`` an attribute)."""
    out = []
    for tok in spec.split():
        if tok.startswith(":"):
            name, kind = tok[1:].split("=")
            out.append(Arg(name, kind))
        else:
            mutable = tok.endswith("!")
            tok = tok.rstrip("!")
            out.append(Arg(tok.rstrip("?"), OPT_TENSOR if tok.endswith("?") else TENSOR, mutable))
    return tuple(out)


@dataclass(frozen=True)
class OpSpec:
    """The declaration of one public op (one direction: forward or backward)."""

    name: str
    args: tuple[Arg, ...]
    outputs: tuple[Out, ...]
    result: type | None  # the NamedTuple returned; None: one bare array (LRN's backward)
    family: str  # the module of the public function: fastnorm.norms.<family> (norm ops) or fastnorm.<family>
    reference: Callable | None = None
    primary: str = "x"  # the array whose dtype sets the op's data and statistic dtypes
    # bytes a perfect fused kernel reads + writes (benchmarks): None, the default, is ``moved``'s rule (each
    # array argument read once, each output written once); a function of the dims and the primary input's
    # item size for a kernel that moves something else (an iterative one)
    bytes_moved: Callable[[Dims, int], int] | None = None
    doc: str = field(default="", compare=False)
    group: str = NORM
    half: bool = True  # the CPU kernels take bfloat16/float16 data (the primary input's dtype)
    # the torch.library custom op that runs it (fastnorm::<name>; its fake is built from the outputs)
    torch_op: str | None = None
    # the kernel's scratch arrays, in its parameter order (allocated by ``scratch_for``)
    scratch: tuple[Scratch, ...] = ()

    @property
    def args_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args)

    @property
    def arrays(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args if a.kind in (TENSOR, OPT_TENSOR))

    @property
    def attrs(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args if a.kind not in (TENSOR, OPT_TENSOR))

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def layout(self, shapes: dict, attrs: dict, dtypes: dict, stat_dtype: Callable, fixed: Callable = np.dtype) -> list:
        """One ``(name, shape, dtype)`` per declared output, None for an output that does not exist.

        ``shapes``/``dtypes``: by array name (None / missing for an absent one); ``attrs``: the attribute
        values the shape rules read; ``stat_dtype``: the statistic dtype of a data dtype, ``fixed``: the
        dtype of a dtype name (NumPy's by default, or torch's)."""
        d = Dims(shapes, **attrs)
        data = dtypes[self.primary]
        specs = []
        for o in self.outputs:
            if callable(o.when) and not o.when(d) or isinstance(o.when, str) and shapes.get(o.when) is None:
                specs.append(None)
                continue
            specs.append((o.name, tuple(o.shape(d)), self._dtype(o.dtype, dtypes, data, stat_dtype, fixed)))
        return specs

    def _dtype(self, rule, dtypes: dict, data, stat_dtype: Callable, fixed: Callable):
        for r in rule if isinstance(rule, tuple) else (rule,):
            if r == DATA:
                return data
            if r == STAT:
                return stat_dtype(data)
            if r not in self.arrays:
                return fixed(r)
            if r in dtypes:
                return dtypes[r]
        raise ValueError(f"{self.name}: no dtype rule of {rule} applies")

    def moved(self, shapes: dict, attrs: dict, dtypes: dict, stat_dtype: Callable) -> int:
        """Bytes a perfect fused kernel reads and writes in a call (``layout``'s arguments): each given array
        argument read once (one updated in place, ``!``, also written back), each output written once; or
        the declared ``bytes_moved`` rule."""
        if self.bytes_moved is not None:
            return self.bytes_moved(Dims(shapes, **attrs), np.dtype(dtypes[self.primary]).itemsize)
        arrays = {a.name: 1 + a.mutable for a in self.args if a.kind in (TENSOR, OPT_TENSOR)}
        sized = [(shapes[k], dtypes[k], times) for k, times in arrays.items() if shapes.get(k) is not None]
        sized += [(o[1], o[2], 1) for o in self.layout(shapes, attrs, dtypes, stat_dtype) if o is not None]
        return sum(times * math.prod(shape) * np.dtype(dt).itemsize for shape, dt, times in sized)

    def _call_dims(self, fn: Callable, kwargs: dict) -> tuple[dict, dict, dict]:
        """(shapes, attrs, dtypes) of the call ``fn(**kwargs)`` on NumPy arrays (attributes not given: ``fn``'s
        defaults)."""
        import inspect

        params = inspect.signature(fn).parameters
        kw = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty} | kwargs
        arrays = {k: kw.get(k) for k in self.arrays}
        shapes = {k: None if a is None else np.shape(a) for k, a in arrays.items()}
        dtypes = {k: np.asarray(a).dtype for k, a in arrays.items() if a is not None}
        return shapes, {k: kw.get(k) for k in self.attrs}, dtypes

    def layout_of_call(self, fn: Callable, kwargs: dict) -> list:
        """``layout`` of the call ``fn(**kwargs)`` on NumPy arrays: what the benchmarks' ``out=`` providers and
        the contract tests allocate."""
        return self.layout(*self._call_dims(fn, kwargs), numpy_stat_dtype)

    def moved_by_call(self, fn: Callable, kwargs: dict) -> int:
        """``moved`` for the call ``fn(**kwargs)`` on NumPy arrays (the benchmarks' bytes)."""
        return self.moved(*self._call_dims(fn, kwargs), numpy_stat_dtype)

    def layout_for(self, be, arrays: dict, **attrs) -> list:
        """``layout`` of the validated inputs ``arrays`` (by name; None for an absent one) on backend ``be``."""
        key = [self.name, be.name]
        for k, a in arrays.items():
            key += (k, None, None) if a is None else (k, tuple(a.shape), dtype_of(a))
        key += attrs.items()
        try:
            return list(_LAYOUTS[key := tuple(key)])
        except KeyError:
            pass
        except TypeError:  # an unhashable attribute: no cache
            key = None
        shapes = {k: None if a is None else tuple(a.shape) for k, a in arrays.items()}
        dtypes = {k: dtype_of(a) for k, a in arrays.items() if a is not None}
        specs = self.layout(shapes, attrs, dtypes, be.stat_dtype)
        if key is not None:
            if len(_LAYOUTS) >= 4096:
                _LAYOUTS.clear()
            _LAYOUTS[key] = tuple(specs)
        return specs

    def scratch_for(self, be, dtype, **dims) -> list:
        """The kernel's scratch arrays for data of ``dtype`` on backend ``be``, from the declared plan: each
        shape rule reads ``dims`` (the op's canonical sizes and modes, ``threads``) and ``kernels``."""
        d = Dims(dims, kernels=be.kernels)
        dtypes = {DATA: dtype, STAT: be.stat_dtype(dtype)}
        return [
            be.empty(tuple(s.shape(d)), dtypes[s.dtype] if s.dtype in dtypes else np.dtype(s.dtype))
            for s in self.scratch
        ]

    def outputs_for(self, be, out, arrays: dict, **attrs) -> list:
        """The outputs of a call: ``out=`` buffers checked against the declaration, or new ones allocated.

        ``arrays``: the validated inputs by name, in the declared order (their order numbers the inputs in
        the aliasing errors); ``attrs``: what the shape rules read (e.g. ``normalized_ndim``)."""
        specs = self.layout_for(be, arrays, **attrs)
        return V.outputs(be, self.name, out, specs, tuple(arrays.values()))


REGISTRY: dict[str, OpSpec] = {}
# layout_for's results by (op, backend, each array's name, shape and dtype, the attributes): a layout is a
# pure function of these, and a training loop repeats a handful of them
_LAYOUTS: dict[tuple, tuple] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"op {spec.name} is declared twice")
    REGISTRY[spec.name] = spec
    return spec


def ops(family: str | None = None, group: str | None = None) -> list[OpSpec]:
    """The registered ops, optionally of one family and/or group, in declaration order."""
    return [
        s for s in REGISTRY.values() if (family is None or s.family == family) and (group is None or s.group == group)
    ]


def exports(family: str, *extra: str) -> list[str]:
    """A module's ``__all__``: its registered ops (declaration order), then ``extra`` (result types)."""
    return [*(s.name for s in ops(family)), *extra]


def numpy_stat_dtype(dtype) -> np.dtype:
    """float32 for 16-bit data, the data dtype otherwise (the rule every backend follows)."""
    from . import _dtypes

    return np.dtype(_dtypes.stat_dtype(dtype))
