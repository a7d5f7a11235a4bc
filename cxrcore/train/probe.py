"""Probe: a few real training steps timed to estimate the time per epoch on this machine.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrcore.train.backend import choose_backend
from cxrcore.train.data import TrainingData, prepare_data
from cxrcore.train.devices import start
from cxrcore.train.freeze import build_models
from cxrcore.train.inputs import cached_feed
from cxrcore.train.rundir import Log
from cxrcore.train.steps import make_steps
from cxrcore.train.trainconfig import TrainConfig, detect_hardware

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


@dataclass
class ProbeResult:
    """A short measurement (a few batches) turned into an estimate of the time per epoch.

    seconds_per_epoch: batches x time per batch + validation batches + saving the checkpoint and best
    model; first_epoch_seconds adds decoding every image once; total_seconds adds the start-up
    (building the model, compiling the step) and the other epochs.
    """

    device: str
    batch_size: int
    probe_batches: int
    seconds_per_batch: float
    decode_seconds_per_image: float
    valid_seconds_per_batch: float
    train_images: int
    valid_images: int
    batches_per_epoch: int
    valid_batches: int
    seconds_per_epoch: float
    first_epoch_seconds: float
    startup_seconds: float
    save_seconds: float
    epochs: int
    total_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One readable sentence."""
        return (f"About {_duration(self.seconds_per_epoch)} per epoch on {self.device} "
                f"({self.batches_per_epoch} batches of {self.batch_size} at {self.seconds_per_batch:.3g} s, plus "
                f"validation); the first epoch also decodes the images: about {_duration(self.first_epoch_seconds)}. "
                f"All {self.epochs} epochs: about {_duration(self.total_seconds)}.")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def probe(config: TrainConfig, *, batches: int = 4, log: Log = lambda _m: None) -> ProbeResult:
    """Time a few real training steps (and the decoding of their images) to estimate an epoch.

    Builds the configured model without downloading weights (timing does not depend on them),
    on one device with this config's precision; the estimate scales by batches per epoch.
    """
    t0 = time.monotonic()
    runtime = start(config, strategy=_one_device() if _backend_is_tensorflow(config) else None, log=log)
    import keras  # after start(): it chose the backend
    data = prepare_data(config, log=log, fit_normalization=False)
    batch = config.batch_size
    n_probe = min(len(data.train), batch * (batches + 1))
    sample = data.train.sample(n=n_probe, random_state=config.seed) if n_probe < len(data.train) else data.train
    t_decode = time.monotonic()
    cached = _probe_batches(runtime.name, config, data, sample)
    decode_per_image = (time.monotonic() - t_decode) / max(1, n_probe)
    model, train_model = build_models(config, data.labels, pretrained=False)
    train_model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate))
    optimizer = train_model.optimizer
    optimizer.build(train_model.trainable_variables)
    steps = make_steps(runtime.name, train_model, optimizer, data.w_pos, data.w_neg, strategy=runtime.strategy)
    float(steps.train(cached[0]))  # compile and warm up
    steps.predict(cached[0][0])
    startup = time.monotonic() - t0
    timed = cached[1:] or cached
    t_steps = time.monotonic()
    for b in timed:
        float(steps.train(b))
    per_batch = (time.monotonic() - t_steps) / len(timed)
    t_val = time.monotonic()
    for b in timed[:2]:
        steps.predict(b[0])
    per_valid = (time.monotonic() - t_val) / len(timed[:2])
    steps.commit()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cxr-probe-") as tmp:  # checkpoint + best model, each epoch
        t_save = time.monotonic()
        train_model.save(Path(tmp) / "probe.keras")
        save_seconds = 2 * (time.monotonic() - t_save)
    n_batches = max(1, math.ceil(len(data.train) / batch))
    n_valid = max(1, math.ceil(len(data.valid) / batch))
    per_epoch = n_batches * per_batch + n_valid * per_valid + save_seconds
    first = per_epoch + (len(data.train) + len(data.valid)) * decode_per_image
    gpus = runtime.gpus
    device = (f"{len(gpus)} GPU(s)" if gpus else f"the CPU ({detect_hardware().cpus} cores)") + f" with {runtime.name}"
    return ProbeResult(device=device, batch_size=batch, probe_batches=len(timed), seconds_per_batch=per_batch,
                       decode_seconds_per_image=decode_per_image, valid_seconds_per_batch=per_valid,
                       train_images=len(data.train), valid_images=len(data.valid), batches_per_epoch=n_batches,
                       valid_batches=n_valid, seconds_per_epoch=per_epoch, first_epoch_seconds=first,
                       startup_seconds=startup, save_seconds=save_seconds, epochs=config.epochs,
                       total_seconds=startup + first + per_epoch * max(0, config.epochs - 1))


def _backend_is_tensorflow(config: TrainConfig) -> bool:
    return choose_backend(config.backend).name == "tensorflow"


def _one_device() -> Any:
    import tensorflow as tf

    return tf.distribute.get_strategy()


def _probe_batches(backend: str, config: TrainConfig, data: TrainingData, sample: "pd.DataFrame") -> list[Any]:
    """The sample's augmented training batches, decoded now (timed by the caller), kept in memory."""
    if backend == "tensorflow":
        import tensorflow as tf

        from cxrcore.data.pipeline import make_dataset

        ds = make_dataset(sample, data.image_root, labels=data.labels, input_size=config.input_size,
                          batch_size=config.batch_size, normalization=data.normalization,
                          augmentation=config.augmentation_object(), memory_cache=False)
        return [(tf.constant(x), tf.constant(y)) for x, y in ds.as_numpy_iterator()]
    from cxrcore.data.pipeline import label_matrix

    part = dataclasses.replace(data, train=sample, valid=sample, y_valid=label_matrix(sample, data.labels))
    return list(cached_feed(config, part, config.batch_size, drop_remainder=backend == "jax").epoch(0))
