#!/usr/bin/env bash
# The expression pipeline's train_expression stage for 80 steps, one variant after the other on
# its committed prepared data (run `dvc repro` in pipelines/expression first): a baseline
# revision's code, then this checkout in fp32 and in bf16 (bf16 runs bf16 only where it is
# native: nirgan.devices.native_bf16). Prints each run's faces/s. Run it on an idle machine.
#
#   bash benchmarks/expression_train_speed.sh [BASELINE_REV]   # default cabb3e7
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${1:-cabb3e7}
PY=$ROOT/.venv/bin/python
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/base"
git -C "$ROOT" archive "$BASE" src | tar -x -C "$TMP/base"

run() {  # name precision src
  local d=$TMP/$1
  mkdir -p "$d/data"
  ln -s "$ROOT/pipelines/expression/data/prepared" "$d/data/prepared"
  ln -s "$ROOT/pipelines/expression/data/split" "$d/data/split"
  "$PY" - "$2" > "$d/params.yaml" <<'PY'
import sys, yaml
p = yaml.safe_load(open("pipelines/expression/params.yaml"))
p["expression_train"].update(max_steps=80, log_model=False, precision=sys.argv[1])
p.get("evaluate", {}).pop("precision", None)  # a key the baseline does not know
print(yaml.safe_dump(p))
PY
  (cd "$d" && PYTHONPATH=$3 MLFLOW_TRACKING_URI="sqlite:///$d/mlflow.db" "$PY" -m nirgan.cli stage train_expression 2>&1 \
    | grep -E "stage train_expression" | sed "s/.*faces_per_s=\([0-9.]*\).*/$1: \1 faces\/s/")
}

cd "$ROOT"
run "baseline-$BASE-fp32" fp32 "$TMP/base/src"
run "this-fp32" fp32 "$ROOT/src"
run "this-bf16" bf16 "$ROOT/src"
