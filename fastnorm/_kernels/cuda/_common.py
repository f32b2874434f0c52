"""Shared machinery of the CUDA kernels: compile-once launchers, streams, array conversion, team reductions.

Imported only by the CUDA backend (it imports numba). Under Numba's simulator (``NUMBA_ENABLE_CUDASIM=1``)
kernels run as Python threads, one block at a time, without warp shuffles: every block reduction has a
shared-memory + ``syncthreads`` form that is correct everywhere, and on a real GPU a warp-shuffle form
behind the one device function ``_warp_sum`` (``FASTNORM_CUDA_SHUFFLE=0`` forces the shared-memory form
on hardware too, so both are testable there).

Streams: kernels launch on PyTorch's current stream when PyTorch has initialized CUDA, else on CuPy's
current stream when CuPy is imported, else on the default stream. Arrays that come in through
``__cuda_array_interface__`` are wrapped with ``sync=False``: no host synchronization, ordering comes from
launching on the producer's current stream.
"""

from __future__ import annotations

import functools
import math
import os
import sys

import ml_dtypes
import numpy as np
from numba import cuda

from . import _arrays as A

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

# Low-level launches (Kernel.launch below) hand the stream to cuda.core in numba-cuda >= 0.2x, which takes
# only its own Stream objects; the dispatcher's `kernel[grid, block, stream]` path converts with this
# function, so the direct path must too (seen on an H200 with numba-cuda 0.30.4: "Stream or GraphBuilder
# expected, got int"). Older numba-cuda and the simulator take numba streams or 0 as they are.
try:
    from numba.cuda.cudadrv.driver import _to_core_stream as _launch_stream
except ImportError:

    def _launch_stream(stream):
        return stream


USE_SHUFFLE = not SIM and os.environ.get("FASTNORM_CUDA_SHUFFLE", "1") != "0"

FULL_MASK = 0xFFFFFFFF
WARP = 32

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
HALF = (F16, BF16)

# dtype -> (numba type name, accumulation numpy type). bfloat16 arrays reach the kernels as their uint16
# bit patterns (Numba has no bfloat16 type): see ``as_kernel_array`` and the ``load`` / ``store`` helpers.
_NB = {F16: "float16", F32: "float32", F64: "float64", BF16: "uint16"}
ACC = {F16: np.float32, F32: np.float32, F64: np.float64, BF16: np.float32}


def nbname(dtype) -> str:
    return _NB[np.dtype(dtype)]


def nb_type(acc):
    """The Numba type of an accumulation NumPy type (float32 or float64): shared and local arrays' dtype."""
    from numba import float32, float64

    return float32 if acc is np.float32 else float64


def param_dtype(dtype) -> np.dtype:
    """The dtype weights/biases (and the statistics) have inside the kernels for data of ``dtype``: float32
    for 16-bit data (the public layer converts: ``be.astype(w, be.stat_dtype(x.dtype))``), else ``dtype``."""
    return np.dtype(ACC[np.dtype(dtype)])


def arr(dtype, ndim: int) -> str:
    """Signature text of a C-contiguous array, e.g. ``float32[:, ::1]``."""
    return f"{nbname(dtype)}[{', '.join([':'] * (ndim - 1) + ['::1'])}]"


# ------------------------------------------------------------------------------------------ device info
_sm_count = None


def sm_count() -> int:
    """Multiprocessors of the current device (2 under the simulator)."""
    global _sm_count
    if _sm_count is None:
        n = 0
        if not SIM:
            try:
                n = int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
            except Exception:  # an old/unknown driver API: a safe guess
                n = 0
        _sm_count = n if n > 0 else (2 if SIM else 80)
    return _sm_count


# ------------------------------------------------------------------------------------------ streams
_ext_streams: dict = {}


def _external(ptr: int):
    s = _ext_streams.get(ptr)
    if s is None:
        if len(_ext_streams) > 64:
            _ext_streams.clear()
        s = _ext_streams[ptr] = cuda.external_stream(ptr)
    return s


_torch_cuda = False  # torch has initialized CUDA (it stays so for the process's life)


def current_stream_ptr() -> int:
    """The handle of the stream kernels launch on: torch's current stream (when torch has initialized
    CUDA), else CuPy's current stream (when CuPy is imported), else 0 (the default stream)."""
    global _torch_cuda
    if SIM:
        return 0
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if _torch_cuda or torch.cuda.is_initialized():
                _torch_cuda = True
                try:  # (the raw handle getter torch's generated code uses: no Stream object per call)
                    return int(torch._C._cuda_getCurrentRawStream(torch._C._cuda_getDevice()))
                except (AttributeError, TypeError):
                    return int(torch.cuda.current_stream().cuda_stream)
        except Exception:
            pass
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            return int(cupy.cuda.get_current_stream().ptr)
        except Exception:
            pass
    return 0


def current_stream():
    """The stream to launch on (see ``current_stream_ptr``): 0 or a Numba external stream."""
    ptr = current_stream_ptr()
    return _external(ptr) if ptr else 0


# ------------------------------------------------------------------------------------------ arrays
if SIM:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as _DevArray

    class SimArray(_DevArray):
        """The simulator's device array with a plain tuple ``shape`` (the simulator's refuses negative
        indices, Numba's real device arrays do not), keeping the type through reshapes and slices."""

        @property
        def shape(self):
            return tuple(self._ary.shape)

        def reshape(self, *args, **kwargs):
            return SimArray(self._ary.reshape(*args, **kwargs), stream=self.stream)

        def ravel(self, *args, **kwargs):
            return SimArray(self._ary.ravel(*args, **kwargs), stream=self.stream)

        def view(self, *args, **kwargs):
            return SimArray(self._ary.view(*args, **kwargs), stream=self.stream)

        def transpose(self, axes=None):
            return SimArray(np.transpose(self._ary, axes=axes), stream=self.stream)

        def __getitem__(self, idx):
            ret = self._ary[idx]
            return SimArray(ret, stream=self.stream) if type(ret) is np.ndarray else ret

else:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray as _DevArray


def is_torch(a) -> bool:
    return type(a).__module__.startswith("torch")


def dev(a):
    """``a`` as a Numba device array, zero-copy (any ``__cuda_array_interface__`` object; torch detached)."""
    if isinstance(a, _DevArray):
        return a
    numba_view = getattr(type(a), "numba", None)
    if numba_view is not None and type(a).__name__ == "DevArray":
        return a.numba()
    if is_torch(a):
        a = a.detach()
    return cuda.as_cuda_array(a, sync=False)


_EMPTY: dict = {}


def empty_device(shape: tuple, dtype):
    """A cached size-0 device array of exactly ``shape`` (an absent optional argument of a kernel).

    Never make one by slicing another device array: Numba's device-array slicing gives a dimension of
    stride 0 a length of 1 whatever the slice (a C-contiguous (0, 0) array has strides (0, itemsize), so
    ``a[:0]`` has shape (1, 0), seen with numba-cuda 0.30.4), and a kernel that tests ``shape[0] > 0``
    then stores through the null pointer. Kernels test ``size > 0`` for their optional arrays too.
    """
    key = (tuple(int(s) for s in shape), np.dtype(dtype))
    a = _EMPTY.get(key)
    if a is None:
        assert 0 in key[0], key
        a = _EMPTY[key] = SimArray(np.empty(key[0], key[1])) if SIM else cuda.device_array(key[0], key[1])
    return a


# ------------------------------------------------------------------------------------------ launching
class Kernel:
    """A kernel compiled once for one signature.

    ``launch`` calls the compiled kernel directly (no per-call argument-type dispatch); it falls back
    to the ordinary ``kernel[grid, block, stream](*args)`` call under the simulator or on a Numba
    version without that internal API.
    """

    def __init__(self, pyfunc, sig: str, max_registers: int | None = None):
        opts = {}
        if not SIM and max_registers:
            opts["max_registers"] = int(max_registers)
        self.disp = cuda.jit(sig, **opts)(pyfunc)
        self._k = None
        self._resident: dict = {}
        if not SIM:
            try:
                k = next(iter(self.disp.overloads.values()))
                if callable(getattr(k, "launch", None)):
                    self._k = k
            except Exception:
                self._k = None

    def resident_blocks(self, block: int) -> int:
        """Blocks of ``block`` threads the GPU runs at once (occupancy API; a guess if unavailable)."""
        n = self._resident.get(block)
        if n is None:
            n = 0
            if self._k is not None:
                try:
                    n = int(self._k.max_cooperative_grid_blocks(block))
                except Exception:
                    n = 0
            if n <= 0:
                n = sm_count() * max(1, 2048 // block)
            self._resident[block] = n
        return n

    def launch2d(self, grid: tuple, block: tuple, stream, *args):
        """Launch with a 2-D block (x, y) of threads on a 2-D grid."""
        gx, gy = int(grid[0]), int(grid[1])
        bx, by = int(block[0]), int(block[1])
        if gx <= 0 or gy <= 0:
            return
        if self._k is not None:
            self._k.launch(args, (gx, gy, 1), (bx, by, 1), _launch_stream(stream), 0)
        else:
            self.disp[(gx, gy), (bx, by), stream](*args)

    def launch(self, grid, block: int, stream, *args):
        """Launch on ``grid`` blocks (an int, or a (x, y) pair) of ``block`` threads."""
        gx, gy = (int(grid), 1) if np.ndim(grid) == 0 else (int(grid[0]), int(grid[1]))
        if gx <= 0 or gy <= 0:
            return
        if self._k is not None:
            self._k.launch(args, (gx, gy, 1), (int(block), 1, 1), _launch_stream(stream), 0)
        else:
            self.disp[(gx, gy), int(block), stream](*args)


_cache: dict = {}


def launcher(fn):
    """Marks ``fn`` as a kernel launcher: ``fastnorm._kernels.cuda`` exports it under its name."""
    fn.fastnorm_launcher = True
    return fn


def cached(key, build):
    """The compiled ``Kernel`` for ``key``, built by ``build()`` on first use."""
    k = _cache.get(key)
    if k is None:
        k = _cache[key] = build()
    return k


# ------------------------------------------------------------------------------------------ reductions
@cuda.jit(device=True)
def _warp_sum(v):
    """Sum over the 32 lanes of a warp, the same bits in every lane (xor butterfly). Real GPU only."""
    v += cuda.shfl_xor_sync(FULL_MASK, v, 16)
    v += cuda.shfl_xor_sync(FULL_MASK, v, 8)
    v += cuda.shfl_xor_sync(FULL_MASK, v, 4)
    v += cuda.shfl_xor_sync(FULL_MASK, v, 2)
    v += cuda.shfl_xor_sync(FULL_MASK, v, 1)
    return v


def team_buf_cols(team: int) -> int:
    """Shared-buffer columns a team reduction needs: one per thread (shared-memory form) or per warp."""
    return max(1, team // WARP) if USE_SHUFFLE else team


U64 = np.uint64


def register_cap(block: int, acc) -> int:
    """Registers per thread to compile a kernel with: every block size must launch (65536 per block),
    and float32-accumulating kernels are held to 64 so that an SM keeps >= 1024 threads resident
    (memory-bound kernels need many loads in flight); float64 ones may use more."""
    cap = min(255, (65536 // block) & ~7)
    return min(cap, 64) if np.dtype(acc) == np.float32 else cap


def make_team_sum(team: int):
    """Device function ``(a, buf, p, t, lane) -> sum of a`` over the ``team`` threads (a power of two >= 32)
    that own row slot ``t`` of the block; ``lane`` (uint64) is the thread's rank in its team.

    ``buf`` is a shared (2, rows, team_buf_cols(team)) array and ``p`` (0 or 1) the half of it this call
    uses: consecutive calls must alternate ``p``, which makes one barrier per call enough (a call writes
    the half the previous call did not read). Every thread of the block must make the call. The order
    of the sum is fixed (bitwise reproducible) and every thread of the team gets the same total.
    """
    nwarps = max(1, team // WARP)
    half = U64(team // 2)
    wu = U64(WARP)
    if USE_SHUFFLE and nwarps == 1:

        @cuda.jit(device=True)
        def team_sum(a, buf, p, t, lane):
            return _warp_sum(a)

    elif USE_SHUFFLE:

        @cuda.jit(device=True)
        def team_sum(a, buf, p, t, lane):
            a = _warp_sum(a)
            if lane % wu == U64(0):
                buf[p, t, lane // wu] = a
            cuda.syncthreads()
            a = buf[p, t, 0]
            for k in range(1, nwarps):
                a += buf[p, t, k]
            return a

    else:

        @cuda.jit(device=True)
        def team_sum(a, buf, p, t, lane):
            buf[p, t, lane] = a
            cuda.syncthreads()
            s = half
            while s > U64(0):
                if lane < s:
                    buf[p, t, lane] += buf[p, t, lane + s]
                cuda.syncthreads()
                s = s // U64(2)
            return buf[p, t, 0]

    return team_sum


def make_team_sum2(team: int):
    """``make_team_sum`` for two values at once: ``(a, b, buf, p, t, lane) -> (sum a, sum b)``;
    ``buf`` is a shared (2, 2, rows, team_buf_cols(team)) array (half, value, row slot, column)."""
    nwarps = max(1, team // WARP)
    half = U64(team // 2)
    wu = U64(WARP)
    if USE_SHUFFLE and nwarps == 1:

        @cuda.jit(device=True)
        def team_sum2(a, b, buf, p, t, lane):
            return _warp_sum(a), _warp_sum(b)

    elif USE_SHUFFLE:

        @cuda.jit(device=True)
        def team_sum2(a, b, buf, p, t, lane):
            a = _warp_sum(a)
            b = _warp_sum(b)
            if lane % wu == U64(0):
                buf[p, 0, t, lane // wu] = a
                buf[p, 1, t, lane // wu] = b
            cuda.syncthreads()
            a = buf[p, 0, t, 0]
            b = buf[p, 1, t, 0]
            for k in range(1, nwarps):
                a += buf[p, 0, t, k]
                b += buf[p, 1, t, k]
            return a, b

    else:

        @cuda.jit(device=True)
        def team_sum2(a, b, buf, p, t, lane):
            buf[p, 0, t, lane] = a
            buf[p, 1, t, lane] = b
            cuda.syncthreads()
            s = half
            while s > U64(0):
                if lane < s:
                    buf[p, 0, t, lane] += buf[p, 0, t, lane + s]
                    buf[p, 1, t, lane] += buf[p, 1, t, lane + s]
                cuda.syncthreads()
                s = s // U64(2)
            return buf[p, 0, t, 0], buf[p, 1, t, 0]

    return team_sum2


@cuda.jit(device=True)
def _chan(na, ha, la, qa, nb, hb, lb, qb):
    """Chan, Golub and LeVeque's merge of two (count, mean, M2) summaries of disjoint parts of a row, each
    mean carried as an unevaluated sum hi + lo (hi a float near the data, lo the small rest): the
    difference of two means is (hb - ha) + (lb - la), where hb - ha is exact for means of like size, so a
    large common offset (mean 1e4, spread 1) costs no digits. ``a`` is the lower-ranked part (a fixed
    operand order: every thread merging the same pair gets the same bits); an empty part (count 0) leaves
    the other as it is. The result keeps a's hi."""
    if nb == 0:
        return na, ha, la, qa
    if na == 0:
        return nb, hb, lb, qb
    n = na + nb
    d = (hb - ha) + (lb - la)
    f = nb / n
    return n, ha, la + d * f, qa + qb + d * (d * (na * f))


def make_team_moments(team: int):
    """Device function ``(n, hi, lo, m2, buf, t, lane) -> (mean, M2)`` of a row from each thread's summary
    of its own elements (count ``n``, mean ``hi + lo``, ``m2`` = sum of squared deviations from it), over
    the ``team`` threads that own row slot ``t`` (a power of two >= 32; ``lane`` their uint64 rank): one
    reduction, one barrier (none for a one-warp team), as accurate as two passes (see ``_chan``).

    ``buf`` is a shared (4, rows, team_buf_cols(team)) array; it is read after the call's barrier, so the
    kernel must not write it again for another row without a barrier between. Every thread of the block
    calls it. The merge order is fixed (bitwise reproducible) and every thread gets the same result."""
    nwarps = max(1, team // WARP)
    wu = U64(WARP)

    @cuda.jit(device=True)
    def warp_moments(n, h, lo, q, lane):
        for off in (16, 8, 4, 2, 1):
            n2 = cuda.shfl_xor_sync(FULL_MASK, n, off)
            h2 = cuda.shfl_xor_sync(FULL_MASK, h, off)
            l2 = cuda.shfl_xor_sync(FULL_MASK, lo, off)
            q2 = cuda.shfl_xor_sync(FULL_MASK, q, off)
            if lane & U64(off):
                n, h, lo, q = _chan(n2, h2, l2, q2, n, h, lo, q)
            else:
                n, h, lo, q = _chan(n, h, lo, q, n2, h2, l2, q2)
        return n, h, lo, q

    @cuda.jit(device=True)
    def put(buf, t, col, n, h, lo, q):
        buf[0, t, col] = n
        buf[1, t, col] = h
        buf[2, t, col] = lo
        buf[3, t, col] = q

    @cuda.jit(device=True)
    def merge_buf(buf, t, cols):
        """Merge of the summaries in buf[:, t, :cols], in column order."""
        n, h, lo, q = buf[0, t, 0], buf[1, t, 0], buf[2, t, 0], buf[3, t, 0]
        for k in range(1, cols):
            n, h, lo, q = _chan(n, h, lo, q, buf[0, t, k], buf[1, t, k], buf[2, t, k], buf[3, t, k])
        return h + lo, q

    if USE_SHUFFLE and nwarps == 1:

        @cuda.jit(device=True)
        def team_moments(n, h, lo, q, buf, t, lane):
            n, h, lo, q = warp_moments(n, h, lo, q, lane)
            return h + lo, q

    elif USE_SHUFFLE:

        @cuda.jit(device=True)
        def team_moments(n, h, lo, q, buf, t, lane):
            n, h, lo, q = warp_moments(n, h, lo, q, lane)
            if lane % wu == U64(0):
                put(buf, t, lane // wu, n, h, lo, q)
            cuda.syncthreads()
            return merge_buf(buf, t, nwarps)

    else:  # the simulator: every thread merges the team's summaries in rank order

        @cuda.jit(device=True)
        def team_moments(n, h, lo, q, buf, t, lane):
            put(buf, t, lane, n, h, lo, q)
            cuda.syncthreads()
            return merge_buf(buf, t, team)

    return team_moments


def next_pow2(v: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, v))))


# ------------------------------------------------------------------------------------------ 16-bit storage
# bfloat16 data is stored as uint16 bit patterns and computed in float32: widening is exact (bits << 16),
# narrowing rounds to nearest even and keeps a NaN a (quiet) NaN, bit for bit as fastnorm_half.h does on
# the CPU. The two bit casts are the only code that differs between a GPU (libdevice) and the simulator
# (NumPy scalar views); the rounding arithmetic is the same function in both.
if SIM:

    @cuda.jit(device=True)
    def f32_bits(f):
        """The bits of float32(f), as a non-negative integer."""
        return int(np.float32(f).view(np.uint32))

    @cuda.jit(device=True)
    def bits_f32(u):
        """The float32 whose bits are the low 32 bits of ``u``."""
        return np.uint32(u).view(np.float32)

else:
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def f32_bits(f):
        """The bits of float32(f), as a non-negative integer."""
        return np.int64(libdevice.float_as_int(np.float32(f))) & np.int64(0xFFFFFFFF)

    @cuda.jit(device=True)
    def bits_f32(u):
        """The float32 whose bits are the low 32 bits of ``u``."""
        return libdevice.int_as_float(np.int32(u))


@cuda.jit(device=True)
def bf16_to_f32(h):
    """A bfloat16 bit pattern (uint16) as float32: exact."""
    return bits_f32(np.uint32(h) << np.uint32(16))


@cuda.jit(device=True)
def f32_to_bf16(f):
    """float32(f) rounded to the nearest bfloat16, ties to even (overflow -> inf), as its uint16 bit pattern;
    a NaN stays NaN (quieted, sign and top payload bits kept)."""
    u = f32_bits(f)
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16((u >> 16) | 0x40)
    return np.uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)


def loader(dtype):
    """Device function ``load(v)``: a stored element of ``dtype`` (a uint16 pattern for bfloat16) as a value
    of the accumulation type ``ACC[dtype]`` (exact)."""
    return _conversion(np.dtype(dtype), True)


def storer(dtype):
    """Device function ``store(v)``: a float value as the stored element of ``dtype``. 16-bit formats round
    float32(v) to nearest even once (a float64 value is first rounded to float32, as the CPU kernels do:
    the float32 result is what gets rounded); float32/float64 are plain casts."""
    return _conversion(np.dtype(dtype), False)


@functools.cache
def _conversion(dt: np.dtype, load: bool):
    """The device function of ``loader(dt)`` (``load``) or ``storer(dt)``, one object per (dtype, direction)."""
    if dt == BF16:
        return bf16_to_f32 if load else f32_to_bf16
    to = ACC[dt] if load else dt.type
    via = np.float32 if (dt == F16 and not load) else to

    @cuda.jit(device=True)
    def cast(v):
        return to(via(v))

    return cast


def kview(a):
    """``a`` (a device array) as a kernel reads it: a bfloat16 array as its uint16 view (zero-copy)."""
    if a.dtype == BF16:
        return a.view(np.uint16)
    return a


def kdev(a):
    """``dev(a)`` as a kernel reads it (``kview``). On a GPU, torch tensors and adapted arrays go through the
    adapters: torch refuses ``__cuda_array_interface__`` for bfloat16, and NumPy names it only 'V2'."""
    if not SIM and not isinstance(a, _DevArray):
        if A.array_kind(a) not in ("torch", "dev"):
            return kview(dev(a))
        d = A.adapt(a)
        return (d.bits() if d.dtype == BF16 else d).numba()
    return kview(dev(a))
