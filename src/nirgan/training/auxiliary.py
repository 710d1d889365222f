"""The auxiliary networks' own training: the pose/gaze estimator and the NIR identity network.

Both serve two masters. The trainer uses them frozen, as the attribute-preservation loss
(``train.lambda_attr``) and the identity distance (``ir_distance`` / ``sd_image_distance:
identity``); evaluate trains fresh ones as its instruments (with seeds of their own, so the
instrument is never the network the generator learned to satisfy). The networks themselves
are pure modules in :mod:`nirgan.models`; their files are :mod:`nirgan.models.artifacts`'.

:mod:`nirgan.training.frozen_networks` is the trainer's side: it trains what the configuration
needs on rank 0 (or reloads it when resuming) and shares it with the other ranks through the file.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nirgan.augmentation import paired_augment
from nirgan.config import AugmentConfig, RandomRange
from nirgan.labels import FLIP_SIGN
from nirgan.models.identity_net import IdentityNet
from nirgan.models.layers import init_weights
from nirgan.models.pose_estimator import GAZE, PoseEstimator, eye_keypoints, has_eye_code

log = logging.getLogger("nirgan.train")


# ------------------------------------------------------------------------ pose estimator
@dataclass(frozen=True)
class EstimatorTraining:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    subject_weight: float = 0.1
    gaze_weight: float = 2.0  # the eye patches' gaze, on top of the trunk's five angles
    keypoint_weight: float = 1.0  # opening centres and patch keypoints (pixels of a 128 crop)
    jitter: float = 2.0  # pixels: how far training moves the patches off the true opening centres
    # Contrast and brightness draws (x -> c x + b on [-1, 1], c in 1 +/- this, b in +/- this). Without
    # them the estimator read head pose from brightness: real test faces made 20% brighter moved its
    # head error from 1.4 to 4.3 degrees, so a generated face of a new, darker or brighter identity
    # was scored on its shading. With them: 1.2 degrees on the brighter faces, 1.3 on the originals.
    photometric: float = 0.3
    seed: int = 0


def augment_without_rotation(image_size: int) -> AugmentConfig:
    """Flips, small scale/shift and gamma draws, and no rotation: the thesis's augmentation keeps the
    roll label unchanged under rotation, which would teach the estimator wrong rolls."""
    return AugmentConfig(
        image_size=image_size,
        scale=RandomRange(p=0.5, low=1.0, high=1.06),
        shift=RandomRange(p=0.5, low=-0.02, high=0.02),
        rotation=RandomRange(p=0.0, low=0.0, high=0.0),
        gamma=RandomRange(p=0.5, low=90.0, high=110.0),
        hflip_p=0.5,
    )


def photometric_jitter(x: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image contrast and brightness, ``c x + b`` clamped to [-1, 1]; see EstimatorTraining."""
    if amount <= 0:
        return x
    shape = (x.shape[0], 1, 1, 1)
    c = 1 + (torch.rand(shape, generator=generator, device=x.device) * 2 - 1) * amount
    b = (torch.rand(shape, generator=generator, device=x.device) * 2 - 1) * amount
    return (x * c + b).clamp(-1, 1)


def _masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    loss = F.smooth_l1_loss(pred, target, beta=beta, reduction="none")
    mask = mask.expand_as(loss).float()
    return (loss * mask).sum() / mask.sum().clamp_min(1)


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
    """Fit on real pairs: ``targets`` uint8 (N, S, S), ``sources`` uint8 (N, S, S, 3) colour-coded
    renders (augmented with their targets; their eye codes supervise the eye patches),
    ``labels`` (N, 5) degrees, ``subjects`` (N,) int codes.

    Loss: smooth-L1 on standardised angles; with eye codes in the sources + ``keypoint_weight``
    x smooth-L1 on the opening centres and patch keypoints + ``gaze_weight`` x the patches' gaze;
    + ``subject_weight`` x cross-entropy on subjects. AdamW with a one-cycle learning rate;
    seeded, so the same inputs give the same network. ``resolution`` (divisible by 32, default:
    the data's size) is the trunk's working size: augmentation runs at full size, the trunk sees
    area-downsampled images and the eye patches are read at full size.
    """
    device = torch.device(device)
    labels = labels.detach().float().cpu()
    subjects = subjects.detach().long().cpu() if subjects is not None else None
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)  # batch order
    aug_gen = torch.Generator(device=device).manual_seed(settings.seed)  # augmentation and jitter draws
    n, size = targets.shape[0], targets.shape[-1]
    n_subjects = int(subjects.max()) + 1 if subjects is not None else 0
    model = PoseEstimator(resolution or size, width, feature_dim, n_subjects, eyes=has_eye_code(sources)).to(device)
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
    aug_cfg = augment_without_rotation(size)
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
            src, x, y = paired_augment(src, tgt, labels[idx].to(device), aug_cfg, aug_gen)
            x = photometric_jitter(x, settings.photometric, aug_gen)
            y, mask = (y - mean.to(device)) / std.to(device), known[idx].to(device)
            if not model.eyes:
                out = model.outputs(x)
                loss = _masked_smooth_l1(out["trunk_angles"], y, mask, 0.5)
            else:
                kp, kp_valid = eye_keypoints(src)
                kp = (kp + 0.5) * 128 / size - 0.5  # pixels of a 128 crop
                true_openings = kp[:, 1::2]
                jitter = (torch.rand(true_openings.shape, generator=aug_gen, device=device) * 2 - 1) * settings.jitter
                out = model.outputs(x, openings=true_openings + jitter)
                loss = _masked_smooth_l1(out["trunk_angles"], y, mask, 0.5)
                loss = loss + settings.keypoint_weight * (
                    _masked_smooth_l1(out["openings"] / 4, true_openings / 4, kp_valid[:, 1::2, None], 1.0)
                    + _masked_smooth_l1(out["keypoints"], kp, kp_valid[..., None], 1.0))
                loss = loss + settings.gaze_weight * _masked_smooth_l1(out["angles"][:, GAZE], y[:, GAZE],
                                                                       mask[:, GAZE], 0.5)
            if subjects is not None and settings.subject_weight > 0:
                loss = loss + settings.subject_weight * F.cross_entropy(out["subject"], subjects[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()

# -------------------------------------------------------------------------- identity net
def _identity_augmenter(device: torch.device, seed: int):
    """The pipeline's paired augmentation, applied to targets alone."""
    generator = torch.Generator(device=device).manual_seed(seed)
    aug_cfg = AugmentConfig()

    def apply(x01: torch.Tensor) -> torch.Tensor:
        # The source is irrelevant here; the target's own copy keeps the draw well defined.
        _, target, _ = paired_augment(x01.expand(-1, 3, -1, -1).contiguous(), x01, None, aug_cfg, generator)
        return target

    return apply


def train_identity_net(
    images: np.ndarray | torch.Tensor,
    subject_ids: Sequence | np.ndarray,
    epochs: int,
    device: str | torch.device = "cpu",
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    embed_dim: int = 128,
) -> IdentityNet:
    """Train an IdentityNet on NIR target crops, uint8 (N, S, S), labelled by subject.

    Seeded and self-contained: initialisation, shuffling and augmentation use their own RNGs,
    so the caller's global RNG state (e.g. a training run's resumable state) is not consumed.
    Returns the network frozen (eval mode, no grad), ready to serve as a distance.
    """
    device = torch.device(device)
    images = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise ValueError(f"identity net images must be uint8 (N, S, S), got {images.dtype} {tuple(images.shape)}")
    _, classes = np.unique(np.asarray(subject_ids), return_inverse=True)
    num_subjects = int(classes.max()) + 1 if len(classes) else 0
    if len(classes) != images.shape[0] or num_subjects < 2:
        raise ValueError(f"identity net needs one subject id per image and at least 2 subjects; "
                         f"got {len(classes)} ids, {num_subjects} subjects, {images.shape[0]} images")
    data = images.to(device)
    targets = torch.as_tensor(classes, dtype=torch.long, device=device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = init_weights(IdentityNet(num_subjects, embed_dim), "kaiming").to(device)
    augment = _identity_augmenter(device, seed)
    order_rng = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = max(1, -(-len(targets) // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    # bf16 on a GPU: a small conv net over the whole split; the loss and embedding stay fp32.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    net.train()
    loss = accuracy = torch.zeros((), device=device)
    for _ in tqdm(range(epochs), desc="identity net", disable=None):
        for idx in torch.randperm(len(targets), generator=order_rng).split(batch_size):
            idx = idx.to(device)
            x = augment(data[idx].unsqueeze(1).float() / 255)
            with autocast:
                logits = net(x)
            loss = F.cross_entropy(logits.float(), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            accuracy = (logits.argmax(1) == targets[idx]).float().mean()
    log.info("identity net: %d subjects, %d images, %d epochs, paired augmentation, last batch loss %.3f acc %.2f",
             num_subjects, len(targets), epochs, float(loss.detach()), float(accuracy))
    return net.eval().requires_grad_(False)
