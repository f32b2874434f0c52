import numpy as np
import pytest

import fastnorm


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
