"""DeLong: the fast midrank algorithm equals the O(n^2) structural-components definition, including ties."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cxrcore.errors import ConfigError
from cxrcore.evaluate.delong import compare_models, delong_covariance, delong_test, holm, paired_test


def slow_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) by direct comparison: psi(X, Y) = 1 if X > Y, 1/2 if equal, else 0.

    V10(X_i) = mean_j psi(X_i, Y_j) over negatives, V01(Y_j) = mean_i psi(X_i, Y_j) over positives,
    AUC = mean V10, S = S10 / m + S01 / n with S10, S01 the sample covariances (ddof 1) across models.
    """
    pos = y == 1
    k = scores.shape[0]
    m, n = int(pos.sum()), int((~pos).sum())
    v10, v01 = np.empty((k, m)), np.empty((k, n))
    for r in range(k):
        x, z = scores[r, pos], scores[r, ~pos]
        psi = (x[:, None] > z[None, :]).astype(float) + 0.5 * (x[:, None] == z[None, :])
        v10[r], v01[r] = psi.mean(axis=1), psi.mean(axis=0)
    s10 = np.array([[np.sum((v10[a] - v10[a].mean()) * (v10[b] - v10[b].mean())) / (m - 1) for b in range(k)]
                    for a in range(k)])
    s01 = np.array([[np.sum((v01[a] - v01[a].mean()) * (v01[b] - v01[b].mean())) / (n - 1) for b in range(k)]
                    for a in range(k)])
    return v10.mean(axis=1), s10 / m + s01 / n


@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_fast_delong_equals_slow_reference_and_sklearn(decimals):
    rng = np.random.default_rng(21)
    for _ in range(25):
        n = int(rng.integers(6, 250))
        y = rng.integers(0, 2, n)
        y[:2], y[2:4] = 1, 0
        scores = rng.random((3, n)) + rng.uniform(0, 1, (3, 1)) * y
        if decimals is not None:
            scores = np.round(scores, decimals)  # many ties within and across classes
        est = delong_covariance(y, scores)
        aucs, cov = slow_delong(y, scores)
        np.testing.assert_allclose(est.aucs, aucs, atol=1e-12)
        np.testing.assert_allclose(est.cov, cov, atol=1e-12)
        np.testing.assert_allclose(est.aucs, [roc_auc_score(y, s) for s in scores], atol=1e-12)


def test_known_small_case_by_hand():
    # positives 0.9, 0.4; negatives 0.4, 0.1: psi = [[1, 1], [0.5, 1]] -> AUC 0.875
    y = np.array([1, 1, 0, 0])
    est = delong_covariance(y, np.array([0.9, 0.4, 0.4, 0.1]))
    assert est.aucs[0] == pytest.approx(0.875)
    # V10 = [1, 0.75] -> var 0.03125; V01 = [0.75, 1] -> var 0.03125; S = 0.03125/2 + 0.03125/2
    assert est.cov[0, 0] == pytest.approx(0.03125)


def test_p_value_is_two_sided_normal():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    a = rng.random(300) + 0.4 * y
    b = rng.random(300) + 0.2 * y
    t = delong_test(y, a, b)
    assert t.delta == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a))
    assert t.z == pytest.approx(t.delta / t.se)
    assert t.p_value == pytest.approx(2 * norm.sf(abs(t.z)), rel=1e-9)
    assert t.ci_low < t.delta < t.ci_high


def test_identical_predictions_give_p_one():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200), 2)
    for other in (p.copy(), p ** 2):  # the same ranking: zero variance of the difference
        t = delong_test(y, p, other)
        assert t.p_value == 1.0 and t.delta == 0.0 and t.z == 0.0 and "identical" in t.note


def test_zero_variance_with_different_aucs_gives_p_zero():
    y = np.array([0, 0, 0, 1, 1, 1])
    perfect = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    constant = np.full(6, 0.5)
    t = delong_test(y, constant, perfect)
    assert t.delta == pytest.approx(0.5) and t.p_value == 0.0 and math.isinf(t.z)


def test_too_few_cases_and_single_class_do_not_crash():
    y = np.array([1, 0, 0, 0])
    t = delong_test(y, np.array([0.9, 0.1, 0.2, 0.3]), np.array([0.5, 0.1, 0.6, 0.3]))
    assert math.isnan(t.p_value) and "too few" in t.note
    est = delong_covariance(np.zeros(4), np.random.default_rng(0).random((2, 4)))
    t = paired_test(est, 0, 1)
    assert math.isnan(t.auc_model) and math.isnan(t.p_value)


def test_null_hypothesis_rejection_rate_is_near_nominal():
    """Two exchangeable noisy models with the same true AUROC: about 5% of tests reject at 0.05."""
    rng = np.random.default_rng(123)
    rejections = 0
    sims = 300
    for _ in range(sims):
        y = rng.integers(0, 2, 200)
        signal = rng.normal(size=200) + 1.0 * y
        a = signal + rng.normal(size=200)
        b = signal + rng.normal(size=200)
        rejections += delong_test(y, a, b).p_value < 0.05
    assert 0.015 <= rejections / sims <= 0.10


def test_holm_adjustment():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    out = holm([0.02, np.nan, 0.5, 0.001])
    np.testing.assert_allclose(out[[0, 2, 3]], [0.04, 0.5, 0.003])
    assert math.isnan(out[1])
    assert holm([0.6, 0.7]).max() <= 1.0
    assert np.isnan(holm([np.nan])).all()


def _three_models(rng: np.random.Generator, n: int = 400, k: int = 3):
    y = (rng.random((n, k)) < 0.3).astype(np.uint8)
    base = rng.normal(size=(n, k)) + 1.2 * y
    probs = [1 / (1 + np.exp(-(base + s * rng.normal(size=(n, k))))) for s in (0.3, 1.0, 0.3)]
    return y, probs


def test_compare_models_structure_and_holm_per_pair():
    rng = np.random.default_rng(9)
    y, probs = _three_models(rng)
    labels = ["Atelectasis", "Edema", "Mass"]
    pid = np.arange(y.shape[0]) // 2
    cmp = compare_models(y, probs, labels, ["a", "b", "c"], reference=0, patient_ids=pid, n_bootstrap=100)
    assert [(p.reference, p.model) for p in cmp.pairs] == [("a", "b"), ("a", "c")]
    for pair, r in zip(cmp.pairs, (1, 2)):
        raw = [pair.classes[label].p_value for label in labels]
        np.testing.assert_allclose([pair.p_holm[label] for label in labels], holm(raw))
        for c, label in enumerate(labels):
            t = pair.classes[label]
            assert t.auc_model == pytest.approx(roc_auc_score(y[:, c], probs[r][:, c]))
            assert t.auc_reference == pytest.approx(roc_auc_score(y[:, c], probs[0][:, c]))
            low, high = pair.bootstrap_ci[label]
            assert low < t.delta < high
    d = cmp.to_dict()
    assert d["reference"] == "a" and [m["name"] for m in d["models"]] == ["a", "b", "c"]
    entry = d["pairs"][0]["classes"]["Edema"]
    for key in ("auc_reference", "auc_model", "delta", "p_value", "p_holm"):
        assert key in entry
    auc, low, high = (d["models"][1]["classes"]["Edema"][k] for k in ("auroc", "ci_low", "ci_high"))
    assert low < auc < high


def test_compare_models_rejects_bad_arguments():
    rng = np.random.default_rng(1)
    y, probs = _three_models(rng, n=50)
    with pytest.raises(ConfigError):
        compare_models(y, probs[:1], ["A", "B", "C"], ["a"])
    with pytest.raises(ConfigError):
        compare_models(y, probs, ["A", "B", "C"], ["a", "b"])
    with pytest.raises(ConfigError):
        compare_models(y, probs, ["A", "B", "C"], ["a", "b", "c"], reference=3)
