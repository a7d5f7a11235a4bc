"""Benchmark training and prediction fed from 1024x1024 PNG files vs from in-memory tensors, and the time probe.

Run from the repository root:

    python bench/bench_training.py                     # ../shared/nih sample images x 8 (240 files), 128 px
    python bench/bench_training.py --png-decoder tf --skip-probe   # the same with tf.io.decode_png only
    python bench/bench_training.py --skip-models       # only the probe vs a real demo epoch
    python bench/bench_training.py --models densenet121 --densenet-size 320 --densenet-images 64 --predict-only \
        --skip-probe                                   # prediction at the course's input size

Measures, in one run:
1. For DenseNet121 at a small size (--densenet-size, default 128: at 320 it trains at ~1 image/s on
   2 cores) and the demo preset's small CNN (128 px, batch 32): training steps/s and prediction
   images/s of the same model fed from the PNG files by cxrcore.data.pipeline vs fed from in-memory tensors
   (the same images already decoded, resized and normalized, in a cached tf.data pipeline: the limit
   of the machine for that model). Epochs (or prediction passes) of the two feeds alternate and each
   ratio is the median over adjacent pairs, so load from other processes hits both sides alike.
   Target: files >= 90% of in-memory. Images: the 30 real NIH sample images (../shared/nih) copied
   --copies times, or generated 1024x1024 demo phantoms when that folder is absent.
2. The Training page's time probe (cxrcore.train.jobs.run_probe, a few batches in a child process) for the
   demo preset on a generated demo set, against a real two-epoch job of the same config
   (`python -m cxrcore train`): the probe's first-epoch and later-epoch estimates vs metrics.csv.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench_pipeline import copy_images, finish, frame_for, load_average, rate  # noqa: E402


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "nih"),
                        help="NIH folder with sample_images/ (default: ../shared/nih; generated PNGs when absent)")
    parser.add_argument("--copies", type=int, default=8, help="copies of each sample image (default 8: 240 files)")
    parser.add_argument("--models", default="densenet121,small_cnn", help="comma-separated: densenet121, small_cnn")
    parser.add_argument("--densenet-size", type=int, default=128, help="DenseNet121 input size (default 128)")
    parser.add_argument("--densenet-images", type=int, default=128,
                        help="images for DenseNet121 (default 128; its epochs are slow on a CPU)")
    parser.add_argument("--densenet-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="alternated pairs per measurement")
    parser.add_argument("--predict-only", action="store_true", help="part 1: prediction only (no training)")
    parser.add_argument("--png-decoder", default="auto", choices=["auto", "fast", "tf"],
                        help="the pipeline's PNG decoder (default auto, as training uses)")
    parser.add_argument("--skip-models", action="store_true", help="skip part 1 (files vs memory)")
    parser.add_argument("--skip-probe", action="store_true", help="skip part 2 (probe vs a real demo epoch)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


def source_images(data: Path, folder: Path) -> tuple[list[Path], str]:
    """The real NIH sample PNGs, or 30 generated 1024x1024 demo phantoms when they are absent."""
    files = sorted((data / "sample_images").glob("*.png"))
    if files:
        return files, f"{len(files)} real NIH sample images ({data / 'sample_images'})"
    from cxrcore.demo import DemoConfig, generate_demo_dataset

    out = generate_demo_dataset(folder / "phantoms", DemoConfig(images=30, size=1024))
    files = sorted((out / "images").glob("*.png"))
    return files, f"{len(files)} generated 1024x1024 demo phantoms ({data} not found)"


# --------------------------------------------------------------------------------------------
# 1. Model fed from files vs from memory
# --------------------------------------------------------------------------------------------

def _epoch_timer():
    """A Keras callback timing each epoch from its first batch's start to its end (steps counted)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.steps = time.perf_counter(), 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.t0

    return EpochTimer()


def _summary(pairs: list[tuple[float, float]]) -> dict:
    """(memory, files) rates of adjacent runs -> both lists, the median ratio and the best one."""
    ratios = [f / m for m, f in pairs]
    return {"memory": [m for m, _ in pairs], "files": [f for _, f in pairs],
            "ratio_median": float(np.median(ratios)), "ratio_best": float(np.max(ratios))}


def bench_model(frame: pd.DataFrame, folder: Path, model_name: str, size: int, batch: int, repeats: int,
                train_part: bool = True, png_decoder: str = "auto") -> dict:
    """Training steps/s and prediction images/s: PNG files through the pipeline vs in-memory tensors.

    Training on files: the first epoch decodes; later epochs read the pipeline's memory cache (with
    and without the default augmentation). Prediction on files decodes every pass (no cache), as
    `LoadedModel.predict_paths` does, and is also measured from a cached dataset.
    """
    import keras
    import tensorflow as tf

    from cxrcore.data import pipeline
    from cxrcore.train import loss
    from cxrcore.train import model as M

    norm = pipeline.Normalization.sample()
    targets = pipeline.label_matrix(frame)
    w_pos, w_neg = loss.class_weights(targets)
    net = M.build_model(input_size=size, backbone=model_name)
    train = M.logits_model(net)
    train.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss.make_weighted_loss(w_pos, w_neg, from_logits=True))
    paths = pipeline.resolve_image_paths(frame, folder)
    x_mem = np.concatenate(list(pipeline.image_dataset(paths, input_size=size, batch_size=64, normalization=norm,
                                                       memory_cache=False, png_decoder=png_decoder)
                                .as_numpy_iterator()))
    mem_ds = (tf.data.Dataset.from_tensor_slices((x_mem, targets)).cache().shuffle(len(x_mem), seed=1)
              .batch(batch).prefetch(tf.data.AUTOTUNE))

    def epoch(data) -> float:
        timer = _epoch_timer()
        train.fit(data, epochs=1, verbose=0, callbacks=[timer], shuffle=False)  # data are shuffled already
        return rate(timer.steps, timer.seconds)

    def files_ds(augmentation=None):
        return pipeline.make_dataset(frame, folder, input_size=size, batch_size=batch, shuffle=True, seed=1,
                                     normalization=norm, augmentation=augmentation, png_decoder=png_decoder)

    train_pairs: dict[str, list] = {}
    if train_part:
        train.train_on_batch(x_mem[:batch], targets[:batch])  # trace the train step once, outside the timings
        epoch(mem_ds)  # fill the in-memory cache
        train_pairs = {"first_epoch": [], "cached": [], "cached_augmented": []}
        for _ in range(max(1, repeats // 2)):  # each first epoch needs a fresh dataset
            train_pairs["first_epoch"].append((epoch(mem_ds), epoch(files_ds())))
        plain, augmented = files_ds(), files_ds(pipeline.Augmentation())
        epoch(plain), epoch(augmented)  # their decoding epochs
        for _ in range(repeats):
            train_pairs["cached"].append((epoch(mem_ds), epoch(plain)))
            train_pairs["cached_augmented"].append((epoch(mem_ds), epoch(augmented)))

    def predict_rate(data) -> float:
        start = time.perf_counter()
        out = net.predict(data, verbose=0)
        return rate(len(out), time.perf_counter() - start)

    mem_pred = tf.data.Dataset.from_tensor_slices(x_mem).cache().batch(batch).prefetch(tf.data.AUTOTUNE)
    cached = pipeline.image_dataset(paths, input_size=size, batch_size=batch, normalization=norm,
                                    png_decoder=png_decoder)
    predict_rate(mem_pred), predict_rate(cached)  # trace, fill caches
    pred_pairs: dict[str, list] = {"first_pass": [], "cached": []}
    for _ in range(repeats):
        cold = pipeline.image_dataset(paths, input_size=size, batch_size=batch, normalization=norm, memory_cache=False,
                                      png_decoder=png_decoder)
        pred_pairs["first_pass"].append((predict_rate(mem_pred), predict_rate(cold)))
        pred_pairs["cached"].append((predict_rate(mem_pred), predict_rate(cached)))
    return {"model": model_name, "input_size": size, "batch": batch, "images": len(frame),
            "steps_per_epoch": int(np.ceil(len(frame) / batch)), "load": load_average(),
            "train_steps_per_s": {k: _summary(v) for k, v in train_pairs.items()},
            "predict_images_per_s": {k: _summary(v) for k, v in pred_pairs.items()}}


def _print_model(m: dict) -> None:
    print(f"\n== {m['model']} at {m['input_size']}x{m['input_size']}, {m['images']} images, batch {m['batch']} "
          f"({m['steps_per_epoch']} steps/epoch); PNG files via pipeline vs in-memory tensors, alternated; "
          f"ratio = median of adjacent pairs (best); {m['load']} ==")
    for title, key, unit in (("train", "train_steps_per_s", "steps/s"),
                             ("predict", "predict_images_per_s", "images/s")):
        for case, r in m[key].items():
            print(f"{title:8s}{case:18s} in-memory {np.median(r['memory']):8.2f} {unit:9s} files "
                  f"{np.median(r['files']):8.2f}   ratio {r['ratio_median']:.0%} ({r['ratio_best']:.0%})")


# --------------------------------------------------------------------------------------------
# 2. The Training page's probe vs a real demo job
# --------------------------------------------------------------------------------------------

def bench_probe(work: Path, epochs: int = 2) -> dict:
    """Probe the demo preset on a generated demo set, then train it for `epochs` epochs as the page does."""
    from cxrcore.demo import DemoConfig, generate_demo_dataset
    from cxrcore.train import jobs
    from cxrcore.train.trainconfig import config_from_dict

    start = time.perf_counter()
    dataset = generate_demo_dataset(work / "demo", DemoConfig())
    generated = time.perf_counter() - start
    config = config_from_dict({"preset": "demo", "dataset": str(dataset), "epochs": epochs, "predict_test": False,
                               "early_stopping_patience": 0, "cache_dir": str(work / "cache")})
    start = time.perf_counter()
    probe = jobs.run_probe(config, cwd=ROOT)
    probe_wall = time.perf_counter() - start
    run_dir = jobs.create_run(work / "runs", config)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cxrcore", "train", "--config", str(run_dir / "config.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    job_wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the demo job failed:\n{done.stderr[-2000:]}")
    metrics = pd.read_csv(run_dir / "metrics.csv")
    seconds = [float(s) for s in metrics["seconds"]]
    return {"dataset_seconds": generated, "probe_wall_seconds": probe_wall, "job_wall_seconds": job_wall,
            "probe": probe, "epoch_seconds": seconds, "load": load_average(),
            "first_epoch_measured_over_estimate": seconds[0] / probe["first_epoch_seconds"],
            "later_epochs_measured_over_estimate": (float(np.mean(seconds[1:])) / probe["seconds_per_epoch"]
                                                    if len(seconds) > 1 else None)}


def _print_probe(p: dict) -> None:
    probe = p["probe"]
    print(f"\n== demo preset: the Training page's probe vs a real job ({p['load']}) ==")
    print(f"demo set generated in {p['dataset_seconds']:.1f} s; probe took {p['probe_wall_seconds']:.1f} s "
          f"({probe['probe_batches']} batches of {probe['batch_size']}); job took {p['job_wall_seconds']:.1f} s")
    print(f"first epoch: estimated {probe['first_epoch_seconds']:.1f} s, measured {p['epoch_seconds'][0]:.1f} s "
          f"(measured / estimate {p['first_epoch_measured_over_estimate']:.2f})")
    if p["later_epochs_measured_over_estimate"] is not None:
        later = float(np.mean(p["epoch_seconds"][1:]))
        print(f"later epochs: estimated {probe['seconds_per_epoch']:.1f} s, measured {later:.1f} s "
              f"(measured / estimate {p['later_epochs_measured_over_estimate']:.2f})")


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    import tensorflow as tf

    from cxrcore.data import pipeline

    print(f"cores: {os.cpu_count()}  tensorflow {tf.__version__}  png_decoder {args.png_decoder}: fast decoder for "
          f"{pipeline.fast_png_share(args.png_decoder):.0%} of the files  {load_average()}")
    result: dict = {"cores": os.cpu_count(), "load_start": load_average(), "png_decoder": args.png_decoder}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-training-") as tmp:
        work = Path(tmp)
        if not args.skip_models:
            sources, described = source_images(Path(args.data), work)
            folder = work / "images"
            folder.mkdir()
            names = copy_images(sources, folder, args.copies)
            frame = frame_for(names, Path(args.data))
            print(f"files: {len(names)} PNG copies of {described}")
            result.update({"files": len(names), "images": described, "models": {}})
            for name in [m.strip() for m in args.models.split(",") if m.strip()]:
                if name == "densenet121":
                    sub = frame.iloc[: args.densenet_images] if args.densenet_images else frame
                    m = bench_model(sub, folder, name, args.densenet_size, args.densenet_batch, args.repeats,
                                    train_part=not args.predict_only, png_decoder=args.png_decoder)
                else:  # the demo preset's model, size and batch
                    from cxrcore.train.trainconfig import PRESETS

                    demo = PRESETS["demo"]
                    m = bench_model(frame, folder, demo["backbone"], demo["input_size"], demo["batch_size"],
                                    args.repeats, train_part=not args.predict_only, png_decoder=args.png_decoder)
                result["models"][name] = m
                _print_model(m)
        if not args.skip_probe:
            result["probe"] = bench_probe(work)
            _print_probe(result["probe"])
    return finish(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
