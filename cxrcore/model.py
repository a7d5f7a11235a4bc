"""The classifier: DenseNet121 (or a tiny CNN for tests) + global average pooling + 14 sigmoid outputs.

Every model travels with a `ModelInfo` (label order, input size, normalization), saved as JSON
beside the model file and inside it. The course's Keras 2 files (`densenet.hdf5`, backbone
weights; `pretrained_model.h5`, full model) are loaded TOPOLOGICALLY, layer by layer in order,
never by name: Keras 2 and Keras 3 name DenseNet layers differently ("conv1/conv" vs "conv1_conv"),
so loading by name silently leaves weights random. Course files store no label list; their outputs
are in COURSE_LABEL_ORDER and `LoadedModel.predict` always returns the canonical LABELS order.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from cxrcore.errors import ConfigError, ModelError
from cxrcore.fileio import atomic_write_text
from cxrcore.labels import COURSE_LABEL_ORDER, LABELS, canonical_label
from cxrcore.pipeline import Normalization, prepare_images

if TYPE_CHECKING:  # pragma: no cover
    import keras

BACKBONES = ("densenet121", "small_cnn")
#: Names of the head layers in models built here (CAMs and training rely on them).
POOL_LAYER, LOGITS_LAYER, OUTPUT_LAYER = "avg_pool", "logits", "predictions"
#: Last feature map of the small CNN (DenseNet's is "bn", or "relu" in newer Keras 2 files).
SMALL_CNN_FEATURES = "features"
INFO_FORMAT = 1
_INFO_ENTRY = "cxrcore_info.json"  # inside .keras zips
_INFO_ATTR = "cxrcore_info"        # root attribute of .h5 files
_UNSAFE_LAYERS = ("Lambda", "TFOpLambda", "SlicingOpLambda")
#: Keras' ImageNet DenseNet121 backbone (include_top=False): what build_model(weights="imagenet") loads,
#: downloaded once (about 30 MB) into the Keras cache, ~/.keras/models.
IMAGENET_WEIGHTS_FILE = "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_WEIGHTS_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/densenet/{IMAGENET_WEIGHTS_FILE}"
IMAGENET_WEIGHTS_MD5 = "30ee3e1110167f948a6b9946edeeb738"  # keras.applications.densenet's file_hash
#: The course's ImageNet-pretrained DenseNet121 backbone (Keras 2), relative to the models root.
COURSE_BACKBONE = Path("nih") / "densenet.hdf5"
#: Set to 1 to never try the network (classrooms behind a firewall; the test suite).
OFFLINE_ENV = "CXR_OFFLINE"
_REACHABLE: dict[str, tuple[float, bool]] = {}  # url -> (checked at, reachable), see imagenet_weights_reachable
_MD5S: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> MD5 hex digest, hashed once


# --------------------------------------------------------------------------------------------
# Model info
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelInfo:
    """What a model's outputs mean and how its inputs must be prepared; saved with the model."""

    labels: tuple[str, ...] = LABELS
    input_size: int = 320
    normalization: Normalization = field(default_factory=Normalization)
    name: str = "model"
    origin: str = "trained"
    backbone: str = "densenet121"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = []
        for raw in self.labels:
            label = canonical_label(raw)
            if label is None:
                raise ConfigError(f"unknown label {raw!r} in the model's label list.",
                                  fix="use the 14 ChestX-ray14 label names.")
            labels.append(label)
        if len(set(labels)) != len(labels) or not labels:
            raise ConfigError("the model's label list is empty or repeats a label.")
        try:
            size = int(self.input_size)
        except (TypeError, ValueError):
            raise ConfigError(f"input_size must be an integer, got {self.input_size!r}.") from None
        if size < 8:
            raise ConfigError(f"input_size must be at least 8 pixels, got {self.input_size!r}.")
        norm = self.normalization
        if not isinstance(norm, Normalization):
            norm = Normalization.from_dict(norm)
        object.__setattr__(self, "labels", tuple(labels))
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "normalization", norm)
        object.__setattr__(self, "metadata", dict(self.metadata or {}))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {"format": INFO_FORMAT, "name": self.name, "origin": self.origin, "backbone": self.backbone,
                "labels": list(self.labels), "input_size": self.input_size,
                "normalization": self.normalization.to_dict(), "metadata": self.metadata}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelInfo":
        """Inverse of to_dict; ConfigError on missing or invalid fields."""
        if not isinstance(data, Mapping) or "labels" not in data:
            raise ConfigError("model info must be a JSON object with at least 'labels'.")
        return cls(labels=tuple(data["labels"]), input_size=data.get("input_size", 320),
                   normalization=Normalization.from_dict(data.get("normalization", "sample")),
                   name=str(data.get("name", "model")), origin=str(data.get("origin", "trained")),
                   backbone=str(data.get("backbone", "densenet121")), metadata=dict(data.get("metadata") or {}))

    def to_json(self) -> str:
        """Pretty JSON text (the `<model>.json` sidecar)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, file: str | None = None) -> "ModelInfo":
        """Parse `to_json` output; ModelError names the file when it is not valid."""
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise ModelError(f"the model info is not valid JSON ({err.msg}, line {err.lineno}).", file=file) from None
        except ConfigError as err:
            raise ModelError(f"the model info is invalid: {err.problem}", file=file, fix=err.fix) from None


def course_model_info(normalization: Normalization | None = None, *, input_size: int = 320) -> ModelInfo:
    """Info for the course's Keras 2 files: COURSE_LABEL_ORDER outputs, 320x320, `dataset` normalization.

    The course fits mean/std on 100 training images at run time, so they are not in the file: pass
    `estimate_normalization(train_split, ...)`; without it predict() refuses with a clear error.
    """
    return ModelInfo(labels=COURSE_LABEL_ORDER, input_size=input_size,
                     normalization=normalization or Normalization("dataset"),
                     name="course-densenet121", origin="course", backbone="densenet121",
                     metadata={"source": "Coursera AI for Medical Diagnosis, week 1 (Keras 2)"})


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """`models/x.keras` -> `models/x.json`: where a model's info lives beside it."""
    return Path(model_path).with_suffix(".json")


def read_model_info(model_path: str | os.PathLike) -> ModelInfo | None:
    """The model's info from its JSON sidecar, else from inside the file; None when it has none."""
    path = Path(model_path)
    side = sidecar_path(path)
    if side.is_file():
        return ModelInfo.from_json(side.read_text(encoding="utf-8"), file=str(side))
    text = None
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                if _INFO_ENTRY in zf.namelist():
                    text = zf.read(_INFO_ENTRY).decode("utf-8")
        elif _is_hdf5(path):
            import h5py

            with h5py.File(path, "r") as f:
                raw = f.attrs.get(_INFO_ATTR)
                text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except (OSError, zipfile.BadZipFile, KeyError):
        return None
    return None if text is None else ModelInfo.from_json(text, file=str(path))


# --------------------------------------------------------------------------------------------
# Where the ImageNet weights come from (no TensorFlow, no Keras import)
# --------------------------------------------------------------------------------------------

def keras_cache_dirs() -> list[Path]:
    """Folders where Keras' get_file keeps downloaded weights: $KERAS_HOME/models (else ~/.keras/models,
    or /tmp/.keras/models when the home folder is read-only, as Keras decides)."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    dirs = [Path(home) / "models", Path("/tmp/.keras/models")]
    return list(dict.fromkeys(dirs))


def cached_imagenet_weights() -> Path | None:
    """The ImageNet DenseNet121 weights file in the Keras cache when it is complete (its MD5 is checked,
    as Keras does before using it), else None."""
    for folder in keras_cache_dirs():
        path = folder / IMAGENET_WEIGHTS_FILE
        try:
            st = path.stat()
        except OSError:
            continue
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in _MD5S:
            digest = hashlib.md5(usedforsecurity=False)
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            _MD5S[key] = digest.hexdigest()
        if _MD5S[key] == IMAGENET_WEIGHTS_MD5:
            return path
    return None


def imagenet_weights_reachable(timeout_s: float = 3.0) -> bool:
    """True when the ImageNet weights URL answers a HEAD request within timeout_s.

    Never tried when CXR_OFFLINE=1. The answer is kept for a minute when negative (a user who just
    connected retries soon) and ten minutes when positive, so page reruns do not wait on the network.
    """
    if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
        return False
    checked = _REACHABLE.get(IMAGENET_WEIGHTS_URL)
    if checked is not None and time.monotonic() - checked[0] < (600.0 if checked[1] else 60.0):
        return checked[1]
    import urllib.request

    try:
        request = urllib.request.Request(IMAGENET_WEIGHTS_URL, method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - fixed https URL
            ok = 200 <= response.status < 400
    except Exception:  # DNS failure, refused, timeout, proxy, HTTP error: not reachable now
        ok = False
    _REACHABLE[IMAGENET_WEIGHTS_URL] = (time.monotonic(), ok)
    return ok


def course_backbone(models_root: str | os.PathLike) -> Path | None:
    """models_root/nih/densenet.hdf5 (the course's ImageNet-pretrained backbone) when it is an HDF5 file."""
    path = Path(models_root) / COURSE_BACKBONE
    return path.resolve() if path.is_file() and _is_hdf5(path) else None


@dataclass(frozen=True)
class ImagenetWeights:
    """Where ImageNet DenseNet121 weights come from: "cache" (Keras cache), "course file" (its path),
    "download" (reachable now) or "unavailable"; `note` says it in one sentence."""

    source: str
    path: Path | None
    note: str


def find_imagenet_weights(models_root: str | os.PathLike, *, network: bool = True) -> ImagenetWeights:
    """The first usable source of ImageNet weights: the Keras cache, the course's backbone file in the
    models root (the same ImageNet weights, no download), then a download when the URL answers."""
    cached = cached_imagenet_weights()
    if cached is not None:
        return ImagenetWeights("cache", cached, f"ImageNet weights from the Keras cache ({cached}).")
    course = course_backbone(models_root)
    if course is not None:
        return ImagenetWeights("course file", course, f"ImageNet weights from the course's DenseNet121 backbone "
                                                      f"{course} (not in the Keras cache, so no download).")
    if network and imagenet_weights_reachable():
        return ImagenetWeights("download", None, "ImageNet weights are downloaded (about 30 MB) when training "
                                                 "starts and kept in the Keras cache.")
    return ImagenetWeights("unavailable", None,
                           f"the ImageNet weights of DenseNet121 are not on this computer (not in "
                           f"{keras_cache_dirs()[0]}, no {Path(models_root) / COURSE_BACKBONE}) and cannot be "
                           "downloaded now (no internet connection).")


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

def _head(features, n_outputs: int):
    import keras

    x = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER)(features)
    logits = keras.layers.Dense(n_outputs, name=LOGITS_LAYER, dtype="float32")(x)
    return keras.layers.Activation("sigmoid", name=OUTPUT_LAYER, dtype="float32")(logits)


def _small_cnn(input_size: int, n_outputs: int, name: str) -> "keras.Model":
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    widths = (16, 32, 64, 128)
    for i, width in enumerate(widths, start=1):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.Activation("relu", name=SMALL_CNN_FEATURES if i == len(widths) else f"block{i}_relu")(x)
        if i < len(widths):
            x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return keras.Model(inputs, _head(x, n_outputs), name=name)


def build_model(labels: Sequence[str] = LABELS, input_size: int = 320, weights: str | os.PathLike | None = None,
                *, backbone: str = "densenet121", final_relu: bool = False,
                name: str | None = None) -> "keras.Model":
    """DenseNet121 (or "small_cnn") + GlobalAveragePooling2D + Dense(len(labels)) + sigmoid, float32 head.

    The head sits on DenseNet's final "bn" output, as in the course's Keras 2 model (Keras 3's
    include_top=False adds a "relu" after it; final_relu=True keeps it, for files that have it).
    weights: None, "imagenet" (downloads; backbone only) or a .h5 file of backbone or full-model
    weights, loaded topologically (see `load_weights_topological`). The Dense layer is "logits" and
    the sigmoid "predictions", so `logits_model` can train with the stable from-logits loss.
    """
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}.", fix=f"use one of {', '.join(BACKBONES)}.")
    if backbone == "small_cnn" and weights == "imagenet":
        raise ConfigError("the small CNN has no ImageNet weights.", fix="use weights=None.")
    model = _build(len(labels), int(input_size), backbone=backbone, final_relu=final_relu, name=name,
                   imagenet=weights == "imagenet")
    if weights is not None and weights != "imagenet":
        load_weights_topological(model, weights, allow_backbone_only=True)
    return model


def _build(n_outputs: int, size: int, *, backbone: str, final_relu: bool, name: str | None,
           imagenet: bool = False) -> "keras.Model":
    import keras

    if n_outputs < 1:
        raise ConfigError("a model needs at least one label.")
    if backbone == "small_cnn":
        return _small_cnn(size, n_outputs, name or "small_cnn")
    if size < 32:
        raise ConfigError(f"DenseNet121 needs inputs of at least 32x32, got {size}.")
    base = keras.applications.DenseNet121(include_top=False, weights="imagenet" if imagenet else None,
                                          input_shape=(size, size, 3))
    features = base.get_layer("relu" if final_relu else "bn").output
    return keras.Model(base.input, _head(features, n_outputs), name=name or "densenet121")


def logits_model(model: "keras.Model") -> "keras.Model":
    """Same weights, output before the sigmoid: train it with `loss.WeightedLoss(from_logits=True)`."""
    import keras

    try:
        layer = model.get_layer(LOGITS_LAYER)
    except ValueError:
        raise ModelError(f"the model has no '{LOGITS_LAYER}' layer (not built by cxrcore.model.build_model).",
                         fix="train it with the probability loss (from_logits=False).") from None
    return keras.Model(model.input, layer.output, name=f"{model.name}_logits")


def cam_layers(model: "keras.Model") -> tuple[str, str]:
    """(feature map layer, Dense head layer) names for class activation maps.

    Found from the graph: the layer feeding the last GlobalAveragePooling2D, and the Dense layer
    reading the pooled vector, so it also works for models not built here (course files, others).
    """
    import keras

    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    if not pools:
        raise ModelError("the model has no GlobalAveragePooling2D layer, so it has no class activation maps.")
    pool = pools[-1]
    feature = pool.input._keras_history.operation
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense) and layer.input._keras_history.operation is pool:
            return feature.name, layer.name
    raise ModelError("no Dense layer reads the pooled features, so class activation maps are undefined.")


# --------------------------------------------------------------------------------------------
# Legacy (Keras 2 .h5) weights
# --------------------------------------------------------------------------------------------

def _is_hdf5(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _open_h5(path: str | os.PathLike):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ModelError(f"the HDF5 model file is truncated or damaged ({str(err).splitlines()[0][:120]}).",
                         file=str(path), fix="download or copy the file again.") from None


def _weights_group(f):
    if "layer_names" not in f.attrs and "model_weights" in f:
        return f["model_weights"]
    return f


def read_h5_weights(path: str | os.PathLike) -> list[tuple[str, list[np.ndarray]]]:
    """Every layer that has weights in a Keras 2/3 .h5 file, in saved (topological) order."""
    with _open_h5(path) as f:
        group = _weights_group(f)
        if "layer_names" not in group.attrs:
            raise ModelError("the HDF5 file holds no Keras weights.", file=str(path),
                             fix="use a model saved with Keras (model.save or save_weights).")
        out = []
        try:
            for name in (_decode(n) for n in group.attrs["layer_names"]):
                layer = group[name]
                names = [_decode(w) for w in layer.attrs.get("weight_names", [])]
                if names:
                    out.append((name, [np.asarray(layer[w]) for w in names]))
        except (KeyError, OSError) as err:
            raise ModelError(f"the HDF5 weights are incomplete or damaged ({err}).", file=str(path),
                             fix="download or copy the file again.") from None
        return out


def _h5_layer_names(path: str | os.PathLike) -> list[str]:
    with _open_h5(path) as f:
        group = _weights_group(f)
        return [_decode(n) for n in group.attrs.get("layer_names", [])]


def load_weights_topological(model: "keras.Model", path: str | os.PathLike, *,
                             allow_backbone_only: bool = False) -> int:
    """Copy .h5 weights into `model` by layer ORDER (never by name), checking every shape.

    With allow_backbone_only, a file covering only the first layers (a backbone such as the
    course's densenet.hdf5) fills those and leaves the head as initialised. Returns the number of
    layers loaded; ModelError names the first layer that does not fit.
    """
    if not Path(path).is_file():
        raise ModelError("the weights file does not exist.", file=str(path))
    if not _is_hdf5(path):
        raise ModelError("not an HDF5 (.h5) weights file.", file=str(path),
                         fix="use a Keras .h5 file such as the course's densenet.hdf5.")
    saved = read_h5_weights(path)
    targets = [layer for layer in model.layers if layer.weights]
    if len(saved) != len(targets) and not (allow_backbone_only and 0 < len(saved) < len(targets)):
        raise ModelError(f"the file has weights for {len(saved)} layers but the model has {len(targets)}: "
                         "it is a different architecture.", file=str(path),
                         fix="use weights saved from the same backbone (DenseNet121 or small_cnn).")
    plan = []
    for k, ((saved_name, values), layer) in enumerate(zip(saved, targets)):
        variables = list(layer.trainable_weights) + list(layer.non_trainable_weights)
        shapes = [tuple(v.shape) for v in variables]
        if [tuple(v.shape) for v in values] != shapes:
            raise ModelError(f"layer #{k} does not fit: file layer '{saved_name}' has weight shapes "
                             f"{[tuple(v.shape) for v in values]}, model layer '{layer.name}' expects {shapes}.",
                             file=str(path), fix="use weights saved from the same architecture and label count.")
        plan.append((variables, values))
    for variables, values in plan:  # assign only after everything was checked
        for variable, value in zip(variables, values):
            variable.assign(value.astype(variable.dtype, copy=False))
    return len(plan)


def _scan_unsafe(config: Any) -> str | None:
    """Class name of the first unsafe layer (Lambda: arbitrary Python code) in a model config."""
    if isinstance(config, Mapping):
        if config.get("class_name") in _UNSAFE_LAYERS:
            return str(config["class_name"])
        for value in config.values():
            found = _scan_unsafe(value)
            if found:
                return found
    elif isinstance(config, (list, tuple)):
        for value in config:
            found = _scan_unsafe(value)
            if found:
                return found
    return None


def _layer_names_from_config(config: Any) -> list[str]:
    names: list[str] = []
    if isinstance(config, Mapping):
        cfg = config.get("config")
        if isinstance(cfg, Mapping) and isinstance(cfg.get("layers"), list):
            for layer in cfg["layers"]:
                if isinstance(layer, Mapping):
                    names.append(str(layer.get("name") or layer.get("config", {}).get("name", "")))
                    names.extend(_layer_names_from_config(layer))
    return names


def _guess_backbone(names: Sequence[str]) -> str | None:
    if any(n.startswith("conv5_block16") for n in names):
        return "densenet121"
    if SMALL_CNN_FEATURES in names and "block1_conv" in names:
        return "small_cnn"
    return None


# --------------------------------------------------------------------------------------------
# Loading and saving
# --------------------------------------------------------------------------------------------

def reorder_outputs(probs: np.ndarray, from_labels: Sequence[str], to_labels: Sequence[str] = LABELS) -> np.ndarray:
    """Reorder (N, len(from_labels)) columns to `to_labels`; labels the model lacks become NaN."""
    probs = np.asarray(probs, dtype=np.float32)
    source = [canonical_label(label) for label in from_labels]
    if probs.ndim != 2 or probs.shape[1] != len(source):
        raise ModelError(f"got {probs.shape[-1] if probs.ndim else 0} outputs for {len(source)} labels.")
    out = np.full((probs.shape[0], len(to_labels)), np.nan, dtype=np.float32)
    for j, label in enumerate(to_labels):
        key = canonical_label(label)
        if key in source:
            out[:, j] = probs[:, source.index(key)]
    return out


@dataclass
class LoadedModel:
    """A Keras model with its info; predict() returns probabilities in the canonical LABELS order."""

    model: Any
    info: ModelInfo
    path: str | None = None

    def predict_model_order(self, x: np.ndarray, *, batch_size: int = 16) -> np.ndarray:
        """Raw outputs (N, len(info.labels)) for already prepared inputs (N, S, S, 3)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (self.info.input_size, self.info.input_size, 3):
            raise ModelError(f"prepared inputs must be (N, {self.info.input_size}, {self.info.input_size}, 3), "
                             f"got {x.shape}.", fix="use predict() with [0, 1] images of any size.")
        chunks = [np.asarray(self.model.predict_on_batch(x[i:i + batch_size]), dtype=np.float32)
                  for i in range(0, len(x), max(1, int(batch_size)))]
        if not chunks:
            return np.zeros((0, len(self.info.labels)), dtype=np.float32)
        return np.concatenate(chunks, axis=0)

    def predict_prepared(self, x: np.ndarray, *, batch_size: int = 16) -> np.ndarray:
        """Probabilities (N, 14) in LABELS order for inputs already resized and normalized."""
        return reorder_outputs(self.predict_model_order(x, batch_size=batch_size), self.info.labels)

    def prepare(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """[0, 1] grayscale images of any size -> model inputs, exactly as in training."""
        if not self.info.normalization.fitted:
            raise ModelError("this model uses 'dataset' normalization but its mean/std are unknown.",
                             file=self.path,
                             fix="pass ModelInfo with Normalization.dataset(mean, std), e.g. from "
                                 "cxrcore.pipeline.estimate_normalization on the training split.")
        return prepare_images(images, self.info.input_size, self.info.normalization)

    def predict(self, images: Sequence[np.ndarray] | np.ndarray, *, batch_size: int = 16) -> np.ndarray:
        """Probabilities (N, 14) in LABELS order for [0, 1] grayscale images (H, W) of any size.

        Images are resized and normalized with the model's own info; columns of labels the model
        does not predict are NaN.
        """
        if isinstance(images, np.ndarray) and images.ndim == 2:
            images = images[None]
        if len(images) == 0:
            return np.zeros((0, len(LABELS)), dtype=np.float32)
        out = []
        for i in range(0, len(images), max(1, int(batch_size))):
            out.append(self.predict_prepared(self.prepare(images[i:i + batch_size]), batch_size=batch_size))
        return np.concatenate(out, axis=0)


    def predict_paths(self, paths: Sequence[str | os.PathLike], *, batch_size: int = 32,
                      max_pixels: int | None = None) -> np.ndarray:
        """Probabilities (N, 14) in LABELS order for image files, decoded in parallel by the tf.data pipeline.

        For evaluating whole splits; same preprocessing as `predict` and as training.
        """
        from cxrcore.images import DEFAULT_MAX_PIXELS
        from cxrcore.pipeline import image_dataset

        if not self.info.normalization.fitted:
            self.prepare([])  # raises the explanatory ModelError
        if len(paths) == 0:
            return np.zeros((0, len(LABELS)), dtype=np.float32)
        ds = image_dataset([os.fspath(p) for p in paths], input_size=self.info.input_size, batch_size=batch_size,
                           normalization=self.info.normalization, memory_cache=False,
                           max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
        raw = np.asarray(self.model.predict(ds, verbose=0), dtype=np.float32)
        return reorder_outputs(raw, self.info.labels)


def _check_outputs(model: Any, info: ModelInfo, path: str) -> None:
    shape = tuple(model.output.shape) if not isinstance(model.output, (list, tuple)) else None
    if shape is None or len(shape) != 2:
        raise ModelError(f"the model must have one output of shape (batch, labels), got {model.output}.",
                         file=path)
    if shape[1] != len(info.labels):
        raise ModelError(f"the model has {shape[1]} outputs but its label list has {len(info.labels)} labels.",
                         file=path, fix=f"fix the labels in {sidecar_path(path).name} or pass the right ModelInfo.")
    in_shape = tuple(model.input.shape) if not isinstance(model.input, (list, tuple)) else None
    if in_shape is None or len(in_shape) != 4 or in_shape[-1] != 3:
        raise ModelError(f"the model must take (batch, height, width, 3) images, got input {in_shape}.", file=path)
    if in_shape[1] is not None and in_shape[1:3] != (info.input_size, info.input_size):
        raise ModelError(f"the model takes {in_shape[1]}x{in_shape[2]} images but its info says "
                         f"{info.input_size}x{info.input_size}.", file=path,
                         fix=f"set input_size in {sidecar_path(path).name}.")


def _load_keras_zip(path: Path) -> Any:
    import keras

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if "config.json" not in names:
                raise ModelError("the zip file is not a Keras model (no config.json).", file=str(path))
            config = json.loads(zf.read("config.json"))
            bad = zf.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise ModelError(f"the .keras file is truncated or damaged ({type(err).__name__}).", file=str(path),
                         fix="download or copy the file again.") from None
    if bad is not None:
        raise ModelError(f"the .keras file is damaged (bad entry {bad}).", file=str(path))
    unsafe = _scan_unsafe(config)
    if unsafe:
        raise ModelError(f"the model contains a {unsafe} layer, which runs arbitrary Python code on load; "
                         "refused.", file=str(path), fix="rebuild the model without Lambda layers.")
    if path.suffix.lower() != ".keras":
        raise ModelError("a zipped Keras model must have the .keras suffix.", file=str(path),
                         fix=f"rename it to {path.with_suffix('.keras').name}.")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # keras raises ValueError/TypeError/KeyError for bad configs
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelError(f"the model cannot be rebuilt safely ({type(err).__name__}: {first}).", file=str(path),
                         fix="save it with Keras 3 from standard layers (no custom or Lambda layers).") from None


def _load_h5(path: Path, info: ModelInfo | None) -> tuple[Any, ModelInfo | None]:
    """Keras 2/3 .h5: rebuild our architecture and load weights topologically."""
    import keras

    with _open_h5(path) as f:
        raw = f.attrs.get("model_config")
        keras_version = _decode(f.attrs.get("keras_version", b""))
        has_weights = "layer_names" in f.attrs or "model_weights" in f
    config = None
    if raw is not None:
        try:
            config = json.loads(_decode(raw))
        except json.JSONDecodeError:
            raise ModelError("the model configuration inside the .h5 file is damaged.", file=str(path)) from None
        unsafe = _scan_unsafe(config)
        if unsafe:
            raise ModelError(f"the model contains a {unsafe} layer, which runs arbitrary Python code on load; "
                             "refused.", file=str(path), fix="rebuild the model without Lambda layers.")
    if not has_weights:
        raise ModelError("the HDF5 file holds no Keras weights.", file=str(path))
    saved = read_h5_weights(path)
    names = _layer_names_from_config(config) if config else _h5_layer_names(path)
    backbone = _guess_backbone(names) or _guess_backbone([name for name, _ in saved])
    if not saved:
        raise ModelError("the HDF5 file holds no layer weights.", file=str(path))
    if backbone is None:
        if config is None:
            raise ModelError("unknown architecture in this weights-only file.", file=str(path),
                             fix="use DenseNet121 or small_cnn weights, or a full .keras model.")
        try:  # other architectures saved as full models: Keras' own legacy loader, safe mode
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ModelError(f"unsupported architecture in this .h5 file ({first}).", file=str(path),
                             fix="use DenseNet121 or small_cnn, or save the model as .keras.") from None
        return model, info
    last = saved[-1][1]
    if len(last) != 2 or last[0].ndim != 2:
        raise ModelError("the file holds backbone weights only (no Dense classification head), like the "
                         "course's densenet.hdf5.", file=str(path),
                         fix="build a model with cxrcore.model.build_model(weights=this_file) and train it.")
    n_outputs = int(last[0].shape[1])
    if info is None and backbone == "densenet121" and n_outputs == len(COURSE_LABEL_ORDER) \
            and not keras_version.startswith("3"):
        info = course_model_info()  # a Keras 2 DenseNet121 with 14 outputs and no info: the course file
    size = info.input_size if info is not None else 320
    final_relu = backbone == "densenet121" and "relu" in names
    model = _build(n_outputs, size, backbone=backbone, final_relu=final_relu, name=None)
    load_weights_topological(model, path)
    return model, info


def load_model(path: str | os.PathLike, info: ModelInfo | None = None) -> LoadedModel:
    """Load a .keras or .h5 model with its info (argument > `<model>.json` > inside the file > course default).

    .keras files are rebuilt with safe_mode=True (Lambda layers refused); .h5 files (course Keras 2
    files included) are rebuilt from our architecture and filled topologically. Every failure,
    including a label list that does not match the outputs, is a ModelError.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError("the model file does not exist.", file=str(p), fix="check the path.")
    if not p.is_file():
        raise ModelError("this is a folder, not a model file.", file=str(p))
    if p.stat().st_size == 0:
        raise ModelError("the model file is empty (0 bytes).", file=str(p), fix="copy or download it again.")
    if info is None:
        info = read_model_info(p)
    with open(p, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"PK\x03\x04"):
        model = _load_keras_zip(p)
    elif magic == b"\x89HDF\r\n\x1a\n":
        model, info = _load_h5(p, info)
    elif magic.startswith(b"PK"):
        raise ModelError("the .keras file is truncated or damaged.", file=str(p))
    else:
        raise ModelError("not a Keras model file (.keras or .h5).", file=str(p),
                         fix="choose a model saved with Keras (model.save).")
    if info is None:
        raise ModelError("the model has no label list (no info JSON beside it or inside it).", file=str(p),
                         fix=f"write {sidecar_path(p).name} with its labels in output order, "
                             "or pass ModelInfo to load_model.")
    _check_outputs(model, info, str(p))
    return LoadedModel(model=model, info=info, path=str(p))


def save_model(model: "keras.Model", info: ModelInfo, path: str | os.PathLike) -> Path:
    """Save as .keras with its info inside and in `<model>.json`; atomic (temp file, then os.replace).

    Raises ModelError when the info does not match the model (output count, input size).
    """
    p = Path(path)
    if p.suffix.lower() != ".keras":
        raise ModelError("models are saved in the Keras 3 format and need the .keras suffix.", file=str(p),
                         fix=f"save to {p.with_suffix('.keras').name}.")
    _check_outputs(model, info, str(p))
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.stem}.", suffix=".tmp.keras", dir=p.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as zf:
            zf.writestr(_INFO_ENTRY, info.to_json())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_text(sidecar_path(p), info.to_json())
    return p


__all__ = ["BACKBONES", "COURSE_BACKBONE", "ImagenetWeights", "LoadedModel", "ModelInfo", "build_model",
           "cached_imagenet_weights", "cam_layers", "course_backbone", "course_model_info", "find_imagenet_weights",
           "imagenet_weights_reachable", "keras_cache_dirs", "load_model", "load_weights_topological",
           "logits_model", "read_model_info", "reorder_outputs", "save_model", "sidecar_path"]
