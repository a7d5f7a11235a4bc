"""Model registry, batch prediction with caching and sharding, and the predict CLI contract."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest

from cxrcore.cli import main
from cxrcore.data.dataset import load_split
from cxrcore.data.labels import LABELS
from cxrcore.data.pipeline import Normalization
from cxrcore.train.model import ModelInfo, build_model, save_model
from cxrcore.train.registry import KIND_BACKBONE, KIND_BROKEN, KIND_MODEL, discover_models
from tests.app_support import make_course_dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    data = make_course_dataset(root / "data" / "mini", patients=12, per_patient=2, size=32)
    models = root / "models"
    model = build_model(input_size=32, backbone="small_cnn")
    save_model(model, ModelInfo(input_size=32, normalization=Normalization.sample(), name="tiny",
                                backbone="small_cnn"), models / "tiny.keras")
    (models / "nih").mkdir()
    (models / "nih" / "densenet.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n")
    (models / "notes.h5").write_bytes(b"not a model")
    runs = root / "runs"
    (runs / "20260101-demo").mkdir(parents=True)
    save_model(model, ModelInfo(input_size=32, normalization=Normalization.sample(), name="run",
                                backbone="small_cnn", metadata={"train_split": str(data / "train.csv")}),
               runs / "20260101-demo" / "best.keras")
    return {"root": root, "data": data, "models": models, "runs": runs}


def test_registry_finds_models_backbones_runs_and_broken_files(world):
    entries = {e.name: e for e in discover_models(world["models"], world["runs"])}
    assert entries["tiny"].kind == KIND_MODEL and entries["tiny"].info.input_size == 32
    assert entries["nih/densenet"].kind == KIND_BACKBONE
    assert entries["notes"].kind == KIND_BROKEN and "label list" in entries["notes"].problem
    run = entries["run 20260101-demo"]
    assert run.origin == "trained here" and run.train_split.endswith("train.csv")


def test_predict_cli_writes_probabilities_and_caches(world, tmp_path):
    out = tmp_path / "preds.csv"
    cache = tmp_path / "cache"
    argv = ["predict", "--model", str(world["models"] / "tiny.keras"), "--split", str(world["data"] / "test.csv"),
            "--images", str(world["data"] / "images"), "--out", str(out), "--cache", str(cache), "--quiet"]
    assert main(argv) == 0
    preds = pd.read_csv(out)
    test = load_split(world["data"] / "test.csv")
    assert list(preds["Image"]) == list(test.frame["Image"])
    assert list(preds.columns[1:]) == [f"prob_{label}" for label in LABELS]
    values = preds.iloc[:, 1:].to_numpy()
    assert ((values >= 0) & (values <= 1)).all()
    cached = list(cache.glob("*.csv"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    assert main(argv) == 0
    assert cached[0].stat().st_mtime_ns == mtime  # second call reused the cache


def test_predict_shards_merge_to_the_whole(world, tmp_path):
    base = ["--model", str(world["models"] / "tiny.keras"), "--split", str(world["data"] / "train.csv"),
            "--images", str(world["data"] / "images"), "--no-cache", "--quiet"]
    assert main(["predict", *base, "--out", str(tmp_path / "whole.csv")]) == 0
    for i in (1, 2):
        assert main(["predict", *base, "--shard", f"{i}/2", "--out", str(tmp_path / f"part{i}.csv")]) == 0
    assert main(["predict", "--merge", str(tmp_path / "part1.csv"), str(tmp_path / "part2.csv"),
                 "--out", str(tmp_path / "merged.csv")]) == 0
    whole, merged = pd.read_csv(tmp_path / "whole.csv"), pd.read_csv(tmp_path / "merged.csv")
    assert list(whole["Image"]) == list(merged["Image"])
    np.testing.assert_allclose(whole.iloc[:, 1:].to_numpy(), merged.iloc[:, 1:].to_numpy(), atol=1e-5)


@pytest.mark.parametrize("extra,needle", [
    (["--shard", "3/2"], "between 1 and N"),
    (["--batch", "0"], "--batch must be at least 1"),
])
def test_predict_bad_arguments_exit_2(world, tmp_path, capsys, extra, needle):
    argv = ["predict", "--model", str(world["models"] / "tiny.keras"), "--split", str(world["data"] / "test.csv"),
            "--images", str(world["data"] / "images"), "--out", str(tmp_path / "p.csv"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_predict_with_a_non_model_file_exits_2(world, tmp_path, capsys):
    argv = ["predict", "--model", str(world["models"] / "notes.h5"), "--split", str(world["data"] / "test.csv"),
            "--images", str(world["data"] / "images"), "--out", str(tmp_path / "p.csv")]
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_predict_missing_images_error_by_default_and_skip_on_request(world, tmp_path, capsys):
    """#20: a course folder holding part of the images: named error, or --missing skip then evaluate."""
    import shutil

    images = tmp_path / "images"
    shutil.copytree(world["data"] / "images", images)
    test = load_split(world["data"] / "test.csv")
    gone = list(test.frame["Image"][:3])
    for name in gone:
        (images / name).unlink()
    argv = ["predict", "--model", str(world["models"] / "tiny.keras"), "--split", str(world["data"] / "test.csv"),
            "--images", str(images), "--out", str(tmp_path / "p.csv"), "--no-cache", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"3 of {len(test)} images are missing: {gone[0]}" in err and err.count("\n") == 1
    assert main(argv + ["--missing", "skip"]) == 0
    err = capsys.readouterr().err
    assert f"--missing skip: 3 of {len(test)} images are missing" in err and "p_images.txt" in err
    preds = pd.read_csv(tmp_path / "p.csv")
    assert list(preds["Image"]) == list(test.frame["Image"][3:])
    listed = tmp_path / "p_images.txt"
    assert listed.read_text().split() == list(preds["Image"])
    assert main(["evaluate", "--labels", f"{world['data'] / 'test.csv'}@{listed}", "--predictions",
                 str(tmp_path / "p.csv"), "--bootstrap", "0"]) == 0
