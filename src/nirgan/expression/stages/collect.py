"""Stage collect of the expression pipeline: labelled grey faces into ``data/raw``.

``expression_twin``, ``label_folders`` and ``fer2013`` read labelled grey faces through
:mod:`nirgan.expression.sources` (which documents the layouts and every reject reason). Outputs:
``images/<sample_id>.png``  uint8 1-channel (copied byte for byte when already an 8-bit grey PNG)
``manifest.parquet``  one row per kept image: ``sample_id``, ``subject`` ("" when unknown),
    ``label`` (the folder name or the label map's name), ``image_path``, ``usage`` (FER2013's
    ``Usage``, else ""), ``sha256`` (of the written file).
``rejects.parquet``  ``path``, ``sample_id``, ``reason``: every input file (and CSV or subject
    table row) that is not kept.
``expression_truth.parquet``, ``preview.png``  expression twin only: what each frame was
    rendered with (strength, controls, pose, camera) and one frame per subject and expression.

Bad input never stops the stage while something is usable: every input file, CSV row or subject
table row is either kept or a row of ``rejects.parquet`` (:mod:`nirgan.safe_read`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from nirgan.config import FER2013_LABELS, CollectConfig, Config, ConfigError, DataError
from nirgan.data_paths import check_data_paths
from nirgan.expression import sources
from nirgan.expression.twin import count_frames, preview_grid
from nirgan.io import atomic_dir, file_sha256, progress, stage_log, write_image, write_table
from nirgan.safe_read import Rejects

COLUMNS = ["sample_id", "subject", "label", "image_path", "usage", "sha256"]


def run(cfg: Config, out_dir: Path, params: Path = Path("params.yaml")) -> dict[str, Any]:
    if not cfg.collect.is_expression:
        raise ConfigError(f"collect.source: {cfg.collect.source!r} is a NIR source; this is the expression "
                          "pipeline's collect (the NIR pipeline runs `nirgan stage collect`)")
    if cfg.collect.source == "expression_twin":
        return _collect(cfg.collect, Path(out_dir))
    try:
        check_data_paths(cfg, params)
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    return _collect(cfg.collect, Path(out_dir), Path(cfg.collect.path))


def _collect(ccfg: CollectConfig, out_dir: Path, root: Path | None = None) -> dict[str, Any]:
    rejects = Rejects("sample_id")
    total = None
    if ccfg.source == "expression_twin":
        samples: Iterable[sources.Sample] = sources.twin_samples(ccfg.expression_twin)
        total = count_frames(ccfg.expression_twin)
    elif ccfg.source == "label_folders":
        samples = sources.label_folder_samples(root, ccfg, rejects)
        total = len(samples)
    else:
        samples = sources.fer2013_samples(root, ccfg.label_map or FER2013_LABELS, rejects)
    with stage_log("collect", source=ccfg.source) as log, atomic_dir(out_dir) as out:
        rows, truth, first, origins = [], [], {}, {}
        for s in progress(samples, total=total, desc=f"collect {ccfg.source}", unit="image"):
            rel = f"images/{s.sample_id}.png"
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(s.image, Path):
                shutil.copyfile(s.image, dest)
            else:
                write_image(dest, s.image)
            rows.append(dict(sample_id=s.sample_id, subject=s.subject, label=s.label, image_path=rel, usage=s.usage,
                             sha256=file_sha256(dest)))
            origins[s.sample_id] = s.origin
            if s.truth:
                truth.append({"sample_id": s.sample_id, **s.truth})
                first.setdefault((s.subject, s.label), s.image)
        rows = _drop_conflicting_labels(rows, origins, out, rejects)
        if not rows:
            reasons = pd.Series([r["reason"] for r in rejects.rows], dtype=object).value_counts().to_dict()
            raise DataError(f"{root or ccfg.source}: no usable image ({len(rejects.rows)} rejected: {reasons})")
        manifest = pd.DataFrame(rows, columns=COLUMNS).astype("object")
        write_table(manifest.sort_values("sample_id", kind="stable").reset_index(drop=True), out / "manifest.parquet")
        write_table(rejects.frame(), out / "rejects.parquet")
        if truth:
            write_table(pd.DataFrame(truth), out / "expression_truth.parquet")
            write_image(out / "preview.png", preview_grid(first, ccfg.expression_twin.expressions))
        log.update(images=len(rows), rejected=len(rejects.rows), labels=int(manifest["label"].nunique()),
                   subjects=len(set(manifest["subject"]) - {""}))
        return dict(log)


def _drop_conflicting_labels(rows: list[dict], origins: dict[str, str], out: Path, rejects: Rejects) -> list[dict]:
    """The same image (the same PNG bytes) under two labels, say a face copied into ``happy/`` and
    ``sad/``: which label is right cannot be told, so every copy is rejected, ``conflicting_labels``.
    Copies under one label stay: split keeps a copy out of the test set when one is in training."""
    labels: dict[str, set[str]] = {}
    for row in rows:
        labels.setdefault(row["sha256"], set()).add(row["label"])
    kept = []
    for row in rows:
        if len(labels[row["sha256"]]) > 1:
            (out / row["image_path"]).unlink()
            rejects.add(origins[row["sample_id"]] or row["sample_id"], row["sample_id"], "conflicting_labels")
        else:
            kept.append(row)
    return kept
