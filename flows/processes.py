"""The flows' child processes: run a command with its output streamed line by line, stop
whole process groups (SIGTERM, a grace period, SIGKILL), cut a flow run's output loose from
the worker that started it, and set up Prefect's temporary server for a flow run in this
process. Shared by the flows (stage commands, in-process runs) and ``stack`` (servers and
workers)."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


# Prefect's temporary server first migrates a fresh database: 9 s on an idle 2-core machine, so
# its 20 s default start limit failed CI on a loaded one (reproduced with six busy loops).
EPHEMERAL_START_S = 180


@contextlib.contextmanager
def in_process_prefect() -> Iterator[None]:
    """Settings for ``python flows/<flow>.py``: a flow run in this process that, without
    PREFECT_API_URL, starts Prefect's temporary server. It gets ``EPHEMERAL_START_S`` to come up,
    and no telemetry service: it has no internet to report to here, and its start-up write often
    lost a race with the server's own, printing a "database is locked" traceback. A value the
    user set in the environment wins."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # read by the server process
    updates = {}
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = EPHEMERAL_START_S
    with temporary_settings(updates=updates):
        yield


class CommandError(RuntimeError):
    """A command failed; ``cause`` is its one-line reason (for the flow's final state message)."""

    def __init__(self, message: str, cause: str | None = None):
        super().__init__(message)
        self.cause = cause or " ".join(message.split())


def one_line_cause(lines: list[str]) -> str:
    """The line that says why: our CLI's ``nirgan: ...`` line, else DVC's last ``ERROR: ...``
    line, else the last non-empty line."""
    text = [line.strip() for line in lines if line.strip()]
    for prefix in ("nirgan: ", "ERROR: "):
        hits = [line for line in text if line.startswith(prefix)]
        if hits:
            return hits[-1]
    return text[-1] if text else "(no output)"


def detach_output(log_path: Path) -> bool:
    """If stdout is a pipe, send this process's stdout and stderr to ``log_path`` instead.

    A process worker starts each flow run with its output piped to the worker. When the worker
    dies (kill -9), the flow run goes on, but its next log line raises a broken pipe and the
    flow crashes, killing the stage it was waiting for. Called first in a flow, this makes the
    flow run outlive its worker: its output goes to a file (its logs still go to the Prefect
    API), and one line in the worker's log says where. Returns whether it detached.
    """
    try:
        if not stat.S_ISFIFO(os.fstat(1).st_mode):
            return False  # a terminal or a file: no reader that can die
    except OSError:
        return False
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        print(f"flow run output continues in {log_path}", flush=True)
        sys.stderr.flush()
    except OSError:  # the reader is already gone
        pass
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # Python ignores SIGPIPE already (writes raise instead); make sure no library changed that.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    return True


def detach_flow_run(checkout: Path, run_id: str) -> bool:
    """:func:`detach_output` into ``<NIRGAN_FLOW_LOG_DIR>/<run_id>.log`` (the stack's workers:
    ``.stack/logs/flow-runs``; else ``<checkout>/.dvc/tmp/nirgan-logs``), for a flow run a worker
    started (it sets PREFECT__FLOW_RUN_ID); a flow run in this process (``python flows/...``,
    maybe piped to ``tee``) keeps its output."""
    if not os.environ.get("PREFECT__FLOW_RUN_ID"):
        return False
    folder = Path(os.environ.get("NIRGAN_FLOW_LOG_DIR") or checkout / ".dvc" / "tmp" / "nirgan-logs")
    return detach_output(folder / f"{run_id}.log")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child we spawned and nobody reaped is a zombie: gone for our purposes.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def stop_groups(groups: list[int] | dict[int, float], grace: float = 0.0) -> None:
    """SIGTERM every process group at once, wait up to its grace (``grace``, or its own where
    ``groups`` maps groups to graces) for each, SIGKILL the rest."""

    def signal_all(targets: list[int], sig: int) -> list[int]:
        remaining = []
        for group in targets:
            alive(group)  # reaps our own child so its group can disappear
            try:
                os.killpg(group, sig)
                remaining.append(group)
            except (ProcessLookupError, PermissionError):
                pass
        return remaining

    graces = dict(groups) if isinstance(groups, dict) else dict.fromkeys(groups, grace)
    start = time.monotonic()
    remaining = signal_all(list(graces), signal.SIGTERM)
    while remaining:
        overdue = [g for g in remaining if time.monotonic() - start >= graces[g]]
        for group in signal_all(overdue, signal.SIGKILL):
            alive(group)
        remaining = [g for g in remaining if g not in overdue]
        if remaining:
            time.sleep(0.2)
            remaining = signal_all(remaining, 0)


def stream(cmd: list[str], cwd: Path, env: dict[str, str], log: Callable[[str], None],
           timeout_s: float | None = None, grace: float = 2.0) -> str:
    """Run ``cmd``, passing each non-empty output line to ``log``; returns the output.

    The command gets its own process group so that a timeout or an interruption (a cancelled
    task) stops the whole tree (dvc and the stage it started), not only its leader. Its output
    goes to a log file that this process follows, not to a pipe: if this process dies (a killed
    worker takes its flow run with it), the command is not killed by a broken pipe on its next
    write; it finishes, and its outputs and checkpoints are there for the retry. Raises
    :class:`CommandError` on a timeout or a non-zero exit, with the last lines.
    """
    log(f"$ {' '.join(cmd)}")
    fd, log_path = tempfile.mkstemp(prefix="nirgan-cmd-", suffix=".log")
    try:
        with os.fdopen(fd, "w") as out, open(log_path, errors="replace") as follow:
            proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            return _follow(proc, follow, cmd, log, timeout_s, grace)
    finally:
        os.unlink(log_path)


def _follow(proc: subprocess.Popen, follow: Any, cmd: list[str], log: Callable[[str], None],
            timeout_s: float | None, grace: float) -> str:
    timed_out = threading.Event()

    def stop_on_timeout() -> None:
        timed_out.set()
        stop_groups([proc.pid], grace)

    timer = threading.Timer(timeout_s, stop_on_timeout) if timeout_s else None
    if timer:
        timer.start()
    lines: list[str] = []
    partial = ""

    def drain() -> None:
        nonlocal partial
        chunk = follow.read()
        if not chunk:
            return
        *complete, partial = (partial + chunk).split("\n")
        for line in complete:
            line = line.rstrip()
            lines.append(line)
            if line.strip():
                log(line)

    try:
        while proc.poll() is None:
            drain()
            time.sleep(0.1)
        drain()
        if partial.strip():
            lines.append(partial.rstrip())
            log(partial.rstrip())
        code = proc.wait()
    except BaseException:
        stop_groups([proc.pid], grace)
        raise
    finally:
        if timer:
            timer.cancel()
    if timed_out.is_set():
        msg = f"{' '.join(cmd)} killed after {timeout_s:.0f} s (orchestrate.stage_timeout_minutes)"
        raise CommandError(msg, msg)
    if code != 0:
        raise CommandError(f"{' '.join(cmd)} exited with {code}; last lines:\n" + "\n".join(lines[-15:]),
                           f"{cmd[0]} exited with {code}: {one_line_cause(lines)}")
    return "\n".join(lines)
