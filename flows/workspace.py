"""A pipeline run's own working copy: git clone, DVC cache and remotes, params overrides, and
the experiment saved from it. Plain functions; ``flows/experiment.py`` wraps them in tasks.
``folder`` is the pipeline's folder in the repo ("." for the NIR dvc.yaml,
"pipelines/expression"): its params.yaml takes the overrides and its dvc.yaml is the one run
and saved.

``run(cmd, cwd, env)`` is how a command runs here (the flow passes one that streams to the
task's log; see :func:`flows.processes.stream`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from flows.processes import CommandError
from nirgan.config import OrchestrateConfig

RUNS_DIR = Path(".dvc/tmp/nirgan-runs")
CHECKPOINTS = Path("models") / "checkpoints"  # the trainer's, in the pipeline's folder (dvc.yaml: persist)
KEY_FILE = "nirgan-run-key"                   # in a workspace's .git: its run_key
Run = Callable[[list[str], Path, dict[str, str]], str]


def git(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CommandError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment, with this venv's tools first on PATH (dvc, nirgan)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.update(extra or {})
    return env


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    """``params[a][b][c] = value`` for ``key = "a.b.c"``. Missing sections are created; an unknown
    key then fails ``nirgan check-params`` (extra=forbid) with its dotted name, before any stage."""
    *parents, leaf = key.split(".")
    node = params
    for part in parents:
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    if not leaf:
        raise ValueError(f"override {key!r}: empty key")
    node[leaf] = value


def dvc_config(key: str, repo: Path) -> str:
    """A DVC config value as DVC reads it (project, local, global and system levels merged;
    paths made absolute), "" when unset. Not `git config -f`: DVC writes quoted section names
    (``['remote "shared"']``) that git rejects as bad config lines."""
    proc = subprocess.run(["dvc", "config", key], cwd=repo, env=tool_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise CommandError(f"dvc config {key} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def dvc_remote_configured(ws: Path) -> bool:
    return bool(dvc_config("core.remote", ws))


def resolve_revision(checkout: Path, revision: str | None, log: Callable[[str], None]) -> str:
    if not revision:
        return git(["rev-parse", "HEAD"], checkout)
    try:
        return git(["rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"], checkout)
    except CommandError:
        log(f"revision {revision} not in {checkout}; fetching")
        git(["fetch", "--quiet", "origin"], checkout)
        return git(["rev-parse", "--verify", f"origin/{revision}^{{commit}}"], checkout)


def check_experiment_name(checkout: Path, experiment: str) -> None:
    git(["check-ref-format", f"refs/exps/{experiment}"], checkout)
    existing = git(["for-each-ref", "--format=%(refname)", "refs/exps"], checkout).splitlines()
    if any(ref.endswith(f"/{experiment}") and "/exec/" not in ref for ref in existing):
        raise ValueError(f"DVC experiment {experiment!r} already exists in {checkout}; pick another name")


def create(checkout: Path, run_id: str, sha: str, overrides: dict[str, Any], run: Run,
           log: Callable[[str], None], folder: str = ".") -> dict[str, Any]:
    """Clone ``checkout`` at ``sha`` into the run's workspace, share the checkout's DVC cache,
    write and validate the overrides, pull when a DVC remote is configured.

    Returns {"workspace", "stages" (dvc.yaml order), "orchestrate" (the params section)}.
    """
    runs = Path(os.environ.get("NIRGAN_RUNS_DIR") or checkout / RUNS_DIR)
    ws = runs / run_id
    previous = ws.with_name(f"{run_id}.previous")  # a retried flow run's own failed workspace
    if ws.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(ws, previous)
    ws.parent.mkdir(parents=True, exist_ok=True)
    git(["clone", "--quiet", "--shared", "--no-checkout", str(checkout), str(ws)], checkout)
    git(["checkout", "--quiet", "--detach", sha], ws)
    git(["config", "user.name", git(["config", "--default", "nirgan", "user.name"], checkout)], ws)
    git(["config", "user.email", git(["config", "--default", "nirgan@localhost", "user.email"], checkout)], ws)
    # The checkout's local DVC config (remote credentials) applies here too; its cache is shared.
    local = checkout / ".dvc" / "config.local"
    if local.exists():
        shutil.copy2(local, ws / ".dvc" / "config.local")
    env = tool_env()
    cache = dvc_config("cache.dir", checkout) or str(checkout / ".dvc" / "cache")
    run(["dvc", "config", "--local", "cache.dir", cache], ws, env)

    here = ws / folder
    if not (here / "dvc.yaml").is_file():
        raise FileNotFoundError(f"no dvc.yaml in {folder!r} at {sha[:10]}")
    params_path = here / "params.yaml"
    params = yaml.safe_load(params_path.read_text()) or {}
    for key, value in overrides.items():
        set_dotted(params, key, value)
    if overrides:
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        log(f"overrides: {json.dumps(overrides, sort_keys=True)}")
    run(["nirgan", "check-params"], here, tool_env({"PYTHONPATH": str(ws / "src")}))
    key = run_key(sha, folder, overrides)
    (ws / ".git" / KEY_FILE).write_text(key + "\n")  # inside .git: never part of the experiment
    adopted = adopt_checkpoints(runs, ws, key, folder)
    if adopted is not None:
        log(f"checkpoints of an earlier attempt of this run copied from {adopted}: train resumes from them")
    shutil.rmtree(previous, ignore_errors=True)
    if dvc_remote_configured(ws):
        run(["dvc", "pull", "--run-cache", "--allow-missing", "dvc.yaml"], here, env)

    stages = list((yaml.safe_load((here / "dvc.yaml").read_text()) or {}).get("stages") or {})
    orchestrate = OrchestrateConfig.model_validate(params.get("orchestrate") or {})
    return {"workspace": str(ws), "stages": stages, "orchestrate": orchestrate.model_dump()}


def run_key(sha: str, folder: str, overrides: dict[str, Any]) -> str:
    """What makes two flow runs the same run: revision, pipeline and overrides. A retry (same
    flow run) or a resubmission has it; the trainer's own content fingerprint then decides
    whether a checkpoint found this way really applies, and starts afresh when not."""
    text = json.dumps([sha, os.path.normpath(folder), overrides], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def adopt_checkpoints(runs: Path, ws: Path, key: str, folder: str) -> Path | None:
    """Copy the newest checkpoints of a kept workspace with the same :func:`run_key` (a failed
    attempt's: a successful run deletes its workspace) into ``ws``; returns where from.

    Prefect's retry of a flow run recreates its workspace and a resubmission makes a new one, so
    without this a crashed or failed training would start again from step 0. Copied, not moved:
    another flow run with the same key may still be training in its workspace.
    """
    found = []
    for other in runs.iterdir() if runs.is_dir() else []:
        key_file = other / ".git" / KEY_FILE
        latest = other / folder / CHECKPOINTS / "latest"
        if other == ws or not key_file.is_file() or key_file.read_text().strip() != key or not latest.is_file():
            continue
        found.append((latest.stat().st_mtime, other))
    if not found:
        return None
    newest = max(found)[1]
    target = ws / folder / CHECKPOINTS
    target.parent.mkdir(parents=True, exist_ok=True)
    # hidden files are a killed writer's temporaries, never named by `latest`
    shutil.copytree(newest / folder / CHECKPOINTS, target, ignore=shutil.ignore_patterns(".*"), dirs_exist_ok=True)
    return newest


def uncached_outputs(ws: Path, folder: str = ".") -> list[str]:
    """The pipeline's outputs with ``cache: false`` (metrics) and DVC's .gitignore files, relative
    to the repo root: git-untracked, so ``dvc exp save`` needs them named to put them in the
    experiment commit."""
    from dvc.repo import Repo

    here = (ws / folder).resolve()
    with Repo(str(ws)) as repo:
        # Persistent outs (train's checkpoints) stay out: they are run-local scratch, not results.
        paths = [
            os.path.relpath(out.fs_path, ws) for out in repo.index.outs
            if not out.use_cache and not out.persist and Path(out.stage.path).resolve().parent == here
        ]
    untracked = git(["ls-files", "--others", "--exclude-standard"], ws).splitlines()
    paths += [p for p in untracked if p.endswith(".gitignore")]
    return sorted({p for p in paths if (ws / p).exists()})


def save_experiment(ws: Path, checkout: Path, experiment: str, run: Run, folder: str = ".") -> None:
    """``dvc exp save`` of the pipeline in ``folder``, its ref pushed into the checkout (and the
    remotes)."""
    env = tool_env()
    include = [arg for path in uncached_outputs(ws, folder) for arg in ("-I", path)]
    # The target limits the save to this pipeline: without it DVC wants the outputs of every
    # dvc.yaml in the repo, and the other pipeline's are not in this workspace.
    target = os.path.normpath(os.path.join(folder, "dvc.yaml"))
    run(["dvc", "exp", "save", "--name", experiment, *include, target], ws, env)
    # The ref into the worker's checkout (what `dvc exp push --no-cache origin` does, in 1/10 the time).
    refs = [r for r in git(["for-each-ref", "--format=%(refname)", "refs/exps"], ws).splitlines()
            if r.endswith(f"/{experiment}")]
    if len(refs) != 1:
        raise CommandError(f"dvc exp save left {len(refs)} refs named {experiment!r}: {refs}")
    run(["git", "push", "--quiet", "origin", f"{refs[0]}:{refs[0]}"], ws, env)
    if dvc_remote_configured(ws):
        run(["dvc", "push", "--run-cache", "dvc.yaml"], ws / folder, env)
    git_remote = os.environ.get("NIRGAN_EXP_GIT_REMOTE")
    if git_remote:
        run(["dvc", "exp", "push", "--no-cache", git_remote, experiment], checkout, env)
