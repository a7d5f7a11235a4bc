"""The classifier: an ImageNet backbone (DenseNet121, ResNet50, EfficientNetV2-S, ViT-B/16) or a tiny CNN
for tests, then global average pooling (the ViT: its class token) and 14 sigmoid outputs.

Every model travels with a `ModelInfo` (label order, input size, normalization), saved as JSON
beside the model file and inside it. Every backbone takes inputs on the ImageNet mean/std scale
(what DenseNet121's weights expect, what "imagenet" normalization gives exactly and "sample" /
"dataset" approximately); ResNet50, EfficientNetV2-S and the ViT, whose weights expect another
scale, start with a fixed `Rescaling` layer ("input_scaling", see `input_scaling`). The course's
Keras 2 files (`densenet.hdf5`, backbone weights; `pretrained_model.h5`, full model) are loaded
TOPOLOGICALLY, layer by layer in order, never by name: Keras 2 and Keras 3 name DenseNet layers
differently ("conv1/conv" vs "conv1_conv"), so loading by name silently leaves weights random.
Course files store no label list; their outputs are in COURSE_LABEL_ORDER and
`LoadedModel.predict` always returns the canonical LABELS order. The ViT is keras-hub's ViTBackbone.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Mapping, Sequence

import numpy as np

from cxrcore.data.labels import COURSE_LABEL_ORDER, LABELS, canonical_label
from cxrcore.data.pipeline import Normalization, prepare_images
from cxrcore.errors import ConfigError, ModelError
from cxrcore.fileio import (MAX_JSON_BYTES, MiB, atomic_write_text, limit, make_temp, open_for_reading, parse_json,
                            read_file_bytes, read_json_file)

if TYPE_CHECKING:  # pragma: no cover
    import keras

BACKBONES = ("densenet121", "resnet50", "efficientnetv2_s", "vit_b16", "small_cnn")
#: How people read each backbone's name (pages, logs, messages).
BACKBONE_LABELS = {"densenet121": "DenseNet121", "resnet50": "ResNet50", "efficientnetv2_s": "EfficientNetV2-S",
                   "vit_b16": "ViT-B/16", "small_cnn": "small CNN"}
#: Names of the head layers in models built here (CAMs and training rely on them).
POOL_LAYER, LOGITS_LAYER, OUTPUT_LAYER = "avg_pool", "logits", "predictions"
#: Last feature map of the small CNN (DenseNet's is "bn", or "relu" in newer Keras 2 files).
SMALL_CNN_FEATURES = "features"
#: The fixed first layer mapping ImageNet-normalized inputs to the scale a backbone's weights expect.
INPUT_SCALING_LAYER = "input_scaling"
#: The ViT backbone's layer name inside models built here.
VIT_LAYER = "vit_b16"
INFO_FORMAT = 1
_INFO_ENTRY = "cxrcore_info.json"  # inside .keras zips
_INFO_ATTR = "cxrcore_info"        # root attribute of .h5 files
_UNSAFE_LAYERS = ("Lambda", "TFOpLambda", "SlicingOpLambda")
#: The only classes a saved model may take from keras-hub: (module, class name). Anything else is refused.
_KERAS_HUB_CLASSES = {("keras_hub.src.models.vit.vit_backbone", "ViTBackbone")}
_KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class KerasWeightsFile:
    """A keras.applications ImageNet backbone file (include_top=False) as Keras' get_file keeps it in its cache."""

    file: str
    url: str
    md5: str  # the file_hash keras.applications passes to get_file
    megabytes: int


#: What build_model(weights="imagenet") downloads once per backbone into the Keras cache (~/.keras/models).
IMAGENET_FILES: dict[str, KerasWeightsFile] = {
    "densenet121": KerasWeightsFile("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                    _KERAS_APPLICATIONS + "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                    "30ee3e1110167f948a6b9946edeeb738", 30),
    "resnet50": KerasWeightsFile("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                 _KERAS_APPLICATIONS + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                 "4d473c1dd8becc155b73f8504c6f6626", 95),
    "efficientnetv2_s": KerasWeightsFile("efficientnetv2-s_notop.h5",
                                         _KERAS_APPLICATIONS + "efficientnet_v2/efficientnetv2-s_notop.h5",
                                         "af0682fb74e8c54910f2d4393339c070", 80),
}


@dataclass(frozen=True)
class ViTConfig:
    """A ViT's shape: ViT-B/16 by default (patch 16, 12 layers, width 768, 12 heads, MLP 3072)."""

    patch_size: int = 16
    num_layers: int = 12
    hidden_dim: int = 768
    num_heads: int = 12
    mlp_dim: int = 3072


#: The ViT built for backbone "vit_b16" (tests swap in a tiny one).
VIT_CONFIGS: dict[str, ViTConfig] = {"vit_b16": ViTConfig()}
#: keras-hub's ImageNet ViT-B/16 preset (224 px), downloaded by its preset loader from Kaggle Models (~330 MB).
VIT_PRESET = "vit_base_patch16_224_imagenet"
VIT_PRESET_HANDLE = ("keras", "vit", "keras", VIT_PRESET, "4")  # kaggle://keras/vit/keras/<preset>/4
VIT_PRESET_URL = "https://www.kaggle.com/models/keras/vit"  # answers when the preset can be downloaded
VIT_PRESET_SIZE = 224
VIT_PRESET_MEGABYTES = 330
#: Where a copied keras-hub preset folder (config.json + model.weights.h5) goes, relative to the models root.
VIT_PRESET_DIR = Path("keras-hub") / VIT_PRESET
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
    #: The dataset the model was trained on (its folder name) and what its images are
    #: (`catalog.DATA_SYNTHETIC` / `catalog.DATA_REAL`); "" when unknown (older files, foreign models).
    dataset: str = ""
    data_kind: str = ""

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
                "normalization": self.normalization.to_dict(), "metadata": self.metadata,
                "dataset": self.dataset, "data_kind": self.data_kind}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelInfo":
        """Inverse of to_dict; ConfigError on missing or invalid fields."""
        if not isinstance(data, Mapping) or "labels" not in data:
            raise ConfigError("model info must be a JSON object with at least 'labels'.")
        return cls(labels=tuple(data["labels"]), input_size=data.get("input_size", 320),
                   normalization=Normalization.from_dict(data.get("normalization", "sample")),
                   name=str(data.get("name", "model")), origin=str(data.get("origin", "trained")),
                   backbone=str(data.get("backbone", "densenet121")), metadata=dict(data.get("metadata") or {}),
                   dataset=str(data.get("dataset") or ""), data_kind=str(data.get("data_kind") or ""))

    def to_json(self) -> str:
        """Pretty JSON text (the `<model>.json` sidecar)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, file: str | None = None) -> "ModelInfo":
        """Parse `to_json` output; ModelError names the file when it is not valid."""
        data = parse_json(text, error=ModelError, file=file, what="model info")
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ModelError(f"the model info is invalid: {err.problem}", file=file, fix=err.fix) from None


def course_model_info(normalization: Normalization | None = None, *, input_size: int = 320) -> ModelInfo:
    """Info for the course's Keras 2 files: COURSE_LABEL_ORDER outputs, 320x320, `dataset` normalization.

    The course fits mean/std on 100 training images at run time, so they are not in the file: pass
    `estimate_normalization(train_split, ...)`; without it predict() refuses with a clear error.
    """
    from cxrcore.data.catalog import DATA_REAL

    return ModelInfo(labels=COURSE_LABEL_ORDER, input_size=input_size,
                     normalization=normalization or Normalization("dataset"),
                     name="course-densenet121", origin="course", backbone="densenet121",
                     metadata={"source": "Coursera AI for Medical Diagnosis, week 1 (Keras 2)"},
                     dataset="NIH ChestX-ray14", data_kind=DATA_REAL)  # the course trained it on NIH images


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """`models/x.keras` -> `models/x.json`: where a model's info lives beside it."""
    return Path(model_path).with_suffix(".json")


def read_model_info(model_path: str | os.PathLike) -> ModelInfo | None:
    """The model's info from its JSON sidecar, else from inside the file; None when it has none."""
    path = Path(model_path)
    open_for_reading(path, error=ModelError, what="model file").close()  # a pipe or /dev/zero: refused here
    side = sidecar_path(path)
    if side.exists():
        return ModelInfo.from_json(read_file_bytes(side, error=ModelError, what="model info",
                                                   max_bytes=limit(*MAX_JSON_BYTES), env=MAX_JSON_BYTES[0]),
                                   file=str(side))
    text = None
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                if _INFO_ENTRY in zf.namelist():
                    if zf.getinfo(_INFO_ENTRY).file_size > limit(*MAX_JSON_BYTES):
                        raise ModelError("the model info inside the file is too large.", file=str(path))
                    text = zf.read(_INFO_ENTRY)
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


def _md5(path: Path) -> str | None:
    """MD5 of a file, hashed once per (path, size, mtime); None when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _MD5S:
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _MD5S[key] = digest.hexdigest()
    return _MD5S[key]


def cached_imagenet_weights(backbone: str = "densenet121") -> Path | None:
    """The backbone's ImageNet weights file in the Keras cache when it is complete (its MD5 is checked,
    as Keras does before using it), else None (also for backbones keras.applications does not provide)."""
    spec = IMAGENET_FILES.get(backbone)
    if spec is None:
        return None
    for folder in keras_cache_dirs():
        path = folder / spec.file
        if _md5(path) == spec.md5:
            return path
    return None


def url_reachable(url: str, timeout_s: float = 3.0) -> bool:
    """True when `url` answers a HEAD request within timeout_s; never tried when CXR_OFFLINE=1.

    The answer is kept for a minute when negative (a user who just connected retries soon) and ten
    minutes when positive, so page reruns do not wait on the network.
    """
    if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
        return False
    checked = _REACHABLE.get(url)
    if checked is not None and time.monotonic() - checked[0] < (600.0 if checked[1] else 60.0):
        return checked[1]
    import urllib.request

    try:
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - fixed https URLs
            ok = 200 <= response.status < 400
    except Exception:  # DNS failure, refused, timeout, proxy, HTTP error: not reachable now
        ok = False
    _REACHABLE[url] = (time.monotonic(), ok)
    return ok


def weights_url(backbone: str) -> str | None:
    """Where the backbone's pretrained weights are downloaded from (None for the small CNN)."""
    if backbone == "vit_b16":
        return VIT_PRESET_URL
    spec = IMAGENET_FILES.get(backbone)
    return spec.url if spec else None


def imagenet_weights_reachable(timeout_s: float = 3.0, *, backbone: str = "densenet121") -> bool:
    """True when the backbone's pretrained weights can be downloaded now (see `url_reachable`)."""
    url = weights_url(backbone)
    return url is not None and url_reachable(url, timeout_s)


def course_backbone(models_root: str | os.PathLike) -> Path | None:
    """models_root/nih/densenet.hdf5 (the course's ImageNet-pretrained backbone) when it is an HDF5 file."""
    path = Path(models_root) / COURSE_BACKBONE
    return path.resolve() if path.is_file() and _is_hdf5(path) else None


def vit_preset_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` is not a keras-hub ViT-B/16 preset (config.json of a ViTBackbone with patch 16, 12 layers,
    width 768, 12 heads, MLP 3072, and model.weights.h5), or None when it is one. Reads JSON only."""
    path = Path(folder)
    config_file, weights_file = path / "config.json", path / "model.weights.h5"
    if not config_file.is_file() or not weights_file.is_file():
        return f"{path} is not a keras-hub preset folder (it needs config.json and model.weights.h5)."
    try:
        data = read_json_file(config_file, error=ModelError, what="preset config")
    except (OSError, ModelError):
        return f"{config_file} is not valid JSON."
    config = data.get("config") if isinstance(data, Mapping) else None
    if not isinstance(data, Mapping) or data.get("class_name") != "ViTBackbone" or not isinstance(config, Mapping):
        return f"{config_file} does not describe a keras-hub ViTBackbone."
    want = VIT_CONFIGS["vit_b16"]
    patch = config.get("patch_size")
    patch = patch[0] if isinstance(patch, (list, tuple)) and patch else patch
    got = ViTConfig(patch_size=patch, num_layers=config.get("num_layers"), hidden_dim=config.get("hidden_dim"),
                    num_heads=config.get("num_heads"), mlp_dim=config.get("mlp_dim"))
    if got != want:
        return f"{path} holds another ViT ({got}), not the ViT-B/16 this backbone builds ({want})."
    return None


def kagglehub_cache_dir() -> Path:
    """Where keras-hub's preset loader (kagglehub) keeps the ViT-B/16 preset: $KAGGLEHUB_CACHE, else
    ~/.cache/kagglehub, then models/<owner>/<model>/<framework>/<variation>/<version>."""
    root = os.environ.get("KAGGLEHUB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kagglehub")
    return Path(root, "models", *VIT_PRESET_HANDLE)


@dataclass(frozen=True)
class ImagenetWeights:
    """Where a backbone's ImageNet weights come from: "cache" (Keras' or keras-hub's), "course file" (the
    course's DenseNet121 backbone), "preset folder" (a keras-hub preset under the models root), "download"
    (reachable now) or "unavailable"; `path` is the local file or folder, `note` says it in one sentence."""

    source: str
    path: Path | None
    note: str


def find_imagenet_weights(models_root: str | os.PathLike, *, network: bool = True,
                          backbone: str = "densenet121") -> ImagenetWeights:
    """The first usable source of the backbone's ImageNet weights, without a download when one is on disk.

    keras.applications backbones: the Keras cache, then (DenseNet121 only) the course's backbone file in
    the models root, then a download when the URL answers. ViT-B/16: a keras-hub preset folder in the
    models root (models/keras-hub/vit_base_patch16_224_imagenet), keras-hub's own cache, then a download.
    """
    if backbone == "vit_b16":
        return _find_vit_preset(Path(models_root), network=network)
    spec = IMAGENET_FILES.get(backbone)
    if spec is None:
        return ImagenetWeights("unavailable", None, f"{backbone} has no ImageNet weights.")
    label = BACKBONE_LABELS.get(backbone, backbone)
    cached = cached_imagenet_weights(backbone)
    if cached is not None:
        return ImagenetWeights("cache", cached, f"ImageNet weights of {label} from the Keras cache ({cached}).")
    course = course_backbone(models_root) if backbone == "densenet121" else None
    if course is not None:
        return ImagenetWeights("course file", course, f"ImageNet weights from the course's DenseNet121 backbone "
                                                      f"{course} (not in the Keras cache, so no download).")
    if network and imagenet_weights_reachable(backbone=backbone):
        return ImagenetWeights("download", None, f"ImageNet weights of {label} are downloaded (about "
                                                 f"{spec.megabytes} MB) when training starts and kept in the "
                                                 "Keras cache.")
    course_note = f", no {Path(models_root) / COURSE_BACKBONE}" if backbone == "densenet121" else ""
    return ImagenetWeights("unavailable", None,
                           f"the ImageNet weights of {label} are not on this computer (no {spec.file} in "
                           f"{keras_cache_dirs()[0]}{course_note}) and cannot be downloaded now (no internet "
                           "connection).")


def _find_vit_preset(models_root: Path, *, network: bool) -> ImagenetWeights:
    local = models_root / VIT_PRESET_DIR
    local_problem = vit_preset_problem(local) if local.is_dir() else None
    if local.is_dir() and local_problem is None:
        return ImagenetWeights("preset folder", local.resolve(), f"ImageNet weights of ViT-B/16 from the keras-hub "
                                                                 f"preset folder {local.resolve()}.")
    cache = kagglehub_cache_dir()
    if cache.is_dir() and vit_preset_problem(cache) is None:
        return ImagenetWeights("cache", cache, f"ImageNet weights of ViT-B/16 from keras-hub's cache ({cache}).")
    if network and imagenet_weights_reachable(backbone="vit_b16"):
        return ImagenetWeights("download", None, f"ImageNet weights of ViT-B/16 (keras-hub preset {VIT_PRESET}) "
                                                 f"are downloaded (about {VIT_PRESET_MEGABYTES} MB) when training "
                                                 "starts and kept in keras-hub's cache.")
    there = f"{local_problem[0].lower()}{local_problem[1:-1]}; " if local_problem else ""
    return ImagenetWeights("unavailable", None,
                           f"the ImageNet weights of ViT-B/16 are not on this computer ({there}no keras-hub preset "
                           f"in {models_root / VIT_PRESET_DIR} or {cache}) and cannot be downloaded now (no "
                           "internet connection to Kaggle Models, where keras-hub's preset loader gets them).")


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

def _head(features, n_outputs: int):
    import keras

    x = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER)(features)
    return _dense_head(x, n_outputs)


def _dense_head(pooled, n_outputs: int):
    import keras

    logits = keras.layers.Dense(n_outputs, name=LOGITS_LAYER, dtype="float32")(pooled)
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


def input_scaling(backbone: str) -> tuple[list[float], list[float]] | None:
    """(scale, offset) per channel taking ImageNet-normalized inputs x = (p - mean) / std (p in [0, 1]) to the
    scale the backbone's pretrained weights expect; None for DenseNet121 (its weights expect x itself) and
    the small CNN.

    ResNet50 ("caffe"): 255 p minus the BGR channel means. EfficientNetV2-S: 255 p / 128 - 1, as its
    include_preprocessing Rescaling does; the ViT: 255 p / 127.5 - 1, as keras-hub's ViT image converter
    does. Channels stay in order: the images here are grayscale repeated three times, so BGR is RGB.
    """
    from cxrcore.data.pipeline import IMAGENET_MEAN, IMAGENET_STD

    if backbone == "resnet50":
        caffe_means = (103.939, 116.779, 123.68)
        return ([255.0 * s for s in IMAGENET_STD],
                [255.0 * m - c for m, c in zip(IMAGENET_MEAN, caffe_means)])
    k = {"efficientnetv2_s": 255.0 / 128.0, "vit_b16": 255.0 / 127.5}.get(backbone)
    if k is None:
        return None
    return [k * s for s in IMAGENET_STD], [k * m - 1.0 for m in IMAGENET_MEAN]


def build_model(labels: Sequence[str] = LABELS, input_size: int = 320, weights: str | os.PathLike | None = None,
                *, backbone: str = "densenet121", final_relu: bool = False, name: str | None = None,
                vit_config: ViTConfig | None = None) -> "keras.Model":
    """A backbone (see BACKBONES) + GlobalAveragePooling2D + Dense(len(labels)) + sigmoid, float32 head.

    The DenseNet head sits on its final "bn" output, as in the course's Keras 2 model (Keras 3's
    include_top=False adds a "relu" after it; final_relu=True keeps it, for files that have it).
    ResNet50 and EfficientNetV2-S are keras.applications' (include_top=False); the ViT is keras-hub's
    ViTBackbone (vit_config, default VIT_CONFIGS["vit_b16"]), its class token feeding the Dense head.
    weights: None, "imagenet" (downloads unless cached; backbone only) or a file: for keras.applications
    backbones a .h5 of backbone or full-model weights, loaded topologically (`load_weights_topological`);
    for the ViT a keras-hub ViT-B/16 preset folder. The Dense layer is "logits" and the sigmoid
    "predictions", so `logits_model` can train with the stable from-logits loss.
    """
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}.", fix=f"use one of {', '.join(BACKBONES)}.")
    if backbone == "small_cnn" and weights == "imagenet":
        raise ConfigError("the small CNN has no ImageNet weights.", fix="use weights=None.")
    vit = vit_config or VIT_CONFIGS["vit_b16"]
    model = _build(len(labels), int(input_size), backbone=backbone, final_relu=final_relu, name=name,
                   imagenet=weights == "imagenet" and backbone != "vit_b16", vit_config=vit)
    if backbone == "vit_b16" and weights is not None:
        load_vit_preset(model, weights)
    elif weights is not None and weights != "imagenet":
        load_weights_topological(model, weights, allow_backbone_only=True)
    return model


def _build(n_outputs: int, size: int, *, backbone: str, final_relu: bool, name: str | None,
           imagenet: bool = False, vit_config: ViTConfig | None = None) -> "keras.Model":
    import keras

    if n_outputs < 1:
        raise ConfigError("a model needs at least one label.")
    if backbone == "small_cnn":
        return _small_cnn(size, n_outputs, name or "small_cnn")
    if size < 32:
        raise ConfigError(f"{BACKBONE_LABELS[backbone]} needs inputs of at least 32x32, got {size}.")
    weights = "imagenet" if imagenet else None
    if backbone == "densenet121":
        base = keras.applications.DenseNet121(include_top=False, weights=weights, input_shape=(size, size, 3))
        features = base.get_layer("relu" if final_relu else "bn").output
        return keras.Model(base.input, _head(features, n_outputs), name=name or "densenet121")
    inputs = keras.Input((size, size, 3), name="image")
    scale, offset = input_scaling(backbone)
    x = keras.layers.Rescaling(scale, offset, name=INPUT_SCALING_LAYER)(inputs)
    if backbone == "resnet50":
        base = keras.applications.ResNet50(include_top=False, weights=weights, input_tensor=x)
        return keras.Model(inputs, _head(base.output, n_outputs), name=name or backbone)
    if backbone == "efficientnetv2_s":
        base = keras.applications.EfficientNetV2S(include_top=False, weights=weights, input_tensor=x,
                                                  include_preprocessing=False)
        return keras.Model(inputs, _head(base.output, n_outputs), name=name or backbone)
    tokens = _vit_backbone(size, vit_config or VIT_CONFIGS["vit_b16"])(x)
    return keras.Model(inputs, _dense_head(tokens[:, 0], n_outputs), name=name or backbone)


def _keras_hub():
    try:
        import keras_hub
    except ImportError:
        raise ModelError("the ViT-B/16 backbone needs the keras-hub package, which is not installed.",
                         fix="install the project's requirements (pip install -r requirements.txt), which pin "
                             "keras-hub.") from None
    return keras_hub


def _vit_backbone(size: int, config: ViTConfig):
    if size % config.patch_size:
        raise ConfigError(f"the ViT cuts images into {config.patch_size}x{config.patch_size} patches, so the input "
                          f"size must be a multiple of {config.patch_size}, got {size}.",
                          fix=f"use e.g. {max(config.patch_size, round(size / config.patch_size) * config.patch_size)}.")
    return _keras_hub().models.ViTBackbone(image_shape=(size, size, 3), patch_size=config.patch_size,
                                           num_layers=config.num_layers, num_heads=config.num_heads,
                                           hidden_dim=config.hidden_dim, mlp_dim=config.mlp_dim, name=VIT_LAYER)


def load_vit_preset(model: "keras.Model", source: str | os.PathLike) -> int:
    """Fill the ViT of a model built here from a keras-hub preset: "imagenet" (keras-hub's preset loader,
    downloaded from Kaggle Models unless cached) or a local preset folder; returns the tensors copied.

    The position embeddings are resized (bicubic, on the patch grid) when the model's input size is not
    the preset's 224 px, so any multiple of 16 works. ModelError when the preset is not ViT-B/16.
    """
    import keras

    try:
        target = model.get_layer(VIT_LAYER)
    except ValueError:
        raise ModelError("the model has no ViT backbone (not built with backbone='vit_b16').") from None
    preset = VIT_PRESET if str(source) == "imagenet" else str(source)
    if preset != VIT_PRESET:
        if Path(preset).is_file():
            raise ModelError("ViT-B/16 weights come as a keras-hub preset folder (config.json and "
                             "model.weights.h5), not as a single file.", file=preset,
                             fix=f"give the folder, e.g. models/{VIT_PRESET_DIR.as_posix()}.")
        problem = vit_preset_problem(preset)
        if problem:
            raise ModelError(problem, fix=f"copy keras-hub's {VIT_PRESET} preset folder there.")
    try:
        source_vit = _keras_hub().models.ViTBackbone.from_preset(preset)
    except ModelError:
        raise
    except Exception as err:  # network, Kaggle, missing or damaged files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelError(f"the ViT-B/16 preset could not be loaded ({type(err).__name__}: {first}).", file=preset,
                         fix=f"copy keras-hub's {VIT_PRESET} preset folder to models/{VIT_PRESET_DIR.as_posix()}, "
                             "or train from scratch (initial_weights = \"none\").") from None
    pairs = []
    for part in ("vit_patching_and_embedding", "vit_encoder"):
        src, dst = source_vit.get_layer(part).weights, target.get_layer(part).weights
        if len(src) != len(dst):
            raise ModelError(f"the preset's {part} has {len(src)} weight tensors, the model's {len(dst)}.", file=preset)
        for s_var, d_var in zip(src, dst):
            value = keras.ops.convert_to_numpy(s_var.value)
            if "position_embedding" in d_var.path and value.shape != tuple(d_var.shape):
                value = _resize_positions(value, tuple(d_var.shape))
            if value.shape != tuple(d_var.shape):
                raise ModelError(f"the preset's {s_var.path} has shape {value.shape}, the model expects "
                                 f"{tuple(d_var.shape)}.", file=preset)
            pairs.append((d_var, value))
    for d_var, value in pairs:  # assign only after everything was checked
        d_var.assign(value.astype(d_var.dtype, copy=False))
    return len(pairs)


def _resize_positions(table: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(1 + g*g, width) position embeddings (class token first) resized to (1 + G*G, width) on the patch grid."""
    import keras

    old, new = int(round((table.shape[0] - 1) ** 0.5)), int(round((shape[0] - 1) ** 0.5))
    if old * old + 1 != table.shape[0] or new * new + 1 != shape[0] or table.shape[1] != shape[1]:
        return table  # not a square grid: the caller reports the shape mismatch
    grid = table[1:].reshape(old, old, table.shape[1]).astype(np.float32)
    resized = keras.ops.convert_to_numpy(keras.ops.image.resize(grid, (new, new), interpolation="bicubic"))
    return np.concatenate([table[:1], resized.reshape(new * new, table.shape[1])], axis=0)


def logits_model(model: "keras.Model") -> "keras.Model":
    """Same weights, output before the sigmoid: train it with `loss.WeightedLoss(from_logits=True)`."""
    import keras

    try:
        layer = model.get_layer(LOGITS_LAYER)
    except ValueError:
        raise ModelError(f"the model has no '{LOGITS_LAYER}' layer (not built by cxrcore.train.model.build_model).",
                         fix="train it with the probability loss (from_logits=False).") from None
    return keras.Model(model.input, layer.output, name=f"{model.name}_logits")


def cam_layers(model: "keras.Model") -> tuple[str, str]:
    """(feature map layer, Dense head layer) names for class activation maps.

    Found from the graph: the layer feeding the last GlobalAveragePooling2D, and the Dense layer
    reading the pooled vector, so it also works for models not built here (course files, others).
    A ViT has no such map (it works on patch tokens): ModelError says so; see `has_feature_map`.
    """
    import keras

    if any(_is_vit(layer) for layer in model.layers):
        raise ModelError("a vision transformer (ViT) has no convolutional feature map, so it has no class "
                         "activation maps (CAM, Grad-CAM).", fix="use a gradient saliency method instead.")
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    if not pools:
        raise ModelError("the model has no GlobalAveragePooling2D layer, so it has no class activation maps.")
    pool = pools[-1]
    feature = pool.input._keras_history.operation
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense) and layer.input._keras_history.operation is pool:
            return feature.name, layer.name
    raise ModelError("no Dense layer reads the pooled features, so class activation maps are undefined.")


def has_feature_map(model: "keras.Model") -> bool:
    """True when the model has a convolutional feature map for CAM / Grad-CAM (`cam_layers` works), False for
    a ViT or a model without global pooling: offer gradient saliency only then."""
    try:
        cam_layers(model)
    except ModelError:
        return False
    return True


def _is_vit(layer: Any) -> bool:
    return type(layer).__name__ == "ViTBackbone"


def backbone_layers(model: "keras.Model") -> list[Any]:
    """The backbone's layers in order, input layer first and head excluded: what freeze = "first:N" counts.

    A ViT's nested keras-hub backbone counts as its patch embedding, each transformer block and the
    final norm (the units that hold weights), so "first:N" freezes the embedding and the first blocks.
    """
    head = {POOL_LAYER, LOGITS_LAYER, OUTPUT_LAYER}
    out: list[Any] = []
    for layer in model.layers:
        if layer.name in head:
            continue
        if _is_vit(layer):
            encoder = layer.get_layer("vit_encoder")
            out += [layer.get_layer("vit_patching_and_embedding"), *encoder.encoder_layers, encoder.layer_norm]
        else:
            out.append(layer)
    return out


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


def _keras_hub_classes(config: Any) -> set[tuple[str, str]]:
    """(module, class name) of every keras-hub object a model config names (Keras imports them on load)."""
    found: set[tuple[str, str]] = set()
    if isinstance(config, Mapping):
        module = config.get("module")
        if isinstance(module, str) and module.split(".", 1)[0] in ("keras_hub", "keras_nlp", "keras_cv"):
            found.add((module, str(config.get("class_name"))))
        for value in config.values():
            found |= _keras_hub_classes(value)
    elif isinstance(config, (list, tuple)):
        for value in config:
            found |= _keras_hub_classes(value)
    return found


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
                                 "cxrcore.data.pipeline.estimate_normalization on the training split.")
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
        from cxrcore.data.images import DEFAULT_MAX_PIXELS
        from cxrcore.data.pipeline import image_dataset

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


#: Most a model file may inflate to (CXR_MAX_MODEL_BYTES; ViT-B/16, the largest backbone, is 350 MB) ...
MAX_MODEL_BYTES = ("CXR_MAX_MODEL_BYTES", 2048 * MiB)
#: ... and at most this many times the file's own size beyond 64 MB: weights barely compress (Keras stores
#: them uncompressed), so a 3 MB file claiming 3 GB is a decompression bomb.
MAX_MODEL_RATIO = 20


def _inflation_limit(path: Path) -> int:
    return min(limit(*MAX_MODEL_BYTES), 64 * MiB + MAX_MODEL_RATIO * path.stat().st_size)


def _refuse_inflation(total: int, path: Path, where: str) -> None:
    cap = _inflation_limit(path)
    if total > cap:
        raise ModelError(f"{where} would inflate to {total / MiB:.0f} MB, more than the {cap / MiB:.0f} MB a "
                         f"{path.stat().st_size / MiB:.1f} MB model file may hold (a decompression bomb or a damaged "
                         "file); refused before reading it.", file=str(path),
                         fix=f"use the original model file (the limit is {MAX_MODEL_BYTES[0]}).")


def _check_inflated_size(members: Sequence[zipfile.ZipInfo], path: Path) -> None:
    """Refuse a zip whose members' sizes (central directory) pass the model limit. Python's zipfile never
    reads a member past its declared size (a member that lies fails its CRC), so this bounds every read."""
    _refuse_inflation(sum(max(0, m.file_size) for m in members), path, "its contents")


class _StoredMember(io.RawIOBase):
    """An uncompressed zip member read in place from the archive (seekable, bounded by its size), for h5py:
    Python 3.11's ZipExtFile re-reads a member from its start on every backward seek (12 s for ResNet50)."""

    def __init__(self, handle: BinaryIO, info: zipfile.ZipInfo) -> None:
        super().__init__()
        handle.seek(info.header_offset)
        local = handle.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile("bad local file header")
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        self._handle, self._start, self._size = handle, info.header_offset + 30 + name_len + extra_len, info.file_size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        self._handle.seek(self._start + self._pos)
        data = self._handle.read(n)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


def _check_h5_sizes(handle: Any, path: Path) -> None:
    """Refuse HDF5 weights whose datasets (shape x item size, from the metadata) pass the model limit:
    HDF5 compresses datasets internally, so a small file can hold gigabytes of zeros."""
    import h5py

    total = [0]

    def add(_name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            total[0] += int(np.prod(item.shape, dtype=np.float64)) * item.dtype.itemsize

    try:
        with h5py.File(handle, "r") as f:
            f.visititems(add)
    except (OSError, ValueError, TypeError, KeyError):
        return  # not readable as HDF5: the loader says so with its own message
    _refuse_inflation(total[0], path, "its weights")


def _load_keras_zip(path: Path) -> Any:
    import keras

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if "config.json" not in names:
                raise ModelError("the zip file is not a Keras model (no config.json).", file=str(path))
            _check_inflated_size(zf.infolist(), path)
            if zf.getinfo("config.json").file_size > limit(*MAX_JSON_BYTES):
                raise ModelError("the model's config.json is too large.", file=str(path),
                                 fix=f"check the file, or raise {MAX_JSON_BYTES[0]}.")
            config = parse_json(zf.read("config.json"), error=ModelError, file=str(path), what="the model's config.json")
            bad = zf.testzip()  # reads every member, no further than its declared (now checked) size
            if "model.weights.h5" in names and zf.getinfo("model.weights.h5").compress_type == zipfile.ZIP_STORED:
                with open(path, "rb") as handle:  # read in place: zipfile's own seeks re-read the member
                    _check_h5_sizes(_StoredMember(handle, zf.getinfo("model.weights.h5")), path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise ModelError(f"the .keras file is truncated or damaged ({type(err).__name__}).", file=str(path),
                         fix="download or copy the file again.") from None
    if bad is not None:
        raise ModelError(f"the .keras file is damaged (bad entry {bad}).", file=str(path))
    unsafe = _scan_unsafe(config)
    if unsafe:
        raise ModelError(f"the model contains a {unsafe} layer, which runs arbitrary Python code on load; "
                         "refused.", file=str(path), fix="rebuild the model without Lambda layers.")
    foreign = sorted(_keras_hub_classes(config) - _KERAS_HUB_CLASSES)
    if foreign:
        raise ModelError(f"the model uses {foreign[0][1]} from {foreign[0][0]}; only keras-hub's ViTBackbone is "
                         "accepted from outside Keras.", file=str(path),
                         fix="use a model built here (cxrcore.train.model.build_model) or standard Keras layers.")
    if _keras_hub_classes(config):
        _keras_hub()  # registers ViTBackbone before Keras rebuilds it; ModelError when keras-hub is missing
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

    with open(path, "rb") as handle:
        _check_h5_sizes(handle, path)
    with _open_h5(path) as f:
        raw = f.attrs.get("model_config")
        keras_version = _decode(f.attrs.get("keras_version", b""))
        has_weights = "layer_names" in f.attrs or "model_weights" in f
    config = None
    if raw is not None:
        try:
            config = parse_json(_decode(raw), error=ModelError, file=str(path), what="model configuration")
        except ModelError as err:
            raise ModelError(f"the model configuration inside the .h5 file is damaged ({err.problem})",
                             file=str(path)) from None
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
                         fix="build a model with cxrcore.train.model.build_model(weights=this_file) and train it.")
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
    with open_for_reading(p, error=ModelError, what="model file") as fh:  # missing, a folder, a pipe, a device
        magic = fh.read(8)
    if not magic:
        raise ModelError("the model file is empty (0 bytes).", file=str(p), fix="copy or download it again.")
    if info is None:
        info = read_model_info(p)
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
    fd, tmp = make_temp(p, suffix=".tmp.keras")  # the user's umask, not mkstemp's 0600
    os.close(fd)
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


__all__ = ["BACKBONES", "BACKBONE_LABELS", "COURSE_BACKBONE", "IMAGENET_FILES", "ImagenetWeights", "KerasWeightsFile",
           "LoadedModel", "ModelInfo", "VIT_CONFIGS", "VIT_PRESET", "VIT_PRESET_DIR", "ViTConfig", "backbone_layers",
           "build_model", "cached_imagenet_weights", "cam_layers", "course_backbone", "course_model_info",
           "find_imagenet_weights", "has_feature_map", "imagenet_weights_reachable", "input_scaling",
           "kagglehub_cache_dir", "keras_cache_dirs", "load_model", "load_vit_preset", "load_weights_topological",
           "logits_model", "read_model_info", "reorder_outputs", "save_model", "sidecar_path", "url_reachable",
           "vit_preset_problem", "weights_url"]
