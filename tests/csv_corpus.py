"""Fixture generators shared by the dataset, audit, image-check and audit-CLI tests.

Everything is generated in memory or under a test's tmp_path (never read from ../shared): course
one-hot CSVs, NIH label tables (v2020 and Kaggle-style ages), list files, a million-row CSV written
straight from numpy bytes, and small PNGs made with OpenCV (distinct images, near and exact copies,
truncated files).
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxrcore.data.labels import LABELS, canonical_label

#: Roughly NIH-like prevalences in LABELS order, so random tables look like the real thing.
PREVALENCE = np.array([0.103, 0.025, 0.042, 0.021, 0.119, 0.022, 0.015, 0.002, 0.177, 0.052, 0.056,
                       0.030, 0.013, 0.047])


def nih_name(patient: int, follow_up: int) -> str:
    """NIH file name: 8-digit patient, 3-digit follow-up (8270, 15 -> 00008270_015.png)."""
    return f"{patient:08d}_{follow_up:03d}.png"


def random_labels(n: int, seed: int = 0, prevalence: np.ndarray = PREVALENCE) -> np.ndarray:
    """(n, 14) uint8 labels drawn independently per class."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, len(LABELS))) < prevalence).astype(np.uint8)


def patients_and_names(patients: Sequence[int], per_patient: int = 2) -> tuple[list[int], list[str]]:
    """Patient id and NIH file name of each image: `per_patient` images per patient."""
    ids = [p for p in patients for _ in range(per_patient)]
    names = [nih_name(p, k) for p in patients for k in range(per_patient)]
    return ids, names


def onehot_frame(patients: Sequence[int], per_patient: int = 2, *, seed: int = 0,
                 label_order: Sequence[str] = LABELS, labels: np.ndarray | None = None,
                 patient_column: bool = True, extra: dict[str, object] | None = None) -> pd.DataFrame:
    """The course's one-hot layout: Image, the label columns in `label_order` (names as given, aliases
    allowed), PatientId, then any extra columns. `labels` (n, 14) is in canonical LABELS order."""
    ids, names = patients_and_names(patients, per_patient)
    y = random_labels(len(names), seed) if labels is None else np.asarray(labels, dtype=np.uint8)
    frame = pd.DataFrame({"Image": names})
    for column in label_order:
        frame[column] = y[:, LABELS.index(canonical_label(column))].astype(int)
    if patient_column:
        frame["PatientId"] = ids
    for column, value in (extra or {}).items():
        frame[column] = value
    return frame


def findings_text(row: np.ndarray) -> str:
    """NIH 'Finding Labels' cell: pipe-separated labels, or 'No Finding'."""
    present = [LABELS[i] for i in np.flatnonzero(row)]
    return "|".join(present) if present else "No Finding"


def nih_frame(patients: Sequence[int], per_patient: int = 2, *, seed: int = 0, kaggle_ages: bool = False,
              labels: np.ndarray | None = None) -> pd.DataFrame:
    """The NIH label table layout (Data_Entry_2017_v2020.csv); with kaggle_ages, ages like '058Y' and
    the extra size/spacing columns of Kaggle's sample_labels.csv."""
    ids, names = patients_and_names(patients, per_patient)
    rng = np.random.default_rng(seed + 1)
    y = random_labels(len(names), seed) if labels is None else np.asarray(labels, dtype=np.uint8)
    ages = rng.integers(1, 95, len(names))
    frame = pd.DataFrame({
        "Image Index": names,
        "Finding Labels": [findings_text(row) for row in y],
        "Follow-up #": [k for _ in patients for k in range(per_patient)],
        "Patient ID": ids,
        "Patient Age": [f"{a:03d}Y" for a in ages] if kaggle_ages else ages,
        "Patient Gender": rng.choice(["M", "F"], len(names)),
        "View Position": rng.choice(["PA", "AP"], len(names)),
    })
    if kaggle_ages:
        frame["OriginalImageWidth"] = 2048
        frame["OriginalImageHeight"] = 2500
        frame["OriginalImagePixelSpacing_x"] = 0.168
        frame["OriginalImagePixelSpacing_y"] = 0.168
    return frame


def to_csv_bytes(frame: pd.DataFrame, *, sep: str = ",", encoding: str = "utf-8") -> bytes:
    return frame.to_csv(index=False, sep=sep).encode(encoding)


def write_csv(frame: pd.DataFrame, path: Path, *, gz: bool = False) -> Path:
    """Write a table as CSV (gzipped when `gz`), return the path."""
    data = to_csv_bytes(frame)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_list(path: Path, names: Sequence[str]) -> Path:
    """A list file: one image name a line (like NIH's train_val_list.txt)."""
    path.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    return path


def million_row_csv(n: int = 1_000_000, seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A course one-hot CSV with n rows built directly as bytes (fixed-width rows, well under a second).

    Returns (csv bytes, (n, 14) labels, patient ids); 4 images per patient, PatientId zero-padded."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(LABELS))) < PREVALENCE).astype(np.uint8)
    index = np.arange(n)
    patient = index // 4 + 1
    follow = index % 4
    width = 16 + 1 + 2 * len(LABELS) + 8 + 1  # name, comma, "d," x 14, 8-digit id, newline
    rows = np.empty((n, width), dtype=np.uint8)

    def digits(values: np.ndarray, count: int) -> np.ndarray:
        powers = 10 ** np.arange(count - 1, -1, -1)
        return (values[:, None] // powers % 10 + ord("0")).astype(np.uint8)

    rows[:, 0:8] = digits(patient, 8)
    rows[:, 8] = ord("_")
    rows[:, 9:12] = digits(follow, 3)
    rows[:, 12:16] = np.frombuffer(b".png", dtype=np.uint8)
    rows[:, 16] = ord(",")
    rows[:, 17:17 + 2 * len(LABELS):2] = y + ord("0")
    rows[:, 18:18 + 2 * len(LABELS):2] = ord(",")
    start = 17 + 2 * len(LABELS)
    rows[:, start:start + 8] = digits(patient, 8)
    rows[:, -1] = ord("\n")
    header = ("Image," + ",".join(LABELS) + ",PatientId\n").encode()
    return header + rows.tobytes(), y, patient


# ---------------------------------------------------------------------------------------------
# Images


def smooth_image(seed: int, size: int = 64) -> np.ndarray:
    """A smooth random grayscale image (an 8x8 noise field upsampled): perceptual hashes of different
    seeds are far apart, and resizing or re-encoding one barely moves its hash."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def write_png(path: Path, image: np.ndarray) -> Path:
    import cv2

    assert cv2.imwrite(str(path), image), path
    return path


def near_copy(image: np.ndarray) -> np.ndarray:
    """A resized and JPEG re-encoded copy, brought back to the original size (different bytes)."""
    import cv2

    small = cv2.resize(image, (image.shape[1] * 3 // 4, image.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    decoded = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
    return cv2.resize(decoded, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)


def truncate_file(source: Path, target: Path, keep: float = 0.5) -> Path:
    """A PNG cut short (as after an interrupted download): unreadable."""
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target
