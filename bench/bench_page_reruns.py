"""What one script run of each page costs the server: a full page run, and the run each widget change starts.

One `streamlit run Home.py` (the classroom bench's server: loopback, headless, the demo dataset and
demo model of its work folder, pinned to --cores CPUs) and one student speaking Streamlit's websocket
protocol (bench_classroom.Student). Each action starts in a new session that opens its page twice (warm
caches, default widget values), then runs --repeats times: a full run of the page ("open"), or one
widget of ACTIONS changed to a new random value each time. A widget inside an `st.fragment` reruns only
its fragment, as in the browser ("scope"). Per action: the server's CPU seconds per run (user + system
of its process tree, the stable figure on a shared machine; /proc counts in 10 ms ticks), and wall
seconds from the request to `script_finished`, medians. A new value can miss the shared caches (a new
image page, a new Grad-CAM image), so these are upper bounds for a class where values repeat.

Run: python bench/bench_page_reruns.py [--repeats 5] [--cores 1] [--work bench/.cache/classroom] [--json FILE]
Exit status: 0 when no run had an error; else 1.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "bench")) if p not in sys.path]

import bench_classroom as classroom  # noqa: E402 - after the path set-up

#: Alerts that are the app's correct answer on this machine, not a failure (no internet: the Training
#: page's default preset names the ImageNet weights it cannot download).
EXPECTED = re.compile(r"ImageNet weights .* cannot be downloaded now")
#: Pages by URL path, in the navigation's order.
PAGES = {"Home": "", "Dataset explorer": "dataset_explorer", "Leakage audit": "leakage_audit",
         "Class balance": "class_balance", "Training": "training", "Results": "results",
         "GradCAM explorer": "gradcam_explorer"}
#: Per page, the widgets (by key) whose change is measured.
ACTIONS = {
    "Home": ["teaching_mode"],
    "Dataset explorer": ["explorer_grid_label", "explorer_grid_page", "explorer_cooc_split"],
    "Leakage audit": ["audit_near_threshold"],
    "Class balance": ["loss_class", "loss_probability", "balance_split"],
    "Training": [],
    "Results": ["results_models", "results_curve_class", "results_literature", "results_calibration_class",
                "results_threshold_class", "results_split"],
    "GradCAM explorer": ["cam_next", "cam_filter_class", "cam_threshold", "cam_opacity", "cam_colormap"],
}


@dataclass
class Cost:
    """The runs of one action: server CPU seconds and wall seconds each, whether it was a fragment run."""

    page: str
    action: str
    fragment: bool = False
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def row(self) -> dict:
        return {"page": self.page, "action": self.action, "scope": "fragment" if self.fragment else "page",
                "runs": len(self.cpu), "cpu_s": statistics.median(self.cpu) if self.cpu else float("nan"),
                "wall_s": statistics.median(self.wall) if self.wall else float("nan"), "errors": len(self.errors)}


def changed_value(widget: classroom.Widget, rng: random.Random):
    """A WidgetState giving `widget` a value other than its current one (None: not a widget we can change)."""
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    proto, state = widget.proto, WidgetState(id=widget.proto.id)
    kind = widget.kind
    if kind == "button":
        state.trigger_value = True
    elif kind == "checkbox":  # st.toggle is a checkbox element
        state.bool_value = not (proto.value if proto.set_value else proto.default)
    elif kind == "selectbox":
        options = list(proto.options)
        current = proto.raw_value if proto.set_value else options[proto.default] if options else None
        options = [o for o in options if o != current] or options
        state.string_value = rng.choice(options)
    elif kind == "multiselect":
        options = list(proto.options)
        state.string_array_value.data.extend(rng.sample(options, rng.randint(0, min(2, len(options)))))
    elif kind == "slider":
        low, high = proto.min, proto.max
        steps = max(1, round((high - low) / proto.step)) if proto.step else 100
        state.double_array_value.data.append(low + rng.randint(0, steps) * (proto.step or (high - low) / 100))
    elif kind == "number_input":
        value = rng.randint(int(proto.min) if proto.has_min else 1, int(proto.max) if proto.has_max else 10)
        if proto.data_type == proto.INT:
            state.int_value = value
        else:
            state.double_value = float(value)
    else:
        return None
    return state


async def _measure(port: int, pid: int, repeats: int, pages: dict[str, str], seed: int) -> list[Cost]:
    """Every page's full run, then each widget change, each from a new session (default widget values)."""
    costs: list[Cost] = []
    rng = random.Random(seed)

    async def timed(cost: Cost, run: Callable) -> None:
        before = classroom.tree_cpu_seconds(pid)
        render = await run()
        cost.cpu.append(classroom.tree_cpu_seconds(pid) - before)
        cost.wall.append(render.seconds)
        cost.errors += [e for e in render.errors if not EXPECTED.search(e)]

    async def session(path: str) -> classroom.Student:
        student = classroom.Student(port, 0, random.Random(rng.random()))
        await student.connect()
        await student.rerun("warm-up", page=path)  # caches: model, predictions, figures
        await student.rerun("warm-up", page=path)
        return student

    for title, path in pages.items():
        student = await session(path)
        try:
            opened = Cost(title, "open (full run)")
            for _ in range(repeats):
                await timed(opened, lambda: student.rerun(opened.action, page=path))
            costs.append(opened)
        finally:
            await student.close()
        for key in ACTIONS.get(title, []):
            student = await session(path)
            try:
                widget = student.widgets.get(key)
                if widget is None:
                    print(f"  {title}: no widget {key!r} on the page; skipped", flush=True)
                    continue
                cost = Cost(title, f"change {key}", fragment=bool(widget.fragment))
                for _ in range(repeats):
                    widget = student.widgets.get(key, widget)
                    value = changed_value(widget, student.rng)
                    if value is None:
                        break
                    await timed(cost, lambda: student.rerun(cost.action, widgets=[value], fragment=widget.fragment))
                costs.append(cost)
            finally:
                await student.close()
    return costs


def measure(roots: dict[str, Path], *, repeats: int, cores: int, log_path: Path, seed: int = 0,
            pages: dict[str, str] | None = None) -> list[Cost]:
    """Start a server on `roots` pinned to `cores` CPUs, measure every page's actions, stop it."""
    server = classroom.Server(roots, log_path, classroom.split_cpus(cores)[0])
    try:
        server.wait()
        return asyncio.run(_measure(server.port, server.process.pid, repeats, pages or PAGES, seed))
    finally:
        server.stop()


def table(rows: list[dict]) -> str:
    head = f"  {'page':<18}{'action':<36}{'scope':>10}{'runs':>6}{'CPU s':>8}{'wall s':>8}{'errors':>8}"
    body = [f"  {r['page']:<18}{r['action']:<36}{r['scope']:>10}{r['runs']:>6}{r['cpu_s']:>8.3f}{r['wall_s']:>8.3f}"
            f"{r['errors']:>8}" for r in rows]
    return "\n".join([head, *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per action (default 5)")
    parser.add_argument("--cores", type=int, default=1, help="CPUs the server is pinned to (default 1)")
    parser.add_argument("--work", type=Path, default=classroom.DEFAULT_WORK,
                        help=f"the classroom bench's work folder (default {classroom.DEFAULT_WORK})")
    parser.add_argument("--page", action="append", choices=list(PAGES), help="only these pages (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    print(f"Preparing {work} ...", flush=True)
    roots = classroom.prepare_work(work)
    import streamlit

    pages = {t: PAGES[t] for t in args.page} if args.page else PAGES
    load = os.getloadavg()[0]
    print(f"server on {args.cores} CPU(s); python {sys.version.split()[0]}, streamlit {streamlit.__version__}; "
          f"load average at start {load:.2f}", flush=True)
    started = time.monotonic()
    costs = measure(roots, repeats=args.repeats, cores=args.cores, log_path=work / "reruns-server.log",
                    seed=args.seed, pages=pages)
    rows = [c.row() for c in costs]
    print(table(rows))
    print(f"{time.monotonic() - started:.0f} s; load average (1 min) at start {load:.2f}, at the end "
          f"{os.getloadavg()[0]:.2f}")
    errors = [f"{c.page}, {c.action}: {e}" for c in costs for e in c.errors]
    print(f"Errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors[:20]))
    if args.json:
        args.json.write_text(json.dumps({"load_average_start": load, "rows": rows, "errors": errors}, indent=2))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
