"""GPU training benchmark without TensorFlow: the project's DenseNet121 on every installed Keras backend,
fed from the image cache, beside plain PyTorch torchvision DenseNet121, in one run (issue #18 points 3-4).

Run from the repository root (no TensorFlow needed: keras + jax and/or torch + the light requirements):

    python bench/bench_gpu.py                        # 320 px, batch 128, 2,048 cache entries, every backend
    python bench/bench_gpu.py --input-only           # only the input path: decode, first pass, cache reads
    python bench/bench_gpu.py --quick                # CPU-sized end-to-end check (64 px, batch 8, few steps)
    python bench/bench_gpu.py --backends jax --json /tmp/gpu.json

Prints, each measured in this run:
1. Input (this process): plain decode of the real NIH PNGs (../shared/nih/sample_images linked --entries
   times in a temp folder, so every entry is a file to decode) with --workers processes; the image cache's
   first pass with the same workers and its ratio to plain decoding (target >= 0.9); batches read from
   the cache (ImageBatches: shuffle, sample normalization, with and without augmentation) in img/s and
   CPU ms per image (wall-clock rates on a loaded machine mislead; CPU time per image does not).
2. Training (one child process per backend, as a job would be): the project's DenseNet121
   (cxrcore.train.model.build_model, logits head, cxrcore.train.loss) trained with the project's own step
   (cxrcore.train.steps.make_steps) at --batch, bf16 on GPUs: img/s fed from the cache
   (ImageBatches.iterate, prefetched, as a job is fed) and from one batch held in memory (their ratio:
   target >= 0.9), prediction img/s, and the time to the first step. JAX runs twice with one persistent compilation cache: the second process is
   "a second job" (target: first step < 15 s). torchvision's DenseNet121 (bf16 autocast, channels_last,
   eager, batch on the device) runs in its own child; ratios to it (targets: training >= 1.3x,
   prediction >= 1.0x on an H200).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BACKENDS = ("jax", "torch", "tensorflow")
RESULT = "BENCH_RESULT "


def _default_data() -> Path:
    for folder in (ROOT / ".gpu_data" / "nih", ROOT.parent / "shared" / "nih", ROOT.parent.parent / "shared" / "nih"):
        if (folder / "sample_images").is_dir():
            return folder
    return ROOT.parent / "shared" / "nih"


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(_default_data()),
                   help="NIH folder with sample_images/ (default: .gpu_data/nih, carried to a GPU machine by "
                        "bench/fetch_gpu_wheels.sh, else ../shared/nih)")
    p.add_argument("--entries", type=int, default=2048, help="cache entries (the sample PNGs repeated)")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=30, help="timed training steps per measure")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first (compiling) one")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: every core)")
    p.add_argument("--repeats", type=int, default=2, help="alternated runs of each input measure (best kept)")
    p.add_argument("--backends", default="auto", help="comma list of Keras backends, or auto (every installed)")
    p.add_argument("--no-torchvision", action="store_true", help="skip plain PyTorch torchvision")
    p.add_argument("--input-only", action="store_true", help="only part 1 (the input path)")
    p.add_argument("--quick", action="store_true", help="CPU-sized: 64 px, batch 8, 64 entries, 2 steps")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--work", help="folder for the links and the cache (default: a temp folder)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one backend's training measure
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.entries, args.steps, args.warmup, args.repeats = 64, 8, 64, 2, 1, 1
    return args


# ---------------------------------------------------------------------------------------------- input

def _entries(data: Path, n: int, folder: Path) -> list[str]:
    """n links to the sample PNGs, each a distinct path, so the cache decodes every entry."""
    sample = sorted((data / "sample_images").glob("*.png"))
    if not sample:
        raise SystemExit(f"no PNGs in {data / 'sample_images'} (use --data)")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        link = folder / f"e{i:05d}.png"
        if not link.exists():
            link.symlink_to(sample[i % len(sample)])
        paths.append(str(link))
    return paths


def _decode_chunk(chunk: list[str], size: int) -> int:
    import cv2

    from cxrcore.train.image_cache import decode_for_cache

    cv2.setNumThreads(1)  # as the cache's workers: one thread each, the processes make the parallelism
    for path in chunk:
        decode_for_cache(path, size, None)
    return len(chunk)


def _plain_decode(paths: list[str], size: int, workers: int) -> float:
    """img/s of decode + resize + quantise with `workers` processes, pixels thrown away (pool start included)."""
    import multiprocessing

    from cxrcore.train.image_cache import CHUNK_ROWS

    chunks = [paths[i:i + CHUNK_ROWS] for i in range(0, len(paths), CHUNK_ROWS)]
    start = time.perf_counter()
    if workers == 1:
        done = sum(_decode_chunk(c, size) for c in chunks)
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            done = sum(pool.map(_decode_chunk, chunks, [size] * len(chunks)))
    return done / (time.perf_counter() - start)


def _read_rate(cache, size: int, batch: int, augmentation) -> tuple[float, float]:
    """(img/s, CPU ms per image) of one shuffled epoch of ImageBatches (sample normalization)."""
    import numpy as np

    from cxrcore.data.pipeline import Normalization
    from cxrcore.train.batches import ImageBatches

    y = np.zeros((len(cache), 14), np.float32)
    batches = ImageBatches(cache, y, batch_size=batch, normalization=Normalization(), augmentation=augmentation,
                           shuffle=True, drop_remainder=True)
    batches[0]  # threads started
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(len(batches)):
        batches[i]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = len(batches) * batch
    return n / wall, 1000 * cpu / n


def input_part(args: argparse.Namespace, work: Path) -> dict:
    """Part 1: plain decode vs the cache's first pass (same workers), then reads from the cache."""
    from cxrcore.data.pipeline import Augmentation
    from cxrcore.train.image_cache import default_workers, open_image_cache

    workers = args.workers or default_workers()
    paths = _entries(Path(args.data), args.entries, work / "links")
    out: dict = {"entries": len(paths), "size": args.size, "workers": workers}
    plain, first = [], []
    for r in range(args.repeats):
        plain.append(_plain_decode(paths, args.size, workers))
        start = time.perf_counter()
        open_image_cache(paths, args.size, work / f"cache-pass{r}", workers=workers)
        first.append(len(paths) / (time.perf_counter() - start))
    out["plain_decode_img_s"], out["first_pass_img_s"] = max(plain), max(first)
    out["first_pass_vs_plain"] = out["first_pass_img_s"] / out["plain_decode_img_s"]
    # the same comparison in CPU time, in this process (workers=1): what the cache itself costs per image,
    # unaffected by other processes sharing the cores
    subset = paths[:min(len(paths), 120)]
    plain_cpu, first_cpu = [], []
    for r in range(args.repeats):
        start = time.process_time()
        _decode_chunk(subset, args.size)
        plain_cpu.append(1000 * (time.process_time() - start) / len(subset))
        start = time.process_time()
        open_image_cache(subset, args.size, work / f"cache-cpu{r}", workers=1)
        first_cpu.append(1000 * (time.process_time() - start) / len(subset))
    out["plain_decode_cpu_ms"], out["first_pass_cpu_ms"] = min(plain_cpu), min(first_cpu)
    out["first_pass_vs_plain_cpu"] = out["plain_decode_cpu_ms"] / out["first_pass_cpu_ms"]
    cache = open_image_cache(paths, args.size, work / "cache-pass0", workers=workers)
    start = time.perf_counter()
    open_image_cache(paths, args.size, work / "cache-pass0", workers=workers)
    out["reopen_s"] = time.perf_counter() - start
    for name, aug in (("read", None), ("read_augmented", Augmentation())):
        rates = [_read_rate(cache, args.size, args.batch, aug) for _ in range(args.repeats)]
        best = max(rates)
        out[f"{name}_img_s"], out[f"{name}_cpu_ms_per_img"] = best
        out[f"{name}_img_s_per_core"] = 1000.0 / best[1]
    return out


def print_input(r: dict) -> None:
    print(f"\n1. input path: {r['entries']} NIH PNG entries -> {r['size']} px, {r['workers']} worker(s)")
    print(f"   plain decode (cxrcore.data.images, processes)     {r['plain_decode_img_s']:9.1f} img/s")
    print(f"   image cache, first pass (same workers)       {r['first_pass_img_s']:9.1f} img/s   "
          f"ratio {r['first_pass_vs_plain']:.2f} (target >= 0.90)")
    print(f"   in CPU time, one process: plain {r['plain_decode_cpu_ms']:.2f} ms/img, first pass "
          f"{r['first_pass_cpu_ms']:.2f} ms/img: ratio {r['first_pass_vs_plain_cpu']:.2f} (load-independent)")
    print(f"   image cache, reopened (stat every file)      {r['reopen_s']:9.3f} s")
    for name, label in (("read", "batches from the cache"), ("read_augmented", "batches, augmented")):
        print(f"   {label:<44} {r[name + '_img_s']:9.1f} img/s   {r[name + '_cpu_ms_per_img']:.2f} CPU ms/img "
              f"= {r[name + '_img_s_per_core']:.0f} img/s per core")


# ---------------------------------------------------------------------------------------------- training

def installed_backends() -> list[str]:
    import importlib.util

    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def _run_child(args: argparse.Namespace, backend: str, spec: Path, env_extra: dict) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend if backend != "torchvision" else "torch", **env_extra)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", backend, "--spec", str(spec)]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        return {"backend": backend, "error": f"exit {proc.returncode}: {tail}"}
    result = json.loads(lines[-1][len(RESULT):])
    result["process_s"] = time.time() - start
    return result


def training_part(args: argparse.Namespace, work: Path) -> dict:
    """Part 2: one child per backend (JAX twice: cold and warm compilation cache), plus torchvision."""
    from cxrcore.train.image_cache import open_image_cache

    paths = _entries(Path(args.data), args.entries, work / "links")
    open_image_cache(paths, args.size, work / "cache-pass0", workers=args.workers)
    spec = work / "spec.json"
    spec.write_text(json.dumps({"paths": paths, "cache": str(work / "cache-pass0"), "size": args.size,
                                "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                                "start_of_run": time.time()}))
    wanted = installed_backends() if args.backends == "auto" else [b.strip() for b in args.backends.split(",")]
    results: dict = {"runs": []}
    compile_cache = work / "jax-compilation-cache"
    for backend in wanted:
        env = {"CXR_BENCH_JAX_CACHE": str(compile_cache)} if backend == "jax" else {}
        results["runs"].append(_run_child(args, backend, spec, env))
        if backend == "jax":
            second = _run_child(args, backend, spec, env)
            second["backend"] = "jax (second job)"
            results["runs"].append(second)
    if not args.no_torchvision:
        results["runs"].append(_run_child(args, "torchvision", spec, {}))
    return results


def _reason(error: str) -> str:
    """The line of a child's output that says what went wrong (not JAX's note about its traceback)."""
    lines = [ln.strip() for ln in error.splitlines() if ln.strip()]
    named = [ln for ln in lines if "Error" in ln.split(":")[0] or ln.startswith(("SystemExit", "exit "))]
    return (named or lines or ["?"])[-1][:200]


def failed_backends(r: dict) -> list[str]:
    """Keras backends whose measure failed (torchvision's own failures are reported, not counted)."""
    return [x["backend"] for x in r["runs"] if "error" in x and x["backend"] != "torchvision"]


def print_training(r: dict, args: argparse.Namespace) -> None:
    print(f"\n2. training DenseNet121, {args.size} px, batch {args.batch}, {args.steps} timed steps")
    print(f"   {'backend':<18}{'device':<10}{'precision':<16}{'train files':>12}{'in memory':>11}"
          f"{'files/mem':>10}{'predict':>10}{'1st step s':>11}{'process s':>10}")
    ref = next((x for x in r["runs"] if x.get("backend") == "torchvision" and "error" not in x), None)
    for x in r["runs"]:
        if "error" in x:
            print(f"   {x['backend']:<18}FAILED: {_reason(x['error'])}")
            continue
        files = x.get("train_files_img_s")
        ratio = f"{files / x['train_memory_img_s']:.2f}" if files else "-"
        print(f"   {x['backend']:<18}{x['device']:<10}{x['precision']:<16}{files or 0:12.1f}"
              f"{x['train_memory_img_s']:11.1f}{ratio:>10}{x['predict_img_s']:10.1f}{x['first_step_s']:11.1f}"
              f"{x['process_s']:10.1f}")
    if ref:
        print("   ratios to plain PyTorch torchvision (eager, channels_last, bf16 autocast on GPU):")
        for x in r["runs"]:
            if "error" in x or x is ref:
                continue
            files = x.get("train_files_img_s") or x["train_memory_img_s"]
            print(f"   {x['backend']:<18}training {files / ref['train_memory_img_s']:.2f}x (target >= 1.3 on an "
                  f"H200)   prediction {x['predict_img_s'] / ref['predict_img_s']:.2f}x (target >= 1.0)")
    second = next((x for x in r["runs"] if x.get("backend") == "jax (second job)" and "error" not in x), None)
    if second:
        print(f"   JAX second job: first step after {second['first_step_s']:.1f} s "
              f"({second['time_to_first_step_s']:.1f} s from process start; target < 15 s)")


# ---------------------------------------------------------------------------------------------- children

def _sync(value) -> float:
    import numpy as np

    return float(np.asarray(value, dtype=np.float32).mean())


def child_keras(backend: str, spec: dict) -> dict:
    """Train the project's model with the project's step and feed on this process's Keras backend."""
    process_start = time.time()
    from cxrcore.train.backend import activate, enable_compilation_cache

    activate(backend)
    folder = os.environ.get("CXR_BENCH_JAX_CACHE")
    if backend == "jax" and folder:
        enable_compilation_cache(folder)  # as a job does, under its cache folder
    import keras
    import numpy as np

    from cxrcore.data.labels import LABELS
    from cxrcore.data.pipeline import Augmentation, Normalization
    from cxrcore.train.batches import ImageBatches
    from cxrcore.train.image_cache import open_image_cache
    from cxrcore.train.model import build_model, logits_model
    from cxrcore.train.steps import make_steps

    device, gpu = _device(backend)
    precision = "mixed_bfloat16" if gpu else "float32"  # what cxrcore.train.devices picks on an H200 / a CPU
    keras.config.set_dtype_policy(precision)
    size, batch = spec["size"], spec["batch"]
    cache = open_image_cache(spec["paths"], size, spec["cache"], workers=1)
    rng = np.random.default_rng(0)
    y = (rng.random((len(cache), len(LABELS))) < 0.1).astype(np.float32)
    w_pos = np.full(len(LABELS), 0.9, np.float32)
    w_neg = np.full(len(LABELS), 0.1, np.float32)
    model = build_model(LABELS, size)
    train_model = logits_model(model)
    optimizer = keras.optimizers.Adam(1e-4)
    optimizer.build(train_model.trainable_variables)  # as cxrcore.train.loop does before make_steps
    strategy = None
    if backend == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.get_strategy()
    steps = make_steps(backend, train_model, optimizer, w_pos, w_neg, strategy=strategy)
    batches = ImageBatches(cache, y, batch_size=batch, normalization=Normalization(), augmentation=Augmentation(),
                           shuffle=True, drop_remainder=True)
    held = batches[0]
    start = time.time()
    loss = steps.train(held)
    _sync(loss)
    first_step = time.time() - start
    time_to_first = time.time() - process_start
    for _ in range(spec["warmup"]):
        loss = steps.train(held)
    _sync(loss)
    n = spec["steps"]

    def fed_from_files() -> float:
        done, epoch, loss = 0, 0, None
        start = time.perf_counter()
        while done < n:
            batches.set_epoch(epoch)  # as cxrcore.train.inputs.cached_feed: prefetched, in order
            for item in batches.iterate(prefetch=2):
                loss = steps.train(item)
                done += 1
                if done == n:
                    break
            epoch += 1
        value = _sync(loss)
        assert np.isfinite(value), value
        return n * batch / (time.perf_counter() - start)

    def in_memory() -> float:
        start = time.perf_counter()
        for _ in range(n):
            loss = steps.train(held)
        _sync(loss)
        return n * batch / (time.perf_counter() - start)

    files, memory = fed_from_files(), in_memory()
    files, memory = max(files, fed_from_files()), max(memory, in_memory())
    x = held[0]
    steps.predict(x)  # compiles
    start = time.perf_counter()
    for _ in range(n):
        steps.predict(x)
    predict = n * batch / (time.perf_counter() - start)
    return {"backend": backend, "device": device, "precision": precision, "train_files_img_s": files,
            "train_memory_img_s": memory, "predict_img_s": predict, "first_step_s": first_step,
            "time_to_first_step_s": time_to_first}


def _device(backend: str) -> tuple[str, bool]:
    if backend == "jax":
        import jax

        gpu = jax.default_backend() == "gpu"
        return ("gpu" if gpu else "cpu"), gpu
    if backend == "torch":
        import torch

        return ("cuda" if torch.cuda.is_available() else "cpu"), torch.cuda.is_available()
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    return ("gpu" if gpu else "cpu"), gpu


def child_torchvision(spec: dict) -> dict:
    """Plain PyTorch: torchvision DenseNet121, eager, channels_last, bf16 autocast on GPU, batch on the device."""
    process_start = time.time()
    import torch

    try:
        import torchvision
    except Exception as err:  # noqa: BLE001 - a torchvision wheel that does not match torch fails in many ways
        raise SystemExit(f"torchvision cannot be imported beside torch {torch.__version__}: "
                         f"{type(err).__name__}: {str(err)[:200]}")
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    size, batch, n = spec["size"], spec["batch"], spec["steps"]
    model = torchvision.models.densenet121(num_classes=14).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    y = (torch.rand(batch, 14, device=device) < 0.1).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        optimizer.step()
        return loss

    def sync():
        if gpu:
            torch.cuda.synchronize()

    start = time.time()
    step().item()
    first = time.time() - start
    for _ in range(spec["warmup"]):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    train = n * batch / (time.perf_counter() - start)
    model.eval()
    with torch.no_grad(), autocast:
        model(x)
        sync()
        start = time.perf_counter()
        for _ in range(n):
            model(x)
        sync()
    predict = n * batch / (time.perf_counter() - start)
    return {"backend": "torchvision", "device": device.type, "precision": "bf16 autocast" if gpu else "float32",
            "train_files_img_s": None, "train_memory_img_s": train, "predict_img_s": predict,
            "first_step_s": first, "time_to_first_step_s": time.time() - process_start}


# ---------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        result = child_torchvision(spec) if args.child == "torchvision" else child_keras(args.child, spec)
        print(RESULT + json.dumps(result), flush=True)
        return 0
    os.environ.setdefault("KERAS_BACKEND", (installed_backends() or ["jax"])[0])  # keras.utils only, here
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        print(f"bench_gpu: {os.cpu_count()} CPUs, backends installed: {', '.join(installed_backends()) or 'none'}"
              f"{' (quick CPU-sized run)' if args.quick else ''}")
        results = {"args": {k: v for k, v in vars(args).items() if k not in ("child", "spec")}}
        results["input"] = input_part(args, work)
        print_input(results["input"])
        failed: list[str] = []
        if not args.input_only:
            results["training"] = training_part(args, work)
            print_training(results["training"], args)
            failed = failed_backends(results["training"])
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    if failed:
        print(f"bench_gpu: the measure failed on {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
