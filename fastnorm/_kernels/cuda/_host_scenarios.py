"""The scenarios of the recording CUDA driver (``_recording.py``): what one call of each op does on the real
host path, counted, and the command line (``python -m fastnorm._kernels.cuda._recording``, or
``python -m fastnorm.bench --host-overhead``).

Each scenario is (op, case, inputs, expected stream, zero-argument call); ``run`` measures them after
``install()`` and returns the rows ``format_rows`` prints.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from functools import partial

from ._optim_host import group_stream_checks, optim_checks, optim_scenarios, table_checks, torch_param_checks
from ._recording import (
    ARGS,
    CATEGORIES,
    COUNTS,
    CUPY_STREAM,
    LAUNCHES,
    TORCH_STREAM,
    fake_cuda_tensor,
    fake_cuda_tensor_type,
    install,
    install_fake_cupy,
    reset,
)
from ._row_host import row_call_checks


def cupy_scenarios(m: int = 4096, n: int = 1024):
    """LayerNorm forward on CuPy arrays (allocating and out=), and on torch x with CuPy weight/bias (ordered
    after CuPy's stream by an event wait on torch's stream)."""
    import numpy as np

    import fastnorm

    cp = install_fake_cupy()
    f32 = np.float32
    x, w, b = cp.empty((m, n), f32), cp.empty((n,), f32), cp.empty((n,), f32)
    out = (cp.empty((m, n), f32), cp.empty((m,), f32), cp.empty((m,), f32))
    T = fake_cuda_tensor_type()
    tx = fake_cuda_tensor(T, (m, n))
    return [
        ("layer_norm_forward", "allocating", "cupy", CUPY_STREAM, lambda: fastnorm.layer_norm_forward(x, w, b)),
        ("layer_norm_forward", "out=", "cupy", CUPY_STREAM, lambda: fastnorm.layer_norm_forward(x, w, b, out=out)),
        (
            "layer_norm_forward",
            "torch x, cupy weight/bias",
            "mixed",
            TORCH_STREAM,
            lambda: fastnorm.layer_norm_forward(tx, w, b),
        ),
    ]


# ------------------------------------------------------------------------------------------ scenarios
def _measure(fn, calls: int) -> tuple[float, float, dict, list]:
    """(CPU µs per call of this thread, wall µs per call, counts per call, launch streams)."""
    for _ in range(3):  # compile, fill the pool and the plan caches
        fn()
    reset()
    t0, w0 = time.thread_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    us = (time.thread_time() - t0) / calls * 1e6
    wall = (time.perf_counter() - w0) / calls * 1e6
    counts = {k: v / calls for k, v in sorted(COUNTS.items())}
    streams = sorted({s for _, s in LAUNCHES})
    counts["python calls"], counts["builtin calls"] = _call_count(fn)
    return us, wall, counts, streams


def _call_count(fn) -> tuple[int, int]:
    """Python-level and builtin (C) function calls made by one call of ``fn``: a host-cost measure that a
    loaded machine does not blur (the time figures are)."""
    py = c = 0

    def prof(frame, event, arg):
        nonlocal py, c
        if event == "call":
            py += 1
        elif event == "c_call":
            c += 1

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return py, c


def norm_scenarios(m: int = 4096, n: int = 1024, kinds=("numba", "torch"), torch_m: int = 256):
    """(op, case, inputs, expected stream, zero-argument call) for LayerNorm/RMSNorm fwd/bwd.

    Numba arrays come from the recording context (no memory behind them), at (m, n). The stand-in torch
    tensors hold real CPU memory, and outputs for them come from ``torch.empty`` on the CPU: they use
    (torch_m, n), small enough that those allocations stay cheap heap allocations, as torch's caching
    allocator's are on a GPU (the host path does not depend on the shape otherwise)."""
    import ml_dtypes
    import numpy as np
    from numba import cuda

    import fastnorm

    f32 = np.float32
    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(0)

    def numba_set():
        x = cuda.to_device(rng.standard_normal((m, n)).astype(f32))
        return dict(
            x=x,
            w=cuda.to_device(np.ones(n, f32)),
            b=cuda.to_device(np.zeros(n, f32)),
            dy=cuda.to_device(rng.standard_normal((m, n)).astype(f32)),
            new=lambda *s, dt=f32: cuda.device_array(s, dt),
        )

    def torch_set(m=torch_m):
        import torch

        T = fake_cuda_tensor_type()
        return dict(
            x=fake_cuda_tensor(T, (m, n)),
            w=fake_cuda_tensor(T, (n,)),
            b=fake_cuda_tensor(T, (n,)),
            dy=fake_cuda_tensor(T, (m, n)),
            new=lambda *s, dt=f32: fake_cuda_tensor(T, s, np.dtype(dt).name),
            wrap=lambda t: torch.Tensor._make_subclass(T, t) if isinstance(t, torch.Tensor) else t,
        )

    out = []
    for inputs, make, stream in (("numba", numba_set, 0), ("torch", torch_set, TORCH_STREAM)):
        if inputs not in kinds:
            continue
        a = make()
        x, w, b, dy, new = a["x"], a["w"], a["b"], a["dy"], a["new"]
        m = x.shape[0]
        wrap = a.get("wrap", lambda t: t)  # outputs for fake torch tensors are CPU tensors: say CUDA again
        mean, rstd = (wrap(t) for t in fastnorm.layer_norm_forward(x, w, b)[1:])
        rrstd = wrap(fastnorm.rms_norm_forward(x, w)[1])
        ln_out = (new(m, n), new(m), new(m))
        ln_bout = (new(m, n), new(n), new(n))
        rms_out = (new(m, n), new(m))
        rms_bout = (new(m, n), new(n))
        add_out, add_rms_out = (new(m, n), *ln_out), (new(m, n), *rms_out)  # (y, h, ...)
        xb, wb, bb, yb = new(m, n, dt=bf16), new(n, dt=bf16), new(n, dt=bf16), new(m, n, dt=bf16)
        F = fastnorm
        calls = [  # (op, case, call)
            ("layer_norm_forward", "allocating", partial(F.layer_norm_forward, x, w, b)),
            ("layer_norm_forward", "out=", partial(F.layer_norm_forward, x, w, b, out=ln_out)),
            ("layer_norm_backward", "allocating", partial(F.layer_norm_backward, dy, x, mean, rstd, w, b)),
            ("layer_norm_backward", "out=", partial(F.layer_norm_backward, dy, x, mean, rstd, w, b, out=ln_bout)),
            ("rms_norm_forward", "allocating", partial(F.rms_norm_forward, x, w)),
            ("rms_norm_forward", "out=", partial(F.rms_norm_forward, x, w, out=rms_out)),
            ("rms_norm_backward", "allocating", partial(F.rms_norm_backward, dy, x, rrstd, w)),
            ("rms_norm_backward", "out=", partial(F.rms_norm_backward, dy, x, rrstd, w, out=rms_bout)),
            ("add_layer_norm_forward", "allocating", partial(F.add_layer_norm_forward, x, dy, w, b)),
            ("add_layer_norm_forward", "out=", partial(F.add_layer_norm_forward, x, dy, w, b, out=add_out)),
            ("add_rms_norm_forward", "out=", partial(F.add_rms_norm_forward, x, dy, w, out=add_rms_out)),
            (
                "layer_norm_forward",
                "bfloat16 x and weight/bias, out=",
                partial(F.layer_norm_forward, xb, wb, bb, out=(yb, *ln_out[1:])),
            ),
            ("add_layer_norm_backward", "allocating", partial(F.add_layer_norm_backward, dy, dy, x, mean, rstd, w, b)),
            ("add_rms_norm_backward", "out=", partial(F.add_rms_norm_backward, dy, dy, x, rrstd, w, out=rms_bout)),
        ]
        out += [(op, case, inputs, stream, fn) for op, case, fn in calls]
    return out


def other_op_scenarios():
    """One call of each other op on Numba arrays (their launchers take the adapters' arrays through
    ``dev``): the real host path must run them; counts are reported, not asserted."""
    import numpy as np
    from numba import cuda

    import fastnorm

    f32 = np.float32
    x4 = cuda.device_array((4, 6, 5, 3), f32)
    c6 = cuda.device_array(6, f32)
    rm, rv = cuda.device_array(6, f32), cuda.device_array(6, f32)
    x2 = cuda.device_array((8, 16), f32)
    xs = cuda.device_array((8, 32), f32)[:, ::2]  # a strided view: gathered into a contiguous copy
    ops = [
        ("batch_norm_forward", lambda: fastnorm.batch_norm_forward(x4, c6, c6, rm, rv)),
        ("instance_norm_forward", lambda: fastnorm.instance_norm_forward(x4, c6, c6)),
        ("group_norm_forward", lambda: fastnorm.group_norm_forward(x4, 3, c6, c6)),
        ("local_response_norm_forward", lambda: fastnorm.local_response_norm_forward(x4, 3)),
        ("weight_norm_forward", lambda: fastnorm.weight_norm_forward(x2, cuda.device_array((8, 1), f32))),
        ("layer_norm_forward (non-contiguous x)", lambda: fastnorm.layer_norm_forward(xs, None, None)),
    ]
    return [(op, "smoke", "numba", 0, fn) for op, fn in ops] + half_scenarios()


def half_scenarios():
    """bfloat16 / float16 and the fused add + norm kernels on the real host path (Numba arrays and torch
    bfloat16 stand-in tensors): the uint16 launch plans, the parameter conversion (astype) and gradient
    rounding, a strided bfloat16 gather. Smoke calls: a call that raises fails the run; counts reported."""
    import ml_dtypes
    import numpy as np
    from numba import cuda

    import fastnorm
    import fastnorm._kernels.cuda as K

    bf, f32, f64 = np.dtype(ml_dtypes.bfloat16), np.float32, np.float64
    m, n = 8, 64
    out = []
    for dt in (bf, np.dtype(np.float16)):
        x, r, dy = (cuda.device_array((m, n), dt) for _ in range(3))
        w16, w32 = cuda.device_array(n, dt), cuda.device_array(n, f32)
        y, h, dx = (cuda.device_array((m, n), dt) for _ in range(3))
        mean, rstd = cuda.device_array(m, f32), cuda.device_array(m, f32)
        dw, db = cuda.device_array(n, f32), cuda.device_array(n, f32)
        pw, pb = cuda.device_array((4, n), f64), cuda.device_array((4, n), f64)
        e2 = cuda.device_array((0, 0), dt)
        nm = dt.name
        out += [
            (
                f"layer_norm fwd+bwd {nm} (16-bit params)",
                lambda x=x, w=w16, dy=dy: fastnorm.layer_norm_backward(
                    dy, x, *fastnorm.layer_norm_forward(x, w, w)[1:], w, w
                ),
            ),
            (
                f"rms_norm fwd {nm} (kernels, float32 weight)",
                lambda x=x, w=w32, y=y, rstd=rstd: K.rms_norm_forward(x, w, y, rstd, 1e-6, 1),
            ),
            (
                f"layer_norm bwd {nm} (kernels, float32 grads)",
                lambda a=(dy, x, mean, rstd, w32, dx, dw, db, pw, e2, pb, e2): K.layer_norm_backward(*a, 4),
            ),
            (
                f"add_layer_norm fwd {nm} (kernels)",
                lambda a=(x, r, w32, w32, y, h, mean, rstd): K.add_layer_norm_forward(*a, 1e-5, 1),
            ),
            (
                f"add_rms_norm bwd {nm} (kernels)",
                lambda a=(dy, dy, h, rstd, w32, dx, dw, pw, e2): K.add_rms_norm_backward(*a, 4),
            ),
            (f"batch_norm_forward {nm}", lambda x=x: fastnorm.batch_norm_forward(x.reshape(m, n, 1))),
        ]
    xs = cuda.device_array((m, 2 * n), bf)[:, ::2]
    out.append(("layer_norm_forward bfloat16 (non-contiguous x)", lambda: fastnorm.layer_norm_forward(xs)))
    rows = [(op, "smoke", "numba", 0, fn) for op, fn in out]

    # torch bfloat16 stand-in tensors: the adapters read torch's dtype (its interface refuses bfloat16)
    T = fake_cuda_tensor_type()
    tx, tr, tdy, ty, th, tdx = (fake_cuda_tensor(T, (m, n), "bfloat16") for _ in range(6))
    tw = fake_cuda_tensor(T, (n,), "float32")
    tw16 = fake_cuda_tensor(T, (n,), "bfloat16")
    tmean, trstd = fake_cuda_tensor(T, (m,)), fake_cuda_tensor(T, (m,))
    tdw, tpw = fake_cuda_tensor(T, (n,)), fake_cuda_tensor(T, (4, n), "float64")
    te = fake_cuda_tensor(T, (0,), "bfloat16")
    torch_ops = [
        (
            "add_layer_norm fwd bfloat16 torch (kernels)",
            lambda: K.add_layer_norm_forward(tx, tr, tw, tw, ty, th, tmean, trstd, 1e-5, 1),
        ),
        (
            "add_rms_norm bwd bfloat16 torch (kernels, no dh)",
            lambda: K.add_rms_norm_backward(tdy, te, th, trstd, tw, tdx, tdw, tpw, te, 4),
        ),
        (
            "layer_norm_forward bfloat16 torch (kernels, bf16 weight)",
            lambda: K.layer_norm_forward(tx, tw16, tw16, ty, tmean, trstd, 1e-5, 1),
        ),
    ]
    return rows + [(op, "smoke", "torch", TORCH_STREAM, fn) for op, fn in torch_ops]


def _reference(calls: int) -> dict:
    """A fixed host workload measured the same way, to scale the figures of a loaded or slow machine: one
    ``torch.empty(0)`` on the CPU (about 1 µs on a current server core)."""
    import torch

    us, wall, _, _ = _measure(lambda: torch.empty(0), calls)
    return {
        "op": "reference",
        "case": "torch.empty(0) on the CPU",
        "inputs": "-",
        "us_per_call": round(us, 3),
        "wall_us_per_call": round(wall, 3),
        "calls": {c: 0.0 for c in CATEGORIES},
        "streams": [],
        "expected_stream": None,
        "counts": {},
    }


def _norm(v):
    return (type(v).__name__, v.value) if isinstance(v, ctypes._SimpleCData) else ("int", int(v))


def _groups(k, args) -> list:
    """``args`` split per kernel parameter (arrays: meminfo, parent, nitems, itemsize, data, shape, strides),
    with the shape and strides of zero-size arrays dropped (the kernels never read them)."""
    from numba.cuda import types

    out, i = [], 0
    for ty in k._k.argument_types:
        if isinstance(ty, types.Array):
            g = [_norm(v) for v in args[i : i + 5 + 2 * ty.ndim]]
            if g[2][1] == 0:
                g = g[:5]
            out.append(g)
            i += 5 + 2 * ty.ndim
        else:
            out.append([_norm(args[i])])
            i += 1
    assert i == len(args), (i, len(args))
    return out


def vec_check(m: int = 64, n: int = 256) -> list[dict]:
    """Which LayerNorm forward kernel the launch plans pick on the real host path: the 128-bit form for
    float32 rows of a multiple of 4 with every array 16-byte aligned, the scalar form otherwise. One
    ``{"case", "vec", "expected"}`` per case (``vec``: the ``vec`` flag of each forward kernel asked for)."""
    import numpy as np
    from numba import cuda

    import fastnorm

    from . import layer_norm as L

    install()
    f32 = np.float32
    base = cuda.device_array(m * n + 4, f32)
    cases = [
        ("aligned", cuda.device_array((m, n), f32), True),
        ("x 4 bytes past a 16-byte boundary", base[1 : 1 + m * n].reshape(m, n), False),
        ("n % 4 != 0", cuda.device_array((m, n + 2), f32), False),
    ]
    rows, get = [], L._get
    for case, x, want in cases:
        picked = []

        def spy(*a, picked=picked, **k):
            picked.append(bool(k.get("vec", False)))
            return get(*a, **k)

        L._get, saved = spy, dict(L._plans)
        L._plans.clear()
        try:
            w, b = cuda.device_array(x.shape[1], f32), cuda.device_array(x.shape[1], f32)
            fastnorm.layer_norm_forward(x, w, b)
        finally:
            L._get = get
            L._plans.update(saved)
        rows.append({"op": "vec_check", "case": case, "vec": picked, "expected": [want]})
    return rows


def packing_check(m: int = 37, n: int = 300) -> list[dict]:
    """For each LayerNorm/RMSNorm launcher: the arguments the launch plan passes, compared with what
    numba-cuda's own launch path (``_Kernel.launch`` -> ``_prepare_args``) builds for the same arrays and
    the same kernel. Returns one ``{"launcher", "launches", "equal", "first_difference"}`` per case."""
    import numpy as np
    from numba import cuda

    from . import layer_norm as L

    install()
    f32 = np.float32
    x, dy = cuda.device_array((m, n), f32), cuda.device_array((m, n), f32)
    w, b = cuda.device_array(n, f32), cuda.device_array(n, f32)
    y, dx = cuda.device_array((m, n), f32), cuda.device_array((m, n), f32)
    mean, rstd = cuda.device_array(m, f32), cuda.device_array(m, f32)
    dw, db = cuda.device_array(n, f32), cuda.device_array(n, f32)
    pw, pb = cuda.device_array((8, n), np.float64), cuda.device_array((8, n), np.float64)
    e = L.empty_device
    z1, z64 = e((0,), f32), e((0, 0), np.float64)
    cases = [
        (
            "layer_norm_forward",
            lambda: L.layer_norm_forward(x, w, b, y, mean, rstd, 1e-5, 1),
            lambda: L._forward(x, w, b, y, mean, rstd, 1e-5, False),
        ),
        (
            "layer_norm_forward (no weight, bias)",
            lambda: L.layer_norm_forward(x, z1, z1, y, mean, rstd, 1e-5, 1),
            lambda: L._forward(x, z1, z1, y, mean, rstd, 1e-5, False),
        ),
        (
            "rms_norm_forward",
            lambda: L.rms_norm_forward(x, w, y, rstd, 1e-6, 1),
            lambda: L._forward(x, w, z1, y, z1, rstd, 1e-6, True),
        ),
        (
            "layer_norm_backward",
            lambda: L.layer_norm_backward(dy, x, mean, rstd, w, dx, dw, db, pw, None, pb, None, 8),
            lambda: L._backward(dy, x, mean, rstd, w, dx, dw, db, pw, pb, False),
        ),
        (
            "layer_norm_backward (no dbias)",
            lambda: L.layer_norm_backward(dy, x, mean, rstd, w, dx, dw, z1, pw, None, z64, None, 8),
            lambda: L._backward(dy, x, mean, rstd, w, dx, dw, z1, pw, z64, False),
        ),
        (
            "rms_norm_backward",
            lambda: L.rms_norm_backward(dy, x, rstd, w, dx, dw, pw, None, 8),
            lambda: L._backward(dy, x, z1, rstd, w, dx, dw, z1, pw, z64, True),
        ),
    ]
    rows = []
    for name, new, old in cases:
        reset()
        new()
        got, names_new = list(ARGS), [k for k, _ in LAUNCHES]
        reset()
        old()
        want, names_old = list(ARGS), [k for k, _ in LAUNCHES]
        kernels = _kernels_by_name()
        diff = None
        if names_new != names_old or len(got) != len(want):
            diff = f"launches {names_new} vs {names_old}"
        else:
            for kn, a, b2 in zip(names_new, got, want, strict=True):
                ga, gb = _groups(kernels[kn], a), _groups(kernels[kn], b2)
                if ga != gb:
                    i = next(j for j, (p, q) in enumerate(zip(ga, gb, strict=True)) if p != q)
                    diff = f"{kn} parameter {i}: {ga[i]} vs {gb[i]}"
                    break
        rows.append({"launcher": name, "launches": len(got), "equal": diff is None, "first_difference": diff})
    return rows


def _kernels_by_name() -> dict:
    from . import _common

    out = {}
    for k in _common._cache.values():
        if getattr(k, "_k", None) is not None:
            out[k._k._codelibrary.get_cufunc().name] = k
    return out


def run(calls: int = 200, optim_calls: int = 20, which: str = "all", kinds=("numba", "torch", "cupy")) -> list[dict]:
    """Rows ``{"op", "case", "inputs", "us_per_call", "wall_us_per_call", "calls": {alloc, free, copy,
    memset, sync, launch}, "streams", "expected_stream", "counts"}`` for every scenario.

    ``us_per_call`` is the host CPU time of the calling thread per call (``time.thread_time``): on a
    shared machine the wall-clock figure also counts the time other processes held the core."""
    install()
    rows = []
    scen = []
    if which in ("all", "norms"):
        scen += [(s, calls) for s in norm_scenarios(kinds=kinds)]
    if which in ("all", "optim"):
        scen += [(s, optim_calls) for s in optim_scenarios(kinds=kinds)]
    if which in ("all", "other"):
        scen += [(s, 2) for s in other_op_scenarios()]
    rows.append(_reference(calls))
    if which in ("all", "norms") and "cupy" in kinds:
        scen.append(("cupy", calls))  # last, built only then: the stand-in cupy module stays installed
    for item, n in scen:
        if item == "cupy":
            for s in cupy_scenarios():
                rows.append(_row(s, n))
            continue
        rows.append(_row(item, n))
    return rows


def _row(scenario, n: int) -> dict:
    op, case, inputs, stream, fn = scenario
    us, wall, counts, streams = _measure(fn, n)
    return {
        "op": op,
        "case": case,
        "inputs": inputs,
        "us_per_call": round(us, 2),
        "wall_us_per_call": round(wall, 2),
        "calls": {c: counts.get(c, 0.0) for c in CATEGORIES},
        "streams": streams,
        "expected_stream": stream,
        "counts": counts,
    }


def format_rows(rows: list[dict]) -> str:
    lines = [
        f"{'op':<22} {'case':<36} {'inputs':<7} {'us/call':>8}  "
        + " ".join(f"{c:>6}" for c in CATEGORIES)
        + "  dicts  py-calls C-calls"
    ]
    for r in rows:
        if r.get("op") == "packing_check":
            lines.append(f"packing_check {r['launcher']:<40} equal={r['equal']} {r['first_difference'] or ''}")
            continue
        if r.get("op") == "optim_check":
            lines.append(f"optim_check {r['case']:<40} {r['got']} (expected {r['expected']})")
            continue
        if r.get("op") == "row_call_check":
            lines.append(
                f"row_call_check {r['case']:<50} fast={r['fast']} (expected {r['expected_fast']}) "
                f"same={r['same']} {r['difference'] or ''} {r['outcome'][:60]}"
            )
            continue
        if r.get("op") == "vec_check":
            lines.append(f"vec_check {r['case']:<40} vec={r['vec']} expected={r['expected']}")
            continue
        c = r["counts"]
        dicts = sum(v for k, v in c.items() if k.startswith("interface dict"))
        lines.append(
            f"{r['op']:<22} {r['case']:<36} {r['inputs']:<7} {r['us_per_call']:>8.1f}  "
            + " ".join(f"{r['calls'][k]:>6.2f}" for k in CATEGORIES)
            + f"  {dicts:>5.1f}"
            + f"  {c.get('python calls', 0):>5.0f} {c.get('builtin calls', 0):>5.0f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--optim-calls", type=int, default=20)
    ap.add_argument("--which", choices=["all", "norms", "optim", "other"], default="all")
    ap.add_argument("--inputs", nargs="+", choices=["numba", "torch", "cupy"], default=["numba", "torch", "cupy"])
    ap.add_argument("--json", metavar="FILE", help="write the rows as JSON ('-': stdout)")
    ap.add_argument(
        "--packing",
        action="store_true",
        help="also compare launch-plan arguments with numba's, check the vector-kernel choice and the optimizer",
    )
    args = ap.parse_args(argv)
    rows = run(args.calls, args.optim_calls, args.which, tuple(args.inputs))
    if args.packing:
        rows += [dict(r, op="packing_check") for r in packing_check()] + vec_check() + optim_checks()
        rows += row_call_checks() + table_checks() + torch_param_checks() + group_stream_checks()
    emit(rows, args.json, format_rows)
    return 0


def emit(rows, path: str | None, text) -> None:
    """Rows out: as JSON on stdout when ``path`` is '-', else ``text(rows)`` printed and, with a ``path``,
    the JSON written there."""
    if path == "-":
        json.dump(rows, sys.stdout)
        return
    print(text(rows))
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)
