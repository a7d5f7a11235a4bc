"""scripts/classroom.py: two workers behind Debian's nginx on loopback; pages render through the proxy in
Chromium (an upload too), one browser session stays on one worker, new browsers spread over both,
SIGTERM stops all.
The script warms each worker first (its main pages over the websocket), so that path runs here too.

Needs Debian's nginx (`make test` installs nginx-light); fails with the install line when it is missing.
"""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.app_support import ROOT, free_port, headless_chromium

ACCESS = re.compile(r'^(\S+) (\S+) (\S+) "(\S+) (\S+) [^"]*" (\d+)')


def _load_script():
    spec = importlib.util.spec_from_file_location("classroom_script", ROOT / "scripts" / "classroom.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    module = _load_script()
    try:
        module.find_nginx()
    except SystemExit as missing:  # `make test` installs it; a machine without it on purpose says so
        if os.environ.get("CXR_SKIP_PROXY") == "1":
            pytest.skip(str(missing))
        pytest.fail(f"{missing} (or set CXR_SKIP_PROXY=1 to skip the proxy tests)")
    return module


def _free_run(count: int) -> int:
    """A first port of `count` consecutive free loopback ports."""
    for _ in range(100):
        base = free_port()
        if base + count < 65535 and all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free ports")


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed connections in TIME_WAIT are fine
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _access_log(state: Path) -> list[tuple[str, str, str, int]]:
    """(cookie, upstream, path, status) per request nginx logged."""
    rows = []
    for line in (state / "nginx-access.log").read_text().splitlines():
        found = ACCESS.match(line)
        if found:
            rows.append((found.group(2), found.group(3), found.group(5), int(found.group(6))))
    return rows


def test_generated_config_is_valid_nginx(script, tmp_path):
    state = tmp_path / "state"
    (state / "tmp").mkdir(parents=True)
    config = script.nginx_config(state, "127.0.0.1", free_port(), [free_port(), free_port()], None)
    (state / "nginx.conf").write_text(config)
    checked = subprocess.run([script.find_nginx(), "-t", "-p", str(state), "-e", str(state / "error.log"),
                              "-c", str(state / "nginx.conf")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "hash $cxr_worker consistent" in config and "proxy_http_version 1.1" in config


class FakeProcess:
    def __init__(self) -> None:
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class FakeClassroom:
    """What keep_serving() uses of a Classroom: two workers and nginx, processes that die on cue."""

    def __init__(self, script, deaths: list[tuple[str, int]], fail_restart: bool = False) -> None:
        self.real = script.Classroom(workers=2, host="127.0.0.1", port=1, worker_port=2, state=Path("/state"),
                                     nginx="nginx", warm=False)
        self.state = self.real.state
        self.worker_index, self.worker_log = self.real.worker_index, self.real.worker_log
        self.processes = {name: FakeProcess() for name in (self.real.worker_name(0), self.real.worker_name(1),
                                                           "nginx")}
        self.deaths, self.fail_restart, self.restarted = list(deaths), fail_restart, []

    def dead(self) -> str | None:
        gone = next((name for name, p in self.processes.items() if p.poll() is not None), None)
        if gone is None and self.deaths:
            gone, code = self.deaths.pop(0)
            self.processes[gone].returncode = code
        return gone

    def restart_worker(self, index: int) -> None:
        if self.fail_restart:
            raise RuntimeError(f"worker {index} exited before it answered")
        self.restarted.append(index)
        self.processes[self.real.worker_name(index)] = FakeProcess()


def test_a_dead_worker_is_started_again_and_one_that_keeps_dying_stops_the_class(capsys):
    script = _load_script()
    w0, w1 = "worker 0 (port 2)", "worker 1 (port 3)"
    room = FakeClassroom(script, [(w0, -9), (w1, 1), (w0, -11)])
    room.deaths.append(("nginx", 0))
    assert script.keep_serving(room, poll_s=0) == 1
    assert room.restarted == [0, 1, 0]
    err = capsys.readouterr().err
    assert "worker 0 (port 2) exited (killed by SIGKILL (often the kernel's out-of-memory killer)); starting it " \
           "again (restart 1 of 3" in err
    assert "worker 1 (port 3) exited (exit code 1); starting it again" in err
    assert "killed by SIGSEGV" in err
    assert "nginx exited (exit code 0): students can no longer reach any worker" in err

    room = FakeClassroom(script, [(w1, -9)] * (script.MAX_RESTARTS + 1))
    assert script.keep_serving(room, poll_s=0) == 1
    assert room.restarted == [1] * script.MAX_RESTARTS
    assert f"{script.MAX_RESTARTS + 1} times in 10 minutes: a restart does not help" in capsys.readouterr().err

    room = FakeClassroom(script, [(w0, -9)], fail_restart=True)
    with pytest.raises(RuntimeError, match="exited before it answered"):  # main() prints it and stops the rest
        script.keep_serving(room, poll_s=0)


def test_restarts_older_than_the_window_do_not_count(monkeypatch):
    script = _load_script()
    clock = iter(range(0, 10_000, int(script.RESTART_WINDOW_S) + 1))  # each death after the last one's window
    monkeypatch.setattr(script.time, "monotonic", lambda: float(next(clock)))
    room = FakeClassroom(script, [("worker 0 (port 2)", -9)] * (script.MAX_RESTARTS + 2) + [("nginx", 0)])
    assert script.keep_serving(room, poll_s=0) == 1
    assert room.restarted == [0] * (script.MAX_RESTARTS + 2)


@pytest.mark.slow
def test_two_workers_behind_nginx_render_stick_and_stop(script, app_data_root, tmp_path, artifacts_dir):
    state, port, first = tmp_path / "classroom", free_port(), _free_run(2)
    env = {**os.environ, "CXR_DATA_ROOT": str(app_data_root), "CXR_TEACHER_PASSCODE": "from-the-environment"}
    log = open(tmp_path / "classroom.log", "w")
    process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "classroom.py"), "--workers", "2",
                                "--host", "127.0.0.1", "--port", str(port), "--worker-port", str(first),
                                "--state-dir", str(state)],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while "Classroom ready" not in (tmp_path / "classroom.log").read_text():
            assert process.poll() is None, (tmp_path / "classroom.log").read_text()
            assert time.monotonic() < deadline, "the classroom did not start in 180 s"
            time.sleep(0.5)
        workers = {f"127.0.0.1:{first}", f"127.0.0.1:{first + 1}"}
        worker_pids = [int(p) for p in subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True,
                                                      text=True).stdout.split()]
        classroom_workers = 0
        for pid in worker_pids:  # the workers got the classroom flag and the passcode from the environment
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert b"from-the-environment" not in Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"CXR_CLASSROOM=1" in environ:
                assert b"CXR_TEACHER_PASSCODE=from-the-environment" in environ
                classroom_workers += 1
            else:  # nginx: it has no use for the passcode
                assert not any(v.startswith(b"CXR_TEACHER_PASSCODE") for v in environ)
        assert classroom_workers == 2

        with headless_chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for path, title in (("", "CXR Dashboard"), ("dataset_explorer", "Dataset explorer")):
                page.goto(f"{url}/{path}", wait_until="domcontentloaded")
                page.wait_for_function("""() => {
                    const app = document.querySelector('[data-testid="stApp"]');
                    return app && app.getAttribute('data-test-script-state') === 'notRunning'
                        && document.querySelector('h1') !== null; }""", timeout=90_000)
                assert page.locator("h1", has_text=title).first.is_visible()
                assert page.locator('[data-testid="stException"]').count() == 0
            # an upload (XSRF cookie + token, the session's upload URL) reaches the session's worker
            page.goto(f"{url}/leakage_audit", wait_until="domcontentloaded")
            page.get_by_text("Upload split files").click()
            mini = app_data_root / "mini"
            page.locator('input[type="file"]').set_input_files([str(mini / "train.csv"),
                                                                 str(mini / "valid_leaky.csv")])
            page.get_by_text("Leaking: 3 patient(s)").wait_for(timeout=60_000)
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(artifacts_dir / "classroom-proxy.png"), full_page=True)
            cookie = next(c["value"] for c in page.context.cookies() if c["name"] == script.COOKIE)
            page.close()

        for _ in range(24):  # browsers without the cookie: each gets its own, spread by their hash
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=10) as response:
                assert response.status == 200
                assert any(c.startswith(f"{script.COOKIE}=") for c in response.headers.get_all("Set-Cookie"))
        rows = _access_log(state)
        mine = [r for r in rows if r[0] == cookie]
        assert {r[1] for r in mine} <= workers and len({r[1] for r in mine}) == 1, mine  # one worker
        assert any(path.startswith("/_stcore/stream") and status == 101 for _, _, path, status in mine)
        assert any(path.startswith("/_stcore/upload_file") and status < 300 for _, _, path, status in mine)
        fresh = [r for r in rows if r[0] == "-" and r[2] == "/_stcore/health"]
        assert {r[1] for r in fresh} == workers, "new browsers are spread over both workers"

        # a worker killed as the out-of-memory killer would is started again on its port, and serves
        mine_port = int(next(iter({r[1] for r in mine})).rsplit(":", 1)[1])
        victim = next(pid for pid in worker_pids
                      if f"--server.port\0{mine_port}\0".encode() in Path(f"/proc/{pid}/cmdline").read_bytes())
        os.killpg(victim, signal.SIGKILL)
        deadline = time.monotonic() + 180
        while "is serving again" not in (tmp_path / "classroom.log").read_text():
            assert process.poll() is None, (tmp_path / "classroom.log").read_text()
            assert time.monotonic() < deadline, "the killed worker did not come back in 180 s"
            time.sleep(0.5)
        text = (tmp_path / "classroom.log").read_text()
        assert f"worker {mine_port - first} (port {mine_port}) exited (killed by SIGKILL" in text
        print(re.search(r".* is serving again.*", text).group(0))  # the time it took, for docs/reliability.md
        logged = len(_access_log(state))
        request = urllib.request.Request(f"{url}/_stcore/health", headers={"Cookie": f"{script.COOKIE}={cookie}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        deadline = time.monotonic() + 10
        while len(_access_log(state)) == logged and time.monotonic() < deadline:  # nginx logs after answering
            time.sleep(0.1)
        assert _access_log(state)[logged][:2] == (cookie, f"127.0.0.1:{mine_port}")  # back on its own worker
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        code = process.wait(60)
        log.close()
    assert code == 0, (tmp_path / "classroom.log").read_text()
    assert "Stopping the classroom" in (tmp_path / "classroom.log").read_text()
    for port_number in (port, first, first + 1):  # nginx and both workers are gone
        assert _free(port_number), f"port {port_number} still open after SIGTERM"
