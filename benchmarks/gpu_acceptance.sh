#!/usr/bin/env bash
# GPU acceptance: every built-in and study/ preset, shortened (2 epochs of a handful of steps, pruning
# schedule inside them), through `chexui run --headless` on the GPU, then `chexui bench` on compressed
# runs; one table (benchmarks/gpu_acceptance.py). Prepared to run in one go on a lent GPU machine in
# about 8 minutes, from the repo root:
#     bash benchmarks/gpu_acceptance.sh            # output also in $OUT/gpu-acceptance.txt
# Settings (environment): PY (python, default python3), IMAGES (demo set size, default 400), SIZE (224), PARALLEL (runs at once on
# the one GPU, 3), ONLY (comma-separated presets), BENCH (presets to bench; default a few of each kind).
# A CPU dry run of the script itself: SIZE=32 IMAGES=160 ONLY=demo,prune70,qat-conv bash benchmarks/gpu_acceptance.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-acceptance}; WORK=${WORK:-/tmp/chexui-acceptance}
PY=${PY:-python3}; IMAGES=${IMAGES:-400}; SIZE=${SIZE:-224}; PARALLEL=${PARALLEL:-3}
BENCH=${BENCH:-prune70,resnet50-prune70,prune-adaptive,qat-conv,qat-all,prune70-qat}
mkdir -p "$OUT" "$WORK"
export CHEXUI_CACHE_DIR="$WORK/cache" CHEXUI_DEMO_DIR="$WORK/demo-embedded" PYTHONUNBUFFERED=1 NO_COLOR=1
export CHEXUI_PRESETS=""   # built-in presets only
{
  date -u +"%Y-%m-%d %H:%M UTC"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
  grep -m1 'model name' /proc/cpuinfo; echo "cores $(nproc)"
} 2>&1 | tee "$OUT/gpu-acceptance.txt"
data="$WORK/demo-${IMAGES}x${SIZE}"
if [ ! -f "$data/Data_Entry_2017.csv" ]; then
  "$PY" -m chexui.cli data demo "$data" --images "$IMAGES" --size "$SIZE" --seed 0 2>&1 | tail -1 | tee -a "$OUT/gpu-acceptance.txt"
fi
"$PY" -m chexui.cli data prepare "$data" --size "$SIZE" 2>&1 | tail -1 | tee -a "$OUT/gpu-acceptance.txt"
"$PY" benchmarks/gpu_acceptance.py --data "$data" --work "$WORK" --size "$SIZE" --parallel "$PARALLEL" \
  --only "${ONLY:-}" --bench "$BENCH" 2>&1 | tee -a "$OUT/gpu-acceptance.txt"
