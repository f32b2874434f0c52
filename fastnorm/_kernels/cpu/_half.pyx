"""bfloat16 / float16 <-> float32 conversion of whole arrays (fastnorm_half.h), chunked over threads.

16-bit arrays arrive as uint16 views; ``fmt`` is 0 for bfloat16, 1 for float16. Narrowing rounds to
nearest even; NaN stays NaN. The Python layer uses these for small tensors (parameters, their gradients)
of 16-bit ops, and the tests check the rounding of every kernel against them.
"""

from cython.parallel cimport prange
from libc.stdint cimport uint16_t

cdef extern from "fastnorm_half.h" nogil:
    void fn_half_load(int fmt, const uint16_t *src, float *dst, Py_ssize_t n)
    void fn_half_store(int fmt, const float *src, uint16_t *dst, Py_ssize_t n)

cdef enum:
    CHUNK = 32768


cdef int _fmt(int fmt) except -1:
    if fmt != 0 and fmt != 1:
        raise ValueError(f"fmt must be 0 (bfloat16) or 1 (float16), got {fmt}")
    return fmt


def half_to_float(const uint16_t[::1] src,   # IN  (n,) 16-bit patterns
                  float[::1] dst,            # OUT (n,)
                  int fmt, int n_threads):
    cdef Py_ssize_t n = src.shape[0], c, lo
    _fmt(fmt)
    if dst.shape[0] != n:
        raise ValueError("half_to_float: src and dst must have the same length")
    if n == 0:
        return
    with nogil:
        for c in prange((n + CHUNK - 1) // CHUNK, schedule="static", num_threads=n_threads,
                        use_threads_if=n_threads > 1):
            lo = c * CHUNK
            fn_half_load(fmt, &src[lo], &dst[lo], min(n - lo, <Py_ssize_t>CHUNK))


def half_from_float(const float[::1] src,    # IN  (n,)
                    uint16_t[::1] dst,       # OUT (n,) 16-bit patterns
                    int fmt, int n_threads):
    cdef Py_ssize_t n = src.shape[0], c, lo
    _fmt(fmt)
    if dst.shape[0] != n:
        raise ValueError("half_from_float: src and dst must have the same length")
    if n == 0:
        return
    with nogil:
        for c in prange((n + CHUNK - 1) // CHUNK, schedule="static", num_threads=n_threads,
                        use_threads_if=n_threads > 1):
            lo = c * CHUNK
            fn_half_store(fmt, &src[lo], &dst[lo], min(n - lo, <Py_ssize_t>CHUNK))
