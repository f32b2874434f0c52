import os
import sys
import threading

import numpy as np
import pytest

import fastnorm


def _lock_simulator_shared_arrays():
    """The Numba CUDA simulator runs a block's threads as Python threads and creates each
    ``cuda.shared.array`` with an unlocked check-then-set keyed by the calling line: two threads can both
    miss, and one keeps a private array no other thread writes (seen once: wrong dweight columns in a
    row-norm backward's partial reduction). Create it under a lock, with the same key."""
    from numba.cuda.simulator import kernelapi

    lock, original = threading.Lock(), kernelapi.FakeCUDAShared.array

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory (one buffer per block), or refused
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)
        key = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                res = self._allocations[key] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = array


if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    _lock_simulator_shared_arrays()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=[1, 2], ids=lambda n: f"threads{n}")
def threads(request):
    """Run the test with 1 and with 2 CPU threads, restoring the previous setting after."""
    old = fastnorm.get_num_threads()
    fastnorm.set_num_threads(request.param)
    yield request.param
    fastnorm.set_num_threads(old)


@pytest.fixture(autouse=True)
def _serial_threshold_off(monkeypatch):
    """Let small test shapes take the multi-threaded path too (the serial cut-off is a speed choice)."""
    import fastnorm._dispatch as d

    monkeypatch.setattr(d, "SERIAL_BELOW", 0)
