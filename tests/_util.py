"""Shared test helpers: tolerance criteria, finite differences, input makers."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

FLOATS = [np.float32, np.float64]


def f64(*arrays):
    return tuple(None if a is None else np.asarray(a, dtype=np.float64) for a in arrays)


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


def torch_and_wider_ref(run_torch, run_ref, dtype, arrays):
    """(torch's results in ``dtype``, a wider reference) for DESIGN.md's criterion: torch in float64 for
    float32 data; for float64 data the NumPy reference ``run_ref`` on ``arrays`` in extended precision."""
    other = run_torch(dtype)
    if dtype == np.float32:
        return other, run_torch(np.float64)
    return other, run_ref(*(None if a is None else np.asarray(a).astype(np.longdouble) for a in arrays))


def assert_thread_count_invariant(run, counts=(1, 2)):
    """``run()`` (a sequence of arrays; None entries allowed) under each of ``counts`` fastnorm threads gives
    bitwise the same results; the thread setting is restored afterwards."""
    import fastnorm

    old = fastnorm.get_num_threads()
    try:
        runs = []
        for n in counts:
            fastnorm.set_num_threads(n)
            runs.append(tuple(run()))
    finally:
        fastnorm.set_num_threads(old)
    for n, outs in zip(counts[1:], runs[1:]):
        for i, (a, b) in enumerate(zip(runs[0], outs, strict=True)):
            assert (a is None) == (b is None), i
            if a is not None:
                a, b = np.asarray(a), np.asarray(b)
                assert (a.dtype, a.shape) == (b.dtype, b.shape), i
                bits_a, bits_b = (np.ascontiguousarray(c).reshape(-1).view(np.uint8) for c in (a, b))
                np.testing.assert_array_equal(bits_a, bits_b, err_msg=f"output {i}, {n} threads")


def capture_backend():
    """A torch.compile backend (AOT autograd, no Inductor) that records the forward and backward graphs'
    code: (backend, list of code strings)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    graphs = []

    def compiler(gm, example_inputs):
        graphs.append(gm.code)
        return make_boxed_func(gm.forward)

    return aot_autograd(fw_compiler=compiler, bw_compiler=compiler), graphs


def _np_wide(a, dtype):
    """``a`` (NumPy array, torch tensor, scalar) as a NumPy array of ``dtype``."""
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=dtype)


def _dtype_of(a) -> np.dtype:
    if hasattr(a, "detach"):  # a torch tensor: bfloat16 as ml_dtypes' bfloat16
        name = str(a.dtype).split(".")[-1]
        return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
    return np.asarray(a).dtype


def _max_error_bound(other_err, confidence=0.99):
    """An upper bound, at ``confidence``, on the largest of n errors drawn at the scale of ``other_err`` (the
    comparator's n per-element errors); see ``sample_slack`` in :func:`assert_close_to_ref`."""
    from scipy import stats

    n = other_err.size
    rms = float(np.sqrt(np.mean(np.square(other_err, dtype=np.float64))))
    sigma_up = rms * np.sqrt(n / stats.chi2.ppf(1 - confidence, n))
    z = stats.norm.ppf((1 + confidence ** (1 / n)) / 2)
    return float(sigma_up * z)


def assert_close_to_ref(
    got, other, ref, *, name="", factor=2.0, ulps=8.0, rtol64=1e-9, atol64=1e-10, sample_slack=False
):
    """DESIGN.md's error criterion, the one comparison of the suite: ``got`` (fastnorm's result) is at most
    ``factor`` times as far from ``ref`` as ``other`` is, plus ``ulps`` units of ``got``'s dtype at the scale
    of ``ref`` (so an exact ``other`` does not make the bound zero)::

        max|got - ref| <= factor * max|other - ref| + ulps * eps(dtype) * max(1, max|ref|)

    ``other`` is the comparator in ``got``'s dtype: torch's result, or the NumPy reference run in that dtype
    (or, for 16-bit results where torch lacks the op, the float32 computation rounded to 16 bits), or
    ``None`` where there is none: then the bound is the ulps term alone, except for a float64 ``got`` with
    no comparator, which is held elementwise to ``rtol64``/``atol64`` of its float64 reference (the
    reference and the kernel sum in different orders, and nothing wider measures what that costs).
    ``ref`` is the same computation in higher precision on the same inputs cast up (float64 for 16/32-bit
    results; extended precision, or float64 itself, for float64 results). ``got`` and ``ref`` may both be
    ``None`` (an absent output). NaN must sit where ``ref`` has NaN, and infinities equal ``ref``'s.
    Arrays, torch tensors and scalars are accepted; float16, bfloat16, float32 and float64 results.

    ``sample_slack``: for outputs of few elements (a gradient per channel), the maximum over n errors is a
    noisy estimate of an implementation's error scale: over 6 channels the ratio of the maxima of two
    equally accurate implementations swings from 0.5 to 2.2 between seeds, so "at most 2x the other's
    maximum" fails by chance. With ``sample_slack`` the other's maximum error M is replaced by max(M, U),
    where U bounds, at 99% confidence, the largest of n errors at the other's error scale, estimated from
    the whole sample rather than from its largest element. Model: the other's errors e_1..e_n are
    independent N(0, s^2). Their root mean square r gives the one-sided 99% upper confidence bound
    s_u = r * sqrt(n / chi2_n(0.01)) (n r^2 / s^2 is chi-squared with n degrees of freedom), and the largest
    of n draws of |N(0, s_u^2)| stays below z * s_u with probability 0.99, z = Phi^-1((1 + 0.99^(1/n)) / 2).
    Simulated under the model, a result whose errors are exactly ``factor`` times the other's (the limit the
    criterion allows) fails the bound about once in a thousand (1e-3 at n = 6, 5e-4 at n = 24, 2e-3 at
    n = 360); a result 6x worse than the other still fails 15% of the time at n = 6, 84% at n = 24, always
    at n = 360 (few elements cannot tell more). U grows like sqrt(2 ln n), so for many elements the bound is
    about 1.3x the plain one.
    """
    if got is None or ref is None:
        assert got is None, f"{name}: ref is None, got is not"
        assert ref is None, f"{name}: got is None, ref is not"
        return
    dtype = _dtype_of(got)
    if dtype.kind not in "fV" or (dtype.kind == "V" and dtype != np.dtype(ml_dtypes.bfloat16)):
        raise TypeError(f"{name}: assert_close_to_ref compares floating results, got {dtype}")
    wide = np.longdouble if dtype == np.float64 else np.float64
    g, r = _np_wide(got, wide), _np_wide(ref, wide)
    o = None if other is None else _np_wide(other, wide)
    assert g.shape == r.shape, f"{name}: shape {g.shape} != ref's {r.shape}"
    assert o is None or o.shape == r.shape, f"{name}: other's shape {o.shape} != ref's {r.shape}"
    finite = np.isfinite(r)
    np.testing.assert_array_equal(np.isnan(g), np.isnan(r), err_msg=f"{name}: NaN pattern differs from ref")
    np.testing.assert_array_equal(np.isinf(g), np.isinf(r), err_msg=f"{name}: Inf pattern differs from ref")
    np.testing.assert_array_equal(g[~finite], r[~finite], err_msg=f"{name}: non-finite values differ")
    if not finite.any():
        return
    if o is None and dtype == np.float64:
        np.testing.assert_allclose(g[finite], r[finite], rtol=rtol64, atol=atol64, err_msg=name)
        return
    err = float(np.max(np.abs(g[finite] - r[finite])))
    other_err = 0.0
    if o is not None and np.isfinite(o[finite]).any():
        errs = np.abs(o[finite] - r[finite]).astype(np.float64)
        other_err = float(np.nanmax(errs))
        if sample_slack:
            other_err = max(other_err, _max_error_bound(errs[np.isfinite(errs)]))
    scale = max(1.0, float(np.max(np.abs(r[finite]))))
    bound = factor * other_err + ulps * float(ml_dtypes.finfo(dtype).eps) * scale
    assert err <= bound, (
        f"{name}: error {err:.3g} vs ref > bound {bound:.3g} ({factor} x the other's error {other_err:.3g} "
        f"+ {ulps} ulps of {scale:.3g})"
    )


def assert_matches_reference(got, ref64, ref_lowp=None, *, name="", slack=2.0, **kw):
    """Old spelling of :func:`assert_close_to_ref` (arguments: got, float64 reference, same-dtype reference),
    kept so that files not yet moved to the new name keep working; a float64 ``got`` is held to its float64
    reference elementwise, as before. New tests call ``assert_close_to_ref``."""
    if got is not None and _dtype_of(got) == np.float64:
        ref_lowp = None
    assert_close_to_ref(got, ref_lowp, ref64, name=name, factor=slack, **kw)


def unaligned(a):
    """A writeable, C-contiguous copy of ``a`` whose data starts one byte past an aligned address."""
    a = np.asarray(a)
    buf = bytearray(a.nbytes + a.itemsize + 1)
    u = np.frombuffer(buf, a.dtype, count=a.size, offset=1).reshape(a.shape)
    assert not u.flags.aligned
    assert u.flags.c_contiguous
    assert u.flags.writeable
    u[...] = a
    return u


def byteswapped(a):
    """A copy of ``a`` in the non-native byte order (big-endian on x86), same values."""
    a = np.asarray(a)
    return a.astype(a.dtype.newbyteorder("S"))
