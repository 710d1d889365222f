"""The stack's processes on 127.0.0.1 (Prefect server, MLflow server, one worker per GPU): the
command each one runs, its log and PID file under the state folder, whether a PID file still
names a live process of its kind, and the waits until a server answers its health check and
the workers are online; plus the port and process-tree helpers that ``up`` and ``down`` use.

Kept apart from flows/stack.py, which decides what to start and stop (``up``/``down``) and is
the CLI, so that file reads top-down as those steps; the settings are flows/stack_settings.py. The child-process
helpers shared with the flows (streaming a command, stopping process groups) are in
flows/processes.py; the Prefect API calls are in flows/stack_prefect.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flows import stack_record
from flows.processes import alive as _alive
from flows.stack_prefect import POOL, api_post
from flows.stack_settings import BIN, MLFLOW_TOKEN_FILE, Stack, origins
from nirgan.cores import ENV as CPUS_ENV
from nirgan.tracking.store import ensure_store


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pid_path(stack: Stack, name: str) -> Path:
    return stack_record.pid_path(stack.state, name)


def _spawn(stack: Stack, name: str, cmd: list[str], env: dict[str, str], port: int | None = None,
           health: tuple[str, str] | None = None, cpus: int | None = None) -> int:
    """Start ``cmd`` in a session of its own, its output in ``logs/<name>.log``, and record it
    (PID, process group, port, health check, a worker's cores: flows/stack_record.py)."""
    (stack.state / "logs").mkdir(parents=True, exist_ok=True)
    log = open(stack.state / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen(
        cmd, cwd=stack.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    url, expect = health or (None, None)
    stack_record.write(stack.state, name, proc.pid, port, url, expect, cpus)
    return proc.pid


def wait_healthy(stack: Stack, name: str, url: str, expect: str, timeout: float = 120.0) -> float:
    pid = stack_record.pid(stack.state, name)
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not _alive(pid):
            log = (stack.state / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited during start-up; end of its log:\n{log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if expect in resp.read().decode(errors="replace"):
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{name} not healthy at {url} after {timeout:.0f} s (log: {stack.state / 'logs'})")


def run_command(cmd: list[str], env: dict[str, str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def check_free(port: int, what: str) -> None:
    if stack_record.port_taken(port):
        raise RuntimeError(f"port {port} for {what} is taken; is a stack already up? (set the port env var)")


def start_prefect(stack: Stack) -> int:
    return _spawn(
        stack,
        "prefect-server",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(stack.prefect_port)],
        stack.env(),
        stack.prefect_port,
        server_urls(stack)["prefect-server"],
    )


def start_mlflow(stack: Stack) -> int:
    """MLflow server on a SQLite store with proxied artifacts (clients upload through it, so
    workers on other machines need no shared disk), on a Unix socket behind its gate
    (flows/mlflow_gate.py: the stack's token, no other web page), which serves the port."""
    # Without MLflow 3's job runner (GenAI scorers and prompt jobs, which nirgan never submits):
    # its seven huey processes cost 23 CPU seconds at every start (29 against 6 for the server
    # alone, measured) and made a stop take 5.6 s instead of 1.4.
    env = {**stack.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow_dir = stack.state / "mlflow"
    (mlflow_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{mlflow_dir / 'mlflow.db'}"
    # Several processes opening a new SQLite store race in its migration: create it once, here, in
    # this process (a store already at MLflow's schema costs no `mlflow db upgrade` start, 3-4 s).
    ensure_store(store)
    sock = mlflow_dir / "mlflow.sock"
    stack.mlflow_token()
    gate = [sys.executable, str(Path(__file__).with_name("mlflow_gate.py")), "--port", str(stack.mlflow_port),
            "--socket", str(sock), "--token-file", str(stack.state / MLFLOW_TOKEN_FILE), "--"]
    return _spawn(
        stack,
        "mlflow-server",
        [
            *gate,
            str(BIN / "mlflow"), "server",
            "--backend-store-uri", store,
            "--artifacts-destination", str(mlflow_dir / "artifacts"),
            "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(stack.mlflow_port),
            "--workers", "1",
            # its own Host and origin only (MLflow's default also allows other local ports)
            "--allowed-hosts", f"127.0.0.1:{stack.mlflow_port},localhost:{stack.mlflow_port}",
            "--cors-allowed-origins", origins(stack.mlflow_port),
            "--uvicorn-opts", f"--uds {sock}",  # no port: only the gate reaches it
        ],
        env,
        stack.mlflow_port,
        server_urls(stack)["mlflow-server"],
    )


def wait_mlflow(stack: Stack) -> float:
    return wait_healthy(stack, "mlflow-server", f"{stack.mlflow_uri}/health", "OK")


def capture(fn, stack: Stack, out: list) -> None:
    try:
        out.append(fn(stack))
    except BaseException as exc:  # noqa: BLE001 -- re-raised by the caller
        out.append(exc)


def worker_env(stack: Stack, gpu: str | None) -> dict[str, str]:
    """A worker's environment, which its flow runs and their stages inherit: pinned to ``gpu`` when
    given, and given its share of the cores (``Stack.cores_per_run``) as ``NIRGAN_CPUS``."""
    env = stack.env(
        NIRGAN_CHECKOUT=str(stack.root),
        NIRGAN_FLOW_LOG_DIR=str(stack.state / "logs" / "flow-runs"),  # flows/processes.py: detach_flow_run
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(stack.heartbeat_seconds),
        PREFECT_WORKER_QUERY_SECONDS=str(stack.worker_poll_seconds),
    )
    env[CPUS_ENV] = str(stack.cores_per_run())
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def start_worker(stack: Stack, index: int, gpu: str | None) -> int:
    """A process worker taking one flow run at a time, pinned to ``gpu`` when given."""
    name = f"{socket.gethostname()}-{'gpu' + gpu if gpu is not None else f'cpu{index}'}"
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--limit", "1",
           "--name", name]
    env = worker_env(stack, gpu)
    return _spawn(stack, f"worker-{index}", cmd, env, cpus=int(env[CPUS_ENV]))


# What a live process of each kind runs (guards against a PID file naming a reused PID).
_KINDS = {"prefect-server": (b"prefect", b"server"), "mlflow-server": (b"mlflow", b"server"), "worker": (b"worker",)}


def is_running(stack: Stack, name: str) -> bool:
    """Whether the PID file of ``name`` names a live process of its kind (not whether it is healthy)."""
    pid_file = pid_path(stack, name)
    if not pid_file.exists():
        return False
    pid = stack_record.read(pid_file)["pid"]
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return all(marker in cmdline for marker in _KINDS[name.split("-")[0] if name.startswith("worker") else name])


def server_urls(stack: Stack) -> dict[str, tuple[str, str]]:
    return {
        "prefect-server": (f"{stack.prefect_api}/health", "true"),
        "mlflow-server": (f"{stack.mlflow_uri}/health", "OK"),
    }


def wait_workers(stack: Stack, env: dict[str, str], count: int, timeout: float = 90.0) -> None:
    """Until ``count`` workers of the pool report ONLINE (their first heartbeat)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        for i in range(count):
            pid = stack_record.pid(stack.state, f"worker-{i}")
            if not _alive(pid):
                log = (stack.state / "logs" / f"worker-{i}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"worker-{i} exited during start-up:\n{log}")
        try:
            workers = json.loads(api_post(stack.prefect_api, f"/work_pools/{POOL}/workers/filter", {},
                                           stack.auth_string(), 5))
            if sum(w.get("status") == "ONLINE" for w in workers) >= count:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{count} worker(s) not online after {timeout:.0f} s (logs in {stack.state / 'logs'})")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            out.append(child)
            pending.append(child)
    return out
