"""The networks of the thesis's CGAN framework (3.4), how a training config assembles them
(:mod:`~nirgan.models.networks`) and the files they live in (:mod:`~nirgan.models.artifacts`).

One file per network, each citing the table it implements; all are pure (their training
loops, where they have one of their own, live in :mod:`nirgan.training`):
    encoder_decoder.EncoderDecoderGenerator   Table 3.4      multinorm.MultinormGenerator   Table 3.5
    patch_discriminator.PatchDiscriminator    Table 3.3      latent_encoder.LatentEncoder   Table 3.6
    style_mapping.StyleMappingNetwork         Table 3.7      vgg19.VGG19Features            3.2.4.2.1
    identity_net.IdentityNet                  thesis 5.2 (NIR identity network)
    pose_estimator.PoseEstimator              thesis 5.2 (pose/gaze estimator)
"""

from __future__ import annotations

from nirgan.models.artifacts import LABEL_SCALE, Sampler, load_generator, load_sampler, save_generator
from nirgan.models.encoder_decoder import EncoderDecoderGenerator
from nirgan.models.identity_net import IdentityNet
from nirgan.models.latent_encoder import LatentEncoder
from nirgan.models.layers import init_weights
from nirgan.models.multinorm import MultinormGenerator
from nirgan.models.networks import ImageGenerator, Networks, build_generator, build_networks, needs_encoder
from nirgan.models.patch_discriminator import PatchDiscriminator
from nirgan.models.style_mapping import StyleMappingNetwork
from nirgan.models.vgg19 import MissingWeightsError, VGG19Features, require_vgg19_weights

__all__ = [
    "LABEL_SCALE", "EncoderDecoderGenerator", "IdentityNet", "ImageGenerator", "LatentEncoder", "MissingWeightsError",
    "MultinormGenerator", "Networks", "PatchDiscriminator", "Sampler", "StyleMappingNetwork", "VGG19Features",
    "build_generator", "build_networks", "init_weights", "load_generator", "load_sampler", "needs_encoder",
    "require_vgg19_weights", "save_generator",
]
