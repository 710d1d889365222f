"""The local stack for one machine: Prefect server, MLflow server and GPU workers on 127.0.0.1.

    python flows/stack.py up      # what `make stack` runs
    python flows/stack.py down    # what `make stack-down` runs: workers first, then servers
    python flows/stack.py status

Everything lives under a git-ignored state folder (``.stack/`` by default): PREFECT_HOME with
the Prefect server's SQLite database, the MLflow SQLite store and artifact directory, one log
and one PID file per process, and ``prefect-auth`` (mode 0600), the stack's API auth string.

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
The MLflow server allows only its own Host (``--allowed-hosts``) and refuses state-changing
requests from other origins (``--cors-allowed-origins``), except that MLflow 3.17 always admits
``localhost``/``127.0.0.1`` origins on any port (other local web apps); it runs no commands.
Every process gets its own session, so ``down`` stops each one with its children (uvicorn
workers) by PID; for a worker it also stops the flow runs it started (they run in sessions of
their own) and marks them Crashed. ``up`` stops what is left of a dead one's session before it
restarts it.

Settings (environment, with defaults): NIRGAN_STACK_DIR=.stack, NIRGAN_STACK_ROOT (the project
checkout the workers run; default: this repository), NIRGAN_PREFECT_PORT=4200,
NIRGAN_MLFLOW_PORT=5000, NIRGAN_GPUS (comma-separated GPU ids, one worker pinned to each with
CUDA_VISIBLE_DEVICES; default: every GPU nvidia-smi lists, or one unpinned worker without GPUs),
NIRGAN_POOL_LIMIT (the work pool's concurrency limit; default: the number of workers),
NIRGAN_HEARTBEAT_SECONDS=30 (flow run heartbeats; a run silent for 3 beats is marked Crashed).

The tests (tests/test_orchestration.py) start the same stack through :func:`up` on free ports.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script (python flows/stack.py): make `flows` importable
    sys.path.insert(0, str(REPO))
from flows.processes import alive as _alive  # noqa: E402
from flows.processes import stop_groups as _stop_groups  # noqa: E402
from flows.stack_prefect import AUTH_FILE, POOL, _flow_run_ids, _mark_crashed, setup_pool  # noqa: E402
from flows.stack_services import (  # noqa: E402
    BIN,
    _capture,
    _check_free,
    _descendants,
    _origins,
    _pid_file,
    _run,
    _running,
    _server_urls,
    _wait_healthy,
    _wait_workers,
    start_mlflow,
    start_prefect,
    start_worker,
    wait_mlflow,
)

DEPLOYMENT = "train-nir/gpu"


@dataclass
class Stack:
    root: Path = REPO
    state: Path = REPO / ".stack"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    gpus: list[str | None] = field(default_factory=lambda: [None])
    pool_limit: int | None = None
    heartbeat_seconds: int = 30
    worker_poll_seconds: float = 5.0
    ui: bool = True

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def auth_string(self) -> str:
        """The Prefect API's ``user:password``, made once per stack state folder (mode 0600)."""
        path = self.state / AUTH_FILE
        if not path.exists():
            self.state.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(f"nirgan:{secrets.token_urlsafe(24)}\n")
        return path.read_text().strip()

    @property
    def api_auth(self) -> tuple[str, str]:
        user, _, password = self.auth_string().partition(":")
        return user, password

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of every stack process and of the prefect/mlflow CLI calls."""
        env = dict(os.environ)
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            PREFECT_HOME=str(self.state / "prefect"),
            PREFECT_API_URL=self.prefect_api,
            PREFECT_SERVER_API_HOST="127.0.0.1",
            PREFECT_SERVER_API_PORT=str(self.prefect_port),
            # the UI is served from the API's own origin: no other page may call it cross-origin
            PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS=_origins(self.prefect_port),
            PREFECT_SERVER_API_AUTH_STRING=self.auth_string(),
            PREFECT_API_AUTH_STRING=self.auth_string(),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="true" if self.ui else "false",
            PREFECT_CLI_PROMPT="false",
            MLFLOW_TRACKING_URI=self.mlflow_uri,
            DVC_NO_ANALYTICS="1",
        )
        env.update(extra)
        return env


def detect_gpus() -> list[str | None]:
    listed = os.environ.get("NIRGAN_GPUS")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()] or [None]
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True
        )
        ids = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode == 0 and ids:
            return ids
    return [None]


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
    missing = [n for n in ("prefect-server", "mlflow-server", *workers) if not _running(stack, n)]
    for name in missing:
        _stop_survivors(stack, name)
    for name, (url, expect) in _server_urls(stack).items():
        if name not in missing:  # ours and alive: it must answer (it may still be starting)
            _wait_healthy(stack, name, url, expect, timeout=60.0)
    if "prefect-server" in missing:
        _check_free(stack.prefect_port, "Prefect")
    if "mlflow-server" in missing:
        _check_free(stack.mlflow_port, "MLflow")
    limit = stack.pool_limit or len(stack.gpus)
    started: list[str] = []
    try:
        if missing:
            _start_missing(stack, env, missing, started, limit, timings)
    except BaseException:
        _stop_started(stack, started)
        raise
    timings["total_s"] = time.monotonic() - t0
    (stack.state / "stack.json").write_text(
        json.dumps(
            {"prefect_api": stack.prefect_api, "mlflow": stack.mlflow_uri, "root": str(stack.root),
             "workers": len(stack.gpus), "pool_limit": limit, "started": started, "timings": timings},
            indent=2,
        )
    )
    return timings


def _stop_survivors(stack: Stack, name: str) -> None:
    """Stop what is left of a dead server's or worker's process group.

    A server killed by its leader alone can leave a worker process holding its port for a while
    (uvicorn workers under MLflow), and the restart would then find the port taken. The leader's
    PID being free, no other process can lead a group with that id: the group holds only those
    survivors. A live PID (reused by an unrelated program) is left alone.
    """
    pid_file = _pid_file(stack, name)
    if pid_file.exists() and not _alive(pid := int(pid_file.read_text())):
        _stop_groups([pid], 5.0)


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
        mlflow_thread = threading.Thread(target=_capture, args=(start_mlflow, stack, mlflow_started))
        mlflow_thread.start()
    timings["prefect_healthy_s"] = _wait_healthy(stack, "prefect-server", f"{stack.prefect_api}/health", "true")

    t = time.monotonic()
    deploy = None
    if "prefect-server" in missing:  # a new (or restarted) server: pool, automation, deployment
        # One interpreter for pool, limit and automation: each prefect CLI call costs seconds.
        _run([sys.executable, __file__, "setup-pool", "--limit", str(limit),
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
    _wait_workers(stack, env, len(stack.gpus))


def _stop_started(stack: Stack, started: list[str]) -> None:
    """Stop what one ``up`` call started (workers first), nothing else."""
    for name in sorted(started, key=lambda n: not n.startswith("worker")):
        pid_file = _pid_file(stack, name)
        if pid_file.exists():
            _stop_groups([int(pid_file.read_text())], 20.0)
            pid_file.unlink()


def down(state: Path, grace: float = 20.0) -> list[str]:
    """Stop workers first (so no new run starts), then the servers; by PID and process group.

    A process worker starts each flow run in a session of its own, and the flow starts each
    stage in another, so a worker's whole process tree is collected before it is stopped, and
    flow runs interrupted this way are marked Crashed while the server is still up.
    """
    pids = state / "pids"
    if not pids.is_dir():
        return []
    stopped = []
    for pid_file in sorted(pids.glob("worker-*.pid")):
        pid = int(pid_file.read_text())
        tree = [pid, *_descendants(pid)]
        interrupted = _flow_run_ids(tree)
        groups = []
        for member in tree:
            try:
                groups.append(os.getpgid(member))
            except ProcessLookupError:
                pass
        _stop_groups([g for g in dict.fromkeys(groups) if g != os.getpgrp()], grace)
        _mark_crashed(state, interrupted)
        pid_file.unlink()
        stopped.append(pid_file.stem)
    for name in ("prefect-server", "mlflow-server"):
        pid_file = pids / f"{name}.pid"
        if pid_file.exists():
            _stop_groups([int(pid_file.read_text())], grace)
            pid_file.unlink()
            stopped.append(name)
    return stopped


def _from_env() -> Stack:
    root = Path(os.environ.get("NIRGAN_STACK_ROOT") or REPO).resolve()
    return Stack(
        root=root,
        state=Path(os.environ.get("NIRGAN_STACK_DIR", root / ".stack")).resolve(),
        prefect_port=int(os.environ.get("NIRGAN_PREFECT_PORT", 4200)),
        mlflow_port=int(os.environ.get("NIRGAN_MLFLOW_PORT", 5000)),
        gpus=detect_gpus(),
        pool_limit=int(os.environ["NIRGAN_POOL_LIMIT"]) if os.environ.get("NIRGAN_POOL_LIMIT") else None,
        heartbeat_seconds=int(os.environ.get("NIRGAN_HEARTBEAT_SECONDS", 30)),
    )


NEXT_STEPS = """\
nirgan stack is up (state, logs and PIDs in {state}):
  Prefect UI  {prefect_ui}
  MLflow UI   {mlflow}
  workers     {workers} on pool '{pool}' (limit {limit})

1. environment for your shell (the Prefect API wants the stack's auth string; the UI asks for it):
     source .venv/bin/activate; export PREFECT_API_URL={api} MLFLOW_TRACKING_URI={mlflow}
     export PREFECT_API_AUTH_STRING="$(cat {state}/prefect-auth)"
2. run train-nir with an override (twice, to have two runs to compare):
     prefect deployment run {deployment} --param overrides='{{"train.max_steps": 20}}' --watch
     prefect deployment run {deployment} --param overrides='{{"train.max_steps": 40}}' \\
         --param experiment=steps-40 --watch
   then `dvc exp show` lists both experiments.
3. open {mlflow}, experiment 'nirgan': tick both runs, Compare.
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
    stack = _from_env()
    if args.command == "up":
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
                deployment=DEPLOYMENT,
            )
        )
        print("start-up seconds:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    elif args.command == "down":
        print("stopped:", ", ".join(down(stack.state)) or "nothing")
    else:
        for pid_file in sorted((stack.state / "pids").glob("*.pid")):
            pid = int(pid_file.read_text())
            print(f"{pid_file.stem:16s} pid {pid:7d} {'running' if _alive(pid) else 'dead'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
