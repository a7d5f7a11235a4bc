"""cxrcore.train.loss: the course's weighted loss, its from-logits twin and the class weights."""
from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from cxrcore.errors import ConfigError, DatasetError
from cxrcore.train import loss

# The course's test case
Y = np.array([[1, 1, 1], [1, 1, 0], [0, 1, 0], [1, 0, 1]], dtype=np.float32)
W_P = np.array([0.25, 0.25, 0.5])
W_N = np.array([0.75, 0.75, 0.5])


def _course_value() -> float:
    """By hand, epsilon = 1, every prediction 0.7 (or 0.3):
    classes 0 and 1 have 3 positives, 1 negative: -(3 * .25 * ln 1.7 + .75 * ln 1.3) / 4 each;
    class 2 has 2 and 2: -(2 * .5 * ln 1.7 + 2 * .5 * ln 1.3) / 4. Total -(2.5 / 4) * ln(1.7 * 1.3)."""
    return -0.625 * math.log(1.7 * 1.3)


def test_course_case_is_symmetric_and_equals_the_hand_value():
    want = _course_value()
    assert want == pytest.approx(-0.4956203, abs=1e-7)
    for p in (0.7, 0.3):
        pred = np.full(Y.shape, p)  # float64, so the numpy value is exact
        assert loss.weighted_loss_numpy(Y, pred, W_P, W_N, epsilon=1) == pytest.approx(want, abs=1e-12)
        assert float(loss.weighted_loss(Y, pred, W_P, W_N, epsilon=1)) == pytest.approx(want, abs=1e-6)
        keras_loss = loss.make_weighted_loss(W_P, W_N, epsilon=1)
        assert float(keras_loss(Y, pred)) == pytest.approx(want, abs=1e-6)


def test_vectorized_loss_equals_the_class_by_class_formula():
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=(32, 14)) < 0.2).astype(np.float32)
    p = rng.uniform(0.01, 0.99, size=(32, 14)).astype(np.float32)
    wp, wn = loss.class_weights(y)
    ref = loss.weighted_loss_numpy(y, p, wp, wn)
    assert float(loss.weighted_loss(y, p, wp, wn)) == pytest.approx(ref, rel=1e-5)
    per_image = np.asarray(loss.per_sample_loss(y, p, wp, wn))
    assert per_image.shape == (32,) and per_image.mean() == pytest.approx(ref, rel=1e-5)


def test_logits_version_matches_probabilities_and_stays_finite():
    rng = np.random.default_rng(1)
    y = (rng.uniform(size=(16, 14)) < 0.3).astype(np.float32)
    z = rng.normal(0, 3, size=(16, 14)).astype(np.float32)
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    wp, wn = loss.class_weights(y)
    ref = loss.weighted_loss_numpy(y, p, wp, wn, epsilon=0.0)
    assert float(loss.weighted_loss_from_logits(y, z, wp, wn)) == pytest.approx(ref, rel=1e-5)
    # extreme logits: probabilities saturate to 0/1 in float32 and log(0) would be -inf
    extreme = np.array([[100.0, -100.0]], dtype=np.float32)
    value = float(loss.weighted_loss_from_logits(np.array([[0.0, 1.0]]), extreme, [0.5, 0.5], [0.5, 0.5]))
    assert math.isfinite(value) and value == pytest.approx(0.5 * 100 + 0.5 * 100, rel=1e-4)
    keras_loss = loss.make_weighted_loss(wp, wn, from_logits=True)
    assert float(keras_loss(y, z)) == pytest.approx(ref, rel=1e-5)


def test_class_weights_balance_positive_and_negative_contributions():
    y = np.array([[1, 0], [0, 0], [0, 1], [0, 1]], dtype=np.uint8)
    w_pos, w_neg = loss.class_weights(y)
    np.testing.assert_allclose(w_pos, [0.75, 0.5])
    np.testing.assert_allclose(w_neg, [0.25, 0.5])
    freq_pos = y.mean(axis=0)
    np.testing.assert_allclose(w_pos * freq_pos, w_neg * (1 - freq_pos))
    with pytest.raises(DatasetError):
        loss.class_weights(np.array([[2, 0]]))
    with pytest.raises(DatasetError):
        loss.class_weights(np.zeros((0, 14)))
    with pytest.raises(ConfigError):
        loss.make_weighted_loss([0.5, 0.5], [0.5])


def test_keras_loss_serializes_and_trains_a_small_model():
    from cxrcore.train import model as M

    wp, wn = W_P, W_N
    original = loss.make_weighted_loss(wp, wn, from_logits=True)
    clone = keras.losses.deserialize(keras.losses.serialize(original))
    assert type(clone).__name__ == "WeightedBinaryCrossentropy" and clone.from_logits
    np.testing.assert_allclose(clone.w_pos, wp)
    net = M.build_model(["Mass", "Nodule", "Edema"], input_size=16, backbone="small_cnn")
    trainable = M.logits_model(net)
    trainable.compile(optimizer=keras.optimizers.Adam(1e-2), loss=original)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16, 16, 3)).astype(np.float32)
    y = (rng.uniform(size=(8, 3)) < 0.5).astype(np.float32)
    losses = [float(trainable.train_on_batch(x, y)) for _ in range(15)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
