"""A pipeline run's own working copy: git clone, DVC cache and remotes, params overrides, and
the experiment saved from it. Plain functions; ``flows/experiment.py`` wraps them in tasks.
``folder`` is the pipeline's folder in the repo ("." for the NIR dvc.yaml,
"pipelines/expression"): its params.yaml takes the overrides and its dvc.yaml is the one run
and saved.

``run(cmd, cwd, env)`` is how a command runs here (the flow passes one that streams to the
task's log; see :func:`flows.processes.stream`).
"""

from __future__ import annotations

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
    if ws.exists():
        shutil.rmtree(ws)
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
    if dvc_remote_configured(ws):
        run(["dvc", "pull", "--run-cache", "--allow-missing", "dvc.yaml"], here, env)

    stages = list((yaml.safe_load((here / "dvc.yaml").read_text()) or {}).get("stages") or {})
    orchestrate = OrchestrateConfig.model_validate(params.get("orchestrate") or {})
    return {"workspace": str(ws), "stages": stages, "orchestrate": orchestrate.model_dump()}


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
