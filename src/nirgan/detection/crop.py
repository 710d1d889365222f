"""The square face crop: the box detect cuts around an MTCNN detection, and the cut itself.

Detect applies it to every training pair; generation's built-in rig frames its renders with
the same box, so both must come from this one place.
"""

from __future__ import annotations

import cv2
import numpy as np


def crop_box(box: np.ndarray, margin: float) -> tuple[int, int, int]:
    """The square crop (x0, y0, side) in whole pixels around an MTCNN box."""
    box = np.asarray(box, dtype=np.float64)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(1, round(max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * margin)))
    return round(cx - side / 2), round(cy - side / 2), side


def cut(img: np.ndarray, x0: int, y0: int, side: int, size: int) -> np.ndarray:
    """The square ``side`` x ``side`` region at (x0, y0), black outside the frame, resized to ``size``."""
    h, w = img.shape[:2]
    canvas = np.zeros((side, side, *img.shape[2:]), dtype=img.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return resize_crop(canvas, size)


def resize_crop(canvas: np.ndarray, size: int) -> np.ndarray:
    """A square crop to ``size``: area interpolation when shrinking, linear when enlarging."""
    side = canvas.shape[0]
    if side == size:
        return canvas
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(canvas, (size, size), interpolation=interp)
