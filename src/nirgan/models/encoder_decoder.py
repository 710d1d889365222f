"""Encoder-decoder generator, thesis Table 3.4 and Figure 3.13 (after StarGAN v2's generator).

    input image 128x128x3 -> Conv 3x3, ReLU                        128x128x16
    5 x ResBlock (batch norm) + AvgPool   16->32->64->128->256->256   down to 4x4
    5 x AdaIN ResBlock + bilinear up      256->256->128->64->32->16  up to 128x128
    LeakyReLU -> Conv 3x3 -> tanh                                    128x128x1

The style vector (z, or s = L(z) with the mapping network) enters through every AdaIN layer;
with ``label_dim > 0`` the pose/gaze labels are appended to it (thesis 5.2, extra conditioning).
``width`` multiplies every channel count (minimum 8). Any H, W divisible by 32, from 64, works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nirgan.models.layers import LEAK, AdaINResBlock, ResBlock, scaled, style_with_labels

ENCODER_CHANNELS = (16, 32, 64, 128, 256, 256)
DECODER_CHANNELS = (256, 256, 128, 64, 32, 16)


class EncoderDecoderGenerator(nn.Module):
    def __init__(self, latent_dim: int = 512, width: float = 1.0, label_dim: int = 0):
        super().__init__()
        self.latent_dim, self.width, self.label_dim = latent_dim, width, label_dim
        enc = [scaled(c, width) for c in ENCODER_CHANNELS]
        dec = [scaled(c, width) for c in DECODER_CHANNELS]
        style_dim = latent_dim + label_dim
        self.stem = nn.Conv2d(3, enc[0], 3, padding=1)
        self.encoder = nn.ModuleList(ResBlock(a, b, norm="batch") for a, b in zip(enc[:-1], enc[1:]))
        self.decoder = nn.ModuleList(AdaINResBlock(a, b, style_dim) for a, b in zip(dec[:-1], dec[1:]))
        self.to_image = nn.Conv2d(dec[-1], 1, 3, padding=1)

    def forward(self, source: torch.Tensor, style: torch.Tensor | tuple[torch.Tensor, ...],
                labels: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """One image per source and style; a tuple of styles gives a tuple of images. Each is a
        call of its own: the encoder's batch norm updates its running statistics once per call."""
        if isinstance(style, tuple):
            return tuple(self(source, s, labels) for s in style)
        style = style_with_labels(style, labels, self.label_dim)
        x = F.relu(self.stem(source))
        for block in self.encoder:
            x = block(x)
        for block in self.decoder:
            x = block(x, style)
        return torch.tanh(self.to_image(F.leaky_relu(x, LEAK)))
