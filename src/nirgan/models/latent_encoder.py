"""Latent encoder E, thesis Table 3.6 (after StarGAN v2's style encoder): z_hat = E(x).

    image 128x128x1 -> Conv 3x3                                    128x128x32
    6 x ResBlock (no norm) + AvgPool   32->64->128->256->512->512->512   down to 2x2
    LeakyReLU -> Conv 2x2 -> LeakyReLU                              1x1x512
    Linear                                                          latent_dim

The table's first row ("latent noise 1x1x512") is a copy slip: E reads an image (Eq. 3.1).
Deviation: Table 3.6 ends at the LeakyReLU. A LeakyReLU output cannot match z ~ N(0, I) (its
negative half is squashed 5x), and StarGAN v2, which the table reproduces, puts a linear head
after exactly this trunk; so does this encoder. ``width`` scales the trunk; the head always
outputs ``latent_dim``. Other input sizes are average-pooled to the 2x2 grid the last conv reads
(a no-op at 128x128).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nirgan.models.layers import LEAK, ResBlock, scaled

CHANNELS = (32, 64, 128, 256, 512, 512, 512)


class LatentEncoder(nn.Module):
    def __init__(self, latent_dim: int = 512, width: float = 1.0):
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        chans = [scaled(c, width) for c in CHANNELS]
        self.stem = nn.Conv2d(1, chans[0], 3, padding=1)
        self.blocks = nn.Sequential(*(ResBlock(a, b, norm="none") for a, b in zip(chans[:-1], chans[1:])))
        self.conv = nn.Conv2d(chans[-1], chans[-1], 2)
        self.head = nn.Linear(chans[-1], latent_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(image))
        if x.shape[-2:] != (2, 2):
            x = F.adaptive_avg_pool2d(x, 2)
        x = F.leaky_relu(self.conv(F.leaky_relu(x, LEAK)), LEAK)
        return self.head(x.flatten(1))
