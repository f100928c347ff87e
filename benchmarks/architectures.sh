#!/usr/bin/env bash
# Each architecture on the embedded demo data (#32's acceptance): a 2-epoch float run from scratch, a
# 2-epoch QAT run of all supported layers (the qat-all preset's quantization), and `chexui bench` of the
# QAT run (its int8 .pt2 graph and ONNX int8 against its float twin); where the config refuses int8 for
# the architecture, its reason and the float run's bench rows. Prints each run's test AUROC, the ONNX int8
# AUROC against the QAT model's, and the bench rows.
#   ARCHS="efficientnet_b0 mobilenet_v3_large" SIZE=64 RUNS=/tmp/arch-study bash benchmarks/architectures.sh
set -euo pipefail
ARCHS=${ARCHS:-"densenet169 resnet101 efficientnet_b0 efficientnet_v2_s convnext_tiny mobilenet_v3_large"}
SIZE=${SIZE:-64}
RUNS=${RUNS:-/tmp/arch-study}
C=${CHEXUI:-chexui}
mkdir -p "$RUNS"
run_of() { ls -d "$RUNS"/*-"$1" | tail -1; }
common=(--preset demo --set data.image_size="$SIZE" --set train.epochs=2 --set train.early_stop_patience=0
        --runs-dir "$RUNS" --headless)
for arch in $ARCHS; do
  $C run "${common[@]}" --set model.arch="$arch" --name "float-$arch" | tail -1
  if ! out=$($C run "${common[@]}" --set model.arch="$arch" --set quantize.enabled=true --set quantize.scope=all \
    --name "qat-$arch" 2>&1); then
    echo "  qat-$arch: $(echo "$out" | tail -1)"
    $C bench "$(run_of "float-$arch")" --runs-dir "$RUNS" | tail -8
    continue
  fi
  echo "$out" | tail -1
  qat=$(run_of "qat-$arch")
  python3 - "$qat" <<'PY'
import json, sys
from pathlib import Path
ev = [json.loads(line) for line in (Path(sys.argv[1]) / "events.jsonl").open()]
auc = {e["split"]: e["auc_mean"] for e in ev if e["type"] == "evaluated"}
print(f"  {Path(sys.argv[1]).name}: " + ", ".join(f"{k} {v:.4f}" for k, v in auc.items()))
if "test" in auc and "test_onnx_int8" in auc:
    print(f"  ONNX int8 - QAT int8 test AUROC: {auc['test_onnx_int8'] - auc['test']:+.4f}")
PY
  $C bench "$qat" --runs-dir "$RUNS" | tail -12
done
