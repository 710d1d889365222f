"""Milan's conditional DCGAN: G(z, y) and D(x, y).

``emotion-cgan-paper.txt``, section 7 (Implementation), Figures 6 and 7:
- G: a 100-d z (uniform in [-1, 1]) and the one-hot label; four transposed convolutions with 256,
  128, 64 and 1 filters, 5x5, stride 2 for the first two and 1 after, batch norm and leaky ReLU.
- D: the label through a dense layer to one image-sized map, concatenated with the image (2
  channels); three 5x5 stride-2 convolutions with 32, 64, 128 filters, batch norm on all but the
  first, leaky ReLU; flatten, dense, one logit (the paper's sigmoid is inside the loss).

Sizes. The paper draws 28x28; here the side S is 64 or 128 (any power of two from 32). G starts
from a dense projection to 4x4 and has log2(S/4) stride-2 layers, channels halving from
256*width, then the paper's final stride-1 layer to one channel; D keeps the paper's three
stride-2 layers and adds one per doubling beyond 64, so its dense layer always reads an 8x8 map.
``width`` scales every channel count (1.0 = the paper). The output is tanh in [-1, 1] (the
paper used [0, 1] and reported no difference for [-1, 1]); every model of nirgan shares that range.
``upsample="nearest"`` or ``"bilinear"`` replaces each stride-2 transposed conv by that x2 resize
and a 5x5 conv (the paper's kernel; Odena et al.'s remedy for the checkerboard that a 5-over-2
transposed conv draws: :func:`~nirgan.expression.models.stargan.resize_conv`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nirgan.expression.models.stargan import UPSAMPLING, resize_conv

LEAK = 0.2  # KTH 2.3 (DCGAN's slope); Milan names "leaky ReLU" without a slope


def _check_size(image_size: int) -> int:
    n = int(round(math.log2(image_size))) if image_size > 0 else 0
    if image_size < 32 or 2**n != image_size:
        raise ValueError(f"image_size {image_size}: the expression cGAN needs a power of two from 32")
    return n


def _ch(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


class CGANGenerator(nn.Module):
    """G(z, y): (n, latent_dim) and label indices (n,) -> (n, 1, S, S) in [-1, 1]."""

    def __init__(self, num_labels: int, image_size: int = 64, latent_dim: int = 100, width: float = 1.0,
                 upsample: str = "transposed"):
        super().__init__()
        if upsample not in UPSAMPLING:
            raise ValueError(f"unknown cGAN upsampling {upsample!r}; expected one of {', '.join(UPSAMPLING)}")
        n_up = _check_size(image_size) - 2
        self.num_labels, self.image_size, self.latent_dim = num_labels, image_size, latent_dim
        chans = [_ch(max(64, 256 >> i), width) for i in range(n_up)]
        self.project = nn.Linear(latent_dim + num_labels, chans[0] * 16)
        # Batch norm per channel of the 4x4 map (DCGAN's first layer), a BatchNorm2d so that DDP's
        # synchronised batch norm covers it too.
        self.project_norm = nn.Sequential(nn.BatchNorm2d(chans[0]), nn.LeakyReLU(LEAK))
        layers: list[nn.Module] = []
        c_in = chans[0]
        for c_out in chans[1:] + [chans[-1]]:
            up = (nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1, bias=False)
                  if upsample == "transposed" else resize_conv(c_in, c_out, 5, upsample))
            layers += [up, nn.BatchNorm2d(c_out), nn.LeakyReLU(LEAK)]
            c_in = c_out
        layers += [nn.ConvTranspose2d(c_in, 1, 5, stride=1, padding=2), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.start_channels = chans[0]

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(labels, self.num_labels).to(z.dtype)
        h = self.project(torch.cat([z, onehot], dim=1)).view(-1, self.start_channels, 4, 4)
        return self.body(self.project_norm(h))


class CGANDiscriminator(nn.Module):
    """D(x, y): (n, 1, S, S) and label indices (n,) -> (n,) real/fake logits."""

    def __init__(self, num_labels: int, image_size: int = 64, width: float = 1.0):
        super().__init__()
        n_down = _check_size(image_size) - 3
        self.num_labels, self.image_size = num_labels, image_size
        self.label_map = nn.Linear(num_labels, image_size * image_size)
        chans = [_ch(min(32 << i, 256), width) for i in range(n_down)]
        layers: list[nn.Module] = []
        c_in = 2
        for i, c_out in enumerate(chans):
            layers.append(nn.Conv2d(c_in, c_out, 5, stride=2, padding=2, bias=i == 0))
            if i > 0:  # the paper: no batch norm on the first layer
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(LEAK))
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * 8 * 8, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(labels, self.num_labels).to(x.dtype)
        y_map = self.label_map(onehot).view(-1, 1, self.image_size, self.image_size)
        h = self.body(torch.cat([x, y_map], dim=1))
        return self.head(h.flatten(1)).squeeze(1)


def init_dcgan(module: nn.Module) -> nn.Module:
    """KTH 2.3 (DCGAN): every weight from N(0, 0.02), biases zero, norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module
