"""The examples, run as scripts in their --quick mode: they learn (loss falls, held-out accuracy well above
the 10% of chance) and write what they promise (metrics, the loss-curve plot); the docs/usage.md snippets run."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def _serial_threshold_off():
    """Overrides tests/conftest.py's: the examples and snippets run as a user runs them, small calls serial
    (with the cut-off off, every tiny call pays a 2-thread barrier: 20x slower on a loaded machine)."""
    return


@pytest.fixture(autouse=True)
def _torch_one_thread():
    """torch's intra-op threads beside fastnorm's OpenMP pool make the in-process torch examples 5x slower
    on a loaded 2-core machine; their results do not depend on torch's thread count."""
    try:
        import torch
    except ImportError:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _run(tmp_path, script, *args, timeout=300):
    out = tmp_path / f"{script}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = str(EXAMPLES.parent)  # a source checkout: fastnorm from it; an installed fastnorm otherwise
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{script}.py"), "--quick", "--json", str(out), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


def _common():
    spec = importlib.util.spec_from_file_location("_examples_common", EXAMPLES / "_common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_numpy_mlp_learns(tmp_path):
    m, stdout = _run(tmp_path, "numpy_mlp")
    losses = m["epoch_losses"]
    assert len(losses) == 4
    assert losses[-1] < 0.5 * losses[0], losses
    assert m["test_accuracy"] > 0.8, m["test_accuracy"]
    assert "held-out accuracy" in stdout


def test_numpy_mlp_synthetic_data_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    m, _ = _run(tmp_path, "numpy_mlp", "--synthetic", "--epochs", "3", "--plot", "curve.png")
    assert m["data"] == "synthetic-digits"
    assert m["epoch_losses"][-1] < 0.7 * m["epoch_losses"][0]
    assert m["test_accuracy"] > 0.5
    png = (tmp_path / "curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 10_000


def test_gd_regimes_every_run_learns(tmp_path):
    m, stdout = _run(tmp_path, "gd_regimes")
    runs = m["runs"]
    assert {"full-batch GD", "mini-batch SGD (32)", "stochastic GD (1)", "Adam", "AdamW", "Adadelta"} <= set(runs)
    for name, r in runs.items():
        assert r["losses"][0] == pytest.approx(m["initial_loss"])  # same start for every run
        assert r["losses"][-1] < r["losses"][0], name
        if name != "full-batch GD":  # a handful of exact steps only
            assert r["test_accuracy"] > 0.5, (name, r["test_accuracy"])
    # more (noisier) steps per epoch: lower loss after the same number of epochs
    last = {k: runs[k]["losses"][-1] for k in ("full-batch GD", "mini-batch SGD (32)", "stochastic GD (1)")}
    assert last["stochastic GD (1)"] < last["mini-batch SGD (32)"] < last["full-batch GD"], last
    assert "Nesterov" in stdout


def test_torch_swap_follows_torch(tmp_path):
    pytest.importorskip("torch")
    m, _ = _run(tmp_path, "torch_swap")
    assert m["swapped"] == 4
    lt, lf = m["losses"]["torch"], m["losses"]["fastnorm"]
    assert len(lt) == len(lf) > 20
    assert np.mean(lf[-5:]) < 0.5 * np.mean(lf[:5])
    assert m["max_loss_diff"] < 1e-3, m["max_loss_diff"]
    assert m["test_accuracy"]["fastnorm"] > 0.6
    assert m["reloaded_accuracy"] == pytest.approx(m["test_accuracy"]["fastnorm"])


def test_synthetic_digits_and_split():
    c = _common()
    x, y, xt, yt, name = c.load_data(3, synthetic=True)
    assert name == "synthetic-digits"
    assert x.shape[1] == 64
    assert x.dtype == np.float32
    assert 0 <= x.min()
    assert x.max() <= 1
    assert len(y) + len(yt) == 1797
    assert set(np.unique(y)) == set(range(10))
    x2, *_ = c.load_data(3, synthetic=True)
    np.testing.assert_array_equal(x, x2)  # deterministic for a seed


def test_text_progress_bar(capsys):
    c = _common()
    bar = c._TextBar(range(3), 3, "demo")
    assert list(bar) == [0, 1, 2]
    bar.set_postfix_str("loss 1.0")
    err = capsys.readouterr().err
    assert "demo" in err
    assert "3/3" in err


def test_batches_cover_every_index_once():
    c = _common()
    idx = np.concatenate(list(c.batches(10, 4, np.random.default_rng(0))))
    assert sorted(idx) == list(range(10))


def _snippets():
    text = (EXAMPLES.parent / "docs" / "usage.md").read_text()
    parts = text.split("```python\n")[1:]
    return [p.split("```", 1)[0] for p in parts]


@pytest.mark.parametrize("index", range(3), ids=["kernels", "numpy_loop", "pytorch"])
def test_usage_snippets_run(index, tmp_path, monkeypatch):
    code = _snippets()[index]
    if "import torch" in code:
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, f"docs/usage.md snippet {index}", "exec"), scope)
    if "accuracy" in scope:
        assert scope["accuracy"] > 0.9
    if "loss" in scope and not isinstance(scope["loss"], float):
        assert scope["loss"].item() < 0.3


def test_model_selection_aic_bic_disagree(tmp_path):
    m, stdout = _run(tmp_path, "model_selection")
    t = m["table"]
    k, ll = np.array(t["k"]), np.array(t["log_likelihood"])
    np.testing.assert_allclose(t["aic"], 2 * k - 2 * ll)
    np.testing.assert_allclose(t["bic"], k * np.log(m["n"]) - 2 * ll)
    a, b = int(np.argmin(t["aic"])), int(np.argmin(t["bic"]))
    assert t["degree"][a] > t["degree"][b]  # the shown data set is one where they disagree
    assert 0 < m["disagree_fraction"] < 1
    # n >= 8: BIC's penalty is the heavier, so its choice is never the larger model
    assert all(bd <= ad for ad, bd in zip(m["aic_choices"], m["bic_choices"]))
    assert "AIC picks degree" in stdout


def test_prenorm_transformer_fused_residual_follows_torch(tmp_path):
    """examples/prenorm_transformer.py --quick: the fused add + norm model learns like torch's pre-norm model
    from the same checkpoint, its loss curve within the error criterion of the float64 curve."""
    pytest.importorskip("torch")
    pytest.importorskip("fastnorm.add_norm")
    m, stdout = _run(tmp_path, "prenorm_transformer", "--bf16")
    assert set(m["runs"]) == {"layer", "rms"}
    for norm, r in m["runs"].items():
        L = r["losses"]
        assert len(L["fastnorm"]) == len(L["torch"]) == len(L["torch float64"]) == 10
        assert L["fastnorm"][-1] < L["fastnorm"][0] < 1.2 * m["chance_loss"], (norm, L["fastnorm"])
        assert r["criterion"]["ok"], (norm, r["criterion"])
        assert r["max_loss_diff"] < 1e-3, (norm, r["max_loss_diff"])
        assert r["ms_per_step"]["fastnorm"] > 0
        if "criterion_bf16" in r:
            assert r["criterion_bf16"]["ok"], (norm, r["criterion_bf16"])
        else:
            assert "bf16_skipped" in r
    assert "error criterion" in stdout
