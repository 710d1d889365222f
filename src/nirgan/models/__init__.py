"""The networks of the thesis's CGAN framework (3.4) and how a training config assembles them.

One file per network, each citing the table it implements:
    encoder_decoder.EncoderDecoderGenerator   Table 3.4      multinorm.MultinormGenerator   Table 3.5
    patch_discriminator.PatchDiscriminator    Table 3.3      latent_encoder.LatentEncoder   Table 3.6
    style_mapping.StyleMappingNetwork         Table 3.7      vgg19.VGG19Features            3.2.4.2.1
    identity_net.IdentityNet                  thesis 5.2 (NIR identity network)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import torch
from torch import nn

from nirgan.config import TrainConfig
from nirgan.labels import LABELS
from nirgan.models.encoder_decoder import EncoderDecoderGenerator
from nirgan.models.identity_net import IdentityNet, train_identity_net
from nirgan.models.latent_encoder import LatentEncoder
from nirgan.models.layers import init_weights
from nirgan.models.multinorm import MultinormGenerator
from nirgan.models.patch_discriminator import PatchDiscriminator
from nirgan.models.style_mapping import StyleMappingNetwork
from nirgan.models.vgg19 import MissingWeightsError, VGG19Features, require_vgg19_weights

__all__ = [
    "EncoderDecoderGenerator", "IdentityNet", "LatentEncoder", "MissingWeightsError", "MultinormGenerator",
    "Networks", "PatchDiscriminator", "StyleMappingNetwork", "VGG19Features", "build_generator",
    "build_networks", "init_weights", "load_generator", "require_vgg19_weights", "save_generator",
    "train_identity_net",
]

Generator = EncoderDecoderGenerator | MultinormGenerator


@dataclass
class Networks:
    """The trainable networks of one configuration; E and L are None when it does not use them."""

    generator: Generator
    discriminator: PatchDiscriminator
    encoder: LatentEncoder | None
    mapping: StyleMappingNetwork | None
    label_dim: int = 0


def effective_label_dim(train_cfg: TrainConfig, label_dim: int = 0) -> int:
    """Label channels the networks are built with: the given count, else all LABELS when conditioned."""
    if label_dim:
        return label_dim
    return len(LABELS) if train_cfg.condition_on_labels else 0


def build_generator(train_cfg: TrainConfig, label_dim: int = 0) -> Generator:
    cls = EncoderDecoderGenerator if train_cfg.generator == "encoder_decoder" else MultinormGenerator
    return cls(latent_dim=train_cfg.latent_dim, width=train_cfg.width, label_dim=label_dim)


def build_networks(train_cfg: TrainConfig, label_dim: int = 0) -> Networks:
    """G and D always; E iff a loss needs it (lambda_lr or lambda_ir > 0); L iff style_mapping.

    ``label_dim`` is used as given when non-zero; otherwise it is len(LABELS) = 5 when
    ``condition_on_labels`` is set, else 0. Every network gets ``train_cfg.init``.
    """
    label_dim = effective_label_dim(train_cfg, label_dim)
    needs_encoder = train_cfg.lambda_lr > 0 or train_cfg.lambda_ir > 0
    nets = Networks(
        generator=build_generator(train_cfg, label_dim),
        discriminator=PatchDiscriminator(width=train_cfg.width, label_dim=label_dim),
        encoder=LatentEncoder(latent_dim=train_cfg.latent_dim, width=train_cfg.width) if needs_encoder else None,
        mapping=StyleMappingNetwork(train_cfg.latent_dim, train_cfg.latent_dim) if train_cfg.style_mapping else None,
        label_dim=label_dim,
    )
    for net in (nets.generator, nets.discriminator, nets.encoder, nets.mapping):
        if net is not None:
            init_weights(net, train_cfg.init)
    return nets


def save_generator(path: str | Path, generator: nn.Module, train_cfg: TrainConfig, label_dim: int) -> None:
    """Write models/generator.pt as {"state_dict", "train_config", "label_dim"}, atomically.

    Only tensors and plain JSON types go in, so :func:`load_generator` can use weights_only=True.
    """
    from nirgan.io import atomic_file

    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
        "train_config": train_cfg.model_dump(mode="json"),
        "label_dim": int(label_dim),
    }
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def load_generator(path: str | Path, map_location: str | torch.device = "cpu") -> Generator:
    """Rebuild the generator saved in models/generator.pt (see :func:`save_generator`), in eval mode.

    The returned module carries ``latent_dim`` and ``label_dim`` attributes; the config it was
    trained with is ``generator.train_config`` (a TrainConfig).
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no generator file (run the train stage first)") from None
    missing = {"state_dict", "train_config", "label_dim"} - set(payload) if isinstance(payload, dict) else {"all keys"}
    if missing:
        raise ValueError(f"{path}: not a nirgan generator file, missing {sorted(missing)}")
    train_cfg = TrainConfig.model_validate(payload["train_config"])
    generator = build_generator(train_cfg, int(payload["label_dim"]))
    generator.load_state_dict(payload["state_dict"])
    generator.train_config = train_cfg
    return generator.to(map_location).eval()
