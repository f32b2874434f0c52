"""CUDA kernels (Numba-CUDA), one launcher per op with the CPU kernel's name and signature.

Importing this module imports numba; ``fastnorm`` imports it only on the first GPU call. Launchers take
Numba device arrays or any ``__cuda_array_interface__`` object (converted zero-copy), preallocated outputs
and scalars; the trailing ``n_threads`` is the CPU thread count there and, here, the bound on the number of
partial rows of a column reduction (the row count of the scratch the public layer passes).

The namespace is built from the package's public modules: a kernel module marks its launchers with
``@_common.launcher``, so a new op needs no edit here.
"""

import importlib
import pkgutil


def _launchers() -> dict:
    """The marked launchers of every public module of this package, by name (one function per name)."""
    found: dict = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, value in vars(module).items():
            if getattr(value, "fastnorm_launcher", False) and found.setdefault(name, value) is not value:
                raise ImportError(f"fastnorm: two CUDA launchers are named {name!r} ({info.name})")
    return found


_found = _launchers()
globals().update(_found)
__all__ = sorted(_found)
del _found
