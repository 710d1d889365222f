"""Reading a labels table (CSV or Parquet) safely: one reader for collect and for generation.

Columns: ``head_yaw, head_pitch, head_roll, gaze_yaw, gaze_pitch`` (degrees), ``glasses``
(true/false, optional unless asked for) and, where rows name pairs, ``pair_id``
(``<subject>_<camera>/<frame>``; the frame may be spelled as the files spell it: ``12``,
``00012``, ``frame_12.png``). A table that cannot be used (unreadable, a missing column, a
repeated or malformed ``pair_id``, text in a label column, a ``glasses`` value that is not
true/false) raises one-line :class:`~nirgan.config.DataError` naming the file, the row and
the key. "Row" is the line of a CSV file (the header is row 1), or the 1-based row of a
Parquet file. Missing (NaN) labels are left to the caller: collect rejects those rows,
generation refuses them.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd

from nirgan.config import DataError
from nirgan.labels import LABELS

_FRAME = re.compile(r"(?<!\d)(\d{1,18})$")  # as collect reads file names: an int64 frame


def canonical_pair_id(raw: str) -> str | None:
    """``alice_cam1/frame_12.png`` -> ``alice_cam1/00012``; None when it names no frame. In NFC, as
    collect reads folder names (:func:`nirgan.stages.collect.parse_recording`)."""
    name, _, frame = unicodedata.normalize("NFC", raw).rpartition("/")
    m = _FRAME.search(Path(frame).stem)
    return f"{name}/{int(m.group(1)):05d}" if name and m is not None else None


def read_label_table(
    path: Path, key: str, pair_ids: bool = True, glasses: bool = False
) -> tuple[pd.DataFrame, pd.Series]:
    """The table's labels and each row's number.

    Returns ``(table, rows)``: ``table`` has the ``LABELS`` (float64, NaN where missing) and
    ``glasses`` (pandas ``boolean``) when the file has it (required with ``glasses=True``),
    indexed by canonical ``pair_id`` when ``pair_ids`` (then required), else by position;
    ``rows`` gives each index entry's row number (see the module docstring). ``key`` names the
    setting the path came from, for the error about an unsupported file type.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            table, first_row = pd.read_csv(path), 2  # row 1 is the header line
        elif suffix in (".parquet", ".pq"):
            table, first_row = pd.read_parquet(path), 1
        else:
            raise DataError(f"{path}: {key} must be .csv or .parquet")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        if isinstance(exc, DataError):
            raise
        hint = "; save it as UTF-8" if isinstance(exc, UnicodeDecodeError) else ""
        raise DataError(f"{path}: cannot read the labels table: {str(exc).splitlines()[0]}{hint}") from None
    check_row_width(table, path, first_row)
    required = [*(["pair_id"] if pair_ids else []), *LABELS, *(["glasses"] if glasses else [])]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{path}: labels table lacks column(s) {', '.join(missing)}")
    rows = pd.RangeIndex(first_row, first_row + len(table))

    def where(i: int, column: str, value: object) -> str:
        value = value.item() if isinstance(value, np.generic) else value  # 0, not np.int64(0)
        return f"{path}, row {rows[i]}, {column} {value!r}"

    if pair_ids:
        index = []
        for i, raw in enumerate(table["pair_id"].astype(str)):
            pid = canonical_pair_id(raw)
            if pid is None:
                raise DataError(f"{where(i, 'pair_id', raw)}: not <subject>_<camera>/<frame>")
            index.append(pid)
        seen: dict[str, int] = {}
        for i, pid in enumerate(index):
            if pid in seen:
                raise DataError(f"{where(i, 'pair_id', pid)}: repeats row {rows[seen[pid]]}")
            seen[pid] = i
        out = pd.DataFrame(index=pd.Index(index, name="pair_id"))
    else:
        out = pd.DataFrame(index=pd.RangeIndex(len(table)))
    for column in LABELS:
        flags = [i for i, v in enumerate(table[column]) if isinstance(v, (bool, np.bool_))]
        if flags:  # to_numeric would read true/false as 1/0 degrees
            raise DataError(f"{where(flags[0], column, table[column].iloc[flags[0]])}: not a number (degrees)")
        values = pd.to_numeric(table[column], errors="coerce").to_numpy("float64")
        text = np.flatnonzero(np.isnan(values) & table[column].notna().to_numpy())
        if len(text):
            i = int(text[0])
            raise DataError(f"{where(i, column, table[column].iloc[i])}: not a number (degrees)")
        out[column] = values
    if "glasses" in table.columns:
        try:
            out["glasses"] = table["glasses"].astype("boolean").to_numpy()
        except (TypeError, ValueError):
            bad = next(i for i, v in enumerate(table["glasses"]) if not _bool_like(v))
            raise DataError(f"{where(bad, 'glasses', table['glasses'].iloc[bad])}: not true/false") from None
    return out, pd.Series(rows, index=out.index)


def _bool_like(value: object) -> bool:
    """What pandas' ``boolean`` dtype takes: true/false, 0/1 or missing."""
    try:
        pd.array([value], dtype="boolean")
    except (TypeError, ValueError):
        return False
    return True


def check_row_width(table: pd.DataFrame, path: Path, first_row: int) -> None:
    """A CSV whose every row has one field more than its header reads without an error: pandas
    takes the first field as the row index and shifts every value one column left."""
    if not isinstance(table.index, pd.RangeIndex):
        raise DataError(f"{path}, row {first_row}: more fields than the header's {len(table.columns)} columns "
                        f"({', '.join(map(str, table.columns))}): add the missing column name or remove the "
                        "extra field")
