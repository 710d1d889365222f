"""Style mapping network L, thesis Table 3.7 and 3.2.2.4.1: s = L(z).

Eight fully connected layers, ReLU after all but the last, so s can take any sign like z.
It is trained with its own, much lower learning rate (Table 3.8: 4.5e-6).
"""

from __future__ import annotations

import torch
from torch import nn

DEPTH = 8


class StyleMappingNetwork(nn.Module):
    def __init__(self, latent_dim: int = 512, style_dim: int = 512):
        super().__init__()
        self.latent_dim, self.style_dim = latent_dim, style_dim
        dims = [latent_dim] + [style_dim] * DEPTH
        layers: list[nn.Module] = []
        for i in range(DEPTH):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < DEPTH - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
