"""Which detected face a frame keeps, and the crop files' names and columns: the face policy
both families' detect stages apply (``detect.min_probability``, ``detect.multiple_faces``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nirgan import io
from nirgan.config import DetectConfig
from nirgan.detection.mtcnn import Faces

LANDMARKS: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
BOX_COLUMNS: tuple[str, ...] = ("box_x0", "box_y0", "box_x1", "box_y1")
LANDMARK_COLUMNS: tuple[str, ...] = tuple(f"lm_{n}_{a}" for n in LANDMARKS for a in ("x", "y"))


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


def read_grey(path: Path) -> np.ndarray | str:
    """A grey image, or the reason it cannot be read (a reject, never a crash)."""
    try:
        return io.read_image(path, channels=1)
    except (ValueError, OSError) as exc:
        return str(exc)


def crop_path(raw_rel: str) -> str:
    return Path(raw_rel).with_suffix(".png").as_posix()
