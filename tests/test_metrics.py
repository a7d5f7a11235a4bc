"""Metrics: AUROC/AUPRC equal scikit-learn, the weighted bootstrap equals resampling by hand, CIs behave."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import (average_precision_score, brier_score_loss, roc_auc_score,
                             roc_curve as sk_roc_curve)

from cxrcore.data.labels import LABELS
from cxrcore.errors import ConfigError, PredictionsError
from cxrcore.evaluate import metrics as M


def _random_case(rng: np.random.Generator, n: int, decimals: int | None = None):
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    p = rng.random(n) * 0.7 + 0.3 * y
    if decimals is not None:
        p = np.round(p, decimals)
    return y, p


def _clustered(rng: np.random.Generator, n_patients: int, per_patient: int, n_classes: int = 1):
    """Patients with a shared label and a shared score offset: images of a patient are near-copies."""
    pid = np.repeat(np.arange(n_patients), per_patient)
    y_pat = (rng.random((n_patients, n_classes)) < 0.3).astype(np.uint8)
    s_pat = rng.normal(size=(n_patients, n_classes)) + 1.0 * y_pat
    y = y_pat[pid]
    s = s_pat[pid] + 0.05 * rng.normal(size=(pid.size, n_classes))
    return y, 1 / (1 + np.exp(-s)), pid


@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_auroc_and_auprc_equal_sklearn_on_random_and_tied_scores(decimals):
    rng = np.random.default_rng(7)
    for _ in range(40):
        y, p = _random_case(rng, int(rng.integers(4, 400)), decimals)
        assert M.auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert M.average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)


def test_auroc_all_tied_is_half_and_single_class_is_nan():
    y = np.array([0, 1, 0, 1, 1])
    assert M.auroc(y, np.full(5, 0.3)) == 0.5
    assert math.isnan(M.auroc(np.zeros(5), np.linspace(0, 1, 5)))
    assert math.isnan(M.auroc(np.ones(5), np.linspace(0, 1, 5)))


def test_midranks_average_ties():
    np.testing.assert_allclose(M.midranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4.0, 1.0, 4.0, 2.0, 4.0])


def test_roc_curve_matches_sklearn_without_dropping_points():
    rng = np.random.default_rng(3)
    y, p = _random_case(rng, 300, decimals=2)
    curve = M.roc_curve(y, p)
    fpr, tpr, thr = sk_roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)
    np.testing.assert_allclose(curve.thresholds[1:], thr[1:])
    assert curve.thresholds[0] == np.inf and curve.fpr[0] == 0 and curve.tpr[0] == 0


def test_pr_curve_points():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.1])
    curve = M.pr_curve(y, p)
    np.testing.assert_allclose(curve.precision, [1.0, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(curve.recall, [0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.8, 0.7, 0.1])


def test_threshold_metrics_confusion_matrix():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.5, 0.5])
    t = M.threshold_metrics(y, p, 0.5)  # p >= 0.5 is positive
    assert (t.tp, t.fp, t.tn, t.fn) == (3, 2, 2, 1)
    assert t.sensitivity == pytest.approx(0.75)
    assert t.specificity == pytest.approx(0.5)
    assert t.ppv == pytest.approx(0.6)
    assert t.npv == pytest.approx(2 / 3)
    none_called = M.threshold_metrics(y, p, 2.0)
    assert math.isnan(none_called.ppv) and none_called.to_dict()["ppv"] is None


def test_youden_and_sensitivity_at_90_specificity_match_brute_force():
    rng = np.random.default_rng(11)
    y, p = _random_case(rng, 500, decimals=3)
    m = M.class_metrics("X", y, p)
    best_j, best_sens90 = -1.0, 0.0
    for t in np.unique(p):
        tm = M.threshold_metrics(y, p, t)
        best_j = max(best_j, tm.sensitivity + tm.specificity - 1)
        if tm.specificity >= 0.9:
            best_sens90 = max(best_sens90, tm.sensitivity)
    assert m.sensitivity + m.specificity - 1 == pytest.approx(best_j)
    at = M.threshold_metrics(y, p, m.threshold)
    assert (at.sensitivity, at.specificity) == pytest.approx((m.sensitivity, m.specificity))
    assert m.sens_at_spec90 == pytest.approx(best_sens90)
    assert M.threshold_metrics(y, p, m.threshold_at_spec90).specificity >= 0.9


def test_brier_and_reliability_bins():
    rng = np.random.default_rng(5)
    y, p = _random_case(rng, 1000)
    p[:3] = [0.0, 1.0, 0.1]
    assert M.brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    bins = M.reliability_bins(y, p)
    assert len(bins) == 10 and sum(b.count for b in bins) == 1000
    assert bins[-1].high == 1.0 and bins[-1].count >= 1  # p == 1.0 lands in the last bin
    for b in bins:
        inside = (p >= b.low) & ((p < b.high) | (b.high == 1.0))
        assert b.count == inside.sum()
        if b.count:
            assert b.mean_predicted == pytest.approx(p[inside].mean())
            assert b.observed == pytest.approx(y[inside].mean())
        else:
            assert math.isnan(b.observed)


def test_weighted_bootstrap_equals_resampling_patients_by_hand():
    """Each replicate's AUROC equals sklearn on the explicitly resampled (patient-duplicated) data."""
    rng = np.random.default_rng(2)
    for trial in range(15):
        n = int(rng.integers(10, 200))
        y, p = _random_case(rng, n, decimals=int(rng.integers(1, 4)))
        pid = rng.integers(0, n // 3 + 2, n) * 7 + 100  # arbitrary, non-contiguous ids
        reps = M.bootstrap_auroc(y, p, pid, n_bootstrap=6, seed=trial)[:, 0]
        codes = np.unique(pid, return_inverse=True)[1].ravel()
        counts = next(M._multiplicity_blocks(int(codes.max()) + 1, 6, trial))
        for b in range(6):
            w = counts[b][codes]
            yy, pp = np.repeat(y, w), np.repeat(p, w)
            if 0 < yy.sum() < yy.size:
                assert reps[b] == pytest.approx(roc_auc_score(yy, pp), abs=1e-12)
            else:
                assert math.isnan(reps[b])


def test_bootstrap_draw_counts_are_patient_multiplicities():
    counts = np.vstack(list(M._multiplicity_blocks(50, 200, 0)))
    assert counts.shape == (200, 50)
    assert (counts.sum(axis=1) == 50).all()  # 50 patients drawn with replacement each replicate
    assert counts.max() > 1 and (counts == 0).any()


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(1)
    y, p, pid = _clustered(rng, 80, 3, n_classes=2)
    a = M.bootstrap_auroc(y, p, pid, n_bootstrap=100, seed=5)
    b = M.bootstrap_auroc(y, p, pid, n_bootstrap=100, seed=5)
    c = M.bootstrap_auroc(y, p, pid, n_bootstrap=100, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_ci_contains_point_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(4)
    widths = []
    for n_pat in (100, 1600):
        y, p, pid = _clustered(rng, n_pat, 2)
        r = M.evaluate(y, p, ["Mass"], pid, n_bootstrap=400, seed=0)
        m = r.classes["Mass"]
        assert m.ci_low <= m.auroc <= m.ci_high
        assert r.mean_auroc_ci_low <= r.mean_auroc <= r.mean_auroc_ci_high
        widths.append(m.ci_high - m.ci_low)
    assert widths[1] < widths[0] / 2.5  # 16x the patients: about 4x narrower


def test_patient_resampling_is_wider_than_image_resampling_for_clustered_patients():
    rng = np.random.default_rng(8)
    y, p, pid = _clustered(rng, 150, 8)
    by_patient = M.evaluate(y, p, ["Edema"], pid, n_bootstrap=400, seed=1).classes["Edema"]
    by_image = M.evaluate(y, p, ["Edema"], pid, n_bootstrap=400, seed=1, resample="image").classes["Edema"]
    assert by_patient.auroc == by_image.auroc
    w_pat = by_patient.ci_high - by_patient.ci_low
    w_img = by_image.ci_high - by_image.ci_low
    assert w_pat > 1.8 * w_img  # 8 near-identical images per patient: ~sqrt(8) wider


def test_undefined_class_is_nan_with_note_and_excluded_from_mean():
    rng = np.random.default_rng(9)
    y, p, pid = _clustered(rng, 60, 2, n_classes=3)
    y[:, 1] = 0
    r = M.evaluate(y, p, ["Atelectasis", "Hernia", "Mass"], pid, n_bootstrap=50, seed=0)
    hernia = r.classes["Hernia"]
    assert math.isnan(hernia.auroc) and math.isnan(hernia.ci_low) and "no positive" in hernia.note
    assert hernia.n_pos == 0 and hernia.brier == pytest.approx(np.mean(p[:, 1] ** 2))
    assert r.mean_auroc_classes == ["Atelectasis", "Mass"]
    assert r.mean_auroc == pytest.approx((r.classes["Atelectasis"].auroc + r.classes["Mass"].auroc) / 2)
    assert any("Hernia" in n for n in r.notes)
    d = r.to_dict()
    assert d["classes"]["Hernia"]["auroc"] is None
    json.dumps(d, allow_nan=False)


def test_replicates_with_a_single_class_are_dropped_and_counted():
    rng = np.random.default_rng(10)
    n_pat = 100
    pid = np.repeat(np.arange(n_pat), 2)
    y = np.zeros((pid.size, 1), np.uint8)
    y[:2, 0] = 1  # only patient 0 is positive: absent from ~37% of replicates
    p = rng.random((pid.size, 1))
    r = M.evaluate(y, p, ["Hernia"], pid, n_bootstrap=300, seed=0)
    used = r.classes["Hernia"].bootstrap_used
    assert 150 < used < 250
    assert r.mean_bootstrap_used == used
    assert "dropped" in r.classes["Hernia"].note


def test_to_dict_has_the_documented_keys_and_is_strict_json():
    rng = np.random.default_rng(12)
    y, p, pid = _clustered(rng, 200, 2, n_classes=len(LABELS))
    d = M.evaluate(y, p, LABELS, pid, n_bootstrap=50, seed=3).to_dict()
    for key in ("mean_auroc", "mean_auroc_ci_low", "mean_auroc_ci_high", "n_images", "n_patients", "bootstrap"):
        assert key in d
    assert d["n_images"] == 400 and d["n_patients"] == 200
    assert d["bootstrap"]["replicates"] == 50 and d["bootstrap"]["resample"] == "patient"
    assert list(d["classes"]) == list(LABELS)
    for m in d["classes"].values():
        for key in ("auroc", "ci_low", "ci_high", "auprc", "n_pos", "n_neg", "prevalence", "threshold",
                    "sensitivity", "specificity", "sens_at_spec90", "brier"):
            assert key in m
        assert len(m["reliability"]) == 10
    json.dumps(d, allow_nan=False)


def test_mean_auroc_ci_is_mean_over_classes_per_replicate():
    rng = np.random.default_rng(13)
    y, p, pid = _clustered(rng, 120, 2, n_classes=3)
    r = M.evaluate(y, p, ["A", "B", "C"], pid, n_bootstrap=200, seed=4)
    reps = M.bootstrap_auroc(y, p, pid, n_bootstrap=200, seed=4)
    low, high = M.percentile_ci(reps.mean(axis=1))
    assert (r.mean_auroc_ci_low, r.mean_auroc_ci_high) == pytest.approx((low, high))


def test_no_bootstrap_gives_no_ci():
    rng = np.random.default_rng(14)
    y, p, pid = _clustered(rng, 50, 2)
    r = M.evaluate(y, p, ["Mass"], pid, n_bootstrap=0)
    assert math.isnan(r.classes["Mass"].ci_low) and r.to_dict()["mean_auroc_ci_low"] is None


def test_invalid_inputs_raise_domain_errors():
    y = np.array([0, 1, 1])
    with pytest.raises(PredictionsError):
        M.auroc(y, np.array([0.1, np.nan, 0.3]))
    with pytest.raises(PredictionsError):
        M.auroc(np.array([0, 2, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ConfigError):
        M.bootstrap_auroc(y, np.array([0.1, 0.2, 0.3]), n_bootstrap=-1)
    with pytest.raises(ConfigError):
        M.evaluate(y[:, None], np.array([[0.1], [0.2], [0.3]]), ["Mass"], resample="study")


def test_literature_tables_cover_the_14_labels():
    from cxrcore.evaluate.literature import CHEXNET, NOTE, PUBLISHED, literature_table, published

    for result in PUBLISHED:
        assert set(result.aurocs) == set(LABELS) and result.citation
        assert all(0.5 < v < 1.0 for v in result.aurocs.values())
    assert CHEXNET.aurocs["Pneumonia"] == 0.7680 and published("wang2017").aurocs["Hernia"] == 0.767
    assert CHEXNET.mean_auroc == pytest.approx(0.8414, abs=1e-4)
    assert "other test sets" in NOTE
    assert [row["label"] for row in literature_table()] == list(LABELS)
