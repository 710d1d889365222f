"""What :func:`nirgan.generation.finalize.finalize` writes besides labels.parquet: the dataset card
(dataset.json), the contact sheet and the requested-vs-estimated label histograms."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nirgan.config import GenerateConfig
from nirgan.io import atomic_file, file_sha256
from nirgan.labels import LABELS


def dataset_card(spec: GenerateConfig, model: dict, shards: int, counts: dict, glasses: int,
                 mean_error: dict[str, float | None] | None, unknown: int = 0, *, precision: str,
                 table_rows: dict | None = None) -> dict:
    """dataset.json: the model (name, version, run id), git commit, spec, the precision that ran
    (``spec.precision`` where native, else fp32), counts and the model's eval metrics (only those
    measured on this very generator: :func:`nirgan.stages.generate.resolve_model` checks);
    ``mean_error`` None when the model has no label estimator (a label None when no image had it
    known); ``unknown``: images whose labels are unknown (a folder rig without them);
    ``table_rows``: {table, rows, used, unused} of a labels table or folder rig, else absent."""
    from nirgan.tracking import git_commit

    n = counts["images"]
    metrics = model.get("metrics")
    return {
        "format": "nirgan labelled NIR dataset v1",
        "model": {"name": model.get("name"), "version": model.get("version"), "run_id": model.get("run_id"),
                  "generator_sha256": file_sha256(model["generator"])},
        "git_commit": git_commit(),
        "spec": spec.model_dump(mode="json"),
        "precision": precision,
        "counts": {**counts, "shards": shards, "attempts": n + counts["dropped"],
                   "glasses_fraction": glasses / (n - unknown) if n > unknown else "unknown"},
        "labels": ({"known": "all", "source": _label_source(spec)} if not unknown else
                   {"known": "none" if unknown == n else f"{n - unknown} of {n} images", "unknown_images": unknown,
                    "source": _label_source(spec),
                    "note": "unknown labels are null in labels.parquet (not zero): these images were generated from the "
                            "rig's renders alone and nobody knows their pose, gaze or glasses"}),
        "label_check": ({"estimator": "label_estimator.pt (the baselines stage's pose/gaze instrument)",
                         "threshold_deg": spec.max_label_error_deg, "mean_abs_error_deg": mean_error}
                        if mean_error is not None else
                        {"estimator": "unavailable",
                         "reason": model.get("label_estimator_reason") or "the model has no label_estimator.pt"}),
        **({"table_rows": table_rows} if table_rows is not None else {}),
        "eval_metrics": metrics if metrics else "unavailable",
        **({} if metrics else {"eval_metrics_reason": model.get("metrics_reason", "the model carries no eval metrics")}),
        "layout": {"images": "images/<shard:05d>/<index:08d>.png (8-bit grey)", "labels": "labels.parquet",
                   "shards": "shards/<shard:05d>.parquet"},
    }


def _label_source(spec: GenerateConfig) -> str:
    if spec.rig == "folder":
        return (f"the folder rig's table {spec.rig_labels}" if spec.rig_labels else
                f"unknown: the folder rig {spec.rig_path} has no labels table (generate.rig_labels)")
    return f"requested from the built-in rig ({'generate.labels_table' if spec.labels_table else 'the ranges'})"


def contact_sheet(files: list[Path], size: int, path: Path, side: int = 8) -> None:
    """Up to side x side images in a grid, row by row."""
    import cv2

    tiles = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files[: side * side]]
    rows = -(-len(tiles) // side)
    sheet = np.zeros((rows * size, side * size), np.uint8)
    for k, tile in enumerate(tiles):
        sheet[(k // side) * size : (k // side + 1) * size, (k % side) * size : (k % side + 1) * size] = tile
    with atomic_file(path) as tmp:
        tmp.write_bytes(cv2.imencode(".png", sheet)[1].tobytes())


def label_distributions(hist: dict, bins: dict, glasses_requested: float, glasses: float, path: Path) -> None:
    """One panel per label: requested and estimated histograms (counts over ``bins``); one bar pair
    for the glasses fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LABELS) + 1, figsize=(3.2 * (len(LABELS) + 1), 3))
    for ax, c in zip(axes, LABELS):
        ax.stairs(hist["requested"][c], bins[c], label="requested", color="tab:blue")
        if hist["estimated"][c].sum():
            ax.stairs(hist["estimated"][c], bins[c], label="estimated", color="tab:orange")
        ax.set_title(c)
        ax.set_xlabel("degrees")
    axes[0].legend(fontsize=7)
    axes[-1].bar(["requested", "dataset"], [glasses_requested, glasses], color=["tab:blue", "tab:green"])
    axes[-1].set_ylim(0, 1)
    axes[-1].set_title("glasses fraction")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
