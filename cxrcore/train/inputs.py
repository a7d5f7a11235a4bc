"""Batches for the loop, as each backend is fed fastest: `make_feed(runtime, config, data)`.

TensorFlow: tf.data pipelines (decoding in parallel, cached decoded images; distributed over the
strategy's replicas and, multi-worker, sharded per worker). JAX and PyTorch: every image decoded once
into a memory-mapped cache (cxrcore.train.image_cache) read as numpy batches (cxrcore.train.batches,
the next batch prepared in a thread while the device trains), with no TensorFlow in the process.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from cxrcore.errors import ConfigError
from cxrcore.train.data import TrainingData
from cxrcore.train.trainconfig import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cxrcore.train.devices import Runtime

#: Above this many bytes of decoded images (train + valid), "auto" caching uses the disk, not memory.
MEMORY_CACHE_LIMIT = 2 * 1024 ** 3
#: Header checks (every file's header and end marker) before training, for splits up to this size.
CHECK_HEADERS_UP_TO = 20_000


def _cache_settings(config: TrainConfig, n_images: int) -> tuple[bool, str | None]:
    """(memory_cache, cache_dir) for the pipeline from config.cache."""
    mode = config.cache
    if mode == "auto":
        mode = "memory" if n_images * config.input_size ** 2 * 2 <= MEMORY_CACHE_LIMIT else "disk"
    if mode == "memory":
        return True, None
    if mode == "disk":
        return False, config.cache_dir
    return False, None


def make_datasets(config: TrainConfig, data: TrainingData, batch_size: int, *, train_frame: "pd.DataFrame | None" = None,
                  drop_remainder: bool = False):
    """(train, valid) tf.data pipelines: shuffled, augmented training batches and plain validation batches."""
    from cxrcore.data.pipeline import make_dataset

    memory, cache_dir = _cache_settings(config, len(data.train) + len(data.valid))
    check = len(data.train) + len(data.valid) <= CHECK_HEADERS_UP_TO
    common = dict(labels=data.labels, input_size=config.input_size, normalization=data.normalization,
                  memory_cache=memory, cache_dir=cache_dir, check_headers=check)
    frame = data.train if train_frame is None else train_frame
    train = make_dataset(frame, data.image_root, batch_size=batch_size, augmentation=config.augmentation_object(),
                         shuffle=True, seed=config.seed, drop_remainder=drop_remainder, **common)
    valid = make_dataset(data.valid, data.image_root, batch_size=batch_size, **common)
    return train, valid


def distributed_batches(strategy: Any, config: TrainConfig, data: TrainingData, global_batch: int, multi: bool):
    """(epoch -> iterator of distributed batches, steps per epoch, validation dataset, batch spec).

    One device / MirroredStrategy: one pass over the data per epoch (the last batch may be smaller).
    MultiWorkerMirroredStrategy: every worker reads its own shard of the images, repeated, and takes
    exactly len(train) // global_batch steps per epoch, so no worker waits for a batch that never comes.
    """
    if not multi:
        train_ds, valid_ds = make_datasets(config, data, global_batch)
        dist = strategy.experimental_distribute_dataset(train_ds)
        return (lambda: iter(dist)), max(1, math.ceil(len(data.train) / global_batch)), valid_ds, dist.element_spec
    workers = max(1, strategy.num_replicas_in_sync // max(1, len(strategy.extended.worker_devices)))
    per_replica = config.batch_size
    if len(data.train) // workers < per_replica:
        raise ConfigError(f"{len(data.train)} training images are too few for {workers} workers x batch {per_replica}.",
                          fix="lower batch_size or use more images.")
    _, valid_ds = make_datasets(config, data, global_batch)

    def dataset_fn(context: Any) -> Any:
        shard = data.train.iloc[context.input_pipeline_id::context.num_input_pipelines]
        train_ds, _ = make_datasets(config, data, context.get_per_replica_batch_size(global_batch),
                                    train_frame=shard, drop_remainder=True)
        return train_ds.repeat()

    dist = strategy.distribute_datasets_from_function(dataset_fn)
    iterator = iter(dist)
    steps = max(1, len(data.train) // global_batch)
    return (lambda: (next(iterator) for _ in range(steps))), steps, valid_ds, dist.element_spec


def cache_root(config: TrainConfig) -> Path:
    """The cache root: $CXR_CACHE_ROOT, else the folder above the tf.data image cache (cache/)."""
    return _cache_root(config.cache_dir)


def _cache_root(cache_dir: str) -> Path:
    return Path(os.environ.get("CXR_CACHE_ROOT") or Path(cache_dir).parent)


@dataclass
class Feed:
    """What the loop reads: epoch -> training batches, steps per epoch, validation (x, y) batches, and (TF) specs."""

    epoch: Callable[[int], Iterable[Any]]
    steps: int
    valid: Iterable[Any]
    batch_spec: Any = None
    x_spec: Any = None


def make_feed(runtime: "Runtime", config: TrainConfig, data: TrainingData, global_batch: int,
              log: Callable[[str], None] = lambda _m: None) -> Feed:
    """tf.data on TensorFlow, the decoded-image cache as numpy batches on JAX and PyTorch."""
    if runtime.name == "tensorflow":
        epoch, steps, valid, spec = distributed_batches(runtime.strategy, config, data, global_batch, runtime.multi)
        return Feed(lambda _e: epoch(), steps, valid, spec, valid.element_spec[0])
    return cached_feed(config, data, global_batch, drop_remainder=runtime.name == "jax", log=log)


def cached_feed(config: TrainConfig, data: TrainingData, batch_size: int, *, drop_remainder: bool,
                log: Callable[[str], None] = lambda _m: None) -> Feed:
    """Numpy batches from the decoded-image cache; the training order and augmentation depend only on (seed, epoch).

    drop_remainder (JAX): every step has the same shape, so the step compiles once (a smaller last batch
    would compile it a second time: minutes for DenseNet121 on a GPU); the images left out change each epoch.
    """
    from cxrcore.data.pipeline import label_matrix, resolve_image_paths
    from cxrcore.train.batches import ImageBatches
    from cxrcore.train.image_cache import open_image_cache

    def cache(frame: "pd.DataFrame", role: str) -> Any:
        paths = resolve_image_paths(frame, data.image_root)
        log(f"image cache ({role}): {len(paths):,} images at {config.input_size} px.")
        return open_image_cache(paths, config.input_size, cache_root(config))

    train_cache, valid_cache = cache(data.train, "training"), cache(data.valid, "validation")
    drop = drop_remainder and len(data.train) >= batch_size
    train = ImageBatches(train_cache, label_matrix(data.train, data.labels), batch_size=batch_size,
                         normalization=data.normalization, augmentation=config.augmentation_object(), shuffle=True,
                         seed=config.seed, drop_remainder=drop)
    valid = ImageBatches(valid_cache, data.y_valid, batch_size=batch_size, normalization=data.normalization)

    def epoch(number: int) -> Iterator[Any]:
        train.set_epoch(number)
        return train.iterate()

    return Feed(epoch, len(train), _Reiterable(valid.iterate))


def image_batches(frame: "pd.DataFrame", image_root: str, *, input_size: int, normalization: Any, batch_size: int,
                  backend: str, cache_dir: str) -> Iterable[Any]:
    """Input batches (x only, in the frame's order) for prediction: tf.data on TensorFlow, else the image cache."""
    if backend == "tensorflow":
        from cxrcore.data.pipeline import image_dataset, resolve_image_paths

        ds = image_dataset(resolve_image_paths(frame, image_root), input_size=input_size, batch_size=batch_size,
                           normalization=normalization, memory_cache=False)
        return (x for x in ds)
    from cxrcore.data.pipeline import resolve_image_paths
    from cxrcore.train.batches import ImageBatches
    from cxrcore.train.image_cache import open_image_cache

    cache = open_image_cache(resolve_image_paths(frame, image_root), input_size, _cache_root(cache_dir))
    batches = ImageBatches(cache, None, batch_size=batch_size, normalization=normalization)
    return batches.iterate()


def estimate_normalization_cached(frame: "pd.DataFrame", image_root: str, *, input_size: int, cache_dir: str,
                                  sample_size: int = 100, seed: int = 0) -> Any:
    """cxrcore.data.pipeline.estimate_normalization (mean, std of the raw pixels of a sample of training images) read
    from the decoded-image cache, for backends without tf.data."""
    import numpy as np

    from cxrcore.data.pipeline import Normalization

    sample = frame.sample(n=min(int(sample_size), len(frame)), random_state=seed)
    gray = np.concatenate([x[..., 0] for x in image_batches(sample, image_root, input_size=input_size,
                                                            normalization=None, batch_size=32, backend="cached",
                                                            cache_dir=cache_dir)]).astype(np.float64)
    return Normalization.dataset(float(gray.mean()), max(float(gray.std()), 1e-6))


class _Reiterable:
    """An iterable that starts a new iterator each time (validation runs every epoch)."""

    def __init__(self, start: Callable[[], Iterator[Any]]) -> None:
        self._start = start

    def __iter__(self) -> Iterator[Any]:
        return self._start()
