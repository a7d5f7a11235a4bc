"""Write a demo dataset folder: images/, split CSVs, the NIH table, boxes and the dataset card.

Generation goes into a hidden sibling folder that is renamed into place only once complete, with a
completion marker (`.complete`, the arguments as JSON) written last; `ensure_demo_dataset` regenerates
whenever the marker or any file is missing, so an interrupted run is simply redone.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from cxrcore.data.labels import LABELS, NO_FINDING
from cxrcore.demo.card import build_card
from cxrcore.demo.cohort import Cohort, plan_cohort
from cxrcore.demo.config import DemoConfig
from cxrcore.demo.render import Box, Case, encode_png, render_case
from cxrcore.errors import ConfigError, DatasetError
from cxrcore.fileio import MAX_TABLE_BYTES, limit, open_for_reading, read_json_file

MARKER = ".complete"
IMAGES_DIR = "images"
SPLIT_FILES = ("train.csv", "valid.csv", "test.csv", "valid_leaky.csv")
TABLE_FILE = "Data_Entry.csv"
BBOX_FILE = "bbox.csv"
CARD_FILE = "README.md"
ALL_FILES = (*SPLIT_FILES, TABLE_FILE, BBOX_FILE, CARD_FILE)
#: NIH's box file header, trailing empty columns included (x, y, w, h sit in four columns).
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
NIH_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
               "View Position")
_CHUNK = 16

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------
# Rendering (in worker processes)


def _render_chunk(job: tuple[list[Case], int, str]) -> list[list[Box]]:
    """Render and write one chunk of cases; return their boxes (runs in a worker process)."""
    import cv2

    cv2.setNumThreads(1)
    cases, size, folder = job
    out = []
    for case in cases:
        rendered = render_case(case, size)
        Path(folder, case.name).write_bytes(encode_png(rendered.pixels))
        out.append(rendered.boxes)
    return out


def default_workers() -> int:
    """Processes to render with: the CPUs this process may use, at most 2 (the target machine)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))


def render_images(cases: list[Case], size: int, folder: Path, workers: int | None = None,
                  progress: Progress | None = None) -> list[list[Box]]:
    """Render every case into `folder`; boxes come back in case order whatever the process count."""
    import multiprocessing

    workers = default_workers() if workers is None else max(1, int(workers))
    chunks = [cases[i:i + _CHUNK] for i in range(0, len(cases), _CHUNK)]
    jobs = [(chunk, size, str(folder)) for chunk in chunks]
    boxes: list[list[Box]] = []
    done = 0
    if workers == 1 or len(chunks) == 1:
        results = map(_render_chunk, jobs)
        executor = None
    else:
        # spawn, not fork: the caller may hold TensorFlow or Streamlit threads that fork would copy.
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        results = executor.map(_render_chunk, jobs)
    try:
        for chunk_boxes in results:
            boxes.extend(chunk_boxes)
            done += len(chunk_boxes)
            if progress is not None:
                progress(done, len(cases))
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return boxes


# ---------------------------------------------------------------------------------------------
# Tables


def onehot_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The course's one-hot format: Image, the 14 labels (0/1) in LABELS order, PatientId."""
    out = frame[["Image", *LABELS, "PatientId"]].copy()
    for label in LABELS:
        out[label] = out[label].astype(int)
    out["PatientId"] = out["PatientId"].astype(int)
    return out.reset_index(drop=True)


def nih_table(frame: pd.DataFrame) -> pd.DataFrame:
    """NIH Data_Entry format: pipe-separated findings ('No Finding' when none) and patient metadata."""
    values = frame[list(LABELS)].to_numpy(dtype=bool)
    findings = ["|".join(LABELS[k] for k in np.flatnonzero(row)) or NO_FINDING for row in values]
    return pd.DataFrame({
        "Image Index": frame["Image"].to_numpy(), "Finding Labels": findings,
        "Follow-up #": frame["FollowUp"].astype(int).to_numpy(), "Patient ID": frame["PatientId"].astype(int).to_numpy(),
        "Patient Age": frame["Age"].astype(int).to_numpy(), "Patient Gender": frame["Sex"].to_numpy(),
        "View Position": frame["View"].to_numpy(),
    }, columns=list(NIH_COLUMNS))


def bbox_table(names: list[str], boxes: list[list[Box]]) -> pd.DataFrame:
    """One row per rendered finding component: Image Index, Finding Label, x, y, w, h (pixels)."""
    rows = [(name, b.label, b.x, b.y, b.w, b.h) for name, image_boxes in zip(names, boxes) for b in image_boxes]
    return pd.DataFrame(rows, columns=["Image Index", "Finding Label", "x", "y", "w", "h"])


def bbox_csv_text(table: pd.DataFrame) -> str:
    """bbox.csv text in NIH BBox_List_2017 layout."""
    lines = [BBOX_HEADER]
    for row in table.itertuples(index=False):
        lines.append(f"{row[0]},{row[1]},{int(row[2])},{int(row[3])},{int(row[4])},{int(row[5])}")
    return "\n".join(lines) + "\n"


def read_bbox_csv(path: str | Path) -> pd.DataFrame:
    """Read a bbox.csv written here (or NIH's BBox_List_2017.csv) into Image Index, Finding Label, x, y, w, h."""
    raw = pd.read_csv(path)
    out = raw.iloc[:, :6].copy()
    out.columns = ["Image Index", "Finding Label", "x", "y", "w", "h"]
    return out


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.write_text(frame.to_csv(index=False, lineterminator="\n"), encoding="utf-8")


def marker_text(config: DemoConfig, n_images: int) -> str:
    """Contents of the completion marker: the arguments and the image count, no timestamps."""
    from cxrcore import __version__

    data = {"generator": f"cxrcore.demo {__version__}", "config": config.to_dict(), "image_count": n_images}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_dataset(folder: Path, cohort: Cohort, boxes: list[list[Box]]) -> None:
    """Write tables, boxes, card and (last) the completion marker into an images-complete folder."""
    frame = cohort.frame
    for name in SPLIT_FILES:
        _write_csv(onehot_table(cohort.split(name[:-4])), folder / name)
    _write_csv(nih_table(frame), folder / TABLE_FILE)
    table = bbox_table(list(frame["Image"]), boxes)
    (folder / BBOX_FILE).write_text(bbox_csv_text(table), encoding="utf-8")
    (folder / CARD_FILE).write_text(build_card(cohort, table), encoding="utf-8")
    (folder / MARKER).write_text(marker_text(cohort.config, len(frame)), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Folder handling


def read_marker(folder: str | Path) -> dict | None:
    """The completion marker of a demo folder as a dict, or None when missing or unreadable."""
    try:
        data = read_json_file(Path(folder, MARKER), error=ConfigError, what=MARKER)
        return data if isinstance(data, dict) else None
    except (OSError, ConfigError):
        return None


def is_complete(folder: str | Path, config: DemoConfig | None = None) -> bool:
    """True when the folder holds a finished demo set (for `config`, when given): marker, files, images."""
    folder = Path(folder)
    marker = read_marker(folder)
    if not marker or "config" not in marker:
        return False
    if config is not None and marker["config"] != config.to_dict():
        return False
    if not all((folder / name).is_file() for name in ALL_FILES):
        return False
    images = folder / IMAGES_DIR
    if not images.is_dir():
        return False
    with os.scandir(images) as it:
        count = sum(1 for entry in it if _DEMO_IMAGE.match(entry.name))
    return count == int(marker.get("image_count", -1))


#: How the demo set names its images (NIH style); a user's own file in images/ never counts as one of them.
_DEMO_IMAGE = re.compile(r"^\d{8}_\d{3}\.png$")


def _demo_images(folder: Path) -> set[str] | None:
    """The image names the demo set in `folder` consists of (its Data_Entry.csv), None when unreadable."""
    try:
        with open_for_reading(folder / TABLE_FILE, error=DatasetError, what="demo table",
                              max_bytes=limit(*MAX_TABLE_BYTES)) as handle:
            rows = csv.reader(io.TextIOWrapper(handle, encoding="utf-8", errors="replace", newline=""))
            next(rows, None)
            return {row[0] for row in rows if row}
    except (OSError, DatasetError, csv.Error):
        return None


def user_files(folder: Path) -> list[str]:
    """Paths (relative to `folder`) of everything in a demo folder that is not part of its demo set:
    what a person put there. Regenerating the set keeps them; only the set's own files are replaced."""
    if not folder.is_dir():
        return []
    own = set(ALL_FILES) | {MARKER, IMAGES_DIR}
    found = [p.name for p in folder.iterdir() if p.name not in own]
    images = folder / IMAGES_DIR
    if images.is_dir() and not images.is_symlink():
        listed = _demo_images(folder)
        for entry in images.iterdir():
            ours = entry.name in listed if listed is not None else bool(_DEMO_IMAGE.match(entry.name))
            if not ours or not entry.is_file():
                found.append(f"{IMAGES_DIR}/{entry.name}")
    return sorted(found)


def _is_replaceable(folder: Path) -> bool:
    """A folder we may delete: missing, empty, a demo set, or only holding demo-set names."""
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    if (folder / MARKER).is_file():
        return True  # a demo set, whose other files user_files() keeps
    known = set(ALL_FILES) | {IMAGES_DIR, MARKER}
    return all(p.name in known for p in folder.iterdir())


def _remove_stale_partials(folder: Path) -> None:
    """Delete half-written siblings left by generations whose process is gone."""
    prefix = f".{folder.name}.partial-"
    if not folder.parent.is_dir():
        return
    for p in folder.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        try:
            pid = int(p.name[len(prefix):].split("-")[0])
            os.kill(pid, 0)
            continue  # still being written by a live process
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def generate_demo_dataset(out_dir: str | Path, config: DemoConfig | None = None, *, workers: int | None = None,
                          progress: Progress | None = None) -> Path:
    """Generate the demo set into `out_dir` (replacing an older demo set there) and return its path.

    Writes into a hidden sibling folder and renames it into place when complete, so a reader never
    sees a half-written set. Refuses to replace a folder that holds anything but a demo set; files a
    person added to a demo set (notes, own images) are moved into the new set, never deleted.
    """
    config = config or DemoConfig()
    out = Path(out_dir).absolute()
    if not _is_replaceable(out):
        raise DatasetError("exists and is not a demo dataset; refusing to overwrite it.", file=str(out),
                           fix="choose another --out folder, or move that folder away.")
    cohort = plan_cohort(config)
    keep = user_files(out)
    new_images = {f"{IMAGES_DIR}/{name}" for name in cohort.frame["Image"]}
    clash = [rel for rel in keep if rel in new_images]
    if clash:
        raise DatasetError(f"{clash[0]} is not part of the demo set there, and the new set has an image of that "
                           "name; refusing to replace it.", file=str(out),
                           fix="move that file away, or choose another --out folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{time.monotonic_ns()}"
    try:
        (tmp / IMAGES_DIR).mkdir(parents=True)
        boxes = render_images(cohort.cases(), config.size, tmp / IMAGES_DIR, workers, progress)
        write_dataset(tmp, cohort, boxes)
        if out.exists():
            if is_complete(out, config):  # another process finished the same set meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            for rel in user_files(out):  # the person's files move into the new set (same file system)
                os.rename(out / rel, tmp / rel)
            old = out.parent / f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_demo_dataset(out_dir: str | Path, config: DemoConfig | None = None, *, workers: int | None = None,
                        progress: Progress | None = None) -> Path:
    """Return `out_dir` holding a complete demo set, generating it only when missing or incomplete.

    With `config` None any complete demo set is accepted; with a config, one made from other
    arguments is regenerated.
    """
    if is_complete(out_dir, config):
        return Path(out_dir)
    return generate_demo_dataset(out_dir, config, workers=workers, progress=progress)
