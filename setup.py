"""Build the Cython CPU kernels.

Every ``fastnorm/_kernels/cpu/*.pyx`` becomes extension modules; adding a kernel file needs no edit here.
A kernel file ``_<family>.pyx`` is built once per instruction-set target, as ``_<family>_<target>``:

  baseline  the compiler's default ISA (x86-64 = SSE2 on x86; the only target on other architectures)
  avx2      -march=x86-64-v3 (AVX2, FMA, BMI2, ...)
  avx512    -march=x86-64-v4 (AVX-512 F/BW/CD/DQ/VL)
  native    -march=native, only with FASTNORM_NATIVE=1 and only run when FASTNORM_CPU_TARGET=native

``fastnorm._kernels.cpu`` picks the best target the CPU supports at import (``fastnorm.show_config()``
says which). The few files in SINGLE_TARGET (build info, the CPU-feature probe, the output pool) are built once,
baseline.
Source builds and portable builds carry the same targets, so a wheel runs the same code as a source build.
Each kernel file is cythonized once; its targets compile that one C file with different ISA flags and a
``-DPyInit__<family>=PyInit__<family>_<target>`` that names the module's init function for the target.

Environment variables:
  FASTNORM_PORTABLE=1        mark the build portable (for wheels / redistribution; never -march=native)
  FASTNORM_NATIVE=1          also build the opt-in ``native`` target (-march=native; not with PORTABLE)
  FASTNORM_TARGETS=a,b       build only these targets (baseline is always built), e.g. for quick builds
  FASTNORM_REQUIRE_OPENMP=1  fail the build instead of warning when the compiler has no OpenMP
  FASTNORM_DEBUG=1           Cython bounds/wraparound checks on, -O0 -g (debugging only)
  FASTNORM_BUILD_CACHE=dir   reuse Cython output and built modules whose inputs are byte-for-byte those of an
                             earlier build on this machine (CI: the editable install and the portable wheel)
"""

import copy
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap

import Cython
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
# streaming-bandwidth kernel of the benchmarks (memory-bound: the ISA does not change its speed at DRAM sizes),
# and the allocator of large outputs (one pool per process: a single module, no vector code).
SINGLE_TARGET = {"_runtime", "_cpuinfo", "_stream", "_alloc"}
# The generated .c files go here, out of the source tree: one per kernel file, compiled once per target.
TARGET_SRC = os.path.join("build", "fastnorm_targets")
# FASTNORM_BUILD_CACHE=dir: a content-addressed cache of Cython output and of built modules, shared by builds on
# one machine (CI builds the same kernels for the editable install and for the portable wheel). An entry is
# reused only when every input is byte-for-byte the same (see _c_cache_key and BuildExt._module_cache_key).
BUILD_CACHE = os.path.abspath(os.environ["FASTNORM_BUILD_CACHE"]) if os.environ.get("FASTNORM_BUILD_CACHE") else None
_CACHE_SCHEME = "fastnorm-build-cache-1"  # change when what goes into a key changes
PORTABLE_MACRO = "FASTNORM_PORTABLE_BUILD"
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
        self._cache_hits = []
        super().build_extensions()
        if BUILD_CACHE:
            n = len(self.extensions)
            print(f"fastnorm: {len(self._cache_hits)} of {n} modules reused from FASTNORM_BUILD_CACHE")

    def build_extension(self, ext):
        key = self._module_cache_key(ext) if BUILD_CACHE else None
        if key is None:
            return super().build_extension(ext)
        path = self.get_ext_fullpath(ext.name)
        cached = os.path.join(BUILD_CACHE, "module-" + key + os.path.splitext(path)[1])
        if os.path.exists(cached):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shutil.copyfile(cached, path)
            self._cache_hits.append(ext.name)
            print(f"fastnorm: {ext.name}: reused from FASTNORM_BUILD_CACHE")
            return None
        before = os.stat(path).st_mtime_ns if os.path.exists(path) else None
        super().build_extension(ext)
        if os.path.exists(path) and os.stat(path).st_mtime_ns != before:  # built now, not skipped as up to date
            _store(path, cached)
        return None

    def _module_cache_key(self, ext):
        """A hash of everything the built module depends on: the preprocessed C (which holds the headers and the
        macros), the compiler and linker commands and versions, and every flag; None when it cannot be made."""
        cc = self.compiler
        if cc.compiler_type != "unix" or len(ext.sources) != 1 or not ext.sources[0].endswith(".c"):
            return None
        opts = [f"-D{m[0]}" if len(m) == 1 or m[1] is None else f"-D{m[0]}={m[1]}" for m in ext.define_macros]
        opts += [f"-U{m}" for m in ext.undef_macros]
        # Include paths only act through the headers' text, which the preprocessed C holds (the paths differ
        # between pip's isolated build environments).
        incs = [f"-I{d}" for d in list(ext.include_dirs) + list(cc.include_dirs)]
        libs = [list(ext.libraries), list(cc.libraries), list(ext.library_dirs), list(cc.library_dirs)]
        cmd = list(cc.compiler_so) + opts + incs + list(ext.extra_compile_args) + ["-E", "-P", ext.sources[0]]
        try:
            pre = subprocess.run(cmd, check=True, capture_output=True).stdout
            versions = [
                subprocess.run([tool[0], "--version"], check=True, capture_output=True).stdout
                for tool in (cc.compiler_so, cc.linker_so)
            ]
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"WARNING: fastnorm: no build cache key for {ext.name} ({e})", file=sys.stderr)
            return None
        h = hashlib.sha256(pre)
        what = [
            _CACHE_SCHEME,
            ext.name,
            self.get_ext_filename(ext.name),
            sys.version,
            platform.platform(),
            list(cc.compiler_so),
            list(cc.linker_so),
            [v.decode(errors="replace") for v in versions],
            opts,
            list(ext.extra_compile_args),
            list(ext.extra_link_args),
            libs,
            list(ext.runtime_library_dirs),
            list(ext.extra_objects),
        ]
        h.update(json.dumps(what).encode())
        return h.hexdigest()


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


def _c_cache_key(ext, directives):
    """Everything Cython's output for ``ext`` depends on: the Cython and NumPy versions (Cython's and NumPy's
    .pxd files), the directives, the module name and the text of the kernel sources (.pyx/.pxd/.pxi)."""
    h = hashlib.sha256()
    h.update(repr((_CACHE_SCHEME, Cython.__version__, np.__version__, sorted(directives.items()), ext.name)).encode())
    for path in [ext.sources[0]] + sorted(glob.glob(os.path.join(CPU_DIR, "*.px[di]"))):
        with open(path, "rb") as f:
            h.update(path.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def _cythonize(families, directives):
    """Cythonize each kernel file once, into TARGET_SRC; with FASTNORM_BUILD_CACHE, reuse the C of an earlier
    build whose inputs were byte-for-byte the same (Cython output does not depend on the ISA target or on
    FASTNORM_PORTABLE, only the C compile does)."""
    todo, keys = [], {}
    for ext in families:
        c_file = os.path.join(TARGET_SRC, os.path.splitext(ext.sources[0])[0] + ".c")
        cached = os.path.join(BUILD_CACHE, "cython-" + _c_cache_key(ext, directives) + ".c") if BUILD_CACHE else None
        if cached and os.path.exists(cached):
            os.makedirs(os.path.dirname(c_file), exist_ok=True)
            if not (os.path.exists(c_file) and _same_bytes(cached, c_file)):
                shutil.copyfile(cached, c_file)
            print(f"fastnorm: {ext.name}: Cython output reused from FASTNORM_BUILD_CACHE", file=sys.stderr)
            ext.sources = [c_file]
        else:
            todo.append(ext)
            keys[ext.name] = (c_file, cached)
    if todo:
        # One Cython run per kernel file: run them in parallel (fork-based pool: POSIX only).
        nthreads = min(os.cpu_count() or 1, len(todo)) if os.name == "posix" else 0
        done = cythonize(todo, compiler_directives=directives, quiet=True, nthreads=nthreads, build_dir=TARGET_SRC)
        by_name = {ext.name: ext for ext in done}
        for ext in todo:
            c_file, cached = keys[ext.name]
            if by_name[ext.name].sources != [c_file]:
                sys.exit(f"fastnorm: Cython wrote {by_name[ext.name].sources}, expected {c_file}")
            ext.sources = [c_file]
            if cached:
                _store(c_file, cached)
    return families


def _same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def _store(path, cached):
    """Copy ``path`` into the cache atomically (parallel builds may store the same entry)."""
    os.makedirs(BUILD_CACHE, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=BUILD_CACHE)
    os.close(fd)
    shutil.copyfile(path, tmp)
    os.replace(tmp, cached)


def _extensions():
    include = [np.get_include(), os.path.join("fastnorm", "_kernels", "include")]
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    header_files = sorted(glob.glob(os.path.join(include[1], "*.h")))
    headers = "".join(open(h).read() for h in header_files)
    package = CPU_DIR.replace(os.sep, ".")
    families = []
    for pyx in sorted(glob.glob(os.path.join(CPU_DIR, "*.pyx"))):
        stem = os.path.splitext(os.path.basename(pyx))[0]
        with open(pyx) as f:
            text = f.read()
        # The portable mark is defined only where it can be read, so the other modules compile to the same code
        # in a portable and a source build.
        marked = PORTABLE and any(PORTABLE_MACRO in t for t in (text, headers))
        families.append(
            Extension(
                f"{package}.{stem}",
                [pyx],
                include_dirs=include,
                define_macros=macros + ([(PORTABLE_MACRO, "1")] if marked else []),
                depends=header_files,  # a changed header rebuilds the modules (build_ext compares times)
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
    exts = []
    for fam in _cythonize(families, directives):
        stem = fam.name.rsplit(".", 1)[1]
        if stem in SINGLE_TARGET:
            exts.append(fam)
            continue
        # Every target compiles the same C: only the module's init symbol is renamed, to the target module's
        # (the module takes its __name__ from the import spec; its functions' __module__ stays the family name,
        # which fastnorm._kernels.cpu makes an alias of the chosen target).
        # Each target compiles its own copy of the C file: build_ext names objects after their source, and
        # parallel builds (pip's, -j) would otherwise write one object file from several targets at once.
        for target in _targets():
            ext = copy.deepcopy(fam)
            ext.name = f"{fam.name}_{target}"
            ext.sources = [_target_copy(fam.sources[0], target)]
            ext.define_macros = fam.define_macros + [(f"PyInit_{stem}", f"PyInit_{stem}_{target}")]
            exts.append(ext)
    return exts


def _target_copy(c_file, target):
    """``c_file`` copied under TARGET_SRC/<target>/ (rewritten only when it changed, so builds stay incremental)."""
    out = os.path.join(TARGET_SRC, target, os.path.relpath(c_file, TARGET_SRC))
    if not (os.path.exists(out) and _same_bytes(c_file, out)):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copyfile(c_file, out)
    return out


os.chdir(HERE)
setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
