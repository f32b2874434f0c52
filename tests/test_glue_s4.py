"""The shared pieces of the optimizer and torch glue: docstring fragments, AdamW as Adam with a fixed option,
the one fallback warning, the declared 16-bit options."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

from fastnorm import optim as O

STEPS = ["sgd_step", "adagrad_step", "adadelta_step", "rmsprop_step", "adam_step", "adamw_step"]


@pytest.mark.parametrize("name", STEPS)
def test_step_docstrings_are_complete(name):
    fn = getattr(O, name)
    doc = inspect.getdoc(fn)
    assert not re.search(r"^\s*\{\w+\}\s*$", doc, re.M)  # no placeholder left
    for line in ("Parameters", "Returns", "params, grads : list of arrays", "master_params, stochastic_rounding"):
        assert line in doc, (name, line)
    spec = O.ALGOS[name.removesuffix("_step")]
    hyper = ", ".join(k for k in spec.hyper if k not in spec.fixed)
    assert hyper in doc  # the hyperparameter entry is the declaration's list
    assert f"torch.optim.{O.CLASSES[spec.name].__name__}``" in doc


def test_adamw_step_is_adam_step_with_the_fixed_option():
    sig = inspect.signature(O.adamw_step)
    adam = inspect.signature(O.adam_step)
    assert "decoupled_weight_decay" not in sig.parameters
    assert list(sig.parameters) == [k for k in adam.parameters if k != "decoupled_weight_decay"]
    assert sig.parameters["weight_decay"].default == O.ALGOS["adamw"].hyper["weight_decay"].default == 1e-2
    rng = np.random.default_rng(0)
    p0, g = rng.standard_normal(7), rng.standard_normal(7)
    runs = []
    for fn, kw in ((O.adamw_step, {}), (O.adam_step, {"decoupled_weight_decay": True, "weight_decay": 1e-2})):
        p, m, v = p0.copy(), np.zeros(7), np.zeros(7)
        fn([p], [g], [m], [v], step=1, lr=0.1, **kw)
        runs.append((p, m, v))
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
    p = p0.copy()
    with pytest.raises(TypeError, match="decoupled_weight_decay"):
        O.adamw_step([p], [g], [np.zeros(7)], [np.zeros(7)], step=1, decoupled_weight_decay=False)
    with pytest.raises(TypeError, match="step"):
        O.adamw_step([p], [g], [np.zeros(7)], [np.zeros(7)])
    np.testing.assert_array_equal(p, p0)


def test_a_fixed_option_cannot_change():
    with pytest.raises(ValueError, match="decoupled_weight_decay must stay True"):
        O.ALGOS["adamw"].check("t", {"decoupled_weight_decay": False})
    with pytest.raises(ValueError, match="decoupled_weight_decay"):
        O.AdamW([{"params": [np.zeros(2)], "decoupled_weight_decay": False}])


def test_flag_is_the_shared_validator():
    from fastnorm import _validation as V

    for spec in O.ALGOS.values():
        with pytest.raises(TypeError, match=r"t: maximize must be a bool, got int 1"):
            spec.check("t", {"maximize": 1})
    assert V.flag("t", "x", np.bool_(True)) is True


def test_class_options_checked_by_the_declaration():
    with pytest.raises(ValueError, match="exclude each other"):
        O._check_options("t", {"master_weights": True, "stochastic_rounding": True, "seed": 0})
    with pytest.raises(ValueError, match="seed"):
        O._check_options("t", {"master_weights": False, "stochastic_rounding": False, "seed": -1})
    assert O._check_options("t", {"master_weights": np.bool_(False), "stochastic_rounding": False, "seed": 3}) == {
        "master_weights": False,
        "stochastic_rounding": False,
        "seed": 3,
    }


# ------------------------------------------------------------------------------------------------ torch
def test_torch_docstrings_filled():
    pytest.importorskip("torch")
    from fastnorm.torch import functional as F

    for fn in (F.layer_norm, F.rms_norm, F.add_layer_norm, F.add_rms_norm):
        doc = inspect.getdoc(fn)
        assert not re.search(r"^\s*\{\w+\}\s*$", doc, re.M), fn.__name__
        assert "normalized_shape : int or sequence of int\n    The trailing dims normalized together." in doc


def test_warn_once_per_place_and_reason():
    pytest.importorskip("torch")
    import warnings

    from fastnorm.torch._common import FastnormFallbackWarning, warn_once

    seen: set = set()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        for _ in range(3):
            warn_once(seen, "fastnorm.torch.x.Y", "because")
        warn_once(seen, "fastnorm.torch.x.Y", "another reason", "using torch's step instead")
    assert [str(w.message) for w in got] == [
        "fastnorm.torch.x.Y: because; running torch's implementation instead",
        "fastnorm.torch.x.Y: another reason; using torch's step instead",
    ]
    assert all(w.category is FastnormFallbackWarning for w in got)


def test_table_driven_modules_match_torch():
    torch = pytest.importorskip("torch")
    from fastnorm.torch import nn as FN

    x = torch.randn(4, 6, 5, dtype=torch.float64)
    for ours, theirs in (
        (FN.LayerNorm(5, dtype=torch.float64), torch.nn.LayerNorm(5, dtype=torch.float64)),
        (FN.RMSNorm(5, dtype=torch.float64), torch.nn.RMSNorm(5, dtype=torch.float64)),
        (FN.GroupNorm(3, 6, dtype=torch.float64), torch.nn.GroupNorm(3, 6, dtype=torch.float64)),
        (FN.LocalResponseNorm(3), torch.nn.LocalResponseNorm(3)),
    ):
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_bookkeeping_as_torch(momentum):
    torch = pytest.importorskip("torch")
    from fastnorm.torch import nn as FN

    ours = FN.BatchNorm1d(3, momentum=momentum, dtype=torch.float64)
    theirs = torch.nn.BatchNorm1d(3, momentum=momentum, dtype=torch.float64)
    for _ in range(3):
        x = torch.randn(8, 3, dtype=torch.float64)
        torch.testing.assert_close(ours(x), theirs(x))
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    ours.eval(), theirs.eval()
    x = torch.randn(8, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x))
    assert int(ours.num_batches_tracked) == 3
