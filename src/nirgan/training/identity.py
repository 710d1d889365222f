"""The NIR identity network's own training: a subject classifier on NIR target crops whose
embedding serves as the identity distance (``train.ir_distance`` / ``sd_image_distance:
identity``) and as evaluate's identity instrument (:mod:`nirgan.metrics.identity`). The network
itself is :class:`nirgan.models.identity_net.IdentityNet`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nirgan.augmentation import apply_params, draw_params
from nirgan.config import AugmentConfig
from nirgan.models.identity_net import IdentityNet
from nirgan.models.layers import init_weights

log = logging.getLogger("nirgan.train")


def _identity_augmenter(device: torch.device, seed: int):
    """The pipeline's paired augmentation, applied to targets alone."""
    generator = torch.Generator(device=device).manual_seed(seed)
    aug_cfg = AugmentConfig()

    def apply(x01: torch.Tensor) -> torch.Tensor:
        # the draws of paired_augment, with no source to carry along
        _, target, _ = apply_params(None, x01, None, draw_params(x01.shape[0], aug_cfg, generator, x01.device))
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

