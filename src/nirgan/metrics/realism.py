"""Realism, diversity and attribute preservation of generated faces over ``evaluate.seeds`` draws.

For each draw k (seed ``evaluate.seed + k``): one z per test source through the trained
generator and through an untrained one (same architecture, same init), realism against the
real test targets, with real train targets of other subjects as the "as real as the data"
baseline; pose/gaze errors of the estimator on the generated faces against the SOURCE labels;
N x M images for diversity. Keys: see :mod:`nirgan.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nirgan.config import Config, EvaluateConfig
from nirgan.metrics import features
from nirgan.metrics.data import Split
from nirgan.metrics.fid import inception_features, load_fid_inception, resolve_fid
from nirgan.metrics.lpips_diversity import load_lpips, lpips_pairwise_mean, resolve_lpips
from nirgan.metrics.pose import angle_errors
from nirgan.models.pose_estimator import PoseEstimator, predict
from nirgan.models.pose_estimator import features as estimator_features

if TYPE_CHECKING:  # the NIR family's sampler; a type only, so the expression family never loads it
    from nirgan.models.artifacts import Sampler


def latents(n: int, dim: int, seed: int) -> torch.Tensor:
    """n latent draws from their own seeded generator (the global RNG is never consumed)."""
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def imagenet_networks(cfg: Config, device: torch.device) -> tuple[Any, Any, dict[str, Any]]:
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


@dataclass
class RealismReference:
    """What every draw is compared with: the real test targets, their features, the instruments."""

    real: torch.Tensor  # test targets in [-1, 1]
    estimator: PoseEstimator
    real_feats: np.ndarray
    inception: Any = None
    real_incep: np.ndarray | None = None
    lpips: Any = None

    @classmethod
    def of(cls, real: torch.Tensor, estimator: PoseEstimator, inception: Any, lpips: Any,
           batch_size: int) -> RealismReference:
        real_incep = inception_features(inception, real, batch_size) if inception is not None else None
        return cls(real, estimator, estimator_features(estimator, real), inception, real_incep, lpips)

    def realism(self, fakes: torch.Tensor, seed: int, batch_size: int) -> dict[str, float]:
        feats = estimator_features(self.estimator, fakes)
        out = {
            "realism_fid_nirfeat": features.frechet_distance(self.real_feats, feats),
            "realism_kid_nirfeat": features.kernel_inception_distance(self.real_feats, feats),
            "realism_swd_laplacian": features.sliced_wasserstein_laplacian(self.real, fakes, seed)["mean"],
        }
        if self.inception is not None:
            out["fid"] = features.frechet_distance(self.real_incep,
                                                   inception_features(self.inception, fakes, batch_size))
        return out


def measure_draws(ref: RealismReference, sampler: Sampler, untrained: Sampler, train: Split, test: Split,
                  labelled: bool, e: EvaluateConfig) -> tuple[dict[str, list[float]], torch.Tensor]:
    """{key: [value per draw]} over ``e.seeds`` draws, and the first draw's generated test faces."""
    sources = test.sources()
    test_labels = test.labels if labelled else None
    draws: dict[str, list[float]] = {}
    n_div = min(e.diversity_sources, len(test))
    first_fakes = None
    for k in range(e.seeds):
        seed = e.seed + k
        z = latents(len(test), sampler.latent_dim, seed)
        fakes = sampler.generate(sources, z, test_labels, e.batch_size)
        first_fakes = fakes if first_fakes is None else first_fakes
        _add(draws, ref.realism(fakes, seed, e.batch_size))
        untrained_fakes = untrained.generate(sources, z, test_labels, e.batch_size)
        _add(draws, ref.realism(untrained_fakes, seed, e.batch_size), "_untrained")
        # real vs real: as many train targets (other subjects) as there are test targets
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: len(test)]
        if len(pick) == len(test):
            _add(draws, ref.realism(train.targets(pick), seed, e.batch_size), "_real_baseline")
        if labelled:
            _add(draws, angle_errors(predict(ref.estimator, fakes), test.labels, "pose_gen"))
        chosen = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n_div]
        zs = latents(n_div * e.diversity_latents, sampler.latent_dim, 10_000 + seed)
        src_rep = sources[chosen].repeat_interleave(e.diversity_latents, 0)
        lab_rep = test.labels[chosen.numpy()].repeat(e.diversity_latents, 0) if labelled else None
        div = sampler.generate(src_rep, zs, lab_rep, e.batch_size).view(n_div, e.diversity_latents, 1,
                                                                        *sources.shape[-2:])
        draws.setdefault("diversity_msssim", []).append(
            float(np.mean([features.pairwise_msssim((d + 1) / 2) for d in div])))
        if ref.lpips is not None:
            draws.setdefault("lpips", []).append(float(np.mean([lpips_pairwise_mean(ref.lpips, d) for d in div])))
    return draws, first_fakes


def _add(draws: dict[str, list[float]], values: dict[str, float], suffix: str = "") -> None:
    for key, v in values.items():
        draws.setdefault(f"{key}{suffix}", []).append(v)
