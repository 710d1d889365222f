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

import torch
import torch.nn.functional as F
from torch import nn

from nirgan.models.layers import LEAK

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
