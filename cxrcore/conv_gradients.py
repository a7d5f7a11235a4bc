"""Input gradients of stride-1 convolutions computed as forward convolutions: the same numbers, faster.

The gradient of y = conv(x, W) with respect to x is the correlation of dy with W flipped in space
and with its in/out channels swapped. TensorFlow computes it with Conv2DBackpropInput, which on a
CPU takes about twice as long as the forward convolution of the same size (DenseNet121 at 320 px:
45% of a backward pass, docs/benchmarks.md); the same result as a *forward* Conv2D on dy runs on the
fast forward kernels. Saliency (cxrcore.saliency) needs a backward pass to the input for every noisy
copy or path point, so this is where its time goes.

`faster_input_gradients()` is a context manager for graph code (inside a tf.function, gradients taken
with tf.gradients, which honours gradient_override_map; GradientTape does not). Convolutions it
cannot rewrite exactly (strides or dilations above 1, even kernels, explicit padding, NCHW, a
depthwise channel multiplier above 1) keep TensorFlow's own gradient. The filter gradient is
TensorFlow's own in every case, so a graph built under the override still trains correctly.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

_CONV2D = "CxrConv2DInputGradientAsConv"
_DEPTHWISE = "CxrDepthwiseInputGradientAsConv"
_registered = False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _rewritable(op: Any) -> bool:
    """Stride 1, dilation 1, NHWC, SAME or VALID padding and an odd kernel with a known size."""
    kernel = op.inputs[1].shape
    return (list(op.get_attr("strides")) == [1, 1, 1, 1] and list(op.get_attr("dilations")) == [1, 1, 1, 1]
            and _text(op.get_attr("data_format")) == "NHWC" and _text(op.get_attr("padding")) in ("SAME", "VALID")
            and kernel[0] is not None and kernel[1] is not None and kernel[0] % 2 == 1 and kernel[1] % 2 == 1)


def _padded(op: Any, dy: Any) -> tuple[Any, str]:
    """dy, padded so that a forward correlation of it gives the input gradient, and that correlation's padding.

    SAME with an odd kernel pads (k - 1) / 2 on both sides, so its transpose is SAME again; VALID's
    transpose is the full correlation: pad k - 1 on both sides, then VALID."""
    import tensorflow as tf

    if _text(op.get_attr("padding")) == "SAME":
        return dy, "SAME"
    kh, kw = int(op.inputs[1].shape[0]), int(op.inputs[1].shape[1])
    return tf.pad(dy, [[0, 0], [kh - 1, kh - 1], [kw - 1, kw - 1], [0, 0]]), "VALID"


def _attrs(op: Any, *extra: str) -> dict[str, Any]:
    """The convolution attributes its TensorFlow backprop ops take, read off the forward op."""
    return {name: op.get_attr(name) for name in ("strides", "padding", "explicit_paddings", "data_format",
                                                   "dilations", *extra)}


def _conv2d_gradient(op: Any, dy: Any) -> tuple[Any, Any]:
    import tensorflow as tf

    x, w = op.inputs
    attrs = _attrs(op, "use_cudnn_on_gpu")
    dw = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(w), out_backprop=dy, **attrs)
    if not _rewritable(op):
        return tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=w, out_backprop=dy, **attrs), dw
    flipped = tf.transpose(tf.reverse(w, [0, 1]), [0, 1, 3, 2])  # (kh, kw, out, in)
    source, padding = _padded(op, dy)
    return tf.nn.conv2d(source, flipped, strides=1, padding=padding), dw


def _depthwise_gradient(op: Any, dy: Any) -> tuple[Any, Any]:
    import tensorflow as tf

    x, w = op.inputs
    attrs = _attrs(op)
    dw = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(input=x, filter_sizes=tf.shape(w), out_backprop=dy, **attrs)
    if not _rewritable(op) or w.shape[3] != 1:
        dx = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(input_sizes=tf.shape(x), filter=w, out_backprop=dy,
                                                           **attrs)
        return dx, dw
    source, padding = _padded(op, dy)  # one filter per channel: flipping it in space is the whole transpose
    return tf.nn.depthwise_conv2d(source, tf.reverse(w, [0, 1]), strides=[1, 1, 1, 1], padding=padding), dw


def _register() -> None:
    """Register the two gradient functions with TensorFlow once per process."""
    global _registered
    if _registered:
        return
    import tensorflow as tf

    for name, function in ((_CONV2D, _conv2d_gradient), (_DEPTHWISE, _depthwise_gradient)):
        try:
            tf.RegisterGradient(name)(function)
        except KeyError:  # already registered (module reloaded)
            pass
    _registered = True


@contextlib.contextmanager
def faster_input_gradients() -> Iterator[None]:
    """Within a tf.function: convolutions built inside get input gradients computed as forward convolutions.

    Only tf.gradients sees the override (GradientTape looks gradients up by op type)."""
    import tensorflow as tf

    _register()
    graph = tf.compat.v1.get_default_graph()
    with graph.gradient_override_map({"Conv2D": _CONV2D, "DepthwiseConv2dNative": _DEPTHWISE}):
        yield


__all__ = ["faster_input_gradients"]
