"""Page logic through Streamlit's AppTest: every page on a small course-layout dataset, no exceptions."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.app_support import ROOT

HOME = str(ROOT / "Home.py")


@pytest.fixture
def app(app_data_root, monkeypatch):
    monkeypatch.setenv("CXR_DATA_ROOT", str(app_data_root))
    at = AppTest.from_file(HOME, default_timeout=60)
    at.run()
    assert not at.exception
    return at


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_home_lists_the_dataset_and_where_to_start(app):
    assert app.title[0].value == "CXR Dashboard"
    assert app.sidebar.selectbox[0].value == "mini"
    table = app.dataframe[0].value
    assert list(table["dataset"]) == ["mini"]
    assert "train" in table["splits"][0] and "valid_leaky" in table["splits"][0]
    assert not app.error


def test_class_balance_weights_make_contributions_equal(app):
    at = open_page(app, "pages/class_balance.py")
    assert not at.error
    weights = at.dataframe[0].value
    assert len(weights) == 14
    assert (weights["w_pos"] - weights["neg_freq"]).abs().max() < 1e-12
    assert (weights["pos_contribution"] - weights["neg_contribution"]).abs().max() < 1e-12
    at.selectbox(key="loss_class").set_value("Hernia").run()
    assert not at.exception
    assert any("Hernia" in m.label or True for m in at.metric)
    assert len(at.metric) == 4


def test_dataset_explorer_shows_sizes_and_filters_images(app):
    at = open_page(app, "pages/dataset_explorer.py")
    sizes = at.dataframe[0].value
    assert list(sizes["split"]) == ["train", "valid", "valid_leaky", "test"]
    assert sizes.set_index("split").loc["train", "patients"] == 28
    at.selectbox(key="explorer_grid_label").set_value("Hernia").run()
    assert not at.exception
    at.text_input(key="explorer_grid_patient").set_value("not-a-number").run()
    assert not at.exception
    assert any("not a number" in w.value for w in at.warning)


def test_leakage_audit_clean_by_default_and_leaking_with_the_leaky_split(app):
    at = open_page(app, "pages/leakage_audit.py")
    assert at.success[0].value.startswith("Clean")
    at.multiselect(key="audit_splits_mini").set_value(["train", "valid_leaky"]).run()
    assert not at.exception
    assert at.error[0].value.startswith("Leaking: 3 patient(s)")
    pairs = at.dataframe[0].value
    assert pairs.loc[0, "shared patients"] == 3


def test_leakage_audit_image_check_finds_nothing_missing(app):
    at = open_page(app, "pages/leakage_audit.py")
    at.button(key="audit_hash").click().run()
    assert not at.exception
    assert any("files checked: 0 missing, 0 unreadable" in s.value for s in at.success)


def test_no_dataset_at_all_gives_guidance_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA_ROOT", str(tmp_path / "nothing-here"))
    at = AppTest.from_file(HOME, default_timeout=60)
    at.run()
    assert not at.exception
    for page in ("pages/dataset_explorer.py", "pages/class_balance.py", "pages/leakage_audit.py"):
        at = open_page(at, page)
        assert not at.error


def test_fix_the_split_repairs_and_resplits(app):
    at = open_page(app, "pages/leakage_audit.py")
    at.multiselect(key="audit_splits_mini").set_value(["train", "valid_leaky"]).run()
    assert any(s.value.startswith("Moved") and "no patient is in two splits" in s.value for s in at.success)
    at.button(key="fix_stratify").click().run()
    assert not at.exception
    assert any(s.value.startswith("Split ") and "no patient is in two splits" in s.value for s in at.success)


def test_fix_the_split_with_bad_fractions_shows_an_error(app):
    at = open_page(app, "pages/leakage_audit.py")
    at.number_input(key="fix_fraction_train_valid_test_train").set_value(0.9).run()
    at.button(key="fix_stratify").click().run()
    assert not at.exception
    assert any("fraction" in e.value.lower() for e in at.error), [e.value for e in at.error]


@pytest.fixture
def built_to_leak_app(tmp_path, monkeypatch):
    """A dataset laid out like the demo: valid_leaky holds only follow-ups of training patients."""
    import pandas as pd

    from tests.app_support import make_course_dataset

    folder = make_course_dataset(tmp_path / "data" / "demo")
    train = pd.read_csv(folder / "train.csv")
    leaky = train.groupby("PatientId").tail(1)
    train.drop(leaky.index).to_csv(folder / "train.csv", index=False)
    leaky.to_csv(folder / "valid_leaky.csv", index=False)
    monkeypatch.setenv("CXR_DATA_ROOT", str(tmp_path / "data"))
    at = AppTest.from_file(HOME, default_timeout=60)
    at.run()
    assert not at.exception
    return at


def test_leakage_audit_points_to_the_leaky_split_and_adds_it(built_to_leak_app):
    at = open_page(built_to_leak_app, "pages/leakage_audit.py")
    assert at.success[0].value.startswith("Clean")
    assert any("Left out of this audit: **valid_leaky**, a split built to leak" in i.value for i in at.info)
    at.button(key="audit_splits_demo_add_leaky").click().run()
    assert not at.exception
    assert at.multiselect(key="audit_splits_demo").value == ["train", "valid", "test", "valid_leaky"]
    assert at.error[0].value.startswith("Leaking: 28 patient(s)")
    assert not any("Left out of this audit" in i.value for i in at.info)


def test_fix_the_split_never_empties_a_split_in_a_green_box(built_to_leak_app):
    at = open_page(built_to_leak_app, "pages/leakage_audit.py")
    at.button(key="audit_splits_demo_add_leaky").click().run()
    warnings = [w.value for w in at.warning]
    assert any("would drain a split: **valid_leaky** would keep 0 of its 28 images" in w for w in warnings), warnings
    assert not any(s.value.startswith("Moved") for s in at.success)  # the draining repair is never green
    assert any("drains a split ('valid_leaky' keeps 0 of its 28 images)" in w for w in warnings)
    text = " ".join(m.value for m in at.markdown)
    assert "Re-split by patient, keeping the sizes" in text and "Repair with the fewest moves" in text
    resplit = [s.value for s in at.success if s.value.startswith("Split ")]
    assert resplit and "valid_leaky" in resplit[0] and "no patient is in two splits" in resplit[0]
    assert any("'Re-split by patient, keeping the sizes' on this page" in c.value for c in at.caption)
