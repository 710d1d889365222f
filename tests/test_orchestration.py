"""`prefect deployment run train-nir/gpu` (and `train-expression/gpu`) against real servers, end to end.

One stack for the module (flows/stack.py, as `make stack` starts it): a Prefect server, an
MLflow server and two process workers on a work pool limited to ONE slot, all on free loopback
ports with their state in a temp dir, over a throwaway git copy of this project with micro
params. Everything is stopped by PID in the fixture's teardown. (The browser check of the
MLflow UI is tests/test_mlflow_ui.py.)

Every train-nir run trains and evaluates for real (about a minute each on 2 cores), so the
three tests share one batch of two runs submitted at once: the first is checked end to end,
both for taking the single slot in turn, the second (whose train stage is killed once, from
outside, by flows/drill.py) for the retry. While the first one trains, every worker, the MLflow
server and the Prefect server are killed with SIGKILL and `make stack`'s restart brings up new
ones (issue 24: a worker kill used to lose a finished training; an MLflow outage left runs
RUNNING; a Prefect restart crashed live runs): the first run must still complete every stage,
with one MLflow training run, FINISHED, evaluated and registered, and the second must be picked
up by a new worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import traceback
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from prefect_api import prefect_client
from prefect_db import seed_prefect_home

from pipeline_project import make_project, project_env, run

from flows import drill, stack_record, stack_services
from flows import stack as stack_mod
from flows.stack_services import free_port

STAGES = ["collect", "detect", "clean", "augment", "split", "baselines", "train", "evaluate", "generate"]
DEPLOYMENT = "train-nir/gpu"
FLOW_TIMEOUT_S = 420

pytestmark = pytest.mark.e2e


class Orchestra:
    """The running stack plus helpers to submit and inspect flow runs."""

    def __init__(self, root: Path, stack: stack_mod.Stack):
        self.root, self.stack = root, stack
        self.env = stack.env()
        self.api = prefect_client(stack)

    def submit(self, overrides: dict, experiment: str, env: dict | None = None,
               deployment: str = DEPLOYMENT) -> subprocess.Popen:
        cmd = [
            str(stack_mod.BIN / "prefect"), "deployment", "run", deployment,
            "--param", f"overrides={json.dumps(overrides)}",
            "--param", f"experiment={json.dumps(experiment)}",
        ]
        if env:
            cmd += ["--job-variable", f"env={json.dumps(env)}"]
        return subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    @staticmethod
    def flow_run_id(proc: subprocess.Popen) -> str:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        match = re.search(r"flow-run/([0-9a-f-]{36})", out)
        assert match, out
        return match.group(1)

    def flow_run(self, run_id: str) -> dict:
        resp = self.api.get(f"/flow_runs/{run_id}")
        resp.raise_for_status()
        return resp.json()

    def wait(self, run_ids: list[str], timeout: float = FLOW_TIMEOUT_S) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                runs = {rid: self.flow_run(rid) for rid in run_ids}
            except httpx.TransportError:  # the Prefect server is down (the batch restarts it)
                runs = {}
            if not runs:
                if time.monotonic() > deadline:
                    pytest.fail(f"the Prefect server did not answer for {timeout:.0f} s")
                time.sleep(1.0)
                continue
            if all(r["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} for r in runs.values()):
                return runs
            if time.monotonic() > deadline:
                states = {rid: r["state"]["name"] for rid, r in runs.items()}
                pytest.fail(f"flow runs not finished after {timeout:.0f} s: {states}\n{self.worker_logs()}")
            time.sleep(1.0)

    def task_runs(self, run_id: str) -> list[dict]:
        resp = self.api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}})
        resp.raise_for_status()
        return resp.json()

    def worker_logs(self) -> str:
        logs = sorted((self.stack.state / "logs").glob("worker-*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in logs)

    def dvc(self, *args: str) -> str:
        return run(["dvc", *args], cwd=self.root, env=project_env(self.root)).stdout

    def exp_ref(self, experiment: str) -> str:
        refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=self.root).stdout.split()
        named = [r for r in refs if r.endswith(f"/{experiment}")]
        assert len(named) == 1, f"experiment {experiment} not in the checkout's refs: {refs}"
        return named[0]


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def timing(flow_run: dict) -> dict[str, float]:
    created, start, end = (_ts(flow_run[k]) for k in ("created", "start_time", "end_time"))
    return {"to_running_s": (start - created).total_seconds(), "to_completed_s": (end - created).total_seconds()}


@pytest.fixture(scope="module")
def orchestra(tmp_path_factory, prefect_db):
    base = tmp_path_factory.mktemp("orchestration")
    root = make_project(base / "project")
    stack = stack_mod.Stack(
        root=root,
        state=base / "stack",
        prefect_port=free_port(),
        mlflow_port=free_port(),
        gpus=[None, None],  # two workers competing for the pool's single slot
        pool_limit=1,
        worker_poll_seconds=1.0,
        ui=False,
    )
    # the servers' restarts are this test's subject, not a first start on a new database
    seed_prefect_home(Path(stack.env()["PREFECT_HOME"]), prefect_db)
    try:
        timings = stack_mod.up(stack)
        print(f"\nstack up: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_TOKEN", stack.mlflow_token())  # the stack's MLflow gate wants it
            yield Orchestra(root, stack)
    finally:
        stopped = stack_mod.down(stack.state)
        print(f"stopped by PID: {stopped}")


@pytest.fixture(scope="module")
def batch(orchestra, tmp_path_factory):
    """Three runs submitted at once to the one-slot pool. The third one's train stage is killed from
    outside (flows/drill.py: its whole process tree, SIGKILL) as soon as its first checkpoint
    exists: the retry must resume."""
    marker = tmp_path_factory.mktemp("fail-once") / "train-failed-once"
    names = ["e2e-micro", "retry-train"]
    procs = [
        orchestra.submit({"train.max_steps": 2, "train.checkpoint_every": 1}, names[0]),
        orchestra.submit({"train.max_steps": 3, "train.checkpoint_every": 2, "train.seed": 13,
                          "orchestrate.retry_delay_seconds": 1}, names[1]),
    ]
    ids = [orchestra.flow_run_id(p) for p in procs]
    stack_kill: dict = {}
    stack_killer = threading.Thread(target=_kill_the_stack_during_train, daemon=True, args=(
        orchestra, orchestra.root / ".dvc" / "tmp" / "nirgan-runs" / ids[0], 2 * FLOW_TIMEOUT_S, stack_kill))
    stack_killer.start()
    killer = threading.Thread(target=_kill_train_once, daemon=True, args=(
        orchestra.root / ".dvc" / "tmp" / "nirgan-runs" / ids[1], marker, 2 * FLOW_TIMEOUT_S))
    killer.start()
    runs = orchestra.wait(ids, timeout=2 * FLOW_TIMEOUT_S)
    killer.join(timeout=5)
    stack_killer.join(timeout=180)  # the restart may outlast the run it interrupted
    print(f"\nthe stack killed during train: {json.dumps(stack_kill)}")
    print("\ntwo runs, one slot (seconds from submission):",
          json.dumps({n: {k: round(v, 1) for k, v in timing(runs[i]).items()} for n, i in zip(names, ids)}))
    return {"names": names, "ids": ids, "runs": runs, "marker": marker, "stack_kill": stack_kill}


def _kill_the_stack_during_train(orchestra: Orchestra, workspace: Path, timeout_s: float, out: dict) -> None:
    """``kill -9`` every worker and both servers once the run in ``workspace`` is in its train
    stage, then restart them as ``make stack`` would; ``out`` says what happened."""
    deadline = time.monotonic() + timeout_s
    while drill.stage_process(workspace.resolve(), "train") is None:
        if time.monotonic() > deadline:
            out["error"] = f"train never ran in {workspace} within {timeout_s:.0f} s"
            return
        time.sleep(0.5)  # each look reads all of /proc; a micro train lasts seconds
    names = sorted(p.stem for p in (orchestra.stack.state / "pids").glob("*.pid"))
    out["killed"] = {n: stack_record.read(stack_services.pid_path(orchestra.stack, n))["pid"] for n in names}
    for pid in out["killed"].values():
        os.kill(pid, signal.SIGKILL)
    out["train_alive_after_kill"] = drill.stage_process(workspace.resolve(), "train") is not None
    time.sleep(3)  # an outage, not a blink
    try:
        stack_mod.up(orchestra.stack)
    except Exception as exc:  # noqa: BLE001 - the test reads it from ``out``
        out["error"] = f"make stack's restart failed: {exc!r}\n{traceback.format_exc()}"
        return
    out["restarted"] = {n: stack_record.read(stack_services.pid_path(orchestra.stack, n))["pid"] for n in names}


def _kill_train_once(workspace: Path, marker: Path, timeout_s: float) -> None:
    try:
        done = drill.kill_stage_when(workspace, "train", "models/checkpoints/latest", timeout_s)
    except TimeoutError as exc:
        done = f"not killed: {exc}"
        marker = marker.with_name(marker.name + ".missed")
    marker.write_text(done + "\n")


def _training_runs(client, experiment_id: str, flow_run_id: str) -> list:
    """The flow run's one training run (its generate stage adds a dataset run, tagged
    ``nirgan.kind = generated-dataset``, which names the training run it came from)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.prefect_flow_run_id = '{flow_run_id}'")
    training = [r for r in runs if r.data.tags.get("nirgan.kind") != "generated-dataset"]
    datasets = [r for r in runs if r.data.tags.get("nirgan.kind") == "generated-dataset"]
    assert len(training) == 1, [r.info.run_id for r in runs]
    assert [d.data.tags["generator_run_id"] for d in datasets] == [training[0].info.run_id], runs
    return training


def test_train_nir_end_to_end(orchestra, batch):
    experiment, rid = batch["names"][0], batch["ids"][0]
    fr = batch["runs"][rid]
    # every worker and both servers died by SIGKILL while this run trained, and new ones replaced them
    kill = batch["stack_kill"]
    assert "killed" in kill and kill["train_alive_after_kill"] and "error" not in kill, kill
    assert {"mlflow-server", "prefect-server", "worker-0", "worker-1"} <= set(kill["killed"]), kill
    assert set(kill["killed"].values()).isdisjoint(kill["restarted"].values()), kill
    assert fr["state"]["type"] == "COMPLETED", f"{fr['state']}\n{orchestra.worker_logs()}"
    print(f"\ntrain-nir micro run {experiment}: {json.dumps({k: round(v, 1) for k, v in timing(fr).items()})}")

    tasks = {t["name"]: t for t in orchestra.task_runs(rid)}
    assert [s for s in STAGES if s in tasks] == STAGES, sorted(tasks)
    assert all(tasks[s]["state"]["type"] == "COMPLETED" for s in STAGES)
    assert all(tasks[s]["total_run_time"] > 0 for s in STAGES)

    # The DVC experiment, in the worker's checkout, with its evaluation metrics.
    ref = orchestra.exp_ref(experiment)
    metrics = json.loads(run(["git", "show", f"{ref}:metrics/eval.json"], cwd=orchestra.root).stdout)
    assert metrics
    shown = orchestra.dvc("exp", "show", "--json")
    assert experiment in shown
    params = run(["git", "show", f"{ref}:params.yaml"], cwd=orchestra.root).stdout
    assert re.search(r"max_steps: 2\b", params)

    # The MLflow run on the server: metrics, a sample image and the provenance tags.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(orchestra.stack.mlflow_uri)
    exp = client.get_experiment_by_name("nirgan")
    found = _training_runs(client, exp.experiment_id, rid)
    mlrun = found[0]
    assert mlrun.data.metrics
    # the training that outlived its worker was evaluated, ended FINISHED and registered
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.metrics.get("eval.pose_real_head_mean") == pytest.approx(metrics["pose_real_head_mean"]), \
        "the evaluation's figures are not on the run"
    versions = client.search_model_versions(f"run_id = '{mlrun.info.run_id}'")
    assert [v.name for v in versions] == ["nirgan-generator"], versions
    left = client.search_runs([exp.experiment_id], filter_string=f"tags.prefect_flow_run_id = '{rid}'")
    assert {r.info.status for r in left} == {"FINISHED"}, [(r.info.run_id, r.info.status) for r in left]
    tags = mlrun.data.tags
    baseline = run(["git", "rev-parse", "HEAD"], cwd=orchestra.root).stdout.strip()
    assert tags["git_commit"] == baseline
    assert tags["dvc_exp_name"] == experiment
    assert tags["dvc_exp_baseline_rev"] == baseline
    assert tags["prefect_flow_run_name"] == fr["name"]
    assert tags["work_pool"] == "gpu"
    assert any(p.endswith(".png") for p in _artifact_paths(client, mlrun.info.run_id)), "no sample image"

    # The flow run's markdown artifact: the metrics table and the MLflow link.
    arts = orchestra.api.post(
        "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [rid]}, "type": {"any_": ["markdown"]}}}
    ).json()
    assert len(arts) == 1
    md = arts[0]["data"]
    assert "| metric | value |" in md and mlrun.info.run_id in md
    assert f"{orchestra.stack.mlflow_uri}/#/experiments/{exp.experiment_id}/runs/{mlrun.info.run_id}" in md


def _artifact_paths(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_two_runs_share_one_slot_in_turn(orchestra, batch):
    runs, ids = batch["runs"], batch["ids"]
    pool = orchestra.api.get("/work_pools/gpu").json()
    assert pool["concurrency_limit"] == 1 and pool["type"] == "process"
    assert [runs[i]["state"]["type"] for i in ids] == ["COMPLETED"] * 2, orchestra.worker_logs()
    spans = sorted((_ts(r["start_time"]), _ts(r["end_time"])) for r in runs.values())
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"two runs held the single slot at once: {spans}"
    for name in batch["names"]:
        orchestra.exp_ref(name)


def test_killed_train_is_retried_resumes_and_run_completes(orchestra, batch):
    rid = batch["ids"][1]
    assert batch["marker"].exists(), "the drill never killed the train stage"
    assert batch["runs"][rid]["state"]["type"] == "COMPLETED", orchestra.worker_logs()
    train = next(t for t in orchestra.task_runs(rid) if t["name"] == "train")
    assert train["run_count"] == 2 and train["state"]["type"] == "COMPLETED"
    logs = orchestra.api.post("/logs/filter", json={"logs": {"task_run_id": {"any_": [train["id"]]}},
                                                    "limit": 200}).json()
    text = "\n".join(entry["message"] for entry in logs)
    # the first attempt died of the SIGKILL (dvc's exit status -9), the retry resumed
    assert "exited with -9" in text and "resuming from" in text, text[-3000:]
    orchestra.exp_ref("retry-train")

    # The resumed training continued the same MLflow run instead of starting a second one.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(orchestra.stack.mlflow_uri)
    exp = client.get_experiment_by_name("nirgan")
    _training_runs(client, exp.experiment_id, rid)


def test_train_expression_runs_the_second_pipeline_on_the_same_pool(orchestra, batch):
    # Issue 13: `prefect deployment run train-expression/gpu`: the expression pipeline's stages as
    # task runs, its DVC experiment in the checkout, its MLflow run in nirgan-expression and the
    # generator registered after evaluation. Submitted after the batch: the pool has one slot.
    experiment = "expr-micro"
    proc = orchestra.submit({"expression_train.seed": 5}, experiment, deployment="train-expression/gpu")
    rid = orchestra.flow_run_id(proc)
    fr = orchestra.wait([rid])[rid]
    assert fr["state"]["type"] == "COMPLETED", f"{fr['state']}\n{orchestra.worker_logs()}"
    print(f"\ntrain-expression micro run: {json.dumps({k: round(v, 1) for k, v in timing(fr).items()})}")
    stages = ["collect_expression", "detect_expression", "clean_expression", "augment_expression", "split_expression",
              "train_expression", "evaluate_expression"]
    tasks = {t["name"]: t for t in orchestra.task_runs(rid)}
    assert [s for s in stages if s in tasks] == stages and "train" not in tasks, sorted(tasks)
    assert all(tasks[s]["state"]["type"] == "COMPLETED" for s in stages)

    ref = orchestra.exp_ref(experiment)
    metrics = json.loads(run(["git", "show", f"{ref}:pipelines/expression/metrics/eval_expression.json"],
                             cwd=orchestra.root).stdout)
    assert 0.0 <= metrics["expr_target_accuracy"] <= 1.0
    params = run(["git", "show", f"{ref}:pipelines/expression/params.yaml"], cwd=orchestra.root).stdout
    assert re.search(r"seed: 5\b", params)
    assert "expr-micro" in run(["dvc", "exp", "show", "--json"], cwd=orchestra.root / "pipelines" / "expression",
                               env=project_env(orchestra.root)).stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(orchestra.stack.mlflow_uri)
    exp = client.get_experiment_by_name("nirgan-expression")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.prefect_flow_run_id = '{rid}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", runs
    assert runs[0].data.tags["dvc_exp_name"] == experiment
    assert runs[0].data.metrics["eval.expr_target_accuracy"] == pytest.approx(metrics["expr_target_accuracy"])
    versions = client.search_model_versions("name='nirgan-expression-generator'")
    assert [v.run_id for v in versions] == [runs[0].info.run_id]

    arts = orchestra.api.post(
        "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [rid]}, "type": {"any_": ["markdown"]}}}
    ).json()
    assert len(arts) == 1 and arts[0]["data"].startswith(f"# train-expression: `{experiment}`")
    assert "expr_target_accuracy" in arts[0]["data"]
