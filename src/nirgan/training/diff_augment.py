"""Differentiable augmentation of what the discriminator sees (Zhao et al. 2020, "Differentiable
Augmentation for Data-Efficient GAN Training", arXiv:2006.10738), for the expression models.

Why: with a few hundred training faces, StarGAN's domain classifier (part of D) learns them by
heart (its train accuracy reaches 1.0 within a few hundred steps), and G then learns to satisfy
that memorised classifier with features no other classifier reads as the expression. Showing D
every face, real and translated alike, under a random shift, cutout and brightness/contrast
change keeps it from memorising; as the transforms are differentiable, G's gradient passes
through them. Real and generated faces of one batch row get the same transform.

The transforms and their ranges are the paper's (``DiffAugment_pytorch.py``), for one channel:
brightness adds U(-0.5, 0.5); contrast scales the deviation from the image mean by U(0.5, 1.5);
translation shifts by up to 1/8 of the side, filling with zeros; cutout zeroes a square of half
the side centred anywhere on the image. The draws are made by the caller (the session's seeded
generator, for the global batch, then sliced per rank), so a run stays exactly resumable and
independent of the number of processes; :func:`diff_augment` itself is a pure function.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

POLICIES = ("brightness", "contrast", "translation", "cutout")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


@dataclass(frozen=True)
class AugmentDraws:
    """One batch's random parameters; a field is None when its transform is not in the policy."""

    brightness: torch.Tensor | None = None  # (n,) added
    contrast: torch.Tensor | None = None    # (n,) factor on the deviation from the mean
    shift: torch.Tensor | None = None       # (n, 2) int pixels (dy, dx)
    cutout: torch.Tensor | None = None      # (n, 2) int centre (y, x)

    def rows(self, lo: int, hi: int) -> AugmentDraws:
        """The draws of batch rows ``lo:hi`` (a rank's slice of the global batch)."""
        return replace(self, **{f.name: getattr(self, f.name)[lo:hi] for f in fields(self)
                                if getattr(self, f.name) is not None})


def draw_augment(policy: list[str] | tuple[str, ...], n: int, size: int, generator: torch.Generator,
                 device: torch.device) -> AugmentDraws | None:
    """The parameters for ``n`` images of side ``size``; None for an empty policy (no draws made,
    so a run without augmentation keeps its random sequence)."""
    unknown = set(policy) - set(POLICIES)
    if unknown:
        raise ValueError(f"unknown augmentation {sorted(unknown)}; known: {', '.join(POLICIES)}")
    if not policy:
        return None

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    out: dict[str, torch.Tensor] = {}
    for name in POLICIES:  # a fixed order: the draws do not depend on how the policy is spelt
        if name not in policy:
            continue
        if name == "brightness":
            out[name] = uniform(n) - 0.5
        elif name == "contrast":
            out[name] = uniform(n) + 0.5
        elif name == "translation":
            r = int(size * TRANSLATION_RATIO + 0.5)
            out["shift"] = torch.randint(-r, r + 1, (n, 2), generator=generator, device=device)
        else:
            cut = int(size * CUTOUT_RATIO + 0.5)
            out["cutout"] = torch.randint(0, size + (1 - cut % 2), (n, 2), generator=generator, device=device)
    return AugmentDraws(**out)


def diff_augment(x: torch.Tensor, draws: AugmentDraws | None) -> torch.Tensor:
    """``x`` (n, c, S, S) in [-1, 1] under ``draws``; differentiable in ``x``."""
    if draws is None:
        return x
    n, _, h, w = x.shape
    if draws.brightness is not None:
        x = x + draws.brightness.to(x.dtype).view(n, 1, 1, 1)
    if draws.contrast is not None:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * draws.contrast.to(x.dtype).view(n, 1, 1, 1) + mean
    if draws.shift is not None:
        r = int(h * TRANSLATION_RATIO + 0.5)
        padded = F.pad(x, (r, r, r, r))
        iy = torch.arange(h, device=x.device)[None, :] - draws.shift[:, :1] + r  # (n, h)
        ix = torch.arange(w, device=x.device)[None, :] - draws.shift[:, 1:] + r  # (n, w)
        rows = torch.arange(n, device=x.device)[:, None, None]
        x = padded[rows, :, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)  # (n, h, w, c) -> (n, c, h, w)
    if draws.cutout is not None:
        cut = int(h * CUTOUT_RATIO + 0.5)
        y0 = draws.cutout[:, :1] - cut // 2
        x0 = draws.cutout[:, 1:] - cut // 2
        ys = torch.arange(h, device=x.device)[None, :]
        xs = torch.arange(w, device=x.device)[None, :]
        in_y = (ys >= y0) & (ys < y0 + cut)  # (n, h)
        in_x = (xs >= x0) & (xs < x0 + cut)  # (n, w)
        x = x * (~(in_y[:, :, None] & in_x[:, None, :]))[:, None].to(x.dtype)
    return x
