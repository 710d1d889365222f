"""Shared file handling: atomic outputs, manifests, images, stage logging.

Every stage writes its outputs through :func:`atomic_dir` or :func:`atomic_file`: the
work goes to a hidden sibling path and is renamed into place only when complete, so a
stage killed midway leaves nothing that looks finished (DVC then reruns it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("nirgan")


def setup_logging(level: int = logging.INFO) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
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


def write_image(path: str | Path, img: np.ndarray) -> None:
    """Write a uint8 HxW or HxWx3 (RGB) image as PNG."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError(f"{path}: could not encode image")
    buf.tofile(path)


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
