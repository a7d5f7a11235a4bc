"""Real data as users bring it (#20), on the pages: part of the images missing, labels and predictions
uploaded on the Results page and kept for the session, models trained on another kind of images."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrcore.data.catalog import DATA_SYNTHETIC
from cxrcore.data.dataset import load_split
from cxrcore.data.labels import LABELS
from cxrcore.data.predictions import write_predictions
from tests.app_support import make_course_dataset, open_app_page

RESULTS = "pages/results.py"


def _frame(at, column: str) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _mark_as_demo(folder: Path) -> None:
    (folder / ".complete").write_text(json.dumps({"generator": "cxrcore.demo test", "config": {}}))


@pytest.fixture(scope="module")
def partial_root(tmp_path_factory) -> Path:
    """A course folder whose test split has 4 of its 18 images on disk (the student copied a few)."""
    root = tmp_path_factory.mktemp("partial")
    make_course_dataset(root / "course", size=32)
    test = load_split(root / "course" / "test.csv")
    for name in test.images[4:]:
        (root / "course" / "images" / name).unlink()
    return root


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> Path:
    """A tiny model whose info says it was trained on the synthetic demo set."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cxrcore.data.pipeline import Normalization
    from cxrcore.train.model import ModelInfo, build_model, save_model

    models = tmp_path_factory.mktemp("models")
    info = ModelInfo(input_size=32, normalization=Normalization.sample(), name="demo", backbone="small_cnn",
                     dataset="demo", data_kind=DATA_SYNTHETIC)
    save_model(build_model(input_size=32, backbone="small_cnn"), info, models / "demo.keras")
    return models


def test_results_evaluate_the_present_images_and_warn_of_the_synthetic_model(partial_root, demo_model, tmp_path,
                                                                               monkeypatch):
    at = open_app_page(monkeypatch, RESULTS, state={"results_bootstrap": 0}, data=partial_root, models=demo_model,
                       runs=tmp_path / "runs", cache=tmp_path / "cache")
    assert not at.error, [e.value for e in at.error]
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("14 of 18 images of test are missing from the image folder") and
               "evaluated on those" in w for w in warnings), warnings
    assert any("synthetic demo" in w and "real X-rays" in w for w in warnings), warnings
    assert not any("No model to evaluate yet" in i.value for i in at.info)
    assert _frame(at, "mean AUROC").set_index("model").loc["demo", "images"] == 4
    assert any("4 of 18 labelled images" in i.value for i in at.info)
    assert not at.get("progress")  # no "Predicting..." bar left on screen


def test_results_keep_uploaded_labels_and_predictions_and_compare_the_means(tmp_path, monkeypatch):
    """A whole NIH-format table uploaded as labels, two prediction files for part of it: evaluated on
    their images (said first), the mean difference tested, and still there after visiting another page."""
    rng = np.random.default_rng(4)
    names = [f"{p:08d}_{i:03d}.png" for p in range(1, 61) for i in range(2)]
    y = (rng.random((len(names), len(LABELS))) < 0.3).astype(int)
    findings = ["|".join(l for l, v in zip(LABELS, row) if v) or "No Finding" for row in y]
    table = pd.DataFrame({"Image Index": names, "Finding Labels": findings,
                          "Patient ID": [int(n[:8]) for n in names]}).to_csv(index=False).encode()
    part = slice(0, 90)
    good = tmp_path / "good.csv"
    weak = tmp_path / "weak.csv"
    write_predictions(good, names[part], np.clip(0.2 + 0.6 * y[part] + 0.1 * rng.random((90, 14)), 0, 1))
    write_predictions(weak, names[part], rng.random((90, 14)))
    at = open_app_page(monkeypatch, RESULTS, state={"results_bootstrap": 200}, data=tmp_path / "no-data",
                       models=tmp_path / "no-models", runs=tmp_path / "runs")
    at.file_uploader(key="results_labels_upload").set_value(
        [("Data_Entry_2017_v2020.csv", table, "text/csv")]).run()
    at.selectbox(key="results_split").set_value("Data_Entry_2017_v2020 (uploaded)").run()
    at.file_uploader(key="results_uploads").set_value(
        [("good.csv", good.read_bytes(), "text/csv"), ("weak.csv", weak.read_bytes(), "text/csv")]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(i.value.startswith("90 of 120 labelled images: those every model predicted") for i in at.info)
    assert list(_frame(at, "mean AUROC")["images"]) == [90, 90]
    mean = _frame(at, "Δ mean AUROC").set_index("model")
    assert mean.loc["weak", "Δ mean AUROC"].startswith("-") and mean.loc["weak", "classes"] == 14
    assert mean.loc["weak", "95% CI (patient bootstrap)"].startswith("[-")
    # leave the page and come back: labels and predictions are still there
    at.switch_page("pages/class_balance.py").run()
    at.switch_page(RESULTS).run()
    assert not at.exception
    assert at.selectbox(key="results_split").value == "Data_Entry_2017_v2020 (uploaded)"
    assert set(_frame(at, "mean AUROC")["model"]) == {"good", "weak"}
    assert any("Kept from earlier in this session: good.csv, weak.csv" in c.value for c in at.caption)
    at.button(key="results_uploads_kept_forget").click().run()
    assert not any("mean AUROC" in d.value.columns for d in at.dataframe)


def test_published_aurocs_start_hidden_over_the_demo_set(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_course_dataset(root / "demo", patients=20, size=16)
    _mark_as_demo(root / "demo")
    split = load_split(root / "demo" / "test.csv")
    write_predictions(tmp_path / "models" / "m.csv", split.images, np.full((len(split), 14), 0.4))
    at = open_app_page(monkeypatch, RESULTS, state={"results_bootstrap": 0}, data=root, models=tmp_path / "models",
                       runs=tmp_path / "runs")
    assert at.toggle(key="results_literature").value is False
    (root / "demo" / ".complete").unlink()
    at = open_app_page(monkeypatch, RESULTS, state={"results_bootstrap": 0}, data=root, models=tmp_path / "models",
                       runs=tmp_path / "runs")
    assert at.toggle(key="results_literature").value is True


def test_explorer_browses_the_present_images_and_warns_of_the_synthetic_model(partial_root, demo_model, tmp_path,
                                                                            monkeypatch):
    import cv2

    at = open_app_page(monkeypatch, "pages/gradcam_explorer.py", timeout=120, data=partial_root, models=demo_model,
                       runs=tmp_path / "runs", cache=tmp_path / "cache")
    assert not at.error and not at.exception, [e.value for e in at.error]
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("14 of 18 images of test are missing") and "Browsing the 4 present images" in w
               for w in warnings), warnings
    assert any("synthetic demo" in w for w in warnings), warnings
    captions = [c for image in at.image for c in image.captions]
    assert not any("missing" in c for c in captions) and not any("missing" in c.value for c in at.caption)
    # a radiograph of one's own, scored by the demo model: warned
    at.segmented_control(key="cam_source").set_value("Upload an image").run()
    ok, png = cv2.imencode(".png", (np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8))
    at.file_uploader(key="cam_upload").set_value(("xray.png", png.tobytes(), "image/png")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(w.value.startswith("demo on xray.png: This model was trained on the synthetic demo images")
               for w in at.warning), [w.value for w in at.warning]


def test_dataset_explorer_shows_present_only_by_default_and_class_balance_counts_both(partial_root, tmp_path,
                                                                                      monkeypatch):
    at = open_app_page(monkeypatch, "pages/dataset_explorer.py", data=partial_root, models=tmp_path / "m",
                       runs=tmp_path / "runs")
    at.multiselect(key="explorer_grid_splits").set_value(["test"]).run()
    assert not at.exception
    assert at.checkbox(key="explorer_grid_present_only").value is True
    assert any(c.value.startswith("14 of 18 images are missing") for c in at.caption)
    assert not any("missing or unreadable" in c.value for c in at.caption)
    assert len([c for image in at.image for c in image.captions]) == 4
    at.checkbox(key="explorer_grid_present_only").uncheck().run()
    assert any("missing or unreadable" in c.value for c in at.caption)
    at = open_app_page(monkeypatch, "pages/class_balance.py", data=partial_root, models=tmp_path / "m",
                       runs=tmp_path / "runs")
    at.selectbox(key="balance_split").set_value("test").run()
    assert any(w.value.startswith("14 of 18 images of test are missing") for w in at.warning)
    counts = _frame(at, "positives (on disk)").set_index("class")
    test = load_split(partial_root / "course" / "test.csv")
    assert counts["positives (all listed)"].sum() == test.labels.sum()
    assert counts["positives (on disk)"].sum() == test.labels[:4].sum()


def test_home_says_the_demo_model_is_for_the_demo(partial_root, demo_model, tmp_path, monkeypatch):
    at = open_app_page(monkeypatch, "pages/home.py", data=partial_root, models=demo_model, runs=tmp_path / "runs")
    note = next(c.value for c in at.caption if c.value.startswith("The demo model is for the demo"))
    assert "mean nothing" in note and "Trained on the demo set: demo." in note
