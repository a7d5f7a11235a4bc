"""Prediction files: column forms, validation errors that name file/line/column/fix, joining to labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrcore.data.dataset import load_split
from cxrcore.data.labels import LABELS
from cxrcore.data.predictions import align, normalize_image_name, read_predictions, write_predictions
from cxrcore.errors import PredictionsError


def _names(n: int) -> list[str]:
    return [f"{i // 2 + 1:08d}_{i % 2:03d}.png" for i in range(n)]


def _labels_csv(path: Path, n: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"Image": _names(n)})
    for label in LABELS:
        frame[label] = (rng.random(n) < 0.4).astype(int)
    frame["PatientId"] = [i // 2 + 1 for i in range(n)]
    frame.to_csv(path, index=False)
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _canonical_csv(path: Path, n: int = 12, seed: int = 1) -> tuple[Path, np.ndarray]:
    probs = np.random.default_rng(seed).random((n, len(LABELS)))
    write_predictions(path, _names(n), probs)
    return path, probs


def test_round_trip_of_the_canonical_file(tmp_path):
    path, probs = _canonical_csv(tmp_path / "p.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert header == ["Image"] + [f"prob_{label}" for label in LABELS]
    pred = read_predictions(path)
    assert pred.labels == LABELS and list(pred.images) == _names(12)
    np.testing.assert_allclose(pred.probs, probs, rtol=1e-8)
    assert list(pred.lines) == list(range(2, 14))


def test_formula_injection_is_neutralized_and_read_back(tmp_path):
    names = ["=HYPERLINK(1).png", "+a.png", "-b.png", "@c.png", "ok.png"]
    write_predictions(tmp_path / "p.csv", names, np.full((5, 1), 0.5), labels=["Mass"])
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "Image,prob_Mass"
    assert [line.split(",")[0].strip('"') for line in lines[1:]] == \
        ["'=HYPERLINK(1).png", "'+a.png", "'-b.png", "'@c.png", "ok.png"]
    assert list(read_predictions(tmp_path / "p.csv").images) == names


def test_image_index_bare_and_alias_columns_and_class_subset(tmp_path):
    path = _write(tmp_path / "p.csv", "Image Index,Infiltrate,prob_pleural thickening,Effusion,Extra\n"
                                      "images/a.png,0.1,0.2,0.3,x\nb.png,0.4,0.5,0.6,y\n")
    pred = read_predictions(path)
    assert pred.labels == ("Effusion", "Infiltration", "Pleural_Thickening")  # LABELS order
    np.testing.assert_allclose(pred.probs, [[0.3, 0.1, 0.2], [0.6, 0.4, 0.5]])
    assert list(pred.images) == ["a.png", "b.png"]  # directory part dropped
    assert any("Extra" in str(w) for w in pred.warnings)


def test_bytes_source_is_read(tmp_path):
    pred = read_predictions(b"Image,Mass\na.png,0.25\n", name="upload.csv")
    assert pred.file == "upload.csv" and pred.probs[0, 0] == 0.25


@pytest.mark.parametrize("text, expected", [
    ("Img,prob_Mass\na.png,0.1\n", ["line 1", "no image column", "'Img' looks close", "Fix:"]),
    ("Image,prob_Cardiomegally\na.png,0.1\n", ["column 'prob_Cardiomegally'", "did you mean 'prob_Cardiomegaly'"]),
    ("Image,Cardiomegally\na.png,0.1\n", ["did you mean 'prob_Cardiomegaly'"]),
    ("Image,score\na.png,0.1\n", ["no class columns", "prob_Atelectasis"]),
    ("Image,Mass,prob_Mass\na.png,0.1,0.2\n", ["two columns hold Mass"]),
    ("Image,prob_Mass\na.png,0.1\nb.png,nan\nc.png,\n", ["lines 3, 4", "column 'prob_Mass'", "2 empty or NaN"]),
    ("Image,prob_Mass\na.png,0.1\nb.png,high\n", ["line 3", "'high' is not a number"]),
    ("Image,prob_Mass\na.png,1.5\nb.png,-2\nc.png,0.3\n", ["lines 2, 3", "outside [0, 1]", "sigmoid"]),
    ("Image,prob_Mass\na.png,inf\n", ["line 2", "outside [0, 1]"]),
    ("Image,prob_Mass\na.png,0.1\nb.png,0.2\na.png,0.3\n", ["lines 2, 4", "'a.png' appears more than once"]),
    ("Image,prob_Mass\n,0.1\n", ["line 2", "no image name"]),
    ("Image,prob_Mass\na.png,0.1,0.3\n", ["line 2", "2 fields"]),
    ("Image,prob_Mass\n", ["header but no rows"]),
    ("", ["empty"]),
])
def test_bad_prediction_files_give_clear_errors(tmp_path, text, expected):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(PredictionsError) as info:
        read_predictions(path)
    message = str(info.value)
    assert str(path) in message and "Fix:" in message and "\n" not in message
    for part in expected:
        assert part in message, message


def test_line_numbers_count_blank_lines(tmp_path):
    path = _write(tmp_path / "p.csv", "Image,prob_Mass\na.png,0.1\n\n\nb.png,7\n")
    with pytest.raises(PredictionsError, match="line 5"):
        read_predictions(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(PredictionsError, match="not found"):
        read_predictions(tmp_path / "nope.csv")
    with pytest.raises(PredictionsError, match="folder"):
        read_predictions(tmp_path)


def test_hard_labels_warn(tmp_path):
    pred = read_predictions(_write(tmp_path / "p.csv", "Image,Mass\na.png,0\nb.png,1\n"))
    assert any("hard labels" in str(w) for w in pred.warnings)


def test_align_orders_rows_like_the_labels(tmp_path):
    split = load_split(_labels_csv(tmp_path / "labels.csv"))
    names = _names(12)[::-1]
    probs = np.linspace(0, 1, 12)[:, None]
    write_predictions(tmp_path / "p.csv", names, probs, labels=["Edema"])
    data = align(read_predictions(tmp_path / "p.csv"), split)
    assert list(data.images) == _names(12)
    np.testing.assert_allclose(data.probs[:, 0], probs[::-1, 0])
    np.testing.assert_array_equal(data.y[:, 0], split.frame["Edema"].to_numpy())
    np.testing.assert_array_equal(data.patient_ids, split.frame["PatientId"].to_numpy())
    assert data.labels == ("Edema",)


def test_align_rejects_predictions_for_unlabelled_images(tmp_path):
    split = load_split(_labels_csv(tmp_path / "labels.csv"))
    names = _names(12) + ["99999999_000.png", "99999999_001.png"]
    write_predictions(tmp_path / "p.csv", names, np.full((14, 1), 0.5), labels=["Mass"])
    with pytest.raises(PredictionsError) as info:
        align(read_predictions(tmp_path / "p.csv"), split)
    message = str(info.value)
    assert "2 of 14 predicted images are not in the labels" in message
    assert "99999999_000.png" in message and "lines 14, 15" in message


def test_align_rejects_labelled_images_without_predictions(tmp_path):
    split = load_split(_labels_csv(tmp_path / "labels.csv"))
    write_predictions(tmp_path / "p.csv", _names(8), np.full((8, 1), 0.5), labels=["Mass"])
    with pytest.raises(PredictionsError) as info:
        align(read_predictions(tmp_path / "p.csv"), split)
    message = str(info.value)
    assert "4 of 12 labelled images" in message and "have no prediction" in message
    assert "00000005_000.png" in message


def test_align_with_no_overlap_says_so(tmp_path):
    split = load_split(_labels_csv(tmp_path / "labels.csv"))
    write_predictions(tmp_path / "p.csv", ["x.png", "y.png"], np.full((2, 1), 0.5), labels=["Mass"])
    with pytest.raises(PredictionsError, match="no image in common"):
        align(read_predictions(tmp_path / "p.csv"), split)


def test_write_predictions_validates(tmp_path):
    with pytest.raises(PredictionsError, match="shape"):
        write_predictions(tmp_path / "p.csv", ["a.png"], np.zeros((1, 3)))
    with pytest.raises(PredictionsError, match=r"\[0, 1\]"):
        write_predictions(tmp_path / "p.csv", ["a.png"], np.array([[1.2]]), labels=["Mass"])
    with pytest.raises(PredictionsError, match="unknown label"):
        write_predictions(tmp_path / "p.csv", ["a.png"], np.array([[0.2]]), labels=["Tumour"])
    with pytest.raises(PredictionsError, match="twice"):
        write_predictions(tmp_path / "p.csv", ["a.png", "a.png"], np.full((2, 1), 0.2), labels=["Mass"])
    assert not (tmp_path / "p.csv").exists()


def test_normalize_image_name():
    assert normalize_image_name("  dir\\sub/x.png ") == "x.png"
    assert normalize_image_name("'=x.png") == "=x.png"
    assert normalize_image_name("'quoted.png") == "'quoted.png"
