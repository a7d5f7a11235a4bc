"""The audit's shift tests give scipy.stats' numbers, and skip its import on large clear shifts."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from cxrcore.audit.stattests import KS_EXACT_MAX_N, chi2_contingency, ks_2samp


@pytest.mark.parametrize("shape", [(2, 2), (2, 3), (3, 2), (4, 2)])
@pytest.mark.parametrize("seed", range(6))
def test_chi2_matches_scipy(shape, seed):
    rng = np.random.default_rng(seed)
    table = rng.integers(1, 60 if seed % 2 else 6, size=shape)
    expected = stats.chi2_contingency(table)
    assert chi2_contingency(table) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12, abs=1e-300)


def test_chi2_yates_never_overcorrects_and_degenerate_tables():
    table = np.array([[10, 10], [10, 10]])  # |observed - expected| = 0 < 0.5
    assert chi2_contingency(table) == pytest.approx(tuple(stats.chi2_contingency(table)[:2]))
    assert chi2_contingency(np.array([[5, 7]])) == (0.0, 1.0)
    with pytest.raises(ValueError):
        chi2_contingency(np.array([[0, 0], [3, 4]]))


def _ages(rng, n, mean):
    return np.clip(np.round(rng.normal(mean, 16, n)), 1, 95)  # integer ages: many ties, as NIH


@pytest.mark.parametrize("n_a,n_b,shift", [
    (300, 200, 5.0),          # exact distribution (scipy.stats underneath)
    (40, 9000, 0.0),          # exact, very unequal sizes
    (86_524, 25_596, 0.6),    # NIH sizes, a clear shift: closed form, no scipy.stats
    (86_524, 25_596, 0.0),    # NIH sizes, no shift: scipy.stats' series
    (20_000, 150, 2.0),       # asymptotic with a small second sample
])
def test_ks_matches_scipy(n_a, n_b, shift):
    rng = np.random.default_rng(n_a + n_b)
    a, b = _ages(rng, n_a, 45.0), _ages(rng, n_b, 45.0 + shift)
    expected = stats.ks_2samp(a, b)
    statistic, p = ks_2samp(a, b)
    assert statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert p == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


def test_ks_refuses_an_empty_sample():
    with pytest.raises(ValueError):
        ks_2samp(np.array([]), np.array([1.0]))


def test_a_large_clear_shift_does_not_import_scipy_stats():
    code = ("import sys, numpy as np; from cxrcore.audit.stattests import ks_2samp, chi2_contingency\n"
            "r = np.random.default_rng(0)\n"
            f"d, p = ks_2samp(r.normal(45, 16, {KS_EXACT_MAX_N * 8}), r.normal(46, 16, {KS_EXACT_MAX_N * 2}))\n"
            "chi2_contingency(np.array([[30, 50], [40, 20]]))\n"
            "assert p < 1e-6, p\n"
            "print('scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
