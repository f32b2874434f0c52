"""LayerNorm and RMSNorm CUDA kernels on an (M, N) row view; launchers with the CPU kernels' signatures.

Layout: a team of T threads (a power of two, 32..MAX_TEAM) owns a row; short rows put several teams
(rows) in one block. Each thread keeps its VPT elements of the row in registers, so the row is read from
memory once (two-pass moments from registers: accurate when the mean is large against the spread). Rows
longer than MAX_TEAM * MAX_VPT take a streaming form that re-reads the row (from L2).
float16 inputs accumulate in float32 and give float32 statistics; float32 in float32; float64 in float64.

Backward: team g owns a contiguous chunk of rows and accumulates its dweight/dbias contributions in
registers, then writes one float64 partial row ``dw_part[g]``; a second kernel sums the partial rows in
fixed order (deterministic, no atomics). Two launches per backward, one per forward.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ._arrays import adapt
from ._common import (
    ACC,
    SIM,
    Kernel,
    arr,
    cached,
    current_stream,
    dev,
    empty_device,
    make_team_sum,
    make_team_sum2,
    next_pow2,
    register_cap,
    team_buf_cols,
)

if not SIM:
    from ._launch import ArgTemplate, Plan, caller_stream, core_kernel, input_streams

# Launch-shape knobs (module attributes so tests and the benchmark can move them).
MAX_TEAM = 1024  # threads per row at most
FWD_VPT = 8  # aim for about this many elements per thread in the forward
BWD_VPT = 8  # ... and in the backward
MAX_VPT = 16  # beyond MAX_TEAM * MAX_VPT elements a row streams from memory
BLOCK_THREADS = 128  # short rows: several rows per block up to this many threads
BWD_WAVES = 1  # backward: row chunks (teams) = teams the GPU holds at once x this (one partial row each)

def row_config(n: int, target_vpt: int) -> tuple[int, int, int]:
    """(T threads per row, R rows per block, VPT elements per thread in registers; 0 = streaming)."""
    t = 32
    while t < MAX_TEAM and n > t * target_vpt:
        t *= 2
    per = -(-n // t)
    vpt = 0 if per > MAX_VPT else next_pow2(per)
    return t, max(1, BLOCK_THREADS // t), vpt


def bwd_config(n: int, dtype) -> tuple[int, int, int]:
    """``row_config`` for the backward: the register form also needs its running partial rows somewhere,
    in shared memory (if they fit) or in registers (only if few: VPT * itemsize <= 32 bytes), else the
    streaming form."""
    t, r, vpt = row_config(n, BWD_VPT)
    if vpt and not _smem_partials(dtype, t, vpt) and vpt * np.dtype(ACC[np.dtype(dtype)]).itemsize > 32:
        vpt = 0
    return t, r, vpt


def _nb(acc):
    from numba import float32, float64

    return float32 if acc is np.float32 else float64


# ------------------------------------------------------------------------------------------ forward
# Index arithmetic is unsigned (uint64): Numba adds a negative-index wraparound to every signed index,
# which costs registers and keeps the compiler from using base + constant addressing. Per-element
# guards compare the unrolled constant k with kmax (int32, the thread's count of in-row elements)
# instead of 64-bit column indices, which the compiler would otherwise keep live in registers.
U = np.uint64
I32 = np.int32


def _make_forward(dtype, t: int, r: int, vpt: int, rms: bool, grouped: bool = False):
    """Forward kernel: team g (t threads) normalizes row g; r teams per block.

    Register form (vpt > 0): the thread holds row elements lane + k*t (k < vpt) in registers.
    Streaming form (vpt == 0): the row is re-read for each pass.
    ``grouped`` (GroupNorm / InstanceNorm rows, (n, group) of K channels x L positions): element j of row
    r has channel (r % G) * K + j // L for the affine parameters, and the row's mean and M2 (float64)
    go to mom[r] when mom is not empty. Otherwise the affine index is j (G, K, L unused).
    """
    acc = ACC[np.dtype(dtype)]
    acc_nb = _nb(acc)
    out = np.dtype(dtype).type
    f64 = np.float64
    cols = team_buf_cols(t)
    team_sum = make_team_sum(t)
    nv = max(vpt, 1)
    tu, ru = U(t), U(r)
    zero, one = U(0), U(1)

    if vpt > 0:

        def norm_fwd(x, w, b, y, mean, rstd, eps, mom, G, K, L):
            m = U(x.shape[0])
            n = U(x.shape[1])
            buf = cuda.shared.array((2, r, cols), acc_nb)
            tid = U(cuda.threadIdx.x)
            ts = tid // tu
            lane = tid - ts * tu
            row = U(cuda.blockIdx.x) * ru + ts
            ok = row < m
            kmax = I32(0)
            if ok and lane < n:
                kmax = I32(min(U(vpt), (n - lane + tu - one) // tu))
            v = cuda.local.array(nv, acc_nb)
            for k in range(vpt):
                v[k] = acc(0)
                if k < kmax:
                    v[k] = acc(x[row, lane + U(k * t)])
            if rms:
                mu = acc(0)
                q = acc(0)
                for k in range(vpt):
                    q += v[k] * v[k]
                var = team_sum(q, buf, 0, ts, lane) / acc(n)
            else:
                s = acc(0)
                for k in range(vpt):
                    s += v[k]
                mu = team_sum(s, buf, 0, ts, lane) / acc(n)
                q = acc(0)
                for k in range(vpt):
                    if k < kmax:
                        d = v[k] - mu
                        q += d * d
                var = team_sum(q, buf, 1, ts, lane) / acc(n)
            rs = acc(1) / math.sqrt(var + acc(eps))
            if ok:
                if lane == zero:
                    if not rms:
                        mean[row] = mu
                    rstd[row] = rs
                    if grouped and mom.size > 0:
                        mom[row, 0] = f64(mu)
                        mom[row, 1] = f64(var) * f64(n)
                has_w = w.shape[0] > 0
                has_b = b.shape[0] > 0
                cb = (row % U(G)) * U(K) if grouped else zero
                for k in range(vpt):
                    if k < kmax:
                        j = lane + U(k * t)
                        ch = cb + j // U(L) if grouped else j
                        o = (v[k] - mu) * rs
                        if has_w:
                            o = o * acc(w[ch])
                        if has_b:
                            o = o + acc(b[ch])
                        y[row, j] = out(o)

        return norm_fwd

    def norm_fwd_stream(x, w, b, y, mean, rstd, eps, mom, G, K, L):
        m = U(x.shape[0])
        n = U(x.shape[1])
        buf = cuda.shared.array((2, r, cols), acc_nb)
        tid = U(cuda.threadIdx.x)
        ts = tid // tu
        lane = tid - ts * tu
        row = U(cuda.blockIdx.x) * ru + ts
        ok = row < m
        mu = acc(0)
        if not rms:
            s = acc(0)
            j = lane
            while ok and j < n:
                s += acc(x[row, j])
                j += tu
            mu = team_sum(s, buf, 0, ts, lane) / acc(n)
        q = acc(0)
        j = lane
        while ok and j < n:
            d = acc(x[row, j]) - mu
            q += d * d
            j += tu
        var = team_sum(q, buf, 1, ts, lane) / acc(n)
        rs = acc(1) / math.sqrt(var + acc(eps))
        if ok:
            if lane == zero:
                if not rms:
                    mean[row] = mu
                rstd[row] = rs
                if grouped and mom.size > 0:
                    mom[row, 0] = f64(mu)
                    mom[row, 1] = f64(var) * f64(n)
            has_w = w.shape[0] > 0
            has_b = b.shape[0] > 0
            cb = (row % U(G)) * U(K) if grouped else zero
            j = lane
            while j < n:
                ch = cb + j // U(L) if grouped else j
                o = (acc(x[row, j]) - mu) * rs
                if has_w:
                    o = o * acc(w[ch])
                if has_b:
                    o = o + acc(b[ch])
                y[row, j] = out(o)
                j += tu

    return norm_fwd_stream


# ------------------------------------------------------------------------------------------ backward
SMEM_PARTIAL_BYTES = 40 * 1024  # partial dweight/dbias rows live in shared memory up to this size


def _smem_partials(dtype, t: int, vpt: int) -> bool:
    return 2 * t * vpt * np.dtype(ACC[np.dtype(dtype)]).itemsize <= SMEM_PARTIAL_BYTES


def _make_backward(dtype, t: int, r: int, vpt: int, rms: bool, grouped: bool = False):
    """Backward kernel: team g (< n_chunks) owns rows [g*step, (g+1)*step), step = ceil(M / n_chunks),
    accumulates its dweight/dbias contributions and writes partial rows dwp[g], dbp[g] (float64).

    Register form (vpt > 0): x and dy of a row in registers; the running partials in shared memory
    (each thread owns its columns: no barrier) when they fit, else in registers. Streaming form:
    two passes over the row, partials accumulated in place in dwp[g], dbp[g].
    LayerNorm (rms False): xhat = (x - mean) * rstd; RMSNorm (rms True): xhat = x * rstd, no mean term.
    ``grouped``: the weight of element j of row r is w[(r % G) * K + j // L] (GroupNorm / InstanceNorm;
    their dweight/dbias come from another kernel: dwp, dbp are empty then).
    """
    acc = ACC[np.dtype(dtype)]
    acc_nb = _nb(acc)
    out = np.dtype(dtype).type
    f64 = np.float64
    cols = team_buf_cols(t)
    team_sum2 = make_team_sum2(t)
    nv = max(vpt, 1)
    tu, ru = U(t), U(r)
    zero, one = U(0), U(1)
    smem = vpt > 0 and _smem_partials(dtype, t, vpt)
    row_len = t * nv if smem else 1
    part_rows = r if smem else 1

    if vpt > 0:

        def norm_bwd(dy, x, mean, rstd, w, dx, dwp, dbp, n_chunks, G, K, L):
            m = U(x.shape[0])
            n = U(x.shape[1])
            c = U(n_chunks)
            buf = cuda.shared.array((2, 2, r, cols), acc_nb)
            spart = cuda.shared.array((2, part_rows, row_len), acc_nb)
            tid = U(cuda.threadIdx.x)
            ts = tid // tu
            lane = tid - ts * tu
            g = U(cuda.blockIdx.x) * ru + ts
            step = (m + c - one) // c
            lo = min(m, g * step)
            hi = min(m, lo + step)
            has_w = w.shape[0] > 0
            kmax = I32(0)
            if lane < n:
                kmax = I32(min(U(vpt), (n - lane + tu - one) // tu))
            xv = cuda.local.array(nv, acc_nb)
            dv = cuda.local.array(nv, acc_nb)
            rpw = cuda.local.array(nv, acc_nb)
            rpb = cuda.local.array(nv, acc_nb)
            for k in range(vpt):
                if smem:
                    spart[0, ts, lane + U(k * t)] = acc(0)
                    spart[1, ts, lane + U(k * t)] = acc(0)
                else:
                    rpw[k] = acc(0)
                    rpb[k] = acc(0)
            it = zero
            while it < step:
                row = lo + it
                ok = row < hi
                mu = acc(0)
                rs = acc(0)
                for k in range(vpt):
                    xv[k] = acc(0)
                    dv[k] = acc(0)
                if ok:
                    if not rms:
                        mu = acc(mean[row])
                    rs = acc(rstd[row])
                    for k in range(vpt):
                        if k < kmax:
                            xv[k] = acc(x[row, lane + U(k * t)])
                            dv[k] = acc(dy[row, lane + U(k * t)])
                s1 = acc(0)
                s2 = acc(0)
                for k in range(vpt):
                    xh = (xv[k] - mu) * rs
                    d = dv[k]
                    gv = d
                    if has_w and k < kmax:
                        j = lane + U(k * t)
                        gv = d * acc(w[(row % U(G)) * U(K) + j // U(L) if grouped else j])
                    s1 += gv
                    s2 += gv * xh
                    if smem:
                        spart[0, ts, lane + U(k * t)] += d * xh
                        spart[1, ts, lane + U(k * t)] += d
                    else:
                        rpw[k] += d * xh
                        rpb[k] += d
                    xv[k] = xh
                    dv[k] = gv
                a1, a2 = team_sum2(s1, s2, buf, it & one, ts, lane)
                c1 = acc(0) if rms else a1 / acc(n)
                c2 = a2 / acc(n)
                if ok:
                    for k in range(vpt):
                        if k < kmax:
                            dx[row, lane + U(k * t)] = out(rs * (dv[k] - c1 - xv[k] * c2))
                it += one
            if g < c:
                want_dw = dwp.size > 0
                want_db = dbp.size > 0
                for k in range(vpt):
                    if k < kmax:
                        j = lane + U(k * t)
                        pw = spart[0, ts, j] if smem else rpw[k]
                        pb = spart[1, ts, j] if smem else rpb[k]
                        if want_dw:
                            dwp[g, j] = f64(pw)
                        if want_db:
                            dbp[g, j] = f64(pb)

        return norm_bwd

    def norm_bwd_stream(dy, x, mean, rstd, w, dx, dwp, dbp, n_chunks, G, K, L):
        m = U(x.shape[0])
        n = U(x.shape[1])
        c = U(n_chunks)
        buf = cuda.shared.array((2, 2, r, cols), acc_nb)
        tid = U(cuda.threadIdx.x)
        ts = tid // tu
        lane = tid - ts * tu
        g = U(cuda.blockIdx.x) * ru + ts
        step = (m + c - one) // c
        lo = min(m, g * step)
        hi = min(m, lo + step)
        has_w = w.shape[0] > 0
        want_dw = dwp.size > 0 and g < c
        want_db = dbp.size > 0 and g < c
        # The team's own partial rows accumulate in place (each element is touched by one thread only).
        j = lane
        while j < n:
            if want_dw:
                dwp[g, j] = f64(0)
            if want_db:
                dbp[g, j] = f64(0)
            j += tu
        it = zero
        while it < step:
            row = lo + it
            ok = row < hi
            mu = acc(0)
            rs = acc(0)
            s1 = acc(0)
            s2 = acc(0)
            if ok:
                if not rms:
                    mu = acc(mean[row])
                rs = acc(rstd[row])
                j = lane
                while j < n:
                    xh = (acc(x[row, j]) - mu) * rs
                    gv = acc(dy[row, j])
                    if has_w:
                        gv = gv * acc(w[(row % U(G)) * U(K) + j // U(L) if grouped else j])
                    s1 += gv
                    s2 += gv * xh
                    j += tu
            a1, a2 = team_sum2(s1, s2, buf, it & one, ts, lane)
            c1 = acc(0) if rms else a1 / acc(n)
            c2 = a2 / acc(n)
            if ok:
                j = lane
                while j < n:
                    xh = (acc(x[row, j]) - mu) * rs
                    d = acc(dy[row, j])
                    gv = d
                    if has_w:
                        gv = d * acc(w[(row % U(G)) * U(K) + j // U(L) if grouped else j])
                    dx[row, j] = out(rs * (gv - c1 - xh * c2))
                    if want_dw:
                        dwp[g, j] += f64(d * xh)
                    if want_db:
                        dbp[g, j] += f64(d)
                    j += tu
            it += one

    return norm_bwd_stream


# ------------------------------------------------------------------------------------------ column sums
RED_COLS = 32  # columns per block of the partial-row reduction
RED_GROUPS = 8  # chunk groups per block (block = RED_COLS * RED_GROUPS threads)


def _make_reduce(dtype):
    out = np.dtype(dtype).type
    from numba import float64

    bc, bg = RED_COLS, RED_GROUPS

    def reduce_partials(pa, pb, oa, ob, c):
        """oa[j] = sum_i pa[i, j] and ob[j] = sum_i pb[i, j] over i < c, in a fixed order.

        Chunk group q of the block sums its contiguous range of partial rows; group 0 then adds the group
        sums in order. An output of length 0 is skipped.
        """
        n = max(oa.shape[0], ob.shape[0])
        buf = cuda.shared.array((2, bg, bc), float64)
        tid = cuda.threadIdx.x
        q = tid // bc
        cl = tid - q * bc
        j = cuda.blockIdx.x * bc + cl
        want_a = oa.size > 0
        want_b = ob.size > 0
        per = (c + bg - 1) // bg
        lo = min(c, q * per)
        hi = min(c, lo + per)
        sa = np.float64(0)
        sb = np.float64(0)
        if j < n:
            for i in range(lo, hi):
                if want_a:
                    sa += pa[i, j]
                if want_b:
                    sb += pb[i, j]
        buf[0, q, cl] = sa
        buf[1, q, cl] = sb
        cuda.syncthreads()
        if q == 0 and j < n:
            for k in range(1, bg):
                sa += buf[0, k, cl]
                sb += buf[1, k, cl]
            if want_a:
                oa[j] = out(sa)
            if want_b:
                ob[j] = out(sb)

    return reduce_partials


def _reduce_kernel(dtype) -> Kernel:
    dt = np.dtype(dtype)

    def build():
        p2 = arr(np.float64, 2)
        sig = f"void({p2}, {p2}, {arr(dt, 1)}, {arr(dt, 1)}, int64)"
        return Kernel(_make_reduce(dt), sig, register_cap(RED_COLS * RED_GROUPS, np.float64))

    return cached(("reduce_partials", dt, RED_COLS, RED_GROUPS), build)


def reduce_partials(pa, pb, oa, ob, c: int, stream) -> None:
    n = max(oa.shape[0], ob.shape[0])
    if n == 0:
        return
    k = _reduce_kernel(oa.dtype if oa.shape[0] > 0 else ob.dtype)
    k.launch(-(-n // RED_COLS), RED_COLS * RED_GROUPS, stream, pa, pb, oa, ob, c)


# ------------------------------------------------------------------------------------------ launchers
def _stat(dt):
    return np.dtype(ACC[np.dtype(dt)])


def _get(kind: str, dt, t: int, r: int, vpt: int, rms: bool, grouped: bool = False) -> Kernel:
    dt = np.dtype(dt)
    a2, a1, s1, p2 = arr(dt, 2), arr(dt, 1), arr(_stat(dt), 1), arr(np.float64, 2)
    if kind == "fwd":
        sig = f"void({a2}, {a1}, {a1}, {a2}, {s1}, {s1}, float64, {p2}, int64, int64, int64)"
        make = _make_forward
    else:
        sig = f"void({a2}, {a2}, {s1}, {s1}, {a1}, {a2}, {p2}, {p2}, int64, int64, int64, int64)"
        make = _make_backward
    regs = register_cap(t * r, ACC[dt])
    key = ("norm", kind, dt, t, r, vpt, rms, grouped)
    return cached(key, lambda: Kernel(make(dt, t, r, vpt, rms, grouped), sig, regs))


def _no_mom():
    """A (0, 0) float64 device array (the ``mom`` argument when no moments are wanted)."""
    return empty_device((0, 0), np.float64)


def _forward(x, w, b, y, mean, rstd, eps, rms, groups=None, mom=None):
    """Row kernel launch; ``groups`` = (G, K, L) for GroupNorm/InstanceNorm rows (affine per channel)."""
    m, n = x.shape
    if m == 0:
        return
    t, r, vpt = row_config(n, FWD_VPT)
    k = _get("fwd", x.dtype, t, r, vpt, rms, groups is not None)
    g, kk, ll = groups if groups is not None else (1, n, 1)
    k.launch(-(-m // r), t * r, current_stream(), x, w, b, y, mean, rstd, float(eps),
             _no_mom() if mom is None else mom, g, kk, ll)


def _backward(dy, x, mean, rstd, w, dx, dw, db, dw_part, db_part, rms, groups=None):
    m, n = x.shape
    want = dw.shape[0] > 0 or db.shape[0] > 0
    if m == 0 and not want:
        return
    t, r, vpt = bwd_config(n, x.dtype)
    k = _get("bwd", x.dtype, t, r, vpt, rms, groups is not None)
    g, kk, ll = groups if groups is not None else (1, n, 1)
    rows = [p.shape[0] for o, p in ((dw, dw_part), (db, db_part)) if o.shape[0] > 0]
    bound = min(rows) if rows else 1 << 30
    c = max(1, min(bound, k.resident_blocks(t * r) * r * BWD_WAVES, m))
    stream = current_stream()
    k.launch(-(-c // r), t * r, stream, dy, x, mean, rstd, w, dx, dw_part, db_part, c, g, kk, ll)
    if want:
        reduce_partials(dw_part, db_part, dw, db, c, stream)


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
    return d if d.size > 0 else None


def _p(d) -> int:
    return 0 if d is None else d.ptr


def _fwd_plan(dt, m: int, n: int, has_w: bool, has_b: bool, rms: bool, device: int) -> Plan:
    key = ("fwd", dt, m, n, has_w, has_b, rms, device)
    plan = _plans.get(key)
    if plan is None:
        t, r, vpt = row_config(n, FWD_VPT)
        k = _get("fwd", dt, t, r, vpt, rms)
        it, sd = dt.itemsize, _stat(dt).itemsize
        tpl = ArgTemplate()
        slots = (
            tpl.array((m, n), it),
            tpl.array((n if has_w else 0,), it),
            tpl.array((n if has_b else 0,), it),
            tpl.array((m, n), it),
            tpl.array((0 if rms else m,), sd),
            tpl.array((m,), sd),
        )
        eps = tpl.f64()
        tpl.array((0, 0), 8)  # mom: no GroupNorm moments
        for v in (1, n, 1):  # G, K, L
            tpl.i64(v)
        plan = _plans[key] = Plan(core_kernel(k), -(-m // r), t * r, tpl, slots, (eps,))
    return plan


def _bwd_plan(dt, m: int, n: int, has_w: bool, pw: int, pb: int, rms: bool, device: int) -> Plan:
    """Row kernel plan; ``pw``/``pb`` are the partial-row counts of dweight/dbias scratch (0: not wanted).
    ``plan.extra`` is the reduction's plan (None when no dweight/dbias is wanted)."""
    key = ("bwd", dt, m, n, has_w, pw, pb, rms, device)
    plan = _plans.get(key)
    if plan is None:
        t, r, vpt = bwd_config(n, dt)
        k = _get("bwd", dt, t, r, vpt, rms)
        bound = min([p for p in (pw, pb) if p] or [1 << 30])
        c = max(1, min(bound, k.resident_blocks(t * r) * r * BWD_WAVES, m))
        it, sd = dt.itemsize, _stat(dt).itemsize
        tpl = ArgTemplate()
        slots = (
            tpl.array((m, n), it),
            tpl.array((m, n), it),
            tpl.array((0 if rms else m,), sd),
            tpl.array((m,), sd),
            tpl.array((n if has_w else 0,), it),
            tpl.array((m, n), it),
            tpl.array((pw, n) if pw else (0, 0), 8),
            tpl.array((pb, n) if pb else (0, 0), 8),
        )
        for v in (c, 1, n, 1):  # n_chunks, G, K, L
            tpl.i64(v)
        red = None
        if pw or pb:
            rk = _reduce_kernel(dt)
            rt = ArgTemplate()
            rslots = (
                rt.array((pw, n) if pw else (0, 0), 8),
                rt.array((pb, n) if pb else (0, 0), 8),
                rt.array((n if pw else 0,), it),
                rt.array((n if pb else 0,), it),
            )
            rt.i64(c)
            red = Plan(core_kernel(rk), -(-n // RED_COLS), RED_COLS * RED_GROUPS, rt, rslots)
        # (with M == 0 one block still runs: it writes the zero partial rows the reduction sums)
        plan = _plans[key] = Plan(core_kernel(k), -(-c // r), t * r, tpl, slots, (), red)
    return plan


def _launch_fwd(x, w, b, y, mean, rstd, eps, rms: bool) -> None:
    X = adapt(x)
    m, n = X.shape
    if m == 0:
        return _done()
    W, B, Y, MU, RS = _ad(w), _ad(b), adapt(y), _ad(mean), adapt(rstd)
    plan = _fwd_plan(X.dtype, m, n, W is not None, B is not None, rms, X.device)
    stream = caller_stream(X.kind, X.device)
    input_streams((X, W, B), X.kind, stream)
    plan.launch(stream, (X.ptr, _p(W), _p(B), Y.ptr, _p(MU), RS.ptr), (eps,))
    _done()


def _launch_bwd(dy, x, mean, rstd, w, dx, dw, db, dw_part, db_part, rms: bool) -> None:
    X = adapt(x)
    m, n = X.shape
    DW, DB = _ad(dw), _ad(db)
    if m == 0 and DW is None and DB is None:
        return _done()
    DY, MU, RS, W, DX = adapt(dy), _ad(mean), adapt(rstd), _ad(w), adapt(dx)
    PW = adapt(dw_part) if DW is not None else None
    PB = adapt(db_part) if DB is not None else None
    plan = _bwd_plan(X.dtype, m, n, W is not None, 0 if PW is None else PW.shape[0],
                     0 if PB is None else PB.shape[0], rms, X.device)
    stream = caller_stream(X.kind, X.device)
    input_streams((DY, X, MU, RS, W), X.kind, stream)
    plan.launch(stream, (DY.ptr, X.ptr, _p(MU), RS.ptr, _p(W), DX.ptr, _p(PW), _p(PB)))
    red = plan.extra
    if red is not None:
        red.launch(stream, (_p(PW), _p(PB), _p(DW), _p(DB)))
    _done()


def _done() -> None:
    from ..._dispatch import _cuda_backend

    if _cuda_backend is not None:
        _cuda_backend.done()


def layer_norm_forward(x, weight, bias, y, mean, rstd, eps, n_threads):
    """IN x (M, N), weight (N,) | (0,), bias (N,) | (0,); OUT y (M, N), mean (M,), rstd (M,)."""
    if not SIM:
        return _launch_fwd(x, weight, bias, y, mean, rstd, eps, False)
    _forward(dev(x), dev(weight), dev(bias), dev(y), dev(mean), dev(rstd), eps, False)


def rms_norm_forward(x, weight, y, rstd, eps, n_threads):
    """IN x (M, N), weight (N,) | (0,); OUT y (M, N), rstd (M,)."""
    if not SIM:
        return _launch_fwd(x, weight, None, y, None, rstd, eps, True)
    x, weight, y, rstd = dev(x), dev(weight), dev(y), dev(rstd)
    _forward(x, weight, empty_device((0,), x.dtype), y, empty_device((0,), rstd.dtype), rstd, eps, True)


def layer_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias, dw_part, dw_acc, db_part, db_acc,
                        n_threads):
    """IN dy, x (M, N), mean, rstd (M,), weight (N,) | (0,); OUT dx (M, N), dweight, dbias (N,) | (0,);
    SCRATCH dw_part, db_part (P, N) float64 | (0, 0): P bounds the number of row chunks (teams);
    dw_acc, db_acc: the CPU kernel's short-run accumulators, unused here."""
    if not SIM:
        return _launch_bwd(dy, x, mean, rstd, weight, dx, dweight, dbias, dw_part, db_part, False)
    _backward(dev(dy), dev(x), dev(mean), dev(rstd), dev(weight), dev(dx), dev(dweight), dev(dbias),
              dev(dw_part), dev(db_part), False)


def rms_norm_backward(dy, x, rstd, weight, dx, dweight, dw_part, dw_acc, n_threads):
    """IN dy, x (M, N), rstd (M,), weight (N,) | (0,); OUT dx (M, N), dweight (N,) | (0,);
    SCRATCH dw_part (P, N) float64 | (0, 0); dw_acc unused here."""
    if not SIM:
        return _launch_bwd(dy, x, None, rstd, weight, dx, dweight, None, dw_part, None, True)
    dy, x, rstd, weight, dx, dweight, dw_part = (dev(a) for a in (dy, x, rstd, weight, dx, dweight, dw_part))
    _backward(dy, x, empty_device((0,), rstd.dtype), rstd, weight, dx, dweight, empty_device((0,), x.dtype),
              dw_part, empty_device((0, 0), np.float64), True)
