"""Training batches read from an image cache: no decoding, any Keras backend, reproducible per epoch.

`ImageBatches` is a `keras.utils.PyDataset` over `cxrcore.train.image_cache.ImageCacheArray`: each image
of a batch is read from the memory map, augmented (`Augmentation`: one OpenCV affine warp and gamma, with
the draws of the tf.data pipeline's `_augment_batch`), normalized and repeated to 3 channels as its
`_finish_fn` does, in a few OpenCV calls that release the GIL. The batch is split across a few threads,
so one call keeps up with a GPU without a worker pool. Shuffling and augmentation depend only on
(seed, epoch, batch index), so a job resumed at epoch k sees the batches an uninterrupted job saw.
Never imports TensorFlow.
"""
from __future__ import annotations

import math
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import cv2
import keras
import numpy as np

from cxrcore.data.pipeline import EPSILON, Augmentation, Normalization
from cxrcore.errors import ConfigError
from cxrcore.train.image_cache import ImageCacheArray

_BORDERS = {"nearest": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT}
#: Images per thread below which splitting a batch costs more than it saves.
_MIN_PER_THREAD = 4


def _default_threads() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def augmentation_params(aug: Augmentation, n: int, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-image inverse affine maps (n, 2, 3) and gamma exponents (n,), drawn as `_augment_batch` does.

    Output pixel p reads input pixel M (p - c) + c - t (M: rotation / zoom, x mirrored on a flip); every
    draw is made even when its transform is off, so switching one on leaves the others' draws alone.
    """
    theta = rng.uniform(-1.0, 1.0, n) * (aug.rotation * math.pi / 180.0)
    scale = 1.0 + rng.uniform(-1.0, 1.0, n) * aug.zoom
    tx = rng.uniform(-1.0, 1.0, n) * aug.shift * side
    ty = rng.uniform(-1.0, 1.0, n) * aug.shift * side
    flip = np.where(rng.uniform(0.0, 1.0, n) < 0.5, -1.0, 1.0) if aug.horizontal_flip else np.ones(n)
    gamma = np.exp(rng.uniform(-1.0, 1.0, n) * aug.brightness)
    cos, sin = np.cos(theta) / scale, np.sin(theta) / scale
    a0, a1, b0, b1 = cos * flip, sin, -sin * flip, cos
    c = (side - 1.0) / 2.0
    maps = np.stack([np.stack([a0, a1, c - a0 * c - a1 * c - tx], 1),
                     np.stack([b0, b1, c - b0 * c - b1 * c - ty], 1)], 1)
    return maps.astype(np.float64), gamma.astype(np.float32)


def augment(gray: np.ndarray, aug: Augmentation, m: np.ndarray, gamma: float) -> np.ndarray:
    """One float32 [0, 1] image (S, S) with drawn transforms applied: bilinear warp, then gamma."""
    side = gray.shape[0]
    if aug.rotation or aug.zoom or aug.shift or aug.horizontal_flip:
        gray = cv2.warpAffine(gray, m, (side, side), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=_BORDERS[aug.fill], borderValue=0.0)
    if aug.brightness:
        np.clip(gray, 0.0, 1.0, out=gray)
        cv2.pow(gray, float(gamma), dst=gray)
    return gray


def _channel_stats(normalization: Normalization | None, img: np.ndarray) -> tuple[list[float], list[float]]:
    """(mean, std) per output channel in the image's own units; 0 and 1 for raw pixels."""
    if normalization is None:
        return [0.0], [1.0]
    if normalization.mode == "sample":
        mean, std = cv2.meanStdDev(img)  # one pass in float64; tf.nn.moments' population std
        return [float(mean[0, 0])], [float(std[0, 0])]
    return list(normalization.mean), list(normalization.std)


def finish(img: np.ndarray, unit: float, normalization: Normalization | None, out: np.ndarray) -> None:
    """One image (S, S), uint16 (unit 1/65535) or float32 [0, 1] (unit 1) -> normalized `out` (S, S, 3).

    (x - mean) / (std + EPSILON) on x = img * unit, then gray repeated to 3 channels, as the pipeline's
    `_finish_fn`; computed as one fused scale-and-shift per channel (OpenCV, outside the GIL).
    """
    means, stds = _channel_stats(normalization, img)
    if normalization is not None and normalization.mode == "sample":
        means, stds = [means[0] * unit], [stds[0] * unit]
    planes = []
    for mean, std in zip(means, stds):
        denom = std + EPSILON if normalization is not None else 1.0
        planes.append(cv2.addWeighted(img, unit / denom, img, 0.0, -mean / denom, dtype=cv2.CV_32F))
    cv2.merge(planes * 3 if len(planes) == 1 else planes, dst=out)


class ImageBatches(keras.utils.PyDataset):
    """Batches (x float32 (B, S, S, 3), y float32 (B, L)) from an image cache; x alone without targets.

    shuffle: a new order each epoch from (seed, epoch); augmentation: drawn from (seed, epoch, batch).
    `set_epoch(k)` before reading epoch k (Keras' fit moves on by itself through `on_epoch_begin`).
    threads: how many threads share one batch (default: the usable cores, at most 8).
    Other keyword arguments go to keras.utils.PyDataset (workers, use_multiprocessing, max_queue_size).
    """

    def __init__(self, cache: ImageCacheArray, targets: np.ndarray | None, *, batch_size: int,
                 normalization: Normalization | None, augmentation: Augmentation | None = None,
                 shuffle: bool = False, seed: int = 0, drop_remainder: bool = False,
                 threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        if normalization is not None:
            normalization._require_fitted()
        n = len(cache)
        if targets is not None:
            targets = np.asarray(targets, dtype=np.float32)
            if targets.ndim != 2 or len(targets) != n:
                raise ConfigError(f"targets must be (N, labels) with N = {n} images, got shape {targets.shape}.")
        if drop_remainder and n < int(batch_size):
            raise ConfigError(f"{n} images make no full batch of {batch_size}.",
                              fix="lower the batch size or add images.")
        self.cache = cache
        self.targets = targets
        self.batch_size = int(batch_size)
        self.normalization = normalization
        self.augmentation = augmentation if augmentation is not None and augmentation.enabled else None
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_remainder = bool(drop_remainder)
        self.threads = max(1, int(threads or _default_threads()))
        self._pool: ThreadPoolExecutor | None = None
        self.epoch = 0
        self._order = np.arange(n)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch `epoch`'s order and augmentation draws (a function of seed and epoch only)."""
        self.epoch = int(epoch)
        self._begun = False
        n = len(self.cache)
        self._order = (np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle
                       else np.arange(n))

    def on_epoch_begin(self) -> None:
        """Keras' fit calls this before each epoch: the first keeps the epoch set, later ones move on."""
        if self._begun:
            self.set_epoch(self.epoch + 1)
        self._begun = True

    def __len__(self) -> int:
        n = len(self.cache)
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    def rows(self, index: int) -> np.ndarray:
        """Cache rows of batch `index` in this epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1}).")
        return self._order[index * self.batch_size:(index + 1) * self.batch_size]

    def __getitem__(self, index: int):
        rows = self.rows(int(index))
        side = self.cache.input_size
        x = np.empty((len(rows), side, side, 3), dtype=np.float32)
        maps = gamma = None
        if self.augmentation is not None:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            maps, gamma = augmentation_params(self.augmentation, len(rows), side, rng)

        def work(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                img, unit = self.cache.pixels[rows[i]], 1.0 / 65535.0
                if maps is not None:
                    img = augment(cv2.addWeighted(img, unit, img, 0.0, 0.0, dtype=cv2.CV_32F),
                                  self.augmentation, maps[i], gamma[i])
                    unit = 1.0
                finish(img, unit, self.normalization, x[i])

        parts = min(self.threads, max(1, len(rows) // _MIN_PER_THREAD))
        if parts == 1:
            work(0, len(rows))
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="image-batches")
            bounds = np.linspace(0, len(rows), parts + 1).astype(int)
            for future in [self._pool.submit(work, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]:
                future.result()
        if self.targets is None:
            return x
        return x, self.targets[rows]

    def iterate(self, prefetch: int = 2) -> Iterator[Any]:
        """This epoch's batches in order, each prepared by a background thread up to `prefetch` ahead,
        so building batch i + 1 overlaps the accelerator's step on batch i (and its transfer)."""
        if prefetch < 1:
            yield from (self[i] for i in range(len(self)))
            return
        ahead: queue.Queue = queue.Queue(maxsize=int(prefetch))
        stop = threading.Event()

        def produce() -> None:
            for i in range(len(self)):
                try:
                    item = (self[i], None)
                except BaseException as err:  # re-raised in the consumer
                    item = (None, err)
                while not stop.is_set():
                    try:
                        ahead.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set() or item[1] is not None:
                    return

        thread = threading.Thread(target=produce, name="image-batches-prefetch", daemon=True)
        thread.start()
        try:
            for _ in range(len(self)):
                batch, err = ahead.get()
                if err is not None:
                    raise err
                yield batch
        finally:
            stop.set()
            thread.join()

    def __getstate__(self) -> dict:  # a thread pool does not pickle (use_multiprocessing=True)
        state = dict(self.__dict__)
        state["_pool"] = None
        return state


__all__ = ["ImageBatches", "augment", "augmentation_params", "finish"]
