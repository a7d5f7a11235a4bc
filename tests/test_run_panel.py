"""The run panel follows the run: a run just started (here or elsewhere) is shown at once, a failed run says
why in full, and the log shown is the job's own lines (TensorFlow's notices stay in raw.log)."""
from __future__ import annotations

import time
from pathlib import Path

from cxrcore.train import jobs
from cxrcore.train.trainconfig import config_from_dict
from tests.app_support import open_app_page, sleeper_holding

PAGE = "pages/training.py"
TINY = {"input_size": 32, "batch_size": 16, "epochs": 1, "augmentation": False}


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def _config(data_root: Path):
    return config_from_dict({"preset": "demo", "dataset": str(data_root / "mini"), **TINY})


def _finished(runs: Path, config, run_id: str, created: float) -> Path:
    run_dir = jobs.create_run(runs, config, run_id=run_id)
    jobs.atomic_write_json(run_dir / "status.json", {"state": "finished", "epochs": 1, "epochs_done": 1,
                                                     "created": created, "message": "finished 1 epochs."})
    return run_dir


def _running(run_dir: Path, sleepers: list):
    """Make `run_dir` a live job: a process holding its lock, status 'running'."""
    sleepers.append(sleeper_holding(run_dir))
    jobs.atomic_write_json(run_dir / "status.json", {"state": "running", "pid": sleepers[-1].pid, "epochs": 1,
                                                     "host": jobs.hostname(), "updated": time.time(),
                                                     "created": time.time(), "phase": "training", "step": 3,
                                                     "steps": 10})
    return sleepers[-1].pid


def test_start_switches_the_panel_to_the_new_run(app_data_root, monkeypatch, tmp_path):
    runs = tmp_path / "runs"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    monkeypatch.setattr("cxrcore.train.model.imagenet_weights_reachable", lambda *a, **k: True)
    _finished(runs, _config(app_data_root), "20260101-000000-old-aaaa", 1.0)
    sleepers: list = []
    monkeypatch.setattr(jobs, "_launch", lambda run_dir, **kwargs: _running(run_dir, sleepers))
    try:
        at = open_app_page(monkeypatch, PAGE, data=app_data_root, runs=runs)
        at.selectbox(key="train_preset").set_value("demo").run()
        assert at.selectbox(key="train_run_choice").value == "20260101-000000-old-aaaa"
        at.selectbox(key="train_run_choice").set_value("20260101-000000-old-aaaa").run()  # chosen by hand before
        at.button(key="train_start").click().run()
        assert not at.exception
        [new] = [p.name for p in runs.iterdir() if p.is_dir() and "old" not in p.name]
        assert at.selectbox(key="train_run_choice").value == new
        assert any("**running** · training" in m for m in texts(at.markdown))
        assert any("step 3/10" in p.proto.text for p in at.get("progress"))
        # a run started elsewhere (the teacher's other tab, the CLI) is followed too
        other = jobs.create_run(runs, _config(app_data_root), run_id="20990101-000000-other-bbbb")
        _running(other, sleepers)
        at.run()
        assert at.selectbox(key="train_run_choice").value == other.name
        # and a run chosen by hand stays chosen while nothing new starts
        at.selectbox(key="train_run_choice").set_value(new).run()
        at.run()
        assert at.selectbox(key="train_run_choice").value == new
    finally:
        for sleeper in sleepers:
            sleeper.kill()


def test_a_failed_run_shows_its_whole_reason_and_the_raw_output_when_it_gave_none(app_data_root, monkeypatch,
                                                                                tmp_path):
    runs = tmp_path / "runs"
    config = _config(app_data_root)
    reason = ("the training split has no images. Fix: " + "choose a split with images; " * 12).strip()
    failed = jobs.create_run(runs, config, run_id="20260101-000000-failed-aaaa")
    jobs.atomic_write_json(failed / "status.json", {"state": "failed", "error": reason, "epochs": 1, "created": 2.0})
    silent = jobs.create_run(runs, config, run_id="20260101-000000-silent-bbbb")
    jobs.atomic_write_json(silent / "status.json", {"state": "failed", "epochs": 1, "created": 1.0})
    (silent / jobs.RAW_LOG_FILE).write_text("I tensorflow notice\nTraceback (most recent call last):\n"
                                            "ImportError: libcudart.so.12: cannot open shared object file\n")
    (silent / jobs.LOG_FILE).write_text("[10:00:00] data: 40 training images\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    at = open_app_page(monkeypatch, PAGE, data=app_data_root, runs=runs)
    at.selectbox(key="train_run_choice").set_value(failed.name).run()
    assert any(e == f"**Why it failed:** {reason}" for e in texts(at.error))  # whole, not cut like the table
    at.selectbox(key="train_run_choice").set_value(silent.name).run()
    assert any("ended without giving a reason of its own" in e for e in texts(at.error))
    codes = [c.value for c in at.code]
    assert any("ImportError: libcudart.so.12" in c for c in codes)  # raw.log's last lines
    assert any(c == "[10:00:00] data: 40 training images" for c in codes)  # the log expander: train.log
    assert any("raw.log" in c and "TensorFlow" in c for c in texts(at.caption))


def test_job_logger_writes_the_jobs_own_lines(tmp_path, capsys):
    log = jobs.job_logger(tmp_path)
    log("epoch 1/2: loss 0.5")
    jobs.job_logger(tmp_path, echo=False)("failed: no images")
    lines = (tmp_path / jobs.LOG_FILE).read_text().splitlines()
    assert [line[11:] for line in lines] == ["epoch 1/2: loss 0.5", "failed: no images"]
    assert capsys.readouterr().out.strip().endswith("epoch 1/2: loss 0.5")
    assert jobs.log_tail(tmp_path, lines=1) == lines[-1]
