"""Benchmark the input pipeline against the course's ImageDataGenerator, and its cost in training/prediction.

Run from the repository root:

    python bench/bench_pipeline.py                      # ../shared/nih, 300 files, DenseNet121 at 128 px
    python bench/bench_pipeline.py --data /path/to/nih --copies 10 --model small_cnn --model-size 320

Measures, in one run, on the same real 1024x1024 NIH PNGs (the 30 sample images copied --copies
times into a temp folder, so every file is decoded, not served from a cache by name):
1. decode + resize to 320 + normalize + batch, no model: the course's
   ImageDataGenerator.flow_from_dataframe (samplewise normalization, as its training generator)
   vs cxrcore.pipeline.make_dataset, first pass and later epochs (memory cache), plus the disk cache
   on a fresh run; images/s and ratios (targets: >= 2x first pass, >= 10x from the second epoch);
2. training steps/s and prediction images/s of one model fed from the PNG files by the pipeline vs
   fed from in-memory arrays (target: files >= 90% of in-memory).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxrcore.labels import LABELS, canonical_label  # noqa: E402


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "nih"),
                        help="NIH folder with sample_images/ (default: ../shared/nih)")
    parser.add_argument("--copies", type=int, default=10, help="copies of each sample image (default 10: 300 files)")
    parser.add_argument("--size", type=int, default=320, help="pipeline target size (default 320, as the course)")
    parser.add_argument("--batch", type=int, default=32, help="batch size for the pipeline comparison")
    parser.add_argument("--epochs", type=int, default=3, help="pipeline epochs (first pass + cached ones)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated runs of each contender (best kept)")
    parser.add_argument("--model", default="densenet121", choices=["densenet121", "small_cnn", "none"],
                        help="model for the training/prediction part ('none' skips it)")
    parser.add_argument("--model-size", type=int, default=128,
                        help="model input size (default 128: DenseNet121 at 320 trains at ~1 image/s on 2 cores)")
    parser.add_argument("--model-images", type=int, default=128,
                        help="images used for the model part (default 128; 0 = all)")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--predict-only", action="store_true", help="model part: prediction only (no training)")
    parser.add_argument("--skip-generators", action="store_true", help="skip part 1 (pipeline vs course generator)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


def _frame(names: list[str], data: Path) -> pd.DataFrame:
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


def _copy_images(src: Path, dst: Path, copies: int) -> list[str]:
    files = sorted(src.glob("*.png"))
    if not files:
        raise SystemExit(f"no PNG files in {src}; pass --data")
    names = []
    for k in range(copies):
        for f in files:
            name = f"c{k:02d}__{f.name}"
            shutil.copyfile(f, dst / name)
            names.append(name)
    for name in names:  # warm the OS page cache so both contenders read from memory
        (dst / name).read_bytes()
    return names


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


class _Clock:
    """Wall time and process CPU time (all threads) of one timed section."""

    def __enter__(self) -> "_Clock":
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


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
        with _Clock() as clock:
            for _ in range(len(gen)):
                x, _y = next(gen)
                n += len(x)
        rates.append(_rate(n, clock.wall))
        cpu.append(1000 * clock.cpu / n)
    return rates, cpu, source


def _pipeline_epochs(frame: pd.DataFrame, folder: Path, size: int, batch: int, epochs: int) -> tuple[list, list]:
    from cxrcore import pipeline

    ds = pipeline.make_dataset(frame, folder, input_size=size, batch_size=batch, shuffle=True, seed=1,
                               normalization=pipeline.Normalization.sample(), memory_cache=True)
    rates, cpu = [], []
    for _ in range(epochs):
        n = 0
        with _Clock() as clock:
            for x, _y in ds:
                n += int(x.shape[0])
        rates.append(_rate(n, clock.wall))
        cpu.append(1000 * clock.cpu / n)
    return rates, cpu


def bench_generators(frame: pd.DataFrame, folder: Path, size: int, batch: int, epochs: int, repeats: int,
                     cache_dir: Path) -> dict:
    """Course generator vs pipeline, alternated `repeats` times (each a fresh first pass); best run kept.

    Best-of-N per contender makes the ratio robust to other processes on a shared machine; the
    median and the CPU milliseconds per image (all threads) are reported too.
    """
    from cxrcore import pipeline

    runs: dict[str, list] = {"course": [], "pipeline": []}
    source = ""
    for _ in range(repeats):
        rates, cpu, source = _course_epochs(frame, folder, size, batch, epochs)
        runs["course"].append((rates, cpu))
        runs["pipeline"].append(_pipeline_epochs(frame, folder, size, batch, epochs))
    out: dict = {"source": source, "repeats": repeats}
    for name, items in runs.items():
        first = [r[0][0] for r in items]
        later = [float(np.mean(r[0][1:])) for r in items]
        out[name] = {"first_pass": {"best": max(first), "median": float(np.median(first)), "all": first},
                     "later_epochs": {"best": max(later), "median": float(np.median(later)), "all": later},
                     "cpu_ms_per_image_first_pass": float(np.min([r[1][0] for r in items]))}
    pairs = [p[0][0] / c[0][0] for c, p in zip(runs["course"], runs["pipeline"])]
    out["ratio_first_pass_paired_median"] = float(np.median(pairs))
    disk = {}
    for run in ("write", "read"):  # disk cache: one run writes it, a fresh dataset reads it
        ds = pipeline.make_dataset(frame, folder, input_size=size, batch_size=batch, shuffle=True, seed=1,
                                   memory_cache=False, cache_dir=cache_dir)
        n = 0
        with _Clock() as clock:
            for x, _y in ds:
                n += int(x.shape[0])
        disk[run] = _rate(n, clock.wall)
    out["disk_cache"] = disk
    return out


class _EpochTimer:
    def __init__(self) -> None:
        import keras

        class Callback(keras.callbacks.Callback):
            def __init__(cb) -> None:
                super().__init__()
                cb.times: list[float] = []
                cb.steps: list[int] = []

            def on_epoch_begin(cb, epoch, logs=None):
                cb.t0, cb.n = time.perf_counter(), 0

            def on_train_batch_end(cb, batch, logs=None):
                cb.n += 1

            def on_epoch_end(cb, epoch, logs=None):
                cb.times.append(time.perf_counter() - cb.t0)
                cb.steps.append(cb.n)

        self.callback = Callback()


def bench_model(frame: pd.DataFrame, folder: Path, model_name: str, size: int, batch: int, repeats: int,
                train_part: bool = True) -> dict:
    """Training steps/s and prediction images/s: PNG files through the pipeline vs in-memory tensors.

    In-memory = the same images, already decoded, resized and normalized, as a tf.data pipeline over
    tensors (the fastest way to feed Keras). Epochs of the two feeds alternate, and the ratio of each
    adjacent pair is kept, so load from other processes on a shared machine hits both sides alike.
    """
    import keras
    import tensorflow as tf

    from cxrcore import loss, pipeline
    from cxrcore import model as M

    norm = pipeline.Normalization.sample()
    targets = pipeline.label_matrix(frame)
    w_pos, w_neg = loss.class_weights(targets)
    net = M.build_model(input_size=size, backbone=model_name)
    train = M.logits_model(net)
    train.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss.make_weighted_loss(w_pos, w_neg, from_logits=True))
    paths = pipeline.resolve_image_paths(frame, folder)
    x_mem = np.concatenate(list(pipeline.image_dataset(paths, input_size=size, batch_size=64, normalization=norm,
                                                       memory_cache=False).as_numpy_iterator()))
    mem_ds = (tf.data.Dataset.from_tensor_slices((x_mem, targets)).cache().shuffle(len(x_mem), seed=1)
              .batch(batch).prefetch(tf.data.AUTOTUNE))
    if train_part:
        train.train_on_batch(x_mem[:batch], targets[:batch])  # trace the train step once, outside the timings
    n_steps = int(np.ceil(len(frame) / batch))

    def epoch(data) -> float:
        timer = _EpochTimer().callback
        train.fit(data, epochs=1, verbose=0, callbacks=[timer], shuffle=False)  # data are shuffled already
        return _rate(timer.steps[0], timer.times[0])

    def files_ds(augmentation=None):
        return pipeline.make_dataset(frame, folder, input_size=size, batch_size=batch, shuffle=True, seed=1,
                                     normalization=norm, augmentation=augmentation)

    train_pairs: dict[str, list] = {}
    if train_part:
        epoch(mem_ds)  # fill the in-memory cache
        train_pairs = {"first_epoch": [], "cached": [], "cached_augmented": []}
        plain, augmented = files_ds(), files_ds(pipeline.Augmentation())
        train_pairs["first_epoch"].append((epoch(mem_ds), epoch(plain)))
        epoch(augmented)  # its first (decoding) epoch
        for _ in range(repeats):
            train_pairs["cached"].append((epoch(mem_ds), epoch(plain)))
            train_pairs["cached_augmented"].append((epoch(mem_ds), epoch(augmented)))

    def predict_rate(data) -> float:
        t0 = time.perf_counter()
        out = net.predict(data, verbose=0)
        return _rate(len(out), time.perf_counter() - t0)

    mem_pred = tf.data.Dataset.from_tensor_slices(x_mem).cache().batch(batch).prefetch(tf.data.AUTOTUNE)
    cached = pipeline.image_dataset(paths, input_size=size, batch_size=batch, normalization=norm)
    predict_rate(mem_pred), predict_rate(cached)  # trace, fill caches
    pred_pairs: dict[str, list] = {"first_pass": [], "cached": []}
    for _ in range(repeats):
        cold = pipeline.image_dataset(paths, input_size=size, batch_size=batch, normalization=norm, memory_cache=False)
        pred_pairs["first_pass"].append((predict_rate(mem_pred), predict_rate(cold)))
        pred_pairs["cached"].append((predict_rate(mem_pred), predict_rate(cached)))

    def summary(pairs: list) -> dict:
        ratios = [f / m for m, f in pairs]
        return {"memory": [m for m, _ in pairs], "files": [f for _, f in pairs],
                "ratio_median": float(np.median(ratios)), "ratio_best": float(np.max(ratios))}

    return {"model": model_name, "input_size": size, "batch": batch, "images": len(frame), "steps_per_epoch": n_steps,
            "train_steps_per_s": {k: summary(v) for k, v in train_pairs.items()},
            "predict_images_per_s": {k: summary(v) for k, v in pred_pairs.items()}}


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    data = Path(args.data)
    import tensorflow as tf

    print(f"cores: {os.cpu_count()}  tensorflow {tf.__version__}  images: {data / 'sample_images'} x {args.copies}")
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        folder, cache_dir = Path(tmp) / "images", Path(tmp) / "cache"
        folder.mkdir()
        names = _copy_images(data / "sample_images", folder, args.copies)
        frame = _frame(names, data)
        print(f"files: {len(names)} PNG, 1024x1024 -> {args.size}x{args.size}, batch {args.batch}")

        result: dict = {"cores": os.cpu_count(), "files": len(names), "size": args.size, "batch": args.batch}
        if not args.skip_generators:
            gen = bench_generators(frame, folder, args.size, args.batch, args.epochs, args.repeats, cache_dir)
            course, ours = gen["course"], gen["pipeline"]
            c_first, c_later = course["first_pass"]["best"], course["later_epochs"]["best"]
            o_first, o_later = ours["first_pass"]["best"], ours["later_epochs"]["best"]
            result.update({"generators": gen, "ratio_first_pass": o_first / c_first,
                           "ratio_later_epochs": o_later / c_later,
                           "ratio_first_pass_paired_median": gen["ratio_first_pass_paired_median"],
                           "ratio_disk_cache_fresh_run": gen["disk_cache"]["read"] / c_first})
            print(f"\n== input pipeline alone (images/s; decode, resize, normalize, batch; best of {args.repeats}) ==")
            print(f"{'':34s}{'first pass':>11s}{'(median)':>10s}{'epochs 2+':>11s}{'CPU ms/img':>12s}")
            for label, r in (("course ImageDataGenerator", course), ("cxrcore.pipeline (memory cache)", ours)):
                print(f"{label:34s}{r['first_pass']['best']:11.1f}{r['first_pass']['median']:10.1f}"
                      f"{r['later_epochs']['best']:11.1f}{r['cpu_ms_per_image_first_pass']:12.1f}")
            print(f"{'cxrcore.pipeline (disk cache)':34s}{gen['disk_cache']['write']:11.1f}{'':10s}"
                  f"{gen['disk_cache']['read']:11.1f}   (writing pass / fresh dataset reading it)")
            print(f"course generator: {gen['source']}")
            print(f"ratio first pass: {result['ratio_first_pass']:.2f}x best-of "
                  f"(paired median {result['ratio_first_pass_paired_median']:.2f}x; target >= 2)   "
                  f"ratio epochs 2+: {result['ratio_later_epochs']:.1f}x (target >= 10)   "
                  f"disk cache, fresh run vs course: {result['ratio_disk_cache_fresh_run']:.1f}x")

        if args.model != "none":
            sub = frame.iloc[: args.model_images] if args.model_images else frame
            m = bench_model(sub, folder, args.model, args.model_size, args.train_batch, args.repeats,
                            train_part=not args.predict_only)
            result["model"] = m
            print(f"\n== {args.model} at {args.model_size}x{args.model_size}, {m['images']} images, batch "
                  f"{args.train_batch} ({m['steps_per_epoch']} steps/epoch); PNG files via pipeline vs in-memory "
                  f"tensors, alternated; ratio = median of adjacent pairs (best) ==")
            for title, key, unit in (("train", "train_steps_per_s", "steps/s"),
                                     ("predict", "predict_images_per_s", "images/s")):
                for case, r in m[key].items():
                    print(f"{title:8s}{case:18s} in-memory {np.median(r['memory']):7.2f} {unit:9s} files "
                          f"{np.median(r['files']):7.2f}   ratio {r['ratio_median']:.0%} ({r['ratio_best']:.0%})")
                    result[f"{title}_files_vs_memory_{case}"] = r["ratio_median"]
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
