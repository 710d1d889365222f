"""Where MLflow data lives and how a call that cannot reach it fails (see :mod:`nirgan.tracking`).

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo root>/mlflow.db``
(the repo root is the directory holding ``params.yaml``/``dvc.yaml`` above the current
directory, else the current directory). For a local SQLite store, artifacts go next to it in
``mlartifacts/`` so that runs launched from any directory find them.

Concurrency: a fresh SQLite store is created (its schema migrated) by :func:`ensure_store`
under a file lock, so parallel processes (DVC experiments, Prefect workers) never race on the
alembic migration; call it before anything else opens the store.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nirgan.config import ServiceError

log = logging.getLogger("nirgan.tracking")

EXPERIMENT = "nirgan"
REGISTERED_MODEL = "nirgan-generator"
# Per task (Config.task): the experiment and registered model of each model family.
EXPERIMENTS = {"nir": EXPERIMENT, "expression": "nirgan-expression"}
REGISTERED_MODELS = {"nir": REGISTERED_MODEL, "expression": "nirgan-expression-generator"}
GENERATOR_URI_TAG = "generator_model_uri"  # set by train when it logged the model; read to register it
_ENV_TAGS = {
    "dvc_exp_name": "DVC_EXP_NAME",
    "dvc_exp_baseline_rev": "DVC_EXP_BASELINE_REV",
    "prefect_flow_run_id": "PREFECT__FLOW_RUN_ID",
    "prefect_flow_run_name": "NIRGAN_FLOW_RUN_NAME",
    "work_pool": "NIRGAN_WORK_POOL",
}
_ensured: set[str] = set()

# A tracking server that is down must fail the run within a minute, not after MLflow's default
# 7 retries with exponential backoff and 120 s timeouts (about 17 minutes seen). Set only what
# the user did not set. Retries 2, backoff 1 s: a refused connection fails in about 3 s.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
for _key, _value in HTTP_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

TRAINING_STOPPED = "training stopped, its checkpoints are kept: rerun when the server is back to resume"


class TrackingUnavailable(ServiceError):
    """The tracking store could not be reached; the message is one line naming it."""


def _unavailable(exc: BaseException, consequence: str = TRAINING_STOPPED) -> TrackingUnavailable:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return TrackingUnavailable(f"MLflow tracking store {tracking_uri()} is unreachable or refused the call "
                               f"({type(exc).__name__}: {first}); {consequence}")


def repo_root(start: Path | None = None) -> Path:
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "params.yaml").exists() or (d / "dvc.yaml").exists():
            return d
    return start


def missing_store() -> str | None:
    """Why there is no tracking store to use from here, or None. Outside a project (no
    params.yaml or dvc.yaml here or above, no mlflow.db here) with ``MLFLOW_TRACKING_URI`` unset, the
    default store would be a new, empty mlflow.db (and mlartifacts/) in the current directory:
    promote and generate refuse to make one there."""
    root = repo_root()
    if os.environ.get("MLFLOW_TRACKING_URI") or any((root / n).exists()
                                                     for n in ("params.yaml", "dvc.yaml", "mlflow.db")):
        return None
    return (f"{root}: not inside a nirgan project (no params.yaml or dvc.yaml here or above) and "
            "MLFLOW_TRACKING_URI is not set")


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def experiment_name(task: str = "nir") -> str:
    """``MLFLOW_EXPERIMENT_NAME`` if set, else the task's experiment (nirgan / nirgan-expression)."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENTS[task]


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def ensure_store(uri: str | None = None) -> str:
    """Create or upgrade the tracking store once, under a file lock; returns the URI.

    For SQLite, the first process to take ``<db>.lock`` creates the tables (or runs the
    alembic upgrade of an older MLflow's schema); the others wait and then find it ready.
    Other stores (a tracking server) manage themselves and are returned unchanged.
    """
    uri = uri or tracking_uri()
    db = _sqlite_path(uri)
    if db is None or uri in _ensured:
        return uri
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _create_or_upgrade(uri)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _ensured.add(uri)
    return uri


def _create_or_upgrade(uri: str) -> None:
    """Opening the store creates a fresh one; an older MLflow's schema is migrated by MLflow's own
    command, ``mlflow db upgrade`` (its public way; a subprocess, so only an old store pays for it)."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    artifacts = str(_sqlite_path(uri).parent / "mlartifacts")  # type: ignore[union-attr]
    try:
        # MLflow keeps the store's engine for the process's life; its pooled connections are closed
        # here, so a long-lived caller (the stack's `up`, a test worker) holds no store file open
        SqlAlchemyStore(uri, artifacts).engine.dispose()
        return
    except MlflowException as exc:
        if "out-of-date" not in str(exc) and "outdated" not in str(exc).lower():
            raise
    log.info("upgrading the MLflow schema of %s (mlflow db upgrade)", uri)
    done = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri], capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        # the exception's own line, not the "Background on this error" link SQLAlchemy adds after it
        last = next((s for s in reversed(lines) if "Error:" in s or "Exception:" in s), lines[-1]).strip()[:300]
        raise TrackingUnavailable(f"MLflow tracking store {uri}: `mlflow db upgrade` failed ({last}); back the "
                                  "store up and run that command by hand to see the whole error")
    SqlAlchemyStore(uri, artifacts).engine.dispose()


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": value}; tuples and lists become their repr."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def git_commit(cwd: Path | None = None) -> str:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or repo_root(), capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else "unknown"


def run_tags() -> dict[str, str]:
    commit = git_commit()
    tags = {"git_commit": commit, "mlflow.source.git.commit": commit}
    for tag, env in _ENV_TAGS.items():
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _experiment_id(client: Any, uri: str, task: str = "nir") -> str:
    name = experiment_name(task)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    db = _sqlite_path(uri)
    location = (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None
    from mlflow.exceptions import MlflowException

    try:
        # the experiment kind MLflow 3's UI asks for on first visit, and shows as "Training runs"
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException:  # another process created it in between
        return client.get_experiment_by_name(name).experiment_id


def run_name(default: str) -> str:
    """A name a user tells runs apart by in the UI: the DVC experiment's (``DVC_EXP_NAME``: set by
    ``dvc exp run`` and by the train-nir flow), the configuration ``default`` names (the thesis
    config, the expression model) and the short git revision it ran on (``DVC_EXP_BASELINE_REV``,
    else HEAD; left out when unknown): ``steps-40 (ED-LS-LR-2, 1a2b3c4)``, else
    ``ED-LS-LR-2 (1a2b3c4)``. Runs are found by their tags (``dvc_exp_name``), not by this."""
    revision = os.environ.get("DVC_EXP_BASELINE_REV") or git_commit()
    short = revision[:7] if revision and revision != "unknown" else ""
    experiment = os.environ.get("DVC_EXP_NAME")
    if experiment:
        return f"{experiment} ({', '.join(filter(None, [default, short]))})"
    return f"{default} ({short})" if short else default


def _is_connection_error(exc: BaseException) -> bool:
    import requests

    text = str(exc)
    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)) or \
        "Max retries exceeded" in text or "Connection refused" in text
