"""The CPU features that decide which kernel target (baseline, avx2, avx512) may run (fastnorm_cpuinfo.h).

Built once, for the baseline ISA, whatever the targets: it is imported before any target module.
"""

cdef extern from "fastnorm_cpuinfo.h" nogil:
    int FN_CPUINFO_X86
    unsigned int fn_cpu_features()

# Bit i of fn_cpu_features() is FEATURE_NAMES[i] (the FN_F_* enum); names as in Linux's /proc/cpuinfo.
FEATURE_NAMES = (
    "sse3", "ssse3", "sse4_1", "sse4_2", "popcnt", "cx16", "lahf_lm", "avx",
    "avx2", "fma", "f16c", "bmi1", "bmi2", "lzcnt", "movbe", "xsave",
    "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl",
)


def probe_supported():
    """True if this build can read the CPU's features (x86 with a GCC-compatible compiler)."""
    return bool(FN_CPUINFO_X86)


def cpu_features():
    """The features of FEATURE_NAMES that both the CPU and the OS support, as a frozenset of names."""
    cdef unsigned int f = fn_cpu_features()
    return frozenset(name for i, name in enumerate(FEATURE_NAMES) if f & (1u << i))
