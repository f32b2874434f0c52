"""The CUDA backend's old import path: it lives in ``fastnorm._backend.cuda``, beside the CPU backend."""

from ..._backend.cuda import CudaBackend, DevicePool, make_backend

__all__ = ["CudaBackend", "DevicePool", "make_backend"]
