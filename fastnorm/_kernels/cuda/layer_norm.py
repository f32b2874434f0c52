"""LayerNorm and RMSNorm CUDA kernels on an (M, N) row view; launchers with the CPU kernels' signatures.

Layout: a team of T threads (a power of two, 32..MAX_TEAM) owns a row; short rows put several teams (rows)
in one block, and forward rows up to FWD_WARP_ROWS elements get one warp each (no barrier). Each thread
keeps its VPT elements of the row in registers, so the row is read from memory once; LayerNorm's moments:
each thread's two-pass summary of its elements merged over the team in one reduction (one barrier per row;
float64: two passes over the registers), accurate when the mean is large against the spread. float32 and
16-bit rows of a multiple of 4 / 8 elements with 16-byte aligned arrays use 128-bit loads and stores in the
forward and the backward (``_row_vec``; ``use_vec``); such a forward of at most PERSIST_VPT elements per
thread runs persistent blocks (weight/bias in registers, the next row prefetched; ``use_persist``). Rows
longer than MAX_TEAM * MAX_VPT take a streaming form that re-reads the row (from L2).
float16 and bfloat16 inputs (bfloat16 as its uint16 bits, ``_common.loader`` / ``storer``) accumulate in
float32 and give float32 statistics, take float32 weight/bias (a 16-bit one is converted on the device
first) and round each output once to nearest even; float32 in float32; float64 in float64.

Fused residual add (``add_layer_norm_*``, ``add_rms_norm_*``): the same row kernels with h = x + residual
formed (in the accumulation type, rounded to x's dtype, stored) as the row is loaded, and normalized from
registers; the backward adds dh to dx before its one rounding. Their 128-bit forms (forward: x and the
residual read, h and y written 128 bits at a time; persistent as the plain forward) are picked by the same
rule (every array, residual and h included, 16-byte aligned). The public fused ops of the usual form launch
from plans (``_fwd_plan``/``_bwd_plan`` with residual/h and dh slots, via ``_row_calls``) on a GPU; the
simulator runs the kernel-level launchers only, so the plan path is covered by the recording driver
(``tests/test_cuda_host_path.py``) and on hardware by ``bench/gpu_check.sh``.

Backward: team g owns a contiguous chunk of rows and accumulates its dweight/dbias contributions in
registers, then writes one float64 partial row ``dw_part[g]``; a second kernel sums the partial rows in
fixed order (deterministic, no atomics). Two launches per backward, one per forward.
The kernel factories live in row_kernels.py; this module holds the launch shapes, plans and launchers.
"""

from __future__ import annotations

import numpy as np

from ... import _backend as _B
from ..._backend._detect import dtype_of as _dtype
from ._arrays import adapt
from ._column_sums import RED_COLS, RED_GROUPS, _reduce_kernel, reduce_partials
from ._common import (
    ACC,
    BF16,
    SIM,
    WARP,
    Kernel,
    arr,
    cached,
    current_stream,
    empty_device,
    kdev,
    launcher,
    next_pow2,
    param_dtype,
    register_cap,
)
from ._vec import ALIGN, lanes, vec_ok
from .row_kernels import _make_backward, _make_forward, smem_parts

if not SIM:
    from ._launch import ArgTemplate, Plan, caller_stream, core_kernel, input_streams

# Launch-shape knobs (module attributes so tests and the benchmark can move them).
MAX_TEAM = 1024  # threads per row at most
FWD_VPT = 8  # aim for about this many elements per thread in the forward
BWD_VPT = 8  # ... and in the backward
MAX_VPT = 16  # beyond MAX_TEAM * MAX_VPT elements a row streams from memory
BLOCK_THREADS = 128  # short rows: several rows per block up to this many threads
FWD_VEC = True  # forward rows with 128-bit loads/stores where dtype, shape and alignment allow
BWD_VEC = True  # ... and backward rows
FWD_PERSIST = True  # vector forward rows of at most PERSIST_VPT elements per thread: the persistent kernel
PERSIST_VPT = 8  # (two register rows, weight and bias: 4 x VPT registers per thread)
PERSIST_BLOCKS = 0  # its grid: at most this many blocks (0: the blocks the GPU holds at once)
FWD_WARP_ROWS = 512  # forward rows up to this many elements: one warp each (at most WARP * MAX_VPT)
BWD_WAVES = 1  # backward: row chunks (teams) = teams the GPU holds at once x this (one partial row each)


def row_config(n: int, target_vpt: int, warp_rows: int = 0) -> tuple[int, int, int]:
    """(T threads per row, R rows per block, VPT elements per thread in registers; 0 = streaming). Rows of
    at most ``warp_rows`` elements get one warp (no barrier: the team's reductions are warp shuffles), up
    to MAX_VPT elements per thread; longer ones teams of about ``target_vpt`` elements per thread."""
    t = 32
    while t < MAX_TEAM and n > t * target_vpt and n > min(warp_rows, WARP * MAX_VPT):
        t *= 2
    per = -(-n // t)
    vpt = 0 if per > MAX_VPT else next_pow2(per)
    return t, max(1, BLOCK_THREADS // t), vpt


def fwd_config(n: int) -> tuple[int, int, int]:
    """The forward's ``row_config``: one warp per row up to FWD_WARP_ROWS elements."""
    return row_config(n, FWD_VPT, FWD_WARP_ROWS)


def bwd_config(n: int, dtype, rms: bool = False) -> tuple[int, int, int]:
    """``row_config`` for the backward: the register form also needs its running partial rows (dweight, and
    dbias for LayerNorm) somewhere: in shared memory as far as they fit (``smem_parts``), the rest in
    registers only if few (at most 32 bytes per thread: beside x and dy, more spills at 1024-thread teams'
    64 registers), else the streaming form."""
    t, r, vpt = row_config(n, BWD_VPT)
    in_regs = (1 if rms else 2) - smem_parts(dtype, t, vpt, rms) if vpt else 0
    if in_regs * vpt * np.dtype(ACC[np.dtype(dtype)]).itemsize > 32:
        vpt = 0
    return t, r, vpt


# (itemsize, team, rms) of backward row kernels that keep the scalar form: at 512-thread teams (N in
# (2048, 4096]) the vector forms of the 16-bit LayerNorm and the float32 RMSNorm backward spill (40 and 24
# bytes at the 64-register cap, ptxas 13, sm_90; the scalar forms and the other teams do not).
_BWD_VEC_SKIP = {(2, 512, False), (4, 512, True)}


def use_vec(dt, n: int, vpt: int, *ptrs: int, backward: bool = False, rms: bool = False) -> bool:
    """Whether a row kernel takes its 128-bit form: float32 or 16-bit data, register rows of a multiple of a
    vector's elements (4 / 8) per thread and per row, every array (by base address) 16-byte aligned
    (``FWD_VEC`` / ``BWD_VEC`` = False turn it off; ``_BWD_VEC_SKIP``)."""
    dt = np.dtype(dt)
    if backward and (dt.itemsize, row_config(n, BWD_VPT)[0], rms) in _BWD_VEC_SKIP:
        return False
    on = BWD_VEC if backward else FWD_VEC
    return on and dt.itemsize < 8 and vpt > 0 and vpt % lanes(dt) == 0 and vec_ok(n, dt.itemsize, *ptrs)


def use_persist(vpt: int) -> bool:
    """Whether a vector forward of ``vpt`` elements per thread takes the persistent form (``FWD_PERSIST``)."""
    return FWD_PERSIST and 0 < vpt <= PERSIST_VPT


def fwd_grid(k: Kernel, m: int, r: int, t: int, persist: bool) -> int:
    """Blocks of a forward launch over m rows, r per block: one per r rows, or for the persistent form at
    most the blocks the GPU holds at once (``PERSIST_BLOCKS`` when set)."""
    g = -(-m // r)
    if persist:
        g = min(g, PERSIST_BLOCKS or k.resident_blocks(t * r))
    return max(1, g)


def _address(a) -> int:
    """Base address of a kernel-ready array (the simulator's NumPy buffer there); 0 for an empty one."""
    if a.size == 0:
        return 0
    ai = a._ary.__array_interface__ if SIM else a.__cuda_array_interface__
    return int(ai["data"][0])


# ------------------------------------------------------------------------------------------ launchers
def _stat(dt):
    return np.dtype(ACC[np.dtype(dt)])


def _get(
    kind: str, dt, t: int, r: int, vpt: int, rms: bool, grouped=False, add=False, wb=None, vec=False, persist=False
) -> Kernel:
    key = ("norm", kind, np.dtype(dt), t, r, vpt, rms, grouped, add, wb, vec, persist)
    return cached(key, lambda: Kernel(*spec(kind, dt, t, r, vpt, rms, grouped, add, wb, vec, persist)))


def spec(
    kind: str, dt, t: int, r: int, vpt: int, rms: bool, grouped=False, add=False, wb=None, vec=False, persist=False
):
    """(python kernel, signature, register cap) of a row kernel (``tools/cuda_ptx_check.py`` compiles these
    without a GPU). ``wb`` = (has_weight, has_bias) makes a forward kernel's affine terms compile-time
    variants (None: tested at run time); ``vec`` asks the 128-bit form, ``persist`` its persistent forward."""
    dt = np.dtype(dt)
    a2, p1, s1, p2 = arr(dt, 2), arr(param_dtype(dt), 1), arr(_stat(dt), 1), arr(np.float64, 2)
    if kind == "fwd":
        data = f"{a2}, {a2}, {p1}, {p1}, {a2}, {a2}" if add else f"{a2}, {p1}, {p1}, {a2}"
        sig = f"void({data}, {s1}, {s1}, float64, {p2}, int64, int64, int64)"
        kern = _make_forward(dt, t, r, vpt, rms, grouped, add, wb, vec, persist)
        return kern, sig, register_cap(t * r, ACC[dt])
    else:
        data = f"{a2}, {a2}, {a2}" if add else f"{a2}, {a2}"
        sig = f"void({data}, {s1}, {s1}, {p1}, {a2}, {p2}, {p2}, int64, int64, int64, int64)"
    return _make_backward(dt, t, r, vpt, rms, grouped, add, vec), sig, register_cap(t * r, ACC[dt])


def _no_mom():
    """A (0, 0) float64 device array (the ``mom`` argument when no moments are wanted)."""
    return empty_device((0, 0), np.float64)


def _backend():
    return _B._cuda_backend or _B.cuda_backend()


def _sized(a):
    """``a`` with an integer ``size`` and a NumPy ``dtype`` (torch tensors adapted on a GPU), or None."""
    return a if a is None or SIM else adapt(a)


def _param(a, dt):
    """An optional weight/bias for data of ``dt``, as the kernels take it: ``param_dtype(dt)`` (a 16-bit
    parameter is converted on the device: the public layer passes float32 ones and pays nothing), an
    absent one as an empty array of that dtype. Returns a device array (bfloat16 never: float32)."""
    pdt = param_dtype(dt)
    a = _sized(a)
    if a is None or a.size == 0:
        return empty_device((0,), pdt)
    if np.dtype(a.dtype) != pdt:
        a = _backend().astype(a, pdt)
    return kdev(a)


def _grad_out(a, dt):
    """An optional dweight/dbias output: (device array as the kernels write it, its dtype); absent ones as
    empty arrays of ``param_dtype(dt)``. Any float dtype is written (16-bit rounds the float32 sum once)."""
    a = _sized(a)
    if a is None or a.size == 0:
        pdt = param_dtype(dt)
        return empty_device((0,), pdt), pdt
    return kdev(a), np.dtype(a.dtype)


def _forward(x, w, b, y, mean, rstd, eps, rms, groups=None, mom=None, dt=None, res=None, h=None):
    """Row kernel launch on kernel-ready arrays (``kdev``); ``dt`` is x's dtype when x is a uint16 view of
    bfloat16; ``groups`` = (G, K, L) for GroupNorm/InstanceNorm rows (affine per channel); ``res``/``h``
    the fused add's residual and sum (both or neither)."""
    m, n = x.shape
    if m == 0:
        return
    dt = np.dtype(x.dtype if dt is None else dt)
    t, r, vpt = fwd_config(n)
    add = res is not None
    data = (x, res, w, b, y, h) if add else (x, w, b, y)
    vec = groups is None and use_vec(dt, n, vpt, *(_address(a) for a in data))
    persist = vec and use_persist(vpt)
    wb = (w.shape[0] > 0, b.shape[0] > 0)
    k = _get("fwd", dt, t, r, vpt, rms, groups is not None, add, wb, vec, persist=persist)
    g, kk, ll = groups if groups is not None else (1, n, 1)
    mom = _no_mom() if mom is None else mom
    k.launch(fwd_grid(k, m, r, t, persist), t * r, current_stream(), *data, mean, rstd, float(eps), mom, g, kk, ll)


def _backward(dy, x, mean, rstd, w, dx, dw, db, dw_part, db_part, rms, groups=None, dt=None, dh=None, gdt=(None, None)):
    """Backward launch on kernel-ready arrays; ``dh``: the fused add's residual gradient (a (0, 0) array
    when absent, None for the plain kernels); ``gdt``: dweight/dbias dtypes when uint16 views."""
    m, n = x.shape
    want = dw.shape[0] > 0 or db.shape[0] > 0
    if m == 0 and not want:
        return
    dt = np.dtype(x.dtype if dt is None else dt)
    t, r, vpt = bwd_config(n, dt, rms)
    add = dh is not None
    ptrs = (_address(a) for a in (dy, x, w, dx) + ((dh,) if add else ()))
    vec = groups is None and use_vec(dt, n, vpt, *ptrs, backward=True, rms=rms)
    k = _get("bwd", dt, t, r, vpt, rms, groups is not None, add, vec=vec)
    g, kk, ll = groups if groups is not None else (1, n, 1)
    rows = [p.shape[0] for o, p in ((dw, dw_part), (db, db_part)) if o.shape[0] > 0]
    bound = min(rows) if rows else 1 << 30
    c = max(1, min(bound, k.resident_blocks(t * r) * r * BWD_WAVES, m))
    stream = current_stream()
    data = (dy, dh, x) if add else (dy, x)
    k.launch(-(-c // r), t * r, stream, *data, mean, rstd, w, dx, dw_part, db_part, c, g, kk, ll)
    if want:
        reduce_partials(dw_part, db_part, dw, db, c, stream, *gdt)


# ------------------------------------------------------------------------------------------ launch plans
# On a real GPU the four launchers below go through cached launch plans (``_launch.Plan``): the arrays'
# pointers and shapes are read by the adapters, the plan for (dtype, shape, flags, device) is looked up and
# its prebuilt argument list launched with cuda.core on the caller's stream. The simulator keeps the
# dispatcher path (it runs the kernels on NumPy arrays).
_plans: dict = {}


def _ad(a):
    """An adapted array, or None for an absent (size-0) one."""
    if a is None:
        return None
    d = adapt(a)
    return None if 0 in d.shape else d


def _adp(a, dt):
    """An adapted weight/bias in ``param_dtype(dt)`` (converted on the device if needed), or None."""
    if a is None:
        return None
    d = adapt(a)
    if 0 in d.shape:
        return None
    if d.dtype != _PDT[dt]:
        d = adapt(_backend().astype(d, _PDT[dt]))
    return d


_PDT = {np.dtype(t): param_dtype(t) for t in ACC}  # data dtype -> weight/bias dtype in the kernels


def _p(d) -> int:
    return 0 if d is None else d.ptr


def _fwd_plan(
    dt, m: int, n: int, has_w: bool, has_b: bool, rms: bool, device: int, aligned: bool, add: bool = False
) -> Plan:
    """``aligned``: every array starts on a 16-byte boundary (the vector kernel when the shape allows);
    ``add``: the fused residual add (slots x, residual, weight, bias, y, h, mean, rstd)."""
    key = ("fwd", dt, m, n, has_w, has_b, rms, device, aligned, add)
    plan = _plans.get(key)
    if plan is None:
        t, r, vpt = fwd_config(n)
        vec = aligned and use_vec(dt, n, vpt)
        persist = vec and use_persist(vpt)
        k = _get("fwd", dt, t, r, vpt, rms, False, add, wb=(has_w, has_b), vec=vec, persist=persist)
        it, sd, pit = dt.itemsize, _stat(dt).itemsize, param_dtype(dt).itemsize
        tpl = ArgTemplate()
        rows = [tpl.array((m, n), it) for _ in range(1 + add)]  # x[, residual]
        wb = [tpl.array((n if has_w else 0,), pit), tpl.array((n if has_b else 0,), pit)]
        outs = [tpl.array((m, n), it) for _ in range(1 + add)]  # y[, h]
        slots = (*rows, *wb, *outs, tpl.array((0 if rms else m,), sd), tpl.array((m,), sd))
        eps = tpl.f64()
        tpl.array((0, 0), 8)  # mom: no GroupNorm moments
        for v in (1, n, 1):  # G, K, L
            tpl.i64(v)
        plan = _plans[key] = Plan(core_kernel(k), fwd_grid(k, m, r, t, persist), t * r, tpl, slots, (eps,))
    return plan


def _bwd_plan(
    dt,
    m: int,
    n: int,
    has_w: bool,
    pw: int,
    pb: int,
    rms: bool,
    device: int,
    gdt=(None, None),
    aligned=False,
    add: int = 0,
) -> Plan:
    """Row kernel plan; ``pw``/``pb`` are the partial-row counts of dweight/dbias scratch (0: not wanted),
    ``gdt`` the dweight/dbias dtypes, ``aligned``: dy, x, weight and dx (and dh) start on 16-byte boundaries
    (the vector kernel when the shape allows); ``add``: the fused add's kernel (slots dy, dh, h, ...), 1 with
    dh, 2 without (a (0, 0) dh). ``plan.extra`` is the reduction's plan (None when no dweight/dbias is
    wanted)."""
    key = ("bwd", dt, m, n, has_w, pw, pb, rms, device, gdt, aligned, add)
    plan = _plans.get(key)
    if plan is None:
        t, r, vpt = bwd_config(n, dt, rms)
        vec = aligned and use_vec(dt, n, vpt, backward=True, rms=rms)
        k = _get("bwd", dt, t, r, vpt, rms, False, bool(add), vec=vec)
        bound = min([p for p in (pw, pb) if p] or [1 << 30])
        c = max(1, min(bound, k.resident_blocks(t * r) * r * BWD_WAVES, m))
        it, sd, pit = dt.itemsize, _stat(dt).itemsize, param_dtype(dt).itemsize
        tpl = ArgTemplate()
        dy = tpl.array((m, n), it)  # (the template's parameters in the order they are added)
        dh = (tpl.array((m, n) if add == 1 else (0, 0), it),) if add else ()
        slots = (
            dy,
            *dh,
            tpl.array((m, n), it),
            tpl.array((0 if rms else m,), sd),
            tpl.array((m,), sd),
            tpl.array((n if has_w else 0,), pit),
            tpl.array((m, n), it),
            tpl.array((pw, n) if pw else (0, 0), 8),
            tpl.array((pb, n) if pb else (0, 0), 8),
        )
        for v in (c, 1, n, 1):  # n_chunks, G, K, L
            tpl.i64(v)
        red = None
        if pw or pb:
            gw = np.dtype(gdt[0] or param_dtype(dt))
            gb = np.dtype(gdt[1] or gw)
            if not pw:
                gw = gb
            rk = _reduce_kernel(gw, gb)
            rt = ArgTemplate()
            rslots = (
                rt.array((pw, n) if pw else (0, 0), 8),
                rt.array((pb, n) if pb else (0, 0), 8),
                rt.array((n if pw else 0,), gw.itemsize),
                rt.array((n if pb else 0,), gb.itemsize),
            )
            rt.i64(c)
            red = Plan(core_kernel(rk), -(-n // RED_COLS), RED_COLS * RED_GROUPS, rt, rslots)
        # (with M == 0 one block still runs: it writes the zero partial rows the reduction sums)
        plan = _plans[key] = Plan(core_kernel(k), -(-c // r), t * r, tpl, slots, (), red)
    return plan


def _launch_fwd(x, w, b, y, mean, rstd, eps, rms: bool) -> None:
    X = adapt(x)
    m, n = X.shape
    if m:
        MU = None if mean is None else _ad(mean)
        W, B = _adp(w, X.dtype), _adp(b, X.dtype)
        _launch_plan_fwd(X, W, B, adapt(y).ptr, 0 if MU is None else MU.ptr, adapt(rstd).ptr, m, n, eps, rms)
    _done()


def _launch_plan_fwd(
    X, W, B, y: int, mean: int, rstd: int, m: int, n: int, eps: float, rms: bool, R=None, h: int = 0
) -> None:
    """The forward launch: ``X`` (M, N rows), ``W``/``B`` adapters (None: absent), output addresses; the
    fused add's residual adapter ``R`` and sum address ``h`` (``R`` None: the plain forward)."""
    pw = 0 if W is None else W.ptr
    pb = 0 if B is None else B.ptr
    add = R is not None
    aligned = not ((X.ptr | pw | pb | y | (R.ptr | h if add else 0)) & (ALIGN - 1))
    plan = _plans.get(("fwd", X.dtype, m, n, W is not None, B is not None, rms, X.device, aligned, add))
    if plan is None:
        plan = _fwd_plan(X.dtype, m, n, W is not None, B is not None, rms, X.device, aligned, add)
    stream = caller_stream(X.kind, X.device)
    if add:
        input_streams((X, R, W, B), X.kind, stream)
        plan.launch(stream, (X.ptr, R.ptr, pw, pb, y, h, mean, rstd), (eps,))
        return
    input_streams((X, W, B), X.kind, stream)
    plan.launch(stream, (X.ptr, pw, pb, y, mean, rstd), (eps,))


def _launch_bwd(dy, x, mean, rstd, w, dx, dw, db, dw_part, db_part, rms: bool) -> None:
    X = adapt(x)
    m, n = X.shape
    DW, DB = _ad(dw), _ad(db)
    if m or DW is not None or DB is not None:
        grads, parts = (DW, DB), (dw_part, db_part)
        _launch_plan_bwd(
            adapt(dy),
            X,
            _ad(mean),
            adapt(rstd),
            _adp(w, X.dtype),
            adapt(dx).ptr,
            [None if g is None else g.ptr for g in grads],
            [None if g is None else _rows_of(adapt(p)) for g, p in zip(grads, parts)],
            [None if g is None else g.dtype for g in grads],
            m,
            n,
            rms,
        )
    _done()


def _rows_of(d) -> tuple[int, int]:
    """(address, row count) of a partial-row scratch adapter."""
    return d.ptr, d.shape[0]


def _launch_plan_bwd(
    DY, X, MU, RS, W, dx: int, grads, parts, gdt, m: int, n: int, rms: bool, add: bool = False, DH=None
) -> None:
    """The backward launches: adapters of the inputs (``MU``/``W`` None when absent), dx's address, and per
    gradient (dweight[, dbias]: lists of one or two; None: not wanted) its address, its partial-row scratch
    as (address, row count) and its dtype. ``add``: the fused add's backward (``X`` is h; ``DH`` the
    residual gradient's adapter or None)."""
    dw, db = (*grads, None)[:2]
    pw, rw = (*parts, None)[0] or (0, 0)
    pb, rb = (*parts, None)[1] or (0, 0)
    aligned = not ((DY.ptr | X.ptr | _p(W) | dx | _p(DH)) & (ALIGN - 1))
    mode = (1 if DH is not None else 2) if add else 0
    plan = _bwd_plan(X.dtype, m, n, W is not None, rw, rb, rms, X.device, tuple((*gdt, None)[:2]), aligned, mode)
    stream = caller_stream(X.kind, X.device)
    if add:
        input_streams((DY, DH, X, MU, RS, W), X.kind, stream)
        plan.launch(stream, (DY.ptr, _p(DH), X.ptr, _p(MU), RS.ptr, _p(W), dx, pw, pb))
    else:
        input_streams((DY, X, MU, RS, W), X.kind, stream)
        plan.launch(stream, (DY.ptr, X.ptr, _p(MU), RS.ptr, _p(W), dx, pw, pb))
    red = plan.extra
    if red is not None:
        red.launch(stream, (pw, pb, dw or 0, db or 0))


def _done() -> None:
    be = _B._cuda_backend
    if be is not None:
        be.done()


@launcher
def layer_norm_forward(x, weight, bias, y, mean, rstd, eps, n_threads):
    """IN x (M, N), weight (N,) | (0,), bias (N,) | (0,); OUT y (M, N), mean (M,), rstd (M,).
    16-bit x: weight/bias float32 (16-bit ones are converted), mean/rstd float32."""
    if not SIM:
        return _launch_fwd(x, weight, bias, y, mean, rstd, eps, False)
    dt = _dtype(x)
    _forward(kdev(x), _param(weight, dt), _param(bias, dt), kdev(y), kdev(mean), kdev(rstd), eps, False, dt=dt)


@launcher
def rms_norm_forward(x, weight, y, rstd, eps, n_threads):
    """IN x (M, N), weight (N,) | (0,); OUT y (M, N), rstd (M,)."""
    if not SIM:
        return _launch_fwd(x, weight, None, y, None, rstd, eps, True)
    dt = _dtype(x)
    _forward(
        kdev(x),
        _param(weight, dt),
        _param(None, dt),
        kdev(y),
        empty_device((0,), _stat(dt)),
        kdev(rstd),
        eps,
        True,
        dt=dt,
    )


@launcher
def layer_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, dw_part, dw_acc, db_part, db_acc, n_threads):
    """IN dy, x (M, N), mean, rstd (M,), weight (N,) | (0,); OUT dx (M, N), dweight, dbias (N,) | (0,);
    SCRATCH dw_part, db_part (P, N) float64 | (0, 0): P bounds the number of row chunks (teams);
    dw_acc, db_acc: the CPU kernel's short-run accumulators, unused here. dweight/dbias may be float32 or
    x's dtype for 16-bit x (the float32 sums rounded once)."""
    if not SIM:
        return _launch_bwd(dy, x, mean, rstd, weight, dx, dweight, dbias, dw_part, db_part, False)
    _sim_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, dw_part, db_part, False)


@launcher
def rms_norm_backward(dy, x, rstd, weight, dx, dweight, dw_part, dw_acc, n_threads):
    """IN dy, x (M, N), rstd (M,), weight (N,) | (0,); OUT dx (M, N), dweight (N,) | (0,);
    SCRATCH dw_part (P, N) float64 | (0, 0); dw_acc unused here."""
    if not SIM:
        return _launch_bwd(dy, x, None, rstd, weight, dx, dweight, None, dw_part, None, True)
    _sim_backward(dy, x, None, rstd, weight, dx, dweight, None, dw_part, None, True)


def _sim_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, dw_part, db_part, rms: bool) -> None:
    """The simulator's backward launch (no launch plans there); absent mean/dbias/db_part (RMSNorm) as None."""
    dt = _dtype(x)
    (dw, gw), (db, gb) = _grad_out(dweight, dt), _grad_out(dbias, dt)
    mean = empty_device((0,), _stat(dt)) if mean is None else kdev(mean)
    db_part = empty_device((0, 0), np.float64) if db_part is None else kdev(db_part)
    args = (kdev(dy), kdev(x), mean, kdev(rstd), _param(weight, dt), kdev(dx), dw, db, kdev(dw_part), db_part)
    _backward(*args, rms, dt=dt, gdt=(gw, gb))


# ------------------------------------------------------------------------------------------ fused add + norm
def _add_forward(x, residual, weight, bias, y, h, mean, rstd, eps, rms: bool) -> None:
    dt = _dtype(x)
    X = kdev(x)
    if X.shape[0] == 0:
        return _done()
    mean = _sized(mean)
    MU = kdev(mean) if mean is not None and mean.size > 0 else empty_device((0,), _stat(dt))
    _forward(
        X, _param(weight, dt), _param(bias, dt), kdev(y), MU, kdev(rstd), eps, rms, dt=dt, res=kdev(residual), h=kdev(h)
    )
    _done()


def _add_backward(dy, dh, h, mean, rstd, weight, dx, dweight, dbias, dw_part, db_part, rms: bool) -> None:
    dt = _dtype(h)
    (dw, gw), (db, gb) = _grad_out(dweight, dt), _grad_out(dbias, dt)
    dh, mean = _sized(dh), _sized(mean)
    DH = kdev(dh) if dh is not None and dh.size > 0 else empty_device((0, 0), dt if dt != BF16 else np.uint16)
    MU = kdev(mean) if mean is not None and mean.size > 0 else empty_device((0,), _stat(dt))
    PW = kdev(dw_part) if dw.shape[0] > 0 else empty_device((0, 0), np.float64)
    PB = kdev(db_part) if db.shape[0] > 0 else empty_device((0, 0), np.float64)
    _backward(
        kdev(dy), kdev(h), MU, kdev(rstd), _param(weight, dt), kdev(dx), dw, db, PW, PB, rms, dt=dt, dh=DH, gdt=(gw, gb)
    )
    _done()


@launcher
def add_layer_norm_forward(x, residual, weight, bias, y, h, mean, rstd, eps, n_threads):
    """IN x, residual (M, N), weight, bias (N,) | (0,); OUT y, h (M, N), mean, rstd (M,).
    h = x + residual rounded to x's dtype; y = LayerNorm(h) (normalizing the rounded h)."""
    _add_forward(x, residual, weight, bias, y, h, mean, rstd, eps, False)


@launcher
def add_rms_norm_forward(x, residual, weight, y, h, rstd, eps, n_threads):
    """IN x, residual (M, N), weight (N,) | (0,); OUT y, h (M, N), rstd (M,)."""
    _add_forward(x, residual, weight, None, y, h, None, rstd, eps, True)


@launcher
def add_layer_norm_backward(
    dy, dh, h, mean, rstd, weight, dx, dweight, dbias, dw_part, dw_acc, db_part, db_acc, n_threads
):
    """IN dy (M, N), dh (M, N) | absent (size 0), h (M, N), mean, rstd (M,), weight (N,) | (0,);
    OUT dx (M, N) = LayerNorm backward at h + dh (the gradient of x and of residual), dweight, dbias;
    SCRATCH dw_part, db_part (P, N) float64 | (0, 0); dw_acc, db_acc unused here."""
    _add_backward(dy, dh, h, mean, rstd, weight, dx, dweight, dbias, dw_part, db_part, False)


@launcher
def add_rms_norm_backward(dy, dh, h, rstd, weight, dx, dweight, dw_part, dw_acc, n_threads):
    """IN dy, dh | absent, h (M, N), rstd (M,), weight (N,) | (0,); OUT dx (M, N), dweight (N,) | (0,);
    SCRATCH dw_part (P, N) float64 | (0, 0); dw_acc unused here."""
    _add_backward(dy, dh, h, None, rstd, weight, dx, dweight, None, dw_part, None, True)
