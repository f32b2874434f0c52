"""The backend interface the optimizers (and the norms) are written against: both backends implement the
whole ``Backend`` protocol, the modules import without a cycle, and the old import paths still work."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastnorm._backend as B

ROOT = Path(B.__file__).resolve().parents[1]

MODULES = [
    "fastnorm._backend._detect",
    "fastnorm._backend",
    "fastnorm._backend.cpu",
    "fastnorm._dispatch",
    "fastnorm._validation",
    "fastnorm.optim",
    "fastnorm.optim._algos",
    "fastnorm.optim._plan",
    "fastnorm.optim.functional",
    "fastnorm.optim.optimizer",
]


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone_without_numba(module):
    # a fresh interpreter importing only this module: no cycle leaves a name half-defined, and nothing
    # on the CPU path imports numba (the CUDA backend is loaded on the first GPU array)
    code = f"import sys, {module}; assert 'numba' not in sys.modules, sorted(m for m in sys.modules if 'numba' in m)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def _imports(path, top_only: bool = False) -> set:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body if top_only else ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names |= {f"{'.' * node.level}{node.module or ''}:{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


@pytest.mark.parametrize(
    "name",
    ["_backend/__init__.py", "_backend/_detect.py", "_backend/cuda.py", "_kernels/cuda/_arrays.py", "_dispatch.py"],
)
def test_no_backend_module_imports_the_dispatcher_or_a_backend_above_it(name):
    # _detect is a leaf; the CUDA backend and its adapters never import the dispatcher (the old cycle);
    # the dispatcher imports no backend (its old names resolve lazily)
    found = _imports(ROOT / name)
    assert not [n for n in found if "_dispatch" in n], found
    if name in ("_backend/_detect.py", "_dispatch.py"):  # leaves at import time
        top = _imports(ROOT / name, top_only=True)
        assert not [n for n in top if "_backend" in n or "_kernels" in n or "numba" in n], top


def test_cpu_backend_implements_the_protocol():
    cpu = B.CPU
    assert isinstance(cpu, B.Backend)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    shape, dtype, ptr = cpu.array_info(a)
    assert shape == (2, 3)
    assert dtype == np.float32
    assert ptr == a.ctypes.data
    assert cpu.is_aligned(a)
    assert not cpu.is_aligned(np.frombuffer(b"\0" * 9, np.float32, 2, offset=1))
    d = cpu.to_device(a)
    assert d is not a
    assert np.array_equal(d, a)
    assert d.flags.c_contiguous
    h = cpu.to_host(a)
    assert h is not a
    assert np.array_equal(h, a)
    out = np.empty((2, 2), np.float32)
    cpu.matmul(a, a.T.copy(), out)
    assert np.array_equal(out, a @ a.T)


def test_protocol_lists_every_member_the_backends_define():
    members = {n for n in dir(B.Backend) if not n.startswith("_")} | set(B.Backend.__annotations__)
    public = {n for n in dir(B.CpuBackend) if not n.startswith("_")}
    assert public <= members, public - members


def test_old_import_paths_resolve_to_the_backend_package():
    import fastnorm._dispatch as d
    from fastnorm._dispatch import CPU, backend_of, cuda_backend, on_cuda  # noqa: F401

    assert d.CPU is B.CPU
    assert d.backend_of is B.backend_of
    assert d.cuda_backend is B.cuda_backend
    assert d._cuda_backend is B._cuda_backend
    assert backend_of("t", x=np.zeros(2)) is B.CPU
    with pytest.raises(AttributeError):
        d.no_such_name  # noqa: B018


def test_thread_settings_stay_patchable_on_the_dispatcher(monkeypatch):
    import fastnorm._dispatch as d

    monkeypatch.setattr(d, "SERIAL_BELOW", 10)
    monkeypatch.setattr(d, "_num_threads", 3)
    assert B.CPU.threads(5) == 1
    assert B.CPU.threads(50) == 3
