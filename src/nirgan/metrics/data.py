"""The evaluation's view of data/prepared and data/split: one split's pairs, labels and subjects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nirgan.augmentation import to_model_range
from nirgan.io import read_table
from nirgan.labels import LABELS


@dataclass
class Split:
    source: torch.Tensor  # uint8 (N, S, S, 3)
    target: torch.Tensor  # uint8 (N, S, S)
    labels: np.ndarray  # (N, 5) degrees, NaN where unknown
    subjects: np.ndarray  # (N,) str
    pair_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.pair_ids)

    def sources(self, idx: Any = slice(None)) -> torch.Tensor:
        """Model range [-1, 1], (n, 3, S, S)."""
        return to_model_range(self.source[idx].permute(0, 3, 1, 2))

    def targets(self, idx: Any = slice(None)) -> torch.Tensor:
        """Model range [-1, 1], (n, 1, S, S)."""
        return to_model_range(self.target[idx][:, None])


def load_split(prepared_dir: Path, split_dir: Path, name: str, source: np.ndarray, target: np.ndarray) -> Split:
    df = read_table(split_dir / f"{name}.parquet")
    missing = {"index", "subject", "pair_id"} - set(df.columns)
    if missing:
        raise KeyError(f"{split_dir / f'{name}.parquet'}: missing columns {sorted(missing)}")
    idx = df["index"].to_numpy(dtype=np.int64)
    if len(idx) and (idx.max() >= len(target) or idx.min() < 0):
        raise ValueError(f"{split_dir / f'{name}.parquet'}: index out of range for {prepared_dir}/target.npy "
                         f"({len(target)} rows)")
    labels = np.stack([df[c].to_numpy(dtype=np.float64) if c in df else np.full(len(df), np.nan)
                       for c in LABELS], axis=1) if len(df) else np.zeros((0, len(LABELS)))
    return Split(
        source=torch.from_numpy(np.ascontiguousarray(source[idx])),
        target=torch.from_numpy(np.ascontiguousarray(target[idx])),
        labels=labels,
        subjects=df["subject"].astype(str).to_numpy(),
        pair_ids=df["pair_id"].astype(str).to_numpy(),
    )


def load_train_test(prepared_dir: Path, split_dir: Path) -> tuple[Split, Split]:
    """The train and test splits evaluation reads; each needs at least 2 pairs."""
    prepared_dir, split_dir = Path(prepared_dir), Path(split_dir)
    src_all = np.load(prepared_dir / "source.npy", mmap_mode="r")
    tgt_all = np.load(prepared_dir / "target.npy", mmap_mode="r")
    train = load_split(prepared_dir, split_dir, "train", src_all, tgt_all)
    test = load_split(prepared_dir, split_dir, "test", src_all, tgt_all)
    if len(test) < 2 or len(train) < 2:
        raise ValueError(f"{split_dir}: evaluation needs at least 2 train and 2 test pairs, "
                         f"got {len(train)} and {len(test)}")
    return train, test


def has_labels(train: Split, test: Split) -> bool:
    return bool(np.isfinite(test.labels).all() and np.isfinite(train.labels).all())
