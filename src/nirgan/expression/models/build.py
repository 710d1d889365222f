"""How an :class:`~nirgan.config.ExpressionTrainConfig` assembles the networks of its model."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from nirgan.config import ExpressionTrainConfig
from nirgan.expression.models.cgan import CGANDiscriminator, CGANGenerator, init_dcgan
from nirgan.expression.models.cgan_encoder import LatentEncoder
from nirgan.expression.models.stargan import build_stargan


@dataclass
class ExpressionNetworks:
    generator: nn.Module
    discriminator: nn.Module
    encoder: nn.Module | None = None


def build_expression_networks(cfg: ExpressionTrainConfig, num_labels: int) -> ExpressionNetworks:
    """G, D (and E for cgan_encoder) at their initialisation; draws from the global torch RNG."""
    if num_labels < 2:
        raise ValueError(f"expression models need at least 2 labels; the data has {num_labels}")
    if cfg.model == "stargan":
        g, d = build_stargan(num_labels, cfg.image_size, cfg.conv_dim, cfg.width, cfg.res_blocks, cfg.d_layers,
                             cfg.upsample)
        return ExpressionNetworks(g, d)  # PyTorch's default init, as Choi et al.'s code
    g = init_dcgan(CGANGenerator(num_labels, cfg.image_size, cfg.latent_dim, cfg.width, cfg.upsample))
    d = init_dcgan(CGANDiscriminator(num_labels, cfg.image_size, cfg.width))
    e = init_dcgan(LatentEncoder(cfg.image_size, cfg.latent_dim, cfg.width)) if cfg.model == "cgan_encoder" else None
    return ExpressionNetworks(g, d, e)


def build_generator(cfg: ExpressionTrainConfig, num_labels: int) -> nn.Module:
    return build_expression_networks(cfg, num_labels).generator
