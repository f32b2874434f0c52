"""What every backend declares, once: its name, the array type and device named in messages, whether it
runs on the host, and the kernel package it imports on first use (``kernels``)."""

from __future__ import annotations

import functools
import importlib

from .. import _dtypes


class BackendBase:
    """Base of ``CpuBackend`` and ``CudaBackend``; a backend declares itself with keyword arguments
    ``class CpuBackend(BackendBase, name="cpu", array_type=..., device=..., on_host=True, kernels=...)``."""

    name: str
    array_type: str  # what its arrays are called in error messages
    device: str  # where they live, in error messages
    on_host: bool
    float_dtypes = _dtypes.FULL + _dtypes.HALF
    _kernel_package: str

    _FACTS = ("name", "array_type", "device", "on_host", "kernels")

    def __init_subclass__(cls, **kw):
        declared = {k: kw.pop(k) for k in BackendBase._FACTS if k in kw}
        super().__init_subclass__(**kw)
        missing = [k for k in BackendBase._FACTS if k not in declared]
        if BackendBase in cls.__bases__ and missing:  # a backend declares every fact; its subclasses inherit them
            raise TypeError(f"{cls.__name__} must declare {', '.join(missing)}")
        if "kernels" in declared:
            declared["_kernel_package"] = declared.pop("kernels")
        for k, v in declared.items():
            setattr(cls, k, v)

    def launch_for(self, params: list) -> None:
        """The optimizer launches that follow update ``params`` (the CUDA backend picks their stream)."""

    @functools.cached_property
    def kernels(self):
        """The backend's kernel package (``fastnorm._kernels.cpu`` / ``.cuda``), imported on first use."""
        return importlib.import_module(self._kernel_package)
