"""Batch prediction of a split with a model, using the model's own input size and normalization.

Predictions are cached as CSV files keyed by (model fingerprint, split fingerprint), so the Results
page and the CLI compute each model's predictions on a split once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from cxrcore.data.dataset import IMAGE, Split
from cxrcore.data.labels import LABELS
from cxrcore.errors import CxrError, ImageError
from cxrcore.train.model import LoadedModel

ProgressCallback = Callable[[int, int, str], None]


def split_fingerprint(split: Split, image_root: str | os.PathLike) -> str:
    """Identifies the images a prediction covers: their names, order and folder."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(str(Path(image_root).resolve()).encode())
    for name in split.frame[IMAGE].astype(str):
        digest.update(name.encode() + b"\0")
    return digest.hexdigest()


def fit_normalization(loaded: LoadedModel, train: Split, image_root: str | os.PathLike,
                      sample_size: int = 100) -> LoadedModel:
    """For `dataset` normalization without stored mean/std (the course's files): fit it on training images,
    as the course's test generator does, and return the model with that info."""
    if loaded.info.normalization.fitted:
        return loaded
    from cxrcore.data.pipeline import estimate_normalization

    import tensorflow as tf

    try:
        norm = estimate_normalization(train.frame, image_root, input_size=loaded.info.input_size,
                                      sample_size=sample_size)
    except tf.errors.OpError as err:
        found = decoding_error(err, [])
        if found is None:
            raise
        raise found from None
    info = dataclasses.replace(loaded.info, normalization=norm,
                               metadata={**loaded.info.metadata, "normalization_fitted_on": train.source})
    return dataclasses.replace(loaded, info=info)


def predict_split(loaded: LoadedModel, split: Split, image_root: str | os.PathLike, *, batch_size: int = 16,
                  progress: ProgressCallback | None = None) -> np.ndarray:
    """(n, 14) probabilities in LABELS order for every image of the split (NaN for labels the model lacks)."""
    from cxrcore.data.pipeline import image_dataset, resolve_image_paths
    from cxrcore.train.model import reorder_outputs

    import keras

    if keras.backend.backend() != "tensorflow":  # JAX / PyTorch (predict --backend): no tf.data
        return reorder_outputs(_predict_from_cache(loaded, split, image_root, batch_size, progress),
                               loaded.info.labels, LABELS)
    paths = resolve_image_paths(split.frame, image_root)
    info = loaded.info
    dataset = image_dataset(paths, input_size=info.input_size, batch_size=batch_size,
                            normalization=info.normalization, memory_cache=False)
    total, steps = len(paths), -(-len(paths) // batch_size)
    done = [0]  # batches predicted: a decoding failure is in the next one

    class _Progress(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch, logs=None):
            done[0] = batch + 1
            if progress:
                progress(min(total, (batch + 1) * batch_size), total, "predicting")

    import tensorflow as tf

    # model.predict spreads batches over every replica when the model was loaded under a
    # MirroredStrategy (several GPUs); on one device it is a plain loop.
    try:
        raw = np.asarray(loaded.model.predict(dataset, steps=steps, verbose=0, callbacks=[_Progress()]),
                         dtype=np.float32)
    except tf.errors.OpError as err:
        found = decoding_error(err, paths[done[0] * batch_size:(done[0] + 2) * batch_size])
        if found is None:
            raise
        raise found from None
    return reorder_outputs(raw, info.labels, LABELS)


def _predict_from_cache(loaded: LoadedModel, split: Split, image_root: str | os.PathLike, batch_size: int,
                        progress: ProgressCallback | None) -> np.ndarray:
    """Raw model outputs through the decoded-image cache (cxrcore.train.image_cache) on backends without tf.data."""
    from cxrcore.data.pipeline import resolve_image_paths
    from cxrcore.train.batches import ImageBatches
    from cxrcore.train.image_cache import open_image_cache

    paths = resolve_image_paths(split.frame, image_root)
    cache = open_image_cache(paths, loaded.info.input_size, os.environ.get("CXR_CACHE_ROOT") or "cache",
                             progress=(lambda done, total: progress(done, total, "decoding")) if progress else None)
    batches = ImageBatches(cache, None, batch_size=batch_size, normalization=loaded.info.normalization)
    out = []
    for i in range(len(batches)):
        out.append(np.asarray(loaded.model.predict_on_batch(batches[i]), dtype=np.float32))
        if progress:
            progress(min(len(paths), (i + 1) * batch_size), len(paths), "predicting")
    return np.concatenate(out, axis=0)


def decoding_error(err: Exception, suspects: list[str]) -> CxrError | None:
    """The user's error behind a tf.data failure, instead of TensorFlow's traceback: the CxrError our decoder
    raised inside the pipeline (its text is in TF's message), else the first suspect file our decoder
    refuses; None when no image is at fault (then the failure is not about the input)."""
    from cxrcore.data.images import read_image

    raised = re.search(r"cxrcore\.errors\.\w+: (.+)", str(getattr(err, "message", err)))
    if raised:
        return ImageError(raised.group(1).strip())
    for path in suspects:
        try:
            read_image(path)
        except CxrError as found:
            return found
    return None


def cached_predictions(cache_dir: str | os.PathLike, model_fingerprint: str, loaded: LoadedModel, split: Split,
                       image_root: str | os.PathLike, *, batch_size: int = 16,
                       progress: ProgressCallback | None = None) -> Path:
    """Path of the split's prediction CSV for this model, computing and caching it when missing.

    The key includes the normalization, so a course model fitted on another training split is new."""
    from cxrcore.data.predictions import write_predictions

    norm = hashlib.blake2b(repr(sorted(loaded.info.normalization.to_dict().items())).encode(),
                           digest_size=4).hexdigest()
    path = Path(cache_dir) / f"{model_fingerprint}{norm}_{split_fingerprint(split, image_root)}.csv"
    if not path.is_file():
        probs = predict_split(loaded, split, image_root, batch_size=batch_size, progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        keep = [i for i, label in enumerate(LABELS) if not np.isnan(probs[:, i]).all()]
        write_predictions(path, list(split.frame[IMAGE].astype(str)), probs[:, keep],
                          labels=[LABELS[i] for i in keep])
    return path
