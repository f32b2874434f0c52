"""NumPy reference optimizer steps: the specification the fused kernels are tested against.

One function per algorithm, with ``torch.optim``'s update formulas, hyperparameter names and defaults
(the functional forms ``torch.optim.sgd``, ``torch.optim.adam``, ...). Each updates lists of arrays
in place: ``params[i]`` and its state arrays (same shape and dtype as the parameter), given
``grads[i]``. Arithmetic is done in the parameter's dtype (Python float hyperparameters do not promote
float32), one tensor at a time, in the order torch applies the operations. ``g`` below is the gradient,
negated when ``maximize``.

``step`` (Adagrad, Adam, AdamW) is the number of the update being made, counting from 1: an int shared
by all tensors, or one int per tensor.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sgd_step", "adagrad_step", "adadelta_step", "rmsprop_step", "adam_step", "adamw_step"]


def _steps(step, n):
    """One step number per tensor."""
    if np.ndim(step) == 0:
        return [int(step)] * n
    steps = [int(s) for s in step]
    if len(steps) != n:
        raise ValueError(f"step has {len(steps)} entries for {n} tensors")
    return steps


def _grad(p, g, weight_decay, maximize):
    """``g`` (negated when maximize) plus ``weight_decay * p`` (the L2 penalty folded into the gradient)."""
    g = -g if maximize else g
    if weight_decay != 0:
        g = g + weight_decay * p
    return g


def sgd_step(
    params,
    grads,
    momentum_buffers=None,
    *,
    lr=1e-3,
    momentum=0.0,
    dampening=0.0,
    weight_decay=0.0,
    nesterov=False,
    maximize=False,
):
    """SGD (``torch.optim.SGD``), optionally with momentum and Nesterov momentum::

        g = g + weight_decay * p
        momentum != 0:  b = g on the first step (buffer None), else b = momentum * b + (1 - dampening) * g
                        g = g + momentum * b if nesterov else b
        p = p - lr * g

    ``momentum_buffers``: a list with one entry per parameter when momentum != 0; None entries are
    created (the first step) and written into the list.
    """
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        g = _grad(p, g, weight_decay, maximize)
        if momentum != 0:
            b = momentum_buffers[i]
            if b is None:
                b = np.array(g)  # a 0-d array, not a NumPy scalar, for 0-d parameters
                momentum_buffers[i] = b
            else:
                b[...] = momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        p[...] = p - lr * g


def adagrad_step(
    params,
    grads,
    state_sums,
    *,
    step,
    lr=1e-2,
    lr_decay=0.0,
    weight_decay=0.0,
    eps=1e-10,
    maximize=False,
):
    """Adagrad (``torch.optim.Adagrad``); ``state_sums`` start at ``initial_accumulator_value``::

    g = g + weight_decay * p
    clr = lr / (1 + (step - 1) * lr_decay)
    sum = sum + g * g
    p = p - clr * g / (sqrt(sum) + eps)
    """
    for p, g, s, t in zip(params, grads, state_sums, _steps(step, len(params)), strict=True):
        g = _grad(p, g, weight_decay, maximize)
        clr = lr / (1 + (t - 1) * lr_decay)
        s[...] = s + g * g
        p[...] = p - clr * (g / (np.sqrt(s) + eps))


def adadelta_step(
    params,
    grads,
    square_avgs,
    acc_deltas,
    *,
    lr=1.0,
    rho=0.9,
    eps=1e-6,
    weight_decay=0.0,
    maximize=False,
):
    """Adadelta (``torch.optim.Adadelta``)::

    g = g + weight_decay * p
    square_avg = rho * square_avg + (1 - rho) * g * g
    delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
    acc_delta = rho * acc_delta + (1 - rho) * delta * delta
    p = p - lr * delta
    """
    for p, g, sq, acc in zip(params, grads, square_avgs, acc_deltas, strict=True):
        g = _grad(p, g, weight_decay, maximize)
        sq[...] = rho * sq + (1 - rho) * (g * g)
        delta = np.sqrt(acc + eps) / np.sqrt(sq + eps) * g
        acc[...] = rho * acc + (1 - rho) * (delta * delta)
        p[...] = p - lr * delta


def rmsprop_step(
    params,
    grads,
    square_avgs,
    grad_avgs=None,
    momentum_buffers=None,
    *,
    lr=1e-2,
    alpha=0.99,
    eps=1e-8,
    weight_decay=0.0,
    momentum=0.0,
    centered=False,
    maximize=False,
):
    """RMSprop (``torch.optim.RMSprop``); ``grad_avgs`` needed when centered, ``momentum_buffers`` when
    momentum > 0 (all state starts at zero)::

        g = g + weight_decay * p
        square_avg = alpha * square_avg + (1 - alpha) * g * g
        centered:  grad_avg = grad_avg + (1 - alpha) * (g - grad_avg)      (torch's lerp)
                   avg = sqrt(square_avg - grad_avg * grad_avg) + eps
        else:      avg = sqrt(square_avg) + eps
        momentum > 0:  b = momentum * b + g / avg;  p = p - lr * b
        else:          p = p - lr * g / avg
    """
    for i, (p, g, sq) in enumerate(zip(params, grads, square_avgs, strict=True)):
        g = _grad(p, g, weight_decay, maximize)
        sq[...] = alpha * sq + (1 - alpha) * (g * g)
        if centered:
            ga = grad_avgs[i]
            ga[...] = ga + (1 - alpha) * (g - ga)
            avg = np.sqrt(sq - ga * ga) + eps
        else:
            avg = np.sqrt(sq) + eps
        if momentum > 0:
            b = momentum_buffers[i]
            b[...] = momentum * b + g / avg
            p[...] = p - lr * b
        else:
            p[...] = p - lr * (g / avg)


def adam_step(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    max_exp_avg_sqs=None,
    *,
    step,
    lr=1e-3,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    amsgrad=False,
    maximize=False,
    decoupled_weight_decay=False,
):
    """Adam (``torch.optim.Adam``); AdamW when ``decoupled_weight_decay``. State starts at zero::

    Adam:   g = g + weight_decay * p          AdamW:  p = p * (1 - lr * weight_decay)
    exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)                  (torch's lerp)
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    amsgrad:  max_exp_avg_sq = maximum(max_exp_avg_sq, exp_avg_sq), used below instead of exp_avg_sq
    denom = sqrt(exp_avg_sq) / sqrt(1 - beta2**step) + eps
    p = p - lr / (1 - beta1**step) * exp_avg / denom
    """
    for i, (p, g, m, v, t) in enumerate(
        zip(params, grads, exp_avgs, exp_avg_sqs, _steps(step, len(params)), strict=True)
    ):
        g = -g if maximize else g
        if weight_decay != 0:
            if decoupled_weight_decay:
                p[...] = p * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        m[...] = m + (1 - beta1) * (g - m)
        v[...] = beta2 * v + (1 - beta2) * (g * g)
        if amsgrad:
            vmax = max_exp_avg_sqs[i]
            vmax[...] = np.maximum(vmax, v)
            v = vmax
        step_size = lr / (1 - beta1**t)
        denom = np.sqrt(v) / (1 - beta2**t) ** 0.5 + eps
        p[...] = p - step_size * (m / denom)


def adamw_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, step, weight_decay=1e-2, **kwargs):
    """AdamW (``torch.optim.AdamW``): ``adam_step`` with decoupled weight decay (default 1e-2)."""
    adam_step(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        step=step,
        weight_decay=weight_decay,
        decoupled_weight_decay=True,
        **kwargs,
    )
