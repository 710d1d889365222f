"""The three sources of labelled grayscale faces the expression pipeline reads.

Each source yields :class:`Sample` rows (an id, the subject when known, the label name, the
FER2013 ``Usage`` when there is one, and the image) and puts every input it cannot use into
a :class:`~nirgan.safe_read.Rejects` table (``path, sample_id, reason``), so every file and
every CSV row is accounted for. Label names always come from the data: the folder names, or
the label map that names FER2013's integers; nothing here knows how many labels there are.

``twin_samples(cfg)``  (``collect.source: expression_twin``)
    :mod:`nirgan.expression.twin`; ``sample_id`` ``<subject>/<label>/<frame:03d>``. Nothing is
    rejected; each sample carries its ground truth (strength, controls, pose).
``label_folder_samples(root, ccfg, rejects)``  (``label_folders``)
    ``<root>/<label>/<image>``, the layout of the Imperial set; ``sample_id`` is the path
    without its extension (``happy/img_001``). Images go through
    :func:`nirgan.safe_read.inspect_image` (colour photos become grey). Reasons beyond the
    safe-read ones: ``unexpected_location`` (not exactly one folder deep), ``unsupported_file``
    (no image extension), ``duplicate_sample`` (``a.jpg`` beside ``a.png``). An optional
    subject table (``collect.labels``, CSV or Parquet, columns ``file`` — the path relative to
    ``root`` — and ``subject``) gives subject ids; files it does not list have subject ``""``.
    The table may lie inside ``root`` (it is then no input). A table row with no subject is
    ``subject_missing_value``, one whose file is not kept
    ``subject_without_image`` (``path`` is ``<table>:<row>``); a table without those columns,
    or naming a file twice, stops collect with a one-line ``DataError``.
``fer2013_samples(path, names, rejects)``  (``fer2013``)
    The FER2013 CSV: ``emotion`` (integer index into ``names``), ``pixels`` (48 x 48 = 2304
    space-separated integers 0..255, row-major) and, optionally, ``Usage`` (``Training``,
    ``PublicTest``, ``PrivateTest``; kept as the sample's usage, which split obeys).
    ``sample_id`` is ``fer2013/<line:06d>``, the CSV line (the header is line 1; a quoted field
    may span lines, and the rejects row then names the range ``<file>:<first>-<last>``). Row reasons
    (``path`` is ``<file>:<line>``): ``wrong_field_count``, ``label_missing_value``,
    ``label_not_a_number``, ``unknown_label`` (no name for that integer), ``pixels_missing_value``,
    ``pixels_not_numeric`` (NaN and words included), ``pixel_out_of_range``,
    ``wrong_pixel_count``, ``unknown_usage``. A CSV without ``emotion`` or ``pixels`` stops
    collect with a one-line ``DataError``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nirgan.config import CollectConfig, DataError, ExpressionTwinConfig
from nirgan.safe_read import IMAGE_EXTS, Rejects, input_files, inspect_image, read_user_table

FER2013_SIDE = 48
FER2013_USAGES = ("Training", "PublicTest", "PrivateTest")


@dataclass
class Sample:
    sample_id: str
    subject: str  # "" when unknown
    label: str
    usage: str  # FER2013's Usage, "" elsewhere
    image: np.ndarray | Path  # a grey array to encode, or an 8-bit grey PNG to copy byte for byte
    truth: dict[str, Any] = field(default_factory=dict)  # twin only: what the renderer was told


# ------------------------------------------------------------------------------- twin
def twin_samples(cfg: ExpressionTwinConfig) -> Iterator[Sample]:
    from nirgan.expression import twin as twin_expression

    for f in twin_expression.render_expressions(cfg):
        truth = {"intensity": f.intensity, "camera": f.camera, "head_yaw": f.pose.yaw, "head_pitch": f.pose.pitch,
                 "head_roll": f.pose.roll, **{f"control_{k}": v for k, v in vars(f.controls).items()}}
        yield Sample(f.sample_id, f.subject, f.expression, "", f.image, truth)


# ---------------------------------------------------------------------- label folders
def label_folder_samples(root: Path, ccfg: CollectConfig, rejects: Rejects) -> list[Sample]:
    samples: dict[str, Sample] = {}
    sources: dict[str, str] = {}  # sample_id -> the file's relative path
    table = _table_path(ccfg.labels, root)
    for entry in input_files(root):
        if table is not None and entry.path.resolve() == table:
            continue  # the subject table kept beside the folders is no input image
        rel = entry.path.relative_to(root)
        path = rel.as_posix()
        sid = rel.with_suffix("").as_posix()
        if entry.rejected:
            rejects.add(path, None, entry.rejected)
        elif len(rel.parts) != 2:
            rejects.add(path, None, "unexpected_location")
        elif rel.suffix.lower() not in IMAGE_EXTS:
            rejects.add(path, None, "unsupported_file")
        elif sid in samples:
            rejects.add(path, sid, "duplicate_sample")
        elif isinstance(image := inspect_image(entry.path, "to_grey", ccfg.max_pixels, ccfg.max_side, ccfg.bit_depth), str):
            rejects.add(path, sid, image)
        else:
            samples[sid] = Sample(sid, "", rel.parts[0], "", image.data)
            sources[sid] = path
    if ccfg.labels is not None:
        _apply_subject_table(ccfg.labels, root, samples, sources, rejects)
    return list(samples.values())


def _table_path(labels: Path | None, root: Path) -> Path | None:
    if labels is None:
        return None
    path = labels if labels.exists() or labels.is_absolute() else root / labels
    return path.resolve()


def _apply_subject_table(
    path: Path, root: Path, samples: dict[str, Sample], sources: dict[str, str], rejects: Rejects
) -> None:
    table, first_row, name, path = read_user_table(path, root, "subject table")
    missing = [c for c in ("file", "subject") if c not in table.columns]
    if missing:
        raise DataError(f"{path}: subject table lacks column(s) {', '.join(missing)} (needs file, subject)")
    by_file = {p: sid for sid, p in sources.items()}
    seen: dict[str, int] = {}
    for i, (file, subject) in enumerate(zip(table["file"], table["subject"], strict=True)):
        row = first_row + i
        file = Path(str(file)).as_posix()
        if file in seen:
            raise DataError(f"{path}, row {row}, file {file!r}: repeats row {seen[file]}")
        seen[file] = row
        subject = _subject_text(subject)
        if not subject:
            rejects.add(f"{name}:{row}", by_file.get(file), "subject_missing_value")
        elif file not in by_file:
            rejects.add(f"{name}:{row}", None, "subject_without_image")
        else:
            samples[by_file[file]].subject = subject


def _subject_text(value: Any) -> str:
    """A subject id as text: "" when missing; 7.0 (an integer column with gaps) is "7"."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


# ---------------------------------------------------------------------------- FER2013
def fer2013_samples(path: Path, names: tuple[str, ...], rejects: Rejects) -> Iterator[Sample]:
    """Every row of the CSV, either a sample or a rejects row (module docstring)."""
    try:
        f = open(path, newline="", encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the FER2013 CSV: {exc.strerror}") from None
    with f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ("emotion", "pixels") if c not in header]
        if missing:
            raise DataError(f"{path}: FER2013 CSV lacks column(s) {', '.join(missing)} (header {header})")
        col = {c: header.index(c) for c in ("emotion", "pixels", "Usage") if c in header}
        end = reader.line_num
        while True:
            start = end + 1
            try:
                row = next(reader, None)
            except csv.Error as exc:
                raise DataError(f"{path}, line {start}: not valid CSV: {exc}") from None
            if row is None:
                return
            end = reader.line_num
            # an unbalanced quote makes one record of several lines: the rejects row names them all
            where = f"{path.name}:{start}" if start == end else f"{path.name}:{start}-{end}"
            sid = f"fer2013/{start:06d}"
            result = _fer_row(row, len(header), col, names)
            if isinstance(result, str):
                rejects.add(where, sid, result)
            else:
                label, image, usage = result
                yield Sample(sid, "", label, usage, image)


def _fer_row(row: list[str], width: int, col: dict[str, int], names: tuple[str, ...]) -> tuple[str, np.ndarray, str] | str:
    if len(row) != width:
        return "wrong_field_count"
    emotion = row[col["emotion"]].strip()
    if emotion.lower() in ("", "nan", "na", "null"):
        return "label_missing_value"
    try:
        index = int(emotion)
    except ValueError:
        return "label_not_a_number"
    if not 0 <= index < len(names):
        return "unknown_label"
    text = row[col["pixels"]].strip()
    if text.lower() in ("", "nan", "na", "null"):
        return "pixels_missing_value"
    try:
        values = np.array(text.split(), dtype=np.int64)  # "nan", "1.5" and words all fail here
    except (ValueError, OverflowError):
        return "pixels_not_numeric"
    if len(values) != FER2013_SIDE * FER2013_SIDE:
        return "wrong_pixel_count"
    if values.min() < 0 or values.max() > 255:
        return "pixel_out_of_range"
    usage = ""
    if "Usage" in col:
        usage = row[col["Usage"]].strip()
        if usage not in FER2013_USAGES:
            return "unknown_usage"
    return names[index], values.astype(np.uint8).reshape(FER2013_SIDE, FER2013_SIDE), usage
