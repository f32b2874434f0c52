"""Build the Cython CPU kernels.

Every ``fastnorm/_kernels/cpu/*.pyx`` becomes extension modules; adding a kernel file needs no edit here.
A kernel file ``_<family>.pyx`` is built once per instruction-set target, as ``_<family>_<target>``:

  baseline  the compiler's default ISA (x86-64 = SSE2 on x86; the only target on other architectures)
  avx2      -march=x86-64-v3 (AVX2, FMA, BMI2, ...)
  avx512    -march=x86-64-v4 (AVX-512 F/BW/CD/DQ/VL)
  native    -march=native, only with FASTNORM_NATIVE=1 and only run when FASTNORM_CPU_TARGET=native

``fastnorm._kernels.cpu`` picks the best target the CPU supports at import (``fastnorm.show_config()``
says which). The few files in SINGLE_TARGET (build info, the CPU-feature probe) are built once, baseline.
Source builds and portable builds carry the same targets, so a wheel runs the same code as a source build.

Environment variables:
  FASTNORM_PORTABLE=1        mark the build portable (for wheels / redistribution; never -march=native)
  FASTNORM_NATIVE=1          also build the opt-in ``native`` target (-march=native; not with PORTABLE)
  FASTNORM_TARGETS=a,b       build only these targets (baseline is always built), e.g. for quick builds
  FASTNORM_REQUIRE_OPENMP=1  fail the build instead of warning when the compiler has no OpenMP
  FASTNORM_DEBUG=1           Cython bounds/wraparound checks on, -O0 -g (debugging only)
"""

import glob
import os
import platform
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("FASTNORM_DEBUG", "") == "1"
PORTABLE = os.environ.get("FASTNORM_PORTABLE", "") == "1"
REQUIRE_OPENMP = os.environ.get("FASTNORM_REQUIRE_OPENMP", "") == "1"
NATIVE = os.environ.get("FASTNORM_NATIVE", "") == "1" and not PORTABLE
ONLY_TARGETS = {t.strip() for t in os.environ.get("FASTNORM_TARGETS", "").split(",") if t.strip()}

CPU_DIR = os.path.join("fastnorm", "_kernels", "cpu")
# Built once, for the baseline ISA: build info and the CPU probe (imported before a target is chosen), and the
# streaming-bandwidth kernel of the benchmarks (memory-bound: the ISA does not change its speed at DRAM sizes).
SINGLE_TARGET = {"_runtime", "_cpuinfo", "_stream"}
# Generated per-target copies of the kernel sources (and their .c files) go here, out of the source tree.
TARGET_SRC = os.path.join("build", "fastnorm_targets")
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
# target -> alternative flag sets, the first one the compiler accepts wins (older compilers lack -march=x86-64-vN).
_V3_FLAGS = ["-mavx", "-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2", "-mlzcnt", "-mmovbe", "-mpopcnt", "-msse4.2"]
TARGET_FLAGS = {
    "baseline": [[]],
    "avx2": [["-march=x86-64-v3"], _V3_FLAGS],
    "avx512": [
        ["-march=x86-64-v4"],
        _V3_FLAGS + ["-mavx512f", "-mavx512dq", "-mavx512cd", "-mavx512bw", "-mavx512vl"],
    ],
    "native": [["-march=native"]],
}

# Vectorizable float reductions and sqrt need these; -ffast-math is never used because it
# flushes denormals for the whole process and breaks NaN/inf propagation.
# -g0: no debug info (Python's CFLAGS add -g): modules about 5x smaller (measured: 2.5 MB -> 0.5 MB for
# _channel_norm) and a shorter build, which matters with one copy per ISA target.
OPT_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math", "-g0"]
DEBUG_FLAGS = ["-O0", "-g"]


OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) { int n = 0;
    #pragma omp parallel reduction(+:n)
      n += omp_get_num_threads() > 0;
      return n > 0 ? 0 : 1; }
    """
)
PLAIN_PROBE = "int main(void) { return 0; }\n"


def _compiler_accepts(compiler, src, flags, link_flags=()):
    """Compile and link the C program ``src`` with ``flags``; True if it works."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(src)
        try:
            objs = compiler.compile([path], output_dir=tmp, extra_postargs=list(flags))
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=list(link_flags))
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    """build_ext that probes OpenMP and the native ISA flag before compiling."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:  # pip passes no -j: compile the per-target modules on every core
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        cc = self.compiler
        compile_args = list(DEBUG_FLAGS if DEBUG else OPT_FLAGS)
        link_args = []
        if cc.compiler_type == "msvc":
            compile_args = ["/O2", "/openmp"]
        else:
            if _compiler_accepts(cc, OPENMP_PROBE, ["-fopenmp"], ["-fopenmp"]):
                compile_args.append("-fopenmp")
                link_args.append("-fopenmp")
            else:
                msg = "fastnorm: the C compiler has no OpenMP; building SERIAL kernels (one thread)."
                if REQUIRE_OPENMP:
                    sys.exit(msg + " FASTNORM_REQUIRE_OPENMP=1 makes this an error.")
                print("WARNING: " + msg, file=sys.stderr)
        target_flags = {"baseline": []}
        for target, alternatives in TARGET_FLAGS.items():
            if target == "baseline" or cc.compiler_type == "msvc":
                continue
            if not any(_target_of(e.name) == target for e in self.extensions):
                continue
            ok = next((f for f in alternatives if _compiler_accepts(cc, PLAIN_PROBE, f, f)), None)
            if ok is not None:
                target_flags[target] = ok
            else:
                print(f"WARNING: fastnorm: the C compiler does not take {target} flags; not built", file=sys.stderr)
        self.extensions = [e for e in self.extensions if _target_of(e.name) in target_flags]
        for ext in self.extensions:
            flags = target_flags[_target_of(ext.name)]
            ext.extra_compile_args = compile_args + flags + list(ext.extra_compile_args)
            ext.extra_link_args = link_args + flags + list(ext.extra_link_args)
        super().build_extensions()


def _target_of(ext_name):
    """The ISA target of an extension module name (``..._layer_norm_avx2`` -> ``avx2``)."""
    last = ext_name.rsplit(".", 1)[-1]
    return next((t for t in TARGET_FLAGS if last.endswith("_" + t)), "baseline")


def _targets():
    """The targets this build makes, best last: every x86 level the compiler may take; baseline elsewhere."""
    targets = ["baseline"] + (["avx2", "avx512"] if IS_X86 else []) + (["native"] if NATIVE else [])
    if ONLY_TARGETS:
        unknown = ONLY_TARGETS - set(TARGET_FLAGS)
        if unknown:
            sys.exit(f"FASTNORM_TARGETS: unknown target(s) {sorted(unknown)}; choose from {list(TARGET_FLAGS)}")
        targets = [t for t in targets if t == "baseline" or t in ONLY_TARGETS]
    return targets


def _target_source(pyx, target):
    """A copy of ``pyx`` named for ``target`` under TARGET_SRC (rewritten only when it changed)."""
    stem = os.path.splitext(os.path.basename(pyx))[0]
    out_dir = os.path.join(TARGET_SRC, CPU_DIR)
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, f"{stem}_{target}.pyx")
    with open(pyx) as f:
        text = (
            f"# Generated by setup.py from {pyx.replace(os.sep, '/')} for the {target} target; do not edit.\n"
            + f.read()
        )
    old = None
    if os.path.exists(out):
        with open(out) as f:
            old = f.read()
    if old != text:
        with open(out, "w") as f:
            f.write(text)
    return out


def _extensions():
    include = [np.get_include(), os.path.join("fastnorm", "_kernels", "include")]
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")] + (
        [("FASTNORM_PORTABLE_BUILD", "1")] if PORTABLE else []
    )
    exts = []
    for pyx in sorted(glob.glob(os.path.join(CPU_DIR, "*.pyx"))):
        stem = os.path.splitext(os.path.basename(pyx))[0]
        package = CPU_DIR.replace(os.sep, ".")
        if stem in SINGLE_TARGET:
            exts.append(Extension(f"{package}.{stem}", [pyx], include_dirs=include, define_macros=macros))
            continue
        for target in _targets():
            exts.append(
                Extension(
                    f"{package}.{stem}_{target}",
                    [_target_source(pyx, target)],
                    include_dirs=include,
                    define_macros=macros,
                )
            )
    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": not DEBUG,
        "nonecheck": DEBUG,
        "embedsignature": True,
    }
    # One Cython run per module and target: run them in parallel (fork-based pool: POSIX only).
    nthreads = min(os.cpu_count() or 1, len(exts)) if os.name == "posix" else 0
    return cythonize(exts, compiler_directives=directives, quiet=True, nthreads=nthreads)


os.chdir(HERE)
setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
