#!/usr/bin/env bash
# Wheels for the device machine (Python 3.12, its own torch), into .whl/ (git-ignored via
# .git/info/exclude): the packages gpu_scale.py imports that the device image lacks, at the
# versions this checkout's .venv holds. The list is the import closure of `gpu_scale.py --smoke`
# (importlib.metadata.packages_distributions over sys.modules) minus the image's own packages;
# mlflow, pydantic and facenet-pytorch with what they import, plus typing_extensions and anyio:
# the image has both, at versions not known here, and pydantic_core and starlette need recent ones.
#   bash benchmarks/device_wheels.sh
# then, as the device command (carry: [".whl"]; gpu_scale.sh installs them into /tmp/site as its
# first phase, inside its deadline):
#   PYTHON=python3 bash benchmarks/gpu_scale.sh --deadline-s 420
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .git ]; then  # keep the wheels out of `git status` (a worktree's .git is a file: skip)
    mkdir -p .git/info
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
fi
names=(GitPython Mako SQLAlchemy alembic annotated-types cachetools cffi cryptography databricks-sdk
       facenet-pytorch fastapi gitdb google-auth importlib_metadata mlflow mlflow-skinny mlflow-tracing
       opentelemetry-api opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions orjson
       pydantic pydantic-extra-types pydantic_core pydot pytz smmap sniffio sqlparse starlette wcwidth
       typing-inspection typing_extensions anyio)
pins=$(.venv/bin/python - "${names[@]}" <<'PY'
import importlib.metadata as md, sys
print(" ".join(f"{n}=={md.version(n)}" for n in sys.argv[1:]))
PY
)
platforms=()
for p in manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${p}_x86_64")
done
mkdir -p .whl
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl $pins
du -sh .whl
