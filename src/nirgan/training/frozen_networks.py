"""The frozen networks the generator's losses read: VGG-19 (perceptual), the NIR identity net
(identity distance) and the pose/gaze estimator (attribute preservation).

The identity net and the estimator are trained for the run (``nirgan.training.auxiliary``) on
rank 0, saved beside the run's other files and shared with the other ranks through the file;
a resumed run reloads them instead of training them again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from nirgan.config import TrainConfig
from nirgan.models.artifacts import load_identity_net, load_pose_estimator, save_identity_net, save_pose_estimator
from nirgan.models.identity_net import IdentityNet
from nirgan.models.pose_estimator import PoseEstimator
from nirgan.training.auxiliary import EstimatorTraining, train_pose_estimator
from nirgan.training.identity import train_identity_net
from nirgan.training.core import distances_in_use
from nirgan.training.distributed import DistInfo, barrier

log = logging.getLogger("nirgan.train")


@dataclass
class AuxiliaryNetworks:
    """The frozen networks the generator's losses read; None where the configuration uses none."""

    vgg: nn.Module | None = None
    identity: nn.Module | None = None
    estimator: nn.Module | None = None  # standardised angles, see :class:`StandardisedEstimator`
    attr_mean: torch.Tensor | None = None
    attr_std: torch.Tensor | None = None


class StandardisedEstimator(nn.Module):
    """A frozen pose/gaze estimator giving angles in its label-std units (all five weigh alike)."""

    def __init__(self, estimator: nn.Module):
        super().__init__()
        self.estimator = estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.estimator.forward_normalised(x)[0]


def auxiliary_networks(train_cfg: TrainConfig, target: torch.Tensor, source: torch.Tensor, labels: torch.Tensor,
                       subjects: np.ndarray, device: torch.device, info: DistInfo, aux_dir: Path | None,
                       memory_format: torch.memory_format) -> AuxiliaryNetworks:
    """Build (train, or reload when resuming) every auxiliary network ``train_cfg`` needs.

    ``aux_dir`` (the stage's out_dir) is where the identity network and pose estimator are
    saved and, on a resumed run, reloaded from.
    """
    aux = AuxiliaryNetworks()
    used = distances_in_use(train_cfg)
    if train_cfg.perceptual == "vgg19" or "vgg19" in used:
        from nirgan.models.vgg19 import VGG19Features

        aux.vgg = VGG19Features().to(device, memory_format=memory_format)
        log.info("VGG-19 perceptual network: ImageNet weights from %s", aux.vgg.weights_path)
    if "identity" in used:
        def train_identity() -> IdentityNet:
            return train_identity_net(target, subjects, epochs=train_cfg.identity_epochs, device=device,
                                      seed=train_cfg.seed)

        aux.identity = _shared(aux_dir, "identity_net.pt", info, train_identity, save_identity_net,
                               lambda p: load_identity_net(p, device))
    if train_cfg.lambda_attr > 0:
        def train_estimator() -> PoseEstimator:
            known = torch.isfinite(labels).all(1)
            if int(known.sum()) < 2:
                raise ValueError("train.lambda_attr > 0 needs pose/gaze labels on the training pairs; none are known")
            keep = known.nonzero().squeeze(1)
            codes = torch.as_tensor(pd.factorize(subjects)[0], device=device)
            return train_pose_estimator(target[keep], source[keep], labels[keep], codes[keep],
                                        EstimatorTraining(epochs=train_cfg.attr_estimator_epochs, seed=train_cfg.seed,
                                                          precision=train_cfg.precision),
                                        device=device)

        est = _shared(aux_dir, "pose_estimator.pt", info, train_estimator, save_pose_estimator,
                      lambda p: load_pose_estimator(p, map_location=device))
        aux.estimator = StandardisedEstimator(est).eval().requires_grad_(False).to(device)
        aux.attr_mean, aux.attr_std = est.label_mean.float(), est.label_std.float()
    return aux


def _shared(aux_dir: Path | None, name: str, info: DistInfo, train_fn, save_fn, load_fn) -> nn.Module:
    """Train an auxiliary network on rank 0 (or reload it when resuming), share via the file."""
    path = aux_dir / name if aux_dir is not None else None
    if path is not None and path.exists() and (aux_dir / "checkpoints" / "latest").exists():
        return load_fn(path)
    if info.is_main or path is None:
        net = train_fn()
        if path is not None:
            save_fn(net, path)
    barrier(info)
    if not info.is_main and path is not None:
        net = load_fn(path)
    return net
