"""Faults a training job meets, proved end to end (issue #8, part 3).

1. kill -9 in the middle of an epoch: the run shows as interrupted at once (the kernel drops the job's
   flock; the page polls every POLL_S), the page offers Resume, and the resumed job redoes no epoch.
2. A full disk while saving best.keras or checkpoints/last.keras (ENOSPC injected into Keras' writer
   after it wrote part of the file, as a real full disk does): the previous file stays byte-identical,
   no temporary file is left, and the run ends 'failed' with a one-line disk-space error on the page.
3. The app restarts while a job runs: a real `streamlit run` starts the job from its page and is
   stopped; the job keeps training; a new server's page (real browser) finds it running, live.
   Faults 3 and 1 share that one job (a TensorFlow process start is the expensive part).
4. Damaged run folders are listed as broken with their reason and break nothing else.

Measured times go to test-artifacts/faults-timings.json. They are reported, not compared with
thresholds, except the design bound of fault 1 (lock release + one poll < 5 s), which holds by far.
"""
from __future__ import annotations

import errno
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cxrcore.errors import ConfigError
from cxrcore.train import jobs
from cxrcore.train.trainconfig import config_from_dict
from tests.app_support import ROOT, StreamlitServer, headless_chromium, open_app_page

TRAINING_PAGE = "pages/training.py"
RESULTS_PAGE = "pages/results.py"
#: Smallest settings that still run every part of an epoch: 6 steps of 8 images, 18 validation images.
TINY = {"preset": "demo", "input_size": 32, "batch_size": 8, "augmentation": False, "early_stopping_patience": 0,
        "reduce_lr_patience": 0, "predict_test": False, "max_train_images": 48, "max_valid_images": 18}
#: The UI must show a killed job as interrupted within this many seconds (issue #8).
INTERRUPTED_WITHIN_S = 5.0
#: Epochs of the job that lives through the app restart (long enough to outlive it, short to resume).
EPOCHS = 12


@pytest.fixture(scope="module")
def timings(artifacts_dir):
    """Measured seconds, written next to the screenshots for docs/reliability.md."""
    measured: dict[str, float] = {}
    yield measured
    path = artifacts_dir / "faults-timings.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**previous, **{k: round(v, 3) for k, v in measured.items()}}, indent=2) + "\n")


@pytest.fixture
def dataset(app_data_root) -> Path:
    return app_data_root / "mini"


def tiny_config(dataset: Path, **changes):
    return config_from_dict({**TINY, "dataset": str(dataset), **changes})


def wait_for(predicate, timeout: float, interval: float = 0.05):
    """The predicate's first truthy value; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


def status_of(run_dir: Path) -> dict:
    try:
        return jobs.read_json(run_dir / jobs.STATUS_FILE)
    except ConfigError:
        return {}


def kill_if_alive(pid) -> None:
    if pid and jobs.pid_alive(pid):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def leftover_temp_files(run_dir: Path) -> list[str]:
    """Temporary files of atomic writes (.best.*.tmp.keras, .last.tmp.keras, .status.json.*.tmp)."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if ".tmp" in p.name)


def open_page(monkeypatch, data_root: Path, runs: Path, page: str = TRAINING_PAGE, **state) -> AppTest:
    """Home, then `page`, through AppTest, with this test's runs folder and no other models."""
    # the suggested preset uses ImageNet weights: count them as downloadable, so the settings form shows
    # no error of its own (tests never use the network)
    monkeypatch.setattr("cxrcore.train.model.imagenet_weights_reachable", lambda *args, **kwargs: True)
    return open_app_page(monkeypatch, page, state=state, data=data_root, runs=runs, models=runs.parent / "models",
                         cache=runs.parent / "cache")


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def runs_table(at: AppTest) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "run" in d.value.columns).set_index("run")


# ---------------------------------------------------------------------------------------------
# 2. A full disk while writing a model


class FullDisk:
    """Stands in for keras.Model.save: when armed for a file that exists, the next save meant to replace
    it writes part of a zip to its temporary path and raises ENOSPC (what Keras does on a full disk)."""

    def __init__(self, real_save) -> None:
        self.real_save = real_save
        self.target: Path | None = None
        self.before: bytes | None = None
        self.hits = 0

    def arm(self, target: Path) -> None:
        self.target, self.before = target, None

    def save(self, model, filepath, *args, **kwargs):
        path, target = Path(filepath), self.target
        if (target is not None and target.is_file() and path.parent == target.parent
                and path.name.startswith(f".{target.stem}.")):
            self.target, self.before, self.hits = None, target.read_bytes(), self.hits + 1
            path.write_bytes(b"PK\x03\x04" + os.urandom(4096))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real_save(model, filepath, *args, **kwargs)


def test_a_full_disk_keeps_the_previous_models_and_fails_with_a_clear_error(dataset, app_data_root, monkeypatch,
                                                                            tmp_path, timings):
    import keras

    from cxrcore.train import loop
    from cxrcore.train.job import run_job
    from cxrcore.train.model import load_model

    runs = tmp_path / "runs"
    config = tiny_config(dataset, epochs=3)
    run_dir = jobs.create_run(runs, config)
    best, last = run_dir / jobs.BEST_MODEL, run_dir / jobs.CHECKPOINT_DIR / jobs.LAST_CHECKPOINT
    disk = FullDisk(keras.Model.save)
    monkeypatch.setattr(keras.Model, "save", lambda model, filepath, *a, **k: disk.save(model, filepath, *a, **k))
    real_metrics, scores = loop.validation_metrics, itertools.count(1)

    def improving(*args, **kwargs):  # every epoch "improves", so every epoch saves best.keras
        return {**real_metrics(*args, **kwargs), "val_auroc": 0.5 + 0.01 * next(scores)}

    monkeypatch.setattr(loop, "validation_metrics", improving)

    # epoch 1 saves best.keras; the disk fills while epoch 2 saves the new best model
    disk.arm(best)
    with pytest.raises(ConfigError, match="disk is full"):
        run_job(run_dir, config, log=lambda _m: None)
    assert disk.hits == 1 and best.read_bytes() == disk.before  # byte-identical
    assert load_model(best).info.metadata["epoch"] == 1
    assert leftover_temp_files(run_dir) == []
    status = status_of(run_dir)
    assert status["state"] == "failed" and "Traceback" not in status["error"]
    assert "the disk is full (no space left on the device) while writing best.keras" in status["error"]
    assert "The best model so far (epoch 1) is kept unchanged" in status["error"] and "df -h" in status["error"]

    at = open_page(monkeypatch, app_data_root, runs)
    assert runs_table(at).loc[run_dir.name, "state"] == "failed"
    assert any("disk is full" in e and "best.keras" in e for e in texts(at.error))
    assert at.button(key=f"train_resume_{run_dir.name}").label == "Resume"

    # resumed, the disk fills while epoch 2 saves its checkpoint (after writing best.keras and the metrics row)
    disk.arm(last)
    with pytest.raises(ConfigError, match="disk is full"):
        run_job(run_dir, config, resume=True, log=lambda _m: None)
    assert disk.hits == 2 and last.read_bytes() == disk.before
    assert zipfile.ZipFile(last).testzip() is None
    assert jobs.read_json(last.parent / jobs.STATE_FILE)["epochs_done"] == 1
    assert load_model(best).info.metadata["epoch"] == 2
    assert leftover_temp_files(run_dir) == []
    error = status_of(run_dir)["error"]
    assert "while writing last.keras" in error and "checkpoint after epoch 1 is kept unchanged" in error

    # space freed: the resume continues after epoch 1 and writes each epoch's row once
    t0 = time.monotonic()
    result = run_job(run_dir, config, resume=True, log=lambda _m: None)
    timings["disk_full_final_resume_s"] = time.monotonic() - t0
    assert result.state == "finished" and result.epochs_done == 3
    assert list(jobs.read_metrics(run_dir)["epoch"]) == [1, 2, 3]
    assert status_of(run_dir)["resumed_from"] == "failed" and load_model(best).info.metadata["epoch"] == 3


def test_a_full_disk_still_records_the_final_state(tmp_path, monkeypatch):
    """status.json is normally replaced through a temporary copy, which needs new space; on a full disk
    the writer rewrites the existing file in place, so 'failed' and its reason still reach the page."""
    writer = jobs.StatusWriter(tmp_path)
    writer.update(force=True, state="running", epoch=2)

    def no_space(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(jobs, "atomic_write_text", no_space)
    writer.update(force=True, state="failed", error="the disk is full")
    assert jobs.read_json(tmp_path / "status.json") | {"updated": 0} == {"state": "failed", "epoch": 2,
                                                                         "error": "the disk is full", "updated": 0}
    monkeypatch.setattr(jobs, "atomic_write_text", lambda path, text: (_ for _ in ()).throw(PermissionError(13, "no")))
    writer.update(force=True, state="finished")  # other write errors are skipped (the next beat retries)
    assert jobs.read_json(tmp_path / "status.json")["state"] == "failed"


# ---------------------------------------------------------------------------------------------
# 3 and 1. The app restarts while a job runs, then the job is killed (real servers, real browser)


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as chromium:
        yield chromium


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return int(handle.read().rsplit(b")", 1)[1].split()[1])


def progress_text(page) -> str:
    """The run's progress line ("epoch 2/12, step 3/6 · about 40 s left")."""
    return page.get_by_text(re.compile(rf"^epoch \d+/{EPOCHS}")).first.inner_text(timeout=30_000)


def test_app_restart_keeps_the_job_then_sigkill_shows_interrupted_and_resume_redoes_no_epoch(
        app_data_root, tmp_path, artifacts_dir, browser, timings):
    """One real job for faults 3 and 1: started from the page of a real `streamlit run`, it outlives that
    server; a second server's page finds it running; kill -9 mid-epoch shows as interrupted, and the
    page's Resume continues after the last checkpoint."""
    from cxrcore.train.model import load_model
    from dashboard.training_view import POLL_S

    runs = tmp_path / "runs"
    base = {"CXR_RUNS_ROOT": str(runs), "CXR_MODELS_ROOT": str(tmp_path / "models"), "CUDA_VISIBLE_DEVICES": "-1",
            "CXR_CACHE_ROOT": str(tmp_path / "cache"),
            "CXR_DEMO_OVERRIDES": json.dumps({k: v for k, v in TINY.items() if k != "preset"} | {"epochs": EPOCHS})}
    # the first server's job sleeps 0.5 s a step (~4 s an epoch) to outlive the restart; the resumed job does not
    first_env, second_env = {**base, "CXR_TRAIN_STEP_DELAY_S": "0.5"}, {**base, "CXR_TRAIN_STEP_DELAY_S": "0"}
    pid = resumed_pid = None
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    try:
        first = StreamlitServer(app_data_root, artifacts_dir / "streamlit-faults-first.log", first_env)
        try:
            first.wait()
            page.goto(f"{first.url}/training", wait_until="domcontentloaded")
            page.get_by_role("button", name="Train the demo model").first.click(timeout=60_000)
            run_dir = wait_for(lambda: runs.is_dir() and next((p for p in runs.iterdir() if p.is_dir()
                                                               and not p.name.startswith(".")), None), 60)
            pid = wait_for(lambda: (s := status_of(run_dir)).get("state") == "running" and s.get("pid"), 60)
            assert parent_pid(pid) == first.process.pid  # started by the server, through the page
        finally:
            first.stop()
        stopped = time.time()
        assert first.process.poll() is not None
        assert jobs.pid_alive(pid) and jobs.lock_held(run_dir)  # the job outlives the app
        beats = wait_for(lambda: (s := status_of(run_dir)).get("updated", 0) > stopped + 2 and s, 20)
        assert beats["state"] == "running" and beats["pid"] == pid

        second = StreamlitServer(app_data_root, artifacts_dir / "streamlit-faults-second.log", second_env)
        try:
            second.wait()
            t0 = time.monotonic()
            page.goto(f"{second.url}/training", wait_until="domcontentloaded")
            page.get_by_text(re.compile(r"\brunning · .* · heartbeat")).first.wait_for(timeout=60_000)
            timings["restart_page_shows_running_s"] = time.monotonic() - t0
            first_progress = progress_text(page)
            wait_for(lambda: progress_text(page) != first_progress, 30, interval=0.5)  # live: the fragment polls
            page.screenshot(path=str(artifacts_dir / "faults-restart-reattached.png"), full_page=True)

            # kill -9 in the middle of an epoch that follows a checkpoint
            wait_for(lambda: (s := status_of(run_dir)).get("epochs_done", 0) >= 1 and s.get("phase") == "training"
                     and 0 < s.get("step", 0) < s.get("steps", 0), timeout=60)
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: jobs.summarize_run(run_dir).state == "interrupted", INTERRUPTED_WITHIN_S, interval=0.01)
            flip = timings["sigkill_to_interrupted_state_s"] = time.monotonic() - killed
            page.get_by_text("The training process is gone").first.wait_for(timeout=30_000)
            timings["sigkill_to_browser_shows_interrupted_s"] = time.monotonic() - killed
            assert status_of(run_dir)["state"] == "running"  # the killed job wrote no final state
            done_before = jobs.read_json(run_dir / jobs.CHECKPOINT_DIR / jobs.STATE_FILE)["epochs_done"]
            metrics_before = jobs.read_metrics(run_dir)
            assert 1 <= done_before < EPOCHS
            page.screenshot(path=str(artifacts_dir / "faults-sigkill-interrupted.png"), full_page=True)

            page.get_by_role("button", name="Resume").first.click()
            resumed_pid = wait_for(lambda: (p := jobs.lock_info(run_dir).get("pid")) != pid and p, 30)
            page.get_by_text(f"finished {EPOCHS} epochs.").first.wait_for(timeout=150_000)
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(artifacts_dir / "faults-resumed-finished.png"), full_page=True)
        finally:
            second.stop()
    finally:
        page.close()
        kill_if_alive(pid)
        kill_if_alive(resumed_pid)
    # the page shows a killed job within one poll of the lock's release
    assert flip + POLL_S < INTERRUPTED_WITHIN_S
    final = status_of(run_dir)
    assert final["state"] == "finished" and final["resumed_from"] == "interrupted", jobs.log_tail(run_dir)
    metrics = jobs.read_metrics(run_dir)
    assert list(metrics["epoch"]) == list(range(1, EPOCHS + 1))  # every epoch once
    pd.testing.assert_frame_equal(metrics.iloc[:done_before], metrics_before.iloc[:done_before])
    resumed_log = (run_dir / jobs.LOG_FILE).read_text().rsplit("=== ", 1)[1]
    assert f"continuing at epoch {done_before + 1}" in resumed_log
    trained_again = [int(n) for n in re.findall(rf"epoch (\d+)/{EPOCHS}:", resumed_log)]
    assert trained_again == list(range(done_before + 1, EPOCHS + 1))  # finished epochs were not trained again
    assert load_model(run_dir / jobs.BEST_MODEL).info.input_size == TINY["input_size"]


# ---------------------------------------------------------------------------------------------
# 4. Damaged run folders


def make_runs_with_damage(runs: Path, dataset: Path) -> tuple[Path, dict[str, str]]:
    """A good finished run with test predictions, and damaged neighbours; {name: expected problem}."""
    import numpy as np

    from cxrcore.data.dataset import load_split
    from cxrcore.data.predictions import write_predictions

    config = tiny_config(dataset, epochs=2)
    finished = {"state": "finished", "epochs_done": 2, "epochs": 2, "best_val_auroc": 0.6, "message": "finished"}
    metrics = "epoch,loss,val_loss,val_auroc_mean\n1,0.9,0.8,0.55\n2,0.7,0.75,0.6\n"
    good = jobs.create_run(runs, config, run_id="20250101-090000-good-0001")
    jobs.atomic_write_json(good / jobs.STATUS_FILE, {**finished, "created": 1.0})
    (good / jobs.METRICS_FILE).write_text(metrics)
    split = load_split(dataset / "test.csv")
    write_predictions(good / "predictions" / "test.csv", split.images, np.full((len(split), 14), 0.5))

    problems = {}
    run = jobs.create_run(runs, config, run_id="garbage-status")
    (run / jobs.STATUS_FILE).write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
    problems[run.name] = "status.json is damaged"
    run = jobs.create_run(runs, config, run_id="empty-config")
    (run / jobs.CONFIG_FILE).write_text("")
    problems[run.name] = "config.json is empty"
    run = jobs.create_run(runs, config, run_id="missing-status")
    (run / jobs.STATUS_FILE).unlink()
    problems[run.name] = "status.json is missing"
    run = jobs.create_run(runs, config, run_id="missing-config")
    (run / jobs.CONFIG_FILE).unlink()
    problems[run.name] = "config.json is missing"
    run = jobs.create_run(runs, config, run_id="deep-status")  # json.loads raised RecursionError: no runs list
    (run / jobs.STATUS_FILE).write_text('{"state": ' * 100_000 + '"x"' + "}" * 100_000)
    problems[run.name] = "status.json nests 100000 levels deep"
    (runs / "20250101-100000-replaced-abcd").write_text("a run folder replaced by a file")
    problems["20250101-100000-replaced-abcd"] = "this is a file, not a run folder"
    # damaged metrics lose the curves (or the cut-off row), not the run: its state and model are intact
    run = jobs.create_run(runs, config, run_id="truncated-metrics")
    jobs.atomic_write_json(run / jobs.STATUS_FILE, finished)
    (run / jobs.METRICS_FILE).write_text(metrics[: metrics.rindex("0.75") + 2])  # cut inside the last row
    run = jobs.create_run(runs, config, run_id="garbage-metrics")
    jobs.atomic_write_json(run / jobs.STATUS_FILE, finished)
    (run / jobs.METRICS_FILE).write_bytes(b'epoch,loss\n1,"unterminated\x00\n')
    run = jobs.create_run(runs, config, run_id="unreadable")
    jobs.atomic_write_json(run / jobs.STATUS_FILE, finished)
    for path in runs.rglob("*"):  # atomic writes make private files; here every other user may read them
        path.chmod(0o755 if path.is_dir() else 0o644)
    run.chmod(0)
    return good, problems


LIST_AS_ANOTHER_USER = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from cxrcore.train import jobs
from cxrcore.train.registry import discover_models
from dashboard.results_view import find_prediction_files
import encodings.utf_8_sig
if os.geteuid() == 0:  # root reads everything: become 'nobody' (after the imports: Python lives under /root)
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
here = Path(".")
print(json.dumps({"runs": {r.run_id: [r.state, r.problem] for r in jobs.list_runs(here)},
                  "models": [e.name for e in discover_models(None, here)],
                  "predictions": [str(p) for p in find_prediction_files(Path("no-models"), here)]}))
"""


def list_without_permission(runs: Path) -> dict:
    """list_runs, model discovery and the Results page's file search, by a user who cannot read 'unreadable'.

    Run in a child process whose working directory is the runs folder (entered while still root, so the
    test's private temporary folders stay private); as root it then becomes 'nobody'.
    """
    done = subprocess.run([sys.executable, "-c", LIST_AS_ANOTHER_USER, str(ROOT)], cwd=runs, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_damaged_run_folders_are_listed_as_broken_and_break_nothing(dataset, app_data_root, monkeypatch, tmp_path):
    runs = tmp_path / "runs"
    good, problems = make_runs_with_damage(runs, dataset)
    new_pid = None
    try:
        listed = {r.run_id: r for r in jobs.list_runs(runs)}
        for name, problem in problems.items():
            assert listed[name].state == "broken" and problem in listed[name].problem, (name, listed[name].problem)
        assert {n: listed[n].state for n in (good.name, "truncated-metrics", "garbage-metrics")} == dict.fromkeys(
            (good.name, "truncated-metrics", "garbage-metrics"), "finished")
        assert list(jobs.read_metrics(runs / "truncated-metrics")["epoch"]) == [1]  # the cut-off row is left out

        other_user = list_without_permission(runs)
        assert other_user["runs"]["unreadable"] == ["broken", "config.json cannot be read: permission denied."]
        assert other_user["runs"][good.name][0] == "finished" and len(other_user["runs"]) == len(listed)
        assert other_user["predictions"] == [f"{good.name}/predictions/test.csv"] and other_user["models"] == []

        at = open_page(monkeypatch, app_data_root, runs, results_bootstrap=0)
        table = runs_table(at)
        assert set(table.index) == set(listed)
        for name, problem in problems.items():
            assert table.loc[name, "state"] == "broken" and problem in table.loc[name, "note"]
        for name in ("garbage-status", "deep-status", "20250101-100000-replaced-abcd"):
            at.selectbox(key="train_run_choice").set_value(name).run()
            assert not at.exception
            assert any(f"This run folder is broken: {problems[name]}" in e for e in texts(at.error))
        at.selectbox(key="train_run_choice").set_value("truncated-metrics").run()
        assert not at.exception and not at.error and len(at.get("plotly_chart")) == 2
        at.selectbox(key="train_run_choice").set_value("garbage-metrics").run()
        assert not at.exception and any("The curves cannot be drawn" in w for w in texts(at.warning))
        assert any("Folder:" in c for c in texts(at.caption))  # the rest of the run's view is still there

        # a new run still starts from the page
        at.selectbox(key="train_preset").set_value("demo").run()
        at.number_input(key="train_demo_input_size").set_value(32).run()
        at.button(key="train_start").click().run()
        assert not at.exception and not at.error, texts(at.error)
        started = [s for s in texts(at.success) if "Started run" in s]
        new_run = runs / re.search(r"Started run \*\*(.+?)\*\*", started[0]).group(1)
        new_pid = wait_for(lambda: (s := status_of(new_run)).get("state") == "running" and s.get("pid"), 60)
        assert jobs.lock_held(new_run) and runs_table(at.run()).loc[new_run.name, "state"] in jobs.ACTIVE_STATES
        jobs.cancel(new_run, force=True)

        # the Results page still finds the good run's test predictions and evaluates them
        at.switch_page(RESULTS_PAGE).run()
        assert not at.exception, [e.value for e in at.exception]
        models = at.multiselect(key="results_models")
        assert models.options == ["test"]
        models.set_value(["test"]).run()
        assert not at.exception
        summary = next(d.value for d in at.dataframe if "mean AUROC" in d.value.columns)
        assert list(summary["model"]) == ["test"]
    finally:
        (runs / "unreadable").chmod(0o755)
        kill_if_alive(new_pid)
