"""Head-pose and gaze estimator on 1-channel NIR faces (thesis 5.2, "future work").

The thesis judged attribute preservation by eye (Figures 4.12-4.15) and proposed a pose/gaze
network as future work; no thesis table defines one, so this is a small plain CNN:

    input (B, 1, S, S) in [-1, 1], S divisible by 32 (128 by default)
    5 x [Conv 3x3 stride 2 (first: 5x5), BatchNorm, ReLU]   1 -> w -> 2w -> 4w -> 4w -> 8w, S/32
    flatten (spatial layout kept: where the face and irises are IS the signal) -> Linear -> ReLU
    -> ``features`` (feature_dim)
    -> Linear -> 5 angles in degrees [head_yaw, head_pitch, head_roll, gaze_yaw, gaze_pitch]
    -> Linear -> subject logits (auxiliary, training only)

The optional subject head (``subject_weight``) pushes the penultimate ``features`` towards
identity; evaluate trains without it (see ``nirgan.stages.evaluate.SUBJECT_WEIGHT``) and uses the
``features`` as the in-pipeline feature space for FID/KID (``realism_fid_nirfeat``). Angles are
predicted in units of the training labels' standard deviation (buffers ``label_mean`` /
``label_std``) so all five outputs weigh alike in the loss.

:func:`train_pose_estimator` trains it on real targets with horizontal flips through
:func:`nirgan.stages.augment.paired_augment` (which mirrors the labels with ``FLIP_SIGN``) plus
small scale/shift and gamma draws; rotation is left out because the thesis's augmentation keeps
the roll label unchanged under rotation, which would teach the estimator wrong rolls. The trainer
may reuse a saved estimator (frozen) for the attribute-preservation loss: ``forward`` is
differentiable with respect to its input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nirgan.labels import FLIP_SIGN, LABELS


class PoseEstimator(nn.Module):
    def __init__(self, image_size: int = 128, width: int = 24, feature_dim: int = 128, n_subjects: int = 0):
        super().__init__()
        if image_size % 32:
            raise ValueError(f"PoseEstimator needs an image size divisible by 32, got {image_size}")
        self.image_size, self.width, self.feature_dim, self.n_subjects = image_size, width, feature_dim, n_subjects
        chans = [1, width, 2 * width, 4 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(a, b, k, stride=2, padding=k // 2, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        self.trunk = nn.Sequential(*layers)
        side = image_size // 32
        self.to_features = nn.Linear(chans[-1] * side * side, feature_dim)
        self.to_angles = nn.Linear(feature_dim, len(LABELS))
        self.to_subject = nn.Linear(feature_dim, max(n_subjects, 1))
        self.register_buffer("label_mean", torch.zeros(len(LABELS)))
        self.register_buffer("label_std", torch.ones(len(LABELS)))

    def config(self) -> dict[str, int]:
        return dict(image_size=self.image_size, width=self.width, feature_dim=self.feature_dim,
                    n_subjects=self.n_subjects)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size:
            # inputs of any size are area-resized to the working resolution (see ``resolution``)
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="area")
        return F.relu(self.to_features(self.trunk(x).flatten(1)))

    def forward_normalised(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.to_angles(f), self.to_subject(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Angles in degrees, (B, 5) in ``LABELS`` order."""
        return self.to_angles(self.features(x)) * self.label_std + self.label_mean


@dataclass(frozen=True)
class EstimatorTraining:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    subject_weight: float = 0.1
    seed: int = 0


def _flip_only_augment(image_size: int):
    from nirgan.config import AugmentConfig, RandomRange

    return AugmentConfig(
        image_size=image_size,
        scale=RandomRange(p=0.5, low=1.0, high=1.06),
        shift=RandomRange(p=0.5, low=-0.02, high=0.02),
        rotation=RandomRange(p=0.0, low=0.0, high=0.0),
        gamma=RandomRange(p=0.5, low=90.0, high=110.0),
        hflip_p=0.5,
    )


def train_pose_estimator(
    targets: torch.Tensor,
    sources: torch.Tensor,
    labels: torch.Tensor,
    subjects: torch.Tensor | None,
    settings: EstimatorTraining = EstimatorTraining(),
    width: int = 24,
    feature_dim: int = 128,
    device: torch.device | str = "cpu",
    resolution: int | None = None,
) -> PoseEstimator:
    """Fit on real pairs: ``targets`` uint8 (N, S, S), ``sources`` uint8 (N, S, S, 3) (only
    used to call the one paired transform), ``labels`` (N, 5) degrees, ``subjects`` (N,) int codes.

    Loss: smooth-L1 on standardised angles (+ ``subject_weight`` x cross-entropy on subjects).
    AdamW with a one-cycle learning rate; seeded, so the same inputs give the same network.
    ``resolution`` (divisible by 32, default: the data's size) is the working size: augmentation
    runs at full size, the network sees area-downsampled images, at any size they come in.
    """
    from nirgan.stages.augment import paired_augment

    device = torch.device(device)
    labels = labels.detach().float().cpu()
    subjects = subjects.detach().long().cpu() if subjects is not None else None
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)  # batch order
    aug_gen = torch.Generator(device=device).manual_seed(settings.seed)  # augmentation draws
    n, size = targets.shape[0], targets.shape[-1]
    n_subjects = int(subjects.max()) + 1 if subjects is not None else 0
    model = PoseEstimator(resolution or size, width, feature_dim, n_subjects).to(device)
    # Flips mirror the labels, so the standardisation is taken over both signs.
    # Unknown angles (NaN) are left out of the loss; with none known only the subject head
    # learns, which still gives the realism features something to see.
    known = torch.isfinite(labels)
    labels = torch.where(known, labels, torch.zeros_like(labels)).float()
    both = torch.cat([labels, labels * torch.tensor(FLIP_SIGN)])
    both_known = torch.cat([known, known]).float()
    count = both_known.sum(0).clamp_min(1.0)
    mean = (both * both_known).sum(0) / count
    std = (((both - mean) ** 2 * both_known).sum(0) / count).sqrt().clamp_min(1e-3)
    std = torch.where(both_known.sum(0) > 1, std, torch.ones_like(std))
    model.label_mean.copy_(mean.to(device))
    model.label_std.copy_(std.to(device))
    aug_cfg = _flip_only_augment(size)
    steps_per_epoch = math.ceil(n / settings.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch, pct_start=0.2
    )
    model.train()
    for _ in tqdm(range(settings.epochs), desc="pose estimator", disable=None):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            if len(idx) < 2:
                continue
            src = sources[idx.to(sources.device)].to(device).permute(0, 3, 1, 2).float().div(255.0)
            tgt = targets[idx.to(targets.device)].to(device)[:, None].float().div(255.0)
            _, x, y = paired_augment(src, tgt, labels[idx].to(device), aug_cfg, aug_gen)
            y, mask = (y - mean.to(device)) / std.to(device), known[idx].to(device)
            pred, logits = model.forward_normalised(x)
            loss = (F.smooth_l1_loss(pred, y, beta=0.5, reduction="none") * mask).sum() / mask.sum().clamp_min(1)
            if subjects is not None and settings.subject_weight > 0:
                loss = loss + settings.subject_weight * F.cross_entropy(logits, subjects[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: PoseEstimator, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """(N, 5) degrees for images in [-1, 1], (N, 1, S, S)."""
    device = next(model.parameters()).device
    out = [model(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


@torch.no_grad()
def features(model: PoseEstimator, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    device = next(model.parameters()).device
    out = [model.features(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().numpy()


def save_pose_estimator(model: PoseEstimator, path) -> None:
    from nirgan.io import atomic_file

    with atomic_file(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": model.config()}, tmp)


def load_pose_estimator(path, map_location: str | torch.device = "cpu") -> PoseEstimator:
    blob = torch.load(path, map_location=map_location, weights_only=True)
    model = PoseEstimator(**blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model.eval()
