"""Stage augment: thesis 3.1.5 preprocessing, and the paired random augmentation of Table 3.1.

The stage bakes what is deterministic and keeps what is random on the fly:

1. every kept crop pair is resized to ``augment.image_size`` (area interpolation, the right
   filter for downsizing: it averages instead of aliasing);
2. each target is scaled by mu0/mu (mu: its mean; mu0: ``augment.target_mean`` or the mean of
   mu over all kept targets), clipped to 0..255, so the per-camera lighting differences the
   thesis found hard to learn are gone while the relations between pixels stay;
3. the arrays are written; the random augmentation is NOT written: :func:`paired_augment`
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
import torch.nn.functional as F
from tqdm import tqdm

from nirgan.config import AugmentConfig, Config, RandomRange
from nirgan.io import atomic_dir, read_image, read_table, stage_log, write_image, write_json, write_table
from nirgan.labels import FLIP_SIGN, LABELS

PREVIEW_PAIRS = 4
PREVIEW_DRAWS = 4
PREVIEW_SEED = 0
# A target whose mean is below this (on 0..255) is black: mu0/mu would blow noise up to white.
_MIN_TARGET_MEAN = 1.0


# --------------------------------------------------------------------------- the transform
def _as_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 or float 0..1 -> float 0..1."""
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """Un-augmented images to the model's [-1, 1]: uint8 (0..255) or float (0..1).

    The scaling is fixed (0 -> -1, 255 -> 1), not per-image min-max: a per-image stretch would
    undo the mu0/mu normalisation of the targets and make brightness meaningless.
    """
    return _as_unit(x).mul(2.0).sub(1.0)


def _draw(cfg: RandomRange, u_apply: torch.Tensor, u_value: torch.Tensor, identity: float) -> torch.Tensor:
    value = cfg.low + (cfg.high - cfg.low) * u_value
    return torch.where(u_apply < cfg.p, value, torch.full_like(value, identity))


def draw_params(
    batch: int, cfg: AugmentConfig, generator: torch.Generator | None, device: torch.device
) -> dict[str, torch.Tensor]:
    """One draw of Table 3.1 per pair, identity where a transform is not applied.

    All uniforms come from one ``torch.rand`` call on the generator's device (so a CPU
    generator drives a GPU batch, and a seed gives the same draws on any device), moved to
    ``device`` without a host sync.
    """
    gen_device = generator.device if generator is not None else device
    u = torch.rand(batch, 10, generator=generator, device=gen_device).to(device, non_blocking=True)
    return dict(
        scale=_draw(cfg.scale, u[:, 0], u[:, 5], 1.0),
        shift_x=_draw(cfg.shift, u[:, 1], u[:, 6], 0.0),
        shift_y=_draw(cfg.shift, u[:, 1], u[:, 7], 0.0),
        rotation=_draw(cfg.rotation, u[:, 2], u[:, 8], 0.0),
        gamma=_draw(cfg.gamma, u[:, 3], u[:, 9], 100.0),
        flip=u[:, 4] < cfg.hflip_p,
    )


def affine_theta(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 2, 3) ``F.affine_grid`` matrices for flip, then rotation, then scale, then shift.

    The forward map on normalised coordinates (-1..1, so a shift of a fraction f of the side
    is 2 f) is p_out = s R(a) M p_in + 2 t, with M the mirror. ``affine_grid`` wants the inverse
    (where each output pixel samples from): p_in = M R(-a) (p_out - 2 t) / s.
    """
    s, a = params["scale"], params["rotation"]
    m = torch.where(params["flip"], -1.0, 1.0).to(s.dtype)
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    # M R(-a) / s, with R(-a) = [[cos, sin], [-sin, cos]]
    a00, a01 = m * cos, m * sin
    a10, a11 = -sin, cos
    tx, ty = 2.0 * params["shift_x"], 2.0 * params["shift_y"]
    b0 = -(a00 * tx + a01 * ty)
    b1 = -(a10 * tx + a11 * ty)
    return torch.stack([torch.stack([a00, a01, b0], 1), torch.stack([a10, a11, b1], 1)], 1)


def _label_vector(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """A constant per-label vector on ``like``'s device, filled in place: ``torch.tensor`` of a
    Python list would copy from the host and synchronise with the GPU on every batch."""
    out = torch.zeros(len(values), dtype=like.dtype, device=like.device)
    for i, value in enumerate(values):
        if value:
            out[i] = value
    return out


def apply_params(
    source: torch.Tensor, target: torch.Tensor, labels: torch.Tensor | None, params: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Apply given draws (see :func:`draw_params`); inputs in [0, 1], outputs in [-1, 1]."""
    source, target = _as_unit(source), _as_unit(target)
    both = torch.cat([source, target], dim=1)
    theta = affine_theta(params).to(both.dtype)
    grid = F.affine_grid(theta, list(both.shape), align_corners=False)
    both = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    source, target = both[:, :3], both[:, 3:]
    # Gamma on the target only: it models the NIR camera's response, a photometric property
    # of the target domain. The thesis applies every augmentation to both images "in order to
    # preserve their alignment", which gamma does not touch; on the source it would only
    # shift the class colours of the rig's mask and leak the target's exposure into the
    # condition the generator sees.
    gamma = (params["gamma"] / 100.0).to(target.dtype).view(-1, 1, 1, 1)
    target = target.clamp(0.0, 1.0).pow(gamma)
    if labels is not None:
        sign = _label_vector(FLIP_SIGN, labels)
        labels = torch.where(params["flip"].view(-1, 1), labels * sign, labels)
        # The image turns clockwise by the drawn angle (y points down), i.e. the head turns
        # counter-clockwise by minus that angle. With R = Rz(roll) Rx(-pitch) Ry(yaw) (the twin's
        # convention, roll counter-clockwise in the image) a turn about the optical axis only
        # adds to roll: yaw, pitch and the gaze (in head coordinates) stay exact.
        roll = _label_vector(tuple(float(name == "head_roll") for name in LABELS), labels)
        labels = labels - torch.rad2deg(params["rotation"]).to(labels.dtype)[:, None] * roll
    return to_model_range(source.clamp(0.0, 1.0)), to_model_range(target), labels


def paired_augment(
    source: torch.Tensor,
    target: torch.Tensor,
    labels: torch.Tensor | None,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Thesis Table 3.1, one random draw per pair, the same geometry for both of its images.

    ``source`` (B, 3, S, S) and ``target`` (B, 1, S, S) float in [0, 1] (uint8 is accepted),
    ``labels`` (B, 5) in ``nirgan.labels.LABELS`` order or None. Scale, shift, rotation and
    horizontal flip form ONE affine grid per pair, sampled bilinearly with zero padding from
    the stacked source and target, so the pair cannot drift apart. Gamma x ** (g/100) is
    applied to the target only (see :func:`apply_params`). Labels follow the geometry: a flip
    multiplies them by ``FLIP_SIGN`` (head yaw, head roll and gaze yaw change sign) and a
    rotation by angle a (clockwise in the image) changes head roll by -a in degrees (roll is
    counter-clockwise positive, as in the twin); scale and shift leave them unchanged. The
    thesis used no labels; without the roll update a label-conditioned model or a pose
    estimator would learn rolls up to 45 degrees off.

    Returns (source, target, labels) with images in [-1, 1], on the inputs' device, batched,
    with no host synchronisation and no Python loop over the batch.
    """
    if source.shape[0] != target.shape[0]:
        raise ValueError(f"paired_augment: {source.shape[0]} sources but {target.shape[0]} targets")
    params = draw_params(source.shape[0], cfg, generator, source.device)
    return apply_params(source, target, labels, params)


# ------------------------------------------------------------------------------ the stage
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


def preview(source: np.ndarray, target: np.ndarray, cfg: AugmentConfig, seed: int = PREVIEW_SEED) -> np.ndarray:
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
            s, t, _ = paired_augment(src, tgt, None, cfg, generator)
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
    a = cfg.augment
    size = a.image_size
    clean = read_table(clean_dir / "manifest.parquet")
    missing = sorted({"pair_id", "source_path", "target_path"} - set(clean.columns))
    if missing:
        raise KeyError(f"{clean_dir / 'manifest.parquet'}: missing columns {missing}")

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
            raise ValueError(f"{clean_dir / 'manifest.parquet'}: no usable pair ({len(rows)} rows, all rejected)")
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
            augmentation="on the fly: nirgan.stages.augment.paired_augment (not baked into these arrays)",
        ))
        pick = np.linspace(0, len(manifest) - 1, min(PREVIEW_PAIRS, len(manifest))).round().astype(int)
        write_image(tmp / "preview.png", preview(sources[pick], targets[pick], a))

        counts.update(prepared=len(manifest), rejected=len(rejects), mu0=round(mu0, 2), clipped=f"{clipped:.4f}")
    return dict(counts)

