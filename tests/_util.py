"""Shared test helpers: tolerance criteria, finite differences, input makers."""

from __future__ import annotations

import numpy as np
import pytest

FLOATS = [np.float32, np.float64]


def f64(*arrays):
    return tuple(None if a is None else np.asarray(a, dtype=np.float64) for a in arrays)


def assert_matches_reference(got, ref64, ref_lowp=None, *, name="", atol64=1e-10, rtol64=1e-9, slack=2.0):
    """Check a kernel's output against the float64 reference.

    float64: close to 1e-10-ish. float32: the kernel's error against the float64 reference is at most
    ``slack`` x the error of the NumPy reference run in float32 (``ref_lowp``), plus a few ulps of the
    output's scale (so exact-ish references do not make the bound zero).
    """
    if got is None or ref64 is None:
        assert got is None and ref64 is None, f"{name}: one of got/ref is None"
        return
    got = np.asarray(got)
    assert got.shape == np.shape(ref64), f"{name}: shape {got.shape} != {np.shape(ref64)}"
    ref64 = np.asarray(ref64, dtype=np.float64)
    if got.dtype == np.float64:
        np.testing.assert_allclose(got, ref64, rtol=rtol64, atol=atol64, err_msg=name)
        return
    finite = np.isfinite(ref64)
    np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=f"{name}: non-finite pattern differs")
    if not finite.any():
        return
    err = np.abs(got.astype(np.float64) - ref64)[finite].max()
    scale = max(np.abs(ref64[finite]).max(), 1.0)
    bound = 8 * np.finfo(got.dtype).eps * scale
    if ref_lowp is not None:
        ref_err = np.abs(np.asarray(ref_lowp, dtype=np.float64) - ref64)[finite].max()
        bound += slack * ref_err
    assert err <= bound, f"{name}: max error {err:.3g} > bound {bound:.3g}"


def numeric_grad(f, arrays, index, dy, h=1e-6):
    """Central finite difference of sum(f(*arrays) * dy) with respect to arrays[index] (float64)."""
    arrays = [None if a is None else np.array(a, dtype=np.float64) for a in arrays]
    a = arrays[index]
    g = np.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = np.sum(f(*arrays) * dy)
        flat[i] = old - h
        fm = np.sum(f(*arrays) * dy)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return g


def torch_or_skip():
    return pytest.importorskip("torch")


def _np_wide(a, dtype):
    """``a`` (NumPy array, torch tensor, scalar) as a NumPy array of ``dtype``."""
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=dtype)


def assert_close_to_ref(got, other, ref, *, name="", factor=2.0, ulps=8.0):
    """DESIGN.md's error criterion: ``got`` (fastnorm's result) is at most ``factor`` times as far from
    ``ref`` as ``other`` (torch's, or the NumPy reference's, result in the same dtype as ``got``), plus
    ``ulps`` units of ``got``'s dtype at the scale of ``ref`` (so an exact ``other`` does not make the
    bound zero)::

        max|got - ref| <= factor * max|other - ref| + ulps * eps(dtype) * max(1, max|ref|)

    ``ref`` is the same computation in higher precision on the same inputs cast up (float64 for float32
    results; for float64 results, extended precision where the caller has it, or float64 itself, when
    the bound is the slack alone). NaN/Inf must sit where ``ref`` (or, when ``ref`` has none there,
    ``other``) has them. Arrays, torch tensors and scalars are accepted.
    """
    dtype = np.asarray(got).dtype if not hasattr(got, "detach") else np.dtype(str(got.dtype).split(".")[-1])
    if dtype.kind != "f":
        raise TypeError(f"{name}: assert_close_to_ref compares floating results, got {dtype}")
    wide = np.longdouble if dtype == np.float64 else np.float64
    g, o, r = _np_wide(got, wide), _np_wide(other, wide), _np_wide(ref, wide)
    assert g.shape == r.shape == o.shape, f"{name}: shapes {g.shape}, {o.shape}, {r.shape} differ"
    finite = np.isfinite(r)
    np.testing.assert_array_equal(np.isnan(g), np.isnan(r), err_msg=f"{name}: NaN pattern differs from ref")
    np.testing.assert_array_equal(np.isinf(g), np.isinf(r), err_msg=f"{name}: Inf pattern differs from ref")
    np.testing.assert_array_equal(g[~finite], r[~finite], err_msg=f"{name}: non-finite values differ")
    if not finite.any():
        return
    err = float(np.max(np.abs(g[finite] - r[finite])))
    other_err = float(np.nanmax(np.abs(o[finite] - r[finite]))) if np.isfinite(o[finite]).any() else 0.0
    scale = max(1.0, float(np.max(np.abs(r[finite]))))
    bound = factor * other_err + ulps * float(np.finfo(dtype).eps) * scale
    assert err <= bound, (
        f"{name}: error {err:.3g} vs ref > bound {bound:.3g} ({factor} x the other's error {other_err:.3g} "
        f"+ {ulps} ulps of {scale:.3g})"
    )


def unaligned(a):
    """A writeable, C-contiguous copy of ``a`` whose data starts one byte past an aligned address."""
    a = np.asarray(a)
    buf = bytearray(a.nbytes + a.itemsize + 1)
    u = np.frombuffer(buf, a.dtype, count=a.size, offset=1).reshape(a.shape)
    assert not u.flags.aligned and u.flags.c_contiguous and u.flags.writeable
    u[...] = a
    return u


def byteswapped(a):
    """A copy of ``a`` in the non-native byte order (big-endian on x86), same values."""
    a = np.asarray(a)
    return a.astype(a.dtype.newbyteorder("S"))

