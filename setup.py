"""Build the Cython CPU kernels.

Every ``fastnorm/_kernels/cpu/*.pyx`` becomes one extension module; adding a kernel file needs no edit here.

Environment variables:
  FASTNORM_PORTABLE=1        baseline-ISA build (no -march=native), for wheels / redistribution
  FASTNORM_REQUIRE_OPENMP=1  fail the build instead of warning when the compiler has no OpenMP
  FASTNORM_DEBUG=1           Cython bounds/wraparound checks on, -O0 -g (debugging only)
"""

import glob
import os
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

# Vectorizable float reductions and sqrt need these; -ffast-math is never used because it
# flushes denormals for the whole process and breaks NaN/inf propagation.
OPT_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math"]
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
            if not PORTABLE and _compiler_accepts(cc, PLAIN_PROBE, ["-march=native"], ["-march=native"]):
                compile_args.append("-march=native")
        for ext in self.extensions:
            ext.extra_compile_args = compile_args + list(ext.extra_compile_args)
            ext.extra_link_args = link_args + list(ext.extra_link_args)
        super().build_extensions()


def _extensions():
    include = [np.get_include(), os.path.join("fastnorm", "_kernels", "include")]
    exts = []
    for pyx in sorted(glob.glob(os.path.join("fastnorm", "_kernels", "cpu", "*.pyx"))):
        name = pyx[: -len(".pyx")].replace(os.sep, ".")
        exts.append(
            Extension(
                name,
                [pyx],
                include_dirs=include,
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
                + ([("FASTNORM_PORTABLE_BUILD", "1")] if PORTABLE else []),
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
    return cythonize(exts, compiler_directives=directives, quiet=True)


os.chdir(HERE)
setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
