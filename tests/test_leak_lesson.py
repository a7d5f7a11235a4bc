"""The leakage lesson on the Results page: valid and valid_leaky side by side, words that match the numbers."""
from __future__ import annotations

import math
import os

import pytest

from cxrcore.data.labels import LABELS
from cxrcore.evaluate.leak_lesson import LESSON_GAP, compare_clean_and_leaky, has_leak_lesson
from tests.app_support import open_app_page


def test_the_words_follow_the_numbers():
    clean = {label: 0.70 for label in LABELS}
    leaky = {**{label: 0.78 for label in LABELS}, "Hernia": math.nan}  # a label the leaky split cannot score
    shown = compare_clean_and_leaky(clean, leaky)
    assert len(shown.labels) == 13 and shown.gap == pytest.approx(0.08) and shown.shown
    assert "looks better than it is" in shown.message() and "valid_leaky 0.780 against valid 0.700" in shown.message()
    small = compare_clean_and_leaky(clean, {label: 0.70 + LESSON_GAP / 2 for label in LABELS})
    assert not small.shown and "within the noise" in small.message() and "inflated" not in small.message()
    absent = compare_clean_and_leaky(clean, {label: 0.69 for label in LABELS})
    assert not absent.shown and "does not score higher" in absent.message()
    assert compare_clean_and_leaky({"Mass": math.nan}, {"Mass": 0.5}) is None
    assert has_leak_lesson(["train", "valid", "valid_leaky"]) and not has_leak_lesson(["train", "valid"])


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from cxrcore.demo import DemoConfig, generate_demo_dataset

    root = tmp_path_factory.mktemp("data")
    generate_demo_dataset(root / "demo", DemoConfig(images=120, size=64, seed=2), workers=2)
    return root


def test_results_page_shows_both_splits_and_the_lesson_for_the_demo(demo_root, tmp_path, monkeypatch):
    """A tiny untrained model: the numbers on screen and the words beside them agree, whatever they are."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cxrcore.data.pipeline import Normalization
    from cxrcore.train.model import ModelInfo, build_model, save_model

    models = tmp_path / "models"
    info = ModelInfo(input_size=32, normalization=Normalization.sample(), name="tiny", backbone="small_cnn",
                     metadata={"train_split": str(demo_root / "demo" / "train.csv")})
    save_model(build_model(input_size=32, backbone="small_cnn"), info, models / "tiny.keras")
    monkeypatch.setenv("CXR_CACHE_ROOT", str(tmp_path / "cache"))
    at = open_app_page(monkeypatch, "pages/results.py", state={"results_bootstrap": 0}, timeout=120, data=demo_root,
                       models=models, runs=tmp_path / "runs")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(h.value.startswith("The leakage lesson: valid beside valid_leaky") for h in at.subheader)
    table = next(d.value for d in at.dataframe if "gap" in d.value.columns).set_index("model")
    clean, leaky = table.loc["tiny", "valid (new patients)"], table.loc["tiny", "valid_leaky (training patients)"]
    assert table.loc["tiny", "gap"] == pytest.approx(leaky - clean)
    lesson = [b.value for b in [*at.info, *at.warning] if b.value.startswith("**tiny**")]
    assert len(lesson) == 1 and f"valid_leaky {leaky:.3f} against valid {clean:.3f}" in lesson[0]
    if leaky - clean < LESSON_GAP:  # an untrained model: never called inflated
        assert "looks better than it is" not in lesson[0]
    # the leak warning over the leaky split never claims more than the numbers show
    at.selectbox(key="results_split").set_value("valid_leaky").run()
    warnings = [w.value for w in at.warning if w.value.startswith("tiny: the evaluated split shares")]
    assert warnings and "may be inflated" in warnings[0] and "likely inflated" not in warnings[0]


def test_no_lesson_for_a_dataset_that_is_not_the_demo(app_data_root, tmp_path, monkeypatch):
    from tests.test_results_page import open_results, write_models

    write_models(tmp_path / "models", app_data_root)
    at = open_results(monkeypatch, app_data_root, tmp_path / "models", tmp_path / "runs")
    assert not any(h.value.startswith("The leakage lesson") for h in at.subheader)
