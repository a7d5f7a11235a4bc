"""The splits a run trains on, prepared once: subsets, class weights, normalization, fingerprints.

Nothing here imports a deep-learning framework: the same data goes to every Keras backend.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrcore.errors import DatasetError
from cxrcore.train.rundir import Log, print_log
from cxrcore.train.trainconfig import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cxrcore.data.dataset import Split
    from cxrcore.data.pipeline import Normalization


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_fingerprint(spec: str) -> dict[str, Any]:
    """Hashes of a split's file(s) (FILE or TABLE@LIST) and one combined hash, to tell if the data changed."""
    parts = spec.split("@")
    files = {p: file_sha256(p) for p in parts}
    combined = hashlib.sha256("\n".join(f"{Path(p).name}:{h}" for p, h in files.items()).encode()).hexdigest()
    return {"spec": spec, "sha256": combined, "files": files}


def load_spec(spec: str, name: str) -> "Split":
    """A split from FILE or TABLE@LIST (absolute paths, as in a resolved config)."""
    from cxrcore.data.dataset import load_split, load_table

    table, at, list_file = spec.rpartition("@")
    if at:
        return load_split(list_file, split_name=name, label_table=load_table(table))
    return load_split(spec, split_name=name)


@dataclass
class TrainingData:
    """Everything the loop needs from the splits, prepared once (and recorded in run.json)."""

    train: "pd.DataFrame"
    valid: "pd.DataFrame"
    test: "Split | None"
    image_root: str
    labels: tuple[str, ...]
    w_pos: np.ndarray
    w_neg: np.ndarray
    normalization: "Normalization"
    y_valid: np.ndarray
    monitor: str
    fingerprints: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)


def _subset(frame: "pd.DataFrame", limit: int | None, seed: int) -> "pd.DataFrame":
    if limit is None or len(frame) <= limit:
        return frame
    return frame.sample(n=limit, random_state=seed).sort_index()


def _fit_normalization(config: TrainConfig, frame: "pd.DataFrame") -> "Normalization":
    """'dataset' normalization fitted on training images: through tf.data on TensorFlow, else the image cache."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        from cxrcore.data.pipeline import estimate_normalization

        return estimate_normalization(frame, config.image_root, input_size=config.input_size, seed=config.seed)
    from cxrcore.train.inputs import estimate_normalization_cached

    return estimate_normalization_cached(frame, config.image_root, input_size=config.input_size,
                                         cache_dir=config.cache_dir, seed=config.seed)


def prepare_data(config: TrainConfig, *, log: Log = print_log, fit_normalization: bool = True) -> TrainingData:
    """Load the splits, take the CPU-preset subsets, compute class weights and (dataset mode) mean/std."""
    from cxrcore.data.pipeline import Normalization, label_matrix
    from cxrcore.train.loss import class_weights

    train = load_spec(config.train_split, "train")
    valid = load_spec(config.valid_split, "valid")
    test = load_spec(config.test_split, "test") if config.test_split and config.predict_test else None
    notes: list[str] = []
    skipped: dict[str, int] = {}
    if config.skip_missing_images:  # the user chose to train on the images present (see cxrcore.train.preflight)
        from cxrcore.train.preflight import drop_missing

        train, skipped["train"] = drop_missing(train, config.image_root)
        valid, skipped["valid"] = drop_missing(valid, config.image_root)
        if test is not None:
            test, skipped["test"] = drop_missing(test, config.image_root)
        if any(skipped.values()):
            notes.append("skipped rows whose image file is missing (skip_missing_images): "
                         + ", ".join(f"{n:,} {role}" for role, n in skipped.items() if n) + ".")
    for split in (train, valid):
        if len(split) == 0:
            raise DatasetError(f"the {split.name} split has no images.", file=split.source)
    shared = np.intersect1d(np.unique(train.patients), np.unique(valid.patients))
    if shared.size:
        notes.append(f"warning: {shared.size} patient(s) are in both the training and the validation split "
                     "(patient leakage): validation AUROC will look better than it is. See the Leakage audit page.")
    train_frame = _subset(train.frame, config.max_train_images, config.seed)
    valid_frame = _subset(valid.frame, config.max_valid_images, config.seed)
    if len(train_frame) < len(train.frame):
        notes.append(f"training on a random subset of {len(train_frame):,} of {len(train.frame):,} images "
                     "(max_train_images).")
    if len(valid_frame) < len(valid.frame):
        notes.append(f"validating on a random subset of {len(valid_frame):,} of {len(valid.frame):,} images "
                     "(max_valid_images).")
    labels = tuple(config.labels)
    y_train = label_matrix(train_frame, labels)
    y_valid = label_matrix(valid_frame, labels)
    if config.class_weighting:
        w_pos, w_neg = class_weights(y_train)
    else:
        w_pos = w_neg = np.ones(len(labels), dtype=np.float32)
    defined = [(y_valid[:, j].min() == 0) and (y_valid[:, j].max() == 1) for j in range(len(labels))]
    monitor = "val_auroc" if any(defined) else "val_loss"
    if monitor == "val_loss":
        notes.append("warning: no class has both positive and negative validation images, so AUROC is undefined; "
                     "the best model is chosen by validation loss instead.")
    elif not all(defined):
        missing = [label for label, ok in zip(labels, defined) if not ok]
        notes.append(f"AUROC undefined on validation for {', '.join(missing)} (no positives or no negatives): "
                     "left out of the mean.")
    if config.normalization == "dataset":
        norm = (_fit_normalization(config, train_frame) if fit_normalization else Normalization.dataset(0.5, 0.25))
    else:
        norm = Normalization(config.normalization)
    fingerprints = {role: split_fingerprint(spec) for role, spec in config.split_files().items()}
    sizes = {"train_rows": len(train.frame), "train_used": len(train_frame), "valid_rows": len(valid.frame),
             "valid_used": len(valid_frame), "test_rows": len(test) if test is not None else 0,
             "shared_patients_train_valid": int(shared.size),
             **{f"{role}_missing_skipped": n for role, n in skipped.items()}}
    for note in notes:
        log(note)
    return TrainingData(train=train_frame, valid=valid_frame, test=test, image_root=config.image_root, labels=labels,
                        w_pos=np.asarray(w_pos, np.float32), w_neg=np.asarray(w_neg, np.float32),
                        normalization=norm, y_valid=y_valid, monitor=monitor, fingerprints=fingerprints,
                        notes=notes, sizes=sizes)
