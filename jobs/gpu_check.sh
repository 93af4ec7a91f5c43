#!/usr/bin/env bash
# The CUDA checks, for a bare GPU machine (torch, numpy, h5py, mpi4py, numba preinstalled).
#   bash jobs/gpu_check.sh OUTDIR [DATADIR]
# Wheels for anything missing (submitit) may lie in .whl/; DATADIR holds the four
# Fashion-MNIST .gz files. Each step has its own time limit, and one failing step does not
# stop the next: every step's output and exit status are in OUTDIR/gpu_check.log.
set -uo pipefail
fail() { echo "gpu_check.sh: $*" >&2; exit 2; }
[ -n "${1:-}" ] || fail "give OUTDIR, the folder for gpu_check.log (usage: bash jobs/gpu_check.sh OUTDIR [DATADIR])"
# both resolved before the cd below, so relative paths mean what the caller meant
OUT=$(realpath -m -- "$1")
DATA=$(realpath -m -- "${2:-${RBD_DATA:-/usr/share/datasets/fashion-mnist}}")
[ -f "$DATA/train-images-idx3-ubyte.gz" ] || fail "data directory $DATA has no train-images-idx3-ubyte.gz; give the folder of the four Fashion-MNIST .gz files"
[ ! -e "$OUT" ] || [ -d "$OUT" ] || fail "OUTDIR $OUT exists and is not a folder"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"; LOG="$OUT/gpu_check.log"; W=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null \
  || fail "python3 here has no torch that sees a CUDA device; run this on the GPU machine"
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*" | tee -a "$LOG"
  local t0=$(date +%s.%N)
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: rc=$rc, $(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s" | tee -a "$LOG"
}
R="python3 -m rbd_hpc"
step env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c 'import torch, numba, h5py; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0), \"numba\", numba.__version__, \"h5py\", h5py.__version__)'"
step cuda-tests 240 python3 -m pytest -q -p no:cacheprovider tests/test_devices.py -k "cuda"
for m in fc cnn; do
  for d in srht gaussian; do
    step "train-$m-$d" 150 $R train --preset $m-fmnist --device cuda --dist $d --steps 300 \
      --snapshot-every 100 --data-dir "$DATA" --no-progress --out "$W/$m-$d.h5"
    # replay runs on the CPU: a CUDA run's bits are the GPU's, so this measures max |Δθ|
    step "replay-cpu-$m-$d" 150 $R replay "$W/$m-$d.h5" --verify --no-progress
  done
done
step resume-cuda 150 $R train --resume "$W/cnn-srht.h5" --steps 400 --no-progress
for m in fc cnn; do
  step "bench-$m" 200 $R bench --model $m --d 250 --dist gaussian,srht --device cuda --steps 30
done
rm -rf "$W"
