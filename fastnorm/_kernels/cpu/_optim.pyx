"""Optimizer step CPU kernels: one streaming pass per tensor, many tensors per call.

A call updates T tensors described by a table of addresses ``tensors`` (S, T): row 0 the parameters,
row 1 the gradients, rows 2.. the algorithm's state (a 0 address for a stream the options do not use),
and ``offsets`` (T + 1,): tensor t holds ``offsets[t + 1] - offsets[t]`` elements. The tensors are laid
end to end in one flat index space, cut into one balanced contiguous share per thread (boundaries at
multiples of 16 elements, crossing tensor boundaries freely); each share walks its pieces of tensors with
the per-element loops of ``fastnorm_optim.h``. So 200 small tensors cost one call and the threads share the
work evenly whatever the sizes. One contiguous share per thread (as torch's fused steps) rather than
dynamically taken chunks: each thread's streams then run unbroken through its share (the hardware
prefetchers never restart), and on a loaded 2-vCPU machine the medians were 10-25% lower than with 64K
chunks taken dynamically (fastest runs equal). Every element goes through the same operations whatever
the cut (no fma contraction), so the results do not depend on the thread count.

Every address must point to a live, C-contiguous, aligned array of the given dtype (``code``: 0 float32,
1 float64, 2 bfloat16, 3 float16 parameters; the state of 16-bit parameters is float32) and size;
written streams must be writeable and overlap nothing else. The kernels check only the table's structure
(shapes, no 0 address where the options need a stream); the addresses themselves are ``fastnorm.optim``'s
duty (``gather_*`` below do its per-array checks in C).

16-bit parameters (``code`` 2, 3; ``half=(master, stochastic)``): the table has 8 rows, the 5 above then
row 5 the float32 master copies (0: none), row 6 the stochastic-rounding keys (``fastnorm.optim.rounding_keys``),
row 7 one where the gradient is float32 (else it has the parameter's format).
"""

import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint16_t, uint64_t

import ml_dtypes

cnp.import_array()


cdef extern from "fastnorm_optim.h" nogil:
    enum:
        FN_SGD
        FN_ADAGRAD
        FN_ADADELTA
        FN_RMSPROP
        FN_ADAM
        FN_WD
        FN_MOMENTUM
        FN_NESTEROV
        FN_CENTERED
        FN_AMSGRAD
    ctypedef struct fn_hyper:
        double lr, wd, sgn, eps, mu, dampc, rho, alpha, omb1, beta2, decay
    void fn_optim_segment_f(int algo, int flags, float *p, const float *g, float *s0, float *s1, float *s2,
                            Py_ssize_t n, const fn_hyper *h, const double *ts)
    void fn_optim_segment_d(int algo, int flags, double *p, const double *g, double *s0, double *s1,
                            double *s2, Py_ssize_t n, const fn_hyper *h, const double *ts)
    void fn_optim_segment_h(int algo, int flags, int fmt, int g32, int sr, uint16_t *p, float *master,
                            const void *g, float *s0, float *s1, float *s2, Py_ssize_t k0, Py_ssize_t n,
                            const fn_hyper *h, const double *ts, uint64_t key)


cdef enum:
    MAX_STREAMS = 5
    HALF_ROWS = 8  # 16-bit tables: the 5 rows, then master (float32 or 0), rounding key, gradient is float32
    CODE_F64 = 1   # dtype codes: 0 float32, 1 float64, 2 bfloat16, 3 float16 (format = code - 2)
    CODE_BF16 = 2
    ALIGN = 16   # share boundaries fall on multiples of this many elements (a cache line of float32)


# ------------------------------------------------------------------------------------------ scheduling
cdef inline char *_at(Py_ssize_t addr, Py_ssize_t k, Py_ssize_t esize) noexcept nogil:
    """The address of element k of the array at ``addr`` (NULL for an absent stream)."""
    if addr == 0:
        return NULL
    return <char *>addr + k * esize


cdef inline void _segment(int algo, int flags, int code, const Py_ssize_t *tab, Py_ssize_t n_tensors,
                          Py_ssize_t n_streams, Py_ssize_t t, Py_ssize_t k, Py_ssize_t n,
                          const fn_hyper *h, const double *ts) noexcept nogil:
    """Update elements [k, k + n) of tensor t (``code``: the parameters' dtype code; bit 8: stochastic
    rounding of 16-bit parameters)."""
    cdef bint f64 = code == CODE_F64
    cdef Py_ssize_t esize = 8 if f64 else 4
    cdef char *s[MAX_STREAMS]
    cdef Py_ssize_t r
    cdef bint g32
    if (code & 0xff) >= CODE_BF16:
        g32 = tab[7 * n_tensors + t] != 0
        fn_optim_segment_h(algo, flags, (code & 0xff) - CODE_BF16, g32, code >> 8,
                           <uint16_t *>_at(tab[t], k, 2), <float *>_at(tab[5 * n_tensors + t], k, 4),
                           <const void *>_at(tab[n_tensors + t], k, 4 if g32 else 2),
                           <float *>_at(tab[2 * n_tensors + t], k, 4), <float *>_at(tab[3 * n_tensors + t], k, 4),
                           <float *>_at(tab[4 * n_tensors + t], k, 4), k, n, h, ts,
                           <uint64_t>tab[6 * n_tensors + t])
        return
    for r in range(MAX_STREAMS):
        s[r] = _at(tab[r * n_tensors + t], k, esize) if r < n_streams else NULL
    if f64:
        fn_optim_segment_d(algo, flags, <double *>s[0], <const double *>s[1], <double *>s[2],
                           <double *>s[3], <double *>s[4], n, h, ts)
    else:
        fn_optim_segment_f(algo, flags, <float *>s[0], <const float *>s[1], <float *>s[2],
                           <float *>s[3], <float *>s[4], n, h, ts)


cdef inline void _range(int algo, int flags, int code, const Py_ssize_t *tab, Py_ssize_t n_tensors,
                        Py_ssize_t n_streams, const int64_t *off, const double *pt, Py_ssize_t n_pt,
                        int64_t lo, int64_t hi, const fn_hyper *h) noexcept nogil:
    """Update flat elements [lo, hi): the tail of one tensor, whole tensors, the head of another."""
    cdef Py_ssize_t a = 0, b = n_tensors, mid, t
    cdef int64_t end
    if lo >= hi:
        return
    # t = the tensor holding element lo: the last t with off[t] <= lo (empty tensors skipped below)
    while b - a > 1:
        mid = (a + b) // 2
        if off[mid] <= lo:
            a = mid
        else:
            b = mid
    t = a
    while lo < hi:
        end = min(hi, off[t + 1])
        if end > lo:
            _segment(algo, flags, code, tab, n_tensors, n_streams, t, lo - off[t], end - lo, h,
                     pt + t * n_pt if n_pt > 0 else NULL)
            lo = end
        t += 1


cdef inline int64_t _cut(int64_t total, int64_t n_chunks, int64_t c) noexcept nogil:
    """Start of share c when [0, total) is cut into n_chunks balanced shares (aligned to ALIGN)."""
    if c >= n_chunks:
        return total
    # = total * c // n_chunks, without overflowing int64 for huge totals
    return (c * (total // n_chunks) + c * (total % n_chunks) // n_chunks) // ALIGN * ALIGN


cdef inline int _layout(int algo, int flags, int *n_scalars) noexcept nogil:
    """Bit r set: row r of the table (param, grad, state streams) is used; the row count is the highest
    bit + 1 of the algorithm's full layout. ``n_scalars``: per-tensor scalars the algorithm reads."""
    n_scalars[0] = 0
    if algo == FN_SGD:
        n_scalars[0] = 2
        return 0b011 | (0b100 if flags & FN_MOMENTUM else 0)
    if algo == FN_ADAGRAD:
        n_scalars[0] = 1
        return 0b111
    if algo == FN_ADADELTA:
        return 0b1111
    if algo == FN_RMSPROP:
        return 0b00111 | (0b01000 if flags & FN_CENTERED else 0) | (0b10000 if flags & FN_MOMENTUM else 0)
    n_scalars[0] = 2
    return 0b01111 | (0b10000 if flags & FN_AMSGRAD else 0)


cdef void _run(int algo, int flags, int code, int n_rows, const Py_ssize_t[:, ::1] tensors,
               const int64_t[::1] offsets, const double[:, ::1] per_tensor, const fn_hyper *h, int n_threads,
               object half):
    """Check the table's structure (not the addresses: the caller's duty), then update every tensor.

    ``code``: 0 float32, 1 float64, 2 bfloat16, 3 float16 parameters. ``half`` (16-bit parameters): a pair
    (master, stochastic): master weights kept (table row 5), stochastic rounding (row 6: per-tensor keys).
    """
    if code >= CODE_BF16:
        if half is None or len(half) != 2:
            raise ValueError("optimizer kernel: 16-bit parameters need half=(master, stochastic)")
        n_rows = HALF_ROWS
        if half[1]:
            code |= 0x100
        if half[0]:
            flags |= 0x10000  # only for the check below: row 5 (master) must hold addresses
    elif code != 0 and code != CODE_F64:
        raise ValueError(f"optimizer kernel: unknown dtype code {code}")
    cdef Py_ssize_t n_tensors = tensors.shape[1], t, r
    cdef int n_pt, used = _layout(algo, flags, &n_pt) | (0b100000 if flags & 0x10000 else 0)
    flags &= 0xffff
    cdef const Py_ssize_t *tab
    cdef const int64_t *off
    cdef const double *pt = NULL
    cdef int64_t total, c
    if tensors.shape[0] != n_rows or offsets.shape[0] != n_tensors + 1 or offsets[0] != 0:
        raise ValueError("optimizer kernel: the address table or the offsets have the wrong shape")
    if n_pt > 0 and (per_tensor.shape[0] != n_tensors or per_tensor.shape[1] != n_pt):
        raise ValueError(f"optimizer kernel: per_tensor must have shape ({n_tensors}, {n_pt})")
    for t in range(n_tensors):
        if offsets[t + 1] < offsets[t]:
            raise ValueError("optimizer kernel: offsets must not decrease")
        if offsets[t + 1] > offsets[t]:
            for r in range(n_rows):
                if (used >> r) & 1 and tensors[r, t] == 0:
                    raise ValueError(f"optimizer kernel: tensor {t} has no address in row {r}")
    if n_tensors == 0:
        return
    tab = &tensors[0, 0]
    off = &offsets[0]
    total = off[n_tensors]
    if n_pt > 0:
        pt = &per_tensor[0, 0]
    with nogil:
        if n_threads <= 1:
            _range(algo, flags, code, tab, n_tensors, n_rows, off, pt, n_pt, 0, total, h)
        else:
            for c in prange(n_threads, schedule="static", chunksize=1, num_threads=n_threads):
                _range(algo, flags, code, tab, n_tensors, n_rows, off, pt, n_pt,
                       _cut(total, n_threads, c), _cut(total, n_threads, c + 1), h)


# ------------------------------------------------------------------------------------------ entry points
def sgd_step(const Py_ssize_t[:, ::1] tensors,   # IN/OUT (3, T): param (IN/OUT), grad (IN), momentum_buffer
             const int64_t[::1] offsets,         # IN (T + 1,) flat start of each tensor
             const double[:, ::1] per_tensor,    # IN (T, 2): c1, c2 in b = c1 * b + c2 * g
             double lr, double momentum, double weight_decay, bint nesterov, bint maximize,
             int code, int n_threads, half=None):
    """p -= lr * g' after g' = g + wd * p; with momentum b = c1 * b + c2 * g', g' = g' + mu * b or b."""
    cdef fn_hyper h
    h.lr, h.wd, h.sgn, h.mu = lr, weight_decay, (-1.0 if maximize else 1.0), momentum
    cdef int flags = (FN_WD if weight_decay != 0 else 0) | (FN_MOMENTUM if momentum != 0 else 0)
    flags |= FN_NESTEROV if (nesterov and momentum != 0) else 0
    _run(FN_SGD, flags, code, 3, tensors, offsets, per_tensor, &h, n_threads, half)


def adagrad_step(const Py_ssize_t[:, ::1] tensors,   # IN/OUT (3, T): param (IN/OUT), grad (IN), sum (IN/OUT)
                 const int64_t[::1] offsets,         # IN (T + 1,)
                 const double[:, ::1] per_tensor,    # IN (T, 1): clr = lr / (1 + (step - 1) * lr_decay)
                 double weight_decay, double eps, bint maximize, int code, int n_threads, half=None):
    """sum += g*g; p -= clr * g / (sqrt(sum) + eps)."""
    cdef fn_hyper h
    h.wd, h.sgn, h.eps = weight_decay, (-1.0 if maximize else 1.0), eps
    _run(FN_ADAGRAD, FN_WD if weight_decay != 0 else 0, code, 3, tensors, offsets, per_tensor, &h, n_threads, half)


def adadelta_step(const Py_ssize_t[:, ::1] tensors,  # IN/OUT (4, T): param, grad (IN), square_avg, acc_delta
                  const int64_t[::1] offsets,        # IN (T + 1,)
                  double lr, double rho, double eps, double weight_decay, bint maximize, int code,
                  int n_threads, half=None):
    """sq = rho*sq + (1-rho)*g*g; d = sqrt(acc+eps)/sqrt(sq+eps)*g; acc = rho*acc + (1-rho)*d*d; p -= lr*d."""
    cdef fn_hyper h
    h.lr, h.rho, h.eps, h.wd, h.sgn = lr, rho, eps, weight_decay, (-1.0 if maximize else 1.0)
    cdef double[:, ::1] none = _NO_SCALARS
    _run(FN_ADADELTA, FN_WD if weight_decay != 0 else 0, code, 4, tensors, offsets, none, &h, n_threads, half)


def rmsprop_step(const Py_ssize_t[:, ::1] tensors,   # IN/OUT (5, T): param, grad (IN), square_avg, grad_avg,
                                                     #   momentum_buffer (0 when not centered / no momentum)
                 const int64_t[::1] offsets,         # IN (T + 1,)
                 double lr, double alpha, double eps, double weight_decay, double momentum, bint centered,
                 bint maximize, int code, int n_threads, half=None):
    """sq = a*sq + (1-a)*g*g; avg = sqrt(sq [- ga*ga]) + eps; b = mu*b + g/avg, p -= lr*b (or lr*g/avg)."""
    cdef fn_hyper h
    h.lr, h.alpha, h.eps, h.wd, h.mu = lr, alpha, eps, weight_decay, momentum
    h.sgn = -1.0 if maximize else 1.0
    cdef int flags = (FN_WD if weight_decay != 0 else 0) | (FN_MOMENTUM if momentum > 0 else 0)
    flags |= FN_CENTERED if centered else 0
    cdef double[:, ::1] none = _NO_SCALARS
    _run(FN_RMSPROP, flags, code, 5, tensors, offsets, none, &h, n_threads, half)


def adam_step(const Py_ssize_t[:, ::1] tensors,      # IN/OUT (5, T): param, grad (IN), exp_avg, exp_avg_sq,
                                                     #   max_exp_avg_sq (0 when not amsgrad)
              const int64_t[::1] offsets,            # IN (T + 1,)
              const double[:, ::1] per_tensor,       # IN (T, 2): lr / (1 - beta1^t), sqrt(1 - beta2^t)
              double beta1, double beta2, double eps, double weight_decay, double decay, bint amsgrad,
              bint maximize, int code, int n_threads, half=None):
    """p *= decay; m += (1-b1)*(g-m); v = b2*v + (1-b2)*g*g; p -= step_size * m / (sqrt(v)/bc2_sqrt + eps).

    ``weight_decay`` is Adam's (L2, folded into g; 0 for AdamW); ``decay`` is AdamW's 1 - lr * wd (else 1).
    """
    cdef fn_hyper h
    h.omb1, h.beta2, h.eps, h.wd, h.decay = 1.0 - beta1, beta2, eps, weight_decay, decay
    h.sgn = -1.0 if maximize else 1.0
    cdef int flags = (FN_WD if weight_decay != 0 else 0) | (FN_AMSGRAD if amsgrad else 0)
    _run(FN_ADAM, flags, code, 5, tensors, offsets, per_tensor, &h, n_threads, half)


_NO_SCALARS = np.zeros((0, 0), dtype=np.float64)


# ------------------------------------------------------------------------------------------ array checks
cdef int BF16_NUM = np.dtype(ml_dtypes.bfloat16).num  # ml_dtypes registers bfloat16 at run time


cdef inline int _code(int typenum) noexcept:
    """The kernels' dtype code of a parameter typenum, -1 for a dtype they do not take."""
    if typenum == cnp.NPY_FLOAT32:
        return 0
    if typenum == cnp.NPY_FLOAT64:
        return 1
    if typenum == BF16_NUM:
        return 2
    if typenum == cnp.NPY_FLOAT16:
        return 3
    return -1


# The per-array checks of every step, done in C so 200 tensors cost microseconds. They answer only
# "all good" (-1) or "the first bad index"; fastnorm.optim then explains what is wrong in Python.

cdef inline bint _usable(object a, int typenum, bint writeable):
    """``a`` is a native-endian, aligned, C-contiguous ndarray of ``typenum`` (writeable if asked)."""
    cdef cnp.ndarray arr
    if not cnp.PyArray_Check(a):
        return False
    arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_IS_C_CONTIGUOUS(arr)
            and cnp.PyArray_ISALIGNED(arr) and cnp.PyArray_ISNOTSWAPPED(arr)
            and (not writeable or cnp.PyArray_ISWRITEABLE(arr)))


cdef inline bint _overlaps(int64_t lo, int64_t hi, const int64_t[::1] avoid_lo,
                           const int64_t[::1] avoid_hi) noexcept nogil:
    """[lo, hi) meets one of the sorted, disjoint ranges [avoid_lo[k], avoid_hi[k])."""
    cdef Py_ssize_t a = 0, b = avoid_lo.shape[0], mid
    if hi <= lo or b == 0:
        return False
    # the last range starting before hi is the only candidate (the ends are sorted too)
    while a < b:
        mid = (a + b) // 2
        if avoid_lo[mid] < hi:
            a = mid + 1
        else:
            b = mid
    return a > 0 and avoid_hi[a - 1] > lo


def gather_params(list params, int64_t[:, ::1] info):
    """Row 0: address, row 1: size, row 2: dtype code (0 float32, 1 float64, 2 bfloat16, 3 float16), of each
    parameter.

    Returns -1 if every entry is a native, aligned, C-contiguous, writeable float32/float64/bfloat16/float16
    ndarray, else the index of the first one that is not.
    """
    cdef Py_ssize_t i, n = len(params)
    cdef cnp.ndarray arr
    cdef object a
    cdef int typenum
    for i in range(n):
        a = params[i]
        if not cnp.PyArray_Check(a):
            return i
        typenum = cnp.PyArray_TYPE(<cnp.ndarray>a)
        if _code(typenum) < 0 or not _usable(a, typenum, True):
            return i
        arr = <cnp.ndarray>a
        info[0, i] = <int64_t>cnp.PyArray_DATA(arr)
        info[1, i] = cnp.PyArray_SIZE(arr)
        info[2, i] = _code(typenum)
    return -1


def gather_like(list arrays, list params, Py_ssize_t[::1] ptrs, bint writeable, bint allow_none,
                const int64_t[::1] avoid_lo, const int64_t[::1] avoid_hi, bint stat=False):
    """Addresses of ``arrays`` matching ``params`` one to one: same dtype and shape, native, aligned,
    C-contiguous (and writeable if asked), their bytes outside the sorted disjoint ranges ``avoid``.

    With ``stat`` (state arrays), the dtype wanted is the parameter's state dtype: float32 beside a 16-bit
    parameter. None entries give address 0 when ``allow_none``. Returns -1 if all are usable, else the index of
    the first that is not. ``params`` must have passed ``gather_params`` and have len(ptrs) entries.
    """
    cdef Py_ssize_t i, d, n = ptrs.shape[0]
    cdef cnp.ndarray arr, ref
    cdef object a
    cdef cnp.npy_intp *da
    cdef cnp.npy_intp *dr
    cdef int64_t lo
    cdef int want
    if len(arrays) != n or len(params) != n:
        return 0
    for i in range(n):
        a = arrays[i]
        if a is None and allow_none:
            ptrs[i] = 0
            continue
        ref = <cnp.ndarray>params[i]
        want = cnp.PyArray_TYPE(ref)
        if stat and _code(want) >= 2:
            want = cnp.NPY_FLOAT32
        if not _usable(a, want, writeable):
            return i
        arr = <cnp.ndarray>a
        if cnp.PyArray_NDIM(arr) != cnp.PyArray_NDIM(ref):
            return i
        da = cnp.PyArray_DIMS(arr)
        dr = cnp.PyArray_DIMS(ref)
        for d in range(cnp.PyArray_NDIM(ref)):
            if da[d] != dr[d]:
                return i
        lo = <int64_t>cnp.PyArray_DATA(arr)
        if _overlaps(lo, lo + cnp.PyArray_NBYTES(arr), avoid_lo, avoid_hi):
            return i
        ptrs[i] = <Py_ssize_t>lo
    return -1
