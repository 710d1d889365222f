"""One MLflow run per training, tagged with where it came from, and what is logged into it.

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
import json
import logging
import shutil
import signal
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from nirgan.io import file_sha256, write_json
from nirgan.tracking.store import (
    GENERATOR_URI_TAG,
    TRAINING_STOPPED,
    _experiment_id,
    _is_connection_error,
    _unavailable,
    ensure_store,
    flatten,
    run_tags,
)

log = logging.getLogger("nirgan.tracking")


class RunTerminated(BaseException):
    """SIGTERM during a run: raised in the main thread so that the run is ended as KILLED."""


@contextlib.contextmanager
def start_run(
    config: Mapping[str, Any],
    run_name: str | None = None,
    run_id: str | None = None,
    system_metrics: bool = True,
    tags: Mapping[str, str] | None = None,
    consequence: str = TRAINING_STOPPED,
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
        raise _unavailable(exc, consequence) from exc
    with _ending(run, consequence):
        if run_id is None:
            params = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else repr(v))
                      for k, v in flatten(config).items()}
            mlflow.log_params(params)
        mlflow.set_tags({**run_tags(), **dict(tags or {})})
        yield run



@contextlib.contextmanager
def _ending(run: Any, consequence: str = TRAINING_STOPPED) -> Iterator[None]:
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
                raise _unavailable(exc, consequence) from exc


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


# What a RUNNING MLflow run becomes when the Prefect flow run it belongs to is over.
ENDED_WITH_FLOW = {"COMPLETED": "FAILED", "FAILED": "FAILED", "CRASHED": "KILLED", "CANCELLED": "KILLED"}


def running_runs_by_flow_run(uri: str | None = None) -> dict[str, list[str]]:
    """The RUNNING runs of every experiment that carry a ``prefect_flow_run_id`` tag, by that id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ensure_store(uri))
    experiments = [e.experiment_id for e in client.search_experiments()]
    found: dict[str, list[str]] = {}
    if experiments:
        for run in client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=5000):
            flow_run = run.data.tags.get("prefect_flow_run_id")
            if flow_run:
                found.setdefault(flow_run, []).append(run.info.run_id)
    return found


def reconcile_runs(flow_states: Callable[[list[str]], Mapping[str, str]], uri: str | None = None) -> list[str]:
    """End the RUNNING runs whose Prefect flow run is over, and tag why (``ended_by``).

    A run stays RUNNING when its process died with its flow run (a killed worker) or could not
    end it (the tracking server was down when it failed); a retried stage can leave its first
    attempt's run so beside the second. ``flow_states`` maps flow run ids to Prefect state types
    (COMPLETED, FAILED, CRASHED, ...); a run of a flow run it does not know, or that still runs,
    is left alone (it may be running on another machine). A finished flow's leftover run ends
    FAILED, a crashed or cancelled one's KILLED (:data:`ENDED_WITH_FLOW`). Returns the ended
    run ids. Never raises: this is cleanup, done again at the next start.
    """
    try:
        by_flow_run = running_runs_by_flow_run(uri)
        states = dict(flow_states(sorted(by_flow_run))) if by_flow_run else {}
    except Exception as exc:  # noqa: BLE001
        log.warning("could not look for stale MLflow runs: %s", str(exc).splitlines()[0][:200] if str(exc) else exc)
        return []
    ended = []
    for flow_run, run_ids in sorted(by_flow_run.items()):
        state = states.get(flow_run)
        if state not in ENDED_WITH_FLOW:
            continue
        reason = f"still RUNNING when its Prefect flow run {flow_run} was {state}"
        ended += [r for r in run_ids if end_stale_run(r, ENDED_WITH_FLOW[state], uri, reason=reason)]
    return ended


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
    run page's image slider), and as ``samples_epoch_XXX.png`` at the artifact root, a path
    shared by every run that reached that epoch: MLflow's compare page looks for common
    artifacts at the root only (in a ``samples/`` folder it said "No common artifacts to
    display"), and there it shows the grids of the compared runs side by side.
    """
    import mlflow
    from PIL import Image

    try:
        with Image.open(path) as image:
            mlflow.log_image(image.copy(), key="samples", step=step)
        with tempfile.TemporaryDirectory() as tmp:
            fixed = Path(tmp) / f"samples_epoch_{epoch:03d}.png"
            shutil.copyfile(path, fixed)
            mlflow.log_artifact(str(fixed))
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
        with warnings.catch_warnings():
            # torch.export's archive writer rebuilds constants that share storage from their slices
            # and says so in every run; tests/test_train.py checks the served model computes what
            # generator.pt does; the sampler is on the CPU here, where the warning says it is safe.
            warnings.filterwarnings("ignore", message="No complete tensor found in the group")
            info = mlflow.pytorch.log_model(sampler, input_example=tuple(inputs.values()),
                                            serialization_format="pt2", **common)
        fmt = "pt2"
    except Exception as exc:  # noqa: BLE001 - any export failure falls back to pickle, loudly
        log.warning("pt2 export of the generator failed (%s: %s); logging it in the pickle format instead",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        info = mlflow.pytorch.log_model(sampler, serialization_format="pickle", **common)
        fmt = "pickle"
    mlflow.set_tags({"model_format": fmt, GENERATOR_URI_TAG: info.model_uri})
    return fmt


MODEL_FILES = "files"  # the run artifact folder of the model files generate fetches (fetch_model)


def file_digest_tag(name: str) -> str:
    return f"{MODEL_FILES}.{name}.sha256"


def log_model_files(paths: list[Path]) -> None:
    """Log model files (generator.pt, encoder.pt, label_estimator.pt) as they are, under
    ``files/`` of the active run, each with its sha256 as a tag so that a download is checked
    (:func:`nirgan.tracking.registry.fetch_model`). Missing files are skipped."""
    import mlflow

    try:
        for path in map(Path, paths):
            if path.is_file():
                mlflow.log_artifact(str(path), artifact_path=MODEL_FILES)
                mlflow.set_tag(file_digest_tag(path.name), file_sha256(path))
    except Exception as exc:  # noqa: BLE001
        raise _unavailable(exc) from exc
