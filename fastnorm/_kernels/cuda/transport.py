"""Log-domain Sinkhorn CUDA kernels; launchers with the CPU kernels' signatures (fastnorm/_kernels/cpu/_transport.pyx).

Every half-step is a row-wise log-sum-exp over a contiguous matrix (C for the u-update, its transpose C^T,
built once per call, for the v-update): one block per (row, problem), the row's max and then its sum of
exponentials reduced in shared memory (``syncthreads`` trees: correct under the simulator too), in float64
whatever the input dtype. A second small kernel per half-step turns the log-sum-exps into potentials; every
``check_every`` iterations it also computes each problem's column-marginal error (the same check as POT's,
riding on the v-update's log-sum-exps) and marks converged problems done, after which their blocks return
at once. The host reads the done flags at each check (one small copy) and stops when all are done.
Bitwise reproducible: every reduction has a fixed order. The 1-D exact distance is in ``wasserstein.py``
(re-exported here).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ._common import SIM, Kernel, arr, cached, current_stream, dev, launcher
from .wasserstein import (  # noqa: F401  (the 1-D kernels are re-exported under this module's name)
    BLOCK,
    F64,
    _grid1,
    sort_rows,
    sort_width,
    stream_sync,
    unsort_rows,
    wasserstein_1d,
    wasserstein_1d_backward,
)


@cuda.jit(device=True)
def _tree(buf, t, nt, is_max):
    """buf[0] = the max (or sum) of buf[:nt], a fixed-order shared-memory tree; every thread calls it."""
    s = nt // 2
    while s > 0:
        if t < s:
            o = buf[t + s]
            if not is_max:
                buf[t] += o
            elif o > buf[t]:
                buf[t] = o
        cuda.syncthreads()
        s //= 2


@cuda.jit(device=True)
def _rij(idx, n, m):
    """(problem, row, column) of flat index idx of a C-contiguous (B, n, m) array."""
    r = idx // (n * m)
    rem = idx - r * n * m
    i = rem // m
    return r, i, rem - i * m


def _make_lse_rows(block: int):
    def lse_rows(K, o, out, ir, done):
        """out[r, i] = logsumexp_j(o[r, j] - K[r, i, j] * ir); block (i, r)."""
        i = cuda.blockIdx.x
        r = cuda.blockIdx.y
        if done[r] != 0:
            return
        t = cuda.threadIdx.x
        cols = K.shape[2]
        buf = cuda.shared.array(block, F64)
        mx = -math.inf
        j = t
        while j < cols:
            x = o[r, j] - F64(K[r, i, j]) * ir
            if x > mx:
                mx = x
            j += block
        buf[t] = mx
        cuda.syncthreads()
        _tree(buf, t, block, True)
        mx = buf[0]
        cuda.syncthreads()
        s = 0.0
        if mx > -math.inf and mx < math.inf:
            j = t
            while j < cols:
                s += math.exp(o[r, j] - F64(K[r, i, j]) * ir - mx)
                j += block
        buf[t] = s
        cuda.syncthreads()
        _tree(buf, t, block, False)
        if t == 0:
            if mx > -math.inf and mx < math.inf:
                out[r, i] = mx + math.log(buf[0])
            else:
                out[r, i] = mx

    return lse_rows


def _make_potential(block: int):
    def potential(lse, x, logm, mass, done, err, mode, tol):
        """Block r (skipped when done[r]): x[r] = logm[r] - lse[r] (mode 0); mode 1: first the column-marginal error
        ||exp(x + lse) - mass||_2 into err[r], and done[r] = 1 instead of the update when it is < tol;
        mode 2: only the error."""
        r = cuda.blockIdx.x
        if done[r] != 0:
            return
        t = cuda.threadIdx.x
        k = x.shape[1]
        rm = r if mass.shape[0] > 1 else 0
        buf = cuda.shared.array(block, F64)
        if mode != 0:
            s = 0.0
            j = t
            while j < k:
                d = math.exp(x[r, j] + lse[r, j]) - F64(mass[rm, j])
                s += d * d
                j += block
            buf[t] = s
            cuda.syncthreads()
            _tree(buf, t, block, False)
            e = math.sqrt(buf[0])
            if t == 0:
                err[r] = e
            if mode == 2:
                return
            if e < tol:
                if t == 0:
                    done[r] = 1
                return
        j = t
        while j < k:
            x[r, j] = logm[r, j] - lse[r, j]
            j += block

    return potential


def _make_init(block: int):
    @cuda.jit(device=True)
    def init_side(a, u, loga, r):
        """u[r] = 0, loga[r] = log a[r] (a: one shared row or one per problem)."""
        ra = r if a.shape[0] > 1 else 0
        j = cuda.threadIdx.x
        while j < u.shape[1]:
            u[r, j] = 0.0
            av = F64(a[ra, j])
            loga[r, j] = math.log(av) if av > 0 else -math.inf
            j += block

    def init(a, b, u, v, loga, logb):
        """Block r: u = v = 0, loga = log a, logb = log b (a, b: one shared row or one per problem)."""
        r = cuda.blockIdx.x
        init_side(a, u, loga, r)
        init_side(b, v, logb, r)

    return init


def _make_each(elem):
    """Kernel (src, aux, dst): ``elem(src, aux, dst, r, i, j)`` for every (r, i, j) of src (B, n, m),
    grid-stride."""

    def each(src, aux, dst):
        nb, n, m = src.shape
        total = nb * n * m
        idx = cuda.grid(1)
        step = cuda.gridsize(1)
        while idx < total:
            r, i, j = _rij(idx, n, m)
            elem(src, aux, dst, r, i, j)
            idx += step

    return each


@cuda.jit(device=True)
def _transpose_elem(C, _, Ct, r, i, j):
    """Ct[r, j, i] = C[r, i, j] (the transpose kernel passes C again as its unused ``aux``)."""
    Ct[r, j, i] = C[r, i, j]


def _make_plan(block: int, out_type):
    def plan_rows(C, u, v, plan, rowc, ir):
        """Block (i, r): plan[r, i, j] = exp(u_i + v_j - C_ij * ir) (unless plan is empty) and
        rowc[r, i] = sum_j P_ij C_ij (a zero P_ij contributes 0)."""
        i = cuda.blockIdx.x
        r = cuda.blockIdx.y
        t = cuda.threadIdx.x
        m = C.shape[2]
        buf = cuda.shared.array(block, F64)
        want = plan.shape[0] > 0
        ui = u[r, i]
        s = 0.0
        j = t
        while j < m:
            c = F64(C[r, i, j])
            e = math.exp(ui + v[r, j] - c * ir)
            if want:
                plan[r, i, j] = out_type(e)
            if e > 0:
                s += e * c
            j += block
        buf[t] = s
        cuda.syncthreads()
        _tree(buf, t, block, False)
        if t == 0:
            rowc[r, i] = buf[0]

    return plan_rows


def _make_sum_rows(block: int, out_type):
    def sum_rows(rowc, value):
        """Block r: value[r] = sum_i rowc[r, i], fixed order."""
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        buf = cuda.shared.array(block, F64)
        s = 0.0
        i = t
        while i < rowc.shape[1]:
            s += rowc[r, i]
            i += block
        buf[t] = s
        cuda.syncthreads()
        _tree(buf, t, block, False)
        if t == 0:
            value[r] = out_type(buf[0])

    return sum_rows


def _make_scale(out_type):
    @cuda.jit(device=True)
    def scale_elem(plan, grad, out, r, i, j):
        """out[r, i, j] = grad[r] * plan[r, i, j]."""
        out[r, i, j] = out_type(F64(grad[r]) * F64(plan[r, i, j]))

    return _make_each(scale_elem)


def _kernels(dt):
    dt = np.dtype(dt)
    out_type = dt.type
    c3, c2, c1 = arr(dt, 3), arr(dt, 2), arr(dt, 1)
    d2, d1, i1 = arr(F64, 2), arr(F64, 1), "int32[::1]"

    def build():
        return {
            "lse": Kernel(_make_lse_rows(BLOCK), f"void({c3}, {d2}, {d2}, float64, {i1})"),
            "pot": Kernel(_make_potential(BLOCK), f"void({d2}, {d2}, {d2}, {c2}, {i1}, {d1}, int64, float64)"),
            "init": Kernel(_make_init(BLOCK), f"void({c2}, {c2}, {d2}, {d2}, {d2}, {d2})"),
            "transpose": Kernel(_make_each(_transpose_elem), f"void({c3}, {c3}, {c3})"),
            "plan": Kernel(_make_plan(BLOCK, out_type), f"void({c3}, {d2}, {d2}, {c3}, {d2}, float64)"),
            "sum": Kernel(_make_sum_rows(BLOCK, out_type), f"void({d2}, {c1})"),
            "scale": Kernel(_make_scale(out_type), f"void({c3}, {c1}, {c3})"),
        }

    return cached(("transport", dt, BLOCK), build)


@launcher
def sinkhorn(cost, a, b, cost_t, value, plan, n_iter, err, work, reg, max_iter, tol, check_every, n_threads):
    """IN cost (B, n, m), a (B | 1, n), b (B | 1, m); SCRATCH cost_t (B, m, n), work (B, 4n + 3m) float64;
    OUT value (B,), plan (B, n, m) | (0, 0, 0), n_iter (B,) int64, err (B,) float64."""
    cost, a, b, cost_t, value, plan, err, work = (dev(x) for x in (cost, a, b, cost_t, value, plan, err, work))
    n_iter = dev(n_iter)
    nb, n, m = cost.shape
    if nb == 0:
        return
    if nb > 65535:  # the problems are the grid's y dimension
        raise ValueError(f"sinkhorn: at most 65535 problems per call on CUDA, got {nb}; split the batch")
    k = _kernels(cost.dtype)
    stream = current_stream()
    # work as seven contiguous (B, n) / (B, m) arrays, back to back in its flat buffer
    flat = work.reshape(work.size)
    parts, off = [], 0
    for k_ in (n, n, n, n, m, m, m):
        parts.append(flat[off : off + nb * k_].reshape(nb, k_))
        off += nb * k_
    u, loga, rowc, lse_u, v, logb, lse_v = parts
    done = cuda.to_device(np.zeros(nb, np.int32), stream=stream)
    ir = 1.0 / float(reg)
    k["init"].launch(nb, BLOCK, stream, a, b, u, v, loga, logb)
    k["transpose"].launch(_grid1(nb * n * m), BLOCK, stream, cost, cost, cost_t)
    iters = np.full(nb, int(max_iter), np.int64)
    finished = np.zeros(nb, bool)
    for it in range(int(max_iter)):
        k["lse"].launch((m, nb), BLOCK, stream, cost_t, u, lse_v, ir, done)
        check = it >= 1 and (it - 1) % int(check_every) == 0
        k["pot"].launch(nb, BLOCK, stream, lse_v, v, logb, b, done, err, 1 if check else 0, float(tol))
        if check:
            flags = done.copy_to_host(stream=stream)
            if not SIM:
                stream_sync(stream)  # the copy is asynchronous on a non-default stream
            now = flags.astype(bool)
            iters[now & ~finished] = it
            finished = now
            if finished.all():
                break
        k["lse"].launch((n, nb), BLOCK, stream, cost, v, lse_u, ir, done)
        k["pot"].launch(nb, BLOCK, stream, lse_u, u, loga, a, done, err, 0, 0.0)
    if not finished.all():
        # the error of the problems still running, on their final state (done problems keep theirs)
        rest = cuda.to_device(finished.astype(np.int32), stream=stream)  # skip the converged ones
        k["lse"].launch((m, nb), BLOCK, stream, cost_t, u, lse_v, ir, rest)
        k["pot"].launch(nb, BLOCK, stream, lse_v, v, logb, b, rest, err, 2, 0.0)
    k["plan"].launch((n, nb), BLOCK, stream, cost, u, v, plan, rowc, ir)
    k["sum"].launch(nb, BLOCK, stream, rowc, value)
    n_iter.copy_to_device(iters, stream=stream)


@launcher
def sinkhorn_backward(grad, plan, out, n_threads):
    """IN grad (B,), plan (B, n, m); OUT out (B, n, m) = grad[r] * plan[r] (the regularized objective)."""
    grad, plan, out = dev(grad), dev(plan), dev(out)
    if plan.size == 0:
        return
    k = _kernels(plan.dtype)
    k["scale"].launch(_grid1(plan.size), BLOCK, current_stream(), plan, grad, out)
