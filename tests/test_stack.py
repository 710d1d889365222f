"""`make stack` against its own running stack, and the stack's loopback security (issue 12,
items 11 and 15). Real Prefect and MLflow servers and a real worker on free 127.0.0.1 ports,
over a throwaway copy of the project; everything is stopped by PID at the end.

The checks run in order on one stack (starting one costs most of a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pipeline_project import running_stack

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from flows import stack as stack_mod  # noqa: E402

pytestmark = pytest.mark.e2e
FOREIGN = "http://evil.example"


def _pids(stack: stack_mod.Stack) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in sorted((stack.state / "pids").glob("*.pid"))}


def _started(stack: stack_mod.Stack) -> list[str]:
    """What the last ``up`` call started, from its stack.json."""
    return json.loads((stack.state / "stack.json").read_text())["started"]


def _all_alive(pids: dict[str, int]) -> bool:
    return all(stack_mod._alive(pid) for pid in pids.values())


def _kill(pid: int) -> None:
    os.killpg(pid, signal.SIGKILL)  # each stack process leads its own session
    deadline = time.monotonic() + 20
    while stack_mod._alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not stack_mod._alive(pid)


def _squat(port: int, timeout: float = 30.0) -> socket.socket:
    """Listen on ``port`` as soon as the killed server's last process has let go of it.

    Its leader can be gone while a worker of its group still holds the listening socket for a
    moment (seen on a loaded 2-core CI machine: EADDRINUSE right after the leader was reaped).
    """
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("stack")) as st:
        yield st


# ----------------------------------------------------------------------- item 11: idempotent up
def test_up_on_a_running_stack_does_nothing(stack):
    before = _pids(stack)
    assert set(before) == {"prefect-server", "mlflow-server", "worker-0"} and _all_alive(before)
    stack_mod.up(stack)
    assert _pids(stack) == before and _all_alive(before)
    assert _started(stack) == []


def test_up_restarts_only_a_dead_server(stack):
    before = _pids(stack)
    _kill(before["mlflow-server"])
    stack_mod.up(stack)
    after = _pids(stack)
    assert _started(stack) == ["mlflow-server"]
    assert after["prefect-server"] == before["prefect-server"] and after["worker-0"] == before["worker-0"]
    assert after["mlflow-server"] != before["mlflow-server"] and _all_alive(after)
    assert httpx.get(f"{stack.mlflow_uri}/health", timeout=10).text.strip() == "OK"


def test_up_restarts_only_a_dead_worker(stack):
    before = _pids(stack)
    _kill(before["worker-0"])
    stack_mod.up(stack)
    after = _pids(stack)
    assert _started(stack) == ["worker-0"]
    assert {k: v for k, v in after.items() if k != "worker-0"} == {k: v for k, v in before.items() if k != "worker-0"}
    assert _all_alive(after)


def test_a_port_taken_by_another_program_fails_and_stops_nothing(stack):
    before = _pids(stack)
    _kill(before["mlflow-server"])
    try:
        squatter = _squat(stack.mlflow_port)
        try:
            with pytest.raises(RuntimeError, match=f"port {stack.mlflow_port}"):
                stack_mod.up(stack)
            assert stack_mod._alive(before["prefect-server"]) and stack_mod._alive(before["worker-0"])
        finally:
            squatter.close()
    finally:
        stack_mod.up(stack)  # the later checks need the whole stack, whatever happened above
    assert _started(stack) == ["mlflow-server"]
    assert _all_alive(_pids(stack))


def test_the_cli_on_a_running_stack_keeps_it(stack):
    """`python flows/stack.py up` (what `make stack` runs) with the stack's settings."""
    before = _pids(stack)
    env = {**os.environ, "NIRGAN_STACK_DIR": str(stack.state), "NIRGAN_STACK_ROOT": str(stack.root),
           "NIRGAN_PREFECT_PORT": str(stack.prefect_port), "NIRGAN_MLFLOW_PORT": str(stack.mlflow_port),
           "NIRGAN_GPUS": "", "NIRGAN_POOL_LIMIT": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "flows" / "stack.py"), "up"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already running" in proc.stdout
    assert _pids(stack) == before and _all_alive(before)


# ----------------------------------------------------------------------- item 15: loopback security
def test_prefect_refuses_foreign_origins_and_unauthenticated_calls(stack):
    api = stack.prefect_api
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    foreign = httpx.options(f"{api}/deployments/filter", headers={"Origin": FOREIGN, **preflight}, timeout=10)
    allowed = foreign.headers.get("access-control-allow-origin")
    assert allowed not in ("*", FOREIGN), dict(foreign.headers)
    own = f"http://127.0.0.1:{stack.prefect_port}"
    mine = httpx.options(f"{api}/deployments/filter", headers={"Origin": own, **preflight}, timeout=10)
    assert mine.headers.get("access-control-allow-origin") == own

    # The API wants the per-stack auth string; the health probe stays open.
    assert httpx.post(f"{api}/deployments/filter", json={}, timeout=10).status_code == 401
    auth = httpx.BasicAuth(*stack.api_auth)
    assert httpx.post(f"{api}/deployments/filter", json={}, auth=auth, timeout=10).status_code == 200
    assert httpx.get(f"{api}/health", timeout=10).status_code == 200
    secret = stack.state / "prefect-auth"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stack.env()["PREFECT_API_AUTH_STRING"] == secret.read_text().strip()
    # ...and the CLI and workers get it from the stack's environment
    proc = subprocess.run([str(stack_mod.BIN / "prefect"), "deployment", "ls"], cwd=stack.root,
                                        env=stack.env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "train-nir" in proc.stdout, proc.stdout + proc.stderr


def test_mlflow_refuses_foreign_host_and_origin(stack):
    url = f"{stack.mlflow_uri}/api/2.0/mlflow/experiments/search"
    assert httpx.post(url, json={"max_results": 1}, timeout=10).status_code == 200
    host = httpx.post(url, json={"max_results": 1}, headers={"Host": "evil.example"}, timeout=10)
    assert host.status_code in (400, 403), host.text
    # (MLflow 3.17 always admits localhost origins, whatever --cors-allowed-origins says)
    origin = httpx.post(url, json={"max_results": 1}, headers={"Origin": FOREIGN}, timeout=10)
    assert origin.status_code == 403, origin.text
    assert origin.headers.get("access-control-allow-origin") in (None, "")
