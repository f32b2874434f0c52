"""The optimizer's scenarios for the recording CUDA driver (``_recording.py``, ``_host_scenarios.py``): steps
measured per call, and checks that gradients are never kept alive by the host path's caches and that a
bad gradient gets the CPU backend's error.
"""

from __future__ import annotations

import gc
from itertools import product

import numpy as np

from ._recording import ARGS, COUNTS, TORCH_STREAM, fake_cuda_tensor, fake_cuda_tensor_type, install, reset


def optim_scenarios(n_tensors: int = 200, total: int = 2_000_000, kinds=("numba", "torch")):
    """(op, case, inputs, expected stream, call) for Adam / AdamW / SGD steps over ``n_tensors``, on Numba
    arrays and (``"torch"`` in ``kinds``) stand-in torch CUDA tensors (small: their memory is real).

    The stand-ins are a ``torch.Tensor`` subclass, and torch's C attribute getters (``shape``, ``data_ptr``,
    ``is_contiguous``...) look up a subclass's ``__torch_function__`` on every read: 1.6-1.9x what the same
    reads cost on plain tensors (200 tensors, this VM). Real CUDA tensors are plain ``torch.Tensor``s, so the
    torch steps run under ``torch._C.DisableTorchFunctionSubclass()``, which skips that look-up and brings the
    stand-ins' reads to plain tensors' cost (nothing in the step depends on ``__torch_function__``)."""
    import contextlib

    import numpy as np
    from numba import cuda

    import fastnorm.optim as O

    rng = np.random.default_rng(0)
    sizes = np.maximum(1, rng.integers(1, 2 * total // n_tensors, n_tensors))
    news = [("numba", 0, sizes, lambda s: cuda.device_array(int(s), np.float32), contextlib.nullcontext)]
    if "torch" in kinds:
        import torch

        T = fake_cuda_tensor_type()
        small = np.maximum(1, sizes // 1000)
        plain = torch._C.DisableTorchFunctionSubclass
        news.append(("torch", TORCH_STREAM, small, lambda s, T=T: fake_cuda_tensor(T, (int(s),)), plain))
    out = []
    for (name, cls, kw), (kind, stream, sz, new, ctx) in product(
        (("adam_step", O.Adam, {}), ("adamw_step", O.AdamW, {}), ("sgd_step", O.SGD, {"momentum": 0.9})), news
    ):
        params = [new(s) for s in sz]
        grads = [new(s) for s in sz]
        opt = cls(params, lr=1e-3, **kw)

        def same(o=opt, g=grads, ctx=ctx):
            with ctx():
                o.step(g)

        out.append((name, f"{n_tensors} tensors, same grads", kind, stream, same))
        # more gradient sets than any cache of address tables holds: new addresses at every step
        grads2 = [[new(s) for s in sz] for _ in range(24)]
        state = {"i": 0}

        def moving(o=opt, gs=grads2, st=state, ctx=ctx):
            st["i"] = (st["i"] + 1) % len(gs)
            with ctx():
                o.step(gs[st["i"]])

        out.append((name, f"{n_tensors} tensors, grads at new addresses", kind, stream, moving))
    return out


def _outcome(fn) -> str:
    try:
        fn()
    except (TypeError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return "ok"


def optim_checks(n: int = 20) -> list[dict]:
    """Rows ``{"op": "optim_check", "case", "got", "expected"}``:

    - gradients freed: Adam steps with a fresh list of ``n`` Numba gradients each, every list dropped after
      its step: the recording driver's frees (their finalizers) must count every gradient;
    - bad gradients: the outcome of a step (``"ok"`` or the exception's type and message) with Numba arrays,
      against the same step on the CPU backend with NumPy arrays (rows with ``"against": "cpu"``)."""
    import numpy as np
    from numba import cuda

    import fastnorm.optim as O

    f32 = np.float32
    rows = []
    opt = O.Adam([cuda.device_array(8, f32) for _ in range(n)], lr=1e-3)
    opt.step([cuda.device_array(8, f32) for _ in range(n)])  # state allocated, caches filled
    gc.collect()
    reset()
    for _ in range(3):
        grads = [cuda.device_array(8, f32) for _ in range(n)]
        opt.step(grads)
        del grads
        gc.collect()
    rows.append(
        {"op": "optim_check", "case": "gradients freed after their step", "got": COUNTS["free"], "expected": 3 * n}
    )

    def cases(new):
        """(case, params, grads) made by ``new(shape, dtype)``."""
        p = [new((4,), f32), new((3, 2), f32)]
        p16 = [new((4,), np.float16)]
        return [
            ("float64 gradient of a float32 parameter", p, [new((4,), f32), new((3, 2), np.float64)]),
            ("gradient of the wrong shape", p, [new((4,), f32), new((6,), f32)]),
            ("gradient that is a parameter", p, [p[0], new((3, 2), f32)]),
            ("float32 gradient of a float16 parameter", p16, [new((4,), f32)]),
            ("float16 gradient of a float16 parameter", p16, [new((4,), np.float16)]),
            ("one gradient too many", p, [new((4,), f32), new((3, 2), f32), new((4,), f32)]),
        ]

    host = cases(lambda s, d: np.zeros(s, d))
    dev = cases(lambda s, d: cuda.device_array(s, d))
    for (case, hp, hg), (_, dp, dg) in zip(host, dev, strict=True):
        want = _outcome(lambda hp=hp, hg=hg: O.Adam(hp, lr=1e-3).step(hg))
        got = _outcome(lambda dp=dp, dg=dg: O.Adam(dp, lr=1e-3).step(dg))
        rows.append({"op": "optim_check", "case": case, "got": got, "expected": want, "against": "cpu"})
    dp = [cuda.device_array(4, f32)]
    got = _outcome(lambda: O.Adam(dp, lr=1e-3).step([np.zeros(4, f32)]))
    rows.append(
        {
            "op": "optim_check",
            "case": "NumPy gradient of a CUDA parameter",
            "got": got,
            "expected": "TypeError: Adam: arguments live on different devices: grads[0] on the CPU, the parameters "
            "on the GPU (CUDA); move them to one device",
            "against": "cpu",
        }
    )
    return rows


def table_checks(n: int = 8) -> list[dict]:
    """Rows ``{"op": "optim_check", "case", "got", "expected"}`` on the device table an Adam step launches
    with (read back from the host copy the table was uploaded from): after the gradients move to new
    arrays of the same layout (the path that compares the layout, not every gradient), the table's gradient
    row must hold the new addresses; back to the first arrays, theirs; and a gradient of another shape
    after such steps must still be refused with the CPU backend's error."""
    import numpy as np
    from numba import cuda

    import fastnorm.optim as O

    from . import optim as K

    install()
    f32 = np.float32
    sizes = [3 + 5 * i for i in range(n)]
    opt = O.Adam([cuda.device_array(s, f32) for s in sizes], lr=1e-3)
    sets = [[cuda.device_array(s, f32) for s in sizes] for _ in range(3)]

    def grad_row():
        tptr = int(ARGS[-1][4])  # the table's data pointer: the first kernel parameter's data slot
        for lst in K._dev_tables.values():
            for e in lst:
                if e.ptr == tptr:
                    return np.frombuffer(e.mirror, np.int64)[n : 2 * n].tolist()
        return None

    rows = []
    for i in (0, 1, 2, 2, 0):
        reset()
        opt.step(sets[i])
        want = [int(g.gpu_data.device_pointer) for g in sets[i]]
        rows.append(
            {
                "op": "optim_check",
                "case": f"table after a step with gradient set {i}",
                "got": grad_row(),
                "expected": want,
            }
        )
    bad = list(sets[1])
    bad[3] = cuda.device_array(sizes[3] + 1, f32)
    got = _outcome(lambda: opt.step(bad))
    host = O.Adam([np.zeros(s, f32) for s in sizes], lr=1e-3)
    hbad = [np.zeros(s, f32) for s in sizes]
    hbad[3] = np.zeros(sizes[3] + 1, f32)
    want = _outcome(lambda: host.step(hbad))
    rows.append(
        {"op": "optim_check", "case": "gradient of another shape after moved steps", "got": got, "expected": want}
    )
    return rows


def torch_param_checks(n: int = 6) -> list[dict]:
    """Rows ``{"op": "optim_check", "case", "got", "expected"}`` on torch parameters whose storage or layout
    changes under the same tensor object between steps (the layout path re-reads every field of every
    torch parameter and gradient at every step; nothing is trusted from the object's identity):

    - ``p.data = <another tensor>``: the launched table's parameter row holds the new address;
    - ``p.data = p.data.t()`` (same address, not contiguous), ``p.data = p.data.view(torch.int32)`` (same
      address, another dtype), ``p.data = p.data.view(-1)`` (same address and size, another shape), and
      the same on a gradient: the step's outcome (``"ok"`` or the error) equals the outcome of the same step
      with the remembered layouts dropped (the entry-by-entry check)."""
    import torch

    import fastnorm.optim as O

    from . import _gather
    from . import _optim_arrays as OA

    install()
    T = fake_cuda_tensor_type()
    shapes = [(3, 4)] * n

    def setup():
        params = [fake_cuda_tensor(T, s) for s in shapes]
        opt = O.Adam(params, lr=1e-3)
        grads = [[fake_cuda_tensor(T, s) for s in shapes] for _ in range(2)]
        for i in range(3):  # layouts remembered, gradients moving
            opt.step(grads[i % 2])
        return params, opt, grads[1]

    def param_row():
        tptr = int(ARGS[-1][4])
        for lst in K._dev_tables.values():
            for e in lst:
                if e.ptr == tptr:
                    return np.frombuffer(e.mirror, np.int64)[:n].tolist()
        return None

    from . import optim as K

    rows = []
    params, opt, g = setup()
    params[2].data = fake_cuda_tensor(T, shapes[2])
    reset()
    opt.step(g)
    rows.append(
        {
            "op": "optim_check",
            "case": "torch table after p.data = another tensor",
            "got": param_row(),
            "expected": [p.data_ptr() for p in params],
        }
    )
    changes = {
        "p.data = p.data.t()": lambda p, g: setattr(p[1], "data", p[1].data.t()),
        "p.data = p.data.view(torch.int32)": lambda p, g: setattr(p[1], "data", p[1].data.view(torch.int32)),
        "p.data = p.data.view(-1)": lambda p, g: setattr(p[1], "data", p[1].data.view(-1)),
        "grad.data = grad.data.t()": lambda p, g: setattr(g[4], "data", g[4].data.t()),
        "grad.data = grad.data.view(-1)": lambda p, g: setattr(g[4], "data", g[4].data.view(-1)),
    }
    for case, change in changes.items():
        outcomes = []
        for fast in (True, False):
            params, opt, g = setup()
            change(params, g)
            if not fast:
                _gather._layouts.clear()
                OA._list_cache.clear()
            outcomes.append(_outcome(lambda opt=opt, g=g: opt.step(g)))
        rows.append(
            {
                "op": "optim_check",
                "case": f"torch {case}",
                "got": outcomes[0],
                "expected": outcomes[1],
                "against": "general",
            }
        )
    return rows


def group_stream_checks(n: int = 4) -> list[dict]:
    """Rows ``{"op": "optim_check", "case", "got", "expected"}`` on an optimizer whose parameter groups live
    in different libraries (a Numba group and a torch group, in both orders): each group's launch goes on
    its own library's current stream, not on the stream of the group checked last."""
    from numba import cuda

    import fastnorm.optim as O

    from ._common import current_stream_ptr
    from ._recording import LAUNCHES

    install()
    T = fake_cuda_tensor_type()
    new = {
        "numba": lambda i: cuda.device_array(5 + i, np.float32),
        "torch": lambda i: fake_cuda_tensor(T, (5 + i,)),
    }
    stream = {"numba": current_stream_ptr(), "torch": TORCH_STREAM}  # (Numba: CuPy's when CuPy is imported)
    rows = []
    for order in (("numba", "torch"), ("torch", "numba")):
        opt = O.Adam([{"params": [new[k](i) for i in range(n)]} for k in order], lr=1e-3)
        grads = [new[k](i) for k in order for i in range(n)]
        opt.step(grads)  # compile, build the plans
        reset()
        opt.step(grads)
        rows.append(
            {
                "op": "optim_check",
                "case": f"launch streams of a {order[0]} group then a {order[1]} group",
                "got": [s for _, s in LAUNCHES],
                "expected": [stream[k] for k in order],
                "distinct": stream["numba"] != stream["torch"],
            }
        )
    return rows
