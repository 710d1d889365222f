"""Stage collect: raw pairs from the built-in twin, a folder or videos -> ``data/raw``.

Sources (``collect.source``)
----------------------------
``twin``    the built-in digital twin (:mod:`nirgan.twin`), sized by ``collect.twin``.
``folder``  ``collect.path`` in the thesis layout: ``target/<subject>_<camera>/<frame>.<ext>``
            (NIR) paired by relative path with ``source/<subject>_<camera>/<frame>.<ext>`` (rig
            render). The subject is everything before the last ``_`` of the directory name, so
            a camera name has no ``_``; the frame number is the trailing digits of the file
            name (``12.png``, ``00012.png`` and ``frame_12.png`` are frame 12; at most 18
            digits). Hidden files (``.DS_Store``, macOS ``._00012.png``) are skipped.
``videos``  ``collect.path`` with ``target/<subject>_<camera>.<ext>`` and
            ``source/<subject>_<camera>.<ext>`` (any container OpenCV reads: mp4, avi, mkv ...);
            every ``collect.video_frame_step``-th frame, paired by frame index.
An optional labels table ``collect.labels`` (CSV or Parquet; a relative path is looked up
in the working directory, then under ``collect.path``) gives labels by ``pair_id``; it must
have the columns ``pair_id`` and ``head_yaw, head_pitch, head_roll, gaze_yaw, gaze_pitch``
(``glasses`` optional). Its pair ids may name frames as the files do (``alice_cam1/12``).
Labels are degrees inside the rig's geometric domain (:data:`nirgan.labels.LABEL_BOUNDS`: head
yaw and pitch within +-90, roll within +-180, gaze within +-90). Pairs it does not list get NaN
labels, and the stage warns with their count when only some pairs are labelled (pose figures
and generate's label check need every pair labelled). A table row with a missing (NaN), an
infinite or an out-of-domain label, or naming no kept pair, is not used and becomes a rejects
row (see below); a table that cannot be used at
all (missing column, repeated ``pair_id``, text in a label column, a malformed pair id) stops
the stage with a one-line :class:`~nirgan.config.DataError` naming the file, row and key.
"Row" is the line of a CSV file (the header is row 1), or the 1-based row of a Parquet file.

The reading itself (:mod:`nirgan.safe_read`) treats every input as untrusted. Every path is
resolved first: a file or link that resolves outside ``collect.path`` is
rejected without being opened; a linked folder outside it gives one row per file in it.
Image sizes come from the file header before any decoding: over ``collect.max_pixels`` is
``too_large``; over ``collect.max_side`` (longer side) the image is area-downscaled at read,
so the stages after collect never see more than ``max_side`` x ``max_side``.

Zero kept pairs stop the stage with a one-line :class:`~nirgan.config.DataError` giving the
reject counts (nothing is written), rather than handing detect an empty set.

Raw input is never modified: kept images are copied byte for byte when they already are
8-bit PNGs with the right channels and within ``max_side``, otherwise decoded, converted
(downscaled) and written as PNG.

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
    ``truncated``          a PNG whose chunks end before IEND or a JPEG whose segments end before
                           its end marker (bytes after the end are ignored, not a reason)
    ``unreadable``         a file that cannot be read (e.g. a dangling link) or an image
                           OpenCV cannot decode
    ``above_bit_depth``    a 16-bit image with a value at or past 2^``collect.bit_depth``
    ``low_bit_depth``      a 16-bit image whose values all lie below 2^(``collect.bit_depth`` - 4):
                           12-bit samples read as 16-bit would be 0-15 grey levels (set bit_depth)
    ``wrong_channels``     a colour target (NIR is 1-channel) or a grey source (the rig is RGB);
                           a target stored as equal R, G, B or with alpha is converted and kept.
                           Video frames, which lossy codecs store as colour, within a tolerance
    ``size_mismatch``      target and source of a pair differ in size
    ``unpaired``           no partner in the other domain (for videos: frames past the end of
                           the shorter video)
    ``partner_rejected``   the other image of the pair was rejected
    ``bad_directory_name`` the directory (or video) name is not ``<subject>_<camera>``
    ``bad_frame_name``     the file name has no trailing frame number (or one over 18 digits)
    ``hidden_file``        a name starting with ``.`` (``._*`` AppleDouble, ``.DS_Store``) or a
                           file in such a folder; never opened
    ``undecodable_name``   a file or folder name that is not UTF-8 (``path`` shows ``\\xNN``)
    ``duplicate_frame``    two or more files with the same frame number in the same directory
                           (``12.png`` and ``012.png``): every one of them
    ``duplicate_recording`` two or more videos of one ``<subject>_<camera>`` (another extension)
    ``unexpected_location`` not at ``<domain>/<subject>_<camera>/<file>`` (folder) or
                           ``<domain>/<file>`` (videos)
    ``unsupported_file``   an extension that is no image (folder) or video (videos)
    ``unreadable_video``   OpenCV cannot open the video or read a frame from it
    ``truncated_video``    a video that ends before the frame count its header gives (one row for
                           the file; the partner's frames past its end are ``partner_truncated``)
    ``too_large``          more than ``collect.max_pixels`` pixels by its header (images or video frames)
    ``outside_root``       resolves outside ``collect.path`` (a link); never opened
    ``special_file``       a FIFO, socket or device file; never opened
    ``link_loop``          a linked folder that contains itself
    ``label_missing_value`` a labels table row with a NaN label (``path`` is ``<table>:<row>``)
    ``label_not_finite``   a labels table row with an infinite label
    ``label_out_of_range`` a labels table row with a label outside ``LABEL_BOUNDS``
    ``label_without_pair`` a labels table row whose pair is not kept (absent or rejected)
    Every file under ``target/`` and ``source/`` is either in a kept pair or in this table,
    and so is every row of the labels table that is not used.
``disturbances.parquet``  twin only, the hidden ground truth of planted disturbances:
    ``pair_id``, ``disturbance`` (``none``, ``occlusion``, ``blur``, ``overexposure``,
    ``underexposure``, ``misaligned``) for every pair.
"""

from __future__ import annotations

import re
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from nirgan.config import CollectConfig, Config, ConfigError, DataError
from nirgan.cores import available_cores
from nirgan.data_paths import check_data_paths
from nirgan.io import atomic_dir, encode_png, file_sha256, progress, stage_log, write_image, write_table
from nirgan.io import log as io_log
from nirgan.labels import LABELS
from nirgan.safe_read import (
    FRAME, IMAGE_EXTS, SKIPPED, Mode, PairLabels, Rejects, check_bit_depth, fit, input_files, inspect_image,
)
from nirgan.video_read import VIDEO_EXTS, declared_frames, is_grey, open_video
from nirgan.video_read import frames as video_frames

MANIFEST_COLUMNS = [
    "pair_id", "subject", "camera", "frame", "source_path", "target_path", "source_sha256", "target_sha256",
    *LABELS, "glasses",
]
REJECT_COLUMNS = ["path", "pair_id", "reason"]
EXPRESSION_COLUMNS = ["sample_id", "subject", "label", "image_path", "usage", "sha256"]
DOMAINS = ("target", "source")
MODES: dict[str, Mode] = {"target": "grey", "source": "rgb"}
_DIR_NAME = re.compile(r"(.+)_([^_]+)")


def run(cfg: Config, out_dir: Path, params: Path = Path("params.yaml")) -> dict[str, Any]:
    source = cfg.collect.source
    if source == "twin":
        return _collect_twin(cfg, Path(out_dir))
    if cfg.collect.is_expression:
        raise ConfigError(f"collect.source: {source!r} is an expression source; this is the NIR pipeline's collect "
                          "(the expression pipeline runs `nirgan stage collect_expression`)")
    try:
        check_data_paths(cfg, params)
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    root = Path(cfg.collect.path)
    labels = PairLabels.load(cfg.collect.labels, root) if cfg.collect.labels is not None else None
    if source == "folder":
        return _collect_folder(root, Path(out_dir), labels, cfg.collect)
    return _collect_videos(root, Path(out_dir), labels, cfg.collect)


# --------------------------------------------------------------------------------- common
def pair_id(subject: str, camera: str, frame: int) -> str:
    return f"{subject}_{camera}/{frame:05d}"


def parse_recording(name: str) -> tuple[str, str] | None:
    """``<subject>_<camera>`` -> (subject, camera); None when it does not parse. The name is read
    in Unicode's composed form (NFC): a folder copied from macOS spells ``José`` decomposed (NFD),
    and its partner written on Linux composed; they are one recording. (Both spellings in one
    domain are then two files of one frame: ``duplicate_frame``.)"""
    m = _DIR_NAME.fullmatch(unicodedata.normalize("NFC", name))
    return (m.group(1), m.group(2)) if m else None


class _Writer:
    """Writes kept pairs into the stage dir and collects their manifest rows."""

    def __init__(self, out: Path, labels: PairLabels | None) -> None:
        self.out = out
        self.labels = labels
        self.rows: list[dict[str, Any]] = []

    def add(self, subject: str, camera: str, frame: int, images: dict[str, np.ndarray | Path | bytes]) -> None:
        """``images[domain]`` is an array to encode, a PNG file to copy byte for byte, or the
        PNG file's bytes (:func:`nirgan.io.encode_png`'s)."""
        pid = pair_id(subject, camera, frame)
        row: dict[str, Any] = {"pair_id": pid, "subject": subject, "camera": camera, "frame": frame}
        for domain in DOMAINS:
            rel = f"{domain}/{pid}.png"
            dest = self.out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            image = images[domain]
            if isinstance(image, bytes):
                dest.write_bytes(image)
            elif isinstance(image, Path):
                shutil.copyfile(image, dest)
            else:
                write_image(dest, image)
            row[f"{domain}_path"] = rel
            row[f"{domain}_sha256"] = file_sha256(dest)
        table = self.labels.table if self.labels is not None else None
        known = table is not None and pid in table.index
        for name in LABELS:
            row[name] = float(table.at[pid, name]) if known else np.nan
        row["glasses"] = table.at[pid, "glasses"] if known and "glasses" in table else pd.NA
        self.rows.append(row)

    def manifest(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=MANIFEST_COLUMNS)
        df = df.astype({c: "object" for c in MANIFEST_COLUMNS[:8] if c != "frame"})
        df["frame"] = df["frame"].astype("int64")
        df[list(LABELS)] = df[list(LABELS)].astype("float64")
        df["glasses"] = df["glasses"].astype("boolean")
        return df.sort_values("pair_id", kind="stable").reset_index(drop=True)


def _finish(
    out: Path,
    writer: _Writer,
    rejects: Rejects,
    log: dict[str, Any],
    extra: dict[str, pd.DataFrame] | None = None,
    labels: PairLabels | None = None,
    root: Path | None = None,
) -> dict[str, Any]:
    if not writer.rows:
        reasons = pd.Series([r["reason"] for r in rejects.rows], dtype=object).value_counts().to_dict()
        raise DataError(f"{root}: no usable pair ({len(rejects.rows)} files rejected: {reasons})")
    if labels is not None:
        labels.finish({row["pair_id"] for row in writer.rows}, rejects, log)
        unlabelled = sum(np.isnan(row["head_yaw"]) for row in writer.rows)
        if unlabelled:
            # evaluate's pose figures and generate's label check need every pair labelled
            io_log.warning("collect: %d of %d pairs have no labels in %s (see rejects.parquet)",
                           unlabelled, len(writer.rows), labels.name)
        log["unlabelled"] = unlabelled
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
        # the workers encode the PNGs too: at 1 ms a pair, encoding in this process would cap the
        # stage at about 1,000 pairs/s however many cores render
        pairs = twin.render_dataset(tcfg, workers=available_cores(), encode=encode_png)
        for pair in progress(pairs, total=total, desc="collect twin", unit="pair"):
            writer.add(pair.subject, pair.camera, pair.frame, {"target": pair.target, "source": pair.source})
            row = writer.rows[-1]
            row.update(pair.labels)
            row["glasses"] = pair.glasses
            truth.append({"pair_id": pair.pair_id, "disturbance": pair.disturbance})
        disturbances = pd.DataFrame(truth, columns=["pair_id", "disturbance"]).astype("object")
        log["disturbed"] = int((disturbances["disturbance"] != "none").sum())
        return _finish(out, writer, Rejects(), log, {"disturbances.parquet": disturbances})


# --------------------------------------------------------------------------------- folder
def _collect_folder(root: Path, out_dir: Path, labels: PairLabels | None, ccfg: CollectConfig) -> dict[str, Any]:
    rejects = Rejects()
    # (subject, camera, frame) -> the file, or the reason it was rejected before inspection
    found: dict[str, dict[tuple[str, str, int], Path | tuple[Path, str]]] = {d: {} for d in DOMAINS}
    entries = input_files(root, DOMAINS)
    for entry in entries:
        path = entry.path
        rel = path.relative_to(root)
        domain = rel.parts[0]
        if entry.rejected in SKIPPED:  # not a frame at all: it claims no frame number
            rejects.add(rel.as_posix(), None, entry.rejected)
            continue
        if len(rel.parts) != 3 or (parsed := parse_recording(rel.parts[1])) is None \
                or (m := FRAME.search(path.stem)) is None or path.suffix.lower() not in IMAGE_EXTS:
            # a rejected entry keeps its own reason; the layout reasons are for the rest
            reason = entry.rejected or (
                "unexpected_location" if len(rel.parts) != 3
                else "bad_directory_name" if parse_recording(rel.parts[1]) is None
                else "unsupported_file" if path.suffix.lower() not in IMAGE_EXTS
                else "bad_frame_name"
            )
            rejects.add(rel.as_posix(), None, reason)
            continue
        key = (*parsed, int(m.group(1)))
        if key in found[domain]:
            rejects.add(rel.as_posix(), pair_id(*key), entry.rejected or "duplicate_frame")
            if not isinstance(first := found[domain][key], tuple):
                # 12.png and 012.png: neither can be told to be the frame, so neither is paired
                found[domain][key] = (first, "duplicate_frame")
            continue
        found[domain][key] = (path, entry.rejected) if entry.rejected else path

    def rel(item: Path | tuple[Path, str]) -> str:
        return (item[0] if isinstance(item, tuple) else item).relative_to(root).as_posix()

    for domain, other in (("target", "source"), ("source", "target")):
        for key in sorted(set(found[domain]) - set(found[other])):
            item = found[domain][key]
            rejects.add(rel(item), pair_id(*key), item[1] if isinstance(item, tuple) else "unpaired")
    keys = sorted(set(found["target"]) & set(found["source"]))

    with stage_log("collect", source="folder", files=len(entries)) as log, atomic_dir(out_dir) as out:
        writer = _Writer(out, labels)
        downscaled, tops = 0, []
        for key in progress(keys, desc="collect folder", unit="pair"):
            items = {d: found[d][key] for d in DOMAINS}
            # a pair with a pre-rejected side is never opened (it may lie outside the root)
            images = {d: items[d][1] if isinstance(items[d], tuple) else None for d in DOMAINS}
            if not any(images.values()):
                images = {d: inspect_image(items[d], MODES[d], ccfg.max_pixels, ccfg.max_side, ccfg.bit_depth)
                          for d in DOMAINS}
            bad = {d: r for d, r in images.items() if isinstance(r, str)}
            if bad:
                for d in DOMAINS:
                    rejects.add(rel(items[d]), pair_id(*key), bad.get(d, "partner_rejected"))
                continue
            if images["target"].shape != images["source"].shape:
                for d in DOMAINS:
                    rejects.add(rel(items[d]), pair_id(*key), "size_mismatch")
                continue
            downscaled += max(images["target"].shape) > ccfg.max_side
            writer.add(*key, {d: images[d].data for d in DOMAINS})
            tops.extend(images[d].top for d in DOMAINS)
        check_bit_depth(tops, ccfg.bit_depth, str(root))
        log["downscaled"] = downscaled
        return _finish(out, writer, rejects, log, labels=labels, root=root)


# --------------------------------------------------------------------------------- videos
def _collect_videos(root: Path, out_dir: Path, labels: PairLabels | None, ccfg: CollectConfig) -> dict[str, Any]:
    rejects = Rejects()
    found: dict[str, dict[tuple[str, str], Path]] = {d: {} for d in DOMAINS}
    duplicated: set[tuple[str, tuple[str, str]]] = set()  # (domain, recording)
    entries = input_files(root, DOMAINS)
    for entry in entries:
        path = entry.path
        rel = path.relative_to(root)
        if entry.rejected:
            rejects.add(rel.as_posix(), None, entry.rejected)
        elif len(rel.parts) != 2:
            rejects.add(rel.as_posix(), None, "unexpected_location")
        elif path.suffix.lower() not in VIDEO_EXTS:
            rejects.add(rel.as_posix(), None, "unsupported_file")
        elif (parsed := parse_recording(path.stem)) is None:
            rejects.add(rel.as_posix(), None, "bad_directory_name")
        elif parsed in found[rel.parts[0]]:
            # alice_cam0.mp4 and alice_cam0.avi: neither can be told to be the recording
            rejects.add(rel.as_posix(), None, "duplicate_recording")
            duplicated.add((rel.parts[0], parsed))
        else:
            found[rel.parts[0]][parsed] = path
    for domain, other in (("target", "source"), ("source", "target")):
        for key in sorted(set(found[domain]) - set(found[other])):
            reason = "duplicate_recording" if (domain, key) in duplicated else "unpaired"
            rejects.add(found[domain][key].relative_to(root).as_posix(), None, reason)
    for domain, key in sorted(duplicated):
        if key in found["target"] and key in found["source"]:
            for d in DOMAINS:
                reason = "duplicate_recording" if (d, key) in duplicated else "partner_rejected"
                rejects.add(found[d].pop(key).relative_to(root).as_posix(), None, reason)
    keys = sorted(set(found["target"]) & set(found["source"]))

    with stage_log("collect", source="videos", videos=len(entries)) as log, atomic_dir(out_dir) as out:
        writer = _Writer(out, labels)
        for key in progress(keys, desc="collect videos", unit="video"):
            paths = {d: found[d][key] for d in DOMAINS}
            rels = {d: paths[d].relative_to(root).as_posix() for d in DOMAINS}
            caps = {d: open_video(paths[d], ccfg.max_pixels) for d in DOMAINS}
            try:
                _pair_videos(key, caps, rels, ccfg, writer, rejects)
            finally:
                for cap in caps.values():
                    if not isinstance(cap, str):
                        cap.release()
        return _finish(out, writer, rejects, log, labels=labels, root=root)


def _pair_videos(
    key: tuple[str, str],
    caps: dict[str, cv2.VideoCapture | str],
    rels: dict[str, str],
    ccfg: CollectConfig,
    writer: _Writer,
    rejects: Rejects,
) -> None:
    bad = {d: c for d, c in caps.items() if isinstance(c, str)}
    if bad:
        for d in DOMAINS:
            rejects.add(rels[d], None, bad.get(d, "partner_rejected"))
        return
    streams = {d: video_frames(caps[d]) for d in DOMAINS}
    # The container's frame count: a stream that ends before it was cut short, and it, not its
    # healthy partner, is to blame for the frames left over.
    declared = {d: declared_frames(caps[d], rels[d]) for d in DOMAINS}
    read = dict.fromkeys(DOMAINS, 0)
    index = 0
    while True:
        frames = {d: next(streams[d], None) for d in DOMAINS}
        if frames["target"] is None and frames["source"] is None:
            break
        for d in DOMAINS:
            read[d] += frames[d] is not None
        if index == 0 and any(f is None for f in frames.values()):
            # A video that yields no frame at all cannot be read, whatever its header says.
            for d in DOMAINS:
                rejects.add(rels[d], None, "unreadable_video" if frames[d] is None else "partner_rejected")
            return
        if index % ccfg.video_frame_step == 0:
            pid = pair_id(*key, index)
            missing = [d for d in DOMAINS if frames[d] is None]
            if missing:
                reason = "partner_truncated" if declared[missing[0]] > index else "unpaired"
                for d in DOMAINS:
                    if frames[d] is not None:
                        rejects.add(rels[d], pid, reason)
            elif frames["target"].shape[:2] != frames["source"].shape[:2]:
                for d in DOMAINS:
                    rejects.add(rels[d], pid, "size_mismatch")
            elif bad := _wrong_channels(frames):
                for d in DOMAINS:
                    rejects.add(rels[d], pid, "wrong_channels" if d in bad else "partner_rejected")
            else:
                target = fit(cv2.cvtColor(frames["target"], cv2.COLOR_BGR2GRAY), ccfg.max_side)
                source = fit(cv2.cvtColor(frames["source"], cv2.COLOR_BGR2RGB), ccfg.max_side)
                writer.add(*key, index, {"target": target, "source": source})
        index += 1
    for d in DOMAINS:
        if declared[d] > read[d]:
            rejects.add(rels[d], None, "truncated_video")


def _wrong_channels(frames: dict[str, np.ndarray]) -> list[str]:
    """The domains whose frame is of the wrong kind: a colour target, a grey source."""
    return [d for d in DOMAINS if is_grey(frames[d]) != (d == "target")]
