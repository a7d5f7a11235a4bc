"""tf.data input pipeline: split table -> batches of (N, N, 3) float32 images and 14 labels.

Decoding runs in parallel inside tf.data (tf.io.decode_png / decode_jpeg for PNG and JPEG, and the
faster kornia-rs PNG decoder for a share of the files, see `fast_png_share`; the header's size is
checked first; `cxrcore.data.images` through tf.numpy_function for DICOM and anything unusual).
Decoded, resized images are cached in memory and/or on disk (keyed by path, size, mtime and target
size), so epochs after the first skip decoding. `Normalization` and `Augmentation` are
small serializable dataclasses stored with every model, so predictions preprocess like training.

TensorFlow is imported lazily: `Normalization`, `Augmentation`, `prepare_images` and the file
checks work without it (the UI predicts through `prepare_images`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from cxrcore.data import images as _images
from cxrcore.data.labels import LABELS
from cxrcore.data.paths import escaping_links, is_inside
from cxrcore.errors import ConfigError, DatasetError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import tensorflow as tf

    from cxrcore.data.dataset import Split

NORMALIZATION_MODES = ("sample", "dataset", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Added to the standard deviation, as Keras' ImageDataGenerator does (course generators).
EPSILON = 1e-6
#: Bump when the cached pixel format or the decode/resize rule changes: old cache files are ignored.
CACHE_VERSION = 1
#: PNG decoders inside tf.data: "fast" (kornia-rs through tf.numpy_function) for every PNG it reads,
#: "tf" (tf.io.decode_png) for all, or "auto": the fast decoder for 1 file in N on N usable cores.
#: The fast decoder needs 2.3x less CPU per NIH image (3.7 vs 8.7 ms) but holds the GIL, so one
#: process decodes at most ~200 images/s with it, while tf.io.decode_png runs on every core outside
#: the GIL. Sharing the files between both uses all cores (docs/benchmarks.md).
PNG_DECODERS = ("auto", "fast", "tf")
_GLOB_CHARS = re.compile(r"[*?\[\]\\]")


# --------------------------------------------------------------------------------------------
# Normalization
# --------------------------------------------------------------------------------------------

def _floats(value: Any, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = (value,) if np.isscalar(value) else tuple(np.asarray(value, dtype=np.float64).ravel())
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"normalization {what} must be a number or a list of numbers, got {value!r}.") from None
    if len(out) not in (1, 3) or not all(np.isfinite(out)):
        raise ConfigError(f"normalization {what} must hold 1 or 3 finite numbers, got {value!r}.")
    return out


@dataclass(frozen=True)
class Normalization:
    """How [0, 1] images are standardized before the model; saved with the model.

    sample: each image to zero mean, unit std (the course's training generator).
    dataset: (x - mean) / std with mean/std estimated on training images (the course's test
    generator); `estimate_normalization` fits them. imagenet: per-channel ImageNet mean/std.
    mean/std are in [0, 1] pixel units (divide the course's 0-255 values by 255).
    """

    mode: str = "sample"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in NORMALIZATION_MODES:
            raise ConfigError(f"unknown normalization mode {self.mode!r}.",
                              fix=f"use one of {', '.join(NORMALIZATION_MODES)}.")
        mean, std = _floats(self.mean, "mean"), _floats(self.std, "std")
        if self.mode == "sample":
            mean = std = None
        elif self.mode == "imagenet":
            mean = mean or IMAGENET_MEAN
            std = std or IMAGENET_STD
        if std is not None and min(std) <= 0:
            raise ConfigError(f"normalization std must be positive, got {std}.")
        if (mean is None) != (std is None):
            raise ConfigError("normalization needs both mean and std, or neither.")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def sample(cls) -> "Normalization":
        """Per-image standardization (course training generator)."""
        return cls("sample")

    @classmethod
    def dataset(cls, mean: float | Sequence[float], std: float | Sequence[float]) -> "Normalization":
        """Fixed mean/std in [0, 1] units (course test generator, fitted on training images)."""
        return cls("dataset", mean, std)

    @classmethod
    def imagenet(cls) -> "Normalization":
        """ImageNet per-channel mean/std (for ImageNet-initialised backbones)."""
        return cls("imagenet")

    @property
    def fitted(self) -> bool:
        """False for a `dataset` normalization whose mean/std are not known yet."""
        return self.mode == "sample" or self.mean is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (model info files)."""
        return {"mode": self.mode,
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str) -> "Normalization":
        """Inverse of to_dict; a bare mode string is accepted too."""
        if isinstance(data, str):
            return cls(data)
        if not isinstance(data, Mapping) or "mode" not in data:
            raise ConfigError(f"normalization must be a mapping with a 'mode', got {data!r}.")
        return cls(str(data["mode"]), data.get("mean"), data.get("std"))

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ConfigError("'dataset' normalization has no mean/std yet.",
                              fix="fit it with cxrcore.data.pipeline.estimate_normalization on training images.")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Standardize a float32 batch (N, H, W, C) or image (H, W, C) of [0, 1] pixels (numpy)."""
        self._require_fitted()
        x = np.asarray(x, dtype=np.float32)
        if self.mode == "sample":
            axes = tuple(range(x.ndim - 3, x.ndim))
            mean = x.mean(axis=axes, keepdims=True)
            std = x.std(axis=axes, keepdims=True)
            return ((x - mean) / (std + EPSILON)).astype(np.float32)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return ((x - mean) / (std + EPSILON)).astype(np.float32)

    def apply_tf(self, x: "tf.Tensor") -> "tf.Tensor":
        """Same as `apply`, with TensorFlow ops (inside tf.data)."""
        import tensorflow as tf

        self._require_fitted()
        if self.mode == "sample":
            mean, var = tf.nn.moments(x, axes=[-3, -2, -1], keepdims=True)
            return (x - mean) / (tf.sqrt(var) + EPSILON)
        mean = tf.constant(self.mean, tf.float32)
        std = tf.constant(self.std, tf.float32)
        return (x - mean) / (std + EPSILON)


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------

_FILL_MODES = {"nearest": "NEAREST", "constant": "CONSTANT", "reflect": "REFLECT"}


@dataclass(frozen=True)
class Augmentation:
    """Random training transforms, drawn per image (0 disables one).

    rotation: degrees, uniform in [-r, r]. zoom: scale in [1 - z, 1 + z]. shift: fraction of the
    side, in [-s, s] on each axis. brightness: gamma curve x ** exp(U(-b, b)), which unlike an added
    constant survives per-image normalization. horizontal_flip is off by default: it moves the heart
    to the wrong side. fill: how pixels moved in from outside are filled ("nearest" as Keras' default).
    """

    rotation: float = 5.0
    zoom: float = 0.10
    shift: float = 0.05
    brightness: float = 0.10
    horizontal_flip: bool = False
    fill: str = "nearest"

    def __post_init__(self) -> None:
        for name in ("rotation", "zoom", "shift", "brightness"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise ConfigError(f"augmentation {name} must be a number >= 0, got {value!r}.")
        if self.zoom >= 1:
            raise ConfigError(f"augmentation zoom must be below 1, got {self.zoom}.")
        if self.shift >= 0.5:
            raise ConfigError(f"augmentation shift must be below 0.5, got {self.shift}.")
        if self.fill not in _FILL_MODES:
            raise ConfigError(f"augmentation fill must be one of {', '.join(_FILL_MODES)}, got {self.fill!r}.")

    @classmethod
    def none(cls) -> "Augmentation":
        """No augmentation (validation, test, prediction)."""
        return cls(0.0, 0.0, 0.0, 0.0, False)

    @property
    def enabled(self) -> bool:
        """True when at least one transform is active."""
        return bool(self.rotation or self.zoom or self.shift or self.brightness or self.horizontal_flip)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Augmentation":
        """Inverse of to_dict; unknown keys are a ConfigError."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown augmentation setting(s): {', '.join(sorted(unknown))}.")
        return cls(**dict(data))


def _augment_batch(x: "tf.Tensor", seed: "tf.Tensor", aug: Augmentation) -> "tf.Tensor":
    """Apply `aug` to a float batch (B, H, W, 1) with one stateless seed for the batch."""
    import math

    import tensorflow as tf

    b = tf.shape(x)[0]
    h = tf.cast(tf.shape(x)[1], tf.float32)
    w = tf.cast(tf.shape(x)[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)

    def uniform(i: int, bound: float) -> "tf.Tensor":
        return tf.random.stateless_uniform([b], seeds[i], -bound, bound)

    if aug.rotation or aug.zoom or aug.shift or aug.horizontal_flip:
        zero = tf.zeros([b])
        theta = uniform(0, aug.rotation * math.pi / 180.0) if aug.rotation else zero
        scale = 1.0 + uniform(1, aug.zoom) if aug.zoom else tf.ones([b])
        tx = uniform(2, aug.shift) * w if aug.shift else zero
        ty = uniform(3, aug.shift) * h if aug.shift else zero
        flip = (tf.where(tf.random.stateless_uniform([b], seeds[4]) < 0.5, -1.0, 1.0)
                if aug.horizontal_flip else tf.ones([b]))
        cos, sin = tf.cos(theta) / scale, tf.sin(theta) / scale
        # output pixel p -> input pixel M (p - c) + c - t, M = rotation/zoom, flip on the x axis
        a0, a1 = cos * flip, sin
        b0, b1 = -sin * flip, cos
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        a2 = cx - a0 * cx - a1 * cy - tx
        b2 = cy - b0 * cx - b1 * cy - ty
        transforms = tf.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=1)
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=transforms, output_shape=tf.shape(x)[1:3], fill_value=0.0,
            interpolation="BILINEAR", fill_mode=_FILL_MODES[aug.fill])
    if aug.brightness:
        gamma = tf.exp(uniform(5, aug.brightness))
        x = tf.pow(tf.clip_by_value(x, 0.0, 1.0), gamma[:, None, None, None])
    return x


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def _basename_index(root: Path) -> dict[str, str]:
    index: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            index.setdefault(name, os.path.join(dirpath, name))
    return index


def _locate(names: list[str], root: Path) -> tuple[list[str], list[int]]:
    """Path of each name (image_root, else found by file name in its sub-folders) and the positions not found.

    One directory listing instead of a stat per name: the NIH table's 112,120 names against a folder
    holding a few of them took seconds with a stat each."""
    base = str(root)
    with os.scandir(base) as entries:
        top = {entry.name for entry in entries if entry.is_file()}
    paths = [os.path.join(base, n) for n in names]
    missing = [i for i, n in enumerate(names) if n not in top]
    if missing:
        index = _basename_index(root)
        still = []
        for i in missing:
            found = index.get(os.path.basename(names[i]))
            if found and is_inside(found, root) and os.path.isfile(found):
                paths[i] = found
            else:
                still.append(i)
        missing = still
    return paths, missing


def missing_images(frame: "pd.DataFrame", image_root: str | os.PathLike) -> list[str]:
    """Names of the rows' images that are not on disk (as `resolve_image_paths` looks for them);
    every name when the folder does not exist."""
    names = [str(n) for n in frame["Image"].tolist()]
    return [names[i] for i in _missing_positions(names, image_root)]


def _missing_positions(names: list[str], image_root: str | os.PathLike) -> list[int]:
    root = Path(image_root)
    if not root.is_dir():
        return list(range(len(names)))
    return _locate(names, root)[1]


def present_rows(split: Split, image_root: str | os.PathLike) -> tuple[Split, list[str]]:
    """The split restricted to the images on disk (same name, order kept) and the missing names.

    What `predict --missing skip` and the pages use when only part of a course's images were copied."""
    names = [str(n) for n in split.frame["Image"].tolist()]
    positions = _missing_positions(names, image_root)
    if not positions:
        return split, []
    missing = [names[i] for i in positions]
    keep = np.ones(len(names), dtype=bool)
    keep[positions] = False
    frame = split.frame.loc[keep].reset_index(drop=True)
    original = split.original
    if original is not None:
        original = original.loc[keep].reset_index(drop=True) if len(original) == len(keep) else None
    return dataclasses.replace(split, frame=frame, original=original), missing


def missing_summary(missing: Sequence[str], total: int, shown: int = 5) -> str:
    """'407 of 420 images are missing: a.png, b.png, ... and 402 more'."""
    more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
    return f"{len(missing)} of {total} images are missing: {', '.join(missing[:shown])}{more}"


def resolve_image_paths(frame: "pd.DataFrame", image_root: str | os.PathLike) -> list[str]:
    """Full path of every row's "Image", checked up front; DatasetError names the missing files.

    Looks in image_root first, then (once) in its sub-folders by file name, which covers NIH's
    images_001/images/... layout.
    """
    root = Path(image_root)
    if "Image" not in getattr(frame, "columns", ()):
        raise DatasetError("the split table has no 'Image' column.", column="Image",
                           fix="load it with cxrcore.data.dataset.load_split.")
    if not root.is_dir():
        raise DatasetError("the image folder does not exist.", file=str(root),
                           fix="set the image folder to where the PNG files are.")
    names = [str(n) for n in frame["Image"].tolist()]
    paths, missing = _locate(names, root)
    special = [names[i] for i in missing if os.path.exists(paths[i]) and not os.path.isdir(paths[i])]
    if special:  # a named pipe would block the reader forever, a device (/dev/zero) never ends
        raise DatasetError(f"{len(special)} image(s) are not regular files (a named pipe, a device or a socket): "
                           f"{', '.join(special[:5])}.", file=str(root), column="Image",
                           fix="replace them with the image files themselves.")
    if missing:
        raise DatasetError(missing_summary([names[i] for i in missing], len(names)) + ".",
                           file=str(root), column="Image",
                           fix="download the missing images or remove their rows from the split.")
    escaping = escaping_links(root)
    outside = [n for n in names if n in escaping]
    if outside:
        raise DatasetError(f"{len(outside)} image(s) are links leading outside the image folder: "
                           f"{', '.join(outside[:5])}.", file=str(root), column="Image",
                           fix="copy the images into the image folder instead of linking to other places.")
    return paths


def check_image_headers(paths: Sequence[str], *, max_pixels: int | None = _images.DEFAULT_MAX_PIXELS) -> None:
    """Check every file's header and end marker (not its pixels); one DatasetError lists the bad ones.

    Catches truncated downloads, non-images and oversized files before training starts.
    """
    bad: list[str] = []
    first = ""
    for path in paths:
        try:
            _images.quick_check(path, max_pixels=max_pixels)
        except _images.ImageError as err:
            bad.append(os.path.basename(path))
            first = first or err.problem
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DatasetError(f"{len(bad)} image(s) cannot be used: {shown} (first problem: {first})",
                           fix="re-export or remove those images.")


class ImageCache:
    """Folder of decoded, resized images, one file per (path, size, mtime, target size).

    A changed source file gets a new key, so stale entries are never read; `prune` removes them.
    Each entry is a serialized uint16 tensor (N, N, 1), 2 * N * N bytes (~200 kB at 320).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory).resolve()
        if _GLOB_CHARS.search(str(self.directory)):
            raise ConfigError("the cache folder path must not contain * ? [ ] or backslashes.",
                              file=str(self.directory))
        self.directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(path: str | os.PathLike, input_size: int) -> str:
        """Hex key of a source file's identity (absolute path, byte size, mtime) and the target size."""
        src = os.path.abspath(os.fspath(path))
        st = os.stat(src)
        text = f"v{CACHE_VERSION}|{src}|{st.st_size}|{st.st_mtime_ns}|{int(input_size)}"
        return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()

    def path_for(self, path: str | os.PathLike, input_size: int) -> str:
        """Where the cached copy of `path` at `input_size` lives (it may not exist yet)."""
        key = self.key(path, input_size)
        return str(self.directory / key[:2] / f"{key}.u16")

    def paths_for(self, paths: Sequence[str], input_size: int) -> list[str]:
        """`path_for` for many files; creates the two-letter sub-folders."""
        out = [self.path_for(p, input_size) for p in paths]
        for sub in {os.path.dirname(p) for p in out}:
            os.makedirs(sub, exist_ok=True)
        return out

    def prune(self, keep: Iterable[str]) -> int:
        """Delete cache entries not in `keep` (paths from paths_for); returns how many were removed."""
        keep_set = {os.path.abspath(k) for k in keep}
        removed = 0
        for entry in self.directory.glob("*/*.u16"):
            if str(entry) not in keep_set:
                entry.unlink(missing_ok=True)
                removed += 1
        return removed


# --------------------------------------------------------------------------------------------
# Decoding inside tf.data
# --------------------------------------------------------------------------------------------

def _py_decode(path: bytes, size: np.ndarray, max_pixels: np.ndarray) -> np.ndarray:
    """Fallback decoder (DICOM, damaged or unusual files) run through tf.numpy_function."""
    limit = int(max_pixels)
    img = _images.read_image(path.decode("utf-8", "surrogateescape"), max_pixels=limit if limit > 0 else None)
    n = int(size)
    return _images.resize(img, n)[..., None].astype(np.float32)


def fast_png_share(png_decoder: str = "auto") -> float:
    """Share of the files tf.data decodes with the fast decoder (kornia-rs): 1 / usable cores for "auto"."""
    if png_decoder not in PNG_DECODERS:
        raise ConfigError(f"unknown PNG decoder {png_decoder!r}.", fix=f"use one of {', '.join(PNG_DECODERS)}.")
    if png_decoder == "tf" or not _images.fast_png_available():
        return 0.0
    if png_decoder == "fast":
        return 1.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1.0 / max(1, cores)


def _spread(n: int, share: float) -> np.ndarray:
    """n booleans, `share` of them True and evenly spread (1 in 2, 1 in 4...), for the fast decoder."""
    index = np.arange(n)
    return np.floor((index + 1) * share) > np.floor(index * share)


def _py_png_pixels(contents: bytes, path: bytes, channels: np.ndarray) -> np.ndarray:
    """Raw PNG pixels (H, W, channels) in RGB order, as tf.io.decode_png gives them, via the fast decoder.

    Called through tf.numpy_function only for files whose header passed the size and end-marker
    checks; data the fast decoder rejects goes to OpenCV, and an undecodable file is an ImageError.
    """
    arr = _images.decode_png_fast(contents)
    if arr is None:
        import cv2

        arr = cv2.imdecode(np.frombuffer(contents, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None or arr.size == 0:
            raise _images.ImageError("the PNG file is damaged and cannot be decoded.",
                                     file=path.decode("utf-8", "surrogateescape"),
                                     fix="re-download or re-export the image.")
        if arr.ndim == 3:
            arr = arr[..., 2::-1]  # BGR(A) -> RGB
    if int(channels) == 1:
        return np.ascontiguousarray(arr if arr.ndim == 2 else arr[..., 0])[..., None]
    return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=-1) if arr.ndim == 2 else arr[..., :3])


def _decode_tf(path: "tf.Tensor", size: int, max_pixels: int | None,
               fast_png: "tf.Tensor | None" = None) -> "tf.Tensor":
    """Read and decode one file to float32 (size, size, 1) in [0, 1].

    One branch per kind of file, chosen from the header: PNG gray/colour x 8/16-bit and JPEG with
    TF ops (after checking the header's size against max_pixels and the end marker, so truncated
    files and bombs never reach them), everything else through `_py_decode` (cxrcore.data.images).
    fast_png: a boolean tensor; when true, 8/16-bit gray, RGB and RGBA PNGs (not interlaced) are decoded
    by `_py_png_pixels` instead of tf.io.decode_png: the same pixels for 2.3x less CPU, under the GIL.
    """
    import tensorflow as tf

    limit = tf.constant(max_pixels if max_pixels is not None else 2 ** 62, tf.int64)
    contents = tf.io.read_file(path)
    length = tf.strings.length(contents)
    head = tf.strings.join([tf.strings.substr(contents, 0, 33), b"\0" * 33])  # padded: fields always readable
    is_png = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 8), b"\x89PNG\r\n\x1a\n"), length >= 33)
    is_jpeg = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff"), length >= 4)
    # IEND chunk (length, "IEND", CRC) closes a complete PNG; anything else takes the careful path
    png_end = tf.equal(tf.strings.substr(contents, tf.maximum(length - 8, 0), 4), b"IEND")
    wh = tf.cast(tf.io.decode_raw(tf.strings.substr(head, 16, 8), tf.int32, little_endian=False), tf.int64)
    depth_type = tf.io.decode_raw(tf.strings.substr(head, 24, 5), tf.uint8)  # depth, colour, -, -, interlace
    bit_depth, color_type = depth_type[0], depth_type[1]
    png_ok = is_png & png_end & (wh[0] > 0) & (wh[1] > 0) & (wh[0] * wh[1] <= limit) & (bit_depth <= 16)
    gray = tf.equal(color_type, 0) | tf.equal(color_type, 4)  # gray, gray + alpha
    shrink = (size <= wh[0]) & (size <= wh[1])
    # one dynamic branch per file (each tf.cond/switch costs ~0.4 ms on a 1024x1024 decode of ~11 ms)
    png_branch = tf.where(tf.equal(bit_depth, 16), 1, 0) + tf.where(gray, 0, 2) + tf.where(shrink, 0, 4)
    n_png = 8
    if fast_png is not None:  # the fast decoder's formats (as cxrcore.data.images.fast_png_supported): branches 8-15
        fast = fast_png & ((tf.equal(bit_depth, 8) | tf.equal(bit_depth, 16)) & tf.equal(depth_type[4], 0)
                & (tf.equal(color_type, 0) | tf.equal(color_type, 2) | tf.equal(color_type, 6)))
        png_branch += tf.where(fast, 8, 0)
        n_png = 16
    branch = tf.where(png_ok, png_branch, tf.where(is_jpeg, n_png, n_png + 1))
    weights = tf.constant(_images.GRAY_WEIGHTS, tf.float32)

    def resize(img: "tf.Tensor", shrinking: bool) -> "tf.Tensor":
        # Integer pixels are resized first and converted after: both steps are linear, so this
        # equals convert -> resize without full-size float copies. Area when shrinking.
        return tf.image.resize(img, (size, size), method="area" if shrinking else "bilinear")

    def png(channels: int, dtype, shrinking: bool, fast: bool = False):
        def decode() -> "tf.Tensor":
            if not fast:
                return tf.io.decode_png(contents, channels=channels, dtype=dtype)
            pixels = tf.numpy_function(_py_png_pixels, [contents, path, channels], dtype, stateful=False)
            pixels.set_shape((None, None, channels))
            return pixels

        def branch_fn() -> "tf.Tensor":
            img = resize(decode(), shrinking) / float(dtype.max)
            if channels == 3:  # alpha dropped by the decoder; BT.601 luma as cxrcore.data.images
                img = tf.clip_by_value(tf.tensordot(img, weights, axes=1), 0.0, 1.0)[..., None]
            return img
        return branch_fn

    def slow() -> "tf.Tensor":
        out = tf.numpy_function(_py_decode, [path, size, max_pixels or 0], tf.float32, stateful=False)
        return tf.reshape(out, (size, size, 1))

    def jpeg() -> "tf.Tensor":
        tail = tf.strings.substr(contents, tf.maximum(length - 64, 0), 64)
        raw = tf.io.decode_raw(tail, tf.uint8)
        nonzero = tf.cast(tf.where(raw != 0)[:, 0], tf.int32)
        last = tf.maximum(tf.reduce_max(tf.concat([nonzero, [0]], 0)), 1)  # FF D9, then optional zero padding
        has_end = tf.logical_and(tf.equal(raw[last], 0xD9), tf.equal(raw[last - 1], 0xFF))

        def fits() -> "tf.Tensor":
            shape = tf.cast(tf.io.extract_jpeg_shape(contents), tf.int64)
            return shape[0] * shape[1] <= limit

        def decode() -> "tf.Tensor":  # libjpeg's gray output is the same BT.601 luma
            img = tf.io.decode_jpeg(contents, channels=1, dct_method="INTEGER_ACCURATE")
            h, w = tf.shape(img)[0], tf.shape(img)[1]
            return tf.cond(tf.logical_and(size <= h, size <= w),
                           lambda: resize(img, True), lambda: resize(img, False)) / 255.0
        ok = tf.cond(has_end, fits, lambda: tf.constant(False))
        return tf.cond(ok, decode, slow)

    branches = [png(c, d, s, f) for f in ((False, True) if fast_png is not None else (False,))
                for s in (True, False) for c in (1, 3) for d in (tf.uint8, tf.uint16)]
    img = tf.switch_case(branch, branches + [jpeg, slow])
    img.set_shape((size, size, 1))
    return img


def _quantize(img: "tf.Tensor") -> "tf.Tensor":
    import tensorflow as tf

    return tf.cast(tf.round(tf.clip_by_value(img, 0.0, 1.0) * 65535.0), tf.uint16)


def _load_fn(size: int, max_pixels: int | None, use_disk: bool, fast_png: bool = False):
    """Map function: (path, cache_path, fast) -> uint16 (size, size, 1), through the disk cache if any.

    fast_png: whether the graph has the fast decoder's branches; `fast` then picks them per file.
    """
    import tensorflow as tf

    expected = len(tf.io.serialize_tensor(tf.zeros((size, size, 1), tf.uint16)).numpy()) if use_disk else 0

    def decode(path: "tf.Tensor", fast: "tf.Tensor") -> "tf.Tensor":
        return _quantize(_decode_tf(path, size, max_pixels, fast if fast_png else None))

    def load(path: "tf.Tensor", cache_path: "tf.Tensor", fast: "tf.Tensor") -> "tf.Tensor":
        if not use_disk:
            return decode(path, fast)

        def from_cache() -> "tf.Tensor":
            data = tf.io.read_file(cache_path)

            def parse() -> "tf.Tensor":
                return tf.reshape(tf.io.parse_tensor(data, tf.uint16), (size, size, 1))

            def rebuild() -> "tf.Tensor":  # partial write from an interrupted run
                return build()
            return tf.cond(tf.equal(tf.strings.length(data), expected), parse, rebuild)

        def build() -> "tf.Tensor":
            q = decode(path, fast)
            with tf.control_dependencies([tf.io.write_file(cache_path, tf.io.serialize_tensor(q))]):
                return tf.identity(q)

        exists = tf.size(tf.io.matching_files(cache_path)) > 0
        img = tf.cond(exists, from_cache, build)
        img.set_shape((size, size, 1))
        return img

    return load


def _finish_fn(normalization: Normalization | None):
    """Batch map: uint16 (B, N, N, 1) or float -> normalized float32 (B, N, N, 3)."""
    import tensorflow as tf

    def finish(x: "tf.Tensor") -> "tf.Tensor":
        if x.dtype == tf.uint16:
            x = tf.cast(x, tf.float32) / 65535.0
        if normalization is None:
            return tf.repeat(x, 3, axis=-1)
        if normalization.mode == "imagenet" or (normalization.mean and len(normalization.mean) == 3):
            return normalization.apply_tf(tf.repeat(x, 3, axis=-1))
        return tf.repeat(normalization.apply_tf(x), 3, axis=-1)

    return finish


# --------------------------------------------------------------------------------------------
# Public pipeline
# --------------------------------------------------------------------------------------------

def label_matrix(frame: "pd.DataFrame", labels: Sequence[str] = LABELS) -> np.ndarray:
    """(n, len(labels)) float32 0/1 targets from the split table's label columns."""
    missing = [label for label in labels if label not in frame.columns]
    if missing:
        raise DatasetError(f"the split table lacks label column(s): {', '.join(missing)}.",
                           column=missing[0], fix="load it with cxrcore.data.dataset.load_split.")
    values = frame[list(labels)].to_numpy(dtype=np.float32)
    if values.size and (np.isnan(values).any() or not np.isin(values, (0.0, 1.0)).all()):
        raise DatasetError("label columns must hold only 0 and 1.", column=str(labels[0]))
    return values


def image_dataset(paths: Sequence[str], *, targets: np.ndarray | None = None, input_size: int = 320,
                  batch_size: int = 16, normalization: Normalization | None = Normalization(),
                  augmentation: Augmentation | None = None, shuffle: bool = False, seed: int = 0,
                  memory_cache: bool = True, cache_dir: str | os.PathLike | None = None,
                  max_pixels: int | None = _images.DEFAULT_MAX_PIXELS, drop_remainder: bool = False,
                  shuffle_buffer: int | None = None, png_decoder: str = "auto") -> "tf.data.Dataset":
    """Batches of images (B, N, N, 3) float32 (and targets when given) from existing image files.

    normalization=None yields raw [0, 1] pixels (for display, CAM overlays, fitting statistics).
    png_decoder: "auto", "fast" or "tf" (see `fast_png_share`); all give the same pixels.
    With memory_cache and shuffle, the first batch waits until the whole list is decoded (one full
    shuffle per epoch over cached images); without memory cache the paths are shuffled instead.
    """
    import tensorflow as tf

    if int(input_size) < 8:
        raise ConfigError(f"input_size must be at least 8 pixels, got {input_size}.")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    if normalization is not None:
        normalization._require_fitted()
    size = int(input_size)
    n = len(paths)
    if n == 0:
        raise DatasetError("the split has no images.")
    paths = [os.fspath(p) for p in paths]
    cache = ImageCache(cache_dir) if cache_dir is not None else None
    cache_paths = cache.paths_for(paths, size) if cache else [""] * n
    share = fast_png_share(png_decoder)
    slices: tuple = (tf.constant(paths, tf.string), tf.constant(cache_paths, tf.string),
                     tf.constant(_spread(n, share)))
    if targets is not None:
        targets = np.asarray(targets, dtype=np.float32)
        if len(targets) != n:
            raise ConfigError(f"{len(targets)} target rows for {n} images.")
        slices = slices + (tf.constant(targets),)
    ds = tf.data.Dataset.from_tensor_slices(slices)
    buffer = min(n, shuffle_buffer or n)
    if shuffle and not memory_cache:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    load = _load_fn(size, max_pixels, cache is not None, share > 0)
    if targets is None:
        ds = ds.map(lambda p, c, f: load(p, c, f), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda p, c, f, y: (load(p, c, f), y), num_parallel_calls=tf.data.AUTOTUNE)
    if memory_cache:
        ds = ds.cache()
        if shuffle:
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    finish = _finish_fn(normalization)
    aug = augmentation if augmentation is not None and augmentation.enabled else None
    if aug is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds))

        def augment_finish(batch, s):
            if targets is None:
                return finish(_augment_batch(tf.cast(batch, tf.float32) / 65535.0, s, aug))
            x, y = batch
            return finish(_augment_batch(tf.cast(x, tf.float32) / 65535.0, s, aug)), y
        ds = ds.map(augment_finish, num_parallel_calls=tf.data.AUTOTUNE)
    elif targets is None:
        ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda x, y: (finish(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1  # parallelism comes from map calls, not inside ops
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def make_dataset(frame: "pd.DataFrame", image_root: str | os.PathLike, *, labels: Sequence[str] = LABELS,
                 input_size: int = 320, batch_size: int = 16,
                 normalization: Normalization | None = Normalization(),
                 augmentation: Augmentation | None = None, shuffle: bool = False, seed: int = 0,
                 memory_cache: bool = True, cache_dir: str | os.PathLike | None = None,
                 max_pixels: int | None = _images.DEFAULT_MAX_PIXELS, check_headers: bool = False,
                 drop_remainder: bool = False, shuffle_buffer: int | None = None,
                 png_decoder: str = "auto") -> "tf.data.Dataset":
    """tf.data.Dataset of (images (B, N, N, 3) float32, targets (B, len(labels)) float32) from a split.

    Missing files raise DatasetError before anything is decoded; check_headers=True also reads every
    header first (slower start, but broken or oversized files are named up front instead of
    failing mid-epoch). Training: augmentation=Augmentation(), shuffle=True; validation/test: defaults.
    """
    targets = label_matrix(frame, labels)
    paths = resolve_image_paths(frame, image_root)
    if check_headers:
        check_image_headers(paths, max_pixels=max_pixels)
    return image_dataset(paths, targets=targets, input_size=input_size, batch_size=batch_size,
                         normalization=normalization, augmentation=augmentation, shuffle=shuffle, seed=seed,
                         memory_cache=memory_cache, cache_dir=cache_dir, max_pixels=max_pixels,
                         drop_remainder=drop_remainder, shuffle_buffer=shuffle_buffer, png_decoder=png_decoder)


def estimate_normalization(frame: "pd.DataFrame", image_root: str | os.PathLike, *, input_size: int = 320,
                           sample_size: int = 100, seed: int = 0,
                           max_pixels: int | None = _images.DEFAULT_MAX_PIXELS) -> Normalization:
    """Fit `dataset` normalization (mean, std of all pixels) on a random sample of training images.

    Mirrors the course's test generator, which fits on 100 training images at 320x320; pass the
    TRAINING split only, then reuse the result for validation, test and prediction.
    """
    if len(frame) == 0:
        raise DatasetError("cannot estimate normalization from an empty split.")
    sample = frame.sample(n=min(int(sample_size), len(frame)), random_state=seed)
    paths = resolve_image_paths(sample, image_root)
    ds = image_dataset(paths, input_size=input_size, batch_size=32, normalization=None,
                       memory_cache=False, max_pixels=max_pixels)
    total, total_sq, count = 0.0, 0.0, 0
    for batch in ds.as_numpy_iterator():
        gray = batch[..., 0].astype(np.float64)
        total += gray.sum()
        total_sq += np.square(gray).sum()
        count += gray.size
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
    return Normalization.dataset(mean, max(std, 1e-6))


def _as_gray01(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    else:
        arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 3:
        if arr.shape[2] >= 3:
            wr, wg, wb = _images.GRAY_WEIGHTS
            arr = arr[..., 0] * wr + arr[..., 1] * wg + arr[..., 2] * wb
        else:
            arr = arr[..., 0]
    if arr.ndim != 2:
        raise _images.ImageError(f"expected a 2-D grayscale image, got shape {np.shape(img)}.")
    return arr


def prepare_images(imgs: Sequence[np.ndarray] | np.ndarray, input_size: int,
                   normalization: Normalization | None) -> np.ndarray:
    """Numpy twin of the pipeline for prediction: [0, 1] images of any size -> (N, S, S, 3) float32.

    Same resize rule (area when shrinking, bilinear when enlarging) and normalization as training,
    without TensorFlow. Images may be (H, W), (H, W, 1) or (H, W, 3), float [0, 1] or uint8/uint16.
    """
    if isinstance(imgs, np.ndarray) and imgs.ndim == 2:
        imgs = [imgs]
    out = np.empty((len(imgs), int(input_size), int(input_size), 1), dtype=np.float32)
    for i, img in enumerate(imgs):
        gray = np.clip(_as_gray01(img), 0.0, 1.0)
        out[i, ..., 0] = _images.resize(gray, int(input_size))
    if normalization is None:
        return np.repeat(out, 3, axis=-1)
    if normalization.mode == "imagenet" or (normalization.mean and len(normalization.mean) == 3):
        return normalization.apply(np.repeat(out, 3, axis=-1))
    return np.repeat(normalization.apply(out), 3, axis=-1)


__all__ = ["Augmentation", "ImageCache", "Normalization", "NORMALIZATION_MODES", "PNG_DECODERS",
           "check_image_headers", "estimate_normalization", "fast_png_share", "image_dataset", "label_matrix",
           "make_dataset", "prepare_images", "resolve_image_paths"]
