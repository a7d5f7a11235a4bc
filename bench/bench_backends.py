"""Training speed of the demo preset on each installed Keras backend, in one run (issue #18).

Each backend trains the demo preset (small CNN, 128 px, batch 32, up to 1,500 training images) for
two epochs in its own process, as `python -m cxrcore train` does; the second epoch is timed (the
first decodes or caches the images and compiles the step). Prints training img/s per backend, the
start-up to the first finished epoch, and each backend's ratio to TensorFlow.

    .venv/bin/python bench/bench_backends.py [--dataset data/demo] [--backends tensorflow,jax,torch]

Needs the demo dataset (`make demo`, or --dataset pointing at one).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def train_once(backend: str, dataset: Path, work: Path, epochs: int) -> dict:
    runs = work / f"runs-{backend}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "CXR_CACHE_ROOT": str(work / "cache")}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cxrcore", "train", "--preset", "demo", "--dataset", str(dataset),
                           "--set", f"backend={backend}", "--set", f"epochs={epochs}", "--set", "predict_test=false",
                           "--set", "early_stopping_patience=0", "--runs-root", str(runs), "--ignore-job-limit"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"{backend}: training failed\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    run = next(runs.iterdir())
    info = json.loads((run / "run.json").read_text())
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    header, last = rows[0], rows[-1]
    seconds = float(last[header.index("seconds")])
    return {"backend": backend, "images": info["sizes"]["train_used"], "valid": info["sizes"]["valid_used"],
            "epoch_seconds": seconds, "first_epoch_seconds": float(rows[1][header.index("seconds")]),
            "wall_seconds": wall, "loss": float(last[header.index("loss")])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(ROOT / "data" / "demo"))
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    dataset = Path(args.dataset)
    if not (dataset / "train.csv").is_file():
        print(f"skipped: no demo dataset at {dataset} (run `make demo`, or pass --dataset)")
        return 0
    backends = [b for b in args.backends.split(",") if importlib.util.find_spec(b) is not None]
    results = []
    with tempfile.TemporaryDirectory(prefix="cxr-bench-backends-") as tmp:
        for backend in backends:
            result = train_once(backend, dataset, Path(tmp), args.epochs)
            # an epoch = training steps + validation pass + checkpoint/best saves: images per second of the whole
            result["train_img_s"] = result["images"] / result["epoch_seconds"]
            results.append(result)
            print(f"{backend:<11} epoch {args.epochs}: {result['epoch_seconds']:.1f} s for {result['images']} training "
                  f"+ {result['valid']} validation images = {result['train_img_s']:.0f} training img/s; "
                  f"first epoch {result['first_epoch_seconds']:.1f} s; process {result['wall_seconds']:.0f} s; "
                  f"loss {result['loss']:.4f}", flush=True)
    base = next((r for r in results if r["backend"] == "tensorflow"), None)
    if base:
        for r in results:
            print(f"ratio {r['backend']} / tensorflow: {r['train_img_s'] / base['train_img_s']:.2f}x training img/s, "
                  f"{base['wall_seconds'] / r['wall_seconds']:.2f}x faster whole process")
    print(f"machine: {os.cpu_count()} CPU cores; skipped (not installed): "
          f"{', '.join(b for b in args.backends.split(',') if b not in backends) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
