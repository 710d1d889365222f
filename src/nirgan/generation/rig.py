"""Source renders for requested label rows, framed exactly as the generator saw its sources.

In training a source is a raw rig render (:func:`nirgan.twin.render_source`) cut with the
square box detect draws around the MTCNN detection of the *target* face
(:func:`nirgan.detection.crop.crop_box`, ``detect.margin``), resized to ``detect.crop_size``
and then to ``augment.image_size`` (area interpolation). A generated dataset has no target,
so the built-in rig learns that box from the twin itself, once per configuration:

calibration
    twin targets of the twin's own subjects and cameras, at poses drawn uniformly over
    :data:`RIG_LIMITS` and at the twin's spread of position and scale, go through the real
    detector (:class:`~nirgan.detection.mtcnn.FastMTCNN`, the policy detect applies); the
    box's centre offset from the head centre and its longer side, in head units, are fitted
    by least squares as a quadratic in the three head angles. Deterministic in the configs,
    a few seconds on one core, cached in the process and optionally in a JSON file
    (:func:`calibrate`).
rendering
    each row's head is placed at the twin's canonical position and scale, the fitted box is
    turned into a crop exactly as detect does (whole pixels), the rig is rendered straight
    into that crop at the raw frame's resolution, and the crop is resized as detect and
    augment resize it. Only the box comes from the fit; everything after it is the training
    chain itself. ``recipe`` records the crop so :func:`render_recipe` re-renders a source
    without calibrating.

Bring-your-own rig (:func:`folder_rig`, in :mod:`nirgan.generation.folder_rig`): a folder of
source renders with a labels table in the layout collect reads, or without one (labels unknown);
every row is checked (file, image, labels) before any work. :func:`check_spec` checks a generate spec against the rig.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import pandas as pd
import torch

from nirgan import twin
from nirgan.config import ConfigError, DetectConfig, TwinConfig
from nirgan.detection.crop import crop_box, resize_crop
from nirgan.generation.folder_rig import FolderRig, folder_rig  # noqa: F401 - the rigs side by side
from nirgan.generation.framing import MASK_FEATURES, RenderFraming, mask_box, mask_features, mask_targets
from nirgan.io import write_json
from nirgan.generation.spec import read_label_table
from nirgan.labels import LABELS

LABEL_COLUMNS: tuple[str, ...] = (*LABELS, "glasses")
# The range the twin's trajectories cover (hence what the generator was trained on), degrees.
RIG_LIMITS: dict[str, float] = dict(twin.LIMITS)

CALIBRATION_FRAMES = 64  # measured: 48, 64 and 96 frames frame the sources equally well
_HEAD_ANGLES = LABELS[:3]  # the box follows the head; gaze moves only the irises


class SourceRig(Protocol):
    image_size: int

    def render(self, rows: pd.DataFrame) -> np.ndarray: ...

    def recipe(self, row: pd.Series) -> str: ...


# --------------------------------------------------------------------------- calibration
def _features(angles: np.ndarray) -> np.ndarray:
    """Quadratic features of the head angles (n, 3), each scaled by its limit to about [-1, 1]."""
    a = angles / np.array([RIG_LIMITS[k] for k in _HEAD_ANGLES])
    y, p, r = a.T
    return np.stack([np.ones_like(y), y, p, r, y * y, p * p, r * r, y * p, y * r, p * r], axis=1)


@dataclass(frozen=True)
class Framing:
    """Detect's box around a twin face as a function of the head angles, in head units.

    ``coef`` (features, 3) maps :func:`_features` to the box centre's offset from the head
    centre (x right, y down) and the box's longer side; ``residual`` is the fit's RMS error per
    output and ``detected`` how many of ``frames`` calibration targets had a face.
    """

    coef: np.ndarray
    frames: int
    detected: int
    residual: tuple[float, float, float]
    mask_coef: np.ndarray | None = None  # the same box from the source render's mask (generation.framing)

    def box(self, angles: np.ndarray) -> np.ndarray:
        """(n, 3) head angles in degrees -> (n, 3): dx, dy, side in head units."""
        return _features(np.asarray(angles, np.float64).reshape(-1, 3)) @ self.coef

    def summary(self) -> dict[str, Any]:
        return {"frames": self.frames, "detected": self.detected, "rms_dx_dy_side": list(self.residual)}

    def for_renders(self, mode: str, detect_cfg: DetectConfig) -> RenderFraming:
        """How a folder rig frames its renders (``generate.rig_framing``) with this calibration."""
        return RenderFraming(mode, self.mask_coef, detect_cfg.margin, detect_cfg.crop_size)


def _canonical(twin_cfg: TwinConfig) -> tuple[float, float, float]:
    """The head centre and scale at the middle of the twin's trajectories (see twin.make_trajectory)."""
    return twin_cfg.width / 2, twin_cfg.height * 0.52, twin.SCALE * min(twin_cfg.width, twin_cfg.height)


def calibrate(
    detect_cfg: DetectConfig, twin_cfg: TwinConfig, frames: int = CALIBRATION_FRAMES, cache: Path | None = None
) -> Framing:
    """Fit :class:`Framing` on ``frames`` twin targets.

    Cached in the process, and in ``cache`` (a small JSON file) when given: a file written for
    the same configuration is read instead of calibrating (workers of one dataset share it);
    an unreadable file or one for another configuration is recalibrated and replaced.
    """
    # only what changes the targets or which faces count; the margin is applied when rendering
    key = {"twin": twin_cfg.model_dump(mode="json"), "min_face_size": detect_cfg.min_face_size,
           "min_probability": detect_cfg.min_probability, "frames": frames,
           "mask_features": MASK_FEATURES}  # a file from before the folder rig's fit is recalibrated
    if cache is not None and Path(cache).is_file():
        try:
            stored = json.loads(Path(cache).read_text())
            if stored["key"] == key:
                return Framing(np.array(stored["coef"], np.float64), stored["frames"], stored["detected"],
                               tuple(stored["residual"]), np.array(stored["mask_coef"], np.float64))
        except (ValueError, KeyError, TypeError, OSError):
            pass
    framing = _calibrate(json.dumps(key, sort_keys=True))
    if cache is not None:
        write_json(cache, {"key": key, "coef": framing.coef.tolist(), "frames": framing.frames,
                           "detected": framing.detected, "residual": list(framing.residual),
                           "mask_coef": framing.mask_coef.tolist()})
    return framing


@lru_cache(maxsize=8)
def _calibrate(key: str) -> Framing:
    spec = json.loads(key)
    twin_cfg = TwinConfig.model_validate(spec["twin"])
    frames, min_probability = spec["frames"], spec["min_probability"]
    w, h = twin_cfg.width, twin_cfg.height
    cx, cy, scale = _canonical(twin_cfg)
    subjects, cameras = twin.make_subjects(twin_cfg), twin.make_cameras(twin_cfg)
    rng = np.random.default_rng([twin_cfg.seed, 11])
    limits = np.array([RIG_LIMITS[k] for k in LABELS])
    angles = rng.uniform(-1, 1, (frames, len(LABELS))) * limits
    # the spread of position and scale of the twin's recordings, so MTCNN's pyramid steps average out
    jitter = rng.uniform(-1, 1, (frames, 3)) * np.array([0.1 * w, 0.05 * h, 0.08])
    poses, images, masks = [], [], []
    for k in range(frames):
        pose = twin.Pose(*map(float, angles[k]), cx + jitter[k, 0], cy + jitter[k, 1], scale * (1 + jitter[k, 2]))
        subject, camera = subjects[k % len(subjects)], cameras[k % len(cameras)]
        view = twin._View(pose, w, h)  # the twin's renderer, used as collect uses it
        noise = np.random.default_rng([twin_cfg.seed, 12, k])
        images.append(twin._camera(twin.render_target(view, subject, camera, w, h), camera, noise))
        masks.append(mask_box(twin.render_source(view, subject.glasses, w, h)))  # for a folder rig's renders
        poses.append(pose)
    from nirgan.detection.mtcnn import FastMTCNN  # here: torchvision costs every generate worker 1.5 s to import

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # float64 MTCNN: identical numbers whatever the thread count
    try:
        faces = FastMTCNN("cpu", min_face_size=spec["min_face_size"])(torch.from_numpy(np.stack(images)))
    finally:
        torch.set_num_threads(before)
    rows, targets, mask_rows, boxes = [], [], [], []
    for k, pose in enumerate(poses):
        at = np.flatnonzero((faces.frame == k) & (faces.probability >= min_probability))
        if len(at) == 0:  # detect rejects such a frame; it framed no training source
            continue
        b = faces.boxes[at[np.argmax(faces.probability[at])]].astype(np.float64)
        targets.append([((b[0] + b[2]) / 2 - pose.x) / pose.scale, ((b[1] + b[3]) / 2 - pose.y) / pose.scale,
                        max(b[2] - b[0], b[3] - b[1]) / pose.scale])
        rows.append(angles[k, :3])
        if masks[k] is not None:
            mask_rows.append(masks[k])
            boxes.append(b[:4])
    features, targets = _features(np.array(rows)), np.array(targets)
    if len(targets) < 3 * features.shape[1]:
        raise RuntimeError(f"rig calibration: MTCNN found a face on only {len(targets)} of {frames} twin targets")
    coef = np.linalg.lstsq(features, targets, rcond=None)[0]
    rms = np.sqrt(((features @ coef - targets) ** 2).mean(axis=0))
    mask_coef = np.linalg.lstsq(mask_features(np.array(mask_rows)), mask_targets(np.array(mask_rows), np.array(boxes)),
                                rcond=None)[0]
    return Framing(coef, frames, len(targets), tuple(float(v) for v in rms), mask_coef)


# ------------------------------------------------------------------------ the built-in rig
class TwinRig:
    """The built-in rig: the twin's rig renders in detect's crop, at ``image_size``."""

    def __init__(
        self, image_size: int, detect_cfg: DetectConfig, twin_cfg: TwinConfig, cache: Path | None = None
    ) -> None:
        self.image_size = int(image_size)
        self.detect_cfg, self.twin_cfg = detect_cfg, twin_cfg
        self.framing = calibrate(detect_cfg, twin_cfg, cache=cache)

    def crops(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        """Each row's render recipe (labels, glasses and the crop), as plain JSON values."""
        missing = [c for c in LABEL_COLUMNS if c not in rows.columns]
        if missing:
            raise KeyError(f"rig rows lack column(s) {', '.join(missing)}")
        gaps = rows[list(LABEL_COLUMNS)].isna()
        if gaps.to_numpy().any():
            row, column = gaps.stack()[lambda v: v].index[0]
            raise ValueError(f"rig row {row!r}, {column}: missing value")
        cx, cy, scale = _canonical(self.twin_cfg)
        labels = rows[list(LABELS)].to_numpy(np.float64)
        boxes = self.framing.box(labels[:, :3])
        recipes = []
        for lab, (dx, dy, side), glasses in zip(labels, boxes, rows["glasses"]):
            mx, my, half = cx + dx * scale, cy + dy * scale, side * scale / 2
            x0, y0, crop = crop_box(np.array([mx - half, my - half, mx + half, my + half]), self.detect_cfg.margin)
            recipes.append({
                "rig": "twin", **{k: float(v) for k, v in zip(LABELS, lab)}, "glasses": bool(glasses),
                "head": [cx - x0, cy - y0, scale], "crop": crop,
                "crop_size": self.detect_cfg.crop_size, "image_size": self.image_size,
            })
        return recipes

    def render(self, rows: pd.DataFrame) -> np.ndarray:
        out = np.empty((len(rows), self.image_size, self.image_size, 3), np.uint8)
        for i, recipe in enumerate(self.crops(rows)):
            out[i] = _render(recipe)
        return out

    def recipe(self, row: pd.Series) -> str:
        return json.dumps(self.crops(row.to_frame().T)[0], sort_keys=True)


def _render(recipe: dict[str, Any]) -> np.ndarray:
    """One source from its recipe: the rig rendered into the crop, then detect's and augment's resizes."""
    x, y, scale = recipe["head"]
    crop, size = int(recipe["crop"]), int(recipe["image_size"])
    pose = twin.Pose(*(float(recipe[k]) for k in LABELS), x, y, scale)
    img = twin.render_source(twin._View(pose, crop, crop), bool(recipe["glasses"]), crop, crop)
    img = resize_crop(img, int(recipe["crop_size"]))
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def render_recipe(recipe: str) -> np.ndarray:
    """Re-render a built-in rig source from :meth:`TwinRig.recipe` (S, S, 3) uint8, no calibration."""
    data = json.loads(recipe)
    if data.get("rig") != "twin":
        raise ValueError(f"not a built-in rig recipe: {recipe[:80]}")
    return _render(data)


def built_in_rig(
    image_size: int, detect_cfg: DetectConfig, twin_cfg: TwinConfig, cache: Path | None = None
) -> TwinRig:
    """The built-in rig; ``cache``: the calibration's JSON file (see :func:`calibrate`)."""
    return TwinRig(image_size, detect_cfg, twin_cfg, cache)


# --------------------------------------------------------------------------------- spec
def check_spec(gen_cfg: Any) -> None:
    """The spec asks only for what the rig can render, before any work.

    Built-in rig: every label range (or every row of ``generate.labels_table``) inside
    :data:`RIG_LIMITS`, the range the twin's trajectories cover, hence what the generator was
    trained on. Folder rig: ``rig_path`` is given and exists, and ``rig_labels`` when given (the
    rows are checked by :func:`folder_rig`). A bad setting raises ConfigError naming ``generate.<key>``.
    """
    if gen_cfg.rig == "folder":
        for key in ("rig_path", "rig_labels"):  # without rig_labels the labels are unknown
            value = getattr(gen_cfg, key)
            if value is None and key == "rig_path":
                raise ConfigError(f"generate.{key}: the folder rig (generate.rig: folder) needs it")
            if value is not None and not Path(value).exists():
                raise ConfigError(f"generate.{key}: {value} does not exist")
        return
    if gen_cfg.labels_table is not None:
        if not Path(gen_cfg.labels_table).is_file():
            raise ConfigError(f"generate.labels_table: {gen_cfg.labels_table} does not exist")
        read_label_table(gen_cfg.labels_table, RIG_LIMITS)
        return
    for key in LABELS:
        spec, limit = getattr(gen_cfg, key), RIG_LIMITS[key]
        if not (math.isfinite(spec.low) and math.isfinite(spec.high)) or spec.low > spec.high:
            raise ConfigError(f"generate.{key}: [{spec.low:g}, {spec.high:g}] is not a range (low <= high)")
        if spec.low < -limit or spec.high > limit:
            raise ConfigError(
                f"generate.{key}: [{spec.low:g}, {spec.high:g}] degrees is outside the built-in rig's range "
                f"[-{limit:g}, {limit:g}] (the twin's trajectories, which the generator was trained on)"
            )
