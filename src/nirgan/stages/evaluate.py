"""Stage evaluate: thesis 3.3 and 3.5.3, plus the numbers the thesis only judged by eye.

Inputs: ``data/prepared`` arrays, ``data/split`` train/test manifests, ``models/generator.pt``
(and the latent encoder / mapping net the trainer saved beside it), ``data/raw``,
``data/crops`` and ``data/clean`` for the cleaning figures.

Outputs: ``metrics/eval.json`` (flat keys, listed in :mod:`nirgan.metrics`), ``plots/`` (PNGs
and the JSON/CSV files ``dvc plots`` reads, written atomically), and everything logged to the
training run in MLflow (``models/mlflow_run.json``) when there is one.

Order of work, chosen for a 2-core CPU:

1. the pose/gaze estimator is trained on the real train-split targets (it is both the
   attribute-preservation instrument and the feature network of the always-available
   realism figures), and calibrated on the real test targets;
2. for each of ``evaluate.seeds`` draws: one z per test source through the trained generator
   and through an untrained one (same architecture, same init, ``train.seed``), realism and
   pose errors against the source labels; N x M images for diversity;
3. identity reconstruction, the figures, the cleaning figures.

Everything random draws from generators seeded by ``evaluate.seed`` (draw k uses seed + k),
so a rerun with the same inputs writes the same figures.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nirgan.config import Config
from nirgan.devices import resolve_device
from nirgan.io import atomic_dir, read_table, stage_log, write_image, write_json
from nirgan.labels import LABELS
from nirgan.metrics import (
    aggregate_draws,
    evaluate_cleaning,
    features,
    figures,
)
from nirgan.metrics.fid import inception_features, load_fid_inception, resolve_fid
from nirgan.metrics.identity import paired_cosine, same_and_different
from nirgan.metrics.lpips_diversity import load_lpips, lpips_pairwise_mean, resolve_lpips
from nirgan.metrics.pose import angle_errors
from nirgan.models.pose_estimator import (
    EstimatorTraining,
    features as estimator_features,
    predict,
    train_pose_estimator,
)

log = logging.getLogger("nirgan.evaluate")

SWEEPS = ("head_yaw", "head_pitch", "gaze_yaw")
SWEEP_STEPS = 8
GRID_SOURCES = 6
GRID_LATENTS = 6
INTERP_STEPS = 8
# No subject head for the instrument: with one, its features cluster by training identity, and on
# the default twin real faces of other subjects then scored FARTHER from the test faces than an
# untrained generator's noise (FD 188 vs 133); without it they score nearer (19 vs 23), and the
# head-pose error is lower too (1.5 vs 1.9 deg).
SUBJECT_WEIGHT = 0.0


# ------------------------------------------------------------------------------ inputs
@dataclass
class Split:
    source: torch.Tensor  # uint8 (N, S, S, 3)
    target: torch.Tensor  # uint8 (N, S, S)
    labels: np.ndarray  # (N, 5) degrees, NaN where unknown
    subjects: np.ndarray  # (N,) str
    pair_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.pair_ids)

    def sources(self, idx: Any = slice(None)) -> torch.Tensor:
        """Model range [-1, 1], (n, 3, S, S)."""
        from nirgan.stages.augment import to_model_range

        return to_model_range(self.source[idx].permute(0, 3, 1, 2))

    def targets(self, idx: Any = slice(None)) -> torch.Tensor:
        from nirgan.stages.augment import to_model_range

        return to_model_range(self.target[idx][:, None])


def _load_split(prepared_dir: Path, split_dir: Path, name: str, source: np.ndarray, target: np.ndarray) -> Split:
    df = read_table(split_dir / f"{name}.parquet")
    missing = {"index", "subject", "pair_id"} - set(df.columns)
    if missing:
        raise KeyError(f"{split_dir / f'{name}.parquet'}: missing columns {sorted(missing)}")
    idx = df["index"].to_numpy(dtype=np.int64)
    if len(idx) and (idx.max() >= len(target) or idx.min() < 0):
        raise ValueError(f"{split_dir / f'{name}.parquet'}: index out of range for {prepared_dir}/target.npy "
                         f"({len(target)} rows)")
    labels = np.stack([df[c].to_numpy(dtype=np.float64) if c in df else np.full(len(df), np.nan)
                       for c in LABELS], axis=1) if len(df) else np.zeros((0, len(LABELS)))
    return Split(
        source=torch.from_numpy(np.ascontiguousarray(source[idx])),
        target=torch.from_numpy(np.ascontiguousarray(target[idx])),
        labels=labels,
        subjects=df["subject"].astype(str).to_numpy(),
        pair_ids=df["pair_id"].astype(str).to_numpy(),
    )


# --------------------------------------------------------------------------- generators
@dataclass
class Generator:
    """G with its style function: s = L(z) when the run has a mapping net, else z."""

    net: torch.nn.Module
    mapping: torch.nn.Module | None
    latent_dim: int
    label_dim: int

    @torch.no_grad()
    def __call__(self, sources: torch.Tensor, z: torch.Tensor, labels: np.ndarray | None = None,
                 batch_size: int = 50, style: bool = False) -> torch.Tensor:
        """Images (n, 1, S, S) in [-1, 1] on the CPU; ``style=True`` means z is already a style."""
        device = next(self.net.parameters()).device
        out = []
        for i in range(0, len(sources), batch_size):
            zb = z[i : i + batch_size].to(device)
            s = zb if style or self.mapping is None else self.mapping(zb)
            lab = None
            if self.label_dim:
                lab = torch.as_tensor(labels[i : i + batch_size], dtype=torch.float32, device=device)
            out.append(self.net(sources[i : i + batch_size].to(device), s, lab).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def style_of(self, z: torch.Tensor) -> torch.Tensor:
        if self.mapping is None:
            return z
        device = next(self.mapping.parameters()).device
        return self.mapping(z.to(device)).cpu()


def _encoder_state(model_dir: Path) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The latent encoder E: ``encoder.pt`` if present, else the trainer's latest checkpoint
    (``nets.encoder``; the trainer keeps no EMA copy of E), else None."""
    path = model_dir / "encoder.pt"
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return blob.get("state_dict", blob), str(path)
    from nirgan.training.checkpoint import Checkpoint

    latest = Checkpoint(model_dir / "checkpoints").latest() if (model_dir / "checkpoints").exists() else None
    if latest is not None:
        state = torch.load(latest, map_location="cpu", weights_only=True)
        sd = state.get("nets", {}).get("encoder")
        if sd is not None:
            return sd, str(latest)
    return None, ""


def _generators(model_dir: Path, cfg: Config, device: torch.device) -> tuple[Generator, Generator, Any, dict]:
    """(trained G, untrained G, latent encoder or None, info)."""
    from nirgan.models import build_networks, load_generator

    trained = load_generator(model_dir / "generator.pt", map_location=device)
    tcfg, label_dim = trained.train_config, trained.label_dim
    info: dict[str, Any] = {}

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tcfg.seed)
        fresh = build_networks(tcfg, label_dim)
    mapping = encoder = None
    if tcfg.style_mapping:
        # the trainer saves the (EMA) mapping net L inside generator.pt
        sd = torch.load(model_dir / "generator.pt", map_location="cpu", weights_only=True).get("mapping_state_dict")
        if sd is None:
            raise KeyError(f"{model_dir / 'generator.pt'}: the run uses a style mapping network "
                           "(train.style_mapping) but the file has no mapping_state_dict")
        from nirgan.models import StyleMappingNetwork

        mapping = StyleMappingNetwork(tcfg.latent_dim, tcfg.latent_dim)
        mapping.load_state_dict(sd)
        mapping = mapping.to(device).eval()
    sd, where = _encoder_state(model_dir)
    if sd is not None:
        from nirgan.models import LatentEncoder

        encoder = LatentEncoder(tcfg.latent_dim, tcfg.width)
        encoder.load_state_dict(sd)
        encoder = encoder.to(device).eval()
        info["encoder_from"] = where
    untrained_mapping = fresh.mapping.to(device).eval() if fresh.mapping is not None else None
    return (
        Generator(trained, mapping, tcfg.latent_dim, label_dim),
        Generator(fresh.generator.to(device).eval(), untrained_mapping, tcfg.latent_dim, label_dim),
        encoder,
        info,
    )


# ---------------------------------------------------------------------- weight-bound nets
def _imagenet_metrics(cfg: Config, device: torch.device) -> tuple[Any, Any, dict[str, Any]]:
    """(FID Inception or None, LPIPS or None, keys describing what was used or why not)."""
    e = cfg.evaluate
    info: dict[str, Any] = {}
    inception = lp = None
    if not e.fid:
        info.update(fid="unavailable", fid_reason="disabled (evaluate.fid: false)")
    else:
        weights, why = resolve_fid(e.fid_weights)
        if weights is None:
            info.update(fid="unavailable", fid_reason=why)
        else:
            inception = load_fid_inception(weights, device)
            info.update(weights.describe("fid"))
    if not e.lpips:
        info.update(lpips="unavailable", lpips_reason="disabled (evaluate.lpips: false)")
    else:
        weights, why = resolve_lpips(e.lpips_net, e.lpips_weights)
        if weights is None:
            info.update(lpips="unavailable", lpips_reason=why)
        else:
            lp = load_lpips(e.lpips_net, e.lpips_version, weights, device)
            info.update(weights.describe("lpips"))
            info["lpips_net"] = f"{e.lpips_net} v{e.lpips_version}"
    return inception, lp, info


# ---------------------------------------------------------------------------- the stage
def _z(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def _realism(real_feats: np.ndarray, real_imgs: torch.Tensor, fake_imgs: torch.Tensor,
             estimator: torch.nn.Module, seed: int, inception: Any, real_incep: np.ndarray | None,
             batch: int) -> dict[str, float]:
    feats = estimator_features(estimator, fake_imgs)
    out = {
        "realism_fid_nirfeat": features.frechet_distance(real_feats, feats),
        "realism_kid_nirfeat": features.kernel_inception_distance(real_feats, feats),
        "realism_swd_laplacian": features.sliced_wasserstein_laplacian(real_imgs, fake_imgs, seed)["mean"],
    }
    if inception is not None:
        out["fid"] = features.frechet_distance(real_incep, inception_features(inception, fake_imgs, batch))
    return out


def run(
    cfg: Config,
    raw_dir: Path,
    crops_dir: Path,
    clean_dir: Path,
    prepared_dir: Path,
    split_dir: Path,
    model_dir: Path,
    metrics_path: Path,
    plots_dir: Path,
) -> dict[str, Any]:
    raw_dir, crops_dir, clean_dir = Path(raw_dir), Path(crops_dir), Path(clean_dir)
    prepared_dir, split_dir, model_dir = Path(prepared_dir), Path(split_dir), Path(model_dir)
    e = cfg.evaluate
    started = last = time.perf_counter()

    def _lap(what: str) -> None:
        nonlocal last
        now = time.perf_counter()
        log.info("evaluate: %s (%.1f s)", what, now - last)
        last = now

    src_all = np.load(prepared_dir / "source.npy", mmap_mode="r")
    tgt_all = np.load(prepared_dir / "target.npy", mmap_mode="r")
    train = _load_split(prepared_dir, split_dir, "train", src_all, tgt_all)
    test = _load_split(prepared_dir, split_dir, "test", src_all, tgt_all)
    if len(test) < 2 or len(train) < 2:
        raise ValueError(f"{split_dir}: evaluate needs at least 2 train and 2 test pairs, "
                         f"got {len(train)} and {len(test)}")

    with stage_log("evaluate", train_pairs=len(train), test_pairs=len(test), seeds=e.seeds) as counts:
        device = resolve_device(e.device, "evaluate.device")
        g, g0, encoder, gen_info = _generators(model_dir, cfg, device)
        inception, lp, metrics = _imagenet_metrics(cfg, device)
        metrics.update(eval_test_pairs=len(test), eval_train_pairs=len(train), eval_seeds=e.seeds)
        real_test = test.targets()
        sources = test.sources()
        labelled = bool(np.isfinite(test.labels).all() and np.isfinite(train.labels).all())
        test_labels = test.labels if labelled else None

        # 1. the estimator: instrument for attribute preservation and feature net for realism
        estimator = _estimator(cfg, train, device)
        _lap("pose estimator trained")
        metrics["pose_gaze_from"] = ("eye patches (keypoints from the sources' eye colour code)" if estimator.eyes
                                     else "face trunk only (the sources carry no eye colour code)")
        est_pred_real = predict(estimator, real_test)
        if labelled:
            metrics.update(angle_errors(est_pred_real, test.labels, "pose_real"))
        else:
            metrics.update(pose_real="unavailable",
                           pose_reason="pose/gaze labels are missing (NaN) in the split: no estimator error")
        real_feats = estimator_features(estimator, real_test)
        real_incep = inception_features(inception, real_test, e.batch_size) if inception is not None else None

        # 2. draws: realism (trained, untrained, real baseline), pose on generated, diversity
        draws: dict[str, list[float]] = {}
        n_div = min(e.diversity_sources, len(test))
        first_fakes = None
        for k in range(e.seeds):
            seed = e.seed + k
            z = _z(len(test), g.latent_dim, seed)
            fakes = g(sources, z, test_labels, e.batch_size)
            first_fakes = fakes if first_fakes is None else first_fakes
            for key, v in _realism(real_feats, real_test, fakes, estimator, seed, inception, real_incep,
                                   e.batch_size).items():
                draws.setdefault(key, []).append(v)
            untrained = g0(sources, z, test_labels, e.batch_size)
            for key, v in _realism(real_feats, real_test, untrained, estimator, seed, inception, real_incep,
                                   e.batch_size).items():
                draws.setdefault(f"{key}_untrained", []).append(v)
            # real vs real: as many train targets (other subjects) as there are test targets
            pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: len(test)]
            if len(pick) == len(test):
                for key, v in _realism(real_feats, real_test, train.targets(pick), estimator, seed, inception,
                                       real_incep, e.batch_size).items():
                    draws.setdefault(f"{key}_real_baseline", []).append(v)
            if labelled:
                for key, v in angle_errors(predict(estimator, fakes), test.labels, "pose_gen").items():
                    draws.setdefault(key, []).append(v)
            chosen = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n_div]
            zs = _z(n_div * e.diversity_latents, g.latent_dim, 10_000 + seed)
            src_rep = sources[chosen].repeat_interleave(e.diversity_latents, 0)
            lab_rep = test.labels[chosen.numpy()].repeat(e.diversity_latents, 0) if labelled else None
            div = g(src_rep, zs, lab_rep, e.batch_size).view(n_div, e.diversity_latents, 1, *sources.shape[-2:])
            draws.setdefault("diversity_msssim", []).append(
                float(np.mean([features.pairwise_msssim((d + 1) / 2) for d in div])))
            if lp is not None:
                draws.setdefault("lpips", []).append(float(np.mean([lpips_pairwise_mean(lp, d) for d in div])))
        metrics.update(aggregate_draws(draws))
        _lap(f"{e.seeds} draws")

        # 3. identity reconstruction
        metrics.update(_identity(cfg, model_dir, train, test, g, encoder, device))
        _lap("identity")

        # 4. cleaning quality against the twin's ground truth
        metrics.update(evaluate_cleaning(raw_dir, crops_dir, clean_dir))
        _lap("cleaning")

        # 5. figures and dvc plot data
        with atomic_dir(plots_dir) as tmp:
            _figures(tmp, test, train, g, encoder, estimator, first_fakes, est_pred_real, labelled, e.seed)
            _plot_data(tmp, metrics, labelled)
        _lap("figures")
        # JSON has no NaN: an undefined figure (e.g. the precision of a rule that flagged nothing) is null.
        metrics = {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in metrics.items()}
        write_json(metrics_path, metrics)
        run_id = _log_to_mlflow(model_dir, metrics, Path(plots_dir), Path(metrics_path))
        _lap("mlflow")
        counts.update(keys=len(metrics), mlflow_run=run_id or "none", seconds=round(time.perf_counter() - started, 1),
                      **gen_info)
    return dict(counts)


# -------------------------------------------------------------------------- the pieces
def _estimator(cfg: Config, train: Split, device: torch.device) -> torch.nn.Module:
    _, codes = np.unique(train.subjects, return_inverse=True)
    # A seed of its own: a run with train.lambda_attr trains its loss estimator with train.seed on the
    # same data; the instrument must not be the very network the generator learned to satisfy.
    settings = EstimatorTraining(epochs=cfg.evaluate.estimator_epochs, seed=cfg.evaluate.seed + 1000,
                                 subject_weight=SUBJECT_WEIGHT)
    return train_pose_estimator(
        train.target, train.source, torch.as_tensor(train.labels, dtype=torch.float32),
        torch.as_tensor(codes, dtype=torch.long), settings, device=device,
        resolution=min(cfg.evaluate.estimator_resolution, train.target.shape[-1]),
    )


def _identity_net(cfg: Config, model_dir: Path, train: Split, device: torch.device) -> tuple[Any, str]:
    """The trainer's NIR identity network if it saved one; else one trained here (on targets
    area-downsampled to half size, which keeps it within the CPU budget; it is fully
    convolutional with global pooling, so it embeds the same way at any size)."""
    from nirgan.models import IdentityNet, train_identity_net

    path = model_dir / "identity_net.pt"
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = IdentityNet(blob["num_subjects"], blob["embed_dim"])
        net.load_state_dict(blob["state_dict"])
        net = net.to(device).eval()

        def embed_saved(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return torch.cat([net.embed(x[i : i + 64].to(device)).cpu() for i in range(0, len(x), 64)])

        return embed_saved, f"{path} (the training run's; it may have been a training loss)"
    if len(np.unique(train.subjects)) < 2:
        return None, "the train split holds fewer than 2 subjects: no identity network can be trained"
    small = torch.nn.functional.avg_pool2d(train.target[:, None].float(), 2).round().byte()[:, 0]
    net = train_identity_net(small, train.subjects, epochs=cfg.evaluate.feature_epochs, device=device,
                             seed=cfg.evaluate.seed)

    def embed(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([net.embed(torch.nn.functional.avg_pool2d(x[i : i + 64], 2).to(device)).cpu()
                              for i in range(0, len(x), 64)])

    return embed, "trained here on the train-split targets (half size)"


def _identity(cfg: Config, model_dir: Path, train: Split, test: Split, g: Generator, encoder: Any,
              device: torch.device) -> dict[str, Any]:
    if encoder is None:
        return {"identity": "unavailable",
                "identity_reason": "the run has no latent encoder E (train.lambda_lr and train.lambda_ir are 0)"}
    e = cfg.evaluate
    x, y = test.targets(), test.sources()
    labels = test.labels if g.label_dim else None
    with torch.no_grad():
        styles = torch.cat([encoder(x[i : i + e.batch_size].to(device)).cpu() for i in range(0, len(x), e.batch_size)])
    rec = g(y, styles, labels, e.batch_size, style=True)
    rand = g(y, _z(len(x), g.latent_dim, 20_000 + e.seed), labels, e.batch_size)
    out: dict[str, Any] = {
        # mean absolute pixel difference with images on [0, 1]
        "identity_l1": float((rec - x).abs().mean() / 2),
        "identity_l1_random_z": float((rand - x).abs().mean() / 2),
    }
    embed, where = _identity_net(cfg, model_dir, train, device)
    if embed is None:
        out.update(identity_cosine="unavailable", identity_cosine_reason=where)
        return out
    ex, erec, erand = embed(x), embed(rec), embed(rand)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(e.seed))[: max(len(test), 2)]
    same, different = same_and_different(ex, test.subjects, embed(train.targets(pick)))
    out.update(
        identity_cosine=float(paired_cosine(ex, erec).mean()),
        identity_cosine_random_z=float(paired_cosine(ex, erand).mean()),
        identity_cosine_same_subject_real=same,
        identity_cosine_different_subject_real=different,
        identity_net=where,
    )
    return out


def _spread(values: np.ndarray, steps: int) -> np.ndarray:
    return np.unique(np.linspace(0, len(values) - 1, steps).round().astype(int))


def _sweep_pairs(labels: np.ndarray, attr: str, steps: int) -> np.ndarray:
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


def _figures(out: Path, test: Split, train: Split, g: Generator, encoder: Any, estimator: torch.nn.Module,
             fakes: torch.Tensor, est_real: np.ndarray, labelled: bool, seed: int) -> None:
    labels = test.labels if g.label_dim else None
    # sample grid: fixed test sources x fixed latents
    rows_idx = _spread(np.arange(len(test)), GRID_SOURCES)
    z = _z(GRID_LATENTS, g.latent_dim, 30_000 + seed)
    rows, caps = [], []
    for i in rows_idx:
        src = test.sources([i]).repeat(GRID_LATENTS, 1, 1, 1)
        lab = None if labels is None else labels[[i] * GRID_LATENTS]
        gen = g(src, z, lab)
        rows.append([test.sources([i])[0], test.targets([i])[0], *gen])
        caps.append(["source", "real", *[f"z{k}" for k in range(GRID_LATENTS)]])
    write_image(out / "samples.png", figures.grid(rows, caps))

    # sweeps: one attribute at a time, generated with one fixed z
    if labelled:
        z1 = _z(1, g.latent_dim, 40_000 + seed)
        for attr in SWEEPS:
            j = LABELS.index(attr)
            idx = _sweep_pairs(test.labels, attr, SWEEP_STEPS)
            gen = g(test.sources(idx), z1.repeat(len(idx), 1), None if labels is None else labels[idx])
            est_gen = predict(estimator, gen)[:, j]
            truth = test.labels[idx, j]
            rows = [list(test.sources(idx)), list(test.targets(idx)), list(gen)]
            caps = [[f"true {t:+.1f}" for t in truth], [f"est {v:+.1f}" for v in est_real[idx, j]],
                    [f"est {v:+.1f}" for v in est_gen]]
            titles = [f"{attr}: source", "real target (estimator)", "generated (estimator)"]
            write_image(out / f"sweep_{attr}.png", figures.grid(rows, caps, titles))
            pd.DataFrame({
                "pair_id": test.pair_ids[idx], "true_deg": truth,
                "estimated_real_deg": est_real[idx, j], "estimated_generated_deg": est_gen,
            }).to_csv(out / f"sweep_{attr}.csv", index=False, float_format="%.3f")

    # latent interpolation (thesis 3.5.3.2.1), in style space: generated and reconstructed faces
    t = torch.linspace(0, 1, INTERP_STEPS)[:, None]
    rows, titles = [], []
    for r, i in enumerate(_spread(np.arange(len(test)), 3)):
        a, b = g.style_of(_z(2, g.latent_dim, 50_000 + seed + r)).split(1)
        styles = (1 - t) * a + t * b
        src = test.sources([i]).repeat(INTERP_STEPS, 1, 1, 1)
        lab = None if labels is None else labels[[i] * INTERP_STEPS]
        rows.append(list(g(src, styles, lab, style=True)))
        titles.append(f"generated: s(z_a) -> s(z_b), source {test.pair_ids[i]}")
    if encoder is not None:
        i, j = 0, int(np.flatnonzero(train.subjects != test.subjects[0])[0]) if (train.subjects != test.subjects[0]).any() else 0
        with torch.no_grad():
            device = next(encoder.parameters()).device
            a = encoder(test.targets([i]).to(device)).cpu()
            b = encoder(train.targets([j]).to(device)).cpu()
        styles = (1 - t) * a + t * b
        src = test.sources([i]).repeat(INTERP_STEPS, 1, 1, 1)
        lab = None if labels is None else labels[[i] * INTERP_STEPS]
        rows.append(list(g(src, styles, lab, style=True)))
        titles.append(f"reconstructed: E({test.subjects[i]}) -> E({train.subjects[j]})")
    write_image(out / "interpolation.png", figures.grid(rows, row_titles=titles))

    # latent arithmetic (thesis 3.5.3.2.2): s3 + (s2 - s1), styles of three train subjects if E exists
    subjects = list(dict.fromkeys(train.subjects))[:3]
    if encoder is not None and len(subjects) == 3:
        picks = [int(np.flatnonzero(train.subjects == s)[0]) for s in subjects]
        with torch.no_grad():
            device = next(encoder.parameters()).device
            s1, s2, s3 = encoder(train.targets(picks).to(device)).cpu().split(1)
        names = [f"E({s})" for s in subjects]
    else:
        s1, s2, s3 = g.style_of(_z(3, g.latent_dim, 60_000 + seed)).split(1)
        names = ["s1", "s2", "s3"]
    styles = torch.cat([s1, s2, s3, s3 + (s2 - s1)])
    rows, caps = [], []
    for i in _spread(np.arange(len(test)), 3):
        src = test.sources([i]).repeat(4, 1, 1, 1)
        lab = None if labels is None else labels[[i] * 4]
        rows.append([test.sources([i])[0], *g(src, styles, lab, style=True)])
        caps.append(["source", *names, "s3+s2-s1"])
    write_image(out / "arithmetic.png", figures.grid(rows, caps))


REALISM_DIVERSITY_KEYS = (
    "fid", "fid_untrained", "fid_real_baseline", "lpips",
    "realism_fid_nirfeat", "realism_fid_nirfeat_untrained", "realism_fid_nirfeat_real_baseline",
    "realism_kid_nirfeat", "realism_kid_nirfeat_untrained", "realism_kid_nirfeat_real_baseline",
    "realism_swd_laplacian", "realism_swd_laplacian_untrained", "realism_swd_laplacian_real_baseline",
    "diversity_msssim",
)


def _plot_data(out: Path, metrics: dict[str, Any], labelled: bool) -> None:
    bars = [{"metric": k, "value": metrics[k], "std": metrics.get(f"{k}_std", 0.0)}
            for k in REALISM_DIVERSITY_KEYS if isinstance(metrics.get(k), float)]
    write_json(out / "realism_diversity.json", bars)
    if labelled:
        # long format, one bar per (attribute, images): dvc's bar templates take one x and one y field
        write_json(out / "pose_error.json", [
            {"series": f"{a} ({images})", "attribute": a, "images": images,
             "mean_deg": metrics[f"pose_{key}_{a}_mean"], "p90_deg": metrics[f"pose_{key}_{a}_p90"]}
            for a in LABELS for images, key in (("real", "real"), ("generated", "gen"))
        ])


def _log_to_mlflow(model_dir: Path, metrics: dict[str, Any], plots_dir: Path, metrics_path: Path) -> str | None:
    """Log into the training run named by models/mlflow_run.json; None when train logged no run."""
    info = model_dir / "mlflow_run.json"
    if not info.exists():
        log.warning("evaluate: %s is missing; metrics are not logged to MLflow", info)
        return None
    import mlflow

    from nirgan.tracking import resume_run

    with resume_run(info) as run:
        numbers = {f"eval.{k}": float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
        mlflow.log_metrics(numbers)
        mlflow.set_tags({f"eval.{k}": str(v)[:5000] for k, v in metrics.items() if isinstance(v, (str, bool))})
        mlflow.log_artifacts(str(plots_dir), artifact_path="evaluate")
        mlflow.log_artifact(str(metrics_path), artifact_path="evaluate")
        return run.info.run_id
