"""Fault drill: kill a train-nir stage from outside, the way a crash would, and let the flow retry.

    python -m flows.drill <workspace> <stage> [--when models/checkpoints/latest]

waits until ``<workspace>/<when>`` exists (default: at once) while ``dvc repro --single-item
<stage>`` runs in ``<workspace>`` (``<checkout>/.dvc/tmp/nirgan-runs/<flow-run-id>``), then
SIGKILLs that command's whole process group (dvc and the stage it started, like ``kill -9``).
The flow sees the stage fail and retries it (``orchestrate.retries``); train then logs
``resuming from … at step N`` and continues the same MLflow run. The orchestration test runs
this against a real flow run; the flow itself has no failure-injection path.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path


def stage_process(workspace: Path, stage: str) -> int | None:
    """The pid of ``dvc repro --single-item <stage>`` running in ``workspace``, if any."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if cwd == workspace and "--single-item" in args and stage in args and any(a.endswith("dvc") for a in args):
            return int(proc.name)
    return None


def kill_stage_when(workspace: Path, stage: str, when: str | None, timeout_s: float, poll_s: float = 0.1) -> str:
    """Wait for the stage (and ``workspace / when``), kill its process group; returns what was done."""
    workspace = workspace.resolve()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # the file first: a stat, where a look for the stage reads every process in /proc
        pid = stage_process(workspace, stage) if when is None or (workspace / when).exists() else None
        if pid is not None:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except ProcessLookupError:
                continue  # it finished in between; look again
            return f"killed stage {stage} (process group of pid {pid}) in {workspace}" + \
                (f" once {when} existed" if when else "")
        time.sleep(poll_s)
    raise TimeoutError(f"stage {stage} with {when or 'no condition'} not seen in {workspace} within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("stage")
    parser.add_argument("--when", help="a path relative to the workspace that must exist first")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds (default: %(default)s)")
    args = parser.parse_args(argv)
    print(kill_stage_when(args.workspace, args.stage, args.when, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
