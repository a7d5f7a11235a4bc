"""The audit's two-sample shift tests, with scipy.stats' numbers but without its 0.4 s import.

`chi2_contingency` and `ks_2samp` return what scipy.stats returns for the same input (Pearson's
chi-square with Yates' correction on 2x2 tables; the two-sided two-sample Kolmogorov-Smirnov test,
exact up to 10,000 values per sample and Smirnov's asymptotic distribution above). They compute
on scipy.special, and import scipy.stats only where its series expansions are needed: small
samples (exact distribution) or large samples with a weak shift. On a full NIH table the audit
then never imports scipy.stats, the biggest part of the command's start-up.
"""
from __future__ import annotations

import math

import numpy as np

#: scipy.stats.ks_2samp's method="auto" is exact up to this many values in each sample.
KS_EXACT_MAX_N = 10_000


def chi2_contingency(observed: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of Pearson's chi-square test of independence, as scipy.stats.chi2_contingency."""
    from scipy.special import chdtrc

    observed = np.asarray(observed, dtype=float)
    if observed.size == 0 or np.any(observed < 0):
        raise ValueError("a contingency table needs nonnegative counts")
    total = observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total
    if np.any(expected == 0):
        raise ValueError("a row or column of the contingency table is empty")
    dof = expected.size - sum(expected.shape) + expected.ndim - 1
    if dof == 0:
        return 0.0, 1.0
    if dof == 1:  # Yates' continuity correction, no bigger than the difference (as scipy)
        diff = expected - observed
        observed = observed + np.minimum(0.5, np.abs(diff)) * np.sign(diff)
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return statistic, float(chdtrc(dof, statistic))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance between the two samples' empirical distribution functions."""
    a, b = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    both = np.concatenate([a, b])
    diff = np.searchsorted(a, both, side="right") / a.size - np.searchsorted(b, both, side="right") / b.size
    return float(max(diff.max(), np.clip(-diff.min(), 0, 1)))


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of the two-sided two-sample Kolmogorov-Smirnov test, as scipy.stats.ks_2samp."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("the Kolmogorov-Smirnov test needs two non-empty samples")
    if max(a.size, b.size) > KS_EXACT_MAX_N:
        d = ks_statistic(a, b)
        m, n = sorted([float(a.size), float(b.size)], reverse=True)
        p = _kolmogorov_sf_fast(d, round(m * n / (m + n)))
        if p is not None:
            return d, p
    from scipy.stats import ks_2samp as scipy_ks_2samp

    result = scipy_ks_2samp(a, b)
    return float(result.statistic), float(result.pvalue)


def _kolmogorov_sf_fast(d: float, n: int) -> float | None:
    """P(D_n >= d) where scipy.stats.kstwo.sf uses a closed form (scipy.special.smirnov); else None.

    Mirrors the branches of scipy.stats._ksstats._kolmogn for the survival function."""
    from scipy.special import smirnov

    if d >= 1.0:
        return 0.0
    if d <= 0.0:
        return 1.0
    t = n * d
    if t <= 1.0:
        return None
    if t >= n - 1:
        return _clip(2 * (1.0 - d) ** n)
    if d >= 0.5:
        return _clip(2 * float(smirnov(n, d)))
    if n <= 140:
        return None
    nxsquared = t * d
    if nxsquared >= 370.0:
        return 0.0
    if nxsquared >= 2.2:
        return _clip(2 * float(smirnov(n, d)))
    return None


def _clip(p: float) -> float:
    return float(min(max(p, 0.0), 1.0)) if not math.isnan(p) else p
