"""Did the feature network learn anything? (issue 12 item 6)

The ``*_nirfeat`` realism figures embed faces with the pose estimator's trunk. On data without
pose labels the estimator has nothing to fit but the subjects, and an estimator that fitted
nothing embeds with its random initial weights: its FID/KID then compare noise statistics, and
"trained generator 10.96, untrained 10.77" says nothing either way. So on unlabelled data the
estimator is trained on the subjects (the one supervision there is) with some frames of every
subject held out, and its subject accuracy on those frames is compared with chance. At chance,
the figures are marked not informative, with the reason.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

HOLDOUT_FRACTION = 0.25
MARGIN_SIGMAS = 3.0  # above chance by this many binomial standard deviations


def holdout_mask(subjects: np.ndarray, seed: int, fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """True for the frames kept out of the estimator's training: ``fraction`` of each subject's
    frames (at least one, never all), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(subjects), bool)
    for subject in np.unique(subjects):
        idx = np.flatnonzero(subjects == subject)
        if len(idx) < 2:
            continue
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        held[rng.choice(idx, size=k, replace=False)] = True
    return held


@torch.no_grad()
def subject_accuracy(estimator: Any, images: torch.Tensor, codes: np.ndarray, n_subjects: int,
                     batch_size: int = 128) -> dict[str, Any]:
    """The estimator's subject accuracy on ``images`` (model range, held-out frames) against
    chance (the most frequent subject's share among them); ``informative`` when it beats chance
    by ``MARGIN_SIGMAS`` binomial standard deviations."""
    device = next(estimator.parameters()).device
    preds = torch.cat([estimator.outputs(images[i:i + batch_size].to(device))["subject"].argmax(1).cpu()
                       for i in range(0, len(images), batch_size)]).numpy()
    n = len(codes)
    acc = float((preds == codes).mean()) if n else float("nan")
    chance = float(np.bincount(codes, minlength=n_subjects).max() / n) if n else float("nan")
    bar = chance + MARGIN_SIGMAS * math.sqrt(chance * (1 - chance) / max(n, 1))
    informative = bool(n and n_subjects > 1 and acc > bar)
    out: dict[str, Any] = {
        "realism_nirfeat_subject_accuracy": acc,
        "realism_nirfeat_subject_chance": chance,
        "realism_nirfeat_holdout_frames": n,
        "realism_nirfeat_informative": informative,
    }
    if not informative:
        out["realism_nirfeat_reason"] = (
            f"not informative: without pose labels the feature network learns only the subjects, and its "
            f"subject accuracy on {n} held-out frames ({acc:.2f}) is not above chance ({chance:.2f}) by "
            f"{MARGIN_SIGMAS:g} sigma, so the *_nirfeat figures compare features that learned nothing measurable")
    return out
