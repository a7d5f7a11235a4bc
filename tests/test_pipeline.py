"""cxrcore.data.pipeline: tf.data batches from a split table, normalization, augmentation and caches."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from cxrcore.data import images, pipeline
from cxrcore.data.labels import LABELS
from cxrcore.data.pipeline import Augmentation, Normalization
from cxrcore.errors import ConfigError, DatasetError

SIZE = 32


def _frame(names: list[str]) -> pd.DataFrame:
    """Split table whose label bits encode the row number, so order can be checked after batching."""
    rows = []
    for i, name in enumerate(names):
        row = {"Image": name, "PatientId": i}
        row.update({label: (i >> j) & 1 for j, label in enumerate(LABELS)})
        rows.append(row)
    return pd.DataFrame(rows)


def _row_ids(targets: np.ndarray) -> list[int]:
    return [int(sum(int(v) << j for j, v in enumerate(row))) for row in targets]


def _write_pngs(folder, n: int, h: int = 40, w: int = 48, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        arr = cv2.GaussianBlur(rng.integers(0, 255, (h, w), dtype=np.uint8), (5, 5), 0)
        arr[:, : w // 4] = 10  # asymmetric, so flips are visible
        name = f"img_{i:03d}.png"
        cv2.imwrite(str(folder / name), arr)
        names.append(name)
    return names


def _collect(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


# ---------------------------------------------------------------- shapes, order, normalization

def test_batches_have_model_shapes_and_label_order(tmp_path):
    names = _write_pngs(tmp_path, 6)
    ds = pipeline.make_dataset(_frame(names), tmp_path, input_size=SIZE, batch_size=4)
    batches = list(ds)
    assert [tuple(x.shape) for x, _ in batches] == [(4, SIZE, SIZE, 3), (2, SIZE, SIZE, 3)]
    x, y = _collect(ds)
    assert x.dtype == np.float32 and y.dtype == np.float32 and y.shape == (6, 14)
    assert _row_ids(y) == list(range(6))
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # gray replicated to 3 channels
    # default 'sample' normalization: each image zero mean, unit std
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(1, 2, 3)), 1, atol=1e-3)


@pytest.mark.parametrize("png_decoder", ["tf", "fast", "auto"])
def test_tf_decoding_matches_numpy_prepare_for_every_format(tmp_path, png_decoder):
    """The training pipeline (tf ops, with either PNG decoder) and the UI path (numpy) give the same pixels."""
    if png_decoder == "fast" and not images.fast_png_available():
        pytest.skip("kornia-rs not installed")
    from tests.test_image_cache import every_format  # one file of each kind the decoders take

    files = {os.path.basename(p): p for p in every_format(tmp_path)}
    ds = pipeline.image_dataset(list(files.values()), input_size=SIZE, batch_size=16, normalization=None,
                                png_decoder=png_decoder)
    got = next(iter(ds)).numpy()
    want = pipeline.prepare_images([images.read_image(p) for p in files.values()], SIZE, None)
    for i, name in enumerate(files):
        assert np.abs(got[i] - want[i]).max() < 2e-4, name


def test_dataset_and_imagenet_normalization(tmp_path):
    names = _write_pngs(tmp_path, 3)
    frame = _frame(names)
    raw, _ = _collect(pipeline.make_dataset(frame, tmp_path, input_size=SIZE, normalization=None))
    norm = Normalization.dataset(0.25, 0.5)
    x, _ = _collect(pipeline.make_dataset(frame, tmp_path, input_size=SIZE, normalization=norm))
    np.testing.assert_allclose(x, (raw - 0.25) / (0.5 + pipeline.EPSILON), atol=1e-5)
    x, _ = _collect(pipeline.make_dataset(frame, tmp_path, input_size=SIZE, normalization=Normalization.imagenet()))
    for c in range(3):
        want = (raw[..., c] - pipeline.IMAGENET_MEAN[c]) / (pipeline.IMAGENET_STD[c] + pipeline.EPSILON)
        np.testing.assert_allclose(x[..., c], want, atol=1e-5)
    # numpy twin (used for prediction) agrees
    np.testing.assert_allclose(norm.apply(raw), (raw - 0.25) / (0.5 + pipeline.EPSILON), atol=1e-6)


def test_normalization_serialization_and_validation():
    for norm in (Normalization(), Normalization.dataset(0.5, 0.2), Normalization.imagenet()):
        assert Normalization.from_dict(norm.to_dict()) == norm
    assert Normalization.from_dict("sample") == Normalization.sample()
    assert Normalization.dataset(0.5, 0.2).to_dict() == {"mode": "dataset", "mean": [0.5], "std": [0.2]}
    with pytest.raises(ConfigError, match="unknown normalization mode"):
        Normalization("zscore")
    with pytest.raises(ConfigError, match="positive"):
        Normalization.dataset(0.5, 0.0)
    unfitted = Normalization("dataset")
    assert not unfitted.fitted
    with pytest.raises(ConfigError, match="estimate_normalization"):
        unfitted.apply(np.zeros((1, 4, 4, 3), np.float32))


def test_estimate_normalization_from_training_images(tmp_path):
    for i, value in enumerate((51, 153)):  # 0.2 and 0.6
        cv2.imwrite(str(tmp_path / f"c{i}.png"), np.full((40, 40), value, np.uint8))
    norm = pipeline.estimate_normalization(_frame(["c0.png", "c1.png"]), tmp_path, input_size=SIZE)
    assert norm.mode == "dataset"
    np.testing.assert_allclose(norm.mean, [0.4], atol=1e-4)
    np.testing.assert_allclose(norm.std, [0.2], atol=1e-4)


# ---------------------------------------------------------------- files and errors

def test_missing_files_raise_dataset_error_before_decoding(tmp_path):
    names = _write_pngs(tmp_path, 2)
    frame = _frame(names + ["gone_1.png", "gone_2.png"])
    with pytest.raises(DatasetError, match="2 of 4 images are missing: gone_1.png, gone_2.png"):
        pipeline.make_dataset(frame, tmp_path, input_size=SIZE)
    with pytest.raises(DatasetError, match="image folder does not exist"):
        pipeline.make_dataset(frame, tmp_path / "nope", input_size=SIZE)
    with pytest.raises(DatasetError, match="lacks label column"):
        pipeline.make_dataset(frame.drop(columns=["Mass"]), tmp_path, input_size=SIZE)


def test_images_in_nih_style_subfolders_are_found(tmp_path):
    sub = tmp_path / "images_001" / "images"
    sub.mkdir(parents=True)
    names = _write_pngs(sub, 2)
    paths = pipeline.resolve_image_paths(_frame(names), tmp_path)
    assert paths == [str(sub / n) for n in names]


def test_broken_files_named_in_errors(tmp_path):
    names = _write_pngs(tmp_path, 2)
    data = (tmp_path / names[1]).read_bytes()
    (tmp_path / names[1]).write_bytes(data[: len(data) // 2])  # truncated download
    frame = _frame(names)
    with pytest.raises(DatasetError, match=r"1 image\(s\) cannot be used: img_001.png"):
        pipeline.make_dataset(frame, tmp_path, input_size=SIZE, check_headers=True)
    # without the header check, the truncated file goes to the careful decoder, which names it
    ds = pipeline.make_dataset(frame, tmp_path, input_size=SIZE, memory_cache=False)
    with pytest.raises(tf.errors.OpError, match="img_001.png.*truncated"):
        list(ds)


def test_png_decoder_share_follows_the_cores(monkeypatch):
    monkeypatch.setattr(images, "fast_png_available", lambda: True)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert [pipeline.fast_png_share(choice) for choice in ("auto", "fast", "tf")] == [0.5, 1, 0]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert pipeline.fast_png_share("auto") == 0.125  # the fast decoder holds the GIL: tf.io.decode_png scales
    assert pipeline._spread(8, 0.25).tolist() == [False, False, False, True] * 2
    assert pipeline._spread(5, 1.0).all() and not pipeline._spread(5, 0.0).any()
    monkeypatch.setattr(images, "fast_png_available", lambda: False)  # package missing: tf.io.decode_png only
    assert pipeline.fast_png_share("fast") == 0
    with pytest.raises(ConfigError, match="unknown PNG decoder"):
        pipeline.fast_png_share("libpng")


@pytest.mark.skipif(not images.fast_png_available(), reason="kornia-rs not installed")
def test_damaged_png_with_end_marker_is_named_by_the_fast_decoder(tmp_path):
    names = _write_pngs(tmp_path, 2)
    data = (tmp_path / names[1]).read_bytes()
    (tmp_path / names[1]).write_bytes(data[:60] + bytes(40) + data[100:])  # IEND intact, pixels garbled
    ds = pipeline.make_dataset(_frame(names), tmp_path, input_size=SIZE, memory_cache=False, png_decoder="fast")
    with pytest.raises(tf.errors.OpError, match="img_001.png.*damaged"):
        list(ds)


def test_oversized_header_is_refused_inside_the_pipeline(tmp_path):
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((300, 300), np.uint8))
    frame = _frame(["big.png"])
    ds = pipeline.make_dataset(frame, tmp_path, input_size=SIZE, max_pixels=50_000)
    with pytest.raises(tf.errors.OpError, match="megapixels"):
        list(ds)
    with pytest.raises(DatasetError, match="cannot be used: big.png.*megapixels"):
        pipeline.make_dataset(frame, tmp_path, input_size=SIZE, max_pixels=50_000, check_headers=True)


# ---------------------------------------------------------------- shuffle and augmentation

def test_shuffle_is_seeded_complete_and_reshuffled_each_epoch(tmp_path):
    names = _write_pngs(tmp_path, 8, 16, 16)
    frame = _frame(names)

    def orders(seed, memory_cache=True):
        ds = pipeline.make_dataset(frame, tmp_path, input_size=16, batch_size=3, shuffle=True, seed=seed,
                                   memory_cache=memory_cache)
        return [_row_ids(_collect(ds)[1]) for _ in range(2)]

    first = orders(7)
    assert sorted(first[0]) == list(range(8))
    assert first[0] != first[1]  # a new order every epoch
    assert orders(7) == first  # same seed, same orders
    assert orders(8) != first
    no_cache = orders(7, memory_cache=False)
    assert sorted(no_cache[1]) == list(range(8)) and no_cache[0] != no_cache[1]


def test_augmentation_defaults_and_validation():
    aug = Augmentation()
    assert aug.horizontal_flip is False  # the heart must stay on the left
    assert aug.rotation > 0 and aug.zoom > 0 and aug.shift > 0 and aug.brightness > 0 and aug.enabled
    assert not Augmentation.none().enabled
    assert Augmentation.from_dict(aug.to_dict()) == aug
    with pytest.raises(ConfigError, match="unknown augmentation"):
        Augmentation.from_dict({"vertical_flip": True})
    with pytest.raises(ConfigError, match=">= 0"):
        Augmentation(rotation=-1)


def test_augmentation_changes_images_per_epoch_reproducibly(tmp_path):
    names = _write_pngs(tmp_path, 4)
    frame = _frame(names)
    plain, _ = _collect(pipeline.make_dataset(frame, tmp_path, input_size=SIZE, normalization=None))

    def epochs(seed):
        ds = pipeline.make_dataset(frame, tmp_path, input_size=SIZE, normalization=None,
                                   augmentation=Augmentation(), seed=seed)
        return [_collect(ds)[0] for _ in range(2)]

    a = epochs(3)
    assert np.abs(a[0] - plain).mean() > 1e-3 and np.abs(a[0] - a[1]).mean() > 1e-3
    np.testing.assert_array_equal(epochs(3)[0], a[0])
    assert a[0].min() >= 0 and a[0].max() <= 1


def test_rotation_and_zoom_keep_the_center_and_flip_mirrors(tmp_path):
    names = _write_pngs(tmp_path, 4, 33, 33)
    frame = _frame(names)
    plain, _ = _collect(pipeline.make_dataset(frame, tmp_path, input_size=33, normalization=None))
    geo = Augmentation(rotation=20, zoom=0.2, shift=0, brightness=0)
    moved, _ = _collect(pipeline.make_dataset(frame, tmp_path, input_size=33, normalization=None, augmentation=geo))
    assert np.abs(moved - plain).mean() > 1e-3
    np.testing.assert_allclose(moved[:, 16, 16], plain[:, 16, 16], atol=1e-5)  # about the center
    flip = Augmentation(rotation=0, zoom=0, shift=0, brightness=0, horizontal_flip=True)
    flips = [_collect(pipeline.make_dataset(frame, tmp_path, input_size=33, normalization=None,
                                            augmentation=flip, seed=s))[0] for s in range(4)]
    mirrored = plain[:, :, ::-1]
    seen_flip = False
    for out in flips:
        for i in range(len(plain)):
            same = np.allclose(out[i], plain[i], atol=1e-5)
            flipped = np.allclose(out[i], mirrored[i], atol=1e-5)
            assert same or flipped
            seen_flip |= flipped
    assert seen_flip
    bright = Augmentation(rotation=0, zoom=0, shift=0, brightness=0.5)
    out, _ = _collect(pipeline.make_dataset(frame, tmp_path, input_size=33, normalization=None, augmentation=bright))
    dark = plain <= 1e-6
    np.testing.assert_allclose(out[dark], 0, atol=1e-6)  # gamma keeps black black


# ---------------------------------------------------------------- caches

def test_memory_cache_serves_later_epochs_without_the_files(tmp_path):
    names = _write_pngs(tmp_path, 3)
    ds = pipeline.make_dataset(_frame(names), tmp_path, input_size=SIZE)
    first, _ = _collect(ds)
    for name in names:
        (tmp_path / name).unlink()
    second, _ = _collect(ds)
    np.testing.assert_array_equal(first, second)


def test_disk_cache_is_used_and_invalidated_when_the_file_changes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    cache = tmp_path / "cache"
    names = _write_pngs(src, 2)
    frame = _frame(names)

    def pixels():
        ds = pipeline.make_dataset(frame, src, input_size=SIZE, normalization=None, memory_cache=False,
                                   cache_dir=cache)
        return _collect(ds)[0][..., 0]

    first = pixels()
    entries = sorted(cache.glob("*/*.u16"))
    assert len(entries) == 2
    store = pipeline.ImageCache(cache)
    target = store.path_for(src / names[0], SIZE)
    assert target in [str(e) for e in entries]
    # overwrite the cached entry with a marker: a second run must read the cache, not the PNG
    marker = tf.io.serialize_tensor(tf.fill((SIZE, SIZE, 1), tf.constant(65535, tf.uint16))).numpy()
    with open(target, "wb") as fh:
        fh.write(marker)
    again = pixels()
    np.testing.assert_allclose(again[0], 1.0)
    np.testing.assert_allclose(again[1], first[1], atol=1e-6)
    # the source changes (new content and mtime): its key changes, so it is decoded afresh
    cv2.imwrite(str(src / names[0]), np.zeros((40, 48), np.uint8))
    os.utime(src / names[0], ns=(1, 1))
    assert store.path_for(src / names[0], SIZE) != target
    np.testing.assert_allclose(pixels()[0], 0.0)
    # a half-written entry (interrupted run) is rebuilt, not parsed
    partial = store.path_for(src / names[1], SIZE)
    with open(partial, "wb") as fh:
        fh.write(marker[:100])
    np.testing.assert_allclose(pixels()[1], first[1], atol=1e-6)
    assert os.path.getsize(partial) == len(marker)
    removed = store.prune([store.path_for(src / n, SIZE) for n in names])
    assert removed == 1 and not os.path.exists(target)


def test_cache_key_depends_on_target_size(tmp_path):
    names = _write_pngs(tmp_path, 1)
    key = pipeline.ImageCache.key(tmp_path / names[0], 32)
    assert key != pipeline.ImageCache.key(tmp_path / names[0], 64)


def test_prepare_images_accepts_common_inputs():
    gray = np.linspace(0, 1, 50 * 40, dtype=np.float32).reshape(50, 40)
    as_u8 = images.to_uint8(gray)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    out = pipeline.prepare_images([gray, as_u8, rgb], SIZE, None)
    assert out.shape == (3, SIZE, SIZE, 3)
    np.testing.assert_allclose(out[0], out[2], atol=1e-5)
    np.testing.assert_allclose(out[0], out[1], atol=3e-3)
    single = pipeline.prepare_images(gray, SIZE, Normalization())
    assert single.shape == (1, SIZE, SIZE, 3)
    assert abs(float(single.mean())) < 1e-4


def test_invalid_pipeline_settings(tmp_path):
    names = _write_pngs(tmp_path, 1)
    with pytest.raises(ConfigError, match="mean/std"):
        pipeline.make_dataset(_frame(names), tmp_path, input_size=SIZE, normalization=Normalization("dataset"))
    with pytest.raises(ConfigError, match="batch_size"):
        pipeline.make_dataset(_frame(names), tmp_path, input_size=SIZE, batch_size=0)
    with pytest.raises(DatasetError, match="no images"):
        pipeline.image_dataset([], input_size=SIZE)
    with pytest.raises(ConfigError, match="cache folder"):
        pipeline.ImageCache(tmp_path / "bad[dir]")
