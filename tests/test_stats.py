"""fastnorm.stats: AIC and BIC formulas, broadcasting over models, validation."""

import math

import numpy as np
import pytest

from fastnorm import stats


def test_formulas_scalar():
    assert float(stats.aic(-10.0, 3)) == pytest.approx(2 * 3 + 20.0)
    assert float(stats.bic(-10.0, 3, 100)) == pytest.approx(3 * math.log(100) + 20.0)
    assert stats.aic(-10.0, 3).shape == ()
    assert stats.aic(-10.0, 3).dtype == np.float64


def test_vectorized_over_models_with_broadcasting():
    ll = np.array([-120.0, -100.5, -99.0, -98.9])
    k = np.arange(1, 5)
    np.testing.assert_allclose(stats.aic(ll, k), 2 * k - 2 * ll)
    np.testing.assert_allclose(stats.bic(ll, k, 50), k * np.log(50) - 2 * ll)
    # several data sets (rows) x models (columns)
    n = np.array([[10], [1000]])
    b = stats.bic(ll[None, :], k[None, :], n)
    assert b.shape == (2, 4)
    np.testing.assert_allclose(b, k[None, :] * np.log(n) - 2 * ll[None, :])


def test_bic_penalizes_more_than_aic_once_n_exceeds_e_squared():
    ll, k = -50.0, np.array([2, 6])
    for n, bic_heavier in [(7, False), (8, True), (1000, True)]:
        pen_aic = np.diff(stats.aic(ll, k))[0]
        pen_bic = np.diff(stats.bic(ll, k, n))[0]
        assert (pen_bic > pen_aic) == bic_heavier


def test_selection_follows_the_criterion():
    # k = 0 and n = 1 are allowed (a parameter-free model; BIC's penalty vanishes at n = 1)
    assert float(stats.bic(-3.0, 5, 1)) == pytest.approx(6.0)
    assert float(stats.aic(-3.0, 0)) == pytest.approx(6.0)
    assert float(stats.aic(-np.inf, 2)) == np.inf


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: stats.aic(-1.0, -1), ValueError, "k must be finite and >= 0"),
        (lambda: stats.aic(-1.0, np.array([1, -2])), ValueError, "k must be"),
        (lambda: stats.bic(-1.0, 2, 0), ValueError, "n must be finite and >= 1"),
        (lambda: stats.bic(-1.0, 2, np.nan), ValueError, "n must be"),
        (lambda: stats.bic(-1.0, np.inf, 3), ValueError, "k must be"),
        (lambda: stats.aic("x", 2), TypeError, "log_likelihood must be"),
        (lambda: stats.aic(None, 2), TypeError, "log_likelihood must be"),
        (lambda: stats.bic(-1.0, True, 3), TypeError, "k must be real"),
        (lambda: stats.aic(np.ones(3), np.ones(2)), ValueError, "do not broadcast"),
        (lambda: stats.bic(np.ones(3), 1, np.ones(2) * 5), ValueError, "do not broadcast"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
