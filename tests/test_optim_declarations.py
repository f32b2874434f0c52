"""Each optimizer algorithm is declared once (``fastnorm.optim.ALGOS``): every explicit signature default
(class, functional step, NumPy reference, fastnorm.torch.optim / torch.optim) and every stream list equals
the declaration."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from fastnorm import optim as O
from fastnorm.reference import optim as R

CLASSES = {algo: cls.__name__ for algo, cls in O.CLASSES.items()}


def _defaults(fn) -> dict:
    return {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD
    }


@pytest.mark.parametrize("algo", list(O.ALGOS))
def test_class_defaults_equal_the_declaration(algo):
    spec, cls = O.ALGOS[algo], getattr(O, CLASSES[algo])
    declared = spec.class_defaults()
    assert cls._defaults == declared
    sig = _defaults(cls.__init__)
    if algo == "adamw":
        declared = {k: v for k, v in declared.items() if k != "decoupled_weight_decay"}  # fixed, not an argument
    assert sig == declared
    opt = cls([np.zeros(2)])
    assert {k: v for k, v in opt.param_groups[0].items() if k != "params"} == spec.class_defaults()


@pytest.mark.parametrize("algo", list(O.ALGOS))
def test_functional_and_reference_defaults_equal_the_declaration(algo):
    spec = O.ALGOS[algo]
    declared = {k: p.default for k, p in spec.hyper.items()}
    stream_args = {"momentum_buffers", "grad_avgs", "max_exp_avg_sqs", "master_params", "stochastic_rounding", "seed"}
    fn = _defaults(getattr(O, f"{algo}_step"))
    fn = {k: v for k, v in fn.items() if k not in stream_args}
    if algo == "adamw":
        declared.pop("decoupled_weight_decay")  # adamw_step is adam_step with it fixed to True
    assert fn == declared
    ref = _defaults(getattr(R, f"{algo}_step"))
    ref = {k: v for k, v in ref.items() if k not in stream_args}
    if algo == "adamw":  # the reference's adamw_step forwards the rest to adam_step
        assert ref == {"weight_decay": declared["weight_decay"]}
        base = _defaults(R.adam_step)
        assert all(base[k] == v for k, v in declared.items() if k != "weight_decay")
    else:
        assert ref == declared


@pytest.mark.parametrize("algo", list(O.ALGOS))
def test_torch_defaults_equal_the_declaration(algo):
    torch = pytest.importorskip("torch")
    from fastnorm.torch import optim as FO

    spec = O.ALGOS[algo]
    name = CLASSES[algo]
    for cls in (getattr(torch.optim, name), getattr(FO, name)):
        opt = cls([torch.nn.Parameter(torch.zeros(2))])
        group = opt.param_groups[0]
        if cls is getattr(FO, name):
            on = cls([torch.nn.Parameter(torch.zeros(2))], master_weights=True).param_groups[0]
            assert on["master_weights"] is True
            assert on["stochastic_rounding"] is False
            assert on["seed"] == 0
        for k, v in spec.class_defaults().items():
            if k in O._PRECISION:
                assert k not in group  # fastnorm's 16-bit options: in the groups only when not default
                continue
            assert group[k] == v, (cls, k)


def test_streams_and_needed_follow_the_declaration():
    # the classes keep exactly the declared streams the options need, under torch's state names
    rng = np.random.default_rng(0)
    for algo, cls_name in CLASSES.items():
        spec = O.ALGOS[algo]
        every = {"sgd": {"momentum": 0.9}, "rmsprop": {"centered": True, "momentum": 0.5}}.get(algo, {})
        every = {**every, **({"amsgrad": True} if algo in ("adam", "adamw") else {})}
        p = [rng.standard_normal(3)]
        opt = getattr(O, cls_name)(p, **every)
        opt.step([rng.standard_normal(3)])
        state = opt.state_dict()["state"][0]
        assert sorted(k for k in state if k != "step") == sorted(spec.streams)
        assert ("step" in state) == (algo != "sgd")


def test_declared_ranges_are_enforced():
    for spec in O.ALGOS.values():
        for name, hp in {**spec.hyper, **spec.class_only}.items():
            if isinstance(hp.default, bool):
                with pytest.raises(TypeError, match=name):
                    spec.check("t", {name: 1})
                continue
            one = 1 if isinstance(hp.default, int) else 1.0  # integer options (seed) take ints
            if hp.low is not None:
                with pytest.raises(ValueError, match=name):
                    spec.check("t", {name: hp.low - one})
            if hp.high is not None:
                with pytest.raises(ValueError, match=name):
                    spec.check("t", {name: hp.high if hp.high_open else hp.high + one})


# ---------------------------------------------------------------------------------- the package layout
PACKAGE = Path(O.__file__).parent


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_optim_modules_are_small_and_never_branch_on_an_algorithm_or_a_backend(path):
    src = path.read_text()
    assert len(src.splitlines()) <= 600
    # the declarations carry what differs per algorithm, the Backend protocol what differs per backend
    for bad in (
        "if algo ==",
        "algo == ",
        "be is CPU",
        "be is not CPU",
        "be.name",
        "_iface",
        "_to_device",
        "_to_host",
        "cuda_backend()",
    ):
        assert bad not in src, (path.name, bad)


def test_classes_and_functional_steps_run_the_same_plan_runner(monkeypatch):
    from fastnorm.optim import _plan

    calls = []
    real = _plan.run
    monkeypatch.setattr(_plan, "run", lambda *a, **k: calls.append(a[1].name) or real(*a, **k))
    rng = np.random.default_rng(0)
    for algo, cls in O.CLASSES.items():
        p = rng.standard_normal(4)
        cls([p]).step([rng.standard_normal(4)])
        spec = O.ALGOS[algo]
        states = {arg: [np.zeros(4)] for arg in spec.args}
        step = {"step": 1} if spec.takes_step else {}
        getattr(O, f"{algo}_step")([p], [rng.standard_normal(4)], **states, **step)
        assert calls == [algo, algo], algo
        calls.clear()


def test_torch_optim_reads_the_hyperparameters_from_the_declaration():
    torch = pytest.importorskip("torch")
    from fastnorm.torch import optim as FO

    for algo, cls in O.CLASSES.items():
        opt = getattr(FO, cls.__name__)([torch.nn.Parameter(torch.zeros(2))])
        h = opt._hyper(opt.param_groups[0])
        assert set(h) == set(O.ALGOS[opt._ALGO].hyper), algo
        assert O.ALGOS[opt._ALGO].check("t", h) == h  # valid as the functional step takes them
