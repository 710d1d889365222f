"""What the stack started, as it recorded it, and what is true of it now.

One JSON file per process under ``<state>/pids/<name>.pid``::

    {"name": "mlflow-server", "pid": 4242, "pgid": 4242, "port": 5000,
     "health": "http://127.0.0.1:5000/health", "expect": "OK", "started_at": "2026-12-04T19:50:00Z"}

(a worker has no port). Every process of the stack leads its own session, so its process group
is its PID, and the group is what ``down`` stops: MLflow's leader can die while the uvicorn
process it started still serves the port, which the leader's PID alone cannot show. Status and
``up`` read the record, not the environment: ``make stack`` without the port variables finds a
stack that was started with them.

A plain PID (the file format before the record) is read as a record without port or health.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from flows.processes import alive

SERVERS = ("prefect-server", "mlflow-server")


def pid_path(state: Path, name: str) -> Path:
    return state / "pids" / f"{name}.pid"


def write(state: Path, name: str, pid: int, port: int | None = None, health: str | None = None,
          expect: str | None = None, cpus: int | None = None) -> None:
    """Record a started process (``cpus``: a worker's NIRGAN_CPUS); written to a temporary file and
    renamed, so never half-written."""
    path = pid_path(state, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "pid": pid, "pgid": pid, "port": port, "health": health, "expect": expect,
              "cpus": cpus, "started_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)


def secret(path: Path, make: Callable[[], str]) -> str:
    """The secret in ``path``, made by ``make`` the first time; mode 0600, never half-written."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(make() + "\n")
    return path.read_text().strip()


def read(path: Path) -> dict[str, Any]:
    text = path.read_text().strip()
    if text.isdigit():
        return {"name": path.stem, "pid": int(text), "pgid": int(text), "port": None, "health": None, "expect": None}
    return json.loads(text)


def pid(state: Path, name: str) -> int:
    return int(read(pid_path(state, name))["pid"])


def records(state: Path) -> dict[str, dict[str, Any]]:
    pids = state / "pids"
    return {p.stem: read(p) for p in sorted(pids.glob("*.pid"))} if pids.is_dir() else {}


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return sorted(members)


def healthy(url: str | None, expect: str | None, timeout: float = 2.0) -> bool:
    if not url:
        return False
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return (expect or "") in resp.read().decode(errors="replace")
    except OSError:
        return False


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def recorded_port(state: Path, name: str) -> int | None:
    """The port the record gives ``name`` while anything of its process group still lives."""
    path = pid_path(state, name)
    if not path.exists():
        return None
    record = read(path)
    if record.get("port") is None or not group_members(int(record["pgid"])):
        return None
    return int(record["port"])


def port(state: Path, name: str, var: str, default: int) -> int:
    """The port of ``name``: the recorded one while any process of the stack lives (its workers
    and the user's shell were given that one), else ``var`` or ``default``. The record also
    wins when ``var`` is unset, so ``make stack`` finds a stack started with custom ports; a
    ``var`` that contradicts a running stack is an error (RuntimeError, one line)."""
    path = pid_path(state, name)
    recorded = read(path)["port"] if path.exists() else None
    asked = os.environ.get(var)
    live = any(group_members(int(r["pgid"])) for r in records(state).values())
    if recorded is not None and live:
        if asked and int(asked) != recorded:
            raise RuntimeError(f"the stack in {state} runs {name} on port {recorded} (recorded in {path}), "
                               f"but {var}={asked}; unset it, or `make stack-down` first to move it")
        return int(recorded)
    if recorded is not None and not asked:
        return int(recorded)
    return int(asked) if asked else default


def describe(record: dict[str, Any]) -> tuple[str, bool]:
    """One line of status for a recorded process, and whether it is up (running and, for a
    server, answering its health check)."""
    leader, pgid, port = int(record["pid"]), int(record["pgid"]), record.get("port")
    members = [m for m in group_members(pgid) if m != leader]
    serving = healthy(record.get("health"), record.get("expect")) if record.get("health") else None
    head = f"{record['name']:16s} pid {leader:7d}  group {pgid:7d}" + (f"  port {port}" if port else "") + \
        (f"  cpus {record['cpus']}" if record.get("cpus") else "")
    if alive(leader):
        if serving is False:
            return f"{head}  running, NOT answering {record['health']}", False
        return f"{head}  running" + (", healthy" if serving else ""), True
    if serving:
        return (f"{head}  serving without its leader: pid {leader} is dead but its group {members} still "
                f"answers on :{port}; `make stack` restarts it cleanly"), True
    if members:
        return f"{head}  dead, leaving processes {members} of its group (`make stack` stops them)", False
    return f"{head}  dead", False


def status(state: Path) -> tuple[list[str], bool]:
    """A line per recorded process, and whether all of them are up (False when none is recorded)."""
    found = records(state)
    if not found:
        return [f"no stack recorded in {state / 'pids'}"], False
    lines, ok = [], True
    for record in found.values():
        line, up = describe(record)
        lines.append(line)
        ok = ok and up
    return lines, ok
