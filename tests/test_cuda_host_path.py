"""The real (non-simulator) CUDA host path under a recording driver: no GPU needed.

One subprocess (the recording driver patches numba-cuda process-wide, and the simulator must be off) runs
every LayerNorm/RMSNorm scenario (forward and backward, allocating and ``out=``, Numba arrays and torch
tensors that say they are CUDA tensors) and the optimizer steps, and reports per steady-state call the
driver calls by category, the launch streams, and the interface dicts and Numba array objects built.
It also compares the launch plans' prebuilt arguments with what numba-cuda's own launch path builds
for the same arrays and kernels. See fastnorm/_kernels/cuda/_recording.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba.cuda")
pytest.importorskip("cuda.core")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
NORM_OPS = ("layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward")
OPTIM_OPS = ("adam_step", "adamw_step", "sgd_step")


@pytest.fixture(scope="module")
def rows():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        "-m",
        "fastnorm._kernels.cuda._recording",
        "--calls",
        "5",
        "--optim-calls",
        "3",
        "--packing",
        "--json",
        "-",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout)


def _pick(rows, op, case, inputs):
    got = [r for r in rows if r["op"] == op and r["case"] == case and r["inputs"] == inputs]
    assert len(got) == 1, (op, case, inputs)
    return got[0]


@pytest.mark.parametrize("inputs", ["numba", "torch"])
@pytest.mark.parametrize("case", ["allocating", "out="])
@pytest.mark.parametrize("op", NORM_OPS)
def test_norm_call_makes_no_driver_work_but_its_launches(rows, op, case, inputs):
    r = _pick(rows, op, case, inputs)
    c = r["calls"]
    assert (c["alloc"], c["free"], c["copy"], c["memset"], c["sync"]) == (0, 0, 0, 0, 0), r["counts"]
    assert c["launch"] == (1 if op.endswith("forward") else 2), r["counts"]
    # every launch on the caller's stream (torch: torch's current stream)
    assert r["streams"] == [r["expected_stream"]]
    # no other driver call of any kind
    assert not [k for k in r["counts"] if k.startswith("driver ")], r["counts"]
    assert not [k for k in r["counts"] if k.startswith("interface dict")], r["counts"]
    if inputs == "torch":
        assert r["counts"].get("numba array created", 0) == 0
        assert r["counts"].get("torch detach", 0) == 0


@pytest.mark.parametrize("inputs", ["numba", "torch"])
@pytest.mark.parametrize(
    ("op", "case"),
    [
        ("add_layer_norm_forward", "allocating"),
        ("add_layer_norm_forward", "out="),
        ("add_rms_norm_forward", "out="),
        ("add_layer_norm_backward", "allocating"),
        ("add_rms_norm_backward", "out="),
        ("layer_norm_forward", "bfloat16 x and weight/bias, out="),
    ],
)
def test_fused_add_and_16bit_weight_calls_make_their_launches_and_nothing_else(rows, op, case, inputs):
    r = _pick(rows, op, case, inputs)
    c = r["calls"]
    launches = (1 if op.endswith("forward") else 2) + case.startswith("bfloat16") * 2  # (+ weight, bias to float32)
    assert (c["alloc"], c["free"], c["copy"], c["memset"], c["sync"]) == (0, 0, 0, 0, 0), r["counts"]
    assert c["launch"] == launches, r["counts"]
    assert r["streams"] == [r["expected_stream"]]
    assert not [k for k in r["counts"] if k.startswith(("driver ", "interface dict"))], r["counts"]
    if inputs == "torch":
        assert r["counts"].get("numba array created", 0) == 0


@pytest.mark.parametrize("case", ["allocating", "out="])
def test_cupy_inputs_use_cupy_stream_and_no_interface_dict(rows, case):
    r = _pick(rows, "layer_norm_forward", case, "cupy")
    c = r["calls"]
    assert (c["alloc"], c["free"], c["copy"], c["memset"], c["sync"], c["launch"]) == (0, 0, 0, 0, 0, 1)
    assert r["streams"] == [r["expected_stream"]]
    assert not [k for k in r["counts"] if k.startswith(("driver ", "interface dict"))], r["counts"]


def test_input_on_another_stream_is_ordered_by_an_event_not_a_sync(rows):
    r = _pick(rows, "layer_norm_forward", "torch x, cupy weight/bias", "mixed")
    c = r["calls"]
    assert (c["alloc"], c["free"], c["copy"], c["memset"], c["sync"], c["launch"]) == (0, 0, 0, 0, 0, 1)
    assert r["streams"] == [r["expected_stream"]]  # torch's stream (x's library)
    assert r["counts"].get("driver cuEventRecord") == 1  # on CuPy's stream ...
    assert r["counts"].get("driver cuStreamWaitEvent") == 1  # ... waited on by torch's, on the device


@pytest.mark.parametrize("inputs", ["numba", "torch"])
@pytest.mark.parametrize("op", OPTIM_OPS)
def test_optimizer_step_same_grads(rows, op, inputs):
    r = _pick(rows, op, "200 tensors, same grads", inputs)
    c = r["calls"]
    assert (c["alloc"], c["free"], c["copy"], c["memset"], c["sync"]) == (0, 0, 0, 0, 0), r["counts"]
    assert c["launch"] == 1
    assert r["streams"] == [r["expected_stream"]]
    assert not [k for k in r["counts"] if k.startswith("interface dict")], r["counts"]
    assert r["counts"].get("torch detach", 0) == 0


@pytest.mark.parametrize("inputs", ["numba", "torch"])
@pytest.mark.parametrize("op", OPTIM_OPS)
def test_optimizer_step_moving_grads_no_alloc_no_sync(rows, op, inputs):
    r = _pick(rows, op, "200 tensors, grads at new addresses", inputs)
    c = r["calls"]
    assert (c["alloc"], c["free"], c["memset"], c["sync"]) == (0, 0, 0, 0), r["counts"]
    assert c["launch"] == 1
    assert r["streams"] == [r["expected_stream"]]
    # the new addresses reach the device by one asynchronous copy from pinned memory on the launch stream
    assert c["copy"] <= 1
    assert r["counts"].get("driver cuMemcpyHtoD", 0) == 0  # never the synchronous copy
    assert not [k for k in r["counts"] if k.startswith("interface dict")], r["counts"]
    assert r["counts"].get("torch detach", 0) == 0


def test_optimizer_caches_keep_no_gradient_alive(rows):
    # Adam steps with a fresh list of Numba gradients each: every gradient is freed once its list is dropped
    r = _pick_check(rows, "gradients freed after their step")
    assert r["got"] == r["expected"], r


def test_optimizer_checks_match_the_cpu_backend_and_the_general_path(rows):
    # the fast paths over Numba gradients accept what the CPU backend accepts, and a refused gradient gets
    # the same error (the CPU backend's outcome for the same step on NumPy arrays: float64 / wrong-shape /
    # aliased / 16-bit gradients, one too many, a NumPy gradient); torch parameters and gradients whose
    # storage or layout changed under the same object (p.data = p.data.t() / .view(torch.int32) /
    # .view(-1), the same on a gradient) get the outcome of the entry-by-entry check
    checks = [r for r in rows if r["op"] == "optim_check" and "against" in r]
    assert sum(r["against"] == "cpu" for r in checks) == 7
    assert sum(r["against"] == "general" for r in checks) == 5
    assert sum(r["got"] != "ok" for r in checks) >= 10
    for r in checks:
        assert r["got"] == r["expected"], r


def test_optimizer_table_follows_a_torch_parameter_whose_data_was_replaced(rows):
    r = _pick_check(rows, "torch table after p.data = another tensor")
    assert r["got"] == r["expected"], r


@pytest.mark.parametrize("step", [0, 1, 2, 3, 4])
def test_optimizer_table_follows_moved_gradients(rows, step):
    # gradient sets 0, 1, 2, 2, 0 in turn (the same layout at new addresses: the path that compares the
    # layout, not each gradient): the launched table's gradient row holds the addresses of that step's set
    got = [r for r in rows if r["op"] == "optim_check" and r["case"].startswith("table after a step")]
    assert len(got) == 5
    assert got[step]["got"] == got[step]["expected"], got[step]


def test_optimizer_refuses_a_gradient_of_another_shape_after_moved_steps(rows):
    r = _pick_check(rows, "gradient of another shape after moved steps")
    assert r["got"] == r["expected"], r
    assert r["got"].startswith("ValueError"), r


def _row_checks(rows):
    return [r for r in rows if r["op"] == "row_call_check"]


def test_row_calls_of_the_usual_form_skip_the_general_path(rows):
    # LayerNorm/RMSNorm calls of the usual form (torch or Numba arrays, weight/bias in the statistic dtype,
    # allocating or out=) are checked and launched by _row_calls; anything else (16-bit parameters, an int
    # eps, every bad argument) takes the general path
    checks = _row_checks(rows)
    assert len(checks) >= 66
    assert sum(r["expected_fast"] for r in checks) >= 37
    assert sum(r["fast"] for r in checks if r["case"].startswith("add-")) == 16  # the fused add's calls
    assert sum(r["fast"] for r in checks if "16 x" in r["case"]) >= 6  # 16-bit weight/bias forwards
    for r in checks:
        assert r["fast"] == r["expected_fast"], r


def test_row_calls_do_what_the_general_path_does(rows):
    # the same launches with the same arguments (out= given), results of the same types, shapes and dtypes,
    # or the same error (type and message) as with the usual-form path turned off
    checks = _row_checks(rows)
    assert sum(r["outcome"] != "ok" for r in checks) >= 12
    for r in checks:
        assert r["same"], r


def _pick_check(rows, case):
    got = [r for r in rows if r["op"] == "optim_check" and r["case"] == case]
    assert len(got) == 1, case
    return got[0]


def test_launch_plan_arguments_match_numba_packing(rows):
    checks = [r for r in rows if r["op"] == "packing_check"]
    assert len(checks) == 6
    for r in checks:
        assert r["equal"], r


def test_forward_plans_pick_the_vector_kernel_only_when_aligned(rows):
    checks = [r for r in rows if r["op"] == "vec_check"]
    assert [r["case"] for r in checks] == ["aligned", "x 4 bytes past a 16-byte boundary", "n % 4 != 0"]
    for r in checks:
        assert r["vec"] == r["expected"], r


@pytest.mark.parametrize(
    "op",
    [
        "batch_norm_forward",
        "instance_norm_forward",
        "group_norm_forward",
        "local_response_norm_forward",
        "weight_norm_forward",
        "layer_norm_forward (non-contiguous x)",
    ],
)
def test_other_ops_run_on_the_real_host_path(rows, op):
    # their launchers get the adapters' arrays; a call that raised would have failed the whole run
    r = _pick(rows, op, "smoke", "numba")
    assert r["calls"]["launch"] >= 1
    assert r["calls"]["sync"] == 0


def test_optimizer_groups_of_different_libraries_launch_on_their_own_streams(rows):
    got = [r for r in rows if r["op"] == "optim_check" and r["case"].startswith("launch streams of a")]
    assert len(got) == 2
    for r in got:
        assert r["distinct"], r  # else a launch on the wrong group's stream would pass unseen
        assert r["got"] == r["expected"], r
