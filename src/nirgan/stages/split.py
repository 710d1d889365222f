"""Stage split: training and test pairs (thesis 3.1.6), subject-disjoint by default.

Strategies (``split.strategy``):

``subject`` (default)
    Every subject is wholly in one set. The thesis's random split let a subject appear in both
    sets, so test figures partly measured memorised faces. Test subjects are chosen in a seeded
    random order, each one taken when it brings the test share of pairs closer to
    ``split.test_fraction``; both sets get at least one subject.
``random``
    Thesis 3.1.6: a seeded random ``1 - test_fraction`` / ``test_fraction`` split by pair
    (90/10 with the default); subjects may be in both sets (listed in summary.json).

The test set holds un-augmented originals only: the rows index the prepared arrays
(``source.npy``, ``target.npy``: resized and mu0/mu-normalised, never augmented), and the random
augmentation exists only as ``nirgan.augmentation.paired_augment``, which training applies on
the fly to training batches. Consumers of the test set use ``to_model_range`` instead.

Exact duplicates: a test row whose image bytes (the raw target's ``target_sha256``, or an
expression image's ``sha256``) are also in the training set is a leak that no subject rule can
see (the same file kept under two subject names), so it is dropped from the test set and listed
in ``duplicates.parquet`` (``<id>``, ``duplicate_of`` (a training row), ``reason``).
Duplicates within one set are only counted. Source renders are not compared: the one rig
renders the same pose identically for every subject.

Outputs (``data/split``, written atomically): ``train.parquet``, ``test.parquet`` (prepared
manifest rows, ``index`` included), ``duplicates.parquet`` and ``summary.json`` (counts,
subjects per set, strategy, seed, duplicates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


from nirgan.config import Config, DataError, require_task
from nirgan.io import atomic_dir, read_table, stage_log, write_json, write_table
from nirgan.splitting import drop_leaks, split_rows


def run(cfg: Config, prepared_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Split the prepared pairs into train.parquet and test.parquet (+ summary.json)."""
    prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
    s = cfg.split
    require_task(cfg, "nir", "split")
    manifest = read_table(prepared_dir / "manifest.parquet")
    missing = sorted({"pair_id", "subject", "index"} - set(manifest.columns))
    if missing:
        raise DataError(f"{prepared_dir / 'manifest.parquet'}: missing columns {missing}")

    with stage_log("split", pairs=len(manifest)) as counts:
        test = split_rows(manifest, s.strategy, s.test_fraction, s.seed)
        test, kept, duplicates, dup_summary = drop_leaks(manifest, test, "target_sha256", "pair_id",
                                                         prepared_dir / "manifest.parquet")
        train_df = manifest[kept & ~test].reset_index(drop=True)
        test_df = manifest[test].reset_index(drop=True)
        train_subjects = sorted(train_df["subject"].unique())
        test_subjects = sorted(test_df["subject"].unique())
        with atomic_dir(out_dir) as tmp:
            write_table(train_df, tmp / "train.parquet")
            write_table(test_df, tmp / "test.parquet")
            write_table(duplicates, tmp / "duplicates.parquet")
            write_json(tmp / "summary.json", dict(
                **dup_summary,
                strategy=s.strategy,
                seed=s.seed,
                test_fraction_requested=s.test_fraction,
                test_fraction=len(test_df) / (len(train_df) + len(test_df)),
                n_pairs=len(manifest),
                n_train=len(train_df),
                n_test=len(test_df),
                subjects_train=train_subjects,
                subjects_test=test_subjects,
                subjects_in_both=sorted(set(train_subjects) & set(test_subjects)),
                test_set="un-augmented originals: rows index prepared/source.npy and target.npy; "
                "paired_augment is applied on the fly to training batches only",
            ))
        counts.update(
            train=len(train_df), test=len(test_df), duplicates_dropped=len(duplicates),
            subjects_train=len(train_subjects), subjects_test=len(test_subjects),
        )
    return dict(counts)
