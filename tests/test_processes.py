"""flows.processes: a command outlives the process that follows its output (issue 12 item 10: a
killed worker took its flow run, whose stage then died of a broken pipe), and a flow run outlives
the worker that reads its output (issue 24: its first log line after the worker's kill -9 raised
a broken pipe, and the flow crashed with its stage); and a flow run in this process gives Prefect's
temporary server time to start on a loaded machine (CI failed on its 20 s default); and each
process group being stopped waits its own grace, not the longest one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import sys, time
    for i in range(15):
        print(f"line {i}", flush=True)
        time.sleep(0.2)
    open(sys.argv[1], "w").write("done")
""")

FOLLOWER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from flows.processes import stream
    stream([sys.executable, "-c", sys.argv[1], sys.argv[2]], Path.cwd(), dict(__import__("os").environ),
           lambda line: print(line, flush=True))
""")


def test_command_survives_the_death_of_its_follower(tmp_path):
    marker = tmp_path / "done"
    follower = subprocess.Popen([sys.executable, "-c", FOLLOWER, CHILD, str(marker)], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}"},
                                stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and follower.stdout.readline().strip() != "line 0":
        pass  # the echoed command, then the command's first line: it runs and is followed
    follower.send_signal(signal.SIGKILL)  # as a kill -9 of the worker takes its flow run
    follower.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not marker.exists():
        time.sleep(0.1)
    assert marker.exists() and marker.read_text() == "done", "the command died with its follower"


def test_stream_returns_output_and_raises_one_line_cause(tmp_path):
    from flows.processes import CommandError, stream

    seen: list[str] = []
    out = stream([sys.executable, "-c", "print('a'); print('b', end='')"], tmp_path, dict(os.environ), seen.append)
    assert out == "a\nb" and seen[1:] == ["a", "b"]
    script = "import sys; print('working'); print('nirgan: params.yaml: train.x: bad', file=sys.stderr); sys.exit(2)"
    try:
        stream([sys.executable, "-c", script], tmp_path, dict(os.environ), seen.append)
    except CommandError as exc:
        assert exc.cause.endswith("exited with 2: nirgan: params.yaml: train.x: bad"), exc.cause
    else:
        raise AssertionError("no CommandError")


FLOW_RUN = textwrap.dedent("""
    import logging, sys, time
    from pathlib import Path
    from flows.processes import detach_output
    log_path, go, marker = map(Path, sys.argv[1:4])
    print("ready", flush=True)
    assert detach_output(log_path)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)  # like Prefect's console handler
    while not go.exists():
        time.sleep(0.05)
    for i in range(200):  # well past a pipe buffer, had it still been the pipe
        print(f"stage line {i}", flush=True)
        logging.getLogger("flow").info("log line %d", i)
    marker.write_text("done")
""")


def test_a_flow_run_outlives_the_reader_of_its_output(tmp_path):
    """The worker's end of the flow run's pipes closed (what its kill -9 does): the flow run's
    next lines must not kill it; they land in the log file."""
    log_path, go, marker = tmp_path / "logs" / "flow.log", tmp_path / "go", tmp_path / "done"
    flow_run = subprocess.Popen([sys.executable, "-c", FLOW_RUN, str(log_path), str(go), str(marker)], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert flow_run.stdout.readline().strip() == "ready"
        assert flow_run.stdout.readline().startswith("flow run output continues in")
        flow_run.stdout.close()  # the reader is gone
        flow_run.stderr.close()
        go.write_text("")
        assert flow_run.wait(timeout=60) == 0, log_path.read_text(errors="replace")[-2000:]
    finally:
        if flow_run.poll() is None:
            flow_run.kill()
    assert marker.read_text() == "done"
    text = log_path.read_text()
    assert "stage line 199" in text and "log line 199" in text


PROBE = textwrap.dedent("""
    import json, sys
    from prefect import flow
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
    from flows.processes import in_process_prefect

    @flow
    def probe():
        return 1

    with in_process_prefect():
        limit = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        if sys.argv[1] == "run":
            probe()
    servers = [s.server_process.pid for s in SubprocessASGIServer._instances.values() if s.server_process]
    env = [open(f"/proc/{pid}/environ", "rb").read().decode().split("\\0") for pid in servers]
    print(json.dumps({"limit": limit, "servers": env}))
""")


def test_an_in_process_flow_gives_the_temporary_server_time_and_no_telemetry(tmp_path):
    # CI failed when Prefect's temporary server, migrating a fresh database on a loaded 2-core
    # machine, missed Prefect's 20 s start limit; its telemetry service's start-up write raced
    # the server's own into a "database is locked" traceback.
    import json

    from flows.processes import EPHEMERAL_START_S

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"))
    out = subprocess.run([sys.executable, "-c", PROBE, "run"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=EPHEMERAL_START_S + 180)  # room for the start limit itself on a loaded machine
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["limit"] == EPHEMERAL_START_S
    assert len(seen["servers"]) == 1, "the flow did not start Prefect's temporary server"
    server_env = dict(item.split("=", 1) for item in seen["servers"][0] if "=" in item)
    assert server_env.get("PREFECT_SERVER_ANALYTICS_ENABLED", "").lower() == "false", server_env
    assert "TELEMETRY_SESSION" not in out.stderr

    # what the user set wins
    env.update(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="45")
    out = subprocess.run([sys.executable, "-c", PROBE, "settings"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["limit"] == 45


STUBBORN = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a worker stuck in its shutdown
    open(sys.argv[1], "w").write("ready")
    time.sleep(120)
""")


def test_each_group_is_killed_after_its_own_grace(tmp_path):
    from flows.processes import alive, stop_groups

    procs = {}
    for name in ("short", "long", "polite"):
        code = STUBBORN if name != "polite" else STUBBORN.replace("signal.signal(", "0 and signal.signal(")
        procs[name] = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / name)], start_new_session=True)
    deadline = time.monotonic() + 30
    while not all((tmp_path / n).exists() for n in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    died: dict[str, float] = {}

    def watch() -> None:
        while len(died) < len(procs):
            for n, p in procs.items():
                if n not in died and not alive(p.pid):  # reaped by whichever of us comes first
                    died[n] = time.monotonic() - t0
            time.sleep(0.02)

    t0 = time.monotonic()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stop_groups({procs["short"].pid: 0.5, procs["long"].pid: 3.0, procs["polite"].pid: 3.0})
    took = time.monotonic() - t0
    watcher.join(timeout=5)
    assert not any(alive(p.pid) for p in procs.values())
    # the two that ignore SIGTERM live until their own grace, no longer; the polite one goes at once
    assert died["polite"] < 3.0 and 0.5 <= died["short"] < 3.0 <= died["long"], died
    assert took < 10, took
