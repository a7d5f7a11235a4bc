"""cxrcore.train.batches: batches from the image cache equal tf.data's; shuffle and augmentation per (seed, epoch)."""
from __future__ import annotations

import numpy as np
import pytest

from cxrcore.data.pipeline import Augmentation, Normalization
from cxrcore.errors import ConfigError
from cxrcore.train.batches import ImageBatches, augment, augmentation_params
from cxrcore.train.image_cache import open_image_cache
from tests.test_image_cache import write_pngs

SIZE = 32


def _targets(n: int) -> np.ndarray:
    """Label bits encode the row number, so order can be checked after batching."""
    return np.array([[(i >> j) & 1 for j in range(14)] for i in range(n)], dtype=np.float32)


def _row_ids(y: np.ndarray) -> list[int]:
    return [int(sum(int(v) << j for j, v in enumerate(row))) for row in y]


def _all(batches: ImageBatches) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[batches[i] for i in range(len(batches))])
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture
def cache(tmp_path):
    paths = write_pngs(tmp_path, 10, seed=2)
    return open_image_cache(paths, SIZE, tmp_path / "cache")


@pytest.mark.parametrize("norm", [Normalization(), Normalization.dataset(0.4, 0.2), Normalization.imagenet(),
                                  Normalization.dataset([0.3, 0.4, 0.5], [0.2, 0.25, 0.3]), None],
                         ids=["sample", "dataset", "imagenet", "dataset-rgb", "raw"])
def test_batches_equal_the_tf_data_pipeline(cache, norm):
    from cxrcore.data import pipeline

    y = _targets(len(cache))
    ds = pipeline.image_dataset(list(cache.paths), targets=y, input_size=SIZE, batch_size=4, normalization=norm)
    want = [(a.numpy(), b.numpy()) for a, b in ds]
    batches = ImageBatches(cache, y, batch_size=4, normalization=norm, threads=2)
    assert len(batches) == len(want) == 3
    for i, (wx, wy) in enumerate(want):
        x, got_y = batches[i]
        assert x.dtype == np.float32 and x.shape == wx.shape and got_y.dtype == np.float32
        np.testing.assert_allclose(x, wx, atol=3e-3)  # the cache's numpy decode is tf's to 2e-4
        np.testing.assert_array_equal(got_y, wy)


def test_shuffle_depends_on_seed_and_epoch_only(cache):
    y = _targets(len(cache))

    def epoch_rows(seed, epoch, threads=2):
        batches = ImageBatches(cache, y, batch_size=3, normalization=Normalization(), shuffle=True, seed=seed,
                               threads=threads)
        batches.set_epoch(epoch)
        x, got = _all(batches)
        return x, _row_ids(got)

    x0, first = epoch_rows(7, 0)
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert epoch_rows(7, 1)[1] != first  # a new order every epoch
    x_again, again = epoch_rows(7, 0, threads=1)
    assert again == first  # a resumed job sees the same batches, whatever the threads
    np.testing.assert_array_equal(x_again, x0)
    assert epoch_rows(8, 0)[1] != first
    plain, _ = _all(ImageBatches(cache, y, batch_size=3, normalization=Normalization()))
    np.testing.assert_array_equal(x0, plain[first])  # images travel with their labels
    batches = ImageBatches(cache, y, batch_size=3, normalization=Normalization(), shuffle=True, seed=7)
    batches.on_epoch_begin()  # Keras' fit: the first epoch is the one set, later ones move on
    batches.on_epoch_begin()
    assert batches.epoch == 1 and _row_ids(_all(batches)[1]) == epoch_rows(7, 1)[1]


def test_augmentation_is_reproducible_and_changes_per_epoch(cache):
    plain = ImageBatches(cache, None, batch_size=4, normalization=None)[0]
    batches = ImageBatches(cache, None, batch_size=4, normalization=None, augmentation=Augmentation(), seed=3)
    a0 = batches[0]
    batches.set_epoch(1)
    a1 = batches[0]
    assert np.abs(a0 - plain).mean() > 1e-3 and np.abs(a0 - a1).mean() > 1e-3
    batches.set_epoch(0)
    np.testing.assert_array_equal(batches[0], a0)
    assert a0.min() >= 0 and a0.max() <= 1
    np.testing.assert_array_equal(a0[..., 0], a0[..., 2])
    off = ImageBatches(cache, None, batch_size=4, normalization=None, augmentation=Augmentation.none())
    np.testing.assert_array_equal(off[0], plain)


def test_rotation_and_zoom_keep_the_center_flip_mirrors_and_gamma_keeps_black(tmp_path):
    paths = write_pngs(tmp_path, 4, 33, 33)
    cache = open_image_cache(paths, 33, tmp_path / "cache")
    plain = ImageBatches(cache, None, batch_size=4, normalization=None)[0]
    geo = Augmentation(rotation=20, zoom=0.2, shift=0, brightness=0)
    moved = ImageBatches(cache, None, batch_size=4, normalization=None, augmentation=geo)[0]
    assert np.abs(moved - plain).mean() > 1e-3
    np.testing.assert_allclose(moved[:, 16, 16], plain[:, 16, 16], atol=1e-5)
    flip = Augmentation(rotation=0, zoom=0, shift=0, brightness=0, horizontal_flip=True)
    seen_flip = False
    for seed in range(4):
        out = ImageBatches(cache, None, batch_size=4, normalization=None, augmentation=flip, seed=seed)[0]
        for i in range(4):
            flipped = np.allclose(out[i], plain[i, :, ::-1], atol=1e-5)
            assert flipped or np.allclose(out[i], plain[i], atol=1e-5)
            seen_flip |= flipped
    assert seen_flip
    bright = Augmentation(rotation=0, zoom=0, shift=0, brightness=0.5)
    out = ImageBatches(cache, None, batch_size=4, normalization=None, augmentation=bright)[0]
    np.testing.assert_allclose(out[plain <= 1e-6], 0, atol=1e-6)


@pytest.mark.parametrize("fill", ["nearest", "constant", "reflect"])
def test_warp_means_what_the_tf_pipeline_means(fill):
    """Given the same draws, the numpy/OpenCV warp equals TensorFlow's ImageProjectiveTransformV3 and gamma."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48] / 47.0
    gray = np.stack([(0.5 + 0.4 * np.sin(3 * xx + k) * np.cos(2 * yy)) for k in range(6)]).astype(np.float32)
    aug = Augmentation(rotation=15, zoom=0.15, shift=0.1, brightness=0.3, horizontal_flip=True, fill=fill)
    maps, gamma = augmentation_params(aug, len(gray), 48, rng)
    ours = np.stack([augment(img.copy(), aug, maps[i], gamma[i]) for i, img in enumerate(gray)])
    transforms = np.concatenate([maps.reshape(-1, 6), np.zeros((len(gray), 2))], 1).astype(np.float32)
    theirs = tf.raw_ops.ImageProjectiveTransformV3(
        images=gray[..., None], transforms=transforms, output_shape=[48, 48], fill_value=0.0,
        interpolation="BILINEAR", fill_mode=fill.upper()).numpy()[..., 0]
    theirs = np.clip(theirs, 0, 1) ** gamma[:, None, None]
    assert np.abs(ours - theirs).mean() < 2e-3 and np.abs(ours - theirs).max() < 3e-2


def test_lengths_targets_and_settings(cache):
    y = _targets(len(cache))
    assert len(ImageBatches(cache, y, batch_size=4, normalization=Normalization())) == 3
    dropped = ImageBatches(cache, y, batch_size=4, normalization=Normalization(), drop_remainder=True)
    assert len(dropped) == 2 and dropped[1][0].shape[0] == 4
    with pytest.raises(IndexError):
        dropped[2]
    x = ImageBatches(cache, None, batch_size=4, normalization=Normalization())[2]
    assert isinstance(x, np.ndarray) and x.shape == (2, SIZE, SIZE, 3)
    with pytest.raises(ConfigError, match="targets must be"):
        ImageBatches(cache, y[:3], batch_size=4, normalization=Normalization())
    with pytest.raises(ConfigError, match="batch_size"):
        ImageBatches(cache, y, batch_size=0, normalization=Normalization())
    with pytest.raises(ConfigError, match="no mean/std"):
        ImageBatches(cache, y, batch_size=4, normalization=Normalization("dataset"))
    with pytest.raises(ConfigError, match="no full batch"):
        ImageBatches(cache, y, batch_size=20, normalization=Normalization(), drop_remainder=True)


def test_keras_fit_reads_it_as_a_py_dataset(cache):
    import keras

    y = _targets(len(cache))
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(14)])
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    batches = ImageBatches(cache, y, batch_size=4, normalization=Normalization(), augmentation=Augmentation(),
                           shuffle=True)
    history = model.fit(batches, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and batches.epoch == 1


def test_iterate_prefetches_the_same_batches_in_order(cache):
    y = _targets(len(cache))
    batches = ImageBatches(cache, y, batch_size=3, normalization=Normalization(), augmentation=Augmentation(),
                           shuffle=True, seed=4)
    batches.set_epoch(2)
    want = [batches[i] for i in range(len(batches))]
    for depth in (0, 1, 3):
        got = list(batches.iterate(prefetch=depth))
        assert len(got) == len(want)
        for (gx, gy), (wx, wy) in zip(got, want):
            np.testing.assert_array_equal(gx, wx)
            np.testing.assert_array_equal(gy, wy)
    first = next(iter(batches.iterate(prefetch=2)))  # abandoned early: the producer stops
    np.testing.assert_array_equal(first[0], want[0][0])
