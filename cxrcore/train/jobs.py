"""Run folders and training processes: create, launch detached, lock, heartbeat, list, cancel.

A run folder `runs/<run_id>/` holds config.json, status.json (the heartbeat), metrics.csv,
train.log (the job's own lines), raw.log (all the process printed), checkpoints/, best.keras and train.lock. One process trains a folder at a time: it holds
an exclusive flock on train.lock for its whole life, which the kernel releases when it dies (even
on kill -9), so "is it still running?" is answered by the lock and the pid, never by the heartbeat's
age alone. At most CXR_MAX_JOBS jobs (default 1) run on one machine: every start counts the live jobs
and launches under an flock on <runs root>/.jobs.lock (job_slot), so Streamlit sessions, workers and
the CLI cannot start more between them. No TensorFlow here: the app imports this module.
"""
from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import cxrcore
from cxrcore.data.access import without_passcode
from cxrcore.errors import ConfigError
from cxrcore.fileio import atomic_write_text, open_for_reading, parse_json, read_json_file

STATES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
CONFIG_FILE, STATUS_FILE, RUN_FILE = "config.json", "status.json", "run.json"
METRICS_FILE, LOG_FILE, LOCK_FILE = "metrics.csv", "train.log", "train.lock"
#: Everything a launched job's process printed (TensorFlow's start-up notices, tracebacks); train.log holds
#: only the job's own lines (`job_logger`), which is what the Training page shows.
RAW_LOG_FILE = "raw.log"
BEST_MODEL, CHECKPOINT_DIR = "best.keras", "checkpoints"
LAST_CHECKPOINT, STATE_FILE = "last.keras", "state.json"
#: The folder holding the cxrcore package: a job's working directory and first PYTHONPATH entry, so
#: `python -m cxrcore train` runs this code wherever the module itself sits in the package.
CODE_ROOT = Path(cxrcore.__file__).resolve().parent.parent
TENSORBOARD_DIR, PREDICTIONS_DIR = "tensorboard", "predictions"
#: Environment variable through which a launcher hands its locked train.lock descriptor to the child.
LOCK_FD_ENV = "CXR_TRAIN_LOCK_FD"
#: A heartbeat older than this, from a process on another host, means the run is gone.
STALE_AFTER_S = 60.0
#: How often a training process rewrites status.json at most (and at least, via its heartbeat thread).
HEARTBEAT_S = 2.0
#: The names new_run_id gives run folders; a plain file named like this is listed as a broken run.
RUN_ID_PATTERN = re.compile(r"^\d{8}-\d{6}-[A-Za-z0-9_-]+-[0-9a-f]{4}$")
#: OSError numbers that mean "no room left to write": a full disk, or the user's quota.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
#: At most this many training jobs live on this machine at once (default 1); counted across processes.
MAX_JOBS_ENV = "CXR_MAX_JOBS"
DEFAULT_MAX_JOBS = 1
#: The file in the runs root whose flock makes "count the live jobs, then start one" one step.
SLOTS_FILE = ".jobs.lock"
#: How long a start waits for another start (a listing and a fork) to finish before giving up.
SLOT_WAIT_S = 15.0


# --------------------------------------------------------------------------------------------
# Small file helpers
# --------------------------------------------------------------------------------------------

def atomic_write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    """JSON (NaN written as null) written atomically."""
    atomic_write_text(path, json.dumps(_jsonable(data), indent=2) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from a file; ConfigError (naming the file) when missing, unreadable, empty, not an object,
    or beyond cxrcore.fileio's guards (not a regular file, too large, nested too deeply)."""
    p = Path(path)
    try:
        os.stat(p)
    except FileNotFoundError:
        raise ConfigError(f"{p.name} is missing.", file=str(p)) from None
    except PermissionError:
        raise ConfigError(f"{p.name} cannot be read: permission denied.", file=str(p),
                          fix="give your user read access to the run folder (ls -l shows its owner and "
                              "permissions).") from None
    except OSError as err:
        raise ConfigError(f"{p.name} is damaged ({type(err).__name__}: {err}).", file=str(p)) from None
    data = read_json_file(p, error=ConfigError, what=p.name)
    if not isinstance(data, dict):
        raise ConfigError(f"{p.name} is not a JSON object.", file=str(p))
    return data


def hostname() -> str:
    return socket.gethostname()


def is_disk_full(err: BaseException) -> bool:
    """True for the OSError a write gets when the disk (or the user's quota) has no room left."""
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


def disk_full_error(path: str | os.PathLike, kept: str = "") -> ConfigError:
    """The user-facing error for a write into `path` (a file, or a folder when the file is unknown) that failed
    because the disk is full; `kept` says what stayed intact."""
    p = Path(path)
    folder, what = (p, f"into {p.name}/") if p.is_dir() else (p.parent, p.name)
    return ConfigError(f"the disk is full (no space left on the device) while writing {what}."
                       + (f" {kept}" if kept else ""), file=str(folder),
                       fix=f"free disk space on the drive holding {folder} (`df -h` shows it), then resume the "
                           "run: it continues from its last checkpoint.")


def rewrite_in_place(path: str | os.PathLike, text: str) -> None:
    """Overwrite an existing small file without a temporary copy: the fallback when the disk is full.

    On most filesystems a file under one block (status.json) is rewritten into the block it already has, so
    no new space is needed; readers may see a half-written file for a moment, so this is only the fallback.
    """
    data = text.encode("utf-8")
    with open(path, "r+b") as handle:
        handle.write(data)
        handle.truncate(len(data))
        handle.flush()
        os.fsync(handle.fileno())


# --------------------------------------------------------------------------------------------
# Processes and the lock
# --------------------------------------------------------------------------------------------

def pid_alive(pid: Any) -> bool:
    """True when a process with this pid exists on this host and is not a zombie."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a dead child not yet reaped by its parent (e.g. the Streamlit server) is a zombie
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        if state in (b"Z", b"X"):
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it if it is ours
            except ChildProcessError:
                pass
            return False
    except (OSError, IndexError):
        pass
    return True


def lock_held(run_dir: str | os.PathLike) -> bool:
    """True while some process holds train.lock (checked with a non-blocking shared flock)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases the probe's own shared lock
    return False


def lock_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What train.lock says about its holder (pid, host, since); {} when unreadable."""
    try:
        data = read_json_file(Path(run_dir) / LOCK_FILE, error=ConfigError, what=LOCK_FILE)
        return data if isinstance(data, dict) else {}
    except (OSError, ConfigError):  # missing, empty (flock only), damaged: no holder to name
        return {}


def flock_within(fd: int, wait_s: float, *, poll_s: float = 0.1) -> bool:
    """Take an exclusive flock on `fd`, retrying for up to `wait_s` seconds; False when still held by another."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)


class RunLock:
    """The exclusive flock on `<run>/train.lock`, held for a training process's whole life."""

    def __init__(self, run_dir: str | os.PathLike, fd: int) -> None:
        self.run_dir = Path(run_dir)
        self.fd = fd

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike, *, wait_s: float = 2.0, inherited: bool = True) -> "RunLock":
        """Take the lock (or adopt the one a launcher passed in CXR_TRAIN_LOCK_FD); ConfigError when taken."""
        run_dir = Path(run_dir)
        path = run_dir / LOCK_FILE
        raw = os.environ.get(LOCK_FD_ENV) if inherited else None
        if raw:
            os.environ.pop(LOCK_FD_ENV, None)
            try:
                fd = int(raw)
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except (ValueError, OSError):
                same = False
            if same:
                lock = cls(run_dir, fd)
                lock.write_owner()
                return lock
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not flock_within(fd, wait_s, poll_s=0.1):
            os.close(fd)
            raise already_running(run_dir)
        lock = cls(run_dir, fd)
        lock.write_owner()
        return lock

    def write_owner(self, pid: int | None = None) -> None:
        """Record the holder's pid and host in the lock file (for display and cancel)."""
        text = json.dumps({"pid": pid or os.getpid(), "host": hostname(), "since": time.time()})
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = -1

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def already_running(run_dir: str | os.PathLike) -> ConfigError:
    """The refusal for a second job on the same run folder."""
    info = lock_info(run_dir)
    who = f"process {info['pid']}" if info.get("pid") else "another process"
    if info.get("host") and info["host"] != hostname():
        who += f" on {info['host']}"
    return ConfigError(f"this run folder is already being trained by {who}; only one job per run folder.",
                       file=str(run_dir), fix="wait for it to finish or cancel it, or start a new run.")


# --------------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------------

class StatusWriter:
    """Keeps a run's status dict and writes status.json atomically: on request, throttled, and from a heartbeat thread."""

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True, min_interval_s: float = 1.0) -> None:
        self.path = Path(run_dir) / STATUS_FILE
        self.enabled = enabled
        self.min_interval_s = min_interval_s
        self.fields: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._last = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if enabled and self.path.is_file():
            try:
                self.fields = read_json(self.path)
            except ConfigError:
                self.fields = {}

    def update(self, *, force: bool = False, **values: Any) -> None:
        """Merge values; write now when forced or when the last write is older than min_interval_s."""
        with self._lock:
            self.fields.update(values)
            if force or time.monotonic() - self._last >= self.min_interval_s:
                self._write()

    def _write(self) -> None:
        if not self.enabled:
            return
        self.fields["updated"] = time.time()
        try:
            atomic_write_json(self.path, self.fields)
        except OSError as err:
            # A full disk must not kill training (the next beat retries), nor hide a final state: the
            # temporary copy needs new space, rewriting the existing file in place usually does not.
            if not is_disk_full(err):
                return
            try:
                rewrite_in_place(self.path, json.dumps(_jsonable(self.fields), indent=2) + "\n")
            except OSError:
                return
        self._last = time.monotonic()

    def start_heartbeat(self, interval_s: float = HEARTBEAT_S) -> None:
        """Rewrite status.json every interval_s even while no batch ends (data loading, validation)."""
        if not self.enabled or self._thread is not None:
            return

        def beat() -> None:
            while not self._stop.wait(interval_s):
                with self._lock:
                    if time.monotonic() - self._last >= interval_s * 0.9:
                        self._write()

        self._thread = threading.Thread(target=beat, name="status-heartbeat", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def effective_state(status: Mapping[str, Any], run_dir: str | os.PathLike, *, now: float | None = None) -> str:
    """The state to show: a queued/running status whose process is gone is 'interrupted'.

    On this host: the lock file's flock (released by the kernel when the process dies) and the pid;
    from another host, where neither can be checked: a heartbeat older than STALE_AFTER_S.
    """
    state = str(status.get("state", ""))
    if state not in ACTIVE_STATES:
        return state if state in STATES else "broken"
    host = status.get("host")
    if host and host != hostname():
        updated = float(status.get("updated") or 0)
        return state if (now or time.time()) - updated < STALE_AFTER_S else "interrupted"
    if lock_held(run_dir):
        return state
    pid = lock_info(run_dir).get("pid") or status.get("pid")
    if not (Path(run_dir) / LOCK_FILE).exists() and pid_alive(pid):
        return state
    return "interrupted"


def new_run_id(label: str = "run", now: float | None = None) -> str:
    """Sortable, unique, filesystem-safe: 20250101-120000-demo-1a2b."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now or time.time()))
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in label.lower()).strip("-")[:24] or "run"
    return f"{stamp}-{safe}-{secrets.token_hex(2)}"


def create_run(runs_root: str | os.PathLike, config: Any, *, run_id: str | None = None) -> Path:
    """A new run folder with config.json and a 'queued' status.json, made atomically (temp dir, rename)."""
    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    run_id = run_id or new_run_id(getattr(config, "name", "") or getattr(config, "preset", "run"))
    final = root / run_id
    if final.exists():
        raise ConfigError("a run folder with this name exists already.", file=str(final), fix="choose another run id.")
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}.", dir=root))
    try:
        atomic_write_text(tmp / CONFIG_FILE, config.to_json())
        atomic_write_json(tmp / STATUS_FILE, {"state": "queued", "run_id": run_id, "created": time.time(),
                                              "updated": time.time(), "epoch": 0,
                                              "epochs": getattr(config, "epochs", None)})
        os.rename(tmp, final)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# --------------------------------------------------------------------------------------------
# Launching and cancelling
# --------------------------------------------------------------------------------------------

def train_command(run_dir: str | os.PathLike, *, resume: bool = False, python: str | None = None) -> list[str]:
    """The command line of a training job for this folder."""
    exe = python or sys.executable
    run_dir = Path(run_dir)
    if resume:
        return [exe, "-m", "cxrcore", "train", "--resume", str(run_dir)]
    return [exe, "-m", "cxrcore", "train", "--config", str(run_dir / CONFIG_FILE)]


def max_jobs(env: Mapping[str, str] | None = None) -> int:
    """The most training jobs this machine runs at once: CXR_MAX_JOBS, default 1; ConfigError when invalid."""
    raw = str((env if env is not None else os.environ).get(MAX_JOBS_ENV, "")).strip()
    if not raw:
        return DEFAULT_MAX_JOBS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{MAX_JOBS_ENV} must be a whole number of at least 1 (it is {raw!r}).",
                          fix=f"start the server with e.g. {MAX_JOBS_ENV}=2, or leave it unset for 1 job at a time.")
    return value


def live_jobs(runs_root: str | os.PathLike) -> list[RunSummary]:
    """Runs under runs_root queued or running on this machine (by their lock and pid, see effective_state)."""
    return [r for r in list_runs(runs_root) if not r.broken and r.state in ACTIVE_STATES
            and r.status.get("host") in (None, "", hostname())]


def too_many_jobs(live: list[RunSummary], limit: int) -> ConfigError:
    """The refusal of a start while `limit` jobs are live."""
    n = len(live)
    ids = ", ".join(r.run_id for r in live)
    return ConfigError(f"{n} training job{'s' if n != 1 else ''} already running (run id{'s' if n != 1 else ''} "
                       f"{ids}): at most {limit} at a time on this machine ({MAX_JOBS_ENV}).",
                       fix=f"wait for {'it' if n == 1 else 'one'} to finish or cancel it; the teacher can allow more "
                           f"by starting the server with {MAX_JOBS_ENV}={limit + 1}.")


@contextmanager
def job_slot(runs_root: str | os.PathLike, *, exclude: str | os.PathLike | None = None,
             limit: int | None = None, wait_s: float = SLOT_WAIT_S) -> Iterator[None]:
    """Hold the exclusive flock on <runs root>/.jobs.lock, refuse when `limit` (CXR_MAX_JOBS) jobs are live.

    Every start (each Streamlit session and worker, the CLI) counts and starts under this lock, and the
    caller takes the new job's train.lock before leaving the block, so two simultaneous starts cannot
    both see a free slot. `exclude` is the run folder being started (a resume is not counted against
    itself). ConfigError (too_many_jobs) when the machine is full.
    """
    root = Path(runs_root)
    limit = max_jobs() if limit is None else limit
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / SLOTS_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not flock_within(fd, wait_s, poll_s=0.05):
            raise ConfigError("another training job is being started right now.", file=str(root),
                              fix="try again in a moment.")
        skip = Path(exclude).resolve() if exclude is not None else None
        live = [r for r in live_jobs(root) if skip is None or r.path.resolve() != skip]
        if len(live) >= limit:
            raise too_many_jobs(live, limit)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def take_run_lock(run_dir: str | os.PathLike) -> int:
    """An open descriptor holding the exclusive flock on <run>/train.lock; ConfigError when another holds it."""
    fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise already_running(run_dir) from None
    return fd


def start_run(runs_root: str | os.PathLike, config: Any, *, run_id: str | None = None,
              cwd: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
              python: str | None = None) -> tuple[Path, int]:
    """Create a run folder for `config` and launch it, both inside job_slot: a start refused because the
    machine runs CXR_MAX_JOBS jobs already leaves no folder behind. (run folder, pid)."""
    with job_slot(runs_root):
        run_dir = create_run(runs_root, config, run_id=run_id)
        return run_dir, _launch(run_dir, cwd=cwd, env=env, python=python)


def launch(run_dir: str | os.PathLike, *, resume: bool = False, cwd: str | os.PathLike | None = None,
           env: Mapping[str, str] | None = None, python: str | None = None, job_limit: bool = True) -> int:
    """Start training as a detached process (own session; survives page reloads and app restarts).

    The launcher takes train.lock first and hands the locked descriptor to the child, so two quick
    clicks cannot start two jobs; a folder already being trained is refused with a ConfigError, and
    so is any start while CXR_MAX_JOBS jobs run on this machine (job_limit=False skips that count).
    The process's output goes to <run>/raw.log, its own lines to train.log (`job_logger`). Returns the pid.
    """
    run_dir = Path(run_dir)
    if not job_limit:
        return _launch(run_dir, resume=resume, cwd=cwd, env=env, python=python)
    with job_slot(run_dir.parent, exclude=run_dir):
        return _launch(run_dir, resume=resume, cwd=cwd, env=env, python=python)


def _launch(run_dir: Path, *, resume: bool = False, cwd: str | os.PathLike | None = None,
            env: Mapping[str, str] | None = None, python: str | None = None) -> int:
    """launch() without the job count; the child's environment never holds the teacher passcode."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError("this folder is not a run folder (no config.json).", file=str(run_dir),
                          fix="create it with cxrcore.train.jobs.create_run or the Training page.")
    before = summarize_run(run_dir).state
    fd = take_run_lock(run_dir)
    try:
        status = StatusWriter(run_dir)
        status.update(force=True, state="queued", pid=None, host=hostname(), error=None,
                      message="resuming" if resume else "starting", queued=time.time(),
                      resumed_from=before if resume else None)
        child_env = {**without_passcode({**os.environ, **(env or {})}), LOCK_FD_ENV: str(fd), "PYTHONUNBUFFERED": "1"}
        root = Path(cwd) if cwd is not None else CODE_ROOT
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), child_env.get("PYTHONPATH", "")) if p)
        header = (f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'}: "
                  f"{' '.join(train_command(run_dir, resume=resume, python=python))}\n").encode()
        with open(run_dir / LOG_FILE, "ab") as own:
            own.write(header)
        with open(run_dir / RAW_LOG_FILE, "ab") as raw:
            raw.write(header)
            raw.flush()
            proc = subprocess.Popen(train_command(run_dir, resume=resume, python=python), cwd=root,
                                    stdin=subprocess.DEVNULL, stdout=raw, stderr=subprocess.STDOUT,
                                    env=child_env, start_new_session=True, pass_fds=(fd,), close_fds=True)
        RunLock(run_dir, fd).write_owner(proc.pid)
        status.update(force=True, pid=proc.pid)
        return proc.pid
    finally:
        os.close(fd)  # the child keeps the lock through its inherited descriptor


def cancel(run_dir: str | os.PathLike, *, force: bool = False) -> bool:
    """Ask the job training this folder to stop (SIGTERM: it saves what it has, status 'cancelled').

    force=True sends SIGKILL (nothing saved; status becomes 'interrupted'). False when nothing runs.
    """
    run_dir = Path(run_dir)
    if not lock_held(run_dir):
        return False
    info = lock_info(run_dir)
    pid = info.get("pid")
    if not pid or (info.get("host") and info["host"] != hostname()) or not pid_alive(pid):
        return False
    sig = signal.SIGKILL if force else signal.SIGTERM
    try:
        os.kill(int(pid), sig)
    except ProcessLookupError:
        return False
    if not force:
        StatusWriter(run_dir).update(force=True, cancel_requested=time.time())
    return True


PROBE_TIMEOUT_S = 600


def run_probe(config: Any, *, batches: int = 4, timeout_s: float = PROBE_TIMEOUT_S,
              cwd: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Time a few training batches in a separate process (`train --probe`); the ProbeResult as a dict.

    A subprocess keeps TensorFlow (and GPU memory) out of the caller, e.g. the Streamlit server.
    ConfigError with the child's one-line message when it fails or times out.
    """
    root = Path(cwd) if cwd is not None else CODE_ROOT
    with tempfile.TemporaryDirectory(prefix="cxr-probe-") as tmp:
        path = Path(tmp) / "probe.json"
        path.write_text(config.to_json(), encoding="utf-8")
        command = [sys.executable, "-m", "cxrcore", "train", "--probe", "--config", str(path), "--format", "json",
                   "--probe-batches", str(int(batches))]
        child_env = {**without_passcode({**os.environ, **(env or {})}), "TF_CPP_MIN_LOG_LEVEL": "2"}
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), child_env.get("PYTHONPATH", "")) if p)
        try:
            done = subprocess.run(command, cwd=root, env=child_env, capture_output=True, text=True,
                                  timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"the time probe took longer than {timeout_s:.0f} s.",
                              fix="use fewer or smaller images (max_train_images, input_size).") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
        text = lines[-1][len("error:"):].strip() if lines else (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"the time probe failed: {text}")
    try:
        return parse_json(done.stdout, error=ConfigError, file=None, what="time probe's result")
    except ConfigError:
        raise ConfigError("the time probe printed no result.", fix="run `python -m cxrcore train --probe` "
                          "in a terminal to see why.") from None


# --------------------------------------------------------------------------------------------
# Reading runs (for the page and `train --list`)
# --------------------------------------------------------------------------------------------

@dataclass
class RunSummary:
    """One run folder as listed: its state (after the liveness check) or why it is broken."""

    run_id: str
    path: Path
    state: str
    status: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    @property
    def broken(self) -> bool:
        return self.problem is not None

    @property
    def created(self) -> float:
        value = self.status.get("created") or self.status.get("started")
        try:
            return float(value)
        except (TypeError, ValueError):
            try:
                return self.path.stat().st_mtime
            except OSError:
                return 0.0

    @property
    def has_model(self) -> bool:
        try:
            return (self.path / BEST_MODEL).is_file()
        except OSError:  # an unreadable folder (permissions): no usable model
            return False

    def row(self) -> dict[str, Any]:
        """A flat dict for a table."""
        s, c = self.status, self.config
        best = s.get("best_val_auroc")
        return {"run": self.run_id, "state": "broken" if self.broken else self.state,
                "epoch": f"{s.get('epoch', 0)}/{s.get('epochs', c.get('epochs', '?'))}" if not self.broken else "",
                "best val AUROC": round(float(best), 4) if isinstance(best, (int, float)) else None,
                "preset": c.get("preset", ""), "backbone": c.get("backbone", ""),
                "dataset": Path(str(c.get("dataset") or c.get("train_split") or "")).name,
                "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created)),
                "model": "best.keras" if self.has_model else "",
                "note": self.problem or s.get("error") or s.get("message") or ""}


def summarize_run(run_dir: str | os.PathLike) -> RunSummary:
    """Read one run folder; anything unreadable makes it 'broken' with the reason, never an exception."""
    path = Path(run_dir)
    try:
        if not path.is_dir():
            return RunSummary(path.name, path, "broken", problem="this is a file, not a run folder (a run is a "
                              "folder holding config.json and status.json); it was probably replaced or copied "
                              "incompletely.")
        config = read_json(path / CONFIG_FILE)
        status = read_json(path / STATUS_FILE)
        state = effective_state(status, path)
        if state == "broken":
            return RunSummary(path.name, path, "broken", status, config,
                              problem=f"status.json has an unknown state {status.get('state')!r}.")
        return RunSummary(path.name, path, state, status, config)
    except ConfigError as err:
        return RunSummary(path.name, path, "broken", problem=err.problem)
    except OSError as err:
        return RunSummary(path.name, path, "broken", problem=f"cannot be read ({err}).")


def list_runs(runs_root: str | os.PathLike) -> list[RunSummary]:
    """Every run folder under runs_root, newest first; hidden and temporary folders are skipped.

    Other files are skipped too, except one named like a run (RUN_ID_PATTERN): that is a run folder
    replaced by a file, listed as broken. ConfigError when runs_root itself cannot be read.
    """
    root = Path(runs_root)
    if not root.is_dir():
        return []
    try:
        entries = list(root.iterdir())
    except OSError as err:
        raise ConfigError(f"the runs folder cannot be read ({err.strerror or err}).", file=str(root),
                          fix="give your user read access to it, or point CXR_RUNS_ROOT at another folder.") from None
    runs = [summarize_run(p) for p in entries
            if not p.name.startswith(".") and (_is_dir(p) or RUN_ID_PATTERN.match(p.name))]
    return sorted(runs, key=lambda r: (r.created, r.run_id), reverse=True)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def read_metrics(run_dir: str | os.PathLike):
    """metrics.csv as a DataFrame (empty when not written yet); ConfigError when it is damaged.

    A last row cut off by a crash or a full disk (every complete row ends with a newline) is left out,
    and so are rows without a usable epoch number.
    """
    import pandas as pd

    path = Path(run_dir) / METRICS_FILE
    try:
        if not path.is_file():
            return pd.DataFrame()
        data = path.read_bytes()
        if not data.strip():
            return pd.DataFrame()
        frame = pd.read_csv(io.BytesIO(data))
    except (ValueError, OSError) as err:
        raise ConfigError(f"metrics.csv is damaged ({err}).", file=str(path)) from None
    if len(frame) and not data.endswith(b"\n"):
        frame = frame.iloc[:-1]
    if len(frame) and "epoch" not in frame.columns:
        raise ConfigError("metrics.csv has no 'epoch' column.", file=str(path))
    if len(frame):
        epochs = pd.to_numeric(frame["epoch"], errors="coerce")
        usable = epochs.notna() & (epochs >= 1)
        frame = frame[usable].reset_index(drop=True)
        frame["epoch"] = epochs[usable].astype(int).to_numpy()
    return frame


def job_logger(run_dir: str | os.PathLike, *, echo: bool = True) -> Callable[[str], None]:
    """The job's own log: each line timestamped into <run>/train.log, and printed (to the terminal, or to
    raw.log for a launched job) when `echo`. TensorFlow's own notices never reach train.log."""
    path = Path(run_dir) / LOG_FILE

    def log(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        try:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except OSError:  # a full disk or a removed folder must not stop training; the line is still printed
            pass
        if echo:
            print(line, flush=True)

    return log


def log_tail(run_dir: str | os.PathLike, lines: int = 40, max_bytes: int = 64_000, *, name: str = LOG_FILE) -> str:
    """The last lines of train.log, or of another log of the run (`name`, e.g. RAW_LOG_FILE); reads at most
    max_bytes from the end."""
    path = Path(run_dir) / name
    try:
        with open_for_reading(path, error=ConfigError, what=LOG_FILE) as handle:  # a pipe would block the page
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read(max_bytes).decode("utf-8", errors="replace")
    except (OSError, ConfigError):
        return ""
    text = data.replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def append_metrics_row(run_dir: str | os.PathLike, row: Mapping[str, Any], columns: list[str]) -> None:
    """Append one epoch to metrics.csv (header first when the file is new)."""
    path = Path(run_dir) / METRICS_FILE
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if new:
            writer.writerow(columns)
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
        handle.flush()
        os.fsync(handle.fileno())


def truncate_metrics(run_dir: str | os.PathLike, epochs_done: int) -> int:
    """Keep only the rows of epochs 1..epochs_done (an epoch cut short by a crash is trained again)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return 0
    header, body = rows[0], rows[1:]
    try:
        col = header.index("epoch")
    except ValueError:
        body = []
        col = 0
    kept = []
    for r in body:
        try:
            if len(r) > col and int(float(r[col])) <= epochs_done:
                kept.append(r)
        except ValueError:
            continue
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(kept)
    atomic_write_text(path, buffer.getvalue())
    return len(kept)


def tf_config_role(env: Mapping[str, str] | None = None) -> tuple[bool, bool, int]:
    """(multi_worker, is_chief, task index) from TF_CONFIG, without TensorFlow."""
    raw = (env if env is not None else os.environ).get("TF_CONFIG")
    if not raw:
        return False, True, 0
    try:
        data = parse_json(raw, error=ConfigError, file=None, what="TF_CONFIG")
        cluster = data.get("cluster", {})
        task = data.get("task", {})
        n = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
        kind, index = task.get("type", "worker"), int(task.get("index", 0))
    except (ConfigError, ValueError, AttributeError, TypeError):
        raise ConfigError("TF_CONFIG is not valid JSON with 'cluster' and 'task'.",
                          fix='set e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
                              '"task": {"type": "worker", "index": 0}}\'.') from None
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    return n > 1, chief, index


__all__ = ["ACTIVE_STATES", "RunLock", "RunSummary", "STATES", "StatusWriter", "already_running", "append_metrics_row",
           "atomic_write_json", "atomic_write_text", "cancel", "create_run", "disk_full_error", "effective_state",
           "is_disk_full", "job_logger", "job_slot", "launch", "list_runs", "live_jobs", "lock_held", "lock_info", "log_tail",
           "max_jobs", "new_run_id", "pid_alive", "read_json", "read_metrics", "rewrite_in_place", "run_probe",
           "start_run", "summarize_run", "take_run_lock", "tf_config_role", "too_many_jobs", "train_command",
           "truncate_metrics"]
