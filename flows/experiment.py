"""One DVC pipeline as one DVC experiment, one Prefect task run per stage: the body of the
``train-nir`` and ``train-expression`` flows (flows/train_nir.py, flows/train_expression.py).

How a run maps onto DVC (and why not ``dvc exp run``): ``dvc exp run`` reproduces the whole
pipeline inside one process, so Prefect could only see one opaque step. Instead each run gets
its own working copy and drives DVC stage by stage:

1. ``prepare-workspace``: ``git clone --shared`` of the worker's checkout into
   ``<checkout>/.dvc/tmp/nirgan-runs/<flow-run-id>`` (``NIRGAN_RUNS_DIR`` moves it), detached at
   the requested revision (default: the checkout's HEAD), with the checkout's DVC cache as its
   cache, so earlier runs' outputs and run-cache are reused and several runs never share a
   workspace. The overrides are written into the pipeline's ``params.yaml`` in that copy (what
   ``dvc exp run -S`` does) and validated with ``nirgan check-params`` before any stage runs. A
   kept (failed) workspace of the same run (revision, pipeline, overrides: a Prefect retry of
   this flow run, or a resubmission) lends it its newest training checkpoints, so train resumes
   (``workspace.adopt_checkpoints``; the trainer's fingerprint decides whether they apply).
2. one task run per stage in the pipeline's dvc.yaml order: ``dvc repro --single-item <stage>``
   in the pipeline's folder. A stage whose inputs did not change is restored from the run-cache
   instead of recomputed. A failed stage is retried ``orchestrate.retries`` times (params.yaml);
   ``orchestrate.stage_timeout_minutes`` kills a stage that hangs.
3. ``save-experiment``: ``dvc exp save --name <experiment> <pipeline>/dvc.yaml`` (the baseline is
   the revision); its ref is pushed into the worker's checkout, so ``dvc exp show`` there lists
   it. The workspace is deleted on success (its outputs are in the shared cache) and kept on
   failure. With ``NIRGAN_EXP_GIT_REMOTE`` set, the checkout also pushes it to that git remote;
   with a DVC remote configured, the workspace pulls before and pushes after (data, run-cache).
4. a markdown artifact with the pipeline's metrics file and the MLflow run's link.

The flow run itself outlives its worker: its output goes to a log file, not the worker's pipe
(``processes.detach_flow_run``). At its start it ends the MLflow runs that flow runs now over left
RUNNING (a killed worker's, or one that failed while MLflow was down), and at its end its own.

The stage subprocesses run the workspace's own code (``PYTHONPATH=<workspace>/src``) with the
worker's virtual environment, and get the MLflow tags' inputs as environment variables
(``DVC_EXP_NAME``, ``DVC_EXP_BASELINE_REV``, ``PREFECT__FLOW_RUN_ID``, ``NIRGAN_FLOW_RUN_NAME``,
``NIRGAN_WORK_POOL``); see ``nirgan.tracking``.

The modules: ``workspace`` (git and DVC), ``processes`` (streamed subprocesses, process-group
stops, shared with ``stack``), ``report`` (the markdown artifact). Fault drills (a stage killed
mid-run, as the orchestration test does) come from outside: ``python -m flows.drill``; nothing
in the flow's own path injects failures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as runtime_flow_run

from flows import workspace
from flows.names import default_experiment, flow_run_link
from flows.processes import detach_flow_run, in_process_prefect, stream
from flows.report import eval_markdown
from flows.stack_prefect import flow_run_states
from nirgan import tracking
from nirgan.config import OrchestrateConfig


@dataclass(frozen=True)
class Pipeline:
    """A dvc.yaml of this repo as a flow runs it: its folder, the metrics file its artifact shows
    and the artifact's key (Prefect keys are lowercase letters, digits and dashes)."""

    flow: str          # the flow's name: train-nir, train-expression
    folder: str        # relative to the repo root: "." or "pipelines/expression"
    metrics: str       # relative to the folder
    artifact_key: str


RETRY_BACKOFF = 3.0


def retry_delays(orchestrate: OrchestrateConfig) -> list[float]:
    """Seconds before each retry: ``retry_delay_seconds``, then 3x longer each time (10, 30 by
    default). Equal short delays spent every retry inside one server restart: with the MLflow
    server killed mid-train and restarted at once, train's three attempts (1 s apart) all failed
    within 25 s while the new server was still starting, and the run ended FAILED."""
    return [orchestrate.retry_delay_seconds * RETRY_BACKOFF**i for i in range(orchestrate.retries)]


class RunFailed(RuntimeError):
    """The flow's failure in one line: the step and its cause. Prefect puts it into the final
    state's message, which ``prefect deployment run --watch`` and the UI show."""


def _fail(step: str, exc: BaseException, run_info: Path | None, flow_run_id: str, uri: str) -> RunFailed:
    """One line for the final state; the pipeline's MLflow run, if left RUNNING by the failed
    stage (killed, or the server was down when it failed), is ended as FAILED, and so is any
    other run of this flow run (a retried stage's first attempt)."""
    cause = getattr(exc, "cause", None) or " ".join(str(exc).split()) or type(exc).__name__
    info = tracking.read_run_info(run_info) if run_info is not None else None
    if info:
        tracking.end_stale_run(info.get("run_id"), "FAILED", info.get("tracking_uri"), reason=f"{step}: {cause}")
    _end_own_runs(flow_run_id, "FAILED", uri)
    return RunFailed(f"{step} failed: {cause}"[:1000])


def _end_own_runs(flow_run_id: str, state: str, uri: str) -> None:
    """End what this flow run leaves RUNNING in MLflow as it ends in ``state``. If the server is
    down now, the next flow run or ``make stack`` does it (:func:`_end_stale_runs`)."""
    tracking.reconcile_runs(lambda ids: {flow_run_id: state}, uri)


def _end_stale_runs(uri: str) -> None:
    """The next start after a fault: end the MLflow runs of flow runs that are over (a killed
    worker's, or one that failed while the tracking server was down)."""
    api = os.environ.get("PREFECT_API_URL")
    if api:  # not in an ephemeral (serverless) run: its flow runs are not on any server
        auth = os.environ.get("PREFECT_API_AUTH_STRING")
        tracking.reconcile_runs(lambda ids: flow_run_states(api, auth, ids), uri)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float | None = None) -> str:
    """A command with each output line copied to the task's log."""
    return stream(cmd, cwd, env, get_run_logger().info, timeout_s)


@task(name="prepare-workspace", cache_policy=NO_CACHE)
def prepare_workspace(checkout: Path, run_id: str, revision: str | None, overrides: dict[str, Any],
                      experiment: str, folder: str) -> dict[str, Any]:
    logger = get_run_logger()
    sha = workspace.resolve_revision(checkout, revision, logger.info)
    workspace.check_experiment_name(checkout, experiment)
    prep = workspace.create(checkout, run_id, sha, overrides, _run, logger.info, folder)
    logger.info("workspace %s at %s (%s), pipeline %s, stages: %s", prep["workspace"], revision or "HEAD",
                sha[:10], folder, ", ".join(prep["stages"]))
    return {**prep, "baseline": sha}


@task(cache_policy=NO_CACHE)
def run_stage(stage: str, pipeline_dir: str, stage_env: dict[str, str], timeout_s: float | None) -> dict[str, Any]:
    """``dvc repro --single-item <stage>`` in the run's copy of the pipeline's folder."""
    start = time.monotonic()
    output = _run(["dvc", "repro", "--single-item", stage], Path(pipeline_dir), workspace.tool_env(stage_env),
                  timeout_s)
    if f"Running stage '{stage}'" in output:
        how = "ran"
    elif "is cached" in output:
        how = "restored from run-cache"
    else:
        how = "unchanged"
    return {"stage": stage, "how": how, "seconds": round(time.monotonic() - start, 2)}


@task(name="save-experiment", cache_policy=NO_CACHE)
def save_experiment(workspace_dir: str, checkout: Path, experiment: str, folder: str) -> None:
    workspace.save_experiment(Path(workspace_dir), checkout, experiment, _run, folder)


def _work_pool_name(flow_run_id: str | None) -> str:
    if not flow_run_id:
        return ""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id).work_pool_name or ""
    except Exception:  # noqa: BLE001 -- a tag is not worth failing the run for
        return ""


def run_pipeline(pipeline: Pipeline, overrides: dict[str, Any] | None, experiment: str | None,
                 revision: str | None) -> dict[str, Any]:
    """Reproduce ``pipeline`` with ``overrides`` (dotted params keys, as ``dvc exp run -S``) as the
    DVC experiment ``experiment`` (default: the overrides and the flow run's id) on git ``revision``
    (default: the worker checkout's HEAD). Called inside a flow."""
    run_id = str(runtime_flow_run.id or f"local-{os.getpid()}")
    checkout = Path(workspace.git(["rev-parse", "--show-toplevel"], Path.cwd()))
    detach_flow_run(checkout, run_id)  # first: a dead worker's pipes must not kill this flow run
    logger = get_run_logger()
    if link := flow_run_link(str(runtime_flow_run.id or "")):
        logger.info("this flow run in the Prefect UI (a fresh browser logs in first): %s", link)
    overrides = dict(overrides or {})
    run_name = runtime_flow_run.name or run_id
    experiment = experiment or default_experiment(overrides, run_id)
    # Without a server every run of this checkout shares its SQLite store, not the workspace's.
    mlflow_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{checkout / 'mlflow.db'}"
    _end_stale_runs(mlflow_uri)

    try:
        prep = prepare_workspace(checkout, run_id, revision, overrides, experiment, pipeline.folder)
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line
        raise _fail("prepare-workspace", exc, None, run_id, mlflow_uri) from exc
    ws = Path(prep["workspace"])
    here = ws / pipeline.folder
    run_info = here / "models" / "mlflow_run.json"
    orchestrate = OrchestrateConfig.model_validate(prep["orchestrate"])
    stage_env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ws / "src"), os.environ.get("PYTHONPATH")])),
        "DVC_EXP_NAME": experiment,
        "DVC_EXP_BASELINE_REV": prep["baseline"],
        "PREFECT__FLOW_RUN_ID": run_id,
        "NIRGAN_FLOW_RUN_NAME": run_name,
        "NIRGAN_WORK_POOL": _work_pool_name(runtime_flow_run.id),
        "MLFLOW_TRACKING_URI": mlflow_uri,
    }
    timeout_s = orchestrate.stage_timeout_minutes * 60 if orchestrate.stage_timeout_minutes else None
    done: list[dict[str, Any]] = []
    step = "save-experiment"
    try:
        for stage in prep["stages"]:
            step = f"stage {stage}"
            stage_task = run_stage.with_options(
                name=stage,
                task_run_name=stage,
                retries=orchestrate.retries,
                retry_delay_seconds=retry_delays(orchestrate),
            )
            done.append(stage_task(stage, str(here), stage_env, timeout_s))
        step = "save-experiment"
        save_experiment(str(ws), checkout, experiment, pipeline.folder)
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line
        raise _fail(step, exc, run_info, run_id, mlflow_uri) from exc
    _end_own_runs(run_id, "COMPLETED", mlflow_uri)  # a retried stage's first attempt, if left RUNNING

    metrics_path = here / pipeline.metrics
    markdown = eval_markdown(pipeline.flow, experiment, prep["baseline"], overrides, metrics_path, run_info, done)
    create_markdown_artifact(markdown=markdown, key=pipeline.artifact_key, description=f"{pipeline.flow} {experiment}")
    result = {
        "experiment": experiment,
        "baseline": prep["baseline"],
        "pipeline": pipeline.folder,
        "metrics": json.loads(metrics_path.read_text()) if metrics_path.exists() else {},
        "mlflow": json.loads(run_info.read_text()) if run_info.exists() else {},
        "stages": done,
    }
    if os.environ.get("NIRGAN_KEEP_WORKSPACE") != "1":
        shutil.rmtree(ws, ignore_errors=True)
    logger.info("experiment %s saved; `dvc exp show` in %s lists it", experiment, checkout / pipeline.folder)
    return result


def main(flow_fn: Callable[..., dict[str, Any]], flow_name: str) -> None:
    """``python flows/<flow>.py -S key=value -n name``: the flow in this process, without a
    server or worker (ephemeral Prefect)."""
    parser = argparse.ArgumentParser(description=f"run {flow_name} in this process (ephemeral Prefect)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="YAML-typed")
    parser.add_argument("-n", "--name", dest="experiment")
    parser.add_argument("--rev", dest="revision")
    args = parser.parse_args()
    sets = dict(item.split("=", 1) for item in args.set)
    with in_process_prefect():
        flow_fn(overrides={k: yaml.safe_load(v) for k, v in sets.items()}, experiment=args.experiment,
                revision=args.revision)
