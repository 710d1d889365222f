"""How a training config assembles the thesis's networks (3.4): G, D, and E and L when used."""

from __future__ import annotations

from dataclasses import dataclass

from nirgan.config import TrainConfig
from nirgan.labels import LABELS
from nirgan.models.encoder_decoder import EncoderDecoderGenerator
from nirgan.models.latent_encoder import LatentEncoder
from nirgan.models.layers import init_weights
from nirgan.models.multinorm import MultinormGenerator
from nirgan.models.patch_discriminator import PatchDiscriminator
from nirgan.models.style_mapping import StyleMappingNetwork

# The image generator G of Tables 3.4/3.5 (distinct from torch.Generator and from the sampler).
ImageGenerator = EncoderDecoderGenerator | MultinormGenerator


@dataclass
class Networks:
    """The trainable networks of one configuration; E and L are None when it does not use them."""

    generator: ImageGenerator
    discriminator: PatchDiscriminator
    encoder: LatentEncoder | None
    mapping: StyleMappingNetwork | None
    label_dim: int = 0


def effective_label_dim(train_cfg: TrainConfig, label_dim: int = 0) -> int:
    """Label channels the networks are built with: the given count, else all LABELS when conditioned."""
    if label_dim:
        return label_dim
    return len(LABELS) if train_cfg.condition_on_labels else 0


def needs_encoder(train_cfg: TrainConfig) -> bool:
    """E exists iff a loss reads it: latent reconstruction or identity reconstruction."""
    return train_cfg.lambda_lr > 0 or train_cfg.lambda_ir > 0


def build_generator(train_cfg: TrainConfig, label_dim: int = 0) -> ImageGenerator:
    cls = EncoderDecoderGenerator if train_cfg.generator == "encoder_decoder" else MultinormGenerator
    return cls(latent_dim=train_cfg.latent_dim, width=train_cfg.width, label_dim=label_dim)


def build_networks(train_cfg: TrainConfig, label_dim: int = 0) -> Networks:
    """G and D always; E iff a loss needs it (lambda_lr or lambda_ir > 0); L iff style_mapping.

    ``label_dim`` is used as given when non-zero; otherwise it is len(LABELS) = 5 when
    ``condition_on_labels`` is set, else 0. Every network gets ``train_cfg.init``.
    """
    label_dim = effective_label_dim(train_cfg, label_dim)
    nets = Networks(
        generator=build_generator(train_cfg, label_dim),
        discriminator=PatchDiscriminator(width=train_cfg.width, label_dim=label_dim),
        encoder=(LatentEncoder(latent_dim=train_cfg.latent_dim, width=train_cfg.width,
                               variational=train_cfg.lambda_kl > 0)
                 if needs_encoder(train_cfg) else None),
        mapping=StyleMappingNetwork(train_cfg.latent_dim, train_cfg.latent_dim) if train_cfg.style_mapping else None,
        label_dim=label_dim,
    )
    for net in (nets.generator, nets.discriminator, nets.encoder, nets.mapping):
        if net is not None:
            init_weights(net, train_cfg.init)
    return nets
