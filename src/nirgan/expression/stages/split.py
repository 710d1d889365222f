"""Stage split of the expression pipeline: train and test rows of the prepared faces.

Test rows are chosen in this order of precedence:
- rows with a FER2013 ``usage`` follow it: ``Training`` trains, ``PublicTest`` and
  ``PrivateTest`` test (there is no validation set downstream);
- the other rows follow ``split.strategy``; with ``subject``, rows whose subject is known are
  split subject-disjoint (:func:`nirgan.splitting.split_rows`), and rows without one (a folder
  set without a subject table) are split at random by image at ``split.test_fraction``
  (seeded), since nothing says which images share a face.
summary.json adds per-label counts in each set and how many rows each rule decided.
A test row whose image ``sha256`` is also in the training set is dropped from the test set and
listed in ``duplicates.parquet`` (:func:`nirgan.splitting.drop_leaks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nirgan.config import Config, DataError, require_task
from nirgan.io import atomic_dir, read_table, stage_log, write_json, write_table
from nirgan.splitting import drop_leaks, split_rows


def choose_test_rows(manifest: pd.DataFrame, strategy: str, test_fraction: float, seed: int) -> tuple[np.ndarray, dict[str, int]]:
    """Boolean mask of the test rows and how many rows each rule decided (module docstring)."""
    usage = manifest["usage"].fillna("").to_numpy(dtype=object) if "usage" in manifest else np.full(len(manifest), "", object)
    subject = manifest["subject"].fillna("").to_numpy(dtype=object)
    test = np.zeros(len(manifest), dtype=bool)
    by_usage = usage != ""
    test[by_usage] = usage[by_usage] != "Training"
    known = ~by_usage & (subject != "") if strategy == "subject" else np.zeros(len(manifest), bool)
    rest = ~by_usage & ~known
    if known.any():
        test[known] = split_rows(manifest[known], "subject", test_fraction, seed)
    if rest.sum() >= 2:
        test[rest] = split_rows(manifest[rest], "random", test_fraction, seed)
    return test, dict(by_usage=int(by_usage.sum()), by_subject=int(known.sum()), at_random=int(rest.sum()))


def run(cfg: Config, prepared_dir: Path, out_dir: Path) -> dict[str, Any]:
    require_task(cfg, "expression", "split")
    s, prepared_dir = cfg.split, Path(prepared_dir)
    manifest = read_table(prepared_dir / "manifest.parquet")
    missing = sorted({"sample_id", "subject", "label", "label_index", "index"} - set(manifest.columns))
    if missing:
        raise DataError(f"{prepared_dir / 'manifest.parquet'}: missing columns {missing}")
    with stage_log("split", images=len(manifest)) as counts:
        test, decided = choose_test_rows(manifest, s.strategy, s.test_fraction, s.seed)
        test, kept, duplicates, dup_summary = drop_leaks(manifest, test, "sha256", "sample_id",
                                                         prepared_dir / "manifest.parquet")
        train_df = manifest[kept & ~test].reset_index(drop=True)
        test_df = manifest[test].reset_index(drop=True)
        if train_df.empty or test_df.empty:
            raise DataError(f"{prepared_dir / 'manifest.parquet'}: the split left an empty set "
                             f"(train {len(train_df)}, test {len(test_df)}; decided {decided})")
        train_subjects = sorted(set(train_df["subject"]) - {""})
        test_subjects = sorted(set(test_df["subject"]) - {""})
        with atomic_dir(out_dir) as tmp:
            write_table(train_df, tmp / "train.parquet")
            write_table(test_df, tmp / "test.parquet")
            write_table(duplicates, tmp / "duplicates.parquet")
            write_json(tmp / "summary.json", dict(
                **dup_summary,
                task="expression",
                strategy=s.strategy,
                seed=s.seed,
                test_fraction_requested=s.test_fraction,
                test_fraction=len(test_df) / (len(train_df) + len(test_df)),
                n_images=len(manifest),
                n_train=len(train_df),
                n_test=len(test_df),
                decided=decided,
                labels_train={str(k): int(v) for k, v in train_df["label"].value_counts().sort_index().items()},
                labels_test={str(k): int(v) for k, v in test_df["label"].value_counts().sort_index().items()},
                subjects_train=train_subjects,
                subjects_test=test_subjects,
                subjects_in_both=sorted(set(train_subjects) & set(test_subjects)),
                test_set="un-augmented prepared images: rows index prepared/images.npy",
            ))
        counts.update(train=len(train_df), test=len(test_df), duplicates_dropped=len(duplicates), **decided)
    return dict(counts)
