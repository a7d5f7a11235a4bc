"""The map methods and targets shared by CAMs and gradient saliency, and the per-model cache of their
compiled functions: the ground both `cam` and `saliency` stand on, so neither imports the other's names.
"""
from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import keras

#: Methods that read a convolutional feature map (CAM needs the GAP + Dense head on it).
CAM_METHODS = ("cam", "gradcam", "gradcam++")
#: Methods on the input pixels (cxrcore.explain.saliency): any model, convolutional or not.
GRADIENT_METHODS = ("gradient", "smoothgrad", "integrated-gradients")
METHODS = CAM_METHODS + GRADIENT_METHODS
METHOD_TITLES = {"cam": "CAM", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "gradient": "Gradient",
                 "smoothgrad": "SmoothGrad", "integrated-gradients": "Integrated Gradients"}
TARGETS = ("logit", "probability")


class PerModelCache:
    """`build(model)` built once per Keras model object and kept for the `size` most recent models.

    Keyed by the object (a weak reference checks that the id was not reused), so the compiled functions
    of a model loaded once per server process are traced once; thread-safe for Streamlit sessions."""

    def __init__(self, build: Callable[[Any], Any], size: int = 8) -> None:
        self._build, self._size = build, size
        self._entries: dict[int, tuple[weakref.ref, Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, model: "keras.Model") -> Any:
        key = id(model)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0]() is model:
                return hit[1]
        built = self._build(model)
        with self._lock:
            self._entries[key] = (weakref.ref(model), built)
            while len(self._entries) > self._size:
                self._entries.pop(next(iter(self._entries)))
        return built
