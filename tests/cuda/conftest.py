"""CUDA tests: run on a real GPU, or on Numba's CUDA simulator when NUMBA_ENABLE_CUDASIM=1 is set before
numba is imported (its own pytest process: ``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda``).
Without either, every test here skips with the reason."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
if SIM:
    # The simulator runs each CUDA thread as a Python thread, polled by a busy loop that keeps the GIL for a whole
    # switch interval (5 ms by default) at every syncthreads: a shorter interval runs these tests about twice as
    # fast (measured on 2 cores).
    sys.setswitchinterval(5e-4)


def _cuda_status():
    try:
        from numba import cuda
    except Exception as e:  # numba / numba-cuda missing or broken
        return None, f"numba-cuda is not importable ({e})"
    if SIM:
        return cuda, ""
    try:
        if cuda.is_available():
            return cuda, ""
    except Exception as e:
        return None, f"CUDA is not usable ({e})"
    return None, "no CUDA GPU; NUMBA_ENABLE_CUDASIM=1 runs these tests on the simulator"


_CUDA, _WHY = _cuda_status()


@pytest.fixture(autouse=True)
def _need_cuda():
    if _CUDA is None:
        pytest.skip(_WHY)


@pytest.fixture
def cuda():
    return _CUDA


@pytest.fixture
def on_gpu(cuda):
    """NumPy arrays -> device arrays (None stays None)."""

    def to(*arrays):
        # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
        out = tuple(None if a is None else cuda.to_device(np.array(a, order="C")) for a in arrays)
        return out if len(out) != 1 else out[0]

    return to


def host(a):
    """A device array (or None) back as a NumPy array."""
    return None if a is None else a.copy_to_host()


def hw_only():
    if SIM:
        pytest.skip("real GPU only (the simulator has no CuPy/torch interop, and is too slow for this)")


@pytest.fixture
def picked(monkeypatch):
    """{"fwd": [...], "bwd": [...]}: the ``vec`` flag of each LayerNorm/RMSNorm row kernel the launchers ask
    for, by kind; "persist": the ``persist`` flag of each forward."""
    from fastnorm._kernels.cuda import layer_norm as L

    got = {"fwd": [], "bwd": [], "persist": []}
    get = L._get

    def spy(*args, **kw):
        got[args[0]].append(bool(kw.get("vec", args[9] if len(args) > 9 else False)))
        if args[0] == "fwd":
            got["persist"].append(bool(kw.get("persist", args[10] if len(args) > 10 else False)))
        return get(*args, **kw)

    monkeypatch.setattr(L, "_get", spy)
    monkeypatch.setattr(L, "_plans", {})  # (on a GPU: the launch plans pick the kernel once per key)
    return got


@pytest.fixture
def small_channel_blocks(monkeypatch):
    """Small thread blocks for the channel-norm kernels (BatchNorm, its stages, Group/InstanceNorm): the
    simulator runs one Python thread per CUDA thread."""
    from fastnorm._kernels.cuda import batch_norm_stages as S
    from fastnorm._kernels.cuda import channel_norm as K

    monkeypatch.setattr(K, "COLS", 8)
    monkeypatch.setattr(K, "PHASES", 4)
    monkeypatch.setattr(K, "BLOCK", 32)
    monkeypatch.setattr(K, "SEG_BLOCK", 32)
    monkeypatch.setattr(S, "_T", 32)
