"""How a split chooses its test rows (by subject, or at random) and drops test rows whose
content also sits in train: the rules both families' split stages apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nirgan.config import DataError

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
