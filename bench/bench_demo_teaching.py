"""Teaching benchmark of the built-in demo set: generation time, learnability, and the leaky-split effect.

Run from the repository root (2 CPU cores, no GPU):

    python bench/bench_demo_teaching.py                  # default set, 3 training runs, writes results
    python bench/bench_demo_teaching.py --repeats 1 --no-write
    python bench/bench_demo_teaching.py --grid-only      # just docs/demo_grid.png (generated vs real)
    python bench/bench_demo_teaching.py --one-click-only # only step 4, merged into the results file

Measures, in one run:
1. generation of the default set (1,000 images, 256 px, seed 0) into a fresh temp folder with 2
   processes: seconds (target < 60 s), and that a second generation is byte-identical;
2. a small plain-Keras CNN trained on CPU at 128 px on train.csv (read with cxrcore.data.dataset.load_split):
   mean AUROC on test.csv over the visually distinct findings (target >= 0.85) and over all 14;
3. the same model's mean AUROC on valid.csv (clean) vs valid_leaky.csv (held-out follow-ups of train
   patients): the leak gap, reported whatever its sign, per run and on average;
4. the one-click demo model, as the app trains it (`python -m cxrcore train --preset demo --dataset DIR`,
   seeds 0..repeats-1): wall seconds per run (target about 3 minutes on 2 cores) and its best model's mean
   AUROC on valid vs valid_leaky (target: valid_leaky >= 0.03 higher in every run).
Writes cxrcore/demo/teaching_results.json (embedded in every generated dataset card) unless --no-write,
and docs/demo_grid.png (generated images beside real NIH sample images) when the NIH folder exists.
"""
from __future__ import annotations

import argparse
import datetime as dt
import filecmp
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from cxrcore.data.labels import LABELS  # noqa: E402
from cxrcore.demo import DISTINCT_FINDINGS, DemoConfig, generate_demo_dataset  # noqa: E402
from cxrcore.demo.card import TEACHING_RESULTS  # noqa: E402

COMMAND = "python bench/bench_demo_teaching.py"


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nih", default=str(ROOT.parent / "shared" / "nih"),
                        help="NIH folder with sample_images/ for the picture grid (default ../shared/nih)")
    parser.add_argument("--workers", type=int, default=2, help="generation processes (default 2)")
    parser.add_argument("--image-size", type=int, default=128, help="model input size (default 128)")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs per run (default 40)")
    parser.add_argument("--repeats", type=int, default=3, help="training runs with different seeds (default 3)")
    parser.add_argument("--no-write", action="store_true", help="do not write teaching_results.json")
    parser.add_argument("--grid-only", action="store_true", help="only write docs/demo_grid.png")
    parser.add_argument("--grid", default=str(ROOT / "docs" / "demo_grid.png"), help="grid PNG path")
    parser.add_argument("--json", help="also write all numbers to this JSON file")
    parser.add_argument("--one-click-only", action="store_true",
                        help="only step 4 (the one-click demo model), merged into the existing results file")
    parser.add_argument("--skip-one-click", action="store_true", help="leave out step 4")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# 1. Generation


def _time_generation(config: DemoConfig, workers: int, tmp: Path) -> tuple[float, Path, bool]:
    start = time.perf_counter()
    first = generate_demo_dataset(tmp / "demo", config, workers=workers)
    seconds = time.perf_counter() - start
    second = generate_demo_dataset(tmp / "again", config, workers=1)
    cmp = filecmp.dircmp(first, second)
    same = not (cmp.diff_files or cmp.left_only or cmp.right_only)
    if same:
        images = sorted(p.name for p in (first / "images").iterdir())
        match, mismatch, errors = filecmp.cmpfiles(first / "images", second / "images", images, shallow=False)
        same = not mismatch and not errors
    return seconds, first, same


# ---------------------------------------------------------------------------------------------
# 2-3. Training and evaluation


def _load(root: Path, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    from cxrcore.data.dataset import load_split

    split = load_split(root / f"{name}.csv")
    images = np.stack([cv2.resize(cv2.imread(str(root / "images" / f), cv2.IMREAD_GRAYSCALE), (size, size),
                                  interpolation=cv2.INTER_AREA) for f in split.images])
    return (images.astype(np.float32) / 255.0)[..., None], split.labels.astype(np.float32)


def small_cnn(size: int, seed: int):
    """Four conv blocks and a dense head: small enough for CPU, big enough to memorise patients."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((size, size, 1)),
        layers.Conv2D(16, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(48, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dropout(0.3),
        layers.Dense(len(LABELS), activation="sigmoid"),
    ], name="small_cnn")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    return model


def aurocs(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    """Per-label AUROC (None where a split has no positives or no negatives)."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, float | None] = {}
    for k, label in enumerate(LABELS):
        pos = int(y[:, k].sum())
        out[label] = float(roc_auc_score(y[:, k], p[:, k])) if 0 < pos < len(y) else None
    return out


def _mean(values: dict[str, float | None], labels: list[str] | tuple[str, ...]) -> float:
    got = [values[label] for label in labels if values.get(label) is not None]
    return float(np.mean(got)) if got else float("nan")


def _train_runs(root: Path, size: int, epochs: int, repeats: int) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    data = {name: _load(root, name, size) for name in ("train", "valid", "test", "valid_leaky")}
    x_train, y_train = data["train"]
    runs = []
    for run in range(repeats):
        model = small_cnn(size, seed=run)
        start = time.perf_counter()
        model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
        seconds = time.perf_counter() - start
        preds = {name: model.predict(x, batch_size=64, verbose=0) for name, (x, _) in data.items()}
        result = {name: aurocs(data[name][1], preds[name]) for name in data}
        # the clean/leaky comparison uses the labels both validation splits can score
        both = [label for label in LABELS if result["valid"][label] is not None
                and result["valid_leaky"][label] is not None]
        runs.append({
            "seed": run, "train_seconds": seconds, "auroc": result,
            "distinct_test": _mean(result["test"], DISTINCT_FINDINGS), "all_test": _mean(result["test"], LABELS),
            "valid": _mean(result["valid"], both), "valid_leaky": _mean(result["valid_leaky"], both),
            "compared_labels": both, "train_fit": _mean(result["train"], LABELS),
        })
        print(f"  run {run}: {seconds:.0f} s; test distinct {runs[-1]['distinct_test']:.3f}, all "
              f"{runs[-1]['all_test']:.3f}; valid clean {runs[-1]['valid']:.3f} vs leaky "
              f"{runs[-1]['valid_leaky']:.3f} (train {runs[-1]['train_fit']:.3f})", flush=True)
    test_auroc = {label: _avg([r["auroc"]["test"][label] for r in runs]) for label in LABELS}
    return {
        "runs": runs,
        "test_auroc": test_auroc,
        "test_positives": {label: int(data["test"][1][:, k].sum()) for k, label in enumerate(LABELS)},
        "valid_auroc": {label: _avg([r["auroc"]["valid"][label] for r in runs]) for label in LABELS},
        "valid_leaky_auroc": {label: _avg([r["auroc"]["valid_leaky"][label] for r in runs]) for label in LABELS},
        "distinct_mean_auroc_test": float(np.mean([r["distinct_test"] for r in runs])),
        "all_mean_auroc_test": float(np.mean([r["all_test"] for r in runs])),
        "valid_mean_auroc": float(np.mean([r["valid"] for r in runs])),
        "valid_leaky_mean_auroc": float(np.mean([r["valid_leaky"] for r in runs])),
        "leak_gap_runs": [r["valid_leaky"] - r["valid"] for r in runs],
        "train_seconds": float(np.mean([r["train_seconds"] for r in runs])),
        "sizes": {name: int(len(y)) for name, (_, y) in data.items()},
    }


def _score_run(run_dir: Path, root: Path) -> dict:
    """Mean AUROC of a run's best model on valid and valid_leaky, over the labels both splits can score."""
    from cxrcore.data.dataset import load_split
    from cxrcore.train.inference import predict_split
    from cxrcore.train.model import load_model
    from cxrcore.train.registry import describe_model

    path = run_dir / "best.keras"
    loaded = load_model(str(path), describe_model(path, "best").info)
    result = {}
    for name in ("valid", "valid_leaky"):
        split = load_split(root / f"{name}.csv")
        result[name] = aurocs(split.labels.astype(np.float32), predict_split(loaded, split, root / "images",
                                                                             batch_size=64))
    both = [label for label in LABELS if result["valid"][label] is not None
            and result["valid_leaky"][label] is not None]
    best = json.loads((run_dir / "best.json").read_text()).get("metadata", {}) if (run_dir / "best.json").is_file() else {}
    return {"valid": _mean(result["valid"], both), "valid_leaky": _mean(result["valid_leaky"], both),
            "compared_labels": len(both), "best_epoch": best.get("epoch")}


def one_click_runs(root: Path, repeats: int, tmp: Path) -> dict:
    """Train the demo preset as the app does (a separate `cxrcore train` process per seed) and score it."""
    import subprocess

    from cxrcore.train.trainconfig import PRESETS

    runs = []
    for seed in range(repeats):
        run_dir = tmp / f"one-click-{seed}"
        command = [sys.executable, "-m", "cxrcore", "train", "--preset", "demo", "--dataset", str(root),
                   "--run-dir", str(run_dir), "--set", f"seed={seed}", "--ignore-job-limit"]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"one-click training failed (seed {seed}):\n{done.stderr[-2000:]}")
        run = {"seed": seed, "seconds": seconds, **_score_run(run_dir, root)}
        run["gap"] = run["valid_leaky"] - run["valid"]
        runs.append(run)
        print(f"  seed {seed}: {seconds:.0f} s (best epoch {run['best_epoch']}); valid {run['valid']:.3f} vs "
              f"valid_leaky {run['valid_leaky']:.3f}: gap {run['gap']:+.3f}", flush=True)
    gaps = [r["gap"] for r in runs]
    return {"command": "python -m cxrcore train --preset demo --dataset data/demo --set seed=N",
            "preset": {k: v for k, v in PRESETS["demo"].items()}, "runs": runs,
            "gap_mean": float(np.mean(gaps)), "gap_min": float(np.min(gaps)),
            "seconds_mean": float(np.mean([r["seconds"] for r in runs])),
            "lesson_shown": all(g >= 0.03 for g in gaps)}


def _avg(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return float(np.mean(got)) if got else None


# ---------------------------------------------------------------------------------------------
# Picture grid


def write_grid(root: Path, nih: Path, out: Path, n: int = 8, tile: int = 192) -> bool:
    """Two rows of generated images above two rows of real NIH sample images, with captions."""
    import cv2

    real_dir = nih / "sample_images"
    if not real_dir.is_dir():
        print(f"  grid skipped: {real_dir} not found")
        return False
    from cxrcore.data.images import read_image, resize, to_uint8

    generated = sorted((root / "images").iterdir())
    step = max(1, len(generated) // (2 * n))
    gen = [cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (tile, tile), interpolation=cv2.INTER_AREA)
           for p in generated[::step][: 2 * n]]
    real = [to_uint8(resize(read_image(p), tile)) for p in sorted(real_dir.glob("*.png"))[: 2 * n]]

    def rows(tiles: list[np.ndarray], caption: str) -> np.ndarray:
        grid = np.vstack([np.hstack(tiles[i * n:(i + 1) * n]) for i in range(2)])
        bar = np.full((28, grid.shape[1]), 255, np.uint8)
        cv2.putText(bar, caption, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 0, 1, cv2.LINE_AA)
        return np.vstack([bar, grid])

    sheet = np.vstack([rows(gen, "generated (cxrcore demo, 256 px, seed 0)"),
                       rows(real, "real (NIH ChestX-ray14 sample_images)")])
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"  grid written: {out}")
    return True


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    config = DemoConfig()
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        print(f"1. generating the default set ({config.images} images, {config.size} px, seed {config.seed}) "
              f"with {args.workers} processes ...", flush=True)
        seconds, root, identical = _time_generation(config, args.workers, Path(tmp))
        print(f"  generation: {seconds:.1f} s (target < 60 s); second run byte-identical: {identical}")
        write_grid(root, Path(args.nih), Path(args.grid))
        if args.grid_only:
            return 0
        result = None
        if not args.one_click_only:
            print(f"2. training {args.repeats} run(s) of a small CNN, {args.epochs} epochs at {args.image_size} px ...",
                  flush=True)
            result = _train_runs(root, args.image_size, args.epochs, args.repeats)
        one_click = None
        if not args.skip_one_click:
            print(f"4. the one-click demo model (preset demo, {args.repeats} seed(s)) ...", flush=True)
            one_click = one_click_runs(root, args.repeats, Path(tmp))
            print(f"  one-click leak gap: mean {one_click['gap_mean']:+.3f}, smallest {one_click['gap_min']:+.3f} "
                  f"(target >= +0.030 in every run: {'met' if one_click['lesson_shown'] else 'MISSED'}); "
                  f"{one_click['seconds_mean']:.0f} s per run (target about 180 s)")
    if result is not None:
        gap = result["valid_leaky_mean_auroc"] - result["valid_mean_auroc"]
        print(f"  test mean AUROC, distinct findings: {result['distinct_mean_auroc_test']:.3f} (target >= 0.85)")
        print(f"  test mean AUROC, all 14: {result['all_mean_auroc_test']:.3f}")
        print(f"  valid clean {result['valid_mean_auroc']:.3f} vs valid_leaky {result['valid_leaky_mean_auroc']:.3f}: "
              f"gap {gap:+.3f} (runs: {', '.join(f'{g:+.3f}' for g in result['leak_gap_runs'])})")
        for label in LABELS:
            print(f"    {label:<19} test {_f(result['test_auroc'][label])}  valid {_f(result['valid_auroc'][label])}"
                  f"  leaky {_f(result['valid_leaky_auroc'][label])}  (test positives {result['test_positives'][label]})")
        record = {
            "measured_on": dt.date.today().isoformat(), "command": COMMAND,
            "machine": f"{os.cpu_count()} CPU cores, no GPU, {platform.python_implementation()} {platform.python_version()}",
            "config": config.to_dict(), "generation_seconds": round(seconds, 2), "byte_identical": identical,
            "model": "small plain-Keras CNN (5 conv blocks, dense head)", "image_size": args.image_size,
            "epochs": args.epochs, "repeats": args.repeats, "distinct_findings": list(DISTINCT_FINDINGS),
            "leak_gap": gap, **{k: v for k, v in result.items() if k != "runs"},
            "runs": [{k: v for k, v in r.items() if k != "auroc"} for r in result["runs"]],
        }
    else:  # --one-click-only: keep the last full measurement, replace its one-click numbers
        record = json.loads(TEACHING_RESULTS.read_text(encoding="utf-8")) if TEACHING_RESULTS.is_file() else {}
        if record.get("config") not in (None, config.to_dict()):
            record = {}
        record.setdefault("config", config.to_dict())
    if one_click is not None:
        record["one_click"] = {**one_click, "measured_on": dt.date.today().isoformat(),
                               "bench": COMMAND + (" --one-click-only" if args.one_click_only else "")}
    if not args.no_write:
        TEACHING_RESULTS.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"  wrote {TEACHING_RESULTS.relative_to(ROOT)}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0 if one_click is None or one_click["lesson_shown"] else 1


def _f(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
