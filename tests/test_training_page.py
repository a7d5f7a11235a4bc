"""Training page through AppTest: settings, errors, the time probe, the one-click demo run, runs and their states."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from cxrcore.train import jobs
from cxrcore.train.trainconfig import config_from_dict
from tests.app_support import open_app_page, sleeper_holding

PAGE = "pages/training.py"
TINY = {"input_size": 32, "batch_size": 16, "epochs": 1, "augmentation": False, "max_train_images": 48,
        "max_valid_images": 18}


def open_training(monkeypatch, data_root: Path, runs: Path, **env: str) -> AppTest:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    # the suggested preset uses ImageNet weights: count them as downloadable (tests never use the network)
    monkeypatch.setattr("cxrcore.train.model.imagenet_weights_reachable", lambda *args, **kwargs: True)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return open_app_page(monkeypatch, PAGE, data=data_root, runs=runs)


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def wait_for(predicate, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    raise TimeoutError(f"not done within {timeout} s")


def test_page_renders_says_no_gpu_and_suggests_the_cpu_preset(app_data_root, monkeypatch, tmp_path):
    at = open_training(monkeypatch, app_data_root, tmp_path / "runs")
    assert at.title[0].value == "Training"
    assert any("No GPU visible: training runs on the CPU" in w for w in texts(at.warning))
    assert at.selectbox(key="train_preset").value == "cpu-classroom"
    assert any("No GPU visible, so the CPU preset cpu-classroom was chosen" in c for c in texts(at.caption))
    assert at.selectbox(key="train_cpu-classroom_train_split").value == "train"
    assert at.selectbox(key="train_cpu-classroom_valid_split").value == "valid"
    assert at.button(key="train_demo").label == "Train the demo model"
    assert any(f"No runs yet under {tmp_path / 'runs'}" in c for c in texts(at.caption))
    assert not at.error
    # choosing a preset resets the settings to its values
    at.selectbox(key="train_preset").set_value("demo").run()
    assert at.selectbox(key="train_demo_backbone").value == "small_cnn"
    assert at.number_input(key="train_demo_input_size").value == 128


def test_bad_settings_show_an_error_and_disable_start(app_data_root, monkeypatch, tmp_path):
    at = open_training(monkeypatch, app_data_root, tmp_path / "runs", CXR_MODELS_ROOT=str(tmp_path / "models"))
    at.number_input(key="train_cpu-classroom_input_size").set_value(16).run()
    assert not at.exception
    errors = texts(at.error)
    assert errors and errors[0].startswith("**Image size (px)** must be between") and "To fix it:" in errors[0]
    assert at.button(key="train_start").disabled and at.button(key="train_probe_button").disabled
    at.number_input(key="train_cpu-classroom_input_size").set_value(160)
    at.selectbox(key="train_cpu-classroom_weights").set_value("a file").run()
    # weights files are picked from those under models/, never typed: here there is none
    assert any("No .h5 weights file under" in i for i in texts(at.info))
    assert [t.key for t in at.text_input] == ["train_cpu-classroom_name"]  # no path to type
    assert any("**Initial weights**: File not found" in e for e in texts(at.error))
    at.selectbox(key="train_cpu-classroom_valid_split").set_value("train").run()
    assert any("same file as train_split" in e for e in texts(at.error))


def test_probe_estimates_the_time_per_epoch_on_small_data(app_data_root, monkeypatch, tmp_path):
    at = open_training(monkeypatch, app_data_root, tmp_path / "runs")
    at.selectbox(key="train_preset").set_value("demo").run()
    at.number_input(key="train_demo_input_size").set_value(32)
    at.number_input(key="train_demo_batch_size").set_value(16).run()
    at.button(key="train_probe_button").click().run()
    assert not at.exception and not at.error, texts(at.error)
    estimate = [i for i in texts(at.info) if "per epoch" in i]
    assert estimate and "on the CPU" in estimate[0] and "6 batches of 16" in estimate[0]  # 84 training images


def test_one_click_demo_run_writes_a_run_folder_and_is_listed(app_data_root, monkeypatch, tmp_path):
    runs = tmp_path / "runs"
    at = open_training(monkeypatch, app_data_root, runs, CXR_DEMO_OVERRIDES=json.dumps(TINY))
    at.button(key="train_demo").click().run()
    assert not at.exception and not at.error, texts(at.error)
    [run_dir] = [p for p in runs.iterdir() if p.is_dir()]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["preset"] == "demo" and config["backbone"] == "small_cnn" and config["input_size"] == 32
    assert any(run_dir.name in s for s in texts(at.success))
    table = at.dataframe[0].value
    assert list(table["run"]) == [run_dir.name]
    assert table["state"][0] in ("queued", "running", "finished")
    wait_for(lambda: jobs.summarize_run(run_dir).state not in jobs.ACTIVE_STATES, 150)
    assert jobs.summarize_run(run_dir).state == "finished", jobs.log_tail(run_dir)
    # train.log holds the job's own lines only (what the panel shows); the process's whole output is in raw.log
    own = [line for line in (run_dir / jobs.LOG_FILE).read_text().splitlines() if line.strip()]
    assert own and all(re.match(r"^(\[\d\d:\d\d:\d\d\] |=== )", line) for line in own), own
    raw = (run_dir / jobs.RAW_LOG_FILE).read_text()
    assert "finished 1 epochs" in raw and "finished 1 epochs" in "\n".join(own)
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table["state"][0] == "finished" and table["model"][0] == "best.keras"
    assert "train_demo" not in [b.key for b in at.button]  # a model exists now: no demo offer
    assert len(at.get("plotly_chart")) == 2  # loss and AUROC curves
    assert any("finished 1 epochs" in c for c in texts(at.caption))


def test_broken_and_interrupted_runs_are_listed_and_a_running_one_can_be_cancelled(app_data_root, monkeypatch,
                                                                                     tmp_path):
    runs = tmp_path / "runs"
    config = config_from_dict({"preset": "demo", "dataset": str(app_data_root / "mini"), **TINY})
    dead = jobs.create_run(runs, config, run_id="b-interrupted")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    jobs.atomic_write_json(dead / "status.json", {"state": "running", "pid": gone.pid, "host": jobs.hostname(),
                                                  "updated": time.time(), "epochs": 1, "created": 2.0})
    broken = runs / "c-broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "status.json").write_text("{not json")
    alive = jobs.create_run(runs, config, run_id="a-running")
    sleeper = sleeper_holding(alive)
    jobs.atomic_write_json(alive / "status.json", {"state": "running", "pid": sleeper.pid, "host": jobs.hostname(),
                                                   "updated": time.time(), "epochs": 1, "created": 3.0,
                                                   "phase": "training"})
    try:
        at = open_training(monkeypatch, app_data_root, runs)
        table = at.dataframe[0].value.set_index("run")
        assert table.loc["b-interrupted", "state"] == "interrupted"
        assert table.loc["c-broken", "state"] == "broken" and "damaged" in table.loc["c-broken", "note"]
        assert table.loc["a-running", "state"] == "running"
        at.selectbox(key="train_run_choice").set_value("c-broken").run()
        assert any("This run folder is broken" in e for e in texts(at.error))
        at.selectbox(key="train_run_choice").set_value("b-interrupted").run()
        assert any("process is gone" in w for w in texts(at.warning))
        assert at.button(key="train_resume_b-interrupted").label == "Resume"
        at.selectbox(key="train_run_choice").set_value("a-running").run()
        at.button(key="train_cancel_a-running").click().run()
        assert not at.exception
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
    finally:
        if sleeper.poll() is None:
            sleeper.kill()


def test_backbones_first_n_freezing_and_where_the_weights_come_from(app_data_root, monkeypatch, tmp_path):
    at = open_training(monkeypatch, app_data_root, tmp_path / "runs", CXR_MODELS_ROOT=str(tmp_path / "models"),
                       KAGGLEHUB_CACHE=str(tmp_path / "kagglehub"))
    k = "train_cpu-classroom_"
    assert "ViT-B/16" in at.selectbox(key=k + "backbone").options
    at.selectbox(key=k + "backbone").set_value("resnet50").run()
    assert any("ImageNet weights of ResNet50 are downloaded (about 95 MB)" in c for c in texts(at.caption))
    at.selectbox(key=k + "freeze_resnet50").set_value("first").run()
    frozen = at.number_input(key=k + "freeze_resnet50_n")
    assert frozen.value == 50 and "(of 176)" in frozen.label  # the references' 50, of ResNet50's 176 layers
    frozen.set_value(60).run()
    assert not at.exception and not at.error, texts(at.error)
    assert not at.button(key="train_start").disabled
    # ViT-B/16 offline: refused before Start, naming where its preset folder goes
    monkeypatch.setattr("cxrcore.train.model.imagenet_weights_reachable", lambda *args, **kwargs: False)
    at.selectbox(key=k + "backbone").set_value("vit_b16").run()
    errors = texts(at.error)
    assert any("ViT-B/16" in e and str(tmp_path / "models" / "keras-hub") in e for e in errors), errors
    assert at.button(key="train_start").disabled
    at.selectbox(key=k + "weights_vit").set_value("a preset folder").run()
    assert any("No ViT-B/16 preset folder under" in i for i in texts(at.info))
    at.selectbox(key=k + "weights_vit").set_value("none").run()
    assert not at.error and not at.button(key="train_start").disabled
