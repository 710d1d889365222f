"""The evaluation figures (PNG, uint8 RGB, drawn with OpenCV only) and the data files ``dvc plots`` reads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd
import torch

from nirgan.io import write_image, write_json
from nirgan.labels import LABELS
from nirgan.metrics.data import Split
from nirgan.metrics.realism import latents
from nirgan.models.pose_estimator import predict

if TYPE_CHECKING:  # the NIR family's sampler; a type only, so the expression family never loads it
    from nirgan.models.artifacts import Sampler

PAD = 2
CAPTION = 14  # pixel rows under a tile for its caption


def to_rgb_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] with C in {1, 3} -> (H, W, 3) uint8."""
    img = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    if img.shape[0] == 1:
        img = img.repeat(3, 1, 1)
    return img.permute(1, 2, 0).numpy()


def grid(rows: list[list[torch.Tensor]], captions: list[list[str]] | None = None,
         row_titles: list[str] | None = None) -> np.ndarray:
    """Tiles (C, H, W) in [-1, 1] laid out in rows; optional caption under each tile and a title
    above each row. Rows may differ in length; missing cells stay dark grey."""
    h, w = rows[0][0].shape[-2:]
    cols = max(len(r) for r in rows)
    cap = CAPTION if captions else 0
    title = CAPTION if row_titles else 0
    cell_h = h + cap + title + PAD
    canvas = np.full((PAD + len(rows) * cell_h, PAD + cols * (w + PAD), 3), 40, np.uint8)
    for i, row in enumerate(rows):
        y = PAD + i * cell_h
        if row_titles:
            _text(canvas, row_titles[i], PAD, y + title - 3)
        for j, tile in enumerate(row):
            x = PAD + j * (w + PAD)
            canvas[y + title : y + title + h, x : x + w] = to_rgb_uint8(tile)
            if captions and captions[i][j]:
                _text(canvas, captions[i][j], x + 1, y + title + h + cap - 3)
    return canvas


def _text(canvas: np.ndarray, text: str, x: int, y: int) -> None:
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (235, 235, 235), 1, cv2.LINE_AA)


# ------------------------------------------------------------------- evaluation figures
# The PNGs and dvc plot data of the evaluate stage (``plots/``); keys: see :mod:`nirgan.metrics`.
SWEEPS = ("head_yaw", "head_pitch", "gaze_yaw")
SWEEP_STEPS = 8
GRID_SOURCES = 6
GRID_LATENTS = 6
INTERP_STEPS = 8
SWEEP_COLUMNS = ("pair_id", "true_deg", "estimated_real_deg", "estimated_generated_deg")


def placeholder(title: str, reason: str, width: int = 320, height: int = 80) -> np.ndarray:
    """A dark image that says why a figure is missing (e.g. "unavailable: no labels")."""
    canvas = np.full((height, width, 3), 40, np.uint8)
    _text(canvas, title, 8, 28)
    _text(canvas, reason, 8, 56)
    return canvas


def spread(values: np.ndarray, steps: int) -> np.ndarray:
    return np.unique(np.linspace(0, len(values) - 1, steps).round().astype(int))


def sweep_pairs(labels: np.ndarray, attr: str, steps: int) -> np.ndarray:
    """Test pairs that walk through ``attr`` from its lowest to its highest value while the other
    angles stay as close to their medians as the recordings allow (thesis 3.5.3.1 varies one
    attribute of the rig at a time; real recordings only approximate that)."""
    j = LABELS.index(attr)
    others = np.delete(labels, j, axis=1)
    scale = others.std(0) + 1e-6
    deviation = np.abs((others - np.median(others, 0)) / scale).sum(1)
    edges = np.quantile(labels[:, j], np.linspace(0, 1, steps + 1))
    chosen = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = np.flatnonzero((labels[:, j] >= lo) & (labels[:, j] <= hi))
        if len(inside):
            chosen.append(inside[np.argmin(deviation[inside])])
    chosen = np.unique(np.array(chosen))
    return chosen[np.argsort(labels[chosen, j])]


def draw_figures(out: Path, test: Split, train: Split, sampler: Sampler, encoder: Any, estimator: torch.nn.Module,
             fakes: torch.Tensor, est_real: np.ndarray, labelled: bool, seed: int) -> None:
    labels = test.labels if sampler.label_dim else None
    # sample grid: fixed test sources x fixed latents
    rows_idx = spread(np.arange(len(test)), GRID_SOURCES)
    z = latents(GRID_LATENTS, sampler.latent_dim, 30_000 + seed)
    rows, caps = [], []
    for i in rows_idx:
        src = test.sources([i]).repeat(GRID_LATENTS, 1, 1, 1)
        lab = None if labels is None else labels[[i] * GRID_LATENTS]
        gen = sampler.generate(src, z, lab)
        rows.append([test.sources([i])[0], test.targets([i])[0], *gen])
        caps.append(["source", "real", *[f"z{k}" for k in range(GRID_LATENTS)]])
    write_image(out / "samples.png", grid(rows, caps))

    # sweeps: one attribute at a time, generated with one fixed z
    if labelled:
        z1 = latents(1, sampler.latent_dim, 40_000 + seed)
        for attr in SWEEPS:
            j = LABELS.index(attr)
            idx = sweep_pairs(test.labels, attr, SWEEP_STEPS)
            gen = sampler.generate(test.sources(idx), z1.repeat(len(idx), 1), None if labels is None else labels[idx])
            est_gen = predict(estimator, gen)[:, j]
            truth = test.labels[idx, j]
            rows = [list(test.sources(idx)), list(test.targets(idx)), list(gen)]
            caps = [[f"true {t:+.1f}" for t in truth], [f"est {v:+.1f}" for v in est_real[idx, j]],
                    [f"est {v:+.1f}" for v in est_gen]]
            titles = [f"{attr}: source", "real target (estimator)", "generated (estimator)"]
            write_image(out / f"sweep_{attr}.png", grid(rows, caps, titles))
            pd.DataFrame({  # columns: SWEEP_COLUMNS
                "pair_id": test.pair_ids[idx], "true_deg": truth,
                "estimated_real_deg": est_real[idx, j], "estimated_generated_deg": est_gen,
            }).to_csv(out / f"sweep_{attr}.csv", index=False, float_format="%.3f")
    else:
        # Every plot dvc.yaml declares must exist, or `dvc plots show` fails for all of them.
        for attr in SWEEPS:
            write_image(out / f"sweep_{attr}.png", placeholder(f"sweep {attr}", "unavailable: no labels"))
            pd.DataFrame(columns=list(SWEEP_COLUMNS)).to_csv(out / f"sweep_{attr}.csv", index=False)

    # latent interpolation (thesis 3.5.3.2.1), in style space: generated and reconstructed faces
    t = torch.linspace(0, 1, INTERP_STEPS)[:, None]
    rows, titles = [], []
    for r, i in enumerate(spread(np.arange(len(test)), 3)):
        a, b = sampler.style_of(latents(2, sampler.latent_dim, 50_000 + seed + r)).split(1)
        styles = (1 - t) * a + t * b
        src = test.sources([i]).repeat(INTERP_STEPS, 1, 1, 1)
        lab = None if labels is None else labels[[i] * INTERP_STEPS]
        rows.append(list(sampler.generate(src, styles, lab, style=True)))
        titles.append(f"generated: s(z_a) -> s(z_b), source {test.pair_ids[i]}")
    if encoder is not None:
        others = np.flatnonzero(train.subjects != test.subjects[0])
        i, j = 0, int(others[0]) if len(others) else 0
        with torch.no_grad():
            device = next(encoder.parameters()).device
            a = encoder(test.targets([i]).to(device)).cpu()
            b = encoder(train.targets([j]).to(device)).cpu()
        styles = (1 - t) * a + t * b
        src = test.sources([i]).repeat(INTERP_STEPS, 1, 1, 1)
        lab = None if labels is None else labels[[i] * INTERP_STEPS]
        rows.append(list(sampler.generate(src, styles, lab, style=True)))
        titles.append(f"reconstructed: E({test.subjects[i]}) -> E({train.subjects[j]})")
    write_image(out / "interpolation.png", grid(rows, row_titles=titles))

    # latent arithmetic (thesis 3.5.3.2.2): s3 + (s2 - s1), styles of three train subjects if E exists
    subjects = list(dict.fromkeys(train.subjects))[:3]
    if encoder is not None and len(subjects) == 3:
        picks = [int(np.flatnonzero(train.subjects == s)[0]) for s in subjects]
        with torch.no_grad():
            device = next(encoder.parameters()).device
            s1, s2, s3 = encoder(train.targets(picks).to(device)).cpu().split(1)
        names = [f"E({s})" for s in subjects]
    else:
        s1, s2, s3 = sampler.style_of(latents(3, sampler.latent_dim, 60_000 + seed)).split(1)
        names = ["s1", "s2", "s3"]
    styles = torch.cat([s1, s2, s3, s3 + (s2 - s1)])
    rows, caps = [], []
    for i in spread(np.arange(len(test)), 3):
        src = test.sources([i]).repeat(4, 1, 1, 1)
        lab = None if labels is None else labels[[i] * 4]
        rows.append([test.sources([i])[0], *sampler.generate(src, styles, lab, style=True)])
        caps.append(["source", *names, "s3+s2-s1"])
    write_image(out / "arithmetic.png", grid(rows, caps))


REALISM_DIVERSITY_KEYS = (
    "fid", "fid_untrained", "fid_real_baseline", "lpips",
    "realism_fid_nirfeat", "realism_fid_nirfeat_untrained", "realism_fid_nirfeat_real_baseline",
    "realism_kid_nirfeat", "realism_kid_nirfeat_untrained", "realism_kid_nirfeat_real_baseline",
    "realism_swd_laplacian", "realism_swd_laplacian_untrained", "realism_swd_laplacian_real_baseline",
    "diversity_msssim",
)


def write_plot_data(out: Path, metrics: dict[str, Any], labelled: bool, judge_curve: list[dict[str, Any]]) -> None:
    # one column per arm, one row per training size: dvc's linear template draws each column as a line
    arms = sorted({r["arm"] for r in judge_curve})
    by_size: dict[int, dict[str, Any]] = {}
    for r in judge_curve:
        by_size.setdefault(r["images_per_class"], {"images_per_class": r["images_per_class"]})[r["arm"]] = r["auc"]
    pd.DataFrame([by_size[k] for k in sorted(by_size)], columns=["images_per_class", *arms]).to_csv(
        out / "judge_curve.csv", index=False)
    bars = [{"metric": k, "value": metrics[k], "std": metrics.get(f"{k}_std", 0.0)}
            for k in REALISM_DIVERSITY_KEYS if isinstance(metrics.get(k), float)]
    write_json(out / "realism_diversity.json", bars)
    if not labelled:
        write_json(out / "pose_error.json", [])  # declared in dvc.yaml: present, with no bars
    else:
        # long format, one bar per (attribute, images): dvc's bar templates take one x and one y field
        write_json(out / "pose_error.json", [
            {"series": f"{a} ({images})", "attribute": a, "images": images,
             "mean_deg": metrics[f"pose_{key}_{a}_mean"], "p90_deg": metrics[f"pose_{key}_{a}_p90"]}
            for a in LABELS for images, key in (("real", "real"), ("generated", "gen"))
        ])
