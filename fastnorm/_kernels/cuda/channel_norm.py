"""BatchNorm, InstanceNorm and GroupNorm CUDA kernels on an (N, C, L) view; launchers with the CPU kernels'
signatures (fastnorm/_kernels/cpu/_channel_norm.pyx).

- GroupNorm / InstanceNorm with input statistics: each (n, group) row of K*L contiguous values is a
  LayerNorm row whose affine parameters are per channel: the row kernels of layer_norm.py in their
  ``grouped`` form (x read once, statistics from registers). Backward: dx from the same row kernels;
  dweight/dbias from per-(n, c) sums (one team per (n, c) segment) reduced over n in order.
- BatchNorm, channels first (L > 1): per-(n, c) segment moments (mean, M2; one team per segment, two
  passes over the segment from cache), merged per channel over n in order (Chan's formula, float64),
  then an elementwise output pass. Backward likewise: per-segment sums of dy and dy * (x - mean),
  per-channel totals and coefficients, elementwise dx.
- BatchNorm, channels last (L == 1, an (M, C) array): per-column partial moments (or sums) of
  ``work.shape[0]`` row chunks (Welford in float64 per thread, fixed-order merges), merged per channel
  over the chunks in order; elementwise output pass.
All reductions run in a fixed order: results are bitwise reproducible. float16 and bfloat16 inputs
(bfloat16 as uint16 bits) accumulate in float32 (float64 for the merges); statistics are float32 then,
weight/bias enter the kernels in float32 (16-bit ones are converted), running statistics and
dweight/dbias are written in the dtype the caller gives them (float32 under the public layer's rule;
16-bit ones round the float32 value once).
The ``coef`` scratch of the CPU kernels is not used (coefficients live in the float64 ``work``).
The kernels and their launch helpers are channel_kernels.py's; this module holds the ops' launchers.
"""

from __future__ import annotations

import numpy as np

from ..._backend._detect import dtype_of as _dtype
from . import _common as cc
from . import layer_norm as LN
from ._common import ACC, empty_device, kdev, kview, launcher, param_dtype
from .channel_kernels import (
    _make_apply,
    _make_columns,
    _make_finish,
    _make_instance_stats,
    _make_segments,
)

F64 = np.float64
# Launch shapes (module attributes: tests make them small for the simulator).
SEG_TEAM = 128  # threads per (n, c) segment at most (fewer for short segments)
SEG_BLOCK = 64 if cc.SIM else 128  # threads per block of the segment kernels (the simulator is slow)
BLOCK = 64 if cc.SIM else 256  # elementwise kernels
COLS = 32  # channels-last: columns per block
PHASES = 8  # channels-last: row phases per block (block = COLS * PHASES threads)


def _seg_team(length: int) -> tuple[int, int]:
    """(T threads per segment, R segments per block) for segments of ``length`` values."""
    t = 32
    while t < SEG_TEAM and length > 4 * t:
        t *= 2
    return t, max(1, SEG_BLOCK // t)


# ------------------------------------------------------------------------------------------ kernel launches
def _segments(kind, x2, dy2, mean, work, c, gs, k, dt=None):
    """``dt``: x's dtype when x2 is a uint16 view of bfloat16 (default: x2's dtype)."""
    s_count, length = x2.shape
    if s_count == 0:
        return
    t, r = _seg_team(length)
    dt = np.dtype(x2.dtype if dt is None else dt)
    sig = f"void({cc.arr(dt, 2)}, {cc.arr(dt, 2)}, {cc.arr(cc.ACC[dt], 1)}, {cc.arr(F64, 2)}, int64, int64, int64)"
    kern = cc.cached(
        ("seg", kind, dt, t, r),
        lambda: cc.Kernel(_make_segments(dt, t, r, kind), sig, cc.register_cap(t * r, cc.ACC[dt])),
    )
    kern.launch(-(-s_count // r), t * r, cc.current_stream(), x2, dy2, mean, work, c, gs, k)


def _columns(kind, x2, dy2, mean, work, n_chunks, dt=None):
    m, c = x2.shape
    dt = np.dtype(x2.dtype if dt is None else dt)
    sig = f"void({cc.arr(dt, 2)}, {cc.arr(dt, 2)}, {cc.arr(cc.ACC[dt], 1)}, {cc.arr(F64, 2)}, int64)"
    cap = cc.register_cap(COLS * PHASES, np.float64)
    kern = cc.cached(
        ("cols", kind, dt, COLS, PHASES), lambda: cc.Kernel(_make_columns(dt, kind, COLS, PHASES), sig, cap)
    )
    kern.launch((-(-c // COLS), n_chunks), COLS * PHASES, cc.current_stream(), x2, dy2, mean, work, n_chunks)


def _finish(
    mode, work, coefs, w, rm, rv, mean, rstd, dw, db, N, C, L, M, n_chunks, GS, K, eps, momentum, first, training, dts
):
    """``dts`` = (statistics, weight, running statistics, dweight, dbias) dtypes (arrays are kernel views)."""
    if C == 0:
        return
    dts = tuple(np.dtype(d) for d in dts)
    sd, pw, pr, gw, gb = (cc.arr(d, 1) for d in dts)
    sig = (
        f"void({cc.arr(F64, 2)}, {cc.arr(F64, 2)}, {pw}, {pr}, {pr}, {sd}, {sd}, {gw}, {gb}, int64, int64, int64, "
        "int64, int64, int64, int64, float64, float64, boolean, boolean)"
    )
    kern = cc.cached(("finish", mode, dts), lambda: cc.Kernel(_make_finish(dts, mode), sig, cc.register_cap(128, F64)))
    kern.launch(
        -(-C // 128),
        128,
        cc.current_stream(),
        work,
        coefs,
        w,
        rm,
        rv,
        mean,
        rstd,
        dw,
        db,
        N,
        C,
        L,
        M,
        n_chunks,
        GS,
        K,
        float(eps),
        float(momentum),
        bool(first),
        bool(training),
    )


def _apply(backward, x1, dy1, w, b, mean, rstd, coefs, y1, c, length, gs, k, dt=None):
    total = x1.shape[0]
    if total == 0:
        return
    dt = np.dtype(x1.dtype if dt is None else dt)
    a1, p1, s1 = cc.arr(dt, 1), cc.arr(cc.param_dtype(dt), 1), cc.arr(cc.ACC[dt], 1)
    sig = f"void({a1}, {a1}, {p1}, {p1}, {s1}, {s1}, {cc.arr(F64, 2)}, {a1}, int64, int64, int64, int64)"
    kern = cc.cached(
        ("apply", backward, dt), lambda: cc.Kernel(_make_apply(dt, backward), sig, cc.register_cap(BLOCK, cc.ACC[dt]))
    )
    grid = min(-(-total // BLOCK), kern.resident_blocks(BLOCK) * 4)
    kern.launch(grid, BLOCK, cc.current_stream(), x1, dy1, w, b, mean, rstd, coefs, y1, c, length, gs, k)


def _instance_eval_stats(rm, rv, mean, rstd, eps, rdt):
    rdt, sdt = np.dtype(rdt), np.dtype(mean.dtype)
    sig = f"void({cc.arr(rdt, 1)}, {cc.arr(rdt, 1)}, {cc.arr(sdt, 2)}, {cc.arr(sdt, 2)}, float64)"
    kern = cc.cached(
        ("in_stats", rdt, sdt), lambda: cc.Kernel(_make_instance_stats(rdt, sdt), sig, cc.register_cap(128, F64))
    )
    kern.launch(-(-mean.size // 128), 128, cc.current_stream(), rm, rv, mean, rstd, float(eps))


# ------------------------------------------------------------------------------------------ helpers
def _empty(shape, dtype):
    """A cached empty device array as the kernels take it (bfloat16 as uint16)."""
    return kview(empty_device(shape, dtype))


def _flat(a):
    return a.reshape(a.size)


def _opt(a, dt):
    """An optional array written or read in its own dtype (running statistics, dweight/dbias): (kernel
    view, dtype); an absent one as an empty array of ``param_dtype(dt)``."""
    a = LN._sized(a)
    if a is None or a.size == 0:
        pdt = param_dtype(dt)
        return _empty((0,), pdt), pdt
    return kdev(a), _dtype(a)


class _Args:
    """The arrays of one call as the kernels take them, with their dtypes: data ``dt``, weight/bias in
    ``pdt`` (16-bit ones converted), statistics ``sd``, running statistics ``rdt``, gradients ``gw``/``gb``."""

    def __init__(self, x, weight, bias=None, rm=None, rv=None, dw=None, db=None):
        self.dt = dt = np.dtype(_dtype(x))
        self.pdt = param_dtype(dt)
        self.sd = np.dtype(ACC[dt])
        self.w = LN._param(weight, dt)
        self.b = LN._param(bias, dt)
        self.rm, self.rdt = _opt(rm, dt)
        self.rv, _ = _opt(rv, dt)
        self.dw, self.gw = _opt(dw, dt)
        self.db, self.gb = _opt(db, dt)

    def dts(self):
        return (self.sd, self.pdt, self.rdt, self.gw, self.gb)

    def none(self, kind):
        """An empty argument of the dtype the kernel expects for ``kind`` ("r", "gw", "gb", "p")."""
        return _empty((0,), {"r": self.rdt, "gw": self.gw, "gb": self.gb, "p": self.pdt}[kind])


# ------------------------------------------------------------------------------------------ BatchNorm
@launcher
def batch_norm_forward(
    x, weight, bias, running_mean, running_var, y, mean, rstd, work, coef, eps, momentum, training, n_threads
):
    """IN x (N, C, L), weight, bias (C,) | (0,); IN/OUT running_mean, running_var (C,) | (0,);
    OUT y (N, C, L), mean, rstd (C,); SCRATCH work (L > 1: (N*C, 2); L == 1: (chunks, >= 2C)), coef unused."""
    A = _Args(x, weight, bias, running_mean, running_var)
    x, y, mean, rstd, work = (kdev(a) for a in (x, y, mean, rstd, work))
    w, b, rm, rv, dt = A.w, A.b, A.rm, A.rv, A.dt
    n, c, length = x.shape
    if c == 0:
        return
    first = length > 1
    chunks = work.shape[0]
    if training and n * length > 0:
        if first:
            _segments("moments", x.reshape(n * c, length), x.reshape(n * c, length), mean, work, c, 0, 1, dt)
        else:
            _columns("moments", x.reshape(n, c), x.reshape(n, c), mean, work, chunks, dt)
    no = _empty((0, 0), F64)
    _finish(
        "bn_fwd",
        work,
        no,
        w,
        rm,
        rv,
        mean,
        rstd,
        A.none("gw"),
        A.none("gb"),
        n,
        c,
        length,
        n,
        chunks,
        0,
        1,
        eps,
        momentum,
        first,
        training,
        A.dts(),
    )
    _apply(False, _flat(x), _flat(x), w, b, mean, rstd, no, _flat(y), c, length, 0, 1, dt)


@launcher
def batch_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, work, coef, training, n_threads):
    """IN dy, x (N, C, L), mean, rstd (C,), weight (C,) | (0,); OUT dx (N, C, L), dweight, dbias (C,) | (0,);
    SCRATCH work (L > 1: (N*C + C, 2); L == 1: (chunks + 1, 2C)), coef unused."""
    A = _Args(x, weight, dw=dweight, db=dbias)
    dy, x, mean, rstd, dx, work = (kdev(a) for a in (dy, x, mean, rstd, dx, work))
    w, dw, db, dt = A.w, A.dw, A.db, A.dt
    n, c, length = x.shape
    if c == 0:
        return
    first = length > 1
    need = training or dw.shape[0] > 0 or db.shape[0] > 0
    chunks = work.shape[0] - 1
    if first:
        parts = work[: n * c]
        coefs = work[n * c :].reshape(2, c) if need else _empty((0, 0), F64)
    else:
        parts = work[:chunks]
        coefs = work[chunks].reshape(2, c) if need else _empty((0, 0), F64)
    if need:
        if n * length > 0:
            if first:
                _segments("grads", x.reshape(n * c, length), dy.reshape(n * c, length), mean, parts, c, 0, 1, dt)
            else:
                _columns("grads", x.reshape(n, c), dy.reshape(n, c), mean, parts, chunks, dt)
        else:
            from .fill import fill

            fill(_flat(parts), 0.0)
        _finish(
            "bwd",
            parts,
            coefs,
            w,
            A.none("r"),
            A.none("r"),
            mean,
            rstd,
            dw,
            db,
            n if first else 0,
            c,
            length,
            n,
            chunks,
            0,
            1,
            0.0,
            0.0,
            first,
            training,
            A.dts(),
        )
    _apply(
        True,
        _flat(x),
        _flat(dy),
        w,
        A.none("p"),
        mean,
        rstd,
        coefs if training else _empty((0, 0), F64),
        _flat(dx),
        c,
        length,
        0,
        1,
        dt,
    )


# ------------------------------------------------------------------------------------------ Group/Instance
def _groups_forward(A, x, y, mean, rstd, eps, groups, mom=None):
    n, c, length = x.shape
    g = groups
    k = c // g
    LN._forward(
        x.reshape(n * g, k * length),
        A.w,
        A.b,
        y.reshape(n * g, k * length),
        _flat(mean),
        _flat(rstd),
        eps,
        False,
        groups=(g, k, length),
        mom=mom,
        dt=A.dt,
    )


def _groups_backward(A, dy, x, mean, rstd, dx, work, training):
    n, c, length = x.shape
    g = mean.shape[1]
    k = c // g
    w, dw, db = A.w, A.dw, A.db
    no_part = _empty((0, 0), F64)
    if training:
        LN._backward(
            dy.reshape(n * g, k * length),
            x.reshape(n * g, k * length),
            _flat(mean),
            _flat(rstd),
            w,
            dx.reshape(n * g, k * length),
            A.none("gw"),
            A.none("gb"),
            no_part,
            no_part,
            False,
            groups=(g, k, length),
            dt=A.dt,
            gdt=(A.gw, A.gb),
        )
    else:  # statistics are constants: dx = rstd * w * dy
        _apply(
            True,
            _flat(x),
            _flat(dy),
            w,
            A.none("p"),
            _flat(mean),
            _flat(rstd),
            no_part,
            _flat(dx),
            c,
            length,
            g,
            k,
            A.dt,
        )
    if dw.shape[0] > 0 or db.shape[0] > 0:
        if n * length > 0:
            _segments("grads", x.reshape(n * c, length), dy.reshape(n * c, length), _flat(mean), work, c, g, k, A.dt)
        _finish(
            "bwd",
            work,
            no_part,
            w,
            A.none("r"),
            A.none("r"),
            _flat(mean),
            _flat(rstd),
            dw,
            db,
            n if length > 0 else 0,
            c,
            length,
            n,
            1,
            g,
            k,
            0.0,
            0.0,
            True,
            True,
            A.dts(),
        )


@launcher
def group_norm_forward(x, weight, bias, y, mean, rstd, eps, n_threads):
    """IN x (N, C, L), weight, bias (C,) | (0,); OUT y (N, C, L), mean, rstd (N, G)."""
    A = _Args(x, weight, bias)
    x, y, mean, rstd = (kdev(a) for a in (x, y, mean, rstd))
    n, c, length = x.shape
    if n * c * length == 0:
        return
    _groups_forward(A, x, y, mean, rstd, eps, mean.shape[1])


@launcher
def group_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, work, n_threads):
    """IN dy, x (N, C, L), mean, rstd (N, G), weight (C,) | (0,); OUT dx, dweight, dbias; SCRATCH work (N*C, 2)."""
    A = _Args(x, weight, dw=dweight, db=dbias)
    _groups_entry_backward(A, *(kdev(a) for a in (dy, x, mean, rstd, dx, work)), True)


def _groups_entry_backward(A, dy, x, mean, rstd, dx, work, training):
    n, c, length = x.shape
    if c == 0:
        return
    if n * length == 0:
        from .fill import fill

        for a in (A.dw, A.db):
            if a.shape[0] > 0:
                fill(a, 0.0)  # (a bfloat16 gradient is a uint16 view here: 0.0 has the bits 0)
        return
    _groups_backward(A, dy, x, mean, rstd, dx, work, training)


@launcher
def instance_norm_forward(
    x, weight, bias, running_mean, running_var, y, mean, rstd, work, eps, momentum, use_input_stats, n_threads
):
    """IN x (N, C, L), weight, bias (C,) | (0,); IN/OUT running_mean, running_var (C,) | (0,);
    OUT y (N, C, L), mean, rstd (N, C); SCRATCH work (N*C, 2)."""
    A = _Args(x, weight, bias, running_mean, running_var)
    x, y, mean, rstd, work = (kdev(a) for a in (x, y, mean, rstd, work))
    w, b, rm, rv = A.w, A.b, A.rm, A.rv
    n, c, length = x.shape
    if n * c * length == 0:
        return
    no = _empty((0, 0), F64)
    if use_input_stats:
        track = rm.shape[0] > 0
        _groups_forward(A, x, y, mean, rstd, eps, c, mom=work if track else None)
        if track:
            _finish(
                "in_running",
                work,
                no,
                w,
                rm,
                rv,
                _flat(mean),
                _flat(rstd),
                A.none("gw"),
                A.none("gb"),
                n,
                c,
                length,
                n,
                1,
                c,
                1,
                eps,
                momentum,
                True,
                True,
                A.dts(),
            )
    else:
        _instance_eval_stats(rm, rv, mean, rstd, eps, A.rdt)
        _apply(False, _flat(x), _flat(x), w, b, _flat(mean), _flat(rstd), no, _flat(y), c, length, c, 1, A.dt)


@launcher
def instance_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, work, use_input_stats, n_threads):
    """IN dy, x (N, C, L), mean, rstd (N, C), weight (C,) | (0,); OUT dx, dweight, dbias; SCRATCH work."""
    A = _Args(x, weight, dw=dweight, db=dbias)
    _groups_entry_backward(A, *(kdev(a) for a in (dy, x, mean, rstd, dx, work)), bool(use_input_stats))
