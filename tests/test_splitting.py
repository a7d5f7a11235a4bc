"""Patient-grouped stratified splitting, leak repair, output formats and the `split` command."""
from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrcore.audit.audit import count_leaked
from cxrcore.audit.splitting import (
    REPORT_JSON,
    REPORT_MD,
    assign_patients,
    balance_report,
    outputs_zip,
    parse_fractions,
    random_group_split,
    repair_leakage,
    resplit_same_sizes,
    same_size_fractions,
    stratified_group_split,
    stratify,
    validate_fractions,
    write_outputs,
)
from cxrcore.cli import main
from cxrcore.data.dataset import FORMAT_LIST, FORMAT_NIH, FORMAT_ONEHOT, load_split, load_table
from cxrcore.data.labels import LABELS
from cxrcore.errors import DatasetError, OutputError

ROOT = Path(__file__).resolve().parent.parent
FRACTIONS = {"train": 0.7, "valid": 0.1, "test": 0.2}
#: Per-patient probability of carrying each class: common ones, middling ones and rare ones.
PATIENT_RATE = np.array([0.25, 0.08, 0.10, 0.06, 0.25, 0.06, 0.04, 0.03, 0.35, 0.12, 0.12, 0.07, 0.04, 0.10])


def make_rows(patients: int = 300, seed: int = 0) -> pd.DataFrame:
    """One-hot rows with NIH-style names: 1-8 images per patient, labels clustered within patients."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(1, patients + 1):
        carries = rng.random(len(LABELS)) < PATIENT_RATE
        for follow_up in range(int(rng.integers(1, 9))):
            labels = (carries & (rng.random(len(LABELS)) < 0.6)).astype(int)
            rows.append([f"{patient:08d}_{follow_up:03d}.png", *labels, patient,
                         int(rng.integers(20, 80))])
    return pd.DataFrame(rows, columns=["Image", *LABELS, "PatientId", "Age"])


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def onehot(tmp_path_factory) -> Path:
    return write_csv(make_rows(), tmp_path_factory.mktemp("onehot") / "labels.csv")


def to_nih(frame: pd.DataFrame) -> pd.DataFrame:
    findings = ["|".join(l for l, v in zip(LABELS, row) if v) or "No Finding"
                for row in frame[list(LABELS)].to_numpy()]
    return pd.DataFrame({"Image Index": frame["Image"], "Finding Labels": findings,
                         "Follow-up #": frame["Image"].str.slice(9, 12).astype(int),
                         "Patient ID": frame["PatientId"], "Patient Age": frame["Age"],
                         "Patient Gender": np.where(frame["PatientId"] % 2 == 0, "M", "F"),
                         "View Position": "PA"})


def patient_sets(splits) -> list[set[int]]:
    return [set(s.patients.tolist()) for s in splits]


def mean_abs_deviation(splits) -> float:
    report = balance_report("stratify", list(splits), list(splits))
    return float(np.mean([np.abs(b.deviation).mean() for b in report.after]))


# ---------------------------------------------------------------------------------------------
# Stratified split


def test_split_is_patient_disjoint_complete_and_sized(onehot):
    split = load_split(onehot)
    out = stratified_group_split(split, FRACTIONS, seed=0)
    assert list(out) == ["train", "valid", "test"]
    sets = patient_sets(out.values())
    for a, b in itertools.combinations(sets, 2):
        assert not a & b
    images = np.concatenate([s.images for s in out.values()])
    assert sorted(images) == sorted(split.images)
    for name, part in out.items():
        assert abs(len(part) / len(split) - FRACTIONS[name]) < 0.02, (name, len(part))
        assert part.format == FORMAT_ONEHOT and part.name == name


def test_stratified_is_more_even_than_random_patient_split(onehot):
    split = load_split(onehot)
    stratified = [mean_abs_deviation(stratified_group_split(split, FRACTIONS, seed).values()) for seed in range(5)]
    random = [mean_abs_deviation(random_group_split(split, FRACTIONS, seed).values()) for seed in range(5)]
    assert np.mean(stratified) < 0.5 * np.mean(random), (stratified, random)
    # The random baseline is also patient-disjoint and sized by images.
    parts = random_group_split(split, FRACTIONS, 0)
    assert not set.intersection(*patient_sets([parts["train"], parts["test"]]))


def test_rare_class_reaches_every_split(tmp_path):
    frame = make_rows(patients=200, seed=3)
    frame["Hernia"] = 0
    carriers = [5, 17, 40, 77, 101, 150, 160, 199]  # 8 patients, 2 images each with Hernia
    for patient in carriers:
        rows = frame.index[frame.PatientId == patient][:2]
        frame.loc[rows, "Hernia"] = 1
    split = load_split(write_csv(frame, tmp_path / "rare.csv"))
    for seed in range(3):
        out = stratified_group_split(split, FRACTIONS, seed)
        hernia = {n: int(s.frame["Hernia"].sum()) for n, s in out.items()}
        assert all(v > 0 for v in hernia.values()), hernia
        assert sum(hernia.values()) == int(frame["Hernia"].sum())


def test_deterministic_for_a_seed_and_independent_of_row_order(onehot, tmp_path):
    split = load_split(onehot)
    first = {n: sorted(s.images) for n, s in stratified_group_split(split, FRACTIONS, 7).items()}
    again = {n: sorted(s.images) for n, s in stratified_group_split(split, FRACTIONS, 7).items()}
    assert first == again
    shuffled = pd.read_csv(onehot).sample(frac=1.0, random_state=1)
    reordered = load_split(write_csv(shuffled, tmp_path / "shuffled.csv"))
    moved = {n: sorted(s.images) for n, s in stratified_group_split(reordered, FRACTIONS, 7).items()}
    assert moved == first
    others = [{n: sorted(s.images) for n, s in stratified_group_split(split, FRACTIONS, seed).items()}
              for seed in (8, 9)]
    assert any(o != first for o in others)


def test_tied_demand_is_broken_by_image_demand_then_seed():
    # Patient 0 carries the rarest class (one patient) and has 3 images; patients 1 (2 positives, placed
    # first) and 2 carry class 1. Class-1 demand is tied after patient 0 is placed, so patient 1 goes where
    # more images are wanted: the split without patient 0, whatever the seed; patient 2 then follows the
    # class-1 demand. Patient 0's own placement is an exact tie on everything: the seed decides.
    counts = np.array([[1, 0], [0, 2], [0, 1]])
    images = np.array([3, 2, 1])
    runs = [assign_patients(counts, images, np.array([0.5, 0.5]), seed=s) for s in range(20)]
    for a in runs:
        assert a[1] != a[0] and a[2] == a[0]
    assert {int(a[0]) for a in runs} == {0, 1}


@pytest.mark.parametrize("fractions, message", [
    ({"train": 0.7, "test": 0.2}, "add up to 0.9"),
    ({"train": 70, "test": 30}, "percentages"),
    ({"train": 1.2, "test": -0.2}, "positive"),
    ({"train": 1.0, "test": 0.0}, "positive"),
    ({"train": 1.0}, "at least two"),
    ({"train": 0.5, "Train": 0.5}, "used twice"),
    ({"../evil": 0.5, "test": 0.5}, "not a plain name"),
    ({"a/b": 0.5, "test": 0.5}, "not a plain name"),
    ({"nul": 0.5, "test": 0.5}, "not a plain name"),
    ({"train": "x", "test": 0.5}, "not a number"),
    ({"train": float("nan"), "test": 0.5}, "positive"),
])
def test_invalid_fractions_are_refused(fractions, message):
    with pytest.raises(DatasetError, match=message):
        validate_fractions(fractions)


def test_parse_fractions():
    assert parse_fractions(" train=0.7, valid=0.1 ,test=0.2") == FRACTIONS
    assert parse_fractions("a=0.3333333,b=0.3333333,c=0.3333334") == {"a": 0.3333333, "b": 0.3333333, "c": 0.3333334}
    for bad in ("train=0.7,valid", "train=0.5,train=0.5", "=0.5,b=0.5", "train:0.7,test:0.3"):
        with pytest.raises(DatasetError):
            parse_fractions(bad)


def test_bad_seed(onehot):
    for seed in (-1, 1.5, "3"):
        with pytest.raises(DatasetError, match="seed"):
            stratified_group_split(load_split(onehot), FRACTIONS, seed)


def test_too_few_patients(tmp_path):
    split = load_split(write_csv(make_rows(patients=2), tmp_path / "tiny.csv"))
    with pytest.raises(DatasetError, match="too few"):
        stratified_group_split(split, FRACTIONS, 0)


# ---------------------------------------------------------------------------------------------
# Repair


def hand_made_splits(tmp_path: Path):
    """Patient 1: train 3 / valid 1; 2: train 1 / test 2; 3: valid 2 / test 2 (tie);
    4: one image in each (tie of three); 5, 6, 7: clean, one split each."""
    layout = {"train": {1: 3, 2: 1, 4: 1, 5: 2}, "valid": {1: 1, 3: 2, 4: 1, 6: 1}, "test": {2: 2, 3: 2, 4: 1, 7: 3}}
    follow = itertools.count()
    paths = {}
    for name, patients in layout.items():
        rows = []
        for patient, n in patients.items():
            for _ in range(n):
                labels = [1 if (patient + i) % 5 == 0 else 0 for i in range(len(LABELS))]
                rows.append([f"{patient:08d}_{next(follow):03d}.png", *labels, patient])
        paths[name] = write_csv(pd.DataFrame(rows, columns=["Image", *LABELS, "PatientId"]), tmp_path / f"{name}.csv")
    return layout, [load_split(p, split_name=n) for n, p in paths.items()], paths


def brute_force_minimum(layout: dict[str, dict[int, int]]) -> int:
    names = list(layout)
    patients = sorted({p for d in layout.values() for p in d})
    best = None
    for choice in itertools.product(range(len(names)), repeat=len(patients)):
        moves = sum(n for p, j in zip(patients, choice) for k, name in enumerate(names)
                    if k != j for pp, n in layout[name].items() if pp == p)
        best = moves if best is None else min(best, moves)
    return best


def test_repair_moves_the_fewest_images(tmp_path):
    layout, splits, _ = hand_made_splits(tmp_path)
    assert count_leaked(splits)[0] == 4
    result = repair_leakage(splits)
    assert count_leaked(result.splits) == (0, 0)
    assert result.moved_images == brute_force_minimum(layout) == 1 + 1 + 2 + 2
    assert result.moved_patients == 4
    moves = {(m.source, m.target): (m.patients, m.images) for m in result.moves}
    # 1 -> train (3 vs 1); 2 -> test (2 vs 1); 3 -> valid (tie, valid listed before test); 4 -> train (3-way tie)
    assert moves == {("valid", "train"): (2, 2), ("train", "test"): (1, 1), ("test", "valid"): (1, 2),
                     ("test", "train"): (1, 1)}
    kept = dict(zip(result.assignment["PatientId"], result.assignment["split"]))
    assert kept == {1: "train", 2: "test", 3: "valid", 4: "train"}
    by_name = result.by_name
    assert set(by_name["train"].patients) == {1, 4, 5}
    assert set(by_name["valid"].patients) == {3, 6}
    assert set(by_name["test"].patients) == {2, 7}
    total = sum(len(s) for s in splits)
    assert sum(len(s) for s in result.splits) == total
    report = result.report.to_dict()
    assert report["before"]["leaked_patients"] == 4 and report["after"]["leaked_patients"] == 0
    assert report["moved_images"] == 6


def test_repair_priority_breaks_ties(tmp_path):
    _, splits, _ = hand_made_splits(tmp_path)
    result = repair_leakage(splits, priority=["test", "valid"])
    kept = dict(zip(result.assignment["PatientId"], result.assignment["split"]))
    assert kept == {1: "train", 2: "test", 3: "test", 4: "test"}  # counts still win over priority
    assert result.moved_images == 6
    assert result.report.priority == ["test", "valid", "train"]
    with pytest.raises(DatasetError, match="not one of"):
        repair_leakage(splits, priority=["holdout"])


def test_repair_of_clean_splits_moves_nothing(tmp_path):
    frame = make_rows(patients=30)
    a = write_csv(frame[frame.PatientId <= 20], tmp_path / "a.csv")
    b = write_csv(frame[frame.PatientId > 20], tmp_path / "b.csv")
    result = repair_leakage([load_split(a), load_split(b)])
    assert result.moved_images == 0 and result.moves == []
    assert "Nothing to repair" in result.report.verdict()
    with pytest.raises(DatasetError, match="at least two"):
        repair_leakage([load_split(a)])


def test_repair_drops_duplicate_images_and_mixed_layouts_fall_back(tmp_path):
    frame = make_rows(patients=10)
    train = frame[frame.PatientId <= 6]
    test_rows = pd.concat([frame[frame.PatientId > 6], train[train.PatientId == 1].iloc[:1]])  # shared image
    train_path = write_csv(train, tmp_path / "train.csv")
    test_path = write_csv(to_nih(test_rows), tmp_path / "test_nih.csv")
    result = repair_leakage([load_split(train_path, split_name="train"), load_split(test_path, split_name="test")])
    assert count_leaked(result.splits) == (0, 0)
    out = result.by_name["train"]
    assert out.frame["Image"].is_unique
    assert len(out) == len(train)
    assert out.format == FORMAT_ONEHOT and result.by_name["test"].format == FORMAT_NIH  # test received nothing
    notes = " ".join(result.report.notes)
    assert "duplicate image row" in notes and "different layouts" in notes
    paths = write_outputs(result, tmp_path / "out")
    reloaded = load_split(paths[0])
    assert sorted(reloaded.images) == sorted(out.images)


def test_a_split_emptied_by_repair_gets_no_file(tmp_path):
    """Every patient of 'valid' has more images in train: valid ends empty, and a header-only file
    (which could not be loaded back) is not written; the report says so."""
    frame = make_rows(patients=12)
    counts = frame.PatientId.value_counts()
    valid = frame[frame.PatientId == int(counts[counts >= 3].index[0])].iloc[:1]
    train = frame.drop(valid.index)
    splits = [load_split(write_csv(train, tmp_path / "train.csv"), split_name="train"),
              load_split(write_csv(valid, tmp_path / "valid.csv"), split_name="valid")]
    result = repair_leakage(splits)
    assert len(result.by_name["valid"]) == 0
    paths = write_outputs(result, tmp_path / "out")
    assert [p.name for p in paths] == ["train.csv", REPORT_JSON, REPORT_MD]
    assert not (tmp_path / "out" / "valid.csv").exists()
    assert any("valid' is empty after repair" in n and "no file is written" in n for n in result.report.notes)
    assert len(load_split(paths[0])) == len(train) + len(valid)


def built_to_leak(tmp_path: Path, patients: int = 90):
    """The demo's layout: train/valid/test by patient, and valid_leaky = one follow-up of many train patients."""
    frame = make_rows(patients=patients)
    n_train, n_valid = int(patients * 0.7), int(patients * 0.12)
    train = frame[frame.PatientId <= n_train]
    valid = frame[(frame.PatientId > n_train) & (frame.PatientId <= n_train + n_valid)]
    test = frame[frame.PatientId > n_train + n_valid]
    many = train.groupby("PatientId").filter(lambda g: len(g) >= 2)
    leaky = many.groupby("PatientId").tail(1)
    train = train.drop(leaky.index)
    parts = {"train": train, "valid": valid, "test": test, "valid_leaky": leaky}
    paths = {n: write_csv(f, tmp_path / f"{n}.csv") for n, f in parts.items()}
    return [load_split(p, split_name=n) for n, p in paths.items()], paths


def test_a_repair_that_would_drain_a_split_says_so_and_the_resplit_keeps_sizes(tmp_path):
    splits, _ = built_to_leak(tmp_path)
    sizes = {s.name: len(s) for s in splits}
    result = repair_leakage(splits)
    report = result.report
    assert report.drained() == [("valid_leaky", sizes["valid_leaky"], 0)]
    verdict = report.verdict()
    assert "drains a split ('valid_leaky' keeps 0 of its" in verdict and "Re-split by patient keeping" in verdict
    assert any("--fractions train=" in w and "valid_leaky=" in w for w in report.warnings)
    assert report.to_dict()["drained"] == [{"split": "valid_leaky", "images_before": sizes["valid_leaky"],
                                            "images_after": 0}]
    shares = same_size_fractions(splits)
    assert abs(sum(shares.values()) - 1) < 1e-12 and list(shares) == list(sizes)
    resplit = resplit_same_sizes(splits)
    assert [s.name for s in resplit.splits] == list(sizes)
    assert count_leaked(resplit.splits) == (0, 0)
    total = sum(sizes.values())
    for split in resplit.splits:  # each split keeps about its size (whole patients of 1-6 images move)
        assert abs(len(split) - sizes[split.name]) <= max(8, 0.25 * sizes[split.name]), (split.name, len(split))
    assert sum(len(s) for s in resplit.splits) == total
    assert not resplit.report.drained()


def test_a_repair_that_keeps_half_of_a_split_is_not_draining(tmp_path):
    layout, splits, _ = hand_made_splits(tmp_path)
    report = repair_leakage(splits).report
    assert report.drained() == [] and report.to_dict()["drained"] == []
    assert "drains" not in report.verdict()


def test_cli_repair_reports_the_drained_split(tmp_path, capsys):
    _, paths = built_to_leak(tmp_path)
    args = ["split", "--repair", *[a for n, p in paths.items() for a in ("--split", f"{n}={p}")],
            "--out", str(tmp_path / "fixed"), "--format", "json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["drained"][0]["split"] == "valid_leaky" and data["drained"][0]["images_after"] == 0
    fractions = next(w for w in data["warnings"] if "--fractions" in w).split("--fractions ")[1].rstrip(".")
    # the suggested command works and keeps the four names
    inputs = [a for p in paths.values() for a in ("--input", str(p))]
    assert main(["split", *inputs, "--fractions", fractions, "--out", str(tmp_path / "resplit"),
                 "--format", "json"]) == 0
    resplit = json.loads(capsys.readouterr().out)
    assert list(resplit["after"]["splits"]) == list(paths) and resplit["after"]["leaked_patients"] == 0


# ---------------------------------------------------------------------------------------------
# Output files


def test_onehot_outputs_round_trip(onehot, tmp_path):
    result = stratify(load_split(onehot), FRACTIONS, seed=1)
    paths = write_outputs(result, tmp_path / "out")
    assert [p.name for p in paths] == ["train.csv", "valid.csv", "test.csv", REPORT_JSON, REPORT_MD]
    header = list(pd.read_csv(onehot, nrows=0).columns)
    for split, path in zip(result.splits, paths):
        assert list(pd.read_csv(path, nrows=0).columns) == header
        back = load_split(path)
        assert back.format == FORMAT_ONEHOT
        assert back.images.tolist() == split.images.tolist()
        assert np.array_equal(back.labels, split.labels)
        assert back.frame["Age"].astype(int).tolist() == split.frame["Age"].astype(int).tolist()
    report = json.loads((tmp_path / "out" / REPORT_JSON).read_text())
    assert report["files"] == [p.name for p in paths]
    assert "| class |" in (tmp_path / "out" / REPORT_MD).read_text()


def test_nih_outputs_round_trip(tmp_path):
    frame = make_rows(patients=80, seed=2)
    table_path = write_csv(to_nih(frame), tmp_path / "Data_Entry_2017.csv")
    table = load_split(table_path)
    assert table.format == FORMAT_NIH
    result = stratify(table, {"train": 0.8, "test": 0.2}, seed=0)
    paths = write_outputs(result, tmp_path / "out")
    for split, path in zip(result.splits, paths):
        assert list(pd.read_csv(path, nrows=0).columns) == list(pd.read_csv(table_path, nrows=0).columns)
        back = load_split(path)
        assert back.format == FORMAT_NIH
        assert back.images.tolist() == split.images.tolist()
        assert np.array_equal(back.labels, split.labels)


def test_list_outputs_round_trip_and_pooling(tmp_path):
    frame = make_rows(patients=60, seed=4)
    table_path = write_csv(to_nih(frame), tmp_path / "Data_Entry_2017.csv")
    names = frame["Image"].tolist()
    (tmp_path / "train_val_list.txt").write_text("\n".join(names[: len(names) * 3 // 4]) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(names[len(names) * 3 // 4 - 5:]) + "\n")  # 5 shared
    table = load_table(table_path)
    inputs = [load_split(tmp_path / "train_val_list.txt", split_name="train", label_table=table),
              load_split(tmp_path / "test_list.txt", split_name="test", label_table=table)]
    assert count_leaked(inputs)[0] > 0
    result = stratify(inputs, {"train": 0.75, "test": 0.25}, seed=3)
    assert sum(len(s) for s in result.splits) == len(frame)  # the 5 shared images are kept once
    assert count_leaked(result.splits) == (0, 0)
    assert result.report.leaked_before[0] > 0
    paths = write_outputs(result, tmp_path / "out")
    assert [p.name for p in paths[:2]] == ["train.txt", "test.txt"]
    for split, path in zip(result.splits, paths):
        assert split.format == FORMAT_LIST
        back = load_split(path, label_table=table)
        assert back.images.tolist() == split.images.tolist()
        assert np.array_equal(back.labels, split.labels)
    assert any("label table" in n for n in result.report.notes)


def test_outputs_never_overwrite_inputs_and_zip(tmp_path):
    _, splits, paths = hand_made_splits(tmp_path)
    result = repair_leakage(splits)
    with pytest.raises(OutputError, match="overwrite an input"):
        write_outputs(result, tmp_path, protect=paths.values())
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        write_outputs(result, tmp_path / "afile")
    data = outputs_zip(result)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["train.csv", "valid.csv", "test.csv", REPORT_JSON, REPORT_MD]
        report = json.loads(archive.read(REPORT_JSON))
        assert report["mode"] == "repair" and report["after"]["leaked_patients"] == 0
        repaired = pd.read_csv(io.BytesIO(archive.read("valid.csv")))
        assert set(repaired["PatientId"]) == {3, 6}


def test_report_renders(onehot):
    result = stratify(load_split(onehot), FRACTIONS, seed=0)
    text = result.report.render("text")
    markdown = result.report.render("markdown")
    data = json.loads(result.report.render("json"))
    assert "no patient is in two splits" in text and "Hernia" in text
    assert markdown.startswith("# Stratified split")
    after = data["after"]["splits"]
    assert list(after) == ["train", "valid", "test"]
    assert abs(sum(s["share"] for s in after.values()) - 1) < 1e-9
    assert data["after"]["max_abs_deviation"] == max(s["max_abs_deviation"] for s in after.values())
    assert data["fractions"] == FRACTIONS and data["seed"] == 0


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_new_split_json(onehot, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["split", "--input", str(onehot), "--fractions", "train=0.7,valid=0.1,test=0.2", "--seed", "3",
                 "--out", str(out), "--format", "json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert {"mode", "verdict", "seed", "fractions", "overall", "before", "after", "moves", "moved_images",
            "files", "notes", "warnings"} <= set(data)
    assert data["mode"] == "stratify" and data["seed"] == 3 and data["after"]["leaked_patients"] == 0
    assert {"rows", "patients", "share", "target_fraction", "prevalence", "max_abs_deviation",
            "worst_class"} <= set(data["after"]["splits"]["valid"])
    assert sorted(p.name for p in out.iterdir()) == sorted(["train.csv", "valid.csv", "test.csv", REPORT_JSON,
                                                            REPORT_MD])


def test_cli_repair_text_and_json(tmp_path, capsys):
    _, _, paths = hand_made_splits(tmp_path)
    args = ["split", "--repair", *[a for n, p in paths.items() for a in ("--split", f"{n}={p}")],
            "--out", str(tmp_path / "fixed")]
    assert main([*args, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["moved_images"] == 6 and data["before"]["leaked_patients"] == 4
    assert {"from", "to", "patients", "images"} == set(data["moves"][0])
    assert main([*args, "--priority", "test", "--format", "markdown"]) == 0
    assert "## Moves" in capsys.readouterr().out
    # Writing into the inputs' folder would overwrite them.
    assert main([*args[:-1], str(tmp_path)]) == 2
    assert "overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [
    ["--fractions", "train=0.7,test=0.2"],
    ["--fractions", "train=0.7,../x=0.3"],
    ["--fractions", "train=0.7,test=0.3", "--split", "a=b.csv"],
    ["--fractions", "train=0.7,test=0.3", "--seed", "-1"],
    [],
])
def test_cli_invalid_input_exits_2(onehot, tmp_path, capsys, extra):
    assert main(["split", "--input", str(onehot), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_cli_subprocess_one_line(onehot, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cxrcore", "split", "--input", str(onehot), "--fractions",
                           "train=0.6,test=0.6", "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "add up to 1.2" in proc.stderr
    assert "Traceback" not in proc.stderr

