"""cxrcore.conv_gradients: input gradients as forward convolutions give TensorFlow's own numbers."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from cxrcore.conv_gradients import faster_input_gradients  # noqa: E402


def _gradients(layer_fn, x: np.ndarray, w: np.ndarray, *, override: bool):
    """(dx, dw, op types of the traced graph) of sum(output * probe) for one convolution."""
    probe_seed = 7

    @tf.function
    def grads(x, w):
        if override:
            with faster_input_gradients():
                y = layer_fn(x, w)
        else:
            y = layer_fn(x, w)
        probe = tf.random.stateless_normal(tf.shape(y), seed=[probe_seed, 0])  # a dy that is not all ones
        dx, dw = tf.gradients(tf.reduce_sum(y * probe), [x, w])
        return dx, dw

    dx, dw = grads(tf.constant(x), tf.constant(w))
    graph = grads.get_concrete_function(tf.constant(x), tf.constant(w)).graph
    return dx.numpy(), dw.numpy(), {op.type for op in graph.get_operations()}


def _conv(strides, padding):
    return lambda x, w: tf.nn.conv2d(x, w, strides=strides, padding=padding)


def _depthwise(strides, padding):
    return lambda x, w: tf.nn.depthwise_conv2d(x, w, strides=[1, strides, strides, 1], padding=padding)


REWRITTEN = [  # (name, op, kernel shape (kh, kw, in, out or multiplier))
    ("1x1 same", _conv(1, "SAME"), (1, 1, 5, 7)),
    ("3x3 same", _conv(1, "SAME"), (3, 3, 4, 6)),
    ("5x3 same", _conv(1, "SAME"), (5, 3, 3, 2)),
    ("7x7 valid", _conv(1, "VALID"), (7, 7, 3, 4)),
    ("3x3 valid", _conv(1, "VALID"), (3, 3, 6, 5)),
    ("depthwise 3x3 same", _depthwise(1, "SAME"), (3, 3, 6, 1)),
    ("depthwise 5x5 valid", _depthwise(1, "VALID"), (5, 5, 4, 1)),
]
KEPT = [  # convolutions the rewrite is not exact for: TensorFlow's own gradient (dilated Conv2D ops have no
    # CPU gradient at all in TensorFlow; tf.nn.convolution turns dilation into space-to-batch around a plain one)
    ("3x3 stride 2", _conv(2, "SAME"), (3, 3, 4, 6), "Conv2DBackpropInput"),
    ("7x7 stride 2 valid", _conv(2, "VALID"), (7, 7, 3, 4), "Conv2DBackpropInput"),
    ("2x2 even kernel", _conv(1, "SAME"), (2, 2, 4, 6), "Conv2DBackpropInput"),
    ("depthwise multiplier 2", _depthwise(1, "SAME"), (3, 3, 4, 2), "DepthwiseConv2dNativeBackpropInput"),
    ("depthwise stride 2", _depthwise(2, "SAME"), (3, 3, 4, 1), "DepthwiseConv2dNativeBackpropInput"),
]


def _inputs(kernel, size=(11, 9)):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *size, kernel[2])).astype(np.float32)
    w = rng.standard_normal(kernel).astype(np.float32)
    return x, w


@pytest.mark.parametrize("name,layer_fn,kernel", REWRITTEN, ids=[r[0] for r in REWRITTEN])
def test_rewritten_input_gradients_equal_tensorflows_and_use_no_backprop_input_op(name, layer_fn, kernel):
    x, w = _inputs(kernel)
    dx_tf, dw_tf, ops_tf = _gradients(layer_fn, x, w, override=False)
    dx, dw, ops = _gradients(layer_fn, x, w, override=True)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, dx_tf, rtol=1e-5, atol=1e-5 * np.abs(dx_tf).max())
    np.testing.assert_array_equal(dw, dw_tf)  # the filter gradient is TensorFlow's own, bit for bit
    assert {"Conv2DBackpropInput", "DepthwiseConv2dNativeBackpropInput"} & ops_tf  # the plain graph has it ...
    assert not {"Conv2DBackpropInput", "DepthwiseConv2dNativeBackpropInput"} & ops  # ... the rewritten one not


@pytest.mark.parametrize("name,layer_fn,kernel,kept_op", KEPT, ids=[k[0] for k in KEPT])
def test_convolutions_the_rewrite_cannot_do_exactly_keep_tensorflows_gradient(name, layer_fn, kernel, kept_op):
    x, w = _inputs(kernel)
    dx_tf, dw_tf, _ = _gradients(layer_fn, x, w, override=False)
    dx, dw, ops = _gradients(layer_fn, x, w, override=True)
    np.testing.assert_array_equal(dx, dx_tf)
    np.testing.assert_array_equal(dw, dw_tf)
    assert kept_op in ops


def test_a_keras_model_under_the_override_has_the_same_input_gradient():
    """A small Keras CNN (stride-1 and strided convolutions, a depthwise one, batch norm): tf.gradients
    under the override equals GradientTape's input gradient, which never sees the override."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((24, 24, 3))
    h = keras.layers.Conv2D(8, 7, strides=2, padding="same", activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(6, 1, activation="relu")(h)
    h = keras.layers.Conv2D(4, 3, padding="valid")(h)
    outputs = keras.layers.Dense(2, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs)
    x = tf.constant(np.random.default_rng(1).random((3, 24, 24, 3), dtype=np.float32))

    @tf.function
    def rewritten(x):
        with faster_input_gradients():
            y = model(x, training=False)
        return tf.gradients(tf.reduce_sum(y[:, 1]), x)[0]

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x, training=False)
        total = tf.reduce_sum(y[:, 1])
    expected = tape.gradient(total, x).numpy()
    got = rewritten(x).numpy()
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    ops = {op.type for op in rewritten.get_concrete_function(x).graph.get_operations()}
    assert "Conv2DBackpropInput" in ops  # the strided stem keeps TensorFlow's gradient ...
    assert "DepthwiseConv2dNativeBackpropInput" not in ops  # ... the stride-1 depthwise one is rewritten
