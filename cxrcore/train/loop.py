"""The training loop, the same on every Keras backend: `train(config, run_dir)`.

It reads top to bottom as a run goes: start the backend (devices.start), prepare the data, feed
batches (inputs), build the model with its frozen layers (freeze), restore the checkpoint on resume,
then one epoch after another: the backend's compiled steps (steps), validation (loss, per-class and mean
AUROC), best.keras when the monitored value improved, a metrics.csv row, TensorBoard scalars,
Keras' ReduceLROnPlateau and EarlyStopping (their counters checkpointed, callbacks), then
checkpoints/last.keras + state.json, so `--resume` continues at the next epoch. Cancel (the stop flag,
checked after every step) saves what the epoch has. At the end: predictions of the test split.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cxrcore.errors import ConfigError, ModelError
from cxrcore.train import jobs
from cxrcore.train.callbacks import resumable_callbacks
from cxrcore.train.data import TrainingData, prepare_data
from cxrcore.train.devices import Runtime, device_label, start
from cxrcore.train.export import (disk_full_explained, export_model, kept_checkpoint, model_info, save_atomic,
                                  write_test_predictions)
from cxrcore.train.freeze import build_models
from cxrcore.train.inputs import Feed, make_feed
from cxrcore.train.rundir import Log, ScalarLog, check_fingerprints, metrics_columns, print_log, write_run_json
from cxrcore.train.steps import Steps, make_steps, predict_logits
from cxrcore.train.trainconfig import PRESET_NOTES, TrainConfig, preset_changes
from cxrcore.train.validation import validation_metrics

#: Seconds to sleep after every training step: lets tests (and demos of cancel/resume) catch a run mid-epoch.
STEP_DELAY_ENV = "CXR_TRAIN_STEP_DELAY_S"


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
          log: Log = print_log, strategy: Any = None) -> TrainResult:
    """Train `config` into run_dir (resuming from checkpoints/last.keras when resume=True)."""
    t_start = time.monotonic()
    run_dir = Path(run_dir)
    _multi, chief, _index = jobs.tf_config_role()
    status = status or jobs.StatusWriter(run_dir, enabled=chief)
    status.update(phase="starting the Keras backend", force=True)
    runtime = start(config, strategy=strategy, log=log)
    global_batch = config.batch_size * runtime.replicas
    _log_setup(config, runtime, global_batch, log)

    status.update(phase="loading data", force=True, backend=runtime.name)
    data = prepare_data(config, log=log)
    if resume:
        check_fingerprints(run_dir, data, log)
    if chief:
        write_run_json(run_dir, config, data, {
            "hardware": {"gpus": runtime.gpus, "cpus": os.cpu_count()}, **runtime.record(),
            "per_replica_batch_size": config.batch_size, "global_batch_size": global_batch}, resume)
    feed = make_feed(runtime, config, data, global_batch, log=log)
    log(f"data: {len(data.train):,} training images ({feed.steps} steps of {global_batch}), "
        f"{len(data.valid):,} validation images, {len(data.labels)} labels.")

    status.update(phase="building the model", force=True)
    model, train_model, optimizer = _build(config, data, runtime, log)
    checkpoint = Checkpoint(run_dir, chief)
    state = checkpoint.restore(train_model, optimizer, resume=resume, log=log)
    epochs_done = int(state.get("epochs_done", 0))
    if epochs_done >= config.epochs:
        raise ConfigError(f"all {config.epochs} epochs of this run are done already.", file=str(run_dir),
                          fix="resume with more epochs (--set epochs=N) or start a new run.")
    if chief:
        kept = jobs.truncate_metrics(run_dir, epochs_done)
        if resume:
            log(f"metrics.csv: {kept} epoch row(s) kept; continuing at epoch {epochs_done + 1}.")
    monitor = Monitor(config, data, state, run_dir, train_model, feed.steps, resume=resume)
    steps = make_steps(runtime.name, train_model, optimizer, data.w_pos, data.w_neg, strategy=runtime.strategy,
                       batch_spec=feed.batch_spec, x_spec=feed.x_spec)
    scalars = ScalarLog(run_dir / jobs.TENSORBOARD_DIR, enabled=chief)

    status.update(force=True, state="running", phase="training", epoch=epochs_done + 1, epochs_done=epochs_done,
                  epochs=config.epochs, step=0, steps=feed.steps, best_val_auroc=monitor.best_auroc,
                  best_epoch=monitor.best_epoch, monitor=data.monitor, backend=runtime.name,
                  device=device_label(runtime.gpus, runtime.replicas, runtime.multi),
                  strategy=runtime.strategy_text, precision=runtime.precision, message=None, error=None)
    clock = EpochClock(config, len(data.valid), global_batch, feed.steps)
    cancelled = stopped_early = False
    epoch = epochs_done
    for epoch in range(epochs_done, config.epochs):
        monitor.begin_epoch(epoch)
        lr = _learning_rate(optimizer)
        t_epoch = time.monotonic()
        status.update(force=True, phase="training" if clock.seconds or epochs_done else
                      "training (first epoch: decoding and caching the images)", epoch=epoch + 1, step=0)
        train_loss, n_steps, cancelled = _train_epoch(steps, feed, epoch, clock, status, should_stop)
        steps.commit()
        if cancelled:
            log(f"cancel requested during epoch {epoch + 1} (step {n_steps} of {feed.steps}): saving what it has.")
            checkpoint.save_partial(train_model, epoch, n_steps, status)
            break
        if not math.isfinite(train_loss):
            raise ModelError(f"training diverged: the loss became {train_loss} in epoch {epoch + 1}.",
                             fix="lower learning_rate (e.g. by 10x).")
        status.update(force=True, phase="validating", step=n_steps)
        val = validation_metrics(predict_logits(steps, feed.valid), data.y_valid, data.w_pos, data.w_neg, data.labels)
        improved = monitor.improved(val)
        if improved and chief:
            status.update(force=True, phase="saving the best model")
            _save_best(model, config, data, runtime, run_dir, epoch, val, monitor.best_epoch)
        monitor.end_epoch(epoch, train_loss, val)
        steps.reload()  # ReduceLROnPlateau may have changed the learning rate variable
        seconds = time.monotonic() - t_epoch
        clock.seconds.append(seconds)
        stopped_early = monitor.stop_requested and epoch + 1 < config.epochs
        if chief:
            row = _metrics_row(epoch, train_loss, val, lr, seconds)
            jobs.append_metrics_row(run_dir, row, metrics_columns(data.labels))
            scalars.write(epoch + 1, {"epoch_loss": train_loss, "epoch_val_loss": val["val_loss"],
                                      "epoch_val_auroc": val["val_auroc"], "epoch_learning_rate": lr,
                                      **{f"val_auroc/{k}": v for k, v in val["per_class"].items()}})
            status.update(force=True, phase="saving the checkpoint")
            checkpoint.save_epoch(train_model, optimizer, epoch, monitor, stopped_early)
        auroc_text = "n/a" if math.isnan(val["val_auroc"]) else f"{val['val_auroc']:.4f}"
        log(f"epoch {epoch + 1}/{config.epochs}: loss {train_loss:.4f}, val loss {val['val_loss']:.4f}, "
            f"val mean AUROC {auroc_text}{' (best)' if improved else ''}, lr {lr:.3g}, {seconds:.1f} s")
        status.update(force=True, phase="training", epochs_done=epoch + 1, last_val_auroc=val["val_auroc"],
                      best_val_auroc=monitor.best_auroc, best_epoch=monitor.best_epoch,
                      eta_seconds=round((config.epochs - epoch - 1) * seconds, 1))
        if stopped_early:
            log(f"early stopping: no improvement of {data.monitor} for {config.early_stopping_patience} epoch(s).")
            break
        if should_stop():
            cancelled = True
            log(f"cancel requested: stopped after epoch {epoch + 1}.")
            break
    monitor.finish()
    done = checkpoint.epochs_done if chief else epoch + (0 if cancelled else 1)
    if chief and not cancelled and data.test is not None and (run_dir / jobs.BEST_MODEL).is_file():
        status.update(force=True, phase="predicting the test split")
        write_test_predictions(run_dir, config, data, backend=runtime.name, log=log)
    if runtime.multi:  # leave together: a worker that exits while another still works stalls TF's shutdown
        status.update(force=True, phase="waiting for the other workers")
        _barrier(runtime.strategy)
    return TrainResult(state="cancelled" if cancelled else "finished", epochs_done=done,
                       best_val_auroc=monitor.best_auroc, best_epoch=monitor.best_epoch,
                       stopped_early=stopped_early, seconds=time.monotonic() - t_start)


# --------------------------------------------------------------------------------------------
# The parts train() composes


def _log_setup(config: TrainConfig, runtime: Runtime, global_batch: int, log: Log) -> None:
    if runtime.gpus:
        log(f"{len(runtime.gpus)} GPU(s) visible to {runtime.name}: {', '.join(runtime.gpus)}.")
    else:
        log(f"No GPU visible: training on the CPU ({os.cpu_count()} cores). "
            + ("Expect hours per epoch with this preset; the CPU presets are cpu-classroom and demo."
               if config.preset == "gpu-full" else ""))
    log(f"strategy: {runtime.strategy_text}; batch {config.batch_size} per replica x {runtime.replicas} = "
        f"{global_batch}; precision {runtime.precision}.")
    if config.preset in PRESET_NOTES:
        changed = preset_changes(config)
        log(f"preset {config.preset}: {PRESET_NOTES[config.preset]}"
            + (f" Changed here: {', '.join(f'{k}={v}' for k, v in changed.items())}." if changed else ""))


def _build(config: TrainConfig, data: TrainingData, runtime: Runtime, log: Log) -> tuple[Any, Any, Any]:
    """(model with sigmoid outputs, logits model sharing its weights, its built Adam optimizer)."""
    import keras

    with runtime.scope():
        model, train_model = build_models(config, data.labels)
        train_model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate))
        optimizer = train_model.optimizer  # a LossScaleOptimizer under mixed_float16
        optimizer.build(train_model.trainable_variables)
    n_trainable = sum(int(np.prod(v.shape)) for v in train_model.trainable_variables)
    n_total = sum(int(np.prod(v.shape)) for v in train_model.weights)
    log(f"model: {config.backbone} at {config.input_size} px, freeze {config.freeze}: "
        f"{n_trainable:,} of {n_total:,} weights trainable.")
    return model, train_model, optimizer


def _learning_rate(optimizer: Any) -> float:
    from keras import ops

    return float(ops.convert_to_numpy(optimizer.learning_rate))


class EpochClock:
    """Step times and epoch durations, turned into the ETA the Training page shows."""

    def __init__(self, config: TrainConfig, n_valid: int, global_batch: int, steps_per_epoch: int) -> None:
        self.config, self.steps_per_epoch = config, steps_per_epoch
        self.valid_batches = math.ceil(n_valid / global_batch)
        self.step_times: deque[float] = deque(maxlen=50)
        self.seconds: list[float] = []

    def eta(self, epoch: int, steps: int) -> float:
        per_step = statistics.median(self.step_times)
        val_estimate = per_step * self.valid_batches / 3
        per_epoch = self.seconds[-1] if self.seconds else self.steps_per_epoch * per_step + val_estimate
        return (max(0, self.steps_per_epoch - steps) * per_step + val_estimate
                + (self.config.epochs - epoch - 1) * per_epoch)


def _train_epoch(steps: Steps, feed: Feed, epoch: int, clock: EpochClock, status: jobs.StatusWriter,
                 should_stop: Callable[[], bool]) -> tuple[float, int, bool]:
    """(mean training loss, steps taken, cancelled) of one pass over the training batches.

    A step's loss is read after the next step was dispatched, so an accelerator is never left waiting
    for the host to fetch a number.
    """
    delay = float(os.environ.get(STEP_DELAY_ENV) or 0)
    total, counted, taken = 0.0, 0, 0
    pending = None
    t_step = time.monotonic()
    for batch in feed.epoch(epoch):
        loss = steps.train(batch)
        if pending is not None:
            total, counted = total + float(pending), counted + 1
        pending, taken = loss, taken + 1
        if delay:
            time.sleep(delay)
        now = time.monotonic()
        clock.step_times.append(now - t_step)
        t_step = now
        status.update(step=taken, eta_seconds=round(clock.eta(epoch, taken), 1), phase="training",
                      **({"loss": total / counted} if counted else {}))
        if should_stop():
            return total / max(counted, 1), taken, True
    if pending is not None:
        total, counted = total + float(pending), counted + 1
    return total / max(counted, 1), taken, False


def _save_best(model: Any, config: TrainConfig, data: TrainingData, runtime: Runtime, run_dir: Path, epoch: int,
               val: dict[str, Any], previous_best_epoch: int | None) -> None:
    from cxrcore.train.model import save_model

    kept = (f"The best model so far (epoch {previous_best_epoch}) is kept unchanged in {jobs.BEST_MODEL}."
            if previous_best_epoch else f"No {jobs.BEST_MODEL} was written yet.")
    with disk_full_explained(run_dir / jobs.BEST_MODEL, kept):
        save_model(export_model(model, config, data.labels, runtime.mixed),
                   model_info(config, data, run_dir, epoch + 1, val, backend=runtime.name),
                   run_dir / jobs.BEST_MODEL)


def _metrics_row(epoch: int, train_loss: float, val: dict[str, Any], lr: float, seconds: float) -> dict[str, Any]:
    return {"epoch": epoch + 1, "loss": round(train_loss, 6), "val_loss": round(val["val_loss"], 6),
            "val_auroc_mean": None if math.isnan(val["val_auroc"]) else round(val["val_auroc"], 6),
            "learning_rate": float(f"{lr:.6g}"), "seconds": round(seconds, 2),
            **{f"val_auroc_{k}": (None if math.isnan(v) else round(v, 6)) for k, v in val["per_class"].items()}}


class Monitor:
    """The monitored value (validation AUROC, else loss): the best so far, and the callbacks that watch it."""

    def __init__(self, config: TrainConfig, data: TrainingData, state: dict[str, Any], run_dir: Path,
                 train_model: Any, steps_per_epoch: int, *, resume: bool) -> None:
        import keras

        self.mode = "max" if data.monitor == "val_auroc" else "min"
        self.train_model = train_model
        self.best = state.get("best_val_auroc") if self.mode == "max" else state.get("best_val_loss")
        self.best_epoch = state.get("best_epoch")
        best_json = run_dir / "best.json"
        if resume and self.mode == "max" and best_json.is_file():  # best.keras may be newer than state.json
            try:
                saved = jobs.read_json(best_json).get("metadata", {})
                if isinstance(saved.get("val_auroc"), (int, float)) and (self.best is None
                                                                         or saved["val_auroc"] > self.best):
                    self.best, self.best_epoch = float(saved["val_auroc"]), saved.get("epoch")
            except ConfigError:
                pass
        ReduceLR, EarlyStop = resumable_callbacks()
        callbacks: list[Any] = []
        self.reduce_lr = self.early = None
        if config.reduce_lr_patience > 0:
            self.reduce_lr = ReduceLR(monitor=data.monitor, mode=self.mode, factor=config.reduce_lr_factor,
                                      patience=config.reduce_lr_patience, min_lr=config.min_learning_rate,
                                      min_delta=1e-4)
            self.reduce_lr.set_state(state.get("reduce_lr"))
            callbacks.append(self.reduce_lr)
        if config.early_stopping_patience > 0:
            self.early = EarlyStop(monitor=data.monitor, mode=self.mode, patience=config.early_stopping_patience,
                                   min_delta=1e-4)
            self.early.set_state({} if state.get("stopped_early") else state.get("early_stopping"))
            callbacks.append(self.early)
        self.callbacks = keras.callbacks.CallbackList(callbacks, model=train_model, epochs=config.epochs,
                                                      steps=steps_per_epoch)
        train_model.stop_training = False
        self.callbacks.on_train_begin()

    @property
    def best_auroc(self) -> float | None:
        return self.best if self.mode == "max" else None

    def begin_epoch(self, epoch: int) -> None:
        self.callbacks.on_epoch_begin(epoch)

    def improved(self, val: dict[str, Any]) -> bool:
        """Whether this epoch's value beats the best (the caller saves best.keras before `end_epoch`)."""
        current = val["val_auroc"] if self.mode == "max" else val["val_loss"]
        return self.best is None or (current > self.best if self.mode == "max" else current < self.best)

    def end_epoch(self, epoch: int, train_loss: float, val: dict[str, Any]) -> None:
        if self.improved(val):
            self.best, self.best_epoch = (val["val_auroc"] if self.mode == "max" else val["val_loss"]), epoch + 1
        self.callbacks.on_epoch_end(epoch, {"loss": train_loss, "val_loss": val["val_loss"],
                                            "val_auroc": val["val_auroc"]})

    @property
    def stop_requested(self) -> bool:
        return bool(self.train_model.stop_training)

    def state(self) -> dict[str, Any]:
        """What state.json keeps of it."""
        return {"best_epoch": self.best_epoch, "best_val_auroc": self.best if self.mode == "max" else None,
                "best_val_loss": self.best if self.mode == "min" else None,
                "reduce_lr": self.reduce_lr.get_state() if self.reduce_lr else None,
                "early_stopping": self.early.get_state() if self.early else None}

    def finish(self) -> None:
        self.callbacks.on_train_end()


class Checkpoint:
    """checkpoints/last.keras (model + optimizer) and state.json (epochs done, monitor and callback state)."""

    def __init__(self, run_dir: Path, chief: bool) -> None:
        self.folder = run_dir / jobs.CHECKPOINT_DIR
        self.last, self.state_path = self.folder / jobs.LAST_CHECKPOINT, self.folder / jobs.STATE_FILE
        self.chief = chief
        self.state: dict[str, Any] = {}
        if chief:
            self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def epochs_done(self) -> int:
        return int(self.state.get("epochs_done", 0))

    def restore(self, train_model: Any, optimizer: Any, *, resume: bool, log: Log) -> dict[str, Any]:
        """Load last.keras into the model and optimizer when resuming; the saved state (empty when none)."""
        if resume and self.last.is_file() and self.state_path.is_file():
            self.state = jobs.read_json(self.state_path)
            try:
                train_model.load_weights(self.last)
            except Exception as err:  # noqa: BLE001 - keras raises many types for a mismatched file
                raise ModelError(f"the checkpoint does not fit this run's model ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0][:160]}).", file=str(self.last),
                                 fix="resume with the run's own config.json unchanged, or start a new run.") from None
            log(f"resumed from {self.last.name}: {self.epochs_done} epoch(s) done, "
                f"learning rate {_learning_rate(optimizer):.3g}.")
        elif resume:
            log("no checkpoint yet (stopped during the first epoch): starting from the beginning.")
        return self.state

    def save_epoch(self, train_model: Any, optimizer: Any, epoch: int, monitor: Monitor, stopped_early: bool) -> None:
        with disk_full_explained(self.last, kept_checkpoint(self.state)):
            save_atomic(train_model, self.last)
        self.state = {"epochs_done": epoch + 1, "saved": time.time(), **monitor.state(),
                      "stopped_early": stopped_early, "learning_rate": _learning_rate(optimizer)}
        jobs.atomic_write_json(self.state_path, self.state)

    def save_partial(self, train_model: Any, epoch: int, steps: int, status: jobs.StatusWriter) -> None:
        """After a cancel mid-epoch: the weights so far; a resume repeats this epoch."""
        if not self.chief:
            return
        status.update(force=True, phase="saving the checkpoint")
        with disk_full_explained(self.last, kept_checkpoint(self.state)):
            save_atomic(train_model, self.last)
        self.state = {**self.state, "epochs_done": epoch, "partial_steps": steps, "saved": time.time()}
        jobs.atomic_write_json(self.state_path, self.state)


def _barrier(strategy: Any) -> None:
    """All TensorFlow workers meet here (a one-number all-reduce)."""
    import tensorflow as tf

    strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


__all__ = ["STEP_DELAY_ENV", "TrainResult", "train"]
