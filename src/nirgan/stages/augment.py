"""Stage augment: thesis 3.1.5 preprocessing (the random augmentation of Table 3.1 is
:mod:`nirgan.augmentation`).

The stage bakes what is deterministic and keeps what is random on the fly:

1. every kept crop pair is resized to ``augment.image_size`` (area interpolation, the right
   filter for downsizing: it averages instead of aliasing);
2. each target is scaled by mu0/mu (mu: its mean; mu0: ``augment.target_mean`` or the mean of
   mu over all kept targets), clipped to 0..255, so the per-camera lighting differences the
   thesis found hard to learn are gone while the relations between pixels stay;
3. the arrays are written; the random augmentation is NOT written:
   :func:`nirgan.augmentation.paired_augment`
   draws a fresh transform for every pair every time a batch is made (thesis 3.1.5: a pair is
   "never seen twice in exactly the same way"). Training, the preview and the tests all call
   that one function.

Outputs (``data/prepared``, written atomically):
    ``manifest.parquet``  clean rows + ``index`` (row in the arrays) + ``target_gain`` (mu0/mu)
                          + ``target_mean_prepared`` (mean after scaling and clipping)
    ``source.npy``        uint8 (N, S, S, 3) RGB rig renders
    ``target.npy``        uint8 (N, S, S) NIR targets, already scaled by mu0/mu
    ``stats.json``        mu0 and how it was chosen, per-image means before/after, clipping
    ``preview.png``       a few pairs under several augmentation draws (source | target |
                          overlay per draw) so a human can check the pairs stay aligned
    ``rejects.parquet``   ``pair_id, path, reason`` for crops that could not be used
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from nirgan.augmentation import paired_augment, to_model_range
from nirgan.config import AugmentConfig, Config, DataError, require_task
from nirgan.io import atomic_dir, read_image, read_table, stage_log, write_image, write_json, write_table
from nirgan.labels import LABELS

PREVIEW_PAIRS = 4
PREVIEW_DRAWS = 4
PREVIEW_SEED = 0
# A target whose mean is below this (on 0..255) is black: mu0/mu would blow noise up to white.
_MIN_TARGET_MEAN = 1.0


def _load_pair(crops_dir: Path, row: Any, size: int) -> tuple[np.ndarray, np.ndarray] | str:
    try:
        target = read_image(crops_dir / row.target_path, channels=1)
        source = read_image(crops_dir / row.source_path, channels=3)
    except (ValueError, OSError) as exc:
        return str(exc)
    return (
        cv2.resize(source, (size, size), interpolation=cv2.INTER_AREA),
        cv2.resize(target, (size, size), interpolation=cv2.INTER_AREA),
    )


def preview(source: np.ndarray, target: np.ndarray, aug_cfg: AugmentConfig, seed: int = PREVIEW_SEED) -> np.ndarray:
    """RGB grid: one row per pair, per draw three tiles: source | target | overlay.

    The overlay tints the target with the source's mask, so a misaligned pair shows at once.
    """
    src = torch.from_numpy(source).permute(0, 3, 1, 2)
    tgt = torch.from_numpy(target)[:, None]
    generator = torch.Generator().manual_seed(seed)
    columns = []
    for draw in range(PREVIEW_DRAWS):
        if draw == 0:
            s, t = to_model_range(src), to_model_range(tgt)  # the original first
        else:
            s, t, _ = paired_augment(src, tgt, None, aug_cfg, generator)
        s = (s + 1.0) * 127.5
        t = ((t + 1.0) * 127.5).expand(-1, 3, -1, -1)
        overlay = 0.6 * t + 0.4 * s
        columns.append(torch.cat([s, t, overlay], dim=3))
    grid = torch.cat(columns, dim=3)  # (B, 3, S, 3 S D)
    grid = torch.cat(list(grid), dim=1)  # (3, B S, 3 S D)
    return grid.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _summary(values: np.ndarray) -> dict[str, float]:
    return dict(mean=float(values.mean()), std=float(values.std()), min=float(values.min()), max=float(values.max()))


def run(cfg: Config, crops_dir: Path, clean_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Resize, mu0/mu-normalise the targets, write arrays, manifest, stats and the preview."""
    crops_dir, clean_dir, out_dir = Path(crops_dir), Path(clean_dir), Path(out_dir)
    require_task(cfg, "nir", "augment")
    a = cfg.augment
    size = a.image_size
    clean = read_table(clean_dir / "manifest.parquet")
    missing = sorted({"pair_id", "source_path", "target_path"} - set(clean.columns))
    if missing:
        raise DataError(f"{clean_dir / 'manifest.parquet'}: missing columns {missing}")

    if clean.empty:  # every pair went at detect or clean: say so, not a reshape error
        raise DataError(f"{clean_dir / 'manifest.parquet'}: no pair left to prepare (0 rows; "
                        "data/raw/rejects.parquet, data/crops/rejects.parquet and data/clean/outliers.parquet say "
                        "why)")
    with stage_log("augment", pairs=len(clean)) as counts, atomic_dir(out_dir) as tmp:
        rows = list(clean.itertuples(index=False))
        sources = np.zeros((len(rows), size, size, 3), dtype=np.uint8)
        targets = np.zeros((len(rows), size, size), dtype=np.uint8)
        ok = np.zeros(len(rows), dtype=bool)
        rejects = []
        # cv2 releases the GIL while decoding and resizing, so threads overlap the file reads.
        with ThreadPoolExecutor(max_workers=4) as pool:
            loaded = pool.map(lambda r: _load_pair(crops_dir, r, size), rows)
            for i, (row, result) in enumerate(
                tqdm(zip(rows, loaded), total=len(rows), desc="augment", disable=None)
            ):
                if isinstance(result, str):
                    rejects.append(dict(pair_id=row.pair_id, path=row.target_path, reason=result))
                    continue
                sources[i], targets[i] = result
                ok[i] = True

        mu = targets.reshape(len(rows), -1).mean(axis=1, dtype=np.float64)
        for i in np.flatnonzero(ok & (mu < _MIN_TARGET_MEAN)):
            rejects.append(dict(
                pair_id=rows[i].pair_id, path=rows[i].target_path,
                reason=f"target is black (mean {mu[i]:.3f} < {_MIN_TARGET_MEAN}): mu0/mu is undefined",
            ))
            ok[i] = False
        if not ok.any():
            raise DataError(f"{clean_dir / 'manifest.parquet'}: no usable pair ({len(rows)} rows, all rejected)")
        if not ok.all():
            sources, targets, mu = sources[ok], targets[ok], mu[ok]
        mu0 = float(a.target_mean) if a.target_mean is not None else float(mu.mean())
        gain = mu0 / mu
        clipped_pixels = 0
        # in chunks, in place: a float copy of all targets would be 4x the array at thesis scale
        for lo in range(0, len(targets), 1024):
            scaled = targets[lo : lo + 1024].astype(np.float32) * gain[lo : lo + 1024, None, None].astype(np.float32)
            clipped_pixels += int((scaled > 255.0).sum())
            targets[lo : lo + 1024] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        clipped = clipped_pixels / targets.size
        mu_after = targets.reshape(len(targets), -1).mean(axis=1, dtype=np.float64)

        manifest = clean[ok].reset_index(drop=True)
        manifest["index"] = np.arange(len(manifest), dtype=np.int64)
        manifest["target_gain"] = gain
        manifest["target_mean_prepared"] = mu_after

        np.save(tmp / "source.npy", sources)
        np.save(tmp / "target.npy", targets)
        write_table(manifest, tmp / "manifest.parquet")
        write_table(pd.DataFrame(rejects, columns=["pair_id", "path", "reason"]), tmp / "rejects.parquet")
        write_json(tmp / "stats.json", dict(
            n=len(manifest),
            image_size=size,
            mu0=mu0,
            mu0_from="augment.target_mean" if a.target_mean is not None else "mean over all kept targets",
            target_mean_before=_summary(mu),
            target_mean_after=_summary(mu_after),
            target_gain=dict(min=float(gain.min()), max=float(gain.max())),
            clipped_pixel_fraction=clipped,
            source_mean=float(sources.mean(dtype=np.float64)),
            labels=list(LABELS),
            augmentation="on the fly: nirgan.augmentation.paired_augment (not baked into these arrays)",
        ))
        pick = np.linspace(0, len(manifest) - 1, min(PREVIEW_PAIRS, len(manifest))).round().astype(int)
        write_image(tmp / "preview.png", preview(sources[pick], targets[pick], a))

        counts.update(prepared=len(manifest), rejected=len(rejects), mu0=round(mu0, 2), clipped=f"{clipped:.4f}")
    return dict(counts)
