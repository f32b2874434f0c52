"""pytest-benchmark suite over every case of fastnorm.bench (the same cases the roofline report runs).

pytest bench --benchmark-enable                    # full shapes, timed
pytest bench --benchmark-enable --bench-quick      # small shapes
pytest bench --bench-quick                         # no timing: each case once, so bench code cannot rot (CI)
pytest bench --benchmark-enable --bench-alignment page   # inputs and out= buffers page-aligned copies
"""


def pytest_addoption(parser):
    parser.addoption(
        "--bench-quick", action="store_true", help="the small shapes of `python -m fastnorm.bench --quick`"
    )
    parser.addoption("--bench-ops", default="", help="comma-separated substrings of op names to keep")
    parser.addoption(
        "--bench-dtypes", default="", help="comma-separated data dtypes to keep (float32, bfloat16, float16)"
    )
    parser.addoption(
        "--bench-alignment",
        default="numpy",
        choices=["numpy", "64", "page"],
        help="where inputs and out= buffers start (as `python -m fastnorm.bench --input-alignment`)",
    )


def pytest_configure(config):
    # No timing unless asked for (--benchmark-enable): the suite then runs each case once. This runs before
    # pytest-benchmark's own pytest_configure (trylast), which reads the option.
    if not config.getoption("benchmark_enable", False):
        config.option.benchmark_disable = True


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    from fastnorm.bench import all_cases

    ops = [o for o in metafunc.config.getoption("--bench-ops").split(",") if o]
    dtypes = [d for d in metafunc.config.getoption("--bench-dtypes").split(",") if d]
    quick = metafunc.config.getoption("--bench-quick")
    cases = [
        c
        for c in all_cases(quick=quick)
        if (not ops or any(o in c.op for o in ops)) and (not dtypes or c.dtype in dtypes)
    ]
    params = [(c, p) for c in cases for p in c.providers]
    ids = [f"{c.op}-{c.label.replace(' ', '')}-{c.dtype}-{p.replace(' ', '')}" for c, p in params]
    metafunc.parametrize("case, provider", params, ids=ids)
