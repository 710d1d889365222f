"""The flows' markdown artifacts: a pipeline run's experiment, MLflow run and metrics; a generated dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _mlflow_link(info: dict[str, Any]) -> str:
    uri = str(info.get("tracking_uri", ""))
    run = f"#/experiments/{info.get('experiment_id')}/runs/{info.get('run_id')}"
    if uri.startswith(("http://", "https://")):
        url = f"{uri.rstrip('/')}/{run}"
        return f"[{info.get('run_id')}]({url})"
    return f"run `{info.get('run_id')}` in `{uri}` (open with `mlflow ui --backend-store-uri {uri}`, then {run})"


def eval_markdown(flow: str, experiment: str, baseline: str, overrides: dict[str, Any], metrics_path: Path,
                  run_path: Path, stages: list[dict]) -> str:
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    lines = [
        f"# {flow}: `{experiment}`",
        "",
        f"DVC experiment `{experiment}` on baseline `{baseline[:10]}`; overrides "
        f"`{json.dumps(overrides, sort_keys=True)}`.",
        "",
    ]
    if run_path.exists():
        lines += [f"MLflow: {_mlflow_link(json.loads(run_path.read_text()))}", ""]
    else:
        lines += [f"MLflow: no `{run_path.name}` was written.", ""]
    lines += ["| metric | value |", "|---|---|"]
    for key in sorted(metrics):
        value = metrics[key]
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    if not metrics:
        lines.append(f"| ({metrics_path.name} missing) | |")
    lines += ["", "| stage | how | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['how']} | {s['seconds']} |" for s in stages]
    return "\n".join(lines) + "\n"


def dataset_markdown(result: dict[str, Any], tracking_uri: str) -> str:
    """The generate-nir run's artifact: where the dataset is, its model, counts and time per phase."""
    model, counts = result["model"], result["counts"]
    lines = [
        f"# generate-nir: {counts.get('images')} images",
        "",
        f"Dataset: `{result['out_dir']}` (`labels.parquet`, `dataset.json`, `images/`).",
        f"Model: `{model.get('name')}` version `{model.get('version')}` (MLflow run `{model.get('run_id')}`).",
        f"Recorded as MLflow run `{result['mlflow_run_id']}` in `{tracking_uri}`.",
        "",
        "| count | value |", "|---|---|",
        *[f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in counts.items()],
        "",
        "| phase (summed over shards) | seconds |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in result["phase_seconds"].items()],
        f"| flow, wall | {result['seconds']} |",
    ]
    return "\n".join(lines) + "\n"
