"""bfloat16 / float16 <-> float32 conversion of whole arrays (fastnorm_half.h), chunked over threads.

16-bit arrays arrive as uint16 views; ``fmt`` is 0 for bfloat16, 1 for float16. Narrowing rounds to
nearest even; NaN stays NaN. The Python layer uses these for small tensors (parameters, their gradients)
of 16-bit ops, and the tests check the rounding of every kernel against them.
"""

from cython.parallel cimport prange
from libc.stdint cimport uint16_t

from fastnorm._kernels.cpu._common cimport fn_half_load, fn_half_store

cdef enum:
    CHUNK = 32768


cdef Py_ssize_t _checked(str op, Py_ssize_t n_src, Py_ssize_t n_dst, int fmt) except -1:
    """The length to convert, after checking the format code and the lengths."""
    if fmt != 0 and fmt != 1:
        raise ValueError(f"{op}: fmt must be 0 (bfloat16) or 1 (float16), got {fmt}")
    if n_dst != n_src:
        raise ValueError(f"{op}: src and dst must have the same length")
    return n_src


cdef void _convert(const void *src, void *dst, Py_ssize_t n, int fmt, bint widen, int n_threads) noexcept nogil:
    """dst = float32(src) (widen) or dst = 16-bit(src), CHUNK elements per task."""
    cdef Py_ssize_t c, lo, k
    for c in prange((n + CHUNK - 1) // CHUNK, schedule="static", num_threads=n_threads,
                    use_threads_if=n_threads > 1):
        lo = c * CHUNK
        k = min(n - lo, <Py_ssize_t>CHUNK)
        if widen:
            fn_half_load(fmt, <const uint16_t *>src + lo, <float *>dst + lo, k)
        else:
            fn_half_store(fmt, <const float *>src + lo, <uint16_t *>dst + lo, k)


def half_to_float(const uint16_t[::1] src,   # IN  (n,) 16-bit patterns
                  float[::1] dst,            # OUT (n,)
                  int fmt, int n_threads):
    cdef Py_ssize_t n = _checked("half_to_float", src.shape[0], dst.shape[0], fmt)
    if n > 0:
        with nogil:
            _convert(&src[0], &dst[0], n, fmt, True, n_threads)


def half_from_float(const float[::1] src,    # IN  (n,)
                    uint16_t[::1] dst,       # OUT (n,) 16-bit patterns
                    int fmt, int n_threads):
    cdef Py_ssize_t n = _checked("half_from_float", src.shape[0], dst.shape[0], fmt)
    if n > 0:
        with nogil:
            _convert(&src[0], &dst[0], n, fmt, False, n_threads)
