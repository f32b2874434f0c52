"""The torch glue of a forward/backward op pair, generated from its declarations (``fastnorm._spec``).

``bind(fwd, bwd, ...)`` registers ``fastnorm::<fwd.name>`` and ``fastnorm::<bwd.name>`` as ``torch.library``
custom ops (the schema from the declared arguments, the fake from the declared outputs), and builds the
``torch.autograd.Function`` that runs them: its forward saves what the backward declaration reads (by
name: forward arguments and outputs), its backward maps the declared gradients ``d<name>`` back onto the
forward's arguments. Eager calls go straight to the public fastnorm function (less overhead than the
dispatcher); while Dynamo traces, the custom ops are called, so graphs hold opaque ``fastnorm::*`` nodes.

Two autograd routes, as torch offers: ``on_op=False`` wraps the custom ops in the ``autograd.Function``;
``on_op=True`` registers the autograd formula on the forward custom op (``register_autograd``) and keeps
the ``autograd.Function`` for the eager path only (ops with several differentiable outputs).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._spec import OPT_TENSOR, TENSOR, OpSpec
from ._common import _arr, _ten

BINDINGS: dict[str, Binding] = {}


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The statistic dtype of a data dtype: float32 for 16-bit data (the backends' rule)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def call(op, impl, *args):
    """The custom op while Dynamo traces (an opaque graph node), else the kernel directly (less overhead)."""
    if torch.compiler.is_compiling():
        return op(*args)
    return impl(*args)


def _kernel_writable(t: Tensor) -> bool:
    """Whether a kernel can update ``t`` in place: contiguous and aligned to its items."""
    return t.is_contiguous() and t.data_ptr() % t.element_size() == 0


def _names(spec: OpSpec, fixed: dict) -> list[str]:
    return [a.name for a in spec.args if a.name not in fixed]


def _schema(spec: OpSpec, fixed: dict) -> str:
    """The custom op's schema: the declared arguments (``fixed`` ones left out) and one Tensor per output."""
    params, alias = [], iter("abcdefgh")
    for a in spec.args:
        if a.name in fixed:
            continue
        if a.kind in (TENSOR, OPT_TENSOR):
            kind = "Tensor" + (f"({next(alias)}!)" if a.mutable else "") + ("?" if a.kind == OPT_TENSOR else "")
        else:
            kind = a.kind
        params.append(f"{kind} {a.name}")
    returns = "Tensor" if spec.result is None else f"({', '.join(['Tensor'] * len(spec.outputs))})"
    return f"({', '.join(params)}) -> {returns}"


def _impl(spec: OpSpec, fixed: dict, update: str | None):
    """The eager implementation: the public fastnorm function on zero-copy views, results as tensors (an
    absent output, e.g. the gradient of an absent weight, as an empty tensor: custom ops return no None)."""
    names, arrays = _names(spec, fixed), set(spec.arrays)
    mutable = [a.name for a in spec.args if a.mutable]

    def run(kw: dict):
        fn = getattr(importlib.import_module("fastnorm"), spec.name)
        return fn(**{k: _arr(v) if k in arrays else v for k, v in kw.items()})

    def impl(*args):
        kw = dict(zip(names, args), **fixed)
        ref = kw[spec.primary]
        stand_ins = {}
        if update is not None and kw[update]:  # updated in place: contiguous stand-ins for what kernels cannot write
            stand_ins = {
                k: kw[k].contiguous(memory_format=torch.contiguous_format).clone()
                for k in mutable
                if kw[k] is not None and not _kernel_writable(kw[k])
            }
        res = run({**kw, **stand_ins})
        for k, w in stand_ins.items():
            with torch.no_grad():
                kw[k].copy_(w)
        outs = [ref.new_empty((0,)) if o is None else _ten(o, ref) for o in (res if spec.result else (res,))]
        return outs[0] if spec.result is None else tuple(outs)

    return impl


def fake_outputs(spec: OpSpec, arrays: dict, **attrs) -> tuple:
    """Empty tensors of ``spec``'s declared output shapes and dtypes for these tensors (by the declaration's
    names; None for an absent one) and attribute values: what a custom op's fake returns. An output that
    does not exist is an empty tensor (custom ops return no None)."""
    shapes = {n: None if t is None else tuple(t.shape) for n, t in arrays.items()}
    dtypes = {n: t.dtype for n, t in arrays.items() if t is not None}
    ref = arrays[spec.primary]
    layout = spec.layout(shapes, attrs, dtypes, stat_dtype, lambda name: getattr(torch, name))
    return tuple(ref.new_empty((0,)) if s is None else ref.new_empty(s[1], dtype=s[2]) for s in layout)


def _fake(spec: OpSpec, fixed: dict):
    """The fake (meta) implementation: empty tensors of the declared output shapes and dtypes."""
    names = _names(spec, fixed)

    def fake(*args):
        kw = dict(zip(names, args), **fixed)
        outs = fake_outputs(spec, {n: kw[n] for n in spec.arrays}, **{n: kw[n] for n in spec.attrs})
        return outs[0] if spec.result is None else outs

    return fake


def custom_op(spec: OpSpec, fixed: dict, update: str | None = None):
    """``fastnorm::<spec.name>`` (registered once) and its eager implementation."""
    impl = _impl(spec, fixed, update)
    mutates = tuple(a.name for a in spec.args if a.mutable and a.name not in fixed)
    op = torch.library.custom_op(f"fastnorm::{spec.name}", impl, mutates_args=mutates, schema=_schema(spec, fixed))
    op.register_fake(_fake(spec, fixed))
    return op, impl


@dataclass
class Binding:
    fwd: OpSpec
    bwd: OpSpec
    fwd_op: Any
    fwd_impl: Any
    bwd_op: Any
    bwd_impl: Any
    function: type  # the torch.autograd.Function (eager path, and the compiled path when not on_op)
    returns: tuple
    on_op: bool

    def apply(self, *args):
        """Run the op on the forward's arguments (declared order); returns the ``returns`` outputs."""
        if self.on_op and torch.compiler.is_compiling():
            outs = dict(zip(self.fwd.output_names, self.fwd_op(*args)))
            picked = tuple(outs[r] for r in self.returns)
            return picked[0] if len(picked) == 1 else picked
        return self.function.apply(*args)


def bind(
    fwd: OpSpec,
    bwd: OpSpec,
    *,
    returns: tuple = ("y",),
    fixed: dict | None = None,
    update: str | None = None,
    also: dict | None = None,
    on_op: bool = False,
) -> Binding:
    """Custom ops, fakes and autograd for one op pair, from its declarations.

    Parameters
    ----------
    fwd, bwd : OpSpec
        The declarations. The backward's arguments are named after the forward's arguments and outputs;
        its arguments ``d<out>`` receive the gradient of forward output ``<out>``; its outputs ``d<arg>`` are
        the gradients of forward argument ``<arg>``.
    returns : tuple of str
        The forward outputs the torch function returns (the others are saved statistics).
    fixed : dict, optional
        Attributes the torch layer always passes the same value (left out of the custom ops' schemas).
    update : str, optional
        The forward attribute under which the mutable arguments (running statistics) are updated in place.
    also : dict, optional
        Extra gradient routes, forward argument -> backward output (``{"residual": "dx"}``).
    on_op : bool
        Register the autograd formula on the forward custom op (``register_autograd``) instead of wrapping
        the custom ops in the ``autograd.Function`` (which then serves the eager path only).
    """
    fixed = fixed or {}
    fwd_op, fwd_impl = custom_op(fwd, fixed, update)
    bwd_op, bwd_impl = custom_op(bwd, fixed)
    fnames, bnames = _names(fwd, fixed), _names(bwd, fixed)
    incoming = {b: b[1:] for b in bnames if b.startswith("d") and b[1:] in fwd.output_names}
    required = {a.name for a in bwd.args if a.kind == TENSOR}
    saved = [b for b in bnames if b in bwd.arrays and b not in incoming]
    battrs = [b for b in bnames if b in bwd.attrs]
    routes = {a: f"d{a}" for a in fwd.arrays if f"d{a}" in bwd.output_names} | (also or {})
    single = bwd.result is None

    def save(ctx, args, outs) -> None:
        named = dict(zip(fnames, args)) | dict(zip(fwd.output_names, outs))
        ctx.save_for_backward(*(named[b] for b in saved))
        ctx.fastnorm_attrs = tuple(named[b] for b in battrs)
        ctx.fastnorm_given = {a: named[a] is not None for a in routes}

    def grads(ctx, douts: dict, op=None) -> tuple:
        named = dict(zip(saved, ctx.saved_tensors)) | dict(zip(battrs, ctx.fastnorm_attrs))
        for b, o in incoming.items():
            g = douts.get(o)
            named[b] = torch.zeros_like(named[bwd.primary]) if g is None and b in required else g
        args = (named[b] for b in bnames)
        res = call(bwd_op, bwd_impl, *args) if op is None else op(*args)
        res = dict(zip(bwd.output_names, (res,) if single else res))
        return tuple(res[routes[a]] if a in routes and ctx.fastnorm_given[a] else None for a in fnames)

    def forward(ctx, *args):
        outs = fwd_impl(*args) if on_op else call(fwd_op, fwd_impl, *args)
        if len(returns) > 1:
            ctx.set_materialize_grads(False)  # no gradient on an output: None, the kernel adds nothing
        save(ctx, args, outs)
        picked = tuple(dict(zip(fwd.output_names, outs))[r] for r in returns)
        return picked[0] if len(picked) == 1 else picked

    def backward(ctx, *douts):
        return grads(ctx, dict(zip(returns, douts)))

    name = "".join(p.title() for p in fwd.name.removesuffix("_forward").split("_")) + "Function"
    function = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward),
        "__doc__": f"Autograd for ``fastnorm.{fwd.name}`` / ``{bwd.name}`` (generated by ``bind``).",
    })  # fmt: skip
    if on_op:

        def setup_context(ctx, inputs, output):
            save(ctx, inputs, output)
            ctx.mark_non_differentiable(*(o for n, o in zip(fwd.output_names, output) if n not in returns))

        fwd_op.register_autograd(
            lambda ctx, *douts: grads(ctx, dict(zip(fwd.output_names, douts)), bwd_op), setup_context=setup_context
        )
    binding = Binding(fwd, bwd, fwd_op, fwd_impl, bwd_op, bwd_impl, function, tuple(returns), on_op)
    BINDINGS[fwd.name.removesuffix("_forward")] = binding
    return binding


def bind_pair(name: str, **kw) -> Binding:
    """``bind`` the registered ``<name>_forward`` / ``<name>_backward`` declarations."""
    from .._spec import REGISTRY

    return bind(REGISTRY[f"{name}_forward"], REGISTRY[f"{name}_backward"], **kw)
