"""Bring-your-own rig: a folder of source renders, with a labels table or without one.

Renders lie in the thesis layout collect reads, ``<rig_path>[/source]/<subject>_<camera>/<frame>.<ext>``,
framed as detect framed the training sources (:mod:`nirgan.generation.framing`). With a labels
table (collect's columns, :mod:`nirgan.label_table`) a label left empty is unknown; without one
every label is unknown, and the dataset says so. :mod:`nirgan.generation.rig` re-exports
:func:`folder_rig` beside the built-in rig.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from nirgan.config import DataError
from nirgan.generation.framing import RenderFraming
from nirgan.io import read_image
from nirgan.label_table import read_label_table as read_pair_labels
from nirgan.labels import LABEL_BOUNDS, LABELS

log = logging.getLogger("nirgan.generate")

LABEL_COLUMNS: tuple[str, ...] = (*LABELS, "glasses")

_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class FolderRig:
    """Bring-your-own rig: source renders framed as detect framed training's (``framing``, see
    :mod:`nirgan.generation.framing`; None: pre-framed crops, only resized) at ``image_size``."""

    def __init__(self, root: Path, image_size: int, framing: RenderFraming | None = None) -> None:
        self.root, self.image_size, self.framing = Path(root), int(image_size), framing

    def render(self, rows: pd.DataFrame) -> np.ndarray:
        out = np.empty((len(rows), self.image_size, self.image_size, 3), np.uint8)
        for i, rel in enumerate(rows["source_path"]):
            try:
                img = read_image(self.root / rel, channels=3)
            except (ValueError, OSError) as exc:  # changed on disk after folder_rig checked it
                raise DataError(f"{self.root / rel}: cannot read the source render: {exc}") from None
            if self.framing is not None:
                out[i] = self.framing.frame(img, self.image_size, self.root / rel)
                continue
            interp = cv2.INTER_AREA if img.shape[0] >= self.image_size else cv2.INTER_LINEAR
            out[i] = cv2.resize(img, (self.image_size, self.image_size), interpolation=interp)
        return out

    def recipe(self, row: pd.Series) -> str:
        framing = {} if self.framing is None else {"framing": self.framing.mode}
        return json.dumps({"rig": "folder", "source_path": str(row["source_path"]), **framing}, sort_keys=True)


def _frames_in(folder: Path) -> dict[int, list[Path]]:
    """Image files of one recording folder by frame number (the trailing digits of the name)."""
    found: dict[int, list[Path]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):  # macOS ._* AppleDouble files and the like, as collect skips them
                continue
            digits = len(path.stem) - len(path.stem.rstrip("0123456789"))
            if path.suffix.lower() in _IMAGE_EXTS and digits:
                found.setdefault(int(path.stem[-digits:]), []).append(path)
    return found


def _check_render(path: Path, where: str, square: bool = True) -> None:
    """An RGB image (``square``: a square one) by its header (nothing is decoded), else DataError
    naming row and file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height, mode = img.width, img.height, img.mode
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: {path} is not a readable image ({exc})") from None
    if mode not in ("RGB", "RGBA", "P"):
        raise DataError(f"{where}: {path} is {mode}, not an RGB rig render")
    if square and width != height:
        raise DataError(f"{where}: {path} is {width}x{height}; pre-framed source renders are square crops")


def folder_rig(rig_path: Path, labels_path: Path | None, image_size: int,
               framing: RenderFraming | None = None) -> tuple[FolderRig, pd.DataFrame]:
    """A folder of source renders, with its labels table (collect's layout) or without one.

    Renders lie at ``<rig_path>[/source]/<subject>_<camera>/<frame>.<ext>`` (the thesis
    layout collect reads). With a table: one render per ``pair_id`` of the table, which needs
    ``glasses`` too; a label left empty is unknown (NaN, glasses null), and the count is logged.
    Without one (``labels_path`` None): every render, in folder order, all labels unknown.
    Every row is checked before any work: its known labels, that its render exists inside
    ``rig_path``, and that the file is a square RGB image; the first bad row raises
    :class:`DataError` naming the table, row and key (or the file). Returns the rig and the
    rows it offers: ``pair_id``, ``LABELS``, ``glasses`` (nullable boolean), ``source_path``
    (relative to ``rig_path``), in table (or folder) order. ``framing``: see :class:`FolderRig`;
    renders need not be square unless it is None or ``none``.
    """
    root = Path(rig_path)
    if not root.is_dir():
        raise DataError(f"{root}: generate.rig_path is not a folder")
    base = root / "source" if (root / "source").is_dir() else root
    if labels_path is None:
        table, origin = _unlabelled(base), f"{base} (no generate.rig_labels)"
        rows = pd.Series(range(1, len(table) + 1), index=table.index)
    else:
        labels_path = Path(labels_path)
        table, rows = read_pair_labels(labels_path, "generate.rig_labels", pair_ids=True, glasses=True)
        origin = str(labels_path)
    real_root = root.resolve()
    listed: dict[str, dict[int, list[Path]]] = {}
    paths = []
    for pid, row in table.iterrows():
        where = f"{origin}, row {rows[pid]}"
        for key in LABELS:  # an empty cell is an unknown label, not an error
            if pd.notna(row[key]) and (not math.isfinite(row[key]) or abs(row[key]) > LABEL_BOUNDS[key]):
                raise DataError(f"{where}, {key}: {row[key]:g} degrees is outside the rig's domain "
                                f"[{-LABEL_BOUNDS[key]:g}, {LABEL_BOUNDS[key]:g}] (nirgan.labels.LABEL_BOUNDS)")
        recording, _, frame = pid.rpartition("/")
        candidates = listed.setdefault(recording, _frames_in(base / recording)).get(int(frame), [])
        if len(candidates) != 1:
            problem = "no source render" if not candidates else f"{len(candidates)} source renders"
            raise DataError(f"{where}, pair_id {pid!r}: {problem} in {base / recording} for frame {int(frame)}")
        path = candidates[0]
        if not path.resolve().is_relative_to(real_root):
            raise DataError(f"{where}, pair_id {pid!r}: {path} resolves outside {root}")
        _check_render(path, f"{where}, pair_id {pid!r}", square=framing is None or framing.mode == "none")
        paths.append(path.relative_to(root).as_posix())
    offered = table.reset_index()
    offered["glasses"] = offered["glasses"].astype("boolean")
    offered["source_path"] = paths
    unknown = int(offered[[*LABELS, "glasses"]].isna().any(axis=1).sum())
    if unknown:
        log.warning("generate: %d of %d folder rig rows have unknown labels (%s): their labels columns are null "
                    "and no label check applies to them", unknown, len(offered),
                    "no generate.rig_labels" if labels_path is None else f"empty cells in {labels_path}")
    return FolderRig(root, image_size, framing), offered[["pair_id", *LABEL_COLUMNS, "source_path"]]


def _unlabelled(base: Path) -> pd.DataFrame:
    """Every render under ``base`` as a row with unknown labels, indexed by pair_id, in folder order."""
    found = {}
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for frame, candidates in sorted(_frames_in(folder).items()):
            if len(candidates) != 1:
                raise DataError(f"{folder}: {len(candidates)} source renders for frame {frame} "
                                f"({', '.join(p.name for p in candidates)})")
            found[f"{folder.name}/{frame:05d}"] = None
    if not found:
        raise DataError(f"{base}: no source renders (<subject>_<camera>/<frame>.png) in generate.rig_path")
    table = pd.DataFrame(np.nan, index=pd.Index(list(found), name="pair_id"), columns=list(LABELS))
    table["glasses"] = pd.array([pd.NA] * len(table), dtype="boolean")
    return table
