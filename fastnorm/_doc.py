"""Numpydoc fragments shared by the public docstrings (the pattern of scipy's ``doccer`` and pandas'
``Substitution``).

A docstring line that holds only ``%(name)s`` is replaced, when the module defining the function is imported,
by fragment ``name`` indented like the placeholder, so ``help()`` and rendered docs show the complete text.
Fragments are for parameters described identically by several ops; the math and every op-specific parameter
stay written out in the docstring itself. ``%(out)s`` is generated from the op's declaration
(``fastnorm._spec.OpSpec``): the ``out=`` entry names the declared outputs, in order.
"""

from __future__ import annotations

import re
from collections.abc import Callable

FRAGMENTS = {
    "normalized_ndim": "normalized_ndim : int\n    How many trailing dims form a row (>= 1).",
    "normalized_ndim_bwd": "normalized_ndim : int\n    As in the forward.",
    "affine_bwd": (
        "weight, bias : array of shape normalized_shape, optional\n"
        "    The forward's parameters; ``bias`` only says whether dbias is wanted."
    ),
    "scale_bwd": "weight : array of shape normalized_shape, optional\n    The forward's scale.",
    "residual_grads": (
        "dy : array, shape like h\n    Gradient of y.\n"
        "dh : array like h, or None\n    Gradient arriving on the residual stream h (None: none, as if zero)."
    ),
}

_PLACEHOLDER = re.compile(r"^([ \t]*)%\((\w+)\)s[ \t]*$", re.MULTILINE)


def out_param(spec) -> str:
    """The ``out`` entry of an op's Parameters section, from its declared outputs."""
    names = spec.output_names
    if spec.result is None:  # one bare array (LRN's backward)
        return f"out : array, tuple or None, optional\n    The ``{names[0]}`` buffer (or ``({names[0]},)``)."
    return (
        f"out : tuple of {len(names)} arrays or None, optional\n"
        f"    ``({', '.join(names)})`` buffers (entries may be None: allocated), each exactly its output's shape and\n"
        "    dtype, C-contiguous, writeable, not overlapping an input; written in place and returned."
    )


def render(doc: str, fragments: dict) -> str:
    """``doc`` with each placeholder line replaced by its fragment (a KeyError names an unknown one)."""

    def sub(m: re.Match) -> str:
        indent, name = m.groups()
        return "\n".join(indent + line if line else "" for line in fragments[name].split("\n"))

    return _PLACEHOLDER.sub(sub, doc)


def fill_doc(spec=None, **extra: str) -> Callable:
    """Decorator: render the function's docstring with ``FRAGMENTS``, ``extra`` and (given the op's
    declaration ``spec``) ``out``. Docstrings stripped by ``python -OO`` are left alone."""

    def deco(f: Callable) -> Callable:
        if f.__doc__:
            fragments = {**FRAGMENTS, **extra}
            if spec is not None:
                fragments["out"] = out_param(spec)
            f.__doc__ = render(f.__doc__, fragments)
        return f

    return deco
