# Declarations and small helpers shared by the kernel modules (cimported at Cython time: the inline functions
# are compiled into each module's C, so every ISA target's copy of a module is self-contained).

from cython cimport floating
from libc.stdint cimport uint16_t


cdef extern from "fastnorm_half.h" nogil:
    void fn_half_load(int fmt, const uint16_t *src, float *dst, Py_ssize_t n)
    void fn_half_store(int fmt, const float *src, uint16_t *dst, Py_ssize_t n)


cdef inline Py_ssize_t chunk_start(Py_ssize_t m, Py_ssize_t n_chunks, Py_ssize_t c) noexcept nogil:
    """First index of chunk c when m items are cut into n_chunks contiguous chunks."""
    cdef Py_ssize_t step = (m + n_chunks - 1) // n_chunks
    return min(m, c * step)


cdef inline const floating *ptr_or_null(const floating[::1] a) noexcept nogil:
    """The data of a 1-D array, NULL for an absent (length 0) one."""
    return &a[0] if a.shape[0] > 0 else NULL
