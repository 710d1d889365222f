"""The feature-network check of issue 12 item 6 on a real (small) estimator trained without
labels: it says "informative" when the subjects are learnable and the held-out frames are
classified above chance, and "not informative", with the reason, when they are at chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nirgan.augmentation import to_model_range
from nirgan.metrics.feature_check import holdout_mask, subject_accuracy
from nirgan.training.auxiliary import EstimatorTraining, train_pose_estimator

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE, SUBJECTS, FRAMES = 64, 4, 12


def _faces(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Per subject a disc of its own brightness and size, jittered per frame (no labels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    targets, subjects = [], []
    for s in range(SUBJECTS):
        for _ in range(FRAMES):
            cx, cy = SIZE / 2 + rng.normal(0, 1.5, 2)
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (SIZE * (0.18 + 0.05 * s)) ** 2
            targets.append(np.where(disc, 60 + 50 * s, 20) + rng.normal(0, 4, disc.shape))
            subjects.append(f"s{s}")
    target = torch.as_tensor(np.clip(targets, 0, 255).astype(np.uint8))
    source = torch.zeros((len(targets), SIZE, SIZE, 3), dtype=torch.uint8)
    return target, source, np.array(subjects)


def test_learned_subjects_are_informative_and_chance_is_not():
    target, source, subjects = _faces()
    held = holdout_mask(subjects, seed=0)
    assert held.sum() == SUBJECTS * 3 and all(held[subjects == f"s{s}"].sum() == 3 for s in range(SUBJECTS))
    _, codes = np.unique(subjects, return_inverse=True)
    keep = torch.as_tensor(np.flatnonzero(~held))
    estimator = train_pose_estimator(
        target[keep], source[keep], torch.full((len(keep), 5), float("nan")), torch.as_tensor(codes[~held]),
        EstimatorTraining(epochs=15, batch_size=8, subject_weight=1.0, seed=0), device=torch.device("cpu"),
        resolution=SIZE)
    images = to_model_range(target[torch.as_tensor(np.flatnonzero(held))][:, None])
    learned = subject_accuracy(estimator, images, codes[held], SUBJECTS)
    assert learned["realism_nirfeat_informative"], learned
    assert learned["realism_nirfeat_subject_accuracy"] > 0.75 and learned["realism_nirfeat_subject_chance"] == 0.25

    # The same frames under codes that carry no subject (all one code): accuracy cannot beat
    # the majority share, so the figure is flagged with its reason.
    flat = subject_accuracy(estimator, images, np.zeros(int(held.sum()), np.int64), SUBJECTS)
    assert not flat["realism_nirfeat_informative"]
    assert "not informative" in flat["realism_nirfeat_reason"] and "chance" in flat["realism_nirfeat_reason"]
