"""Stage clean: thesis 3.1.4 outlier removal, plus the misalignment check the thesis lacked.

Inputs (``data/crops``): ``manifest.parquet`` from detect, crop images under the stage dir.

Rules, each applied per (subject, camera) group, i.e. per subdirectory of the thesis layout:

``iqr_target`` / ``iqr_source`` (thesis 3.1.4)
    The mean of every image, for each domain separately; quartiles Q1 and Q3 of those means;
    a mean outside [Q1 - k IQR, Q3 + k IQR] (k = ``clean.iqr_k``) is an outlier. A pair goes
    when either of its images is an outlier.
``misalignment`` (``clean.misalignment``)
    The thesis notes that image means miss pairs whose source is not aligned with its target.
    The alignment error of a pair is the mean distance between the rig's eye centres in the
    SOURCE crop and the MTCNN eye landmarks of the TARGET crop, in crop pixels divided by the
    target's inter-ocular distance (see :func:`alignment_error`). Only large errors are bad, so
    the IQR rule (k = ``clean.misalignment_k``) is applied on the upper side only, and the
    threshold is never below ``clean.misalignment_floor``: in a well aligned group the IQR is
    tiny and Q3 + k IQR would flag landmark jitter.
``unreadable``
    A crop that cannot be read cannot be judged; the pair goes with the file named.

Quartiles are numpy's default ``linear`` definition (Hyndman and Fan type 7, also the default
of pandas and R): the thesis names no definition, type 7 is what "the quartiles" means in the
tools such a cleaning is usually done with, and it interpolates between order statistics so it
is defined and continuous for every group size.

Groups with fewer than ``clean.min_group_size`` pairs are kept whole: quartiles of a handful of
values say nothing about what is normal for that subject and camera.

Outputs (``data/clean``, written atomically):
    ``manifest.parquet``  the kept crop rows + ``target_mean``, ``source_mean`` (0..255) and
                          ``alignment_error`` (NaN when the check is off). Paths stay relative
                          to ``data/crops``; images are not copied.
    ``outliers.parquet``  ``pair_id, subject, camera, rule, value, lower, upper, reason``, one
                          row per rule that fired (a pair may have several rows).
Every input row is either kept or has at least one row in ``outliers.parquet``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from nirgan.config import Config, DataError, require_task
from nirgan.io import atomic_dir, read_image, read_table, stage_log, write_table
from nirgan.iqr import iqr_outliers

log = logging.getLogger("nirgan.clean")

OUTLIER_COLUMNS = ["pair_id", "subject", "camera", "rule", "value", "lower", "upper", "reason"]
_OUTLIER_DTYPES = dict.fromkeys(OUTLIER_COLUMNS, "object") | dict.fromkeys(("value", "lower", "upper"), "float64")

# The rig's colour-coded mask (thesis 3.1.1): skin red, eye whites green, irises blue. The
# render is shaded, so a class is recognised by a dominant channel rather than an exact
# colour: bright enough and clearly above both other channels (anti-aliased red/green edges
# and the twin's yellow glasses are neither).
_MIN_CHANNEL = 60
_DOMINANCE = 1.5
# Fewer eye pixels than this in a whole crop is no visible eye.
_MIN_EYE_PIXELS = 4
NO_EYES = "no visible eye pixels in the source"
# Along the eye line, two clusters separated by less than this many pixels are one eye split
# in two by 2-means, not two eyes.
_MIN_EYE_GAP_PX = 2.0


def eye_masks(source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(eye, iris)`` boolean masks of an RGB rig render: eye = eye white or iris pixels."""
    rgb = source.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    iris = (b >= _MIN_CHANNEL) & (b >= _DOMINANCE * np.maximum(r, g))
    white = (g >= _MIN_CHANNEL) & (g >= _DOMINANCE * np.maximum(r, b))
    return iris | white, iris


def source_eye_centres(
    source: np.ndarray, left: np.ndarray, right: np.ndarray
) -> tuple[np.ndarray | None, str]:
    """Eye centres of the rig in a source crop, ordered along the target's eye line.

    ``left`` and ``right`` are the target's eye landmarks (x, y) in crop pixels with pixel
    centres at +0.5, the convention of detect's manifest; they only give the direction
    of the eye line. The eye pixels are split into two eyes by 2-means on their position along
    that line (robust to head roll and to glasses rims cutting an eye into pieces). An eye's
    centre is the centroid of its iris pixels (the pupil is what MTCNN's eye landmark marks and
    it follows the gaze), or of its eye-white pixels when the iris is hidden.

    Returns ``(centres, reason)``: centres is (2, 2) [first, second along the line], (1, 2) when
    only one eye is visible (strong yaw), or None with the reason when no eye is visible.
    """
    eye, iris = eye_masks(source)
    ys, xs = np.nonzero(eye)
    if xs.size < _MIN_EYE_PIXELS:
        return None, f"{NO_EYES} ({xs.size} green/blue pixels)"
    # detect's landmarks put pixel centres at +0.5 (pixel j spans j..j+1); so do these
    pts = np.stack([xs, ys], axis=1).astype(np.float64) + 0.5
    is_iris = iris[ys, xs]
    direction = right - left
    direction = direction / np.linalg.norm(direction)
    t = pts @ direction
    threshold = t.mean()
    for _ in range(20):
        low, high = t < threshold, t >= threshold
        if not low.any() or not high.any():
            break
        new = 0.5 * (t[low].mean() + t[high].mean())
        if new == threshold:
            break
        threshold = new
    low, high = t < threshold, t >= threshold

    def centre(sel: np.ndarray) -> np.ndarray:
        chosen = sel & is_iris
        return pts[chosen].mean(axis=0) if chosen.sum() >= 1 else pts[sel].mean(axis=0)

    if low.any() and high.any() and t[high].min() - t[low].max() >= _MIN_EYE_GAP_PX:
        return np.stack([centre(low), centre(high)]), ""
    return centre(np.ones_like(low))[None, :], ""


def alignment_error(source: np.ndarray, left: np.ndarray, right: np.ndarray) -> tuple[float, str]:
    """Source/target misalignment of one pair, in units of the target's inter-ocular distance.

    ``left``/``right``: the target's MTCNN eye landmarks in crop pixels (x, y, pixel centres
    at +0.5). With both rig
    eyes visible, the mean of the two distances (rig eye ordered along the eye line to the
    landmark in the same place); with one visible, its distance to the nearer landmark.
    ``(inf, reason)`` when the source shows no eye or the target has no usable landmarks.
    """
    left = np.asarray(left, dtype=np.float64)
    right = np.asarray(right, dtype=np.float64)
    if not (np.isfinite(left).all() and np.isfinite(right).all()):
        return float("inf"), "target has no eye landmarks"
    iod = float(np.linalg.norm(right - left))
    if iod < 1.0:
        return float("inf"), f"target eye landmarks coincide (inter-ocular distance {iod:.2f} px)"
    centres, reason = source_eye_centres(source, left, right)
    if centres is None:
        return float("inf"), reason
    if len(centres) == 2:
        dist = 0.5 * (np.linalg.norm(centres[0] - left) + np.linalg.norm(centres[1] - right))
    else:
        dist = min(np.linalg.norm(centres[0] - left), np.linalg.norm(centres[0] - right))
    return float(dist / iod), ""


def _measure(crops_dir: Path, row: Any, misalignment: bool) -> tuple[float, float, float, str]:
    """target mean, source mean, alignment error, and a reason when an image is unreadable."""
    try:
        target = read_image(crops_dir / row.target_path, channels=1)
        source = read_image(crops_dir / row.source_path, channels=3)
    except (ValueError, OSError) as exc:
        return float("nan"), float("nan"), float("nan"), str(exc)
    error, why = float("nan"), ""
    if misalignment:
        error, why = alignment_error(
            source,
            np.array([row.lm_left_eye_x, row.lm_left_eye_y]),
            np.array([row.lm_right_eye_x, row.lm_right_eye_y]),
        )
    return float(target.mean()), float(source.mean()), error, why


def _outlier_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Outlier rows with fixed column types, also when there are none."""
    return pd.DataFrame(rows, columns=OUTLIER_COLUMNS).astype(_OUTLIER_DTYPES)


def find_outliers(df: pd.DataFrame, cfg: Config, unmeasurable: dict[str, str] | None = None) -> pd.DataFrame:
    """Apply the rules to a measured manifest (``target_mean``, ``source_mean``,
    ``alignment_error`` columns) and return the outlier rows (``OUTLIER_COLUMNS``).

    ``unmeasurable`` maps pair_id to why its alignment error is infinite (for the reason).
    """
    c = cfg.clean
    unmeasurable = unmeasurable or {}
    rows: list[dict[str, Any]] = []
    for (subject, camera), group in df.groupby(["subject", "camera"], sort=True):
        if len(group) < c.min_group_size:
            log.info(
                "clean: group %s/%s has %d pairs (< clean.min_group_size=%d): kept whole",
                subject, camera, len(group), c.min_group_size,
            )
            continue
        for rule, column, domain in (("iqr_target", "target_mean", "target"), ("iqr_source", "source_mean", "source")):
            values = group[column].to_numpy(dtype=np.float64)
            mask, lower, upper = iqr_outliers(values, c.iqr_k)
            for pair_id, value in zip(group["pair_id"][mask], values[mask], strict=True):
                side = "below Q1" if value < lower else "above Q3"
                rows.append(dict(
                    pair_id=pair_id, subject=subject, camera=camera, rule=rule, value=value,
                    lower=lower, upper=upper,
                    reason=f"{domain} image mean {value:.2f} is more than {c.iqr_k:g} IQR {side} "
                    f"in {subject}_{camera} (bounds {lower:.2f}..{upper:.2f})",
                ))
        if c.misalignment:
            values = group["alignment_error"].to_numpy(dtype=np.float64)
            _, _, iqr_upper = iqr_outliers(values, c.misalignment_k)
            upper = max(iqr_upper, c.misalignment_floor) if np.isfinite(iqr_upper) else c.misalignment_floor
            mask = values > upper
            for pair_id, value in zip(group["pair_id"][mask], values[mask], strict=True):
                reason = unmeasurable.get(pair_id) or (
                    f"source eyes are {value:.3f} inter-ocular distances from the target's eye "
                    f"landmarks (upper bound {upper:.3f} = max(Q3 + {c.misalignment_k:g} IQR, "
                    f"floor {c.misalignment_floor:g}))"
                )
                rows.append(dict(
                    pair_id=pair_id, subject=subject, camera=camera, rule="misalignment", value=value,
                    lower=float("nan"), upper=upper, reason=reason,
                ))
    return _outlier_frame(rows)


def run(cfg: Config, crops_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Measure every crop pair, apply the rules per (subject, camera), write kept rows and outliers."""
    crops_dir, out_dir = Path(crops_dir), Path(out_dir)
    require_task(cfg, "nir", "clean")
    crops = read_table(crops_dir / "manifest.parquet")
    needed = {"pair_id", "subject", "camera", "source_path", "target_path"}
    if cfg.clean.misalignment:
        needed |= {f"lm_{eye}_eye_{axis}" for eye in ("left", "right") for axis in ("x", "y")}
    missing = sorted(needed - set(crops.columns))
    if missing:
        raise KeyError(f"{crops_dir / 'manifest.parquet'}: missing columns {missing}")

    with stage_log("clean", pairs=len(crops)) as counts:
        measured = [
            _measure(crops_dir, row, cfg.clean.misalignment)
            for row in tqdm(crops.itertuples(index=False), total=len(crops), desc="clean", disable=None)
        ]
        df = crops.copy()
        df["target_mean"] = [m[0] for m in measured]
        df["source_mean"] = [m[1] for m in measured]
        df["alignment_error"] = [m[2] for m in measured]
        unreadable = df["target_mean"].isna().to_numpy()

        bad_rows = _outlier_frame([
            dict(pair_id=r.pair_id, subject=r.subject, camera=r.camera, rule="unreadable",
                 value=float("nan"), lower=float("nan"), upper=float("nan"), reason=m[3])
            for r, m, bad in zip(df.itertuples(index=False), measured, unreadable, strict=True)
            if bad
        ])
        readable = df[~unreadable]
        unmeasurable = {
            pid: m[3] for pid, m, bad in zip(df["pair_id"], measured, unreadable, strict=True) if m[3] and not bad
        }
        if cfg.clean.misalignment and len(readable) and sum(
                why.startswith(NO_EYES) for why in unmeasurable.values()) == len(readable):
            # Sources without the rig's colour code: the rule would remove every pair.
            raise DataError(
                f"{crops_dir / 'manifest.parquet'}: none of the {len(readable)} source crops shows the rig's eye "
                "colour code (green eye whites, blue irises), so no pair's alignment can be measured: bring rig "
                "renders with that code (docs/data.md) or set clean.misalignment: false")
        judged = find_outliers(readable, cfg, unmeasurable)
        outliers = pd.concat([bad_rows, judged], ignore_index=True) if len(bad_rows) else judged
        kept = df[~df["pair_id"].isin(outliers["pair_id"])].reset_index(drop=True)

        with atomic_dir(out_dir) as tmp:
            write_table(kept, tmp / "manifest.parquet")
            write_table(outliers, tmp / "outliers.parquet")

        by_rule = outliers.groupby("rule")["pair_id"].nunique().to_dict()
        sizes = df.groupby(["subject", "camera"]).size()
        counts.update(
            kept=len(kept),
            removed=len(df) - len(kept),
            iqr_target=by_rule.get("iqr_target", 0),
            iqr_source=by_rule.get("iqr_source", 0),
            misalignment=by_rule.get("misalignment", 0),
            unreadable=by_rule.get("unreadable", 0),
            groups=len(sizes),
            small_groups=int((sizes < cfg.clean.min_group_size).sum()),
        )
    return dict(counts)
