"""Every MLflow call of nirgan goes through this package; stages, the trainer, the CLI and the
flows import ``nirgan.tracking``, never mlflow itself.

- :mod:`~nirgan.tracking.store`: where the tracking store is (``MLFLOW_TRACKING_URI``, else
  ``sqlite:///<repo>/mlflow.db``), creating it under a lock, and how an unreachable one fails
  (one line, :class:`TrackingUnavailable`, exit code 3, within a minute);
- :mod:`~nirgan.tracking.runs`: one run per training, tagged with where it came from, and what
  is logged into it (metrics, sample grids, the generator as an MLflow model, the model files);
- :mod:`~nirgan.tracking.registry`: evaluate's logging and registration (alias ``candidate``),
  ``promote`` (alias ``champion``), ``fetch_model`` for generate, and ``log_dataset``.
"""

from nirgan.tracking.registry import (
    CANDIDATE,
    CHAMPION,
    LABEL_ESTIMATOR,
    alias_version,
    fetch_model,
    log_dataset,
    log_evaluation,
    parse_ref,
    promote,
    register_generator,
    set_alias,
)
from nirgan.tracking.runs import (
    MODEL_FILES,
    RunTerminated,
    end_stale_run,
    log_artifact,
    log_generator_model,
    log_metrics,
    log_model_files,
    log_sample_grid,
    read_run_info,
    reconcile_runs,
    resume_run,
    set_tag,
    start_run,
    write_run_info,
)
from nirgan.tracking.store import (
    EXPERIMENT,
    EXPERIMENTS,
    GENERATOR_URI_TAG,
    HTTP_DEFAULTS,
    REGISTERED_MODEL,
    REGISTERED_MODELS,
    TrackingUnavailable,
    ensure_store,
    experiment_name,
    flatten,
    git_commit,
    missing_store,
    repo_root,
    run_name,
    run_tags,
    tracking_uri,
)

__all__ = [
    "CANDIDATE", "CHAMPION", "EXPERIMENT", "EXPERIMENTS", "GENERATOR_URI_TAG", "HTTP_DEFAULTS", "LABEL_ESTIMATOR",
    "MODEL_FILES", "REGISTERED_MODEL", "REGISTERED_MODELS", "RunTerminated", "TrackingUnavailable", "alias_version", "end_stale_run", "ensure_store",
    "experiment_name", "fetch_model", "flatten", "git_commit", "log_artifact", "log_dataset", "log_evaluation",
    "log_generator_model", "log_metrics", "log_model_files", "log_sample_grid", "missing_store", "parse_ref", "promote",
    "read_run_info", "reconcile_runs", "register_generator", "repo_root", "resume_run", "run_name", "run_tags", "set_alias",
    "set_tag", "start_run", "tracking_uri", "write_run_info",
]
