"""MLflow helpers: one tracking store, one run per training, tagged with where it came from.

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo root>/mlflow.db``
(the repo root is the directory holding ``params.yaml``/``dvc.yaml`` above the current
directory, else the current directory). For a local SQLite store, artifacts go next to it in
``mlartifacts/`` so that runs launched from any directory find them.

Concurrency: a fresh SQLite store is created (its schema migrated) by :func:`ensure_store`
under a file lock, so parallel processes (DVC experiments, Prefect workers) never race on the
alembic migration; call it before anything else opens the store.

A run started by :func:`start_run` carries:
- params: the whole config, flattened to dotted keys (``train.lambda_lr``);
- tags: ``git_commit`` (``git rev-parse HEAD`` or ``unknown``), ``dvc_exp_name`` /
  ``dvc_exp_baseline_rev`` (env ``DVC_EXP_NAME`` / ``DVC_EXP_BASELINE_REV``),
  ``prefect_flow_run_id`` / ``prefect_flow_run_name`` (env ``PREFECT__FLOW_RUN_ID`` /
  ``NIRGAN_FLOW_RUN_NAME``), ``work_pool`` (env ``NIRGAN_WORK_POOL``);
- system metrics (CPU, memory, and GPU through nvidia-ml-py when there is one).
:func:`write_run_info` leaves ``models/mlflow_run.json`` ({run_id, experiment_id,
tracking_uri}) so that evaluate can log into the same run with :func:`resume_run`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from nirgan.config import ServiceError
from nirgan.io import write_json

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


class TrackingUnavailable(ServiceError):
    """The tracking store could not be reached; the message is one line naming it."""


class RunTerminated(BaseException):
    """SIGTERM during a run: raised in the main thread so that the run is ended as KILLED."""


def _unavailable(exc: BaseException) -> TrackingUnavailable:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return TrackingUnavailable(f"MLflow tracking store {tracking_uri()} is unreachable or refused the call "
                               f"({type(exc).__name__}: {first}); training stopped, its checkpoints are kept: "
                               "rerun when the server is back to resume")


def repo_root(start: Path | None = None) -> Path:
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "params.yaml").exists() or (d / "dvc.yaml").exists():
            return d
    return start


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
    from mlflow.exceptions import MlflowException
    from mlflow.store.db.utils import _upgrade_db, create_sqlalchemy_engine_with_retry
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    artifacts = str(_sqlite_path(uri).parent / "mlartifacts")  # type: ignore[union-attr]
    try:
        SqlAlchemyStore(uri, artifacts)
    except MlflowException as exc:
        if "out-of-date" not in str(exc) and "outdated" not in str(exc).lower():
            raise
        log.info("upgrading the MLflow schema of %s", uri)
        _upgrade_db(create_sqlalchemy_engine_with_retry(uri))


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


def _experiment_id(client: Any, uri: str, task: str = "nir") -> str:
    name = experiment_name(task)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    db = _sqlite_path(uri)
    location = (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another process created it in between
        return client.get_experiment_by_name(name).experiment_id


def run_name(default: str) -> str:
    """The DVC experiment's name (``DVC_EXP_NAME``: set by ``dvc exp run`` and by the train-nir
    flow) so that runs are found by the experiment they belong to; else ``default``."""
    return os.environ.get("DVC_EXP_NAME") or default


@contextlib.contextmanager
def start_run(
    config: Mapping[str, Any],
    run_name: str | None = None,
    run_id: str | None = None,
    system_metrics: bool = True,
    tags: Mapping[str, str] | None = None,
    task: str = "nir",
) -> Iterator[Any]:
    """Start (or, with ``run_id``, continue) a run with params and tags in the experiment of
    ``task`` (:func:`experiment_name`); yields the active run.

    Continuing a run after a resume does not log params again (MLflow refuses to change a
    param), so a resumed run keeps the params it started with. The run ends FINISHED, FAILED
    on an exception, KILLED on SIGTERM or Ctrl-C (see :func:`_ending`).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    try:
        uri = ensure_store()
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        if run_id is not None:
            try:
                client.get_run(run_id)
            except Exception as exc:  # noqa: BLE001 - a checkpoint from another store: start afresh
                if _is_connection_error(exc):
                    raise
                log.warning("MLflow run %s is not in %s; starting a new run", run_id, uri)
                run_id = None
        exp_id = _experiment_id(client, uri, task)
        run = mlflow.start_run(run_id=run_id, experiment_id=exp_id, run_name=run_name,
                               log_system_metrics=system_metrics)
    except Exception as exc:  # noqa: BLE001
        raise _unavailable(exc) from exc
    with _ending(run):
        if run_id is None:
            params = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else repr(v))
                      for k, v in flatten(config).items()}
            mlflow.log_params(params)
        mlflow.set_tags({**run_tags(), **dict(tags or {})})
        yield run


def _is_connection_error(exc: BaseException) -> bool:
    import requests

    text = str(exc)
    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)) or \
        "Max retries exceeded" in text or "Connection refused" in text


@contextlib.contextmanager
def _ending(run: Any) -> Iterator[None]:
    """End ``run`` FINISHED, FAILED (an exception) or KILLED (SIGTERM, Ctrl-C, SystemExit).

    SIGTERM (a stopped worker or task) is turned into :class:`RunTerminated` in the main thread,
    so the run is ended rather than left RUNNING. When the server is down the end call fails
    fast; the run is then ended as KILLED by the next start (:func:`end_stale_run`).
    """
    import mlflow

    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_term(signum: int, frame: Any) -> None:
            raise RunTerminated(f"SIGTERM during MLflow run {run.info.run_id}")

        previous = signal.signal(signal.SIGTERM, on_term)
    status = "FINISHED"
    try:
        yield
    except (RunTerminated, KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        try:
            mlflow.end_run(status)
        except Exception as exc:  # noqa: BLE001 - the server is down: end it at the next start
            log.warning("could not end MLflow run %s as %s (%s); the next start ends it",
                        run.info.run_id, status, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            if status == "FINISHED":
                raise _unavailable(exc) from exc


def end_stale_run(run_id: str | None, status: str = "KILLED", uri: str | None = None, reason: str = "") -> bool:
    """End run ``run_id`` as ``status`` if it is still RUNNING (its process died: kill -9, a lost
    worker, a server that was down when it failed). Returns whether it was ended. Never raises:
    this is cleanup."""
    if not run_id:
        return False
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(ensure_store(uri))
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        if reason:
            client.set_tag(run_id, "ended_by", reason[:5000])
        client.set_terminated(run_id, status)
        log.warning("MLflow run %s was still RUNNING: ended as %s (%s)", run_id, status, reason or "-")
        return True
    except Exception as exc:  # noqa: BLE001
        log.warning("could not end stale MLflow run %s: %s", run_id, str(exc).splitlines()[0][:200] if str(exc) else exc)
        return False


def write_run_info(path: Path, run: Any) -> None:
    write_json(path, {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "tracking_uri": ensure_store(),
    })


def read_run_info(path: Path) -> dict[str, str] | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


@contextlib.contextmanager
def resume_run(info_path: Path) -> Iterator[Any]:
    """Log into the run that wrote ``info_path`` (models/mlflow_run.json), e.g. from evaluate."""
    import mlflow

    info = read_run_info(info_path)
    if info is None:
        raise FileNotFoundError(f"{info_path}: no MLflow run recorded (did train run?)")
    mlflow.set_tracking_uri(ensure_store(info["tracking_uri"]))
    try:
        run = mlflow.start_run(run_id=info["run_id"])
    except Exception as exc:  # noqa: BLE001
        raise _unavailable(exc) from exc
    with _ending(run):
        yield run


# ------------------------------------------------------------------- logging into the run
# Every MLflow call of the pipeline goes through this module: the trainer and evaluate
# import these functions, never mlflow itself.
def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import mlflow

    try:
        mlflow.log_metrics(dict(metrics), step=step)
    except Exception as exc:  # noqa: BLE001
        raise _unavailable(exc) from exc


def log_artifact(path: Path, artifact_path: str) -> None:
    import mlflow

    try:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
    except Exception as exc:  # noqa: BLE001
        raise _unavailable(exc) from exc


def log_sample_grid(path: Path, epoch: int, step: int) -> None:
    """Log one epoch's sample grid so that runs compare image by image.

    Twice: as an image series (``mlflow.log_image`` key ``samples``, step = training step; the
    run page's image slider), and as ``samples/epoch_XXX.png``, a path shared by every run that
    reached that epoch, so the compare page lists it among the common artifacts.
    """
    import mlflow
    from PIL import Image

    try:
        with Image.open(path) as image:
            mlflow.log_image(image.copy(), key="samples", step=step)
        with tempfile.TemporaryDirectory() as tmp:
            fixed = Path(tmp) / f"epoch_{epoch:03d}.png"
            shutil.copyfile(path, fixed)
            mlflow.log_artifact(str(fixed), artifact_path="samples")
    except Exception as exc:  # noqa: BLE001
        raise _unavailable(exc) from exc


def set_tag(key: str, value: str) -> None:
    import mlflow

    mlflow.set_tag(key, value)


def log_generator_model(sampler: Any, inputs: Mapping[str, Any], image_size: int) -> str:
    """Log the sampler (G with L folded in) and register it as ``REGISTERED_MODEL``; returns the format.

    ``inputs`` maps the forward's argument names to float32 example arrays (batch first).
    Preferred format is MLflow 3's default ``pt2`` (torch.export; loadable without pickle),
    traced from the input example; if export fails on some op, the pickle format is used and
    the fallback is logged and tagged (``model_format``).
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    specs = [TensorSpec(np.dtype(np.float32), (-1, *a.shape[1:]), name) for name, a in inputs.items()]
    signature = ModelSignature(inputs=Schema(specs), outputs=Schema(
        [TensorSpec(np.dtype(np.float32), (-1, 1, image_size, image_size), "image")]))
    pip = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"]
    # Not registered here: a version is registered only from a run whose training finished and
    # whose evaluation succeeded (:func:`log_evaluation`), never from a run that later crashes.
    common = dict(name="generator", signature=signature, pip_requirements=pip)
    try:
        info = mlflow.pytorch.log_model(sampler, input_example=tuple(inputs.values()), serialization_format="pt2",
                                        **common)
        fmt = "pt2"
    except Exception as exc:  # noqa: BLE001 - any export failure falls back to pickle, loudly
        log.warning("pt2 export of the generator failed (%s: %s); logging it in the pickle format instead",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        info = mlflow.pytorch.log_model(sampler, serialization_format="pickle", **common)
        fmt = "pickle"
    mlflow.set_tags({"model_format": fmt, GENERATOR_URI_TAG: info.model_uri})
    return fmt


def log_evaluation(info_path: Path, metrics: Mapping[str, Any], plots_dir: Path, metrics_path: Path,
                   task: str = "nir") -> str | None:
    """Log evaluate's figures into the training run named by ``info_path`` (models/mlflow_run.json):
    numbers as ``eval.<key>`` metrics, strings and booleans as tags, plots and the metrics file
    as artifacts; then, the run being FINISHED, register the generator train logged (if it
    did) as a version of ``REGISTERED_MODELS[task]``. None (and a warning) when train logged no run."""
    import math

    import mlflow

    if not Path(info_path).exists():
        log.warning("evaluate: %s is missing; metrics are not logged to MLflow", info_path)
        return None
    with resume_run(info_path) as run:
        numbers = {f"eval.{k}": float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        mlflow.log_metrics(numbers)
        mlflow.set_tags({f"eval.{k}": str(v)[:5000] for k, v in metrics.items() if isinstance(v, (str, bool))})
        mlflow.log_artifacts(str(plots_dir), artifact_path="evaluate")
        mlflow.log_artifact(str(metrics_path), artifact_path="evaluate")
        run_id = run.info.run_id
    register_generator(run_id, task)
    return run_id


def register_generator(run_id: str, task: str = "nir") -> str | None:
    """Register the generator logged by run ``run_id`` (as ``REGISTERED_MODELS[task]``) if the run
    FINISHED; returns the version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    run = MlflowClient(ensure_store()).get_run(run_id)
    uri = run.data.tags.get(GENERATOR_URI_TAG)
    if uri is None:
        return None
    if run.info.status != "FINISHED":
        log.warning("MLflow run %s is %s: its generator is not registered", run_id, run.info.status)
        return None
    return mlflow.register_model(uri, REGISTERED_MODELS[task]).version
