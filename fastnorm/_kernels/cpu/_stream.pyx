"""The streaming-bandwidth bound: a trivial kernel with given numbers of read, read-write and write streams.

For an op that reads r arrays, updates u arrays in place and writes w new arrays of n elements, this
kernel moves the same bytes with the same access pattern and (almost) no arithmetic, in one pass with all
streams in flight (fastnorm_stream.h): the speed a perfect fused kernel of that op could reach on this
machine, with the same threads. Streams are 1-D float32 arrays of one length, each its own array (the caller
staggers them in memory: rows of one (k, n) array lie a power of two apart, and streams that share their
address bits that far up collide in the DRAM banks and the cache sets: measured 2.4x slower with regular
stores). At most 4 read, 4 read-write and 3 write streams. Only the bytes matter: a 16-bit op's stream of m
items is a float32 stream of m / 2 elements here. ``nt=True``: non-temporal stores into the write-only streams
(x86; each must be 16-byte aligned), which skip reading the destination lines; the bound is the faster of
the two variants.
"""

from cython.parallel cimport prange


cdef extern from "fastnorm_stream.h" nogil:
    int FN_STREAM_MAX_R
    int FN_STREAM_MAX_U
    int FN_STREAM_MAX_W
    int fn_stream_range(const float *const *rd, int r, float *const *up, int u, float *const *wr, int w,
                        Py_ssize_t lo, Py_ssize_t hi, int nt)

cdef enum:
    CHUNK = 16384


cdef Py_ssize_t _ptrs(arrays, float **out, int most, Py_ssize_t n, str kind, bint aligned) except -1:
    """Fill out[] with the arrays' data pointers; returns the common length (n, or the first array's if n < 0)."""
    cdef float[::1] a
    cdef int k
    if len(arrays) > most:
        raise ValueError(f"stream: at most {most} {kind} streams, got {len(arrays)}")
    for k in range(len(arrays)):
        a = arrays[k]
        if n < 0:
            n = a.shape[0]
        if a.shape[0] != n:
            raise ValueError("stream: all streams must have the same length")
        out[k] = &a[0] if n > 0 else NULL
        if aligned and (<size_t>out[k]) % 16 != 0:
            raise ValueError("stream: nt=True needs 16-byte aligned write streams")
    return n


def stream(reads, updates, writes, int n_threads, bint nt=False):
    """One pass over the streams: ``reads``, ``updates`` (read and written) and ``writes``, sequences of
    writable 1-D float32 arrays of one length; ``nt``: non-temporal stores into ``writes``."""
    cdef float *rd[4]
    cdef float *up[4]
    cdef float *wr[3]
    cdef Py_ssize_t n = -1, c, nchunks
    cdef int nr = len(reads), nu = len(updates), nw = len(writes)
    n = _ptrs(reads, rd, FN_STREAM_MAX_R, n, "read", False)
    n = _ptrs(updates, up, FN_STREAM_MAX_U, n, "read-write", False)
    n = _ptrs(writes, wr, FN_STREAM_MAX_W, n, "write", nt)
    if n <= 0:
        return
    nchunks = (n + CHUNK - 1) // CHUNK
    with nogil:
        for c in prange(nchunks, schedule="static", num_threads=n_threads):
            fn_stream_range(<const float *const *>rd, nr, up, nu, wr, nw, c * CHUNK, min(n, (c + 1) * CHUNK), nt)
