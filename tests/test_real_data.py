"""Real data as users bring it (#20): predictions made elsewhere against a whole-dataset table, the
difference of mean AUROC, intervals a statistician accepts, percent probabilities."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrcore.cli import main
from cxrcore.data.dataset import is_dataset_table, load_split, load_table
from cxrcore.data.labels import LABELS
from cxrcore.data.predictions import align, read_predictions, write_predictions
from cxrcore.errors import PredictionsError
from cxrcore.evaluate.delong import compare_models
from cxrcore.evaluate.metrics import ci_problem, evaluate, min_usable_replicates

N_PATIENTS = 120


def _nih_table(folder: Path, rng: np.random.Generator) -> tuple[Path, list[str], np.ndarray]:
    """An NIH-format table of 3 images per patient, with test_list.txt beside it naming a third of them."""
    names, findings, patients = [], [], []
    y = (rng.random((N_PATIENTS * 3, len(LABELS))) < 0.2).astype(np.uint8)
    for i in range(N_PATIENTS * 3):
        patient = i // 3 + 1
        names.append(f"{patient:08d}_{i % 3:03d}.png")
        patients.append(patient)
        found = [label for label, v in zip(LABELS, y[i]) if v]
        findings.append("|".join(found) or "No Finding")
    table = folder / "Data_Entry_2017_v2020.csv"
    pd.DataFrame({"Image Index": names, "Finding Labels": findings, "Patient ID": patients}).to_csv(table, index=False)
    test = [n for n in names if int(n[:8]) % 3 == 0]
    (folder / "test_list.txt").write_text("\n".join(test) + "\n")
    return table, names, y


@pytest.fixture()
def nih(tmp_path):
    rng = np.random.default_rng(20)
    table, names, y = _nih_table(tmp_path, rng)
    test = (tmp_path / "test_list.txt").read_text().split()
    rows = [names.index(n) for n in test]
    good = 1 / (1 + np.exp(-(rng.normal(size=(len(rows), len(LABELS))) + 2.5 * y[rows] - 1)))
    weak = 1 / (1 + np.exp(-(rng.normal(size=(len(rows), len(LABELS))) + 0.3 * y[rows] - 1)))
    write_predictions(tmp_path / "good.csv", test, good)
    write_predictions(tmp_path / "weak.csv", test, weak)
    return {"dir": tmp_path, "table": str(table), "list": str(tmp_path / "test_list.txt"), "test": test,
            "good": str(tmp_path / "good.csv"), "weak": str(tmp_path / "weak.csv"), "n": len(names)}


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# --- 1. predictions from elsewhere against a whole-dataset table ------------------------------------


def test_whole_table_evaluates_the_predicted_images_and_says_so_first(nih, capsys):
    code, out, err = _run(["evaluate", "--labels", nih["table"], "--predictions", nih["good"]], capsys)
    assert code == 0, err
    n = len(nih["test"])
    assert out.splitlines()[0] == f"{n:,} of {nih['n']:,} labelled images: those in the predictions file"
    # the same numbers as with the list file made by hand (TABLE@LIST)
    code, listed, _ = _run(["evaluate", "--labels", f"{nih['table']}@{nih['list']}", "--predictions", nih["good"]],
                           capsys)
    assert code == 0
    assert out.splitlines()[2:] == listed.splitlines()[1:]


def test_whole_table_json_states_the_coverage(nih, capsys):
    code, out, _ = _run(["evaluate", "--labels", nih["table"], "--predictions", nih["good"], "--bootstrap", "0",
                         "--format", "json"], capsys)
    d = json.loads(out)
    assert code == 0 and d["n_images"] == len(nih["test"])
    assert d["coverage"]["labelled_images"] == nih["n"] and "whole-dataset" in d["coverage"]["rule"]


def test_a_split_still_refuses_missing_predictions(nih, capsys):
    short = nih["dir"] / "short.csv"
    preds = read_predictions(nih["good"])
    write_predictions(short, preds.images[:-4], preds.probs[:-4])
    code, out, err = _run(["evaluate", "--labels", f"{nih['table']}@{nih['list']}", "--predictions", str(short)],
                          capsys)
    assert code == 2 and out == "" and "4 of" in err and "have no prediction" in err


def test_predictions_of_unlabelled_images_stay_an_error_on_a_whole_table(nih, capsys):
    extra = nih["dir"] / "extra.csv"
    extra.write_text(Path(nih["good"]).read_text() + "99999999_000.png" + ",0.5" * len(LABELS) + "\n")
    code, _, err = _run(["evaluate", "--labels", nih["table"], "--predictions", str(extra)], capsys)
    assert code == 2 and "not in the labels" in err


def test_which_labels_files_are_whole_tables(nih, tmp_path):
    assert is_dataset_table(load_table(nih["table"]))
    assert not is_dataset_table(load_split(nih["list"], label_table=nih["table"]))
    course = tmp_path / "course"
    course.mkdir()
    frame = pd.DataFrame({"Image": ["00000001_000.png", "00000002_000.png"], "PatientId": [1, 2],
                          **{label: [0, 1] for label in LABELS}})
    frame.to_csv(course / "test.csv", index=False)
    assert not is_dataset_table(load_split(course / "test.csv"))
    (course / "test_list.txt").write_text("00000001_000.png\n")  # a one-hot table with list files beside it
    assert is_dataset_table(load_split(course / "test.csv"))


def test_compare_on_a_whole_table_uses_the_images_common_to_all_files(nih, capsys):
    part = nih["dir"] / "part.csv"
    preds = read_predictions(nih["weak"])
    write_predictions(part, preds.images[10:], preds.probs[10:])
    code, out, err = _run(["compare", "--labels", nih["table"], "--predictions", nih["good"], "--predictions",
                           str(part), "--bootstrap", "200"], capsys)
    assert code == 0, err
    n = len(nih["test"]) - 10
    assert out.splitlines()[0] == f"{n:,} of {nih['n']:,} labelled images: those in every predictions file"
    assert f"Comparison on {n} images" in out


# --- 2. the difference of mean AUROC --------------------------------------------------------------


def test_mean_difference_is_paired_and_found_significant(nih, capsys):
    code, out, _ = _run(["compare", "--labels", nih["table"], "--predictions", nih["good"], "--predictions",
                         nih["weak"], "--bootstrap", "300", "--format", "json"], capsys)
    assert code == 0
    mean = json.loads(out)["pairs"][0]["mean_auroc_difference"]
    good = json.loads(_run(["evaluate", "--labels", nih["table"], "--predictions", nih["good"], "--bootstrap", "0",
                            "--format", "json"], capsys)[1])["mean_auroc"]
    weak = json.loads(_run(["evaluate", "--labels", nih["table"], "--predictions", nih["weak"], "--bootstrap", "0",
                            "--format", "json"], capsys)[1])["mean_auroc"]
    assert mean["delta"] == pytest.approx(weak - good)
    assert mean["ci_low"] <= mean["delta"] <= mean["ci_high"] < 0 and mean["p_value"] < 0.01
    assert mean["replicates_used"] == 300 and len(mean["classes"]) == len(LABELS)


def test_mean_difference_of_identical_models_is_zero_with_p_one():
    rng = np.random.default_rng(3)
    pid = np.repeat(np.arange(60), 2)
    y = (rng.random((120, 3)) < 0.3).astype(np.uint8)
    p = rng.random((120, 3))
    pair = compare_models(y, [p, p], ["A", "B", "C"], ["a", "b"], patient_ids=pid, n_bootstrap=100).pairs[0]
    assert pair.mean.delta == 0.0 and pair.mean.p_value == 1.0 and pair.mean.ci_low == pair.mean.ci_high == 0.0


def test_mean_difference_text_line(nih, capsys):
    code, out, _ = _run(["compare", "--labels", nih["table"], "--predictions", nih["good"], "--predictions",
                         nih["weak"], "--bootstrap", "100"], capsys)
    line = next(line for line in out.splitlines() if line.startswith("Mean AUROC difference"))
    assert "weak - good over 14 classes" in line and "95% CI" in line and "paired patient bootstrap" in line
    code, out, _ = _run(["compare", "--labels", nih["table"], "--predictions", nih["good"], "--predictions",
                         nih["weak"], "--bootstrap", "0"], capsys)
    assert "no interval or p-value" in out


# --- 5. edge numbers ------------------------------------------------------------------------------


def test_three_patients_give_no_interval_and_say_why():
    """The issue's case: 3 patients, most replicates with a single class."""
    pid = np.array([1, 1, 2, 2, 3, 3])
    y = np.array([[1], [0], [0], [0], [0], [0]], dtype=np.uint8)
    p = np.array([[0.9], [0.2], [0.3], [0.1], [0.4], [0.5]])
    r = evaluate(y, p, ["Mass"], pid, n_bootstrap=200, seed=0)
    m = r.classes["Mass"]
    assert not math.isnan(m.auroc) and math.isnan(m.ci_low) and math.isnan(r.mean_auroc_ci_low)
    assert m.note.startswith("no CI") and "3 patients" in m.note
    assert any("no CI" in n for n in r.notes) and r.mean_ci_note


def test_ci_rule():
    assert min_usable_replicates(0.95) == 40 and min_usable_replicates(0.9) == 20
    assert ci_problem(1000, 1000, 500) is None
    assert "dropped" in ci_problem(41, 200, 500)
    assert "40 needed" in ci_problem(20, 20, 500)
    assert "patients" in ci_problem(1000, 1000, 5)
    assert ci_problem(0, 0, 3) is None  # no bootstrap asked: nothing to explain


def test_evaluate_text_prints_the_reason_instead_of_a_degenerate_ci(tmp_path, capsys):
    frame = pd.DataFrame({"Image": [f"{i // 2 + 1:08d}_{i % 2:03d}.png" for i in range(6)],
                          "PatientId": [1, 1, 2, 2, 3, 3], **{label: [1, 0, 0, 0, 1, 0] for label in LABELS}})
    frame.to_csv(tmp_path / "labels.csv", index=False)
    write_predictions(tmp_path / "p.csv", frame["Image"], np.tile([[0.9], [0.2], [0.3], [0.1], [0.8], [0.4]],
                                                                  (1, len(LABELS))))
    code, out, _ = _run(["evaluate", "--labels", str(tmp_path / "labels.csv"), "--predictions",
                         str(tmp_path / "p.csv"), "--bootstrap", "200"], capsys)
    assert code == 0 and "95% CI 1.000 to 1.000" not in out
    assert "(95% CI" not in next(line for line in out.splitlines() if line.startswith("Mean AUROC"))
    assert "no CI: only 3 patients" in out


@pytest.mark.parametrize("cells, hint", [
    (["37.5", "80", "2.5", "91"], "divide by 100"),
    (["-2.3", "0.5", "1.2", "0.1"], "apply a sigmoid"),
    (["0.2", "0.5", "0.3", "0.1"], None),
])
def test_percentages_get_divide_by_100(tmp_path, cells, hint):
    rows = "".join(f"{i:08d}_000.png,{v}\n" for i, v in enumerate(cells, start=1))
    (tmp_path / "p.csv").write_text("Image,prob_Mass\n" + rows)
    if hint is None:
        assert read_predictions(tmp_path / "p.csv").probs.shape == (4, 1)
        return
    with pytest.raises(PredictionsError) as info:
        read_predictions(tmp_path / "p.csv")
    assert hint in str(info.value)
    assert ("sigmoid" in str(info.value)) == (hint == "apply a sigmoid")


def test_align_subset_keeps_the_labelled_count(nih):
    data = align(read_predictions(nih["good"]), load_table(nih["table"]), subset=True)
    assert len(data) == len(nih["test"]) and data.n_labelled == nih["n"] and data.is_subset


# --- 4. what a model was trained on -----------------------------------------------------------------


def _demo_folder(folder: Path) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / ".complete").write_text(json.dumps({"generator": "cxrcore.demo 0.1", "config": {}}))
    (folder / "train.csv").write_text("Image\n")
    return folder


def test_data_kind_of_folders_and_specs(tmp_path):
    from cxrcore.data.catalog import DATA_REAL, DATA_SYNTHETIC, data_kind, spec_dataset

    demo = _demo_folder(tmp_path / "demo")
    assert data_kind(demo) == DATA_SYNTHETIC and data_kind(demo / "images") == DATA_SYNTHETIC
    (tmp_path / "nih").mkdir()
    assert data_kind(tmp_path / "nih") == DATA_REAL
    assert spec_dataset(f"train={demo / 'train.csv'}") == ("demo", DATA_SYNTHETIC)
    assert spec_dataset(f"{tmp_path / 'nih' / 'Data_Entry.csv'}@{tmp_path / 'nih' / 'x.txt'}") == ("nih", DATA_REAL)
    assert spec_dataset(None) == ("", "")


def test_model_info_carries_the_training_data_and_old_files_read_as_unknown():
    from cxrcore.data.catalog import DATA_REAL, DATA_SYNTHETIC, kind_mismatch
    from cxrcore.train.model import ModelInfo

    info = ModelInfo(dataset="demo", data_kind=DATA_SYNTHETIC)
    again = ModelInfo.from_json(info.to_json())
    assert (again.dataset, again.data_kind) == ("demo", DATA_SYNTHETIC)
    old = ModelInfo.from_dict({"labels": list(LABELS)})  # written before the field existed
    assert old.data_kind == "" and kind_mismatch(old.data_kind, DATA_REAL) is None
    assert kind_mismatch(DATA_SYNTHETIC, DATA_SYNTHETIC) is None
    warning = kind_mismatch(DATA_SYNTHETIC, DATA_REAL, "demo")
    assert "synthetic demo" in warning and "real X-rays" in warning and "demo data" in warning
    assert "out of distribution" in kind_mismatch(DATA_REAL, DATA_SYNTHETIC)


def test_the_course_model_is_known_to_be_trained_on_real_x_rays():
    from cxrcore.data.catalog import DATA_REAL, DATA_SYNTHETIC, kind_mismatch
    from cxrcore.train.model import course_model_info

    info = course_model_info()
    assert info.data_kind == DATA_REAL
    assert "out of distribution" in kind_mismatch(info.data_kind, DATA_SYNTHETIC, info.dataset)
