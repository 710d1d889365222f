"""The stack's Prefect side, done over the API of a running Prefect server: the process work
pool and its concurrency limit, the automation that marks a flow run Crashed when its
heartbeats stop, and, for ``down``, finding the flow runs in a worker's process tree (from
their environment) and marking them Crashed.

It starts no process, unlike flows/stack_services.py (the servers and workers), and decides
nothing, unlike flows/stack.py (``up``/``down`` and the CLI), which calls these steps.
Below it is only flows/stack_settings.py (the settings every stack module reads); the pool's
name, which the services and ``up`` share, is defined here. ``setup_pool`` runs inside the stack's environment, in one child
interpreter (``python flows/stack.py setup-pool``).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from flows.stack_settings import AUTH_FILE

POOL = "gpu"
ZOMBIE_AUTOMATION = "nirgan: crash flow runs without heartbeats"


def api_post(api: str, path: str, body: dict[str, Any], auth: str | None, timeout: float) -> bytes:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    req = urllib.request.Request(f"{api}{path}", data=json.dumps(body).encode(), headers=headers)
    # 503 is the server's answer to an error worth retrying (a busy SQLite database under load);
    # Prefect's own client retries it, and so does this one.
    for attempt in range(5):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == 4:
                raise
        time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def flow_run_ids(pids: list[int]) -> list[str]:
    ids = []
    for pid in pids:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"PREFECT__FLOW_RUN_ID="):
                ids.append(item.split(b"=", 1)[1].decode())
    return sorted(set(ids))


def mark_crashed(state: Path, flow_run_ids: list[str]) -> None:
    info = state / "stack.json"
    if not flow_run_ids or not info.exists():
        return
    api = json.loads(info.read_text())["prefect_api"]
    auth = (state / AUTH_FILE).read_text().strip() if (state / AUTH_FILE).exists() else None
    body = {"state": {"type": "CRASHED", "message": "stopped by make stack-down"}, "force": True}
    for run_id in flow_run_ids:
        try:
            api_post(api, f"/flow_runs/{run_id}/set_state", body, auth, 10)
        except OSError:
            pass


def flow_run_states(api: str, auth: str | None, ids: list[str]) -> dict[str, str]:
    """The state type (COMPLETED, CRASHED, ...) of each of ``ids`` the server knows."""
    valid = []
    for run_id in ids:
        try:
            valid.append(str(uuid.UUID(run_id)))
        except ValueError:  # a local run's id ("local-<pid>"): not this server's
            continue
    states = {}
    for start in range(0, len(valid), 200):  # the API's largest page
        chunk = valid[start:start + 200]
        body = {"flow_runs": {"id": {"any_": chunk}}, "limit": len(chunk)}
        for run in json.loads(api_post(api, "/flow_runs/filter", body, auth, 30)):
            if run.get("state"):
                states[run["id"]] = run["state"]["type"]
    return states


def renew_heartbeat_windows(prefect_home: Path, within_seconds: int) -> int:
    """Before a Prefect server (re)starts on its database: give every flow run the zombie
    automation watches a fresh window of ``within_seconds`` from now; returns how many.

    The automation keeps, per flow run, a window that ends ``within`` after its last heartbeat.
    Heartbeats sent while the server was down are lost, so at restart every window of a live run
    has already ended, and the automation marked the runs Crashed seconds later (issue 24: a
    67-s outage crashed a run that went on, and freed its slot). A live run's next heartbeat
    renews its window; a run that really died during the outage is still crashed, one window
    after the restart. The server is down here, so its SQLite database is written directly.
    """
    import sqlite3
    from datetime import datetime, timedelta, timezone

    db = prefect_home / "prefect.db"
    if not db.exists():
        return 0
    # Prefect stores its timestamps in SQLite as naive UTC text in this format (sqlite.DATETIME).
    end = (datetime.now(timezone.utc) + timedelta(seconds=within_seconds)).strftime("%Y-%m-%d %H:%M:%S.%f")
    con = sqlite3.connect(db, timeout=30)
    try:
        with con:
            cur = con.execute(
                'UPDATE automation_bucket SET "end" = ? WHERE "end" < ? AND automation_id IN '
                "(SELECT id FROM automation WHERE name = ?)", (end, end, ZOMBIE_AUTOMATION))
            return cur.rowcount
    except sqlite3.OperationalError:  # no such table yet: a database the server never migrated
        return 0
    finally:
        con.close()


def setup_pool(limit: int, within_seconds: int) -> None:
    """The process work pool with its concurrency limit, and the zombie automation."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(POOL)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=POOL, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
        client.update_work_pool(POOL, WorkPoolUpdate(concurrency_limit=limit))
    create_zombie_automation(within_seconds)


def create_zombie_automation(within_seconds: int) -> str:
    """Mark a flow run Crashed when its heartbeats stop (dead worker or machine), which frees its
    work pool slot. From Prefect's "detect zombie flows" guide; runs inside the stack's env."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        Automation.read(name=ZOMBIE_AUTOMATION)
        return "exists"
    except ValueError:
        pass
    Automation(
        name=ZOMBIE_AUTOMATION,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.*"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_seconds),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message="no heartbeat: worker or machine died")],
    ).create()
    return "created"
