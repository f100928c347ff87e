#!/usr/bin/env bash
# GPU speed (issue #13), one prepared script for a lent H100/H200; each step appends to $OUT/gpu-speed.txt
# as it finishes, in the order of what matters most, so a time-out keeps what was measured:
#   1. benchmarks/nih_epoch.py: an NIH-size epoch (112,120 phantoms, 224 px, bf16, batch 128) of the
#      engine - train, whole validation split with AUROC, checkpoint - for DenseNet121 then ResNet50,
#      eager and compiled, with the bare loop of the same compiled model; then pruning (masks every
#      100 steps) and QAT on DenseNet121 (eager) for their overhead; host syncs per training step;
#   2. a short 224 px prune70 + QAT demo run through the CLI, then `chexui bench` on it: fp32 / bf16 at
#      batch 1 and 256 on the GPU (the int8 program runs on x86 CPU kernels only; it says so).
# From the repo root:   bash benchmarks/gpu_speed.sh        (about 9 minutes on an H200; output in $OUT)
# Settings (environment): PY (python3), IMAGES (112120), MODES (false,default), ARCH (densenet121,resnet50),
# BATCH (128). A CPU dry run of the script itself:
#   IMAGES=600 SIZE=32 ARCH=resnet18 BATCH=16 MODES=false BENCH_IMAGES=120 bash benchmarks/gpu_speed.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-speed}; WORK=${WORK:-/tmp/chexui-speed}
PY=${PY:-python3}; IMAGES=${IMAGES:-112120}; SIZE=${SIZE:-224}; MODES=${MODES:-false,default}
ARCH=${ARCH:-densenet121,resnet50}; BATCH=${BATCH:-128}; BENCH_IMAGES=${BENCH_IMAGES:-400}
mkdir -p "$OUT" "$WORK"
export CHEXUI_CACHE_DIR="$WORK/cache" CHEXUI_DEMO_DIR="$WORK/demo-embedded" PYTHONUNBUFFERED=1 NO_COLOR=1
log="$OUT/gpu-speed.txt"
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee "$log"
"$PY" benchmarks/nih_epoch.py --images "$IMAGES" --size "$SIZE" --arch "$ARCH" --batch "$BATCH" --modes "$MODES" \
  --prune --qat --work "$WORK" --json "$OUT/nih-epoch.jsonl" 2>&1 | grep -v -i -e "warn" -e "^W[0-9]" | tee -a "$log"
# the inference benchmark of a compressed run's artifacts
data="$WORK/demo-${BENCH_IMAGES}x${SIZE}"
[ -f "$data/Data_Entry_2017.csv" ] || "$PY" -m chexui.cli data demo "$data" --images "$BENCH_IMAGES" --size "$SIZE" --seed 0 >/dev/null
"$PY" -m chexui.cli run --headless --preset prune70 --data "$data" --runs-dir "$WORK/bench-runs" --name bench \
  --set train.epochs=1 --set model.pretrained=none --set quantize.enabled=true --set prune.begin_epoch=0.25 \
  --set prune.end_epoch=1.0 --set prune.frequency_steps=1 --set "data.image_size=$SIZE" 2>&1 | tail -2 | tee -a "$log"
run=$(ls -d "$WORK"/bench-runs/*/ | tail -1)
"$PY" -m chexui.cli bench "$run" --no-compile 2>&1 | tee -a "$log"
