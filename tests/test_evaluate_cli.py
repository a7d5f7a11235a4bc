"""`evaluate` and `compare` commands: exit codes, text tables, JSON keys, one-line errors."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrcore.cli import main
from cxrcore.data.labels import LABELS
from cxrcore.data.predictions import write_predictions

ROOT = Path(__file__).resolve().parent.parent
N = 300


@pytest.fixture()
def data(tmp_path):
    """Course-format labels (Image, 14 labels, PatientId) and two models' prediction files."""
    rng = np.random.default_rng(0)
    names = [f"{i // 3 + 1:08d}_{i % 3:03d}.png" for i in range(N)]
    y = (rng.random((N, len(LABELS))) < 0.25).astype(int)
    frame = pd.DataFrame({"Image": names})
    for i, label in enumerate(LABELS):
        frame[label] = y[:, i]
    frame["PatientId"] = [i // 3 + 1 for i in range(N)]
    frame.to_csv(tmp_path / "labels.csv", index=False)
    good = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + 2.0 * y - 1)))
    weak = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + 0.5 * y - 1)))
    write_predictions(tmp_path / "good.csv", names, good)
    write_predictions(tmp_path / "weak.csv", names, weak)
    return {"dir": tmp_path, "labels": str(tmp_path / "labels.csv"), "good": str(tmp_path / "good.csv"),
            "weak": str(tmp_path / "weak.csv"), "y": y, "p_good": good, "p_weak": weak, "names": names}


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_evaluate_text_table(data, capsys):
    code, out, err = _run(["evaluate", "--labels", data["labels"], "--predictions", data["good"],
                           "--bootstrap", "200"], capsys)
    assert code == 0, err
    for label in LABELS:
        assert label in out
    assert "Mean AUROC over 14 classes" in out and "95% CI" in out and "100 patients" in out
    auc = roc_auc_score(data["y"][:, 0], data["p_good"][:, 0])
    assert f"{auc:.3f}" in next(line for line in out.splitlines() if line.startswith("Atelectasis"))


def test_evaluate_json_keys_and_values(data, capsys):
    code, out, _ = _run(["evaluate", "--labels", data["labels"], "--predictions", data["good"],
                         "--bootstrap", "100", "--seed", "3", "--format", "json"], capsys)
    assert code == 0
    d = json.loads(out)
    for key in ("mean_auroc", "mean_auroc_ci_low", "mean_auroc_ci_high", "n_images", "n_patients", "bootstrap"):
        assert key in d
    assert d["n_images"] == N and d["n_patients"] == 100
    assert d["bootstrap"]["replicates"] == 100 and d["bootstrap"]["seed"] == 3
    m = d["classes"]["Mass"]
    for key in ("auroc", "ci_low", "ci_high", "auprc", "n_pos", "n_neg", "prevalence", "threshold",
                "sensitivity", "specificity", "sens_at_spec90", "brier"):
        assert key in m
    c = LABELS.index("Mass")
    assert m["auroc"] == pytest.approx(roc_auc_score(data["y"][:, c], data["p_good"][:, c]), abs=1e-9)
    assert m["ci_low"] <= m["auroc"] <= m["ci_high"]
    assert m["n_pos"] == int(data["y"][:, c].sum())
    # same seed, same output
    _, again, _ = _run(["evaluate", "--labels", data["labels"], "--predictions", data["good"],
                        "--bootstrap", "100", "--seed", "3", "--format", "json"], capsys)
    assert json.loads(again) == d


def test_evaluate_without_bootstrap_and_with_class_subset(data, capsys):
    path = data["dir"] / "two.csv"
    write_predictions(path, data["names"], data["p_good"][:, :2], labels=LABELS[:2])
    code, out, _ = _run(["evaluate", "--labels", data["labels"], "--predictions", str(path),
                         "--bootstrap", "0", "--format", "json"], capsys)
    d = json.loads(out)
    assert code == 0 and list(d["classes"]) == list(LABELS[:2])
    assert d["mean_auroc_ci_low"] is None and d["classes"]["Atelectasis"]["ci_low"] is None


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.replace("prob_Mass", "prob_Mas"), "did you mean 'prob_Mass'"),
    (lambda t: re.sub(r"(\n00000001_001\.png,)[^,]+", r"\1nan", t), "line 3, column 'prob_Atelectasis'"),
    (lambda t: t + "77777777_000.png" + ",0.5" * 14 + "\n", "not in the labels"),
    (lambda t: "\n".join(t.splitlines()[:-5]) + "\n", "have no prediction"),
])
def test_evaluate_invalid_input_exits_2_with_one_line(data, capsys, mutate, message):
    path = data["dir"] / "bad.csv"
    path.write_text(mutate(Path(data["good"]).read_text()))
    code, out, err = _run(["evaluate", "--labels", data["labels"], "--predictions", str(path)], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err


def test_evaluate_bad_bootstrap_and_missing_labels_exit_2(data, capsys):
    code, _, err = _run(["evaluate", "--labels", data["labels"], "--predictions", data["good"],
                         "--bootstrap", "-5"], capsys)
    assert code == 2 and "--bootstrap" in err
    code, _, err = _run(["evaluate", "--labels", str(data["dir"] / "missing.csv"), "--predictions", data["good"]],
                        capsys)
    assert code == 2 and "not found" in err


def test_evaluate_with_table_at_list_labels(data, capsys):
    (data["dir"] / "list.txt").write_text("\n".join(data["names"][:30]) + "\n")
    path = data["dir"] / "sub.csv"
    write_predictions(path, data["names"][:30], data["p_good"][:30])
    code, out, err = _run(["evaluate", "--labels", f"{data['labels']}@{data['dir'] / 'list.txt'}",
                           "--predictions", str(path), "--bootstrap", "20", "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(out)["n_images"] == 30


def test_compare_json_pairs_and_models(data, capsys):
    code, out, err = _run(["compare", "--labels", data["labels"], "--predictions", data["good"],
                           "--predictions", data["weak"], "--format", "json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["reference"] == "good" and [m["name"] for m in d["models"]] == ["good", "weak"]
    pair = d["pairs"][0]
    assert pair["reference"] == "good" and pair["model"] == "weak"
    assert set(pair["classes"]) == set(LABELS)
    for label, entry in pair["classes"].items():
        for key in ("auc_reference", "auc_model", "delta", "p_value", "p_holm"):
            assert key in entry
        assert entry["p_holm"] >= entry["p_value"]
        c = LABELS.index(label)
        assert entry["delta"] == pytest.approx(roc_auc_score(data["y"][:, c], data["p_weak"][:, c])
                                               - roc_auc_score(data["y"][:, c], data["p_good"][:, c]))
    # the strong model is clearly better on most classes
    assert sum(e["p_holm"] < 0.05 and e["delta"] < 0 for e in pair["classes"].values()) >= 7
    assert d["models"][0]["classes"]["Mass"]["auroc"] == pytest.approx(
        pair["classes"]["Mass"]["auc_reference"])


def test_compare_reference_names_and_text(data, capsys):
    code, out, _ = _run(["compare", "--labels", data["labels"], "--predictions", data["good"],
                         "--predictions", data["weak"], "--names", "densenet,baseline",
                         "--reference", "2", "--bootstrap", "50"], capsys)
    assert code == 0
    assert "reference: baseline" in out and "densenet vs baseline" in out and "patient bootstrap" in out
    code, out, _ = _run(["compare", "--labels", data["labels"], "--predictions", data["good"],
                         "--predictions", data["weak"], "--names", "densenet,baseline",
                         "--reference", "densenet", "--format", "json"], capsys)
    assert json.loads(out)["pairs"][0]["model"] == "baseline"


def test_compare_identical_predictions_give_p_one(data, capsys):
    code, out, _ = _run(["compare", "--labels", data["labels"], "--predictions", data["good"],
                         "--predictions", data["good"], "--format", "json"], capsys)
    assert code == 0
    d = json.loads(out)
    assert [m["name"] for m in d["models"]] == ["good#1", "good#2"]
    for entry in d["pairs"][0]["classes"].values():
        assert entry["p_value"] == 1.0 and entry["p_holm"] == 1.0 and entry["delta"] == 0.0


def test_compare_uses_classes_common_to_all_files(data, capsys):
    path = data["dir"] / "three.csv"
    write_predictions(path, data["names"], data["p_weak"][:, :3], labels=LABELS[:3])
    code, out, _ = _run(["compare", "--labels", data["labels"], "--predictions", data["good"],
                         "--predictions", str(path), "--format", "json"], capsys)
    d = json.loads(out)
    assert code == 0 and d["labels"] == list(LABELS[:3])
    assert any("skipped" in n for n in d["notes"])


def test_compare_invalid_inputs_exit_2(data, capsys):
    base = ["compare", "--labels", data["labels"], "--predictions", data["good"]]
    code, _, err = _run(base, capsys)
    assert code == 2 and "at least two" in err
    code, _, err = _run(base + ["--predictions", data["weak"], "--names", "a,b,c"], capsys)
    assert code == 2 and "--names" in err
    code, _, err = _run(base + ["--predictions", data["weak"], "--reference", "nobody"], capsys)
    assert code == 2 and "--reference" in err
    short = data["dir"] / "short.csv"
    write_predictions(short, data["names"][:-3], data["p_weak"][:-3])
    code, _, err = _run(base + ["--predictions", str(short)], capsys)
    assert code == 2 and "3 of 300 labelled images" in err and "short.csv" in err


def test_module_entry_point_prints_pure_json_without_tensorflow(data):
    code = ("import runpy, sys; sys.argv = ['cxrcore'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('cxrcore', run_name='__main__')\n"
            "except SystemExit as e:\n    print('TF' if 'tensorflow' in sys.modules else 'noTF', file=sys.stderr)\n"
            "    raise\n")
    proc = subprocess.run([sys.executable, "-c", code, "evaluate", "--labels", data["labels"], "--predictions",
                           data["weak"], "--bootstrap", "20", "--format", "json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_images"] == N
    assert proc.stderr.strip().endswith("noTF")


@pytest.mark.parametrize("command", ["evaluate", "compare"])
def test_help_renders(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "--predictions" in capsys.readouterr().out
