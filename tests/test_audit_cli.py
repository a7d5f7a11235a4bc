"""`python -m cxrcore audit`: exit 0 clean, 1 leaking, 2 invalid input with exactly one line on stderr
and never a traceback; NAME=TABLE@LIST; the JSON contract; no TensorFlow import."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrcore.cli import main
from cxrcore.data.labels import LABELS
from tests.csv_corpus import (near_copy, nih_frame, onehot_frame, smooth_image, write_csv, write_list,
                              write_png)

ROOT = Path(__file__).resolve().parent.parent


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(["audit", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _subprocess(argv: list[str], *python_flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *python_flags, "-m", "cxrcore", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def files(tmp_path):
    """Course CSVs (clean train/val/test and a leaky val) and an NIH table with two list files."""
    d = tmp_path
    out = {
        "train": write_csv(onehot_frame(range(1, 41), seed=1), d / "train.csv"),
        "val": write_csv(onehot_frame(range(41, 51), seed=2), d / "val.csv"),
        "test": write_csv(onehot_frame(range(51, 61), seed=3), d / "test.csv"),
        "leaky": write_csv(onehot_frame([*range(41, 51), 7, 8, 9], seed=4), d / "leaky_val.csv"),
    }
    table = nih_frame(range(1, 31), seed=5)
    out["nih"] = write_csv(table, d / "Data_Entry_2017_v2020.csv.gz", gz=True)
    names = table["Image Index"].tolist()
    out["trainlist"] = write_list(d / "train_val_list.txt", names[:40])   # patients 1-20
    out["testlist"] = write_list(d / "test_list.txt", names[40:])         # patients 21-30
    out["leakylist"] = write_list(d / "leaky_list.txt", names[38:])       # patient 20 in both
    return out


def test_clean_splits_exit_0_with_a_text_report(files, capsys):
    code, out, err = _run(["--split", f"train={files['train']}", "--split", f"val={files['val']}",
                           "--split", f"test={files['test']}"], capsys)
    assert code == 0, err
    assert out.startswith("SPLIT AUDIT") and "Clean: no patient or image is shared" in out
    assert "Class balance: test" in out and err == ""


def test_leaking_splits_exit_1(files, capsys):
    code, out, _ = _run(["--split", f"train={files['train']}", "--split", f"val={files['leaky']}"], capsys)
    assert code == 1 and "Leaking: 3 patient(s)" in out


def test_json_contract(files, capsys):
    code, out, _ = _run(["--split", f"train={files['train']}", "--split", f"val={files['leaky']}",
                         "--split", f"test={files['test']}", "--format", "json"], capsys)
    assert code == 1
    data = json.loads(out)
    assert data["leak_free"] is False
    assert data["splits"]["train"]["rows"] == 80 and data["splits"]["train"]["patients"] == 40
    assert data["splits"]["val"]["rows"] == 26 and data["splits"]["val"]["patients"] == 13
    y = onehot_frame(range(1, 41), seed=1)[list(LABELS)].to_numpy()
    for i, label in enumerate(LABELS):
        entry = data["splits"]["train"]["classes"][label]
        assert set(entry) >= {"positives", "pos_freq", "neg_freq", "w_pos", "w_neg"}
        assert entry["positives"] == int(y[:, i].sum())
        assert entry["pos_freq"] == pytest.approx(y[:, i].mean())
        assert entry["w_pos"] == pytest.approx(entry["neg_freq"]) and entry["w_neg"] == pytest.approx(entry["pos_freq"])
    leaks = {(leak["a"], leak["b"]): leak for leak in data["leakage"]}
    assert set(leaks) == {("train", "val"), ("train", "test"), ("val", "test")}
    for leak in data["leakage"]:
        assert set(leak) >= {"a", "b", "patients", "images", "patient_ids"}
    assert leaks[("train", "val")]["patients"] == 3 and leaks[("train", "val")]["patient_ids"] == [7, 8, 9]
    assert leaks[("train", "val")]["images"] == 6
    assert leaks[("train", "test")]["patients"] == 0 and leaks[("train", "test")]["patient_ids"] == []


def test_table_at_list_specs(files, capsys):
    table = files["nih"]
    code, out, err = _run(["--split", f"train={table}@{files['trainlist']}",
                           "--split", f"test={table}@{files['testlist']}", "--format", "json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["leak_free"] is True
    assert data["splits"]["train"]["rows"] == 40 and data["splits"]["test"]["patients"] == 10
    assert data["splits"]["train"]["source"] == f"{table}@{files['trainlist']}"
    assert data["metadata_shift"], "age/sex/view come from the NIH table"
    code, out, _ = _run(["--split", f"train={table}@{files['trainlist']}",
                         "--split", f"test={table}@{files['leakylist']}", "--format", "json"], capsys)
    data = json.loads(out)
    assert code == 1 and data["leakage"][0]["patient_ids"] == [20] and data["leakage"][0]["images"] == 2


def test_markdown_format(files, capsys):
    code, out, _ = _run(["--split", f"a={files['train']}", "--split", f"b={files['leaky']}",
                         "--format", "markdown"], capsys)
    assert code == 1 and out.startswith("# Split audit") and "| a | b | 3 | 6 | 7, 8, 9 |" in out


def test_image_checks_from_the_cli(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    train = onehot_frame([1, 2], per_patient=1)
    test = onehot_frame([3, 4], per_patient=1)
    for seed, name in enumerate(train["Image"]):
        write_png(images / name, smooth_image(seed))
    write_png(images / test["Image"][0], near_copy(smooth_image(0)))  # patient 3's image is patient 1's
    write_csv(train, tmp_path / "train.csv")
    write_csv(test, tmp_path / "test.csv")
    argv = ["--split", f"train={tmp_path / 'train.csv'}", "--split", f"test={tmp_path / 'test.csv'}",
            "--images", str(images), "--format", "json"]
    code, out, err = _run(argv, capsys)
    data = json.loads(out)
    assert code == 1 and data["leak_free"] is False and data["leakage"][0]["patients"] == 0
    assert data["images"]["missing"] == {"test": [test["Image"][1]]}
    [pair] = data["images"]["duplicates_across_splits"]
    assert (pair["image_a"], pair["image_b"]) == (train["Image"][0], test["Image"][0])
    assert "hashing images: 4/4" in err  # progress goes to stderr, stdout stays pure JSON
    code, out, err = _run([*argv, "--quiet", "--near-threshold", "0"], capsys)
    assert err == "" and json.loads(out)["images"]["near_threshold"] == 0


def _bad_inputs(tmp_path: Path) -> dict[str, list[str]]:
    good = write_csv(onehot_frame([1, 2]), tmp_path / "good.csv")
    bad_label = onehot_frame([3, 4]).astype({"Mass": object})
    bad_label.loc[1, "Mass"] = "-1"
    semicolon = tmp_path / "semi.csv"
    semicolon.write_text(onehot_frame([5]).to_csv(index=False, sep=";"))
    damaged = bytearray(gzip.compress(onehot_frame(range(1, 300)).to_csv(index=False).encode()))
    damaged[20:28] = b"\xff" * 8
    (tmp_path / "damaged.csv.gz").write_bytes(bytes(damaged))
    write_list(tmp_path / "list.txt", ["00000001_000.png", "00000999_000.png"])
    (tmp_path / "latin.csv").write_bytes(onehot_frame([6], extra={"n": "é"}).to_csv(index=False).encode("latin-1"))
    return {
        "missing file": ["--split", f"a={tmp_path / 'nope.csv'}"],
        "bad label": ["--split", f"a={good}", "--split", f"b={write_csv(bad_label, tmp_path / 'b.csv')}"],
        "delimiter": ["--split", f"a={semicolon}"],
        "encoding": ["--split", f"a={tmp_path / 'latin.csv'}"],
        "damaged gzip": ["--split", f"a={tmp_path / 'damaged.csv.gz'}"],
        "list without table": ["--split", f"a={tmp_path / 'list.txt'}"],
        "list not in table": ["--split", f"a={good}@{tmp_path / 'list.txt'}"],
        "same name twice": ["--split", f"a={good}", "--split", f"a={good}"],
        "bad spec": ["--split", "=x.csv"],
        "no image folder": ["--split", f"a={good}", "--images", str(tmp_path / "no_images")],
        "threshold": ["--split", f"a={good}", "--images", str(tmp_path), "--near-threshold", "40"],
        "folder as table": ["--split", f"a={tmp_path}"],
    }


BAD = ["missing file", "bad label", "delimiter", "encoding", "damaged gzip", "list without table",
       "list not in table", "same name twice", "bad spec", "no image folder", "threshold", "folder as table"]


@pytest.mark.parametrize("case", BAD)
def test_invalid_input_exits_2_with_one_line(case, tmp_path, capsys):
    code, out, err = _run(_bad_inputs(tmp_path)[case], capsys)
    assert code == 2 and out == ""
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and err.endswith("\n")
    assert "Fix:" in err


@pytest.mark.parametrize("case", ["bad label", "damaged gzip", "list not in table"])
def test_invalid_input_in_a_real_process(case, tmp_path):
    result = _subprocess(["audit", *_bad_inputs(tmp_path)[case]])
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


def test_bad_label_error_names_file_line_and_column(tmp_path, capsys):
    _, _, err = _run(_bad_inputs(tmp_path)["bad label"], capsys)
    assert f"{tmp_path / 'b.csv'}, line 3, column 'Mass': has uncertainty labels (-1)." in err


@pytest.mark.parametrize("argv", [["--split"], ["--format", "xml", "--split", "a=x.csv"], []])
def test_usage_errors_exit_2_without_traceback(argv):
    result = _subprocess(["audit", *argv])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error:" in result.stderr.splitlines()[-1]


def test_usage_errors_are_one_line():
    result = _subprocess(["audit", "--format", "xml", "--split", "a=x.csv"])
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "invalid choice" in result.stderr


def test_module_entry_point_prints_pure_json_and_never_imports_tensorflow(files, tmp_path):
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(
        "import runpy, sys, json\n"
        "sys.argv = ['cxrcore', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('cxrcore', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    heavy = sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'torch', 'streamlit', 'sklearn')\n"
        "                   if m in sys.modules)\n"
        "    sys.stderr.write('HEAVY=' + json.dumps(heavy) + '\\n')\n"
        "    raise\n")
    argv = ["audit", "--split", f"train={files['nih']}@{files['trainlist']}",
            "--split", f"test={files['nih']}@{files['testlist']}", "--format", "json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(wrapper), *argv], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["leak_free"] is True
    assert "HEAVY=[]" in result.stderr
    timed = _subprocess(argv, "-X", "importtime")
    assert timed.returncode == 0
    imported = {line.split("|")[-1].strip() for line in timed.stderr.splitlines() if line.startswith("import time:")}
    assert "cxrcore.audit.audit" in imported and "pandas" in imported  # the log is real
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "keras", "tf_keras")}
    assert np.isfinite(json.loads(timed.stdout)["splits"]["train"]["classes"]["Mass"]["w_pos"])
