"""Choosing a polynomial degree by AIC and by BIC (fastnorm.stats), and where the two disagree.

    python examples/model_selection.py            # 400 replicated data sets
    python examples/model_selection.py --quick    # 60 (what the tests run)

Data: n = 40 points, x uniform on [-1, 1], y = sin(2.5 x) + Gaussian noise (sigma = 0.3). Candidates:
polynomials of degree 0..10 fitted by least squares (a Legendre basis, well conditioned on [-1, 1]). With
the maximum-likelihood noise variance sigma^2 = RSS / n, each fit's Gaussian log-likelihood is::

    ln L = -n/2 * (ln(2 pi sigma^2) + 1)

and it has k = degree + 2 free parameters (degree + 1 coefficients and sigma^2). Then::

    AIC = 2 k - 2 ln L,    BIC = k ln n - 2 ln L

Both criteria are computed for every (data set, degree) pair in one broadcast call each. BIC charges
ln 40 = 3.7 per parameter against AIC's 2, so whenever they disagree BIC picks the smaller degree (for
n >= 8 that follows from the formulas). The script prints the table of the first data set on which they
disagree, then how often each degree is chosen over all the replications.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from fastnorm import stats

# the examples' shared helpers (examples/_common.py)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import write_json

N = 40
SIGMA = 0.3
DEGREES = np.arange(0, 11)


def make_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, N)
    return x, np.sin(2.5 * x) + SIGMA * rng.standard_normal(N)


def gaussian_log_likelihoods(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ln L of the least-squares polynomial fit of each degree, with the MLE variance RSS / n."""
    ll = np.empty(len(DEGREES))
    for i, d in enumerate(DEGREES):
        coef = np.polynomial.legendre.legfit(x, y, d)
        rss = np.sum((y - np.polynomial.legendre.legval(x, coef)) ** 2)
        ll[i] = -0.5 * len(y) * (np.log(2 * np.pi * rss / len(y)) + 1.0)
    return ll


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer replicated data sets")
    ap.add_argument("--reps", type=int, default=None, help="replicated data sets (default 400, --quick 60)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = ap.parse_args(argv)
    reps = args.reps or (60 if args.quick else 400)

    ll = np.stack([gaussian_log_likelihoods(*make_data(seed)) for seed in range(reps)])  # (reps, degrees)
    k = DEGREES + 2
    aic = stats.aic(ll, k)  # broadcasts (reps, 11) against (11,)
    bic = stats.bic(ll, k, N)
    pick_aic, pick_bic = DEGREES[aic.argmin(axis=1)], DEGREES[bic.argmin(axis=1)]
    disagree = np.flatnonzero(pick_aic != pick_bic)

    print(f"y = sin(2.5 x) + N(0, {SIGMA}^2), n = {N}; polynomial degrees {DEGREES[0]}..{DEGREES[-1]}")
    result = {
        "n": N,
        "reps": reps,
        "aic_choices": pick_aic.tolist(),
        "bic_choices": pick_bic.tolist(),
        "disagree_fraction": len(disagree) / reps,
    }
    if len(disagree):
        s = int(disagree[0])
        print(f"\ndata set {s}: AIC picks degree {pick_aic[s]}, BIC picks degree {pick_bic[s]}")
        print(f"{'degree':>6} {'k':>3} {'ln L':>10} {'AIC':>10} {'BIC':>10}")
        for i, d in enumerate(DEGREES):
            mark = ("  <- AIC" if d == pick_aic[s] else "") + ("  <- BIC" if d == pick_bic[s] else "")
            print(f"{d:>6} {k[i]:>3} {ll[s, i]:>10.3f} {aic[s, i]:>10.3f} {bic[s, i]:>10.3f}{mark}")
        result.update(
            example_seed=s,
            table={
                "degree": DEGREES.tolist(),
                "k": k.tolist(),
                "log_likelihood": ll[s].tolist(),
                "aic": aic[s].tolist(),
                "bic": bic[s].tolist(),
            },
        )
    else:
        print("\nAIC and BIC agreed on every data set")
    print(
        f"\nover {reps} data sets they disagree on {len(disagree)} ({100 * len(disagree) / reps:.0f}%);"
        " how often each degree is chosen:"
    )
    print(f"{'degree':>6} {'AIC':>5} {'BIC':>5}")
    for d in DEGREES:
        print(f"{d:>6} {np.sum(pick_aic == d):>5} {np.sum(pick_bic == d):>5}")
    print(f"mean degree: AIC {pick_aic.mean():.2f}, BIC {pick_bic.mean():.2f} (BIC's heavier penalty, ln n > 2)")
    write_json(args.json, result, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
