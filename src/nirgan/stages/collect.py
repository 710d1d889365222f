"""Stage collect: raw pairs from the built-in twin, a folder or videos -> ``data/raw``.

Sources (``collect.source``)
----------------------------
``twin``    the built-in digital twin (:mod:`nirgan.twin`), sized by ``collect.twin``.
``folder``  ``collect.path`` in the thesis layout: ``target/<subject>_<camera>/<frame>.<ext>``
            (NIR) paired by relative path with ``source/<subject>_<camera>/<frame>.<ext>`` (rig
            render). The subject is everything before the last ``_`` of the directory name, so
            a camera name has no ``_``; the frame number is the trailing digits of the file
            name (``12.png``, ``00012.png`` and ``frame_12.png`` are frame 12).
``videos``  ``collect.path`` with ``target/<subject>_<camera>.<ext>`` and
            ``source/<subject>_<camera>.<ext>`` (any container OpenCV reads: mp4, avi, mkv ...);
            every ``collect.video_frame_step``-th frame, paired by frame index.
An optional labels table ``collect.labels`` (CSV or Parquet; a relative path is looked up
in the working directory, then under ``collect.path``) gives labels by ``pair_id``; it must
have the columns ``pair_id`` and ``head_yaw, head_pitch, head_roll, gaze_yaw, gaze_pitch``
(``glasses`` optional). Its pair ids may name frames as the files do (``alice_cam1/12``).
Pairs it does not list get NaN labels.

Raw input is never modified: kept images are copied byte for byte when they already are
8-bit PNGs with the right channels, otherwise decoded, converted and written as PNG.

Outputs (``out_dir``, written atomically)
-----------------------------------------
``target/<subject>_<camera>/<frame:05d>.png``  uint8 1-channel NIR
``source/<subject>_<camera>/<frame:05d>.png``  uint8 RGB rig render
``manifest.parquet``  one row per kept pair:
    ``pair_id`` ("<subject>_<camera>/<frame:05d>"), ``subject``, ``camera``, ``frame`` (int),
    ``source_path``, ``target_path`` (relative to ``out_dir``), ``source_sha256``,
    ``target_sha256`` (of the written files), ``head_yaw, head_pitch, head_roll, gaze_yaw,
    gaze_pitch`` (degrees, float64, NaN if unknown), ``glasses`` (pandas ``boolean``, <NA>
    if unknown).
``rejects.parquet``  one row per rejected input file (or video frame): ``path`` (relative to
    ``collect.path``), ``pair_id`` (None when the path does not name a pair), ``reason``, one of
    ``zero_byte``          empty file
    ``not_an_image``       not a PNG/JPEG/BMP/TIFF/WebP file, whatever its name says
    ``truncated``          a PNG without its IEND chunk or a JPEG without its end marker
    ``unreadable``         a file that cannot be read (e.g. a dangling link) or an image
                           OpenCV cannot decode
    ``wrong_channels``     a colour target (NIR is 1-channel) or a grey source (the rig is RGB);
                           a target stored as equal R, G, B or with alpha is converted and kept
    ``size_mismatch``      target and source of a pair differ in size
    ``unpaired``           no partner in the other domain (for videos: frames past the end of
                           the shorter video)
    ``partner_rejected``   the other image of the pair was rejected
    ``bad_directory_name`` the directory (or video) name is not ``<subject>_<camera>``
    ``bad_frame_name``     the file name has no trailing frame number
    ``duplicate_frame``    a second file with the same frame number in the same directory
    ``unexpected_location`` not at ``<domain>/<subject>_<camera>/<file>`` (folder) or
                           ``<domain>/<file>`` (videos)
    ``unsupported_file``   an extension that is no image (folder) or video (videos)
    ``unreadable_video``   OpenCV cannot open the video or read a frame from it
    Every file under ``target/`` and ``source/`` is either in a kept pair or in this table.
``disturbances.parquet``  twin only, the hidden ground truth of planted disturbances:
    ``pair_id``, ``disturbance`` (``none``, ``occlusion``, ``blur``, ``overexposure``,
    ``underexposure``, ``misaligned``) for every pair.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from nirgan.config import Config
from nirgan.io import atomic_dir, file_sha256, stage_log, write_image, write_table
from nirgan.labels import LABELS

MANIFEST_COLUMNS = [
    "pair_id", "subject", "camera", "frame", "source_path", "target_path", "source_sha256", "target_sha256",
    *LABELS, "glasses",
]
REJECT_COLUMNS = ["path", "pair_id", "reason"]
DOMAINS = ("target", "source")
CHANNELS = {"target": 1, "source": 3}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
_DIR_NAME = re.compile(r"(.+)_([^_]+)")
_FRAME = re.compile(r"(\d+)$")


def run(cfg: Config, out_dir: Path) -> dict[str, Any]:
    source = cfg.collect.source
    if source == "twin":
        return _collect_twin(cfg, Path(out_dir))
    root = Path(cfg.collect.path)
    for domain in DOMAINS:
        if not (root / domain).is_dir():
            raise FileNotFoundError(f"{root / domain}: collect.source={source} expects target/ and source/ here")
    labels = _load_labels(cfg.collect.labels, root) if cfg.collect.labels is not None else None
    if source == "folder":
        return _collect_folder(root, Path(out_dir), labels)
    return _collect_videos(root, Path(out_dir), labels, cfg.collect.video_frame_step)


# --------------------------------------------------------------------------------- common
def pair_id(subject: str, camera: str, frame: int) -> str:
    return f"{subject}_{camera}/{frame:05d}"


def parse_recording(name: str) -> tuple[str, str] | None:
    """``<subject>_<camera>`` -> (subject, camera); None when it does not parse."""
    m = _DIR_NAME.fullmatch(name)
    return (m.group(1), m.group(2)) if m else None


class _Rejects:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, path: str, pid: str | None, reason: str) -> None:
        self.rows.append({"path": path, "pair_id": pid, "reason": reason})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=REJECT_COLUMNS).astype("object")


class _Writer:
    """Writes kept pairs into the stage dir and collects their manifest rows."""

    def __init__(self, out: Path, labels: pd.DataFrame | None) -> None:
        self.out = out
        self.labels = labels
        self.rows: list[dict[str, Any]] = []

    def add(self, subject: str, camera: str, frame: int, images: dict[str, np.ndarray | Path]) -> None:
        """``images[domain]`` is an array to encode or a PNG file to copy byte for byte."""
        pid = pair_id(subject, camera, frame)
        row: dict[str, Any] = {"pair_id": pid, "subject": subject, "camera": camera, "frame": frame}
        for domain in DOMAINS:
            rel = f"{domain}/{pid}.png"
            dest = self.out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            image = images[domain]
            if isinstance(image, Path):
                shutil.copyfile(image, dest)
            else:
                write_image(dest, image)
            row[f"{domain}_path"] = rel
            row[f"{domain}_sha256"] = file_sha256(dest)
        known = self.labels is not None and pid in self.labels.index
        for name in LABELS:
            row[name] = float(self.labels.at[pid, name]) if known else np.nan
        row["glasses"] = self.labels.at[pid, "glasses"] if known and "glasses" in self.labels else pd.NA
        self.rows.append(row)

    def manifest(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=MANIFEST_COLUMNS)
        df = df.astype({c: "object" for c in MANIFEST_COLUMNS[:8] if c != "frame"})
        df["frame"] = df["frame"].astype("int64")
        df[list(LABELS)] = df[list(LABELS)].astype("float64")
        df["glasses"] = df["glasses"].astype("boolean")
        return df.sort_values("pair_id", kind="stable").reset_index(drop=True)


def _load_labels(path: Path, root: Path) -> pd.DataFrame:
    if not path.exists() and not path.is_absolute() and (root / path).exists():
        path = root / path
    if not path.exists():
        raise FileNotFoundError(f"{path}: collect.labels does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table = pd.read_csv(path)
    elif suffix in (".parquet", ".pq"):
        table = pd.read_parquet(path)
    else:
        raise ValueError(f"{path}: collect.labels must be .csv or .parquet")
    missing = [c for c in ("pair_id", *LABELS) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: labels table lacks column(s) {', '.join(missing)}")
    canonical = []
    for raw in table["pair_id"].astype(str):
        name, _, frame = raw.rpartition("/")
        m = _FRAME.search(Path(frame).stem)
        if not name or m is None:
            raise ValueError(f"{path}: pair_id {raw!r} is not <subject>_<camera>/<frame>")
        canonical.append(f"{name}/{int(m.group(1)):05d}")
    table = table.assign(pair_id=canonical)
    dup = table["pair_id"][table["pair_id"].duplicated()].unique()
    if len(dup):
        raise ValueError(f"{path}: duplicate pair_id(s) in labels table: {', '.join(dup[:5])}")
    keep = ["pair_id", *LABELS] + (["glasses"] if "glasses" in table.columns else [])
    table = table[keep].set_index("pair_id")
    for name in LABELS:
        try:
            table[name] = pd.to_numeric(table[name]).astype("float64")
        except (TypeError, ValueError):
            raise ValueError(f"{path}: column {name} must be numeric (degrees)") from None
    if "glasses" in table.columns:
        table["glasses"] = table["glasses"].astype("boolean")
    return table


def _input_files(root: Path) -> list[Path]:
    """Every file under target/ and source/, dangling links included (they are rejected)."""
    return sorted(p for d in DOMAINS for p in (root / d).rglob("*") if p.is_file() or p.is_symlink())


def _finish(
    out: Path, writer: _Writer, rejects: _Rejects, log: dict[str, Any], extra: dict[str, pd.DataFrame] | None = None
) -> dict[str, Any]:
    write_table(writer.manifest(), out / "manifest.parquet")
    write_table(rejects.frame(), out / "rejects.parquet")
    for name, table in (extra or {}).items():
        write_table(table, out / name)
    log.update(pairs=len(writer.rows), rejected=len(rejects.rows))
    return dict(log)


# ----------------------------------------------------------------------------------- twin
def _collect_twin(cfg: Config, out_dir: Path) -> dict[str, Any]:
    from nirgan import twin

    tcfg = cfg.collect.twin
    total = twin.count_pairs(tcfg)
    truth = []
    with stage_log("collect", source="twin", pairs=total) as log, atomic_dir(out_dir) as out:
        writer = _Writer(out, None)
        for pair in tqdm(twin.render_dataset(tcfg), total=total, desc="collect twin", disable=None):
            writer.add(pair.subject, pair.camera, pair.frame, {"target": pair.target, "source": pair.source})
            row = writer.rows[-1]
            row.update(pair.labels)
            row["glasses"] = pair.glasses
            truth.append({"pair_id": pair.pair_id, "disturbance": pair.disturbance})
        disturbances = pd.DataFrame(truth, columns=["pair_id", "disturbance"]).astype("object")
        log["disturbed"] = int((disturbances["disturbance"] != "none").sum())
        return _finish(out, writer, _Rejects(), log, {"disturbances.parquet": disturbances})


# --------------------------------------------------------------------------------- folder
@dataclass
class _Image:
    """An input image that passed inspection: the decoded array, or the file itself to copy."""

    shape: tuple[int, int]
    data: np.ndarray | Path


def _inspect(path: Path, domain: str) -> _Image | str:
    """Decode one input image for ``domain``; a reject reason string when it is bad."""
    try:
        data = path.read_bytes()
    except OSError:
        return "unreadable"
    if not data:
        return "zero_byte"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        kind = "png"
        if b"IEND" not in data[-32:]:
            return "truncated"
    elif data.startswith(b"\xff\xd8\xff"):
        kind = "jpeg"
        if b"\xff\xd9" not in data[-32:]:
            return "truncated"
    elif data[:2] == b"BM" or data[:4] in (b"II*\x00", b"MM\x00*") or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        kind = "other"
    else:
        return "not_an_image"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        return "unreadable"
    converted = False
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
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
    if domain == "target":
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
    shape = img.shape[:2]
    if kind == "png" and not converted:
        return _Image(shape, path)
    return _Image(shape, img)


def _collect_folder(root: Path, out_dir: Path, labels: pd.DataFrame | None) -> dict[str, Any]:
    rejects = _Rejects()
    found: dict[str, dict[tuple[str, str, int], Path]] = {d: {} for d in DOMAINS}
    files = _input_files(root)
    for path in files:
        rel = path.relative_to(root)
        domain = rel.parts[0]
        if len(rel.parts) != 3:
            rejects.add(rel.as_posix(), None, "unexpected_location")
            continue
        parsed = parse_recording(rel.parts[1])
        if parsed is None:
            rejects.add(rel.as_posix(), None, "bad_directory_name")
            continue
        if path.suffix.lower() not in IMAGE_EXTS:
            rejects.add(rel.as_posix(), None, "unsupported_file")
            continue
        m = _FRAME.search(path.stem)
        if m is None:
            rejects.add(rel.as_posix(), None, "bad_frame_name")
            continue
        key = (*parsed, int(m.group(1)))
        if key in found[domain]:
            rejects.add(rel.as_posix(), pair_id(*key), "duplicate_frame")
            continue
        found[domain][key] = path

    def rel(path: Path) -> str:
        return path.relative_to(root).as_posix()

    for domain, other in (("target", "source"), ("source", "target")):
        for key in sorted(set(found[domain]) - set(found[other])):
            rejects.add(rel(found[domain][key]), pair_id(*key), "unpaired")
    keys = sorted(set(found["target"]) & set(found["source"]))

    with stage_log("collect", source="folder", files=len(files)) as log, atomic_dir(out_dir) as out:
        writer = _Writer(out, labels)
        for key in tqdm(keys, desc="collect folder", disable=None):
            paths = {d: found[d][key] for d in DOMAINS}
            images = {d: _inspect(paths[d], d) for d in DOMAINS}
            bad = {d: r for d, r in images.items() if isinstance(r, str)}
            if bad:
                for d in DOMAINS:
                    rejects.add(rel(paths[d]), pair_id(*key), bad.get(d, "partner_rejected"))
                continue
            if images["target"].shape != images["source"].shape:
                for d in DOMAINS:
                    rejects.add(rel(paths[d]), pair_id(*key), "size_mismatch")
                continue
            writer.add(*key, {d: images[d].data for d in DOMAINS})
        return _finish(out, writer, rejects, log)


# --------------------------------------------------------------------------------- videos
def _frames(cap: cv2.VideoCapture) -> Iterable[np.ndarray]:
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        yield frame


def _open_video(path: Path) -> cv2.VideoCapture | str:
    if not path.exists():
        return "unreadable_video"
    if path.stat().st_size == 0:
        return "zero_byte"
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        return "unreadable_video"
    return cap


def _collect_videos(root: Path, out_dir: Path, labels: pd.DataFrame | None, step: int) -> dict[str, Any]:
    rejects = _Rejects()
    found: dict[str, dict[tuple[str, str], Path]] = {d: {} for d in DOMAINS}
    files = _input_files(root)
    for path in files:
        rel = path.relative_to(root)
        if len(rel.parts) != 2:
            rejects.add(rel.as_posix(), None, "unexpected_location")
        elif path.suffix.lower() not in VIDEO_EXTS:
            rejects.add(rel.as_posix(), None, "unsupported_file")
        elif (parsed := parse_recording(path.stem)) is None:
            rejects.add(rel.as_posix(), None, "bad_directory_name")
        else:
            found[rel.parts[0]][parsed] = path
    for domain, other in (("target", "source"), ("source", "target")):
        for key in sorted(set(found[domain]) - set(found[other])):
            rejects.add(found[domain][key].relative_to(root).as_posix(), None, "unpaired")
    keys = sorted(set(found["target"]) & set(found["source"]))

    with stage_log("collect", source="videos", videos=len(files)) as log, atomic_dir(out_dir) as out:
        writer = _Writer(out, labels)
        for key in tqdm(keys, desc="collect videos", disable=None):
            paths = {d: found[d][key] for d in DOMAINS}
            rels = {d: paths[d].relative_to(root).as_posix() for d in DOMAINS}
            caps = {d: _open_video(paths[d]) for d in DOMAINS}
            try:
                _pair_videos(key, caps, rels, step, writer, rejects)
            finally:
                for cap in caps.values():
                    if not isinstance(cap, str):
                        cap.release()
        return _finish(out, writer, rejects, log)


def _pair_videos(
    key: tuple[str, str],
    caps: dict[str, cv2.VideoCapture | str],
    rels: dict[str, str],
    step: int,
    writer: _Writer,
    rejects: _Rejects,
) -> None:
    bad = {d: c for d, c in caps.items() if isinstance(c, str)}
    if bad:
        for d in DOMAINS:
            rejects.add(rels[d], None, bad.get(d, "partner_rejected"))
        return
    streams = {d: iter(_frames(caps[d])) for d in DOMAINS}
    index = 0
    while True:
        frames = {d: next(streams[d], None) for d in DOMAINS}
        if frames["target"] is None and frames["source"] is None:
            break
        if index == 0 and any(f is None for f in frames.values()):
            # A video that yields no frame at all cannot be read, whatever its header says.
            for d in DOMAINS:
                rejects.add(rels[d], None, "unreadable_video" if frames[d] is None else "partner_rejected")
            return
        if index % step == 0:
            pid = pair_id(*key, index)
            missing = [d for d in DOMAINS if frames[d] is None]
            if missing:
                for d in DOMAINS:
                    if frames[d] is not None:
                        rejects.add(rels[d], pid, "unpaired")
            elif frames["target"].shape[:2] != frames["source"].shape[:2]:
                for d in DOMAINS:
                    rejects.add(rels[d], pid, "size_mismatch")
            else:
                target = cv2.cvtColor(frames["target"], cv2.COLOR_BGR2GRAY)
                source = cv2.cvtColor(frames["source"], cv2.COLOR_BGR2RGB)
                writer.add(*key, index, {"target": target, "source": source})
        index += 1
