"""Benchmark PNG decoders and the input pipeline against the course's ImageDataGenerator.

Run from the repository root:

    python bench/bench_pipeline.py                      # ../shared/nih, 300 files, 320 px
    python bench/bench_pipeline.py --data /path/to/nih --copies 10 --repeats 4 --json /tmp/bench.json

Measures, in one run, on the same real 1024x1024 NIH PNGs (the 30 sample images copied --copies
times into a temp folder, so every file is decoded, not served from a cache by name):
1. PNG decoders alone, one thread, CPU milliseconds per image: OpenCV (cxrcore.data.images' fallback),
   tf.io.decode_png, PIL (the course generator's), kornia-rs (the fast decoder), and imagecodecs or
   pyspng when installed; zlib inflate alone for scale; and whether two threads decode in parallel
   (the GIL). Checks that every decoder gives OpenCV's pixels.
2. decode + resize to 320 + normalize + batch, no model: the course's
   ImageDataGenerator.flow_from_dataframe (samplewise normalization, as its training generator)
   vs cxrcore.data.pipeline.make_dataset with png_decoder "auto" (the default: the fast decoder for 1 file in
   N on N cores, tf.io.decode_png for the others), "fast" (all) and "tf" (none), first pass
   and later epochs (memory cache), plus the disk cache on a fresh run; images/s and ratios
   (targets: >= 2x first pass, >= 10x from the second epoch).
The model fed from files vs from memory is measured by bench/bench_training.py.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxrcore.data.labels import LABELS, canonical_label  # noqa: E402


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "nih"),
                        help="NIH folder with sample_images/ (default: ../shared/nih)")
    parser.add_argument("--copies", type=int, default=10, help="copies of each sample image (default 10: 300 files)")
    parser.add_argument("--size", type=int, default=320, help="pipeline target size (default 320, as the course)")
    parser.add_argument("--batch", type=int, default=32, help="batch size for the pipeline comparison")
    parser.add_argument("--epochs", type=int, default=3, help="pipeline epochs (first pass + cached ones)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated runs of each contender (best kept)")
    parser.add_argument("--decoder-rounds", type=int, default=5, help="interleaved rounds of the decoder table")
    parser.add_argument("--skip-decoders", action="store_true", help="skip part 1 (PNG decoders alone)")
    parser.add_argument("--skip-generators", action="store_true", help="skip part 2 (pipeline vs course generator)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


def load_average() -> str:
    """The 1/5/15-minute load averages, printed with every section: the machine is shared."""
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def frame_for(names: list[str], data: Path) -> pd.DataFrame:
    """Split-table-shaped frame; real labels from Data_Entry when present (labels do not affect speed)."""
    labels: dict[str, set[str]] = {}
    entry = data / "Data_Entry_2017_v2020.csv.gz"
    if entry.is_file():
        table = pd.read_csv(entry, usecols=["Image Index", "Finding Labels"])
        wanted = {n.split("__", 1)[-1] for n in names}
        for image, found in table[table["Image Index"].isin(wanted)].itertuples(index=False):
            labels[image] = {canonical_label(x) for x in str(found).split("|")} - {None}
    rows = []
    for name in names:
        found = labels.get(name.split("__", 1)[-1], set())
        rows.append({"Image": name, **{label: int(label in found) for label in LABELS}})
    return pd.DataFrame(rows)


def copy_images(files: list[Path], dst: Path, copies: int) -> list[str]:
    """Copy every file `copies` times into dst (distinct names) and warm the OS page cache."""
    if not files:
        raise SystemExit("no PNG files to copy; pass --data")
    names = []
    for k in range(copies):
        for f in files:
            name = f"c{k:02d}__{f.name}"
            shutil.copyfile(f, dst / name)
            names.append(name)
    for name in names:  # warm the OS page cache so every contender reads from memory
        (dst / name).read_bytes()
    return names


def finish(result: dict, json_path: str | None) -> int:
    """Print the closing load average, write the numbers as JSON when asked; the exit status."""
    result["load_end"] = load_average()
    print(result["load_end"])
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


class Clock:
    """Wall time and process CPU time (all threads) of one timed section."""

    def __enter__(self) -> "Clock":
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


# --------------------------------------------------------------------------------------------
# 1. PNG decoders alone
# --------------------------------------------------------------------------------------------

def _idat(data: bytes) -> bytes:
    """The concatenated zlib stream of a PNG (its IDAT chunks), to time inflate alone."""
    pos, parts = 8, []
    while pos + 8 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IDAT":
            parts.append(data[pos + 8:pos + 8 + n])
        pos += 12 + n
    return b"".join(parts)


def decoder_candidates() -> dict[str, Callable[[bytes], np.ndarray]]:
    """Name -> bytes-to-pixels function for every PNG decoder installed here (gray 8-bit NIH files)."""
    import struct

    import cv2
    import tensorflow as tf
    from PIL import Image

    def buf(d: bytes) -> np.ndarray:
        return np.frombuffer(d, np.uint8)

    out: dict[str, Callable[[bytes], np.ndarray]] = {
        "OpenCV imdecode UNCHANGED (fallback)": lambda d: cv2.imdecode(buf(d), cv2.IMREAD_UNCHANGED),
        "OpenCV imdecode GRAYSCALE": lambda d: cv2.imdecode(buf(d), cv2.IMREAD_GRAYSCALE),
        "OpenCV imdecode REDUCED_GRAYSCALE_2 (half size)":
            lambda d: cv2.imdecode(buf(d), cv2.IMREAD_REDUCED_GRAYSCALE_2),
        "tf.io.decode_png channels=1 (eager)": lambda d: tf.io.decode_png(tf.constant(d), channels=1).numpy(),
        "PIL (course generator)": lambda d: np.asarray(Image.open(io.BytesIO(d))),
    }
    try:
        from kornia_rs import io as kio

        out["kornia-rs decode_image_png_u8 (fast decoder)"] = \
            lambda d: kio.decode_image_png_u8(d, struct.unpack(">II", d[16:24])[::-1], "mono")
    except ImportError:
        pass
    try:
        import imagecodecs

        out[f"imagecodecs {imagecodecs.__version__} png_decode (libpng)"] = imagecodecs.png_decode
        out["imagecodecs spng_decode (libspng)"] = imagecodecs.spng_decode
    except ImportError:
        pass
    try:
        import pyspng

        out["pyspng load (libspng)"] = pyspng.load
    except ImportError:
        pass
    return out


def _same_pixels(fn: Callable[[bytes], np.ndarray], data: bytes, reference: np.ndarray) -> bool | None:
    """True when the decoder gives OpenCV's pixels (None for the half-size decoder, which cannot)."""
    arr = np.asarray(fn(data))
    arr = arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
    if arr.shape != reference.shape:
        return None
    return bool(np.array_equal(arr, reference))


def _threads_rate(fn: Callable[[bytes], np.ndarray], datas: list[bytes], threads: int) -> tuple[float, float]:
    """(images/s, cores busy) decoding `datas` split over `threads` Python threads."""
    def work(chunk: list[bytes]) -> None:
        for d in chunk:
            fn(d)

    with Clock() as clock:
        pool = [threading.Thread(target=work, args=(datas[i::threads],)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    return rate(len(datas), clock.wall), clock.cpu / clock.wall


def bench_decoders(files: list[Path], rounds: int) -> dict:
    """CPU ms per image of each decoder alone (interleaved rounds, one thread), pixel check, GIL check."""
    import cv2

    cv2.setNumThreads(1)
    datas = [f.read_bytes() for f in files]
    gray = [d for d in datas if d[25] == 0]  # gray 8-bit files: every decoder reads them alike
    reference = cv2.imdecode(np.frombuffer(gray[0], np.uint8), cv2.IMREAD_UNCHANGED)
    candidates = decoder_candidates()
    candidates["zlib inflate of the IDAT stream only"] = zlib.decompress
    inputs = {name: ([_idat(d) for d in gray] if name.startswith("zlib") else gray) for name in candidates}
    per: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            fn(inputs[name][0])  # warm-up (TensorFlow's first call)
            start = time.process_time()
            for d in inputs[name]:
                fn(d)
            per[name].append(1000 * (time.process_time() - start) / len(inputs[name]))
    out: dict = {"images": len(gray), "decoders": {}}
    for name, values in per.items():
        same = None if name.startswith("zlib") else _same_pixels(candidates[name], gray[0], reference)
        out["decoders"][name] = {"cpu_ms_min": min(values), "cpu_ms_median": float(np.median(values)),
                                 "same_pixels_as_opencv": same}
    out["threads"] = {}
    for name in [n for n in candidates if n.startswith(("OpenCV imdecode UNCHANGED", "kornia-rs"))]:
        one, busy1 = _threads_rate(candidates[name], gray * 2, 1)
        two, busy2 = _threads_rate(candidates[name], gray * 2, 2)
        out["threads"][name] = {"1 thread": one, "2 threads": two, "cores busy 1": busy1, "cores busy 2": busy2}
    return out


# --------------------------------------------------------------------------------------------
# 2. Pipeline vs the course's generator
# --------------------------------------------------------------------------------------------

def _course_epochs(frame: pd.DataFrame, folder: Path, size: int, batch: int, epochs: int) -> tuple[list, list, str]:
    """The course's training generator: ImageDataGenerator(samplewise_center, samplewise_std_normalization)."""
    try:
        from tf_keras.preprocessing.image import ImageDataGenerator
        source = "tf_keras.preprocessing.image.ImageDataGenerator"
    except ImportError:  # pragma: no cover - tf-keras is pinned
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
        source = "keras.src.legacy.preprocessing.image.ImageDataGenerator"
    gen = ImageDataGenerator(samplewise_center=True, samplewise_std_normalization=True).flow_from_dataframe(
        dataframe=frame, directory=str(folder), x_col="Image", y_col=list(LABELS), class_mode="raw",
        batch_size=batch, shuffle=True, seed=1, target_size=(size, size))
    rates, cpu = [], []
    for _ in range(epochs):
        n = 0
        with Clock() as clock:
            for _ in range(len(gen)):
                x, _y = next(gen)
                n += len(x)
        rates.append(rate(n, clock.wall))
        cpu.append(1000 * clock.cpu / n)
    return rates, cpu, source


def _pipeline_epochs(frame: pd.DataFrame, folder: Path, size: int, batch: int, epochs: int,
                     png_decoder: str) -> tuple[list, list]:
    from cxrcore.data import pipeline

    ds = pipeline.make_dataset(frame, folder, input_size=size, batch_size=batch, shuffle=True, seed=1,
                               normalization=pipeline.Normalization.sample(), memory_cache=True,
                               png_decoder=png_decoder)
    rates, cpu = [], []
    for _ in range(epochs):
        n = 0
        with Clock() as clock:
            for x, _y in ds:
                n += int(x.shape[0])
        rates.append(rate(n, clock.wall))
        cpu.append(1000 * clock.cpu / n)
    return rates, cpu


def bench_generators(frame: pd.DataFrame, folder: Path, size: int, batch: int, epochs: int, repeats: int,
                     cache_dir: Path) -> dict:
    """Course generator vs the pipeline with each PNG decoder, alternated `repeats` times (each a fresh
    first pass); best run kept.

    Best-of-N per contender makes the ratio robust to other processes on a shared machine; the
    median, the paired ratios of each repeat and the CPU milliseconds per image (all threads) are
    reported too.
    """
    from cxrcore.data import pipeline

    decoders = ["auto", "fast", "tf"] if pipeline.fast_png_share("fast") > 0 else ["tf"]
    runs: dict[str, list] = {"course": [], **{f"pipeline {d}": [] for d in decoders}}
    source = ""
    for _ in range(repeats):
        rates, cpu, source = _course_epochs(frame, folder, size, batch, epochs)
        runs["course"].append((rates, cpu))
        for d in decoders:
            runs[f"pipeline {d}"].append(_pipeline_epochs(frame, folder, size, batch, epochs, d))
    out: dict = {"source": source, "repeats": repeats, "contenders": {}, "load": load_average()}
    for name, items in runs.items():
        first = [r[0][0] for r in items]
        later = [float(np.mean(r[0][1:])) for r in items]
        out["contenders"][name] = {
            "first_pass": {"best": max(first), "median": float(np.median(first)), "all": first},
            "later_epochs": {"best": max(later), "median": float(np.median(later)), "all": later},
            "cpu_ms_per_image_first_pass": float(np.min([r[1][0] for r in items]))}
        if name != "course":
            pairs = [p[0][0] / c[0][0] for c, p in zip(runs["course"], items)]
            out["contenders"][name]["first_pass_paired_ratios"] = pairs
    disk = {}
    for run in ("write", "read"):  # disk cache: one run writes it, a fresh dataset reads it
        ds = pipeline.make_dataset(frame, folder, input_size=size, batch_size=batch, shuffle=True, seed=1,
                                   memory_cache=False, cache_dir=cache_dir)
        n = 0
        with Clock() as clock:
            for x, _y in ds:
                n += int(x.shape[0])
        disk[run] = rate(n, clock.wall)
    out["disk_cache"] = disk
    return out


def _print_decoders(dec: dict) -> None:
    print(f"\n== PNG decoders alone: {dec['images']} gray 1024x1024 NIH files, one thread, CPU ms per image "
          f"(min / median of rounds) ==")
    for name, r in sorted(dec["decoders"].items(), key=lambda kv: kv[1]["cpu_ms_min"]):
        same = {True: "same pixels", False: "DIFFERENT pixels", None: ""}[r["same_pixels_as_opencv"]]
        print(f"{name:52s}{r['cpu_ms_min']:7.2f}{r['cpu_ms_median']:7.2f}   {same}")
    for name, r in dec["threads"].items():
        print(f"{name:52s} 1 thread {r['1 thread']:6.1f} images/s ({r['cores busy 1']:.2f} cores busy), "
              f"2 threads {r['2 threads']:6.1f} ({r['cores busy 2']:.2f})")


def _print_generators(gen: dict, result: dict) -> None:
    print(f"\n== input pipeline alone (images/s; decode, resize, normalize, batch; best of {gen['repeats']}) ==")
    print(f"{'':36s}{'first pass':>11s}{'(median)':>10s}{'epochs 2+':>11s}{'CPU ms/img':>12s}")
    for name, r in gen["contenders"].items():
        label = "course ImageDataGenerator" if name == "course" else f"cxrcore.{name} decoder"
        print(f"{label:36s}{r['first_pass']['best']:11.1f}{r['first_pass']['median']:10.1f}"
              f"{r['later_epochs']['best']:11.1f}{r['cpu_ms_per_image_first_pass']:12.1f}")
    print(f"{'cxrcore.data.pipeline (disk cache)':36s}{gen['disk_cache']['write']:11.1f}{'':10s}"
          f"{gen['disk_cache']['read']:11.1f}   (writing pass / fresh dataset reading it)")
    print(f"course generator: {gen['source']}")
    for name in gen["contenders"]:
        if name == "course":
            continue
        pairs = ", ".join(f"{p:.2f}" for p in gen["contenders"][name]["first_pass_paired_ratios"])
        print(f"{name}: first pass {result[f'{name} ratio_first_pass']:.2f}x best-of (each repeat: {pairs}; "
              f"target >= 2)   epochs 2+ {result[f'{name} ratio_later_epochs']:.1f}x (target >= 10)")
    print(f"disk cache, fresh run vs course first pass: {result['ratio_disk_cache_fresh_run']:.1f}x")


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    data = Path(args.data)
    import tensorflow as tf

    from cxrcore.data import pipeline

    print(f"cores: {os.cpu_count()}  tensorflow {tf.__version__}  images: {data / 'sample_images'} x {args.copies}")
    print(f"pipeline PNG decoder by default ('auto') here: the fast decoder (kornia-rs) for "
          f"{pipeline.fast_png_share():.0%} of the files, tf.io.decode_png for the others; {load_average()}")
    sources = sorted((data / "sample_images").glob("*.png"))
    result: dict = {"cores": os.cpu_count(), "size": args.size, "batch": args.batch, "load_start": load_average()}
    if not args.skip_decoders:
        result["decoders"] = bench_decoders(sources, args.decoder_rounds)
        _print_decoders(result["decoders"])
        print(load_average())
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        folder, cache_dir = Path(tmp) / "images", Path(tmp) / "cache"
        folder.mkdir()
        names = copy_images(sources, folder, args.copies)
        frame = frame_for(names, data)
        result["files"] = len(names)
        print(f"\nfiles: {len(names)} PNG, 1024x1024 -> {args.size}x{args.size}, batch {args.batch}")
        if not args.skip_generators:
            gen = bench_generators(frame, folder, args.size, args.batch, args.epochs, args.repeats, cache_dir)
            course = gen["contenders"]["course"]
            result["generators"] = gen
            for name, r in gen["contenders"].items():
                if name != "course":
                    result[f"{name} ratio_first_pass"] = r["first_pass"]["best"] / course["first_pass"]["best"]
                    result[f"{name} ratio_later_epochs"] = r["later_epochs"]["best"] / course["later_epochs"]["best"]
            result["ratio_disk_cache_fresh_run"] = gen["disk_cache"]["read"] / course["first_pass"]["best"]
            _print_generators(gen, result)
    return finish(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
