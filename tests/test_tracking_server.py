"""The train stage against a real MLflow tracking server on 127.0.0.1 that goes down mid-run
(issue 12 item 12): the stage fails within a minute with one line, and the run does not stay
RUNNING once the stage starts again with the server back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from train_helpers import make_dataset, small_config, write_params

from flows.stack_services import free_port
from nirgan.training.checkpoint import Checkpoint

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Server:
    """``mlflow server`` on a SQLite store with proxied artifacts, in its own process group."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        (root / "artifacts").mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 120) -> None:
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # as the stack's
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if b"OK" in resp.read():
                        return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"mlflow server not healthy after {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "mlflow")
    srv.start()
    yield srv
    srv.kill()


def test_server_down_fails_within_a_minute_in_one_line_and_the_run_ends(server, tmp_path):
    from mlflow.tracking import MlflowClient

    work = tmp_path / "work"
    prepared, split = make_dataset(tmp_path / "data")
    (work / "data").mkdir(parents=True)
    (work / "data" / "prepared").symlink_to(prepared)
    (work / "data" / "split").symlink_to(split)
    write_params(work / "params.yaml", small_config(max_steps=1000, checkpoint_every=1, log_every=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    env.update(OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=server.uri)
    cmd = [sys.executable, "-m", "nirgan.cli", "stage", "train"]
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = Checkpoint(work / "models" / "checkpoints")
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if (ckpt.directory / "latest").exists() and int(ckpt.latest().stem.split("_")[1]) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        server.kill()
        t0 = time.monotonic()
        try:
            _, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("train still running 120 s after the MLflow server went down")
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < 60, took
    assert proc.returncode == 3, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"nirgan: MLflow tracking store {server.uri} is unreachable"), last
    run_id = json.loads((work / "models" / "mlflow_run.json").read_text())["run_id"]

    # Server back: the next start resumes the checkpoint in the same run and ends it.
    server.start()
    killed_at = ckpt.load()["step"]
    write_params(work / "params.yaml", small_config(max_steps=killed_at + 1, checkpoint_every=1, log_every=1))
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((work / "models" / "mlflow_run.json").read_text())["run_id"] == run_id
    assert MlflowClient(server.uri).get_run(run_id).info.status == "FINISHED"
