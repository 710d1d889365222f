"""The training data: data/prepared's arrays and data/split's tables, resident on the training device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nirgan.augmentation import to_model_range
from nirgan.io import read_table
from nirgan.labels import LABELS
from nirgan.digest import data_digest


@dataclass
class TrainData:
    """The training split on the training device, plus the fixed sample-grid inputs.

    ``source`` (N, S, S, 3) and ``target`` (N, S, S) stay uint8 (a quarter of the float
    memory); ``labels`` (N, 5) are degrees in ``LABELS`` order, NaN where unknown.
    """

    source: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor
    subjects: np.ndarray
    sample_source: torch.Tensor
    sample_target: torch.Tensor
    sample_labels: torch.Tensor
    digest: str = ""  # of the arrays above (nirgan.digest.data_digest)

    @property
    def size(self) -> int:
        return int(self.source.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.source.shape[1])


def _labels_of(df: pd.DataFrame) -> np.ndarray:
    cols = [df[c].astype("float64").to_numpy() if c in df else np.full(len(df), np.nan) for c in LABELS]
    return np.stack(cols, axis=1).astype(np.float32) if len(df) else np.zeros((0, len(LABELS)), np.float32)


def load_data(prepared_dir: Path, split_dir: Path, device: torch.device, sample_count: int) -> TrainData:
    """Read data/prepared's arrays and data/split's tables; move the training rows to ``device``."""
    src_path, tgt_path = prepared_dir / "source.npy", prepared_dir / "target.npy"
    for p in (src_path, tgt_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: prepared array is missing (did the augment stage run?)")
    source = np.load(src_path, mmap_mode="r")
    target = np.load(tgt_path, mmap_mode="r")
    if source.ndim != 4 or source.shape[-1] != 3 or target.shape != source.shape[:3] or source.dtype != np.uint8:
        raise ValueError(f"{prepared_dir}: expected source (N,S,S,3) and target (N,S,S) uint8, got "
                         f"{source.dtype} {source.shape} and {target.dtype} {target.shape}")
    train = read_table(split_dir / "train.parquet")
    test_path = split_dir / "test.parquet"
    test = read_table(test_path) if test_path.exists() else train.iloc[:0]
    for name, df in (("train", train), ("test", test)):
        if "index" not in df:
            raise ValueError(f"{split_dir / (name + '.parquet')}: column 'index' is missing")
        bad = df["index"][(df["index"] < 0) | (df["index"] >= len(source))]
        if len(bad):
            raise ValueError(f"{split_dir / (name + '.parquet')}: index {int(bad.iloc[0])} is outside "
                             f"the {len(source)} prepared pairs in {prepared_dir}")
    if len(train) == 0:
        raise ValueError(f"{split_dir / 'train.parquet'}: the training split is empty")
    idx = train["index"].to_numpy()
    # The grid shows unseen test sources when there are any; otherwise the first training pairs.
    grid = test if len(test) else train
    grid_idx = grid["index"].to_numpy()[:sample_count]

    # What the run trains on, in its order: the resume fingerprint's data part. (The grid's
    # inputs are left out: train.sample_sources may change on resumption.)
    trained = {"source": np.ascontiguousarray(source[idx]), "target": np.ascontiguousarray(target[idx]),
               "labels": _labels_of(train),
               "subjects": train["subject"].astype(str).to_numpy() if "subject" in train else np.zeros(len(train), str)}

    def to_dev(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return TrainData(
        source=to_dev(trained["source"]),
        target=to_dev(trained["target"]),
        labels=to_dev(trained["labels"]),
        subjects=trained["subjects"],
        sample_source=to_model_range(to_dev(source[grid_idx]).permute(0, 3, 1, 2)),
        sample_target=to_model_range(to_dev(target[grid_idx])[:, None]),
        sample_labels=to_dev(_labels_of(grid.iloc[: len(grid_idx)])),
        digest=data_digest(trained),
    )
