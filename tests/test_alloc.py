"""The pool of large CPU outputs (fastnorm._kernels.cpu._alloc, C in fastnorm_pool.h).

Every test runs on an emptied pool with a known limit and checks the counters by difference, so the blocks
other tests leave alive do not matter. A block's identity is its data pointer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastnorm
from fastnorm._backend import CPU
from fastnorm._kernels.cpu import _alloc

from .test_fork import _run as run_after_parent  # a fresh interpreter after the fork tests' PARENT set-up

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastnorm.__file__)))
MIB = 1 << 20
N2 = 2 * MIB // 4  # float32 elements of a 2 MiB array (its own size class)
_core = getattr(np, "_core", None) or np.core


def handler(a) -> str:
    return _core.multiarray.get_handler_name(a)


def ptr(a) -> int:
    return a.__array_interface__["data"][0]


@pytest.fixture(autouse=True)
def pool():
    old = _alloc.set_limit(64 * MIB)
    _alloc.release()
    yield _alloc
    _alloc.set_limit(old)


def delta(before: dict, key: str) -> int:
    return _alloc.stats()[key] - before[key]


def test_large_arrays_come_from_the_pool_small_ones_do_not():
    s0 = _alloc.stats()
    a = _alloc.empty((N2,), np.float32)
    z = _alloc.zeros([2, N2 // 2], np.dtype(np.float32))
    small = _alloc.empty((MIB // 4 - 1,), np.float32)
    assert handler(a) == handler(z) == _alloc.HANDLER_NAME
    assert handler(small) == handler(np.empty(3)) != _alloc.HANDLER_NAME
    assert a.shape == (N2,)
    assert z.shape == (2, N2 // 2)
    assert a.dtype == z.dtype == np.float32
    assert a.flags.c_contiguous
    assert a.flags.owndata
    assert a.base is None
    assert not z.any()
    assert ptr(a) % 64 == 0
    assert ptr(z) % 64 == 0
    assert delta(s0, "live_blocks") == 2
    assert delta(s0, "live_bytes") == 2 * 2 * MIB
    del a, z
    assert delta(s0, "live_blocks") == 0
    assert _alloc.stats()["cached_blocks"] == 2


def test_bad_shapes_and_dtypes_raise_numpy_s_errors():
    for shape, exc in [((-1,), ValueError), ((2.0,), TypeError), ((1 << 62, 1 << 62), ValueError)]:
        with pytest.raises(exc):
            _alloc.empty(shape, np.float32)
    with pytest.raises(TypeError):
        _alloc.empty((4,), "not a dtype")


def test_a_freed_block_is_reused_by_the_same_size_class_only():
    s0 = _alloc.stats()
    a = _alloc.empty((N2,), np.float32)
    p = ptr(a)
    del a
    b = _alloc.empty((N2 - 1024,), np.float32)  # 2 MiB - 4 KiB: the same class (steps of 128 KiB here)
    assert ptr(b) == p
    assert delta(s0, "hits") == 1
    assert delta(s0, "misses") == 1
    del b
    c = _alloc.empty((3 * N2 // 2,), np.float32)  # 3 MiB: another class, a new block
    assert ptr(c) != p
    assert delta(s0, "misses") == 2
    assert _alloc.stats()["cached_blocks"] == 1
    d = _alloc.empty((2 * MIB,), np.uint8)  # 2 MiB again, another dtype: the cached block
    assert ptr(d) == p
    assert delta(s0, "hits") == 2


def test_a_block_is_never_given_to_two_live_arrays():
    warm = [_alloc.empty((N2,), np.float32) for _ in range(4)]
    del warm
    arrays = [_alloc.empty((N2,), np.float32) for _ in range(8)]
    assert len({ptr(a) for a in arrays}) == 8
    for i, a in enumerate(arrays):
        a.fill(i)
    for i, a in enumerate(arrays):
        assert (a == i).all()


def test_random_allocs_and_frees_keep_live_blocks_disjoint_and_intact():
    """A random sequence against a model: live arrays never overlap, keep their contents, and the counters
    match; the cache stays within its limit."""
    _alloc.set_limit(12 * MIB)
    rng = np.random.default_rng(7)
    s0 = _alloc.stats()
    live: dict[int, np.ndarray] = {}
    for step in range(300):
        if live and rng.random() < 0.45:
            del live[int(rng.choice(list(live)))]
        else:
            make = _alloc.zeros if step % 3 == 0 else _alloc.empty
            a = make((int(rng.integers(MIB // 8, 6 * MIB // 8)),), np.int64)
            if step % 3 == 0:
                assert not a.any()
            a.fill(step)
            live[step] = a
        spans = sorted((ptr(a), ptr(a) + a.nbytes) for a in live.values())
        assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))
        assert _alloc.stats()["cached_bytes"] <= 12 * MIB
    for tag, a in live.items():
        assert (a == tag).all()
    assert delta(s0, "live_blocks") == len(live)
    a = None
    live.clear()
    assert delta(s0, "live_blocks") == 0
    assert delta(s0, "live_bytes") == 0


def test_limit_evicts_the_least_recently_freed_blocks():
    _alloc.set_limit(3 * 2 * MIB)
    s0 = _alloc.stats()
    arrays = [_alloc.empty((N2,), np.float32) for _ in range(5)]
    ptrs = [ptr(a) for a in arrays]
    for i in range(5):
        arrays[i] = None  # freed in order 0..4
    s = _alloc.stats()
    assert s["cached_blocks"] == 3
    assert s["cached_bytes"] == 3 * 2 * MIB <= s["limit"]
    assert delta(s0, "evictions") == 2
    again = [_alloc.empty((N2,), np.float32) for _ in range(3)]
    assert {ptr(a) for a in again} == set(ptrs[2:])
    big = _alloc.empty((4 * N2,), np.float32)  # 8 MiB: over the limit, never cached
    del big
    assert _alloc.stats()["cached_blocks"] == 0
    # lowering the limit evicts at once
    del again
    assert _alloc.stats()["cached_blocks"] == 3
    _alloc.set_limit(2 * MIB)
    assert _alloc.stats()["cached_blocks"] == 1
    assert _alloc.stats()["cached_bytes"] == 2 * MIB


def test_zeros_are_zero_also_from_a_reused_block():
    a = _alloc.empty((N2,), np.float32)
    a.fill(7.0)
    p = ptr(a)
    del a
    z = _alloc.zeros((N2,), np.float32)
    assert ptr(z) == p
    assert not z.any()
    _alloc.release()
    fresh = _alloc.zeros((3, N2), np.float64)
    assert handler(fresh) == _alloc.HANDLER_NAME
    assert not fresh.any()


def test_resize_keeps_the_data_and_the_pool():
    s0 = _alloc.stats()
    a = _alloc.empty((N2,), np.float32)
    a[:] = np.arange(N2, dtype=np.float32)
    p, n = ptr(a), N2 - 100
    a.resize((n,), refcheck=False)  # the same size class: in place
    assert ptr(a) == p
    a.resize((3 * N2,), refcheck=False)  # another class: moved
    assert ptr(a) != p
    assert handler(a) == _alloc.HANDLER_NAME
    assert np.array_equal(a[:n], np.arange(n, dtype=np.float32))
    a.resize((1000,), refcheck=False)  # small: moved out of the classes, not cached when freed
    assert np.array_equal(a, np.arange(1000, dtype=np.float32))
    assert delta(s0, "live_blocks") == 1
    assert delta(s0, "live_bytes") == 4000
    del a
    assert delta(s0, "live_blocks") == 0
    assert delta(s0, "live_bytes") == 0


def test_views_keep_their_block_out_of_the_cache():
    a = _alloc.empty((N2,), np.float32)
    v = a[1:].reshape(-1)
    del a
    assert _alloc.stats()["cached_blocks"] == 0
    v[:] = 1.0
    del v
    assert _alloc.stats()["cached_blocks"] == 1


def test_arrays_outliving_a_disabled_pool_are_freed_to_the_system():
    s0 = _alloc.stats()
    a = _alloc.empty((N2,), np.float32)
    _alloc.set_limit(0)
    b = _alloc.empty((N2,), np.float32)
    assert handler(b) != _alloc.HANDLER_NAME
    del a, b
    s = _alloc.stats()
    assert s["cached_blocks"] == 0
    assert delta(s0, "live_blocks") == 0
    assert delta(s0, "live_bytes") == 0


def test_no_leak_and_release_empties_the_cache():
    s0 = _alloc.stats()
    rng = np.random.default_rng(0)
    for _ in range(50):
        keep = [_alloc.empty((int(rng.integers(MIB // 4, 6 * MIB // 4)),), np.float32) for _ in range(3)]
        del keep
    s = _alloc.stats()
    assert delta(s0, "live_blocks") == 0
    assert delta(s0, "live_bytes") == 0
    assert 0 < s["cached_bytes"] <= s["limit"]
    assert _alloc.release() == s["cached_bytes"]
    assert _alloc.stats()["cached_blocks"] == 0
    assert _alloc.stats()["cached_bytes"] == 0


def test_threads_never_share_a_block():
    s0 = _alloc.stats()
    errors = []

    def worker(t):
        try:
            for i in range(150):
                a = _alloc.empty(((1 + (i + t) % 3) * N2 // 2,), np.int32)
                a.fill(t * 1000 + i)
                b = _alloc.zeros((N2,), np.int32)
                assert not b.any()
                assert (a == t * 1000 + i).all()
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert delta(s0, "live_blocks") == 0
    assert delta(s0, "hits") > 0


def test_set_limit_rejects_bad_values():
    with pytest.raises(ValueError, match="nbytes"):
        _alloc.set_limit(-1)
    for bad in (1.5, True, "1", None):
        with pytest.raises(TypeError, match="nbytes"):
            _alloc.set_limit(bad)


def test_limit_from_the_environment():
    default = _alloc.default_limit()
    assert 0 < default <= 1 << 30
    assert _alloc.limit_from_env({}) == default
    assert _alloc.limit_from_env({"FASTNORM_CPU_POOL": "0", "FASTNORM_CPU_POOL_MB": "5"}) == 0
    assert _alloc.limit_from_env({"FASTNORM_CPU_POOL_MB": "0"}) == 0
    assert _alloc.limit_from_env({"FASTNORM_CPU_POOL_MB": "1.5"}) == 3 * MIB // 2
    for bad in ("abc", "-1", "nan", "inf"):
        with pytest.raises(ValueError, match="FASTNORM_CPU_POOL_MB"):
            _alloc.limit_from_env({"FASTNORM_CPU_POOL_MB": bad})


def test_pool_off_from_the_environment():
    code = """if True:
        import numpy as np, fastnorm
        from fastnorm._kernels.cpu import _alloc
        y = fastnorm.layer_norm_forward(np.ones((512, 1024), np.float32)).y
        core = getattr(np, "_core", None) or np.core
        print(_alloc.limit(), core.multiarray.get_handler_name(y))
        """
    env = dict(os.environ, FASTNORM_CPU_POOL="0", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    limit, name = proc.stdout.split()
    assert limit == "0"
    assert name != _alloc.HANDLER_NAME


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_fork_child_uses_the_inherited_pool():
    """Children forked while another thread allocates and frees pooled arrays allocate from, free into and
    empty their copy of the pool (and run kernels); the parent's pool and arrays are unchanged by them."""
    r = run_after_parent(
        """
        import threading
        from fastnorm._kernels.cpu import _alloc

        N = 2 * 2**20 // 4
        stop = False
        live = _alloc.empty((N,), np.float32)
        live.fill(3)


        def churn():
            while not stop:
                a = _alloc.empty((N,), np.float32)
                a.fill(1)
                del a


        def child():
            global live
            before = _alloc.stats()
            a = _alloc.empty((N,), np.float32)
            a.fill(2)
            assert (live == 3).all()
            del a
            live = None
            s = _alloc.stats()
            assert s["live_blocks"] == before["live_blocks"] - 1, (before, s)
            _alloc.release()
            assert _alloc.stats()["cached_blocks"] == 0
            assert work() == REF


        th = threading.Thread(target=churn)
        th.start()
        codes = [in_child(child) for _ in range(20)]
        stop = True
        th.join()
        assert codes == [0] * 20, codes
        assert (live == 3).all()
        print("ok")
        """
    )
    assert r.stdout.strip().endswith("ok")


def test_op_outputs_reuse_the_pool():
    x = np.random.default_rng(1).standard_normal((512, 1024)).astype(np.float32)  # a 2 MiB output
    ref = fastnorm.layer_norm_forward(x)
    assert handler(ref.y) == _alloc.HANDLER_NAME
    assert handler(ref.mean) != _alloc.HANDLER_NAME
    p = ptr(ref.y)
    y_ref = ref.y.copy()
    del ref
    s0 = _alloc.stats()
    again = fastnorm.layer_norm_forward(x)
    assert ptr(again.y) == p
    assert delta(s0, "hits") >= 1
    assert delta(s0, "misses") == 0
    assert np.array_equal(again.y, y_ref)


def test_pooled_blocks_start_on_a_page():
    """Pooled data starts on a 4 KiB page (not past the header, inside the first page): fresh and reused
    blocks, zeros, odd sizes, a resized array and an op's output."""
    arrays = [_alloc.empty((n,), np.uint8) for n in (MIB, MIB + 1, 3 * MIB + 4093, 17 * MIB + 7)]
    arrays.append(_alloc.zeros((N2 + 3,), np.float32))
    p = ptr(arrays[0])
    del arrays[0]
    reused = _alloc.empty((MIB,), np.uint8)
    assert ptr(reused) == p
    arrays.append(reused)
    grown = _alloc.empty((MIB,), np.uint8)
    grown.resize((5 * MIB,), refcheck=False)
    arrays.append(grown)
    arrays.append(fastnorm.batch_norm_forward(np.ones((2, 3, 300, 301), np.float32)).y)
    for a in arrays:
        assert handler(a) == _alloc.HANDLER_NAME
        assert ptr(a) % 4096 == 0, (a.nbytes, ptr(a) % 4096)


def test_backend_empty_and_zeros_use_the_pool():
    a, z = CPU.empty((N2,), np.float32), CPU.zeros((N2,), np.float64)
    assert handler(a) == handler(z) == _alloc.HANDLER_NAME
    assert not z.any()


def test_empty_cache_and_show_config(capsys):
    a = _alloc.empty((N2,), np.float32)
    del a
    assert fastnorm.show_config(mode="dicts")["cpu_pool"]["cached_bytes"] == 2 * MIB
    fastnorm.show_config()
    assert "cpu output pool  : 2.0 of 64 MiB cached in 1 blocks" in capsys.readouterr().out
    assert fastnorm.empty_cache() is None
    assert _alloc.stats()["cached_blocks"] == 0
    _alloc.set_limit(0)
    fastnorm.show_config()
    assert "cpu output pool  : off" in capsys.readouterr().out
