#!/usr/bin/env bash
# One-shot GPU measurements for the Engine issue (run on a lent GPU machine; quoted in the closing note).
# Engine vs bare loop for DenseNet121 and ResNet50 at 224 px, bf16, channels_last, from the cache,
# then a short real demo run through the CLI on the GPU.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export CHEXUI_CACHE_DIR=/tmp/chexui-cache CHEXUI_DEMO_DIR=/tmp/chexui-demo PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/gpu.txt"
for arch in densenet121 resnet50; do
  timeout 200 python3 benchmarks/engine_bench.py --arch $arch --size 224 --batch 128 --images 6000 --workdir /tmp/bench 2>&1 \
    | grep -v Warning | tee -a "$OUT/bench.txt"
done
timeout 150 python3 -m chexui.cli run --headless --runs-dir /tmp/runs --set train.epochs=2 2>&1 | tail -25 | tee "$OUT/demo_run.txt"
cp /tmp/runs/*/events.jsonl "$OUT/demo_events.jsonl" 2>/dev/null || true
