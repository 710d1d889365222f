"""The pose/gaze instrument: the estimator evaluate reads generated images with.

Trained on the real train-split targets, it is the attribute-preservation instrument (its
error on real test targets calibrates it), the feature network of the always-available realism
figures and, fitted again on generated images, the recipe of the utility arms
(:mod:`nirgan.metrics.utility`). Without pose/gaze labels it is a feature network supervised by
the subjects alone, and some frames of every subject are held out to check it learned anything.
"""

from __future__ import annotations

import numpy as np
import torch

from nirgan.config import Config
from nirgan.metrics.data import Split
from nirgan.metrics.feature_check import holdout_mask, subject_accuracy
from nirgan.models.pose_estimator import PoseEstimator
from nirgan.training.auxiliary import EstimatorTraining, train_pose_estimator

# No subject head for the instrument: with one, its features cluster by training identity, and on
# the default twin real faces of other subjects then scored FARTHER from the test faces than an
# untrained generator's noise (FD 188 vs 133); without it they score nearer (19 vs 23), and the
# head-pose error is lower too (1.5 vs 1.9 deg).
SUBJECT_WEIGHT = 0.0


def estimator_recipe(cfg: Config, labelled: bool = True) -> EstimatorTraining:
    # A seed of its own: a run with train.lambda_attr trains its loss estimator with train.seed on the
    # same data; the instrument must not be the very network the generator learned to satisfy.
    # Unlabelled, the subjects are its only supervision (see nirgan.metrics.feature_check).
    return EstimatorTraining(epochs=cfg.evaluate.estimator_epochs, seed=cfg.evaluate.seed + 1000,
                             subject_weight=SUBJECT_WEIGHT if labelled else 1.0)


def estimator_resolution(cfg: Config, train: Split) -> int:
    return min(cfg.evaluate.estimator_resolution, train.target.shape[-1])


def train_instrument(cfg: Config, train: Split, device: torch.device, labelled: bool) -> tuple[PoseEstimator, dict]:
    """The instrument, and (without labels) whether it learned anything as a feature network."""
    _, codes = np.unique(train.subjects, return_inverse=True)
    keep = np.ones(len(codes), bool) if labelled else ~holdout_mask(train.subjects, cfg.evaluate.seed)
    idx = torch.as_tensor(np.flatnonzero(keep))
    estimator = train_pose_estimator(
        train.target[idx], train.source[idx], torch.as_tensor(train.labels[keep], dtype=torch.float32),
        torch.as_tensor(codes[keep], dtype=torch.long), estimator_recipe(cfg, labelled), device=device,
        resolution=estimator_resolution(cfg, train),
    )
    if labelled:
        return estimator, {}
    held = np.flatnonzero(~keep)
    return estimator, subject_accuracy(estimator, train.targets(held), codes[held], int(codes.max()) + 1)
