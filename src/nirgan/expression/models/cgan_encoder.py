"""KTH's encoder E, the inverse of the conditional generator: z = E(x), translation G(E(x) | y).

``emotion-dcgan-encoder-paper.txt``, 2.1 (eq. 1-2) and 2.2.2 (Fig. 4, eq. 13-14): E has the
discriminator's convolutional stack and ends in a fully-connected layer that gives z instead of
a real/fake value. It is trained after the cGAN, with G frozen, so that E(G(z|y)) = z (eq. 13)
and G(E(x)|y) = x (eq. 14); the losses are in :mod:`nirgan.expression.losses`.

Here the stack is :class:`~nirgan.expression.models.cgan.CGANDiscriminator`'s without the label
channel (E sees the image alone: the label is what translation replaces), and the output is tanh,
because z is drawn uniform in [-1, 1] (Milan section 7; DCGAN), so E's range is G's input range.
"""

from __future__ import annotations

import torch
from torch import nn

from nirgan.expression.models.cgan import LEAK, _ch, _check_size


class LatentEncoder(nn.Module):
    """E(x): (n, 1, S, S) in [-1, 1] -> (n, latent_dim) in [-1, 1]."""

    def __init__(self, image_size: int = 64, latent_dim: int = 100, width: float = 1.0):
        super().__init__()
        n_down = _check_size(image_size) - 3
        self.image_size, self.latent_dim = image_size, latent_dim
        chans = [_ch(min(32 << i, 256), width) for i in range(n_down)]
        layers: list[nn.Module] = []
        c_in = 1
        for i, c_out in enumerate(chans):
            layers.append(nn.Conv2d(c_in, c_out, 5, stride=2, padding=2, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(LEAK))
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c_in * 8 * 8, latent_dim), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))
