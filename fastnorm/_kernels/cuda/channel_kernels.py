"""The channel-norm kernel factories (BatchNorm, InstanceNorm, GroupNorm); their launch shapes and launchers
are channel_norm.py's (see there for the algorithms).

Per-(n, c) segment moments or gradient sums (one team per segment), channels-last per-column partials of
row chunks (Welford in float64), the per-channel finish (merges in a fixed order, statistics, running
statistics, gradient sums and BatchNorm's dx coefficients), the elementwise output pass, and InstanceNorm's
evaluation statistics. Every array as a kernel reads it (bfloat16 as uint16 bits; ``dt`` arguments name
the real dtype).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import _common as cc

U = np.uint64
F64 = np.float64


# ------------------------------------------------------------------------------------------ segments
def _make_segments(dtype, t: int, r: int, kind: str):
    """Team per (n, c) segment of L contiguous values of x viewed (S, L), S = N * C.

    kind "moments": work[s] = (mean, M2) of the segment (two passes, the second from cache).
    kind "grads":   work[s] = (sum dy, sum dy * (x - mu)), mu = mean[(s // C) * GS + (s % C) // K]
                    (BatchNorm: GS = 0, K = 1 -> mean[c]; GroupNorm: GS = G -> mean[n, c // K]).
    """
    acc = cc.ACC[np.dtype(dtype)]
    acc_nb = cc.nb_type(acc)
    ld = cc.loader(dtype)
    cols = cc.team_buf_cols(t)
    team_sum2 = cc.make_team_sum2(t)
    tu, ru = U(t), U(r)
    zero = U(0)
    moments = kind == "moments"

    def seg_kernel(x, dy, mean, work, C, GS, K):
        s_count = U(x.shape[0])
        n = U(x.shape[1])
        buf = cuda.shared.array((2, 2, r, cols), acc_nb)
        tid = U(cuda.threadIdx.x)
        ts = tid // tu
        lane = tid - ts * tu
        s = U(cuda.blockIdx.x) * ru + ts
        ok = s < s_count
        a1 = acc(0)
        a2 = acc(0)
        if moments:
            j = lane
            while ok and j < n:
                a1 += ld(x[s, j])
                j += tu
            tot, _unused = team_sum2(a1, a2, buf, 0, ts, lane)
            mu = tot / acc(n)
            j = lane
            while ok and j < n:
                d = ld(x[s, j]) - mu
                a2 += d * d
                j += tu
            _unused, m2 = team_sum2(a1, a2, buf, 1, ts, lane)
            if ok and lane == zero:
                work[s, 0] = F64(mu)
                work[s, 1] = F64(m2)
        else:
            mu = acc(0)
            if ok:
                mu = acc(mean[(s // U(C)) * U(GS) + (s % U(C)) // U(K)])
            j = lane
            while ok and j < n:
                d = ld(dy[s, j])
                a1 += d
                a2 += d * (ld(x[s, j]) - mu)
                j += tu
            t1, t2 = team_sum2(a1, a2, buf, 0, ts, lane)
            if ok and lane == zero:
                work[s, 0] = F64(t1)
                work[s, 1] = F64(t2)

    return seg_kernel


# ------------------------------------------------------------------------------------------ channels last
def _make_columns(dtype, kind: str, COLS: int, PHASES: int):
    """Channels last, x viewed (M, C): block (bx, t) takes columns [bx*COLS, +COLS) of row chunk t of
    ``n_chunks``; each thread one column and every PHASES-th row of the chunk, merged in shared memory in
    phase order. kind "moments": work[t, c] = mean, work[t, C + c] = M2 (Welford, float64); kind "grads":
    work[t, c] = sum dy, work[t, C + c] = sum dy * (x - mean[c])."""
    acc = cc.ACC[np.dtype(dtype)]
    ld = cc.loader(dtype)
    cu, pu = U(COLS), U(PHASES)
    zero, one = U(0), U(1)
    moments = kind == "moments"
    from numba import float64 as f64_nb

    def col_kernel(x, dy, mean, work, n_chunks):
        m = U(x.shape[0])
        ncol = U(x.shape[1])
        buf = cuda.shared.array((3, PHASES, COLS), f64_nb)
        tid = U(cuda.threadIdx.x)
        q = tid // cu
        cl = tid - q * cu
        col = U(cuda.blockIdx.x) * cu + cl
        t = U(cuda.blockIdx.y)
        nc = U(n_chunks)
        step = (m + nc - one) // nc
        lo = min(m, t * step)
        hi = min(m, lo + step)
        cnt = F64(0)
        a = F64(0)
        b = F64(0)
        mu = acc(0)
        if not moments and col < ncol:
            mu = acc(mean[col])
        i = lo + q
        while col < ncol and i < hi:
            if moments:
                v = F64(ld(x[i, col]))
                cnt += F64(1)
                d = v - a
                a += d / cnt
                b += d * (v - a)
            else:
                d = ld(dy[i, col])
                a += F64(d)
                b += F64(d * (ld(x[i, col]) - mu))
            i += pu
        buf[0, q, cl] = cnt
        buf[1, q, cl] = a
        buf[2, q, cl] = b
        cuda.syncthreads()
        if q == zero and col < ncol:
            for p in range(1, PHASES):
                if moments:
                    nb = buf[0, p, cl]
                    if nb > F64(0):
                        tot = cnt + nb
                        d = buf[1, p, cl] - a
                        a += d * (nb / tot)
                        b += buf[2, p, cl] + d * d * (cnt * nb / tot)
                        cnt = tot
                else:
                    a += buf[1, p, cl]
                    b += buf[2, p, cl]
            work[t, col] = a
            work[t, ncol + col] = b

    return col_kernel


# ------------------------------------------------------------------------------------------ per channel
@cuda.jit(device=True)
def merge_moments(work, c, C, N, L, M, n_chunks, first):
    """(count, mean, M2) of channel c from its partial moments in ``work``, merged in order with Chan's
    formula in float64: ``first`` (channels first) the N rows work[n*C + c] = (mean, M2) of L values each;
    else the chunk rows work[t, c] = mean, work[t, C + c] = M2 of the ``n_chunks`` chunks of M rows."""
    cnt = F64(0)
    mu = F64(0)
    m2 = F64(0)
    parts = N if first else n_chunks
    step = (M + n_chunks - 1) // n_chunks
    for p in range(parts):
        if first:
            nb = F64(L)
            mb = work[p * C + c, 0]
            m2b = work[p * C + c, 1]
        else:
            lo = min(M, p * step)
            nb = F64(min(M, lo + step) - lo)
            mb = work[p, c]
            m2b = work[p, C + c]
        if nb > F64(0):
            tot = cnt + nb
            d = mb - mu
            mu += d * (nb / tot)
            m2 += m2b + d * d * (cnt * nb / tot)
            cnt = tot
    return cnt, mu, m2


def _make_finish(dts, mode: str):
    """One thread per channel c.

    mode "bn_fwd": merge the channel's partial moments in order (layout "first": work rows n*C + c, L values
      each; "last": chunk rows work[t, c], work[t, C + c]), then mean, rstd, running statistics
      (momentum * batch + (1 - momentum) * running, unbiased variance); training == 0: mean, rstd from the
      running statistics.
    mode "bwd": totals s1 = sum dy, s2 = sum dy * (x - mu) over the partials, dbias = s1,
      dweight = s2 * rstd (per (n, c) rstd for GroupNorm), and BatchNorm's dx coefficients in ``coefs``
      (kb, kc: dx = rstd * w * dy + kb * (x - mean) + kc).
    mode "in_running": InstanceNorm running statistics from the per-(n, c) moments in work.
    ``dts`` = (statistics, weight, running statistics, dweight, dbias) dtypes, or one data dtype (its
    statistics dtype, and the data dtype for the rest).
    """
    if not isinstance(dts, tuple):
        d = np.dtype(dts)
        dts = (cc.ACC[d], d, d, d, d)
    sd = np.dtype(dts[0]).type
    ldw, ldr, str_ = cc.loader(dts[1]), cc.loader(dts[2]), cc.storer(dts[2])
    stw, stb = cc.storer(dts[3]), cc.storer(dts[4])
    bn_fwd = mode == "bn_fwd"
    in_running = mode == "in_running"

    def finish(work, coefs, w, rm, rv, mean, rstd, dw, db, N, C, L, M, n_chunks, GS, K, eps, momentum, first, training):
        c = cuda.grid(1)
        if c >= C:
            return
        if bn_fwd:
            if training:
                cnt, mu, m2 = merge_moments(work, c, C, N, L, M, n_chunks, first)
                mean[c] = sd(mu)
                rstd[c] = sd(F64(1) / math.sqrt(m2 / cnt + eps))
                if rm.shape[0] > 0:
                    rm[c] = str_(momentum * mu + (F64(1) - momentum) * F64(ldr(rm[c])))
                    rv[c] = str_(momentum * (m2 / (cnt - F64(1))) + (F64(1) - momentum) * F64(ldr(rv[c])))
            else:
                mean[c] = sd(ldr(rm[c]))
                rstd[c] = sd(F64(1) / math.sqrt(F64(ldr(rv[c])) + eps))
        elif in_running:
            sm = F64(0)
            sv = F64(0)
            for n in range(N):
                sm += work[n * C + c, 0]
                sv += work[n * C + c, 1] / F64(L - 1)
            rm[c] = str_(momentum * (sm / F64(N)) + (F64(1) - momentum) * F64(ldr(rm[c])))
            rv[c] = str_(momentum * (sv / F64(N)) + (F64(1) - momentum) * F64(ldr(rv[c])))
        else:
            s1 = F64(0)
            s2 = F64(0)
            s2r = F64(0)
            parts = N if first else n_chunks
            for p in range(parts):
                if first:
                    a1 = work[p * C + c, 0]
                    a2 = work[p * C + c, 1]
                    r = F64(rstd[p * GS + c // K])
                else:
                    a1 = work[p, c]
                    a2 = work[p, C + c]
                    r = F64(rstd[c])
                s1 += a1
                s2 += a2
                s2r += a2 * r
            if db.shape[0] > 0:
                db[c] = stb(s1)
            if dw.shape[0] > 0:
                dw[c] = stw(s2r)
            if coefs.size > 0:
                wc = F64(ldw(w[c])) if w.shape[0] > 0 else F64(1)
                r = F64(rstd[c])
                cnt = F64(N * L) if first else F64(M)
                coefs[0, c] = -r * r * r * wc * s2 / cnt if training else F64(0)
                coefs[1, c] = -r * wc * s1 / cnt if training else F64(0)

    return finish


# ------------------------------------------------------------------------------------------ elementwise
def _make_apply(dtype, backward: bool):
    """Elementwise over x viewed flat (N*C*L): element i is in segment s = i // L, channel c = s % C;
    its statistics are mean[idx], rstd[idx], idx = (s // C) * GS + c // K.

    forward: y = (x - mean) * rstd * w[c] + b[c]
    backward: dx = rstd * w[c] * dy + kb[c] * (x - mean) + kc[c]   (kb, kc from ``coefs``; 0 if empty)
    """
    acc = cc.ACC[np.dtype(dtype)]
    ld, st, ldp = cc.loader(dtype), cc.storer(dtype), cc.loader(cc.param_dtype(dtype))

    def apply(x, dy, w, b, mean, rstd, coefs, y, C, L, GS, K):
        total = U(x.shape[0])
        i = U(cuda.grid(1))
        step = U(cuda.gridsize(1))
        cu, lu, gu, ku = U(C), U(L), U(GS), U(K)
        has_w = w.shape[0] > 0
        has_b = b.shape[0] > 0
        has_k = coefs.size > 0
        while i < total:
            s = i // lu
            c = s % cu
            idx = (s // cu) * gu + c // ku
            sc = acc(rstd[idx])
            if has_w:
                sc = sc * ldp(w[c])
            if backward:
                o = sc * ld(dy[i])
                if has_k:
                    o = o + acc(coefs[0, c]) * (ld(x[i]) - acc(mean[idx])) + acc(coefs[1, c])
            else:
                o = (ld(x[i]) - acc(mean[idx])) * sc
                if has_b:
                    o = o + ldp(b[c])
            y[i] = st(o)
            i += step

    return apply


def _make_instance_stats(rdt, sdt):
    ldr = cc.loader(rdt)
    sd = np.dtype(sdt).type

    def stats(rm, rv, mean, rstd, eps):
        i = cuda.grid(1)
        n = mean.shape[0]
        c = mean.shape[1]
        if i < n * c:
            ch = i % c
            mean[i // c, ch] = sd(ldr(rm[ch]))
            rstd[i // c, ch] = sd(F64(1) / math.sqrt(F64(ldr(rv[ch])) + eps))

    return stats
