"""Decode chest X-ray files (PNG, JPEG, DICOM) to float32 grayscale in [0, 1], safely and fast.

Every decoder here checks the size written in the file header BEFORE decoding, so a tiny file that
claims to be gigapixels (a decompression bomb) is refused without allocating memory. Bad files raise
`ImageError` with the file name and what to do; nothing here imports TensorFlow.
"""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import IO, Union

import cv2
import numpy as np

from cxrcore.errors import ImageError
from cxrcore.fileio import MAX_IMAGE_BYTES, limit, open_for_reading, read_file_bytes

try:  # Rust PNG decoder: 2.3x less CPU than libpng on NIH files, identical pixels (docs/benchmarks.md)
    from kornia_rs import io as _kornia_io
except ImportError:  # pragma: no cover - pinned in requirements.txt; OpenCV's libpng decodes everything
    _kornia_io = None

#: Largest image accepted by default (width * height), checked on the header before decoding.
DEFAULT_MAX_PIXELS = 50_000_000

#: Luma weights (ITU-R BT.601, as OpenCV and tf.image.rgb_to_grayscale use) for RGB -> gray.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)

#: File name suffixes this module reads; anything else is sniffed by content.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes]]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: PNG colour types the fast decoder reads (gray, RGB, RGBA; 8/16-bit, not interlaced) and its modes.
#: Gray+alpha, palette, 1/2/4-bit and interlaced files go to OpenCV: they are rare in X-ray sets.
_FAST_PNG_MODES = {0: "mono", 2: "rgb", 6: "rgba"}
_JPEG_MAGIC = b"\xff\xd8\xff"
# JPEG start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) are not SOFs.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _load(source: ImageSource) -> tuple[bytes, str | None]:
    """Return the raw bytes of a path, bytes-like object or binary file object, and its name."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:  # a regular file within MAX_IMAGE_BYTES: a pipe would block forever, /dev/zero never ends
            return read_file_bytes(path, error=ImageError, what="image file", max_bytes=limit(*MAX_IMAGE_BYTES),
                                   env=MAX_IMAGE_BYTES[0]), path
        except OSError as err:
            raise ImageError(f"the image file cannot be read ({err.strerror or err}).", file=path) from None
    name = getattr(source, "name", None)
    if hasattr(source, "getvalue"):  # io.BytesIO, Streamlit UploadedFile
        return bytes(source.getvalue()), name
    if hasattr(source, "read"):
        return bytes(source.read()), name
    raise TypeError(f"expected a path, bytes or a binary file object, got {type(source).__name__}")


def sniff_format(data: bytes) -> str | None:
    """Name the container format from the first bytes: "png", "jpeg", "dicom", or None."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def _png_size(data: bytes, name: str | None) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageError("the PNG file is truncated or damaged (no image header).", file=name,
                         fix="re-download or re-export the image.")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _jpeg_size(data: bytes, name: str | None) -> tuple[int, int]:
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _SOF_MARKERS:
            if pos + 9 > n:
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return int(width), int(height)
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise ImageError("the JPEG file is truncated or damaged (no frame header).", file=name,
                     fix="re-download or re-export the image.")


def _read_dicom(data: bytes, name: str | None, *, force: bool):
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as err:  # pragma: no cover - pydicom is a pinned dependency
        raise ImageError("reading DICOM needs the pydicom package.", file=name,
                         fix="pip install pydicom.") from err
    try:
        return pydicom.dcmread(io.BytesIO(data), force=force)
    except InvalidDicomError:
        raise ImageError("not a PNG, JPEG or DICOM image.", file=name,
                         fix="use PNG, JPEG or DICOM files.") from None
    except Exception as err:  # pydicom raises many types on damaged files
        raise ImageError(f"the DICOM file is truncated or damaged ({type(err).__name__}).", file=name,
                         fix="re-export the study from the PACS.") from None


def _dicom_size(ds, name: str | None) -> tuple[int, int]:
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageError("the DICOM file has no pixel data (it is a report, structured data or "
                         "a header-only object).", file=name, fix="export the image series, not the study header.")
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise ImageError("the DICOM file has pixel data but no Rows/Columns.", file=name)
    return int(cols), int(rows)


def _looks_like_dicom(name: str | None) -> bool:
    return bool(name) and Path(str(name)).suffix.lower() in (".dcm", ".dicom")


def image_size(source: ImageSource) -> tuple[int, int]:
    """(width, height) read from the file header only, without decoding pixels (cheap, bomb-safe)."""
    data, name = _load(source)
    fmt = _format_or_raise(data, name)
    if fmt == "png":
        return _png_size(data, name)
    if fmt == "jpeg":
        return _jpeg_size(data, name)
    return _dicom_size(_read_dicom(data, name, force=True), name)


def quick_check(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Check a file without decoding it: readable, a known format, complete (PNG/JPEG end marker),
    and within max_pixels. Reads only its first 64 kB and last 64 bytes; returns (width, height)."""
    name = os.fspath(path)
    try:
        with open_for_reading(name, error=ImageError, what="image file", max_bytes=limit(*MAX_IMAGE_BYTES),
                              env=MAX_IMAGE_BYTES[0]) as fh:
            head = fh.read(65536)
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 64))
            tail = fh.read(64)
    except OSError as err:
        raise ImageError(f"the image file cannot be read ({err.strerror or err}).", file=name) from None
    fmt = _format_or_raise(head, name)
    if fmt == "dicom":
        width, height = image_size(name)
    else:
        try:
            width, height = _png_size(head, name) if fmt == "png" else _jpeg_size(head, name)
        except ImageError:
            if len(head) < 65536:
                raise
            width, height = image_size(name)  # JPEG frame header after 64 kB of metadata
        if fmt == "png" and b"IEND" not in tail:
            raise ImageError("the PNG file is truncated (no end marker).", file=name,
                             fix="re-download or re-export the image.")
        if fmt == "jpeg" and not tail.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise ImageError("the JPEG file is truncated (no end marker).", file=name,
                             fix="re-download or re-export the image.")
    _check_pixels(width, height, max_pixels, name)
    return width, height


def _format_or_raise(data: bytes, name: str | None) -> str:
    if not data:
        raise ImageError("the image file is empty (0 bytes).", file=name,
                         fix="re-download or re-export the image.")
    fmt = sniff_format(data)
    if fmt is None and _looks_like_dicom(name):
        fmt = "dicom"  # DICOM files without the 128-byte preamble
    if fmt is None:
        raise ImageError("not a PNG, JPEG or DICOM image.", file=name, fix="use PNG, JPEG or DICOM files.")
    return fmt


def _check_pixels(width: int, height: int, max_pixels: int | None, name: str | None) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"the header says the image is {width}x{height} pixels.", file=name)
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels, above the "
                         f"limit of {max_pixels / 1e6:.1f} megapixels (possible decompression bomb).",
                         file=name, fix=f"downscale the image below {max_pixels / 1e6:.0f} megapixels (the limit "
                                      "of this tool).")


def _to_gray01(arr: np.ndarray, *, bgr: bool) -> np.ndarray:
    """uint8/uint16 image with 1-4 channels -> float32 (H, W) in [0, 1]; alpha is ignored."""
    scale = 1.0 / (65535.0 if arr.dtype == np.uint16 else 255.0)
    if arr.ndim == 2:
        return arr.astype(np.float32) * np.float32(scale)
    channels = arr.shape[2]
    if channels <= 2:  # gray, gray + alpha
        return arr[..., 0].astype(np.float32) * np.float32(scale)
    rgb = arr[..., :3].astype(np.float32)
    r, g, b = (rgb[..., 2], rgb[..., 1], rgb[..., 0]) if bgr else (rgb[..., 0], rgb[..., 1], rgb[..., 2])
    wr, wg, wb = GRAY_WEIGHTS
    gray = r * np.float32(wr * scale) + g * np.float32(wg * scale) + b * np.float32(wb * scale)
    return np.clip(gray, 0.0, 1.0, out=gray)


def fast_png_available() -> bool:
    """True when the fast PNG decoder (kornia-rs) is installed."""
    return _kornia_io is not None


def fast_png_supported(data: bytes) -> bool:
    """True when `decode_png_fast` can read this PNG: kornia-rs installed, 8/16-bit gray, RGB or RGBA,
    not interlaced (the IHDR fields at bytes 24, 25 and 28)."""
    return (_kornia_io is not None and len(data) >= 33 and data[24] in (8, 16)
            and data[25] in _FAST_PNG_MODES and data[28] == 0)


def decode_png_fast(data: bytes) -> np.ndarray | None:
    """Pixels of a PNG whose header was checked (size, end marker): (H, W) or (H, W, 3|4) in RGB order,
    uint8 or uint16; None when the fast decoder cannot read it, so the caller falls back to OpenCV.

    The buffer is allocated from the header's width x height, which the caller has already held
    against max_pixels; damaged data (CRC, truncation) raises inside the decoder and returns None.
    """
    if not fast_png_supported(data):
        return None
    width, height = struct.unpack(">II", data[16:24])
    decode = _kornia_io.decode_image_png_u16 if data[24] == 16 else _kornia_io.decode_image_png_u8
    try:
        arr = np.asarray(decode(data, (height, width), _FAST_PNG_MODES[data[25]]))
    except Exception:  # kornia raises plain Exception/ValueError for damaged data
        return None
    if arr.shape[:2] != (height, width):
        return None
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def _decode_raster(data: bytes, fmt: str, name: str | None, max_pixels: int | None) -> np.ndarray:
    width, height = _png_size(data, name) if fmt == "png" else _jpeg_size(data, name)
    _check_pixels(width, height, max_pixels, name)
    if fmt == "png" and b"IEND" not in data[-64:]:
        raise ImageError("the PNG file is truncated (no end marker).", file=name,
                         fix="re-download or re-export the image.")
    if fmt == "jpeg" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ImageError("the JPEG file is truncated (no end marker).", file=name,
                         fix="re-download or re-export the image.")
    arr = decode_png_fast(data) if fmt == "png" else None
    if arr is not None:
        return _to_gray01(arr, bgr=False)
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise ImageError(f"the {fmt.upper()} file is damaged and cannot be decoded.", file=name,
                         fix="re-download or re-export the image.")
    if arr.shape[0] != height or arr.shape[1] != width:
        raise ImageError("the decoded size does not match the header; the file is damaged.", file=name)
    return _to_gray01(arr, bgr=True)


def _window(arr: np.ndarray, center: float, width: float, function: str) -> np.ndarray | None:
    """DICOM PS3.3 C.11.2 windowing straight to [0, 1]; None when the window is invalid."""
    if function == "SIGMOID":
        if width <= 0:
            return None
        return 1.0 / (1.0 + np.exp(-4.0 * (arr - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
        return np.clip((arr - center) / width + 0.5, 0.0, 1.0)
    if function != "LINEAR" or width < 1:
        return None
    if width == 1:
        return (arr > center - 0.5).astype(np.float64)
    return np.clip((arr - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _voi_lut(arr: np.ndarray, item) -> np.ndarray | None:
    """DICOM VOI LUT (PS3.3 C.11.2.1.1) straight to [0, 1]; None when the LUT is unusable.

    Done here rather than with pydicom.apply_voi, which indexes 8-bit LUTs through uint8 and wraps
    input values above 255.
    """
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        entries = entries or 65536
        raw = item.LUTData
        if isinstance(raw, (bytes, bytearray)):
            lut = np.frombuffer(raw, dtype="<u2")[:entries].astype(np.float64)
        else:
            lut = np.asarray(list(raw) if not np.isscalar(raw) else [raw], dtype=np.float64)
        if lut.size == 0 or not 1 <= bits <= 16:
            return None
        index = np.clip(np.rint(arr) - first, 0, lut.size - 1).astype(np.int64)
        return np.clip(lut[index] / float(2 ** bits - 1), 0.0, 1.0)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _first(value) -> float:
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(arr.shape, dtype=np.float64)
    return (arr - lo) / (hi - lo)


def _decode_dicom(data: bytes, name: str | None, max_pixels: int | None) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    ds = _read_dicom(data, name, force=True)
    width, height = _dicom_size(ds, name)
    _check_pixels(width, height, max_pixels, name)
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    try:
        arr = ds.pixel_array if frames <= 1 else ds.pixel_array[0]
    except Exception as err:  # missing codec, truncated pixel data, bad header
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageError(f"the DICOM pixel data cannot be decoded ({text[:160]}).", file=name,
                         fix=_dicom_fix(ds)) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3:  # colour DICOM (secondary capture): pydicom returns RGB
        bits = int(ds.get("BitsStored", 8) or 8)
        rgb = arr.astype(np.float64) / float(2 ** bits - 1)
        gray = rgb[..., 0] * GRAY_WEIGHTS[0] + rgb[..., 1] * GRAY_WEIGHTS[1] + rgb[..., 2] * GRAY_WEIGHTS[2]
        return np.clip(gray, 0, 1).astype(np.float32)
    arr = apply_modality_lut(arr, ds).astype(np.float64)  # Rescale Slope/Intercept or Modality LUT
    img: np.ndarray | None = None
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        img = _voi_lut(arr, ds.VOILUTSequence[0])
    if img is None and "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
            img = _window(arr, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
        except (TypeError, ValueError):
            img = None
    if img is None:
        img = _minmax(arr)
    img = np.clip(img, 0.0, 1.0)
    if photometric == "MONOCHROME1":  # high values are dark: invert so bone is bright
        img = 1.0 - img
    return img.astype(np.float32)


def _dicom_fix(ds) -> str:
    """What to do about undecodable DICOM pixels: a codec to install only when none is installed for the
    file's transfer syntax; with one installed (or for uncompressed data) the file itself is damaged."""
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        from pydicom.pixels.decoders.base import get_decoder

        decoder = get_decoder(uid) if uid is not None and uid.is_compressed else None
    except Exception:  # an unknown or unsupported transfer syntax
        decoder = None
        if uid is not None and getattr(uid, "is_compressed", False):
            return (f"re-export it uncompressed: no installed pydicom codec reads its transfer syntax "
                    f"({getattr(uid, 'name', uid)}).")
    if decoder is not None and not decoder.is_available:
        return ("re-export it uncompressed, or install a pydicom codec plugin (pylibjpeg or gdcm) for its "
                f"transfer syntax ({uid.name}).")
    return "the file is damaged (truncated or corrupt pixel data): re-export the study from the PACS."


def read_image(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a PNG (8/16-bit, L/LA/RGB/RGBA), JPEG or DICOM file to a float32 (H, W) array in [0, 1].

    `source` is a path, bytes or a binary file object. Alpha is ignored (NIH RGBA files are opaque);
    DICOM gets its modality LUT (rescale), VOI LUT or window, and MONOCHROME1 inversion.
    """
    data, name = _load(source)
    fmt = _format_or_raise(data, name)
    if fmt == "dicom":
        return _decode_dicom(data, name, max_pixels)
    return _decode_raster(data, fmt, name, max_pixels)


def resize(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a (H, W) or (H, W, C) image to `size` (an int for square, or (width, height)).

    Area averaging when shrinking (no aliasing), bilinear when enlarging: the same rule and
    result (to ~1e-5) as the tf.data pipeline, so the UI and training see the same pixels.
    """
    width, height = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    shrink = width <= w and height <= h
    out = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if img.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
        out = out[..., None]
    return out


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float image in [0, 1] -> uint8 in [0, 255] (rounded, clipped) for display and PNG export."""
    arr = np.asarray(img, dtype=np.float32)
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def is_image_name(name: str) -> bool:
    """True when a file name has one of the suffixes this module reads (case-insensitive)."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES
