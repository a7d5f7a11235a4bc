"""Before a run starts: the suggested preset runs on this machine, settings errors read as sentences, and the
form says what would make the run fail (missing image files) or mislead (patients in both splits)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrcore.train import preflight
from cxrcore.train.trainconfig import Hardware, auto_preset, config_from_dict
from tests.app_support import make_course_dataset, open_app_page

PAGE = "pages/training.py"


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """A fresh offline machine: no Keras cache, no course backbone file, no network."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("CXR_OFFLINE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("CXR_MODELS_ROOT", str(models))
    return models


@pytest.fixture
def mini(tmp_path) -> Path:
    return make_course_dataset(tmp_path / "data" / "mini", patients=20)


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def test_auto_preset_offline_without_weights_is_the_demo_preset_and_says_why(offline, mini):
    for hardware in (Hardware((), 2), Hardware(("NVIDIA H100",), 16)):
        preset, why = auto_preset(hardware, offline)
        assert preset == "demo"
        assert "small CNN trained from scratch" in why and "not on this computer" in why
    config = config_from_dict({"preset": "auto", "dataset": str(mini)}, hardware=Hardware((), 2))
    assert config.preset == "demo" and config.initial_weights == "none"


def test_auto_preset_with_the_course_backbone_file_keeps_the_cpu_preset(offline):
    (offline / "nih").mkdir()
    (offline / "nih" / "densenet.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    assert auto_preset(Hardware((), 2), offline)[0] == "cpu-classroom"


def test_missing_images_are_counted_and_can_be_left_out(mini):
    config = config_from_dict({"preset": "demo", "dataset": str(mini)})
    assert preflight.check_run(config).findings == ()
    gone = ["00000001_000.png", "00000001_001.png", "00000020_002.png"]  # two training images, one test image
    for name in gone:
        (mini / "images" / name).unlink()
    checks = preflight.check_run(config)
    assert checks.blocking and checks.missing_total == 3
    text = checks.findings[0].text
    assert "2 of the 42 training images and 1 of the 9 test images are not in the image folder" in text
    assert "00000001_000.png" in text and "train on the images present" in text
    skipping = preflight.check_run(config_from_dict({**config.to_dict(), "skip_missing_images": True}))
    assert not skipping.blocking and "trains on the images present (40 training and 8 test images)" \
        in skipping.findings[0].text
    from cxrcore.train.data import load_spec

    dropped, n = preflight.drop_missing(load_spec(config.train_split, "train"), config.image_root)
    assert n == 2 and len(dropped) == 40 and not set(gone) & set(dropped.frame["Image"])


def test_a_split_with_none_of_its_images_blocks_even_when_skipping(mini):
    for path in (mini / "images").glob("*.png"):
        path.unlink()
    config = config_from_dict({"preset": "demo", "dataset": str(mini), "skip_missing_images": True})
    checks = preflight.check_run(config)
    assert checks.blocking and "has none of its images here" in checks.findings[0].text


def test_prepare_data_leaves_out_missing_rows_and_records_how_many(mini):
    from cxrcore.train.data import prepare_data

    (mini / "images" / "00000001_000.png").unlink()
    config = config_from_dict({"preset": "demo", "dataset": str(mini), "skip_missing_images": True,
                               "predict_test": False})
    data = prepare_data(config, log=lambda _m: None)
    assert len(data.train) == 41 and data.sizes["train_missing_skipped"] == 1
    assert any("skipped rows whose image file is missing" in note for note in data.notes)


def test_shared_patients_are_a_warning_naming_both_splits(mini):
    config = config_from_dict({"preset": "demo", "dataset": str(mini), "valid_split": "valid_leaky"})
    checks = preflight.check_run(config)
    assert not checks.blocking and checks.shared_patients == 3
    assert "3 patient(s) have images in both the training split (train) and the validation split (valid_leaky)" \
        in checks.findings[0].text


def test_first_visit_offline_suggests_a_preset_that_runs(offline, mini, monkeypatch, tmp_path):
    at = open_app_page(monkeypatch, PAGE, data=mini.parent, runs=tmp_path / "runs")
    assert at.selectbox(key="train_preset").value == "demo"
    assert "demo (suggested for this machine)" in at.selectbox(key="train_preset").format_func("demo")
    assert any("The demo preset (a small CNN trained from scratch) was chosen: cpu-classroom would start from "
               "ImageNet weights" in c for c in texts(at.caption))
    assert not at.error and not at.warning[1:]  # only the hardware note
    assert not at.button(key="train_start").disabled
    # the ImageNet preset offline: refused in sentences naming the form's field, as before with the ways out
    at.selectbox(key="train_preset").set_value("cpu-classroom").run()
    errors = texts(at.error)
    assert len(errors) == 1 and errors[0].startswith("**Initial weights**: The ImageNet weights of DenseNet121 "
                                                     "are not on this computer")
    assert "the settings:" not in errors[0] and "setting '" not in errors[0] and "To fix it:" in errors[0]
    assert at.button(key="train_start").disabled
    at.number_input(key="train_cpu-classroom_input_size").set_value(16).run()
    assert texts(at.error)[0].startswith("**Image size (px)** must be between 32 and 1024, got 16.")


def test_the_form_warns_of_shared_patients_and_offers_to_skip_missing_images(offline, mini, monkeypatch,
                                                                            tmp_path):
    (mini / "images" / "00000001_000.png").unlink()
    at = open_app_page(monkeypatch, PAGE, data=mini.parent, runs=tmp_path / "runs")
    errors = texts(at.error)
    assert any("1 of the 42 training images are not in the image folder" in e for e in errors)
    assert at.button(key="train_start").disabled
    at.toggle(key="train_skip_missing").set_value(True).run()
    assert not at.error
    assert any("The run trains on the images present (41 training images)" in w for w in texts(at.warning))
    assert not at.button(key="train_start").disabled
    at.selectbox(key="train_demo_valid_split").set_value("valid_leaky").run()
    assert any("3 patient(s) have images in both the training split (train) and the validation split "
               "(valid_leaky)" in w for w in texts(at.warning))
    assert not at.button(key="train_start").disabled  # a warning, not a refusal
    # the setting reaches the run's config.json
    from cxrcore.train import jobs

    monkeypatch.setattr(jobs, "_launch", lambda run_dir, **kwargs: 4242)
    at.button(key="train_start").click().run()
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1
    assert json.loads((runs[0] / "config.json").read_text())["skip_missing_images"] is True


def _cli(*args: str, **env: str):
    import os
    import subprocess
    import sys

    from tests.app_support import ROOT

    return subprocess.run([sys.executable, "-m", "cxrcore", "train", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=120)


def test_cli_preset_auto_offline_is_the_demo_preset_and_says_why(offline, mini):
    done = _cli("--preset", "auto", "--dataset", str(mini), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["preset"] == "demo"
    assert "preset auto: The demo preset (a small CNN trained from scratch) was chosen" in done.stderr


def test_cli_refuses_missing_images_before_the_run_and_names_the_setting(offline, mini, tmp_path):
    (mini / "images" / "00000001_000.png").unlink()
    runs = tmp_path / "cli-runs"
    done = _cli("--preset", "demo", "--dataset", str(mini), "--runs-root", str(runs))
    assert done.returncode == 2
    assert "1 of the 42 training images are not in the image folder" in done.stderr
    assert "--set skip_missing_images=true" in done.stderr and not runs.exists()
    leaky = _cli("--preset", "demo", "--dataset", str(mini), "--set", "valid_split=valid_leaky", "--set",
                 "skip_missing_images=true", "--dry-run")
    assert leaky.returncode == 0, leaky.stderr
    assert "warning: 3 patient(s) have images in both the training split (train)" in leaky.stderr
    assert "warning: 1 of the 42 training images" in leaky.stderr and json.loads(leaky.stdout)["skip_missing_images"]
