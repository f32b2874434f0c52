"""The streaming-bandwidth bound: a trivial kernel with given numbers of read, read-write and write streams.

For an op that reads r arrays, updates u arrays in place and writes w new arrays of n elements, this
kernel moves the same bytes with the same access pattern and (almost) no arithmetic: the speed a perfect
fused kernel of that op could reach on this machine, with the same threads. Arrays are float32 (k, n).
"""

from cython.parallel cimport prange

cdef enum:
    BLOCK = 2048


cdef inline void _stream_block(const float *rd, Py_ssize_t nr, float *up, Py_ssize_t nu, float *wr,
                               Py_ssize_t nw, Py_ssize_t stride, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef float acc[BLOCK]
    cdef Py_ssize_t j, k, m = hi - lo
    for j in range(m):
        acc[j] = 0.0
    for k in range(nr):
        for j in range(m):
            acc[j] += rd[k * stride + lo + j]
    for k in range(nu):
        for j in range(m):
            acc[j] += up[k * stride + lo + j]
        for j in range(m):
            up[k * stride + lo + j] = acc[j] * 0.5
    for k in range(nw):
        for j in range(m):
            wr[k * stride + lo + j] = acc[j]


def stream(const float[:, ::1] reads,     # IN  (r, n)
           float[:, ::1] updates,         # IN/OUT (u, n)
           float[:, ::1] writes,          # OUT (w, n)
           int n_threads):
    cdef Py_ssize_t n = max(reads.shape[1], updates.shape[1], writes.shape[1])
    cdef Py_ssize_t nr = reads.shape[0], nu = updates.shape[0], nw = writes.shape[0]
    cdef Py_ssize_t nblocks = (n + BLOCK - 1) // BLOCK, b
    cdef const float *rd = &reads[0, 0] if nr > 0 else NULL
    cdef float *up = &updates[0, 0] if nu > 0 else NULL
    cdef float *wr = &writes[0, 0] if nw > 0 else NULL
    with nogil:
        for b in prange(nblocks, schedule="static", num_threads=n_threads):
            _stream_block(rd, nr, up, nu, wr, nw, n, b * BLOCK, min(n, (b + 1) * BLOCK))
