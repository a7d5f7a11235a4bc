"""The Home page generates the demo dataset when a server starts where `make run` never ran."""
from __future__ import annotations

import pytest

from cxrcore.demo import DemoConfig, is_complete
from tests.app_support import ROOT

HOME = str(ROOT / "Home.py")
SMALL = DemoConfig(images=60, size=64, seed=1)


@pytest.fixture
def empty_root(tmp_path, monkeypatch):
    import dashboard.demo_offer

    monkeypatch.setattr(dashboard.demo_offer, "DEMO_CONFIG", SMALL)  # the button's set, made small
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("CXR_DATA_ROOT", str(root))
    return root


def _home():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(HOME, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _generate_button(at):
    return next(b for b in at.button if b.key == "generate_demo")


def test_the_button_creates_the_demo_dataset_and_switches_to_it(empty_root):
    at = _home()
    assert any("No dataset under" in i.value for i in at.info)
    assert not at.sidebar.selectbox  # nothing to choose yet
    _generate_button(at).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert is_complete(empty_root / "demo", SMALL)
    assert at.sidebar.selectbox[0].value == "demo"
    assert list(at.dataframe[0].value["dataset"]) == ["demo"]
    assert not [b for b in at.button if b.key == "generate_demo"], "no offer once the set is there"
    # the other pages now have data: the dataset explorer opens on it
    at.switch_page("pages/dataset_explorer.py").run()
    assert not at.exception and not at.error


def test_a_folder_that_is_not_a_demo_set_is_refused_plainly(empty_root):
    (empty_root / "demo").mkdir()
    (empty_root / "demo" / "my_notes.txt").write_text("not a demo set")
    at = _home()
    _generate_button(at).click().run()
    assert not at.exception
    assert any("not a demo dataset" in e.value and "my_notes" not in e.value for e in at.error)
    assert (empty_root / "demo" / "my_notes.txt").read_text() == "not a demo set"


def test_the_offer_is_a_quiet_button_when_other_datasets_exist(app_data_root, monkeypatch):
    monkeypatch.setenv("CXR_DATA_ROOT", str(app_data_root))
    at = _home()
    button = _generate_button(at)
    assert button.proto.type == "secondary"
    assert not any("No dataset under" in i.value for i in at.info)
