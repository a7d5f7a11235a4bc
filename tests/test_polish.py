"""What a person sees, tidied (#19 point 6): Markdown tables that render as tables, one p-value format, a named
demographics table, sliders only for the method on screen, flat maps said in words, the worse-than-random
verdict, labels of nearby boxes apart, state kept over reloads and upload switches, code-only file watching."""
from __future__ import annotations

import re
import tomllib

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cxrcore.audit.report import format_p, markdown_table
from cxrcore.explain import cam
from tests.app_support import ROOT


def _cells(line: str) -> int:
    """Cells of a Markdown table line, as a renderer splits it (on pipes not escaped)."""
    return len(re.split(r"(?<!\\)\|", line.strip().strip("|")))


def test_markdown_tables_escape_pipes_in_the_header_too():
    table = markdown_table(["split", "max |dev|"], [["a|b", "0.1"]]).splitlines()
    assert len({_cells(line) for line in table}) == 1  # header, rule and rows have the same number of cells
    assert "max \\|dev\\|" in table[0]


def test_the_split_report_renders_as_tables_with_headings_at_the_level_asked():
    from cxrcore.audit.splitting import stratify
    from cxrcore.data.dataset import load_split
    from tests.app_support import make_course_dataset

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_course_dataset(Path(tmp) / "mini", patients=12)
        result = stratify(load_split(folder / "train.csv"), {"train": 0.7, "valid": 0.3}, seed=0)
    markdown = result.report.render("markdown", heading_level=4)
    lines = markdown.splitlines()
    assert lines[0].startswith("#### ") and not any(re.match(r"^#{1,3} ", line) for line in lines)
    tables = [line for line in lines if line.startswith("|")]
    header = next(line for line in tables if "max" in line)
    rule = tables[tables.index(header) + 1]
    assert _cells(header) == _cells(rule) == 7
    assert result.report.render("markdown").startswith("# ")  # the file (split_report.md) keeps its title


def test_one_p_value_format():
    assert [format_p(v) for v in (0.0176, 0.5, 3e-7, float("nan"), None)] == ["0.0176", "0.5000", "<0.0001",
                                                                               "-", "-"]


def _shift_page(folder: str) -> None:
    from pathlib import Path

    from cxrcore.audit.audit import run_audit
    from cxrcore.data.dataset import load_split
    from dashboard.audit_view import render_shift

    splits = [load_split(Path(folder) / f"{name}.csv", split_name=name) for name in ("train_nih", "valid_leaky_nih")]
    render_shift(run_audit(splits))


def test_shift_tables_name_their_columns_and_write_p_values_alike(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train_nih", 60), ("valid_leaky_nih", 30)):
        rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
        for i in range(n):
            rows.append(f"{name}{i:05d}.png,{'Cardiomegaly' if rng.random() < 0.3 else 'No Finding'},0,"
                        f"{i + (0 if name == 'train_nih' else 1000)},{rng.integers(20, 80)},"
                        f"{'M' if rng.random() < 0.5 else 'F'},{'PA' if rng.random() < 0.6 else 'AP'}")
        (tmp_path / f"{name}.csv").write_text("\n".join(rows) + "\n")
    at = AppTest.from_function(_shift_page, args=(str(tmp_path),), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    shift, meta = at.dataframe[0].value, at.dataframe[1].value
    for table in (shift, meta):  # text in one format, never 1.76e-2 in one table and 0.0176 in the next
        assert all(re.fullmatch(r"<0\.0001|\d\.\d{4}|-", str(p)) for p in table["p_value"]), table["p_value"]
    assert any(m.value == "**Age, sex and view position between splits**" for m in at.markdown)
    level = at.dataframe[1].proto.columns  # the column settings travel as JSON in the element
    assert "most common value" in level and "in a" in level
    assert any("Kolmogorov-Smirnov" in c.value and "most common value" in c.value for c in at.caption)


def test_flat_maps_and_the_worse_than_random_verdict():
    from dashboard.cam_view import faithfulness_verdict

    assert cam.is_flat(np.zeros((8, 8))) and cam.is_flat(np.full((8, 8), np.nan))
    assert not cam.is_flat(np.eye(8))
    worse = {"deletion AUC": 0.6, "deletion AUC (random)": 0.5}
    better = {"deletion AUC": 0.2, "deletion AUC (random)": 0.5}
    assert faithfulness_verdict([{"method": "CAM", **better}, {"method": "SmoothGrad", **better}]) is None
    assert faithfulness_verdict([{"method": "CAM", **worse}, {"method": "SmoothGrad", **worse}]).startswith(
        "Neither map is faithful on this image")
    assert faithfulness_verdict([{"method": "CAM", **better}, {"method": "SmoothGrad", **worse}]).startswith(
        "SmoothGrad is not faithful on this image")


def test_labels_of_nearby_boxes_do_not_overlap():
    boxes = [("Mass", (40, 60), (120, 140)), ("Nodule", (44, 62), (90, 100)), ("Atelectasis", (42, 58), (70, 90)),
             ("Effusion", (0, 0), (30, 30))]
    placed = cam.label_positions(boxes, (256, 256), 0.4)
    assert [p[0] for p in placed] == ["Mass", "Nodule", "Atelectasis", "Effusion"]
    rects = [(x, y - h - 2, x + w, y + 4) for _, (x, y), (w, h) in placed]
    for i, a in enumerate(rects):
        assert 0 <= a[0] and a[2] <= 256 and 0 <= a[1] and a[3] <= 256
        for b in rects[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    image = cam.draw_boxes(np.zeros((256, 256, 3), np.uint8), [(n, (*p1, p2[0] - p1[0], p2[1] - p1[1]))
                                                               for n, p1, p2 in boxes])
    assert image.any()


def test_teaching_mode_is_kept_in_the_address(app_data_root, monkeypatch):
    monkeypatch.setenv("CXR_DATA_ROOT", str(app_data_root))
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60).run()
    assert at.sidebar.toggle(key="teaching_mode").value is False
    # bound to the address (the browser writes ?teaching_mode=true when it is switched on): a reload keeps it
    reloaded = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60)
    reloaded.query_params["teaching_mode"] = "true"
    reloaded.run()
    assert reloaded.sidebar.toggle(key="teaching_mode").value is True


def test_streamlit_watches_the_code_only():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["fileWatcherType"] == "poll"  # watchdog would watch data/, runs/, cache/ recursively


@pytest.mark.parametrize("value", [0.0176])
def test_p_values_on_the_results_page_use_the_same_format(value):
    from dashboard import results_view

    assert results_view._p(value) == format_p(value) == "0.0176"


def test_text_columns_are_wide_enough_for_their_longest_value():
    import pandas as pd

    from dashboard.widgets import fitted_columns

    frame = pd.DataFrame({"split b": ["valid", "valid_leaky"], "label": ["Cardiomegaly", "Mass"], "n": [1, 2]})
    config = fitted_columns(frame, {"label": "kept"})
    assert config["label"] == "kept" and "n" not in config
    assert config["split b"]["width"] >= 8 * len("valid_leaky")


def test_a_flat_map_is_drawn_without_colour_and_said_in_words():
    import cv2

    from dashboard.cam_view import NO_EVIDENCE, _panels

    rng = np.random.default_rng(0)
    image = rng.random((64, 64)).astype(np.float32)
    heat = np.zeros((2, 64, 64), np.float32)
    heat[1, 10:20, 10:20] = 1.0
    result = cam.ImageMaps(maps=heat, labels=("Mass", "Nodule"), probs=np.full(14, 0.3), method="gradcam",
                           layer="conv")
    panels = _panels(("k",), "a.png", ("Mass", "Nodule"), (), (), 0.4, "jet", (1.0, 1.0), image, result)
    flat, informative = (cv2.imdecode(np.frombuffer(p[0], np.uint8), cv2.IMREAD_COLOR) for p in panels[1:])
    assert panels[1][1].endswith(NO_EVIDENCE) and NO_EVIDENCE not in panels[2][1]
    assert np.abs(flat.astype(int) - flat[..., :1]).max() <= 8  # gray (JPEG noise aside): no colormap
    assert np.abs(informative.astype(int) - informative[..., :1]).max() > 50
    figure = cam.explanation_figure(image, result, columns=3, panel_size=64)
    assert figure.shape[0] > 64
