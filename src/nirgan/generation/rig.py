"""STAND-IN for gen-rig's ``nirgan.generation.rig`` (issue 11): the lead replaces this file with
gen-rig's at merge. It keeps to the contract's API (``built_in_rig``, ``folder_rig``,
``check_spec``, ``RIG_LIMITS``, ``SourceRig.render`` / ``.recipe``) with the simplest framing
that matches the prepared training sources of the default twin: the head centred at a fixed
place and scale of the crop (detect's box is about 3.1 head units wide, the head centre
at 43 % of its height), not the MTCNN box itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from nirgan.config import ConfigError, DataError, DetectConfig, GenerateConfig, TwinConfig
from nirgan.io import read_image
from nirgan.labels import LABELS
from nirgan.twin import LIMITS, Pose, _View, render_source

LABEL_COLUMNS: tuple[str, ...] = (*LABELS, "glasses")
RIG_LIMITS: dict[str, float] = dict(LIMITS)
_HEAD_UNITS_PER_CROP = 3.125
_HEAD_Y = 0.43


class SourceRig(Protocol):
    image_size: int

    def render(self, rows: pd.DataFrame) -> np.ndarray: ...

    def recipe(self, row: pd.Series) -> str: ...


class _TwinRig:
    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def render(self, rows: pd.DataFrame) -> np.ndarray:
        s = self.image_size
        out = np.empty((len(rows), s, s, 3), np.uint8)
        for k, row in enumerate(rows.itertuples(index=False)):
            pose = Pose(row.head_yaw, row.head_pitch, row.head_roll, row.gaze_yaw, row.gaze_pitch,
                        s / 2, _HEAD_Y * s, s / _HEAD_UNITS_PER_CROP)
            out[k] = render_source(_View(pose, s, s), bool(row.glasses), s, s)
        return out

    def recipe(self, row: pd.Series) -> str:
        return json.dumps({"rig": "twin", "image_size": self.image_size,
                           **{c: float(row[c]) for c in LABELS}, "glasses": bool(row["glasses"])})


class _FolderRig:
    def __init__(self, root: Path, image_size: int) -> None:
        self.root, self.image_size = root, image_size

    def render(self, rows: pd.DataFrame) -> np.ndarray:
        import cv2

        s = self.image_size
        out = np.empty((len(rows), s, s, 3), np.uint8)
        for k, rel in enumerate(rows["source_path"]):
            img = read_image(self.root / rel, 3)
            out[k] = img if img.shape[:2] == (s, s) else cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
        return out

    def recipe(self, row: pd.Series) -> str:
        return json.dumps({"rig": "folder", "source_path": str(row["source_path"])})


def built_in_rig(image_size: int, detect_cfg: DetectConfig, twin_cfg: TwinConfig) -> SourceRig:
    return _TwinRig(image_size)


def folder_rig(rig_path: Path, labels_path: Path, image_size: int) -> tuple[SourceRig, pd.DataFrame]:
    table = pd.read_parquet(labels_path) if str(labels_path).endswith(".parquet") else pd.read_csv(labels_path)
    if "source_path" not in table.columns:
        raise DataError(f"{labels_path}: no source_path column")
    for i, rel in enumerate(table["source_path"]):
        if not (Path(rig_path) / str(rel)).is_file():
            raise DataError(f"{labels_path}: row {i}: source_path: {rel} is not a file under {rig_path}")
    return _FolderRig(Path(rig_path), image_size), table


def check_spec(gen_cfg: GenerateConfig) -> None:
    if gen_cfg.rig != "twin" or gen_cfg.labels_table is not None:
        return
    for name, limit in RIG_LIMITS.items():
        r = getattr(gen_cfg, name)
        if r.low < -limit or r.high > limit:
            raise ConfigError(f"generate.{name}: [{r.low}, {r.high}] is outside the built-in rig's range "
                              f"[{-limit}, {limit}] degrees")
