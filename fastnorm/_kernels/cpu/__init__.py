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


for _family in FAMILIES:
    sys.modules[f"{__name__}.{_family}"] = globals()[_family] = target_module(_family)
del _family

from ._channel_norm import (  # noqa: E402
    batch_norm_backward,
    batch_norm_forward,
    group_norm_backward,
    group_norm_forward,
    instance_norm_backward,
    instance_norm_forward,
)
from ._divergence import (  # noqa: E402
    entropy_backward,
    entropy_forward,
    js_div_backward,
    js_div_forward,
    kl_div_backward,
    kl_div_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from ._layer_norm import layer_norm_backward, layer_norm_forward, rms_norm_backward, rms_norm_forward  # noqa: E402
from ._lrn import local_response_norm_backward, local_response_norm_forward, lrn_scratch_len  # noqa: E402

# Optimizer steps: kernels over address tables, plus the C-level array checks fastnorm.optim runs first.
from ._optim import (  # noqa: E402
    adadelta_step,
    adagrad_step,
    adam_step,
    gather_like,
    gather_params,
    rmsprop_step,
    sgd_step,
)
from ._transport import sinkhorn, sinkhorn_backward, wasserstein_1d, wasserstein_1d_backward  # noqa: E402
from ._weight_norm import (  # noqa: E402
    cosine_linear_backward_post,
    cosine_linear_backward_pre,
    cosine_linear_forward,
    weight_norm_backward,
    weight_norm_forward,
)

__all__ = [
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
    "local_response_norm_forward",
    "local_response_norm_backward",
    "lrn_scratch_len",
    "weight_norm_forward",
    "weight_norm_backward",
    "cosine_linear_forward",
    "cosine_linear_backward_pre",
    "cosine_linear_backward_post",
    "sgd_step",
    "adagrad_step",
    "adadelta_step",
    "rmsprop_step",
    "adam_step",
    "gather_params",
    "gather_like",
    "batch_norm_forward",
    "batch_norm_backward",
    "instance_norm_forward",
    "instance_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "entropy_forward",
    "entropy_backward",
    "kl_div_forward",
    "kl_div_backward",
    "js_div_forward",
    "js_div_backward",
    "wasserstein_1d",
    "wasserstein_1d_backward",
    "sinkhorn",
    "sinkhorn_backward",
]
