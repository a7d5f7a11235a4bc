#!/usr/bin/env bash
# Prepare, on a machine with the package registry, what bench/gpu_check.sh needs on a GPU machine that has
# none (issue #18 point 5): the wheels its image lacks, for Python 3.12 / x86-64, in .whl/, and the 30 real
# NIH sample PNGs in .gpu_data/nih/sample_images (../shared beside a checkout does not travel). Both folders
# are git-ignored; the device tool carries them: carry [".whl", ".gpu_data"]. Together they stay far under
# the tool's 64 MiB a call (about 23 MB of wheels + 12 MB of PNGs).
#
#   bash bench/fetch_gpu_wheels.sh [NIH_FOLDER]      # NIH_FOLDER default: ../shared/nih
#
# The GPU image (docs/benchmarks.md, "H200") already has numpy, scipy, scikit-learn, opencv-python-headless,
# pillow, h5py, absl-py, rich, ml-dtypes, packaging, typing-extensions, jax (CUDA) and torch; it lacks Keras
# (and its namex, optree), kornia-rs, pydicom; pandas travels too, at the version the project pins.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(keras==3.15.1 namex==0.1.0 optree==0.20.0 kornia-rs==0.2.0 pydicom==3.0.2 pandas==3.1.1)
NIH=${1:-../shared/nih}
LIMIT=$((56 * 1024 * 1024))  # leaves room for the working tree itself under the 64 MiB

mkdir -p .whl
rm -f .whl/*.whl
for spec in "${WHEELS[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "$spec" 2>&1 | grep -v "^WARNING: Location" || true
  name=${spec%%==*}
  ls .whl/ | grep -qi "^${name//-/_}-" || { echo "fetch_gpu_wheels: no wheel for $spec" >&2; exit 1; }
done

if [[ ! -d $NIH/sample_images ]]; then
  echo "fetch_gpu_wheels: no $NIH/sample_images (pass the NIH folder)" >&2
  exit 1
fi
mkdir -p .gpu_data/nih/sample_images
cp -L "$NIH"/sample_images/*.png .gpu_data/nih/sample_images/

size=$(du -sbL .whl .gpu_data | awk '{s += $1} END {print s}')
ls -l .whl
echo "fetch_gpu_wheels: $(ls .whl/*.whl | wc -l) wheels and $(ls .gpu_data/nih/sample_images | wc -l) PNGs," \
     "$((size / 1024 / 1024)) MiB to carry"
if (( size > LIMIT )); then
  echo "fetch_gpu_wheels: above $((LIMIT / 1024 / 1024)) MiB: the device tool would refuse the tree" >&2
  exit 1
fi
