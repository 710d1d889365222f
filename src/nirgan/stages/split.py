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

Expression data (``task: expression``), in this order of precedence:
- rows with a FER2013 ``usage`` follow it: ``Training`` trains, ``PublicTest`` and
  ``PrivateTest`` test (there is no validation set downstream);
- the other rows follow ``split.strategy``; with ``subject``, rows whose subject is known are
  split subject-disjoint as above, and rows without one (a folder set without a subject table)
  are split at random by image at ``split.test_fraction`` (seeded), since nothing says which
  images share a face.
summary.json adds per-label counts in each set and how many rows each rule decided.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nirgan.config import Config, DataError, SplitConfig
from nirgan.io import atomic_dir, read_table, stage_log, write_json, write_table


def choose_test_subjects(
    pairs_per_subject: pd.Series, test_fraction: float, seed: int, tries: int = 64
) -> list[str]:
    """Seeded choice of test subjects whose pair count is close to ``test_fraction``.

    One try visits the subjects in a random order and moves each to the test set when that
    brings the test count closer to the goal (the last subject is never taken, so both sets
    are non-empty; if none helps, the one nearest the goal is tested alone). Of ``tries``
    seeded tries, the first whose count is within 10 % of the goal (or as close as the best
    try, when none is) wins: the seed decides who is tested, and the share stays close to
    the goal even when subjects have very different numbers of pairs.
    """
    if len(pairs_per_subject) < 2:
        raise DataError(
            f"split.strategy=subject needs at least 2 subjects, the prepared data has "
            f"{len(pairs_per_subject)} ({list(pairs_per_subject.index)}); use split.strategy=random"
        )
    names = sorted(pairs_per_subject.index)
    sizes = {name: int(pairs_per_subject[name]) for name in names}
    goal = test_fraction * sum(sizes.values())
    rng = np.random.default_rng(seed)
    results: list[tuple[float, list[str]]] = []
    for _ in range(tries):
        chosen: list[str] = []
        count = 0
        for i in rng.permutation(len(names)):
            n = sizes[names[i]]
            if len(chosen) < len(names) - 1 and abs(count + n - goal) < abs(count - goal):
                chosen.append(names[i])
                count += n
        if not chosen:
            chosen = [min(names, key=lambda name: abs(sizes[name] - goal))]
            count = sizes[chosen[0]]
        results.append((abs(count - goal), sorted(chosen)))
    good_enough = max(min(err for err, _ in results), 0.1 * goal)
    return next(chosen for err, chosen in results if err <= good_enough)


def split_rows(manifest: pd.DataFrame, strategy: str, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the test rows."""
    n = len(manifest)
    if n < 2:
        raise DataError(f"split needs at least 2 pairs, the prepared data has {n}")
    if strategy == "subject":
        test_subjects = choose_test_subjects(manifest.groupby("subject").size(), test_fraction, seed)
        return manifest["subject"].isin(test_subjects).to_numpy()
    if strategy == "random":
        n_test = min(max(int(round(test_fraction * n)), 1), n - 1)
        mask = np.zeros(n, dtype=bool)
        mask[np.random.default_rng(seed).permutation(n)[:n_test]] = True
        return mask
    raise ValueError(f"split.strategy: unknown strategy {strategy!r}")


def drop_leaks(manifest: pd.DataFrame, test: np.ndarray, hash_column: str, id_column: str,
               where: Path) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, dict[str, Any]]:
    """Test rows whose bytes are also in the training set leave the split (module docstring).

    Returns the new test mask, the mask of rows kept, the ``duplicates`` rows and summary counts.
    """
    columns = [id_column, "duplicate_of", "reason"]
    if hash_column not in manifest:
        return test, np.ones(len(manifest), bool), pd.DataFrame(columns=columns).astype(object), {
            "duplicates": f"unavailable: the manifest has no {hash_column} column"}
    digest = manifest[hash_column].astype(str).to_numpy()
    first_train = dict(zip(digest[~test][::-1], manifest[id_column].to_numpy()[~test][::-1]))
    leak = test & np.array([d in first_train for d in digest])
    rows = [{id_column: pid, "duplicate_of": first_train[d], "reason": "same image bytes as a training row"}
            for pid, d in zip(manifest[id_column].to_numpy()[leak], digest[leak])]
    kept_test = test & ~leak
    if test.any() and not kept_test.any():
        raise DataError(f"{where}: every test row ({int(test.sum())}) is a byte-identical copy of a training row")
    within = {name: int(pd.Series(digest[mask]).duplicated().sum()) for name, mask in
              (("train", ~test), ("test", kept_test))}
    return kept_test, ~leak, pd.DataFrame(rows, columns=columns).astype(object), {
        "duplicates_dropped_from_test": int(leak.sum()), "duplicates_within": within}


def run(cfg: Config, prepared_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Split the prepared pairs into train.parquet and test.parquet (+ summary.json)."""
    prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
    s = cfg.split
    if cfg.task == "expression":
        return _run_expression(s, prepared_dir, out_dir)
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


# --------------------------------------------------------------------------- expression
def expression_test_rows(manifest: pd.DataFrame, strategy: str, test_fraction: float, seed: int) -> tuple[np.ndarray, dict[str, int]]:
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


def _run_expression(s: SplitConfig, prepared_dir: Path, out_dir: Path) -> dict[str, Any]:
    manifest = read_table(prepared_dir / "manifest.parquet")
    missing = sorted({"sample_id", "subject", "label", "label_index", "index"} - set(manifest.columns))
    if missing:
        raise DataError(f"{prepared_dir / 'manifest.parquet'}: missing columns {missing}")
    with stage_log("split", images=len(manifest)) as counts:
        test, decided = expression_test_rows(manifest, s.strategy, s.test_fraction, s.seed)
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
