"""Teacher control on a shared server (issue #14): who may start and cancel training, and how many jobs run.

Core: needs_teacher over loopback and network addresses (IPv4, IPv6, names), the constant-time passcode
check, CXR_MAX_JOBS held under simultaneous starts from two threads and from two processes (the real
fcntl locks; a fake "python" that only sleeps stands in for training), the CLI obeying the limit, and
the passcode never reaching a job's files or environment. Pages (AppTest): a student session sees no
enabled Start / Cancel / Resume, a wrong passcode is refused, the right one unlocks, and with the limit
at 1 a second start is refused with the message.
"""
from __future__ import annotations

import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cxrcore.data import access
from cxrcore.errors import ConfigError
from cxrcore.train import jobs
from cxrcore.train.trainconfig import config_from_dict
from tests.app_support import ROOT, open_app_page, sleeper_holding

PASSCODE = "correct-horse-battery"
PAGE = "pages/training.py"
TINY = {"input_size": 32, "batch_size": 16, "epochs": 1, "augmentation": False, "max_train_images": 48,
        "max_valid_images": 18}


# ---------------------------------------------------------------------------------------------
# Who needs the passcode


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "localhost", "LOCALHOST",
                                     "localhost.", " 127.0.0.1 ", "::1", "[::1]", "0:0:0:0:0:0:0:1",
                                     "::ffff:127.0.0.1"])
def test_loopback_addresses_need_no_teacher(address):
    assert access.is_loopback(address)
    assert not access.needs_teacher(address, {})
    assert not access.needs_teacher(address, {"CXR_CLASSROOM": "0"})


@pytest.mark.parametrize("address", ["0.0.0.0", "", None, "   ", "::", "[::]", "192.168.1.20", "10.0.0.5",
                                     "172.16.0.1", "8.8.8.8", "2001:db8::1", "[2001:db8::1]", "fe80::1%eth0",
                                     "::ffff:192.168.0.1", "::ffff:0.0.0.0", "myhost", "myhost.local",
                                     "127.0.0.1.example.com", "localhost.example.com", "not an address"])
def test_every_other_address_needs_the_teacher(address):
    assert not access.is_loopback(address)
    assert access.needs_teacher(address, {})


@pytest.mark.parametrize("value, shared", [("1", True), ("true", True), ("YES", True), ("on", True),
                                           ("0", False), ("", False), ("no", False)])
def test_cxr_classroom_makes_a_loopback_worker_shared(value, shared):
    assert access.needs_teacher("127.0.0.1", {"CXR_CLASSROOM": value}) is shared


def test_the_passcode_is_compared_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((len(a), len(b))) or real(a, b))
    assert access.passcode_matches(PASSCODE, PASSCODE)
    for wrong in ("", "c", PASSCODE[:-1], PASSCODE + "x", PASSCODE.upper(), " " + PASSCODE):
        assert not access.passcode_matches(wrong, PASSCODE)
    assert calls and all(pair == (32, 32) for pair in calls)  # digests: the length of a guess does not show
    assert not access.passcode_matches(None, PASSCODE)
    # an unusable configured passcode matches nothing, not even itself
    for unusable in (None, "", "   ", "short"):
        assert access.passcode_problem(unusable)
        assert not access.passcode_matches(unusable, unusable)
    assert "shorter than 8 characters" in access.passcode_problem("1234567")
    assert access.passcode_problem(PASSCODE) is None
    env = {"CXR_TEACHER_PASSCODE": PASSCODE, "PATH": "/bin"}
    assert access.without_passcode(env) == {"PATH": "/bin"}
    assert PASSCODE not in access.HOW_TO_SET and "make run HOST=0.0.0.0" in access.HOW_TO_SET


# ---------------------------------------------------------------------------------------------
# The job limit (real locks, fake training processes)


class FakeConfig:
    """What create_run needs from a TrainConfig."""

    name = "race"
    epochs = 1

    def to_json(self) -> str:
        return "{}"


@pytest.fixture()
def fake_python(tmp_path) -> str:
    """A stand-in for `python -m cxrcore train`: prints its environment into train.log, then sleeps while
    holding the inherited train.lock, like a job in its first epoch."""
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\nenv\nexec sleep 60\n")
    path.chmod(0o755)
    return str(path)


def _stop_all(runs: Path) -> None:
    for run in jobs.list_runs(runs):
        pid = jobs.lock_info(run.path).get("pid")
        if pid and jobs.pid_alive(pid):
            os.kill(int(pid), signal.SIGKILL)


def test_max_jobs_reads_cxr_max_jobs():
    assert jobs.max_jobs({}) == 1 and jobs.max_jobs({"CXR_MAX_JOBS": " 3 "}) == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ConfigError, match="CXR_MAX_JOBS must be a whole number of at least 1"):
            jobs.max_jobs({"CXR_MAX_JOBS": bad})


@pytest.mark.parametrize("limit", [1, 2])
def test_the_limit_holds_under_simultaneous_starts_from_two_sessions(tmp_path, fake_python, monkeypatch, limit):
    """Two Streamlit sessions are two threads of one server: both click Start at the same moment."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("CXR_MAX_JOBS", str(limit))
    real_create = jobs.create_run

    def slow_create(*args, **kwargs):  # widen the window between counting and launching
        time.sleep(0.4)
        return real_create(*args, **kwargs)

    monkeypatch.setattr(jobs, "create_run", slow_create)
    barrier = threading.Barrier(2)
    results: list = []

    def session() -> None:
        barrier.wait()
        try:
            results.append(jobs.start_run(runs, FakeConfig(), python=fake_python))
        except ConfigError as err:
            results.append(err)

    threads = [threading.Thread(target=session) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        started = [r for r in results if isinstance(r, tuple)]
        refused = [r for r in results if isinstance(r, ConfigError)]
        assert len(started) == min(limit, 2) and len(refused) == 2 - len(started)
        assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == sorted(d.name for d, _ in started)
        assert sorted(r.run_id for r in jobs.live_jobs(runs)) == sorted(d.name for d, _ in started)
        if refused:
            text = str(refused[0])
            assert (f"1 training job already running (run id {started[0][0].name}): at most 1 at a time on "
                    "this machine (CXR_MAX_JOBS)") in text
            assert "wait for it to finish or cancel it" in text and "CXR_MAX_JOBS=2" in text
    finally:
        _stop_all(runs)


RACER = """
import json, os, sys, time
sys.path.insert(0, {root!r})
from cxrcore.train import jobs
from cxrcore.errors import ConfigError

class FakeConfig:
    name = "race"
    epochs = 1
    def to_json(self):
        return "{{}}"

real_create = jobs.create_run
def slow_create(*args, **kwargs):
    time.sleep(0.4)
    return real_create(*args, **kwargs)
jobs.create_run = slow_create
while not os.path.exists({go!r}):
    time.sleep(0.002)
try:
    run_dir, pid = jobs.start_run({runs!r}, FakeConfig(), python={python!r})
    print(json.dumps({{"run": run_dir.name, "pid": pid}}))
except ConfigError as err:
    print(json.dumps({{"refused": str(err)}}))
"""


def test_the_limit_holds_across_two_processes(tmp_path, fake_python):
    """Two Streamlit workers (or a worker and the CLI) share runs/: separate processes, one flock."""
    runs, go = tmp_path / "runs", tmp_path / "go"
    script = RACER.format(root=str(ROOT), go=str(go), runs=str(runs), python=fake_python)
    env = {k: v for k, v in os.environ.items() if k != "CXR_MAX_JOBS"}
    racers = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env) for _ in range(2)]
    try:
        time.sleep(1.5)  # both imported and waiting
        go.touch()
        outputs = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in racers]
        started = [o for o in outputs if "run" in o]
        refused = [o for o in outputs if "refused" in o]
        assert len(started) == 1 and len(refused) == 1, outputs
        assert "1 training job already running" in refused[0]["refused"]
        assert started[0]["run"] in refused[0]["refused"]
        assert [p.name for p in runs.iterdir() if p.is_dir()] == [started[0]["run"]]
    finally:
        for p in racers:
            if p.poll() is None:
                p.kill()
        _stop_all(runs)


def test_a_resume_counts_too_but_not_against_itself(tmp_path, fake_python, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.delenv("CXR_MAX_JOBS", raising=False)
    stopped = jobs.create_run(runs, FakeConfig(), run_id="a-stopped")
    jobs.atomic_write_json(stopped / "status.json", {"state": "cancelled", "epochs": 1})
    try:
        pid = jobs.launch(stopped, resume=True, python=fake_python)  # nothing else runs: allowed
        assert jobs.summarize_run(stopped).state == "queued"
        os.kill(pid, signal.SIGKILL)
        assert _gone(stopped)
        run_dir, _pid = jobs.start_run(runs, FakeConfig(), python=fake_python)
        with pytest.raises(ConfigError, match=f"already running \\(run id {run_dir.name}\\)"):
            jobs.launch(stopped, resume=True, python=fake_python)
        with pytest.raises(ConfigError, match="only one job per run folder"):
            jobs.launch(run_dir, python=fake_python)  # the same folder: its own refusal, not the count
        monkeypatch.setenv("CXR_MAX_JOBS", "2")
        jobs.launch(stopped, resume=True, python=fake_python)
        assert len(jobs.live_jobs(runs)) == 2
    finally:
        _stop_all(runs)


def _gone(run_dir: Path, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if jobs.summarize_run(run_dir).state == "interrupted":
            return True
        time.sleep(0.05)
    return False


def test_the_cli_obeys_the_limit_unless_told_otherwise(tmp_path, fake_python):
    from tests.app_support import make_course_dataset

    data = make_course_dataset(tmp_path / "mini", patients=10, per_patient=1, size=16)
    runs = tmp_path / "runs"
    busy, _pid = jobs.start_run(runs, FakeConfig(), python=fake_python)
    try:
        env = {**{k: v for k, v in os.environ.items() if k != "CXR_MAX_JOBS"}, "CXR_RUNS_ROOT": str(runs)}
        done = subprocess.run([sys.executable, "-m", "cxrcore", "train", "--preset", "demo", "--dataset", str(data)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert f"1 training job already running (run id {busy.name})" in done.stderr
        assert [p.name for p in runs.iterdir() if p.is_dir()] == [busy.name]  # the refused run left nothing
        done = subprocess.run([sys.executable, "-m", "cxrcore", "train", "--help"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert "--ignore-job-limit" in done.stdout
    finally:
        _stop_all(runs)


def test_the_passcode_never_reaches_a_job(tmp_path, fake_python, monkeypatch):
    monkeypatch.setenv("CXR_TEACHER_PASSCODE", PASSCODE)
    runs = tmp_path / "runs"
    try:
        run_dir, pid = jobs.start_run(runs, FakeConfig(), python=fake_python, env={"CXR_TEACHER_PASSCODE": PASSCODE})
        deadline = time.monotonic() + 10
        while "PATH=" not in (run_dir / jobs.RAW_LOG_FILE).read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = (run_dir / jobs.RAW_LOG_FILE).read_text()
        assert "PATH=" in log and jobs.LOCK_FD_ENV in log  # the fake printed its whole environment
        assert "CXR_TEACHER_PASSCODE" not in log
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert PASSCODE.encode() not in environ and b"CXR_TEACHER_PASSCODE" not in environ
        for path in run_dir.rglob("*"):
            if path.is_file():
                assert PASSCODE.encode() not in path.read_bytes(), path.name
    finally:
        _stop_all(runs)


# ---------------------------------------------------------------------------------------------
# The Training page (AppTest)


def open_training(monkeypatch, data_root: Path, runs: Path, **env: str):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    monkeypatch.setattr("cxrcore.train.model.imagenet_weights_reachable", lambda *args, **kwargs: True)
    for name in ("CXR_CLASSROOM", "CXR_TEACHER_PASSCODE", "CXR_MAX_JOBS"):
        monkeypatch.delenv(name, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return open_app_page(monkeypatch, PAGE, data=data_root, runs=runs)


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def all_text(at) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "info", "success", "error", "warning")
                     for e in getattr(at, kind))


@pytest.fixture()
def listen_on(monkeypatch):
    """Set Streamlit's server.address for one test (as `make run HOST=...` does), restored afterwards."""
    from streamlit import config

    before = config.get_option("server.address")

    def set_address(address):
        config.set_option("server.address", address)

    yield set_address
    config.set_option("server.address", before)


@pytest.fixture()
def live_runs(app_data_root, tmp_path):
    """runs/ with one running job (a sleeper holding its lock) and one interrupted job."""
    runs = tmp_path / "runs"
    config = config_from_dict({"preset": "demo", "dataset": str(app_data_root / "mini"), **TINY})
    dead = jobs.create_run(runs, config, run_id="b-interrupted")
    jobs.atomic_write_json(dead / "status.json", {"state": "running", "pid": 999999, "host": jobs.hostname(),
                                                  "updated": time.time(), "epochs": 1, "created": 2.0})
    (dead / jobs.LOCK_FILE).write_text("{}")
    alive = jobs.create_run(runs, config, run_id="a-running")
    sleeper = sleeper_holding(alive, seconds=120)
    jobs.atomic_write_json(alive / "status.json", {"state": "running", "pid": sleeper.pid, "host": jobs.hostname(),
                                                   "updated": time.time(), "epochs": 1, "created": 3.0,
                                                   "phase": "training"})
    yield runs, sleeper
    if sleeper.poll() is None:
        sleeper.kill()
        sleeper.wait()


def _unlock_button(at):
    return next(b for b in at.button if b.label == "Unlock")


def test_a_student_session_cannot_start_cancel_or_resume(app_data_root, monkeypatch, live_runs):
    runs, sleeper = live_runs
    at = open_training(monkeypatch, app_data_root, runs, CXR_CLASSROOM="1", CXR_TEACHER_PASSCODE=PASSCODE)
    assert not at.exception and not at.error, texts(at.error)
    assert at.text_input(key="teacher_passcode_input").value == ""
    assert any("CXR_CLASSROOM=1" in m and "needs the teacher passcode" in m for m in texts(at.markdown))
    assert at.button(key="train_start").disabled and at.button(key="train_probe_button").disabled
    assert any("Only the teacher starts, resumes and cancels training" in c for c in texts(at.caption))
    keys = [b.key for b in at.button]
    assert "train_cancel_a-running" not in keys  # the running job is shown, without Cancel
    assert at.dataframe[0].value.set_index("run").loc["a-running", "state"] == "running"
    at.selectbox(key="train_run_choice").set_value("b-interrupted").run()
    assert "train_resume_b-interrupted" not in [b.key for b in at.button]
    assert sleeper.poll() is None  # still running


def test_beyond_loopback_without_a_passcode_nobody_controls_jobs(app_data_root, monkeypatch, tmp_path, listen_on):
    listen_on("0.0.0.0")
    at = open_training(monkeypatch, app_data_root, tmp_path / "runs")
    assert not at.exception
    [note] = [i for i in texts(at.info) if "Teacher controls are off" in i]
    assert "listens on 0.0.0.0" in note and "no teacher passcode is set" in note
    assert "CXR_TEACHER_PASSCODE=<a passcode of at least 8 characters> make run HOST=0.0.0.0" in note
    assert not [t for t in at.text_input if t.key == "teacher_passcode_input"]
    assert at.button(key="train_start").disabled
    assert "train_demo" not in [b.key for b in at.button]


def test_a_wrong_passcode_is_refused_and_the_right_one_unlocks(app_data_root, monkeypatch, live_runs, listen_on):
    runs, sleeper = live_runs
    listen_on("")  # every interface
    at = open_training(monkeypatch, app_data_root, runs, CXR_TEACHER_PASSCODE=PASSCODE)
    at.text_input(key="teacher_passcode_input").input("wrong-passcode")
    _unlock_button(at).click().run()
    assert not at.exception
    assert "Wrong teacher passcode." in texts(at.error)
    assert at.button(key="train_start").disabled
    at.text_input(key="teacher_passcode_input").input(PASSCODE)
    _unlock_button(at).click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert any("Teacher mode" in s for s in texts(at.success))
    assert not at.button(key="train_start").disabled and not at.button(key="train_probe_button").disabled
    assert at.session_state["teacher_unlocked"] is True
    assert PASSCODE not in all_text(at)  # never shown, and not kept in the session
    assert all(PASSCODE != at.session_state[k] for k in ("teacher_passcode_input",) if k in at.session_state)
    at.button(key="train_cancel_a-running").click().run()
    assert not at.exception
    assert sleeper.wait(timeout=10) == -signal.SIGTERM
    # another browser is another session: still a student
    other = open_training(monkeypatch, app_data_root, runs, CXR_TEACHER_PASSCODE=PASSCODE)
    assert other.button(key="train_start").disabled
    # lock: back to read-only in this session
    at.button(key="teacher_lock").click().run()
    assert at.button(key="train_start").disabled and _unlock_button(at)


def test_with_the_limit_at_one_a_second_start_is_refused(app_data_root, monkeypatch, live_runs):
    runs, _sleeper = live_runs
    at = open_training(monkeypatch, app_data_root, runs, CXR_MAX_JOBS="1")  # loopback: nothing asked
    assert not [t for t in at.text_input if t.key == "teacher_passcode_input"]
    before = sorted(p.name for p in runs.iterdir() if p.is_dir())
    at.selectbox(key="train_preset").set_value("demo").run()
    at.button(key="train_start").click().run()
    assert not at.exception
    [error] = [e for e in texts(at.error) if "already running" in e]
    assert ("1 training job already running (run id a-running): at most 1 at a time on this machine "
            "(CXR_MAX_JOBS)") in error
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == before  # nothing created


def test_the_passcode_can_come_from_secrets_toml(app_data_root, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    for name in ("CXR_TEACHER_PASSCODE", "CXR_MAX_JOBS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CXR_CLASSROOM", "1")
    monkeypatch.setenv("CXR_DATA_ROOT", str(app_data_root))
    monkeypatch.setenv("CXR_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.setattr("cxrcore.train.model.imagenet_weights_reachable", lambda *args, **kwargs: True)
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=180)
    at.secrets["CXR_TEACHER_PASSCODE"] = PASSCODE
    try:
        at.run()
        at.switch_page(PAGE)
        at.run()
        assert not at.exception and not any("Teacher controls are off" in i for i in texts(at.info))
        assert at.button(key="train_start").disabled
        at.text_input(key="teacher_passcode_input").input(PASSCODE)
        _unlock_button(at).click().run()
        assert not at.exception and not at.button(key="train_start").disabled
    finally:
        os.environ.pop("CXR_TEACHER_PASSCODE", None)  # a real server copies root-level secrets into the environment
