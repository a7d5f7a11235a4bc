"""cxrcore.fileio: the guards every reader and writer goes through (issue #21).

Bombs are tested with the caps lowered through their environment variables, so memory and time
stay small: what is proved is that the work stops at the cap, whatever the file claims.
"""
from __future__ import annotations

import gzip
import os
import stat
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from cxrcore import fileio
from cxrcore.errors import ConfigError, DatasetError, ImageError, ModelError, OutputError, PredictionsError

MiB = 1 << 20


def _peak_bytes(work) -> int:
    """Peak Python-allocated bytes while work() runs (numpy and bytes buffers included)."""
    tracemalloc.start()
    try:
        work()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# ---------------------------------------------------------------------------------------------
# Decompression bombs: inflation stops at the cap


def test_gzip_inflation_stops_at_the_cap_with_memory_bounded_by_it():
    bomb = gzip.compress(b"0" * (64 * MiB), compresslevel=1)  # 64 MB inside, ~90 kB outside
    caught = []

    def inflate() -> None:
        try:
            fileio.inflate_gzip(bomb, max_bytes=2 * MiB, error=DatasetError, file="x.csv.gz", what="labels file")
        except DatasetError as err:
            caught.append(err)

    peak = _peak_bytes(inflate)
    assert caught and "inflates to more than 2 MB" in caught[0].problem and caught[0].file == "x.csv.gz"
    assert peak < 8 * MiB, f"inflating a 64 MB bomb with a 2 MB cap used {peak / MiB:.1f} MB"


def test_gzip_inflation_gives_what_gzip_gives_multi_member_included():
    data = b"Image,PatientId\n" + b"a.png,1\n" * 300_000
    packed = gzip.compress(data[:1000]) + gzip.compress(data[1000:])  # two members, as `cat a.gz b.gz`
    assert fileio.inflate_gzip(packed, max_bytes=64 * MiB, error=DatasetError, file="f", what="w") == data
    with pytest.raises(DatasetError, match="the gzip file is damaged"):
        fileio.inflate_gzip(packed[:len(packed) // 2], max_bytes=64 * MiB, error=DatasetError, file="f", what="w")


def test_a_labels_file_bomb_is_refused_at_the_lowered_cap(tmp_path, monkeypatch):
    from cxrcore.data.dataset import load_split

    monkeypatch.setenv("CXR_MAX_TABLE_BYTES", str(1 * MiB))
    bomb = tmp_path / "split.csv.gz"
    bomb.write_bytes(gzip.compress(b"Image,PatientId\n" + b"0" * (32 * MiB), compresslevel=1))
    with pytest.raises(DatasetError, match=r"inflates to more than 1 MB.*refused") as caught:
        load_split(bomb)
    assert caught.value.file == str(bomb)
    peak = _peak_bytes(lambda: pytest.raises(DatasetError, load_split, bomb))
    assert peak < 6 * MiB, f"{peak / MiB:.1f} MB"
    big = tmp_path / "big.csv"
    big.write_bytes(b"Image,PatientId\n" + b"x.png,1\n" * 200_000)  # 1.6 MB on disk, no inflation
    with pytest.raises(DatasetError, match=r"is 2 MB, more than the 1 MB limit.*CXR_MAX_TABLE_BYTES"):
        load_split(big)


def test_an_uploaded_bomb_counts_its_inflated_size(monkeypatch):
    from cxrcore.data.predictions import read_predictions

    monkeypatch.setenv("CXR_MAX_TABLE_BYTES", str(1 * MiB))
    upload = gzip.compress(b"Image,prob_Atelectasis\n" + b"0" * (8 * MiB), compresslevel=1)
    assert len(upload) < MiB  # the upload itself is small
    with pytest.raises(PredictionsError, match="inflates to more than 1 MB"):
        read_predictions(upload, name="upload.csv.gz")


def test_a_line_longer_than_the_limit_is_refused_before_pandas_reads_it():
    data = b"Image,PatientId\na.png,1\n" + b"y" * 70_000 + b",2\nb.png,3\n"
    with pytest.raises(DatasetError, match=r"line 3 is 68 kB long") as caught:
        fileio.check_line_lengths(data, error=DatasetError, file="s.csv")
    assert caught.value.file == "s.csv"
    fileio.check_line_lengths(b"a,b\n" * 100_000, error=DatasetError, file="s.csv")  # many short lines: fine


def test_model_zip_members_are_checked_against_the_central_directory(tmp_path):
    import zipfile

    from cxrcore.train.model import _check_inflated_size

    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", b"\0" * (80 * MiB))
    with zipfile.ZipFile(path) as zf:
        with pytest.raises(ModelError, match=r"would inflate to 80 MB, more than the 6\d MB"):
            _check_inflated_size(zf.infolist(), path)
    small = tmp_path / "ok.keras"
    with zipfile.ZipFile(small, "w") as zf:  # stored, as Keras writes them: never refused
        zf.writestr("model.weights.h5", os.urandom(MiB))
    with zipfile.ZipFile(small) as zf:
        _check_inflated_size(zf.infolist(), small)


# ---------------------------------------------------------------------------------------------
# Deeply nested JSON


def test_json_depth_skips_brackets_inside_strings():
    assert fileio.json_depth(b'{"a": [1, {"b": "[[[[{{{"}], "c": "\\"]]"}') == 3
    assert fileio.json_depth(b"[" * 100_000 + b"]" * 100_000) == 100_000
    assert fileio.json_depth(b'"no brackets"') == 0


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000])
def test_deep_json_is_a_domain_error_not_a_recursion_error(text, tmp_path):
    path = tmp_path / "status.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="nests 100000 levels deep"):
        fileio.read_json_file(path, error=ConfigError, what="status.json")
    from cxrcore.train import jobs

    with pytest.raises(ConfigError, match="status.json nests 100000 levels deep"):
        jobs.read_json(path)
    assert fileio.parse_json('{"a": [1, 2, {"b": null}]}', error=ConfigError, file=None, what="x") == \
        {"a": [1, 2, {"b": None}]}


def test_a_deep_sidecar_costs_only_its_own_model(tmp_path):
    from cxrcore.train.registry import KIND_BROKEN, KIND_MODEL, discover_models

    models = tmp_path / "models"
    models.mkdir()
    good_info = ('{"labels": ["Atelectasis"], "input_size": 32, "normalization": "sample", "backbone": "small_cnn"}')
    for name, info in (("good", good_info), ("deep", "[" * 100_000 + "]" * 100_000)):
        (models / f"{name}.keras").write_bytes(b"PK\x03\x04 not read by discovery")
        (models / f"{name}.json").write_text(info)
    found = {e.name: e for e in discover_models(models)}
    assert found["good"].kind == KIND_MODEL
    assert found["deep"].kind == KIND_BROKEN and "nests 100000 levels deep" in found["deep"].problem


def test_a_deep_toml_config_is_a_config_error(tmp_path):
    from cxrcore.train.trainconfig import read_config_file

    path = tmp_path / "train.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="train.toml"):
        read_config_file(path)


# ---------------------------------------------------------------------------------------------
# Pipes and devices


def _within(seconds: float, work) -> None:
    """Run work() in a thread and fail (instead of hanging the suite) if it does not return in time."""
    box: list[BaseException | None] = []

    def target() -> None:
        try:
            work()
            box.append(None)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            box.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, f"still running after {seconds} s (a hang)"
    if box[0] is not None:
        raise box[0]


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_pipes_and_devices_are_refused_at_once_by_every_reader(kind, tmp_path):
    from cxrcore.data.dataset import load_split
    from cxrcore.data.images import quick_check, read_image
    from cxrcore.data.predictions import read_predictions
    from cxrcore.train.model import load_model, read_model_info

    def special(name: str) -> Path:
        path = tmp_path / f"{kind}-{name}"
        if kind == "fifo":
            os.mkfifo(path)
        else:
            path.symlink_to("/dev/zero")
        return path

    what = "named pipe" if kind == "fifo" else "device"
    readers = [(read_image, ImageError), (quick_check, ImageError), (load_split, DatasetError),
               (read_predictions, PredictionsError), (load_model, ModelError), (read_model_info, ModelError),
               (lambda p: fileio.read_json_file(p, error=ConfigError, what="x"), ConfigError)]
    for i, (read, error) in enumerate(readers):
        path = special(f"{i}.x")

        def check() -> None:
            with pytest.raises(error, match=what) as caught:
                read(path)
            assert "folder" not in caught.value.problem

        _within(10, check)


def test_a_fifo_in_the_image_folder_is_named_before_reading(tmp_path):
    import pandas as pd

    from cxrcore.data.pipeline import resolve_image_paths

    (tmp_path / "a.png").write_bytes(b"x")
    os.mkfifo(tmp_path / "b.png")
    with pytest.raises(DatasetError, match=r"1 image\(s\) are not regular files .*: b.png"):
        resolve_image_paths(pd.DataFrame({"Image": ["a.png", "b.png"]}), tmp_path)


# ---------------------------------------------------------------------------------------------
# Writing: never over an input, plain messages, the user's umask


def test_outputs_over_inputs_are_refused_by_inode_not_only_by_name(tmp_path):
    source = tmp_path / "labels.csv"
    source.write_text("x")
    os.link(source, tmp_path / "hard.csv")
    (tmp_path / "soft.csv").symlink_to(source)
    for out in (source, tmp_path / "hard.csv", tmp_path / "soft.csv", tmp_path / "sub" / ".." / "labels.csv"):
        with pytest.raises(OutputError, match=r"would overwrite an input file .*labels.csv"):
            fileio.refuse_overwriting_inputs([out], [source])
    fileio.refuse_overwriting_inputs([tmp_path / "new.csv"], [source, None, tmp_path / "missing.csv"])


def test_output_problems_are_found_up_front_in_plain_words(tmp_path):
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputError, match="is a folder, not a file"):
        fileio.check_output_file(tmp_path / "folder.csv")
    with pytest.raises(OutputError, match="a part of its path is a file, not a folder") as caught:
        fileio.check_output_file(tmp_path / "file.txt" / "out.csv")
    assert ".tmp" not in str(caught.value) and caught.value.file == str(tmp_path / "file.txt" / "out.csv")
    with pytest.raises(OutputError, match="a part of its path is a file"):
        fileio.check_output_file(tmp_path / "file.txt" / "sub" / "out.csv")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        fileio.check_output_folder(tmp_path / "file.txt")
    assert fileio.check_output_file(tmp_path / "new" / "out.csv") == tmp_path / "new" / "out.csv"
    with pytest.raises(OutputError, match="cannot be written: permission denied"):
        with fileio.writing(tmp_path / "x.csv"):
            raise PermissionError(13, "Permission denied", str(tmp_path / ".x.csv.abc.tmp"))
    with pytest.raises(OutputError, match="cannot be written: the disk is full") as caught:
        with fileio.writing(tmp_path / "x.csv"):
            raise OSError(28, "No space left on device", str(tmp_path / ".x.csv.abc.tmp"))
    assert ".tmp" not in str(caught.value)


def test_an_unforeseen_os_error_is_one_line_without_a_temp_file_name(monkeypatch, capsys):
    from cxrcore import cli

    def fail(args):
        raise OSError(5, "Input/output error", "/data/.preds.csv.x1y2.tmp")

    monkeypatch.setattr(cli, "build_parser", lambda: _parser_running(fail))
    assert cli.main(["x"]) == 2
    assert capsys.readouterr().err == "error: Input/output error.\n"


def _parser_running(run):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("x")
    parser.set_defaults(_run=run)
    return parser


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_follow_the_umask(umask, tmp_path):
    from cxrcore.data.predictions import write_predictions

    old = os.umask(umask)
    try:
        assert fileio.user_umask() == umask
        fileio.atomic_write_text(tmp_path / "a.json", "{}")
        write_predictions(tmp_path / "p.csv", ["a.png"], np.full((1, 14), 0.5))
    finally:
        os.umask(old)
    for name in ("a.json", "p.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_a_saved_model_follows_the_umask(tmp_path):
    from cxrcore.data.pipeline import Normalization
    from cxrcore.train.model import ModelInfo, build_model, save_model

    old = os.umask(0o022)
    try:
        info = ModelInfo(input_size=32, normalization=Normalization.sample(), name="m", backbone="small_cnn")
        path = save_model(build_model(input_size=32, backbone="small_cnn"), info, tmp_path / "m.keras")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.with_suffix(".json").stat().st_mode) == 0o644


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CXR_MAX_TABLE_BYTES", "12345")
    assert fileio.limit(*fileio.MAX_TABLE_BYTES) == 12345
    for bad in ("", "0", "-3", "lots"):
        monkeypatch.setenv("CXR_MAX_TABLE_BYTES", bad)
        assert fileio.limit(*fileio.MAX_TABLE_BYTES) == 64 * MiB
