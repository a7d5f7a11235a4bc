"""Cached loading: datasets, audits and thumbnails are computed once per input and shared by pages."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import streamlit as st

from cxrcore.audit.audit import AuditReport, run_audit
from cxrcore.data.catalog import DatasetEntry, describe_folder, discover_datasets, load_entry_splits
from cxrcore.data.dataset import Split, load_split
from cxrcore.data.images import quick_check, read_image
from cxrcore.data.paths import resolve_image
from cxrcore.errors import CxrError, DatasetError
from dashboard.state import DATASET_KEY, data_root

UPLOADED = "Uploaded files"
UPLOADS_KEY = "uploaded_splits"


@dataclass
class ActiveDataset:
    """What pages work on: named splits, and the image folder and boxes when there are any."""

    name: str
    splits: dict[str, Split]
    image_root: Path | None = None
    bbox_file: Path | None = None
    entry: DatasetEntry | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def split_list(self) -> list[Split]:
        return list(self.splits.values())


def datasets() -> list[DatasetEntry]:
    """Dataset folders under the data root (re-scanned every 30 s, it only lists names)."""
    return _datasets(str(data_root()))


@st.cache_data(show_spinner=False, ttl=30)
def _datasets(root: str) -> list[DatasetEntry]:
    return discover_datasets(root)


def clear_dataset_list() -> None:
    """Forget the folder listing, after this app added a dataset (instead of waiting up to 30 s)."""
    _datasets.clear()


@st.cache_data(show_spinner="Loading the dataset's split files...", max_entries=8)
def _entry_splits(root: str, stamp: tuple) -> dict[str, Split]:
    entry = describe_folder(Path(root))
    return load_entry_splits(entry)


def entry_splits(entry: DatasetEntry) -> dict[str, Split]:
    return _entry_splits(str(entry.root), entry.stamp)


@st.cache_data(show_spinner="Reading the uploaded file...", max_entries=64)
def uploaded_split(data: bytes, file_name: str, split_name: str) -> Split:
    """A split from an uploaded file's bytes (cached by content)."""
    return load_split(data, name=file_name, split_name=split_name)


@st.cache_data(show_spinner="Auditing the splits...", max_entries=16)
def audit(_splits: list[Split], key: tuple) -> AuditReport:
    """Audit without images (fast); `key` identifies the inputs since Split objects are not hashed."""
    return run_audit(_splits)


def split_key(splits: list[Split]) -> tuple:
    """A cheap, content-aware cache key for a list of splits."""
    return tuple((s.name, s.source, len(s), int(s.patients.sum() % 1_000_003),
                  int(s.labels.sum())) for s in splits)


def present_images(split: Split, image_root: str | Path) -> tuple[Split, list[str]]:
    """The split's rows whose image file is on disk, and the names of the missing ones (re-checked every 30 s)."""
    return _present_images(split_key([split]), str(image_root), split)


@st.cache_data(show_spinner="Looking for the image files...", ttl=30, max_entries=32)
def _present_images(key: tuple, image_root: str, _split: Split) -> tuple[Split, list[str]]:
    from cxrcore.data.pipeline import present_rows

    return present_rows(_split, image_root)


def missing_note(split: Split, missing: list[str], what: str) -> str:
    """'407 of 420 images of test are missing from the image folder: a.png, ... and 402 more; <what>'."""
    from cxrcore.data.pipeline import missing_summary

    text = missing_summary(missing, len(split)).replace(" images are missing", f" images of {split.name} are "
                                                         "missing from the image folder", 1)
    return f"{text}. {what}"


def active_dataset() -> ActiveDataset | None:
    """The dataset chosen in the sidebar, loaded (cached); None when there is none at all."""
    choice = st.session_state.get(DATASET_KEY)
    if choice == UPLOADED and st.session_state.get(UPLOADS_KEY):
        return ActiveDataset(name=UPLOADED, splits=dict(st.session_state[UPLOADS_KEY]))
    entries = datasets()
    entry = next((e for e in entries if e.name == choice), entries[0] if entries else None)
    if entry is None:
        return None
    return ActiveDataset(name=entry.name, splits=entry_splits(entry), image_root=entry.image_root,
                         bbox_file=entry.bbox_file, entry=entry)


def _preview_file(root: str | Path, name: str) -> tuple[str, float] | None:
    """(path, mtime) of image `name` inside `root`, the cache key of its thumbnail; None when it is
    missing or (through a name or a link) outside the folder."""
    try:
        path = resolve_image(root, name)
    except DatasetError:
        return None
    return (str(path), path.stat().st_mtime) if path.is_file() else None


def preview(root: str | Path, name: str, size: int = 192) -> np.ndarray | None:
    """Thumbnail of image `name` in the image folder `root`; None when it is missing, unreadable,
    too large to decode safely, or (through a name or a link) outside the folder."""
    found = _preview_file(root, name)
    return None if found is None else thumbnail(*found, size)


def preview_jpeg(root: str | Path, name: str, size: int = 192) -> bytes | None:
    """The same thumbnail as `preview`, encoded as JPEG once and shared: drawing bytes costs Streamlit no
    encoding, so a grid of 24 thumbnails reruns in a few milliseconds instead of ~25."""
    found = _preview_file(root, name)
    return None if found is None else thumbnail_jpeg(*found, size)


@st.cache_data(show_spinner=False, max_entries=4096)
def thumbnail_jpeg(path: str, mtime: float, size: int = 192) -> bytes | None:
    import cv2

    image = thumbnail(path, mtime, size)
    if image is None:
        return None
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return data.tobytes() if ok else None


@st.cache_data(show_spinner=False, max_entries=4096)
def thumbnail(path: str, mtime: float, size: int = 192) -> np.ndarray | None:
    """A small uint8 grayscale preview of an image file; None when it cannot be decoded.

    The header is checked first, so a decompression bomb is refused before any pixel is allocated."""
    import cv2

    try:
        quick_check(path)
    except CxrError:
        return None
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:  # DICOM, or a file OpenCV cannot read: the core decoder says which
        try:
            image = np.round(read_image(path) * 255).astype(np.uint8)
        except CxrError:
            return None
    scale = size / max(image.shape)
    return cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA)
