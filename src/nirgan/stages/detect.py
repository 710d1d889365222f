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

Expression data (``task: expression``): images only, one per row, the same face policy. Each
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
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from nirgan import devices, io
from nirgan.cores import available_cores
from nirgan.config import Config, DetectConfig
from nirgan.detection.crop import crop_box, cut
from nirgan.detection.mtcnn import Faces, FastMTCNN

log = logging.getLogger("nirgan.detect")

LANDMARKS: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
BOX_COLUMNS: tuple[str, ...] = ("box_x0", "box_y0", "box_x1", "box_y1")
LANDMARK_COLUMNS: tuple[str, ...] = tuple(f"lm_{n}_{a}" for n in LANDMARKS for a in ("x", "y"))
REJECT_COLUMNS: tuple[str, ...] = ("pair_id", "path", "reason")


def resolve_device(choice: str) -> torch.device:
    return devices.resolve_device(choice, "detect.device")


# ------------------------------------------------------------------------------ policy
@dataclass
class Choice:
    """The face kept for one frame, or why the frame is rejected."""

    reason: str | None
    n_faces: int
    box: np.ndarray | None = None
    probability: float = float("nan")
    landmarks: np.ndarray | None = None


def choose_faces(faces: Faces, n_frames: int, detect_cfg: DetectConfig) -> list[Choice]:
    """Apply the min_probability and multiple_faces policy to every frame of a batch."""
    choices = []
    bounds = np.searchsorted(faces.frame, np.arange(n_frames + 1))
    for i in range(n_frames):
        at = slice(bounds[i], bounds[i + 1])
        prob, boxes, lms = faces.probability[at], faces.boxes[at], faces.landmarks[at]
        confident = np.flatnonzero(prob >= detect_cfg.min_probability)
        n = len(confident)
        if len(prob) == 0:
            choices.append(Choice("no_face", 0))
            continue
        if n == 0:
            choices.append(Choice("low_probability", 0, probability=float(prob.max())))
            continue
        if n > 1 and detect_cfg.multiple_faces == "reject":
            choices.append(Choice("multiple_faces", n, probability=float(prob[confident].max())))
            continue
        if detect_cfg.multiple_faces == "largest":
            sides = np.maximum(boxes[confident, 2] - boxes[confident, 0], boxes[confident, 3] - boxes[confident, 1])
            j = confident[int(np.argmax(sides))]
        else:
            j = confident[int(np.argmax(prob[confident]))]
        choices.append(Choice(None, n, boxes[j], float(prob[j]), lms[j]))
    return choices


# ------------------------------------------------------------------------------ stage IO
def _read_target(path: Path) -> np.ndarray | str:
    try:
        return io.read_image(path, channels=1)
    except (ValueError, OSError) as exc:
        return str(exc)


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


def crop_path(raw_rel: str) -> str:
    return Path(raw_rel).with_suffix(".png").as_posix()


def _batches(
    rows: list[dict[str, Any]], raw_dir: Path, size: int, pool: ThreadPoolExecutor
) -> Iterator[tuple[list[dict[str, Any]], list[np.ndarray | str]]]:
    """Batches of rows with their decoded targets; the next batch decodes while this one is used."""
    starts = range(0, len(rows), size)
    pending = None
    for start in starts:
        batch = rows[start : start + size]
        futures = [pool.submit(_read_target, raw_dir / r["target_path"]) for r in batch]
        if pending is not None:
            yield pending[0], [f.result() for f in pending[1]]
        pending = (batch, futures)
    if pending is not None:
        yield pending[0], [f.result() for f in pending[1]]


def run(cfg: Config, raw_dir: Path, out_dir: Path) -> dict[str, int]:
    dcfg = cfg.detect
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if cfg.task == "expression":
        return _run_expression(dcfg, raw_dir, out_dir)
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


# --------------------------------------------------------------------------- expression
def _upscaled(img: np.ndarray, min_side: int) -> tuple[np.ndarray, float]:
    h, w = img.shape
    scale = min_side / min(h, w)
    if scale <= 1.0:
        return img, 1.0
    size = (round(w * scale), round(h * scale))
    return cv2.resize(img, size, interpolation=cv2.INTER_CUBIC), scale


def _run_expression(dcfg: DetectConfig, raw_dir: Path, out_dir: Path) -> dict[str, int]:
    """Crop one face per image (or pass pre-cropped images through); see the module docstring."""
    manifest = io.read_table(raw_dir / "manifest.parquet")
    rows = manifest.to_dict("records")
    detector = None if dcfg.pre_cropped else FastMTCNN(resolve_device(dcfg.device), min_face_size=dcfg.min_face_size)
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
            images = [_read_target(raw_dir / r["image_path"]) for r in batch]
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
