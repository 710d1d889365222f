"""Safe reading of untrusted input files: the one place that opens what a user points collect at.

Everything here treats the input as hostile (a labelled dataset from elsewhere, a folder with
links, a half-copied file), and answers with a *reason* string instead of an exception where a
file is bad, so the caller can put it in a rejects table and go on:

``input_files(root, tops)``
    every entry under ``root/<top>`` for each top (or under ``root`` itself), every path resolved
    before anything is opened: a link resolving outside ``root`` is ``outside_root`` (a linked
    folder outside gives one row per entry in it, listed, never opened); a dangling link
    ``unreadable``; a FIFO, socket or device ``special_file``; a folder linking to itself
    ``link_loop``; a name starting with ``.`` (macOS ``._*`` AppleDouble files, ``.DS_Store``),
    or anything inside such a folder, ``hidden_file``; a path that is not valid UTF-8 (a folder
    copied from an old file system) ``undecodable_name``, named in rejects with ``\\xNN`` escapes.
``inspect_image(path, mode, max_pixels, max_side, bit_depth)``
    checks the magic bytes (``zero_byte``, ``not_an_image``, ``truncated``: a PNG whose chunks
    stop before IEND, a JPEG whose segments stop before its end marker; bytes *after* the end,
    as some cameras and editors append, are ignored), reads width and
    height from the header without decoding (``too_large`` over ``max_pixels``), decodes (JPEG at
    1/2, 1/4 or 1/8 when that still leaves ``max_side``; pixels as stored, EXIF orientation
    ignored at every size), drops alpha, converts 16-bit to 8-bit by ``bit_depth``
    (``above_bit_depth``: a value past it; ``low_bit_depth``: all values below 1/16 of it; and
    :func:`check_bit_depth` stops a dataset whose 16-bit files all stay below 1/4 of it),
    checks or converts channels for ``mode`` (``grey``: 1-channel NIR, a colour image is
    ``wrong_channels`` unless R = G = B; ``rgb``: a grey image is ``wrong_channels``;
    ``to_grey``: any image becomes grey, as expression sets of colour photos need) and
    area-downscales to ``max_side``. An 8-bit PNG that needs none of this comes back as its path,
    so the caller can copy it byte for byte.
``read_user_table(path, root)``
    a CSV or Parquet table (a relative path is looked up here, then under ``root``), with the
    number of its first data row ("row" is the CSV line, the header being row 1, or the 1-based
    Parquet row) and how rejects name it; an unreadable table is a one-line ``DataError``.
``PairLabels``
    the NIR pair labels table (pose and gaze by ``pair_id``); see ``nirgan.stages.collect``.
``Rejects``
    the rows of a rejects table: ``path``, the sample's id column, ``reason``.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd

from nirgan.config import DataError
from nirgan.label_table import check_row_width, read_label_table
from nirgan.labels import LABEL_BOUNDS, LABELS

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Trailing digits, at most 18 so the frame number fits the manifest's int64 column; a longer
# run of digits (``99999999999999999999.png``) names no frame.
FRAME = re.compile(r"(?<!\d)(\d{1,18})$")
# Reasons input_files gives to names that are no frame at all (they claim no frame number).
SKIPPED = frozenset({"hidden_file", "undecodable_name"})
# JPEG markers that end entropy-coded data: 0xFF then anything but a stuffed 0x00 or a restart.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def printable(text: str) -> str:
    """A path or id as a table can store it: bytes that were not UTF-8 (Python keeps them as
    lone surrogates) become ``\\xNN`` escapes instead of failing the Parquet write."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def decodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Rejects:
    """Rejects rows ``path, <id_column>, reason``: every input that is not kept is one."""

    def __init__(self, id_column: str = "pair_id") -> None:
        self.id_column = id_column
        self.rows: list[dict[str, Any]] = []

    def add(self, path: str, sample: str | None, reason: str) -> None:
        sample = printable(sample) if sample is not None else None
        self.rows.append({"path": printable(path), self.id_column: sample, "reason": reason})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["path", self.id_column, "reason"]).astype("object")


def read_user_table(path: Path, root: Path | None, what: str) -> tuple[pd.DataFrame, int, str, Path]:
    """``(table, first_row, name, path)`` of a CSV or Parquet table; ``name`` is how rejects
    rows call it (relative to ``root`` when inside it)."""
    if root is not None and not path.exists() and not path.is_absolute() and (root / path).exists():
        path = root / path
    try:
        name = path.resolve().relative_to(root.resolve()).as_posix() if root is not None else str(path)
    except ValueError:
        name = str(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            table = pd.read_csv(path)
            check_row_width(table, path, 2)
            return table, 2, name, path  # row 1 is the header line
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path), 1, name, path
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read the {what}: {str(exc).splitlines()[0]}") from None
    raise DataError(f"{path}: collect.labels must be .csv or .parquet")


class PairLabels:
    """The NIR labels table: usable rows by pair id, and the rows it could not use (with why)."""

    def __init__(self, table: pd.DataFrame, rows: pd.Series, name: str) -> None:
        self.table = table  # indexed by canonical pair_id: LABELS (float64), glasses (optional)
        self.rows = rows  # pair_id -> row number (see the module docstring)
        self.name = name  # how rejects rows name the table
        self.total = len(table)
        self.rejected: list[tuple[str, str, str]] = []  # (path, pair_id, reason)

    @classmethod
    def load(cls, path: Path, root: Path) -> PairLabels:
        if not path.exists() and not path.is_absolute() and (root / path).exists():
            path = root / path
        try:
            name = path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            name = str(path)
        out, rows = read_label_table(path, "collect.labels")
        labels = cls(out, rows, name)
        values = out[list(LABELS)].to_numpy("float64")
        nan = np.isnan(values).any(axis=1)
        infinite = ~nan & ~np.isfinite(values).all(axis=1)
        bounds = np.array([LABEL_BOUNDS[k] for k in LABELS])
        outside = ~nan & ~infinite & (np.abs(values) > bounds).any(axis=1)
        for mask, reason in ((nan, "label_missing_value"), (infinite, "label_not_finite"),
                             (outside, "label_out_of_range")):
            for pid in out.index[mask]:
                labels.rejected.append((f"{name}:{labels.rows[pid]}", pid, reason))
        labels.table = out[~(nan | infinite | outside)]
        return labels

    def finish(self, kept: set[str], rejects: Rejects, log: dict[str, Any]) -> None:
        """Rows that labelled no kept pair become rejects rows too; counts go to the stage log."""
        if not self.total:  # a table given on purpose: a header alone is a mistake, not "no labels"
            raise DataError(f"{self.name}: has a header and no rows; give the labels or drop collect.labels")
        if len(self.table) and not set(self.table.index) & kept:
            # Every label would be dropped: the ids are spelled otherwise than the pairs, not absent.
            raise DataError(f"{self.name}: none of its {len(self.table)} usable rows names a kept pair (its first is "
                            f"{self.table.index[0]!r}; the pairs are named like {min(kept)!r}, "
                            "<subject>_<camera>/<frame> under target/ and source/)")
        for pid in sorted(set(self.table.index) - kept, key=lambda p: self.rows[p]):
            self.rejected.append((f"{self.name}:{self.rows[pid]}", pid, "label_without_pair"))
        for path, pid, reason in sorted(self.rejected, key=lambda r: self.rows[r[1]]):
            rejects.add(path, pid, reason)
        log.update(label_rows=self.total, label_rows_rejected=len(self.rejected))


@dataclass
class Entry:
    """One offered path under the input root: a file to inspect, or a reject reason."""

    path: Path  # as offered, under ``root`` (through links)
    rejected: str | None = None


def input_files(root: Path, tops: tuple[str, ...] | None = None) -> list[Entry]:
    """Every entry under ``root/<top>`` for each of ``tops`` (under ``root`` itself when None),
    with every path resolved before anything is opened.

    A link resolving outside ``root`` is ``outside_root`` (a linked folder outside gives one row
    per entry in it, listed, never opened); a dangling link ``unreadable``; a FIFO, socket or
    device ``special_file``. Links that stay inside ``root`` are followed like the real thing.
    """
    real_root = root.resolve()
    entries: list[Entry] = []

    def inside(p: Path) -> bool:
        return p == real_root or real_root in p.parents

    def outside_dir(offered: Path, real: Path) -> None:
        for dirpath, dirs, files in os.walk(real, followlinks=False):
            for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]):
                entries.append(Entry(offered / Path(dirpath, name).relative_to(real), "outside_root"))
            dirs.sort()

    def walk(directory: Path, ancestors: frozenset[Path], inherited: str | None = None) -> None:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path = Path(entry.path)
            # A hidden name is metadata another tool left (macOS ._* and .DS_Store, .git):
            # listed so it is accounted for, never opened, never taken for a frame. The same
            # goes for everything inside a hidden or undecodable folder.
            skip = inherited or ("hidden_file" if entry.name.startswith(".") else None)
            skip = skip or (None if decodable(entry.name) else "undecodable_name")
            if skip and not entry.is_dir(follow_symlinks=False):
                entries.append(Entry(path, skip))
                continue
            real = Path(os.path.realpath(path))
            if entry.is_symlink():
                if not os.path.lexists(real) or not real.exists():
                    entries.append(Entry(path, "unreadable"))  # dangling: nothing to open
                    continue
                if not inside(real):
                    if real.is_dir():
                        outside_dir(path, real)
                    else:
                        entries.append(Entry(path, "outside_root"))
                    continue
            mode = os.stat(path).st_mode  # follows an inside link; stat opens nothing
            if stat.S_ISDIR(mode):
                if real in ancestors:
                    entries.append(Entry(path, "link_loop"))
                else:
                    walk(path, ancestors | {real}, skip)
            elif stat.S_ISREG(mode):
                entries.append(Entry(path))
            else:
                entries.append(Entry(path, "special_file"))

    if tops is None:
        walk(root, frozenset({real_root}))
        return entries
    for d in tops:
        real = (root / d).resolve()
        if inside(real):
            walk(root / d, frozenset({real_root, real}))
        else:
            outside_dir(root / d, real)
    return entries


@dataclass
class Image:
    """An input image that passed inspection: the decoded array, or the file itself to copy."""

    shape: tuple[int, int]  # (height, width) as stored, before any downscaling
    data: np.ndarray | Path
    top: int | None = None  # a 16-bit file's largest sample, before scaling (check_bit_depth)


def check_bit_depth(tops: list[int | None], bit_depth: int, origin: str) -> None:
    """Stop where every 16-bit image of a dataset stays below a quarter of ``collect.bit_depth``'s
    range: 14-bit samples in 16-bit files at the default 16 pass each file's check (only values
    below 1/16 of the range are ``low_bit_depth``) and would all be read at a quarter of their
    brightness. One frame may be dark; a whole dataset that never reaches the top two bits was
    written with fewer bits, and ``bit_depth`` two less reads it in full (none is then above it)."""
    tops = [top for top in tops if top is not None]  # the kept images' Image.top
    if tops and max(tops) < 1 << (bit_depth - 2):
        bits = max(tops).bit_length()
        raise DataError(f"{origin}: collect.bit_depth is {bit_depth}, but no value in the {len(tops)} 16-bit "
                        f"image(s) reaches 2^{bit_depth - 2} (the largest is {max(tops)}, {bits} bits): they would "
                        f"be read at 1/{1 << (bit_depth - bits)} of their brightness or less; set collect.bit_depth "
                        f"to the camera's sample depth ({bits} or more)")


def header_size(data: bytes) -> tuple[int, int, str] | str:
    """(width, height, Pillow mode) from the header alone (Pillow's open decodes nothing)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.width, img.height, img.mode
    except Image.DecompressionBombError:  # over Pillow's own guard, above max_pixels' ceiling
        return "too_large"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return "unreadable"


def reduced_flag(kind: str, mode: str, factor: int) -> int:
    """libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 directly: peak memory follows the reduced size."""
    grey = mode in ("L", "I;16", "1")
    # IMREAD_UNCHANGED keeps the stored pixel order; the reduced flags would apply EXIF
    # orientation, turning only the large images of a folder against their partners.
    return cv2.IMREAD_IGNORE_ORIENTATION | {
        2: cv2.IMREAD_REDUCED_GRAYSCALE_2 if grey else cv2.IMREAD_REDUCED_COLOR_2,
        4: cv2.IMREAD_REDUCED_GRAYSCALE_4 if grey else cv2.IMREAD_REDUCED_COLOR_4,
        8: cv2.IMREAD_REDUCED_GRAYSCALE_8 if grey else cv2.IMREAD_REDUCED_COLOR_8,
    }[factor] if kind == "jpeg" and factor > 1 else cv2.IMREAD_UNCHANGED


def fit(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


Mode = Literal["grey", "rgb", "to_grey"]


def _png_complete(data: bytes) -> bool:
    """The chunks, followed by their lengths alone (nothing decoded), reach IEND; bytes after it
    are not the image's and do not matter."""
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IEND":
            return True
        pos += 12 + length
    return False


def _jpeg_complete(data: bytes) -> bool:
    """The segments, followed by their lengths and through each scan's entropy-coded data,
    reach the end marker (FFD9); bytes after it do not matter."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # a scan: its data runs to the next real marker
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                return False
            pos = found.start()
    return data[pos:pos + 2] == b"\xff\xd9"


def inspect_image(path: Path, mode: Mode, max_pixels: int, max_side: int, bit_depth: int = 16) -> Image | str:
    """Decode one input image as ``mode`` says (module docstring); a reject reason string when it is bad."""
    try:
        data = path.read_bytes()
    except OSError:
        return "unreadable"
    if not data:
        return "zero_byte"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        kind = "png"
        if not _png_complete(data):
            return "truncated"
    elif data.startswith(b"\xff\xd8\xff"):
        kind = "jpeg"
        if not _jpeg_complete(data):
            return "truncated"
    elif data[:2] == b"BM" or data[:4] in (b"II*\x00", b"MM\x00*") or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        kind = "other"
    else:
        return "not_an_image"
    header = header_size(data)
    if isinstance(header, str):
        return header
    width, height, pil_mode = header
    if width * height > max_pixels:
        return "too_large"
    factor = max((f for f in (1, 2, 4, 8) if max(width, height) // f >= max_side), default=1)
    flag = reduced_flag(kind, pil_mode, factor)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None or img.size == 0:
        return "unreadable"
    converted = flag != cv2.IMREAD_UNCHANGED
    top = None
    if img.dtype == np.uint16:
        top = int(img.max())
        if top >= 1 << bit_depth:
            return "above_bit_depth"
        if top < 1 << (bit_depth - 4):  # 12-bit samples read as 16-bit: 0-15 grey levels, black (14-bit: check_bit_depth)
            return "low_bit_depth"
        img = (img >> (bit_depth - 8)).astype(np.uint8)
        converted = True
    elif img.dtype != np.uint8:
        return "unreadable"
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels in (2, 4):  # drop alpha
        img = img[..., : channels - 1]
        channels -= 1
        converted = True
        if channels == 1:
            img = img[..., 0]
    if mode == "to_grey":
        if channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            converted = True
    elif mode == "grey":
        if channels == 3:
            b, g, r = img[..., 0], img[..., 1], img[..., 2]
            if not (np.array_equal(b, g) and np.array_equal(g, r)):
                return "wrong_channels"
            img = b.copy()
            converted = True
    else:
        if channels == 1:
            return "wrong_channels"
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    fitted = fit(img, max_side)
    if kind == "png" and not converted and fitted is img:
        return Image((height, width), path, top)
    return Image((height, width), fitted, top)

