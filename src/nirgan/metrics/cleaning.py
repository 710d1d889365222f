"""Precision and recall of data cleaning against the twin's planted disturbances.

Ground truth: ``data/raw/disturbances.parquet`` (twin only), one row per frame with
``disturbance`` in {none, occlusion, blur, overexposure, underexposure, misaligned}. Without
that table (folder or video data) every key here is ``unavailable`` with the reason.

How pairs are counted (keys ``clean_*``):

- The universe is every pair of the ground-truth table. A pair is REMOVED when it is not in
  the clean stage's kept manifest, whatever removed it: rejected by collect, by detect (no face,
  low probability, ...), or an outlier of the clean stage. This is the pipeline-level figure the
  issue asks for (``clean_precision`` / ``clean_recall``, over ALL planted disturbances).
- Per rule (``clean_iqr_*``, ``clean_misalignment_*``) only the pairs that reached the clean
  stage (rows of the crops manifest) count, so a rule is not credited for detect's work.
  A rule's precision is the share of its hits that carry any planted disturbance (removing a
  misaligned pair for its odd brightness is still a correct removal). Its recall is over the
  disturbances it is meant to catch: image statistics for IQR (occlusion, blur, over- and
  underexposure), ``misaligned`` for the misalignment rule; ``clean_iqr_recall_all`` is the IQR
  recall over every disturbance, which shows what the thesis noted: IQR on means misses
  misalignment.
- ``clean_recall_<type>`` is the pipeline-level recall of each disturbance type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from nirgan.io import read_table

IQR_RULES = ("iqr_target", "iqr_source")
IQR_TYPES = ("occlusion", "blur", "overexposure", "underexposure")
ALL_TYPES = (*IQR_TYPES, "misaligned")


def _pr(flagged: set[str], relevant: set[str], positives: set[str]) -> tuple[float, float]:
    """Precision of ``flagged`` against ``positives``; recall of ``relevant`` by ``flagged``."""
    precision = len(flagged & positives) / len(flagged) if flagged else float("nan")
    recall = len(flagged & relevant) / len(relevant) if relevant else float("nan")
    return precision, recall


def cleaning_quality(
    truth: pd.DataFrame, crops: pd.DataFrame, kept: pd.DataFrame, outliers: pd.DataFrame
) -> dict[str, Any]:
    """The ``clean_*`` keys from the ground truth and the stage outputs (see module docstring)."""
    kind = dict(zip(truth["pair_id"], truth["disturbance"], strict=True))
    universe = set(kind)
    planted = {p for p, d in kind.items() if d != "none"}
    removed = universe - set(kept["pair_id"])
    reached = set(crops["pair_id"]) & universe

    out: dict[str, Any] = {
        "clean_pairs": len(universe),
        "clean_planted": len(planted),
        "clean_removed": len(removed),
        "clean_removed_before_clean": len(universe - reached),
    }
    out["clean_precision"], out["clean_recall"] = _pr(removed, planted, planted)
    for t in ALL_TYPES:
        of_type = {p for p, d in kind.items() if d == t}
        out[f"clean_recall_{t}"] = len(of_type & removed) / len(of_type) if of_type else float("nan")
        out[f"clean_planted_{t}"] = len(of_type)

    hits = outliers.groupby("rule")["pair_id"].apply(set).to_dict() if len(outliers) else {}
    iqr = set().union(*(hits.get(r, set()) for r in IQR_RULES)) & reached
    mis = hits.get("misalignment", set()) & reached
    planted_reached = planted & reached
    iqr_relevant = {p for p in planted_reached if kind[p] in IQR_TYPES}
    mis_relevant = {p for p in planted_reached if kind[p] == "misaligned"}
    out["clean_iqr_flagged"] = len(iqr)
    out["clean_iqr_precision"], out["clean_iqr_recall"] = _pr(iqr, iqr_relevant, planted)
    out["clean_iqr_recall_all"] = _pr(iqr, planted_reached, planted)[1]
    out["clean_misalignment_flagged"] = len(mis)
    out["clean_misalignment_precision"], out["clean_misalignment_recall"] = _pr(mis, mis_relevant, planted)
    both = iqr | mis
    out["clean_rules_precision"], out["clean_rules_recall"] = _pr(both, planted_reached, planted)
    return out


def evaluate_cleaning(raw_dir: Path, crops_dir: Path, clean_dir: Path) -> dict[str, Any]:
    truth_path = Path(raw_dir) / "disturbances.parquet"
    if not truth_path.exists():
        return {"clean_precision": "unavailable",
                "clean_reason": f"{truth_path} does not exist: no planted-disturbance ground truth (not twin data)"}
    truth = read_table(truth_path)
    missing = {"pair_id", "disturbance"} - set(truth.columns)
    if missing:
        raise KeyError(f"{truth_path}: missing columns {sorted(missing)}")
    return cleaning_quality(
        truth,
        read_table(Path(crops_dir) / "manifest.parquet"),
        read_table(Path(clean_dir) / "manifest.parquet"),
        read_table(Path(clean_dir) / "outliers.parquet"),
    )
