"""LayerNorm and RMSNorm row kernels (the factories; launch shapes, plans and launchers are layer_norm.py's).

Forward: a team of T threads owns a row (several rows per block for short rows); register form (each thread
keeps VPT elements of the row in registers: x read once, per-thread moments merged in one reduction;
float32 with 128-bit accesses where aligned) or streaming form (the row re-read from L2). Backward: team g
owns a chunk of rows, accumulates its dweight/dbias contributions (shared memory or registers, or in place
in its partial row when streaming) and writes one float64 partial row; ``_column_sums.reduce_partials`` sums
the partial rows in fixed order. The fused residual add and the GroupNorm/InstanceNorm (``grouped``) forms
are compile-time variants of the same bodies.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, types

from . import _common as cc

# ------------------------------------------------------------------------------------------ forward
# Index arithmetic is unsigned (uint64): Numba adds a negative-index wraparound to every signed index,
# which costs registers and keeps the compiler from using base + constant addressing. Per-element
# guards compare the unrolled constant k with kmax (int32, the thread's count of in-row elements)
# instead of 64-bit column indices, which the compiler would otherwise keep live in registers.
U = np.uint64
I32 = np.int32
F64 = np.float64
ZERO, ONE = U(0), U(1)


def _inline(fn):
    """A device function inlined into its kernel (NVVM ``alwaysinline``): the kernels below share one body
    between their plain and fused-add forms."""
    return cuda.jit(device=True)(fn) if cc.SIM else cuda.jit(device=True, forceinline=True)(fn)


def _make_forward(
    dtype,
    t: int,
    r: int,
    vpt: int,
    rms: bool,
    grouped: bool = False,
    add: bool = False,
    wb=None,
    vec: bool = False,
    persist: bool = False,
):
    """Forward kernel: team g (t threads) normalizes row g; r teams per block.

    Register form (vpt > 0): the thread holds row elements lane + k*t (k < vpt) in registers.
    Streaming form (vpt == 0): the row is re-read for each pass.
    ``grouped`` (GroupNorm / InstanceNorm rows, (n, group) of K channels x L positions): element j of row
    r has channel (r % G) * K + j // L for the affine parameters, and the row's mean and M2 (float64)
    go to mom[r] when mom is not empty. Otherwise the affine index is j (G, K, L unused).
    ``add`` (fused residual add): the row normalized is h = x + res rounded to x's dtype, and h is stored;
    the kernel then takes (x, res, w, b, y, h, mean, rstd, eps, mom, G, K, L).
    Data (x, res, y, h) in ``dtype`` (bfloat16 as uint16 bits); w, b in ``cc.param_dtype(dtype)``.
    ``wb`` = (has_weight, has_bias): compile-time variants (an absent parameter's code is not in the
    kernel, the length-0 array is never read); None: tested at run time from the arrays' lengths.
    ``vec`` (float32 or 16-bit, register form, vpt a multiple of a vector's 4 / 8 elements, not grouped;
    fused add included: x, res read and h stored 128 bits at a time): the thread holds groups of adjacent
    elements read and written with 128-bit accesses, weight and bias too (``_row_vec``); the launcher
    picks it only for rows of a multiple of a vector's elements and 16-byte aligned arrays
    (``_vec.vec_ok``). Same arithmetic per element; the per-thread partial sums add the row's elements in
    another order (statistics may differ from the scalar form's in the last bits).
    ``persist`` (with ``vec``): the persistent form (``_row_vec.vec_fwd_persistent_body``: a grid of at
    most the resident blocks strides over the rows, weight/bias in registers, the next row prefetched).
    """
    acc, acc_nb, ld, st, ldp, cols = _types(dtype, t)
    team_sum = cc.make_team_sum(t)
    row_moments = _make_row_moments(acc, t, max(vpt, 1), rms)
    nv, tu, ru = max(vpt, 1), U(t), U(r)

    @_inline
    def ld_row(x, res, h, row, j):
        """Element j of the row as the kernel normalizes it (fused add: h = x + res, stored, rounded)."""
        if add:
            hv = st(ld(x[row, j]) + ld(res[row, j]))
            h[row, j] = hv
            return ld(hv)
        return ld(x[row, j])

    @_inline
    def ld_again(x, h, row, j):
        """Element j of the row, read again (streaming form: h once stored)."""
        if add:
            return ld(h[row, j])
        return ld(x[row, j])

    row_slot, _chunk_slot = _team_helpers(tu, ru)

    @_inline
    def row_stats(mean, rstd, mom, row, lane, ok, mu, var, n, eps, G, K):
        """(rs, cb) of a row from its mean and variance: rs = 1/sqrt(var + eps), cb the row's first affine
        channel (grouped; else 0). Lane 0 of a team with a row (``ok``) stores the row's statistics: mean
        (LayerNorm), rstd, and GroupNorm's float64 moments."""
        rs = acc(1) / math.sqrt(var + acc(eps))
        if ok and lane == ZERO:
            if not rms:
                mean[row] = mu
            rstd[row] = rs
            if grouped and mom.size > 0:
                mom[row, 0] = F64(mu)
                mom[row, 1] = F64(var) * F64(n)
        return rs, (row % U(G)) * U(K) if grouped else ZERO

    # -1: present or absent, read at run time; 0: absent; 1: present (compile-time constants)
    mode_w, mode_b = (-1, -1) if wb is None else (int(bool(wb[0])), int(bool(wb[1])))

    @_inline
    def out(v, mu, rs, w, b, cb, j, L):
        """Output element j from its value v: (v - mu) * rs * w + b (the affine index cb + j // L when
        grouped, else j; absent w, b skipped)."""
        ch = cb + j // U(L) if grouped else j
        o = (v - mu) * rs
        if mode_w > 0 or (mode_w < 0 and w.shape[0] > 0):
            o = o * ldp(w[ch])
        if mode_b > 0 or (mode_b < 0 and b.shape[0] > 0):
            o = o + ldp(b[ch])
        return st(o)

    if vec:
        if grouped:
            raise ValueError("the vector row kernels have no grouped form")
        from ._row_vec import vec_fwd_body, vec_fwd_persistent_body

        if persist:
            return _fwd_kernel(vec_fwd_persistent_body(dtype, t, r, vpt, rms, mode_w, mode_b, row_stats, add), add)
        return _fwd_kernel(vec_fwd_body(dtype, t, r, vpt, rms, mode_w, mode_b, row_slot, row_stats, add), add)

    if vpt > 0:

        @_inline
        def norm_fwd_body(x, res, w, b, y, h, mean, rstd, eps, mom, G, K, L):
            buf = cuda.shared.array((4, r, cols), acc_nb)
            n, ts, lane, row, ok = row_slot(x)
            kmax = I32(0)
            if ok and lane < n:
                kmax = I32(min(U(vpt), (n - lane + tu - ONE) // tu))
            v = cuda.local.array(nv, acc_nb)
            for k in range(vpt):
                v[k] = acc(0)
                if k < kmax:
                    v[k] = ld_row(x, res, h, row, lane + U(k * t))
            mu, var = row_moments(v, kmax, buf, ts, lane, n)
            rs, cb = row_stats(mean, rstd, mom, row, lane, ok, mu, var, n, eps, G, K)
            if ok:
                for k in range(vpt):
                    if k < kmax:
                        j = lane + U(k * t)
                        y[row, j] = out(v[k], mu, rs, w, b, cb, j, L)

        return _fwd_kernel(norm_fwd_body, add)

    @_inline
    def norm_fwd_stream_body(x, res, w, b, y, h, mean, rstd, eps, mom, G, K, L):
        buf = cuda.shared.array((2, r, cols), acc_nb)
        n, ts, lane, row, ok = row_slot(x)
        mu = acc(0)
        if not rms or add:  # (the fused add stores h in this first pass)
            s = acc(0)
            j = lane
            while ok and j < n:
                s += ld_row(x, res, h, row, j)
                j += tu
            if not rms:
                mu = team_sum(s, buf, 0, ts, lane) / acc(n)
        q = acc(0)
        j = lane
        while ok and j < n:
            d = ld_again(x, h, row, j) - mu
            q += d * d
            j += tu
        var = team_sum(q, buf, 1, ts, lane) / acc(n)
        rs, cb = row_stats(mean, rstd, mom, row, lane, ok, mu, var, n, eps, G, K)
        if ok:
            j = lane
            while j < n:
                y[row, j] = out(ld_again(x, h, row, j), mu, rs, w, b, cb, j, L)
                j += tu

    return _fwd_kernel(norm_fwd_stream_body, add)


def _make_row_moments(acc, t: int, vpt: int, rms: bool):
    """Device function ``(v, cnt, buf, ts, lane, n) -> (mean, var)`` of a row whose thread holds its
    first ``cnt`` of ``vpt`` register elements ``v`` (the others 0); ``buf`` a shared (4, r, cols) array.

    RMSNorm: mean 0 and var = the mean square (one team sum).

    float32 accumulation: each thread's two-pass summary of its own elements (mean as hi + lo, M2 about
    it), merged over the team in one reduction (``_common.make_team_moments``: one barrier per row).
    float64: the mean, then the squared deviations from it, in two team sums (two barriers: the merge's
    eight float64 values per shuffle step do not fit the 64 registers of a 1024-thread team)."""
    team_sum = cc.make_team_sum(t)
    if rms:

        @_inline
        def mean_square(v, cnt, buf, ts, lane, n):
            q = acc(0)
            for k in range(vpt):
                q += v[k] * v[k]
            return acc(0), team_sum(q, buf, 0, ts, lane) / acc(n)

        return mean_square

    if np.dtype(acc) == np.float64:

        @_inline
        def two_pass(v, cnt, buf, ts, lane, n):
            s = acc(0)
            for k in range(vpt):
                s += v[k]
            mu = team_sum(s, buf, 0, ts, lane) / acc(n)
            q = acc(0)
            for k in range(vpt):
                if k < cnt:
                    d = v[k] - mu
                    q += d * d
            return mu, team_sum(q, buf, 1, ts, lane) / acc(n)

        return two_pass

    team_moments = cc.make_team_moments(t)

    @_inline
    def thread_moments(v, cnt, buf, ts, lane, n):
        s = acc(0)
        for k in range(vpt):
            s += v[k]
        c = acc(cnt)
        hi = s / c if cnt > 0 else acc(0)
        r = acc(0)
        q = acc(0)
        for k in range(vpt):
            if k < cnt:
                d = v[k] - hi
                r += d
                q += d * d
        lo = r / c if cnt > 0 else acc(0)  # the rounding of hi, measured: the thread's mean is hi + lo
        mu, m2 = team_moments(c, hi, lo, q - r * lo, buf, ts, lane)
        return mu, m2 / acc(n)

    return thread_moments


def _storage_nb(dtype):
    """The Numba type of a stored element of ``dtype`` as the kernels see it (bfloat16: uint16)."""
    return getattr(types, cc.nbname(dtype))


def _types(dtype, t: int):
    """(accumulation type, its Numba type, data loader, data storer, parameter loader, team buffer columns)
    of the row kernels for data of ``dtype`` and teams of ``t`` threads."""
    acc = cc.ACC[np.dtype(dtype)]
    ldp = cc.loader(cc.param_dtype(dtype))
    return acc, cc.nb_type(acc), cc.loader(dtype), cc.storer(dtype), ldp, cc.team_buf_cols(t)


def _team_helpers(tu, ru):
    """Device functions shared by the register and streaming forms of the row kernels (inlined), for a
    matrix ``x`` of m rows of n elements:
    ``row_slot(x)`` -> (n, ts, lane, row, ok): this thread's team slot in the block, its rank in the team,
    the team's row (one row per team, forward) and whether that row exists;
    ``chunk_slot(x, n_chunks)`` -> (n, c, ts, lane, g, step, lo, hi): team g's chunk [lo, hi) of the rows
    cut into c = n_chunks chunks of ``step`` rows (backward)."""

    @_inline
    def slot():
        tid = U(cuda.threadIdx.x)
        ts = tid // tu
        return ts, tid - ts * tu, U(cuda.blockIdx.x) * ru + ts

    @_inline
    def row_slot(x):
        ts, lane, row = slot()
        return U(x.shape[1]), ts, lane, row, row < U(x.shape[0])

    @_inline
    def chunk_slot(x, n_chunks):
        m = U(x.shape[0])
        c = U(n_chunks)
        ts, lane, g = slot()
        step = (m + c - U(1)) // c
        lo = min(m, g * step)
        return U(x.shape[1]), c, ts, lane, g, step, lo, min(m, lo + step)

    return row_slot, chunk_slot


def _fwd_kernel(body, add: bool):
    """The forward kernel around ``body``: (x, w, b, y, mean, rstd, eps, mom, G, K, L), or with ``add``
    (x, res, w, b, y, h, mean, rstd, eps, mom, G, K, L)."""
    if add:

        def add_norm_fwd(x, res, w, b, y, h, mean, rstd, eps, mom, G, K, L):
            body(x, res, w, b, y, h, mean, rstd, eps, mom, G, K, L)

        return add_norm_fwd

    def norm_fwd(x, w, b, y, mean, rstd, eps, mom, G, K, L):
        body(x, x, w, b, y, y, mean, rstd, eps, mom, G, K, L)

    return norm_fwd


# ------------------------------------------------------------------------------------------ backward
SMEM_PARTIAL_BYTES = 40 * 1024  # partial dweight/dbias rows live in shared memory up to this size


def smem_parts(dtype, t: int, vpt: int, rms: bool) -> int:
    """How many of a register-form backward's running partial rows (dweight first, then dbias; RMSNorm has
    only dweight) live in shared memory (up to ``SMEM_PARTIAL_BYTES``); the others live in registers."""
    one = t * vpt * np.dtype(cc.ACC[np.dtype(dtype)]).itemsize
    return min(1 if rms else 2, SMEM_PARTIAL_BYTES // max(one, 1))


def _make_backward(
    dtype, t: int, r: int, vpt: int, rms: bool, grouped: bool = False, add: bool = False, vec: bool = False
):
    """Backward kernel: team g (< n_chunks) owns rows [g*step, (g+1)*step), step = ceil(M / n_chunks),
    accumulates its dweight/dbias contributions and writes partial rows dwp[g], dbp[g] (float64).

    Register form (vpt > 0): x and dy of a row in registers; the running partials in shared memory
    (each thread owns its columns: no barrier) as far as they fit (``smem_parts``), the others in
    registers. Streaming form:
    two passes over the row, partials accumulated in place in dwp[g], dbp[g].
    LayerNorm (rms False): xhat = (x - mean) * rstd; RMSNorm (rms True): xhat = x * rstd, no mean term.
    ``grouped``: the weight of element j of row r is w[(r % G) * K + j // L] (GroupNorm / InstanceNorm;
    their dweight/dbias come from another kernel: dwp, dbp are empty then).
    ``add`` (fused residual add): dx += dh (the gradient arriving on the residual stream; a (0, 0) ``dh``
    adds nothing), rounded once; the kernel takes ``dh`` after ``dy``.
    Data (dy, dh, x, dx) in ``dtype`` (bfloat16 as uint16 bits); w in ``cc.param_dtype(dtype)``.
    ``vec`` (register form, not grouped): 128-bit accesses to the rows and the weight (``_row_vec``).
    """
    acc, acc_nb, ld, st, ldp, cols = _types(dtype, t)
    team_sum2 = cc.make_team_sum2(t)
    nv, tu, ru = max(vpt, 1), U(t), U(r)
    ns = smem_parts(dtype, t, vpt, rms) if vpt > 0 else 0
    sw, sb = ns >= 1, ns >= 2  # dweight / dbias partials in shared memory
    row_len = t * nv if ns else 1
    part_rows = r if ns else 1
    n_parts = max(ns, 1)

    @_inline
    def dx_out(dh, row, j, v):
        """dx[row, j] from its float value (fused add: + dh[row, j] first)."""
        if add:
            if dh.size > 0:
                v += ld(dh[row, j])
        return st(v)

    _row_slot, chunk_slot = _team_helpers(tu, ru)

    @_inline
    def row_at(lo, hi, it, mean, rstd):
        """(row, ok, mean, rstd) of iteration ``it`` of a team's chunk [lo, hi): ok when the row is in it
        (else mean = rstd = 0); the mean is 0 for RMSNorm."""
        row = lo + it
        ok = row < hi
        mu = acc(0)
        rs = acc(0)
        if ok:
            if not rms:
                mu = acc(mean[row])
            rs = acc(rstd[row])
        return row, ok, mu, rs

    @_inline
    def wdy(d, w, row, j, G, K, L):
        """dy times the weight of element j of the row (dy without weight)."""
        if w.shape[0] > 0:
            return d * ldp(w[(row % U(G)) * U(K) + j // U(L) if grouped else j])
        return d

    @_inline
    def add_parts(spart, rpw, rpb, ts, lane, k, pw, pb, init):
        """Running partial k of the team's dweight (+= pw) and dbias (+= pb; RMSNorm has none), in shared
        slot lane + k*t or register k; ``init``: set them instead (to start a chunk)."""
        if sw:
            spart[0, ts, lane + U(k * t)] = pw if init else spart[0, ts, lane + U(k * t)] + pw
        else:
            rpw[k] = pw if init else rpw[k] + pw
        if not rms:
            if sb:
                spart[1, ts, lane + U(k * t)] = pb if init else spart[1, ts, lane + U(k * t)] + pb
            else:
                rpb[k] = pb if init else rpb[k] + pb

    @_inline
    def row_elem(xv, dv, k, mu, rs, gv, s1, s2, spart, rpw, rpb, ts, lane):
        """Element k of a row in the registers (x in xv, dy in dv; gv: dy times its weight): its dweight and
        dbias terms added to the running partials, xv[k] = xhat, dv[k] = gv; returns the row's two sums
        s1 + gv, s2 + gv * xhat."""
        xh = (xv[k] - mu) * rs
        d = dv[k]
        add_parts(spart, rpw, rpb, ts, lane, k, d * xh, d, False)
        xv[k] = xh
        dv[k] = gv
        return s1 + gv, s2 + gv * xh

    @_inline
    def zero_parts(spart, rpw, rpb, ts, lane):
        """The team's running partials set to 0 (a chunk starts)."""
        for k in range(vpt):
            add_parts(spart, rpw, rpb, ts, lane, k, acc(0), acc(0), True)

    @_inline
    def next_row(lo, hi, it, mean, rstd, xv, dv):
        """``row_at`` for the register forms: also clears the register rows xv, dv."""
        for k in range(vpt):
            xv[k] = acc(0)
            dv[k] = acc(0)
        return row_at(lo, hi, it, mean, rstd)

    @_inline
    def row_coefs(s1, s2, buf, it, ts, lane, n):
        """(c1, c2) of a row from the team's sums of gv and gv * xhat (c1 = 0 for RMSNorm)."""
        a1, a2 = team_sum2(s1, s2, buf, it & ONE, ts, lane)
        return acc(0) if rms else a1 / acc(n), a2 / acc(n)

    if vec:
        if grouped or vpt == 0:
            raise ValueError("the vector backward has no grouped or streaming form")
        from ._row_vec import vec_bwd_body

        parts = (chunk_slot, next_row, zero_parts, row_elem, row_coefs)
        return _bwd_kernel(vec_bwd_body(dtype, t, r, vpt, rms, ns, *parts, add), add)

    if vpt > 0:

        @_inline
        def norm_bwd_body(dy, dh, x, mean, rstd, w, dx, dwp, dbp, n_chunks, G, K, L):
            buf = cuda.shared.array((2, 2, r, cols), acc_nb)
            spart = cuda.shared.array((n_parts, part_rows, row_len), acc_nb)
            n, c, ts, lane, g, step, lo, hi = chunk_slot(x, n_chunks)
            kmax = I32(0)
            if lane < n:
                kmax = I32(min(U(vpt), (n - lane + tu - ONE) // tu))
            xv = cuda.local.array(nv, acc_nb)
            dv = cuda.local.array(nv, acc_nb)
            rpw = cuda.local.array(nv, acc_nb)
            rpb = cuda.local.array(nv, acc_nb)
            zero_parts(spart, rpw, rpb, ts, lane)
            it = ZERO
            while it < step:
                row, ok, mu, rs = next_row(lo, hi, it, mean, rstd, xv, dv)
                if ok:
                    for k in range(vpt):
                        if k < kmax:
                            xv[k] = ld(x[row, lane + U(k * t)])
                            dv[k] = ld(dy[row, lane + U(k * t)])
                s1 = acc(0)
                s2 = acc(0)
                for k in range(vpt):
                    gv = dv[k]
                    if k < kmax:
                        gv = wdy(gv, w, row, lane + U(k * t), G, K, L)
                    s1, s2 = row_elem(xv, dv, k, mu, rs, gv, s1, s2, spart, rpw, rpb, ts, lane)
                c1, c2 = row_coefs(s1, s2, buf, it, ts, lane, n)
                if ok:
                    for k in range(vpt):
                        if k < kmax:
                            j = lane + U(k * t)
                            dx[row, j] = dx_out(dh, row, j, rs * (dv[k] - c1 - xv[k] * c2))
                it += ONE
            if g < c:
                want_dw = dwp.size > 0
                want_db = not rms and dbp.size > 0
                for k in range(vpt):
                    if k < kmax:
                        j = lane + U(k * t)
                        if want_dw:
                            dwp[g, j] = F64(spart[0, ts, j] if sw else rpw[k])
                        if want_db:
                            dbp[g, j] = F64(spart[1, ts, j] if sb else rpb[k])

        return _bwd_kernel(norm_bwd_body, add)

    @_inline
    def norm_bwd_stream_body(dy, dh, x, mean, rstd, w, dx, dwp, dbp, n_chunks, G, K, L):
        buf = cuda.shared.array((2, 2, r, cols), acc_nb)
        n, c, ts, lane, g, step, lo, hi = chunk_slot(x, n_chunks)
        want_dw = dwp.size > 0 and g < c
        want_db = dbp.size > 0 and g < c
        # The team's own partial rows accumulate in place (each element is touched by one thread only).
        j = lane
        while j < n:
            if want_dw:
                dwp[g, j] = F64(0)
            if want_db:
                dbp[g, j] = F64(0)
            j += tu
        it = ZERO
        while it < step:
            row, ok, mu, rs = row_at(lo, hi, it, mean, rstd)
            s1 = acc(0)
            s2 = acc(0)
            if ok:
                j = lane
                while j < n:
                    xh = (ld(x[row, j]) - mu) * rs
                    gv = wdy(ld(dy[row, j]), w, row, j, G, K, L)
                    s1 += gv
                    s2 += gv * xh
                    j += tu
            a1, a2 = team_sum2(s1, s2, buf, it & ONE, ts, lane)
            c1 = acc(0) if rms else a1 / acc(n)
            c2 = a2 / acc(n)
            if ok:
                j = lane
                while j < n:
                    xh = (ld(x[row, j]) - mu) * rs
                    d = ld(dy[row, j])
                    dx[row, j] = dx_out(dh, row, j, rs * (wdy(d, w, row, j, G, K, L) - c1 - xh * c2))
                    if want_dw:
                        dwp[g, j] += F64(d * xh)
                    if want_db:
                        dbp[g, j] += F64(d)
                    j += tu
            it += ONE

    return _bwd_kernel(norm_bwd_stream_body, add)


def _bwd_kernel(body, add: bool):
    """The backward kernel around ``body``: (dy, x, mean, rstd, w, dx, dwp, dbp, n_chunks, G, K, L), or with
    ``add`` (dy, dh, x, ...)."""
    if add:

        def add_norm_bwd(dy, dh, x, mean, rstd, w, dx, dwp, dbp, n_chunks, G, K, L):
            body(dy, dh, x, mean, rstd, w, dx, dwp, dbp, n_chunks, G, K, L)

        return add_norm_bwd

    def norm_bwd(dy, x, mean, rstd, w, dx, dwp, dbp, n_chunks, G, K, L):
        body(dy, dy, x, mean, rstd, w, dx, dwp, dbp, n_chunks, G, K, L)

    return norm_bwd
