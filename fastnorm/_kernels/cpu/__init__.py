"""CPU kernels (Cython + OpenMP), one name per op; see each ``_<family>.pyx`` for the signatures.

Each kernel family is built once per instruction-set target (``_layer_norm_baseline``, ``_layer_norm_avx2``,
``_layer_norm_avx512``; see setup.py). At import the best target that was built and that the CPU supports
is chosen (``FASTNORM_CPU_TARGET=baseline|avx2|avx512|native`` forces one) and its modules are installed
under the plain family names, so ``fastnorm._kernels.cpu._layer_norm`` is the chosen build.
"""

import contextlib
import importlib
import importlib.util
import os
import pkgutil
import sys
from types import ModuleType

from . import _cpuinfo, _isa

# Kernel families built per target (every .pyx but the SINGLE_TARGET ones of setup.py), found from the
# baseline builds, so a new kernel file needs no edit here.
FAMILIES = tuple(
    sorted(m.name[: -len("_baseline")] for m in pkgutil.iter_modules(__path__) if m.name.endswith("_baseline"))
)


def _is_built(target: str) -> bool:
    return all(importlib.util.find_spec(f"{__name__}.{f}_{target}") is not None for f in FAMILIES)


BUILT_TARGETS = tuple(t for t in _isa.ALL_TARGETS if _is_built(t))
if "baseline" not in BUILT_TARGETS:
    raise ImportError(
        "fastnorm: the CPU kernels are not built (or were built before per-target builds); "
        "run `python setup.py build_ext --inplace` or reinstall fastnorm"
    )
CPU_FEATURES = _cpuinfo.cpu_features()
REQUESTED_TARGET = os.environ.get(_isa.ENV_VAR) or None
TARGET = _isa.choose_target(CPU_FEATURES, BUILT_TARGETS, REQUESTED_TARGET)


def target_module(family: str, target: str | None = None):
    """The module of kernel ``family`` (e.g. ``"_layer_norm"``) built for ``target`` (default: the chosen one).

    Importing a target the CPU does not support is safe; calling its kernels is not.
    """
    if family not in FAMILIES:
        raise ValueError(f"target_module: unknown kernel family {family!r}; expected one of {FAMILIES}")
    target = TARGET if target is None else target
    if target not in BUILT_TARGETS:
        raise ValueError(f"target_module: target {target!r} is not built; built: {BUILT_TARGETS}")
    return importlib.import_module(f"{__name__}.{family}_{target}")


def runnable_targets() -> tuple:
    """The built targets this CPU can run (``native`` only if it is the chosen one)."""
    return tuple(t for t in BUILT_TARGETS if (t == TARGET or t not in _isa.OPT_IN) and _isa.supported(t, CPU_FEATURES))


@contextlib.contextmanager
def use_target(target: str):
    """Within the block, this package's kernel names are those of the ``target`` build (tests, benchmarks).

    The public ops look their kernels up here at each call, so they run ``target``'s code in the block.
    Not thread-safe; the family modules (``_layer_norm``, ...) stay the chosen target's.
    """
    if target not in runnable_targets():
        raise ValueError(f"use_target: {target!r} is not a target this CPU runs ({runnable_targets()})")
    g = globals()
    saved = {name: g[name] for name in __all__}
    try:
        for family in FAMILIES:
            mod = target_module(family, target)
            g.update({name: getattr(mod, name) for name in __all__ if hasattr(mod, name)})
        yield
    finally:
        g.update(saved)


def _kernels_of(module) -> dict:
    """The public kernels of a family module: its callables that are not modules."""
    return {
        n: v for n, v in vars(module).items() if not n.startswith("_") and callable(v) and not isinstance(v, ModuleType)
    }


__all__: list[str] = []
for _family in FAMILIES:
    sys.modules[f"{__name__}.{_family}"] = globals()[_family] = _module = target_module(_family)
    _names = _kernels_of(_module)
    if set(_names) & set(__all__):
        raise ImportError(f"fastnorm: kernel names {sorted(set(_names) & set(__all__))} defined twice ({_family})")
    globals().update(_names)
    __all__ += sorted(_names)
del _family, _module, _names
