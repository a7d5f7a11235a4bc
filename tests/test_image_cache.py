"""cxrcore.train.image_cache: decode once into a memory map; tf.data's pixels; resumable; invalidated per file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cxrcore.data import images
from cxrcore.errors import DatasetError
from cxrcore.train import image_cache
from cxrcore.train.image_cache import open_image_cache

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32


def write_pngs(folder: Path, n: int, h: int = 40, w: int = 48, seed: int = 0) -> list[str]:
    """n smooth 8-bit gray PNGs with an asymmetric dark band; their full paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = cv2.GaussianBlur(rng.integers(0, 255, (h, w), dtype=np.uint8), (5, 5), 0)
        arr[:, : w // 4] = 10
        path = folder / f"img_{i:03d}.png"
        cv2.imwrite(str(path), arr)
        paths.append(str(path))
    return paths


def every_format(folder: Path) -> list[str]:
    """One small file per format and layout the decoders take (PNG 8/16-bit, RGB, RGBA, LA, JPEG, an
    image to enlarge, MONOCHROME1 DICOM); their paths."""
    from tests.test_images import _dicom

    rng = np.random.default_rng(1)
    base = cv2.GaussianBlur(rng.integers(0, 255, (50, 60), dtype=np.uint8), (3, 3), 0)
    cv2.imwrite(str(folder / "l8.png"), base)
    cv2.imwrite(str(folder / "l16.png"), base.astype(np.uint16) * 257 + 100)
    rgb = np.stack([base, base // 2, 255 - base], axis=2)
    Image.fromarray(rgb, "RGB").save(folder / "rgb.png")
    Image.fromarray(np.concatenate([rgb, np.full((50, 60, 1), 128, np.uint8)], 2), "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.stack([base, base], 2), "LA").save(folder / "la.png")
    cv2.imwrite(str(folder / "q.jpg"), base)
    cv2.imwrite(str(folder / "tiny.png"), base[:20, :24])  # enlarged: bilinear
    (folder / "scan.dcm").write_bytes(_dicom(base.astype(np.uint16) * 16, PhotometricInterpretation="MONOCHROME1"))
    return [str(folder / n) for n in ["l8.png", "l16.png", "rgb.png", "rgba.png", "la.png", "q.jpg", "tiny.png",
                                      "scan.dcm"]]


def test_pixels_equal_the_tf_data_pipeline_for_every_format(tmp_path):
    import tensorflow as tf  # noqa: F401 - the reference is today's tf.data pipeline

    from cxrcore.data import pipeline

    paths = every_format(tmp_path)
    cache = open_image_cache(paths, SIZE, tmp_path / "cache")
    assert cache.pixels.shape == (len(paths), SIZE, SIZE) and cache.pixels.dtype == np.uint16
    ds = pipeline.image_dataset(paths, input_size=SIZE, batch_size=16, normalization=None)
    want = next(iter(ds)).numpy()[..., 0]
    got = cache.pixels.astype(np.float32) / 65535.0
    for i, path in enumerate(paths):
        assert np.abs(got[i] - want[i]).max() < 2e-4, path  # tf vs numpy decoding, as test_pipeline pins


def test_rows_follow_the_paths_and_repeats_are_decoded_once(tmp_path):
    paths = write_pngs(tmp_path, 3)
    order = [paths[2], paths[0], paths[2], paths[1]]
    calls = []
    real = image_cache.decode_for_cache

    def counting(path, size, max_pixels):
        calls.append(path)
        return real(path, size, max_pixels)

    seen = []
    image_cache.decode_for_cache = counting
    try:
        cache = open_image_cache(order, SIZE, tmp_path / "cache", progress=lambda d, t: seen.append((d, t)))
    finally:
        image_cache.decode_for_cache = real
    assert sorted(calls) == sorted(paths)  # each distinct file once
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)
    for row, path in enumerate(order):
        np.testing.assert_array_equal(cache.pixels[row], real(path, SIZE, None))
    assert not cache.pixels.flags.writeable


def test_pool_of_processes_gives_the_same_array(tmp_path):
    paths = write_pngs(tmp_path, 40, seed=3)
    inline = open_image_cache(paths, SIZE, tmp_path / "one", workers=1)
    pooled = open_image_cache(paths, SIZE, tmp_path / "two", workers=2)
    np.testing.assert_array_equal(inline.pixels, pooled.pixels)


def test_second_open_reads_the_cache_and_a_changed_file_is_decoded_again(tmp_path):
    paths = write_pngs(tmp_path, 3)
    cache = open_image_cache(paths, SIZE, tmp_path / "cache")
    first = np.array(cache.pixels)
    # plant a marker in rows 0 and 1: an unchanged file must be served from the cache, not decoded
    writable = np.load(cache.file, mmap_mode="r+")
    writable[0:2] = 7
    writable.flush()
    seen = []
    again = open_image_cache(paths, SIZE, tmp_path / "cache", progress=lambda d, t: seen.append(d))
    assert seen == [3] and (again.pixels[0:2] == 7).all()
    # new bytes with the same size and the old mtime (a `cp -p` over it): the ctime still changes
    stat = os.stat(paths[0])
    fresh = cv2.imencode(".png", np.full((40, 48), 200, np.uint8))[1].tobytes()
    Path(paths[0]).write_bytes(fresh)
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = open_image_cache(paths, SIZE, tmp_path / "cache")
    np.testing.assert_array_equal(again.pixels[0], np.full((SIZE, SIZE), round(200 / 255 * 65535), np.uint16))
    assert (again.pixels[1] == 7).all()  # untouched files keep their rows
    np.testing.assert_array_equal(again.pixels[2], first[2])
    # another size or another list is another array
    assert open_image_cache(paths, 16, tmp_path / "cache").pixels.shape == (3, 16, 16)
    assert image_cache.cache_key(paths, SIZE) != image_cache.cache_key(paths[::-1], SIZE)


def test_a_damaged_cache_file_is_rebuilt(tmp_path):
    paths = write_pngs(tmp_path, 2)
    cache = open_image_cache(paths, SIZE, tmp_path / "cache")
    want = np.array(cache.pixels)
    stamps = cache.file.with_name(cache.file.name.replace(".pixels.npy", ".stamps.npy"))
    stamps.write_bytes(stamps.read_bytes()[:20])  # header cut by a kill
    np.testing.assert_array_equal(open_image_cache(paths, SIZE, tmp_path / "cache").pixels, want)
    cache.file.write_bytes(b"")
    np.testing.assert_array_equal(open_image_cache(paths, SIZE, tmp_path / "cache").pixels, want)


def test_resumes_after_kill_9_where_it_stopped(tmp_path):
    paths = write_pngs(tmp_path, 60, seed=5)
    (tmp_path / "paths.json").write_text(json.dumps(paths))
    script = textwrap.dedent(f"""
        import json, os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from cxrcore.train.image_cache import open_image_cache
        paths = json.load(open({str(tmp_path / 'paths.json')!r}))
        def progress(done, total):
            if done >= 20:
                os.kill(os.getpid(), signal.SIGKILL)
        open_image_cache(paths, {SIZE}, {str(tmp_path / 'cache')!r}, workers=1, progress=progress)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    seen = []
    cache = open_image_cache(paths, SIZE, tmp_path / "cache", workers=1, progress=lambda d, t: seen.append(d))
    assert 20 <= seen[0] < 60 and seen[-1] == 60  # the rows done before the kill are not decoded again
    fresh = open_image_cache(paths, SIZE, tmp_path / "fresh", workers=1)
    np.testing.assert_array_equal(cache.pixels, fresh.pixels)


def test_missing_and_truncated_images_are_named(tmp_path):
    paths = write_pngs(tmp_path, 3)
    with pytest.raises(DatasetError, match=r"2 of 5 images are missing: gone_1.png, gone_2.png"):
        open_image_cache(paths + [str(tmp_path / "gone_1.png"), str(tmp_path / "gone_2.png")], SIZE, tmp_path / "c")
    good = Path(paths[1]).read_bytes()
    Path(paths[1]).write_bytes(good[: len(good) // 2])  # truncated download
    with pytest.raises(DatasetError, match=r"1 image\(s\) cannot be used: img_001.png "
                                           r"\(first problem: the PNG file is truncated") as err:
        open_image_cache(paths, SIZE, tmp_path / "c")
    assert err.value.file == paths[1]
    Path(paths[1]).write_bytes(good)  # fixed: only that row is decoded now
    seen = []
    cache = open_image_cache(paths, SIZE, tmp_path / "c", progress=lambda d, t: seen.append(d))
    assert seen[0] == 2
    np.testing.assert_array_equal(cache.pixels[1], image_cache.decode_for_cache(paths[1], SIZE, None))
    Image.new("L", (300, 300)).save(tmp_path / "big.png")
    with pytest.raises(DatasetError, match="big.png.*megapixels"):
        open_image_cache([str(tmp_path / "big.png")], SIZE, tmp_path / "c", max_pixels=50_000)
    with pytest.raises(DatasetError, match="no images"):
        open_image_cache([], SIZE, tmp_path / "c")


def test_cache_and_batches_never_import_tensorflow(tmp_path):
    paths = write_pngs(tmp_path, 12)
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["KERAS_BACKEND"] = "jax"
        sys.path.insert(0, {str(ROOT)!r})
        from cxrcore.data.pipeline import Augmentation, Normalization
        from cxrcore.train.batches import ImageBatches
        from cxrcore.train.image_cache import open_image_cache
        cache = open_image_cache({paths!r}, {SIZE}, {str(tmp_path / 'cache')!r}, workers=2)
        x = ImageBatches(cache, None, batch_size=8, normalization=Normalization(), augmentation=Augmentation(),
                         shuffle=True)[0]
        assert x.shape == (8, {SIZE}, {SIZE}, 3), x.shape
        print("tensorflow" in sys.modules)
    """)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"
