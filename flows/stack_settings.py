"""The stack's settings: where its state lives, its ports, GPUs, pool limit and heartbeats, read
from the environment (flows/stack.py's docstring lists the variables), the secrets it makes
once per state folder, and the environment every stack process and CLI call runs in.

The other stack modules take a :class:`Stack` and import it from here: flows/stack_services.py
(the processes), flows/stack_prefect.py (the Prefect API calls) and flows/stack.py (``up``,
``down`` and the CLI), so none of them imports another back.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from flows import stack_record
from nirgan.cores import available_cores

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AUTH_FILE = "prefect-auth"  # the Prefect API's auth string, mode 0600
MLFLOW_TOKEN_FILE = "mlflow-token"  # the MLflow gate's token (flows/mlflow_gate.py), mode 0600


def origins(port: int) -> str:
    return f"http://127.0.0.1:{port},http://localhost:{port}"


@dataclass
class Stack:
    root: Path = REPO
    state: Path = REPO / ".stack"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    gpus: list[str | None] = field(default_factory=lambda: [None])
    pool_limit: int | None = None
    heartbeat_seconds: int = 30
    worker_poll_seconds: float = 5.0
    ui: bool = True

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def auth_string(self) -> str:
        """The Prefect API's ``user:password``, made once per stack state folder (mode 0600)."""
        return stack_record.secret(self.state / AUTH_FILE, lambda: f"nirgan:{secrets.token_urlsafe(24)}")

    def mlflow_token(self) -> str:
        """What MLflow's gate wants (flows/mlflow_gate.py), made once per stack state folder (mode 0600)."""
        return stack_record.secret(self.state / MLFLOW_TOKEN_FILE, lambda: secrets.token_urlsafe(24))

    @property
    def api_auth(self) -> tuple[str, str]:
        user, _, password = self.auth_string().partition(":")
        return user, password

    @property
    def limit(self) -> int:
        """The work pool's concurrency limit: ``pool_limit``, by default one run per worker."""
        return self.pool_limit or len(self.gpus)

    def cores_per_run(self, cores: int | None = None) -> int:
        """Each flow run's share of the stack's ``cores`` (default: what ``nirgan.cores`` says this
        process may use, ``NIRGAN_CPUS`` included) when as many runs as the pool allows run at once.
        Every worker takes one run at a time, so that is the fewer of the workers and the pool limit.
        Each run would otherwise start a thread per core: two default trains on 2 cores did 0.30-0.39x
        the work of one alone, and 0.98-1.35x with a core each (benchmarks/concurrent_train.py)."""
        at_once = max(1, min(len(self.gpus), self.limit))
        return max(1, (available_cores() if cores is None else cores) // at_once)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of every stack process and of the prefect/mlflow CLI calls."""
        env = dict(os.environ)
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            PREFECT_HOME=str(self.state / "prefect"),
            PREFECT_API_URL=self.prefect_api,
            PREFECT_SERVER_API_HOST="127.0.0.1",
            PREFECT_SERVER_API_PORT=str(self.prefect_port),
            # the UI is served from the API's own origin: no other page may call it cross-origin
            PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS=origins(self.prefect_port),
            PREFECT_SERVER_API_AUTH_STRING=self.auth_string(),
            PREFECT_API_AUTH_STRING=self.auth_string(),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="true" if self.ui else "false",
            PREFECT_CLI_PROMPT="false",
            MLFLOW_TRACKING_URI=self.mlflow_uri,
            MLFLOW_TRACKING_TOKEN=self.mlflow_token(),
            DVC_NO_ANALYTICS="1",
        )
        env.update(extra)
        return env


def detect_gpus() -> list[str | None]:
    listed = os.environ.get("NIRGAN_GPUS")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()] or [None]
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True
        )
        ids = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode == 0 and ids:
            return ids
    return [None]


def from_env() -> Stack:
    root = Path(os.environ.get("NIRGAN_STACK_ROOT") or REPO).resolve()
    state = Path(os.environ.get("NIRGAN_STACK_DIR", root / ".stack")).resolve()
    return Stack(
        root=root,
        state=state,
        prefect_port=stack_record.port(state, "prefect-server", "NIRGAN_PREFECT_PORT", 4200),
        mlflow_port=stack_record.port(state, "mlflow-server", "NIRGAN_MLFLOW_PORT", 5000),
        gpus=detect_gpus(),
        pool_limit=int(os.environ["NIRGAN_POOL_LIMIT"]) if os.environ.get("NIRGAN_POOL_LIMIT") else None,
        heartbeat_seconds=int(os.environ.get("NIRGAN_HEARTBEAT_SECONDS", 30)),
    )
