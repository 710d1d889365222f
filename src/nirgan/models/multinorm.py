"""Multinorm decoder generator, thesis Table 3.5 and Figure 3.14 (a SPADE decoder, ref. [8]).

    learned constant                                                 4x4x256
    5 x Multinorm ResBlock (SPADE & AdaIN) + bilinear up  256->256->128->64->32->16
    LeakyReLU -> Conv 3x3 -> tanh                                    128x128x1

Input: Table 3.5 lists "latent noise -> Linear 4096 -> reshape 4x4x256", but the thesis text
(3.4.2) says the decoder "takes a learned constant input tensor, as is done in the generator used
in StyleGAN" instead of noise, and DESIGN.md follows the text. This implementation does the same:
the 4x4 input is a learned constant and z (or s) reaches the network only through the AdaIN
layers of every block, exactly as in StyleGAN, while the source image reaches it only through
the SPADE layers. The Linear of the table would be a second, redundant path for z.

SPADE's hidden width is 64 (x ``width``) instead of SPADE's 128: the source here is a 3-channel
render, not a 100+-class label map, and the last block runs at 128x128 where it dominates cost.
``label_dim > 0`` appends pose/gaze labels to the style (thesis 5.2). Sizes other than 128x128
(divisible by 32) work: the constant is resized to H/32 x W/32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nirgan.models.layers import LEAK, MultinormResBlock, scaled, style_with_labels

DECODER_CHANNELS = (256, 256, 128, 64, 32, 16)
SPADE_HIDDEN = 64


class MultinormGenerator(nn.Module):
    def __init__(self, latent_dim: int = 512, width: float = 1.0, label_dim: int = 0):
        super().__init__()
        self.latent_dim, self.width, self.label_dim = latent_dim, width, label_dim
        dec = [scaled(c, width) for c in DECODER_CHANNELS]
        hidden = scaled(SPADE_HIDDEN, width)
        self.constant = nn.Parameter(torch.randn(1, dec[0], 4, 4))
        self.decoder = nn.ModuleList(
            MultinormResBlock(a, b, latent_dim + label_dim, hidden) for a, b in zip(dec[:-1], dec[1:])
        )
        self.to_image = nn.Conv2d(dec[-1], 1, 3, padding=1)

    def forward(self, source: torch.Tensor, style: torch.Tensor | tuple[torch.Tensor, ...],
                labels: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """One image per source and style. A tuple of styles gives a tuple of images, each what its
        own call would give, with the SPADE maps (which depend on the source alone) computed once."""
        if isinstance(style, tuple):
            maps: dict = {}
            return tuple(self._draw(source, s, labels, maps) for s in style)
        return self._draw(source, style, labels, None)

    def _draw(self, source: torch.Tensor, style: torch.Tensor, labels: torch.Tensor | None,
              maps: dict | None) -> torch.Tensor:
        style = style_with_labels(style, labels, self.label_dim)
        size = (source.shape[-2] // 32, source.shape[-1] // 32)
        # repeat, not expand: a view of a parameter made under no_grad would claim requires_grad
        # without a grad_fn, which confuses autograd hooks (e.g. FlopCounterMode's module tracker).
        x = self.constant.repeat(source.shape[0], 1, 1, 1)
        if size != (4, 4):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for block in self.decoder:
            x = block(x, source, style, maps)
        return torch.tanh(self.to_image(F.leaky_relu(x, LEAK)))
