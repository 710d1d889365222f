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

``variational=True`` (``train.lambda_kl > 0``; not in the thesis): the head outputs a Gaussian
posterior q(z|x) = N(mu, diag(exp(logvar))) instead of a point, as BicycleGAN's cVAE-GAN encoder
does (Zhu et al. 2017, sec. 3.2). ``forward`` still returns the point estimate (mu), so latent
reconstruction, identity figures and inversion read E exactly as before; the identity
reconstruction step asks for the posterior.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nirgan.models.layers import LEAK, ResBlock, scaled

CHANNELS = (32, 64, 128, 256, 512, 512, 512)


class LatentEncoder(nn.Module):
    def __init__(self, latent_dim: int = 512, width: float = 1.0, variational: bool = False):
        super().__init__()
        self.latent_dim, self.width, self.variational = latent_dim, width, variational
        chans = [scaled(c, width) for c in CHANNELS]
        self.stem = nn.Conv2d(1, chans[0], 3, padding=1)
        self.blocks = nn.Sequential(*(ResBlock(a, b, norm="none") for a, b in zip(chans[:-1], chans[1:])))
        self.conv = nn.Conv2d(chans[-1], chans[-1], 2)
        self.head = nn.Linear(chans[-1], 2 * latent_dim if variational else latent_dim)

    def forward(self, image: torch.Tensor, posterior: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """z_hat = mu; with ``posterior=True`` (variational only) the pair (mu, logvar)."""
        if posterior and not self.variational:
            raise ValueError("this latent encoder is not variational (train.lambda_kl = 0): it has no posterior")
        x = self.blocks(self.stem(image))
        if x.shape[-2:] != (2, 2):
            x = F.adaptive_avg_pool2d(x, 2)
        x = F.leaky_relu(self.conv(F.leaky_relu(x, LEAK)), LEAK)
        out = self.head(x.flatten(1))
        if not self.variational:
            return out
        mu, logvar = out.chunk(2, dim=1)
        return (mu, logvar) if posterior else mu
