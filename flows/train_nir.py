"""The ``train-nir`` flow: the whole pipeline as one DVC experiment, one Prefect task run per stage.

How a run maps onto DVC (and why not ``dvc exp run``): ``dvc exp run`` reproduces the whole
pipeline inside one process, so Prefect could only see one opaque step. Instead each run gets
its own working copy and drives DVC stage by stage:

1. ``prepare-workspace``: ``git clone --shared`` of the worker's checkout into
   ``<checkout>/.dvc/tmp/nirgan-runs/<flow-run-id>`` (``NIRGAN_RUNS_DIR`` moves it), detached at
   the requested revision (default: the checkout's HEAD), with the checkout's DVC cache as its
   cache, so earlier runs' outputs and run-cache are reused and several runs never share a
   workspace. The overrides are written into that copy's ``params.yaml`` (what
   ``dvc exp run -S`` does) and validated with ``nirgan check-params`` before any stage runs.
2. one task run per stage in dvc.yaml order: ``dvc repro --single-item <stage>``. A stage whose
   inputs did not change is restored from the run-cache instead of recomputed. A failed stage is
   retried ``orchestrate.retries`` times (params.yaml); ``orchestrate.stage_timeout_minutes``
   kills a stage that hangs.
3. ``save-experiment``: ``dvc exp save --name <experiment>`` (the baseline is the revision); its
   ref is pushed into the worker's checkout, so ``dvc exp show`` there lists it. The workspace
   is deleted on success (its outputs are in the shared cache) and kept on failure.
   With ``NIRGAN_EXP_GIT_REMOTE`` set, the checkout also pushes it to that git remote; with a DVC
   remote configured, the workspace pulls before and pushes after (data and run-cache).
4. a markdown artifact with ``metrics/eval.json`` and the MLflow run's link.

The stage subprocesses run the workspace's own code (``PYTHONPATH=<workspace>/src``) with the
worker's virtual environment, and get the MLflow tags' inputs as environment variables
(``DVC_EXP_NAME``, ``DVC_EXP_BASELINE_REV``, ``PREFECT__FLOW_RUN_ID``, ``NIRGAN_FLOW_RUN_NAME``,
``NIRGAN_WORK_POOL``); see ``nirgan.tracking``.

Failure injection for tests and drills: ``NIRGAN_FAIL_ONCE=<stage>:<marker-file>`` makes that
stage's first attempt fail before it starts; ``NIRGAN_FAIL_ONCE=<stage>:<marker-file>:<path>``
kills the running stage (its whole process tree, like ``kill -9``) as soon as ``<path>``
(relative to the workspace, e.g. ``models/checkpoints/latest``) exists. Either creates the
marker, so only the first attempt fails; the retry then shows whether the stage resumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as runtime_flow_run

from nirgan.config import OrchestrateConfig

RUNS_DIR = Path(".dvc/tmp/nirgan-runs")
ARTIFACT_KEY = "train-nir-eval"


class StageError(RuntimeError):
    pass


def _git(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StageError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment, with this venv's tools first on PATH (dvc, nirgan)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.update(extra or {})
    return env


def _stream(
    cmd: list[str],
    cwd: Path,
    env: dict[str, str],
    timeout_s: float | None = None,
    kill_when: tuple[Path, Path] | None = None,
) -> str:
    """Run ``cmd``, copying each output line to the task's log; returns the output.

    The command gets its own process group so that a timeout or a cancelled task kills the
    whole tree (dvc and the stage it started), not only dvc.
    """
    logger = get_run_logger()
    logger.info("$ %s", " ".join(cmd))
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    timed_out = threading.Event()

    def _kill() -> None:
        timed_out.set()
        _kill_group(proc.pid)

    timer = threading.Timer(timeout_s, _kill) if timeout_s else None
    if timer:
        timer.start()
    injected = threading.Event()
    if kill_when:
        threading.Thread(target=_kill_when_exists, args=(proc, *kill_when, injected), daemon=True).start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            lines.append(line)
            if line.strip():
                logger.info(line)
        code = proc.wait()
    except BaseException:
        _kill_group(proc.pid)
        raise
    finally:
        if timer:
            timer.cancel()
    output = "\n".join(lines)
    if injected.is_set():
        raise StageError(f"injected failure: {' '.join(cmd)} killed once {kill_when[0]} existed (NIRGAN_FAIL_ONCE)")
    if timed_out.is_set():
        raise StageError(f"{' '.join(cmd)} killed after {timeout_s:.0f} s (orchestrate.stage_timeout_minutes)")
    if code != 0:
        raise StageError(f"{' '.join(cmd)} exited with {code}; last lines:\n" + "\n".join(lines[-15:]))
    return output


def _kill_when_exists(proc: subprocess.Popen, path: Path, marker: Path, done: threading.Event) -> None:
    while proc.poll() is None:
        if path.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"killed once {path} existed, at {time.time()}\n")
            done.set()
            os.killpg(proc.pid, signal.SIGKILL)
            return
        time.sleep(0.1)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
        time.sleep(2)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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


def _dvc_config(key: str, repo: Path) -> str:
    """A DVC config value as DVC reads it (project, local, global and system levels merged;
    paths made absolute), "" when unset. Not `git config -f`: DVC writes quoted section names
    (``['remote "shared"']``) that git rejects as bad config lines."""
    proc = subprocess.run(["dvc", "config", key], cwd=repo, env=_tool_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise StageError(f"dvc config {key} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _dvc_remote_configured(ws: Path) -> bool:
    return bool(_dvc_config("core.remote", ws))


@task(name="prepare-workspace", cache_policy=NO_CACHE)
def prepare_workspace(
    checkout: Path, run_id: str, revision: str | None, overrides: dict[str, Any], experiment: str
) -> dict[str, Any]:
    logger = get_run_logger()
    env = _tool_env()
    if revision:
        try:
            sha = _git(["rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"], checkout)
        except StageError:
            logger.info("revision %s not in %s; fetching", revision, checkout)
            _git(["fetch", "--quiet", "origin"], checkout)
            sha = _git(["rev-parse", "--verify", f"origin/{revision}^{{commit}}"], checkout)
    else:
        sha = _git(["rev-parse", "HEAD"], checkout)
    _git(["check-ref-format", f"refs/exps/{experiment}"], checkout)
    existing = _git(["for-each-ref", "--format=%(refname)", "refs/exps"], checkout).splitlines()
    if any(ref.endswith(f"/{experiment}") and "/exec/" not in ref for ref in existing):
        raise ValueError(f"DVC experiment {experiment!r} already exists in {checkout}; pick another name")

    runs = Path(os.environ.get("NIRGAN_RUNS_DIR") or checkout / RUNS_DIR)
    ws = runs / run_id
    if ws.exists():
        shutil.rmtree(ws)
    ws.parent.mkdir(parents=True, exist_ok=True)
    _git(["clone", "--quiet", "--shared", "--no-checkout", str(checkout), str(ws)], checkout)
    _git(["checkout", "--quiet", "--detach", sha], ws)
    _git(["config", "user.name", _git(["config", "--default", "nirgan", "user.name"], checkout)], ws)
    _git(["config", "user.email", _git(["config", "--default", "nirgan@localhost", "user.email"], checkout)], ws)
    # The checkout's local DVC config (remote credentials) applies here too; its cache is shared.
    local = checkout / ".dvc" / "config.local"
    if local.exists():
        shutil.copy2(local, ws / ".dvc" / "config.local")
    cache = _dvc_config("cache.dir", checkout) or str(checkout / ".dvc" / "cache")
    _stream(["dvc", "config", "--local", "cache.dir", cache], ws, env)

    params_path = ws / "params.yaml"
    params = yaml.safe_load(params_path.read_text()) or {}
    for key, value in overrides.items():
        set_dotted(params, key, value)
    if overrides:
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        logger.info("overrides: %s", json.dumps(overrides, sort_keys=True))
    _stream(["nirgan", "check-params"], ws, _tool_env({"PYTHONPATH": str(ws / "src")}))
    if _dvc_remote_configured(ws):
        _stream(["dvc", "pull", "--run-cache", "--allow-missing"], ws, env)

    stages = list((yaml.safe_load((ws / "dvc.yaml").read_text()) or {}).get("stages") or {})
    orchestrate = OrchestrateConfig.model_validate(params.get("orchestrate") or {})
    logger.info("workspace %s at %s (%s), stages: %s", ws, revision or "HEAD", sha[:10], ", ".join(stages))
    return {"workspace": str(ws), "baseline": sha, "stages": stages, "orchestrate": orchestrate.model_dump()}


def _fail_once(stage: str, workspace: Path) -> tuple[Path, Path] | None:
    """``NIRGAN_FAIL_ONCE`` for this stage: fails now, or returns (path, marker) to kill on."""
    spec = os.environ.get("NIRGAN_FAIL_ONCE", "")
    target, _, rest = spec.partition(":")
    marker, _, after = rest.partition(":")
    if target != stage or not marker or Path(marker).exists():
        return None
    if after:
        return workspace / after, Path(marker)
    Path(marker).parent.mkdir(parents=True, exist_ok=True)
    Path(marker).write_text(f"failed {stage} once before it started, at {time.time()}\n")
    raise StageError(f"injected failure of stage {stage!r} (NIRGAN_FAIL_ONCE={spec})")


@task(cache_policy=NO_CACHE)
def run_stage(stage: str, workspace: str, stage_env: dict[str, str], timeout_s: float | None) -> dict[str, Any]:
    """``dvc repro --single-item <stage>`` in the run's workspace."""
    kill_when = _fail_once(stage, Path(workspace))
    start = time.monotonic()
    output = _stream(
        ["dvc", "repro", "--single-item", stage], Path(workspace), _tool_env(stage_env), timeout_s, kill_when
    )
    if f"Running stage '{stage}'" in output:
        how = "ran"
    elif "is cached" in output:
        how = "restored from run-cache"
    else:
        how = "unchanged"
    return {"stage": stage, "how": how, "seconds": round(time.monotonic() - start, 2)}


def _uncached_outputs(ws: Path) -> list[str]:
    """Outputs with ``cache: false`` (metrics) and DVC's .gitignore files: git-untracked,
    so ``dvc exp save`` needs them named to put them in the experiment commit."""
    from dvc.repo import Repo

    with Repo(str(ws)) as repo:
        # Persistent outs (train's checkpoints) stay out: they are run-local scratch, not results.
        paths = [
            os.path.relpath(out.fs_path, ws) for out in repo.index.outs if not out.use_cache and not out.persist
        ]
    untracked = _git(["ls-files", "--others", "--exclude-standard"], ws).splitlines()
    paths += [p for p in untracked if p.endswith(".gitignore")]
    return sorted({p for p in paths if (ws / p).exists()})


@task(name="save-experiment", cache_policy=NO_CACHE)
def save_experiment(workspace: str, checkout: Path, experiment: str) -> None:
    ws = Path(workspace)
    env = _tool_env()
    include = [arg for path in _uncached_outputs(ws) for arg in ("-I", path)]
    _stream(["dvc", "exp", "save", "--name", experiment, *include], ws, env)
    # The ref into the worker's checkout (what `dvc exp push --no-cache origin` does, in 1/10 the time).
    refs = [r for r in _git(["for-each-ref", "--format=%(refname)", "refs/exps"], ws).splitlines()
            if r.endswith(f"/{experiment}")]
    if len(refs) != 1:
        raise StageError(f"dvc exp save left {len(refs)} refs named {experiment!r}: {refs}")
    _stream(["git", "push", "--quiet", "origin", f"{refs[0]}:{refs[0]}"], ws, env)
    if _dvc_remote_configured(ws):
        _stream(["dvc", "push", "--run-cache"], ws, env)
    git_remote = os.environ.get("NIRGAN_EXP_GIT_REMOTE")
    if git_remote:
        _stream(["dvc", "exp", "push", "--no-cache", git_remote, experiment], checkout, env)


def _mlflow_link(info: dict[str, Any]) -> str:
    uri = str(info.get("tracking_uri", ""))
    run = f"#/experiments/{info.get('experiment_id')}/runs/{info.get('run_id')}"
    if uri.startswith(("http://", "https://")):
        url = f"{uri.rstrip('/')}/{run}"
        return f"[{info.get('run_id')}]({url})"
    return f"run `{info.get('run_id')}` in `{uri}` (open with `mlflow ui --backend-store-uri {uri}`, then {run})"


def eval_markdown(experiment: str, baseline: str, overrides: dict[str, Any], ws: Path, stages: list[dict]) -> str:
    metrics_path, run_path = ws / "metrics" / "eval.json", ws / "models" / "mlflow_run.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    lines = [
        f"# train-nir: `{experiment}`",
        "",
        f"DVC experiment `{experiment}` on baseline `{baseline[:10]}`; overrides "
        f"`{json.dumps(overrides, sort_keys=True)}`.",
        "",
    ]
    if run_path.exists():
        lines += [f"MLflow: {_mlflow_link(json.loads(run_path.read_text()))}", ""]
    else:
        lines += ["MLflow: no `models/mlflow_run.json` was written.", ""]
    lines += ["| metric | value |", "|---|---|"]
    for key in sorted(metrics):
        value = metrics[key]
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    if not metrics:
        lines.append("| (metrics/eval.json missing) | |")
    lines += ["", "| stage | how | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['how']} | {s['seconds']} |" for s in stages]
    return "\n".join(lines) + "\n"


def _work_pool_name(flow_run_id: str | None) -> str:
    if not flow_run_id:
        return ""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id).work_pool_name or ""
    except Exception:  # noqa: BLE001 -- a tag is not worth failing the run for
        return ""


def _checkout_root() -> Path:
    return Path(_git(["rev-parse", "--show-toplevel"], Path.cwd()))


@flow(name="train-nir", log_prints=True)
def train_nir(
    overrides: dict[str, Any] | None = None,
    experiment: str | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """Reproduce the pipeline with ``overrides`` (dotted params keys, as ``dvc exp run -S``) as the
    DVC experiment ``experiment`` (default: the flow run's name) on git ``revision`` (default: the
    worker checkout's HEAD)."""
    logger = get_run_logger()
    overrides = dict(overrides or {})
    run_id = str(runtime_flow_run.id or f"local-{os.getpid()}")
    run_name = runtime_flow_run.name or run_id
    experiment = experiment or re.sub(r"[^A-Za-z0-9_-]+", "-", run_name)
    checkout = _checkout_root()

    prep = prepare_workspace(checkout, run_id, revision, overrides, experiment)
    ws = Path(prep["workspace"])
    orchestrate = OrchestrateConfig.model_validate(prep["orchestrate"])
    stage_env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ws / "src"), os.environ.get("PYTHONPATH")])),
        "DVC_EXP_NAME": experiment,
        "DVC_EXP_BASELINE_REV": prep["baseline"],
        "PREFECT__FLOW_RUN_ID": run_id,
        "NIRGAN_FLOW_RUN_NAME": run_name,
        "NIRGAN_WORK_POOL": _work_pool_name(runtime_flow_run.id),
        # Without a server every run of this checkout shares its SQLite store, not the workspace's.
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{checkout / 'mlflow.db'}",
    }
    timeout_s = orchestrate.stage_timeout_minutes * 60 if orchestrate.stage_timeout_minutes else None
    done: list[dict[str, Any]] = []
    for stage in prep["stages"]:
        stage_task = run_stage.with_options(
            name=stage,
            task_run_name=stage,
            retries=orchestrate.retries,
            retry_delay_seconds=orchestrate.retry_delay_seconds,
        )
        done.append(stage_task(stage, str(ws), stage_env, timeout_s))
    save_experiment(str(ws), checkout, experiment)

    markdown = eval_markdown(experiment, prep["baseline"], overrides, ws, done)
    create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY, description=f"train-nir {experiment}")
    metrics_path = ws / "metrics" / "eval.json"
    run_path = ws / "models" / "mlflow_run.json"
    result = {
        "experiment": experiment,
        "baseline": prep["baseline"],
        "metrics": json.loads(metrics_path.read_text()) if metrics_path.exists() else {},
        "mlflow": json.loads(run_path.read_text()) if run_path.exists() else {},
        "stages": done,
    }
    if os.environ.get("NIRGAN_KEEP_WORKSPACE") != "1":
        shutil.rmtree(ws, ignore_errors=True)
    logger.info("experiment %s saved; `dvc exp show` in %s lists it", experiment, checkout)
    return result


if __name__ == "__main__":
    # Local run without a server or worker: python flows/train_nir.py -S train.max_steps=4 -n my-exp
    import argparse

    parser = argparse.ArgumentParser(description="run train-nir in this process (ephemeral Prefect)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="YAML-typed")
    parser.add_argument("-n", "--name", dest="experiment")
    parser.add_argument("--rev", dest="revision")
    args = parser.parse_args()
    sets = dict(item.split("=", 1) for item in args.set)
    train_nir(overrides={k: yaml.safe_load(v) for k, v in sets.items()}, experiment=args.experiment, revision=args.revision)
