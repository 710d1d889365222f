"""A throwaway copy of this project in its own git repo, for end-to-end DVC tests.

Shared by the DVC and orchestration tests: it copies the files git would ship (tracked
plus untracked-but-not-ignored), writes micro params (both pipelines), and commits, so `dvc repro` and
`dvc exp run` behave as on a fresh clone. Nothing of the real checkout is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from prefect_db import seed_prefect_home

REPO = Path(__file__).resolve().parents[1]

# Small enough for a 2-core CI machine, large enough that every stage does real work.
MICRO_PARAMS: dict = {
    "collect": {"twin": {"subjects": 4, "cameras": 1, "frames": 10, "disturbance_fraction": 0.1}},
    "detect": {"batch_size": 16},
    "train": {
        "width": 0.25,
        "latent_dim": 32,
        "batch_size": 4,
        "epochs_fixed": 1,
        "epochs_decay": 0,
        "max_steps": 3,
        "log_every": 1,
        "checkpoint_every": 2,
        "sample_sources": 2,
        "sample_latents": 2,
    },
    "evaluate": {
        "seeds": 1,
        "diversity_sources": 2,
        "diversity_latents": 2,
        "estimator_epochs": 1,
        "feature_epochs": 1,
        "judge_few_shot_draws": 1,
        "judge_few_shot_steps": 10,
    },
    "generate": {"count": 20, "shard_size": 10},
}

# The same for the expression pipeline (pipelines/expression/params.yaml): 4 subjects x 7
# expressions x 2 frames, a few StarGAN steps, one-epoch metrics.
EXPRESSION_MICRO_PARAMS: dict = {
    "collect": {"expression_twin": {"subjects": 4, "frames_per_expression": 2}},
    "detect": {"batch_size": 16},
    "split": {"test_fraction": 0.25},
    "expression_train": {"width": 0.25, "res_blocks": 1, "batch_size": 8, "steps": 4, "log_every": 2,
                         "checkpoint_every": 2, "sample_inputs": 2},
    "evaluate": {"feature_epochs": 1, "judge_seeds": 1, "judge_epochs": 1, "judge_few_shot_draws": 1,
                 "judge_few_shot_steps": 5},
    "expression_evaluate": {"classifier_epochs": 1, "classifier_min_steps": 10, "auditor_epochs": 1,
                            "auditor_min_steps": 10},
}


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def project_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    env.pop("DVC_EXP_NAME", None)
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def make_project(dest: Path, params: dict | None = None) -> Path:
    """Copy the project into ``dest`` (a new git repo with DVC) and commit it."""
    files = run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO).stdout.split()
    for rel in files:
        src = REPO / rel
        if not src.is_file() or rel.startswith(("data/", "models/", "metrics/", "plots/")):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    p = yaml.safe_load((dest / "params.yaml").read_text())
    deep_update(p, MICRO_PARAMS)
    deep_update(p, params or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    expression = dest / "pipelines" / "expression" / "params.yaml"
    (expression).write_text(yaml.safe_dump(deep_update(yaml.safe_load(expression.read_text()),
                                                       EXPRESSION_MICRO_PARAMS), sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], cwd=dest)
    run(["git", "config", "user.email", "test@nirgan.local"], cwd=dest)
    run(["git", "config", "user.name", "nirgan test"], cwd=dest)
    run(["git", "add", "-A"], cwd=dest)
    run(["git", "commit", "-qm", "micro project"], cwd=dest)
    return dest


@contextmanager
def running_stack(base: Path, prefect_db: Path | None = None) -> Iterator:
    """A micro project (:func:`make_project`) under ``base`` and its stack (flows/stack.py: Prefect
    and MLflow servers, one CPU worker on a one-slot pool) on free loopback ports; everything is
    stopped by PID on exit. ``prefect_db``: a migrated Prefect database to start from
    (tests/prefect_db.py), else the server migrates a new one as on a fresh clone."""
    from flows import stack as stack_mod
    from flows.stack_services import free_port

    root = make_project(base / "project")
    st = stack_mod.Stack(root=root, state=base / "state", prefect_port=free_port(),
                         mlflow_port=free_port(), gpus=[None], pool_limit=1, worker_poll_seconds=1.0,
                         ui=False)
    if prefect_db is not None:
        seed_prefect_home(Path(st.env()["PREFECT_HOME"]), prefect_db)
    try:
        stack_mod.up(st)
        yield st
    finally:
        stack_mod.down(st.state)
