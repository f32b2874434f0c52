"""Optimizer step kernels on the CUDA backend: the multi-tensor launchers (same arguments as the CPU
kernels: an address table, offsets, per-tensor scalars) vs NumPy formulas of torch.optim's updates, on
tensors that make chunks span several tensors, with empty tensors, the unrolled and the tail loops,
uniform and per-tensor scalars; and the CUDA versions of the table-filling helpers."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import host, hw_only

SIZES = [5, 0, 1, 40, 3]


@pytest.fixture
def K(monkeypatch):
    """The CUDA optimizer kernels with small blocks and chunks, so a few elements use every path."""
    from fastnorm._kernels.cuda import optim as O

    monkeypatch.setattr(O, "BLOCK", 32)
    monkeypatch.setattr(O, "UNROLL", 2)
    monkeypatch.setattr(O, "CHUNK", 16)
    return O


def tensors(rng, dtype, n_state, sizes=SIZES):
    p = [rng.standard_normal(s).astype(dtype) for s in sizes]
    g = [rng.standard_normal(s).astype(dtype) for s in sizes]
    st = [[np.abs(rng.standard_normal(s)).astype(dtype) for s in sizes] for _ in range(n_state)]
    return p, g, st


def table(K, on_gpu, p, g, states):
    """What fastnorm.optim does: device copies, then addresses through the CUDA gather helpers."""
    dp = [on_gpu(a) for a in p]
    dg = [on_gpu(a) for a in g]
    dst = [[None if a is None else on_gpu(a) for a in s] for s in states]
    info = np.empty((3, len(p)), np.int64)
    assert K.gather_params(dp, info) == -1
    tab = np.zeros((2 + len(states), len(p)), np.intp)
    tab[0] = info[0]
    no = np.zeros(0, np.int64)
    assert K.gather_like(dg, dp, tab[1], False, False, no, no) == -1
    for r, s in enumerate(dst):
        assert K.gather_like(s, dp, tab[2 + r], True, True, no, no) == -1
    offsets = np.zeros(len(p) + 1, np.int64)
    np.cumsum(info[1], out=offsets[1:])
    # the kernels see only addresses: the caller keeps the device gradients alive through the call
    return tab, offsets, dp, dst, dg


def close(got, want, dtype):
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(host(a), b, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("wd", "amsgrad", "maximize", "decay"),
    [(0.0, False, False, 1.0), (0.1, True, True, 1.0), (0.0, False, False, 1 - 1e-3 * 0.01)],
)
def test_adam(rng, on_gpu, K, dtype, wd, amsgrad, maximize, decay):
    lr, b1, b2, eps, step = 1e-3, 0.9, 0.999, 1e-8, 3
    p, g, (m, v, vmax) = tensors(rng, dtype, 3)
    states = [m, v, vmax if amsgrad else [None] * len(p)]
    tab, off, dp, dst, _grads = table(K, on_gpu, p, g, states)
    pt = np.tile([lr / (1 - b1**step), np.sqrt(1 - b2**step)], (len(p), 1))
    K.adam_step(tab, off, pt, b1, b2, eps, wd, decay, amsgrad, maximize, dtype == np.float64, 1)
    want_p, want_m, want_v, want_vm = [], [], [], []
    for i in range(len(p)):
        gi = -g[i] if maximize else g[i]
        gi = gi + wd * p[i]
        pi = p[i] * decay
        mi = b1 * m[i] + (1 - b1) * gi
        vi = b2 * v[i] + (1 - b2) * gi * gi
        vu = np.maximum(vmax[i], vi) if amsgrad else vi
        want_p.append(pi - pt[i, 0] * mi / (np.sqrt(vu) / pt[i, 1] + eps))
        want_m.append(mi)
        want_v.append(vi)
        want_vm.append(vu)
    close(dp, want_p, dtype)
    close(dst[0], want_m, dtype)
    close(dst[1], want_v, dtype)
    if amsgrad:
        close(dst[2], want_vm, dtype)


def test_adam_per_tensor_steps(rng, on_gpu, K):
    # tensors at different steps: the per-tensor scalar table goes to the device
    lr, b1, b2, eps = 1e-2, 0.9, 0.99, 1e-8
    p, g, (m, v) = tensors(rng, np.float32, 2)
    tab, off, dp, dst, _grads = table(K, on_gpu, p, g, [m, v, [None] * len(p)])
    steps = np.arange(1, len(p) + 1)
    pt = np.stack([lr / (1 - b1**steps), np.sqrt(1 - b2**steps)], axis=1)
    K.adam_step(tab, off, pt, b1, b2, eps, 0.0, 1.0, False, False, False, 1)
    want = []
    for i in range(len(p)):
        mi = b1 * m[i] + (1 - b1) * g[i]
        vi = b2 * v[i] + (1 - b2) * g[i] * g[i]
        want.append(p[i] - pt[i, 0] * mi / (np.sqrt(vi) / pt[i, 1] + eps))
    close(dp, want, np.float32)


@pytest.mark.parametrize(
    ("momentum", "nesterov", "wd", "first"),
    [(0.0, False, 0.0, False), (0.9, True, 0.1, False), (0.9, False, 0.0, True)],
)
def test_sgd(rng, on_gpu, K, momentum, nesterov, wd, first):
    lr, damp = 0.1, 0.2
    p, g, (b,) = tensors(rng, np.float32, 1)
    tab, off, dp, dst, _grads = table(K, on_gpu, p, g, [b if momentum else [None] * len(p)])
    c1, c2 = (0.0, 1.0) if first else (momentum, 1 - damp)
    pt = np.tile([c1, c2], (len(p), 1))
    K.sgd_step(tab, off, pt, lr, momentum, wd, nesterov, False, False, 1)
    want_p, want_b = [], []
    for i in range(len(p)):
        gi = g[i] + wd * p[i]
        if momentum:
            bi = c1 * b[i] + c2 * gi
            want_b.append(bi)
            gi = gi + momentum * bi if nesterov else bi
        want_p.append(p[i] - lr * gi)
    close(dp, want_p, np.float32)
    if momentum:
        close(dst[0], want_b, np.float32)


def test_adagrad_adadelta_rmsprop(rng, on_gpu, K):
    f32 = np.float32
    # Adagrad
    p, g, (s,) = tensors(rng, f32, 1)
    tab, off, dp, dst, _grads = table(K, on_gpu, p, g, [s])
    clr, eps, wd = 0.05, 1e-10, 0.01
    K.adagrad_step(tab, off, np.full((len(p), 1), clr), wd, eps, False, False, 1)
    gi = [g[i] + wd * p[i] for i in range(len(p))]
    si = [s[i] + gi[i] * gi[i] for i in range(len(p))]
    close(dp, [p[i] - clr * gi[i] / (np.sqrt(si[i]) + eps) for i in range(len(p))], f32)
    close(dst[0], si, f32)
    # Adadelta
    p, g, (sq, acc) = tensors(rng, f32, 2)
    tab, off, dp, dst, _grads = table(K, on_gpu, p, g, [sq, acc])
    lr, rho, eps = 1.0, 0.9, 1e-6
    K.adadelta_step(tab, off, lr, rho, eps, 0.0, True, False, 1)
    want = []
    for i in range(len(p)):
        gi = -g[i]
        sqi = rho * sq[i] + (1 - rho) * gi * gi
        d = np.sqrt(acc[i] + eps) / np.sqrt(sqi + eps) * gi
        want.append(p[i] - lr * d)
    close(dp, want, f32)
    # RMSprop, centered with momentum
    p, g, (sq, ga, b) = tensors(rng, f32, 3)
    ga = [0.1 * a for a in ga]
    tab, off, dp, dst, _grads = table(K, on_gpu, p, g, [sq, ga, b])
    lr, alpha, eps, mu = 0.01, 0.99, 1e-8, 0.5
    K.rmsprop_step(tab, off, lr, alpha, eps, 0.0, mu, True, False, False, 1)
    want = []
    for i in range(len(p)):
        sqi = alpha * sq[i] + (1 - alpha) * g[i] * g[i]
        gai = alpha * ga[i] + (1 - alpha) * g[i]
        avg = np.sqrt(sqi - gai * gai) + eps
        want.append(p[i] - lr * (mu * b[i] + g[i] / avg))
    close(dp, want, f32)


def test_structure_checks(K):
    tab = np.zeros((5, 2), np.intp)
    with pytest.raises(ValueError, match="wrong shape"):
        K.adam_step(tab[:4], np.array([0, 1, 2]), np.zeros((2, 2)), 0.9, 0.99, 1e-8, 0, 1, False, False, False, 1)
    with pytest.raises(ValueError, match="no address in row 0"):
        K.adam_step(tab, np.array([0, 1, 2]), np.zeros((2, 2)), 0.9, 0.99, 1e-8, 0, 1, False, False, False, 1)
    with pytest.raises(ValueError, match="per_tensor must have shape"):
        K.adam_step(tab, np.array([0, 0, 0]), np.zeros((2, 1)), 0.9, 0.99, 1e-8, 0, 1, False, False, False, 1)


def test_gather_helpers_reject_what_the_kernels_cannot_use(on_gpu, cuda, K):
    good = on_gpu(np.ones(4, np.float32))
    info = np.empty((3, 3), np.int64)
    assert K.gather_params([good, np.ones(4, np.float32), good], info) == 1  # host array
    assert K.gather_params([good, on_gpu(np.ones(4, np.int32))], np.empty((3, 2), np.int64)) == 1
    assert K.gather_params([good, on_gpu(np.ones((4, 4), np.float32))[:, ::2]], np.empty((3, 2), np.int64)) == 1
    ptrs = np.empty(1, np.intp)
    no = np.zeros(0, np.int64)
    assert K.gather_like([on_gpu(np.ones(5, np.float32))], [good], ptrs, False, False, no, no) == 0  # shape
    assert K.gather_like([on_gpu(np.ones(4, np.float64))], [good], ptrs, False, False, no, no) == 0  # dtype
    assert K.gather_like([None], [good], ptrs, True, False, no, no) == 0
    assert K.gather_like([None], [good], ptrs, True, True, no, no) == -1
    assert ptrs[0] == 0
    info = np.empty((3, 1), np.int64)
    K.gather_params([good], info)
    lo = np.array([info[0, 0]], np.int64)
    assert K.gather_like([good], [good], ptrs, True, False, lo, lo + 16) == 0  # overlaps an avoided range


def test_hw_adam_matches_torch_fused_over_many_tensors(rng):
    """fastnorm.optim.adam_step on torch CUDA tensors (one launch of the multi-tensor kernel over 53 tensors,
    sizes up to 2**20) against torch's fused Adam."""
    hw_only()
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    from fastnorm import optim as FO

    sizes = [int(s) for s in rng.integers(1, 70000, 50)] + [0, 1, 1 << 20]
    ps = [torch.randn(s, device="cuda") for s in sizes]
    gs = [torch.randn(s, device="cuda") for s in sizes]
    ms = [torch.zeros(s, device="cuda") for s in sizes]
    vs = [torch.zeros(s, device="cuda") for s in sizes]
    ref = [p.clone().requires_grad_() for p in ps]
    opt = torch.optim.Adam(ref, lr=1e-3, fused=True)
    for step in (1, 2, 3):
        for p, g in zip(ref, gs, strict=True):
            p.grad = g
        opt.step()
        FO.adam_step(ps, gs, ms, vs, step=step, lr=1e-3)
    for a, b in zip(ps, ref, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


def _offset_copy(on_gpu, a, k: int):
    """A device copy of ``a`` starting ``k`` elements past a 16-byte aligned allocation."""
    base = on_gpu(np.concatenate([np.zeros(k, a.dtype), a]))
    return base[k:]


# The 128-bit kernel (every address of the table 16-byte aligned): per tensor piece an unaligned head and
# tail element by element, the middle one 128-bit access per stream. Sizes whose pieces start and end
# anywhere in a group of 4 (chunks of 16 elements over tensors of 5, 0, 1, 40, 3, 7, 66 elements).
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algo", ["adam", "sgd_momentum", "adagrad"])
@pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "one_tensor_offset_by_one"])
def test_vector_kernel_is_the_scalar_kernels_bits(rng, on_gpu, K, monkeypatch, dtype, algo, misaligned):
    sizes = [5, 0, 1, 40, 3, 7, 66]
    n_state = {"adam": 2, "sgd_momentum": 1, "adagrad": 1}[algo]
    p, g, st = tensors(rng, dtype, n_state, sizes)
    picked = []
    kernel = K._kernel

    def spy(a, f, f64, vec=False):
        picked.append(vec)
        return kernel(a, f, f64, vec)

    monkeypatch.setattr(K, "_kernel", spy)
    results = []
    for vec in (True, False):
        monkeypatch.setattr(K, "VEC", vec)
        tab, off, dp, dst, _grads = table(K, on_gpu, p, g, st + [[None] * len(p)] * (3 - n_state))
        if misaligned:  # tensor 3's gradient one element past a 16-byte boundary
            dg3 = _offset_copy(on_gpu, g[3], 1)
            info = np.empty((3, 1), np.int64)
            K.gather_params([dg3], info)
            tab[1, 3] = info[0, 0]
        f64 = dtype == np.float64
        if algo == "adam":
            pt = np.tile([1e-2, 0.9], (len(p), 1))
            K.adam_step(tab[:5], off, pt, 0.9, 0.99, 1e-8, 0.01, 1.0, False, False, f64, 1)
        elif algo == "sgd_momentum":
            K.sgd_step(tab[:3], off, np.tile([0.9, 0.8], (len(p), 1)), 0.1, 0.9, 0.0, True, False, f64, 1)
        else:
            K.adagrad_step(tab[:3], off, np.full((len(p), 1), 0.05), 0.01, 1e-10, False, f64, 1)
        results.append([host(a) for a in dp + [s for row in dst for s in row if s is not None]])
    assert picked == [not misaligned, False]
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    if algo == "sgd_momentum":  # and the update itself (the scalar kernel's formulas are tested above)
        b = [0.9 * s + 0.8 * gi for s, gi in zip(st[0], g, strict=True)]
        close(dp, [pi - 0.1 * (gi + 0.9 * bi) for pi, gi, bi in zip(p, g, b, strict=True)], dtype)
