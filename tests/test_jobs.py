"""Run folders and processes: status heartbeat, the lock, liveness, broken folders, launch, cancel, kill -9 + resume.

The first tests need no TensorFlow. The last two launch real training jobs exactly as the Training
page does (detached, output in train.log), slowed down per step (CXR_TRAIN_STEP_DELAY_S) so the test
can catch them in the middle of an epoch.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cxrcore.errors import ConfigError
from cxrcore.train import jobs
from cxrcore.train.trainconfig import config_from_dict
from tests.app_support import make_course_dataset, sleeper_holding


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_course_dataset(tmp_path_factory.mktemp("data") / "mini", patients=40, per_patient=3, size=40)


def tiny_config(dataset: Path, **changes):
    settings = {"preset": "demo", "dataset": str(dataset), "input_size": 32, "batch_size": 8, "epochs": 3,
                "augmentation": False, "early_stopping_patience": 0, "reduce_lr_patience": 0, "predict_test": False}
    settings.update(changes)
    return config_from_dict(settings)


def test_jobs_start_in_the_folder_holding_the_package():
    """A job runs `python -m cxrcore` from CODE_ROOT: the folder with the package, wherever jobs.py sits."""
    assert (jobs.CODE_ROOT / "cxrcore" / "__init__.py").is_file()
    assert jobs.CODE_ROOT == Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "cxrcore", "--help"], cwd=jobs.CODE_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "train" in done.stdout


def wait_for(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout} s")


def status_of(run_dir: Path) -> dict:
    try:
        return jobs.read_json(run_dir / "status.json")
    except ConfigError:
        return {}


# ---------------------------------------------------------------------------------------------
# Files, status and the lock (no TensorFlow)


def test_create_run_writes_config_and_a_queued_status_atomically(dataset, tmp_path):
    config = tiny_config(dataset, name="my first run")
    run_dir = jobs.create_run(tmp_path, config)
    assert run_dir.name.endswith(run_dir.name[-4:]) and "my-first-run" in run_dir.name
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 3
    assert jobs.read_json(run_dir / "status.json")["state"] == "queued"
    assert [p.name for p in tmp_path.iterdir()] == [run_dir.name]  # no temporary folder left behind
    with pytest.raises(ConfigError, match="exists already"):
        jobs.create_run(tmp_path, config, run_id=run_dir.name)


def test_status_writer_throttles_forces_and_beats(tmp_path):
    writer = jobs.StatusWriter(tmp_path, min_interval_s=10)
    writer.update(force=True, state="running", step=1)
    first = jobs.read_json(tmp_path / "status.json")
    writer.update(step=2)  # throttled: not written yet
    assert jobs.read_json(tmp_path / "status.json")["step"] == 1
    writer.update(step=3, force=True)
    assert jobs.read_json(tmp_path / "status.json")["step"] == 3
    writer.start_heartbeat(interval_s=0.1)
    try:
        wait_for(lambda: jobs.read_json(tmp_path / "status.json")["updated"] > first["updated"] + 0.15, 5)
    finally:
        writer.stop_heartbeat()
    assert not list(tmp_path.glob(".status.json.*"))  # temp files replaced, never left
    silent = jobs.StatusWriter(tmp_path / "elsewhere", enabled=False)
    silent.update(force=True, state="running")
    assert not (tmp_path / "elsewhere").exists()


def test_one_job_per_run_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    lock = jobs.RunLock.acquire(tmp_path, inherited=False)
    try:
        assert jobs.lock_held(tmp_path)
        assert jobs.lock_info(tmp_path)["pid"] == os.getpid()
        with pytest.raises(ConfigError) as err:
            jobs.RunLock.acquire(tmp_path, wait_s=0.2, inherited=False)
        assert f"already being trained by process {os.getpid()}" in str(err.value)
        with pytest.raises(ConfigError, match="only one job per run folder"):
            jobs.launch(tmp_path)  # a second launch on the same folder is refused before starting anything
    finally:
        lock.release()
    assert not jobs.lock_held(tmp_path)


def test_a_dead_process_is_shown_as_interrupted_at_once(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"epochs": 3}))
    proc = sleeper_holding(run_dir)
    try:
        jobs.atomic_write_json(run_dir / "status.json", {"state": "running", "pid": proc.pid, "host": jobs.hostname(),
                                                        "updated": time.time(), "epochs": 3})
        assert jobs.summarize_run(run_dir).state == "running"
        os.kill(proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        # the heartbeat is fresh, but the lock is gone with the process (the zombie is not reaped yet)
        wait_for(lambda: jobs.summarize_run(run_dir).state == "interrupted", 5)
        assert time.monotonic() - t0 < 5
    finally:
        proc.kill()
        proc.wait()
    assert not jobs.pid_alive(proc.pid)
    assert jobs.cancel(run_dir) is False


def test_liveness_without_a_lock_file_and_from_another_host(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    assert jobs.effective_state({"state": "running", "pid": dead.pid, "host": jobs.hostname()}, tmp_path) == "interrupted"
    assert jobs.effective_state({"state": "running", "pid": os.getpid(), "host": jobs.hostname()}, tmp_path) == "running"
    assert jobs.effective_state({"state": "running", "host": "elsewhere", "updated": now - 5}, tmp_path) == "running"
    assert jobs.effective_state({"state": "running", "host": "elsewhere", "updated": now - 600}, tmp_path) == "interrupted"
    assert jobs.effective_state({"state": "finished"}, tmp_path) == "finished"


def test_broken_run_folders_are_listed_as_broken_and_break_nothing(dataset, tmp_path):
    good = jobs.create_run(tmp_path, tiny_config(dataset))
    jobs.atomic_write_json(good / "status.json", {"state": "finished", "epochs_done": 3, "epochs": 3,
                                                  "best_val_auroc": 0.61, "created": time.time()})
    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{}")
    (bad_json / "status.json").write_text('{"state": "runn')
    no_status = tmp_path / "no-status"
    no_status.mkdir()
    (no_status / "config.json").write_text("{}")
    odd_state = tmp_path / "odd-state"
    odd_state.mkdir()
    (odd_state / "config.json").write_text("{}")
    (odd_state / "status.json").write_text('{"state": "exploded"}')
    not_object = tmp_path / "not-object"
    not_object.mkdir()
    (not_object / "config.json").write_text("[1, 2]")
    (not_object / "status.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".in-progress.tmp").mkdir()
    (tmp_path / "stray.txt").write_text("not a run")
    (good / "metrics.csv").write_text("epoch,loss\n1,0.5\n2,0.4\n")
    runs = {r.run_id: r for r in jobs.list_runs(tmp_path)}
    assert set(runs) == {good.name, "bad-json", "no-status", "odd-state", "not-object", "empty"}
    assert runs[good.name].state == "finished" and not runs[good.name].broken
    assert runs[good.name].row()["best val AUROC"] == 0.61
    assert "status.json is damaged" in runs["bad-json"].problem
    assert "status.json is missing" in runs["no-status"].problem
    assert "unknown state 'exploded'" in runs["odd-state"].problem
    assert "config.json is not a JSON object" in runs["not-object"].problem
    assert all(runs[n].row()["state"] == "broken" for n in ("bad-json", "no-status", "odd-state", "not-object", "empty"))
    assert list(jobs.read_metrics(good)["epoch"]) == [1, 2]
    (bad_json / "metrics.csv").write_bytes(b"\x00\x01epoch\n\"unterminated")
    with pytest.raises(ConfigError):
        jobs.read_metrics(bad_json)
    assert jobs.read_metrics(no_status).empty


def test_metrics_rows_append_and_truncate_to_the_checkpointed_epoch(tmp_path):
    columns = ["epoch", "loss", "val_auroc_mean"]
    for epoch in (1, 2, 3):
        jobs.append_metrics_row(tmp_path, {"epoch": epoch, "loss": 1 / epoch, "val_auroc_mean": None}, columns)
    assert jobs.truncate_metrics(tmp_path, 2) == 2
    frame = pd.read_csv(tmp_path / "metrics.csv")
    assert list(frame["epoch"]) == [1, 2] and frame["val_auroc_mean"].isna().all()
    jobs.append_metrics_row(tmp_path, {"epoch": 3, "loss": 0.3}, columns)
    assert list(pd.read_csv(tmp_path / "metrics.csv")["epoch"]) == [1, 2, 3]


def test_tf_config_role_and_log_tail(tmp_path):
    cluster = {"worker": ["a:1", "b:2"]}
    assert jobs.tf_config_role({}) == (False, True, 0)
    assert jobs.tf_config_role({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})}) \
        == (True, False, 1)
    assert jobs.tf_config_role({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})}) \
        == (True, True, 0)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        jobs.tf_config_role({"TF_CONFIG": "{nope"})
    (tmp_path / "train.log").write_text("".join(f"line {i}\r\n" for i in range(100)))
    assert jobs.log_tail(tmp_path, lines=3).splitlines() == ["line 97", "line 98", "line 99"]
    assert jobs.log_tail(tmp_path / "nothing") == ""


# ---------------------------------------------------------------------------------------------
# Real jobs (TensorFlow in subprocesses, as the Training page starts them)


def _slow_env(delay: float) -> dict[str, str]:
    return {"CXR_TRAIN_STEP_DELAY_S": str(delay)}


def test_kill_minus_9_mid_epoch_then_resume_continues_at_the_right_epoch(dataset, tmp_path):
    config = tiny_config(dataset, epochs=3)
    run_dir = jobs.create_run(tmp_path / "runs", config)
    pid = jobs.launch(run_dir, env=_slow_env(0.15))
    try:
        # running, with at least one epoch (checkpoint) done, and inside the next epoch
        status = wait_for(lambda: (s := status_of(run_dir)).get("epochs_done", 0) >= 1 and s.get("phase") == "training"
                          and 0 < s.get("step", 0) < s.get("steps", 0) and s, timeout=120)
        assert status["state"] == "running" and status["pid"] == pid
        assert (run_dir / "checkpoints" / "last.keras").is_file()
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: jobs.summarize_run(run_dir).state == "interrupted", 5)
        assert time.monotonic() - killed < 5
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert status_of(run_dir)["state"] == "running"  # the process never wrote a final state
    done_before = jobs.read_json(run_dir / "checkpoints" / "state.json")["epochs_done"]
    before = jobs.read_metrics(run_dir)
    # rows 1..done_before are there (a row for an epoch whose checkpoint was not saved yet is dropped on resume)
    assert 1 <= done_before < 3 and list(before["epoch"])[:done_before] == list(range(1, done_before + 1))
    jobs.launch(run_dir, resume=True)
    wait_for(lambda: jobs.summarize_run(run_dir).state not in jobs.ACTIVE_STATES, timeout=120, interval=0.3)
    final = status_of(run_dir)
    assert final["state"] == "finished", jobs.log_tail(run_dir)
    assert final["resumed_from"] == "interrupted" and final["epochs_done"] == 3
    after = jobs.read_metrics(run_dir)
    assert list(after["epoch"]) == [1, 2, 3]  # each epoch once, continuing after the checkpoint
    pd.testing.assert_frame_equal(after.iloc[:done_before], before.iloc[:done_before])  # kept as they were
    log = (run_dir / "train.log").read_text()
    assert f"continuing at epoch {done_before + 1}" in log and log.count("=== ") == 2
    from cxrcore.train.model import load_model

    assert load_model(run_dir / "best.keras").info.metadata["train_split"] == config.train_split


def test_cancel_saves_a_checkpoint_and_a_second_launch_is_refused(dataset, tmp_path):
    config = tiny_config(dataset, epochs=20)
    run_dir = jobs.create_run(tmp_path / "runs", config)
    pid = jobs.launch(run_dir, env=_slow_env(0.15))
    try:
        wait_for(lambda: (s := status_of(run_dir)).get("state") == "running" and s.get("epochs_done", 0) >= 1
                 and s.get("step", 0) > 0, timeout=120)
        with pytest.raises(ConfigError, match=f"already being trained by process {pid}"):
            jobs.launch(run_dir, resume=True)
        assert jobs.cancel(run_dir) is True
        wait_for(lambda: status_of(run_dir).get("state") == "cancelled", timeout=60)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    status = status_of(run_dir)
    assert "resume continues from the last checkpoint" in status["message"] and "SIGTERM" in status["message"]
    state = jobs.read_json(run_dir / "checkpoints" / "state.json")
    assert state["epochs_done"] >= 1 and (run_dir / "checkpoints" / "last.keras").is_file()
    if "partial_steps" in state:  # cancelled mid-epoch (usually): the unfinished epoch's weights were saved too
        assert state["partial_steps"] > 0
    assert jobs.summarize_run(run_dir).state == "cancelled"
    wait_for(lambda: not jobs.lock_held(run_dir), 10)
