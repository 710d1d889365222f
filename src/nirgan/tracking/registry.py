"""The model registry and what consumes it: evaluate registers a version and marks it
``candidate``, ``nirgan promote`` moves ``champion``, generate fetches a version's files and
logs the dataset it made.

Aliases, not stages (deprecated since MLflow 2.9): a version is named by
``models:/nirgan-generator@<alias>`` or ``models:/nirgan-generator/<version>``. What generate
downloads are the plain model files train and evaluate logged under the run's ``files/``
(generator.pt, encoder.pt, label_estimator.pt, see :func:`nirgan.tracking.runs.log_model_files`),
checked against the sha256 tags logged with them; the registered MLflow model itself (the
sampler in pt2 format) is for MLflow's own serving.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nirgan.config import ConfigError, ServiceError
from nirgan.io import file_sha256
from nirgan.tracking.runs import MODEL_FILES, file_digest_tag, log_model_files, resume_run, start_run
from nirgan.tracking.store import (
    GENERATOR_URI_TAG,
    REGISTERED_MODEL,
    REGISTERED_MODELS,
    _is_connection_error,
    _unavailable,
    ensure_store,
)

log = logging.getLogger("nirgan.tracking")

CANDIDATE = "candidate"  # set by evaluate on the version it registered
CHAMPION = "champion"    # moved by `nirgan promote`
MODEL_KEY = "generate.model"  # the params key a model reference comes from, named in its errors
LABEL_ESTIMATOR = "label_estimator.pt"  # the baselines stage's pose/gaze instrument, beside mlflow_run.json
_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+))$")
_NOT_FETCHED = "the model was not fetched; rerun when the server is back"
_NOT_RECORDED = "the dataset is written but not recorded in MLflow"


def log_evaluation(info_path: Path, metrics: Mapping[str, Any], plots_dir: Path, metrics_path: Path,
                   task: str = "nir") -> str | None:
    """Log evaluate's figures into the training run named by ``info_path`` (models/mlflow_run.json):
    numbers as ``eval.<key>`` metrics, strings and booleans as tags, plots and the metrics file
    as artifacts, and ``label_estimator.pt`` (beside ``info_path``, when the baselines stage wrote one)
    under ``files/``; then, the run being FINISHED, register the generator train logged (if it
    did) as a version of ``REGISTERED_MODELS[task]`` and set the alias ``candidate`` on it.
    None (and a warning) when train logged no run."""
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
        log_model_files([Path(info_path).parent / LABEL_ESTIMATOR])
        run_id = run.info.run_id
    version = register_generator(run_id, task)
    if version is not None:
        set_alias(CANDIDATE, version, REGISTERED_MODELS[task])
        log.info("registered %s version %s (run %s) as @%s", REGISTERED_MODELS[task], version, run_id, CANDIDATE)
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
    version = mlflow.register_model(uri, REGISTERED_MODELS[task]).version
    # The registry's version list shows its description and tags, not the run it came from.
    client = MlflowClient(ensure_store())
    client.update_model_version(REGISTERED_MODELS[task], version, description=f"run {run.info.run_name} ({run_id})")
    client.set_model_version_tag(REGISTERED_MODELS[task], version, "run_name", run.info.run_name or run_id)
    return version


# ------------------------------------------------------------------------------- aliases
def _client() -> Any:
    from mlflow.tracking import MlflowClient

    uri = ensure_store()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _call(fn: Any, *args: Any, consequence: str) -> Any:
    """``fn(*args)`` with an unreachable store turned into one line (ServiceError)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - sorted below: the caller names what was not found
        if _is_connection_error(exc):
            raise _unavailable(exc, consequence) from exc
        raise


def _registry_state(client: Any, name: str) -> str:
    """What the registry holds for ``name``, for an error message: its versions and aliases."""
    try:
        model = client.get_registered_model(name)
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    except Exception:  # noqa: BLE001 - only decoration of another error
        return f"no registered model '{name}'"
    aliases = ", ".join(f"@{a} -> {v}" for a, v in sorted(model.aliases.items())) or "none"
    return f"'{name}' has versions {versions or 'none'}, aliases {aliases}"


def _version(client: Any, name: str, alias: str | None, version: str | None, what: str, consequence: str) -> Any:
    """The ModelVersion an alias or number names; ConfigError naming ``what`` when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        if alias is not None:
            return _call(client.get_model_version_by_alias, name, alias, consequence=consequence)
        return _call(client.get_model_version, name, str(version), consequence=consequence)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        missing = f"no alias '{alias}'" if alias is not None else f"no version {version}"
        raise ConfigError(f"{what}: {missing} of registered model '{name}' in {ensure_store()} "
                          f"({_registry_state(client, name)})") from None


def set_alias(alias: str, version: str, name: str = REGISTERED_MODEL) -> None:
    """Point ``alias`` at ``version`` of ``name`` (an alias names one version; setting moves it)."""
    _call(_client().set_registered_model_alias, name, alias, str(version),
          consequence=f"alias @{alias} not set")


def alias_version(alias: str, name: str = REGISTERED_MODEL) -> str | None:
    """The version ``alias`` points at, None when it is unset (or there is no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        return _call(_client().get_model_version_by_alias, name, alias,
                     consequence=f"@{alias} not read, nothing changed").version
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def promote(from_alias: str = CANDIDATE, to_alias: str = CHAMPION, version: str | None = None,
            name: str = REGISTERED_MODEL) -> str:
    """Move ``to_alias`` to ``version``, or (without one) to the version ``from_alias`` points
    at; returns that version. An unknown alias or version is a ConfigError naming it."""
    client = _client()
    what = f"promote --version {version}" if version is not None else f"promote --from {from_alias}"
    target = _version(client, name, None if version is not None else from_alias, version, what,
                      consequence=f"@{to_alias} not moved")
    set_alias(to_alias, target.version, name)
    return str(target.version)


# --------------------------------------------------------------------------- fetch_model
def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> (name, alias, version)."""
    match = _REF.match(ref.strip())
    if match is None:
        raise ConfigError(f"{MODEL_KEY}: {ref!r} is not a registry reference; use "
                          f"models:/{REGISTERED_MODEL}@<alias> or models:/{REGISTERED_MODEL}/<version>")
    return match["name"], match["alias"], match["version"]


def fetch_model(ref: str, dest: Path) -> dict[str, Any]:
    """Download the model files of the registry version ``ref`` names into ``dest``.

    Returns {"generator": Path, "label_estimator": Path | None, "name", "version", "run_id",
    "metrics": the run's ``eval.*`` metrics without the prefix, "metrics_generator_sha256": the
    sha256 of the generator those metrics measured (evaluate's tag ``eval.generator_sha256``;
    None when it predates that tag)}. An unknown model, alias or
    version is a ConfigError naming ``generate.model`` and the ref; a version whose run has no
    ``files/generator.pt`` (logged before train logged the files) too. An unreachable store is
    a ServiceError (exit 3). Each file is checked against the sha256 logged with it and moved
    into ``dest`` only when complete.
    """
    name, alias, version = parse_ref(ref)
    client = _client()
    mv = _version(client, name, alias, version, f"{MODEL_KEY}: {ref}", _NOT_FETCHED)
    run = _call(client.get_run, mv.run_id, consequence=_NOT_FETCHED)
    listed = {Path(f.path).name for f in _call(client.list_artifacts, mv.run_id, MODEL_FILES,
                                               consequence=_NOT_FETCHED)}
    if "generator.pt" not in listed:
        raise ConfigError(f"{MODEL_KEY}: {ref} is version {mv.version} of '{name}', whose run {mv.run_id} has no "
                          f"{MODEL_FILES}/generator.pt (logged before train logged its model files); "
                          "promote a newer version or use a local models folder")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = {key: _download(client, run, f, dest) if f in listed else None
             for key, f in (("generator", "generator.pt"), ("label_estimator", LABEL_ESTIMATOR))}
    metrics = {k.removeprefix("eval."): v for k, v in run.data.metrics.items() if k.startswith("eval.")}
    log.info("fetched %s: version %s of %s (run %s) into %s", ref, mv.version, name, mv.run_id, dest)
    return {**files, "name": name, "version": str(mv.version), "run_id": mv.run_id, "metrics": metrics,
            "metrics_generator_sha256": run.data.tags.get("eval.generator_sha256")}


def _download(client: Any, run: Any, filename: str, dest: Path) -> Path:
    target = dest / filename
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmp:
        got = Path(_call(client.download_artifacts, run.info.run_id, f"{MODEL_FILES}/{filename}", tmp,
                         consequence=_NOT_FETCHED))
        expected = run.data.tags.get(file_digest_tag(filename))
        if expected is not None and file_sha256(got) != expected:
            raise ServiceError(f"{MODEL_FILES}/{filename} of MLflow run {run.info.run_id} downloaded with sha256 "
                               f"{file_sha256(got)}, logged as {expected}: the artifact store returned other bytes")
        os.replace(got, target)
    return target


# ---------------------------------------------------------------------------- datasets
def dataset_run_name(dataset_dir: Path, model: Mapping[str, Any]) -> str:
    """``[<experiment>: ]dataset <folder> from <model> v<version>``: every train-nir run's generate
    stage writes a folder named ``generated``, so the folder alone named them all alike."""
    source = f"{model['name']} v{model['version']}" if model.get("name") and model.get("version") else "a local model"
    experiment = os.environ.get("DVC_EXP_NAME")
    return f"{experiment + ': ' if experiment else ''}dataset {dataset_dir.name} from {source}"


def log_dataset(run_id: str | None, dataset_dir: Path, card: Mapping[str, Any],
                params: Mapping[str, Any] | None = None) -> str:
    """Record a generated dataset in MLflow: a new run ``generate-<dir name>`` in the experiment,
    with ``labels.parquet`` as a dataset input (context ``generated``, source = the dataset
    folder: MLflow keeps the reference and the schema, not the images), the card
    (``dataset.json``) and the contact sheet as artifacts, ``params`` (the generate stage's declared
    params; default: the card's spec) as params, the card's counts
    as metrics, and tags naming the generator: ``generator_run_id`` (``run_id``, the run that
    trained it; None for a local model folder), ``generator_version``, ``generator_name``.
    Returns the new run's id."""
    import mlflow
    import pandas as pd

    dataset_dir = Path(dataset_dir).resolve()
    model = card.get("model") or {}
    tags = {"nirgan.kind": "generated-dataset", "dataset_dir": str(dataset_dir),
            "generator_run_id": str(run_id or model.get("run_id") or "none"),
            "generator_version": str(model.get("version") or "none"),
            "generator_name": str(model.get("name") or "none")}
    labels = pd.read_parquet(dataset_dir / "labels.parquet")
    spec = card.get("spec") if isinstance(card.get("spec"), Mapping) else {}
    counts = {f"count.{k}": float(v) for k, v in (card.get("counts") or {}).items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)}
    with start_run({"generate": spec} if params is None else params, run_name=dataset_run_name(dataset_dir, model), system_metrics=False,
                   tags=tags, consequence=_NOT_RECORDED) as run:
        try:
            # MLflow warns that its local-source class is registered twice, and that integer columns
            # cannot hold NaN at model inference: neither applies to recording a dataset.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
                warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
                dataset = mlflow.data.from_pandas(labels, source=str(dataset_dir), name=dataset_dir.name)
                mlflow.log_input(dataset, context="generated",
                                 tags={"generator_version": tags["generator_version"]})
            if counts:
                mlflow.log_metrics(counts)
            for extra in ("dataset.json", "contact_sheet.png", "label_distributions.png"):
                if (dataset_dir / extra).is_file():
                    mlflow.log_artifact(str(dataset_dir / extra), artifact_path="dataset")
        except Exception as exc:  # noqa: BLE001
            raise _unavailable(exc, _NOT_RECORDED) from exc
        return run.info.run_id
