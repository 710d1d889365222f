"""Reading untrusted videos for collect's ``videos`` source: open, frames, and what a frame is.

The video counterpart of :mod:`nirgan.safe_read`: a video that cannot be used is a reject
*reason* string, never an exception, so collect can put it in its rejects table and go on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
# Containers whose header counts the frames; others (mkv, webm, mpeg) give FFmpeg's estimate from
# the duration, which a healthy file may not reach.
COUNTED_CONTAINERS = {".mp4", ".m4v", ".mov", ".avi"}
# Spread (std) of B - G plus that of G - R over a decoded frame, in grey levels, up to which it
# is grey. Lossy codecs store a grey video as colour with a constant offset between channels
# (4-5 grey levels through OpenCV's mp4v and MJPEG writers) but no spread (0.0 there); the
# colour-coded rig renders measured 120-140.
GREY_TOLERANCE = 4.0


def open_video(path: Path, max_pixels: int) -> cv2.VideoCapture | str:
    """The opened video, or why not: ``unreadable_video``, ``zero_byte``, ``too_large`` (by the
    container's frame size, before any frame is decoded)."""
    if not path.exists():
        return "unreadable_video"
    if path.stat().st_size == 0:
        return "zero_byte"
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        return "unreadable_video"
    if cap.get(cv2.CAP_PROP_FRAME_WIDTH) * cap.get(cv2.CAP_PROP_FRAME_HEIGHT) > max_pixels:
        cap.release()
        return "too_large"
    return cap


def frames(cap: cv2.VideoCapture) -> Iterator[np.ndarray]:
    """Every frame OpenCV decodes (BGR), until the first it cannot."""
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        yield frame


def declared_frames(cap: cv2.VideoCapture, path: Path | str) -> int:
    """The frame count the container's header gives; 0 where it only estimates one."""
    return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if Path(path).suffix.lower() in COUNTED_CONTAINERS else 0


def is_grey(frame: np.ndarray) -> bool:
    """A decoded (3-channel) frame holds a grey image, within what lossy codecs add."""
    f = frame.astype(np.int16)
    return float((f[..., 0] - f[..., 1]).std() + (f[..., 1] - f[..., 2]).std()) <= GREY_TOLERANCE
