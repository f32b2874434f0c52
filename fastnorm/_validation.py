"""The one place for argument checks and shape canonicalization.

Every public op validates through these helpers *before* any kernel runs or any output is written, so
bad input raises a ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape, value, buffer)
that names the op and the argument, and never reaches a kernel (which run without bounds checks).
They work on NumPy arrays and on CUDA arrays alike (only ``.shape``/``.dtype`` and the backend's
primitives are used).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._backend._detect import dtype_of, on_cuda
from ._dtypes import BFLOAT16, FLOAT16, FLOAT32, FLOAT64, HALF, is_half, stat_dtype


def _dtype_names(dtypes) -> str:
    return ", ".join(np.dtype(d).name for d in dtypes)


def float_input(be, op: str, name: str, a, dtype=None, *, half: bool = True):
    """``a`` as a C-contiguous, aligned, native-byte-order float array of backend ``be``.

    A copy is made only when needed: a non-contiguous view, an unaligned buffer (e.g.
    ``np.frombuffer(buf, np.float32, offset=1)``) or a non-native byte order (``'>f4'`` on x86) is copied
    into a fresh native array; read-only arrays are used as they are (kernels only read inputs).
    TypeError if its dtype is not one of the backend's float dtypes (without the 16-bit ones when
    ``half`` is False: ops that have no 16-bit kernels), or is not ``dtype`` (one dtype or a tuple).
    """
    if be.on_host and not isinstance(a, np.ndarray):
        if a is None or isinstance(a, (str, bytes, dict, set)):
            raise TypeError(f"{op}: {name} must be an array, got {type(a).__name__}")
        a = np.asarray(a)
    dt = dtype_of(a)
    if dt is not None and be.on_host and not dt.isnative:
        dt = dt.newbyteorder("=")  # byte-swapped by be.asarray below
    accepted = be.float_dtypes if half else tuple(d for d in be.float_dtypes if d not in HALF)
    if dt is None or dt not in accepted:
        raise TypeError(
            f"{op}: {name} has dtype {a.dtype if dt is None else dt.name}; "
            f"expected one of {_dtype_names(accepted)} on {be.name}"
        )
    if dtype is not None:
        allowed = tuple(map(np.dtype, dtype)) if isinstance(dtype, tuple) else (np.dtype(dtype),)
        if dt not in allowed:
            want = f"match the input's dtype {allowed[0].name}" + "".join(f" or be {d.name}" for d in allowed[1:])
            raise TypeError(f"{op}: {name} has dtype {dt.name} but must {want}")
    return be.asarray(a)


def _memory_problem(a) -> str | None:
    """Why a NumPy array cannot be written in place by a kernel (byte order, alignment), or None.

    Only NumPy arrays are inspected; CUDA arrays are always native, aligned allocations.
    """
    if not isinstance(a, np.ndarray):
        return None
    if not a.dtype.isnative:
        return (
            f"has non-native byte order (dtype {a.dtype.str}); kernels write native "
            f"{a.dtype.newbyteorder('=').name}: use a native array (x.astype(x.dtype.newbyteorder('=')))"
        )
    if not a.flags.aligned:
        return (
            f"is not aligned to its {a.dtype.itemsize}-byte items (a view at an odd byte offset, "
            "e.g. np.frombuffer(..., offset=1)); kernels write aligned memory only"
        )
    return None


def check_shape(op: str, name: str, a, shape: tuple) -> None:
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(a.shape)}")


def param(be, op: str, name: str, a, shape: tuple, dtype):
    """An optional parameter / saved tensor: None stays None, else float_input + exact shape."""
    if a is None:
        return None
    a = float_input(be, op, name, a, dtype)
    if a.shape != shape:
        check_shape(op, name, a, shape)
    return a


def required(be, op: str, name: str, a, shape: tuple, dtype):
    """Like ``param`` but None is an error."""
    if a is None:
        raise TypeError(f"{op}: {name} is required, got None")
    return param(be, op, name, a, shape, dtype)


def scalar(
    op: str,
    name: str,
    value,
    *,
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
    finite: bool = True,
) -> float:
    """A real scalar inside [low, high] (open ends where asked), as a Python float.

    ``finite=False`` also accepts inf and NaN (torch's ``eps``/``momentum``: any float), range checks
    then apply to the finite values only.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not finite and not math.isfinite(v):
        return v
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        rng = " and ".join(s for s in (lo, hi) if s) or "finite"
        raise ValueError(f"{op}: {name} must be finite and {rng}, got {value!r}")
    return v


def flag(op: str, name: str, value) -> bool:
    """A bool (Python or NumPy); anything else, the string ``'False'`` included, is a TypeError (as torch)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def integer(op: str, name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """An int inside [low, high], as a Python int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        lo = f">= {low}" if low is not None else ""
        hi = f"<= {high}" if high is not None else ""
        raise ValueError(f"{op}: {name} must be {' and '.join(s for s in (lo, hi) if s)}, got {v}")
    return v


def split_rows(op: str, shape: tuple, normalized_ndim, name: str = "x") -> tuple[tuple, tuple, int, int]:
    """Canonicalize for row ops (LayerNorm, RMSNorm): the last ``normalized_ndim`` dims form a row.

    Returns (leading_shape, normalized_shape, M, N) with M = prod(leading_shape), N = prod(normalized_shape).
    N may be 0 (an empty normalized shape: every row is empty, as torch allows).
    """
    k = integer(op, "normalized_ndim", normalized_ndim, low=1)
    if k > len(shape):
        raise ValueError(f"{op}: normalized_ndim={k} but {name} has only {len(shape)} dims (shape {tuple(shape)})")
    lead, norm = tuple(shape[: len(shape) - k]), tuple(shape[len(shape) - k :])
    return lead, norm, math.prod(lead), math.prod(norm)


def outputs(be, op: str, out, specs: Sequence, inputs: Sequence = ()) -> list:
    """Output buffers: the caller's ``out=`` buffers checked, or new ones allocated.

    ``specs``: one (name, shape, dtype) per output slot, or None for a slot that has no output (e.g. the
    gradient of an absent weight). ``out``: None, or a sequence of the same length whose entries are
    None (allocate) or a buffer, which must be on ``be``, C-contiguous, aligned, native byte order,
    writeable, of exactly that shape
    and dtype, and must not overlap an input or another output. Everything is checked before anything
    is allocated, so a bad ``out=`` leaves nothing half written.
    """
    n = len(specs)
    if out is None:  # nothing to check: allocate every output
        return [None if spec is None else be.empty(spec[1], spec[2]) for spec in specs]
    if not isinstance(out, (list, tuple)):
        if n == 1:
            out = (out,)
        else:
            raise TypeError(
                f"{op}: out must be a tuple of {n} buffers (None entries allowed), got {type(out).__name__}"
            )
    if len(out) != n:
        raise ValueError(f"{op}: out must have {n} entries, got {len(out)}")
    span = be.span  # None: pairs are compared with be.may_share_memory
    given = []  # (name, buffer, its byte span or None)
    in_spans = None
    for spec, buf in zip(specs, out):
        if buf is None:
            continue
        if spec is None:
            raise ValueError(f"{op}: out has a buffer in a slot with no output (an absent parameter's gradient)")
        name, shape, dtype = spec
        s = _check_out(be, op, name, buf, shape, dtype)
        if span is None:
            for other_name, other, _ in given:
                if be.may_share_memory(buf, other):
                    raise ValueError(f"{op}: out buffers for {name} and {other_name} overlap")
            for i, a in enumerate(inputs):
                if a is not None and be.may_share_memory(buf, a):
                    raise ValueError(f"{op}: out buffer for {name} overlaps input #{i}; outputs cannot alias inputs")
            given.append((name, buf, None))
            continue
        # each array's byte span is read once (with the other checks where the backend can); an empty span
        # overlaps nothing
        lo, hi = s = span(buf) if s is None else s
        if lo < hi:
            for other_name, _, (olo, ohi) in given:
                if lo < ohi and olo < hi and olo < ohi:
                    raise ValueError(f"{op}: out buffers for {name} and {other_name} overlap")
            if in_spans is None:
                in_spans = [None if a is None else span(a) for a in inputs]
            for i, t in enumerate(in_spans):
                if t is not None and lo < t[1] and t[0] < hi and t[0] < t[1]:
                    raise ValueError(f"{op}: out buffer for {name} overlaps input #{i}; outputs cannot alias inputs")
        given.append((name, buf, s))
    result = []
    for spec, buf in zip(specs, out):
        if spec is None:
            result.append(None)
        elif buf is None:
            result.append(be.empty(spec[1], spec[2]))
        else:
            result.append(buf)
    return result


def _check_out(be, op: str, name: str, buf, shape: tuple, dtype):
    """One ``out=`` buffer against its declared (name, shape, dtype): see ``outputs``. Returns its byte span
    (``be.out_layout``'s; None on a backend without ``span``)."""
    lay = be.out_layout(buf)
    if lay is None:
        raise TypeError(
            f"{op}: out buffer for {name} must be a {be.array_type} "
            f"(the inputs are on {be.name}), got {type(buf).__name__}"
        )
    got, contiguous, writeable, span = lay
    if got != shape and got != tuple(shape):
        raise ValueError(f"{op}: out buffer for {name} must have shape {tuple(shape)}, got {got}")
    if be.on_host:
        problem = _memory_problem(buf)
        if problem is not None:
            raise ValueError(f"{op}: out buffer for {name} {problem}")
    got = dtype_of(buf)
    if got != dtype and got != np.dtype(dtype):
        raise ValueError(f"{op}: out buffer for {name} must have dtype {np.dtype(dtype).name}, got {buf.dtype}")
    if not contiguous:
        raise ValueError(f"{op}: out buffer for {name} must be C-contiguous")
    if not writeable:
        raise ValueError(f"{op}: out buffer for {name} is read-only")
    return span


def inout(be, op: str, name: str, a, shape: tuple, dtype, avoid: Sequence = ()):
    """A state array updated in place (e.g. BatchNorm's running statistics): checked, never copied.

    It must be an array of backend ``be`` (TypeError), of dtype ``dtype`` (TypeError), of exactly
    ``shape``, C-contiguous, aligned, native byte order, writeable, and must not overlap any (name, array)
    pair of ``avoid`` (ValueError). Returns ``a`` itself so the caller's array is the one written.
    """
    if not be.is_own_output(a):
        raise TypeError(
            f"{op}: {name} is updated in place and must be a "
            f"{be.array_type} (the inputs are on {be.name}), "
            f"got {type(a).__name__}"
        )
    problem = _memory_problem(a)
    if problem is not None:
        raise ValueError(f"{op}: {name} is updated in place but {problem}")
    if np.dtype(a.dtype) != np.dtype(dtype):
        raise TypeError(
            f"{op}: {name} has dtype {np.dtype(a.dtype).name} but must match the input's dtype {np.dtype(dtype).name}"
        )
    check_shape(op, name, a, shape)
    if not be.is_contiguous(a):
        raise ValueError(f"{op}: {name} is updated in place and must be C-contiguous")
    if not be.is_writeable(a):
        raise ValueError(f"{op}: {name} is updated in place but is read-only")
    for other_name, other in avoid:
        if other is not None and be.may_share_memory(a, other):
            raise ValueError(f"{op}: {name} overlaps {other_name}")
    return a


def split_channels(op: str, shape: tuple, axis=1, name: str = "x") -> tuple[int, int, int]:
    """Canonicalize for channel ops (BatchNorm, InstanceNorm, GroupNorm) to an (N, C, L) view.

    ``axis=1``: x is (N, C, *spatial), L = prod(spatial) (1 for 2-D x). ``axis=-1`` (or x.ndim - 1):
    channels-last (*, C), viewed as (M, C, 1) with M = prod(shape[:-1]). x needs at least 2 dims; any
    of N, C, L may be 0 (the ops define the empty cases). Returns (N, C, L).
    """
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{op}: axis must be an int (1 or -1), got {type(axis).__name__}")
    if len(shape) < 2:
        raise ValueError(f"{op}: {name} must have at least 2 dims (N, C, ...), got shape {tuple(shape)}")
    if int(axis) in (-1, len(shape) - 1) and len(shape) > 2:
        c = shape[-1]
        n, length = math.prod(shape[:-1]), 1
    elif int(axis) in (1, -1):
        n, c = shape[0], shape[1]
        length = math.prod(shape[2:])
    else:
        raise ValueError(f"{op}: axis must be 1 (N, C, ...) or -1 (channels-last), got {axis}")
    return n, c, length


# ------------------------------------------------------------------------------------------ optimizer arrays
# The optimizers take lists of arrays: parameters and state updated in place, gradients read. The kernels'
# fast checks (``gather_params`` / ``gather_like``) accept the usual case in C; when one refuses an entry,
# ``state_array`` says why, in the words of ``inout`` and ``outputs``.
def array_list(op: str, name: str, arrays) -> list:
    """``arrays`` (a list or tuple of arrays) as a list; TypeError for anything else (one array included)."""
    if isinstance(arrays, np.ndarray) or not isinstance(arrays, (list, tuple)):
        raise TypeError(f"{op}: {name} must be a list or tuple of arrays, got {type(arrays).__name__}")
    return list(arrays)


def state_dtypes(param_dtype, *, stat: bool, writeable: bool) -> tuple:
    """The dtypes an optimizer array may have beside a parameter of ``param_dtype`` (None: the array is a
    parameter: float32, float64, bfloat16, float16): state (``stat``) the parameter's state dtype (float32
    beside a 16-bit parameter); a gradient the parameter's dtype, or float32 beside a 16-bit one."""
    if param_dtype is None:
        return (FLOAT32, FLOAT64, BFLOAT16, FLOAT16)
    if stat:
        return (stat_dtype(param_dtype),)
    if not writeable and is_half(param_dtype):
        return (param_dtype, FLOAT32)
    return (param_dtype,)


def state_array(be, op: str, name: str, a, param=None, *, writeable: bool, copy_ok: bool, stat: bool = False):
    """An optimizer array checked against its parameter ``param`` (None: ``a`` is a parameter).

    It must be an array of backend ``be`` (TypeError; an array of the other device is named as such), of
    a dtype of ``state_dtypes`` (TypeError), of its parameter's shape, native byte order, aligned,
    C-contiguous and, when ``writeable``, writeable (ValueError). Returns ``a`` itself, or, when only its
    layout is wrong and ``copy_ok`` (gradients: read, never written), a contiguous native copy. Memory
    overlap is the caller's check (the optimizers compare sorted address ranges).
    """
    if not be.is_own_output(a):
        if on_cuda(a) or (a is not None and hasattr(a, "__array__")):
            where = "the GPU (CUDA)" if on_cuda(a) else "the CPU"
            raise TypeError(
                f"{op}: arguments live on different devices: {name} on {where}, the parameters on {be.device}; "
                "move them to one device"
            )
        raise TypeError(f"{op}: {name} must be a {be.array_type}, got {type(a).__name__}")
    shape, dtype, _ = be.array_info(a)
    pdt = None if param is None else be.array_info(param)[1]
    want = state_dtypes(pdt, stat=stat, writeable=writeable)
    if dtype.newbyteorder("=") not in want:
        names = " or ".join(d.name for d in want)
        expected = names if pdt is None else f"{names} for its {pdt.name} parameter"
        raise TypeError(f"{op}: {name} has dtype {dtype.name}; expected {expected}")
    if param is not None and tuple(shape) != tuple(be.array_info(param)[0]):
        raise ValueError(
            f"{op}: {name} has shape {tuple(shape)} but its parameter has shape {tuple(be.array_info(param)[0])}"
        )
    if dtype.isnative and be.is_aligned(a) and be.is_contiguous(a):
        if writeable and not be.is_writeable(a):
            raise ValueError(f"{op}: {name} is read-only (it is updated in place)")
        return a
    if copy_ok:  # a fresh allocation: native byte order, aligned, C-contiguous
        return be.asarray(a)
    if not dtype.isnative:
        why = f"is big-endian ({dtype.str}); pass it in native byte order"
    elif not be.is_aligned(a):
        why = "is not aligned to its element size (e.g. a view at an odd byte offset)"
    else:
        why = "must be C-contiguous"
    raise ValueError(f"{op}: {name} {why} (it is updated in place, so it cannot be copied)")
