#!/usr/bin/env bash
# The hostile set by hand (not CI): a colleague's run dirs, presets and scans planted with everything the
# untrusted-input audit tried (code in a .pt2, a forged launcher.json, links in output dirs, markup and
# bidi controls in names, FIFOs, a DICOM bomb, ...), each through the CLI, then one table: try,
# expected, result, verdict, and the totals (code executions, tracebacks, silently wrong, hangs).
#     bash benchmarks/hostile.sh                 # PY=.venv/bin/python by default
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
grep -m1 'model name' /proc/cpuinfo; echo "cores $(nproc)"
"$PY" benchmarks/hostile.py --work "${WORK:-/tmp/chexui-hostile}"
