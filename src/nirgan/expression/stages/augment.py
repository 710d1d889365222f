"""Stage augment of the expression pipeline: the kept crops as one array, labels numbered.

The data is grey faces with a label, so the stage only resizes
(area) each kept crop to ``augment.image_size`` (no mu0/mu: an expression set has no camera
pairs to equalise, and brightness is part of what the translation models must keep) and
numbers the labels. Label names are the data's own, sorted, so the same set gets the same
indices whatever order its files came in. Outputs (``data/prepared``, written atomically):
    ``images.npy``        uint8 (N, S, S) grey faces
    ``manifest.parquet``  ``sample_id, subject, label, label_index, index`` (row in images.npy),
                          ``usage``, ``image_path`` (the crop, relative to ``data/crops``),
                          ``sha256`` (collect's, of the image; split finds leaks by it)
    ``labels.json``       ``{"names": [...], "counts": {name: n}}``, names in label_index order
    ``preview.png``       the first few images of each label, one row per label
    ``rejects.parquet``   ``sample_id, path, reason`` for crops that could not be read
The random augmentation (flips, small shifts) belongs to the expression trainer.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from nirgan.config import Config, DataError, require_task
from nirgan.io import atomic_dir, read_image, read_table, stage_log, write_image, write_json, write_table


def run(cfg: Config, crops_dir: Path, clean_dir: Path, out_dir: Path) -> dict[str, Any]:
    require_task(cfg, "expression", "augment")
    return _prepare(cfg.augment.image_size, Path(crops_dir), Path(clean_dir), Path(out_dir))


COLUMNS = ["sample_id", "subject", "label", "label_index", "index", "usage", "image_path"]
PREVIEW_PER_LABEL = 8


def _load_grey(path: Path, size: int) -> np.ndarray | str:
    try:
        return cv2.resize(read_image(path, channels=1), (size, size), interpolation=cv2.INTER_AREA)
    except (ValueError, OSError) as exc:
        return str(exc)


def label_preview(images: np.ndarray, label_index: np.ndarray, n_labels: int) -> np.ndarray:
    """Up to ``PREVIEW_PER_LABEL`` images of each label, one row per label (label_index order)."""
    size = images.shape[1]
    grid = np.zeros((n_labels * size, PREVIEW_PER_LABEL * size), np.uint8)
    for k in range(n_labels):
        for j, i in enumerate(np.flatnonzero(label_index == k)[:PREVIEW_PER_LABEL]):
            grid[k * size : (k + 1) * size, j * size : (j + 1) * size] = images[i]
    return grid


def _prepare(size: int, crops_dir: Path, clean_dir: Path, out_dir: Path) -> dict[str, Any]:
    clean = read_table(clean_dir / "manifest.parquet")
    missing = sorted({"sample_id", "subject", "label", "image_path"} - set(clean.columns))
    if missing:
        raise DataError(f"{clean_dir / 'manifest.parquet'}: missing columns {missing}")
    with stage_log("augment", images=len(clean)) as counts, atomic_dir(out_dir) as tmp:
        with ThreadPoolExecutor(max_workers=4) as pool:
            loaded = list(pool.map(lambda p: _load_grey(crops_dir / p, size), clean["image_path"]))
        ok = np.array([isinstance(x, np.ndarray) for x in loaded], dtype=bool)
        rejects = [dict(sample_id=sid, path=p, reason=x) for sid, p, x in zip(clean["sample_id"], clean["image_path"], loaded)
                   if isinstance(x, str)]
        if not ok.any():
            raise DataError(f"{clean_dir / 'manifest.parquet'}: no usable image ({len(clean)} rows, all rejected)")
        images = np.stack([x for x in loaded if isinstance(x, np.ndarray)])
        manifest = clean[ok].reset_index(drop=True)
        names = sorted(manifest["label"].unique())
        manifest["label_index"] = manifest["label"].map({n: i for i, n in enumerate(names)}).astype("int64")
        manifest["index"] = np.arange(len(manifest), dtype=np.int64)
        if "usage" not in manifest:
            manifest["usage"] = ""
        manifest = manifest[COLUMNS + (["sha256"] if "sha256" in manifest else [])]
        label_counts = {n: int(v) for n, v in manifest["label"].value_counts().reindex(names).items()}

        np.save(tmp / "images.npy", images)
        write_table(manifest, tmp / "manifest.parquet")
        write_json(tmp / "labels.json", {"names": names, "counts": label_counts})
        write_table(pd.DataFrame(rejects, columns=["sample_id", "path", "reason"]), tmp / "rejects.parquet")
        write_image(tmp / "preview.png", label_preview(images, manifest["label_index"].to_numpy(), len(names)))
        counts.update(prepared=len(manifest), rejected=len(rejects), labels=len(names))
    return dict(counts)
