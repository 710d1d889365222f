"""A folder rig's renders framed as detect framed the training sources, whatever their size.

Detect cut every training source with the square box (``detect.margin``) around MTCNN's
detection on the *target* face, resized to ``detect.crop_size``, then augment resized it to
``augment.image_size``. A rig render has no target, and MTCNN finds no face on the rig's
colour-coded mask (measured: 0 of 16 twin source renders, against 16 of 16 of their targets).
So the box is predicted from the mask itself: the bounding box of its non-black pixels (the
head, glasses included) and where its eyes are. The relation is fitted once per configuration,
by least squares on the same twin frames that calibrate the built-in rig
(:func:`nirgan.generation.rig.calibrate`): detect's box centre offset and side, in units of the
mask box's height, from the box's aspect ratio (and its square) and the eyes' offset from the
box centre, which follow the head's yaw and pitch. Measured on 24 raw twin frames (320x240,
varied pose, position and scale): the framed source masks overlap detect's with median IoU
0.950 (10th percentile 0.907), as the built-in rig's do; resizing the frame as it is: 0.552.

``generate.rig_framing``:

auto
    each render is cut with the predicted box, unless it already is such a crop (square, the
    predicted crop within 10 % of its side and its centre): then it is only resized. So raw
    frames of any size and detect-style crops can share one folder.
crop
    every render is a raw frame: always cut.
none
    every render is already a detect-style crop: only resized (square renders only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from nirgan.config import DataError
from nirgan.detection.crop import crop_box, cut

FRAMED_TOLERANCE = 0.10  # auto: a render whose predicted crop is this close to its own frame is a crop already
_INK = 32  # a pixel brighter than this in any channel belongs to the mask (the background is black)
MASK_FEATURES = "box ratio, ratio^2, eyes dx dy"  # in the calibration's cache key: a change recalibrates


def mask_box(img: np.ndarray) -> np.ndarray | None:
    """The render's mask geometry: the bounding box (x0, y0, x1, y1) of its non-black pixels and
    the centroid (x, y) of its eyes (the colour code's green eye whites and blue irises; the box
    centre when none show); None when the render is all black."""
    ys, xs = np.nonzero(img.max(axis=2) > _INK)
    if len(xs) == 0:
        return None
    box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    r, g, b = (img[..., k].astype(np.int16) for k in range(3))
    ey, ex = np.nonzero((np.maximum(g, b) > 128) & (r < 128))
    eyes = [ex.mean() + 0.5, ey.mean() + 0.5] if len(ex) else [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]
    return np.array(box + eyes, np.float64)


def mask_features(geometry: np.ndarray) -> np.ndarray:
    """(n, 6) mask geometries -> (n, 5) features: 1, the box's aspect ratio (width / height) and its
    square, and the eyes' offset from the box centre in box heights (they follow yaw and pitch)."""
    m = np.asarray(geometry, np.float64).reshape(-1, 6)
    height = np.maximum(m[:, 3] - m[:, 1], 1.0)
    ratio = (m[:, 2] - m[:, 0]) / height
    ex, ey = (m[:, 4] - (m[:, 0] + m[:, 2]) / 2) / height, (m[:, 5] - (m[:, 1] + m[:, 3]) / 2) / height
    return np.stack([np.ones_like(ratio), ratio, ratio * ratio, ex, ey], axis=1)


def mask_targets(masks: np.ndarray, detections: np.ndarray) -> np.ndarray:
    """What the fit predicts, from (n, 6) mask geometries and detect's (n, 4) MTCNN boxes: the box's
    centre offset from the mask box's centre and its longer side, in mask-box heights."""
    m, b = np.asarray(masks, np.float64).reshape(-1, 6), np.asarray(detections, np.float64)
    height = np.maximum(m[:, 3] - m[:, 1], 1.0)
    return np.stack([((b[:, 0] + b[:, 2]) - (m[:, 0] + m[:, 2])) / 2 / height,
                     ((b[:, 1] + b[:, 3]) - (m[:, 1] + m[:, 3])) / 2 / height,
                     np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / height], axis=1)


@dataclass(frozen=True)
class RenderFraming:
    """How :class:`~nirgan.generation.rig.FolderRig` turns one render into a source."""

    mode: str  # auto | crop | none
    coef: np.ndarray | None  # (5, 3): mask_features -> mask_targets; None for mode none
    margin: float
    crop_size: int

    def crop(self, img: np.ndarray, path: Path) -> tuple[int, int, int] | None:
        """detect's square crop (x0, y0, side) for this render, or None when it is framed already."""
        if self.mode == "none":
            return None
        box = mask_box(img)
        if box is None:
            raise DataError(f"{path}: the render is black: no rig head to frame (generate.rig_framing: {self.mode})")
        dx, dy, side = (mask_features(box) @ self.coef)[0]
        height = box[3] - box[1]
        cx, cy, half = (box[0] + box[2]) / 2 + dx * height, (box[1] + box[3]) / 2 + dy * height, side * height / 2
        x0, y0, crop = crop_box(np.array([cx - half, cy - half, cx + half, cy + half]), self.margin)
        h, w = img.shape[:2]
        if self.mode == "auto" and h == w and max(abs(crop - w), abs(x0 + crop / 2 - w / 2),
                                                  abs(y0 + crop / 2 - h / 2)) <= FRAMED_TOLERANCE * w:
            return None
        return x0, y0, crop

    def frame(self, img: np.ndarray, size: int, path: Path) -> np.ndarray:
        """The source as training saw it: cut as detect cuts (black outside the frame), resized to
        ``crop_size``, then to ``size`` as augment resizes; a framed render only resized."""
        at = self.crop(img, path)
        if at is not None:
            img = cut(img, *at, self.crop_size)
        if img.shape[0] != img.shape[1]:
            raise DataError(f"{path}: is {img.shape[1]}x{img.shape[0]}; with generate.rig_framing: none the renders "
                            "must be square detect-style crops (or set rig_framing: auto)")
        interp = cv2.INTER_AREA if img.shape[0] >= size else cv2.INTER_LINEAR
        return cv2.resize(img, (size, size), interpolation=interp)
