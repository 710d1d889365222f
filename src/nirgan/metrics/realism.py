"""Realism, diversity and attribute preservation of generated faces over ``evaluate.seeds`` draws.

For each draw k (seed ``evaluate.seed + k``): one z per test source through the trained
generator; pose/gaze errors of the estimator on those faces against the SOURCE labels; N x M
images for diversity; and the realism figures, on two disjoint halves of the test split:

- the pairs are split (seeded by the draw) into halves A and B of equal size n: whole subjects
  to each side when the test split holds two or more subjects (the larger side is then cut at
  random to the smaller one's size), else the pairs at random;
- the reference is A's real targets; the candidates are B's real targets (the real baseline),
  G(B's sources, z) of the trained generator and of an untrained one (same architecture, same
  init, same z). All three meet A with the same feature net at the same n.

So the real baseline is what a perfect generator would score: other images of the same kind as
the reference, of other subjects and poses, never seen by the feature net. The earlier protocol
compared G(test sources) with the real test targets of the SAME poses, and its baseline were train
targets of other subjects, which the feature net had been trained on: generated faces scored more
real than real ones (on the committed default run FD 11.6 against a baseline of 14.3; 161 against
251 on a set of real photographs). On the same models this protocol reads 20.9 trained, 42.0
untrained, 9.7 real (KID 1.63 / 3.12 / 0.50, SWD 91 / 170 / 54). Keys: see :mod:`nirgan.metrics`.
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
from nirgan.metrics.weights import load_reference
from nirgan.models.pose_estimator import PoseEstimator, predict
from nirgan.models.pose_estimator import features as estimator_features

if TYPE_CHECKING:  # the NIR family's sampler; a type only, so the expression family never loads it
    from nirgan.models.artifacts import Sampler


def latents(n: int, dim: int, seed: int) -> torch.Tensor:
    """n latent draws from their own seeded generator (the global RNG is never consumed)."""
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def imagenet_networks(cfg: Config, device: torch.device) -> tuple[Any, Any, dict[str, Any]]:
    """(FID Inception or None, LPIPS or None, keys describing what was used or why not).

    A network comes only from the reference weights file; any other file (corrupt, or other
    weights of the right architecture) or one that fails to load leaves it None and its figure
    "unavailable" with the reason (:func:`nirgan.metrics.weights.load_reference`). Never raises
    over a weights file."""
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
            inception, found = load_reference("fid", weights, lambda w: load_fid_inception(w, device))
            info.update(found)
    if not e.lpips:
        info.update(lpips="unavailable", lpips_reason="disabled (evaluate.lpips: false)")
    else:
        weights, why = resolve_lpips(e.lpips_net, e.lpips_weights)
        if weights is None:
            info.update(lpips="unavailable", lpips_reason=why)
        else:
            lp, found = load_reference("lpips", weights,
                                       lambda w: load_lpips(e.lpips_net, e.lpips_version, w, device))
            info.update(found, lpips_net=f"{e.lpips_net} v{e.lpips_version}")
    return inception, lp, info


MIN_HALF = 2  # KID's unbiased estimate and a covariance need two images per set
REALISM_KEYS = ("realism_fid_nirfeat", "realism_kid_nirfeat", "realism_swd_laplacian")


def halves(subjects: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint halves (A, B) of equal size, as index arrays into ``subjects``: by whole subjects
    where that leaves at least ``MIN_HALF`` pairs a side, else the pairs at random."""
    rng = np.random.default_rng(seed)
    by_subject = _subject_halves(np.asarray(subjects), rng)
    if by_subject is not None:
        return by_subject
    order = rng.permutation(len(subjects))
    n = len(subjects) // 2
    return np.sort(order[:n]), np.sort(order[n : 2 * n])


def _subject_halves(subjects: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    names, counts = np.unique(subjects, return_counts=True)
    if len(names) < 2:
        return None
    # the largest subjects first (ties in random order), each to the side with fewer pairs so far:
    # as even as whole subjects allow, so the cut to equal size drops as few pairs as it can
    order = rng.permutation(len(names))
    order = order[np.argsort(-counts[order], kind="stable")]
    sides: tuple[list[str], list[str]] = ([], [])
    sizes = [0, 0]
    for i in order:
        side = int(sizes[1] < sizes[0])
        sides[side].append(names[i])
        sizes[side] += int(counts[i])
    n = min(sizes)
    if n < MIN_HALF:
        return None
    a, b = (np.flatnonzero(np.isin(subjects, side)) for side in sides)
    return np.sort(rng.choice(a, n, replace=False)), np.sort(rng.choice(b, n, replace=False))


def realism_protocol(subjects: np.ndarray, imagenet: bool) -> dict[str, Any]:
    """The set size n and how the halves were drawn; where the test split is too small to halve,
    every realism figure (``fid`` too with ``imagenet``) "unavailable" with the reason."""
    a, _ = halves(subjects, 0)
    if len(a) < MIN_HALF:
        why = (f"the realism figures compare disjoint halves of the test split, at least {MIN_HALF} pairs each; "
               f"it holds {len(subjects)}")
        keys = [*REALISM_KEYS, *(("fid",) if imagenet else ())]
        return {**{k: "unavailable" for k in keys}, **{f"{k}_reason": why for k in keys}}
    whole = _subject_halves(np.asarray(subjects), np.random.default_rng(0)) is not None
    return {"realism_set_size": len(a),
            "realism_halves": "by subject" if whole else
            f"at random (whole test subjects cannot make two halves of {MIN_HALF} or more pairs)"}


@dataclass
class RealismReference:
    """The instruments, and the real test targets with their features, computed once: each draw
    takes its reference half A and its real baseline B from them."""

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

    def realism(self, a: np.ndarray, images: torch.Tensor, seed: int, batch_size: int) -> dict[str, float]:
        """``images`` against the real test targets ``a``, as many of each."""
        if len(images) != len(a):
            raise ValueError(f"realism compares equal set sizes, got {len(images)} images against {len(a)}")
        feats = estimator_features(self.estimator, images)
        out = {
            "realism_fid_nirfeat": features.frechet_distance(self.real_feats[a], feats),
            "realism_kid_nirfeat": features.kernel_inception_distance(self.real_feats[a], feats),
            "realism_swd_laplacian": features.sliced_wasserstein_laplacian(self.real[a], images, seed)["mean"],
        }
        if self.inception is not None:
            out["fid"] = features.frechet_distance(self.real_incep[a],
                                                   inception_features(self.inception, images, batch_size))
        return out


def measure_draws(ref: RealismReference, sampler: Sampler, untrained: Sampler, test: Split, labelled: bool,
                  e: EvaluateConfig) -> tuple[dict[str, list[float]], torch.Tensor]:
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
        a, b = halves(test.subjects, seed)
        if len(a) >= MIN_HALF:
            # G is applied per image, so fakes[b] is G(B's sources, z_B)
            _add(draws, ref.realism(a, fakes[b], seed, e.batch_size))
            untrained_fakes = untrained.generate(sources[b], z[b], None if test_labels is None else test_labels[b],
                                                 e.batch_size)
            _add(draws, ref.realism(a, untrained_fakes, seed, e.batch_size), "_untrained")
            _add(draws, ref.realism(a, ref.real[b], seed, e.batch_size), "_real_baseline")
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
