"""Shared file handling: atomic outputs, manifests, images, stage logging and progress.

Every stage writes its outputs through :func:`atomic_dir` or :func:`atomic_file`: the
work goes to a hidden sibling path and is renamed into place only when complete, so a
stage killed midway leaves nothing that looks finished (DVC then reruns it). What a killed
writer leaves, a ``.<name>.tmp-<pid>-<hex>`` sibling, is removed by :func:`sweep_stale` once its
process is gone: by every later atomic write beside it and by every ``nirgan stage`` call, since
a stage that DVC restores from its cache never runs its own code to clean up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas is imported where a table is read: the twin's workers import this module
    import pandas as pd

from nirgan.config import OutputError

log = logging.getLogger("nirgan")


def setup_logging(level: int = logging.INFO) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


_TMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")  # what _tmp_sibling names


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process: not ours to judge
    return True


def sweep_stale(*folders: str | Path) -> list[Path]:
    """Remove the temporary siblings that killed writers left in ``folders`` (not recursive).

    Only names :func:`atomic_dir` / :func:`atomic_file` make, and only when the process in the
    name is gone: a writer still running (another stage, a generate shard) keeps its work.
    Returns what was removed.
    """
    removed = []
    for folder in map(Path, folders):
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            match = _TMP_NAME.match(entry.name)
            if not match or int(match.group(1)) == os.getpid() or _alive(int(match.group(1))):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            removed.append(Path(entry.path))
    if removed:
        log.info("removed %d temporary file(s) left by killed writers: %s", len(removed),
                 ", ".join(str(p) for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``path`` when the block succeeds.

    ``path`` is a folder or absent: an existing *file* there is the user's, never replaced or moved
    aside, and stops the write with :class:`~nirgan.config.OutputError` before any work.
    """
    path = Path(path)
    if path.is_file() or (path.is_symlink() and not path.is_dir()):
        raise OutputError(f"{path}: is a file, not an output folder; it is left as it is (move it away or choose "
                          "another output path)")
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # this output's own, even of a live writer: ours now
        if _TMP_NAME.match(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = _tmp_sibling(path)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path that is renamed to ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, data: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Parquet, written atomically (``path`` may sit inside an atomic_dir already)."""
    with atomic_file(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: expected manifest is missing (did the previous stage run?)")
    import pandas as pd

    return pd.read_parquet(path)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """Read an 8-bit image as HxW (channels=1) or HxWx3 RGB (channels=3).

    Raises ``ValueError`` naming the file when it is empty, truncated or not an image.
    """
    import cv2

    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ValueError(f"{path}: empty file")
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    img = cv2.imdecode(data, flag)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    if channels == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def encode_png(img: np.ndarray) -> bytes:
    """A uint8 HxW or HxWx3 (RGB) image as the PNG file :func:`write_image` writes."""
    import cv2

    arr = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError(f"could not encode a {img.dtype} image of shape {img.shape} as PNG")
    return buf.tobytes()


def write_image(path: str | Path, img: np.ndarray) -> None:
    """Write a uint8 HxW or HxWx3 (RGB) image as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = encode_png(img)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    path.write_bytes(data)


@contextlib.contextmanager
def stage_log(name: str, **counts_in: int) -> Iterator[dict[str, Any]]:
    """One log line per stage with counts in and out: fill the yielded dict with outputs."""
    setup_logging()
    out: dict[str, Any] = {}
    start = time.perf_counter()
    yield out
    took = time.perf_counter() - start
    ins = " ".join(f"{k}={v}" for k, v in counts_in.items())
    outs = " ".join(f"{k}={v}" for k, v in out.items())
    log.info("stage %s: in %s -> out %s (%.1f s)", name, ins or "-", outs or "-", took)


class progress:  # noqa: N801 - used where tqdm was, like tqdm
    """tqdm's bar on a terminal; elsewhere (Prefect, CI, ``2> log``), where tqdm prints nothing,
    a log line ``<desc>: k/n (p%)`` every ``every`` of the total, so an hour-long run shows it is alive.

    Iterate over it, or call :meth:`update` (also a context manager, as tqdm). The count is of
    finished items: an item counts when the loop asks for the next one.
    """

    def __init__(self, iterable: Any = None, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, disable: bool = False, every: float = 0.05) -> None:
        from tqdm import tqdm

        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit, self.n = iterable, total, desc, unit, initial
        self.bar = tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=True if disable else None)
        self.logs = bool(total) and not disable and not _is_tty(sys.stderr)
        self.step = max(1, math.ceil((total or 1) * every))
        self.next = (initial // self.step + 1) * self.step
        self.started = time.perf_counter()

    def __iter__(self) -> Iterator[Any]:
        for item in self.bar:
            yield item
            self._advance(1)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self._advance(n)

    def _advance(self, n: int) -> None:
        self.n += n
        if not self.logs or (self.n < self.next and self.n != self.total):
            return
        self.next = (self.n // self.step + 1) * self.step
        log.info("%s: %d/%d %s (%d%%, %.0f s)", self.desc, self.n, self.total, self.unit,
                 100 * self.n // self.total, time.perf_counter() - self.started)

    def set_postfix(self, values: dict[str, Any]) -> None:
        self.bar.set_postfix(values)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False
