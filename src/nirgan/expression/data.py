"""The prepared and split expression data as arrays: what training and evaluation read.

``load_expression_split(prepared_dir, split_dir) -> ExpressionSplit`` reads
``prepared/images.npy``, ``prepared/labels.json`` and ``split/{train,test}.parquet`` (see the
expression sections of the augment and split stages) and returns uint8 images (n, S, S), int64
label indices into ``names`` and subject strings ("" when unknown), train and test.
Inconsistent files (an index past the array, a label index past the names, a row whose
label_index and label disagree) stop with a ``DataError`` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nirgan.config import DataError
from nirgan.io import read_table


@dataclass(frozen=True)
class ExpressionSplit:
    train_images: np.ndarray  # uint8 (n, S, S)
    train_labels: np.ndarray  # int64 (n,), indices into names
    train_subjects: np.ndarray  # str (n,), "" when unknown
    test_images: np.ndarray
    test_labels: np.ndarray
    test_subjects: np.ndarray
    names: tuple[str, ...]

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def n_labels(self) -> int:
        return len(self.names)


def load_labels(prepared_dir: Path) -> tuple[str, ...]:
    path = Path(prepared_dir) / "labels.json"
    try:
        names = json.loads(path.read_text())["names"]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a labels file with 'names' ({exc})") from None
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path}: names must be a non-empty list without repeats, got {names}")
    return tuple(str(n) for n in names)


def load_expression_split(prepared_dir: str | Path, split_dir: str | Path) -> ExpressionSplit:
    prepared_dir, split_dir = Path(prepared_dir), Path(split_dir)
    names = load_labels(prepared_dir)
    images = np.load(prepared_dir / "images.npy", allow_pickle=False)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{prepared_dir / 'images.npy'}: expected uint8 (n, S, S), got {images.dtype} {images.shape}")
    parts = {}
    for part in ("train", "test"):
        path = split_dir / f"{part}.parquet"
        df = read_table(path)
        missing = sorted({"index", "label", "label_index", "subject"} - set(df.columns))
        if missing:
            raise DataError(f"{path}: missing columns {missing}")
        index = df["index"].to_numpy(np.int64)
        labels = df["label_index"].to_numpy(np.int64)
        if len(index) and (index.min() < 0 or index.max() >= len(images)):
            raise DataError(f"{path}: index outside images.npy (0..{len(images) - 1})")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise DataError(f"{path}: label_index outside labels.json's {len(names)} names")
        wrong = np.flatnonzero(np.asarray(names, dtype=object)[labels] != df["label"].to_numpy(dtype=object))
        if len(wrong):
            i = int(wrong[0])
            raise DataError(f"{path}, row {i}: label {df['label'].iloc[i]!r} but label_index {labels[i]} is {names[labels[i]]!r}")
        parts[part] = (images[index], labels, df["subject"].fillna("").astype(str).to_numpy())
    return ExpressionSplit(*parts["train"], *parts["test"], names)
