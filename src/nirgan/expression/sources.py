"""The three sources of labelled grayscale faces the expression pipeline reads.

Each source yields :class:`Sample` rows (an id, the subject when known, the label name, the
FER2013 ``Usage`` when there is one, and the image) and puts every input it cannot use into
a :class:`~nirgan.safe_read.Rejects` table (``path, sample_id, reason``), so every file and
every CSV row is accounted for. Label names always come from the data: the folder names, or
the label map that names FER2013's integers; nothing here knows how many labels there are.
(Collect then rejects identical images given different labels: ``conflicting_labels``.)

``twin_samples(cfg)``  (``collect.source: expression_twin``)
    :mod:`nirgan.expression.twin`; ``sample_id`` ``<subject>/<label>/<frame:03d>``. Nothing is
    rejected; each sample carries its ground truth (strength, controls, pose).
``label_folder_samples(root, ccfg, rejects)``  (``label_folders``)
    ``<root>/<label>/<image>``, the layout of the Imperial set; ``sample_id`` is the path
    without its extension (``happy/img_001``). Images go through
    :func:`nirgan.safe_read.inspect_image` (colour photos become grey). Reasons beyond the
    safe-read ones: ``unexpected_location`` (not exactly one folder deep), ``unsupported_file``
    (no image extension), ``duplicate_sample`` (``a.jpg`` beside ``a.png``, or one name spelled
    composed and decomposed: ids are read in Unicode NFC). Label folders whose names differ only
    in case or spaces (``Happy``, ``happy``) stop collect with a ``DataError``. An optional
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
    ``sample_id`` is ``fer2013/<line:06d>``, the CSV line (the header is line 1; each line is one
    row, and blank lines are none). Column names are matched without regard to case (``usage``
    is ``Usage``). Row reasons (``path`` is ``<file>:<line>``): ``unbalanced_quote``,
    ``wrong_field_count``, ``label_missing_value``, ``label_not_a_number`` (ASCII digits only),
    ``unknown_label`` (no name for that integer), ``pixels_missing_value``, ``pixels_not_numeric``
    (NaN, ``1.5``, ``1_0`` and words included), ``pixel_out_of_range``, ``wrong_pixel_count``,
    ``unknown_usage``. An empty CSV, one with a header and no rows, one without ``emotion`` or
    ``pixels``, or with one of them twice, stops collect with a one-line ``DataError``.
"""

from __future__ import annotations

import csv
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nirgan.config import CollectConfig, DataError, ExpressionTwinConfig
from nirgan.safe_read import IMAGE_EXTS, Rejects, check_bit_depth, input_files, inspect_image, read_user_table

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
    origin: str = ""  # where it was read, as a rejects row names it (the file, or <csv>:<line>)


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
    tops: list[int | None] = []  # 16-bit files' largest samples (check_bit_depth)
    table = _table_path(ccfg.labels, root)
    for entry in input_files(root):
        if table is not None and entry.path.resolve() == table:
            continue  # the subject table kept beside the folders is no input image
        rel = entry.path.relative_to(root)
        path = rel.as_posix()
        # composed Unicode (NFC): "café" from macOS (decomposed) and from Linux is one name
        sid = unicodedata.normalize("NFC", rel.with_suffix("").as_posix())
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
            samples[sid] = Sample(sid, "", sid.split("/")[0], "", image.data, origin=path)
            sources[sid] = path
            tops.append(image.top)
    check_bit_depth(tops, ccfg.bit_depth, str(root))
    _refuse_clashing_labels(root, [s.label for s in samples.values()])
    if ccfg.labels is not None:
        _apply_subject_table(ccfg.labels, root, samples, sources, rejects)
    return list(samples.values())


def _refuse_clashing_labels(root: Path, labels: list[str]) -> None:
    """Label folders whose names differ only in case or surrounding spaces (``Happy``, ``happy``,
    ``happy ``) would be separate classes of one expression: which one is meant cannot be told."""
    spellings: dict[str, set[str]] = {}
    for label in labels:
        spellings.setdefault(label.strip().casefold(), set()).add(label)
    clashes = [sorted(names) for names in spellings.values() if len(names) > 1]
    if clashes:
        shown = "; ".join(", ".join(repr(n) for n in names) for names in clashes)
        raise DataError(f"{root}: label folders differ only in case or spaces, so each would be a class of its "
                        f"own: {shown}; rename them to one spelling")


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
_COLUMNS = {"emotion": "emotion", "pixels": "pixels", "usage": "Usage"}
_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits: int() also takes "1_0" and other scripts' digits


def fer2013_samples(path: Path, names: tuple[str, ...], rejects: Rejects) -> Iterator[Sample]:
    """Every row of the CSV, either a sample or a rejects row (module docstring). Each line is
    one row: a FER2013 field never holds a line break, so a stray quote costs its own line only
    (read as CSV, it swallowed every line up to the next quote)."""
    try:
        f = open(path, newline="", encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the FER2013 CSV: {exc.strerror}") from None
    with f:
        first = f.readline()
        if not first.strip():
            raise DataError(f"{path}: the FER2013 CSV is empty (no header line: emotion,pixels[,Usage])")
        header = [h.strip() for h in _csv_line(first) or []]
        col = _fer_columns(path, header)
        rows = 0
        for number, line in enumerate(f, start=2):
            if not line.strip():
                continue  # a blank line is no row (an editor's trailing newline)
            rows += 1
            where, sid = f"{path.name}:{number}", f"fer2013/{number:06d}"
            fields = _csv_line(line)
            result = "unbalanced_quote" if fields is None else _fer_row(fields, len(header), col, names)
            if isinstance(result, str):
                rejects.add(where, sid, result)
            else:
                label, image, usage = result
                yield Sample(sid, "", label, usage, image, origin=where)
        if not rows:
            raise DataError(f"{path}: the FER2013 CSV has a header and no data rows")


def _csv_line(line: str) -> list[str] | None:
    """The fields of one CSV line; None for a line whose quotes do not pair up."""
    if line.count('"') % 2:
        return None
    try:
        return next(csv.reader([line.rstrip("\r\n")]), [])
    except csv.Error:
        return None


def _fer_columns(path: Path, header: list[str]) -> dict[str, int]:
    """Where emotion, pixels and Usage are, their names matched without regard to case."""
    col: dict[str, int] = {}
    for i, name in enumerate(header):
        key = _COLUMNS.get(name.casefold())
        if key is None:
            continue  # another column: ignored
        if key in col:
            raise DataError(f"{path}: FER2013 CSV has two {key} columns ({header[col[key]]!r}, column "
                            f"{col[key] + 1}, and {name!r}, column {i + 1}): which one to read cannot be told")
        col[key] = i
    missing = [c for c in ("emotion", "pixels") if c not in col]
    if missing:
        raise DataError(f"{path}: FER2013 CSV lacks column(s) {', '.join(missing)} (header {header})")
    return col


def _fer_row(row: list[str], width: int, col: dict[str, int], names: tuple[str, ...]) -> tuple[str, np.ndarray, str] | str:
    if len(row) != width:
        return "wrong_field_count"
    emotion = row[col["emotion"]].strip()
    if emotion.lower() in ("", "nan", "na", "null"):
        return "label_missing_value"
    if not _INTEGER.fullmatch(emotion):
        return "label_not_a_number"
    index = int(emotion)
    if not 0 <= index < len(names):
        return "unknown_label"
    text = row[col["pixels"]].strip()
    if text.lower() in ("", "nan", "na", "null"):
        return "pixels_missing_value"
    tokens = text.split()
    if not all(_INTEGER.fullmatch(t) for t in tokens):  # "nan", "1.5", "1_0" and words
        return "pixels_not_numeric"
    try:
        values = np.array(tokens, dtype=np.int64)
    except OverflowError:
        return "pixel_out_of_range"
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
