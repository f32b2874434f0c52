"""The 128-bit forms of the LayerNorm/RMSNorm row kernels' register bodies (``row_kernels``' ``vec``
variants): float32 rows read and written four elements per access, 16-bit rows (float16, bfloat16 as uint16
bits) eight, through ``_vec.ldv`` / ``stv``. A thread holds groups of ``nl`` adjacent elements
nl * (lane + k*t) .. + nl - 1 (k < vpt / nl) instead of the scalar form's lane + k*t; the arithmetic per
element is the scalar form's. The launchers pick these bodies only for rows of a multiple of ``nl`` elements
and 16-byte aligned arrays (``_vec.vec_ok``).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from . import _common as cc
from ._vec import lanes, ldv, stv
from .row_kernels import F64, I32, ONE, ZERO, U, _inline, _make_row_moments, _storage_nb, _types


def _setup(dtype, t: int, vpt: int):
    """What every vector body needs: (nl, pl: elements of the data / parameters per 128-bit access; the
    ``row_kernels._types`` of the dtype; the Numba types of a stored data / parameter element; ``groups``:
    device function (n, lane, ok) -> the thread's count of groups of nl in a row of n (0 unless ``ok``))."""
    nl, pl = lanes(dtype), lanes(cc.param_dtype(dtype))
    if np.dtype(dtype) == np.float64 or vpt % nl:
        raise ValueError(f"no vector row kernel for {np.dtype(dtype).name} with vpt={vpt}")
    nq, tu, nlu = U(vpt // nl), U(t), U(nl)

    @_inline
    def groups(n, lane, ok):
        ng = n // nlu
        gmax = I32(0)
        if ok and lane < ng:
            gmax = I32(min(nq, (ng - lane + tu - ONE) // tu))
        return gmax

    sdt, pdt = _storage_nb(dtype), _storage_nb(cc.param_dtype(dtype))
    return (nl, pl, *_types(dtype, t), sdt, pdt, groups)


def _make_load_group(dtype, add: bool):
    """Device function ``(v, q, raw, rr, x, res, h, row, j)``: the group of ``nl`` elements at (row, j) into
    v[q .. q + nl - 1] through the thread-local ``raw`` (one 128-bit load). Fused add (``add``): the group
    of ``res`` too (through ``rr``); h = x + res formed in the accumulation type and rounded to the data's
    dtype (the scalar kernel's ``ld_row``: the same bits), stored to ``h`` with one 128-bit store, and its
    rounded values are the group's."""
    nl = lanes(dtype)
    acc, _, ld, st, _, _ = _types(dtype, 32)

    @_inline
    def load_group(v, q, raw, rr, x, res, h, row, j):
        ldv(raw, x, row, j)
        if add:
            ldv(rr, res, row, j)
            for e in range(nl):
                raw[e] = st(ld(raw[e]) + ld(rr[e]))
            stv(h, row, j, raw)
        for e in range(nl):
            v[q + e] = ld(raw[e])

    return load_group


def vec_fwd_body(
    dtype, t: int, r: int, vpt: int, rms: bool, mode_w: int, mode_b: int, row_slot, row_stats, add: bool = False
):
    """The register-form forward body with 128-bit accesses (see ``_make_forward``'s ``vec``): the thread
    holds groups of ``nl`` adjacent elements (4 float32, 8 16-bit) nl * (lane + k*t) .. + nl - 1.
    ``add``: the fused residual add (``_make_load_group``)."""
    nl, pl, acc, acc_nb, ld, st, ldp, cols, sdt, pdt, groups = _setup(dtype, t, vpt)
    load_group = _make_load_group(dtype, add)
    row_moments = _make_row_moments(acc, t, max(vpt, 1), rms)
    nq, nlu = vpt // nl, U(nl)

    @_inline
    def affine(o, p, w, b, j):
        """o[:nl] * w[j ..] + b[j ..] (absent terms skipped), read pl at a time through ``p``."""
        if mode_w > 0 or (mode_w < 0 and w.shape[0] > 0):
            for h in range(nl // pl):
                ldv(p, w, ZERO, j + U(h * pl))
                for e in range(pl):
                    o[h * pl + e] = o[h * pl + e] * ldp(p[e])
        if mode_b > 0 or (mode_b < 0 and b.shape[0] > 0):
            for h in range(nl // pl):
                ldv(p, b, ZERO, j + U(h * pl))
                for e in range(pl):
                    o[h * pl + e] = o[h * pl + e] + ldp(p[e])

    @_inline
    def body(x, res, w, b, y, h, mean, rstd, eps, mom, G, K, L):
        buf = cuda.shared.array((4, r, cols), acc_nb)
        n, ts, lane, row, ok = row_slot(x)
        gmax = groups(n, lane, ok)
        v = cuda.local.array(vpt, acc_nb)
        raw = cuda.local.array(nl, sdt)
        rr = cuda.local.array(nl, sdt)
        for k in range(nq):
            for e in range(nl):
                v[k * nl + e] = acc(0)
            if k < gmax:
                load_group(v, k * nl, raw, rr, x, res, h, row, (lane + U(k * t)) * nlu)
        mu, var = row_moments(v, gmax * I32(nl), buf, ts, lane, n)
        rs, _ = row_stats(mean, rstd, mom, row, lane, ok, mu, var, n, eps, G, K)
        if ok:
            o = cuda.local.array(nl, acc_nb)
            p = cuda.local.array(pl, pdt)
            for k in range(nq):
                if k < gmax:
                    j = (lane + U(k * t)) * nlu
                    for e in range(nl):
                        o[e] = (v[k * nl + e] - mu) * rs
                    affine(o, p, w, b, j)
                    for e in range(nl):
                        raw[e] = st(o[e])
                    stv(y, row, j, raw)

    return body


def vec_bwd_body(
    dtype,
    t: int,
    r: int,
    vpt: int,
    rms: bool,
    ns: int,
    chunk_slot,
    next_row,
    zero_parts,
    row_elem,
    row_coefs,
    add: bool,
):
    """The register-form backward body with 128-bit accesses to dy, dh, x, w and dx (see
    ``row_kernels._make_backward``; ``ns`` of its running partial rows in shared memory, the others in
    registers). Each thread owns its partial slots q = k * nl + e at q * t + lane of its team's shared
    rows (conflict-free; no barrier). The float64 partial rows are written once per team, element by
    element. dweight/dbias: the scalar form's bits (the same products added per column in the same row
    order); dx: its row sums add the thread's elements in another order (last bits may differ)."""
    nl, pl, acc, acc_nb, ld, st, ldp, cols, sdt, pdt, groups = _setup(dtype, t, vpt)
    nq, nlu = vpt // nl, U(nl)
    sw, sb = ns >= 1, ns >= 2
    row_len = t * vpt if ns else 1
    part_rows = r if ns else 1
    n_parts = max(ns, 1)

    @_inline
    def dx_pass(dh, dx, raw, row, ok, gmax, lane, xv, dv, rs, c1, c2):
        """The row's dx = rstd * (gv - c1 - xhat * c2) (xhat in xv, gv in dv; fused add: + dh, read 128 bits
        at a time), rounded once and stored 128 bits at a time (nothing when the row is not ``ok``)."""
        if ok:
            for k in range(nq):
                if k < gmax:
                    j = (lane + U(k * t)) * nlu
                    if add and dh.size > 0:
                        ldv(raw, dh, row, j)
                        for e in range(nl):
                            raw[e] = st(rs * (dv[k * nl + e] - c1 - xv[k * nl + e] * c2) + ld(raw[e]))
                    else:
                        for e in range(nl):
                            raw[e] = st(rs * (dv[k * nl + e] - c1 - xv[k * nl + e] * c2))
                    stv(dx, row, j, raw)

    @_inline
    def body(dy, dh, x, mean, rstd, w, dx, dwp, dbp, n_chunks, G, K, L):
        buf = cuda.shared.array((2, 2, r, cols), acc_nb)
        spart = cuda.shared.array((n_parts, part_rows, row_len), acc_nb)
        n, c, ts, lane, g, step, lo, hi = chunk_slot(x, n_chunks)
        gmax = groups(n, lane, True)
        xv = cuda.local.array(vpt, acc_nb)
        dv = cuda.local.array(vpt, acc_nb)
        rpw = cuda.local.array(vpt, acc_nb)
        rpb = cuda.local.array(vpt, acc_nb)
        raw = cuda.local.array(nl, sdt)
        p = cuda.local.array(pl, pdt)
        zero_parts(spart, rpw, rpb, ts, lane)
        has_w = w.shape[0] > 0
        it = ZERO
        while it < step:
            row, ok, mu, rs = next_row(lo, hi, it, mean, rstd, xv, dv)
            if ok:
                for k in range(nq):
                    if k < gmax:
                        j = (lane + U(k * t)) * nlu
                        ldv(raw, x, row, j)
                        for e in range(nl):
                            xv[k * nl + e] = ld(raw[e])
                        ldv(raw, dy, row, j)
                        for e in range(nl):
                            dv[k * nl + e] = ld(raw[e])
            s1 = acc(0)
            s2 = acc(0)
            for k in range(nq):
                for hh in range(nl // pl):
                    read_w = has_w and k < gmax
                    if read_w:
                        ldv(p, w, ZERO, (lane + U(k * t)) * nlu + U(hh * pl))
                    for e in range(pl):
                        q = k * nl + hh * pl + e
                        gv = dv[q]
                        if read_w:
                            gv = gv * ldp(p[e])
                        s1, s2 = row_elem(xv, dv, q, mu, rs, gv, s1, s2, spart, rpw, rpb, ts, lane)
            c1, c2 = row_coefs(s1, s2, buf, it, ts, lane, n)
            dx_pass(dh, dx, raw, row, ok, gmax, lane, xv, dv, rs, c1, c2)
            it += ONE
        if g < c:
            want_dw = dwp.size > 0
            want_db = not rms and dbp.size > 0
            for k in range(nq):
                if k < gmax:
                    j = (lane + U(k * t)) * nlu
                    for e in range(nl):
                        q = k * nl + e
                        if want_dw:
                            dwp[g, j + U(e)] = F64(spart[0, ts, U(q * t) + lane] if sw else rpw[q])
                        if want_db:
                            dbp[g, j + U(e)] = F64(spart[1, ts, U(q * t) + lane] if sb else rpb[q])

    return body


def vec_fwd_persistent_body(
    dtype, t: int, r: int, vpt: int, rms: bool, mode_w: int, mode_b: int, row_stats, add: bool = False
):
    """``vec_fwd_body`` as a persistent kernel: the grid (at most the blocks the GPU holds at once) strides
    over the rows, team ``ts`` of block ``b`` taking rows (b + i * gridDim) * r + ts. Weight and bias are
    read once per thread into registers (16-bit rows with both: the weight); the next row's loads are
    issued before the current row's reduction and stores (two register rows); the team reductions
    alternate two shared buffers, so one barrier per row is enough (none for a one-warp team). Every
    thread of a block runs the same number of iterations. Per row the same arithmetic, mapping and
    reduction order as ``vec_fwd_body``: the same bits. ``add``: the fused residual add (h of the next row
    formed and stored as that row is prefetched)."""
    nl, pl, acc, acc_nb, ld, st, ldp, cols, sdt, pdt, groups = _setup(dtype, t, vpt)
    load_group = _make_load_group(dtype, add)
    row_moments = _make_row_moments(acc, t, max(vpt, 1), rms)
    nq, tu, ru, nlu = vpt // nl, U(t), U(r), U(nl)
    # 16-bit rows with both weight and bias: the bias is read again per row (from L1), not kept (kept, it
    # spilled at 128-thread teams under ptxas 13 at the 64-register cap)
    keep_b = nl == 4 or mode_w == 0

    @_inline
    def load_row(v, raw, rr, x, res, h, row, ok, gmax, lane):
        """The thread's groups of row ``row`` into v (zeros where absent or not ``ok``)."""
        for k in range(nq):
            for e in range(nl):
                v[k * nl + e] = acc(0)
            if ok and k < gmax:
                load_group(v, k * nl, raw, rr, x, res, h, row, (lane + U(k * t)) * nlu)

    @_inline
    def load_param(pv, p, a, gmax, lane):
        """The thread's groups of weight or bias ``a`` into registers pv (float; 0 where absent)."""
        for k in range(nq):
            for e in range(nl):
                pv[k * nl + e] = acc(0)
            if k < gmax:
                for hh in range(nl // pl):
                    ldv(p, a, ZERO, (lane + U(k * t)) * nlu + U(hh * pl))
                    for e in range(pl):
                        pv[k * nl + hh * pl + e] = ldp(p[e])

    @_inline
    def body(x, res, w, b, y, h, mean, rstd, eps, mom, G, K, L):
        bufs = cuda.shared.array((2, 4, r, cols), acc_nb)
        tid = U(cuda.threadIdx.x)
        ts = tid // tu
        lane = tid - ts * tu
        m, n = U(x.shape[0]), U(x.shape[1])
        step = U(cuda.gridDim.x) * ru
        gmax = groups(n, lane, True)
        has_w = mode_w > 0 or (mode_w < 0 and w.shape[0] > 0)
        has_b = mode_b > 0 or (mode_b < 0 and b.shape[0] > 0)
        raw = cuda.local.array(nl, sdt)
        rr = cuda.local.array(nl, sdt)
        p = cuda.local.array(pl, pdt)
        wv = cuda.local.array(vpt, acc_nb)
        bv = cuda.local.array(vpt, acc_nb)
        if has_w:
            load_param(wv, p, w, gmax, lane)
        if keep_b and has_b:
            load_param(bv, p, b, gmax, lane)
        v = cuda.local.array(vpt, acc_nb)
        nx = cuda.local.array(vpt, acc_nb)
        base = U(cuda.blockIdx.x) * ru
        row = base + ts
        load_row(v, raw, rr, x, res, h, row, row < m, gmax, lane)
        par = ZERO
        while base < m:
            ok = row < m
            nrow = row + step
            load_row(nx, raw, rr, x, res, h, nrow, nrow < m, gmax, lane)
            cnt = gmax * I32(nl) if ok else I32(0)
            mu, var = row_moments(v, cnt, bufs[par], ts, lane, n)
            rs, _ = row_stats(mean, rstd, mom, row, lane, ok, mu, var, n, eps, G, K)
            if ok:
                for k in range(nq):
                    if k < gmax:
                        j = (lane + U(k * t)) * nlu
                        for hh in range(nl // pl):
                            if has_b and not keep_b:
                                ldv(p, b, ZERO, j + U(hh * pl))
                            for e in range(pl):
                                q = k * nl + hh * pl + e
                                o = (v[q] - mu) * rs
                                if has_w:
                                    o = o * wv[q]
                                if has_b:
                                    o = o + (bv[q] if keep_b else ldp(p[e]))
                                raw[hh * pl + e] = st(o)
                        stv(y, row, j, raw)
            for q in range(vpt):
                v[q] = nx[q]
            row = nrow
            base += step
            par = par ^ ONE

    return body
