"""Model-selection criteria: the Akaike and Bayesian information criteria, vectorized over models.

Both are one line of arithmetic; this module is their specification and implementation at once (there is
no kernel: the cost is a few flops per model). Inputs broadcast against each other like NumPy ufuncs, so
one call scores a whole family of candidate models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["aic", "bic"]

ArrayLike = Any


def _float_array(op: str, name: str, value) -> np.ndarray:
    if value is None or isinstance(value, (str, bytes, dict, set)):
        raise TypeError(f"{op}: {name} must be a real number or an array of them, got {type(value).__name__}")
    a = np.asarray(value)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"{op}: {name} must be real (integer or floating), got dtype {a.dtype}")
    return a


def _count(op: str, name: str, value, low: float) -> np.ndarray:
    a = _float_array(op, name, value)
    bad = ~(a >= low) | ~np.isfinite(a.astype(np.float64))
    if np.any(bad):
        first = a.reshape(-1)[np.flatnonzero(bad.reshape(-1))[0]]
        raise ValueError(f"{op}: {name} must be finite and >= {low:g}, got {first!r}")
    return a


def aic(log_likelihood: ArrayLike, k: ArrayLike) -> np.ndarray:
    """Akaike information criterion, ``AIC = 2 k - 2 ln L``.

    Lower is better. ``log_likelihood`` is the maximized log-likelihood ``ln L`` of each model, ``k`` its
    number of estimated parameters; both broadcast (one call scores many models).

    Parameters
    ----------
    log_likelihood : array_like of float
        ``ln L`` per model (may be any real number, including -inf for an impossible fit).
    k : array_like of int or float
        Number of free parameters per model, ``k >= 0``.

    Returns
    -------
    numpy.ndarray
        ``2 k - 2 ln L`` in float64 (a 0-d array for scalar inputs), of the broadcast shape.

    Raises
    ------
    TypeError
        A non-numeric argument.
    ValueError
        ``k < 0`` or not finite, or shapes that do not broadcast.
    """
    op = "aic"
    ll = _float_array(op, "log_likelihood", log_likelihood)
    kk = _count(op, "k", k, 0)
    try:
        shape = np.broadcast_shapes(ll.shape, kk.shape)
    except ValueError:
        raise ValueError(f"{op}: log_likelihood {ll.shape} and k {kk.shape} do not broadcast") from None
    out = 2.0 * kk.astype(np.float64) - 2.0 * ll.astype(np.float64)
    return np.asarray(out).reshape(shape)


def bic(log_likelihood: ArrayLike, k: ArrayLike, n: ArrayLike) -> np.ndarray:
    """Bayesian (Schwarz) information criterion, ``BIC = k ln n - 2 ln L``.

    Lower is better. ``n`` is the number of observations the likelihood was computed on. Against AIC, BIC
    charges ``ln n`` instead of 2 per parameter, so for ``n > e^2 ~ 7.4`` it favours smaller models.

    Parameters
    ----------
    log_likelihood : array_like of float
        ``ln L`` per model.
    k : array_like of int or float
        Number of free parameters per model, ``k >= 0``.
    n : array_like of int or float
        Number of observations, ``n >= 1``.

    Returns
    -------
    numpy.ndarray
        ``k ln n - 2 ln L`` in float64, of the broadcast shape of the three arguments.

    Raises
    ------
    TypeError
        A non-numeric argument.
    ValueError
        ``k < 0``, ``n < 1``, a non-finite ``k`` or ``n``, or shapes that do not broadcast.
    """
    op = "bic"
    ll = _float_array(op, "log_likelihood", log_likelihood)
    kk = _count(op, "k", k, 0)
    nn = _count(op, "n", n, 1)
    try:
        shape = np.broadcast_shapes(ll.shape, kk.shape, nn.shape)
    except ValueError:
        raise ValueError(f"{op}: log_likelihood {ll.shape}, k {kk.shape} and n {nn.shape} do not broadcast") from None
    out = kk.astype(np.float64) * np.log(nn.astype(np.float64)) - 2.0 * ll.astype(np.float64)
    return np.asarray(out).reshape(shape)
