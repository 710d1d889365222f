"""Synthetic expression faces for the model tests: a subject is a face brightness and width, a label
is a bright mark at a label-specific place on the face. Subject-disjoint train/test split, in the
shape of ``nirgan.expression.data.ExpressionSplit``, and written as the files of the augment and
split stages."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd

from nirgan.io import write_table


def synthetic_faces(subjects: int, n_labels: int, per: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, labels, subject_ids = [], [], []
    for s in range(subjects):
        bright, half_width = 100 + 100 * rng.random(), 0.25 + 0.1 * rng.random()
        face = ((xx - 0.5) ** 2 / half_width**2 + (yy - 0.5) ** 2 / 0.35**2) < 1
        for label in range(n_labels):
            angle = 2 * np.pi * label / n_labels
            mark = ((xx - 0.5 - 0.18 * np.cos(angle)) ** 2 + (yy - 0.5 - 0.18 * np.sin(angle)) ** 2) < 0.07**2
            for _ in range(per):
                img = np.where(mark, 255.0, np.where(face, bright, 30.0)) + rng.normal(0, 6, (size, size))
                images.append(np.clip(img, 0, 255).astype(np.uint8))
                labels.append(label)
                subject_ids.append(f"s{s}")
    return np.stack(images), np.array(labels, np.int64), np.array(subject_ids)


def synthetic_split(names: list[str], size: int = 64, train_subjects: int = 6, test_subjects: int = 2,
                    per: int = 4, seed: int = 0) -> SimpleNamespace:
    images, labels, subjects = synthetic_faces(train_subjects + test_subjects, len(names), per, size, seed)
    test = np.isin(subjects, [f"s{i}" for i in range(train_subjects, train_subjects + test_subjects)])
    return SimpleNamespace(train_images=images[~test], train_labels=labels[~test], train_subjects=subjects[~test],
                           test_images=images[test], test_labels=labels[test], test_subjects=subjects[test],
                           names=list(names))


def write_split_files(split, root):
    """The files of the augment and split stages (data/prepared, data/split) for ``split``."""
    prepared, split_dir = root / "prepared", root / "split"
    prepared.mkdir(parents=True)
    split_dir.mkdir()
    images = np.concatenate([split.train_images, split.test_images])
    np.save(prepared / "images.npy", images)
    (prepared / "labels.json").write_text(json.dumps({"names": split.names}))
    start = 0
    for part, labels, subjects in (("train", split.train_labels, split.train_subjects),
                                   ("test", split.test_labels, split.test_subjects)):
        index = np.arange(start, start + len(labels))
        start += len(labels)
        write_table(pd.DataFrame({"sample_id": [f"f{i}" for i in index], "subject": subjects,
                                  "label": np.asarray(split.names)[labels], "label_index": labels, "index": index}),
                    split_dir / f"{part}.parquet")
    return prepared, split_dir
