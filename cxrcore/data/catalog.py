"""Find datasets under the data folder: the course layout, the demo set, any folder of split files.

A dataset is a folder holding split files (course one-hot CSVs, or an NIH label table with list
files) and usually an image folder. Discovery reads only file names, never file contents, so it is
instant and safe to run on every page load.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrcore.data.dataset import Split, load_split, load_table, parse_split_spec
from cxrcore.errors import ConfigError
from cxrcore.fileio import read_json_file

#: Image folder names tried in order (the course ships `images-small/`).
IMAGE_DIR_NAMES = ("images", "images-small", "images_small", "imgs")
#: Box files in NIH BBox_List_2017 format.
BBOX_NAMES = ("bbox.csv", "BBox_List_2017.csv", "BBox_List_2017.csv.gz")
_TABLE = re.compile(r"^(Data_Entry.*|sample_labels)\.csv(\.gz)?$", re.IGNORECASE)
_LIST = re.compile(r"^(train_val|train|valid|val|test)_list\.txt$", re.IGNORECASE)
_SKIP_CSV = re.compile(r"^(bbox.*|BBox_List.*|.*predictions.*|prob.*|split_report.*)\.csv$", re.IGNORECASE)

#: What a dataset's images are: the generated teaching phantoms, or radiographs (NIH's, the course's subset).
DATA_SYNTHETIC, DATA_REAL = "synthetic demo", "real X-rays"
#: The demo generator's completion marker (cxrcore.demo.generate.MARKER), read here without importing it.
_DEMO_MARKER = ".complete"

#: Split roles in training order; a split's role comes from its name.
ROLES = ("train", "valid", "test")


def split_role(name: str) -> str | None:
    """'train-small' -> 'train', 'val' -> 'valid', 'test' -> 'test', 'valid_leaky' -> 'valid'."""
    key = name.lower()
    if key.startswith("train"):
        return "train"
    if key.startswith(("valid", "val", "dev")):
        return "valid"
    if key.startswith(("test", "holdout")):
        return "test"
    return None


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset folder: its named splits (as NAME=FILE specs), image folder and boxes."""

    name: str
    root: Path
    splits: tuple[tuple[str, str], ...]
    image_root: Path | None
    bbox_file: Path | None
    #: Modification times of the split files: part of cache keys so edits are picked up.
    stamp: tuple[float, ...] = ()

    @property
    def kind(self) -> str:
        """DATA_SYNTHETIC (the demo set) or DATA_REAL."""
        return data_kind(self.root)

    @property
    def split_names(self) -> list[str]:
        return [name for name, _ in self.splits]

    def default_pair(self) -> tuple[str, str] | None:
        """(train, valid) split names for training, when the folder has them."""
        roles = {split_role(n): n for n in reversed(self.split_names)}
        clean = [n for n in self.split_names if split_role(n) == "valid" and "leak" not in n.lower()]
        valid = clean[0] if clean else roles.get("valid")
        if "train" in roles and valid:
            return roles["train"], valid
        return None


def data_kind(folder: str | os.PathLike) -> str:
    """DATA_SYNTHETIC for a folder the demo generator wrote (or its image folder), else DATA_REAL."""
    folder = Path(folder)
    for candidate in (folder, folder.parent):
        try:
            marker = read_json_file(candidate / _DEMO_MARKER, error=ConfigError, what=_DEMO_MARKER)
        except (OSError, ConfigError):
            continue
        if isinstance(marker, dict) and str(marker.get("generator", "")).startswith("cxrcore.demo"):
            return DATA_SYNTHETIC
    return DATA_REAL


def spec_dataset(spec: str | None) -> tuple[str, str]:
    """(dataset name, data kind) of a labels spec NAME=FILE or TABLE@LIST: the folder holding the file;
    ("", "") when there is no spec."""
    if not spec:
        return "", ""
    folder = Path(parse_split_spec(spec)[1]).resolve().parent
    return folder.name, data_kind(folder)


def kind_mismatch(model_kind: str, data: str, model_dataset: str = "") -> str | None:
    """A warning when a model trained on one kind of images scores another kind; None when they agree
    or either is unknown (models saved before the kind was recorded raise no false alarm)."""
    if not model_kind or not data or model_kind == data:
        return None
    trained = f"the {model_kind} images of '{model_dataset}'" if model_dataset else f"{model_kind} images"
    if model_kind == DATA_SYNTHETIC:
        return (f"This model was trained on {trained} (drawn phantoms), and these are {data}: its "
                "probabilities and maps say nothing about a real radiograph. Use it only on the demo data.")
    return (f"This model was trained on {trained}, and these are {data}: out of distribution, so its "
            "scores are not meaningful here.")


def _image_root(folder: Path) -> Path | None:
    for name in IMAGE_DIR_NAMES:
        if (folder / name).is_dir():
            return folder / name
    if any(p.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm") for p in _first_files(folder)):
        return folder
    return None


def _first_files(folder: Path, limit: int = 50) -> list[Path]:
    out = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.is_file():
                out.append(Path(entry.path))
                if len(out) >= limit:
                    break
    return out


def _split_order(name: str) -> tuple[int, str]:
    role = split_role(name)
    return (ROLES.index(role) if role else len(ROLES), name)


def describe_folder(folder: Path) -> DatasetEntry | None:
    """The dataset a folder holds, or None when it has no split files."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file())
    tables = [p for p in files if _TABLE.match(p.name)]
    lists = [p for p in files if _LIST.match(p.name)]
    csvs = [p for p in files if p.suffix.lower() == ".csv" and not _TABLE.match(p.name)
            and not _SKIP_CSV.match(p.name)]
    splits: list[tuple[str, str]] = []
    if tables and lists:
        table = tables[0]
        for lst in lists:
            stem = lst.name[: -len("_list.txt")]
            name = "train" if stem.lower() in ("train_val", "train") else stem.lower()
            splits.append((name, f"{table}@{lst}"))
    else:
        for csv_file in csvs:
            splits.append((csv_file.stem, str(csv_file)))
    if not splits:
        if tables:
            splits.append(("all", str(tables[0])))
        else:
            return None
    splits.sort(key=lambda item: _split_order(item[0]))
    bbox = next((folder / n for n in BBOX_NAMES if (folder / n).is_file()), None)
    stamp = tuple(Path(p).stat().st_mtime for _, spec in splits for p in spec.split("@"))
    return DatasetEntry(name=folder.name, root=folder, splits=tuple(splits), image_root=_image_root(folder),
                        bbox_file=bbox, stamp=stamp)


def discover_datasets(data_root: str | os.PathLike) -> list[DatasetEntry]:
    """Every dataset folder directly under `data_root` (e.g. data/nih, data/demo), course layout first."""
    root = Path(data_root)
    if not root.is_dir():
        return []
    entries = [e for e in (describe_folder(p) for p in sorted(root.iterdir()) if p.is_dir()) if e]
    preferred = {"nih": 0, "demo": 2}
    return sorted(entries, key=lambda e: (preferred.get(e.name, 1), e.name))


def load_entry_splits(entry: DatasetEntry) -> dict[str, Split]:
    """Load every split of a dataset folder; a label table shared by list files is read once."""
    tables: dict[str, Split] = {}
    out: dict[str, Split] = {}
    for name, spec in entry.splits:
        table_path, at, list_path = spec.rpartition("@")
        if at:
            if table_path not in tables:
                tables[table_path] = load_table(table_path)
            out[name] = load_split(list_path, split_name=name, label_table=tables[table_path])
        else:
            out[name] = load_split(spec, split_name=name)
    table_file = next((p for p in sorted(entry.root.iterdir()) if _TABLE.match(p.name)), None)
    if table_file is not None and not tables:
        # One-hot splits beside an NIH table (the demo set): take age, sex and view from the table.
        metadata = load_table(table_file).frame
        out = {name: attach_metadata(split, metadata) for name, split in out.items()}
    return out


def attach_metadata(split: Split, table: pd.DataFrame) -> Split:
    """Add the NIH table's metadata columns (age, sex, view, follow-up) that a split lacks, by image."""
    from cxrcore.data.dataset import IMAGE, NIH_METADATA

    columns = [c for c in NIH_METADATA.values() if c in table.columns and c not in split.frame.columns]
    if not columns:
        return split
    extra = table.set_index(IMAGE)[columns].reindex(split.frame[IMAGE].to_numpy())
    frame = split.frame.copy()
    for column in columns:
        frame[column] = extra[column].to_numpy()
    return Split(name=split.name, frame=frame, source=split.source, format=split.format,
                 warnings=split.warnings, original=split.original)


def splits_from_files(files: list[tuple[str, bytes]]) -> list[Split]:
    """Splits from uploaded files: each labels file is a split, or list files join the one label table.

    A list file is a text file of image names (e.g. train_val_list.txt); it names its split
    ('train_val_list.txt' -> 'train'); label files are named by their stem ('valid.csv' -> 'valid').
    """
    from cxrcore.errors import DatasetError

    lists = [(n, d) for n, d in files if Path(n).suffix.lower() == ".txt"]
    tables = [(n, d) for n, d in files if Path(n).suffix.lower() != ".txt"]
    if not lists:
        return [load_split(data, name=name, split_name=Path(name).name.split(".")[0]) for name, data in tables]
    if len(tables) != 1:
        raise DatasetError(f"{len(lists)} list file(s) need exactly one label table to take labels from; "
                           f"got {len(tables)}.", fix="upload the NIH Data_Entry table with the list files.")
    table = load_table(tables[0][1], name=tables[0][0])
    out = []
    for name, data in lists:
        stem = Path(name).name.split(".")[0]
        stem = stem[: -len("_list")] if stem.endswith("_list") else stem
        out.append(load_split(data, name=name, split_name="train" if stem == "train_val" else stem,
                              label_table=table))
    return out
