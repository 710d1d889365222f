"""Conditional PatchGAN discriminator, thesis Table 3.3 (after pix2pix, refs. [2], [61]).

    source (3) & target/generated (1) stacked                      128x128x4
    Conv 4x4 s2 p2, LeakyReLU                                       65x65x32
    Conv 4x4 s2 p2, InstanceNorm, LeakyReLU                         33x33x64
    Conv 4x4 s2 p2, InstanceNorm, LeakyReLU                         17x17x128
    Conv 4x4 s2 p2, InstanceNorm, LeakyReLU                         9x9x256
    Conv 4x4 s1 p2, InstanceNorm, LeakyReLU                         10x10x512
    Conv 4x4 s1 p2                                                  11x11x1 (logits)

Kernel 4 and padding 2 (pix2pix's ``ceil((k-1)/2)``) are what give the table's odd sizes. The
logits are raw scores; each adversarial loss in ``nirgan.losses`` applies its own link.
With ``label_dim > 0`` the pose/gaze labels are broadcast to constant extra input channels, so
the discriminator judges the pair *and* whether it matches the labels.

``return_features=True`` also returns the five hidden blocks' activations (block 1 first); they
are the feature space of the discriminator perceptual loss and distance (thesis 3.2.4.2).
"""

from __future__ import annotations

import torch
from torch import nn

from nirgan.models.layers import LEAK, InstanceNorm, scaled

CHANNELS = (32, 64, 128, 256, 512)
STRIDES = (2, 2, 2, 2, 1)


class PatchDiscriminator(nn.Module):
    def __init__(self, width: float = 1.0, label_dim: int = 0):
        super().__init__()
        self.width, self.label_dim = width, label_dim
        chans = [3 + 1 + label_dim] + [scaled(c, width) for c in CHANNELS]
        blocks = []
        for i, stride in enumerate(STRIDES):
            layers: list[nn.Module] = [nn.Conv2d(chans[i], chans[i + 1], 4, stride, 2, bias=i == 0)]
            if i > 0:
                layers.append(InstanceNorm(chans[i + 1], affine=True))
            layers.append(nn.LeakyReLU(LEAK))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(chans[-1], 1, 4, 1, 2)

    def forward(
        self,
        source: torch.Tensor,
        image: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_features: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        parts = [source, image]
        if self.label_dim:
            if labels is None or labels.shape != (image.shape[0], self.label_dim):
                got = None if labels is None else tuple(labels.shape)
                raise ValueError(
                    f"discriminator expects labels of shape ({image.shape[0]}, {self.label_dim}), got {got}"
                )
            parts.append(labels.to(image.dtype)[:, :, None, None].expand(-1, -1, *image.shape[-2:]))
        x = torch.cat(parts, dim=1)
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        logits = self.head(x)
        return (logits, features) if return_features else logits
