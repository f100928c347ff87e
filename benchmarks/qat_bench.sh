#!/usr/bin/env bash
# Compression benchmark for the Compression issue: a short QAT run (all supported layers) at 224 px for
# ResNet50 and DenseNet121 on a small demo set, then `chexui bench` on each: fp32 vs int8 bytes,
# test AUROC, CPU latency (batch 1) and throughput (batch 32) of every artifact - PyTorch eager and
# compiled, the ONNX files in onnxruntime (and OpenVINO when `chexui[openvino]` is installed) - and GPU
# figures when there is a GPU.
# The runs are short: the point is the artifacts' size and speed, not their accuracy.
#   bash benchmarks/qat_bench.sh            # IMAGES=300 EPOCHS=1 by default; OUT=dir for the output
set -uo pipefail
OUT=${OUT:-/tmp/qat-bench}; mkdir -p "$OUT"
IMAGES=${IMAGES:-300}; EPOCHS=${EPOCHS:-1}
export CHEXUI_CACHE_DIR=${CHEXUI_CACHE_DIR:-/tmp/qat-bench-cache} PYTHONUNBUFFERED=1 NO_COLOR=1
CHEXUI=${CHEXUI:-python3 -m chexui.cli}
RUNS=/tmp/qat-bench-runs; rm -rf "$RUNS"
$CHEXUI data demo /tmp/qat-bench-demo --images "$IMAGES" --size 256 --seed 0 >/dev/null
for arch in resnet50 densenet121; do
  $CHEXUI run --headless --preset qat-all --data /tmp/qat-bench-demo --runs-dir "$RUNS" --name "qat-$arch" \
    --set model.arch=$arch --set model.pretrained=none --set train.epochs="$EPOCHS" --set train.batch_size=32 \
    --set data.image_size=224 --set data.workers=2 2>&1 | grep -E "^run |exported|AUROC mean|error" | tee -a "$OUT/runs.txt"
  run=$(ls -d "$RUNS"/*-qat-$arch | tail -1)
  $CHEXUI bench "$run" 2>&1 | grep -v "Warning\|warn" | tee -a "$OUT/bench.txt"
done
