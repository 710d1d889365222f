"""`make stack` against its own running stack, its record of what it started (issue 24 item 3),
and the stack's loopback security (issue 12, items 11 and 15). Real Prefect and MLflow servers and a real worker on free 127.0.0.1 ports,
over a throwaway copy of the project; everything is stopped by PID at the end.

The checks run in order on one stack (starting one costs most of a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from prefect_api import prefect_client
from prefect_db import seed_prefect_home

from pipeline_project import running_stack

from flows import stack as stack_mod
from flows import stack_record
from flows.processes import alive
from flows.stack_services import free_port

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e
FOREIGN = "http://evil.example"


def _pids(stack: stack_mod.Stack) -> dict[str, int]:
    return {name: record["pid"] for name, record in stack_record.records(stack.state).items()}


def _started(stack: stack_mod.Stack) -> list[str]:
    """What the last ``up`` call started, from its stack.json."""
    return json.loads((stack.state / "stack.json").read_text())["started"]


def _all_alive(pids: dict[str, int]) -> bool:
    return all(alive(pid) for pid in pids.values())


def _kill(pid: int) -> None:
    os.killpg(pid, signal.SIGKILL)  # each stack process leads its own session
    deadline = time.monotonic() + 20
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)


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
    with running_stack(tmp_path_factory.mktemp("stack")) as st, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_TOKEN", st.mlflow_token())  # this process's MLflow client, as the stack's own
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
            assert alive(before["prefect-server"]) and alive(before["worker-0"])
        finally:
            squatter.close()
    finally:
        stack_mod.up(stack)  # the later checks need the whole stack, whatever happened above
    assert _started(stack) == ["mlflow-server"]
    assert _all_alive(_pids(stack))


def _cli(stack: stack_mod.Stack, command: str, **extra: str) -> subprocess.CompletedProcess:
    """`python flows/stack.py <command>` (what `make stack`/`make stack-status` run) with the stack's
    state folder and checkout, and none of the port variables unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIRGAN_")}
    env.update(NIRGAN_STACK_DIR=str(stack.state), NIRGAN_STACK_ROOT=str(stack.root), NIRGAN_GPUS="",
               NIRGAN_POOL_LIMIT="1", **extra)
    return subprocess.run([sys.executable, str(REPO / "flows" / "stack.py"), command], env=env, capture_output=True,
                          text=True, timeout=300)


def _status_line(stack: stack_mod.Stack, name: str) -> tuple[int, str]:
    proc = _cli(stack, "status")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(name)]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return proc.returncode, lines[0]


def _wait(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_the_record_holds_pid_group_and_port_and_status_tells_the_truth(stack):
    """Issue 24: MLflow's leader killed alone left its uvicorn serving while status said "dead".
    Now the leader is MLflow's gate (flows/mlflow_gate.py), which serves the port itself: killed
    alone, nothing answers, and status names the processes its group left behind."""
    record = stack_record.read(stack.state / "pids" / "mlflow-server.pid")
    assert record["pgid"] == record["pid"] and record["port"] == stack.mlflow_port
    assert stack_record.read(stack.state / "pids" / "prefect-server.pid")["port"] == stack.prefect_port
    code, line = _status_line(stack, "mlflow-server")
    assert code == 0 and line.endswith("running, healthy") and f"port {stack.mlflow_port}" in line, line

    leader = record["pid"]
    assert [m for m in stack_record.group_members(leader) if m != leader], "the gate runs no MLflow server"
    try:
        os.kill(leader, signal.SIGKILL)  # the leader only: the MLflow server it started lives on
        _wait(lambda: not alive(leader), "the MLflow leader did not die")
        left = [m for m in stack_record.group_members(leader) if m != leader]
        assert not stack_record.healthy(f"{stack.mlflow_uri}/health", "OK")  # the gate served the port
        code, line = _status_line(stack, "mlflow-server")
        assert code == 1 and "dead, leaving processes" in line and str(left[0]) in line, line

        os.killpg(leader, signal.SIGKILL)  # now the whole group: nothing serves
        _wait(lambda: not stack_record.group_members(leader), "the MLflow group did not die")
        code, line = _status_line(stack, "mlflow-server")
        assert code == 1 and line.endswith("dead"), line
        prefect = _status_line(stack, "prefect-server")[1]
        assert prefect.endswith("running, healthy"), prefect
    finally:
        stack_mod.up(stack)
    assert _started(stack) == ["mlflow-server"]
    assert _status_line(stack, "mlflow-server")[0] == 0


def _flow_run(api: httpx.Client, flow_id: str, state: str) -> str:
    run = api.post("/flow_runs/", json={"flow_id": flow_id, "name": f"probe-{state.lower()}"})
    run.raise_for_status()
    run_id = run.json()["id"]
    api.post(f"/flow_runs/{run_id}/set_state", json={"state": {"type": state}, "force": True}).raise_for_status()
    return run_id


def test_a_restart_ends_the_mlflow_runs_of_flow_runs_that_are_over(stack):
    """Issue 24: a worker killed mid-run (or a failure during an MLflow outage) left the run RUNNING
    forever. The next start ends it (KILLED for a crashed flow run, with the reason as a tag) and
    leaves alone the runs of flow runs still running or unknown to this server."""
    from mlflow.tracking import MlflowClient

    api = prefect_client(stack)
    flow = api.post("/flows/", json={"name": "reconcile-probe"})
    flow.raise_for_status()
    crashed, failed, running = (_flow_run(api, flow.json()["id"], s) for s in ("CRASHED", "FAILED", "RUNNING"))
    unknown = "00000000-0000-4000-8000-000000000024"
    client = MlflowClient(stack.mlflow_uri)
    exp = client.get_experiment_by_name("nirgan")
    exp_id = exp.experiment_id if exp else client.create_experiment("nirgan")
    runs = {fr: client.create_run(exp_id, tags={"prefect_flow_run_id": fr}).info.run_id
            for fr in (crashed, failed, running, unknown)}
    try:
        _kill(_pids(stack)["worker-0"])  # the fault; `up` is the next start
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("MLFLOW_TRACKING_TOKEN")  # as in the shell `make stack` runs in
            stack_mod.up(stack)
        assert _started(stack) == ["worker-0"]
        status = {fr: client.get_run(r).info.status for fr, r in runs.items()}
        assert status == {crashed: "KILLED", failed: "FAILED", running: "RUNNING", unknown: "RUNNING"}, status
        why = client.get_run(runs[crashed]).data.tags["ended_by"]
        assert crashed in why and "CRASHED" in why, why
        recorded = json.loads((stack.state / "stack.json").read_text())["ended_stale_mlflow_runs"]
        assert sorted(recorded) == sorted([runs[crashed], runs[failed]])
    finally:
        for run_id in runs.values():
            client.set_terminated(run_id, "KILLED")


def _heartbeat_windows(stack: stack_mod.Stack, flow_run_id: str, end: str | None = None) -> list[str]:
    """The ends of the zombie automation's windows for one flow run, in Prefect's database;
    with ``end``, set them first (only while the server is down)."""
    con = sqlite3.connect(stack.state / "prefect" / "prefect.db", timeout=30)
    try:
        with con:
            if end is not None:
                con.execute('UPDATE automation_bucket SET "end" = ? WHERE bucketing_key LIKE ?', (end, f"%{flow_run_id}%"))
            return [row[0] for row in con.execute('SELECT "end" FROM automation_bucket WHERE bucketing_key LIKE ?',
                                                  (f"%{flow_run_id}%",))]
    finally:
        con.close()


def _heartbeat(api: httpx.Client, flow_run_id: str) -> None:
    """What a live flow run sends every NIRGAN_HEARTBEAT_SECONDS."""
    event = {"id": str(uuid.uuid4()), "occurred": datetime.now(timezone.utc).isoformat(),
             "event": "prefect.flow-run.heartbeat", "resource": {"prefect.resource.id": f"prefect.flow-run.{flow_run_id}"}}
    api.post("/events", json=[event]).raise_for_status()


def test_a_prefect_server_restart_does_not_crash_a_live_run(stack):
    """Issue 24: 8 s after a 67-s outage the no-heartbeat automation marked a running flow run
    Crashed (and freed its slot): the heartbeats it sent during the outage were lost, so its
    window had ended. A restart by `up` gives every watched run a fresh window."""
    api = prefect_client(stack)
    flow = api.post("/flows/", json={"name": "heartbeat-probe"})
    flow.raise_for_status()
    live = _flow_run(api, flow.json()["id"], "RUNNING")
    try:
        _heartbeat(api, live)
        _wait(lambda: _heartbeat_windows(stack, live), "the automation opened no window for the run", 90)
        _kill(_pids(stack)["prefect-server"])
        # The outage outlasts the window (90 s by default); what it leaves in the database is a
        # window that ended during it, written here instead of waiting it out.
        ended = (datetime.now(timezone.utc) - timedelta(seconds=5)).strftime("%Y-%m-%d %H:%M:%S.%f")
        _heartbeat_windows(stack, live, end=ended)
        stack_mod.up(stack)
        assert _started(stack) == ["prefect-server"]
        assert json.loads((stack.state / "stack.json").read_text())["heartbeat_windows_renewed"] >= 1
        # The run goes on and heartbeats again; the automation evaluates every 5 s.
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            _heartbeat(api, live)
            state = api.get(f"/flow_runs/{live}").json()["state"]
            assert state["type"] == "RUNNING", state
            time.sleep(3)
    finally:
        api.post(f"/flow_runs/{live}/set_state", json={"state": {"type": "COMPLETED"}, "force": True})


def test_the_cli_on_a_running_stack_keeps_it_without_the_port_variables(stack):
    """`make stack` in a new shell, against a stack started on other ports: it reads the ports
    from the record (issue 24: it waited 60 s on :4200 and failed)."""
    before = _pids(stack)
    t0 = time.monotonic()
    proc = _cli(stack, "up")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already running" in proc.stdout and f"127.0.0.1:{stack.mlflow_port}" in proc.stdout, proc.stdout
    # what the running worker got, not what this shell (no NIRGAN_CPUS) would give a new one
    cpus = json.loads((stack.state / "stack.json").read_text())["cpus"]
    assert cpus == {"worker-0": stack.cores_per_run()}, cpus
    assert f"each run on {cpus['worker-0']} CPU core(s)" in proc.stdout, proc.stdout
    environ = Path(f"/proc/{before['worker-0']}/environ").read_bytes().split(b"\0")
    assert f"NIRGAN_CPUS={cpus['worker-0']}".encode() in environ
    bad = _cli(stack, "up", NIRGAN_CPUS="zero")
    assert bad.returncode == 1 and bad.stderr.strip() == "stack: NIRGAN_CPUS='zero' is not a whole number of CPUs", \
        bad.stderr
    assert time.monotonic() - t0 < 50
    assert _pids(stack) == before and _all_alive(before)
    # a port variable that contradicts the running stack is one line, and changes nothing
    other = _cli(stack, "up", NIRGAN_MLFLOW_PORT=str(stack.mlflow_port + 1))
    assert other.returncode == 1 and f"port {stack.mlflow_port}" in other.stderr, other.stderr
    assert len(other.stderr.strip().splitlines()) == 1 and "Traceback" not in other.stderr
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
    auth = httpx.BasicAuth("anyone", stack.mlflow_token())
    assert httpx.post(url, json={"max_results": 1}, auth=auth, timeout=10).status_code == 200
    host = httpx.post(url, json={"max_results": 1}, auth=auth, headers={"Host": "evil.example"}, timeout=10)
    assert host.status_code in (400, 403), host.text
    origin = httpx.post(url, json={"max_results": 1}, auth=auth, headers={"Origin": FOREIGN}, timeout=10)
    assert origin.status_code == 403, origin.text
    assert origin.headers.get("access-control-allow-origin") in (None, "")


def test_mlflow_wants_the_token_and_no_other_local_page_can_change_it(stack):
    """Issue 24 item 5: a page served on 127.0.0.1:8999 created an experiment and moved a registry
    alias (MLflow 3.17 admits every localhost origin). Behind the gate: no token, no access (a
    fresh browser is asked to log in); another loopback origin is refused even with the token
    (what a logged-in browser would attach); the stack's own clients pass."""
    from mlflow.tracking import MlflowClient

    api = f"{stack.mlflow_uri}/api/2.0/mlflow"
    token = stack.mlflow_token()
    assert stat.S_IMODE((stack.state / "mlflow-token").stat().st_mode) == 0o600
    assert stack.env()["MLFLOW_TRACKING_TOKEN"] == token

    bare = httpx.post(f"{api}/experiments/create", json={"name": "no-token"}, timeout=10)
    assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith("Basic "), bare.text
    assert httpx.get(f"{stack.mlflow_uri}/", timeout=10).status_code == 401  # the UI: the login prompt
    assert httpx.get(f"{stack.mlflow_uri}/health", timeout=10).text.strip() == "OK"  # the probe stays open

    client = MlflowClient(stack.mlflow_uri)  # MLFLOW_TRACKING_TOKEN, as workers and the CLI have it
    model = client.create_registered_model("gate-probe")
    source = client.create_experiment("gate-probe-source")
    run = client.create_run(source)
    client.create_model_version(model.name, f"runs:/{run.info.run_id}/m", run.info.run_id)
    client.create_model_version(model.name, f"runs:/{run.info.run_id}/m", run.info.run_id)
    client.set_registered_model_alias(model.name, "champion", "1")

    other = f"http://127.0.0.1:{free_port()}"  # another local web app's page
    for token_sent in (None, httpx.BasicAuth("anyone", token), httpx.BasicAuth("anyone", "guess")):
        hostile = {"Origin": other, "Sec-Fetch-Site": "same-site"}
        made = httpx.post(f"{api}/experiments/create", json={"name": "hostile"}, headers=hostile, auth=token_sent,
                          timeout=10)
        moved = httpx.post(f"{api}/registered-models/alias", headers=hostile, auth=token_sent, timeout=10,
                           json={"name": model.name, "alias": "champion", "version": "2"})
        assert made.status_code == 403 and moved.status_code == 403, (made.text, moved.text)
    assert client.get_experiment_by_name("hostile") is None
    assert client.get_model_version_by_alias(model.name, "champion").version == "1"
    own = httpx.post(f"{api}/experiments/search", json={"max_results": 1}, timeout=10,
                     headers={"Origin": stack.mlflow_uri}, auth=httpx.BasicAuth("anyone", token))
    assert own.status_code == 200, own.text  # the UI's own requests pass


# ------------------------------------------- issue 20 item 7 and issue 24: deployments, run names, links
def test_every_deployment_loads_in_the_worker_and_its_flow_run_is_named_and_linked(stack):
    """Each of prefect.yaml's deployments, run by the stack's worker from the installed ``flows``
    package (no sys.path edits), with an unknown params key so that it fails fast, before any
    stage: its flow run carries a name a user tells apart (experiment, overrides, short revision)
    and logs its page through Prefect's login, and its state says why it failed."""
    stack_mod.up(stack)  # earlier checks killed parts of it
    api = prefect_client(stack)
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=stack.root, capture_output=True,
                          text=True, check=True).stdout.strip()
    submissions = {
        "train-nir/gpu": ({"train.no_such_key": 1}, "bad-key", f"bad-key: train.no_such_key=1 @ {head}"),
        "train-expression/gpu": ({"expression_train.no_such_key": 2}, None,
                                 f"expression_train.no_such_key=2 @ {head}"),
        "generate-nir/gpu": ({"generate.no_such_key": 3}, None, f"generate.no_such_key=3 @ {head}"),
    }
    ids = {}
    for deployment, (overrides, experiment, _) in submissions.items():
        cmd = [str(stack_mod.BIN / "prefect"), "deployment", "run", deployment, "--param",
               f"overrides={json.dumps(overrides)}"]
        if experiment:
            cmd += ["--param", f"experiment={json.dumps(experiment)}"]
        out = subprocess.run(cmd, cwd=stack.root, env=stack.env(), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        ids[deployment] = re.search(r"flow-run/([0-9a-f-]{36})", out.stdout).group(1)
    runs = {}
    deadline = time.monotonic() + 300
    while len(runs) < len(ids):
        for deployment, run_id in ids.items():
            fr = api.get(f"/flow_runs/{run_id}").json()
            if fr["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                runs[deployment] = fr
        assert time.monotonic() < deadline, {d: api.get(f"/flow_runs/{i}").json()["state"] for d, i in ids.items()}
        time.sleep(1.0)
    for deployment, (_, _, name) in submissions.items():
        fr, key = runs[deployment], next(iter(submissions[deployment][0]))
        assert fr["state"]["type"] == "FAILED", (deployment, fr["state"])
        assert key in fr["state"]["message"] and "\n" not in fr["state"]["message"], fr["state"]["message"]
        assert fr["name"] == name, (deployment, fr["name"])
        logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [fr["id"]]}}}).json()
        link = f"{stack.prefect_api.removesuffix('/api')}/login?redirect=%2Fruns%2Fflow-run%2F{fr['id']}"
        assert any(link in entry["message"] for entry in logs), (deployment, [e["message"] for e in logs][:10])


def _wait_for(tools, expression: str, what: str, timeout: float = 90.0):
    """Poll a page until ``expression`` is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = tools.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} after {timeout:.0f} s; the page says:\n{tools.text()[:2000]}"
        time.sleep(0.5)


def test_the_logged_flow_run_link_opens_the_run_in_a_fresh_browser_through_login(tmp_path, prefect_db):
    """Issue 24: the flow-run link opened "Authentication failed" and no login form in a fresh
    browser. The link the flows log (flows.names.flow_run_link) opens Prefect's login page; the
    stack's password there leads on to the flow run's own page. A real Prefect server with its UI
    and headless Chromium with an empty profile."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
    from test_mlflow_ui import chromium_binary, fresh_page

    from flows.names import flow_run_link
    from flows.stack_services import start_prefect

    chromium_binary()  # fails at once, saying how to install it, where there is none
    st = stack_mod.Stack(root=REPO, state=tmp_path / "ui-stack", prefect_port=free_port(), mlflow_port=free_port())
    seed_prefect_home(Path(st.env()["PREFECT_HOME"]), prefect_db)
    try:
        start_prefect(st)
        api = prefect_client(st)
        _wait(lambda: _healthy(api), "the Prefect server did not answer", 120)
        flow = api.post("/flows/", json={"name": "link-probe"})
        flow.raise_for_status()
        run_id = _flow_run(api, flow.json()["id"], "COMPLETED")
        with temporary_settings({PREFECT_API_URL: st.prefect_api, PREFECT_API_AUTH_STRING: st.auth_string()}):
            link = flow_run_link(run_id)
        assert link and "/login?" in link

        with fresh_page(tmp_path / "profile") as tools:
            tools.call("Page.navigate", url=link)
            _wait_for(tools, "!!document.querySelector('input[type=password]')", "no login form")
            tools.call("Runtime.evaluate", expression=(
                "(() => { const i = document.querySelector('input[type=password]');"
                f" i.value = {json.dumps(st.auth_string())}; i.dispatchEvent(new Event('input', {{bubbles: true}}));"
                " i.form.requestSubmit(); })()"))
            where = _wait_for(tools, f"location.pathname === '/runs/flow-run/{run_id}' && "
                                     "document.body.innerText.includes('probe-completed') && location.pathname",
                              "the login did not lead on to the flow run's page")
        assert where == f"/runs/flow-run/{run_id}"
    finally:
        stack_mod.down(st.state)


def _healthy(api: httpx.Client) -> bool:
    try:
        return api.get("/health").status_code == 200
    except httpx.HTTPError:
        return False
