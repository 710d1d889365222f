"""A dataset's output folder: who may write into it, what it holds, and how a rerun reuses it
(README "Generate a labelled dataset"; the writer is :mod:`nirgan.generation.dataset`).

Lock
    One run at a time: :func:`claimed` holds ``fcntl.flock`` on ``<out>/.lock`` for the whole
    run, and a second run into the same folder stops at once (:class:`OutputError` naming the
    folder and the holder's PID). The kernel drops the lock when its holder dies, so a killed
    run never blocks the next one. The file stays (empty): deleting it would let a third run
    lock a new file while a second still holds the old one.

Identity
    ``.plan.json`` records what the shards were made from: the spec, the precision that runs,
    the built-in rig's framing inputs and the sha256 of the generator and label estimator.
    Two plans are the same dataset when they agree on everything that changes a row's content
    or the layout: not ``count`` (row i depends only on (seed, i), so a larger count extends the
    dataset and a smaller one keeps the complete shards it still wants), not ``workers`` (each
    shard runs one CPU thread, whatever the number of processes), not ``out_dir`` or ``model``
    (where the files lie, not what they are). ``shard_size`` is identity (the layout
    ``images/<shard>/<index>.png`` and each shard's overflow rows follow it), and so is
    ``batch_size`` (a batch's summation order moves pixels by a grey level, and with them what
    the label check accepts), and the content of ``labels_table`` / ``rig_labels`` (a table
    edited in place asks for other rows).

    A folder holding another dataset is refused with the settings that differ, unless the
    caller asks to overwrite it; a non-empty folder that is no dataset is always refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nirgan.config import OutputError
from nirgan.io import write_json

log = logging.getLogger("nirgan.generate")

MARKER, LOCK, FRAMING_CACHE = ".plan.json", ".lock", ".framing.json"
# what a finished dataset holds beside its shards: stale as soon as the shards change
FINISHED = ("labels.parquet", "dataset.json", "contact_sheet.png", "label_distributions.png")
# spec keys that change neither a row nor the layout (see the module docstring)
NOT_IDENTITY = frozenset({"count", "workers"})
_SHOWN = 4  # differences a refusal lists before "and N more"


class writing:
    """Turns the OS's write failures into one line naming the path (disk full, no permission)."""

    def __init__(self, path: Path, what: str = "writing the dataset") -> None:
        self.path, self.what = path, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM,
                                                      errno.EROFS, errno.ENOTDIR):
            why = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system",
                   errno.ENOTDIR: "a path in it is a file, not a folder"}.get(exc.errno, "permission denied")
            raise OutputError(f"{self.path}: {why} while {self.what} ({exc.filename or self.path}); completed "
                              "shards are kept, free space or fix the folder and rerun") from None
        return False


@contextlib.contextmanager
def claimed(out_dir: Path, fingerprint: dict, shard_sizes: list[int], overwrite: bool = False) -> Iterator[None]:
    """Hold ``out_dir``'s lock for the block, after making the folder ready for the plan whose
    ``fingerprint`` and rows per shard (``shard_sizes``) are given: a new or empty folder is
    claimed, a folder of the same dataset keeps the complete shards the plan still wants, and
    one of another dataset is refused, or cleared when ``overwrite``."""
    out_dir = Path(out_dir)
    with writing(out_dir):
        _refuse_foreign(out_dir)  # before the lock file, which would be litter in someone's folder
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            raise OutputError(f"{out_dir}: another nirgan generate ({f'PID {pid}' if pid else 'PID unknown'}) is "
                              "writing this folder; wait for it to finish, or stop it and rerun (the rerun "
                              "continues its complete shards)") from None
        with writing(out_dir):
            _refuse_foreign(out_dir)  # again, now that nobody else can claim it in between
            _claim(out_dir, fingerprint, shard_sizes, overwrite)
        yield
    finally:
        os.close(fd)  # releases the lock


def _refuse_foreign(out_dir: Path) -> None:
    if out_dir.exists() and not (out_dir / MARKER).exists() and any(p.name != LOCK for p in out_dir.iterdir()):
        raise OutputError(f"{out_dir}: exists and is not a nirgan dataset (no {MARKER}); choose an empty or new --out")


def _holder(fd: int) -> int | None:
    """The PID holding the flock on ``fd``'s file, from /proc/locks (Linux), None if not found."""
    inode = os.fstat(fd).st_ino
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
            return int(parts[4]) if parts[4].isdigit() else None
    return None


def read_marker(out_dir: Path) -> dict | None:
    """``out_dir``'s plan record, None when there is none; an unreadable one is an OutputError."""
    marker = Path(out_dir) / MARKER
    if not marker.exists():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bytes that are no UTF-8
        data, why = None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    else:
        why = "not a JSON object"
    if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
        raise OutputError(f"{marker}: unreadable ({why}); it records which dataset {out_dir} holds, so nothing "
                          "there can be reused: delete the folder, or rerun with --overwrite to replace its dataset")
    return data


def differences(old: dict, new: dict) -> list[str]:
    """The identity settings in which two plan records differ, as ``name there -> here``."""
    a, b = _identity(old), _identity(new)
    return [f"{_name(k)} {_shown(a.get(k, 'absent'))} -> {_shown(b.get(k, 'absent'))}"
            for k in sorted(a.keys() | b.keys()) if a.get(k, "absent") != b.get(k, "absent")]


def _identity(record: dict) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = value

    walk("", json.loads(json.dumps(record)))  # tuples and lists compare as JSON stores them
    for key in NOT_IDENTITY:
        flat.pop(f"spec.{key}", None)
    return flat


def _name(key: str) -> str:
    for prefix, shown in (("spec.", "generate."), ("rig.detect.", "detect."), ("rig.twin.", "collect.twin.")):
        if key.startswith(prefix):
            return shown + key[len(prefix):]
    if key in ("labels_table_sha256", "rig_labels_sha256"):
        return f"generate.{key.removesuffix('_sha256')} content sha256"
    return {"generator_sha256": "generator sha256", "estimator_sha256": "label estimator sha256",
            "precision": "precision run", "rig": "rig framing inputs"}.get(key, key)


def _shown(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:  # a sha256: its first 12 hex digits tell them apart
        return value[:12]
    return json.dumps(value) if not isinstance(value, str) else value


def _claim(out_dir: Path, fingerprint: dict, shard_sizes: list[int], overwrite: bool) -> None:
    try:
        marker = read_marker(out_dir)
    except OutputError as exc:
        if not overwrite:
            raise
        log.warning("generate: %s; overwriting: deleting the dataset there", str(exc).split(";")[0])
        marker = None
        _clear(out_dir)
    if marker is not None:
        changed = differences(marker, fingerprint)
        if changed and not overwrite:
            more = len(changed) - _SHOWN
            shown = "; ".join(changed[:_SHOWN]) + (f"; and {more} more" if more > 0 else "")
            raise OutputError(f"{out_dir}: holds another dataset ({shown}); choose another --out, or pass --overwrite "
                              "to delete that dataset and write this one")
        if changed:
            log.warning("generate: %s holds another dataset (%s); overwriting: deleting it", out_dir,
                        "; ".join(changed))
            _clear(out_dir)
        else:
            _keep_wanted(out_dir, marker["spec"].get("count"), shard_sizes)
    write_json(out_dir / MARKER, fingerprint)


def _clear(out_dir: Path) -> None:
    """Only the dataset layout's own entries: anything else a user put there stays."""
    for name in FINISHED:  # first, so no labels table ever lists images that are gone
        (out_dir / name).unlink(missing_ok=True)
    for name in ("shards", "images"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    (out_dir / FRAMING_CACHE).unlink(missing_ok=True)


def _keep_wanted(out_dir: Path, old_count: Any, shard_sizes: list[int]) -> None:
    """The same dataset, maybe at another count: a complete shard stays when the plan wants it
    with the same rows; the shard the old count cut short (or the new one cuts) is rewritten,
    since its rows share batches and overflow rows; shards past the new count go."""
    count = sum(shard_sizes)
    if old_count != count:
        for name in FINISHED:  # they describe the old count
            (out_dir / name).unlink(missing_ok=True)
    kept, dropped = 0, []
    for table in sorted((out_dir / "shards").glob("*.parquet")):
        if not table.stem.isdigit():  # not the writer's name: not ours to judge
            continue
        index = int(table.stem)
        if index < len(shard_sizes) and _rows(table) == shard_sizes[index]:
            kept += shard_sizes[index]
            continue
        dropped.append(index)
        table.unlink()  # first: the table is the shard's commit mark
    for folder in (out_dir / "images").glob("*"):  # a shard's images without its table are redone anyway
        if folder.is_dir() and folder.name.isdigit() and (int(folder.name) >= len(shard_sizes)
                                                          or int(folder.name) in dropped):
            shutil.rmtree(folder, ignore_errors=True)
    if isinstance(old_count, int) and old_count > count:
        log.warning("generate: %s holds this dataset at count %d: --count %d keeps the %d images of the complete "
                    "shards it still wants and removes the rest (--count %d writes them again, with the same bytes)",
                    out_dir, old_count, count, kept, old_count)
    elif old_count != count and kept:
        log.info("generate: %s holds %d images of this dataset in complete shards; extending it to %d", out_dir, kept,
                 count)


def _rows(table: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(table).num_rows
    except Exception as exc:  # noqa: BLE001 - any failure to read it is this file's damage
        why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        raise OutputError(f"{table}: unreadable shard table ({why}); delete it and rerun: that shard is written "
                          "again") from None
