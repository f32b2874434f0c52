"""Multi-process tests on torch.distributed (gloo on the CPU, 127.0.0.1 only): fastnorm.torch SyncBatchNorm
against single-process BatchNorm on the concatenated batch, collectives per step, mismatch errors on every
rank, and fastnorm.torch.optim optimizers under DDP, ZeroRedundancyOptimizer and FSDP2 (fully_shard).

Each world size (2 and 3 processes) is one group of spawned processes that runs every scenario and writes
its results to a file; the tests below compare them with single-process runs made here. Every spawn has a
deadline: a hang fails the test (the processes are killed). NCCL is not exercised (no multi-GPU machine).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

from ._util import assert_close_to_ref, assert_matches_reference  # noqa: E402

DEADLINE_S = float(os.environ.get("FASTNORM_DIST_TIMEOUT", "240"))
SIZES = {2: (3, 5), 3: (2, 0, 4)}  # per-rank batch sizes (world 3 has a rank with an empty batch)
C, HW = 4, 3
STEPS = 3


# ------------------------------------------------------------------------------------------- data
def _data(n_total: int, dtype=np.float64):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n_total, C, HW, HW)) * 2.0 + 3.0
    g = rng.normal(size=(n_total, C, HW, HW))
    return x.astype(dtype), g.astype(dtype)


def _img_data(n_total: int):
    rng = np.random.default_rng(11)
    return rng.normal(size=(n_total, 3, 5, 5)).astype(np.float32), rng.normal(size=(n_total, 3)).astype(np.float32)


def _lo_hi(rank: int, sizes) -> tuple[int, int]:
    lo = sum(sizes[:rank])
    return lo, lo + sizes[rank]


def _local_batch(rank: int, sizes, data_fn, dtype=torch.float32):
    """This rank's rows (x, t) of the global batch from ``data_fn``, and the global batch size."""
    n = sum(sizes)
    lo, hi = _lo_hi(rank, sizes)
    x_all, t_all = data_fn(n)
    return torch.tensor(x_all[lo:hi], dtype=dtype), torch.tensor(t_all[lo:hi], dtype=dtype), n


def _train(model, opt, x, t, scale):
    """STEPS optimizer steps on the loss scale * sum((model(x) - t)^2)."""
    for _ in range(STEPS):
        opt.zero_grad()
        loss = ((model(x) - t) ** 2).sum() * scale
        loss.backward()
        opt.step()


def _convnet(bn_cls, dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        bn_cls(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 5 * 5, 3),
    ).to(dtype)


def _mlp(dtype=torch.float32):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)


def _mlp_data(n_total: int):
    rng = np.random.default_rng(5)
    return rng.normal(size=(n_total, 6)).astype(np.float32), rng.normal(size=(n_total, 3)).astype(np.float32)


OPT_KW = {
    "Adam": {"lr": 0.05, "weight_decay": 0.01},
    "AdamW": {"lr": 0.05, "weight_decay": 0.1},
    "SGD": {"lr": 0.1, "momentum": 0.9, "nesterov": True},
}


# ------------------------------------------------------------------------------------------- worker
class _Counter:
    """Counts the collectives this process makes, by wrapping torch.distributed's functions."""

    NAMES = ("all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce", "broadcast", "reduce_scatter")

    def __init__(self):
        self.calls: list[str] = []
        self.originals = {}
        for name in self.NAMES:
            fn = getattr(dist, name, None)
            if fn is not None:
                self.originals[name] = fn
                setattr(dist, name, self._wrap(name, fn))

    def restore(self):
        for name, fn in self.originals.items():
            setattr(dist, name, fn)

    def _wrap(self, name, fn):
        def wrapped(*args, **kwargs):
            self.calls.append(name)
            return fn(*args, **kwargs)

        return wrapped

    def take(self) -> list[str]:
        out, self.calls = self.calls, []
        return out


def _sync_bn_scenario(rank, world, counter, channels_last=False, momentum=0.3, dtype=torch.float32, affine=True):
    from fastnorm.torch.distributed import SyncBatchNorm

    sizes = SIZES[world]
    lo, hi = _lo_hi(rank, sizes)
    x_all, g_all = _data(sum(sizes))
    torch.manual_seed(3)
    m = SyncBatchNorm(C, momentum=momentum, eps=1e-4, affine=affine).to(dtype)
    if affine:
        with torch.no_grad():
            m.weight.copy_(torch.linspace(0.5, 2.0, C))
            m.bias.copy_(torch.linspace(-1.0, 1.0, C))
    res = {"fwd_calls": [], "bwd_calls": [], "y": [], "dx": [], "dw": [], "db": []}
    for _step in range(2):
        x = torch.tensor(x_all[lo:hi], dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        g = torch.tensor(g_all[lo:hi], dtype=dtype)
        counter.take()
        y = m(x)
        res["fwd_calls"].append(counter.take())
        (y * g).sum().backward()
        res["bwd_calls"].append(counter.take())
        res["y"].append(y.detach().numpy().copy())
        res["dx"].append(x.grad.numpy().copy())
        if affine:
            res["dw"].append(m.weight.grad.numpy().copy())
            res["db"].append(m.bias.grad.numpy().copy())
            m.weight.grad = m.bias.grad = None
        res["y_channels_last"] = bool(y.is_contiguous(memory_format=torch.channels_last)) if channels_last else None
    res["running_mean"] = m.running_mean.numpy().copy()
    res["running_var"] = m.running_var.numpy().copy()
    res["num_batches_tracked"] = int(m.num_batches_tracked)
    m.eval()
    counter.take()
    x = torch.tensor(x_all[lo:hi], dtype=dtype)
    res["eval_y"] = m(x).detach().numpy().copy()
    res["eval_calls"] = counter.take()
    return res


def _mismatch_channels(rank, world, counter):
    from fastnorm.torch.distributed import SyncBatchNorm

    m = SyncBatchNorm(C)
    x = torch.randn(2, C + 1 if rank == world - 1 else C, 3)
    try:
        m(x)
    except RuntimeError as e:
        return str(e)
    return "no error"


def _mismatch_phase(rank, world, counter):
    """Rank 0 runs a second forward while the others run the backward of the first one."""
    from fastnorm.torch.distributed import SyncBatchNorm

    m = SyncBatchNorm(C)
    x = torch.randn(3, C, 2, requires_grad=True)
    y = m(x)
    try:
        if rank == 0:
            m(x)
        else:
            y.sum().backward()
    except RuntimeError as e:
        return str(e)
    return "no error"


def _convert(rank, world, counter):
    from fastnorm.torch.distributed import SyncBatchNorm

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4, momentum=None), torch.nn.ReLU())
    w = net[1].weight
    conv = SyncBatchNorm.convert_sync_batchnorm(net)
    bn = conv[1]
    return {
        "type": type(bn).__name__,
        "module": type(bn).__module__,
        "is_batch_norm": isinstance(bn, torch.nn.modules.batchnorm._BatchNorm),
        "shares_weight": bn.weight is w,
        "momentum": bn.momentum,
        "keys": sorted(conv.state_dict().keys()),
    }


def _ddp_convnet(rank, world, counter):
    """DDP model with SyncBatchNorm, fastnorm AdamW; loss scaled so the DDP average is the global mean loss."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    import fastnorm.torch.optim as fo
    from fastnorm.torch.distributed import SyncBatchNorm

    x, t, n = _local_batch(rank, SIZES[world], _img_data)
    model = SyncBatchNorm.convert_sync_batchnorm(_convnet(torch.nn.BatchNorm2d))
    ddp = DDP(model)
    _train(ddp, fo.AdamW(ddp.parameters(), **OPT_KW["AdamW"]), x, t, world / n)
    return {
        "params": [p.detach().numpy().copy() for p in model.parameters()],
        "running_mean": model[1].running_mean.numpy().copy(),
        "running_var": model[1].running_var.numpy().copy(),
    }


def _mlp_run(rank, world, opt_name, fastnorm_opt, mode):
    """STEPS steps of the MLP under DDP with a plain or ZeRO optimizer."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    import fastnorm.torch.optim as fo

    x, t, n = _local_batch(rank, (4, 6, 2)[:world], _mlp_data)
    model = _mlp()
    ddp = DDP(model)
    cls = getattr(fo if fastnorm_opt else torch.optim, opt_name)
    if mode == "zero":
        opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=cls, **OPT_KW[opt_name])
    else:
        opt = cls(ddp.parameters(), **OPT_KW[opt_name])
    _train(ddp, opt, x, t, world / n)
    out = {"params": [p.detach().numpy().copy() for p in model.parameters()]}
    if mode == "zero":
        out["local_state"] = len(opt.optim.state)
        opt.consolidate_state_dict(to=0)
        if rank == 0:
            sd = opt.state_dict()
            out["state"] = {
                k: {n: v.numpy().copy() for n, v in s.items() if torch.is_tensor(v) and v.dim() > 0}
                for k, s in sd["state"].items()
            }
    return out


def _fsdp2_run(rank, world, opt_name, fastnorm_opt):
    from torch.distributed.fsdp import fully_shard

    import fastnorm.torch.optim as fo

    x, t, n = _local_batch(rank, (4, 6, 2)[:world], _mlp_data)
    model = _mlp()
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    cls = getattr(fo if fastnorm_opt else torch.optim, opt_name)
    _train(model, cls(model.parameters(), **OPT_KW[opt_name]), x, t, world / n)
    return {"params": [p.full_tensor().detach().numpy().copy() for p in model.parameters()]}


def _scenarios(world):
    s = {
        "sync_bn": lambda r, w, c: _sync_bn_scenario(r, w, c),
        "sync_bn_f64_cumulative": lambda r, w, c: _sync_bn_scenario(r, w, c, momentum=None, dtype=torch.float64),
        "sync_bn_channels_last": lambda r, w, c: _sync_bn_scenario(r, w, c, channels_last=True),
        "sync_bn_no_affine": lambda r, w, c: _sync_bn_scenario(r, w, c, affine=False),
        "mismatch_channels": _mismatch_channels,
        "mismatch_phase": _mismatch_phase,
        "convert": _convert,
        "ddp_convnet": _ddp_convnet,
    }
    if world == 2:
        for opt in ("Adam", "AdamW", "SGD"):
            for lib in ("fastnorm", "torch"):
                s[f"zero_{opt}_{lib}"] = lambda r, w, c, o=opt, f=lib == "fastnorm": _mlp_run(r, w, o, f, "zero")
            s[f"ddp_{opt}_fastnorm"] = lambda r, w, c, o=opt: _mlp_run(r, w, o, True, "ddp")
        for lib in ("fastnorm", "torch"):
            s[f"fsdp2_Adam_{lib}"] = lambda r, w, c, f=lib == "fastnorm": _fsdp2_run(r, w, "Adam", f)
    return s


def _worker(rank: int, world: int, port: int, outdir: str) -> None:
    import datetime

    torch.set_num_threads(1)
    import fastnorm

    fastnorm.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=DEADLINE_S),
    )
    counter = _Counter()
    results = {}
    for name, fn in _scenarios(world).items():
        try:
            results[name] = ("ok", fn(rank, world, counter))
        except Exception as e:  # reported by the test that reads this scenario
            results[name] = ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        counter.take()
        dist.barrier()
    torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
    # The results are on disk: once every rank has saved, leave without gloo's teardown, which on some
    # machines aborts both ranks ("terminate called without an active exception": seen with torch 2.13 on an
    # AMD Zen 5 VM in one CI run of two, in destroy_process_group after all collectives had completed).
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world: int, outdir: str) -> list[dict]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, outdir), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    end = time.monotonic() + DEADLINE_S
    for p in procs:
        p.join(max(0.1, end - time.monotonic()))
    alive = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    if alive:
        pytest.fail(f"{world} processes: ranks {alive} still running after {DEADLINE_S:.0f} s (hang); killed")
    codes = [p.exitcode for p in procs]
    if any(codes):
        pytest.fail(f"{world} processes exited with codes {codes}")
    return [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


_cache: dict = {}


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"world{w}")
def world(request, tmp_path_factory):
    w = request.param
    if w not in _cache:
        _cache[w] = _spawn(w, str(tmp_path_factory.mktemp(f"dist{w}")))
    return w, _cache[w]


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    """The 2-process run (the optimizer scenarios run with 2 processes only)."""
    if 2 not in _cache:
        _cache[2] = _spawn(2, str(tmp_path_factory.mktemp("dist2")))
    return 2, _cache[2]


def _ok(results, name):
    out = []
    for rank, res in enumerate(results):
        status, value = res[name]
        assert status == "ok", f"rank {rank}, scenario {name}: {value}"
        out.append(value)
    return out


# ------------------------------------------------------------------------------------------- references
def _bn_reference(world, momentum, dtype, affine=True):
    """Single-process torch BatchNorm2d on the concatenated batch: float64 reference and `dtype` run."""
    sizes = SIZES[world]
    x_all, g_all = _data(sum(sizes))
    out = {}
    for key, dt in (("ref", torch.float64), ("lowp", dtype)):
        m = torch.nn.BatchNorm2d(C, momentum=momentum, eps=1e-4, affine=affine).to(dt)
        if affine:
            with torch.no_grad():
                m.weight.copy_(torch.linspace(0.5, 2.0, C))
                m.bias.copy_(torch.linspace(-1.0, 1.0, C))
        r = {"y": [], "dx": [], "dw": [], "db": []}
        for _ in range(2):
            x = torch.tensor(x_all, dtype=dt, requires_grad=True)
            y = m(x)
            (y * torch.tensor(g_all, dtype=dt)).sum().backward()
            r["y"].append(y.detach().numpy())
            r["dx"].append(x.grad.numpy())
            if affine:
                r["dw"].append(m.weight.grad.numpy().copy())
                r["db"].append(m.bias.grad.numpy().copy())
                m.weight.grad = m.bias.grad = None
        r["running_mean"], r["running_var"] = m.running_mean.numpy(), m.running_var.numpy()
        m.eval()
        r["eval_y"] = m(torch.tensor(x_all, dtype=dt)).detach().numpy()
        out[key] = r
    return out


@pytest.mark.parametrize(
    ("scenario", "momentum", "dtype", "affine"),
    [
        ("sync_bn", 0.3, torch.float32, True),
        ("sync_bn_f64_cumulative", None, torch.float64, True),
        ("sync_bn_channels_last", 0.3, torch.float32, True),
        ("sync_bn_no_affine", 0.3, torch.float32, False),
    ],
)
def test_sync_batch_norm_equals_batch_norm_on_concatenated_batch(world, scenario, momentum, dtype, affine):
    w, results = world
    got = _ok(results, scenario)
    ref = _bn_reference(w, momentum, dtype, affine)
    for step in range(2):
        for key in ("y", "dx"):
            cat = np.concatenate([g[key][step] for g in got])
            assert_matches_reference(cat, ref["ref"][key][step], ref["lowp"][key][step], name=f"{key} step {step}")
        for key in ("dw", "db") if affine else ():  # each rank's share, summed over the ranks (as DDP does)
            total = np.sum([g[key][step] for g in got], axis=0)
            assert_matches_reference(total, ref["ref"][key][step], ref["lowp"][key][step], name=f"{key} step {step}")
    for rank_res in got:
        for key in ("running_mean", "running_var", "eval_y"):
            if key == "eval_y":
                continue
            assert_matches_reference(rank_res[key], ref["ref"][key], ref["lowp"][key], name=key)
        assert rank_res["num_batches_tracked"] == 2
    cat = np.concatenate([g["eval_y"] for g in got])
    assert_matches_reference(cat, ref["ref"]["eval_y"], ref["lowp"]["eval_y"], name="eval y")
    if scenario == "sync_bn_channels_last":
        assert all(g["y_channels_last"] for g in got if g["y"][0].shape[0] > 0)


def test_one_collective_in_forward_and_one_in_backward_none_in_eval(world):
    _, results = world
    for rank, res in enumerate(_ok(results, "sync_bn")):
        for step in range(2):
            assert len(res["fwd_calls"][step]) == 1, (rank, res["fwd_calls"])
            assert len(res["bwd_calls"][step]) == 1, (rank, res["bwd_calls"])
        assert res["eval_calls"] == [], (rank, res["eval_calls"])


def test_channel_mismatch_raises_on_every_rank(world):
    w, results = world
    for msg in _ok(results, "mismatch_channels"):
        assert f"rank {w - 1} has an input with {C + 1} channels, expected num_features={C}" in msg


def test_phase_mismatch_raises_on_every_rank(world):
    _, results = world
    for msg in _ok(results, "mismatch_phase"):
        assert "processes are in different phases: rank 0 in the forward, rank 1 in the backward" in msg


def test_convert_sync_batchnorm(world):
    _, results = world
    res = _ok(results, "convert")[0]
    assert res["type"] == "SyncBatchNorm"
    assert res["module"] == "fastnorm.torch.distributed"
    assert res["is_batch_norm"]
    assert res["shares_weight"]
    assert res["momentum"] is None
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    assert res["keys"] == sorted(ref.state_dict().keys())


def _single_process(model_fn, data_fn, sizes, opt_cls, kw, dtype, bn=False):
    x, t, n = _local_batch(0, (sum(sizes),), data_fn, dtype)
    model = model_fn(dtype)
    opt = opt_cls(model.parameters(), **kw)
    _train(model, opt, x, t, 1 / n)
    out = {"params": [p.detach().numpy().copy() for p in model.parameters()]}
    out["state"] = {
        k: {n: v.numpy().copy() for n, v in st.items() if torch.is_tensor(v) and v.dim() > 0}
        for k, st in opt.state_dict()["state"].items()
    }
    if bn:
        out["running_mean"], out["running_var"] = model[1].running_mean.numpy(), model[1].running_var.numpy()
    return out


def _assert_params(got, ref, lowp, what):
    for i, (g, r, lp) in enumerate(zip(got, ref, lowp, strict=True)):
        assert_matches_reference(g, r, lp, name=f"{what}: parameter {i}")


def test_ddp_sync_batch_norm_fused_adamw_matches_single_process(world):
    w, results = world
    got = _ok(results, "ddp_convnet")

    def convnet(dtype):
        return _convnet(torch.nn.BatchNorm2d, dtype)

    ref = _single_process(convnet, _img_data, SIZES[w], torch.optim.AdamW, OPT_KW["AdamW"], torch.float64, bn=True)
    lowp = _single_process(convnet, _img_data, SIZES[w], torch.optim.AdamW, OPT_KW["AdamW"], torch.float32, bn=True)
    for rank, res in enumerate(got):
        _assert_params(res["params"], ref["params"], lowp["params"], f"rank {rank}")
        for key in ("running_mean", "running_var"):
            assert_matches_reference(res[key], ref[key], lowp[key], name=f"rank {rank} {key}")


def _mlp_refs(world, opt_name):
    sizes = (4, 6, 2)[:world]
    cls = getattr(torch.optim, opt_name)
    kw = OPT_KW[opt_name]
    ref = _single_process(_mlp, _mlp_data, sizes, cls, kw, torch.float64)
    lowp = _single_process(_mlp, _mlp_data, sizes, cls, kw, torch.float32)
    return ref, lowp


@pytest.mark.parametrize("opt_name", ["Adam", "AdamW", "SGD"])
def test_zero_redundancy_optimizer_with_fastnorm_optimizer(world2, opt_name):
    w, results = world2
    got = _ok(results, f"zero_{opt_name}_fastnorm")
    theirs = _ok(results, f"zero_{opt_name}_torch")
    ref, lowp = _mlp_refs(w, opt_name)
    for rank in range(w):
        _assert_params(got[rank]["params"], ref["params"], lowp["params"], f"rank {rank} ZeRO fastnorm")
        _assert_params(theirs[rank]["params"], ref["params"], lowp["params"], f"rank {rank} ZeRO torch")
        assert got[rank]["local_state"] == theirs[rank]["local_state"] < 4  # state is sharded
    sd, sd_torch, sd64 = got[0]["state"], theirs[0]["state"], ref["state"]
    assert sd.keys() == sd_torch.keys() == sd64.keys()
    assert len(sd) == 4
    for k in sd:
        assert sd[k].keys() == sd_torch[k].keys() == sd64[k].keys()
        for name in sd[k]:  # DESIGN.md's criterion: torch's ZeRO state is the other, float64 the reference
            assert_close_to_ref(sd[k][name], sd_torch[k][name], sd64[k][name], name=f"state {k}.{name}")


@pytest.mark.parametrize("opt_name", ["Adam", "AdamW", "SGD"])
def test_ddp_with_fastnorm_optimizer(world2, opt_name):
    w, results = world2
    got = _ok(results, f"ddp_{opt_name}_fastnorm")
    ref, lowp = _mlp_refs(w, opt_name)
    for rank in range(w):
        _assert_params(got[rank]["params"], ref["params"], lowp["params"], f"rank {rank} DDP")


def test_fsdp2_fully_shard_works_on_gloo_cpu_with_torch_optimizer(world2):
    """Baseline: FSDP2 (fully_shard) trains on gloo/CPU in this torch, with torch's Adam."""
    w, results = world2
    theirs = _ok(results, "fsdp2_Adam_torch")
    ref, lowp = _mlp_refs(w, "Adam")
    for rank in range(w):
        _assert_params(theirs[rank]["params"], ref["params"], lowp["params"], f"rank {rank} FSDP2 torch Adam")


def test_fsdp2_fully_shard_with_fastnorm_optimizer(world2):
    w, results = world2
    ref, lowp = _mlp_refs(w, "Adam")
    got = _ok(results, "fsdp2_Adam_fastnorm")
    for rank in range(w):
        _assert_params(got[rank]["params"], ref["params"], lowp["params"], f"rank {rank} FSDP2 fastnorm Adam")


def test_ddp_example_trains_on_two_processes(tmp_path):
    """examples/ddp_train.py --quick under torchrun (2 gloo processes): the loss falls, the held-out accuracy
    is well above chance, and both processes end with identical parameters and running statistics."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "metrics.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(root / "examples" / "ddp_train.py"), "--quick", "--json", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = json.loads(out.read_text())
    assert m["world_size"] == 2
    assert m["sync_bn"]
    assert m["epoch_losses"][-1] < 0.6 * m["epoch_losses"][0], m["epoch_losses"]
    assert m["test_accuracy"] > 0.5, m["test_accuracy"]
    assert m["max_param_diff_to_rank0"] == 0.0


@pytest.mark.parametrize("group", ["none", "world1"])
@pytest.mark.parametrize("momentum", [0.2, None])
def test_without_process_group_is_plain_batch_norm(group, momentum):
    """No process group (or a group of one process): plain BatchNorm, no collective, torch's semantics."""
    from fastnorm.torch.distributed import SyncBatchNorm

    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    if group == "world1":
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    counter = _Counter()
    try:
        x_all, g_all = _data(6, np.float64)
        mods = [SyncBatchNorm(C, momentum=momentum).double(), torch.nn.BatchNorm2d(C, momentum=momentum).double()]
        outs = []
        for m in mods:
            r = []
            for _ in range(2):
                x = torch.tensor(x_all, requires_grad=True)
                y = m(x)
                (y * torch.tensor(g_all)).sum().backward()
                r += [y.detach(), x.grad, m.weight.grad.clone(), m.bias.grad.clone()]
                m.weight.grad = m.bias.grad = None
            m.eval()
            r += [m(torch.tensor(x_all)).detach(), m.running_mean.clone(), m.running_var.clone()]
            outs.append(r)
        for i, (a, b) in enumerate(zip(*outs, strict=True)):  # float64: torch's result bounds by the slack
            assert_close_to_ref(a, b, b, name=f"output {i}", ulps=64)
        assert counter.take() == []
    finally:
        counter.restore()
        if group == "world1":
            dist.destroy_process_group()
