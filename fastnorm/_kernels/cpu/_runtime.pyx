"""How the CPU kernels were built: OpenMP on or off, the default thread count."""

cdef extern from "fastnorm_omp.h" nogil:
    int fn_openmp_enabled()
    int fn_max_threads()

cdef extern from *:
    """
    #ifdef FASTNORM_PORTABLE_BUILD
    #define FN_PORTABLE 1
    #else
    #define FN_PORTABLE 0
    #endif
    """
    int FN_PORTABLE


def openmp_enabled():
    """True if the kernels were compiled with OpenMP."""
    return bool(fn_openmp_enabled())


def max_threads():
    """OpenMP's default team size (honours OMP_NUM_THREADS); 1 in a serial build."""
    return int(fn_max_threads())


def portable_build():
    """True if built with FASTNORM_PORTABLE=1 (baseline ISA, no -march=native)."""
    return bool(FN_PORTABLE)
