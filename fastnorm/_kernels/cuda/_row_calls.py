"""LayerNorm / RMSNorm calls on CUDA arrays in their usual form: checked on the adapters, launched by plan.

The public row ops (``fastnorm.norms.layer_norm.rows_forward`` / ``rows_backward``) hand a CUDA call here
first (also the fused residual-add ones). A call in the usual form (torch, CuPy or Numba arrays,
C-contiguous, weight and bias in the statistic dtype, a float ``eps``, an int ``normalized_ndim``, ``out=``
buffers of the declared shapes and dtypes that overlap nothing, no 16-bit gradient to round back, rows of
more than one element in the backward) is checked here in integer and tuple comparisons on the adapters'
fields, its outputs allocated from the caller's allocator, and its launch plans run with the adapters'
pointers: no per-argument validation calls, no reshaped views, no second adaptation in the launcher.
Anything else, every error included, answers None and the public layer takes its general path, which gives
the errors (so their messages and order stay that path's).

The outputs' declared layout (``OpSpec.layout_for``) is read once per call signature (the op, each array's
kind, shape and dtype, ``normalized_ndim``, which outputs were given) and kept.
"""

from __future__ import annotations

from itertools import repeat
from math import prod
from operator import is_

from . import layer_norm as L
from ._arrays import _KINDS as _KIND_OF
from ._arrays import adapt
from ._common import ACC, BF16, F16, F32, F64
from ._launch import caller_stream, input_streams
from .fill import convert_plan

_FLOATS = frozenset((F16, F32, F64, BF16))
_KINDS = frozenset(("torch", "cupy", "numba"))  # whose arrays are always writeable, read by the adapters
_layouts: dict = {}  # call signature -> the declared output specs
_STAT = {d: ACC[d] for d in _FLOATS}
_ARRAYS: dict = {}  # op name -> its declared array arguments, in order
ENABLED = True  # (tests compare with the general path by turning this off)


def _ok(d, shape, dtype) -> bool:
    """``d`` (an adapter) is a contiguous array of a usual kind, of exactly ``shape`` and ``dtype``."""
    return d.strides is None and d.kind in _KINDS and d.shape == shape and d.dtype == dtype


def _layout(be, spec, named: dict, k: int, X):
    """(the declared output specs, whether every gradient is in the statistic dtype) of a call whose inputs
    passed ``_ok`` (so their shapes and dtypes follow from x's and from which optional ones are given)."""
    key = (spec.name, k, X.shape, X.dtype, *map(is_, named.values(), repeat(None)))
    hit = _layouts.get(key)
    if hit is None:
        if len(_layouts) >= 1024:
            _layouts.clear()
        specs = tuple(spec.layout_for(be, named, normalized_ndim=k))
        sd = _STAT[X.dtype]
        hit = _layouts[key] = (specs, all(s is None or s[2] == sd for s in specs[1:]))
    return hit


def _outputs(be, specs, out, inputs, like):
    """(outputs, their addresses): ``out=`` buffers that match their specs and overlap nothing (None
    otherwise: the general path says why), the others allocated like the general path (the allocator of
    ``like``'s library)."""
    if out is None:
        be._tls.like = like
        res = [None if s is None else be.empty(s[1], s[2]) for s in specs]
        return res, [None if a is None else _ptr(a) for a in res]
    if len(out) != len(specs):
        return None
    res, ptrs, spans = [], [], []
    for s, buf in zip(specs, out):
        if buf is None:
            res.append(None)
            ptrs.append(None)
            continue
        if s is None:
            return None
        d = adapt(buf)
        if not _ok(d, s[1], s[2]):
            return None
        lo = d.ptr
        hi = lo + prod(d.shape) * d.dtype.itemsize
        for a, b in spans:
            if lo < b and a < hi:
                return None  # out buffers that overlap (zero-size ones never get here: M * N > 0)
        spans.append((lo, hi))
        res.append(buf)
        ptrs.append(lo)
    for a in inputs:
        if a is not None:
            lo = a.ptr
            hi = lo + prod(a.shape) * a.dtype.itemsize
            for a2, b2 in spans:
                if lo < b2 and a2 < hi:
                    return None  # an out buffer over an input
    be._tls.like = like
    for i, s in enumerate(specs):
        if s is not None and res[i] is None:
            res[i] = be.empty(s[1], s[2])
            ptrs[i] = _ptr(res[i])
    return res, ptrs


def _ptr(a) -> int:
    """The address of a new output (read directly from torch tensors and Numba arrays)."""
    k = _KIND_OF.get(type(a))
    if k == "torch":
        return a.data_ptr()
    if k == "numba":
        g = a.gpu_data
        return 0 if g is None else int(g.device_pointer)
    return adapt(a).ptr


def _rows(x, k, out):
    """(x's adapter, normalized shape, M, N) when x is a contiguous float array of a usual kind with
    M * N > 0 rows of its trailing ``k`` dims (``k`` an int), and ``out`` is None or a tuple/list; else None."""
    if not ENABLED or out is not None and not isinstance(out, (tuple, list)) or type(k) is not int:
        return None
    X = adapt(x)
    shape = X.shape
    if X.strides is not None or X.kind not in _KINDS or X.dtype not in _FLOATS or not 1 <= k <= len(shape):
        return None
    norm = shape[len(shape) - k :]
    n = prod(norm)
    m = prod(shape) // n if n else 0
    if m * n == 0:
        return None
    return X, norm, m, n


# forward op -> (RMSNorm, fused residual add)
_FWD = {
    "layer_norm_forward": (False, False),
    "rms_norm_forward": (True, False),
    "add_layer_norm_forward": (False, True),
    "add_rms_norm_forward": (True, True),
}


def forward(be, spec, arrays: dict, eps, k, out):
    """The result of a LayerNorm / RMSNorm forward, plain or with the fused residual add, in the usual form
    (see the module docstring; the residual: x's shape and dtype), or None."""
    form = _FWD.get(spec.name)
    if type(eps) is not float or form is None:
        return None
    r = _rows(arrays["x"], k, out)
    if r is None:
        return None
    rms, add = form
    X, norm, m, n = r
    sd = _STAT[X.dtype]
    named = {"x": X}
    R = None
    if add:
        a = arrays["residual"]
        R = None if a is None else adapt(a)
        if R is None or not _ok(R, X.shape, X.dtype):
            return None
        named["residual"] = R
    for name in ("weight", "bias"):
        if name in arrays:
            a = arrays[name]
            d = None if a is None else adapt(a)
            # in the statistic dtype, or in x's 16-bit dtype (converted below, as the general path does)
            if d is not None and not _ok(d, norm, sd) and (sd == X.dtype or not _ok(d, norm, X.dtype)):
                return None
            named[name] = d
    specs = _layout(be, spec, named, k, X)[0]
    W, B = named.get("weight"), named.get("bias")
    # (outputs come from the library of the input the general path adapts last)
    like = B if B is not None else W if W is not None else R if R is not None else X
    got = _outputs(be, specs, out, (X, R, W, B), like)
    if got is None:
        return None
    res, ptrs = got
    keep = []  # float32 copies of 16-bit weight/bias (alive until their kernels are queued)
    W, B = _stat_param(be, W, sd, X, keep), _stat_param(be, B, sd, X, keep)
    # outputs: y[, h][, mean], rstd
    mean = 0 if rms else ptrs[1 + add]
    L._launch_plan_fwd(X, W, B, ptrs[0], mean, ptrs[-1], m, n, eps, rms, R, ptrs[1] if add else 0)
    be.done()
    return spec.result(*res)


def _stat_param(be, D, sd, X, keep: list):
    """``D`` (a weight/bias adapter or None) in the statistic dtype: itself, or the adapter of a new ``sd``
    copy (allocated like the general path's ``be.astype``: from D's library; converted by ``fill.convert``'s
    kernel, launched by plan on the stream of X's library before the kernel that reads it)."""
    if D is None or D.dtype == sd:
        return D
    be._tls.like = D
    t = be.empty(D.shape, sd)
    keep.append(t)
    T = adapt(t)
    stream = caller_stream(X.kind, X.device)
    input_streams((D,), X.kind, stream)
    convert_plan(D.dtype, sd, prod(D.shape)).launch(stream, (D.ptr, T.ptr))
    return T


# backward op -> (RMSNorm, fused residual add)
_BWD = {
    "layer_norm_backward": (False, False),
    "rms_norm_backward": (True, False),
    "add_layer_norm_backward": (False, True),
    "add_rms_norm_backward": (True, True),
}


def backward(be, spec, arrays: dict, k, out):
    """The result of a LayerNorm / RMSNorm backward, plain or of the fused residual add (its ``h`` in x's
    place, ``dh`` of h's shape and dtype or None), in the usual form (see the module docstring), or None."""
    form = _BWD.get(spec.name)
    if form is None:
        return None
    rms, add = form
    primary = spec.primary  # x, or the fused add's h
    r = _rows(arrays[primary], k, out)
    if r is None or r[3] == 1:  # (rows of one element: the general path's exact dx)
        return None
    X, norm, m, n = r
    dt = X.dtype
    sd = _STAT[dt]
    lead = X.shape[: len(X.shape) - k]
    named = {}
    for name in _ARRAYS.get(spec.name) or _ARRAYS.setdefault(spec.name, spec.arrays):
        a = arrays.get(name)
        if name == primary:
            named[name] = X
            continue
        d = None if a is None else adapt(a)
        if name == "dy":
            ok = d is not None and _ok(d, X.shape, dt)
        elif name == "dh":
            ok = d is None or _ok(d, X.shape, dt)
        elif name in ("mean", "rstd"):
            ok = d is not None and _ok(d, lead, sd)
        else:  # weight, bias
            ok = d is None or _ok(d, norm, sd)
        if not ok:
            return None
        named[name] = d
    W, B = named.get("weight"), named.get("bias")
    specs, stat_grads = _layout(be, spec, named, k, X)
    if not stat_grads:
        return None  # 16-bit gradients: the general path rounds the float32 sums back
    like = B if B is not None else W if W is not None else named["rstd"]
    got = _outputs(be, specs, out, tuple(named.values()), like)
    if got is None:
        return None
    res, ptrs = got
    if W is not None:
        be._tls.like = W  # (the general path's scratch follows its weight conversion: the weight's library)
    nt = be.threads(m * n)
    parts = [None if g is None else be.empty((nt, n), F64) for g in res[1:]]
    MU = named.get("mean")
    L._launch_plan_bwd(
        named["dy"],
        X,
        MU,
        named["rstd"],
        W,
        ptrs[0],
        ptrs[1:],
        [None if p is None else (_ptr(p), nt) for p in parts],
        [None if g is None else sd for g in res[1:]],
        m,
        n,
        rms,
        add,
        named.get("dh"),
    )
    be.done()
    return spec.result(*res)
