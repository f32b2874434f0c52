"""The CPU norm backward's reused scratch (dweight/dbias partial rows): per Python thread, and never stale."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastnorm
import fastnorm.reference as R
from fastnorm.norms import _common

from ._util import assert_close_to_ref

SHAPE = (512, 96)


def _case(seed: int, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(SHAPE).astype(dtype)
    dy = rng.standard_normal(SHAPE).astype(dtype)
    w = rng.standard_normal(SHAPE[1]).astype(dtype)
    b = rng.standard_normal(SHAPE[1]).astype(dtype)
    _, mean, rstd = fastnorm.layer_norm_forward(x, w, b)
    return dy, x, mean, rstd, w, b


def test_scratch_is_reused_within_a_thread_and_overwritten():
    _common._SCRATCH.__dict__.clear()
    first = fastnorm.layer_norm_backward(*_case(0))
    arrays = dict(_common._SCRATCH.arrays)
    assert len(arrays) == 4  # dweight and dbias: a float64 partial and an accumulator each
    for a in arrays.values():
        a.fill(np.nan)  # a kernel that read scratch before writing it would now give NaN
    again = fastnorm.layer_norm_backward(*_case(0))
    assert all(_common._SCRATCH.arrays[k] is a for k, a in arrays.items())
    for got, want in zip(again, first, strict=True):
        np.testing.assert_array_equal(got, want)


def test_scratch_cache_is_bounded():
    _common._SCRATCH.__dict__.clear()
    for n in range(8, 8 + 3 * _common._SCRATCH_KEEP):
        x = np.ones((4, n), np.float32)
        fastnorm.rms_norm_backward(x, x, np.ones(4, np.float32), np.ones(n, np.float32))
        assert len(_common._SCRATCH.arrays) <= _common._SCRATCH_KEEP


@pytest.mark.parametrize("threads", [1, 2])
def test_concurrent_python_threads_get_their_own_scratch(threads):
    """Kernels release the GIL: Python threads running the same shape at once must not share scratch."""
    cases = [_case(seed) for seed in range(4)]
    serial = [fastnorm.layer_norm_backward(*c) for c in cases]
    results: dict = {}
    barrier = threading.Barrier(len(cases))

    def run(i: int) -> None:
        barrier.wait()
        for _ in range(20):
            results[i] = fastnorm.layer_norm_backward(*cases[i])

    old = fastnorm.get_num_threads()
    fastnorm.set_num_threads(threads)
    try:
        workers = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        fastnorm.set_num_threads(old)
    for i, want in enumerate(serial):
        for got, ref in zip(results[i], want, strict=True):
            np.testing.assert_array_equal(got, ref)


def test_large_scratch_is_not_kept_per_thread():
    """Scratch of 1 MiB and more comes from the backend allocator (the output pool), not the per-thread cache."""
    _common._SCRATCH.__dict__.clear()
    rng = np.random.default_rng(1)
    m, n = 64, 1 << 15  # 64 chunk rows x 32768 float64 = 16 MiB of partial rows
    x, dy = rng.standard_normal((2, m, n)).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    _, rstd = fastnorm.rms_norm_forward(x, w)
    dw = fastnorm.rms_norm_backward(dy, x, rstd, w)[1]
    assert getattr(_common._SCRATCH, "arrays", {}) == {}
    ref32 = R.rms_norm_backward(dy, x, rstd, w)[1]
    ref64 = R.rms_norm_backward(*(a.astype(np.float64) for a in (dy, x, rstd, w)))[1]
    assert_close_to_ref(dw, ref32, ref64, name="dweight")


def _kernel_case(m: int, n: int, dtype=np.float32):
    """Direct arguments of the CPU kernel's layer_norm_backward (dy, x, mean, rstd, weight, dx, dweight, dbias)."""
    rng = np.random.default_rng(m * 7919 + n)
    x = rng.standard_normal((m, n)).astype(dtype)
    dy = rng.standard_normal((m, n)).astype(dtype)
    w = rng.standard_normal(n).astype(dtype)
    _, mean, rstd = fastnorm.layer_norm_forward(x, w, w)
    return dy, x, mean, rstd, w, np.empty_like(x), np.empty(n, dtype), np.empty(n, dtype)


@pytest.mark.parametrize(
    ("bad", "rows_delta", "cols_delta"),
    [("dw_part", 1, 0), ("dw_acc", -1, 0), ("db_part", 0, 1), ("db_acc", 0, -1)],
)
def test_kernel_refuses_wrong_shaped_scratch(bad, rows_delta, cols_delta):
    """The kernel writes scratch rows without bounds checks: a caller's scratch of another shape is refused (it was
    silently replaced, which hid a wrongly sized plan for sessions), naming the argument and the expected shape."""
    from fastnorm._kernels.cpu import _layer_norm as K

    m, n = 300, 40
    k = K.bwd_chunks(m, n)
    dy, x, mean, rstd, w, dx, dw, db = _kernel_case(m, n)
    scratch = {"dw_part": np.float64, "dw_acc": np.float32, "db_part": np.float64, "db_acc": np.float32}
    arrays = {name: np.empty((k, n), dt) for name, dt in scratch.items()}
    arrays[bad] = np.empty((k + rows_delta, n + cols_delta), scratch[bad])
    dx[...] = 7.0
    with pytest.raises(ValueError, match=rf"{bad}: scratch of shape .* = \({k}, {n}\) expected"):
        K.layer_norm_backward(dy, x, mean, rstd, w, dx, dw, db, *arrays.values(), 1)
    assert (dx == 7.0).all()  # refused before the kernel ran


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m", [17, 33, 65])
def test_empty_chunks_and_poisoned_scratch(m, threads):
    """Shapes whose last chunks have no rows (chunk_start's step rounds up): their partial rows must be written
    anyway (the kernel writes a chunk's partial row on its first fold), whatever the scratch held before."""
    from fastnorm._kernels.cpu import _layer_norm as K

    n = 24
    dy, x, mean, rstd, w, dx, dw, db = _kernel_case(m, n)
    k = K.bwd_chunks(m, n)
    assert (k - 1) * ((m + k - 1) // k) >= m  # the last chunk is empty
    scratch = [np.full((k, n), np.nan, dt) for dt in (np.float64, np.float32, np.float64, np.float32)]
    K.layer_norm_backward(dy, x, mean, rstd, w, dx, dw, db, *scratch, threads)
    args64 = [a.astype(np.float64) for a in (dy, x, mean, rstd, w)]
    ref32 = R.layer_norm_backward(dy, x, mean, rstd, w, w)
    ref64 = R.layer_norm_backward(*args64, args64[-1])
    assert_close_to_ref(dw, ref32[1], ref64[1], name="dweight")
    assert_close_to_ref(db, ref32[2], ref64[2], name="dbias")
