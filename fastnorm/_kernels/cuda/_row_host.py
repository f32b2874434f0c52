"""Checks of the row ops' usual-form path (``_row_calls``) on the recording driver: every call is run twice,
through that path and with it turned off (the general path), and the two must launch the same kernels with
the same arguments, return arrays of the same types, shapes and dtypes, or raise the same error.
"""

from __future__ import annotations

from ._recording import ARGS, LAUNCHES, fake_cuda_tensor, fake_cuda_tensor_type, install, reset


def _run(fn):
    """(launches, arguments per kernel parameter, result description or error) of one call (the arguments
    as ``packing_check`` compares them: a zero-size array's shape and strides left out, as no kernel reads
    them and numba-cuda gives such arrays other strides than NumPy's)."""
    from ._host_scenarios import _groups, _kernels_by_name

    reset()
    try:
        r = fn()
    except (TypeError, ValueError) as e:
        return [], [], f"{type(e).__name__}: {e}"
    desc = [None if a is None else (type(a).__name__, tuple(a.shape), str(a.dtype)) for a in r]
    names = [k for k, _ in LAUNCHES]
    kernels = _kernels_by_name()
    return names, [_groups(kernels[k], a) for k, a in zip(names, ARGS, strict=True)], desc


def _cases(m: int = 64, n: int = 256):
    """(case, call, whether the usual-form path must take it) on Numba arrays and torch stand-in tensors."""
    import ml_dtypes
    import numpy as np
    from numba import cuda

    import fastnorm as F

    f32, f64, f16, bf = np.float32, np.float64, np.float16, np.dtype(ml_dtypes.bfloat16)
    T = fake_cuda_tensor_type()
    d = cuda.device_array
    x, dy, y, dx = d((m, n), f32), d((m, n), f32), d((m, n), f32), d((m, n), f32)
    x3, w3, x1, xs = d((4, m // 4, n), f32), d((m // 4, n), f32), d((m, 1), f32), d((m, 2 * n), f32)[:, ::2]
    w, b, dw, db = d(n, f32), d(n, f32), d(n, f32), d(n, f32)
    mu, rs = d(m, f32), d(m, f32)
    w64, xb, wb = d(n, f64), d((m, n), bf), d(n, bf)
    r, h, rb = d((m, n), f32), d((m, n), f32), d((m, n), bf)
    yb, hb, xh, wh, yh = d((m, n), bf), d((m, n), bf), d((m, n), f16), d(n, f16), d((m, n), f16)
    tx, tw, tb = fake_cuda_tensor(T, (m, n)), fake_cuda_tensor(T, (n,)), fake_cuda_tensor(T, (n,))
    tmu, trs, tdy = fake_cuda_tensor(T, (m,)), fake_cuda_tensor(T, (m,)), fake_cuda_tensor(T, (m, n))
    ty, tmean, trstd = fake_cuda_tensor(T, (m, n)), fake_cuda_tensor(T, (m,)), fake_cuda_tensor(T, (m,))
    tr, th = fake_cuda_tensor(T, (m, n)), fake_cuda_tensor(T, (m, n))
    txb, twb = fake_cuda_tensor(T, (m, n), "bfloat16"), fake_cuda_tensor(T, (n,), "bfloat16")
    return [
        ("LN forward, numba, out=", lambda: F.layer_norm_forward(x, w, b, out=(y, mu, rs)), True),
        ("LN forward, numba, allocating", lambda: F.layer_norm_forward(x, w, b), True),
        ("LN forward, numba, no weight/bias, out=", lambda: F.layer_norm_forward(x, out=(y, mu, rs)), True),
        (
            "LN forward, numba, bias only, out= (y, None, rstd)",
            lambda: F.layer_norm_forward(x, None, b, out=(y, None, rs)),
            True,
        ),
        (
            "LN forward, 3-d x, normalized_ndim=2, allocating",
            lambda: F.layer_norm_forward(x3, w3, normalized_ndim=2),
            True,
        ),
        ("LN forward, torch, out=", lambda: F.layer_norm_forward(tx, tw, tb, out=(ty, tmean, trstd)), True),
        ("LN forward, torch, allocating", lambda: F.layer_norm_forward(tx, tw, tb), True),
        ("RMS forward, numba, out=", lambda: F.rms_norm_forward(x, w, out=(y, rs)), True),
        ("RMS forward, torch, out=", lambda: F.rms_norm_forward(tx, tw, out=(ty, trstd)), True),
        ("LN backward, numba, out=", lambda: F.layer_norm_backward(dy, x, mu, rs, w, b, out=(dx, dw, db)), True),
        ("LN backward, numba, allocating", lambda: F.layer_norm_backward(dy, x, mu, rs, w, b), True),
        (
            "LN backward, numba, no bias, out=",
            lambda: F.layer_norm_backward(dy, x, mu, rs, w, out=(dx, dw, None)),
            True,
        ),
        (
            "LN backward, numba, no weight, out=",
            lambda: F.layer_norm_backward(dy, x, mu, rs, out=(dx, None, None)),
            True,
        ),
        ("LN backward, torch, allocating", lambda: F.layer_norm_backward(tdy, tx, tmu, trs, tw, tb), True),
        ("RMS backward, numba, out=", lambda: F.rms_norm_backward(dy, x, rs, w, out=(dx, dw)), True),
        ("RMS backward, torch, allocating", lambda: F.rms_norm_backward(tdy, tx, trs, tw), True),
        # the fused residual add (forward)
        ("add-LN forward, numba, out=", lambda: F.add_layer_norm_forward(x, r, w, b, out=(y, h, mu, rs)), True),
        ("add-LN forward, numba, allocating", lambda: F.add_layer_norm_forward(x, r, w, b), True),
        (
            "add-LN forward, numba, no weight/bias, out=",
            lambda: F.add_layer_norm_forward(x, r, out=(y, h, mu, rs)),
            True,
        ),
        ("add-LN forward, torch, allocating", lambda: F.add_layer_norm_forward(tx, tr, tw, tb), True),
        ("add-RMS forward, numba, out=", lambda: F.add_rms_norm_forward(x, r, w, out=(y, h, rs)), True),
        ("add-RMS forward, torch, out=", lambda: F.add_rms_norm_forward(tx, tr, tw, out=(ty, th, trstd)), True),
        ("add-RMS forward, bfloat16 x/residual, float32 weight", lambda: F.add_rms_norm_forward(xb, rb, w), True),
        # the fused residual add (backward; h in x's place)
        (
            "add-LN backward, numba, out=",
            lambda: F.add_layer_norm_backward(dy, h, x, mu, rs, w, b, out=(dx, dw, db)),
            True,
        ),
        ("add-LN backward, numba, allocating", lambda: F.add_layer_norm_backward(dy, h, x, mu, rs, w, b), True),
        (
            "add-LN backward, numba, no dh, no bias, allocating",
            lambda: F.add_layer_norm_backward(dy, None, x, mu, rs, w),
            True,
        ),
        ("add-RMS backward, numba, out=", lambda: F.add_rms_norm_backward(dy, h, x, rs, w, out=(dx, dw)), True),
        (
            "add-RMS backward, numba, no dh, out=",
            lambda: F.add_rms_norm_backward(dy, None, x, rs, w, out=(dx, dw)),
            True,
        ),
        ("add-RMS backward, torch, allocating", lambda: F.add_rms_norm_backward(tdy, th, tx, trs, tw), True),
        ("add-RMS backward, torch, no dh, allocating", lambda: F.add_rms_norm_backward(tdy, None, tx, trs, tw), True),
        (
            "add-LN backward, dh of the wrong shape",
            lambda: F.add_layer_norm_backward(dy, d((m, n + 1), f32), x, mu, rs),
            False,
        ),
        (
            "add-LN backward, out dx is dh",
            lambda: F.add_layer_norm_backward(dy, h, x, mu, rs, w, b, out=(h, dw, db)),
            False,
        ),
        ("add-RMS backward, bfloat16 weight", lambda: F.add_rms_norm_backward(xb, rb, xb, rs, wb), False),
        # 16-bit weight/bias beside 16-bit x (forward: float32 copies converted by plan first)
        ("LN forward, bfloat16 x and weight, out=", lambda: F.layer_norm_forward(xb, wb, wb, out=(yb, mu, rs)), True),
        ("LN forward, bfloat16 x, weight only, out=", lambda: F.layer_norm_forward(xb, wb, out=(yb, mu, rs)), True),
        ("RMS forward, float16 x and weight, out=", lambda: F.rms_norm_forward(xh, wh, out=(yh, rs)), True),
        (
            "add-RMS forward, bfloat16 x/residual/weight, out=",
            lambda: F.add_rms_norm_forward(xb, rb, wb, out=(yb, hb, rs)),
            True,
        ),
        ("LN forward, torch bfloat16 x and weight, allocating", lambda: F.layer_norm_forward(txb, twb, twb), True),
        ("LN forward, bfloat16 x, float16 weight", lambda: F.layer_norm_forward(xb, wh), False),
        ("LN forward, float32 x, bfloat16 weight", lambda: F.layer_norm_forward(x, wb), False),
        # the general path: other forms, and every error
        ("add-LN forward, residual of the wrong shape", lambda: F.add_layer_norm_forward(x, d((m, n + 1), f32)), False),
        ("add-LN forward, float64 residual", lambda: F.add_layer_norm_forward(x, d((m, n), f64), w, b), False),
        ("add-LN forward, residual None", lambda: F.add_layer_norm_forward(x, None, w, b), False),
        ("add-LN forward, out h is the residual", lambda: F.add_layer_norm_forward(x, r, out=(y, r, mu, rs)), False),
        ("add-LN forward, out y is x", lambda: F.add_layer_norm_forward(x, r, out=(x, h, mu, rs)), False),
        ("add-RMS forward, bfloat16 weight, allocating", lambda: F.add_rms_norm_forward(xb, rb, wb), True),
        ("add-RMS forward, eps an int", lambda: F.add_rms_norm_forward(x, r, w, eps=1), False),
        ("LN forward, bfloat16 x and weight, allocating", lambda: F.layer_norm_forward(xb, wb, wb), True),
        ("LN backward, bfloat16 weight", lambda: F.layer_norm_backward(xb, xb, mu, rs, wb), False),
        ("LN forward, eps an int", lambda: F.layer_norm_forward(x, w, b, eps=1, out=(y, mu, rs)), False),
        ("LN forward, float64 weight", lambda: F.layer_norm_forward(x, w64), False),
        ("LN forward, weight of the wrong shape", lambda: F.layer_norm_forward(x, d(n + 1, f32)), False),
        ("LN forward, eps a string", lambda: F.layer_norm_forward(x, w, eps="1e-5"), False),
        ("LN forward, normalized_ndim=3 on 2-d x", lambda: F.layer_norm_forward(x, normalized_ndim=3), False),
        ("LN forward, out y is x", lambda: F.layer_norm_forward(x, w, b, out=(x, mu, rs)), False),
        ("LN forward, out mean is rstd", lambda: F.layer_norm_forward(x, w, b, out=(y, rs, rs)), False),
        ("LN forward, out y overlaps weight", lambda: F.layer_norm_forward(x, y[0], out=(y, mu, rs)), False),
        ("LN forward, out of the wrong dtype", lambda: F.layer_norm_forward(x, out=(d((m, n), f64), mu, rs)), False),
        ("LN forward, out of two entries", lambda: F.layer_norm_forward(x, out=(y, mu)), False),
        ("LN forward, out not a tuple", lambda: F.layer_norm_forward(x, out=y), False),
        ("LN forward, non-contiguous x, allocating", lambda: F.layer_norm_forward(xs), False),
        ("LN backward, dy of the wrong shape", lambda: F.layer_norm_backward(d((m, n + 1), f32), x, mu, rs), False),
        ("LN backward, mean missing", lambda: F.layer_norm_backward(dy, x, None, rs, w), False),
        (
            "LN backward, rows of one element, allocating",
            lambda: F.layer_norm_backward(x1, x1, mu, rs),
            False,
        ),
        ("LN backward, out dx is dy", lambda: F.layer_norm_backward(dy, x, mu, rs, w, b, out=(dy, dw, db)), False),
        ("RMS backward, dweight buffer without weight", lambda: F.rms_norm_backward(dy, x, rs, out=(dx, dw)), False),
    ]


def row_call_checks() -> list[dict]:
    """Rows ``{"op": "row_call_check", "case", "fast", "expected_fast", "same", "difference"}``: ``fast``
    whether the usual-form path answered, ``same`` whether both paths did the same thing."""
    from ... import _validation as V
    from . import _row_calls

    install()
    rows = []
    general = V.float_input
    for case, fn, want_fast in _cases():
        used: list = []

        def counting(*a, used=used, **k):
            used.append(1)
            return general(*a, **k)

        try:
            fn()  # (compile and fill the caches first: both runs below then see the same state)
        except (TypeError, ValueError):
            pass
        V.float_input = counting
        try:
            a = _run(fn)
        finally:
            V.float_input = general
        _row_calls.ENABLED = False
        try:
            b = _run(fn)
        finally:
            _row_calls.ENABLED = True
        diff = None
        if a[0] != b[0]:
            diff = f"launches {a[0]} vs {b[0]}"
        elif a[2] != b[2]:
            diff = f"result {a[2]} vs {b[2]}"
        elif a[1] != b[1] and "allocating" not in case:  # (new outputs: new addresses in each run)
            diff = "arguments differ"
        rows.append(
            {
                "op": "row_call_check",
                "case": case,
                "fast": not used,
                "expected_fast": want_fast,
                "same": diff is None,
                "difference": diff,
                "outcome": a[2] if isinstance(a[2], str) else "ok",
            }
        )
    return rows
