"""Fixtures of the contract suite: ``device`` (indirect: "cpu" or "cuda") and small CUDA launches on the
simulator (it runs one Python thread per CUDA thread)."""

from __future__ import annotations

import pytest

from ._devices import SIM, make_device


@pytest.fixture
def device(request, monkeypatch):
    dev = make_device(request.param)
    if dev.name == "cuda" and SIM:
        from fastnorm._kernels.cuda import channel_norm, optim

        for name, value in (("COLS", 8), ("PHASES", 4), ("BLOCK", 32), ("SEG_BLOCK", 32)):
            monkeypatch.setattr(channel_norm, name, value)
        for name, value in (("BLOCK", 32), ("UNROLL", 2), ("CHUNK", 16)):
            monkeypatch.setattr(optim, name, value)
    return dev
