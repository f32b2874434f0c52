"""``fastnorm.show_config()``: how the CPU kernels were built and which instruction-set target runs."""

from __future__ import annotations

import importlib.util
import os
import platform
import sys


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def config() -> dict:
    """The configuration as a dict (see ``show_config``)."""
    import fastnorm
    from fastnorm._kernels import cpu
    from fastnorm._kernels.cpu import _alloc, _isa, _runtime

    return {
        "fastnorm": fastnorm.__version__,
        "python": platform.python_version(),
        "build": {
            "portable": _runtime.portable_build(),
            "openmp": _runtime.openmp_enabled(),
        },
        "threads": fastnorm.get_num_threads(),
        "cpu": {
            "model": cpu_model(),
            "machine": platform.machine(),
            "features": sorted(cpu.CPU_FEATURES),
        },
        "cpu_target": {
            "selected": cpu.TARGET,
            "requested": cpu.REQUESTED_TARGET,
            "env_var": _isa.ENV_VAR,
            "built": list(cpu.BUILT_TARGETS),
            "runnable": list(cpu.runnable_targets()),
        },
        "cpu_pool": _alloc.stats(),
        "cuda_backend_installed": importlib.util.find_spec("numba") is not None,
    }


def _pool_line(p: dict) -> str:
    if not p["limit"]:
        return "off (FASTNORM_CPU_POOL=0 or FASTNORM_CPU_POOL_MB=0)"
    mib = 2.0**20
    return (
        f"{p['cached_bytes'] / mib:.1f} of {p['limit'] / mib:.0f} MiB cached in {p['cached_blocks']} blocks, "
        f"{p['live_bytes'] / mib:.1f} MiB in use; {p['hits']} hits, {p['misses']} misses, {p['evictions']} evictions"
    )


def show_config(mode: str = "stdout") -> dict | None:
    """Print (or return) how fastnorm was built and what it runs on this machine.

    Reports the build (portable or not, OpenMP), the CPU kernels' thread count, the CPU model and the
    features that matter, and the instruction-set target of the CPU kernels: the selected one, the one
    requested with ``FASTNORM_CPU_TARGET`` (``baseline``, ``avx2``, ``avx512``; the best the CPU supports
    when unset), the targets this build contains and those this CPU can run, and the pool of large CPU
    outputs (its limit, what it caches, its hits and misses; see ``fastnorm.empty_cache``).

    Parameters
    ----------
    mode : {"stdout", "dicts"}
        ``"stdout"`` prints the report; ``"dicts"`` returns it as a dict instead.

    Returns
    -------
    dict or None
        The report when ``mode="dicts"``, else None.
    """
    if mode not in ("stdout", "dicts"):
        raise ValueError(f"show_config: mode must be 'stdout' or 'dicts', got {mode!r}")
    cfg = config()
    if mode == "dicts":
        return cfg
    t, b = cfg["cpu_target"], cfg["build"]
    lines = [
        f"fastnorm {cfg['fastnorm']} (Python {cfg['python']}, {sys.platform})",
        f"  build            : {'portable' if b['portable'] else 'source'}, "
        f"OpenMP {'on' if b['openmp'] else 'off (serial kernels)'}",
        f"  threads          : {cfg['threads']} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
        f"  cpu              : {cfg['cpu']['model']} ({cfg['cpu']['machine']})",
        f"  cpu features     : {' '.join(cfg['cpu']['features']) or '(not probed)'}",
        f"  cpu target       : {t['selected']}"
        + (f" (requested {t['env_var']}={t['requested']})" if t["requested"] else " (auto)"),
        f"  targets built    : {', '.join(t['built'])}",
        f"  targets runnable : {', '.join(t['runnable'])}",
        f"  cpu output pool  : {_pool_line(cfg['cpu_pool'])}",
        f"  CUDA backend     : {'numba installed' if cfg['cuda_backend_installed'] else 'numba not installed'}",
    ]
    print("\n".join(lines))
    return None
