"""cxrcore.data.images: PNG/JPEG/DICOM decoding to [0, 1] grayscale, header checks and clear errors."""
from __future__ import annotations

import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pytest
from PIL import Image

from cxrcore.data import images
from cxrcore.errors import ImageError


def _ramp(h: int = 24, w: int = 32, hi: int = 255) -> np.ndarray:
    return (np.linspace(0, hi, h * w).reshape(h, w)).round().astype(np.uint16 if hi > 255 else np.uint8)


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def _dicom(arr: np.ndarray, **attrs) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    if arr.size:
        ds.PixelData = arr.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ---------------------------------------------------------------- PNG / JPEG

def test_png_8bit_gray_is_scaled_to_unit_range(tmp_path):
    arr = _ramp()
    path = tmp_path / "a.png"
    path.write_bytes(_png(arr))
    img = images.read_image(path)
    assert img.dtype == np.float32 and img.shape == (24, 32)
    np.testing.assert_allclose(img, arr / 255.0, atol=1e-6)
    assert images.image_size(path) == (32, 24)


def test_png_16bit_keeps_full_precision():
    arr = _ramp(hi=65535)
    img = images.read_image(_png(arr))
    np.testing.assert_allclose(img, arr / 65535.0, atol=1e-7)
    assert len(np.unique(img)) > 256  # not squeezed through 8 bits


def test_rgb_uses_luma_weights_and_rgba_alpha_is_ignored():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255  # red in RGB order
    want = images.GRAY_WEIGHTS[0]
    png_rgb = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(png_rgb, format="PNG")
    np.testing.assert_allclose(images.read_image(png_rgb.getvalue()), want, atol=1e-6)
    rgba = np.concatenate([rgb, np.zeros((8, 8, 1), np.uint8)], axis=2)  # fully transparent
    png_rgba = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(png_rgba, format="PNG")
    np.testing.assert_allclose(images.read_image(png_rgba.getvalue()), want, atol=1e-6)


def test_la_png_and_file_object_and_bytes_sources():
    gray = _ramp(8, 8)
    la = np.stack([gray, np.full_like(gray, 7)], axis=2)
    buf = io.BytesIO()
    Image.fromarray(la, "LA").save(buf, format="PNG")
    np.testing.assert_allclose(images.read_image(io.BytesIO(buf.getvalue())), gray / 255.0, atol=1e-6)
    np.testing.assert_allclose(images.read_image(bytearray(buf.getvalue())), gray / 255.0, atol=1e-6)


def test_jpeg_decodes_close_to_source_and_reports_size(tmp_path):
    arr = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    path = tmp_path / "x.jpg"
    path.write_bytes(buf.tobytes())
    img = images.read_image(path)
    assert img.shape == (48, 64)
    assert np.abs(img - arr / 255.0).mean() < 0.01
    assert images.image_size(path) == (64, 48)


@pytest.mark.parametrize("fmt", [".png", ".jpg"])
def test_truncated_files_raise_image_error(tmp_path, fmt):
    rng = np.random.default_rng(0)
    ok, buf = cv2.imencode(fmt, rng.integers(0, 255, (64, 64), dtype=np.uint8))
    path = tmp_path / f"cut{fmt}"
    path.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(ImageError, match="truncated|damaged") as err:
        images.read_image(path)
    assert "cut" in str(err.value)


def test_empty_missing_and_non_image_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        images.read_image(empty)
    text = tmp_path / "notes.png"
    text.write_text("patient notes, not an image")
    with pytest.raises(ImageError, match="not a PNG, JPEG or DICOM"):
        images.read_image(text)
    with pytest.raises(ImageError, match="does not exist"):
        images.read_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="PNG file is truncated"):
        images.image_size(b"\x89PNG\r\n\x1a\n\x00\x00")


def test_decompression_bomb_refused_from_header_before_decoding():
    big = np.zeros((3000, 2000), np.uint8)  # 6 MP of zeros compresses to a few kB
    data = _png(big)
    assert len(data) < 100_000
    assert images.image_size(data) == (2000, 3000)
    with pytest.raises(ImageError, match="megapixels"):
        images.read_image(data, max_pixels=1_000_000)
    # a header that lies (claims 100000 x 100000) is refused without touching the pixels
    small = bytearray(_png(np.zeros((4, 4), np.uint8)))
    small[16:24] = (100000).to_bytes(4, "big") + (100000).to_bytes(4, "big")
    with pytest.raises(ImageError, match="decompression bomb"):
        images.read_image(bytes(small))
    assert images.read_image(data, max_pixels=None).shape == (3000, 2000)


# ---------------------------------------------------------------- fast PNG decoder (kornia-rs)

def _png_variants() -> dict[str, bytes]:
    """One PNG of every colour type and bit depth X-ray sets use, plus the ones sent to OpenCV."""
    rng = np.random.default_rng(3)
    g8 = rng.integers(0, 256, (23, 31), dtype=np.uint8)
    g16 = rng.integers(0, 65536, (23, 31), dtype=np.uint16)
    out = {"L8": _png(g8), "L16": _png(g16)}
    for ch, name in ((3, "RGB"), (4, "RGBA")):
        out[f"{name}8"] = _png(rng.integers(0, 256, (23, 31, ch), dtype=np.uint8))
        out[f"{name}16"] = _png(rng.integers(0, 65536, (23, 31, ch), dtype=np.uint16))
    for mode, arr in (("LA", np.stack([g8, g8], 2)), ("P", np.stack([g8, g8 // 2, 255 - g8], 2)), ("1", g8 > 128)):
        buf = io.BytesIO()
        img = Image.fromarray(arr if mode != "P" else arr.astype(np.uint8))
        (img.convert(mode) if mode != "1" else img).save(buf, "PNG")
        out[mode] = buf.getvalue()
    return out


@pytest.mark.skipif(not images.fast_png_available(), reason="kornia-rs not installed")
def test_fast_png_decoder_gives_opencvs_pixels_and_leaves_rare_types_to_it(monkeypatch):
    for name, data in _png_variants().items():
        reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        fast = images.decode_png_fast(data)
        if name in ("LA", "P", "1"):  # gray+alpha, palette, 1-bit: OpenCV decodes them
            assert fast is None and not images.fast_png_supported(data), name
            continue
        assert fast is not None and fast.dtype == reference.dtype, name
        rgb_order = reference if reference.ndim == 2 else reference[..., [2, 1, 0, 3][: reference.shape[2]]]
        np.testing.assert_array_equal(fast, rgb_order, err_msg=name)  # OpenCV gives BGR(A)
        with_fast = images.read_image(data)
        monkeypatch.setattr(images, "_kornia_io", None)  # the OpenCV fallback: same float image
        np.testing.assert_array_equal(images.read_image(data), with_fast, err_msg=name)
        monkeypatch.undo()


@pytest.mark.skipif(not images.fast_png_available(), reason="kornia-rs not installed")
def test_fast_png_decoder_never_sees_bombs_and_damaged_data_falls_back(monkeypatch):
    calls = []
    real = images._kornia_io

    class Spy:
        def decode_image_png_u8(self, data, shape, mode):
            calls.append(shape)
            return real.decode_image_png_u8(data, shape, mode)

    monkeypatch.setattr(images, "_kornia_io", Spy())
    small = bytearray(_png(np.zeros((4, 4), np.uint8)))
    small[16:24] = (100000).to_bytes(4, "big") + (100000).to_bytes(4, "big")
    with pytest.raises(ImageError, match="decompression bomb"):
        images.read_image(bytes(small))
    assert calls == []  # refused from the header: the decoder never allocated 10 gigapixels
    good = _png(_ramp())
    damaged = good[:60] + bytes(40) + good[100:]  # end marker intact, IDAT garbled
    with pytest.raises(ImageError, match="damaged"):
        images.read_image(damaged)
    assert calls == [(24, 32)]  # tried, refused the data, OpenCV refused it too


# ---------------------------------------------------------------- DICOM

def _stored() -> np.ndarray:
    return np.linspace(0, 4095, 16 * 20).reshape(16, 20).round().astype(np.uint16)


def test_dicom_monochrome2_and_monochrome1_inverted(tmp_path):
    stored = _stored()
    expected = (stored - stored.min()) / (stored.max() - stored.min())
    path = tmp_path / "m2.dcm"
    path.write_bytes(_dicom(stored))
    np.testing.assert_allclose(images.read_image(path), expected, atol=1e-6)
    assert images.image_size(path) == (20, 16)
    inv = images.read_image(_dicom(stored, PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_allclose(inv, 1.0 - expected, atol=1e-6)


def test_dicom_rescale_then_window():
    stored = _stored()
    data = _dicom(stored, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=1000, WindowWidth=2001)
    hu = stored.astype(np.float64) * 2 - 1024
    expected = np.clip((hu - (1000 - 0.5)) / (2001 - 1) + 0.5, 0, 1)
    img = images.read_image(data)
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert img.min() == 0.0 and img.max() == 1.0  # the window saturates both ends


def test_dicom_voi_lut_sequence():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = _stored()
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    lut = (np.arange(4096) // 16).astype(np.uint16)
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data as US values
    data = _dicom(stored, VOILUTSequence=Sequence([item]))
    np.testing.assert_allclose(images.read_image(data), lut[stored] / 255.0, atol=1e-6)


def test_dicom_without_pixel_data_and_oversized_dicom():
    with pytest.raises(ImageError, match="no pixel data"):
        images.read_image(_dicom(np.zeros((0, 0), np.uint16), Rows=0, Columns=0))
    huge = _dicom(np.zeros((4, 4), np.uint16), Rows=20000, Columns=20000)
    with pytest.raises(ImageError, match="megapixels"):
        images.read_image(huge)


# ---------------------------------------------------------------- helpers

def test_resize_area_when_shrinking_bilinear_when_enlarging():
    img = np.zeros((4, 4), np.float32)
    img[:, 2:] = 1.0
    small = images.resize(img, 2)
    np.testing.assert_allclose(small, [[0, 1], [0, 1]])  # exact area average
    wide = images.resize(img, (8, 2))  # (width, height)
    assert wide.shape == (2, 8)
    big = images.resize(img, 8)
    assert big.shape == (8, 8) and 0 < big[0, 3] < 1  # interpolated edge
    assert images.resize(img[..., None], 2).shape == (2, 2, 1)


def test_to_uint8_rounds_and_clips():
    out = images.to_uint8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0], np.float32))
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 128, 255, 255]


def test_quick_check_reads_header_and_end_marker_only(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(_png(_ramp()))
    assert images.quick_check(good) == (32, 24)
    data = good.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[:-20])  # the header is intact, the end is missing
    assert images.image_size(cut) == (32, 24)
    with pytest.raises(ImageError, match="truncated"):
        images.quick_check(cut)
    ok, buf = cv2.imencode(".jpg", _ramp())
    jpg = tmp_path / "padded.jpg"
    jpg.write_bytes(buf.tobytes() + b"\x00\x00")  # zero padding after the end marker is fine
    assert images.quick_check(jpg) == (32, 24)
    with pytest.raises(ImageError, match="megapixels"):
        images.quick_check(good, max_pixels=100)
