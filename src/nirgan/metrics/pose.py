"""Attribute preservation in degrees: absolute errors of the pose/gaze estimator per label."""

from __future__ import annotations

import numpy as np

from nirgan.labels import LABELS

HEAD = ("head_yaw", "head_pitch", "head_roll")
GAZE = ("gaze_yaw", "gaze_pitch")


def angle_errors(pred: np.ndarray, truth: np.ndarray, prefix: str) -> dict[str, float]:
    """``<prefix>_<label>_mean`` / ``_p90`` absolute error (deg) per label, plus
    ``<prefix>_head_mean`` / ``<prefix>_gaze_mean`` (mean absolute error over the head's three
    and the gaze's two angles: the figures the calibration targets of 2 and 3 degrees refer to).
    """
    err = np.abs(np.asarray(pred, np.float64) - np.asarray(truth, np.float64))
    out: dict[str, float] = {}
    for j, name in enumerate(LABELS):
        out[f"{prefix}_{name}_mean"] = float(err[:, j].mean())
        out[f"{prefix}_{name}_p90"] = float(np.percentile(err[:, j], 90))
    out[f"{prefix}_head_mean"] = float(err[:, [LABELS.index(n) for n in HEAD]].mean())
    out[f"{prefix}_gaze_mean"] = float(err[:, [LABELS.index(n) for n in GAZE]].mean())
    return out
