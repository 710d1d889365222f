"""Building blocks shared by the networks: thesis Figure 3.12 ResBlocks, AdaIN, SPADE, init.

The ResBlocks follow StarGAN v2 (thesis ref. [1]), which Figure 3.12 is drawn from:
pre-activation (norm -> LeakyReLU(0.2) -> conv) twice, a learned 1x1 skip connection only
when the channel count changes, and the sum scaled by 1/sqrt(2) so that a residual and its
skip of equal variance add up to unit variance again (this keeps deep stacks stable under
Xavier init without warm-up).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LEAK = 0.2
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)``.

    On CUDA, for input that is not channels_last (AdaIN's instance norm returns contiguous NCHW
    there even from channels_last input), interpolate's bf16 kernel took 9-25 ms forward +
    backward at batch 256 on an H100, 1.1-20x the time of the same function written as two blends
    with the edge-clamped neighbours (:func:`upsample2x_blend`), and 46% of an eager training
    step. On channels_last input and on the CPU the kernel is the faster one
    (benchmarks/resample_speed.py).
    """
    if x.is_cuda and not x.is_contiguous(memory_format=torch.channels_last):
        return upsample2x_blend(x)
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def upsample2x_blend(x: torch.Tensor) -> torch.Tensor:
    """Bilinear 2x upsampling (align_corners=False): each output pixel is 3/4 of its source pixel
    plus 1/4 of the neighbour on its side, edges clamped; first along W, then along H."""

    def along(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim]
        before = torch.cat([t.narrow(dim, 0, 1), t.narrow(dim, 0, n - 1)], dim)
        after = torch.cat([t.narrow(dim, 1, n - 1), t.narrow(dim, n - 1, 1)], dim)
        pair = torch.stack([0.75 * t + 0.25 * before, 0.75 * t + 0.25 * after], dim + 1)
        return pair.flatten(dim, dim + 1)

    return along(along(x, 3), 2)


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)``. On CUDA (even sizes) as a mean over 2 x 2 blocks of a reshaped
    view, whose backward is a broadcast: 1.4-1.7x faster forward + backward than avg_pool2d's
    bf16 kernels on the encoders' large maps at batch 256 on an H100; on the CPU the kernel."""
    return downsample2x_reshape(x) if x.is_cuda and not (x.shape[-1] % 2 or x.shape[-2] % 2) else F.avg_pool2d(x, 2)


def downsample2x_reshape(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean((3, 5))


def scaled(channels: int, width: float) -> int:
    """A thesis table's channel count times ``width``, never below 8 (thin nets stay trainable)."""
    return max(8, int(round(channels * width)))


class InstanceNorm(nn.GroupNorm):
    """Instance normalisation (per-image, per-channel statistics, then an optional per-channel
    affine), with ``nn.InstanceNorm2d``'s parameter names.

    On the CPU it runs as a group norm with one channel per group, the same function with a
    faster kernel: ``nn.InstanceNorm2d`` there runs batch norm on a reshaped NCHW copy and returns
    NCHW even for channels_last input. On 2 CPU cores the trained default generator drew 1.05 to
    1.17x faster and the default step trained 1.02 to 1.04x faster (benchmarks/instance_norm.py,
    two runs). On CUDA it stays torch's instance norm, the kernel the GPU measurements were made
    with (:func:`upsample2x` copes with its NCHW output).
    """

    def __init__(self, channels: int, affine: bool = False, eps: float = 1e-5):
        super().__init__(channels, channels, eps=eps, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        return super().forward(x)


class AdaIN(nn.Module):
    """Adaptive instance normalisation, thesis eq. 2.8: gamma and beta come from the style vector.

    ``(1 + gamma)`` rather than ``gamma`` so that a freshly initialised layer is close to plain
    instance normalisation instead of multiplying the features by a random sign.
    """

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.norm = InstanceNorm(channels)
        self.fc = nn.Linear(style_dim, 2 * channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.fc(style)[:, :, None, None].chunk(2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class SPADE(nn.Module):
    """Spatially-adaptive normalisation, thesis eq. 2.9 and Figure 2.8 (Park et al., ref. [8]).

    Parameter-free batch norm, then a per-pixel gamma and beta computed by a small conv net from
    the source image resized to the feature map. The source is an RGB render, not a label map,
    so it is resized bilinearly (nearest would alias the mask edges).
    """

    def __init__(self, channels: int, source_channels: int = 3, hidden: int = 64):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(source_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def modulation(self, source: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-pixel (gamma, beta) for a feature map of ``size``."""
        if source.shape[-2:] != size:
            source = F.interpolate(source, size=size, mode="bilinear", align_corners=False, antialias=False)
        h = self.shared(source)
        return self.gamma(h), self.beta(h)

    def forward(self, x: torch.Tensor, source: torch.Tensor, maps: dict | None = None) -> torch.Tensor:
        """``maps``: a cache shared by calls over one source batch. gamma and beta depend on the
        source alone, so images drawn from the same sources with other styles reuse them; in a
        training step that draws two (the sample and the identity reconstruction) this was a
        tenth of the step (benchmarks/spade_maps.py)."""
        gamma_beta = None if maps is None else maps.get(self)
        if gamma_beta is None:
            gamma_beta = self.modulation(source, tuple(x.shape[-2:]))
            if maps is not None:
                maps[self] = gamma_beta
        gamma, beta = gamma_beta
        return (1 + gamma) * self.norm(x) + beta


class ResBlock(nn.Module):
    """Figure 3.12, plain ResBlock with AvgPool downsampling (Tables 3.4 encoder and 3.6).

    ``norm="batch"`` for the generator's encoder (Table 3.4), ``"none"`` for the latent encoder
    (Table 3.6). The channel change happens in the second conv, after pooling, as in StarGAN v2,
    so the expensive conv runs at the lower resolution.
    """

    def __init__(self, in_ch: int, out_ch: int, norm: Literal["batch", "none"] = "none", downsample: bool = True):
        super().__init__()
        self.downsample = downsample
        make_norm = (lambda c: nn.BatchNorm2d(c)) if norm == "batch" else (lambda c: nn.Identity())
        self.norm1 = make_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, padding=1)
        self.norm2 = make_norm(in_ch)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else None

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip is not None:
            x = self.skip(x)
        return downsample2x(x) if self.downsample else x

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.leaky_relu(self.norm1(x), LEAK))
        if self.downsample:
            x = downsample2x(x)
        return self.conv2(F.leaky_relu(self.norm2(x), LEAK))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self._shortcut(x) + self._residual(x)) * _INV_SQRT2


class AdaINResBlock(nn.Module):
    """Figure 3.12, AdaIN ResBlock with bilinear upsampling (Table 3.4 decoder)."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.norm1 = AdaIN(in_ch, style_dim)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = AdaIN(out_ch, style_dim)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else None

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2x(x) if self.upsample else x

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        shortcut = self._up(x)
        if self.skip is not None:
            shortcut = self.skip(shortcut)
        h = self.conv1(self._up(F.leaky_relu(self.norm1(x, style), LEAK)))
        h = self.conv2(F.leaky_relu(self.norm2(h, style), LEAK))
        return (shortcut + h) * _INV_SQRT2


class MultinormResBlock(nn.Module):
    """Figure 3.12, Multinorm ResBlock (Table 3.5): SPADE for the source, then AdaIN for the style.

    The SPADE modulation is spatial, so the instance normalisation inside the following AdaIN
    (which only removes per-channel statistics) keeps the source's layout while the style sets
    the per-channel appearance.
    """

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, spade_hidden: int, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.spade1 = SPADE(in_ch, hidden=spade_hidden)
        self.adain1 = AdaIN(in_ch, style_dim)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.spade2 = SPADE(out_ch, hidden=spade_hidden)
        self.adain2 = AdaIN(out_ch, style_dim)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else None

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2x(x) if self.upsample else x

    def forward(self, x: torch.Tensor, source: torch.Tensor, style: torch.Tensor,
                maps: dict | None = None) -> torch.Tensor:
        shortcut = self._up(x)
        if self.skip is not None:
            shortcut = self.skip(shortcut)
        h = self.adain1(self.spade1(x, source, maps), style)
        h = self.conv1(self._up(F.leaky_relu(h, LEAK)))
        h = self.adain2(self.spade2(h, source, maps), style)
        h = self.conv2(F.leaky_relu(h, LEAK))
        return (shortcut + h) * _INV_SQRT2


def style_with_labels(style: torch.Tensor, labels: torch.Tensor | None, label_dim: int) -> torch.Tensor:
    """The vector the AdaIN layers read: the style, with the pose/gaze labels appended if conditioned."""
    if label_dim == 0:
        return style
    if labels is None or labels.shape != (style.shape[0], label_dim):
        got = None if labels is None else tuple(labels.shape)
        raise ValueError(f"this network is conditioned on {label_dim} labels; expected labels of shape "
                         f"({style.shape[0]}, {label_dim}), got {got}")
    return torch.cat([style, labels.to(style.dtype)], dim=1)


InitScheme = Literal["xavier", "kaiming", "default"]


def init_weights(module: nn.Module, scheme: InitScheme = "xavier") -> nn.Module:
    """Initialise every conv and linear layer of ``module`` in place (Table 3.8: Xavier).

    Xavier is Glorot's (thesis ref. [68]) uniform form with gain 1; kaiming is He's normal form
    for LeakyReLU(0.2); biases start at zero and norm layers at identity. ``default`` keeps
    PyTorch's own init. Learned tensors that are not layers (the multinorm constant) are left alone.
    """
    if scheme not in ("xavier", "kaiming", "default"):
        raise ValueError(f"unknown init scheme {scheme!r}; expected xavier, kaiming or default")
    if scheme == "default":
        return module
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, a=LEAK, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module
