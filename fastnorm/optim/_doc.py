"""Docstring fragments shared by the functional steps (numpydoc entries that read the same in each).

``fill(spec, torch_name)`` replaces each line of a docstring that is only ``%(key)s`` by the fragment
``key`` (``fastnorm._doc.render``), indented as the placeholder was, and appends the entries every step ends with (the
hyperparameters, made from the algorithm's declaration: its names in the functional step's order; the
16-bit options; Returns), so ``help()`` shows the complete text.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable

from .._doc import render
from ._algos import Algo

__all__ = ["FRAGMENTS", "fill"]

FRAGMENTS = {
    "arrays": """params, grads : list of arrays
    The parameters (updated in place) and their gradients.""",
    "step": """step : int or sequence of int
    This update's number (from 1), one int or one per tensor.""",
    "precision": """master_params, stochastic_rounding, seed
    16-bit parameters: see "16-bit parameters" in ``fastnorm.optim``.""",
    "returns": """Returns
-------
None""",
}


def fill(spec: Algo, torch_name: str, note: str = "") -> Callable:
    """A decorator: the function's docstring with its placeholders replaced and the common entries
    appended (the declared hyperparameters "As ``torch.optim.<torch_name>``" plus ``note``)."""
    names = [k for k in spec.hyper if k not in spec.fixed]
    hyper = f"{', '.join(names)}\n    As ``torch.optim.{torch_name}``{note}."
    tail = "\n".join((hyper, FRAGMENTS["precision"], "", FRAGMENTS["returns"]))

    def apply(fn: Callable) -> Callable:
        doc = render(fn.__doc__.rstrip(), FRAGMENTS)
        fn.__doc__ = f"{doc}\n{textwrap.indent(tail, '    ')}\n    "
        return fn

    return apply
