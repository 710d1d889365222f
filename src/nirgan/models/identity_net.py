"""NIR identity network: the face-identity distance d_I of thesis 5.2.

The thesis's identity distance used a ResNet-50 trained on VGGFace2 (3.2.4.2.2); those weights
are not reachable here, and the thesis's own future work (5.2) proposes an identity network
trained on NIR data instead. This is that network: a small CNN trained to classify the subjects
of the training split from their 1-channel target crops, whose unit-length embedding is the
identity feature. Classification is cosine-softmax (normalised embedding against normalised class
weights, times a fixed scale), so what it learns is exactly the angle between embeddings that
the distance later measures. GroupNorm instead of batch norm keeps it identical in train and
eval mode and independent of batch composition.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nirgan.models.layers import LEAK, init_weights

log = logging.getLogger("nirgan")

CHANNELS = (32, 64, 128, 256)
COSINE_SCALE = 16.0


class IdentityNet(nn.Module):
    """(B, 1, H, W) in [-1, 1] -> subject logits; ``embed`` -> (B, embed_dim) of unit length."""

    def __init__(self, num_subjects: int, embed_dim: int = 128):
        super().__init__()
        self.num_subjects, self.embed_dim = num_subjects, embed_dim
        layers: list[nn.Module] = []
        for c_in, c_out in zip((1,) + CHANNELS[:-1], CHANNELS):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.GroupNorm(8, c_out),
                       nn.LeakyReLU(LEAK)]
        layers += [nn.Conv2d(CHANNELS[-1], CHANNELS[-1], 3, padding=1, bias=False), nn.GroupNorm(8, CHANNELS[-1]),
                   nn.LeakyReLU(LEAK)]
        self.trunk = nn.Sequential(*layers)
        self.projection = nn.Linear(CHANNELS[-1], embed_dim)
        self.classes = nn.Parameter(torch.randn(num_subjects, embed_dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(self.trunk(x), 1).flatten(1)
        return F.normalize(self.projection(h).float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return COSINE_SCALE * self.embed(x) @ F.normalize(self.classes.float(), dim=1).T


def _augmenter(device: torch.device, seed: int):
    """The pipeline's paired augmentation when the augment stage exists; else random flips only."""
    try:
        augment = importlib.import_module("nirgan.stages.augment")
        paired_augment = augment.paired_augment
        from nirgan.config import AugmentConfig
    except (ImportError, AttributeError):
        paired_augment = None
    generator = torch.Generator(device=device).manual_seed(seed)
    cfg = AugmentConfig() if paired_augment is not None else None

    def apply(x01: torch.Tensor) -> torch.Tensor:
        if paired_augment is not None:
            # The source is irrelevant here; the target's own copy keeps the draw well defined.
            _, target, _ = paired_augment(x01.expand(-1, 3, -1, -1).contiguous(), x01, None, cfg, generator)
            return target
        flip = torch.rand(x01.shape[0], device=device, generator=generator) < 0.5
        x01 = torch.where(flip[:, None, None, None], x01.flip(-1), x01)
        return x01 * 2 - 1

    return apply, paired_augment is not None


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
    augment, full = _augmenter(device, seed)
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
    log.info("identity net: %d subjects, %d images, %d epochs, %s augmentation, last batch loss %.3f acc %.2f",
             num_subjects, len(targets), epochs, "paired" if full else "flip-only",
             float(loss.detach()), float(accuracy))
    return net.eval().requires_grad_(False)
