"""bench/bench_classroom.py keeps working: its protocol client against a real `streamlit run`, 2 students, ~10 s.

No timing is asserted (the machine is shared); only that every page and action is exercised without
errors, the model is loaded once, and memory is sampled.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys

import numpy as np
import pytest

from tests.app_support import ROOT

ACTIONS = {"Home: open", "Dataset explorer: open", "Dataset explorer: filter or page", "Results: open",
           "Results: pick models", "GradCAM explorer: open", "GradCAM explorer: next image"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_classroom", ROOT / "bench" / "bench_classroom.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def roots(app_data_root, tmp_path_factory):
    """The 'mini' dataset, a tiny small_cnn model and one prediction file for its test split."""
    from cxrcore.data.dataset import load_split
    from cxrcore.data.labels import LABELS
    from cxrcore.data.pipeline import Normalization
    from cxrcore.data.predictions import write_predictions
    from cxrcore.train.model import ModelInfo, build_model, save_model

    base = tmp_path_factory.mktemp("classroom")
    shutil.copytree(app_data_root / "mini", base / "data" / "mini")
    models = base / "models"
    info = ModelInfo(input_size=32, normalization=Normalization.sample(), name="tiny", backbone="small_cnn")
    save_model(build_model(input_size=32, backbone="small_cnn"), info, models / "tiny.keras")
    test = load_split(base / "data" / "mini" / "test.csv")
    rng = np.random.default_rng(0)
    write_predictions(models / "baseline.csv", [str(n) for n in test.images], rng.random((len(test), len(LABELS))))
    return {"data": base / "data", "models": models, "runs": base / "runs", "cache": base / "cache"}


def test_two_students_browse_the_three_pages_without_errors(bench, roots, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "THINK", (0.1, 0.3))
    result = bench.run_classroom(roots, sessions=2, duration=8, seed=0, log_path=tmp_path / "server.log", settle=0.5)
    assert result.errors == [], result.errors
    for phase in (bench.COLD, bench.ALONE):  # every page and change, by the first student alone
        assert ACTIONS == {r.action for r in result.renders if r.phase == phase}, phase
    load = [r for r in result.renders if r.phase == bench.LOAD]  # then both at once (how far they get varies)
    assert {r.student for r in load} == {0, 1}
    assert {"Home: open", "Dataset explorer: open"} <= {r.action for r in load}
    assert sum(r.images for r in result.renders) > 0, "thumbnails are fetched like a browser does"
    assert result.model_loads == 1 and result.models_used == 1
    assert result.rss["start"] > 0 and result.rss["peak"] >= result.rss["after first session"]
    text = bench.report(result)
    assert "Errors: 0" in text and "Model loads: 1" in text


def test_exceptions_and_error_boxes_count_as_errors(bench):
    from streamlit.proto.Alert_pb2 import Alert
    from streamlit.proto.Element_pb2 import Element

    student = bench.Student(port=1, number=0, rng=None)
    errors, media = [], []
    crash, failure, note = Element(), Element(), Element()
    crash.exception.type, crash.exception.message = "ValueError", "boom"
    failure.alert.body, failure.alert.format = "model 'x': cannot read", Alert.ERROR
    note.alert.body, note.alert.format = "No dataset yet", Alert.INFO
    for element in (crash, failure, note):
        student._element(element, errors, media)
    assert errors == ["exception: ValueError: boom", "st.error: model 'x': cannot read"]


def test_the_model_load_line_is_the_one_the_dashboard_logs(bench):
    from dashboard.models import MODEL_LOADED

    assert bench.MODEL_LOADED == MODEL_LOADED


def test_page_rerun_profiler_measures_full_runs_and_fragment_reruns(roots, tmp_path, monkeypatch):
    """bench_page_reruns.py on the fixture: every listed page and widget measured, no errors, and the
    widgets inside sections (st.fragment) rerun only their section through the websocket protocol."""
    spec = importlib.util.spec_from_file_location("bench_page_reruns", ROOT / "bench" / "bench_page_reruns.py")
    reruns = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = reruns  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(reruns)
    pages = {title: reruns.PAGES[title] for title in ("Dataset explorer", "Results", "Class balance")}
    # the fixture's prediction file covers the test split only: another split is (rightly) an error
    monkeypatch.setitem(reruns.ACTIONS, "Results", [k for k in reruns.ACTIONS["Results"] if k != "results_split"])
    costs = reruns.measure(roots, repeats=1, cores=2, log_path=tmp_path / "server.log", pages=pages)
    rows = {(c.page, c.action): c.row() for c in costs}
    assert [e for c in costs for e in c.errors] == []
    assert {("Dataset explorer", "open (full run)"), ("Results", "open (full run)")} <= set(rows)
    scopes = {action: row["scope"] for (page, action), row in rows.items()}
    assert scopes["change explorer_grid_label"] == scopes["change loss_probability"] == "fragment"
    assert scopes["change results_threshold_class"] == "fragment"
    assert scopes["change results_models"] == "page" and scopes["change balance_split"] == "page"
    assert all(row["runs"] == 1 and row["wall_s"] > 0 for row in rows.values())
