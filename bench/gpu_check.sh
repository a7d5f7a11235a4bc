#!/usr/bin/env bash
# One check of GPU training on a machine without TensorFlow and without network (issue #18 point 5), sized
# for 6 minutes of an H200: install the wheels that travel, generate the demo data, train the demo preset
# 2 epochs with backend=jax on the GPU (loss finite, validation AUROC printed), then bench/bench_gpu.py.
#
# Before (on a machine with the registry): bash bench/fetch_gpu_wheels.sh   -> .whl/ and .gpu_data/
# On the GPU machine, from the repository root:   bash bench/gpu_check.sh
#   (device tool: carry [".whl", ".gpu_data"], command "bash bench/gpu_check.sh", timeout_s 420)
# Here, to prove every step on a CPU, in a venv without TensorFlow (docs/benchmarks.md, "H200"):
#   PYTHON=/tmp/gpuenv/bin/python bash bench/gpu_check.sh --cpu-dry-run
#
# Logs and results go to $OUT (the device tool's folder; a temp folder elsewhere): gpu_check.log,
# bench_gpu.json and the demo run's run.json, metrics.csv, train.log. Exit 0 only when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[[ ${1:-} == --cpu-dry-run ]] && DRY=1
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d /tmp/gpu_check_out.XXXX)}
WORK=$(mktemp -d /tmp/gpu_check_work.XXXX)
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 CXR_OFFLINE=1 KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL=2
export CXR_CACHE_ROOT=$WORK/cache CXR_RUNS_ROOT=$WORK/runs
if (( DRY )); then
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=-1
  IMAGES=200; SIZE=96; TRAIN_LIMIT=(--set max_train_images=120 --set max_valid_images=60); BENCH=(--quick)
  T_TRAIN=900; T_BENCH=1500
else
  IMAGES=1000; SIZE=256; TRAIN_LIMIT=(); BENCH=(--steps 20 --repeats 1)
  T_TRAIN=100; T_BENCH=240  # ~20 s install + check + demo data: 360 s in all
fi
FAILED=()
step() { echo; echo "== $(date -u +%H:%M:%S) $*"; }
fail() { echo "FAILED: $*"; FAILED+=("$1"); }
START=$SECONDS

step "1. wheels that travel (.whl/) -> /tmp/cxr-site"
if (( DRY )); then
  echo "dry run: the venv ($PY) has them; the .whl/ wheels are for Python 3.12 and are only listed"
  ls .whl 2>/dev/null || echo "(no .whl/: run bench/fetch_gpu_wheels.sh before a GPU run)"
elif compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/cxr-site \
    .whl/*.whl && export PYTHONPATH=/tmp/cxr-site${PYTHONPATH:+:$PYTHONPATH} || fail "wheels"
else
  fail "wheels (no .whl/: run bench/fetch_gpu_wheels.sh where pip works, carry .whl)"
fi

step "2. the machine"
command -v nvidia-smi > /dev/null && nvidia-smi -L
"$PY" - "$DRY" <<'PYEOF' || fail "machine (JAX must see a GPU, TensorFlow must be absent)"
import importlib.util, os, sys
dry = sys.argv[1] == "1"
print("python", sys.version.split()[0], "cores", os.cpu_count())
for name in ("keras", "jax", "torch", "torchvision", "numpy", "pandas", "sklearn", "cv2", "kornia_rs", "pydicom", "h5py"):
    try:
        module = __import__(name)
        print(f"  {name:<12}{getattr(module, '__version__', '?')}")
    except Exception as err:  # noqa: BLE001 - report, the steps below say what is missing
        print(f"  {name:<12}MISSING ({type(err).__name__}: {str(err)[:80]})")
print("  tensorflow  ", "installed" if importlib.util.find_spec("tensorflow") else "absent (as on the H200)")
import jax
print("  jax devices ", jax.devices())
sys.exit(0 if dry or jax.default_backend() == "gpu" else 1)
PYEOF

step "3. demo data ($IMAGES images, $SIZE px)"
"$PY" -m cxrcore demo --out "$WORK/demo" --images "$IMAGES" --size "$SIZE" --workers "$(nproc)" --quiet \
  || fail "demo data"

step "4. demo preset, 2 epochs, backend=jax"
timeout "$T_TRAIN" "$PY" -m cxrcore train --preset demo --dataset "$WORK/demo" --set epochs=2 --set backend=jax \
  "${TRAIN_LIMIT[@]}" --run-dir "$WORK/run" || fail "training (exit $?)"
for f in run.json metrics.csv train.log status.json; do [[ -f $WORK/run/$f ]] && cp "$WORK/run/$f" "$OUT/run_$f"; done
"$PY" - "$WORK/run" <<'PYEOF' || fail "training results"
import json, math, sys
from pathlib import Path
import pandas as pd
run = Path(sys.argv[1])
if not (run / "metrics.csv").exists():
    sys.exit(f"no {run / 'metrics.csv'}: the training job wrote no epoch (its error is above)")
metrics = pd.read_csv(run / "metrics.csv")
info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
status = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() else {}
print(metrics[["epoch", "loss", "val_loss", "val_auroc_mean", "seconds"]].to_string(index=False))
backend = info.get("backend") == "jax"
print(f"run.json backend: {info.get('backend')} | device: {status.get('device')} | "
      f"precision: {info.get('precision')} | state: {status.get('state')}")
ok = len(metrics) == 2 and metrics["loss"].map(math.isfinite).all() and metrics["val_loss"].map(math.isfinite).all()
print("validation AUROC (mean over labels) per epoch:", [round(v, 4) for v in metrics["val_auroc_mean"]])
sys.exit(0 if ok and backend else 1)
PYEOF

step "5. bench/bench_gpu.py ${BENCH[*]}"
timeout "$T_BENCH" "$PY" bench/bench_gpu.py "${BENCH[@]}" --json "$OUT/bench_gpu.json" --work "$WORK/bench" \
  || fail "bench_gpu (exit $?)"

step "done in $((SECONDS - START)) s"
rm -rf "$WORK"
if (( ${#FAILED[@]} )); then
  echo "gpu_check: FAILED steps: ${FAILED[*]}"
  exit 1
fi
echo "gpu_check: every step passed"
