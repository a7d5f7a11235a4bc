"""Gradient saliency: where a small change of the input pixels changes the class score most.

Three methods, all on the model's prepared input (S x S x 3) and so on ANY model (convolutional or
not, e.g. a ViT): no feature map, no particular head needed.

* "gradient" (Simonyan et al. 2014): |d score_k / d x|, the largest magnitude over the 3 input channels.
* "smoothgrad" (Smilkov et al. 2017): the gradient averaged over `samples` noisy copies
  x + N(0, sigma^2), sigma = noise * (max(x) - min(x)), then the same magnitude: the noise averages
  out the gradient's pixel-scale flicker. The copies of an image go through the model in batches
  (`chunk` (copy, class) pairs per call, one forward and one backward pass each), not one by one.
* "integrated-gradients" (Sundararajan et al. 2017): (x - x') times the gradient averaged along the
  straight path from the baseline x' to x (midpoint rule, `steps` points), summed over the channels
  (the three channels are copies of one gray pixel). x' is zeros in the model's input space, i.e. a
  flat image at the normalization's mean. Completeness: the attributions sum to f(x) - f(x').

Maps come back as cxrcore.explain.cam's raw maps, (N, K, h, w) with h = w = S, so `cam.postprocess`
(ReLU, upsample, smooth, normalize), overlays, the pointing game and the faithfulness tests apply
unchanged. The score is the class logit (or its probability, target="probability"); the logit is
found from the graph (the input of a final sigmoid, or a sigmoid Dense layer's pre-activation).
Gradients come from tf.functions per model (traced once per number of classes, cached like
`cam.cam_model`), batched over images or noise samples: one forward pass per batch, then one backward
pass per class. Seeded: the
same seed gives the same SmoothGrad noise for every image, whatever the batching.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from cxrcore.errors import ConfigError, ModelError
from cxrcore.explain.methods import GRADIENT_METHODS, TARGETS, PerModelCache

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from cxrcore.train.model import LoadedModel

#: Name shown as the "layer" of a gradient map: the maps live on the model's input pixels.
INPUT_LAYER = "input"
#: (image or copy, class) pairs per gradient call: bounds memory (activations of the batch). On 2 CPU
#: cores DenseNet121 at 320 px costs the same or less per copy in calls of 5-8 as in one call of 25
#: (docs/benchmarks.md), and 8 copies of 320x320 stay well inside a GPU's memory.
DEFAULT_CHUNK = 8
_P_CLIP = 1e-7


@dataclass(frozen=True)
class SaliencyOptions:
    """SmoothGrad's samples and noise level, Integrated Gradients' steps, and the noise seed."""

    samples: int = 25
    noise: float = 0.15
    steps: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low, high in (("samples", 1, 1000), ("steps", 1, 1000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer from {low} to {high}, got {value!r}.")
        if not isinstance(self.noise, (int, float, np.floating)) or not 0.0 <= float(self.noise) <= 1.0:
            raise ConfigError(f"noise must be between 0 and 1 (a share of the input's range), got {self.noise!r}.",
                              fix="SmoothGrad's authors recommend 0.1 to 0.2.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}.")

    def describe(self, method: str) -> str:
        """The settings that matter for `method`, in words (captions, reports)."""
        if method == "smoothgrad":
            return f"{self.samples} samples, noise {self.noise:g}"
        if method == "integrated-gradients":
            return f"{self.steps} steps from a flat baseline"
        return ""


# --------------------------------------------------------------------------------------------
# The class score as a function of the input
# --------------------------------------------------------------------------------------------

def _activation_name(layer: Any) -> str:
    return getattr(getattr(layer, "activation", None), "__name__", "")


def logit_head(model: "keras.Model") -> tuple[Any, Callable[[Any], Any], str]:
    """(symbolic tensor, function of it giving the logits, how it was found) for a sigmoid classifier.

    The input of a final sigmoid Activation; a Dense(activation='sigmoid') layer's input times its
    kernel plus bias; otherwise log(p / (1 - p)) of the output (clipped, exact up to float32 rounding).
    """
    import tensorflow as tf

    last = model.output._keras_history.operation
    if type(last).__name__ == "Activation" and _activation_name(last) == "sigmoid":
        return last.input, lambda t: tf.cast(t, tf.float32), f"input of {last.name!r}"
    if type(last).__name__ == "Dense" and _activation_name(last) == "sigmoid":
        def dense_logits(t):
            z = tf.matmul(tf.cast(t, tf.float32), tf.cast(last.kernel, tf.float32))
            return z + tf.cast(last.bias, tf.float32) if getattr(last, "bias", None) is not None else z
        return last.input, dense_logits, f"pre-activation of {last.name!r}"

    def from_probability(t):
        p = tf.clip_by_value(tf.cast(t, tf.float32), _P_CLIP, 1.0 - _P_CLIP)
        return tf.math.log(p) - tf.math.log1p(-p)
    return model.output, from_probability, "log(p / (1 - p)) of the output"


class SaliencyModel:
    """A classifier made ready for input gradients: compiled score gradients, built once per model."""

    def __init__(self, model: "keras.Model") -> None:
        import keras
        import tensorflow as tf

        if len(model.inputs) != 1 or len(model.input.shape) != 4:
            raise ModelError("gradient saliency needs a model with one image input (batch, height, width, channels).")
        self.model = model
        self.n_outputs = int(model.output.shape[-1])
        pre, head, self.logit_source = logit_head(model)
        score_model = keras.Model(model.inputs, [pre, model.output], name=f"{model.name}_saliency")
        self._score_model = score_model
        self._spec = tf.TensorSpec([None, *model.input.shape[1:]], tf.float32)

        def scores(x, use_probability):
            pre_x, out = score_model(x, training=False)
            out = tf.cast(out, tf.float32)
            return (out if use_probability else head(pre_x)), out

        self._scores = scores
        self._fns: dict[tuple[int, bool], Any] = {}
        self._lock = threading.Lock()
        self._forward = tf.function(lambda x: scores(x, False), input_signature=[self._spec])

    def _gradient_fn(self, k: int, use_probability: bool):
        """The compiled gradients of K = k classes: one forward pass, then k backward passes (tf.gradients in
        the traced graph; not GradientTape.batch_jacobian: its vectorization (pfor) crashes TensorFlow on some graphs, e.g.
        keras-hub's ViT). Traced once per (k, target); k is at most the number of outputs."""
        with self._lock:
            if (k, use_probability) in self._fns:
                return self._fns[(k, use_probability)]
            import tensorflow as tf

            scores = self._scores

            def grads(x, classes):
                score, out = scores(x, use_probability)
                picked = tf.gather(score, classes, axis=1)  # (B, K): each row depends on its own image only
                per_class = [tf.gradients(tf.reduce_sum(picked[:, j]), x,
                                          unconnected_gradients=tf.UnconnectedGradients.ZERO)[0] for j in range(k)]
                return tf.stack(per_class, axis=1), out, picked  # (B, K, S, S, 3)

            fn = tf.function(grads, input_signature=[self._spec, tf.TensorSpec([k], tf.int32)])
            self._fns[(k, use_probability)] = fn
            return fn

    def gradients(self, x: np.ndarray, classes: Sequence[int], *, target: str = "logit"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(d score / d x (B, K, S, S, 3), outputs (B, n_out), scores (B, K)) in one call (no chunking)."""
        fn = self._gradient_fn(len(classes), target == "probability")
        grads, out, picked = fn(np.asarray(x, np.float32), np.asarray(classes, np.int32))
        return grads.numpy(), out.numpy(), picked.numpy()

    def scores(self, x: np.ndarray, classes: Sequence[int], *, target: str = "logit") -> tuple[np.ndarray, np.ndarray]:
        """(scores (B, K) of `classes`, outputs (B, n_out)) of prepared inputs, one forward pass."""
        logits, out = (t.numpy() for t in self._forward(np.asarray(x, np.float32)))
        score = out if target == "probability" else logits
        return score[:, list(classes)], out


_SALIENCY_MODELS = PerModelCache(SaliencyModel)


def saliency_model(model: "keras.Model") -> SaliencyModel:
    """The SaliencyModel of a Keras model, built on first use and cached (keyed by the model object)."""
    return _SALIENCY_MODELS(model)


# --------------------------------------------------------------------------------------------
# The three methods
# --------------------------------------------------------------------------------------------

def _check(method: str, target: str, classes: Sequence[int], n_outputs: int) -> list[int]:
    if method not in GRADIENT_METHODS:
        raise ConfigError(f"unknown gradient method {method!r}.", fix=f"use one of {', '.join(GRADIENT_METHODS)}.")
    if target not in TARGETS:
        raise ConfigError(f"unknown saliency target {target!r}.", fix=f"use one of {', '.join(TARGETS)}.")
    classes = [int(c) for c in classes]
    if any(not 0 <= c < n_outputs for c in classes):
        raise ConfigError(f"class indices must be in 0..{n_outputs - 1}, got {classes}.")
    return classes


def _summed_gradients(sm: SaliencyModel, points: Callable[[int, int], np.ndarray], count: int,
                      classes: list[int], target: str, chunk: int) -> np.ndarray:
    """Sum over `count` inputs points(start, stop) of d score / d x, (K, S, S, 3), in batches of chunk // K."""
    per_call = max(1, int(chunk) // len(classes))
    total = None
    for start in range(0, count, per_call):
        grads = sm.gradients(points(start, min(count, start + per_call)), classes, target=target)[0].sum(axis=0)
        total = grads if total is None else total + grads
    return total


def attributions(loaded: "LoadedModel", x: np.ndarray, classes: Sequence[int], *, method: str = "gradient",
                 target: str = "logit", options: SaliencyOptions | None = None, chunk: int = DEFAULT_CHUNK
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Signed per-channel attributions (N, K, S, S, 3) of prepared inputs `x` for output indices `classes`,
    and the outputs (N, n_out) at x: the gradient, SmoothGrad's mean noisy gradient, or IG's attributions."""
    sm = saliency_model(loaded.model)
    classes = _check(method, target, classes, sm.n_outputs)
    options = options or SaliencyOptions()
    x = np.asarray(x, dtype=np.float32)
    n, k = len(x), len(classes)
    if n == 0 or k == 0:
        out = sm.scores(x, [], target=target)[1] if n else np.zeros((0, sm.n_outputs), np.float32)
        return np.zeros((n, k, *x.shape[1:]), np.float32), out
    if method == "gradient":
        per_call = max(1, int(chunk) // k)
        parts = [sm.gradients(x[s:s + per_call], classes, target=target)[:2] for s in range(0, n, per_call)]
        return np.concatenate([g for g, _ in parts]).astype(np.float32), np.concatenate([o for _, o in parts])
    out = sm.scores(x, classes, target=target)[1]
    result = np.empty((n, k, *x.shape[1:]), np.float32)
    for i in range(n):
        xi = x[i]
        if method == "smoothgrad":
            sigma = float(options.noise) * float(xi.max() - xi.min())
            rng = np.random.default_rng(options.seed)  # the same noise stream for every image and batching

            def noisy(start: int, stop: int, xi=xi, sigma=sigma, rng=rng) -> np.ndarray:
                return xi[None] + sigma * rng.standard_normal((stop - start, *xi.shape), dtype=np.float32)

            result[i] = _summed_gradients(sm, noisy, options.samples, classes, target, chunk) / options.samples
        else:  # integrated gradients from the zero baseline, midpoint rule
            alphas = ((np.arange(options.steps) + 0.5) / options.steps).astype(np.float32)

            def path(start: int, stop: int, xi=xi, alphas=alphas) -> np.ndarray:
                return alphas[start:stop, None, None, None] * xi[None]

            mean_grad = _summed_gradients(sm, path, options.steps, classes, target, chunk) / options.steps
            result[i] = xi[None] * mean_grad  # (x - x') with x' = 0
    return result, out


def channel_maps(attr: np.ndarray, method: str) -> np.ndarray:
    """(..., S, S, 3) attributions -> (..., S, S) maps: the largest magnitude over channels for the gradient
    and SmoothGrad, the signed sum (the gray pixel's attribution) for Integrated Gradients."""
    attr = np.asarray(attr, np.float32)
    if method == "integrated-gradients":
        return attr.sum(axis=-1)
    return np.abs(attr).max(axis=-1)


def raw_maps(loaded: "LoadedModel", x: np.ndarray, classes: Sequence[int], *, method: str = "gradient",
             target: str = "logit", options: SaliencyOptions | None = None, chunk: int = DEFAULT_CHUNK
             ) -> tuple[np.ndarray, np.ndarray]:
    """Maps (N, K, S, S) in cxrcore.explain.cam's raw-map convention, and the outputs (N, n_out) at x."""
    attr, out = attributions(loaded, x, classes, method=method, target=target, options=options, chunk=chunk)
    return channel_maps(attr, method), out


def baseline_scores(loaded: "LoadedModel", x: np.ndarray, classes: Sequence[int], *, target: str = "logit"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(scores at x, scores at IG's baseline) (N, K): IG's attributions sum to their difference."""
    sm = saliency_model(loaded.model)
    x = np.asarray(x, np.float32)
    return sm.scores(x, classes, target=target)[0], sm.scores(np.zeros_like(x), classes, target=target)[0]


__all__ = ["DEFAULT_CHUNK", "INPUT_LAYER", "SaliencyModel", "SaliencyOptions", "attributions", "baseline_scores",
           "channel_maps", "logit_head", "raw_maps", "saliency_model"]
