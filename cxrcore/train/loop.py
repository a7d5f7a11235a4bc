"""Training jobs: the weighted-loss training loop over a run folder, resumable, cancellable, distributed.

`run_job(run_dir)` is what `python -m cxrcore train` runs: it takes the folder's lock, keeps
status.json beating, trains with `train()`, and always leaves a final state (finished, cancelled,
failed). The loop is a plain `strategy.run` loop (the same code for one device, MirroredStrategy over
all visible GPUs and MultiWorkerMirroredStrategy from TF_CONFIG; Keras 3's fit() cannot reduce its
scalar logs under MultiWorkerMirroredStrategy) driving Keras' ReduceLROnPlateau and EarlyStopping,
whose state is checkpointed with the model and optimizer so `--resume` continues at the next epoch.
Each epoch ends with: validation (loss, per-class and mean AUROC), best.keras when the mean AUROC
improved, a metrics.csv row, TensorBoard scalars, then checkpoints/last.keras + state.json.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import signal
import statistics
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from cxrcore import jobs
from cxrcore.errors import ConfigError, CxrError, DatasetError, ModelError
from cxrcore.trainconfig import PRESET_NOTES, TrainConfig, detect_hardware, preset_changes

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import tensorflow as tf

    from cxrcore.dataset import Split
    from cxrcore.pipeline import Normalization

#: Above this many bytes of decoded images (train + valid), "auto" caching uses the disk, not memory.
MEMORY_CACHE_LIMIT = 2 * 1024 ** 3
#: Header checks (every file's header and end marker) before training, for splits up to this size.
CHECK_HEADERS_UP_TO = 20_000
#: Seconds to sleep after every training step: lets tests (and demos of cancel/resume) catch a run mid-epoch.
STEP_DELAY_ENV = "CXR_TRAIN_STEP_DELAY_S"
Log = Callable[[str], None]


def _print(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

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
    from cxrcore.dataset import load_split, load_table

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


def prepare_data(config: TrainConfig, *, log: Log = _print, fit_normalization: bool = True) -> TrainingData:
    """Load the splits, take the CPU-preset subsets, compute class weights and (dataset mode) mean/std."""
    from cxrcore.loss import class_weights
    from cxrcore.pipeline import Normalization, estimate_normalization, label_matrix

    train = load_spec(config.train_split, "train")
    valid = load_spec(config.valid_split, "valid")
    test = load_spec(config.test_split, "test") if config.test_split and config.predict_test else None
    notes: list[str] = []
    skipped: dict[str, int] = {}
    if config.skip_missing_images:  # the user chose to train on the images present (see cxrcore.preflight)
        from cxrcore.preflight import drop_missing

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
        norm = (estimate_normalization(train_frame, config.image_root, input_size=config.input_size,
                                       seed=config.seed) if fit_normalization else Normalization.dataset(0.5, 0.25))
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
    from cxrcore.pipeline import make_dataset

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


# --------------------------------------------------------------------------------------------
# Devices, strategy, model
# --------------------------------------------------------------------------------------------

def setup_devices() -> list[str]:
    """Visible GPUs (memory growth on, so a probe and a job can share one); [] on CPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):
            pass
    return [g.name for g in gpus]


def select_strategy(distribution: str, gpus: list[str]) -> tuple["tf.distribute.Strategy", str, bool]:
    """(strategy, description, multi_worker): MultiWorkerMirrored from TF_CONFIG, Mirrored over >1 GPU, else one device."""
    import tensorflow as tf

    multi, _chief, _index = jobs.tf_config_role()
    if distribution == "multi_worker" or (distribution == "auto" and multi):
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError("distribution = 'multi_worker' needs the TF_CONFIG environment variable.",
                              fix='set TF_CONFIG on every worker, e.g. {"cluster": {"worker": ["a:2222", "b:2222"]}, '
                                  '"task": {"type": "worker", "index": 0}}.')
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return (strategy, f"MultiWorkerMirroredStrategy ({strategy.num_replicas_in_sync} replicas across workers)",
                True)
    if distribution == "mirrored" or (distribution == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy()
        return strategy, f"MirroredStrategy over {strategy.num_replicas_in_sync} device(s)", False
    device = "GPU 0" if gpus else "the CPU"
    return tf.distribute.get_strategy(), f"one device ({device})", False


def _device_label(gpus: list[str], replicas: int, multi: bool) -> str:
    """Short device text for the page: "CPU", "1 GPU", "4 GPUs", "2 workers x 1"."""
    if multi:
        return f"{replicas} replicas, multi-worker"
    if gpus:
        return f"{replicas if replicas > 1 else 1} GPU{'s' if replicas > 1 else ''}"
    return "CPU" if replicas == 1 else f"{replicas} CPU replicas"


def use_mixed_precision(config: TrainConfig, gpus: list[str]) -> bool:
    """Mixed float16 on GPUs ("auto"), never silently on a CPU (it is slower there)."""
    return config.mixed_precision == "on" or (config.mixed_precision == "auto" and bool(gpus))


def _blocks(backbone: str, model: Any = None) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per block, first to last: (layer-name prefixes, exact layer names) of the backbone's layers (see
    cxrcore.model.backbone_layers). A DenseNet block includes the transition layers before it, and the
    last one the final "bn"/"relu"; ResNet50's are its stages conv2..conv5, EfficientNetV2-S's its stages
    block1..block6 (the last with the top conv), the ViT's its transformer layers (the last with the final
    norm; counted on `model`, so a smaller test ViT has fewer)."""
    if backbone == "densenet121":
        return [(("conv2_block",), ()), (("pool2_", "conv3_block"), ()), (("pool3_", "conv4_block"), ()),
                (("pool4_", "conv5_block"), ("bn", "relu"))]
    if backbone == "resnet50":
        return [((f"conv{i}_",), ()) for i in range(2, 6)]
    if backbone == "efficientnetv2_s":
        return [((f"block{i}",), ("top_conv", "top_bn", "top_activation") if i == 6 else ()) for i in range(1, 7)]
    if backbone == "vit_b16":
        from cxrcore.model import VIT_CONFIGS, VIT_LAYER

        n = (model.get_layer(VIT_LAYER).num_layers if model is not None
             else VIT_CONFIGS["vit_b16"].num_layers)
        return [((), (f"transformer_block_{i}",) + (("ln",) if i == n else ())) for i in range(1, n + 1)]
    return [((f"block{i}_",), ("features",) if i == 4 else ()) for i in range(1, 5)]


def apply_freeze(model: Any, freeze: str, backbone: str) -> int:
    """Set trainable for "head" / "last:N" / "first:N" / "none"; returns the number of trainable weight tensors.

    "head" freezes every backbone layer, "last:N" all but the last N blocks, "first:N" the first N
    backbone layers in order (cxrcore.model.backbone_layers, input layer included, as the course's
    references froze `base_model.layers[:50]`). The head is always trained. Frozen BatchNormalization
    layers run in inference mode (Keras 3), as fine-tuning needs.
    """
    from cxrcore.model import backbone_layers

    _set_trainable(model, True)  # every layer and nested layer first; then the frozen ones
    if freeze == "none":
        return len(model.trainable_weights)
    layers = backbone_layers(model)
    mode, _, number = freeze.partition(":")
    if mode == "first":
        n = int(number)
        if not 1 <= n <= len(layers):
            raise ModelError(f"freeze = {freeze!r}, but this {backbone} has {len(layers)} backbone layers.",
                             fix=f"use first:1 to first:{len(layers)}.")
        frozen = layers[:n]
    else:
        prefixes: tuple[str, ...] = ()
        exact: set[str] = set()
        if mode == "last":
            blocks = _blocks(backbone, model)
            if not 1 <= int(number) <= len(blocks):
                raise ModelError(f"freeze = {freeze!r}, but this {backbone} has {len(blocks)} blocks.",
                                 fix=f"use last:1 to last:{len(blocks)}.")
            for block_prefixes, names in blocks[-int(number):]:
                prefixes += block_prefixes
                exact.update(names)
        frozen = [layer for layer in layers
                  if not (layer.name in exact or (bool(prefixes) and layer.name.startswith(prefixes)))]
    for layer in frozen:
        _set_trainable(layer, False)
    return len(model.trainable_weights)


def _set_trainable(layer: Any, value: bool) -> None:
    """trainable = value for the layer and every layer nested in it, each set on its own: Keras' setter does
    nothing when the layer already has that value, so sublayers frozen earlier would stay frozen."""
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        sub.trainable = value


def build_models(config: TrainConfig, labels: tuple[str, ...], *, pretrained: bool = True):
    """(model with sigmoid outputs, logits model sharing its weights); call inside strategy.scope()."""
    from cxrcore.model import build_model, logits_model

    weights: str | None = None
    if pretrained and config.initial_weights != "none":
        weights = config.initial_weights
    try:
        model = build_model(labels, config.input_size, weights, backbone=config.backbone,
                            name=f"{config.backbone}_cxr")
    except CxrError:
        raise
    except Exception as err:  # a failed ImageNet download surfaces as URLError/HTTPError/OSError/ValueError
        if weights == "imagenet":
            raise ModelError(f"the ImageNet weights could not be downloaded ({type(err).__name__}: {err}).",
                             fix='connect to the internet once (Keras keeps them in ~/.keras/models), or set '
                                 'initial_weights = "none" or a local .h5 weights file.') from None
        raise
    apply_freeze(model, config.freeze, config.backbone)
    return model, logits_model(model)


def export_model(model: Any, config: TrainConfig, labels: tuple[str, ...], mixed: bool) -> Any:
    """The model to save as best.keras: a float32 copy when trained in mixed precision (runs anywhere)."""
    if not mixed:
        return model
    import keras

    from cxrcore.model import build_model

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        clone = build_model(labels, config.input_size, None, backbone=config.backbone, name=model.name)
    finally:
        keras.config.set_dtype_policy(previous)
    clone.set_weights(model.get_weights())
    return clone


# --------------------------------------------------------------------------------------------
# Steps and validation
# --------------------------------------------------------------------------------------------

def make_train_step(train_model: Any, optimizer: Any, strategy: Any, w_pos: np.ndarray, w_neg: np.ndarray,
                    batch_spec: Any = None):
    """A compiled distributed step: per-replica weighted loss from logits, scaled for mixed precision.

    batch_spec (the distributed dataset's element_spec) avoids a second trace for the last, smaller batch.
    """
    import tensorflow as tf

    from cxrcore.loss import per_sample_loss_from_logits

    wp, wn = np.asarray(w_pos, np.float32), np.asarray(w_neg, np.float32)

    def replica_step(batch):
        x, y = batch
        with tf.GradientTape() as tape:
            logits = train_model(x, training=True)
            per_image = per_sample_loss_from_logits(y, logits, wp, wn)
            loss = tf.nn.compute_average_loss(per_image)
            scaled = optimizer.scale_loss(loss)
        variables = train_model.trainable_variables
        grads = tape.gradient(scaled, variables)
        optimizer.apply(grads, variables)
        return loss

    @tf.function(reduce_retracing=True, input_signature=None if batch_spec is None else [batch_spec])
    def step(batch):
        per_replica = strategy.run(replica_step, args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return step


def make_predict(train_model: Any, x_spec: Any = None):
    """Logits for a batch, computed locally on this worker (no collective ops; same weights everywhere)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True, input_signature=None if x_spec is None else [x_spec])
    def predict(x):
        return tf.cast(train_model(x, training=False), tf.float32)

    return predict


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def validation_metrics(logits: np.ndarray, y: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray,
                       labels: tuple[str, ...]) -> dict[str, Any]:
    """Weighted loss (the training loss) and per-class / mean AUROC of validation logits."""
    from cxrcore.metrics import auroc

    z = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(z).all():
        raise ModelError("training diverged: the model outputs NaN or infinite values.",
                         fix="lower learning_rate (e.g. by 10x), or turn mixed precision off.")
    per_image = -(w_pos * y * _log_sigmoid(z) + w_neg * (1 - y) * _log_sigmoid(-z)).sum(axis=1)
    per_class = {label: auroc(y[:, j].astype(np.uint8), z[:, j]) for j, label in enumerate(labels)}
    defined = [v for v in per_class.values() if not math.isnan(v)]
    return {"val_loss": float(per_image.mean()), "val_auroc": float(np.mean(defined)) if defined else math.nan,
            "per_class": per_class}


def predict_logits(predict: Any, dataset: Any) -> np.ndarray:
    """Run `predict` over a (x, y) dataset; (n, classes) float32."""
    out = [predict(x).numpy() for x, _ in dataset]
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)


# --------------------------------------------------------------------------------------------
# Callbacks whose state survives a restart
# --------------------------------------------------------------------------------------------

_RESUMABLE: dict[str, type] = {}


def _resumable_callbacks() -> tuple[type, type]:
    """Keras ReduceLROnPlateau / EarlyStopping that restore their counters after on_train_begin."""
    if _RESUMABLE:
        return _RESUMABLE["rlr"], _RESUMABLE["es"]
    import keras

    class _StateMixin:
        STATE = ("best", "wait")

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._restore: dict[str, Any] | None = None

        def get_state(self) -> dict[str, Any]:
            out = {}
            for name in self.STATE:
                value = getattr(self, name, None)
                out[name] = float(value) if value is not None and not isinstance(value, int) else value
            return out

        def set_state(self, state: dict[str, Any] | None) -> None:
            self._restore = dict(state or {}) or None

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            for name, value in (self._restore or {}).items():
                if name in self.STATE:
                    setattr(self, name, value)

    class ResumableReduceLROnPlateau(_StateMixin, keras.callbacks.ReduceLROnPlateau):
        STATE = ("best", "wait", "cooldown_counter")

    class ResumableEarlyStopping(_StateMixin, keras.callbacks.EarlyStopping):
        STATE = ("best", "wait", "best_epoch", "stopped_epoch")

    _RESUMABLE.update(rlr=ResumableReduceLROnPlateau, es=ResumableEarlyStopping)
    return ResumableReduceLROnPlateau, ResumableEarlyStopping


class ScalarLog:
    """TensorBoard scalars (event files) written with tf.summary.write, so the tensorboard package is optional."""

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.writer = None
        if not enabled:
            return
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
        self.writer = tf.summary.create_file_writer(str(folder))

    def write(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        with self.writer.as_default():
            for tag, value in values.items():
                if value is not None and math.isfinite(value):
                    self._tf.summary.write(tag, self._tf.constant(float(value)), step=step, metadata=self._meta)
        self.writer.flush()


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------

class StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it after every batch."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> dict[int, Any]:
        """Handle SIGTERM and SIGINT (main thread only); returns the previous handlers for `restore`."""
        def handler(signum: int, _frame: Any) -> None:
            self.requested = True
            self.signal_name = signal.Signals(signum).name

        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, handler)
        return previous

    @staticmethod
    def restore(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def metrics_columns(labels: tuple[str, ...]) -> list[str]:
    """metrics.csv header: epoch, loss, val_loss, val_auroc_mean, learning_rate, seconds, val_auroc_<Label>..."""
    return ["epoch", "loss", "val_loss", "val_auroc_mean", "learning_rate", "seconds",
            *[f"val_auroc_{label}" for label in labels]]


def _save_atomic(model: Any, path: Path) -> None:
    """Save through a temporary file, then os.replace: a failed save (full disk) leaves the old file whole."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _disk_full_explained(path: Path, kept: str) -> Iterator[None]:
    """Turn a full disk while writing `path` into a ConfigError that names it and says what was kept."""
    try:
        yield
    except OSError as err:
        if not jobs.is_disk_full(err):
            raise
        raise jobs.disk_full_error(path, kept) from None


def _kept_checkpoint(state: dict[str, Any]) -> str:
    """What a failed checkpoint save leaves behind, in words."""
    done = int(state.get("epochs_done") or 0)
    if not done:
        return "No checkpoint was written yet: a resume starts from the first epoch."
    return f"The checkpoint after epoch {done} is kept unchanged: a resume continues from there."


def _model_info(config: TrainConfig, data: TrainingData, run_dir: Path, epoch: int, val: dict[str, Any]) -> Any:
    from cxrcore.model import ModelInfo

    meta = {"run_id": run_dir.name, "run_dir": str(run_dir.resolve()), "epoch": epoch,
            "val_auroc": val["val_auroc"], "val_loss": val["val_loss"],
            "val_auroc_per_class": {k: (None if math.isnan(v) else v) for k, v in val["per_class"].items()},
            "train_split": config.train_split, "valid_split": config.valid_split, "test_split": config.test_split,
            "image_root": config.image_root, "train_fingerprint": data.fingerprints["train"]["sha256"],
            "valid_fingerprint": data.fingerprints["valid"]["sha256"], "preset": config.preset,
            "train_images": len(data.train), "freeze": config.freeze, "class_weighting": config.class_weighting,
            "saved": time.time()}
    from cxrcore.catalog import spec_dataset
    dataset, kind = spec_dataset(config.train_split)
    return ModelInfo(labels=data.labels, input_size=config.input_size, normalization=data.normalization,
                     name=f"{config.name or config.preset}-{run_dir.name}", origin="trained here",
                     backbone=config.backbone, metadata=meta, dataset=dataset, data_kind=kind)


def _write_run_json(run_dir: Path, config: TrainConfig, data: TrainingData, extra: dict[str, Any],
                    resume: bool) -> None:
    path = run_dir / jobs.RUN_FILE
    previous: dict[str, Any] = {}
    if resume and path.is_file():
        try:
            previous = jobs.read_json(path)
        except ConfigError:
            previous = {}
    record = {
        "run_id": run_dir.name, "created": previous.get("created", time.time()), "labels": list(data.labels),
        "class_weights": {label: {"w_pos": float(p), "w_neg": float(n)}
                          for label, p, n in zip(data.labels, data.w_pos, data.w_neg)},
        "class_weighting": config.class_weighting, "data": data.fingerprints, "sizes": data.sizes,
        "normalization": data.normalization.to_dict(), "monitor": data.monitor, "notes": data.notes,
        "preset": config.preset, "preset_note": PRESET_NOTES.get(config.preset, ""), **extra,
        "resumes": previous.get("resumes", []) + ([time.time()] if resume else []),
    }
    jobs.atomic_write_json(path, record)


def _check_fingerprints(run_dir: Path, data: TrainingData, log: Log) -> None:
    try:
        before = jobs.read_json(run_dir / jobs.RUN_FILE).get("data", {})
    except ConfigError:
        return
    for role, now in data.fingerprints.items():
        old = before.get(role, {}).get("sha256")
        if old and old != now["sha256"]:
            log(f"warning: the {role} split file changed since this run started; the resumed model mixes data.")


@dataclass
class TrainResult:
    """How a training call ended."""

    state: str  # finished | cancelled
    epochs_done: int
    best_val_auroc: float | None
    best_epoch: int | None
    stopped_early: bool = False
    seconds: float = 0.0


def train(config: TrainConfig, run_dir: str | os.PathLike, *, resume: bool = False,
          status: jobs.StatusWriter | None = None, should_stop: Callable[[], bool] = lambda: False,
          log: Log = _print, strategy: Any = None) -> TrainResult:
    """Train `config` into run_dir (resuming from checkpoints/last.keras when resume=True)."""
    t_start = time.monotonic()
    run_dir = Path(run_dir)
    multi, chief, _index = jobs.tf_config_role()
    status = status or jobs.StatusWriter(run_dir, enabled=chief)
    status.update(phase="starting TensorFlow", force=True)
    import keras

    gpus = setup_devices()
    hardware = detect_hardware()
    if gpus:
        log(f"{len(gpus)} GPU(s) visible to TensorFlow.")
    else:
        log(f"No GPU visible: training on the CPU ({hardware.cpus} cores). "
            + ("Expect hours per epoch with this preset; the CPU presets are cpu-classroom and demo."
               if config.preset == "gpu-full" else ""))
    if strategy is None:
        strategy, strategy_text, multi = select_strategy(config.distribution, gpus)
    else:
        strategy_text = f"{type(strategy).__name__} ({strategy.num_replicas_in_sync} replicas)"
    replicas = int(strategy.num_replicas_in_sync)
    global_batch = config.batch_size * replicas
    mixed = use_mixed_precision(config, gpus)
    keras.config.set_dtype_policy("mixed_float16" if mixed else "float32")
    keras.utils.set_random_seed(config.seed)
    log(f"strategy: {strategy_text}; batch {config.batch_size} per replica x {replicas} = {global_batch}; "
        f"mixed precision {'on' if mixed else 'off'}.")
    if config.preset in PRESET_NOTES:
        changed = preset_changes(config)
        log(f"preset {config.preset}: {PRESET_NOTES[config.preset]}"
            + (f" Changed here: {', '.join(f'{k}={v}' for k, v in changed.items())}." if changed else ""))

    status.update(phase="loading data", force=True)
    data = prepare_data(config, log=log)
    if resume:
        _check_fingerprints(run_dir, data, log)
    if chief:
        _write_run_json(run_dir, config, data, {
            "hardware": {"gpus": gpus, "cpus": hardware.cpus}, "strategy": strategy_text, "replicas": replicas,
            "per_replica_batch_size": config.batch_size, "global_batch_size": global_batch,
            "mixed_precision": mixed}, resume)
    epoch_batches, steps_per_epoch, valid_ds, batch_spec = distributed_batches(strategy, config, data, global_batch, multi)
    log(f"data: {len(data.train):,} training images ({steps_per_epoch} steps of {global_batch}), "
        f"{len(data.valid):,} validation images, {len(data.labels)} labels.")

    status.update(phase="building the model", force=True)
    with strategy.scope():
        model, train_model = build_models(config, data.labels)
        train_model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate))
        optimizer = train_model.optimizer
        optimizer.build(train_model.trainable_variables)
    n_trainable = sum(int(np.prod(v.shape)) for v in train_model.trainable_variables)
    n_total = sum(int(np.prod(v.shape)) for v in train_model.weights)
    log(f"model: {config.backbone} at {config.input_size} px, freeze {config.freeze}: "
        f"{n_trainable:,} of {n_total:,} weights trainable.")

    ckpt_dir = run_dir / jobs.CHECKPOINT_DIR
    last_path, state_path = ckpt_dir / jobs.LAST_CHECKPOINT, ckpt_dir / jobs.STATE_FILE
    state: dict[str, Any] = {}
    if resume and last_path.is_file() and state_path.is_file():
        state = jobs.read_json(state_path)
        try:
            train_model.load_weights(last_path)
        except Exception as err:  # noqa: BLE001 - keras raises many types for a mismatched file
            raise ModelError(f"the checkpoint does not fit this run's model ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:160]}).", file=str(last_path),
                             fix="resume with the run's own config.json unchanged, or start a new run.") from None
        log(f"resumed from {last_path.name}: {state.get('epochs_done', 0)} epoch(s) done, "
            f"learning rate {float(optimizer.learning_rate.numpy()):.3g}.")
    elif resume:
        log("no checkpoint yet (stopped during the first epoch): starting from the beginning.")
    epochs_done = int(state.get("epochs_done", 0))
    if epochs_done >= config.epochs:
        raise ConfigError(f"all {config.epochs} epochs of this run are done already.", file=str(run_dir),
                          fix="resume with more epochs (--set epochs=N) or start a new run.")
    if chief:
        ckpt_dir.mkdir(exist_ok=True)
        kept = jobs.truncate_metrics(run_dir, epochs_done)
        if resume:
            log(f"metrics.csv: {kept} epoch row(s) kept; continuing at epoch {epochs_done + 1}.")
    best = state.get("best_val_auroc") if data.monitor == "val_auroc" else state.get("best_val_loss")
    best_epoch = state.get("best_epoch")
    best_json = run_dir / "best.json"
    if resume and data.monitor == "val_auroc" and best_json.is_file():  # best.keras may be newer than state.json
        try:
            saved = jobs.read_json(best_json).get("metadata", {})
            if isinstance(saved.get("val_auroc"), (int, float)) and (best is None or saved["val_auroc"] > best):
                best, best_epoch = float(saved["val_auroc"]), saved.get("epoch")
        except ConfigError:
            pass

    mode = "max" if data.monitor == "val_auroc" else "min"
    ReduceLR, EarlyStop = _resumable_callbacks()
    callbacks: list[Any] = []
    reduce_lr = early = None
    if config.reduce_lr_patience > 0:
        reduce_lr = ReduceLR(monitor=data.monitor, mode=mode, factor=config.reduce_lr_factor,
                             patience=config.reduce_lr_patience, min_lr=config.min_learning_rate, min_delta=1e-4)
        reduce_lr.set_state(state.get("reduce_lr"))
        callbacks.append(reduce_lr)
    if config.early_stopping_patience > 0:
        early = EarlyStop(monitor=data.monitor, mode=mode, patience=config.early_stopping_patience, min_delta=1e-4)
        early.set_state({} if state.get("stopped_early") else state.get("early_stopping"))
        callbacks.append(early)
    callback_list = keras.callbacks.CallbackList(callbacks, model=train_model, epochs=config.epochs,
                                                 steps=steps_per_epoch)
    scalars = ScalarLog(run_dir / jobs.TENSORBOARD_DIR, enabled=chief)
    step_fn = make_train_step(train_model, optimizer, strategy, data.w_pos, data.w_neg, batch_spec)
    predict = make_predict(train_model, valid_ds.element_spec[0])
    columns = metrics_columns(data.labels)

    status.update(force=True, state="running", phase="training", epoch=epochs_done + 1, epochs_done=epochs_done,
                  epochs=config.epochs, step=0, steps=steps_per_epoch, best_val_auroc=best if mode == "max" else None,
                  best_epoch=best_epoch, monitor=data.monitor, device=_device_label(gpus, replicas, multi),
                  strategy=strategy_text, message=None, error=None)
    train_model.stop_training = False
    callback_list.on_train_begin()
    step_times: deque[float] = deque(maxlen=50)
    delay = float(os.environ.get(STEP_DELAY_ENV) or 0)
    epoch_seconds: list[float] = []
    cancelled = stopped_early = False
    epoch = epochs_done
    for epoch in range(epochs_done, config.epochs):
        callback_list.on_epoch_begin(epoch)
        lr = float(np.asarray(optimizer.learning_rate))
        t_epoch = time.monotonic()
        total, steps = 0.0, 0
        status.update(force=True, phase="training" if epoch_seconds or epochs_done else
                      "training (first epoch: decoding and caching the images)", epoch=epoch + 1, step=0)
        t_step = time.monotonic()
        for batch in epoch_batches():
            loss = float(step_fn(batch))
            if delay:
                time.sleep(delay)
            now = time.monotonic()
            step_times.append(now - t_step)
            t_step = now
            total += loss
            steps += 1
            per_step = statistics.median(step_times)
            val_estimate = per_step * math.ceil(len(data.valid) / global_batch) / 3
            per_epoch = epoch_seconds[-1] if epoch_seconds else steps_per_epoch * per_step + val_estimate
            eta = max(0, steps_per_epoch - steps) * per_step + val_estimate + (config.epochs - epoch - 1) * per_epoch
            status.update(step=steps, loss=total / steps, eta_seconds=round(eta, 1), phase="training")
            if should_stop():
                cancelled = True
                break
        if cancelled:
            log(f"cancel requested during epoch {epoch + 1} (step {steps} of {steps_per_epoch}): saving what it has.")
            if chief:
                status.update(force=True, phase="saving the checkpoint")
                with _disk_full_explained(last_path, _kept_checkpoint(state)):
                    _save_atomic(train_model, last_path)
                jobs.atomic_write_json(state_path, {**state, "epochs_done": epoch, "partial_steps": steps,
                                                    "saved": time.time()})
            break
        train_loss = total / max(steps, 1)
        if not math.isfinite(train_loss):
            raise ModelError(f"training diverged: the loss became {train_loss} in epoch {epoch + 1}.",
                             fix="lower learning_rate (e.g. by 10x).")
        status.update(force=True, phase="validating", step=steps)
        val = validation_metrics(predict_logits(predict, valid_ds), data.y_valid, data.w_pos, data.w_neg, data.labels)
        current = val["val_auroc"] if mode == "max" else val["val_loss"]
        improved = best is None or (current > best if mode == "max" else current < best)
        if improved:
            if chief:
                from cxrcore.model import save_model

                status.update(force=True, phase="saving the best model")
                kept = (f"The best model so far (epoch {best_epoch}) is kept unchanged in {jobs.BEST_MODEL}."
                        if best_epoch else f"No {jobs.BEST_MODEL} was written yet.")
                with _disk_full_explained(run_dir / jobs.BEST_MODEL, kept):
                    save_model(export_model(model, config, data.labels, mixed),
                               _model_info(config, data, run_dir, epoch + 1, val), run_dir / jobs.BEST_MODEL)
            best, best_epoch = current, epoch + 1
        logs = {"loss": train_loss, "val_loss": val["val_loss"], "val_auroc": val["val_auroc"]}
        callback_list.on_epoch_end(epoch, logs)
        seconds = time.monotonic() - t_epoch
        epoch_seconds.append(seconds)
        row = {"epoch": epoch + 1, "loss": round(train_loss, 6), "val_loss": round(val["val_loss"], 6),
               "val_auroc_mean": None if math.isnan(val["val_auroc"]) else round(val["val_auroc"], 6),
               "learning_rate": float(f"{lr:.6g}"), "seconds": round(seconds, 2),
               **{f"val_auroc_{k}": (None if math.isnan(v) else round(v, 6)) for k, v in val["per_class"].items()}}
        stopped_early = bool(train_model.stop_training) and epoch + 1 < config.epochs
        if chief:
            jobs.append_metrics_row(run_dir, row, columns)
            scalars.write(epoch + 1, {"epoch_loss": train_loss, "epoch_val_loss": val["val_loss"],
                                      "epoch_val_auroc": val["val_auroc"], "epoch_learning_rate": lr,
                                      **{f"val_auroc/{k}": v for k, v in val["per_class"].items()}})
            status.update(force=True, phase="saving the checkpoint")
            with _disk_full_explained(last_path, _kept_checkpoint(state)):
                _save_atomic(train_model, last_path)
            state = {"epochs_done": epoch + 1, "best_epoch": best_epoch, "saved": time.time(),
                     "best_val_auroc": best if mode == "max" else None,
                     "best_val_loss": best if mode == "min" else None, "stopped_early": stopped_early,
                     "learning_rate": float(np.asarray(optimizer.learning_rate)),
                     "reduce_lr": reduce_lr.get_state() if reduce_lr else None,
                     "early_stopping": early.get_state() if early else None}
            jobs.atomic_write_json(state_path, state)
        auroc_text = "n/a" if math.isnan(val["val_auroc"]) else f"{val['val_auroc']:.4f}"
        log(f"epoch {epoch + 1}/{config.epochs}: loss {train_loss:.4f}, val loss {val['val_loss']:.4f}, "
            f"val mean AUROC {auroc_text}{' (best)' if improved else ''}, lr {lr:.3g}, {seconds:.1f} s")
        status.update(force=True, phase="training", epochs_done=epoch + 1, last_val_auroc=val["val_auroc"],
                      best_val_auroc=best if mode == "max" else None, best_epoch=best_epoch,
                      eta_seconds=round((config.epochs - epoch - 1) * seconds, 1))
        if stopped_early:
            log(f"early stopping: no improvement of {data.monitor} for {config.early_stopping_patience} epoch(s).")
            break
        if should_stop():
            cancelled = True
            log(f"cancel requested: stopped after epoch {epoch + 1}.")
            break
    callback_list.on_train_end()
    done = int(state.get("epochs_done", epochs_done)) if chief else epoch + (0 if cancelled else 1)
    if chief and not cancelled and data.test is not None and (run_dir / jobs.BEST_MODEL).is_file():
        status.update(force=True, phase="predicting the test split")
        write_test_predictions(run_dir, config, data, log=log)
    if multi:  # leave together: a worker that exits while another still works stalls TF's shutdown for ~10 s
        status.update(force=True, phase="waiting for the other workers")
        _barrier(strategy)
    return TrainResult(state="cancelled" if cancelled else "finished", epochs_done=done,
                       best_val_auroc=best if mode == "max" else None, best_epoch=best_epoch,
                       stopped_early=stopped_early, seconds=time.monotonic() - t_start)


def _barrier(strategy: Any) -> None:
    """All workers meet here (a one-number all-reduce)."""
    import tensorflow as tf

    strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


def write_test_predictions(run_dir: Path, config: TrainConfig, data: TrainingData, *, log: Log = _print) -> Path:
    """Predict the test split with best.keras into predictions/test.csv (+ test.json with the training splits).

    The Results page lists runs/<run>/predictions/*.csv and checks leakage against the sidecar's train_split.
    """
    from cxrcore.model import load_model
    from cxrcore.pipeline import make_dataset
    from cxrcore.predictions import write_predictions

    loaded = load_model(run_dir / jobs.BEST_MODEL)
    frame = data.test.frame
    ds = make_dataset(frame, data.image_root, labels=loaded.info.labels, input_size=loaded.info.input_size,
                      batch_size=32, normalization=loaded.info.normalization, memory_cache=False)
    probs = np.concatenate([np.asarray(loaded.model.predict_on_batch(x), dtype=np.float64) for x, _ in ds], axis=0)
    out = run_dir / jobs.PREDICTIONS_DIR / "test.csv"
    write_predictions(out, frame["Image"].astype(str).tolist(), np.clip(probs, 0.0, 1.0), labels=loaded.info.labels)
    jobs.atomic_write_json(out.with_suffix(".json"), {
        "train_split": config.train_split, "valid_split": config.valid_split, "test_split": config.test_split,
        "model": str((run_dir / jobs.BEST_MODEL).resolve()), "run_id": run_dir.name,
        "epoch": loaded.info.metadata.get("epoch"), "val_auroc": loaded.info.metadata.get("val_auroc")})
    log(f"test predictions: {len(frame):,} images -> {out.relative_to(run_dir)}")
    return out


# --------------------------------------------------------------------------------------------
# The job around the loop
# --------------------------------------------------------------------------------------------

def run_job(run_dir: str | os.PathLike, config: TrainConfig, *, resume: bool = False, log: Log = _print) -> TrainResult:
    """Lock the folder, beat status.json, train, and always leave a final state; SIGTERM cancels cleanly.

    Under MultiWorkerMirroredStrategy only the chief locks and writes the folder; other workers train silently.
    """
    run_dir = Path(run_dir)
    multi, chief, index = jobs.tf_config_role()
    lock = jobs.RunLock.acquire(run_dir) if chief else None
    previous_handlers: dict[int, Any] = {}
    try:
        status = jobs.StatusWriter(run_dir, enabled=chief)
        flag = StopFlag()
        previous_handlers = flag.install()
        previous = status.fields.get("state")
        if previous == "queued":  # launched: the launcher recorded the state it resumed from
            previous = status.fields.get("resumed_from")
        elif previous in jobs.ACTIVE_STATES:  # we hold the lock now, so its previous holder is gone
            previous = "interrupted"
        now = time.time()
        for key in ("cancel_requested", "finished", "phase"):
            status.fields.pop(key, None)
        status.update(force=True, state="running", phase="starting", run_id=run_dir.name, pid=os.getpid(),
                      host=jobs.hostname(), started=now, created=status.fields.get("created", now),
                      resumed_from=previous if resume else None, error=None, message=None,
                      preset=config.preset, epochs=config.epochs)
        status.start_heartbeat()
        if multi:
            log(f"multi-worker training: worker {index}{' (chief: writes the run folder)' if chief else ''}.")
        try:
            result = train(config, run_dir, resume=resume, status=status, should_stop=flag, log=log)
        except CxrError as err:
            status.stop_heartbeat()
            status.update(force=True, state="failed", phase=None, error=str(err), eta_seconds=None)
            log(f"failed: {err}")
            raise
        except BaseException as err:
            status.stop_heartbeat()
            if jobs.is_disk_full(err):  # a write other than the models' (metrics, state, TensorBoard)
                disk = jobs.disk_full_error(getattr(err, "filename", None) or run_dir,
                                            "Files written before are kept; a resume continues from the last "
                                            "checkpoint.")
                status.update(force=True, state="failed", phase=None, error=str(disk), eta_seconds=None)
                log(f"failed: {disk}")
                traceback.print_exc(file=sys.stdout)
                raise disk from None
            text = _friendly_error(err)
            status.update(force=True, state="failed", phase=None, error=text, eta_seconds=None)
            log(f"failed: {text}")
            traceback.print_exc(file=sys.stdout)
            if isinstance(err, Exception) and text.startswith("out of memory"):
                raise ConfigError(text, fix="lower batch_size or input_size.") from None
            raise
        status.stop_heartbeat()
        if result.state == "cancelled":
            message = (f"cancelled ({flag.signal_name or 'stop requested'}) after {result.epochs_done} full "
                       "epoch(s); resume continues from the last checkpoint.")
        elif result.stopped_early:
            message = f"stopped early after {result.epochs_done} epochs (no improvement)."
        else:
            message = f"finished {result.epochs_done} epochs."
        status.update(force=True, state=result.state, phase=None, message=message, eta_seconds=0,
                      finished=time.time(), epochs_done=result.epochs_done)
        log(message + f" Wall time {result.seconds:.0f} s.")
        return result
    finally:
        StopFlag.restore(previous_handlers)
        if lock is not None:
            lock.release()


def _friendly_error(err: BaseException) -> str:
    name = type(err).__name__
    text = (str(err).strip().splitlines() or [name])[0][:300]
    if name == "ResourceExhaustedError" or "OOM" in text:
        return f"out of memory ({text[:160]})"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    return f"{name}: {text}"


# --------------------------------------------------------------------------------------------
# Probe: time per epoch on this hardware
# --------------------------------------------------------------------------------------------

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
    import keras
    import tensorflow as tf

    from cxrcore.pipeline import make_dataset

    t0 = time.monotonic()
    gpus = setup_devices()
    mixed = use_mixed_precision(config, gpus)
    keras.config.set_dtype_policy("mixed_float16" if mixed else "float32")
    keras.utils.set_random_seed(config.seed)
    data = prepare_data(config, log=log, fit_normalization=False)
    batch = config.batch_size
    n_probe = min(len(data.train), batch * (batches + 1))
    sample = data.train.sample(n=n_probe, random_state=config.seed) if n_probe < len(data.train) else data.train
    ds = make_dataset(sample, data.image_root, labels=data.labels, input_size=config.input_size, batch_size=batch,
                      normalization=data.normalization, augmentation=config.augmentation_object(),
                      memory_cache=False)
    t_decode = time.monotonic()
    cached = [(tf.constant(x), tf.constant(y)) for x, y in ds.as_numpy_iterator()]
    decode_per_image = (time.monotonic() - t_decode) / max(1, n_probe)
    strategy = tf.distribute.get_strategy()
    model, train_model = build_models(config, data.labels, pretrained=False)
    train_model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate))
    optimizer = train_model.optimizer
    optimizer.build(train_model.trainable_variables)
    step = make_train_step(train_model, optimizer, strategy, data.w_pos, data.w_neg)
    predict = make_predict(train_model)
    float(step(cached[0]))  # trace and warm up
    predict(cached[0][0]).numpy()
    startup = time.monotonic() - t0
    timed = cached[1:] or cached
    t_steps = time.monotonic()
    for b in timed:
        float(step(b))
    per_batch = (time.monotonic() - t_steps) / len(timed)
    t_val = time.monotonic()
    for b in timed[:2]:
        predict(b[0]).numpy()
    per_valid = (time.monotonic() - t_val) / len(timed[:2])
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cxr-probe-") as tmp:  # checkpoint + best model, each epoch
        t_save = time.monotonic()
        train_model.save(Path(tmp) / "probe.keras")
        save_seconds = 2 * (time.monotonic() - t_save)
    n_batches = max(1, math.ceil(len(data.train) / batch))
    n_valid = max(1, math.ceil(len(data.valid) / batch))
    per_epoch = n_batches * per_batch + n_valid * per_valid + save_seconds
    first = per_epoch + (len(data.train) + len(data.valid)) * decode_per_image
    device = f"{len(gpus)} GPU(s)" if gpus else f"the CPU ({detect_hardware().cpus} cores)"
    return ProbeResult(device=device, batch_size=batch, probe_batches=len(timed), seconds_per_batch=per_batch,
                       decode_seconds_per_image=decode_per_image, valid_seconds_per_batch=per_valid,
                       train_images=len(data.train), valid_images=len(data.valid), batches_per_epoch=n_batches,
                       valid_batches=n_valid, seconds_per_epoch=per_epoch, first_epoch_seconds=first,
                       startup_seconds=startup, save_seconds=save_seconds, epochs=config.epochs,
                       total_seconds=startup + first + per_epoch * max(0, config.epochs - 1))


__all__ = ["ProbeResult", "StopFlag", "TrainResult", "TrainingData", "apply_freeze", "build_models",
           "export_model", "file_sha256", "load_spec", "make_datasets", "make_predict", "make_train_step",
           "metrics_columns", "prepare_data", "probe", "run_job", "select_strategy", "split_fingerprint", "train",
           "use_mixed_precision", "validation_metrics", "write_test_predictions"]
