"""Which build of the CPU kernels runs: the instruction-set targets and the rule that picks one.

Every multi-target kernel family (``_layer_norm``, ``_channel_norm``, ...) is built once per target as
``_<family>_<target>``. At import, ``fastnorm._kernels.cpu`` picks the best target that was built and that
the CPU (and OS) supports, unless ``FASTNORM_CPU_TARGET`` names one. This module is pure Python so the rule
can be tested with any feature set.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

ENV_VAR = "FASTNORM_CPU_TARGET"

# x86-64 microarchitecture levels: avx2 is x86-64-v3, avx512 is x86-64-v4 (features as in /proc/cpuinfo).
_V2 = ("sse3", "ssse3", "sse4_1", "sse4_2", "popcnt", "cx16", "lahf_lm")
_V3 = _V2 + ("avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "lzcnt", "movbe", "xsave")
_V4 = _V3 + ("avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl")

# target -> CPU features it needs, best first. "native" (-march=native, opt-in build) is never picked on
# its own: it runs only when FASTNORM_CPU_TARGET=native asks for it.
TARGETS: dict[str, tuple[str, ...]] = {"avx512": _V4, "avx2": _V3, "baseline": ()}
OPT_IN = ("native",)
ALL_TARGETS = tuple(TARGETS) + OPT_IN


def supported(target: str, features: Iterable[str]) -> bool:
    """True if a CPU with ``features`` can run ``target`` (opt-in targets: the caller's responsibility)."""
    if target in OPT_IN:
        return True
    return set(TARGETS[target]) <= set(features)


def choose_target(features: Iterable[str], built: Iterable[str], requested: str | None = None) -> str:
    """The kernel target to run.

    Parameters
    ----------
    features : iterable of str
        CPU features the CPU and OS support (names as in ``/proc/cpuinfo``: ``"avx2"``, ``"avx512f"``, ...).
    built : iterable of str
        Targets this build contains (always ``"baseline"``).
    requested : str or None
        ``FASTNORM_CPU_TARGET``: ``None``, ``""`` or ``"auto"`` for the best one; else a target name.

    Returns
    -------
    str
        The best built target the CPU supports, or ``requested`` if it is built and supported. A requested
        target that is not built or that the CPU lacks gives a ``RuntimeWarning`` and the best one instead.

    Raises
    ------
    ValueError
        If ``requested`` is not a known target name.
    """
    features, built = set(features), set(built)
    best = next(t for t in TARGETS if t in built and supported(t, features)) if "baseline" in built else None
    if best is None:
        raise RuntimeError("fastnorm: the CPU kernels have no baseline build")
    req = (requested or "").strip().lower()
    if req in ("", "auto"):
        return best
    if req not in ALL_TARGETS:
        raise ValueError(f"{ENV_VAR}={requested!r}: expected one of auto, {', '.join(ALL_TARGETS)}")
    if req not in built:
        warnings.warn(
            f"{ENV_VAR}={req}: this build of fastnorm has no {req} kernels (built: {', '.join(sorted(built))});"
            f" using {best}",
            RuntimeWarning,
            stacklevel=3,
        )
        return best
    if not supported(req, features):
        missing = sorted(set(TARGETS[req]) - features)
        warnings.warn(
            f"{ENV_VAR}={req}: this CPU lacks {', '.join(missing)}; using {best}", RuntimeWarning, stacklevel=3
        )
        return best
    return req
