"""Package-level behaviour: threads, OpenMP, lazy imports, dispatch errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastnorm


def test_openmp_did_not_silently_fall_away():
    # A serial build is allowed only when asked for (FASTNORM_EXPECT_SERIAL=1, e.g. a compiler without OpenMP).
    if os.environ.get("FASTNORM_EXPECT_SERIAL") == "1":
        pytest.skip("serial build expected")
    assert fastnorm.openmp_enabled(), "the CPU kernels were built without OpenMP"


def test_set_get_num_threads():
    old = fastnorm.get_num_threads()
    try:
        fastnorm.set_num_threads(3)
        assert fastnorm.get_num_threads() == 3
        with pytest.raises(ValueError, match="must be >= 1"):
            fastnorm.set_num_threads(0)
        with pytest.raises(TypeError, match="must be an int"):
            fastnorm.set_num_threads(1.5)
        assert fastnorm.get_num_threads() == 3
    finally:
        fastnorm.set_num_threads(old)


def test_default_threads_honour_omp_num_threads():
    code = "import fastnorm; print(fastnorm.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_import_does_not_import_numba_or_torch():
    code = "import sys, fastnorm; print('numba' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


class FakeDeviceArray:
    """Looks like a GPU array to the dispatcher (has __cuda_array_interface__)."""

    shape = (4, 6)
    dtype = np.dtype(np.float32)
    __cuda_array_interface__ = {"shape": (4, 6), "typestr": "<f4", "data": (0, False), "version": 3}


def test_mixing_host_and_device_arrays_is_a_type_error():
    with pytest.raises(TypeError, match="x on the GPU.*weight on the CPU"):
        fastnorm.layer_norm_forward(FakeDeviceArray(), np.ones(6, np.float32))


def test_public_api_is_listed():
    for name in fastnorm.__all__:
        assert hasattr(fastnorm, name), name
