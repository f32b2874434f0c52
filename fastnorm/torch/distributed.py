"""Synchronized BatchNorm across processes on ``torch.distributed``, on fastnorm's BatchNorm stage kernels.

``SyncBatchNorm`` is a drop-in ``torch.nn.SyncBatchNorm`` (same constructor, parameters, buffers and
``state_dict`` keys; a ``torch.nn.modules.batchnorm._BatchNorm``, not a ``torch.nn.SyncBatchNorm``, which
DDP refuses on the CPU) that also runs on CPU tensors, where torch's own refuses them, and with whatever
backend the process group has (gloo on the CPU; NCCL for CUDA tensors). In training, with an initialized
process group of more than one process:

forward:  local (mean, M2, count) per channel (``fastnorm.batch_norm_stats``), packed with a small header
          into one buffer and exchanged in ONE all-gather; every process combines the gathered statistics
          with Chan's parallel-variance formula (``fastnorm.batch_norm_gather_stats``; unequal and empty
          batches), updates the running statistics, and normalizes (``fastnorm.batch_norm_elemt``).
backward: local per-channel sum(dy), sum(dy * (x - mean)) (``fastnorm.batch_norm_backward_reduce``),
          packed and exchanged in ONE all-gather, summed in rank order, and dx from the global sums
          (``fastnorm.batch_norm_backward_elemt``). dweight and dbias are this process's share; data
          parallelism (DDP) averages them like any parameter gradient, which gives the single-process
          gradient of the mean loss.

The result equals BatchNorm over the concatenation of every process's batch: outputs, input gradients,
parameter gradients (summed over processes) and running statistics.

Mismatches fail loudly on every process instead of hanging: the packed buffer's size depends only on
``num_features`` (so an input with the wrong channel count still joins the collective), and its header
carries the phase (forward / backward), ``num_features``, the input's channel count and an error flag,
checked by every process after the same collective. A process whose input has the wrong channel count,
or which is in the backward while another is in the forward, makes every process raise ``RuntimeError``.
Limits: processes whose modules have different ``num_features`` exchange buffers of different sizes, which
the backend cannot match (gloo aborts the process; DDP checks parameter shapes across processes when it
is built); a process in eval mode makes no collective at all (as in torch), so its peers in training wait
for it. On CUDA tensors the gathered header and counts are read on the host (a device synchronization per
layer and pass); that path is not exercised here (NCCL needs several GPUs).

Eval mode (with running statistics) normalizes with the running statistics, with no communication. With
no process group initialized, or a group of one process, the module is plain BatchNorm.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

import fastnorm

from . import functional as F
from ._common import batch_norm_args

__all__ = ["SyncBatchNorm"]

_MAGIC = 7_470_171.0  # marks a fastnorm SyncBatchNorm buffer (a collective of something else reads as garbage)
_FORWARD, _BACKWARD = 1.0, 2.0
_H = 6  # header: magic, phase, num_features, input channels, error flag, spare
_ERR_CHANNELS, _ERR_DIM = 1.0, 2.0


# ------------------------------------------------------------------------------------------- stages
def _fastnorm_ok(x: Tensor, *others: Tensor | None) -> bool:
    """Whether the fastnorm stage kernels take data ``x`` with these tensors (its parameters, statistics
    or data in x's dtype or, beside 16-bit x, float32); else torch ops compute the same stages."""
    if x.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        return False
    for t in (x, *others):
        if t is None:
            continue
        if t.dtype not in (x.dtype, _stat_dtype(x)):
            return False
        if t.device.type == "cuda":
            if F._cuda_backend_error() is not None:
                return False
            if not hasattr(fastnorm._dispatch.cuda_backend().kernels, "batch_norm_stats"):
                return False
        elif t.device.type != "cpu":
            return False
    return True


def _view(x: Tensor) -> tuple[Tensor, int, list[int] | None]:
    """x as a contiguous tensor the kernels read in place, its channel axis, and the permutation back.

    A channels-last tensor (N, C, *spatial) with C innermost is read as (N, *spatial, C) with axis=-1."""
    if x.dim() > 2 and not x.is_contiguous():
        perm = [0, *range(2, x.dim()), 1]
        xp = x.permute(perm)
        if xp.is_contiguous():
            back = [0, x.dim() - 1, *range(1, x.dim() - 1)]
            return xp, -1, back
    return x.contiguous(), 1, None


def _red_dims(x: Tensor, axis: int) -> list[int]:
    c = 1 if axis == 1 else x.dim() - 1
    return [d for d in range(x.dim()) if d != c]


def _bshape(x: Tensor, axis: int) -> list[int]:
    shape = [1] * x.dim()
    shape[1 if axis == 1 else x.dim() - 1] = -1
    return shape


def _stats(x: Tensor, axis: int) -> tuple[Tensor, Tensor, int]:
    c = x.shape[axis]
    count = x.numel() // c if c else 0
    if _fastnorm_ok(x):
        mean, m2, count = fastnorm.batch_norm_stats(F._arr(x), axis=axis)
        return F._ten(mean, x), F._ten(m2, x), count
    if count == 0:
        z = x.new_zeros((c,), dtype=torch.float32)
        return z, z.clone(), 0
    xf = x.float()
    dims = _red_dims(x, axis)
    mean = xf.mean(dim=dims)
    m2 = ((xf - mean.view(_bshape(x, axis))) ** 2).sum(dim=dims)
    return mean, m2, count


def _stat_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _gather_stats(x, means, m2s, counts, running_mean, running_var, momentum, eps):
    """(mean, invstd) in the statistics dtype; running statistics updated in place."""
    sd = _stat_dtype(x)
    track = running_mean is not None
    if _fastnorm_ok(x, running_mean, running_var):
        cnt = counts.cpu().numpy() if counts.device.type == "cpu" else counts
        mean, invstd = fastnorm.batch_norm_gather_stats(
            F._arr(means.to(sd)), F._arr(m2s.to(sd)), cnt, F._arr(running_mean), F._arr(running_var),
            momentum=momentum, eps=eps,
        )  # fmt: skip
        return F._ten(mean, x), F._ten(invstd, x)
    n_p = counts.double()
    n = n_p.sum()
    if float(n) <= 1:
        raise ValueError(
            f"SyncBatchNorm: training needs more than 1 value per channel over all processes, got counts {n_p.tolist()}"
        )
    mu64, m264 = means.double(), m2s.double()
    mean = (n_p[:, None] * mu64).sum(0) / n
    m2 = (m264 + n_p[:, None] * (mu64 - mean) ** 2).sum(0)
    if track:
        with torch.no_grad():
            running_mean.copy_((1 - momentum) * running_mean.double() + momentum * mean)
            running_var.copy_((1 - momentum) * running_var.double() + momentum * m2 / (n - 1))
    return mean.to(sd), torch.rsqrt(m2 / n + eps).to(sd)


def _elemt(x, axis, mean, invstd, weight, bias):
    if _fastnorm_ok(x, weight, bias) and mean.dtype == _stat_dtype(x):
        return F._ten(fastnorm.batch_norm_elemt(F._arr(x), F._arr(mean), F._arr(invstd), F._arr(weight),
                                                F._arr(bias), axis=axis), x)  # fmt: skip
    s = _bshape(x, axis)
    y = (x.float() - mean.view(s)) * invstd.view(s)
    if weight is not None:
        y = y * weight.view(s)
    if bias is not None:
        y = y + bias.view(s)
    return y.to(x.dtype)


def _backward_reduce(dy, x, axis, mean, invstd, weight):
    """(sum_dy, sum_dy_xmu, dweight or None, dbias) of the local batch."""
    if _fastnorm_ok(dy, x, weight) and mean.dtype == _stat_dtype(x):
        r = fastnorm.batch_norm_backward_reduce(F._arr(dy), F._arr(x), F._arr(mean), F._arr(invstd), F._arr(weight),
                                                axis=axis)  # fmt: skip
        return tuple(F._ten(a, x) for a in r)
    dims, s = _red_dims(x, axis), _bshape(x, axis)
    dyf = dy.float()
    sum_dy = dyf.sum(dim=dims)
    sum_dy_xmu = (dyf * (x.float() - mean.view(s))).sum(dim=dims)
    dw = None if weight is None else (sum_dy_xmu * invstd).to(weight.dtype)
    return sum_dy, sum_dy_xmu, dw, sum_dy.to(x.dtype)


def _backward_elemt(dy, x, axis, mean, invstd, weight, sum_dy, sum_dy_xmu, count: float):
    if _fastnorm_ok(dy, x, weight) and mean.dtype == _stat_dtype(x):
        return F._ten(fastnorm.batch_norm_backward_elemt(
            F._arr(dy), F._arr(x), F._arr(mean), F._arr(invstd), F._arr(weight), F._arr(sum_dy),
            F._arr(sum_dy_xmu), count, axis=axis), x)  # fmt: skip
    s = _bshape(x, axis)
    r = invstd.view(s)
    g = dy.float() - (sum_dy / count).view(s) - (x.float() - mean.view(s)) * r * r * (sum_dy_xmu / count).view(s)
    dx = g * r
    if weight is not None:
        dx = dx * weight.view(s)
    return dx.to(x.dtype)


# ------------------------------------------------------------------------------------------- collective
def _all_gather(buf: Tensor, group, world: int) -> Tensor:
    """ONE collective: every process's ``buf`` stacked, (world, len(buf)), in rank order."""
    out = buf.new_empty((world * buf.numel(),))
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, buf, group=group)
    return out.view(world, buf.numel())


def _check(rows: Tensor, phase: float, num_features: int) -> None:
    """Raise the same RuntimeError on every process when the gathered headers disagree."""
    head = rows[:, :_H].cpu().tolist()
    names = {_FORWARD: "forward", _BACKWARD: "backward"}
    problems = []
    if any(h[0] != _MAGIC for h in head):
        problems.append(
            "a process sent something else than SyncBatchNorm statistics in this collective (its collectives "
            "are out of step with this one's)"
        )
    else:
        phases = [names.get(h[1], f"phase {h[1]}") for h in head]
        if len(set(phases)) > 1:
            problems.append(
                "processes are in different phases: "
                + ", ".join(f"rank {r} in the {p}" for r, p in enumerate(phases))
                + " (every process must run forward and backward of the same layers in the same order)"
            )
        feats = [int(h[2]) for h in head]
        if len(set(feats)) > 1:
            problems.append(f"num_features differs across ranks: {feats}")
        bad = [(r, int(h[3]), int(h[4])) for r, h in enumerate(head) if h[4] != 0]
        for r, c, err in bad:
            if err == _ERR_CHANNELS:
                problems.append(f"rank {r} has an input with {c} channels, expected num_features={num_features}")
            else:
                problems.append(f"rank {r} has an input with fewer than 2 dims")
    if problems:
        raise RuntimeError("fastnorm SyncBatchNorm: " + "; ".join(problems))


def _header(buf: Tensor, phase: float, num_features: int, channels: int, err: float) -> None:
    buf[:_H] = torch.tensor([_MAGIC, phase, float(num_features), float(channels), err, 0.0], dtype=buf.dtype)


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group, world, num_features):
        buf = x.new_zeros((_H + 1 + 2 * num_features,), dtype=torch.float64)
        err, channels = 0.0, (x.shape[1] if x.dim() >= 2 else 0)
        if x.dim() < 2:
            err = _ERR_DIM
        elif channels != num_features:
            err = _ERR_CHANNELS
        xv, axis, back = x, 1, None
        if err == 0:
            xv, axis, back = _view(x)
            mean, m2, count = _stats(xv, axis)
            buf[_H] = float(count)
            buf[_H + 1 : _H + 1 + num_features] = mean.double()
            buf[_H + 1 + num_features :] = m2.double()
        _header(buf, _FORWARD, num_features, channels, err)
        rows = _all_gather(buf, group, world)
        _check(rows, _FORWARD, num_features)
        sd = _stat_dtype(x)
        counts = rows[:, _H]
        means = rows[:, _H + 1 : _H + 1 + num_features].to(sd)
        m2s = rows[:, _H + 1 + num_features :].to(sd)
        mean, invstd = _gather_stats(xv, means, m2s, counts, running_mean, running_var, momentum, eps)
        y = _elemt(xv, axis, mean, invstd, weight, bias)
        if back is not None:
            y = y.permute(back)
        ctx.save_for_backward(xv, mean, invstd, weight)
        ctx.meta = (axis, back, float(counts.sum()), group, world, num_features, bias is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        xv, mean, invstd, weight = ctx.saved_tensors
        axis, back, total, group, world, num_features, has_bias = ctx.meta
        if back is not None:
            inv = [0, *range(2, dy.dim()), 1]
            dy = dy.permute(inv)
        dy = dy.contiguous()
        sum_dy, sum_dy_xmu, dw, db = _backward_reduce(dy, xv, axis, mean, invstd, weight)
        buf = dy.new_zeros((_H + 1 + 2 * num_features,), dtype=torch.float64)
        _header(buf, _BACKWARD, num_features, num_features, 0.0)
        buf[_H + 1 : _H + 1 + num_features] = sum_dy.double()
        buf[_H + 1 + num_features :] = sum_dy_xmu.double()
        rows = _all_gather(buf, group, world)
        _check(rows, _BACKWARD, num_features)
        tot = rows[:, _H + 1 :].sum(0)  # in rank order, float64
        sum_dy_all = tot[:num_features].to(mean.dtype)
        sum_dy_xmu_all = tot[num_features:].to(mean.dtype)
        dx = _backward_elemt(dy, xv, axis, mean, invstd, weight, sum_dy_all, sum_dy_xmu_all, total)
        if back is not None:
            dx = dx.permute(back)
        need_w, need_b = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        return (
            dx,
            dw if need_w and weight is not None else None,
            db.to(weight.dtype if weight is not None else db.dtype) if need_b and has_bias else None,
            None, None, None, None, None, None, None,
        )  # fmt: skip


# ------------------------------------------------------------------------------------------- module
class SyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """``torch.nn.SyncBatchNorm`` on fastnorm's BatchNorm stage kernels, for CPU (gloo) and CUDA tensors.

    Same constructor as torch's: ``SyncBatchNorm(num_features, eps=1e-5, momentum=0.1, affine=True,
    track_running_stats=True, process_group=None, device=None, dtype=None, *, bias=True)``;
    ``momentum=None`` is the cumulative moving average. Same parameters, buffers and ``state_dict`` keys,
    so checkpoints load both ways. Inputs (N, C, *) (channels-last memory format read in place).

    Training with an initialized process group of P > 1 processes (``process_group``, default the world)
    normalizes every process's batch with the statistics of the concatenated batch::

        n = sum_p n_p,  mean = sum_p n_p mean_p / n,  var = sum_p (m2_p + n_p (mean_p - mean)^2) / n
        y = (x - mean) / sqrt(var + eps) * weight + bias
        running_mean <- (1 - m) running_mean + m mean,  running_var <- (1 - m) running_var + m var n / (n - 1)

    with one all-gather of packed statistics in the forward and one in the backward (see the module
    docstring). A process may hold an empty batch (n_p = 0). Eval mode with running statistics: no
    communication. No process group, or a group of one process: plain BatchNorm (fastnorm's kernels).

    It subclasses torch's ``_BatchNorm``, not ``torch.nn.SyncBatchNorm``: DDP refuses every
    ``torch.nn.SyncBatchNorm`` instance in a CPU model ("SyncBatchNorm layers only work with GPU modules").

    Parameters
    ----------
    num_features : C, the channel count of the (N, C, *) input.
    eps : added to the variance.
    momentum : running-statistics factor in [0, 1], or None for the cumulative average.
    affine : learnable weight and bias (bias only if ``bias`` too).
    track_running_stats : keep running_mean, running_var, num_batches_tracked.
    process_group : the group to synchronize over (None: the default group).
    device, dtype : of the parameters and buffers.
    bias : with ``affine``, whether there is a bias.

    Returns
    -------
    The module; calling it on x (N, C, *) returns y of x's shape and memory format.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype, bias=bias
        )
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _check_non_zero_input_channels(self, input: Tensor) -> None:
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    _fastnorm_op = "batch_norm"

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        running_mean, running_var, bn_training, factor = batch_norm_args(self)
        group, world = self._group()
        if not (bn_training and self.training and world > 1):
            return self._local(input, running_mean, running_var, bn_training, factor)
        return _SyncBatchNormFunction.apply(
            input, self.weight, self.bias, running_mean, running_var, float(self.eps), float(factor), group, world,
            int(self.num_features),
        )  # fmt: skip

    def _group(self) -> tuple[Any, int]:
        if not (dist.is_available() and dist.is_initialized()):
            return None, 1
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return group, dist.get_world_size(group)

    def _local(self, input, running_mean, running_var, bn_training, factor):
        if F.unsupported_reason(input, self.weight, self.bias, running_mean, running_var, op="batch_norm") is None:
            return F.batch_norm(input, running_mean, running_var, self.weight, self.bias, bn_training, factor, self.eps)
        return torch.nn.functional.batch_norm(
            input, running_mean, running_var, self.weight, self.bias, bn_training, factor, self.eps
        )

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module, process_group: Any = None) -> torch.nn.Module:
        """Replace every ``BatchNorm*d`` (and ``torch.nn.SyncBatchNorm``) in ``module`` by this class.

        Parameters
        ----------
        module : a module (or a BatchNorm module itself, which is then returned converted).
        process_group : the group to synchronize over (None: the whole world).

        Returns
        -------
        The converted module; parameters and buffers are shared with the old modules (no copy), like
        ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``.
        """
        out = module
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            out = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
                bias=module.bias is not None,
            )
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out
