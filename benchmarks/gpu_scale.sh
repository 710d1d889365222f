#!/usr/bin/env bash
# GPU scale in one device call (<= 9 minutes on an H100/H200, cold start included): a >= 100-subject
# twin, the thesis-width generator for a fixed wall budget (train.max_minutes), evaluation, TSTR and
# the realism judge; results into $OUT (summary.json, eval.json, samples.png).
#   bash benchmarks/gpu_scale.sh [--train-minutes 3] [--subjects 120] [--expression-minutes 1.5]
#   bash benchmarks/gpu_scale.sh --smoke          # CPU, tiny (tests/test_gpu_scale_smoke.py)
# On the device machine (Python 3.12 with its own torch; carry .whl, built by device_wheels.sh):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
#   export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PYTHON=python3 &&
#   timeout 535 bash benchmarks/gpu_scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu_scale_out}"
threads="$(nproc)"
# the device machine has 16 cores: let MTCNN, the twin renderer and torch's CPU ops use them all
export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export DVC_NO_ANALYTICS=1 MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false
mkdir -p "$OUT"
"${PYTHON:-python}" benchmarks/gpu_scale.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_scale.log"
