#!/usr/bin/env bash
# One-shot measurements on a lent GPU machine for the Compression (and Data) issues, quoted in notes:
# the QAT bench at 224 px (this machine's CPU for fp32 vs int8, its GPU for fp32), then the data
# benchmark for `prepare` images/s per core on this machine's CPU.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CHEXUI_CACHE_DIR=/tmp/chexui-cache CHEXUI_DEMO_DIR=/tmp/chexui-demo
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-300;
  python3 -c "import torch; print('torch', torch.__version__, torch.backends.quantized.supported_engines)"; } | tee "$OUT/machine.txt"
OUT=$OUT IMAGES=${IMAGES:-600} timeout 330 bash benchmarks/qat_bench.sh
timeout 150 python3 benchmarks/data_bench.py --images 500 --workdir /tmp/data-bench 2>&1 | grep -v Warning | tee "$OUT/data_bench.txt"
