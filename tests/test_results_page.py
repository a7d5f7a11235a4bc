"""Results page through AppTest: prediction files as models on the fixture dataset's test split."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cxrcore.data.dataset import load_split
from cxrcore.data.labels import LABELS
from cxrcore.data.predictions import write_predictions
from tests.app_support import open_app_page

PAGE = "pages/results.py"


def _test_split(data_root: Path):
    return load_split(data_root / "mini" / "test.csv")


def write_models(folder: Path, data_root: Path) -> dict[str, Path]:
    """An informative model (probabilities follow the labels) and a random one, for mini's test split."""
    split = _test_split(data_root)
    rng = np.random.default_rng(7)
    y = split.labels.astype(float)
    informative = np.clip(0.25 + 0.5 * y + 0.2 * rng.standard_normal(y.shape), 0.001, 0.999)
    noise = rng.random(y.shape)
    folder.mkdir(parents=True, exist_ok=True)
    good = write_predictions(folder / "informative.csv", split.images, informative)
    (folder / "baseline").mkdir(exist_ok=True)
    rand = write_predictions(folder / "baseline" / "random.csv", split.images, noise)
    (folder / "notes.csv").write_text("a,b\n1,2\n")  # not a prediction file: ignored by the header check
    return {"informative": good, "random": rand}


def open_results(monkeypatch, data_root: Path, models: Path, runs: Path) -> AppTest:
    return open_app_page(monkeypatch, PAGE, state={"results_bootstrap": 50}, timeout=120, data=data_root,
                         models=models, runs=runs)


def frame(at: AppTest, column: str) -> pd.DataFrame:
    """The first table on the page with this column."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


@pytest.fixture
def results(app_data_root, tmp_path, monkeypatch) -> AppTest:
    write_models(tmp_path / "models", app_data_root)
    return open_results(monkeypatch, app_data_root, tmp_path / "models", tmp_path / "runs")


def test_auroc_table_ranks_the_informative_model_above_the_random_one(results):
    at = results
    assert at.selectbox(key="results_split").value == "test"
    assert at.number_input(key="results_bootstrap").value == 50
    assert not at.error, [e.value for e in at.error]
    summary = frame(at, "mean AUROC").set_index("model")
    assert set(summary.index) == {"informative", "random"}
    assert summary.loc["informative", "images"] == 18
    assert summary.loc["informative", "mean AUROC"] > 0.9
    assert summary.loc["informative", "mean AUROC"] > summary.loc["random", "mean AUROC"]
    low, high = summary.loc["informative", ["95% CI low", "95% CI high"]]
    # 6 test patients are too few to resample (#20): no interval, and the page says why
    assert np.isnan(low) and np.isnan(high)
    assert any("no CI: only 6 patients" in c.value for c in at.caption)
    table = frame(at, "positives").set_index("class")
    assert {"informative", "random"} <= set(table.columns)
    mean = summary.loc["informative"]
    assert table.loc["Mean AUROC", "informative"] == f"{mean['mean AUROC']:.3f}"
    # bars, ROC, PR, confusion matrix, score histogram, calibration
    assert len(at.get("plotly_chart")) == 6


def _p(text: str) -> float:
    return 0.0 if text.startswith("<") else float(text)


def test_delong_table_compares_against_the_chosen_reference(results):
    at = results
    at.selectbox(key="results_reference").set_value("informative").run()
    assert not at.exception
    delong = frame(at, "Holm p")
    assert "**random** vs **informative** (reference)" in [m.value for m in at.markdown]
    assert list(delong["class"]) == list(LABELS)
    tested = delong[delong["p"] != "-"]
    assert len(tested) >= 10
    assert (tested["delta"] < 0).mean() >= 0.8 and tested["delta"].mean() < -0.2  # random minus informative
    assert all(_p(h) >= _p(p) for p, h in zip(tested["p"], tested["Holm p"]))
    assert tested["Holm p < 0.05"].any()
    at.selectbox(key="results_reference").set_value("random").run()
    assert not at.exception
    delong = frame(at, "Holm p")
    assert "**informative** vs **random** (reference)" in [m.value for m in at.markdown]
    assert delong.loc[delong["p"] != "-", "delta"].mean() > 0.2


def test_threshold_explorer_reacts_to_the_slider(results):
    at = results
    model = at.selectbox(key="results_threshold_model").value
    label = at.selectbox(key="results_threshold_class").value
    slider = at.slider(key=f"results_threshold|{model}|{label}")
    youden = slider.value
    assert 0.0 <= youden <= 1.0
    before = {m.label: m.value for m in at.metric}
    assert set(before) == {"Sensitivity", "Specificity", "PPV", "NPV"}
    slider.set_value(0.999).run()
    assert not at.exception
    after = {m.label: m.value for m in at.metric}
    assert after["Sensitivity"] == "0.0%"
    assert after["Specificity"] == "100.0%"
    assert after != before
    at.slider(key=f"results_threshold|{model}|{label}").set_value(0.0).run()
    assert {m.label: m.value for m in at.metric}["Sensitivity"] == "100.0%"


def test_bad_prediction_files_show_errors_and_the_good_ones_still_evaluate(app_data_root, tmp_path, monkeypatch):
    models = tmp_path / "models"
    paths = write_models(models, app_data_root)
    text = paths["informative"].read_text().splitlines()
    cells = text[3].split(",")
    cells[2] = "nan"
    (models / "has_nan.csv").write_text("\n".join(text[:3] + [",".join(cells)] + text[4:]) + "\n")
    (models / "missing_images.csv").write_text("\n".join(text[:-2]) + "\n")
    at = open_results(monkeypatch, app_data_root, models, tmp_path / "runs")
    errors = [e.value for e in at.error]
    assert any("has_nan" in e and "NaN" in e for e in errors), errors
    assert any("missing_images" in e and "have no prediction" in e for e in errors), errors
    summary = frame(at, "mean AUROC")
    assert set(summary["model"]) == {"informative", "random"}


def test_no_models_at_all_gives_guidance(app_data_root, tmp_path, monkeypatch):
    at = open_results(monkeypatch, app_data_root, tmp_path / "no-models", tmp_path / "no-runs")
    assert not at.error
    assert any("No model to evaluate yet" in i.value for i in at.info)


def test_sidecar_training_data_warns_of_an_inflated_auroc(app_data_root, tmp_path, monkeypatch):
    models = tmp_path / "models"
    write_models(models, app_data_root)
    test_patients = sorted(set(_test_split(app_data_root).patients.tolist()))
    (models / "informative.csv.json").write_text(json.dumps({"train_patients": test_patients[:2] + [1, 2]}))
    train_csv = app_data_root / "mini" / "train.csv"
    relative = os.path.relpath(train_csv, models / "baseline")
    (models / "baseline" / "random.json").write_text(json.dumps({"train_split": relative}))
    leaky = load_split(app_data_root / "mini" / "valid_leaky.csv")
    write_predictions(models / "leaky" / "on_leaky.csv", leaky.images, np.full((len(leaky), 14), 0.3))
    (models / "leaky" / "on_leaky.csv.json").write_text(json.dumps({"train_split": "train"}))
    at = open_results(monkeypatch, app_data_root, models, tmp_path / "runs")
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("informative: the evaluated split shares 2 patients with this model's training data")
               and "may be inflated" in w for w in warnings), warnings
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "on_leaky" in errors[0] and "no image in common" in errors[0], errors
    summary = frame(at, "mean AUROC").set_index("model")
    assert summary.loc["informative", "patients seen in training"] == "2"
    assert summary.loc["random", "patients seen in training"] == "0"  # the relative train_split path resolved
    at.selectbox(key="results_split").set_value("valid_leaky").run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("on_leaky: the evaluated split shares 3 patients") for w in warnings), warnings
    assert set(frame(at, "mean AUROC")["model"]) == {"on_leaky"}
    assert sum("no image in common" in e.value for e in at.error) == 2


def test_runs_folder_predictions_are_found_and_named_uniquely(app_data_root, tmp_path, monkeypatch):
    from dashboard.results_view import find_prediction_files, unique_names

    split = _test_split(app_data_root)
    runs = tmp_path / "runs"
    for run in ("exp1", "exp2"):
        write_predictions(runs / run / "predictions" / "test.csv", split.images, np.full((len(split), 14), 0.5))
    (runs / "exp1" / "predictions" / "junk.csv").write_text("x,y\n1,2\n")
    found = find_prediction_files(tmp_path / "models", runs)
    assert [p.parent.parent.name for p in found] == ["exp1", "exp2"]
    assert list(unique_names(found, roots=[runs])) == ["exp1/test", "exp2/test"]


def test_a_model_file_predicts_the_split_and_is_evaluated_with_its_training_leak(app_data_root, tmp_path,
                                                                                 monkeypatch):
    """A real (tiny) model under models/: the page predicts the split once and evaluates it; its info
    names the training split, so evaluating the leaky split warns that the AUROC is inflated."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cxrcore.data.pipeline import Normalization
    from cxrcore.train.model import ModelInfo, build_model, save_model

    models = tmp_path / "models"
    info = ModelInfo(input_size=32, normalization=Normalization.sample(), name="tiny", backbone="small_cnn",
                     metadata={"train_split": str(app_data_root / "mini" / "train.csv")})
    save_model(build_model(input_size=32, backbone="small_cnn"), info, models / "tiny.keras")
    monkeypatch.setenv("CXR_CACHE_ROOT", str(tmp_path / "cache"))
    at = open_results(monkeypatch, app_data_root, models, tmp_path / "runs")
    assert not at.error, [e.value for e in at.error]
    assert at.sidebar.multiselect(key="active_models").value == ["tiny"]
    summary = frame(at, "mean AUROC").set_index("model")
    assert summary.loc["tiny", "images"] == 18
    assert len(list((tmp_path / "cache" / "predictions").glob("*.csv"))) == 1
    at.selectbox(key="results_split").set_value("valid_leaky").run()
    assert not at.exception
    assert any(w.value.startswith("tiny: the evaluated split shares 3 patients") for w in at.warning)
