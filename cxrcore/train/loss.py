"""The course's class-weighted binary cross-entropy, vectorized, plus a stable from-logits twin.

For each class i:  L_i = -mean_batch( w_pos[i] * y * log(p + eps) + w_neg[i] * (1 - y) * log(1 - p + eps) ),
and the loss is the sum of L_i over classes. With w_pos = frequency of negatives and w_neg =
frequency of positives, positives and negatives contribute equally to each class's loss.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cxrcore.errors import ConfigError, DatasetError

#: The course's default epsilon inside the logs.
EPSILON = 1e-7


def class_weights(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(w_pos, w_neg) per class from a 0/1 label matrix (n, classes): w_pos = freq_neg, w_neg = freq_pos."""
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] == 0:
        raise DatasetError(f"class weights need a non-empty (images, classes) label matrix, got shape {y.shape}.")
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise DatasetError("class weights need labels that are only 0 or 1.")
    freq_pos = y.mean(axis=0)
    return (1.0 - freq_pos).astype(np.float32), freq_pos.astype(np.float32)


def _weights(w_pos: Any, w_neg: Any, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    wp = np.asarray(w_pos, dtype=dtype).ravel()
    wn = np.asarray(w_neg, dtype=dtype).ravel()
    if wp.shape != wn.shape or wp.size == 0:
        raise ConfigError(f"w_pos and w_neg must be vectors of the same length, got {wp.shape} and {wn.shape}.")
    if not (np.isfinite(wp).all() and np.isfinite(wn).all()) or (wp < 0).any() or (wn < 0).any():
        raise ConfigError("class weights must be finite and non-negative.")
    return wp, wn


def _tensors(w_pos: Any, w_neg: Any) -> tuple[Any, Any]:
    """The weights as backend tensors: numpy times a torch tensor fails (numpy's __mul__ goes first)."""
    from keras import ops

    wp, wn = _weights(w_pos, w_neg)
    return ops.convert_to_tensor(wp, "float32"), ops.convert_to_tensor(wn, "float32")


def weighted_loss_numpy(y_true: np.ndarray, y_pred: np.ndarray, w_pos: Any, w_neg: Any,
                        epsilon: float = EPSILON) -> float:
    """Reference implementation in float64 numpy, class by class exactly as the course writes it."""
    wp, wn = _weights(w_pos, w_neg, np.float64)
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    loss = 0.0
    for i in range(len(wp)):
        loss += -np.mean(wp[i] * y[:, i] * np.log(p[:, i] + epsilon)
                         + wn[i] * (1 - y[:, i]) * np.log(1 - p[:, i] + epsilon))
    return float(loss)


def per_sample_loss(y_true: Any, y_pred: Any, w_pos: Any, w_neg: Any, epsilon: float = EPSILON) -> Any:
    """Per-image loss (batch,): the class sum; its batch mean is the course loss (keras.ops, any backend)."""
    from keras import ops

    wp, wn = _tensors(w_pos, w_neg)
    y = ops.cast(y_true, "float32")
    p = ops.cast(y_pred, "float32")
    terms = wp * y * ops.log(p + epsilon) + wn * (1.0 - y) * ops.log(1.0 - p + epsilon)
    return -ops.sum(terms, axis=-1)


def per_sample_loss_from_logits(y_true: Any, logits: Any, w_pos: Any, w_neg: Any) -> Any:
    """Same loss with eps = 0 from logits: log p = log_sigmoid(z), log(1 - p) = log_sigmoid(-z); never NaN/inf."""
    from keras import ops

    wp, wn = _tensors(w_pos, w_neg)
    y = ops.cast(y_true, "float32")
    z = ops.cast(logits, "float32")
    terms = wp * y * ops.log_sigmoid(z) + wn * (1.0 - y) * ops.log_sigmoid(-z)
    return -ops.sum(terms, axis=-1)


def weighted_loss(y_true: Any, y_pred: Any, w_pos: Any, w_neg: Any, epsilon: float = EPSILON) -> Any:
    """The course loss on probabilities: sum over classes of the batch mean (a scalar tensor)."""
    from keras import ops

    return ops.mean(per_sample_loss(y_true, y_pred, w_pos, w_neg, epsilon))


def weighted_loss_from_logits(y_true: Any, logits: Any, w_pos: Any, w_neg: Any) -> Any:
    """The course loss (eps = 0) computed stably from logits (a scalar tensor)."""
    from keras import ops

    return ops.mean(per_sample_loss_from_logits(y_true, logits, w_pos, w_neg))


_LOSS_CLASS: Any = None


def _loss_class() -> Any:
    """Define (once, lazily: it needs Keras) the serializable Keras Loss class."""
    global _LOSS_CLASS
    if _LOSS_CLASS is not None:
        return _LOSS_CLASS
    import keras

    @keras.saving.register_keras_serializable(package="cxrcore")
    class WeightedBinaryCrossentropy(keras.losses.Loss):
        """Class-weighted binary cross-entropy of the course; per-image class sums, batch-averaged."""

        def __init__(self, w_pos, w_neg, from_logits=False, epsilon=EPSILON, name="weighted_bce", **kwargs):
            super().__init__(name=name, **kwargs)
            self.w_pos, self.w_neg = _weights(w_pos, w_neg)
            self.from_logits = bool(from_logits)
            self.epsilon = float(epsilon)

        def call(self, y_true, y_pred):
            if self.from_logits:
                return per_sample_loss_from_logits(y_true, y_pred, self.w_pos, self.w_neg)
            return per_sample_loss(y_true, y_pred, self.w_pos, self.w_neg, self.epsilon)

        def get_config(self):
            config = super().get_config()
            config.update(w_pos=self.w_pos.tolist(), w_neg=self.w_neg.tolist(), from_logits=self.from_logits,
                          epsilon=self.epsilon)
            return config

    _LOSS_CLASS = WeightedBinaryCrossentropy
    return _LOSS_CLASS


def make_weighted_loss(w_pos: Any, w_neg: Any, *, from_logits: bool = False, epsilon: float = EPSILON) -> Any:
    """A Keras Loss for model.compile whose batch value is exactly the course loss.

    Use from_logits=True with `cxrcore.train.model.logits_model(model)` for numerically stable training.
    """
    return _loss_class()(w_pos, w_neg, from_logits=from_logits, epsilon=epsilon)


def __getattr__(name: str) -> Any:
    if name == "WeightedBinaryCrossentropy":
        return _loss_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EPSILON", "class_weights", "make_weighted_loss", "per_sample_loss", "per_sample_loss_from_logits",
           "weighted_loss", "weighted_loss_from_logits", "weighted_loss_numpy"]
