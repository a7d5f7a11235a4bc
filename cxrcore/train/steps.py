"""One training step and one prediction per batch, compiled the way each Keras backend runs fastest.

Every backend gets the same `Steps`: `train(batch) -> loss` (the class-weighted loss from logits,
scaled for float16 mixed precision) and `predict(x) -> logits` (numpy float32), plus `commit()` and
`reload()` around anything that reads or changes the Keras variables (checkpoints, the learning-rate
callback). TensorFlow: a tf.function over the tf.distribute strategy. JAX: Keras' documented stateless
loop (`stateless_call` + `optimizer.stateless_apply`) under one jax.jit with the state's buffers
donated; batches are sharded over the devices of a keras.distribution.DataParallel. PyTorch: autograd,
as in Keras' own custom-loop guide.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass
class Steps:
    """A backend's step functions; `commit`/`reload` move the step's own state to/from the Keras variables."""

    train: Callable[[Any], Any]
    predict: Callable[[Any], np.ndarray]
    commit: Callable[[], None] = lambda: None
    reload: Callable[[], None] = lambda: None


def make_steps(backend: str, train_model: Any, optimizer: Any, w_pos: np.ndarray, w_neg: np.ndarray, *,
               strategy: Any = None, batch_spec: Any = None, x_spec: Any = None) -> Steps:
    """The Steps for `backend` ("tensorflow", "jax" or "torch")."""
    if backend == "jax":
        return _jax_steps(train_model, optimizer, w_pos, w_neg)
    if backend == "torch":
        return _torch_steps(train_model, optimizer, w_pos, w_neg)
    step = make_train_step(train_model, optimizer, strategy, w_pos, w_neg, batch_spec)
    predict = make_predict(train_model, x_spec)
    return Steps(train=step, predict=lambda x: predict(x).numpy())


def _mean_loss(y: Any, logits: Any, w_pos: np.ndarray, w_neg: np.ndarray) -> Any:
    from keras import ops

    from cxrcore.train.loss import per_sample_loss_from_logits

    return ops.mean(per_sample_loss_from_logits(y, logits, w_pos, w_neg))


# --------------------------------------------------------------------------------------------
# TensorFlow

def make_train_step(train_model: Any, optimizer: Any, strategy: Any, w_pos: np.ndarray, w_neg: np.ndarray,
                    batch_spec: Any = None):
    """A compiled distributed step: per-replica weighted loss from logits, scaled for mixed precision.

    batch_spec (the distributed dataset's element_spec) avoids a second trace for the last, smaller batch.
    """
    import tensorflow as tf

    from cxrcore.train.loss import per_sample_loss_from_logits

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


# --------------------------------------------------------------------------------------------
# JAX

def _jax_steps(train_model: Any, optimizer: Any, w_pos: np.ndarray, w_neg: np.ndarray) -> Steps:
    """Keras' stateless JAX loop: one jitted step over (trainable, non-trainable, optimizer) state, donated."""
    import jax
    import keras

    wp, wn = np.asarray(w_pos, np.float32), np.asarray(w_neg, np.float32)
    distribution = keras.distribution.distribution()
    state: dict[str, Any] = {}

    def reload() -> None:
        state["s"] = ([v.value for v in train_model.trainable_variables],
                      [v.value for v in train_model.non_trainable_variables],
                      [v.value for v in optimizer.variables])

    def commit() -> None:
        tv, ntv, ov = state["s"]
        for ref, value in zip(train_model.trainable_variables, tv):
            ref.assign(value)
        for ref, value in zip(train_model.non_trainable_variables, ntv):
            ref.assign(value)
        for ref, value in zip(optimizer.variables, ov):
            ref.assign(value)

    def loss_fn(tv, ntv, ov, x, y):
        logits, ntv = train_model.stateless_call(tv, ntv, x, training=True)
        loss = _mean_loss(y, logits, wp, wn)
        with keras.StatelessScope(state_mapping=list(zip(optimizer.variables, ov))):
            scaled = optimizer.scale_loss(loss)  # float16: times the dynamic loss scale; else the loss itself
        return scaled, (loss, ntv)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(s, x, y):
        tv, ntv, ov = s
        (_, (loss, ntv)), grads = grad_fn(tv, ntv, ov, x, y)
        tv, ov = optimizer.stateless_apply(ov, grads, tv)
        return loss, (tv, ntv, ov)

    jit_train = jax.jit(train_step, donate_argnums=(0,))

    def predict_step(tv, ntv, x):
        logits, _ = train_model.stateless_call(tv, ntv, x, training=False)
        return keras.ops.cast(logits, "float32")

    jit_predict = jax.jit(predict_step)

    def put(array: np.ndarray) -> Any:
        if distribution is None:
            return array
        layout = distribution.get_data_layout(array.shape).backend_layout
        return jax.make_array_from_process_local_data(layout, array)

    def train(batch: Any) -> Any:
        x, y = batch
        loss, state["s"] = jit_train(state["s"], put(np.asarray(x)), put(np.asarray(y, np.float32)))
        return loss

    def predict(x: Any) -> np.ndarray:
        x = np.asarray(x)
        n = len(x)
        size = state.setdefault("predict_batch", n)  # a smaller last batch is padded: no second compilation
        if n < size:
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
        tv, ntv, _ = state["s"]
        return np.asarray(jit_predict(tv, ntv, put(x)), np.float32)[:n]

    reload()
    return Steps(train=train, predict=predict, commit=commit, reload=reload)


# --------------------------------------------------------------------------------------------
# PyTorch

def _torch_steps(train_model: Any, optimizer: Any, w_pos: np.ndarray, w_neg: np.ndarray) -> Steps:
    """Autograd on Keras' torch variables, the optimizer applied under no_grad (Keras' custom-loop guide)."""
    import torch
    from keras import ops

    wp, wn = np.asarray(w_pos, np.float32), np.asarray(w_neg, np.float32)
    variables = train_model.trainable_variables

    def train(batch: Any) -> Any:
        x, y = batch
        logits = train_model(ops.convert_to_tensor(x), training=True)
        loss = _mean_loss(ops.convert_to_tensor(y, "float32"), logits, wp, wn)
        train_model.zero_grad()
        optimizer.scale_loss(loss).backward()
        grads = [v.value.grad for v in variables]
        with torch.no_grad():
            optimizer.apply(grads, variables)
        return loss.detach()

    def predict(x: Any) -> np.ndarray:
        with torch.no_grad():
            logits = train_model(ops.convert_to_tensor(x), training=False)
        return np.asarray(ops.convert_to_numpy(ops.cast(logits, "float32")), np.float32)

    return Steps(train=train, predict=predict)


def predict_logits(steps: Steps, batches: Any) -> np.ndarray:
    """Run `steps.predict` over (x, y) batches; (n, classes) float32."""
    out = [steps.predict(x) for x, _ in batches]
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)


__all__ = ["Steps", "make_predict", "make_steps", "make_train_step", "predict_logits"]
