"""Training configuration: one validated dataclass, presets, TOML/JSON files and hardware detection.

A config is what a training run needs and nothing else; `load_config` reads a file, applies the
preset it names, then the file's own settings, and validates every key: an unknown key or a bad
value is a ConfigError that names the key and says how to fix it. Paths are resolved against the
current directory (the repository root) and must exist; the resolved config is what a run folder
stores in config.json, so it can be re-read from anywhere. No TensorFlow here.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import shutil
import subprocess
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from cxrcore.data.catalog import describe_folder
from cxrcore.data.dataset import parse_split_spec
from cxrcore.data.labels import LABELS, canonical_label
from cxrcore.data.pipeline import NORMALIZATION_MODES, Augmentation
from cxrcore.errors import ConfigError
from cxrcore.fileio import MAX_JSON_BYTES, limit, parse_json, read_file_bytes
from cxrcore.train.model import BACKBONE_LABELS, BACKBONES  # no Keras import: cxrcore.train.model imports Keras lazily

#: Blocks that "last:N" can unfreeze: DenseNet121's dense blocks, ResNet50's stages conv2..conv5,
#: EfficientNetV2-S's stages block1..block6, ViT-B/16's transformer layers, the small CNN's conv blocks.
N_BLOCKS = {"densenet121": 4, "resnet50": 4, "efficientnetv2_s": 6, "vit_b16": 12, "small_cnn": 4}
#: Layers of each backbone as built here, input layer first, head excluded: the N of "first:N" goes up to
#: this (cxrcore.train.model.backbone_layers; a test builds each backbone and checks it). The ViT counts its
#: patch embedding, 12 transformer layers and final norm after the input and its input scaling.
N_LAYERS = {"densenet121": 426, "resnet50": 176, "efficientnetv2_s": 513, "vit_b16": 16, "small_cnn": 16}
MIN_INPUT_SIZE = {"densenet121": 32, "resnet50": 32, "efficientnetv2_s": 32, "vit_b16": 32, "small_cnn": 16}
#: Backbones that cut images into square patches: the input size must be a multiple of the patch.
PATCH_SIZE = {"vit_b16": 16}
MAX_INPUT_SIZE = 1024
CACHE_MODES = ("auto", "memory", "disk", "none")
MIXED_PRECISION = ("auto", "on", "off")
DISTRIBUTIONS = ("auto", "none", "mirrored", "multi_worker")
#: Keras backends a job can train on (cxrcore.train.backend: "auto" takes the one that sees a GPU).
BACKENDS = ("auto", "tensorflow", "jax", "torch")
AUTO_PRESET, CUSTOM = "auto", "custom"
#: Environment variable naming the models root, as the app uses it (default: <base_dir>/models).
MODELS_ROOT_ENV = "CXR_MODELS_ROOT"

#: Presets: values applied before the user's own settings. "auto" picks gpu-full when a GPU is
#: visible, cpu-classroom otherwise, and demo when their ImageNet weights cannot be had (`auto_preset`).
PRESETS: dict[str, dict[str, Any]] = {
    # The demo model must fit its training patients closely enough to show the demo set's leakage lesson
    # (valid_leaky >= 0.03 mean AUROC above valid, bench/bench_demo_teaching.py): no augmentation, and no class
    # weighting, with which the small CNN peaked on valid after 3-4 epochs, before it had learnt its patients.
    # All 30 epochs at one learning rate (no early stopping, no plateau cuts; best.keras still keeps the best
    # epoch on valid): valid AUROC sits on a plateau for several epochs near epoch 5-10 before it climbs again,
    # and cutting the rate or stopping there left an underfit model that had learnt neither findings nor patients.
    "demo": {
        "backbone": "small_cnn", "input_size": 128, "batch_size": 32, "epochs": 30, "learning_rate": 1e-3,
        "freeze": "none", "initial_weights": "none", "normalization": "sample", "class_weighting": False,
        "augmentation": None, "early_stopping_patience": 0, "reduce_lr_patience": 0, "max_train_images": 1500,
        "max_valid_images": 600, "predict_test": True,
    },
    "cpu-classroom": {
        "backbone": "densenet121", "input_size": 160, "batch_size": 16, "epochs": 3, "learning_rate": 1e-3,
        "freeze": "head", "initial_weights": "imagenet", "normalization": "sample",
        "augmentation": {"rotation": 5.0, "zoom": 0.05, "shift": 0.05, "brightness": 0.1},
        "early_stopping_patience": 2, "reduce_lr_patience": 1, "max_train_images": 1000,
        "max_valid_images": 500, "predict_test": False,
    },
    "gpu-full": {
        "backbone": "densenet121", "input_size": 320, "batch_size": 32, "epochs": 20, "learning_rate": 1e-4,
        "freeze": "none", "initial_weights": "imagenet", "normalization": "sample",
        "augmentation": Augmentation().to_dict(), "early_stopping_patience": 5, "reduce_lr_patience": 2,
        "max_train_images": None, "max_valid_images": None, "predict_test": True,
    },
}
#: Where "imagenet" weights come from, said with the presets that use them.
IMAGENET_NOTE = ("ImageNet weights come from the Keras cache (~/.keras/models), else from the course's "
                 "models/nih/densenet.hdf5, else they are downloaded once (about 30 MB); offline without "
                 "either, the settings are refused before anything starts.")
PRESET_NOTES = {
    "demo": "small CNN at 128 px, trained from scratch for 30 epochs at one learning rate, without augmentation "
            "or class weighting (the best epoch on valid is kept): about 2 minutes on 2 CPU cores. It learns its "
            "training patients well, so scored on the demo's valid_leaky (other images of those patients) it "
            "looks better than on valid: a teaching model, not a diagnostic one.",
    "cpu-classroom": "DenseNet121 at 160 px with ImageNet weights, only the classification head trained, "
                     "on a 1,000-image subset: minutes per epoch on a CPU. " + IMAGENET_NOTE,
    "gpu-full": "the course recipe: DenseNet121 at 320 px from ImageNet weights, every layer trained, "
                "mixed precision on GPUs. Hours on a GPU; not practical on a CPU. " + IMAGENET_NOTE,
}

#: Settings that `train --resume` may change (the architecture and data must stay as checkpointed).
RESUMABLE_KEYS = ("epochs", "early_stopping_patience", "reduce_lr_patience", "backend")


# --------------------------------------------------------------------------------------------
# Hardware
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hardware:
    """What this machine offers, found without importing TensorFlow."""

    gpus: tuple[str, ...]
    cpus: int

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def describe(self) -> str:
        """One plain sentence for logs and the page."""
        if self.gpus:
            return f"{len(self.gpus)} GPU(s) visible ({', '.join(self.gpus)}), {self.cpus} CPU cores."
        return f"No GPU visible: training runs on the CPU ({self.cpus} cores)."


def detect_hardware() -> Hardware:
    """GPUs from nvidia-smi (or /proc/driver/nvidia), honouring CUDA_VISIBLE_DEVICES; CPU count."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return Hardware((), cpus)
    names: list[str] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=5, check=False).stdout
            names = [line.split(":", 1)[1].split("(")[0].strip() for line in out.splitlines()
                     if line.startswith("GPU ") and ":" in line]
        except (OSError, subprocess.SubprocessError):
            names = []
    elif Path("/proc/driver/nvidia/gpus").is_dir():
        names = ["NVIDIA GPU"] * len(list(Path("/proc/driver/nvidia/gpus").iterdir()))
    if visible is not None and names:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        names = [n for i, n in enumerate(names) if str(i) in wanted] or names[: len(wanted)]
    return Hardware(tuple(names), cpus)


def auto_preset(hardware: Hardware | None = None, models_root: str | os.PathLike | None = None) -> tuple[str, str]:
    """(preset, why): a preset that can run on this machine now, stated plainly.

    gpu-full with a GPU, cpu-classroom without; both start from DenseNet121's ImageNet weights, so where
    those are neither on disk (Keras cache, the course's file under `models_root`) nor downloadable now,
    the demo preset (a small CNN trained from scratch) is suggested instead, saying why: a suggestion
    the settings check would refuse is no suggestion.
    """
    hw = hardware or detect_hardware()
    if hw.has_gpu:
        preset, why = "gpu-full", f"{len(hw.gpus)} GPU(s) visible, so the full course recipe (gpu-full) was chosen."
    else:
        preset, why = "cpu-classroom", "No GPU visible, so the CPU preset cpu-classroom was chosen."
    if models_root is None:
        models_root = os.environ.get(MODELS_ROOT_ENV) or Path.cwd() / "models"
    from cxrcore.train.model import find_imagenet_weights

    found = find_imagenet_weights(models_root, backbone=str(PRESETS[preset]["backbone"]))
    if found.source != "unavailable":
        return preset, why
    return "demo", (f"The demo preset (a small CNN trained from scratch) was chosen: {preset} would start from "
                    f"ImageNet weights, and {found.note.rstrip('.')}. {preset} becomes usable once the weights are "
                    "here (see its note).")


# --------------------------------------------------------------------------------------------
# The config
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run, validated; paths are absolute once built by `config_from_dict`."""

    preset: str = CUSTOM
    name: str = ""
    dataset: str | None = None
    train_split: str | None = None
    valid_split: str | None = None
    test_split: str | None = None
    image_root: str | None = None
    labels: tuple[str, ...] = LABELS
    backbone: str = "densenet121"
    input_size: int = 320
    batch_size: int = 16
    epochs: int = 10
    learning_rate: float = 1e-4
    freeze: str = "none"
    class_weighting: bool = True
    normalization: str = "sample"
    augmentation: dict[str, Any] | None = field(default_factory=lambda: Augmentation().to_dict())
    initial_weights: str = "imagenet"
    seed: int = 0
    early_stopping_patience: int = 5
    reduce_lr_patience: int = 2
    reduce_lr_factor: float = 0.1
    min_learning_rate: float = 1e-7
    max_train_images: int | None = None
    max_valid_images: int | None = None
    predict_test: bool = True
    cache: str = "auto"
    cache_dir: str = "cache/images"
    mixed_precision: str = "auto"
    distribution: str = "auto"
    #: Train on the images present: rows whose image file is missing are dropped (and counted in run.json).
    skip_missing_images: bool = False
    backend: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (labels as a list)."""
        out = asdict(self)
        out["labels"] = list(self.labels)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @property
    def freeze_blocks(self) -> int | None:
        """N of "last:N", 0 for "head", None for "none" and "first:N" (not counted in blocks)."""
        if self.freeze == "head":
            return 0
        if self.freeze.startswith("last:"):
            return int(self.freeze.split(":", 1)[1])
        return None

    @property
    def freeze_first(self) -> int | None:
        """N of "first:N" (the first N backbone layers frozen, the rest trained), else None."""
        return int(self.freeze.split(":", 1)[1]) if self.freeze.startswith("first:") else None

    def augmentation_object(self) -> Augmentation:
        """The Augmentation to train with (Augmentation.none() when off)."""
        return Augmentation.from_dict(self.augmentation) if self.augmentation else Augmentation.none()

    def split_files(self) -> dict[str, str]:
        """role -> split spec (FILE or TABLE@LIST) for train, valid and (when set) test."""
        out = {"train": self.train_split, "valid": self.valid_split, "test": self.test_split}
        return {k: v for k, v in out.items() if v}


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))
_DEFAULTS = TrainConfig()


def _suggest(key: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(options)}."


def _err(key: str, problem: str, fix: str, source: str | None) -> ConfigError:
    """A ConfigError about one setting; `.setting` and `.detail` let a form name its own field instead."""
    err = ConfigError(f"setting '{key}': {problem}", file=source, fix=fix)
    err.setting, err.detail = key, problem
    return err


def _int(data: Mapping[str, Any], key: str, lo: int, hi: int, source: str | None, *, optional: bool = False):
    value = data[key]
    if value is None and optional:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(key, f"must be a whole number, got {value!r}.", f"write e.g. {key} = {max(lo, 1)}"
                   + (" (or leave it out for no limit)." if optional else "."), source)
    if not lo <= value <= hi:
        raise _err(key, f"must be between {lo} and {hi}, got {value}.", f"choose a value from {lo} to {hi}.", source)
    return value


def _float(data: Mapping[str, Any], key: str, lo: float, hi: float, source: str | None, *,
           open_low: bool = True) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _err(key, f"must be a number, got {value!r}.", f"write e.g. {key} = {getattr(_DEFAULTS, key)}.", source)
    if (value <= lo if open_low else value < lo) or value > hi:
        raise _err(key, f"must be {'above' if open_low else 'at least'} {lo} and at most {hi}, got {value}.",
                   f"write e.g. {key} = {getattr(_DEFAULTS, key)}.", source)
    return float(value)


def _bool(data: Mapping[str, Any], key: str, source: str | None) -> bool:
    value = data[key]
    if not isinstance(value, bool):
        raise _err(key, f"must be true or false, got {value!r}.", f"write {key} = true or {key} = false.", source)
    return value


def _choice(data: Mapping[str, Any], key: str, options: tuple[str, ...], source: str | None) -> str:
    value = data[key]
    if not isinstance(value, str) or value not in options:
        hint = _suggest(str(value), options) if isinstance(value, str) else f"use one of: {', '.join(options)}."
        raise _err(key, f"{value!r} is not one of {', '.join(options)}.", hint, source)
    return value


def resolve_path(value: str, base_dir: Path) -> Path:
    """A user path made absolute against base_dir (the repository root by default); ~ expanded."""
    path = Path(os.path.expanduser(str(value)))
    return path if path.is_absolute() else (base_dir / path)


def _spec(key: str, value: Any, base_dir: Path, source: str | None, named: Mapping[str, str]) -> str:
    """A split given as FILE, TABLE@LIST or the name of a split of `dataset`, resolved to absolute paths."""
    if not isinstance(value, str) or not value.strip():
        raise _err(key, f"must be a labels file path, got {value!r}.",
                   f'write e.g. {key} = "data/nih/{key.split("_")[0]}-small.csv".', source)
    value = value.strip()
    if value in named:
        return named[value]
    _name, file, list_file = parse_split_spec(value) if "=" in value else ("", *_split_at(value))
    parts = [resolve_path(file, base_dir)] + ([resolve_path(list_file, base_dir)] if list_file else [])
    for part in parts:
        if not part.is_file():
            extra = f" (splits of the dataset: {', '.join(named)})" if named else ""
            raise _err(key, f"file not found: {part}{extra}.",
                       "give an existing labels file (course CSV or NIH table, or TABLE@LIST), relative to "
                       f"{base_dir}, or the name of a split of the dataset.", source)
    return "@".join(str(p.resolve()) for p in parts)


def _split_at(value: str) -> tuple[str, str | None]:
    table, at, list_file = value.rpartition("@")
    if at and table and list_file:
        return table, list_file
    return value, None


def preset_values(name: str) -> dict[str, Any]:
    """The settings a preset sets (a copy)."""
    return json.loads(json.dumps(PRESETS[name]))


def config_from_dict(data: Mapping[str, Any], *, source: str | None = None, base_dir: str | os.PathLike | None = None,
                     hardware: Hardware | None = None, models_root: str | os.PathLike | None = None) -> TrainConfig:
    """Validate settings (preset first, then the given keys) into a TrainConfig with absolute paths.

    Every problem is a ConfigError naming the key and the fix; unknown keys get a close-match
    suggestion. `preset = "auto"` becomes what `auto_preset` suggests for `hardware` (the demo preset when
    offline without ImageNet weights).
    initial_weights = "imagenet" is checked last (see `resolve_imagenet_weights`): it stays "imagenet"
    when Keras has the weights or can download them, becomes the course's backbone file from
    `models_root` (default: $CXR_MODELS_ROOT, else <base_dir>/models) when it cannot, and is refused
    with the ways out when neither works, so a job never fails late on a download.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("the training config must be a table of settings (key = value).", file=source,
                          fix='write e.g. preset = "demo" and dataset = "data/demo".')
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    unknown = [k for k in data if k not in FIELD_NAMES]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"unknown setting '{key}'.", file=source,
                          fix=f"{_suggest(key, FIELD_NAMES)} Valid settings: {', '.join(FIELD_NAMES)}.")
    preset = data.get("preset", CUSTOM)
    options = (AUTO_PRESET, CUSTOM, *PRESETS)
    if not isinstance(preset, str) or preset not in options:
        raise _err("preset", f"unknown preset {preset!r}.",
                   _suggest(str(preset), options) + f" Presets: {', '.join(options)}.", source)
    root = Path(models_root or os.environ.get(MODELS_ROOT_ENV) or base / "models")
    if preset == AUTO_PRESET:
        preset = auto_preset(hardware, root)[0]
    merged: dict[str, Any] = _DEFAULTS.to_dict()
    if preset in PRESETS:
        merged.update(preset_values(preset))
    preset_aug = merged.get("augmentation")
    merged.update({k: v for k, v in data.items() if k != "preset"})
    if isinstance(data.get("augmentation"), Mapping) and isinstance(preset_aug, Mapping):
        merged["augmentation"] = {**preset_aug, **data["augmentation"]}  # a partial table refines the preset's
    merged["preset"] = preset
    config = _validate(merged, base, source)
    if config.initial_weights != "imagenet":
        return config
    weights = resolve_imagenet_weights(root, source, backbone=config.backbone)
    return TrainConfig(**{**asdict(config), "initial_weights": weights})


def resolve_imagenet_weights(models_root: str | os.PathLike, source: str | None = None, *,
                             backbone: str = "densenet121") -> str:
    """"imagenet" when Keras (or keras-hub, for the ViT) has the backbone's weights cached or can download them
    now, else a local copy of the same weights (the course's densenet.hdf5, a ViT preset folder) under
    models_root, as a path; ConfigError naming every way out otherwise, before anything starts."""
    from cxrcore.train.model import COURSE_BACKBONE, IMAGENET_FILES, VIT_PRESET, VIT_PRESET_DIR, find_imagenet_weights

    found = find_imagenet_weights(models_root, backbone=backbone)
    if found.source == "download" or (found.source == "cache" and backbone != "vit_b16"):
        return "imagenet"
    if found.path is not None:  # the course's file, a preset folder, keras-hub's cache: no network at all
        return str(found.path)
    if backbone == "vit_b16":
        ways = ("connect to the internet once and start again (keras-hub downloads the preset "
                f"{VIT_PRESET} from Kaggle Models and keeps it in its cache); or copy that preset folder "
                f"(config.json, model.weights.h5) to {Path(models_root) / VIT_PRESET_DIR}")
    elif backbone == "densenet121":
        ways = ("connect to the internet once and start again (Keras keeps the weights in ~/.keras/models); or "
                f"copy the course's densenet.hdf5 to {Path(models_root) / COURSE_BACKBONE}")
    else:
        ways = ("connect to the internet once and start again (Keras keeps the weights in ~/.keras/models); or "
                f"copy {IMAGENET_FILES[backbone].file} from a computer that has it into ~/.keras/models")
    raise _err("initial_weights", found.note,
               f'{ways}; or set initial_weights = "none" (train from scratch); or use the demo preset.', source)


def _validate(d: dict[str, Any], base: Path, source: str | None) -> TrainConfig:
    out: dict[str, Any] = {"preset": d["preset"]}
    name = d["name"]
    if not isinstance(name, str) or len(name) > 80:
        raise _err("name", "must be a short text (at most 80 characters).", 'write e.g. name = "first try".', source)
    out["name"] = name.strip()
    # Data
    named: dict[str, str] = {}
    entry = None
    if d["dataset"] is not None:
        if not isinstance(d["dataset"], str) or not d["dataset"].strip():
            raise _err("dataset", f"must be a folder path, got {d['dataset']!r}.", 'write e.g. dataset = "data/demo".',
                       source)
        folder = resolve_path(d["dataset"], base)
        if not folder.is_dir():
            raise _err("dataset", f"folder not found: {folder}.",
                       "give a dataset folder (one holding split files, like data/demo or data/nih).", source)
        entry = describe_folder(folder)
        if entry is None:
            raise _err("dataset", f"no split files (CSV labels or an NIH table with list files) in {folder}.",
                       "point at a folder with train/valid split files.", source)
        named = {n: "@".join(str(Path(p).resolve()) for p in spec.split("@")) for n, spec in entry.splits}
        out["dataset"] = str(folder.resolve())
    else:
        out["dataset"] = None
    pair = entry.default_pair() if entry is not None else None
    for key, role in (("train_split", 0), ("valid_split", 1)):
        value = d[key]
        if value is None and pair is not None:
            value = pair[role]
        if value is None:
            if entry is not None:
                raise _err(key, f"the dataset {entry.name} has no {key.split('_')[0]} split "
                           f"(splits: {', '.join(entry.split_names)}).",
                           f"set {key} to a labels file or one of its split names; "
                           "`python -m cxrcore split` makes a patient-level split.", source)
            raise _err(key, "is missing.", f'set dataset = "data/demo", or {key} = "path/to/{key.split("_")[0]}.csv".',
                       source)
        out[key] = _spec(key, value, base, source, named)
    test = d["test_split"]
    if test is None and entry is not None:
        test = next((n for n in entry.split_names if n.lower().startswith("test")), None)
    out["test_split"] = _spec("test_split", test, base, source, named) if test is not None else None
    if out["train_split"] == out["valid_split"]:
        raise _err("valid_split", "is the same file as train_split.",
                   "validate on a different split, with other patients.", source)
    root = d["image_root"]
    if root is None and entry is not None:
        root = str(entry.image_root) if entry.image_root else None
    if root is None:
        raise _err("image_root", "is missing: no image folder was found.",
                   'set image_root = "path/to/images" (the folder holding the PNG files).', source)
    if not isinstance(root, str):
        raise _err("image_root", f"must be a folder path, got {root!r}.", 'write e.g. image_root = "data/nih/images".',
                   source)
    root_path = resolve_path(root, base)
    if not root_path.is_dir():
        raise _err("image_root", f"folder not found: {root_path}.", "give the folder that holds the images.", source)
    out["image_root"] = str(root_path.resolve())
    labels = d["labels"]
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)) or not labels:
        raise _err("labels", f"must be a list of label names, got {labels!r}.",
                   'write e.g. labels = ["Cardiomegaly", "Edema"], or leave it out for all 14.', source)
    canon = []
    for raw in labels:
        label = canonical_label(str(raw))
        if label is None:
            raise _err("labels", f"unknown label {raw!r}.", _suggest(str(raw), LABELS), source)
        if label in canon:
            raise _err("labels", f"{label} is listed twice.", "list each label once.", source)
        canon.append(label)
    out["labels"] = tuple(canon)
    # Model
    out["backbone"] = _choice(d, "backbone", BACKBONES, source)
    lo = MIN_INPUT_SIZE[out["backbone"]]
    out["input_size"] = _int(d, "input_size", lo, MAX_INPUT_SIZE, source)
    patch = PATCH_SIZE.get(out["backbone"])
    if patch and out["input_size"] % patch:
        near = max(lo, round(out["input_size"] / patch) * patch)
        raise _err("input_size", f"{BACKBONE_LABELS[out['backbone']]} cuts images into {patch}x{patch} patches, so "
                   f"the size must be a multiple of {patch}, got {out['input_size']}.",
                   f"write e.g. input_size = {near} (224 is the size its ImageNet weights were trained at).", source)
    out["batch_size"] = _int(d, "batch_size", 1, 4096, source)
    out["epochs"] = _int(d, "epochs", 1, 10_000, source)
    out["learning_rate"] = _float(d, "learning_rate", 0.0, 1.0, source)
    out["freeze"] = _freeze(d["freeze"], out["backbone"], source)
    out["class_weighting"] = _bool(d, "class_weighting", source)
    out["normalization"] = _choice(d, "normalization", NORMALIZATION_MODES, source)
    aug = d["augmentation"]
    if aug is None or aug is False:
        out["augmentation"] = None
    elif isinstance(aug, Mapping):
        unknown = [k for k in aug if k not in Augmentation.__dataclass_fields__]
        if unknown:
            raise _err("augmentation", f"unknown setting '{unknown[0]}'.",
                       _suggest(unknown[0], tuple(Augmentation.__dataclass_fields__)), source)
        try:
            out["augmentation"] = Augmentation.from_dict({**Augmentation().to_dict(), **aug}).to_dict()
        except ConfigError as err:
            raise _err("augmentation", err.problem, err.fix or "use numbers >= 0 (zoom and shift below 0.5).",
                       source) from None
    else:
        raise _err("augmentation", f"must be a table of settings or false, got {aug!r}.",
                   "write e.g. augmentation = { rotation = 5, zoom = 0.1 } or augmentation = false.", source)
    weights = d["initial_weights"]
    if not isinstance(weights, str) or not weights.strip():
        raise _err("initial_weights", f"must be 'imagenet', 'none' or a file path, got {weights!r}.",
                   'write initial_weights = "imagenet".', source)
    if weights in ("imagenet", "none"):
        if weights == "imagenet" and out["backbone"] == "small_cnn":
            raise _err("initial_weights", "the small CNN has no ImageNet weights.",
                       'use initial_weights = "none" with backbone = "small_cnn".', source)
        out["initial_weights"] = weights
    elif out["backbone"] == "vit_b16":
        from cxrcore.train.model import VIT_PRESET_DIR, vit_preset_problem

        path = resolve_path(weights, base)
        problem = vit_preset_problem(path) if path.is_dir() else f"folder not found: {path}."
        if problem:
            raise _err("initial_weights", problem, "give a keras-hub ViT-B/16 preset folder (config.json and "
                       f'model.weights.h5, e.g. models/{VIT_PRESET_DIR.as_posix()}), or "imagenet" or "none".', source)
        out["initial_weights"] = str(path.resolve())
    else:
        path = resolve_path(weights, base)
        if not path.is_file():
            raise _err("initial_weights", f"file not found: {path}.",
                       'give an existing .h5 weights file, or "imagenet" or "none".', source)
        out["initial_weights"] = str(path.resolve())
    # Training control
    out["seed"] = _int(d, "seed", 0, 2**31 - 1, source)
    out["early_stopping_patience"] = _int(d, "early_stopping_patience", 0, 10_000, source)
    out["reduce_lr_patience"] = _int(d, "reduce_lr_patience", 0, 10_000, source)
    out["reduce_lr_factor"] = _float(d, "reduce_lr_factor", 0.0, 0.99, source)
    out["min_learning_rate"] = _float(d, "min_learning_rate", 0.0, 1.0, source, open_low=False)
    out["max_train_images"] = _int(d, "max_train_images", 2, 10**9, source, optional=True)
    out["max_valid_images"] = _int(d, "max_valid_images", 2, 10**9, source, optional=True)
    out["predict_test"] = _bool(d, "predict_test", source)
    out["skip_missing_images"] = _bool(d, "skip_missing_images", source)
    out["cache"] = _choice(d, "cache", CACHE_MODES, source)
    cache_dir = d["cache_dir"]
    if not isinstance(cache_dir, str) or not cache_dir.strip():
        raise _err("cache_dir", f"must be a folder path, got {cache_dir!r}.", 'write cache_dir = "cache/images".', source)
    out["cache_dir"] = str(resolve_path(cache_dir, base).resolve())
    mixed = d["mixed_precision"]
    if isinstance(mixed, bool):
        mixed = "on" if mixed else "off"
    out["mixed_precision"] = _choice({**d, "mixed_precision": mixed}, "mixed_precision", MIXED_PRECISION, source)
    out["distribution"] = _choice(d, "distribution", DISTRIBUTIONS, source)
    out["backend"] = _choice(d, "backend", BACKENDS, source)  # installed? checked where the job starts
    return TrainConfig(**out)


def _freeze(value: Any, backbone: str, source: str | None) -> str:
    blocks, layers = N_BLOCKS[backbone], N_LAYERS[backbone]
    fix = f'write freeze = "head" (train only the classifier), "last:N" (N = 1..{blocks}: also the last N blocks), ' \
          f'"first:N" (N = 1..{layers}: the first N layers frozen, the rest trained, e.g. "first:50" as in the ' \
          'course\'s references) or "none" (train everything).'
    if not isinstance(value, str):
        raise _err("freeze", f"must be text, got {value!r}.", fix, source)
    text = value.strip().lower()
    if text in ("head", "none"):
        return text
    mode, _, number = text.partition(":")
    if mode in ("last", "first"):
        unit, top = ("blocks", blocks) if mode == "last" else ("layers", layers)
        try:
            n = int(number)
        except ValueError:
            raise _err("freeze", f"{value!r} does not give a number of {unit}.", fix, source) from None
        if not 1 <= n <= top:
            raise _err("freeze", f"{BACKBONE_LABELS[backbone]} has {top} {unit}, got {mode}:{n}.", fix, source)
        return f"{mode}:{n}"
    raise _err("freeze", f"{value!r} is not a freezing mode.", fix, source)


def preset_changes(config: TrainConfig) -> dict[str, Any]:
    """The settings where `config` departs from its preset (empty for a custom config)."""
    if config.preset not in PRESETS:
        return {}
    base = {**_DEFAULTS.to_dict(), **preset_values(config.preset)}
    if isinstance(base.get("augmentation"), Mapping):
        base["augmentation"] = {**Augmentation().to_dict(), **base["augmentation"]}
    mine = config.to_dict()
    return {k: mine[k] for k in PRESETS[config.preset] if mine.get(k) != base.get(k)}


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Raw settings from a .toml or .json file; a syntax error names the line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config file not found.", file=str(p), fix="check the path (TOML or JSON).")
    raw = read_file_bytes(p, error=ConfigError, what="config file", max_bytes=limit(*MAX_JSON_BYTES),
                          env=MAX_JSON_BYTES[0])
    if p.suffix.lower() == ".toml":
        text = raw.decode("utf-8", errors="replace")
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"is not valid TOML ({err}).", file=str(p),
                              fix='write one setting per line, e.g. epochs = 5 and preset = "demo".') from None
        except RecursionError:
            raise ConfigError("is not valid TOML (nested too deeply).", file=str(p),
                              fix='write one setting per line, e.g. epochs = 5 and preset = "demo".') from None
    if p.suffix.lower() != ".json":
        raise ConfigError("unknown config format.", file=str(p), fix="use a .toml or .json file.")
    data = parse_json(raw, error=ConfigError, file=str(p), what=None)
    if not isinstance(data, dict):
        raise ConfigError("must hold a JSON object of settings.", file=str(p), fix='write e.g. {"preset": "demo"}.')
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """'key=value' from the command line; the value is read as JSON when it parses, else as text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"'{text}' is not KEY=VALUE.", fix="write e.g. --set epochs=3 --set backbone=small_cnn.")
    try:
        value = parse_json(raw, error=ConfigError, file=None, what="value")
    except ConfigError:
        value = raw
    return key, value


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None, *,
                base_dir: str | os.PathLike | None = None, hardware: Hardware | None = None,
                models_root: str | os.PathLike | None = None) -> TrainConfig:
    """Read a TOML/JSON config (optional) and apply overrides (e.g. from --set), validated."""
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    data.update(overrides or {})
    return config_from_dict(data, source=str(path) if path is not None else "settings", base_dir=base_dir,
                            hardware=hardware, models_root=models_root)


def with_changes(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy with some settings changed, validated again."""
    data = {**config.to_dict(), **changes}
    return config_from_dict(data)


__all__ = ["AUTO_PRESET", "BACKBONES", "BACKENDS", "BACKBONE_LABELS", "CUSTOM", "FIELD_NAMES", "Hardware", "IMAGENET_NOTE",
           "N_BLOCKS", "N_LAYERS", "PATCH_SIZE", "PRESETS", "PRESET_NOTES", "RESUMABLE_KEYS", "TrainConfig",
           "auto_preset", "config_from_dict", "detect_hardware", "load_config", "parse_override", "preset_changes",
           "preset_values", "read_config_file", "resolve_imagenet_weights", "resolve_path", "with_changes"]
