"""Stage detect: find the face on each NIR target frame and cut one aligned square crop per pair.

The detector is :class:`nirgan.detection.mtcnn.FastMTCNN`: facenet-pytorch's MTCNN (its bundled
P-, R- and O-Net weights and thresholds) re-driven for throughput, with the same numbers.

A thread pool decodes the next batch's frames and encodes the previous batch's crops
while the detector works (OpenCV's PNG codec releases the GIL).

Policy per pair (the box comes from the target only and is applied unchanged to the
source, so the pair stays aligned):

- a *face* is a final MTCNN detection with probability >= ``cfg.detect.min_probability``;
  ``n_faces`` counts them;
- no MTCNN detection at all -> reject ``no_face``; detections, but none confident enough
  -> reject ``low_probability``;
- several faces -> ``cfg.detect.multiple_faces``: ``most_probable`` or ``largest`` keeps
  one, ``reject`` rejects the pair as ``multiple_faces``;
- a target or source that cannot be read -> reject ``unreadable`` (the error, naming the
  file, is logged). A source whose size differs from its target is resized to the
  target's size first (same field of view assumed), so one box serves both.

The square box is centred on the MTCNN box, its side the longer box side times
``1 + 2 * cfg.detect.margin``, rounded to whole pixels; what falls outside the frame is
black. Both images are cut with it and resized to ``cfg.detect.crop_size``
(area interpolation when shrinking).

Outputs in ``out_dir`` (written atomically):

``manifest.parquet``, one row per kept pair: every column of the raw manifest, with
``source_path`` / ``target_path`` now the crops (relative to ``out_dir``, same relative
layout as the raw stage, ``.png``; ``source_sha256`` / ``target_sha256`` stay the hashes
of the raw inputs), plus

- ``box_x0, box_y0, box_x1, box_y1`` (float): the square crop box in raw target-frame
  pixels (x1 - x0 == y1 - y0; may reach outside the frame);
- ``probability`` (float): MTCNN's probability of the chosen face;
- ``n_faces`` (int): faces at or above ``min_probability`` on the frame;
- ``lm_<name>_x, lm_<name>_y`` (float) for name in ``left_eye, right_eye, nose,
  mouth_left, mouth_right``: MTCNN's landmarks in crop pixel coordinates
  (0..crop_size, pixel centres at +0.5);
- ``crop_size`` (int).

``rejects.parquet``: ``pair_id``, ``path`` (the offending file relative to ``raw_dir``:
the target, or the source when only the source is unreadable), ``reason`` (``no_face``,
``low_probability``, ``multiple_faces``, ``unreadable``).

``target/<subject>_<camera>/<frame>.png`` (uint8, 1 channel) and the same under
``source/`` (uint8 RGB): the crops.

Kept plus rejected rows always equal the raw manifest's rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from nirgan import devices, io
from nirgan.cores import available_cores
from nirgan.config import Config, require_task
from nirgan.detection.crop import crop_box, cut
from nirgan.detection.mtcnn import FastMTCNN
from nirgan.detection.policy import BOX_COLUMNS, LANDMARK_COLUMNS, Choice, choose_faces, crop_path, read_grey

log = logging.getLogger("nirgan.detect")

REJECT_COLUMNS: tuple[str, ...] = ("pair_id", "path", "reason")


def resolve_device(choice: str) -> torch.device:
    return devices.resolve_device(choice, "detect.device")


# ------------------------------------------------------------------------------ stage IO
def _write_pair(
    raw_dir: Path, out_dir: Path, row: dict[str, Any], target: np.ndarray, x0: int, y0: int, side: int, size: int
) -> str | None:
    """Cut and write both crops of a pair; the error text when the source is unreadable."""
    try:
        source = io.read_image(raw_dir / row["source_path"], channels=3)
    except (ValueError, OSError) as exc:
        return str(exc)
    if source.shape[:2] != target.shape[:2]:
        source = cv2.resize(source, (target.shape[1], target.shape[0]), interpolation=cv2.INTER_AREA)
    io.write_image(out_dir / crop_path(row["target_path"]), cut(target, x0, y0, side, size))
    io.write_image(out_dir / crop_path(row["source_path"]), cut(source, x0, y0, side, size))
    return None


def _batches(
    rows: list[dict[str, Any]], raw_dir: Path, size: int, pool: ThreadPoolExecutor
) -> Iterator[tuple[list[dict[str, Any]], list[np.ndarray | str]]]:
    """Batches of rows with their decoded targets; the next batch decodes while this one is used."""
    starts = range(0, len(rows), size)
    pending = None
    for start in starts:
        batch = rows[start : start + size]
        futures = [pool.submit(read_grey, raw_dir / r["target_path"]) for r in batch]
        if pending is not None:
            yield pending[0], [f.result() for f in pending[1]]
        pending = (batch, futures)
    if pending is not None:
        yield pending[0], [f.result() for f in pending[1]]


def run(cfg: Config, raw_dir: Path, out_dir: Path) -> dict[str, int]:
    dcfg = cfg.detect
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    require_task(cfg, "nir", "detect")
    manifest = io.read_table(raw_dir / "manifest.parquet")
    rows = manifest.to_dict("records")
    device = resolve_device(dcfg.device)
    log.info("detect: MTCNN on %s, batch %d, min_face_size %d", device, dcfg.batch_size, dcfg.min_face_size)
    detector = FastMTCNN(device, min_face_size=dcfg.min_face_size)
    kept: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []

    def reject(row: dict[str, Any], path: str, reason: str, detail: str = "") -> None:
        rejects.append({"pair_id": row["pair_id"], "path": path, "reason": reason})
        log.warning("detect: %s rejected (%s)%s", row["pair_id"], reason, f": {detail}" if detail else "")

    def settle(writes: list[tuple[dict[str, Any], dict[str, Any], Future[str | None]]]) -> None:
        for row, out, fut in writes:
            error = fut.result()
            if error is None:
                kept.append(out)
            else:
                reject(row, row["source_path"], "unreadable", error)

    with (
        io.stage_log("detect", pairs=len(rows)) as counts,
        io.atomic_dir(out_dir) as tmp,
        ThreadPoolExecutor(max_workers=max(2, min(8, available_cores()))) as pool,
        io.progress(total=len(rows), desc="detect", unit="pair") as bar,
    ):
        writing: list[tuple[dict[str, Any], dict[str, Any], Future[str | None]]] = []
        for batch, targets in _batches(rows, raw_dir, dcfg.batch_size, pool):
            readable = [i for i, t in enumerate(targets) if isinstance(t, np.ndarray)]
            for i, t in enumerate(targets):
                if isinstance(t, str):
                    reject(batch[i], batch[i]["target_path"], "unreadable", t)
            choices: dict[int, Choice] = {}
            # PNet batches need one frame size; a dataset normally has one, so this is one group.
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i in readable:
                by_shape.setdefault(targets[i].shape, []).append(i)
            for idx in by_shape.values():
                frames = torch.from_numpy(np.stack([targets[i] for i in idx]))
                choices.update(zip(idx, choose_faces(detector(frames), len(idx), dcfg)))
            # Crops of the previous batch are written while this one was detected.
            settle(writing)
            writing = []
            for i in readable:
                row, c = batch[i], choices[i]
                if c.reason is not None:
                    reject(row, row["target_path"], c.reason, f"n_faces={c.n_faces} probability={c.probability:.3f}")
                    continue
                x0, y0, side = crop_box(c.box, dcfg.margin)
                lm = (c.landmarks - np.array([x0, y0], dtype=np.float32)) * (dcfg.crop_size / side)
                out = dict(row)
                out.update(zip(BOX_COLUMNS, (float(x0), float(y0), float(x0 + side), float(y0 + side))))
                out.update(probability=c.probability, n_faces=c.n_faces, crop_size=dcfg.crop_size)
                out.update(zip(LANDMARK_COLUMNS, lm.reshape(-1).astype(float).tolist()))
                out["target_path"] = crop_path(row["target_path"])
                out["source_path"] = crop_path(row["source_path"])
                fut = pool.submit(_write_pair, raw_dir, tmp, row, targets[i], x0, y0, side, dcfg.crop_size)
                writing.append((row, out, fut))
            bar.update(len(batch))
        settle(writing)

        columns = [*manifest.columns, *BOX_COLUMNS, "probability", "n_faces", *LANDMARK_COLUMNS, "crop_size"]
        kept_df = pd.DataFrame(kept, columns=columns).astype(
            {**manifest.dtypes.to_dict(), "n_faces": "int64", "crop_size": "int64", "probability": "float64"}
        )
        rejects_df = pd.DataFrame(rejects, columns=list(REJECT_COLUMNS)).astype(str)
        io.write_table(kept_df, tmp / "manifest.parquet")
        io.write_table(rejects_df, tmp / "rejects.parquet")
        by_reason = {str(r): int(v) for r, v in rejects_df["reason"].value_counts().items()}
        counts.update(kept=len(kept_df), rejected=len(rejects_df), **by_reason)
    return {"pairs": len(rows), "kept": len(kept_df), "rejected": len(rejects_df), **by_reason}
