"""Audit without images: class balance and weights, label structure, leakage across any number of
splits, prevalence shift (checked against scipy), age/sex/view shift, and the three renderings."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency, ks_2samp

from cxrcore.audit.audit import (class_balance, cooccurrence, count_leaked, find_leakage, metadata_shift,
                           prevalence_shift, run_audit, shared_patient_images, summarize, two_proportion_p)
from cxrcore.audit.report import render, to_dict, to_json, verdict
from cxrcore.data.dataset import load_split
from cxrcore.data.labels import LABELS
from cxrcore.errors import DatasetError
from tests.csv_corpus import nih_frame, onehot_frame, random_labels, to_csv_bytes


def _split(frame: pd.DataFrame, name: str):
    return load_split(to_csv_bytes(frame), name=f"{name}.csv", split_name=name)


# ---------------------------------------------------------------------------------------------
# Class balance


def test_class_balance_by_hand():
    y = np.zeros((10, 14), dtype=np.uint8)
    y[:3, 0] = 1  # Atelectasis: 3 of 10
    y[:, 1] = 1   # Cardiomegaly: all
    frame = class_balance(y)
    assert list(frame.index) == list(LABELS)
    row = frame.loc["Atelectasis"]
    assert row["positives"] == 3 and row["negatives"] == 7
    assert row["pos_freq"] == pytest.approx(0.3) and row["neg_freq"] == pytest.approx(0.7)
    assert row["w_pos"] == pytest.approx(0.7) and row["w_neg"] == pytest.approx(0.3)
    assert frame.loc["Cardiomegaly", "w_pos"] == 0 and frame.loc["Cardiomegaly", "w_neg"] == 1
    assert frame.loc["Hernia", "positives"] == 0 and frame.loc["Hernia", "w_pos"] == 1


def test_weights_are_freq_neg_and_freq_pos_and_weighted_contributions_are_equal():
    y = random_labels(5000, seed=11)
    frame = class_balance(y)
    pos = y.mean(axis=0)
    np.testing.assert_allclose(frame["pos_freq"], pos)
    np.testing.assert_allclose(frame["neg_freq"], 1 - pos)
    np.testing.assert_allclose(frame["w_pos"], frame["neg_freq"])
    np.testing.assert_allclose(frame["w_neg"], frame["pos_freq"])
    np.testing.assert_allclose(frame["pos_contribution"], frame["neg_contribution"])
    np.testing.assert_allclose(frame["pos_freq"] * frame["w_pos"], frame["neg_freq"] * frame["w_neg"])
    np.testing.assert_array_equal(frame["positives"], y.sum(axis=0))


def test_cooccurrence_counts_images_with_both_labels():
    y = random_labels(400, seed=12, prevalence=np.full(14, 0.3))
    matrix = cooccurrence(y)
    assert matrix.shape == (14, 14)
    np.testing.assert_array_equal(matrix, matrix.T)
    np.testing.assert_array_equal(np.diag(matrix), y.sum(axis=0))
    i, j = LABELS.index("Effusion"), LABELS.index("Mass")
    assert matrix[i, j] == int(((y[:, i] == 1) & (y[:, j] == 1)).sum())


def test_summary_no_finding_labels_per_image_and_metadata():
    y = np.zeros((6, 14), dtype=np.uint8)
    y[1, 0] = 1
    y[2, [0, 4]] = 1
    y[3, [0, 4, 8]] = 1
    frame = nih_frame([1, 2, 3], labels=y)
    frame["Patient Age"] = [20, 30, 40, 50, 60, 70]
    frame["Patient Gender"] = ["M", "M", "F", "M", "F", "M"]
    summary = summarize(_split(frame, "train"))
    assert summary.rows == 6 and summary.patients == 3
    assert summary.no_finding == 3 and summary.no_finding_share == pytest.approx(0.5)
    assert summary.labels_per_image == {0: 3, 1: 1, 2: 1, 3: 1}
    assert summary.metadata["Age"] == {"mean": 45.0, "median": 45.0, "min": 20.0, "max": 70.0}
    assert summary.metadata["Sex"] == pytest.approx({"M": 4 / 6, "F": 2 / 6})
    assert set(summary.metadata["View"]) <= {"PA", "AP"}
    assert summary.cooccurrence[0, 4] == 2


# ---------------------------------------------------------------------------------------------
# Leakage


@pytest.fixture()
def three_splits():
    """train: patients 1-10; val: 11-15 plus 3 and 4 from train; test: 16-20 plus 4 (in all three) and 12."""
    train = _split(onehot_frame(range(1, 11), seed=1), "train")
    val = _split(onehot_frame([*range(11, 16), 3, 4], seed=2), "val")
    test = _split(onehot_frame([*range(16, 21), 4, 12], seed=3), "test")
    return train, val, test


def test_leakage_per_pair_across_three_splits(three_splits):
    leaks = {(leak.a, leak.b): leak for leak in find_leakage(list(three_splits))}
    assert set(leaks) == {("train", "val"), ("train", "test"), ("val", "test")}
    assert leaks[("train", "val")].patients == 2 and leaks[("train", "val")].patient_ids == [3, 4]
    assert leaks[("train", "test")].patient_ids == [4]
    assert leaks[("val", "test")].patient_ids == [4, 12]
    # Same names: onehot_frame names images by patient, so shared patients share file names here.
    assert leaks[("train", "val")].images == 4 and leaks[("train", "val")].image_names[0] == "00000003_000.png"
    assert leaks[("train", "val")].images_a == 4 and leaks[("train", "val")].images_b == 4


def test_leaked_patients_counted_once_across_all_splits(three_splits):
    patients, images = count_leaked(list(three_splits))
    assert patients == 3  # 3, 4 and 12; patient 4 is in all three splits but counts once
    assert images == 2 * (2 + 3 + 2)  # images of 3 (train, val), 4 (x3), 12 (val, test)


def test_verdict_and_leak_free(three_splits):
    report = run_audit(list(three_splits))
    assert not report.leak_free and len(report.leaking_pairs) == 3
    assert verdict(report).startswith("Leaking: 3 patient(s) with 14 image(s)")
    clean = run_audit([_split(onehot_frame(range(1, 5)), "a"), _split(onehot_frame(range(5, 9)), "b")])
    assert clean.leak_free and clean.leaking_pairs == [] and verdict(clean).startswith("Clean")
    assert clean.leakage[0].patients == 0 and clean.leakage[0].images == 0


def test_shared_image_names_leak_even_with_different_patient_ids():
    a = onehot_frame([1, 2])
    b = onehot_frame([3, 4])
    b.loc[0, "Image"] = a.loc[0, "Image"]  # same file, claimed by patient 3 (a warning, not an error)
    split_b = _split(b, "b")
    assert split_b.warnings
    report = run_audit([_split(a, "a"), split_b])
    [leak] = report.leakage
    assert leak.patients == 0 and leak.images == 1 and leak.image_names == ["00000001_000.png"]
    assert not report.leak_free and "1 image name(s) are shared" in verdict(report)


def test_a_single_split_audits_without_pairs():
    report = run_audit([_split(onehot_frame(range(1, 6)), "only")])
    assert report.leakage == [] and report.leak_free and report.shift.empty
    assert to_dict(report)["splits"]["only"]["rows"] == 10


def test_split_names_must_be_unique():
    a = _split(onehot_frame([1]), "x")
    b = _split(onehot_frame([2]), "x")
    with pytest.raises(DatasetError, match="used twice"):
        run_audit([a, b])
    with pytest.raises(DatasetError, match="no split"):
        run_audit([])


def test_shared_patient_images_lists_both_sides(three_splits):
    train, val, _ = three_splits
    leak = find_leakage([train, val])[0]
    rows = shared_patient_images([train, val], leak)
    assert set(rows["PatientId"]) == {3, 4} and set(rows["split"]) == {"train", "val"} and len(rows) == 8


# ---------------------------------------------------------------------------------------------
# Prevalence and metadata shift


def test_prevalence_shift_matches_scipy_chi_square_without_correction():
    rng = np.random.default_rng(5)
    ya = (rng.random((3000, 14)) < np.linspace(0.02, 0.3, 14)).astype(np.uint8)
    yb = (rng.random((1000, 14)) < np.linspace(0.02, 0.3, 14)[::-1]).astype(np.uint8)
    a = _split(onehot_frame(range(1, 1501), labels=ya), "train")
    b = _split(onehot_frame(range(2001, 2501), labels=yb), "test")
    shift = prevalence_shift([summarize(a), summarize(b)])
    assert len(shift) == 14 and list(shift["label"]) == list(LABELS)
    for i, row in enumerate(shift.itertuples()):
        pa, pb = ya[:, i].sum(), yb[:, i].sum()
        table = np.array([[pa, 3000 - pa], [pb, 1000 - pb]])
        _, p, _, _ = chi2_contingency(table, correction=False)
        assert row.p_value == pytest.approx(p, rel=1e-9, abs=1e-300)
        assert row.prevalence_a == pytest.approx(pa / 3000) and row.prevalence_b == pytest.approx(pb / 1000)
        assert row.difference == pytest.approx(pb / 1000 - pa / 3000)
    assert shift["p_value"].min() < 1e-10  # the reversed prevalences are a real shift


def test_two_proportion_p_edge_cases():
    # No positives anywhere: no evidence of shift (scipy would refuse the zero expected count).
    assert two_proportion_p(np.array([0]), 10, np.array([0]), 20)[0] == 1.0
    assert two_proportion_p(np.array([10]), 10, np.array([20]), 20)[0] == 1.0
    _, p, _, _ = chi2_contingency(np.array([[1, 9], [15, 5]]), correction=False)
    assert two_proportion_p(np.array([1]), 10, np.array([15]), 20)[0] == pytest.approx(p)


def test_prevalence_shift_for_every_pair_of_three_splits(three_splits):
    report = run_audit(list(three_splits))
    assert len(report.shift) == 3 * 14
    assert set(zip(report.shift["a"], report.shift["b"])) == {("train", "val"), ("train", "test"), ("val", "test")}


def test_age_sex_view_shift_when_the_columns_exist():
    rng = np.random.default_rng(8)
    a_frame = nih_frame(range(1, 301), seed=1)
    b_frame = nih_frame(range(301, 501), seed=2)
    a_frame["Patient Age"] = rng.integers(20, 60, len(a_frame))
    b_frame["Patient Age"] = rng.integers(40, 90, len(b_frame))
    b_frame["View Position"] = rng.choice(["AP", "PA"], len(b_frame), p=[0.8, 0.2])
    a, b = _split(a_frame, "a"), _split(b_frame, "b")
    shift = metadata_shift([a, b]).set_index("variable")
    assert set(shift.index) == {"Age", "Sex", "View"}
    ks = ks_2samp(a_frame["Patient Age"], b_frame["Patient Age"])
    assert shift.loc["Age", "p_value"] == pytest.approx(ks.pvalue) and shift.loc["Age", "p_value"] < 1e-10
    assert shift.loc["Age", "summary_a"] == pytest.approx(a_frame["Patient Age"].mean())
    for variable, column in (("Sex", "Patient Gender"), ("View", "View Position")):
        table = pd.crosstab(pd.concat([a_frame[column], b_frame[column]]),
                            np.repeat([0, 1], [len(a_frame), len(b_frame)]))
        _, p, _, _ = chi2_contingency(table.to_numpy())
        assert shift.loc[variable, "p_value"] == pytest.approx(p)
    assert shift.loc["View", "p_value"] < 1e-10


def test_no_metadata_shift_without_the_columns():
    a = _split(onehot_frame(range(1, 5)), "a")
    b = _split(onehot_frame(range(5, 9)), "b")
    assert metadata_shift([a, b]).empty
    assert summarize(a).metadata == {}


# ---------------------------------------------------------------------------------------------
# Renderings


def test_json_rendering_holds_the_contract(three_splits):
    report = run_audit(list(three_splits))
    data = json.loads(to_json(report))
    assert data["leak_free"] is False and data["leaked_patients"] == 3
    train = data["splits"]["train"]
    assert train["rows"] == 20 and train["patients"] == 10
    assert set(train["classes"]) == set(LABELS)
    summary = report.summaries[0]
    for label in LABELS:
        entry = train["classes"][label]
        assert entry["positives"] == int(summary.classes.loc[label, "positives"])
        assert entry["w_pos"] == pytest.approx(entry["neg_freq"]) and entry["w_neg"] == pytest.approx(entry["pos_freq"])
    pairs = {(leak["a"], leak["b"]): leak for leak in data["leakage"]}
    assert pairs[("val", "test")]["patients"] == 2 and pairs[("val", "test")]["patient_ids"] == [4, 12]
    assert {"a", "b", "patients", "images", "patient_ids"} <= set(pairs[("train", "val")])
    assert len(data["prevalence_shift"]) == 42
    assert train["cooccurrence"]["labels"] == list(LABELS)


def test_json_never_holds_nan_even_when_a_metadata_column_is_empty():
    a = _split(onehot_frame([1, 2], extra={"Age": ""}), "a")
    b = _split(onehot_frame([3, 4], extra={"Age": "unknown"}), "b")
    report = run_audit([a, b])
    data = json.loads(to_json(report))  # allow_nan=False inside: NaN would raise
    assert data["splits"]["a"]["metadata"]["Age"]["mean"] is None


def test_text_and_markdown_renderings(three_splits):
    report = run_audit(list(three_splits))
    text = render(report, "text")
    assert text.startswith("SPLIT AUDIT") and verdict(report) in text
    for heading in ("Splits", "Leakage between splits", "Class balance: train", "Class balance: test"):
        assert heading in text
    assert "3, 4" in text and "Pleural_Thickening" in text
    md = render(report, "markdown")
    assert md.startswith("# Split audit") and f"**{verdict(report)}**" in md
    assert "## Leakage between splits" in md and "| train | val | 2 | 4 | 3, 4 |" in md
    assert "| class | positives | pos_freq | neg_freq | w_pos | w_neg |" in md
    assert render(report, "json") == to_json(report)


def test_warnings_reach_the_report_and_stay_separate_from_errors():
    frame = onehot_frame([1, 2])
    frame.loc[0, "PatientId"] = 9
    report = run_audit([_split(frame, "a"), _split(onehot_frame([3]), "b")])
    assert len(report.warnings) == 1 and "disagree" in str(report.warnings[0])
    assert "Warnings" in render(report, "text")
    assert json.loads(to_json(report))["warnings"] == [str(report.warnings[0])]


def test_text_patient_ids_in_two_files_leak_only_when_the_same_person_is_in_both():
    def split(ids: list[str], name: str):
        frame = onehot_frame(range(1, len(ids) + 1), per_patient=1)
        frame["Image"] = [f"{name}_{i}.png" for i in range(len(ids))]
        frame["PatientId"] = ids
        return _split(frame, name)

    clean = run_audit([split(["ann", "ben", "cat"], "train"), split(["dan", "eve"], "test")])
    assert clean.leak_free and clean.leaked_patients == 0
    leaky = run_audit([split(["ann", "ben", "cat"], "train"), split(["dan", "ben"], "test")])
    assert not leaky.leak_free and leaky.leaked_patients == 1 and leaky.leaked_images == 2
