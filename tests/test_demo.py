"""Built-in teaching dataset: determinism, file formats, boxes, patient-wise and leaky splits, prevalence."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrcore.data.dataset import load_split
from cxrcore.data.labels import LABELS, NO_FINDING
from cxrcore.demo import (DEFAULT_PREVALENCE, DISTINCT_FINDINGS, NIH_PREVALENCE, Case, DemoConfig,
                          ensure_demo_dataset, generate_demo_dataset, is_complete, plan_cohort,
                          prevalence_from_text, read_bbox_csv, read_marker, render_case)
from cxrcore.demo import generate as gen
from cxrcore.demo import anatomy as an
from cxrcore.demo.anatomy import sample_anatomy
from cxrcore.demo.card import build_card
from cxrcore.errors import ConfigError, DatasetError

ROOT = Path(__file__).resolve().parent.parent
SMALL = DemoConfig(images=60, size=96, seed=5)
SPLIT_CSVS = ("train.csv", "valid.csv", "test.csv", "valid_leaky.csv")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """A 60-image set rendered by 2 processes."""
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", SMALL, workers=2)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_arguments_give_byte_identical_files_whatever_the_process_count(small_set, tmp_path):
    again = generate_demo_dataset(tmp_path / "again", SMALL, workers=1)
    first, second = _files(small_set), _files(again)
    assert first.keys() == second.keys()
    assert len([k for k in first if k.startswith("images/")]) == SMALL.images
    assert [k for k in first if first[k] != second[k]] == []


def test_another_seed_gives_other_images():
    a = render_case(Case(0, 1, 0, "M", 50, "PA", ()), 64).pixels
    b = render_case(Case(1, 1, 0, "M", 50, "PA", ()), 64).pixels
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 2


def test_plan_is_deterministic_and_nih_like():
    a, b = plan_cohort(DemoConfig()).frame, plan_cohort(DemoConfig()).frame
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 1000 and 250 <= a["PatientId"].nunique() <= 350
    assert a["PatientId"].min() == 1
    assert a["Image"].str.fullmatch(r"\d{8}_\d{3}\.png").all()
    assert (a["Image"].str[:8].astype(int) == a["PatientId"]).all()
    assert (a["Image"].str[9:12].astype(int) == a["FollowUp"]).all()
    assert a["Age"].between(20, 85).all() and set(a["Sex"]) == {"M", "F"} and set(a["View"]) == {"PA", "AP"}
    assert 0.12 < (a["View"] == "AP").mean() < 0.28


# ---------------------------------------------------------------------------------------------
# Prevalence


def test_prevalence_close_to_requested_rates():
    frame = plan_cohort(DemoConfig(images=20000, seed=3)).frame
    actual = frame[list(LABELS)].mean()
    for label in LABELS:
        want = DEFAULT_PREVALENCE[label]
        assert abs(actual[label] - want) <= max(0.01, 0.15 * want), (label, actual[label], want)
    assert actual.idxmax() == "Infiltration" and actual.idxmin() == "Hernia"


def test_prevalence_is_configurable_including_nih_rates():
    rates = prevalence_from_text("nih")
    frame = plan_cohort(DemoConfig(images=20000, seed=1).with_prevalence(rates)).frame
    actual = frame[list(LABELS)].mean()
    for label in LABELS:
        assert abs(actual[label] - NIH_PREVALENCE[label]) <= max(0.008, 0.15 * NIH_PREVALENCE[label]), label
    custom = DemoConfig(images=5000).with_prevalence(prevalence_from_text("Hernia=0.2,infiltrate=0"))
    frame = plan_cohort(custom).frame
    assert abs(frame["Hernia"].mean() - 0.2) < 0.04 and frame["Infiltration"].sum() == 0


def test_default_set_has_rare_classes_in_every_split():
    frame = plan_cohort(DemoConfig()).frame
    for split in ("train", "valid", "test", "valid_leaky"):
        positives = frame.loc[frame["Split"] == split, list(LABELS)].sum()
        assert (positives >= 1).all(), (split, positives[positives < 1].index.tolist())


def test_patients_keep_most_findings_across_followups():
    frame = plan_cohort(DemoConfig(images=5000)).frame
    multi = frame[frame.groupby("PatientId")["Image"].transform("size") >= 2]
    first = multi[multi["FollowUp"] == 0].set_index("PatientId")[list(LABELS)]
    later = multi[multi["FollowUp"] == 1].set_index("PatientId")[list(LABELS)].loc[first.index]
    both = (first.to_numpy() & later.to_numpy()).sum()
    assert both / first.to_numpy().sum() > 0.6  # a finding on the first image mostly shows on the next


@pytest.mark.parametrize("kwargs", [{"size": 2000}, {"size": 32}, {"images": 49}, {"seed": -1}, {"size": 256.0}])
def test_invalid_arguments_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        DemoConfig(**kwargs)


def test_prevalence_text_errors_are_config_errors():
    with pytest.raises(ConfigError, match="Fix:"):
        prevalence_from_text("Pneumo=0.1")
    with pytest.raises(ConfigError):
        prevalence_from_text("Hernia=lots")
    with pytest.raises(ConfigError):
        DemoConfig().with_prevalence({"Hernia": 0.9})


# ---------------------------------------------------------------------------------------------
# Splits


def test_split_is_patient_wise_and_the_leaky_split_leaks():
    frame = plan_cohort(DemoConfig()).frame
    patients = {s: set(frame.loc[frame["Split"] == s, "PatientId"]) for s in ("train", "valid", "test", "valid_leaky")}
    assert not patients["train"] & patients["valid"]
    assert not patients["train"] & patients["test"]
    assert not patients["valid"] & patients["test"]
    assert patients["valid_leaky"] <= patients["train"]  # every leaky patient is a train patient
    assert len(patients["valid_leaky"]) > 50
    sizes = frame["Split"].value_counts()
    assert sizes["valid_leaky"] == sizes["valid"]
    leaky = frame[frame["Split"] == "valid_leaky"]
    assert (leaky["FollowUp"] > 0).all()  # held-out follow-ups, the first image stays in train


def test_split_files_load_with_the_project_loader(small_set):
    frames = {}
    for name in SPLIT_CSVS:
        split = load_split(small_set / name)
        assert split.format == "onehot" and not split.warnings
        assert split.labels.shape == (len(split), 14) and split.labels.dtype == np.uint8
        assert set(np.unique(split.labels)) <= {0, 1}
        assert (split.frame["Image"].str[:8].astype(int) == split.frame["PatientId"]).all()
        frames[name] = split.frame
    header = (small_set / "train.csv").read_text().splitlines()[0]
    assert header == ",".join(["Image", *LABELS, "PatientId"])
    ids = {n: set(f["PatientId"]) for n, f in frames.items()}
    assert not ids["train.csv"] & (ids["valid.csv"] | ids["test.csv"])
    assert ids["valid_leaky.csv"] and ids["valid_leaky.csv"] <= ids["train.csv"]
    images = [set(f["Image"]) for f in frames.values()]
    assert sum(len(s) for s in images) == len(set().union(*images)) == SMALL.images  # each image once


def test_nih_table_matches_the_one_hot_files(small_set):
    text = (small_set / "Data_Entry.csv").read_text()
    assert text.splitlines()[0] == ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
                                    "Patient Gender,View Position")
    raw = pd.read_csv(small_set / "Data_Entry.csv")
    assert set(raw["Patient Gender"]) <= {"M", "F"} and set(raw["View Position"]) <= {"PA", "AP"}
    for findings in raw["Finding Labels"]:
        assert findings == NO_FINDING or all(f in LABELS for f in findings.split("|"))
    table = load_split(small_set / "Data_Entry.csv")
    assert table.format == "nih" and len(table) == SMALL.images
    onehot = pd.concat([load_split(small_set / n).frame for n in SPLIT_CSVS]).set_index("Image").sort_index()
    nih = table.frame.set_index("Image").sort_index()
    assert (onehot[list(LABELS)].to_numpy() == nih[list(LABELS)].to_numpy()).all()
    assert (onehot["PatientId"] == nih["PatientId"]).all()


def test_images_are_grayscale_pngs_of_the_requested_size(small_set):
    for path in sorted((small_set / "images").iterdir())[:10]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert img.shape == (96, 96) and img.dtype == np.uint8
        assert 40 < img.mean() < 220 and img.std() > 25  # a radiograph, not a blank or noise field


# ---------------------------------------------------------------------------------------------
# Boxes


def test_every_finding_has_a_box_inside_the_image(small_set):
    lines = (small_set / "bbox.csv").read_text().splitlines()
    assert lines[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    boxes = read_bbox_csv(small_set / "bbox.csv")
    assert ((boxes["x"] >= 0) & (boxes["y"] >= 0) & (boxes["w"] >= 2) & (boxes["h"] >= 2)).all()
    assert ((boxes["x"] + boxes["w"] <= 96) & (boxes["y"] + boxes["h"] <= 96)).all()
    table = load_split(small_set / "Data_Entry.csv").frame.set_index("Image")
    drawn = boxes.groupby("Image Index")["Finding Label"].apply(set).to_dict()
    for image, row in table.iterrows():
        labels = {label for label in LABELS if row[label]}
        assert drawn.get(image, set()) == labels, image


@pytest.mark.parametrize("label", LABELS)
def test_boxes_lie_over_the_rendered_finding(label):
    """Render each case with and without the finding: the change sits inside the finding's boxes."""
    for patient, size in ((3, 128), (8, 192)):
        case = Case(seed=2, patient=patient, followup=1, sex="F" if patient % 2 else "M", age=60, view="PA",
                    labels=tuple(sorted({label, "Infiltration"})))
        with_it = render_case(case, size)
        without = render_case(replace(case, labels=tuple(x for x in case.labels if x != label)), size)
        diff = np.abs(with_it.pixels.astype(float) - without.pixels.astype(float))
        inside = np.zeros(diff.shape, bool)
        boxes = [b for b in with_it.boxes if b.label == label]
        assert boxes
        for b in boxes:
            assert 0 <= b.x and 0 <= b.y and b.x + b.w <= size and b.y + b.h <= size
            inside[b.y:b.y + b.h, b.x:b.x + b.w] = True
        assert diff[inside].sum() >= 0.6 * diff.sum(), label
        assert diff[inside].mean() > 5 * diff[~inside].mean(), label


def test_geometry_is_scale_aware():
    case = Case(seed=0, patient=4, followup=0, sex="M", age=50, view="PA", labels=("Mass", "Cardiomegaly"))
    small, large = render_case(case, 128), render_case(case, 512)
    for a, b in zip(small.boxes, large.boxes):
        assert a.label == b.label
        assert np.allclose(np.array([a.x, a.y, a.w, a.h]) / 128, np.array([b.x, b.y, b.w, b.h]) / 512, atol=0.03)
    thumb = cv2.resize(large.pixels, (128, 128), interpolation=cv2.INTER_AREA).astype(float)
    assert np.corrcoef(thumb.ravel(), small.pixels.astype(float).ravel())[0, 1] > 0.9


# ---------------------------------------------------------------------------------------------
# Patients can be memorised


def test_patient_anatomy_is_stable_across_followups_and_differs_between_patients():
    assert sample_anatomy(0, 7, "M") == sample_anatomy(0, 7, "M")
    assert sample_anatomy(0, 7, "M") != sample_anatomy(0, 8, "M")

    def chest(patient: int, followup: int) -> np.ndarray:
        """The chest before pose, exposure and noise (those vary per image by design)."""
        canvas = an.Canvas(96)
        geom = an.pose(sample_anatomy(0, patient, "M"), "PA", an.stream(0, 99, patient, followup))
        return an.composite(canvas, geom, an.render_layers(canvas, geom)).ravel()

    same = [np.abs(chest(p, 0) - chest(p, 1)).mean() for p in range(1, 7)]
    other = [np.abs(chest(p, 0) - chest(p + 1, 1)).mean() for p in range(1, 7)]
    assert max(same) < min(other)


def test_findings_stay_in_place_across_a_patients_followups():
    boxes = [[b for b in render_case(Case(0, 12, f, "F", 40, "PA", ("Mass",)), 256).boxes] for f in range(3)]
    centers = np.array([[b[0].x + b[0].w / 2, b[0].y + b[0].h / 2] for b in boxes])
    assert np.abs(centers - centers.mean(axis=0)).max() < 0.06 * 256  # only pose moves it


# ---------------------------------------------------------------------------------------------
# Completion marker, temp folder, ensure


def test_marker_is_written_and_describes_the_arguments(small_set):
    marker = read_marker(small_set)
    assert marker["config"] == SMALL.to_dict() and marker["image_count"] == SMALL.images
    assert is_complete(small_set) and is_complete(small_set, SMALL)
    assert not is_complete(small_set, replace(SMALL, seed=6))
    assert not any(p.name.startswith(".demo.partial") for p in small_set.parent.iterdir())


def test_ensure_regenerates_only_when_missing_or_incomplete(tmp_path):
    config = DemoConfig(images=50, size=64, seed=9)
    out = ensure_demo_dataset(tmp_path / "demo", config, workers=1)
    assert is_complete(out, config)
    stamp = (out / "train.csv").stat().st_mtime_ns
    assert ensure_demo_dataset(out, workers=1) == out and (out / "train.csv").stat().st_mtime_ns == stamp
    before = _files(out)
    victim = sorted((out / "images").iterdir())[3]
    victim.unlink()  # interrupted or damaged: an image is missing
    assert not is_complete(out)
    ensure_demo_dataset(out, config, workers=1)
    assert _files(out) == before
    (out / ".complete").unlink()  # a folder without the marker is never taken as complete
    assert not is_complete(out)
    ensure_demo_dataset(out, config, workers=1)
    assert _files(out) == before


def test_interrupted_generation_leaves_no_half_written_folder(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "write_dataset", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_dataset(tmp_path / "demo", DemoConfig(images=50, size=64), workers=1)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_folder_that_is_not_a_demo_set(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a demo dataset"):
        generate_demo_dataset(folder, DemoConfig(images=50, size=64), workers=1)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_stale_partial_folder_of_a_dead_process_is_removed(tmp_path):
    stale = tmp_path / ".demo.partial-999999999-1"
    (stale / "images").mkdir(parents=True)
    generate_demo_dataset(tmp_path / "demo", DemoConfig(images=50, size=64), workers=1)
    assert not stale.exists() and is_complete(tmp_path / "demo")


# ---------------------------------------------------------------------------------------------
# Card


def test_card_reports_measured_numbers_or_says_they_are_absent(small_set):
    text = (small_set / "README.md").read_text()
    for label in LABELS:
        assert f"| {label} |" in text
    assert "valid_leaky" in text and "python -m cxrcore demo --out data/demo --images 60 --size 96 --seed 5" in text
    cohort = plan_cohort(SMALL)
    boxes = read_bbox_csv(small_set / "bbox.csv")
    absent = build_card(cohort, boxes, teaching=None)
    assert "Not measured yet" in absent and "python bench/bench_demo_teaching.py" in absent
    results = {
        "measured_on": "2030-01-02", "command": "python bench/bench_demo_teaching.py", "machine": "test",
        "config": SMALL.to_dict(), "model": "tiny", "epochs": 3, "image_size": 64, "train_seconds": 12.0,
        "repeats": 1, "distinct_mean_auroc_test": 0.912, "all_mean_auroc_test": 0.8, "valid_mean_auroc": 0.81,
        "valid_leaky_mean_auroc": 0.86, "leak_gap": 0.05, "test_auroc": {label: 0.95 for label in LABELS},
    }
    card = build_card(cohort, boxes, teaching=results)
    assert "0.912" in card and "2030-01-02" in card and "0.050" in card and "higher" in card
    assert card.count("| easy |") == 14
    other = build_card(cohort, boxes, teaching={**results, "config": DemoConfig().to_dict()})
    assert "not on this one" in other and "| easy |" not in other


def test_distinct_findings_are_a_subset_of_the_labels():
    assert set(DISTINCT_FINDINGS) <= set(LABELS) and len(DISTINCT_FINDINGS) >= 5


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_generates_then_reports_up_to_date(tmp_path, capsys):
    from cxrcore.cli import main

    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--images", "50", "--size", "64", "--seed", "1", "--workers", "1", "--quiet"]
    assert main(args) == 0
    assert is_complete(out, DemoConfig(images=50, size=64, seed=1))
    assert main(args) == 0
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize("force", [False, True])
def test_regenerating_with_other_arguments_keeps_the_users_files(tmp_path, capsys, force):
    """Only the files a demo set consists of are replaced: a person's notes, own image and sub-folder stay."""
    from cxrcore.cli import main

    out = tmp_path / "demo"
    base = ["demo", "--out", str(out), "--size", "64", "--workers", "1", "--quiet"]
    assert main([*base, "--images", "50"]) == 0
    (out / "notes.txt").write_text("my notes")
    (out / "mine").mkdir()
    (out / "mine" / "result.csv").write_text("a,b\n")
    (out / "images" / "my_scan.png").write_bytes(b"my own image")
    assert main([*base, "--images", "60", *(["--force"] if force else [])]) == 0
    assert is_complete(out, DemoConfig(images=60, size=64))
    assert (out / "notes.txt").read_text() == "my notes" and (out / "mine" / "result.csv").read_text() == "a,b\n"
    assert (out / "images" / "my_scan.png").read_bytes() == b"my own image"
    assert main(base[:-1] + ["--images", "60"]) == 0 and "already complete" in capsys.readouterr().out
    # a file of the person's named like an image of the new set: refused, nothing lost
    taken = out / "images" / plan_cohort(DemoConfig(images=70, size=64)).frame["Image"].iloc[-1]
    assert not taken.exists()
    taken.write_bytes(b"also mine")
    assert main([*base, "--images", "70"]) == 2
    assert "refusing to replace it" in capsys.readouterr().err and taken.read_bytes() == b"also mine"


@pytest.mark.parametrize("bad", [["--size", "4096"], ["--prevalence", "Foo=0.1"], ["--workers", "0"]])
def test_cli_invalid_arguments_exit_2_with_one_line(tmp_path, capsys, bad):
    from cxrcore.cli import main

    assert main(["demo", "--out", str(tmp_path / "d"), "--images", "50", *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()


def test_demo_command_module_imports_no_heavy_library():
    code = ("import sys, argparse, cxrcore.commands.demo as d; d.add_arguments(argparse.ArgumentParser()); "
            "print(sorted(m for m in ('cv2', 'tensorflow', 'sklearn', 'scipy', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout.strip()
    assert json.loads(out.replace("'", '"')) == []


def test_card_reports_the_one_click_models_leak_gap_per_seed():
    cohort = plan_cohort(SMALL)
    one = {"command": "python -m cxrcore train --preset demo --dataset data/demo --set seed=N", "lesson_shown": True,
           "measured_on": "2030-01-03", "bench": "python bench/bench_demo_teaching.py --one-click-only",
           "runs": [{"seed": 0, "valid": 0.861, "valid_leaky": 0.905, "gap": 0.044, "seconds": 171.0}]}
    results = {"measured_on": "2030-01-02", "command": "python bench/bench_demo_teaching.py", "config": SMALL.to_dict(),
               "model": "tiny", "epochs": 3, "image_size": 64, "train_seconds": 12.0, "distinct_mean_auroc_test": 0.9,
               "all_mean_auroc_test": 0.8, "valid_mean_auroc": 0.81, "valid_leaky_mean_auroc": 0.86, "leak_gap": 0.05,
               "one_click": one}
    card = build_card(cohort, pd.DataFrame(columns=["Image Index", "Finding Label", "x", "y", "w", "h"]),
                      teaching=results)
    assert "seed 0: valid 0.861, valid_leaky 0.905, gap +0.044, 171 s" in card and "met in every run" in card
    assert "--preset demo" in card and "only difference between the two validation splits" in card
