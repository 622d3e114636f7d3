#!/usr/bin/env bash
# The last device call of the GPU check (bench/README.md): install the staged wheels offline, run
# bench/gpu_check.py; its gpu_check.json, gpu_check.md and the log come back from $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu-check}"
mkdir -p "$OUT"
python3 bench/gpu_prepare.py install
export PYTHONPATH="$PWD/.gpu-stage/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout "${GPU_CHECK_TIMEOUT:-480}" python3 bench/gpu_check.py --out "$OUT" --work /tmp/gpu-check-work "$@" 2>&1 \
  | tee "$OUT/gpu_check.log"
