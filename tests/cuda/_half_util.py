"""Helpers of the 16-bit CUDA tests: device arrays, the kernel namespace, the DESIGN.md error criterion for
bfloat16/float16 results."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from .._util import assert_close_to_ref

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
HALF = (BF16, F16)


def stat(dt):
    return F32 if np.dtype(dt) in HALF else np.dtype(dt)


def to_dev(cuda, *arrays):
    out = tuple(None if a is None else cuda.to_device(np.array(a, order="C")) for a in arrays)
    return out if len(out) != 1 else out[0]


def at_offset(cuda, a, k: int):
    """A device copy of ``a`` starting ``k`` elements past the start of a fresh (aligned) allocation."""
    a = np.ascontiguousarray(a)
    if k == 0:
        return cuda.to_device(a)
    base = cuda.to_device(np.concatenate([np.zeros(k, a.dtype), a.ravel()]))
    return base[k:].reshape(a.shape)


def host(a):
    return None if a is None else a.copy_to_host()


def backend():
    from fastnorm._dispatch import cuda_backend

    return cuda_backend()


def kernels():
    import fastnorm._kernels.cuda as K

    return K


def empty(cuda, shape, dtype):
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def lowp(a, dt):
    """The float32 (or float64) result of a reference evaluated in the kernel's precision, rounded to the
    data dtype ``dt`` when that is 16-bit (the "other" of the criterion when torch is not used)."""
    return None if a is None else np.asarray(a).astype(dt)


def close(got, other, ref, name=""):
    """DESIGN.md's criterion for any dtype: 16-bit results are compared in float32 with the slack counted
    in units of the 16-bit format (8 of them at the reference's scale)."""
    got = np.asarray(got)
    dt = got.dtype
    assert dt in (BF16, F16, F32, F64), (name, dt)
    ulps = 8.0
    if dt in HALF:
        ulps = 8.0 * float(ml_dtypes.finfo(dt).eps) / float(np.finfo(np.float32).eps)
        got = got.astype(np.float32)
        other = np.asarray(other).astype(np.float32)
    assert_close_to_ref(got, np.asarray(other), np.asarray(ref, np.float64), name=name, ulps=ulps)


def f32(*arrays):
    return tuple(None if a is None else np.asarray(a, np.float32) for a in arrays)


def f64(*arrays):
    return tuple(None if a is None else np.asarray(a, np.float64) for a in arrays)


def data(rng, shape, dt, offset=0.0):
    return (offset + rng.standard_normal(shape)).astype(dt)


def channel_data(rng, shape, c, dtype):
    """x, dy of ``shape`` and weight, bias, running mean, running var of ``c`` channels in ``dtype``."""
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.3 * rng.standard_normal(c)).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    rm = (0.1 * rng.standard_normal(c)).astype(dtype)
    rv = (1 + 0.1 * np.abs(rng.standard_normal(c))).astype(dtype)
    return x, dy, w, b, rm, rv


def param(rng, n, dt, bias=False):
    v = rng.standard_normal(n) if bias else 1 + 0.5 * rng.standard_normal(n)
    return v.astype(dt)


def _same(a):
    return a


def run_stages(lib, parts, dys, w, b, axis, rm=None, rv=None, *, to=_same, back=_same, momentum=0.2, eps=1e-5):
    """The five BatchNorm stages of ``lib`` (fastnorm, or its NumPy references) over the processes' parts:
    stats -> gather -> elemt, and reduce -> sums over the processes (on the host, float64) ->
    backward_elemt. ``to`` moves a host array to the arrays' device, ``back`` a result to the host;
    rm, rv (on the device) are updated in place. Returns (y, mean, invstd, dx, dweight, dbias, reduce
    results per process) on the host, dweight and dbias summed over the processes in float64."""
    W, B = to(w), to(b)
    xs, gs = [to(p) for p in parts], [to(g) for g in dys]
    stats = [lib.batch_norm_stats(p, axis=axis) for p in xs]
    means, m2s = (np.stack([back(s[i]) for s in stats]) for i in (0, 1))
    counts = np.array([s[2] for s in stats])
    mean, invstd = lib.batch_norm_gather_stats(to(means), to(m2s), counts, rm, rv, momentum=momentum, eps=eps)
    ys = [back(lib.batch_norm_elemt(p, mean, invstd, W, B, axis=axis)) for p in xs]
    red = [
        [None if a is None else back(a) for a in lib.batch_norm_backward_reduce(g, p, mean, invstd, W, axis=axis)]
        for g, p in zip(gs, xs)
    ]
    sd = np.asarray(back(mean)).dtype
    s1, s2 = (to(np.sum([f64(r[i])[0] for r in red], axis=0).astype(sd)) for i in (0, 1))
    dxs = [
        back(lib.batch_norm_backward_elemt(g, p, mean, invstd, W, s1, s2, counts, axis=axis)) for g, p in zip(gs, xs)
    ]
    dw = None if w is None else np.sum([f64(r[2])[0] for r in red], axis=0)
    db = np.sum([f64(r[3])[0] for r in red], axis=0)
    return np.concatenate(ys), back(mean), back(invstd), np.concatenate(dxs), dw, db, red


def cosine_reference(x, w, dy, eps, y_saved=None):
    """CosineLinear in the arrays' precision: (y, x_norm, w_norm, gs, cx, cw, dx, dw), the norms clamped
    at eps and a norm under eps giving no correction; the backward from ``y_saved`` when given (the y a
    16-bit forward stored), else from y."""
    xn, wn = np.linalg.norm(x, axis=1), np.linalg.norm(w, axis=1)
    nx, nw = np.maximum(xn, eps), np.maximum(wn, eps)
    y = x @ w.T / nx[:, None] / nw[None, :]
    if y_saved is not None:
        y = y_saved.astype(x.dtype)
    gs = dy / nx[:, None] / nw[None, :]
    cx = np.where(xn >= eps, (dy * y).sum(axis=1) / nx**2, 0).astype(x.dtype)
    cw = np.where(wn >= eps, (dy * y).sum(axis=0) / nw**2, 0).astype(x.dtype)
    return y, xn, wn, gs, cx, cw, gs @ w - cx[:, None] * x, gs.T @ x - cw[:, None] * w


def row_norm_ref(x, w, b, rms, eps=1e-5):
    """The reference LayerNorm (y, mean, rstd) or RMSNorm (y, None, rstd) forward in the arrays' dtype."""
    from fastnorm import reference as R

    if rms:
        y, rstd = R.rms_norm_forward(x, w, eps=eps)
        return y, None, rstd
    return R.layer_norm_forward(x, w, b, eps=eps)


def row_norm_bwd_ref(dy, x, mean, rstd, w, b, rms):
    """The reference LayerNorm (dx, dw, db) or RMSNorm (dx, dw, None) backward in the arrays' dtype."""
    from fastnorm import reference as R

    if rms:
        dx, dw = R.rms_norm_backward(dy, x, rstd, w)
        return dx, dw, None
    return R.layer_norm_backward(dy, x, mean, rstd, w, b)


def close_to_cpu(got, want):
    """Device and CPU run the same float32 operations in the same order; they may differ only where a square
    root or an FMA contraction rounds differently (an ulp of one operand per step). So a float32 state is
    within 8 float32 ulps at the array's scale (no per-element rtol: a state can be a cancellation's small
    result), and a 16-bit parameter, that float32 value rounded once, at most one unit (bit patterns of
    same-sign values) and mostly equal."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    if want.dtype.itemsize == 2:
        assert (np.signbit(got.astype(np.float32)) == np.signbit(want.astype(np.float32))).all()
        diff = np.abs(got.view(np.uint16).astype(np.int64) - want.view(np.uint16).astype(np.int64))
        assert diff.max(initial=0) <= 1
        assert (diff == 0).sum() >= 0.9 * diff.size
    elif want.size:
        bound = 8 * np.finfo(np.float32).eps * np.max(np.abs(want))
        assert np.max(np.abs(got.astype(np.float64) - want)) <= bound
