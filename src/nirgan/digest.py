"""A content digest of named arrays: what a training run's resume fingerprint and the baselines
stage's record were computed from (:mod:`nirgan.training.fingerprint`, :mod:`nirgan.metrics.baselines`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np


def data_digest(arrays: Mapping[str, Any]) -> str:
    """sha256 over named arrays (numpy arrays, CPU tensors, or lists of strings), with their dtypes
    and shapes, so that the same bytes read as another shape do not collide."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        if a.dtype.kind in "OUS":  # subjects, label names: their text
            h.update(json.dumps([str(v) for v in a.reshape(-1)]).encode())
        else:
            h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.hexdigest()[:16]
