"""Helpers for page and browser tests: a small dataset on disk, a live server, a headless browser."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from cxrcore.data.labels import LABELS
from scripts.classroom import stop_groups, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def make_course_dataset(folder: Path, patients: int = 40, per_patient: int = 3, size: int = 64,
                        seed: int = 0) -> Path:
    """Course layout: train/valid/test CSVs, a valid_leaky.csv sharing patients with train, images/."""
    import cv2

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for patient in range(1, patients + 1):
        base = rng.random((size, size))
        for follow_up in range(per_patient):
            name = f"{patient:08d}_{follow_up:03d}.png"
            image = np.clip(base + 0.05 * rng.standard_normal((size, size)), 0, 1)
            cv2.imwrite(str(folder / "images" / name), (image * 255).astype(np.uint8))
            rows.append([name, *(rng.random(len(LABELS)) < 0.15).astype(int), patient])
    frame = pd.DataFrame(rows, columns=["Image", *LABELS, "PatientId"])
    n_train, n_valid = int(patients * 0.7), int(patients * 0.15)
    train = frame[frame.PatientId <= n_train]
    valid = frame[(frame.PatientId > n_train) & (frame.PatientId <= n_train + n_valid)]
    test = frame[frame.PatientId > n_train + n_valid]
    train.to_csv(folder / "train.csv", index=False)
    valid.to_csv(folder / "valid.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    leaky = pd.concat([valid.iloc[: len(valid) // 2], train[train.PatientId <= 3]])
    leaky.to_csv(folder / "valid_leaky.csv", index=False)
    return folder


def sleeper_holding(run_dir: Path, seconds: int = 60) -> subprocess.Popen:
    """A plain process that holds the run's train.lock (inherited descriptor), as a launched job does."""
    import fcntl

    from cxrcore.train import jobs

    fd = os.open(run_dir / jobs.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"], pass_fds=(fd,),
                            start_new_session=True)
    jobs.RunLock(run_dir, fd).write_owner(proc.pid)
    os.close(fd)
    return proc


def answer_every_url(monkeypatch) -> list[tuple[str, str, float]]:
    """urllib.request.urlopen answering 200 to everything, offline; returns the (method, URL, timeout) asked."""
    asked: list[tuple[str, str, float]] = []

    class Answer:
        status = 200

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_urlopen(request, timeout):
        asked.append((request.get_method(), request.full_url, timeout))
        return Answer()

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return asked


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StreamlitServer:
    """`streamlit run Home.py` on loopback, in its own process group, stopped on exit."""

    def __init__(self, data_root: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CXR_DATA_ROOT": str(data_root), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "Home.py", "--server.port", str(self.port),
             "--server.address", "127.0.0.1", "--server.headless", "true",
             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 60) -> None:
        wait_healthy(self.process, self.url, timeout, f"streamlit (see {self.log.name})")

    def stop(self) -> None:
        stop_groups([self.process], grace=10)
        self.log.close()

    def __enter__(self) -> "StreamlitServer":
        """`with StreamlitServer(...) as app:` waits until it answers and stops it afterwards, even on errors."""
        try:
            self.wait()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def open_app_page(monkeypatch, page: str, *, state: Mapping[str, Any] | None = None, timeout: float = 180,
                  **roots: Path) -> Any:
    """An AppTest on Home.py switched to `page`, as a browser arriving there; `roots` (data=, models=,
    runs=, cache=) become CXR_<NAME>_ROOT and `state` is session state set before the first run."""
    from streamlit.testing.v1 import AppTest

    for name, folder in roots.items():
        monkeypatch.setenv(f"CXR_{name.upper()}_ROOT", str(folder))
    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=timeout)
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which("chromium") is not None


@contextlib.contextmanager
def headless_chromium() -> Iterator:
    """Debian's chromium, headless, through Playwright (never a downloaded browser). A missing chromium
    fails the test, or skips it when CXR_SKIP_BROWSER=1 (machines without a browser on purpose)."""
    import pytest

    if not chromium_available():
        if os.environ.get("CXR_SKIP_BROWSER") == "1":
            pytest.skip("CXR_SKIP_BROWSER=1 and no chromium")
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium); "
                    "browser tests never download a browser.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
