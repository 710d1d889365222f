"""The train-nir run's markdown artifact: the experiment, its MLflow run and ``metrics/eval.json``."""

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


def eval_markdown(experiment: str, baseline: str, overrides: dict[str, Any], ws: Path, stages: list[dict]) -> str:
    metrics_path, run_path = ws / "metrics" / "eval.json", ws / "models" / "mlflow_run.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    lines = [
        f"# train-nir: `{experiment}`",
        "",
        f"DVC experiment `{experiment}` on baseline `{baseline[:10]}`; overrides "
        f"`{json.dumps(overrides, sort_keys=True)}`.",
        "",
    ]
    if run_path.exists():
        lines += [f"MLflow: {_mlflow_link(json.loads(run_path.read_text()))}", ""]
    else:
        lines += ["MLflow: no `models/mlflow_run.json` was written.", ""]
    lines += ["| metric | value |", "|---|---|"]
    for key in sorted(metrics):
        value = metrics[key]
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    if not metrics:
        lines.append("| (metrics/eval.json missing) | |")
    lines += ["", "| stage | how | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['how']} | {s['seconds']} |" for s in stages]
    return "\n".join(lines) + "\n"
