"""Identity reconstruction (thesis 3.2.3, 4.1.6): G(y, E(x)) against x, with calibration.

The cosine similarity of NIR identity embeddings (:class:`nirgan.models.IdentityNet`) means
little on its own, so it comes with two references computed on real images only: pairs of
frames of the same test subject (what "same identity" looks like to the network) and pairs of
a test subject's frame with another subject's frame (what "different identity" looks like).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from nirgan.metrics.data import Split
from nirgan.metrics.realism import latents

if TYPE_CHECKING:  # the NIR family's sampler; a type only, so the expression family never loads it
    from nirgan.models.artifacts import Sampler


def paired_cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise cosine of two (N, D) embedding sets (IdentityNet embeddings are unit length)."""
    return torch.nn.functional.cosine_similarity(a, b, dim=1).double().numpy()


def same_and_different(emb: torch.Tensor, subjects: np.ndarray, other: torch.Tensor) -> tuple[float, float]:
    """Mean cosine over same-subject pairs within ``emb`` (i < j), and of ``emb`` against ``other``
    (embeddings of other subjects' images)."""
    sim = (emb @ emb.T).double().numpy()
    same = subjects[:, None] == subjects[None, :]
    upper = np.triu(np.ones_like(same, dtype=bool), k=1)
    same_pairs = sim[same & upper]
    diff_pairs = np.concatenate([sim[~same & upper], (emb @ other.T).double().numpy().ravel()])
    return (float(same_pairs.mean()) if same_pairs.size else float("nan"),
            float(diff_pairs.mean()) if diff_pairs.size else float("nan"))


def reconstructions(sampler: Sampler, encoder: nn.Module, test: Split, batch_size: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, E(x), G(y, E(x)), G(y, z)) for the test pairs (x target, y source), CPU, images in [-1, 1]."""
    x, y = test.targets(), test.sources()
    labels = test.labels if sampler.label_dim else None
    device = next(encoder.parameters()).device
    with torch.no_grad():
        styles = torch.cat([encoder(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    rec = sampler.generate(y, styles, labels, batch_size, style=True)
    rand = sampler.generate(y, latents(len(x), sampler.latent_dim, 20_000 + seed), labels, batch_size)
    return x, styles, rec, rand


def code_scale(sampler: Sampler, codes: torch.Tensor, seed: int) -> dict[str, float]:
    """Root mean square of the styles G reads on its two paths: E(x) of real faces (``codes``;
    identity reconstruction trains G on these) and the sampled style z or L(z) (what generation
    feeds it), as many as there are codes.

    The thesis's E is trained to reconstruct, not to match the sampling prior, so the two can
    sit at different scales; G then draws from z in a region only the adversarial term trained.
    """
    sampled = sampler.style_of(latents(len(codes), sampler.latent_dim, 30_000 + seed))
    return {"latent_code_rms_real": float(codes.float().square().mean().sqrt()),
            "latent_code_rms_sampled": float(sampled.float().square().mean().sqrt())}


def reconstruction_l1(x: torch.Tensor, rec: torch.Tensor, rand: torch.Tensor) -> dict[str, float]:
    # mean absolute pixel difference with images on [0, 1]
    return {"identity_l1": float((rec - x).abs().mean() / 2),
            "identity_l1_random_z": float((rand - x).abs().mean() / 2)}


def reconstruction_cosines(embed: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rec: torch.Tensor,
                           rand: torch.Tensor, test: Split, train: Split, seed: int) -> dict[str, float]:
    """Identity-embedding cosines of x with its reconstruction and with a random-z face, and the
    real-image calibration (see the module docstring)."""
    ex, erec, erand = embed(x), embed(rec), embed(rand)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: max(len(test), 2)]
    same, different = same_and_different(ex, test.subjects, embed(train.targets(pick)))
    return {
        "identity_cosine": float(paired_cosine(ex, erec).mean()),
        "identity_cosine_random_z": float(paired_cosine(ex, erand).mean()),
        "identity_cosine_same_subject_real": same,
        "identity_cosine_different_subject_real": different,
    }
