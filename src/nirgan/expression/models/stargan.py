"""Imperial's StarGAN: one generator G(x, c) for every expression, and a discriminator with a
PatchGAN real/fake output and an auxiliary domain classifier.

``emotion-dataset-stargan-report.txt``, chapter 8 and section 2.4 (Fig. 2.3), which ran the
authors' code (Choi et al. 2018, "StarGAN", appendix A, Tables 4 and 5) on 48x48 FER2013 with the
first layer's filters lowered from 64 to 32 and 3 to 5 residual blocks / strided layers:
- G: the target label as c constant maps concatenated with the image; 7x7 conv; two 4x4
  stride-2 down-sampling convs; ``res_blocks`` residual blocks (3x3 conv, IN, ReLU, 3x3 conv, IN);
  two 4x4 stride-2 transposed convs (``upsample="nearest"`` or ``"bilinear"``: that doubling and a
  3x3 conv instead, Odena et al.'s remedy for the checkerboard that transposed convs draw at small
  widths; see :func:`resize_conv`); 7x7 conv to the image; tanh. Instance norm (affine) and
  ReLU throughout (Table 4).
- D: ``d_layers`` 4x4 stride-2 convs with leaky ReLU (0.01) and no normalisation, doubling the
  channels; then two heads (Table 5): D_src, a 3x3 conv to one channel, i.e. a PatchGAN map of
  real/fake scores; D_cls, a conv whose kernel covers the whole remaining map, giving one logit
  per domain.

Sizes: ``conv_dim`` is the first layer's filters (the report's 32; Choi's 64) times ``width``;
the image side S may be 64 or 128 (any multiple of 2**d_layers); ``d_layers`` defaults to
log2(S) - 2 (a 4x4 map before the heads: 4 at 64, 5 at 128; Choi used 6 at 128 for a 2x2 map).
One channel (grayscale) in and out; ``num_labels`` comes from the data.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _instance_norm(channels: int) -> nn.Module:
    """Affine instance norm (Table 4's IN). GroupNorm with one channel per group is the same
    function (per-image, per-channel statistics and a per-channel affine) and runs about 1.5x
    faster than ``nn.InstanceNorm2d`` on CPU, which goes through batch norm on a reshaped copy."""
    return nn.GroupNorm(channels, channels)


UPSAMPLING = ("transposed", "nearest", "bilinear")


def resize_conv(c_in: int, c_out: int, kernel: int, mode: str) -> nn.Module:
    """x2 up-sampling as a resize (``mode`` nearest or bilinear) and a stride-1 conv (Odena et al.
    2016, "Deconvolution and checkerboard artifacts"): every output pixel sees the same number of
    input pixels, so no periodic pattern comes from the layer itself. A transposed conv whose kernel
    is not a multiple of its stride (5 over 2 in the cGAN) overlaps unevenly and draws one."""
    up = nn.Upsample(scale_factor=2, mode=mode) if mode == "nearest" else nn.Upsample(
        scale_factor=2, mode=mode, align_corners=False)
    return nn.Sequential(up, nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False))


class ResidualBlock(nn.Module):
    """Choi et al. Table 4's residual block: conv-IN-ReLU-conv-IN plus the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), _instance_norm(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), _instance_norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class StarGANGenerator(nn.Module):
    """G(x, c): (n, 1, S, S) in [-1, 1] and target label indices (n,) -> (n, 1, S, S) in [-1, 1]."""

    def __init__(self, num_labels: int, conv_dim: int = 32, res_blocks: int = 6, upsample: str = "transposed"):
        super().__init__()
        if upsample not in UPSAMPLING:
            raise ValueError(f"unknown StarGAN upsampling {upsample!r}; expected one of {', '.join(UPSAMPLING)}")
        if num_labels < 2:
            raise ValueError(f"StarGAN translates between domains: it needs at least 2 labels, got {num_labels}")
        self.num_labels = num_labels
        c = conv_dim
        layers: list[nn.Module] = [nn.Conv2d(1 + num_labels, c, 7, padding=3, bias=False),
                                   _instance_norm(c), nn.ReLU(inplace=True)]
        for _ in range(2):
            layers += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1, bias=False),
                       _instance_norm(2 * c), nn.ReLU(inplace=True)]
            c *= 2
        layers += [ResidualBlock(c) for _ in range(res_blocks)]
        for _ in range(2):
            up = (nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False) if upsample == "transposed" else
                  resize_conv(c, c // 2, 3, upsample))
            layers += [up, _instance_norm(c // 2), nn.ReLU(inplace=True)]
            c //= 2
        layers += [nn.Conv2d(c, 1, 7, padding=3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(labels, self.num_labels).to(x.dtype)
        maps = onehot[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return self.main(torch.cat([x, maps], dim=1))


class StarGANDiscriminator(nn.Module):
    """D(x): (n, 1, S, S) -> (PatchGAN real/fake map (n, 1, S/2**L, S/2**L), domain logits (n, num_labels))."""

    def __init__(self, num_labels: int, image_size: int = 64, conv_dim: int = 32, d_layers: int | None = None):
        super().__init__()
        layers_n = d_layers if d_layers is not None else int(round(math.log2(image_size))) - 2
        if layers_n < 1 or image_size % (2**layers_n):
            raise ValueError(f"image_size {image_size} is not divisible by 2**d_layers (d_layers={layers_n})")
        self.num_labels, self.image_size = num_labels, image_size
        layers: list[nn.Module] = []
        c_in, c = 1, conv_dim
        for _ in range(layers_n):
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            c_in, c = c, 2 * c
        self.main = nn.Sequential(*layers)
        k = image_size // 2**layers_n
        self.src = nn.Conv2d(c_in, 1, 3, padding=1, bias=False)
        self.cls = nn.Conv2d(c_in, num_labels, k, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.main(x)
        return self.src(h), self.cls(h).flatten(1)


def build_stargan(num_labels: int, image_size: int, conv_dim: int, width: float, res_blocks: int,
                  d_layers: int | None, upsample: str = "transposed") -> tuple[StarGANGenerator, StarGANDiscriminator]:
    dim = max(4, int(round(conv_dim * width)))
    return (StarGANGenerator(num_labels, dim, res_blocks, upsample),
            StarGANDiscriminator(num_labels, image_size, dim, d_layers))
