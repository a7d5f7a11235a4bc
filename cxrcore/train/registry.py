"""Models in one place: model files under models/, trained runs under runs/, with their metadata.

Discovery reads only file names and the small info JSON (sidecar or inside the file), never the
weights, so listing models is instant. Each model's info says its label order, input size and
normalization; the course's Keras 2 files carry none and get the course's (COURSE_LABEL_ORDER,
320x320, `dataset` normalization fitted on the training split).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cxrcore.errors import CxrError
from cxrcore.train.model import IMAGENET_FILES, ModelInfo, course_model_info, read_model_info, vit_preset_problem

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
#: Course files: a full model, and DenseNet121 backbone weights (initial weights, not a model).
COURSE_MODEL_NAMES = ("pretrained_model.h5",)
BACKBONE_NAMES = ("densenet.hdf5",)
#: keras.applications' ImageNet backbone files (include_top=False) copied from a Keras cache: initial weights too.
IMAGENET_BACKBONE_NAMES = tuple(spec.file for spec in IMAGENET_FILES.values())
#: The model a training run publishes in its folder.
RUN_MODEL = "best.keras"

KIND_MODEL, KIND_BACKBONE, KIND_BROKEN = "model", "backbone", "broken"


@dataclass(frozen=True)
class ModelEntry:
    """A model file found on disk, with its info (None for backbones and broken files)."""

    name: str
    path: Path
    kind: str
    origin: str
    info: ModelInfo | None
    problem: str | None = None
    run_dir: Path | None = None

    @property
    def usable(self) -> bool:
        return self.kind == KIND_MODEL and self.info is not None

    @property
    def fingerprint(self) -> str:
        """Changes when the file changes (path, size, modification time): the key of cached predictions."""
        stat = self.path.stat()
        text = f"{self.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    @property
    def train_split(self) -> str | None:
        """Path of the labels file the model was trained on, when its info records it."""
        return None if self.info is None else self.info.metadata.get("train_split")


def describe_model(path: Path, name: str, run_dir: Path | None = None) -> ModelEntry:
    """One model file -> ModelEntry; a file that cannot be described is kept as 'broken' with the reason."""
    if path.name in BACKBONE_NAMES:
        return ModelEntry(name, path, KIND_BACKBONE, "course", None)
    if path.name in IMAGENET_BACKBONE_NAMES:
        return ModelEntry(name, path, KIND_BACKBONE, "ImageNet (Keras)", None)
    try:
        info = read_model_info(path)
    except CxrError as err:
        return ModelEntry(name, path, KIND_BROKEN, "file", None, problem=err.problem, run_dir=run_dir)
    except (OSError, ValueError) as err:
        return ModelEntry(name, path, KIND_BROKEN, "file", None, problem=str(err), run_dir=run_dir)
    if info is None and path.name in COURSE_MODEL_NAMES:
        info = course_model_info()
    if info is None:
        return ModelEntry(name, path, KIND_BROKEN, "file", None, run_dir=run_dir,
                          problem=f"no label list: write {path.with_suffix('.json').name} beside it "
                                  "with its labels in output order (see README, Your data).")
    origin = "trained here" if run_dir is not None else info.origin
    return ModelEntry(name, path, KIND_MODEL, origin, info, run_dir=run_dir)


def _in_vit_preset(path: Path) -> bool:
    return path.name == "model.weights.h5" and vit_preset_problem(path.parent) is None


def discover_models(models_root: str | os.PathLike | None, runs_root: str | os.PathLike | None = None
                    ) -> list[ModelEntry]:
    """Model files under models_root (any depth) and each run's best model under runs_root."""
    entries: list[ModelEntry] = []
    root = Path(models_root) if models_root else None
    if root is not None and root.is_dir():
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in MODEL_SUFFIXES and p.is_file()):
            if _in_vit_preset(path):  # a keras-hub preset's weights: picked as a folder on the Training page
                continue
            name = str(path.relative_to(root).with_suffix(""))
            entries.append(describe_model(path, name))
    runs = Path(runs_root) if runs_root else None
    if runs is not None and runs.is_dir():
        for run_dir in sorted((d for d in runs.iterdir() if d.is_dir()), reverse=True):
            model = run_dir / RUN_MODEL
            try:
                found = model.is_file()
            except OSError:  # an unreadable run folder (permissions): the Training page lists it as broken
                continue
            if found:
                entries.append(describe_model(model, f"run {run_dir.name}", run_dir=run_dir))
    return entries


def model_card(entry: ModelEntry) -> dict:
    """What a person needs to know about a model, for tables and JSON."""
    info = entry.info
    return {
        "name": entry.name, "kind": entry.kind, "origin": entry.origin, "path": str(entry.path),
        "backbone": info.backbone if info else None, "input_size": info.input_size if info else None,
        "normalization": info.normalization.mode if info else None,
        "labels": len(info.labels) if info else None,
        "trained_on": entry.train_split, "dataset": info.dataset if info else None,
        "data_kind": (info.data_kind or None) if info else None, "problem": entry.problem,
    }

