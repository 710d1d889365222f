"""The label rows a dataset asks for, one per image index.

Row i depends only on (``generate.seed``, i), never on the rows before it, so any shard can be
produced (or retried) on its own and give the same rows:

- ranges: each label uniform on its ``LabelRange``, glasses a Bernoulli(``glasses_fraction``),
  from a generator seeded by (seed, source number);
- a table (``generate.labels_table``, or a folder rig's own rows): the table's exact rows, cycled.

``latents_per_source`` = k: images k*s .. k*s + k - 1 share source number s (the same row, so the
same render) and differ only in their latent. Overflow rows (replacements for images the label
check kept rejecting) come from a separate stream keyed by (seed, shard, j), so they too are
reproducible per shard.

A table is validated before any work: every bad row is a :class:`DataError` naming the file, the
row and the key. "Row" is as collect counts it: the line of a CSV file (the header is row 1), or
the 1-based row of a Parquet file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nirgan.config import DataError, GenerateConfig
from nirgan.labels import LABELS

LABEL_COLUMNS: tuple[str, ...] = (*LABELS, "glasses")
_ROW_STREAM, _OVERFLOW_STREAM = 1, 2
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def read_label_table(path: str | Path, limits: dict[str, float] | None = None) -> pd.DataFrame:
    """A labels table (CSV or Parquet) with columns ``LABEL_COLUMNS`` (others are kept), validated:
    labels finite numbers of degrees (within ``limits`` when given), glasses a boolean."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labels table does not exist")
    parquet = path.suffix.lower() in (".parquet", ".pq")
    try:
        table = pd.read_parquet(path) if parquet else pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure is this file's fault
        raise DataError(f"{path}: not a readable CSV/Parquet table ({type(exc).__name__}: {exc})") from None
    return validate_rows(table, str(path), limits, first_row=1 if parquet else 2)


def validate_rows(table: pd.DataFrame, origin: str, limits: dict[str, float] | None = None,
                  first_row: int = 1, unknown_ok: bool = False) -> pd.DataFrame:
    """``first_row``: the row number of the table's first row in its file (2 for a CSV's);
    ``unknown_ok``: an empty label or glasses cell is an unknown value (NaN, null), not an error
    (a folder rig's rows; ``glasses`` is then pandas' nullable ``boolean``)."""
    if len(table) == 0:
        raise DataError(f"{origin}: the labels table has no rows")
    missing = [c for c in LABEL_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{origin}: no column {missing[0]!r} (a labels table needs {', '.join(LABEL_COLUMNS)})")
    out = table.reset_index(drop=True).copy()
    for name in LABELS:
        values = pd.to_numeric(out[name], errors="coerce").astype(float)
        bad = ~np.isfinite(values.to_numpy()) & ~(unknown_ok & out[name].isna().to_numpy())
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raw = out[name].iloc[i]
            what = "missing value" if pd.isna(raw) else f"{raw!r} is not a finite number of degrees"
            raise DataError(f"{origin}, row {i + first_row}, {name}: {what}")
        if limits is not None and name in limits:
            outside = np.abs(values.to_numpy()) > limits[name]
            if outside.any():
                i = int(np.flatnonzero(outside)[0])
                raise DataError(f"{origin}, row {i + first_row}, {name}: {values.iloc[i]:g} is outside the rig's "
                                f"range [{-limits[name]:g}, {limits[name]:g}] degrees")
        out[name] = values
    out["glasses"] = pd.array([pd.NA if unknown_ok and pd.isna(v) else _boolean(v, origin, i + first_row)
                               for i, v in enumerate(out["glasses"])], dtype="boolean")
    return out


def _boolean(value: object, origin: str, row: int) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer, float, np.floating)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise DataError(f"{origin}, row {row}, glasses: {value!r} is not a boolean (true/false or 1/0)")


class LabelRows:
    """The requested rows of one spec: :meth:`rows` for image indices, :meth:`overflow` for a
    shard's replacement rows. Both return ``LABEL_COLUMNS`` plus ``table_row`` (the table row
    used, -1 for drawn rows) and the table's ``source_path`` when it has one (a folder rig)."""

    def __init__(self, spec: GenerateConfig, table: pd.DataFrame | None = None) -> None:
        self.spec, self.table = spec, table

    def rows(self, indices: np.ndarray | range) -> pd.DataFrame:
        sources = np.asarray(indices, dtype=np.int64) // self.spec.latents_per_source
        if self.table is not None:
            return self._table_rows(sources % len(self.table))
        return self._drawn([np.random.default_rng([self.spec.seed, _ROW_STREAM, int(s)]) for s in sources])

    def overflow(self, shard: int, js: np.ndarray | range) -> pd.DataFrame:
        rngs = [np.random.default_rng([self.spec.seed, _OVERFLOW_STREAM, shard, int(j)]) for j in js]
        if self.table is not None:
            return self._table_rows(np.array([rng.integers(len(self.table)) for rng in rngs], dtype=np.int64))
        return self._drawn(rngs)

    def _table_rows(self, picks: np.ndarray) -> pd.DataFrame:
        keep = [*LABEL_COLUMNS, *(["source_path"] if "source_path" in self.table.columns else [])]
        out = self.table.iloc[picks][keep].reset_index(drop=True)
        out.insert(len(LABEL_COLUMNS), "table_row", picks)
        return out

    def _drawn(self, rngs: list[np.random.Generator]) -> pd.DataFrame:
        ranges = [getattr(self.spec, name) for name in LABELS]
        values = np.array([[rng.uniform(r.low, r.high) for r in ranges] + [rng.random() < self.spec.glasses_fraction]
                           for rng in rngs], dtype=np.float64).reshape(len(rngs), len(LABEL_COLUMNS))
        out = pd.DataFrame(values[:, : len(LABELS)], columns=list(LABELS))
        out["glasses"] = values[:, -1].astype(bool)
        out["table_row"] = np.full(len(rngs), -1, np.int64)
        return out
