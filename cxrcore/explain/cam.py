"""Class activation maps: where in the image the model found the evidence for a class.

Three methods, all returning maps at the resolution of a convolutional layer, then upsampled to the
image, ReLU'd and normalized to [0, 1] per map (the gradient methods on the input pixels, "gradient",
"smoothgrad" and "integrated-gradients", live in cxrcore.explain.saliency and return maps in the same
convention; `raw_maps` dispatches to them, `supported_methods` says which methods a model has):

* "cam" (Zhou et al. 2016), the fast path for the standard head (feature map -> global average
  pooling -> Dense): map_k = sum_c A_c * W[c, k]. One forward pass gives all 14 maps.
* "gradcam" (Selvaraju et al. 2017) on any layer with a 4-D output: weights = spatial mean of
  d score_k / d A, through tf.GradientTape, batched over images AND classes: one forward pass per
  batch of images, the class gradients from one vectorized backward pass (batch_jacobian).
* "gradcam++" (Chattopadhay et al. 2018): per-pixel weights from the closed form with the
  exponential score.

For the standard head, Grad-CAM of class k's logit on the pooled feature map has the constant
gradient W[c, k] / (h w), so it IS the CAM map times 1 / (h w); for the sigmoid output the factor
is sigma'(z_k) / (h w) > 0. After ReLU and per-map normalization the maps are identical
(tests/test_cam.py checks this against the gradient path).

TensorFlow is imported lazily; overlays and figures need only OpenCV and numpy.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import cv2
import numpy as np

from cxrcore.data.labels import LABELS, canonical_label
from cxrcore.errors import ConfigError, ImageError, ModelError
from cxrcore.explain import saliency
from cxrcore.explain.methods import (CAM_METHODS, GRADIENT_METHODS, METHOD_TITLES, METHODS, TARGETS,  # noqa: F401
                                     PerModelCache)
from cxrcore.explain.saliency import SaliencyOptions

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from cxrcore.train.model import LoadedModel

COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA, "viridis": cv2.COLORMAP_VIRIDIS, "hot": cv2.COLORMAP_HOT,
}
#: Layer types offered for Grad-CAM (anything with a 4-D output works; these are the meaningful ones).
MAP_LAYER_TYPES = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Activation", "ReLU", "BatchNormalization",
                   "Concatenate", "Add", "MaxPooling2D", "AveragePooling2D")
_EPS = 1e-12


# --------------------------------------------------------------------------------------------
# Model wrapper (built once per Keras model)
# --------------------------------------------------------------------------------------------

def _output_shape(layer: Any) -> tuple | None:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return None
    return tuple(shape)


def map_layers(model: "keras.Model", *, all_types: bool = False) -> list[str]:
    """Names of the layers Grad-CAM can use (4-D outputs with a spatial extent above 1), in graph order."""
    names = []
    for layer in model.layers:
        shape = _output_shape(layer)
        if shape is None or len(shape) != 4 or type(layer).__name__ == "InputLayer":
            continue
        if shape[1] is not None and shape[1] < 2 and shape[2] is not None and shape[2] < 2:
            continue
        if all_types or type(layer).__name__ in MAP_LAYER_TYPES:
            names.append(layer.name)
    return names


class CamModel:
    """A classifier made ready for maps: its CAM layer, Dense head weights and compiled functions.

    Build through `cam_model(model)`, which caches one per Keras model: the two-output model and
    the tf.functions are traced once, so every later image costs one forward pass.
    """

    def __init__(self, model: "keras.Model") -> None:
        import keras
        import tensorflow as tf

        from cxrcore.train.model import cam_layers

        self.model = model
        self.feature_layer, self.dense_layer = cam_layers(model)
        dense = model.get_layer(self.dense_layer)
        self._dense = dense
        self.n_outputs = int(self.kernel.shape[1])
        self.input_size = tuple(model.input.shape[1:3])
        if len(tuple(model.output.shape)) != 2 or int(model.output.shape[1]) != self.n_outputs:
            raise ModelError("the model's output is not the Dense head that reads the pooled features.",
                             fix="use a model built by cxrcore.train.model.build_model (or the course's).")
        spec = tf.TensorSpec([None, *model.input.shape[1:]], tf.float32)
        fast = keras.Model(model.inputs, [model.get_layer(self.feature_layer).output, model.output],
                           name=f"{model.name}_cam")
        self._fast_model = fast
        self._fast = tf.function(lambda x: fast(x, training=False), input_signature=[spec])
        self._grad_fns: dict[str, Any] = {}
        self._spec = spec
        self._lock = threading.Lock()

    @property
    def kernel(self) -> np.ndarray:
        """The Dense head's weights (C, n_outputs), read now (so training after caching is seen)."""
        return np.asarray(self._dense.kernel.numpy(), dtype=np.float32)

    @property
    def bias(self) -> np.ndarray:
        """The Dense head's bias (n_outputs,), zeros when it has none."""
        if getattr(self._dense, "bias", None) is None:
            return np.zeros(self.n_outputs, np.float32)
        return np.asarray(self._dense.bias.numpy(), dtype=np.float32)

    # -- fast path ---------------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(feature maps (N, h, w, C), outputs (N, n_outputs)) of prepared inputs, one forward pass."""
        feats, out = self._fast(np.asarray(x, dtype=np.float32))
        return feats.numpy(), out.numpy()

    def class_maps(self, x: np.ndarray, classes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """CAM: signed maps (N, K, h, w) for output indices `classes` (all when None) and outputs (N, n_out)."""
        feats, out = self.forward(x)
        idx = np.arange(self.n_outputs) if classes is None else np.asarray(classes, dtype=np.int64)
        n, h, w, c = feats.shape
        maps = feats.reshape(n * h * w, c).astype(np.float32, copy=False) @ self.kernel[:, idx]
        return np.ascontiguousarray(maps.reshape(n, h, w, len(idx)).transpose(0, 3, 1, 2)), out

    # -- gradient path ----------------------------------------------------------------------
    def _grad_fn(self, layer: str):
        with self._lock:
            if layer in self._grad_fns:
                return self._grad_fns[layer]
            import keras
            import tensorflow as tf

            try:
                target_layer = self.model.get_layer(layer)
            except ValueError:
                raise ConfigError(f"the model has no layer named {layer!r}.",
                                  fix="choose one of cxrcore.explain.cam.map_layers(model).") from None
            shape = _output_shape(target_layer)
            if shape is None or len(shape) != 4:
                raise ConfigError(f"layer {layer!r} has no 4-D (batch, height, width, channels) output, "
                                  "so it has no map.", fix="choose a convolutional or activation layer.")
            pooled = self._dense.input
            grad_model = keras.Model(self.model.inputs, [target_layer.output, pooled, self.model.output],
                                     name=f"{self.model.name}_grad_{layer}")
            dense = self._dense
            classes_spec = tf.TensorSpec([None], tf.int32)

            def grads(x, classes, use_probability):
                with tf.GradientTape() as tape:
                    feats, pooled_x, out = grad_model(x, training=False)
                    tape.watch(feats)
                    logits = tf.matmul(tf.cast(pooled_x, tf.float32), tf.cast(dense.kernel, tf.float32))
                    if getattr(dense, "bias", None) is not None:
                        logits = logits + tf.cast(dense.bias, tf.float32)
                    score = tf.cast(out, tf.float32) if use_probability else logits
                    picked = tf.gather(score, classes, axis=1)  # (B, K)
                # one forward pass, then the K backward passes vectorized (pfor): d picked[b, k] / d feats[b]
                g = tape.batch_jacobian(picked, feats)  # (B, K, h, w, C)
                return tf.cast(feats, tf.float32), tf.cast(g, tf.float32), tf.cast(out, tf.float32)

            fn = {
                False: tf.function(lambda x, c: grads(x, c, False), input_signature=[self._spec, classes_spec]),
                True: tf.function(lambda x, c: grads(x, c, True), input_signature=[self._spec, classes_spec]),
            }
            self._grad_fns[layer] = fn
            return fn

    def grad_maps(self, x: np.ndarray, classes: Sequence[int], *, layer: str | None = None,
                  plus_plus: bool = False, target: str = "logit", chunk: int = 16
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Grad-CAM (or ++) signed maps (N, K, h, w) for output indices `classes` at `layer`, and outputs.

        Batched over images and classes: each chunk of images gets ONE forward pass, and the K
        class gradients come from one vectorized backward pass (GradientTape.batch_jacobian), so
        nothing is recomputed per class. `chunk` bounds the (image, class) pairs per call (memory).
        """
        if target not in TARGETS:
            raise ConfigError(f"unknown Grad-CAM target {target!r}.", fix=f"use one of {', '.join(TARGETS)}.")
        x = np.asarray(x, dtype=np.float32)
        classes = [int(c) for c in classes]
        if any(not 0 <= c < self.n_outputs for c in classes):
            raise ConfigError(f"class indices must be in 0..{self.n_outputs - 1}, got {classes}.")
        n, k = len(x), len(classes)
        if n == 0 or k == 0:
            h, w = self._layer_hw(layer or self.feature_layer)
            outputs = self.forward(x)[1] if n else np.zeros((0, self.n_outputs), np.float32)
            return np.zeros((n, k, h, w), np.float32), outputs
        fn = self._grad_fn(layer or self.feature_layer)[target == "probability"]
        per_call = max(1, int(chunk) // k)
        maps, outputs = [], []
        for start in range(0, n, per_call):
            feats, grads, out = (t.numpy() for t in fn(x[start:start + per_call], np.asarray(classes, np.int32)))
            feats = feats[:, None]  # (B, 1, h, w, C) against grads (B, K, h, w, C)
            weights = _gradcampp_weights(feats, grads) if plus_plus else grads.mean(axis=(2, 3))
            maps.append(np.einsum("bxhwc,bkc->bkhw", feats, weights, optimize=True).astype(np.float32))
            outputs.append(out)
        return np.concatenate(maps), np.concatenate(outputs)

    def _layer_hw(self, layer: str) -> tuple[int, int]:
        shape = _output_shape(self.model.get_layer(layer)) or (None, 1, 1, None)
        return int(shape[1] or 1), int(shape[2] or 1)


def _gradcampp_weights(feats: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM++ channel weights (..., C) from feature maps and gradients (..., h, w, C): the sum over
    pixels of alpha * ReLU(g), alpha = g^2 / (2 g^2 + sum_ab A * g^3), the closed form for the
    exponential score (Chattopadhay et al. 2018, eq. 19)."""
    g2 = grads * grads
    g3 = g2 * grads
    total = feats.sum(axis=(-3, -2), keepdims=True)
    denom = 2.0 * g2 + total * g3
    alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=np.abs(denom) > _EPS)
    return (alpha * np.maximum(grads, 0.0)).sum(axis=(-3, -2))


_CAM_MODELS = PerModelCache(CamModel)


def cam_model(model: "keras.Model") -> CamModel:
    """The CamModel of a Keras model, built on first use and cached (keyed by the model object)."""
    return _CAM_MODELS(model)


# --------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------

def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """ReLU, then min-max to [0, 1] over the last two axes (each map separately); flat maps become 0."""
    m = np.maximum(np.asarray(maps, dtype=np.float32), 0.0)
    return _minmax_inplace(m)


def _minmax_inplace(m: np.ndarray) -> np.ndarray:
    """Min-max scale each map of a float32 array (..., H, W) in place (few passes over memory)."""
    if m.size == 0:
        return m
    flat = m.reshape(*m.shape[:-2], -1)
    lo = flat.min(axis=-1)
    hi = flat.max(axis=-1)
    span = hi - lo
    ok = span > 1e-8 * np.maximum(np.abs(hi), 1e-30)
    scale = np.where(ok, 1.0 / np.where(ok, span, 1.0), 0.0).astype(np.float32)
    m -= lo[..., None, None]
    m *= scale[..., None, None]
    return m


def upsample_maps(maps: np.ndarray, size: tuple[int, int], *, smooth: float = 0.0) -> np.ndarray:
    """(K, h, w) maps -> (K, H, W) with bilinear interpolation (size is (H, W)).

    smooth: Gaussian blur with sigma = smooth * min(H, W) after upsampling (0 = none).
    """
    maps = np.asarray(maps, dtype=np.float32)
    height, width = int(size[0]), int(size[1])
    if maps.ndim != 3:
        raise ValueError(f"expected (K, h, w) maps, got {maps.shape}")
    out = np.empty((maps.shape[0], height, width), np.float32)
    sigma = float(smooth) * min(height, width) if smooth and smooth > 0 else 0.0
    for k in range(maps.shape[0]):
        out[k] = cv2.resize(np.ascontiguousarray(maps[k]), (width, height), interpolation=cv2.INTER_LINEAR)
        if sigma:
            out[k] = cv2.GaussianBlur(out[k], (0, 0), sigmaX=sigma, sigmaY=sigma)
    return out


def postprocess(maps: np.ndarray, size: tuple[int, int], *, smooth: float = 0.0) -> np.ndarray:
    """Signed low-resolution maps (K, h, w) -> (K, H, W) maps in [0, 1]: ReLU, upsample, smooth, normalize."""
    up = upsample_maps(np.maximum(maps, 0.0), size, smooth=smooth)
    np.maximum(up, 0.0, out=up)  # smoothing and interpolation keep the sign; guard rounding
    return _minmax_inplace(up)


# --------------------------------------------------------------------------------------------
# High level: images and label names in, maps at the image's size out
# --------------------------------------------------------------------------------------------

@dataclass
class ImageMaps:
    """Maps of one image: `maps[k]` (H, W) in [0, 1] explains `labels[k]`; probs in LABELS order."""

    maps: np.ndarray
    labels: tuple[str, ...]
    probs: np.ndarray
    method: str
    layer: str
    extra: dict = field(default_factory=dict)

    def map_for(self, label: str) -> np.ndarray:
        """The map of one class (by any accepted spelling)."""
        key = canonical_label(label)
        if key not in self.labels:
            raise KeyError(label)
        return self.maps[self.labels.index(key)]

    def prob(self, label: str) -> float:
        """The predicted probability of one class."""
        return float(self.probs[LABELS.index(canonical_label(label))])


def output_indices(loaded: "LoadedModel", labels: Sequence[str] | None) -> tuple[list[int], tuple[str, ...]]:
    """Model output indices and canonical names of `labels` (every label the model predicts when None)."""
    model_labels = tuple(loaded.info.labels)
    if labels is None:
        names = tuple(label for label in LABELS if label in model_labels)
    else:
        names = []
        for raw in labels:
            label = canonical_label(raw)
            if label is None:
                raise ConfigError(f"unknown class {raw!r}.", fix=f"use one of {', '.join(LABELS)}.")
            if label not in model_labels:
                raise ModelError(f"the model does not predict {label}.", file=loaded.path)
            if label not in names:
                names.append(label)
        names = tuple(names)
    return [model_labels.index(label) for label in names], names


def check_method(method: str) -> str:
    """The method name, or ConfigError listing the valid ones."""
    if method not in METHODS:
        raise ConfigError(f"unknown map method {method!r}.", fix=f"use one of {', '.join(METHODS)}.")
    return method


def method_support(loaded: "LoadedModel") -> dict[str, str | None]:
    """For every method, None when the model supports it, else why not (in words for the user).

    CAM needs a 4-D feature map read by GlobalAveragePooling2D + Dense; Grad-CAM(++) need a 4-D map
    and that head too (the class score is rebuilt from it); the gradient methods work on any model.
    """
    try:
        cam_model(loaded.model)  # finds the 4-D map feeding GlobalAveragePooling2D and the Dense reading it
        reason = None
    except ModelError as err:
        reason = err.problem
    return {method: None if method in GRADIENT_METHODS else reason for method in METHODS}


def supported_methods(loaded: "LoadedModel") -> tuple[str, ...]:
    """The methods this model supports, in METHODS order (the gradient methods always)."""
    return tuple(method for method, reason in method_support(loaded).items() if reason is None)


def describe_method(method: str, saliency_options: "SaliencyOptions | None" = None) -> str:
    """The method's title with the settings that shape its maps, e.g. 'SmoothGrad (25 samples, noise 0.15)'."""
    check_method(method)
    if method in ("smoothgrad", "integrated-gradients"):
        return f"{METHOD_TITLES[method]} ({(saliency_options or SaliencyOptions()).describe(method)})"
    return METHOD_TITLES[method]


def raw_maps(loaded: "LoadedModel", x: np.ndarray, indices: Sequence[int], *, method: str = "cam",
             layer: str | None = None, target: str = "logit", chunk: int | None = None,
             saliency_options: "SaliencyOptions | None" = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Signed low-resolution maps (N, K, h, w), outputs in model order (N, n_out) and the layer used,
    for prepared inputs `x` and model output `indices`.

    Gradient methods give (N, K, S, S) maps on the input (layer "input"); `saliency_options`
    (cxrcore.explain.saliency.SaliencyOptions) sets SmoothGrad's samples and noise and IG's steps.
    """
    check_method(method)
    if method in GRADIENT_METHODS:
        if layer not in (None, saliency.INPUT_LAYER):
            raise ConfigError(f"{METHOD_TITLES[method]} works on the input pixels, not on layer {layer!r}.",
                              fix="leave the layer out (layers apply to Grad-CAM and Grad-CAM++).")
        maps, out = saliency.raw_maps(loaded, x, indices, method=method, target=target, options=saliency_options,
                                      chunk=chunk or saliency.DEFAULT_CHUNK)
        return maps, out, saliency.INPUT_LAYER
    cm = cam_model(loaded.model)
    used = layer or cm.feature_layer
    if method == "cam":
        if used != cm.feature_layer:
            raise ConfigError(f"CAM is defined only on the layer feeding the global average pooling "
                              f"({cm.feature_layer!r}), not on {used!r}.",
                              fix="use Grad-CAM or Grad-CAM++ for other layers.")
        maps, out = cm.class_maps(x, indices)
    else:
        maps, out = cm.grad_maps(x, indices, layer=used, plus_plus=method == "gradcam++", target=target,
                                 chunk=chunk or 16)
    return maps, out, used


def explain_batch(loaded: "LoadedModel", images: Sequence[np.ndarray], labels: Sequence[str] | None = None, *,
                  method: str = "cam", layer: str | None = None, smooth: float = 0.0,
                  sizes: Sequence[tuple[int, int]] | None = None, target: str = "logit",
                  batch_size: int = 16, saliency_options: "SaliencyOptions | None" = None) -> list[ImageMaps]:
    """Maps of `labels` (all the model predicts when None) for [0, 1] grayscale images of any size.

    Each image's maps come back at its own (H, W), or at `sizes[i]` (e.g. a display size).
    saliency_options: SmoothGrad / Integrated Gradients settings (cxrcore.explain.saliency.SaliencyOptions).
    """
    from cxrcore.train.model import reorder_outputs

    indices, names = output_indices(loaded, labels)
    images = list(images)
    for img in images:
        if np.ndim(img) not in (2, 3) or min(np.shape(img)[:2]) < 1:
            raise ImageError(f"expected a 2-D grayscale image, got shape {np.shape(img)}.")
    results: list[ImageMaps] = []
    for start in range(0, len(images), max(1, int(batch_size))):
        part = images[start:start + max(1, int(batch_size))]
        x = loaded.prepare(part)
        maps, out, used = raw_maps(loaded, x, indices, method=method, layer=layer, target=target,
                                   saliency_options=saliency_options)
        probs = reorder_outputs(out, loaded.info.labels)
        for i, img in enumerate(part):
            size = tuple(sizes[start + i]) if sizes is not None else tuple(np.shape(img)[:2])
            results.append(ImageMaps(maps=postprocess(maps[i], size, smooth=smooth), labels=names,
                                     probs=probs[i], method=method, layer=used,
                                     extra={"description": describe_method(method, saliency_options)}))
    return results


def explain(loaded: "LoadedModel", image: np.ndarray, labels: Sequence[str] | None = None, *,
            method: str = "cam", layer: str | None = None, smooth: float = 0.0,
            size: tuple[int, int] | None = None, target: str = "logit",
            saliency_options: "SaliencyOptions | None" = None) -> ImageMaps:
    """Maps of one [0, 1] grayscale image for `labels` (see `explain_batch`)."""
    return explain_batch(loaded, [image], labels, method=method, layer=layer, smooth=smooth,
                         sizes=None if size is None else [size], target=target,
                         saliency_options=saliency_options)[0]


def top_labels(probs: np.ndarray, k: int, *, available: Sequence[str] = LABELS) -> list[str]:
    """The k classes with the highest probability (probs in LABELS order; NaN columns skipped)."""
    order = [i for i in np.argsort(-np.nan_to_num(np.asarray(probs, float), nan=-1.0))
             if LABELS[i] in available and not np.isnan(probs[i])]
    return [LABELS[i] for i in order[:max(0, int(k))]]


# --------------------------------------------------------------------------------------------
# Overlays and figures
# --------------------------------------------------------------------------------------------

def colorize(heat: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] map -> uint8 RGB through an OpenCV colormap."""
    if colormap not in COLORMAPS:
        raise ConfigError(f"unknown colormap {colormap!r}.", fix=f"use one of {', '.join(COLORMAPS)}.")
    heat8 = np.clip(np.rint(np.asarray(heat, np.float32) * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(heat8, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def gray_rgb(image: np.ndarray) -> np.ndarray:
    """[0, 1] grayscale (H, W) (or uint8) -> uint8 RGB (H, W, 3)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr
    if arr.ndim == 3:
        arr = arr[..., 0]
    return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)


def is_flat(heat: np.ndarray, tol: float = 1e-6) -> bool:
    """True when a map holds no information: (nearly) the same value everywhere, e.g. a Grad-CAM whose
    positive evidence is zero. Drawn through a colormap it would look like a uniformly "cold" map."""
    values = np.asarray(heat, np.float32)
    finite = values[np.isfinite(values)]
    return finite.size == 0 or float(finite.max() - finite.min()) <= tol


def overlay(image: np.ndarray, heat: np.ndarray, opacity: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """The image in gray with the colored map blended on top (opacity 0 = image only, 1 = map only)."""
    if not 0.0 <= float(opacity) <= 1.0:
        raise ConfigError(f"opacity must be between 0 and 1, got {opacity}.")
    base = gray_rgb(image)
    heat = np.asarray(heat, np.float32)
    if heat.shape[:2] != base.shape[:2]:
        heat = cv2.resize(heat, (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(base, 1.0 - float(opacity), colorize(heat, colormap), float(opacity), 0.0)


def _hex_rgb(color: str | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(color, str):
        text = color.lstrip("#")
        return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    return tuple(int(c) for c in color)  # type: ignore[return-value]


def draw_boxes(rgb: np.ndarray, boxes: Sequence[tuple[str, Sequence[float]]], *,
               color: str | tuple[int, int, int] = (0, 230, 0), scale: tuple[float, float] = (1.0, 1.0),
               label: bool = True) -> np.ndarray:
    """Draw (label, (x, y, w, h)) boxes on a copy of an RGB image; `scale` maps box pixels to image pixels."""
    out = np.ascontiguousarray(rgb.copy())
    thickness = max(1, round(min(out.shape[:2]) / 200))
    rgb_color = _hex_rgb(color)
    corners = []
    for name, (x, y, w, h) in boxes:
        p1 = (int(round(x * scale[0])), int(round(y * scale[1])))
        p2 = (int(round((x + w) * scale[0])), int(round((y + h) * scale[1])))
        cv2.rectangle(out, p1, p2, rgb_color, thickness, cv2.LINE_AA)
        corners.append((str(name), p1, p2))
    if label:
        font = min(0.6, max(0.35, min(out.shape[:2]) / 700))
        weight = max(1, thickness // 2)
        for name, (tx, ty), (tw, th) in label_positions(corners, out.shape[:2], font, weight):
            # a dark backing keeps the label readable over a bright lung or a colored map
            cv2.rectangle(out, (tx - 1, ty - th - 2), (tx + tw + 1, ty + 3), (0, 0, 0), -1)
            cv2.putText(out, name, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, font, rgb_color, weight, cv2.LINE_AA)
    return out


def label_positions(boxes: Sequence[tuple[str, tuple[int, int], tuple[int, int]]], shape: tuple[int, int],
                    font: float, weight: int = 1) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    """(name, text origin, text size) for each named box: above its top-left corner, else inside it, moved
    down a line at a time until it overlaps no label placed before (boxes of one image often nearly touch,
    and two labels printed on top of each other read as neither)."""
    height, width = shape
    placed: list[tuple[int, int, int, int]] = []
    out = []
    for name, p1, p2 in boxes:
        if not name:
            continue
        (tw, th), base = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, font, weight)
        line = th + base + 3
        x = int(min(max(p1[0] + 2, 0), max(0, width - tw - 2)))
        y = p1[1] - 4 if p1[1] - 4 - th >= 0 else p1[1] + th + 4
        for _ in range(max(1, height // line)):
            rect = (x, y - th - 2, x + tw, y + base)
            if not any(rect[0] < r[2] and r[0] < rect[2] and rect[1] < r[3] and r[1] < rect[3] for r in placed):
                break
            y += line
        y = int(min(y, height - base - 1))
        placed.append((x, y - th - 2, x + tw, y + base))
        out.append((name, (x, y), (tw, th)))
    return out


def _titled(panel: np.ndarray, title: str, height: int) -> np.ndarray:
    strip = np.full((height, panel.shape[1], 3), 255, np.uint8)
    font = height / 42
    text = title
    while text and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)[0][0] > panel.shape[1] - 8:
        text = text[:-2] + "." if len(text) > 3 else ""
    cv2.putText(strip, text, (4, int(height * 0.7)), cv2.FONT_HERSHEY_SIMPLEX, font, (20, 20, 20), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def figure(panels: Sequence[np.ndarray], titles: Sequence[str], *, columns: int = 5, panel_size: int = 320,
           title_height: int = 28, gap: int = 6) -> np.ndarray:
    """Panels (RGB uint8) in a grid, each resized to `panel_size` wide and titled: one RGB image to save."""
    if len(panels) != len(titles):
        raise ValueError("one title per panel")
    tiles = []
    for panel, title in zip(panels, titles):
        h, w = panel.shape[:2]
        size = (panel_size, max(1, round(h * panel_size / w)))
        tiles.append(_titled(cv2.resize(panel, size, interpolation=cv2.INTER_AREA), title, title_height))
    if not tiles:
        return np.full((title_height, panel_size, 3), 255, np.uint8)
    cols = max(1, min(int(columns), len(tiles)))
    tile_h = max(t.shape[0] for t in tiles)
    rows = -(-len(tiles) // cols)
    out = np.full((rows * tile_h + (rows + 1) * gap, cols * panel_size + (cols + 1) * gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y0, x0 = gap + r * (tile_h + gap), gap + c * (panel_size + gap)
        out[y0:y0 + tile.shape[0], x0:x0 + tile.shape[1]] = tile
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an RGB uint8 image as PNG bytes (downloads, CLI output)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 encodes any uint8 RGB array
        raise ImageError("the figure could not be encoded as PNG.")
    return buf.tobytes()


def explanation_figure(image: np.ndarray, result: ImageMaps, *, opacity: float = 0.4, colormap: str = "jet",
                       boxes: Sequence[tuple[str, Sequence[float]]] = (), box_scale: tuple[float, float] = (1.0, 1.0),
                       truth: Sequence[str] = (), columns: int = 5, panel_size: int = 320) -> np.ndarray:
    """The original (with its boxes) next to one overlay per class of `result`, titled with probabilities.

    Panels are drawn at `panel_size` pixels wide (boxes scaled by box_scale, then to the panel), so
    lines and labels keep a readable size whatever the image's resolution.
    """
    height, width = np.shape(image)[:2]
    size = (panel_size, max(1, round(height * panel_size / width)))
    shown = cv2.resize(np.asarray(image, np.float32), size, interpolation=cv2.INTER_AREA)
    scale = (box_scale[0] * size[0] / width, box_scale[1] * size[1] / height)
    base = gray_rgb(shown)
    original = draw_boxes(base, boxes, scale=scale) if boxes else base
    panels, titles = [original], ["original" + (f" ({', '.join(truth)})" if truth else "")]
    for label, heat in zip(result.labels, result.maps):
        flat = is_flat(heat)  # no colour for a map without information: "cold everywhere" would be a claim
        panel = base.copy() if flat else overlay(shown, cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR),
                                                 opacity, colormap)
        own = [(name, box) for name, box in boxes if name == label]
        if own:
            panel = draw_boxes(panel, own, scale=scale, label=False, color=(255, 255, 255))
        mark = " *" if label in truth else ""
        titles.append(f"{label}{mark} p={result.prob(label):.2f}" + (" (no evidence)" if flat else ""))
        panels.append(panel)
    return figure(panels, titles, columns=columns, panel_size=panel_size)


__all__ = ["CAM_METHODS", "COLORMAPS", "CamModel", "GRADIENT_METHODS", "ImageMaps", "METHODS", "METHOD_TITLES",
           "cam_model", "check_method", "colorize", "describe_method", "draw_boxes", "explain", "explain_batch",
           "explanation_figure", "figure", "gray_rgb", "is_flat", "label_positions", "map_layers", "method_support",
           "normalize_maps", "output_indices", "overlay", "png_bytes", "postprocess", "raw_maps", "supported_methods",
           "top_labels", "upsample_maps"]
