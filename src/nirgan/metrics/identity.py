"""Identity reconstruction (thesis 3.2.3, 4.1.6): G(y, E(x)) against x, with calibration.

The cosine similarity of NIR identity embeddings (:class:`nirgan.models.IdentityNet`) means
little on its own, so it comes with two references computed on real images only: pairs of
frames of the same test subject (what "same identity" looks like to the network) and pairs of
a test subject's frame with another subject's frame (what "different identity" looks like).

And with the instrument's own reading beside it: an identity net that cannot tell subjects
apart rates any face-like image as the face it is compared with (on a set of real photographs,
ovals with eyes scored a cosine of 0.992 to the real face, above two real photos of one subject
at 0.942, from a net at 0.17 subject accuracy). ``identity_instrument_auc`` is its verification
ROC AUC on the real test faces (same-subject pairs against different-subject pairs, by cosine;
the test subjects are unseen, so there is no classification accuracy there); where evaluate
trains the net itself, ``identity_instrument_accuracy`` is its subject accuracy on train frames
held out of its training. Below ``INSTRUMENT_AUC_FLOOR`` the identity figures are marked not
informative (``identity_informative`` false, with ``identity_informative_reason``), the
convention of :mod:`nirgan.metrics.feature_check`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from nirgan.metrics.data import Split
from nirgan.metrics.judge import roc_auc
from nirgan.metrics.realism import latents

if TYPE_CHECKING:  # the NIR family's sampler; a type only, so the expression family never loads it
    from nirgan.models.artifacts import Sampler

# The identity figures are read against same- and different-subject real pairs; an instrument that
# orders more than one such pair in ten the wrong way round cannot carry that reading (a cosine
# above the same-subject mean is then as likely to come from the instrument's spread as from the
# face), so below this verification AUC the figures are marked not informative.
INSTRUMENT_AUC_FLOOR = 0.9


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
        **instrument_verdict(verification_auc(ex, test.subjects)),
    }


def verification_auc(emb: torch.Tensor, subjects: np.ndarray) -> float:
    """ROC AUC of the cosine of ``emb``'s rows telling same-subject pairs (positives) from
    different-subject pairs (i < j); NaN where either kind of pair is missing."""
    unit = torch.nn.functional.normalize(emb.double(), dim=1)
    sim = (unit @ unit.T).numpy()
    same = subjects[:, None] == subjects[None, :]
    upper = np.triu(np.ones_like(same, dtype=bool), k=1)
    pos, neg = sim[same & upper], sim[~same & upper]
    return roc_auc(neg, pos) if len(pos) and len(neg) else float("nan")


def rank1_same_subject(gallery: torch.Tensor, subjects: np.ndarray, probes: torch.Tensor,
                       probe_rows: np.ndarray) -> float:
    """Share of ``probes`` whose nearest ``gallery`` embedding (cosine), leaving out gallery row
    ``probe_rows[i]`` (the probe's own input, or the probe itself), belongs to that row's subject.
    Unlike a mean cosine it does not depend on how high all cosines sit: an embedding whose
    different-subject pairs already score 0.9 can rate any face "close" to its input, but only a
    face that kept its identity has its own subject as nearest neighbour."""
    g = torch.nn.functional.normalize(gallery.double(), dim=1)
    sim = torch.nn.functional.normalize(probes.double(), dim=1) @ g.T
    rows = torch.as_tensor(np.asarray(probe_rows))
    sim[torch.arange(len(rows)), rows] = -torch.inf
    nearest = sim.argmax(1).numpy()
    subjects = np.asarray(subjects)
    return float((subjects[nearest] == subjects[np.asarray(probe_rows)]).mean())


def instrument_verdict(auc: float) -> dict[str, object]:
    """``identity_instrument_auc`` and whether it makes the identity figures informative."""
    if not np.isfinite(auc):
        why = "the real test faces hold no same-subject pair or no different-subject pair to verify the identity net on"
        return {"identity_instrument_auc": "unavailable", "identity_instrument_auc_reason": why,
                "identity_informative": False, "identity_informative_reason": f"not informative: {why}"}
    out: dict[str, object] = {"identity_instrument_auc": auc, "identity_informative": auc >= INSTRUMENT_AUC_FLOOR}
    if not out["identity_informative"]:
        out["identity_informative_reason"] = (
            f"not informative: the identity net tells same-subject from different-subject pairs of real test faces "
            f"at ROC AUC {auc:.2f}, under {INSTRUMENT_AUC_FLOOR}, so its cosines do not say whether a face kept the identity")
    return out


@torch.no_grad()
def holdout_accuracy(net: nn.Module, images: torch.Tensor, codes: np.ndarray) -> dict[str, object]:
    """The identity net's subject accuracy on train frames held out of its training (``images``
    in its input range, ``codes`` its class indices), beside chance: the most frequent subject's share."""
    if not len(codes):
        return {"identity_instrument_accuracy": "unavailable",
                "identity_instrument_accuracy_reason": "no train subject has a frame to spare for a held-out check"}
    device = next(net.parameters()).device
    preds = torch.cat([net(images[i : i + 64].to(device)).argmax(1).cpu() for i in range(0, len(images), 64)])
    return {"identity_instrument_accuracy": float((preds.numpy() == codes).mean()),
            "identity_instrument_chance": float(np.bincount(codes).max() / len(codes)),
            "identity_instrument_holdout_frames": len(codes)}
