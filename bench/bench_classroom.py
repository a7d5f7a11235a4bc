"""A classroom under load: simulated students browse a real `streamlit run Home.py` over its websocket.

The server runs as a subprocess on loopback (headless, a free port, pinned to --cores CPUs) with
CXR_DATA_ROOT / CXR_MODELS_ROOT / CXR_RUNS_ROOT / CXR_CACHE_ROOT in a work folder that holds the demo
dataset and a demo model (made once with `python -m cxrcore demo` and `train --preset demo`, then
reused; the prediction cache starts empty on every run).

Each student speaks Streamlit's own protocol, as the browser does: the page's HTML first (behind the
classroom proxy it sets the cookie that keeps the student on one worker), one websocket to
/_stcore/stream, BackMsg `rerun_script` (the shown page, widget states; the fragment id when the widget
lives in an `st.fragment`, so only that section reruns) out, ForwardMsgs back until `script_finished`,
then the new images of the page fetched over HTTP (cached per student, as a browser does). A student opens
Home, then loops with a think time of --think seconds (seeded) between actions:
Dataset explorer (open, change the label filter or the page), Results (open, pick the prediction
files compared with the sidebar's model), GradCAM explorer (open, "Next" image).
One student runs a first loop alone (cold caches: model load, predictions); then all --sessions
students browse for --duration seconds. Errors: exception elements, st.error alerts, page-not-found,
script compile errors, timeouts, closed sockets, media fetches that are not 200, and "unexpected
error" lines in the server log: there must be none. Server memory (RSS of the server process and its
children) is sampled every second; the model must be loaded once (dashboard.models logs each load).
Finally a Playwright smoke: --browsers Chromium contexts (Debian's /usr/bin/chromium, never a
download) open the same four pages and must show no exception or error box.

--workers N serves the app as scripts/classroom.py does for a class: N Streamlit processes behind
Debian's nginx, sticky by cookie, all pinned to the same --cores CPUs (the script opens the main pages
once per worker before the proxy starts, so the "cold" loop is warm there). Several values
(--workers 1 2) run one classroom after the other, each with an empty prediction cache, and end with a
comparison table. Memory is then the RSS of every process (the workers, nginx, the script).

Run: python bench/bench_classroom.py [--sessions 30] [--duration 120] [--work bench/.cache/classroom]
     [--think 1 3] [--seed 0] [--cores 2] [--browsers 3] [--workers N [N ...]] [--json FILE]
Exit status: 0 when there were no errors, each model was loaded once per process and the smoke passed;
else 1.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.classroom import stop_groups, wait_healthy  # noqa: E402 - the servers this bench measures

DEFAULT_WORK = ROOT / "bench" / ".cache" / "classroom"
#: What dashboard.models logs (its MODEL_LOADED) each time a model file is loaded into the server.
MODEL_LOADED = "loaded model"
#: Lines of the server log that mean a page failed (dashboard.widgets.user_errors logs this one).
SERVER_ERROR_LINE = re.compile(r"unexpected error|Traceback \(most recent call last\)")
RUN_TIMEOUT_S = 300.0
MEDIA_CONNECTIONS = 6
PAGES = {"home": "", "dataset": "dataset_explorer", "results": "results", "gradcam": "gradcam_explorer"}
#: The phases of a run: the first student's first loop (empty caches), its second loop (warm, nobody
#: else on the server: the baseline), then every student together.
COLD, ALONE, LOAD = "cold", "alone", "load"
#: What a student does, in the order of the report.
ACTIONS = ("Home: open", "Dataset explorer: open", "Dataset explorer: filter or page", "Results: open",
           "Results: pick models", "GradCAM explorer: open", "GradCAM explorer: next image")
PAGE_TITLES = {"": "CXR Dashboard", "dataset_explorer": "Dataset explorer", "results": "Results",
               "gradcam_explorer": "GradCAM explorer"}


# --------------------------------------------------------------------------------------------
# Data: the demo dataset and model, made once into the work folder
# --------------------------------------------------------------------------------------------

def _cxrcore(*args: str) -> None:
    """Run `python -m cxrcore ARGS` from the repo root; stop the bench when it fails."""
    command = [sys.executable, "-m", "cxrcore", *args]
    print("  $ " + " ".join(command), flush=True)
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}")


def prepare_work(work: Path) -> dict[str, Path]:
    """The four roots under `work`: the demo dataset and one demo run are made when missing (a few
    minutes once), the prediction cache is emptied so every bench starts cold."""
    roots = {"data": work / "data", "models": work / "models", "runs": work / "runs", "cache": work / "cache"}
    demo = roots["data"] / "demo"
    if not (demo / "test.csv").is_file():
        _cxrcore("demo", "--out", str(demo), "--quiet")
    if not any(roots["runs"].glob("*/best.keras")):
        _cxrcore("train", "--preset", "demo", "--dataset", str(demo), "--runs-root", str(roots["runs"]))
    roots["models"].mkdir(parents=True, exist_ok=True)
    shutil.rmtree(roots["cache"], ignore_errors=True)
    roots["cache"].mkdir(parents=True)
    return roots


# --------------------------------------------------------------------------------------------
# The server and its memory
# --------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def split_cpus(cores: int) -> tuple[set[int], set[int]]:
    """(server CPUs, client CPUs): the first `cores` allowed CPUs serve; the client gets the rest, or
    shares them when there is no rest (a 2-core machine)."""
    allowed = sorted(os.sched_getaffinity(0))
    server = set(allowed[:cores])
    return server, (set(allowed) - server) or set(allowed)


class Server:
    """`streamlit run Home.py` on loopback in its own process group, with the four roots set."""

    def __init__(self, roots: dict[str, Path], log_path: Path, cpus: set[int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = roots_env(roots)
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "Home.py", "--server.port", str(self.port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats",
             "false", "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus))

    def wait(self, timeout: float = 120) -> None:
        """Until /_stcore/health answers."""
        wait_healthy(self.process, self.url, timeout, f"streamlit (see {self.log_path})")

    def stop(self) -> None:
        stop_groups([self.process])
        self._log.close()

    @property
    def log_paths(self) -> list[Path]:
        """One log per Streamlit process (model loads and errors are counted in each)."""
        return [self.log_path]


def roots_env(roots: dict[str, Path]) -> dict[str, str]:
    return {**os.environ, "CXR_DATA_ROOT": str(roots["data"]), "CXR_MODELS_ROOT": str(roots["models"]),
            "CXR_RUNS_ROOT": str(roots["runs"]), "CXR_CACHE_ROOT": str(roots["cache"]),
            "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}


def free_port_run(count: int) -> int:
    """A first port of `count` consecutive free loopback ports."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count)
        if all(_port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ProxiedServer:
    """`scripts/classroom.py`: `workers` Streamlit processes behind nginx, all on loopback and pinned to
    `cpus`, with the four roots set; its logs (one per worker, nginx's) go to `state`."""

    def __init__(self, roots: dict[str, Path], state: Path, cpus: set[int], workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state, self.workers = state, workers
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)
        self.log_path = state / "classroom.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "classroom.py"), "--workers", str(workers), "--host", "127.0.0.1",
             "--port", str(self.port), "--worker-port", str(free_port_run(workers)), "--state-dir", str(state)],
            cwd=ROOT, env=roots_env(roots), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus))

    def wait(self, timeout: float = 180) -> None:
        """Until the proxy answers /_stcore/health (the script starts nginx once every worker answers)."""
        wait_healthy(self.process, self.url, timeout, f"scripts/classroom.py (see {self.log_path})")

    def stop(self) -> None:
        """SIGTERM to the script (it stops nginx and the workers); whatever is left of its tree, SIGKILL."""
        tree = process_tree(self.process.pid)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                pass
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.process.wait()
        self._log.close()

    @property
    def log_paths(self) -> list[Path]:
        return [self.state / f"worker-{i}.log" for i in range(self.workers)]


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def own_rss(pid: int) -> int:
    """Resident memory (bytes) of one process (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(found.group(1)) * 1024 if found else 0


def tree_rss(pid: int) -> int:
    """Resident memory (bytes) of a process and its children."""
    return sum(own_rss(member) for member in process_tree(pid))


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a process and its children."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


class MemorySampler(threading.Thread):
    """Samples the server's tree RSS and the load average every `interval` seconds; marks named moments."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, float]] = []  # (monotonic time, rss bytes, 1-min load average)
        self.marks: dict[str, int] = {}
        self._halt = threading.Event()

    def sample(self) -> int:
        rss = tree_rss(self.pid)
        self.samples.append((time.monotonic(), rss, os.getloadavg()[0]))
        return rss

    def mark(self, name: str) -> int:
        """Take a sample now and remember it under `name`."""
        self.marks[name] = self.sample()
        return self.marks[name]

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def peak(self) -> int:
        return max(rss for _, rss, _ in self.samples)

    def trend_mb_per_min(self, since: float) -> float:
        """Least-squares slope of RSS (MB per minute) over the samples after `since` (0 when too few)."""
        points = [(t, rss / 2**20) for t, rss, _ in self.samples if t >= since]
        if len(points) < 3:
            return 0.0
        mean_t = sum(t for t, _ in points) / len(points)
        mean_m = sum(m for _, m in points) / len(points)
        var = sum((t - mean_t) ** 2 for t, _ in points)
        return 60 * sum((t - mean_t) * (m - mean_m) for t, m in points) / var if var else 0.0


# --------------------------------------------------------------------------------------------
# One student: Streamlit's websocket protocol
# --------------------------------------------------------------------------------------------

@dataclass
class Render:
    """One script run a student asked for: how long until script_finished, then until its new images arrived."""

    student: int
    action: str
    seconds: float
    images_seconds: float
    images: int
    reruns: int
    errors: list[str]
    phase: str


@dataclass
class Widget:
    """A widget drawn in the last run: its element type, proto (options, bounds, id) and the fragment it
    belongs to ('' outside any fragment: changing it reruns the whole page)."""

    kind: str
    proto: object
    fragment: str = ""


_WIDGET_KEY = re.compile(r"^\$\$ID-[0-9a-f]+-(.*)$")


class Student:
    """One browser tab's worth of protocol: a websocket session, the pages, the widgets of the last run."""

    def __init__(self, port: int, number: int, rng: random.Random) -> None:
        self.port, self.number, self.rng = port, number, rng
        self.pages: dict[str, str] = {}  # url path -> page_script_hash
        self.widgets: dict[str, Widget] = {}
        self.cookie = ""  # what the server's first answer set (the proxy's worker cookie)
        self.page_hash = ""  # the page shown (from the last navigation message); widget changes name it
        self.fetched: set[str] = set()
        self.renders: list[Render] = []
        self.phase = COLD
        self.broken = False  # the socket failed: this student stops
        self._ws = None
        self._media = asyncio.Semaphore(MEDIA_CONNECTIONS)

    async def connect(self) -> None:
        """Load the page's HTML first, as a browser does (behind the classroom proxy its answer sets the
        cookie that keeps this student on one worker), then open the websocket with that cookie."""
        from websockets.asyncio.client import connect

        status, cookies = await http_get(self.port, "/")
        if status != 200:
            raise ConnectionError(f"GET /: HTTP {status}")
        self.cookie = "; ".join(cookies)
        headers = {"Cookie": self.cookie} if self.cookie else None
        self._ws = await connect(f"ws://127.0.0.1:{self.port}/_stcore/stream", subprotocols=["streamlit"],
                                 origin=f"http://127.0.0.1:{self.port}", max_size=None, open_timeout=60,
                                 additional_headers=headers)

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def rerun(self, action: str, page: str | None = None, widgets: list | None = None,
                    fragment: str = "") -> Render:
        """Ask for one script run (on `page`, with changed `widgets`; only `fragment` when the widgets
        belong to one, as the browser does), time it, check it, fetch its images."""
        from streamlit.proto.BackMsg_pb2 import BackMsg

        message = BackMsg()
        state = message.rerun_script
        state.query_string = ""
        state.fragment_id = fragment
        if page is None:  # a widget changed: the browser names the page it shows
            state.page_script_hash = self.page_hash
        elif page in self.pages:
            state.page_script_hash = self.pages[page]
        else:
            state.page_name = page
        for widget in widgets or []:
            state.widget_states.widgets.append(widget)
        started = time.perf_counter()
        errors: list[str] = []
        media: list[str] = []
        reruns = 0
        try:
            await self._ws.send(message.SerializeToString())
            reruns = await asyncio.wait_for(self._read_until_finished(errors, media, bool(fragment)),
                                            RUN_TIMEOUT_S)
        except asyncio.TimeoutError:
            errors.append(f"no script_finished within {RUN_TIMEOUT_S:.0f} s")
            self.broken = True
        except Exception as err:  # noqa: BLE001 - a closed socket or a protocol error is a failed render
            errors.append(f"{type(err).__name__}: {err}")
            self.broken = True
        seconds = time.perf_counter() - started
        fetched = await self._fetch_media(media, errors) if not errors else 0
        render = Render(self.number, action, seconds, time.perf_counter() - started - seconds, fetched, reruns,
                        errors, self.phase)
        self.renders.append(render)
        return render

    async def _read_until_finished(self, errors: list[str], media: list[str], fragment_run: bool = False) -> int:
        """Read ForwardMsgs until the run finishes; collect errors, widgets and image URLs (a fragment
        run redraws only its fragment: the other widgets stay). Returns the number of reruns the app
        itself started (st.rerun) on the way."""
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        if not fragment_run:
            self.widgets = {}
        reruns = 0
        while True:
            message = ForwardMsg()
            message.ParseFromString(await self._ws.recv())
            kind = message.WhichOneof("type")
            if kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                self._element(message.delta.new_element, errors, media, message.delta.fragment_id)
            elif kind == "navigation":
                self.pages.update({p.url_pathname: p.page_script_hash for p in message.navigation.app_pages})
                self.page_hash = message.navigation.page_script_hash
            elif kind == "page_not_found":
                errors.append(f"page not found: {message.page_not_found.page_name!r}")
            elif kind == "session_event" and message.session_event.WhichOneof("type") == \
                    "script_compilation_exception":
                errors.append(f"compile error: {message.session_event.script_compilation_exception.message}")
            elif kind == "script_finished":
                status = message.script_finished
                if status == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    reruns += 1
                    continue
                if status == ForwardMsg.FINISHED_WITH_COMPILE_ERROR:
                    errors.append("script finished with a compile error")
                return reruns

    def _element(self, element, errors: list[str], media: list[str], fragment: str = "") -> None:
        kind = element.WhichOneof("type")
        body = getattr(element, kind) if kind else None
        if kind == "exception":
            errors.append(f"exception: {body.type}: {body.message}")
        elif kind == "alert" and body.format == body.ERROR:
            errors.append(f"st.error: {body.body}")
        elif kind == "imgs":
            media.extend(image.url for image in body.imgs if image.url.startswith("/media/"))
        elif body is not None and getattr(body, "id", ""):
            found = _WIDGET_KEY.match(body.id)
            if found:
                self.widgets[found.group(1)] = Widget(kind, body, fragment)

    async def _fetch_media(self, urls: list[str], errors: list[str]) -> int:
        """GET the images not fetched before (a browser caches them by URL); non-200 answers are errors."""
        new = [u for u in dict.fromkeys(urls) if u not in self.fetched]

        async def get(url: str) -> None:
            async with self._media:
                status, _ = await http_get(self.port, url, self.cookie)
            if status == 200:
                self.fetched.add(url)
            else:
                errors.append(f"GET {url}: HTTP {status}")

        await asyncio.gather(*(get(u) for u in new))
        return len(new)

    # ---- what a student does ----

    async def think(self, seconds: tuple[float, float]) -> None:
        await asyncio.sleep(self.rng.uniform(*seconds))

    async def open_home(self) -> Render:
        await self.connect()
        return await self.rerun("Home: open", page=PAGES["home"])

    async def dataset_explorer(self) -> list[Render]:
        """Open the page, then change the label filter or the image page."""
        renders = [await self.rerun("Dataset explorer: open", page=PAGES["dataset"])]
        label, number = self.widgets.get("explorer_grid_label"), self.widgets.get("explorer_grid_page")
        if number is not None and number.proto.max > 1 and (label is None or self.rng.random() < 0.5):
            widget, value = number, widget_double(number.proto.id, self.rng.randint(2, int(number.proto.max)))
        elif label is not None:
            widget, value = label, widget_string(label.proto.id, self.rng.choice(list(label.proto.options)))
        else:
            return renders
        await self.think(THINK)
        renders.append(await self.rerun("Dataset explorer: filter or page", widgets=[value],
                                        fragment=widget.fragment))
        return renders

    async def results(self) -> list[Render]:
        """Open the page, then pick which prediction files are compared with the sidebar's model."""
        renders = [await self.rerun("Results: open", page=PAGES["results"])]
        files = self.widgets.get("results_models")
        if files is None or not files.proto.options:
            return renders
        options = list(files.proto.options)
        chosen = self.rng.sample(options, self.rng.randint(0, min(2, len(options))))
        await self.think(THINK)
        renders.append(await self.rerun("Results: pick models", widgets=[widget_strings(files.proto.id, chosen)],
                                        fragment=files.fragment))
        return renders

    async def gradcam(self) -> list[Render]:
        """Open the page, then click "Next" image."""
        renders = [await self.rerun("GradCAM explorer: open", page=PAGES["gradcam"])]
        button = self.widgets.get("cam_next")
        if button is None:
            return renders
        await self.think(THINK)
        renders.append(await self.rerun("GradCAM explorer: next image", widgets=[widget_trigger(button.proto.id)],
                                        fragment=button.fragment))
        return renders

    async def loop_once(self, deadline: float = float("inf")) -> None:
        """Visit the three pages in turn (each visit: open, then one change); stop at `deadline`."""
        for visit in (self.dataset_explorer, self.results, self.gradcam):
            if self.broken or time.monotonic() >= deadline:
                return
            await self.think(THINK)
            await visit()


#: Think time between actions (seconds, uniform); set from --think.
THINK: tuple[float, float] = (1.0, 3.0)


def widget_string(widget_id: str, value: str):
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    return WidgetState(id=widget_id, string_value=value)


def widget_strings(widget_id: str, values: list[str]):
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    state = WidgetState(id=widget_id)
    state.string_array_value.data.extend(values)
    return state


def widget_double(widget_id: str, value: float):
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    return WidgetState(id=widget_id, double_value=float(value))


def widget_trigger(widget_id: str):
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    return WidgetState(id=widget_id, trigger_value=True)


async def http_get(port: int, path: str, cookie: str = "") -> tuple[int, list[str]]:
    """Status and the cookies set (`name=value` each) of a plain HTTP/1.1 GET on loopback, body read to
    the end (no client library needed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = f"Cookie: {cookie}\r\n" if cookie else ""
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    cookies = [line.split(":", 1)[1].split(";", 1)[0].strip() for line in head[1:]
               if line.lower().startswith("set-cookie:")]
    try:
        return int(head[0].split(" ", 2)[1]), cookies
    except (IndexError, ValueError):
        return 0, cookies


# --------------------------------------------------------------------------------------------
# The classroom
# --------------------------------------------------------------------------------------------

@dataclass
class ClassroomResult:
    """Everything measured in one run."""

    sessions: int
    duration: float
    workers: int = 0  # 0: one plain server; N: N Streamlit processes behind the classroom proxy
    renders: list[Render] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    model_loads: int = 0
    models_used: int = 0
    rss: dict[str, int] = field(default_factory=dict)
    process_rss: dict[str, int] = field(default_factory=dict)  # each process of the tree at the end
    rss_trend_mb_per_min: float = 0.0
    load_average: dict[str, float] = field(default_factory=dict)
    server_cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    load_seconds: float = 0.0
    smoke: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        return [f"student {r.student}, {r.action}: {e}" for r in self.renders for e in r.errors] + self.server_errors

    @property
    def ok(self) -> bool:
        smoke_ok = not self.smoke or self.smoke.get("errors", 0) == 0
        return not self.errors and self.model_loads == self.models_used and smoke_ok


async def _student_session(student: Student, deadline: float, first_delay: float) -> None:
    """Arrive (after `first_delay`), open Home, loop over the three pages until `deadline`, leave."""
    try:
        if not student.connected:
            await asyncio.sleep(first_delay)
            await student.open_home()
        while time.monotonic() < deadline and not student.broken:
            await student.loop_once(deadline)
    finally:
        await student.close()


async def _classroom(port: int, sessions: int, duration: float, seed: int, sampler: MemorySampler,
                     on_load: Callable[[], None]) -> list[Render]:
    """The first student alone (a cold loop, then a warm one and Home again), then all students
    together for `duration` seconds."""
    students = [Student(port, i, random.Random(seed * 1000 + i)) for i in range(sessions)]
    first = students[0]
    await first.open_home()
    await first.loop_once()
    first.phase = ALONE
    await first.loop_once()
    await first.think(THINK)
    await first.rerun("Home: open", page=PAGES["home"])
    sampler.mark("after first session")
    on_load()
    for student in students:
        student.phase = LOAD
    deadline = time.monotonic() + duration
    await asyncio.gather(*(_student_session(s, deadline, s.rng.uniform(*THINK)) for s in students))
    return [r for s in students for r in s.renders]


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def run_classroom(roots: dict[str, Path], *, sessions: int, duration: float, seed: int = 0,
                  cores: int = 2, browsers: int = 0, log_path: Path | None = None,
                  settle: float = 2.0, workers: int = 0) -> ClassroomResult:
    """Start a server on `roots` pinned to `cores` CPUs (`workers` > 0: that many behind the classroom
    proxy, logs in a folder beside `log_path`), run the classroom and the browser smoke, stop it.
    The 'end' memory sample is taken `settle` seconds after the students left."""
    log_path = log_path or roots["cache"] / "server.log"
    cpus = split_cpus(cores)[0]
    server = ProxiedServer(roots, log_path.with_name(f"classroom-{workers}"), cpus, workers) if workers \
        else Server(roots, log_path, cpus)
    result = ClassroomResult(sessions=sessions, duration=duration, workers=workers)
    sampler = MemorySampler(server.process.pid)
    try:
        server.wait()
        result.load_average["start"] = os.getloadavg()[0]
        sampler.mark("start")
        sampler.start()
        marks: dict[str, float] = {}

        def load_starts() -> None:
            marks["cpu"], marks["time"] = tree_cpu_seconds(server.process.pid), time.monotonic()
            marks["client"] = _own_cpu_seconds()

        result.renders = asyncio.run(_classroom(server.port, sessions, duration, seed, sampler, load_starts))
        result.load_seconds = time.monotonic() - marks["time"]
        result.server_cpu_seconds = tree_cpu_seconds(server.process.pid) - marks["cpu"]
        result.client_cpu_seconds = _own_cpu_seconds() - marks["client"]
        result.rss_trend_mb_per_min = sampler.trend_mb_per_min(marks["time"] + result.load_seconds / 2)
        time.sleep(settle)  # let the server drop the closed sessions
        sampler.mark("end")
        result.process_rss = {process_name(pid): own_rss(pid) for pid in process_tree(server.process.pid)}
        result.rss = {"start": sampler.marks["start"], "after first session": sampler.marks["after first session"],
                      "peak": sampler.peak(), "end": sampler.marks["end"]}
        result.load_average["max"] = max(load for _, _, load in sampler.samples)
        if browsers:
            result.smoke = browser_smoke(server.url, browsers)
        result.load_average["end"] = os.getloadavg()[0]
    finally:
        try:
            if sampler.is_alive():
                sampler.stop()
        finally:
            server.stop()
    logs = {path.name: path.read_text(errors="replace") for path in server.log_paths}
    result.model_loads = sum(log.count(MODEL_LOADED) for log in logs.values())
    result.models_used = sum(len(set(re.findall(rf"{MODEL_LOADED} (\S+)", log))) for log in logs.values()) or 1
    result.server_errors = [f"{name}: {line.strip()}" for name, log in logs.items() for line in log.splitlines()
                            if SERVER_ERROR_LINE.search(line)]
    return result


def process_name(pid: int) -> str:
    """`pid` and a short command line: the worker's port, nginx's role, or the program."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    words = [a.decode(errors="replace") for a in argv if a]
    if "streamlit" in words and "--server.port" in words:
        return f"{pid} streamlit :{words[words.index('--server.port') + 1]}"
    if words and words[0].startswith("nginx"):
        return f"{pid} {words[0].split(' process')[0]}"
    return f"{pid} {' '.join(Path(w).name for w in words[:2])}"


# --------------------------------------------------------------------------------------------
# Playwright smoke: the same pages in real Chromium
# --------------------------------------------------------------------------------------------

def browser_smoke(url: str, contexts: int) -> dict:
    """`contexts` Chromium contexts at once, each opening Home, Dataset explorer, Results and GradCAM
    explorer: seconds per page until the script is idle, and exception or error boxes found."""
    from tests.app_support import CHROMIUM, CHROMIUM_ARGS, chromium_available

    if not chromium_available():
        return {"skipped": f"{CHROMIUM} not found", "errors": 0}
    return asyncio.run(_smoke(url, contexts, CHROMIUM, CHROMIUM_ARGS))


IDLE = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    return app && app.getAttribute('data-test-script-state') === 'notRunning'
        && document.querySelectorAll('[data-testid="stSkeleton"]').length === 0
        && document.querySelector('h1') !== null;
}"""


async def _smoke(url: str, contexts: int, executable: str, args: list[str]) -> dict:
    from playwright.async_api import async_playwright

    async def one(browser, number: int) -> tuple[dict[str, float], list[str]]:
        context = await browser.new_context(viewport={"width": 1400, "height": 1000})
        page = await context.new_page()
        seconds, problems = {}, []
        try:
            for path, title in PAGE_TITLES.items():
                started = time.perf_counter()
                await page.goto(f"{url}/{path}", wait_until="domcontentloaded")
                await page.wait_for_function(IDLE, timeout=180_000)
                await page.locator("h1", has_text=title).first.wait_for(timeout=30_000)
                seconds[title] = time.perf_counter() - started
                for selector in ('[data-testid="stException"]', '[data-testid="stAlertContentError"]'):
                    for box in await page.locator(selector).all():
                        problems.append(f"browser {number}, {title}: {(await box.inner_text())[:200]}")
        except Exception as err:  # noqa: BLE001 - a page that never renders is a smoke failure
            problems.append(f"browser {number}: {type(err).__name__}: {str(err).splitlines()[0]}")
        finally:
            await context.close()
        return seconds, problems

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=args, headless=True)
        try:
            results = await asyncio.gather(*(one(browser, i) for i in range(contexts)))
        finally:
            await browser.close()
    pages = {title: [s[title] for s, _ in results if title in s] for title in PAGE_TITLES.values()}
    problems = [p for _, found in results for p in found]
    return {"contexts": contexts, "seconds": pages, "problems": problems, "errors": len(problems)}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def action_rows(renders: list[Render]) -> list[dict]:
    """Per action: count, render p50/p95/max, images p50/p95, app-started reruns, errors."""
    rows = []
    for action in sorted({r.action for r in renders}, key=lambda a: ACTIONS.index(a) if a in ACTIONS else 99):
        chosen = [r for r in renders if r.action == action]
        times = [r.seconds for r in chosen]
        images = [r.images_seconds for r in chosen]
        rows.append({"action": action, "n": len(chosen), "p50": percentile(times, 50), "p95": percentile(times, 95),
                     "max": max(times), "images_p50": percentile(images, 50), "images_p95": percentile(images, 95),
                     "app_reruns": sum(r.reruns for r in chosen), "errors": sum(len(r.errors) for r in chosen)})
    return rows


def report(result: ClassroomResult) -> str:
    mb = 2**20
    phase = {name: [r for r in result.renders if r.phase == name] for name in (COLD, ALONE, LOAD)}
    alone = {row["action"]: row["p50"] for row in action_rows(phase[ALONE])}
    load = phase[LOAD]
    setup = f"{result.workers} worker(s) behind nginx (scripts/classroom.py)" if result.workers \
        else "one plain streamlit server"
    lines = ["", f"== {result.sessions} students, {setup}", "", "One student alone, first loop (cold: model load, predictions):", _table(action_rows(phase[COLD])),
             "", "One student alone, second loop (warm; the baseline):", _table(action_rows(phase[ALONE])), "",
             f"{result.sessions} students together for {result.load_seconds:.0f} s, think time "
             f"{THINK[0]:g}-{THINK[1]:g} s: {len(load)} script runs requested "
             f"({len(load) / max(result.load_seconds, 1e-9):.1f} per s), "
             f"{sum(r.images for r in load)} images fetched:", _table(action_rows(load), alone)]
    if load:
        times = [r.seconds for r in load]
        lines.append(f"  all actions: p50 {percentile(times, 50):.2f} s, p95 {percentile(times, 95):.2f} s, "
                     f"max {max(times):.2f} s")
    rss = result.rss
    if rss:
        first = rss["after first session"]
        lines += ["", "Server memory (RSS of the process tree, sampled every second): "
                  + ", ".join(f"{k} {v / mb:.0f} MB" for k, v in rss.items()),
                  f"  peak / after the first session: {rss['peak'] / first:.2f}x; trend over the second half "
                  f"of the load: {result.rss_trend_mb_per_min:+.1f} MB/min"]
    busy = max(result.load_seconds, 1e-9)
    lines.append(f"CPU during the load ({result.load_seconds:.0f} s): server {result.server_cpu_seconds:.0f} s "
                 f"({result.server_cpu_seconds / busy:.2f} cores), bench client {result.client_cpu_seconds:.0f} s "
                 f"({result.client_cpu_seconds / busy:.2f} cores)")
    if result.process_rss:
        lines.append("  each process at the end: " + ", ".join(f"{name} {rss / mb:.0f} MB"
                                                            for name, rss in result.process_rss.items()))
    lines.append(f"Model loads: {result.model_loads} (expected {result.models_used}: one per model file"
                 + (" per worker that served it)" if result.workers else ")"))
    if result.smoke:
        smoke = result.smoke
        if "skipped" in smoke:
            lines.append(f"Browser smoke: skipped ({smoke['skipped']})")
        else:
            per_page = ", ".join(f"{t} {max(v):.1f} s" for t, v in smoke["seconds"].items() if v)
            lines.append(f"Browser smoke, {smoke['contexts']} Chromium contexts at once: {smoke['errors']} "
                         f"errors; slowest page load per page: {per_page}")
            lines += [f"  {p}" for p in smoke["problems"]]
    lines.append("Load average (1 min): " + ", ".join(f"{k} {v:.2f}" for k, v in result.load_average.items()))
    errors = result.errors
    lines.append(f"Errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors[:20]))
    return "\n".join(lines)


def _table(rows: list[dict], baseline: dict[str, float] | None = None) -> str:
    """Rows of `action_rows`; with `baseline` (p50 per action) a column of p50 / baseline."""
    head = (f"  {'action':<34}{'runs':>6}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'+img p50':>10}{'+img p95':>10}"
            f"{'reruns':>8}{'errors':>8}" + (f"{'p50/alone':>11}" if baseline is not None else ""))
    body = []
    for r in rows:
        line = (f"  {r['action']:<34}{r['n']:>6}{r['p50']:>8.2f}{r['p95']:>8.2f}{r['max']:>8.2f}"
                f"{r['images_p50']:>10.2f}{r['images_p95']:>10.2f}{r['app_reruns']:>8}{r['errors']:>8}")
        if baseline is not None:
            base = baseline.get(r["action"])
            line += f"{r['p50'] / base:>10.1f}x" if base else f"{'-':>11}"
        body.append(line)
    return "\n".join([head, *body])


def to_json(result: ClassroomResult) -> dict:
    return {"sessions": result.sessions, "workers": result.workers, "duration": result.duration,
            "load_seconds": result.load_seconds, "process_rss_bytes": result.process_rss,
            "think": list(THINK),
            **{name: action_rows([r for r in result.renders if r.phase == name]) for name in (COLD, ALONE, LOAD)},
            "rss_bytes": result.rss,
            "rss_trend_mb_per_min": result.rss_trend_mb_per_min, "model_loads": result.model_loads,
            "server_cpu_seconds": result.server_cpu_seconds, "client_cpu_seconds": result.client_cpu_seconds,
            "load_average": result.load_average,
            "smoke": result.smoke, "errors": result.errors, "ok": result.ok}


def main(argv: list[str] | None = None) -> int:
    global THINK
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=30, help="simulated students (default 30)")
    parser.add_argument("--duration", type=float, default=120, help="seconds of load (default 120)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help=f"folder for the demo data, model and server log (default {DEFAULT_WORK})")
    parser.add_argument("--think", type=float, nargs=2, default=THINK, metavar=("MIN", "MAX"),
                        help="think time between actions, seconds (default 1 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cores", type=int, default=2, help="CPUs the server is pinned to (default 2)")
    parser.add_argument("--browsers", type=int, default=3, help="Chromium contexts of the smoke (0: none)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0], metavar="N",
                        help="N Streamlit processes behind nginx (scripts/classroom.py); several values run one "
                             "classroom each, in turn (e.g. --workers 1 2); 0: one plain server (default)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers (finally blocks) on a plain kill too
    THINK = (args.think[0], args.think[1])
    work = args.work.resolve()
    print(f"Preparing {work} ...", flush=True)
    roots = prepare_work(work)
    import streamlit

    server_cpus, client_cpus = split_cpus(args.cores)
    os.sched_setaffinity(0, client_cpus)
    print(f"cpu cores: {os.cpu_count()}, server on CPUs {sorted(server_cpus)}, students on {sorted(client_cpus)}; "
          f"python {sys.version.split()[0]}, streamlit {streamlit.__version__}; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    for workers in args.workers:
        if results:
            roots = prepare_work(work)  # every configuration starts with an empty prediction cache
        result = run_classroom(roots, sessions=args.sessions, duration=args.duration, seed=args.seed,
                               cores=args.cores, browsers=args.browsers, log_path=work / "server.log", workers=workers)
        print(report(result), flush=True)
        print("Server log(s): " + (str(work / "server.log") if not workers else str(work / f"classroom-{workers}")))
        results.append(result)
    if len(results) > 1:
        print("\n" + comparison(results))
    if args.json:
        data = [to_json(r) for r in results]
        args.json.write_text(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    return 0 if all(r.ok for r in results) else 1


def _interrupt(number: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {number}")


def comparison(results: list[ClassroomResult]) -> str:
    """One line per configuration: the load phase's p50 / p95 / max, runs per second, errors, peak RSS."""
    lines = [f"  {'setup':<22}{'students':>9}{'runs':>6}{'per s':>7}{'p50 s':>8}{'p95 s':>8}{'max s':>8}"
             f"{'errors':>8}{'peak RSS MB':>13}{'load avg max':>14}"]
    for r in results:
        times = [x.seconds for x in r.renders if x.phase == LOAD] or [float("nan")]
        setup = f"{r.workers} worker(s) + nginx" if r.workers else "plain server"
        lines.append(f"  {setup:<22}{r.sessions:>9}{len(times):>6}{len(times) / max(r.load_seconds, 1e-9):>7.1f}"
                     f"{percentile(times, 50):>8.2f}{percentile(times, 95):>8.2f}{max(times):>8.2f}"
                     f"{len(r.errors):>8}{r.rss.get('peak', 0) / 2**20:>13.0f}"
                     f"{r.load_average.get('max', float('nan')):>14.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
