"""Array adapters: pointer, shape, dtype, strides, device and stream read straight from the caller's array.

``adapt(a)`` turns a torch CUDA tensor, a CuPy array, a Numba device array, or any other
``__cuda_array_interface__`` object into a ``DevArray``: a small record of the memory it describes (the
interface dict is built only for the last kind). No Numba array object, no ``detach()``, no dict.
``DevArray`` is what the CUDA backend hands the public layer for inputs: a NumPy dtype, a tuple shape,
``reshape`` views, and, for code that wants a Numba array, ``numba()`` (a zero-copy view, made once).
"""

from __future__ import annotations

import sys

import numpy as np

from ... import _dtypes
from ..._backend import _detect as _backend

_NP_OF_TORCH: dict = {}
_TORCH_OF_NP: dict = {}


def _torch_dtypes():
    torch = sys.modules["torch"]
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"):
        t = getattr(torch, name)
        d = np.dtype(name)
        _NP_OF_TORCH[t] = d
        _TORCH_OF_NP[d] = t
    _NP_OF_TORCH[torch.bfloat16] = _dtypes.BFLOAT16  # ml_dtypes.bfloat16: zero-copy, the kernels read uint16
    _TORCH_OF_NP[_dtypes.BFLOAT16] = torch.bfloat16


def np_dtype_of_torch(tdt) -> np.dtype:
    d = _NP_OF_TORCH.get(tdt)
    if d is None:
        if not _NP_OF_TORCH:
            _torch_dtypes()
            d = _NP_OF_TORCH.get(tdt)
        if d is None:  # other types (float8 ...): a raw type of the right width (callers check dtypes first)
            d = np.dtype(f"V{sys.modules['torch'].empty((), dtype=tdt).element_size()}")
            _NP_OF_TORCH[tdt] = d
    return d


def torch_dtype_of_np(d):
    t = _TORCH_OF_NP.get(d)
    if t is None:
        _torch_dtypes()
        t = _TORCH_OF_NP[np.dtype(d)]
    return t


def c_strides(shape: tuple, itemsize: int) -> tuple:
    """Byte strides of a C-contiguous array of ``shape`` (NumPy's values, 0 for a zero-size array)."""
    if 0 in shape:
        return (0,) * len(shape)
    out, step = [], itemsize
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


class DevArray:
    """Device memory as the caller's array described it: ``ptr`` (int), ``shape`` (tuple), ``dtype`` (NumPy),
    ``strides`` (bytes; None when C-contiguous), ``kind`` (``"torch"``, ``"cupy"``, ``"numba"``, ``"cai"``),
    ``owner`` (the caller's object, kept alive), ``device`` (ordinal, -1 if unknown), ``readonly`` and
    ``stream`` (the producer stream handle from a version-3 interface dict, else None)."""

    __slots__ = ("ptr", "shape", "dtype", "strides", "kind", "owner", "device", "readonly", "stream", "_nb", "_span")

    def __init__(self, ptr, shape, dtype, strides, kind, owner, device=-1, readonly=False, stream=None):
        self.ptr = ptr
        self.shape = shape
        self.dtype = dtype
        self.strides = strides
        self.kind = kind
        self.owner = owner
        self.device = device
        self.readonly = readonly
        self.stream = stream
        self._nb = None
        self._span = None

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def contiguous(self) -> bool:
        return self.strides is None

    def __len__(self) -> int:
        return self.shape[0]

    def reshape(self, *shape):
        """A view of another shape (C order; the array must be C-contiguous)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        shape = tuple(map(int, shape))
        if -1 in shape:
            known = 1
            for s in shape:
                if s != -1:
                    known *= s
            shape = tuple(self.size // known if s == -1 else s for s in shape)
        if shape == self.shape:
            return self
        n = 1
        for s in shape:
            n *= s
        if n != self.size:
            raise ValueError(f"cannot reshape an array of size {self.size} into shape {shape}")
        if self.strides is not None:
            return self.numba().reshape(*shape)
        return DevArray(
            self.ptr, shape, self.dtype, None, self.kind, self.owner, self.device, self.readonly, self.stream
        )

    def bits(self):
        """The same memory as unsigned integers of the same width (uint16 for a 16-bit float array): how
        kernels take bfloat16, and how copies move any dtype."""
        return DevArray(
            self.ptr,
            self.shape,
            np.dtype(f"u{self.dtype.itemsize}"),
            self.strides,
            self.kind,
            self.owner,
            self.device,
            self.readonly,
            self.stream,
        )

    def span(self) -> tuple[int, int]:
        """[lo, hi) byte addresses the array spans (an empty range for a zero-size array)."""
        return span(self)

    @property
    def __cuda_array_interface__(self) -> dict:
        d = {
            "shape": self.shape,
            "strides": self.strides,
            "typestr": self.dtype.str,
            "data": (self.ptr, self.readonly),
            "version": 3,
        }
        if self.stream is not None:
            d["stream"] = self.stream
        return d

    def numba(self):
        """A Numba device array over the same memory (zero-copy; made on first use, then kept)."""
        nb = self._nb
        if nb is None:
            if (
                self.kind == "numba"
                and self.strides is None
                and type(self.owner).__name__ == "DeviceNDArray"
                and tuple(self.owner.shape) == self.shape
            ):
                nb = self.owner
            elif self.dtype == _dtypes.BFLOAT16:  # (its interface typestr is only 'V2': go through uint16)
                nb = self.bits().numba().view(self.dtype)
            else:
                from numba import cuda

                nb = cuda.from_cuda_array_interface(self.__cuda_array_interface__, owner=self.owner, sync=False)
            self._nb = nb
        return nb

    def __getattr__(self, name):
        # anything else (copy_to_host, ravel, slicing helpers ...) is the Numba array's
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.numba(), name)

    def __getitem__(self, idx):
        return self.numba()[idx]

    def __repr__(self) -> str:
        return f"DevArray(ptr={self.ptr:#x}, shape={self.shape}, dtype={self.dtype}, kind={self.kind})"


_backend._KINDS[DevArray] = "dev"


# ------------------------------------------------------------------------------------------ adapters
# Per-call costs matter here (a norm call adapts 6-9 arrays): each adapter reads its type's attributes once,
# and C-contiguity of a Numba array is looked up by (shape, strides, itemsize) instead of asked of Numba.
_CONTIG: dict = {}


def _from_torch(a) -> DevArray:
    tdt = a.dtype
    dt = _NP_OF_TORCH.get(tdt)
    if dt is None:
        dt = np_dtype_of_torch(tdt)
    if a.is_contiguous():
        strides = None
    else:
        strides = tuple(s * dt.itemsize for s in a.stride())
    return DevArray(a.data_ptr(), tuple(a.shape), dt, strides, "torch", a, a.get_device())


def _from_cupy(a) -> DevArray:
    strides = None if a.flags.c_contiguous else tuple(a.strides)
    return DevArray(a.data.ptr, tuple(a.shape), a.dtype, strides, "cupy", a, a.device.id)


def _from_numba(a) -> DevArray:
    g = a.gpu_data
    shape, strides, dt = a.shape, a.strides, a.dtype
    key = (shape, strides, dt.itemsize)
    contig = _CONTIG.get(key)
    if contig is None:
        if len(_CONTIG) >= 4096:
            _CONTIG.clear()
        contig = _CONTIG[key] = bool(a.is_c_contiguous())
    st = a.stream
    return DevArray(
        0 if g is None else int(g.device_pointer),
        shape,
        dt,
        None if contig else tuple(strides),
        "numba",
        a,
        -1,
        False,
        int(st.handle) if st else None,
    )


def from_interface(a, ai: dict | None = None) -> DevArray:
    """The generic path: one ``__cuda_array_interface__`` dict."""
    if ai is None:
        if array_kind(a) == "torch":
            a = a.detach()
        ai = a.__cuda_array_interface__
    dt = np.dtype(ai["typestr"])
    shape = tuple(int(s) for s in ai["shape"])
    strides = ai.get("strides")
    if strides is not None:
        strides = tuple(int(s) for s in strides)
        if strides == c_strides(shape, dt.itemsize) or _is_c_contiguous(shape, strides, dt.itemsize):
            strides = None
    ptr, ro = ai["data"]
    stream = ai.get("stream") if ai.get("version", 0) >= 3 else None
    return DevArray(int(ptr or 0), shape, dt, strides, "cai", a, -1, bool(ro), stream)


def _is_c_contiguous(shape, strides, itemsize) -> bool:
    if 0 in shape:
        return True
    expect = itemsize
    for n, s in zip(reversed(shape), reversed(strides), strict=True):
        if n != 1 and s != expect:
            return False
        expect *= n
    return True


def _identity(a):
    return a


array_kind = _backend.array_kind
_ADAPT = {"torch": _from_torch, "cupy": _from_cupy, "numba": _from_numba, "cai": from_interface, "dev": _identity}
_KINDS = _backend._KINDS
_BY_TYPE: dict = {}  # type -> its adapter (filled on first sight of the type)


def adapt(a) -> DevArray:
    """``a`` (any CUDA array object) as a ``DevArray``; a TypeError for a host object."""
    f = _BY_TYPE.get(type(a))
    if f is None:
        f = _ADAPT.get(_KINDS.get(type(a)) or array_kind(a))
        if f is None:
            raise TypeError(f"not a CUDA array: {type(a).__name__}")
        _BY_TYPE[type(a)] = f
    return f(a)


def is_c_contiguous(a) -> bool:
    k = _KINDS.get(type(a)) or array_kind(a)
    if k == "torch":
        return a.is_contiguous()
    if k == "numba":
        return a.is_c_contiguous()
    if k == "cupy":
        return a.flags.c_contiguous
    return adapt(a).strides is None


def span_of(a) -> tuple[int, int]:
    """[lo, hi) byte addresses spanned by any CUDA array object (contiguous torch tensors and Numba arrays
    without building an adapter)."""
    k = _KINDS.get(type(a)) or array_kind(a)
    if k == "dev":
        s = a._span
        if s is None:
            s = a._span = span(a)
        return s
    if k == "torch" and a.is_contiguous():
        p = a.data_ptr()
        return p, p + a.nbytes
    if k == "numba" and a.is_c_contiguous():
        g = a.gpu_data
        p = 0 if g is None else g.device_pointer_value or 0
        return p, p + a.size * a.dtype.itemsize
    return span(adapt(a))


def span(d: DevArray) -> tuple[int, int]:
    ptr = d.ptr
    shape = d.shape
    if 0 in shape:
        return ptr, ptr
    item = d.dtype.itemsize
    strides = d.strides
    if strides is None:
        n = 1
        for s in shape:
            n *= s
        return ptr, ptr + n * item
    lo = hi = ptr
    for n, s in zip(shape, strides, strict=True):
        if s >= 0:
            hi += (n - 1) * s
        else:
            lo += (n - 1) * s
    return lo, hi + item
