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
