"""The streaming-bandwidth bound: a trivial kernel with given numbers of read, read-write and write streams.

For an op that reads r arrays, updates u arrays in place and writes w new arrays of n elements, this
kernel moves the same bytes with the same access pattern and (almost) no arithmetic, in one pass with all
streams in flight (fastnorm_stream.h): the speed a perfect fused kernel of that op could reach on this
machine, with the same threads. Arrays are float32 (k, n); at most 4 read, 4 read-write and 3 write streams.
"""

from cython.parallel cimport prange


cdef extern from "fastnorm_stream.h" nogil:
    int FN_STREAM_MAX_R
    int FN_STREAM_MAX_U
    int FN_STREAM_MAX_W
    int fn_stream_range(const float *const *rd, int r, float *const *up, int u, float *const *wr, int w,
                        Py_ssize_t lo, Py_ssize_t hi)

cdef enum:
    CHUNK = 16384


def stream(const float[:, ::1] reads,     # IN  (r, n)
           float[:, ::1] updates,         # IN/OUT (u, n)
           float[:, ::1] writes,          # OUT (w, n)
           int n_threads):
    cdef Py_ssize_t n = max(reads.shape[1], updates.shape[1], writes.shape[1])
    cdef int nr = reads.shape[0], nu = updates.shape[0], nw = writes.shape[0], k
    cdef Py_ssize_t nchunks = (n + CHUNK - 1) // CHUNK, c
    cdef const float *rd[4]
    cdef float *up[4]
    cdef float *wr[3]
    if nr > FN_STREAM_MAX_R or nu > FN_STREAM_MAX_U or nw > FN_STREAM_MAX_W:
        raise ValueError(f"stream: at most {FN_STREAM_MAX_R}/{FN_STREAM_MAX_U}/{FN_STREAM_MAX_W} "
                         f"read/read-write/write streams, got {nr}/{nu}/{nw}")
    for k in range(nr):
        if reads.shape[1] != n:
            raise ValueError("stream: all streams must have the same length")
        rd[k] = &reads[k, 0]
    for k in range(nu):
        if updates.shape[1] != n:
            raise ValueError("stream: all streams must have the same length")
        up[k] = &updates[k, 0]
    for k in range(nw):
        if writes.shape[1] != n:
            raise ValueError("stream: all streams must have the same length")
        wr[k] = &writes[k, 0]
    with nogil:
        for c in prange(nchunks, schedule="static", num_threads=n_threads):
            fn_stream_range(rd, nr, up, nu, wr, nw, c * CHUNK, min(n, (c + 1) * CHUNK))
