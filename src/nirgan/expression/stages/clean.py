"""Stage clean of the expression pipeline: the thesis's IQR rule (3.1.4) on labelled face crops.

Images only, so one rule, ``iqr_image`` (the same IQR
rule on each crop's mean), per group: the subject when it is known, else the label (a set
without identities still has one lighting per expression folder more often than one overall).
``manifest.parquet`` adds ``image_mean``; ``outliers.parquet`` is ``sample_id, group, rule,
value, lower, upper, reason`` (``rule`` ``iqr_image`` or ``unreadable``).
Every input row is either kept or has a row in ``outliers.parquet``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from nirgan.config import Config, require_task
from nirgan.io import atomic_dir, read_image, read_table, stage_log, write_table
from nirgan.iqr import iqr_outliers

log = logging.getLogger("nirgan.clean")

OUTLIER_COLUMNS = ["sample_id", "group", "rule", "value", "lower", "upper", "reason"]


def _image_mean(path: Path) -> tuple[float, str]:
    try:
        return float(read_image(path, channels=1).mean(dtype=np.float64)), ""
    except (ValueError, OSError) as exc:
        return float("nan"), str(exc)


def expression_groups(df: pd.DataFrame) -> pd.Series:
    """The IQR group of each row: its subject when known, else its label."""
    return pd.Series(np.where(df["subject"] != "", "subject " + df["subject"], "label " + df["label"]), index=df.index)


def run(cfg: Config, crops_dir: Path, out_dir: Path) -> dict[str, Any]:
    require_task(cfg, "expression", "clean")
    c = cfg.clean
    crops = read_table(crops_dir / "manifest.parquet")
    missing = sorted({"sample_id", "subject", "label", "image_path"} - set(crops.columns))
    if missing:
        raise KeyError(f"{crops_dir / 'manifest.parquet'}: missing columns {missing}")
    with stage_log("clean", images=len(crops)) as counts:
        measured = [_image_mean(crops_dir / p) for p in tqdm(crops["image_path"], desc="clean", disable=None)]
        df = crops.copy()
        df["image_mean"] = [m for m, _ in measured]
        groups = expression_groups(df)
        rows: list[dict[str, Any]] = []
        nan = float("nan")
        for i in np.flatnonzero(df["image_mean"].isna().to_numpy()):
            rows.append(dict(sample_id=df["sample_id"].iloc[i], group=groups.iloc[i], rule="unreadable",
                             value=nan, lower=nan, upper=nan, reason=measured[i][1]))
        readable = df[df["image_mean"].notna()]
        for group, part in readable.groupby(groups[readable.index], sort=True):
            if len(part) < c.min_group_size:
                log.info("clean: group %s has %d images (< clean.min_group_size=%d): kept whole", group, len(part), c.min_group_size)
                continue
            values = part["image_mean"].to_numpy(np.float64)
            mask, lower, upper = iqr_outliers(values, c.iqr_k)
            for sid, value in zip(part["sample_id"][mask], values[mask], strict=True):
                side = "below Q1" if value < lower else "above Q3"
                rows.append(dict(sample_id=sid, group=group, rule="iqr_image", value=value, lower=lower, upper=upper,
                                 reason=f"image mean {value:.2f} is more than {c.iqr_k:g} IQR {side} in {group} "
                                 f"(bounds {lower:.2f}..{upper:.2f})"))
        outliers = pd.DataFrame(rows, columns=OUTLIER_COLUMNS).astype(
            dict.fromkeys(OUTLIER_COLUMNS, "object") | dict.fromkeys(("value", "lower", "upper"), "float64")
        )
        kept = df[~df["sample_id"].isin(outliers["sample_id"])].reset_index(drop=True)
        with atomic_dir(out_dir) as tmp:
            write_table(kept, tmp / "manifest.parquet")
            write_table(outliers, tmp / "outliers.parquet")
        counts.update(kept=len(kept), removed=len(df) - len(kept), groups=int(groups.nunique()),
                      unreadable=int((outliers["rule"] == "unreadable").sum()))
    return dict(counts)
