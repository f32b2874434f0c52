"""The devices the contracts run on: the CPU always; CUDA on a real GPU or on Numba's simulator.

``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/contracts`` runs the contracts on the simulated CUDA
device only (the CPU ones run in the ordinary process); without the variable the CUDA cases are
generated only when a GPU driver is present, so the ordinary run does not import numba.
"""

from __future__ import annotations

import os

import numpy as np

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _gpu_driver_present() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def cuda_module():
    """numba.cuda when it can run kernels here (simulator or GPU), else None."""
    if not SIM and not _gpu_driver_present():
        return None
    try:
        from numba import cuda
    except Exception:
        return None
    if SIM:
        return cuda
    try:
        return cuda if cuda.is_available() else None
    except Exception:
        return None


DEVICES = (
    (["cuda"] if cuda_module() is not None else [])
    if SIM
    else (["cpu", "cuda"] if cuda_module() is not None else ["cpu"])
)


class Cpu:
    name = "cpu"
    small = False
    float_dtypes = (np.float32, np.float64)

    def put(self, a):
        return a

    def get(self, a):
        return a

    def full(self, shape, dtype, value):
        return np.full(shape, value, dtype)

    def strided(self, a):
        """A non-contiguous view holding ``a``'s values (every other element of a longer last axis)."""
        if a.ndim == 0:
            return a
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]


class Cuda:
    name = "cuda"
    float_dtypes = (np.float16, np.float32, np.float64)

    def __init__(self, cuda):
        self.cuda = cuda
        self.small = SIM

    def put(self, a):
        if not isinstance(a, np.ndarray):
            return a
        return self.cuda.to_device(np.array(a, order="C"))

    def get(self, a):
        if a is None or isinstance(a, np.ndarray):
            return a
        return a.copy_to_host()

    def full(self, shape, dtype, value):
        return self.cuda.to_device(np.full(shape, value, dtype))

    def strided(self, a):
        if a.ndim == 0:
            return self.put(a)
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return self.cuda.to_device(big)[..., ::2]


def make_device(name: str):
    if name == "cpu":
        return Cpu()
    return Cuda(cuda_module())


def put_kwargs(dev, kwargs: dict) -> dict:
    return {k: dev.put(v) for k, v in kwargs.items()}
