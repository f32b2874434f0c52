"""One benchmark per (case, provider); groups per op and shape; bytes and GB/s in extra_info."""

import numpy as np
import pytest

_inputs_cache: dict = {}


def _inputs(case):
    # Inputs are shared by the providers of one case (built once, kept only for the current case).
    if case.name not in _inputs_cache:
        _inputs_cache.clear()
        _inputs_cache[case.name] = case.make_inputs(np.random.default_rng(0))
    return _inputs_cache[case.name]


def test_case(benchmark, case, provider):
    benchmark.group = case.name
    benchmark.extra_info.update(op=case.op, shape=case.label, dtype=case.dtype, provider=provider, bytes=case.nbytes)
    try:
        fn = case.providers[provider](_inputs(case))
        fn()  # a provider that cannot run here (Case.skip_reason) is skipped, not failed
    except Exception as e:
        reason = case.skip_reason(e)
        if reason is None:
            raise
        pytest.skip(reason)
    result = benchmark(fn)
    assert result is not None or provider.startswith("torch")
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["GB/s"] = case.nbytes / stats.stats.median / 1e9


@pytest.fixture(autouse=True, scope="session")
def _report_machine():
    yield
    _inputs_cache.clear()
