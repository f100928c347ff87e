#!/usr/bin/env bash
# Fault injection by hand (not CI): TRIES (default 30) runs of a 2-process tiny demo run, each with a
# SIGKILL of the launcher, torchrun or a worker at a random moment (every third try while a checkpoint
# is being written), resumed until completed and compared with an uninterrupted run.
#     bash benchmarks/faults.sh                 # PY=.venv/bin/python by default
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-/tmp/chexui-faults}
rm -rf "$WORK"
export NO_COLOR=1 CHEXUI_CACHE_DIR="$WORK/cache" CHEXUI_PRESETS=""
grep -m1 'model name' /proc/cpuinfo; echo "cores $(nproc)"
"$PY" benchmarks/faults.py --tries "${TRIES:-30}" --work "$WORK"
