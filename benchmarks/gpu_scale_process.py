"""The orchestrator's side of the device check's worker (``gpu_scale_worker.py``): start it in a
process group of its own, send it a phase, wait for the answer file until a hard limit, and end
the whole group (torchrun's children and torch.compile's workers with it) when a phase must stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WORKER = Path(__file__).resolve().with_name("gpu_scale_worker.py")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


class Worker:
    """gpu_scale_worker.py in its own process group (so torchrun's children go with it)."""

    def __init__(self, answers: Path):
        self.answers = answers
        self.proc = subprocess.Popen([sys.executable, str(WORKER), str(answers)], stdin=subprocess.PIPE, text=True,
                                     start_new_session=True)

    def wait_file(self, path: Path, until: float, poll=None) -> dict | None:
        """The answer file's content; None when ``until`` passed or the worker exited first."""
        while time.time() < until:
            if path.exists():
                return json.loads(path.read_text())
            if self.proc.poll() is not None:
                return None
            if poll:
                poll()
            time.sleep(0.2)
        return None

    def send(self, command: dict) -> None:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(grace)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
