"""The local stack for one machine: Prefect server, MLflow server and GPU workers on 127.0.0.1.

    python flows/stack.py up      # what `make stack` runs
    python flows/stack.py down    # what `make stack-down` runs: workers first, then servers
    python flows/stack.py status  # `make stack-status`: exit 1 unless every process is up

Everything lives under a git-ignored state folder (``.stack/`` by default): PREFECT_HOME with
the Prefect server's SQLite database, the MLflow SQLite store and artifact directory, one log
per process, one record per process (``pids/<name>.pid``: PID, process group, port, health
check; flows/stack_record.py), and ``prefect-auth`` (mode 0600), the stack's API auth string.

``up`` on a running stack is safe: a process whose PID file names a live process of the right
kind (and, for a server, a healthy one) is kept; only what is missing or dead is started, so
one dead server or worker is restarted alone. If anything fails, ``up`` stops only what it
started in that call; a port held by another program is an error that stops nothing.

Loopback is not a security boundary against the user's own browser: any web page can send
requests to 127.0.0.1. So the Prefect API (whose process work pool runs commands) requires
the per-stack auth string (``PREFECT_SERVER_API_AUTH_STRING``; workers and the CLI get it as
``PREFECT_API_AUTH_STRING`` from :meth:`Stack.env`, the UI asks for it once), and answers CORS
only for the UI's own origin. Prefect 3.8 has no Host-header allow-list, so a DNS-rebinding
page that reaches the API by a foreign Host is stopped by the auth string, not by a Host check.
MLflow 3.17 admits state-changing requests from every ``localhost`` origin, so the MLflow
server listens on a Unix socket behind a gate that serves its port (flows/mlflow_gate.py): the
stack's token (``mlflow-token``, mode 0600; ``MLFLOW_TRACKING_TOKEN`` from :meth:`Stack.env`,
the UI's login password), its own Host, and no other web page's ``Origin``.
Every process gets its own session, so ``down`` stops each one with its children (uvicorn
workers) by PID; for a worker it also stops the flow runs it started (they run in sessions of
their own) and marks them Crashed. ``up`` stops what is left of a dead one's session before it
restarts it.

Settings (flows/stack_settings.py; environment, with defaults): NIRGAN_STACK_DIR=.stack, NIRGAN_STACK_ROOT (the project
checkout the workers run; default: this repository), NIRGAN_PREFECT_PORT=4200,
NIRGAN_MLFLOW_PORT=5000 (the recorded ports win while the stack runs), NIRGAN_GPUS
(comma-separated GPU ids, one worker pinned to each with CUDA_VISIBLE_DEVICES; default: every GPU
nvidia-smi lists, or one unpinned worker without GPUs),
NIRGAN_POOL_LIMIT (the work pool's concurrency limit; default: the number of workers),
NIRGAN_CPUS (the cores the stack's runs share; default: this process's, as nirgan.cores counts
them; each worker gets an equal share for the runs it takes, as many as run at once),
NIRGAN_HEARTBEAT_SECONDS=30 (flow run heartbeats; a run silent for 3 beats is marked Crashed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from flows import stack_record
from flows.processes import alive as _alive
from flows.processes import stop_groups as _stop_groups
from flows.stack_prefect import POOL, flow_run_ids, flow_run_states, mark_crashed, renew_heartbeat_windows, setup_pool
from flows.stack_services import (
    capture,
    check_free,
    descendants,
    is_running,
    pid_path,
    run_command,
    server_urls,
    start_mlflow,
    start_prefect,
    start_worker,
    wait_healthy,
    wait_mlflow,
    wait_workers,
)
from flows.stack_settings import BIN, Stack, from_env

DEPLOYMENT = "train-nir/gpu"


def up(stack: Stack) -> dict[str, float]:
    """Start what of the stack is not running: servers, pool, automation, deployment, workers.

    Returns seconds per step; ``stack.json`` in the state folder lists what this call
    ``started`` (empty when the whole stack was already up and healthy). On failure, stops
    only what this call started.
    """
    timings: dict[str, float] = {}
    stack.state.mkdir(parents=True, exist_ok=True)
    env = stack.env()
    t0 = time.monotonic()
    workers = [f"worker-{i}" for i in range(len(stack.gpus))]
    missing = [n for n in ("prefect-server", "mlflow-server", *workers) if not is_running(stack, n)]
    for name in missing:
        _stop_survivors(stack, name)
    for name, (url, expect) in server_urls(stack).items():
        if name not in missing:  # ours and alive: it must answer (it may still be starting)
            wait_healthy(stack, name, url, expect, timeout=60.0)
    if "prefect-server" in missing:
        check_free(stack.prefect_port, "Prefect")
    if "mlflow-server" in missing:
        check_free(stack.mlflow_port, "MLflow")
    limit = stack.limit
    started: list[str] = []
    # Heartbeats sent while the Prefect server was down must not count against a live run.
    renewed = renew_heartbeat_windows(stack.state / "prefect", 3 * stack.heartbeat_seconds) \
        if "prefect-server" in missing else 0
    try:
        if missing:
            _start_missing(stack, env, missing, started, limit, timings)
    except BaseException:
        _stop_started(stack, started)
        raise
    # A restart is the next start after a fault: end the MLflow runs that the fault left RUNNING.
    ended = _reconcile(stack) if started else []
    timings["total_s"] = time.monotonic() - t0
    (stack.state / "stack.json").write_text(
        json.dumps(
            {"prefect_api": stack.prefect_api, "mlflow": stack.mlflow_uri, "root": str(stack.root),
             "workers": len(stack.gpus), "pool_limit": limit, "cpus": _worker_cpus(stack, workers),
             "started": started, "timings": timings,
             "ended_stale_mlflow_runs": ended, "heartbeat_windows_renewed": renewed},
            indent=2,
        )
    )
    return timings


def _reconcile(stack: Stack) -> list[str]:
    """End the MLflow runs still RUNNING whose flow run is over (see nirgan.tracking.reconcile_runs)."""
    from nirgan import tracking

    previous = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
    os.environ["MLFLOW_TRACKING_TOKEN"] = stack.mlflow_token()  # the MLflow client reads it from here
    try:
        return tracking.reconcile_runs(lambda ids: flow_run_states(stack.prefect_api, stack.auth_string(), ids),
                                       stack.mlflow_uri)
    finally:
        os.environ["MLFLOW_TRACKING_TOKEN"] = previous


def _stop_survivors(stack: Stack, name: str) -> None:
    """Stop what is left of a dead server's or worker's process group.

    A server killed by its leader alone can leave a worker process holding its port for a while
    (uvicorn workers under MLflow), and the restart would then find the port taken. The leader's
    PID being free, no other process can lead a group with that id: the group holds only those
    survivors. A live PID (reused by an unrelated program) is left alone.
    """
    pid_file = pid_path(stack, name)
    if pid_file.exists() and not _alive((record := stack_record.read(pid_file))["pid"]):
        _stop_groups([record["pgid"]], 5.0)


def _start_missing(
    stack: Stack, env: dict[str, str], missing: list[str], started: list[str], limit: int, timings: dict[str, float]
) -> None:
    t0 = time.monotonic()
    mlflow_thread = None
    mlflow_started: list[BaseException | int] = []
    if "prefect-server" in missing:
        start_prefect(stack)
        started.append("prefect-server")
    if "mlflow-server" in missing:
        started.append("mlflow-server")
        # The MLflow store migration takes seconds of CPU: overlap it with Prefect's start.
        mlflow_thread = threading.Thread(target=capture, args=(start_mlflow, stack, mlflow_started))
        mlflow_thread.start()
    timings["prefect_healthy_s"] = wait_healthy(stack, "prefect-server", f"{stack.prefect_api}/health", "true")

    t = time.monotonic()
    deploy = None
    if "prefect-server" in missing:  # a new (or restarted) server: pool, automation, deployment
        # One interpreter for pool, limit and automation: each prefect CLI call costs seconds.
        run_command([sys.executable, __file__, "setup-pool", "--limit", str(limit),
              "--within", str(3 * stack.heartbeat_seconds)], env, stack.root)
        deploy = subprocess.Popen([str(BIN / "prefect"), "deploy", "--all", "--no-prompt"], cwd=stack.root, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for i, gpu in enumerate(stack.gpus):
        if f"worker-{i}" in missing:
            start_worker(stack, i, gpu)
            started.append(f"worker-{i}")

    if mlflow_thread is not None:
        mlflow_thread.join()
        if mlflow_started and isinstance(mlflow_started[0], BaseException):
            raise mlflow_started[0]
    wait_mlflow(stack)
    timings["mlflow_healthy_s"] = time.monotonic() - t0
    if deploy is not None:
        deploy_out, _ = deploy.communicate(timeout=300)
        if deploy.returncode != 0:
            raise RuntimeError(f"prefect deploy --all failed:\n{deploy_out[-3000:]}")
    timings["pool_and_deploy_s"] = time.monotonic() - t
    wait_workers(stack, env, len(stack.gpus))


def _worker_cpus(stack: Stack, workers: list[str]) -> dict[str, int | None]:
    """Each running worker's NIRGAN_CPUS, as recorded when it started (a worker started before
    the stack recorded it: None)."""
    return {name: stack_record.read(pid_path(stack, name)).get("cpus") for name in workers}


def _stop_started(stack: Stack, started: list[str]) -> None:
    """Stop what one ``up`` call started (workers first), nothing else."""
    for name in sorted(started, key=lambda n: not n.startswith("worker")):
        pid_file = pid_path(stack, name)
        if pid_file.exists():
            _stop_groups([stack_record.read(pid_file)["pgid"]], 20.0)
            pid_file.unlink()


# How long a worker process itself may take to exit after SIGTERM. Its flow runs' processes get
# ``down``'s whole grace to end their stages and MLflow runs; the worker has nothing of its own to
# save (``down`` marks its runs Crashed), and in the test suite 4 of 23 stops found a worker that
# had run flows still there after 20 s (its log ended at Prefect's "Sending SIGINT to the process
# worker", never "stopped"), while an idle one exits in half a second.
WORKER_GRACE_S = 5.0


def down(state: Path, grace: float = 20.0) -> list[str]:
    """Stop workers first (so no new run starts), then the servers; by PID and process group.

    A process worker starts each flow run in a session of its own, and the flow starts each
    stage in another, so a worker's whole process tree is collected and signalled at once
    before it is stopped, and flow runs interrupted this way are marked Crashed while the server
    is still up.
    """
    pids = state / "pids"
    if not pids.is_dir():
        return []
    stopped = []
    for pid_file in sorted(pids.glob("worker-*.pid")):
        record = stack_record.read(pid_file)
        pid = record["pid"]
        # the recorded group too: a dead worker's leader has no descendants to find
        tree = [pid, *descendants(pid), *stack_record.group_members(record["pgid"])]
        interrupted = flow_run_ids(tree)
        groups = []
        for member in tree:
            try:
                groups.append(os.getpgid(member))
            except ProcessLookupError:
                pass
        _stop_groups({g: min(grace, WORKER_GRACE_S) if g == record["pgid"] else grace
                      for g in dict.fromkeys(groups) if g != os.getpgrp()})
        mark_crashed(state, interrupted)
        pid_file.unlink()
        stopped.append(pid_file.stem)
    for name in ("prefect-server", "mlflow-server"):
        pid_file = pids / f"{name}.pid"
        if pid_file.exists():
            _stop_groups([stack_record.read(pid_file)["pgid"]], grace)
            pid_file.unlink()
            stopped.append(name)
    return stopped


NEXT_STEPS = """\
nirgan stack is up (state, logs and PIDs in {state}):
  Prefect UI  {prefect_ui}/login   (password: the whole line in {state}/prefect-auth)
  MLflow UI   {mlflow}   (log in: any user name, password in {state}/mlflow-token)
  workers     {workers} on pool '{pool}' (limit {limit}), each run on {cores} CPU core(s) (NIRGAN_CPUS)

1. environment for your shell (both APIs want the stack's secrets; the UIs ask for them):
     source .venv/bin/activate; export PREFECT_API_URL={api} MLFLOW_TRACKING_URI={mlflow}
     export PREFECT_API_AUTH_STRING="$(cat {state}/prefect-auth)" MLFLOW_TRACKING_TOKEN="$(cat {state}/mlflow-token)"
2. run train-nir with an override (twice, to have two runs to compare):
     prefect deployment run {deployment} --param overrides='{{"train.max_steps": 20}}' --watch
     prefect deployment run {deployment} --param overrides='{{"train.max_steps": 40}}' \\
         --param experiment=steps-40 --watch
   then `dvc exp show` lists both experiments.
3. open {mlflow} (it opens on Model training), experiment 'nirgan': tick both runs, Compare, then
   click samples_epoch_NNN.png under Artifacts: the runs' grids side by side.
4. promote the evaluated version and generate a dataset from it:
     nirgan promote; prefect deployment run generate-nir/gpu --param count=1000 \\
         --param model=models:/nirgan-generator@champion --watch
5. the expression family (pipelines/expression) on the same pool, experiment 'nirgan-expression':
     prefect deployment run train-expression/gpu --param overrides='{{"expression_train.model": "cgan"}}' --watch
Stop everything with `make stack-down`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up")
    sub.add_parser("down")
    sub.add_parser("status")
    pool = sub.add_parser("setup-pool", help=argparse.SUPPRESS)
    pool.add_argument("--limit", type=int, required=True)
    pool.add_argument("--within", type=int, default=90)
    args = parser.parse_args(argv)

    if args.command == "setup-pool":
        setup_pool(args.limit, args.within)
        return 0
    try:
        stack = from_env()
    except RuntimeError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    if args.command == "up":
        try:
            stack.cores_per_run()  # a bad NIRGAN_CPUS is one line, before anything starts
        except ValueError as exc:
            print(f"stack: {exc}", file=sys.stderr)
            return 1
        try:
            timings = up(stack)  # on failure it has stopped what it started, and only that
        except RuntimeError as exc:
            print(f"stack: {exc}", file=sys.stderr)
            return 1
        info = json.loads((stack.state / "stack.json").read_text())
        if not info["started"]:
            print(f"nirgan stack already running and healthy (state in {stack.state}); nothing started.")
        else:
            print("started:", ", ".join(info["started"]))
        print(
            NEXT_STEPS.format(
                state=stack.state, prefect_ui=stack.prefect_api.removesuffix("/api"), api=stack.prefect_api,
                mlflow=stack.mlflow_uri, workers=info["workers"], pool=POOL, limit=info["pool_limit"],
                cores="/".join(sorted({str(c or "?") for c in info["cpus"].values()})),
                deployment=DEPLOYMENT,
            )
        )
        print("start-up seconds:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    elif args.command == "down":
        print("stopped:", ", ".join(down(stack.state)) or "nothing")
    else:
        lines, ok = stack_record.status(stack.state)
        print("\n".join(lines))
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
