"""Stage detect of the expression pipeline: one face crop per labelled image, into ``data/crops``.

Images only, one per row, the same face policy. Each
image is read grey; when its shorter side is below ``detect.min_side`` it is upscaled (bicubic)
to that side first, because MTCNN's pyramid cannot find a face in a 48 x 48 frame (its
smallest scale looks at 12 px windows of a face at least ``min_face_size`` large). The crop is
cut from the upscaled image. ``detect.pre_cropped: true`` passes the images through instead (a
set that is already cropped and aligned, such as FER2013): each image is only resized to
``crop_size``, its box is the whole image, ``probability`` and the landmarks are NaN and
``n_faces`` is 0. The manifest keeps the raw columns (``image_path`` now the crop), adds the
box (raw pixels), ``probability``, ``n_faces``, landmarks, ``crop_size`` and ``upscale`` (the
factor applied before MTCNN); ``rejects.parquet`` is ``sample_id, path, reason``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from nirgan import devices, io
from nirgan.config import Config, DetectConfig, require_task
from nirgan.detection.crop import crop_box, cut
from nirgan.detection.mtcnn import FastMTCNN
from nirgan.detection.policy import BOX_COLUMNS, LANDMARK_COLUMNS, choose_faces, crop_path, read_grey

log = logging.getLogger("nirgan.detect")


def run(cfg: Config, raw_dir: Path, out_dir: Path) -> dict[str, int]:
    require_task(cfg, "expression", "detect")
    return _detect(cfg.detect, Path(raw_dir), Path(out_dir))


def _upscaled(img: np.ndarray, min_side: int) -> tuple[np.ndarray, float]:
    h, w = img.shape
    scale = min_side / min(h, w)
    if scale <= 1.0:
        return img, 1.0
    size = (round(w * scale), round(h * scale))
    return cv2.resize(img, size, interpolation=cv2.INTER_CUBIC), scale


def _detect(dcfg: DetectConfig, raw_dir: Path, out_dir: Path) -> dict[str, int]:
    """Crop one face per image (or pass pre-cropped images through); see the module docstring."""
    manifest = io.read_table(raw_dir / "manifest.parquet")
    rows = manifest.to_dict("records")
    detector = None if dcfg.pre_cropped else FastMTCNN(devices.resolve_device(dcfg.device, "detect.device"), min_face_size=dcfg.min_face_size)
    size = dcfg.crop_size
    kept: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []

    def reject(row: dict[str, Any], reason: str, detail: str = "") -> None:
        rejects.append({"sample_id": row["sample_id"], "path": row["image_path"], "reason": reason})
        log.warning("detect: %s rejected (%s)%s", row["sample_id"], reason, f": {detail}" if detail else "")

    def keep(tmp: Path, row: dict[str, Any], crop: np.ndarray, box: tuple[float, ...], extra: dict[str, Any]) -> None:
        out = dict(row, image_path=crop_path(row["image_path"]), crop_size=size, **dict(zip(BOX_COLUMNS, box)), **extra)
        io.write_image(tmp / out["image_path"], crop)
        kept.append(out)

    with io.stage_log("detect", images=len(rows)) as counts, io.atomic_dir(out_dir) as tmp:
        for start in io.progress(range(0, len(rows), dcfg.batch_size), desc="detect", unit="batch"):
            batch = rows[start : start + dcfg.batch_size]
            images = [read_grey(raw_dir / r["image_path"]) for r in batch]
            for row, img in zip(batch, images):
                if isinstance(img, str):
                    reject(row, "unreadable", img)
            if detector is None:
                for row, img in zip(batch, images):
                    if isinstance(img, np.ndarray):
                        h, w = img.shape
                        crop = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR)
                        nan = dict.fromkeys(LANDMARK_COLUMNS, float("nan"))
                        keep(tmp, row, crop, (0.0, 0.0, float(w), float(h)), dict(probability=float("nan"), n_faces=0, upscale=1.0, **nan))
                continue
            ready = {i: _upscaled(img, dcfg.min_side) for i, img in enumerate(images) if isinstance(img, np.ndarray)}
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, (img, _) in ready.items():
                by_shape.setdefault(img.shape, []).append(i)
            for idx in by_shape.values():
                frames = torch.from_numpy(np.stack([ready[i][0] for i in idx]))
                for i, c in zip(idx, choose_faces(detector(frames), len(idx), dcfg)):
                    row, (img, scale) = batch[i], ready[i]
                    if c.reason is not None:
                        reject(row, c.reason, f"n_faces={c.n_faces} probability={c.probability:.3f}")
                        continue
                    x0, y0, side = crop_box(c.box, dcfg.margin)
                    lm = (c.landmarks - np.array([x0, y0], dtype=np.float32)) * (size / side)
                    box = tuple(float(v) / scale for v in (x0, y0, x0 + side, y0 + side))
                    extra = dict(probability=c.probability, n_faces=c.n_faces, upscale=scale,
                                 **dict(zip(LANDMARK_COLUMNS, lm.reshape(-1).astype(float).tolist())))
                    keep(tmp, row, cut(img, x0, y0, side, size), box, extra)
        columns = [*manifest.columns, *BOX_COLUMNS, "probability", "n_faces", *LANDMARK_COLUMNS, "crop_size", "upscale"]
        kept_df = pd.DataFrame(kept, columns=columns).astype(
            {**manifest.dtypes.to_dict(), "n_faces": "int64", "crop_size": "int64", "probability": "float64"}
        )
        kept_df = kept_df.sort_values("sample_id", kind="stable").reset_index(drop=True)
        rejects_df = pd.DataFrame(rejects, columns=["sample_id", "path", "reason"]).astype(str)
        io.write_table(kept_df, tmp / "manifest.parquet")
        io.write_table(rejects_df, tmp / "rejects.parquet")
        by_reason = {str(r): int(v) for r, v in rejects_df["reason"].value_counts().items()}
        counts.update(kept=len(kept_df), rejected=len(rejects_df), **by_reason)
    return {"images": len(rows), "kept": len(kept_df), "rejected": len(rejects_df), **by_reason}
