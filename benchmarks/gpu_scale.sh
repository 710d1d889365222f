#!/usr/bin/env bash
# The device check in one call that ends by its deadline (default 420 s, this script's start to
# its end: wheel install and cold compile included). Phases, plan and outputs: gpu_scale.py.
#   bash benchmarks/gpu_scale.sh [--deadline-s 420] [--train-minutes M] [--subjects N]
#                                [--collect-path DIR [--collect-labels FILE]] [--expression-minutes M]
#   bash benchmarks/gpu_scale.sh --smoke --deadline-s 60     # CPU, tiny (tests/test_gpu_scale_smoke.py)
# On the device machine (Python 3.12 with its own torch; carry .whl, built by device_wheels.sh):
#   PYTHON=python3 bash benchmarks/gpu_scale.sh --deadline-s 420
# with a device-tool timeout_s of 450. The wheels in .whl/ are installed into /tmp/site first
# when the interpreter lacks them (the install phase); results land in $OUT.
set -euo pipefail
started_at="$(date +%s.%N)"
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu_scale_out}"
PYTHON="${PYTHON:-python}"
threads="$(nproc)"
# the device machine has 16 cores: let MTCNN, the twin renderer and torch's CPU ops use them all
# (a caller that set OMP_NUM_THREADS, as the 2-core test machine does, keeps its value)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-$threads}"
# /tmp/site: where the install phase puts the device wheels (a rerun on a warm machine finds them)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}:/tmp/site" PYTHONUNBUFFERED=1
export DVC_NO_ANALYTICS=1 MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false
mkdir -p "$OUT"
deadline=420
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [[ "${args[$i]}" == --deadline-s ]] && deadline="${args[$((i + 1))]}"
    [[ "${args[$i]}" == --deadline-s=* ]] && deadline="${args[$i]#--deadline-s=}"
done

# install: only what the interpreter lacks, bounded by a share of the deadline
install_json="$OUT/install.json"
t0="$(date +%s%N)"
since() { local ms=$(( ($(date +%s%N) - t0) / 1000000 )); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)); }
# find_spec, not import: importing mlflow alone takes seconds
if "$PYTHON" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('mlflow', 'pydantic', 'facenet_pytorch')))" 2>/dev/null; then
    printf '{"status": "ok", "seconds": %s, "reason": "nothing to install: the interpreter has the packages"}\n' \
        "$(since)" > "$install_json"
elif compgen -G ".whl/*.whl" > /dev/null; then
    limit="$(( ${deadline%.*} / 6 ))"
    if timeout "$limit" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; then
        status=ok reason="$(ls .whl/*.whl | wc -l) wheels from .whl/ into /tmp/site"
    else
        status=failed reason="pip install of .whl/ failed or passed ${limit} s"
    fi
    printf '{"status": "%s", "seconds": %s, "reason": "%s"}\n' "$status" \
        "$(since)" "$reason" > "$install_json"
else
    printf '{"status": "skipped", "seconds": 0, "reason": "the interpreter lacks mlflow/pydantic/facenet_pytorch and there is no .whl/ (benchmarks/device_wheels.sh)"}\n' \
        > "$install_json"
fi
"$PYTHON" benchmarks/gpu_scale.py --out "$OUT" --started-at "$started_at" --install-json "$install_json" "$@" \
    2>&1 | tee "$OUT/gpu_scale.log"
