"""What a run saves: checkpoints and best.keras written atomically (a float32 copy after mixed precision),
the model's info, and the test split's predictions with the best model.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cxrcore.train import jobs
from cxrcore.train.data import TrainingData
from cxrcore.train.rundir import Log, print_log
from cxrcore.train.trainconfig import TrainConfig


def export_model(model: Any, config: TrainConfig, labels: tuple[str, ...], mixed: bool) -> Any:
    """The model to save as best.keras: a float32 copy when trained in mixed precision (runs anywhere)."""
    if not mixed:
        return model
    import keras

    from cxrcore.train.model import build_model

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        clone = build_model(labels, config.input_size, None, backbone=config.backbone, name=model.name)
    finally:
        keras.config.set_dtype_policy(previous)
    clone.set_weights(model.get_weights())
    return clone


def save_atomic(model: Any, path: Path) -> None:
    """Save through a temporary file, then os.replace: a failed save (full disk) leaves the old file whole."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def disk_full_explained(path: Path, kept: str) -> Iterator[None]:
    """Turn a full disk while writing `path` into a ConfigError that names it and says what was kept."""
    try:
        yield
    except OSError as err:
        if not jobs.is_disk_full(err):
            raise
        raise jobs.disk_full_error(path, kept) from None


def kept_checkpoint(state: dict[str, Any]) -> str:
    """What a failed checkpoint save leaves behind, in words."""
    done = int(state.get("epochs_done") or 0)
    if not done:
        return "No checkpoint was written yet: a resume starts from the first epoch."
    return f"The checkpoint after epoch {done} is kept unchanged: a resume continues from there."


def model_info(config: TrainConfig, data: TrainingData, run_dir: Path, epoch: int, val: dict[str, Any], *,
               backend: str = "tensorflow") -> Any:
    from cxrcore.data.catalog import spec_dataset
    from cxrcore.train.model import ModelInfo

    meta = {"run_id": run_dir.name, "run_dir": str(run_dir.resolve()), "epoch": epoch,
            "val_auroc": val["val_auroc"], "val_loss": val["val_loss"],
            "val_auroc_per_class": {k: (None if math.isnan(v) else v) for k, v in val["per_class"].items()},
            "train_split": config.train_split, "valid_split": config.valid_split, "test_split": config.test_split,
            "image_root": config.image_root, "train_fingerprint": data.fingerprints["train"]["sha256"],
            "valid_fingerprint": data.fingerprints["valid"]["sha256"], "preset": config.preset,
            "train_images": len(data.train), "freeze": config.freeze, "class_weighting": config.class_weighting,
            "backend": backend, "saved": time.time()}
    dataset, kind = spec_dataset(config.train_split)
    return ModelInfo(labels=data.labels, input_size=config.input_size, normalization=data.normalization,
                     name=f"{config.name or config.preset}-{run_dir.name}", origin="trained here",
                     backbone=config.backbone, metadata=meta, dataset=dataset, data_kind=kind)


def write_test_predictions(run_dir: Path, config: TrainConfig, data: TrainingData, *, backend: str = "tensorflow",
                           log: Log = print_log) -> Path:
    """Predict the test split with best.keras into predictions/test.csv (+ test.json with the training splits).

    The Results page lists runs/<run>/predictions/*.csv and checks leakage against the sidecar's train_split.
    Images come through tf.data on TensorFlow, through the decoded-image cache on other backends.
    """
    from cxrcore.data.predictions import write_predictions
    from cxrcore.train.inputs import image_batches
    from cxrcore.train.model import load_model

    loaded = load_model(run_dir / jobs.BEST_MODEL)
    frame = data.test.frame
    batches = image_batches(frame, data.image_root, input_size=loaded.info.input_size,
                            normalization=loaded.info.normalization, batch_size=32, backend=backend,
                            cache_dir=config.cache_dir)
    probs = np.concatenate([np.asarray(loaded.model.predict_on_batch(x), dtype=np.float64) for x in batches], axis=0)
    out = run_dir / jobs.PREDICTIONS_DIR / "test.csv"
    write_predictions(out, frame["Image"].astype(str).tolist(), np.clip(probs, 0.0, 1.0), labels=loaded.info.labels)
    jobs.atomic_write_json(out.with_suffix(".json"), {
        "train_split": config.train_split, "valid_split": config.valid_split, "test_split": config.test_split,
        "model": str((run_dir / jobs.BEST_MODEL).resolve()), "run_id": run_dir.name,
        "epoch": loaded.info.metadata.get("epoch"), "val_auroc": loaded.info.metadata.get("val_auroc")})
    log(f"test predictions: {len(frame):,} images -> {out.relative_to(run_dir)}")
    return out
