"""One training iteration's losses (thesis Algorithm 2, Eq. 3.5), as pure functions.

In the spirit of StarGAN v2's ``core/solver.py``: :func:`compute_d_loss` and
:func:`compute_g_loss` take the networks, one batch and the latent draws, and return the
scalar to minimise plus a dict of its detached parts. They never step an optimiser, never
move data to the host, and never read global state, so the trainer, the speed benchmark and
the tests all run the very same step.

The networks come as a :class:`StepNets` view. The trainer builds two: for the
discriminator step the discriminator is the DDP-wrapped one and the generator is the plain
module (run under no_grad); for the generator step it is the other way round, so that only
the networks being updated synchronise gradients across processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nirgan.config import TrainConfig
from nirgan.losses import (
    attribute_preservation_loss,
    discriminator_adversarial_loss,
    generator_adversarial_loss,
    identity_reconstruction_loss,
    kl_to_standard_normal,
    latent_reconstruction_loss,
    make_image_distance,
    perceptual_loss,
    r1_penalty,
    select_features,
    style_diversity_loss,
)
from nirgan.training.diff_augment import AugmentDraws, diff_augment


@dataclass(frozen=True)
class StepNets:
    generator: nn.Module
    discriminator: nn.Module
    encoder: nn.Module | None = None
    mapping: nn.Module | None = None
    vgg: nn.Module | None = None
    identity: nn.Module | None = None
    estimator: nn.Module | None = None


@dataclass(frozen=True)
class Batch:
    """Images in [-1, 1]; ``labels`` are the conditioning input (None unless conditioned),
    ``attributes`` the pose/gaze targets of the attribute-preservation loss (None unless used)."""

    source: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor | None = None
    attributes: torch.Tensor | None = None
    augment: AugmentDraws | None = None  # D's view of its pairs (train.d_augment); None: as they are

    def seen_by_d(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, image) as D sees the pair: one transform of both, so a pair stays aligned,
        and the same for a batch row's real and generated image."""
        if self.augment is None:
            return self.source, image
        c = self.source.shape[1]
        both = diff_augment(torch.cat([self.source, image.to(self.source.dtype)], 1), self.augment)
        return both[:, :c], both[:, c:]


def style_of(nets: StepNets, z: torch.Tensor) -> torch.Tensor:
    """Algorithm 2's note: with the mapping network L, z is replaced by s = L(z)."""
    return nets.mapping(z) if nets.mapping is not None else z


def compute_d_loss(
    nets: StepNets, batch: Batch, z: torch.Tensor, train_cfg: TrainConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Discriminator half of Algorithm 2: L_D(target) + L_D(fake), plus gamma/2 * R1 if enabled."""
    with torch.no_grad():
        fake = nets.generator(batch.source, style_of(nets, z), batch.labels)
    target = batch.target
    if train_cfg.r1_gamma > 0:
        target = target.detach().requires_grad_(True)
    # One discriminator call on real and fake together: half the kernel launches, and the
    # instance norms see each image on its own, so stacking changes nothing numerically.
    n = target.shape[0]
    labels2 = None if batch.labels is None else torch.cat([batch.labels, batch.labels])
    (real_src, real_img), (fake_src, fake_img) = batch.seen_by_d(target), batch.seen_by_d(fake.to(target.dtype))
    logits = nets.discriminator(torch.cat([real_src, fake_src]), torch.cat([real_img, fake_img]), labels2)
    real_logits, fake_logits = logits[:n], logits[n:]
    adv = discriminator_adversarial_loss(real_logits, fake_logits, train_cfg.adversarial_loss)
    parts = {"d_adv": adv.detach()}
    loss = adv
    if train_cfg.r1_gamma > 0:
        r1 = r1_penalty(real_logits, target)
        loss = loss + 0.5 * train_cfg.r1_gamma * r1
        parts["d_r1"] = r1.detach()
    parts["d_total"] = loss.detach()
    return loss, parts


def compute_g_loss(
    nets: StepNets,
    batch: Batch,
    z1: torch.Tensor,
    z2: torch.Tensor | None,
    train_cfg: TrainConfig,
    z_ir: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Generator half of Algorithm 2 and the full loss Eq. 3.5.

    L = L_adv + lambda_p L_p + lambda_lr L_lr + lambda_ir L_ir + lambda_sd L_sd (+ lambda_attr
    L_attr, thesis 5.2; + lambda_kl L_KL, BicycleGAN). ``z2`` is the extra draw z* for style
    diversity (None when unused); ``z_ir`` the standard normal draw that samples E's posterior
    on the identity reconstruction path (needed iff lambda_kl > 0).
    The discriminator, VGG, identity and estimator networks are read-only here: the trainer
    freezes them so no gradient is computed for their weights.
    """
    source, target, labels = batch.source, batch.target, batch.labels
    s1 = style_of(nets, z1)
    s2 = style_of(nets, z2) if train_cfg.lambda_sd > 0 else None
    code = None
    if train_cfg.lambda_ir > 0:
        # Identity reconstruction redraws the target from its own style, E(target).
        if train_cfg.lambda_kl > 0:
            if z_ir is None:
                raise ValueError("train.lambda_kl > 0: compute_g_loss needs z_ir, the draw that samples E's posterior")
            mu, logvar = nets.encoder(target, posterior=True)
            code = mu + z_ir.to(mu.dtype) * torch.exp(0.5 * logvar)
        else:
            code = nets.encoder(target)
    # Every image of this step from one generator call: the styles share the sources, and the
    # generator computes what depends on the source alone once (the SPADE maps).
    styles = tuple(s for s in (s1, s2, code) if s is not None)
    drawn = iter(nets.generator(source, styles, labels))
    fake = next(drawn)
    fake2 = next(drawn) if s2 is not None else None
    rec = next(drawn) if code is not None else None

    use_d_features = train_cfg.perceptual == "discriminator"
    # The perceptual features compare the pair as it is; only the adversarial term sees D's view.
    features_here = use_d_features and batch.augment is None
    out = nets.discriminator(*batch.seen_by_d(fake), labels, return_features=features_here)
    fake_logits, fake_feats = out if features_here else (out, None)
    if use_d_features and fake_feats is None:
        _, fake_feats = nets.discriminator(source, fake, labels, return_features=True)
    adv = generator_adversarial_loss(fake_logits, train_cfg.adversarial_loss)
    parts = {"g_adv": adv.detach()}
    loss = adv

    if train_cfg.perceptual != "none" and train_cfg.lambda_p > 0:
        # Paired data: the generated image is compared with the real target of its source.
        if use_d_features:
            with torch.no_grad():
                _, real_feats = nets.discriminator(source, target, labels, return_features=True)
            layers = train_cfg.perceptual_layers
            lp = perceptual_loss(select_features(fake_feats, layers), select_features(real_feats, layers))
        else:
            with torch.no_grad():
                real_feats = nets.vgg(target)
            lp = perceptual_loss(nets.vgg(fake), real_feats)
        loss = loss + train_cfg.lambda_p * lp
        parts["g_p"] = lp.detach()

    if train_cfg.lambda_lr > 0:
        lr = latent_reconstruction_loss(s1, nets.encoder(fake))
        loss = loss + train_cfg.lambda_lr * lr
        parts["g_lr"] = lr.detach()

    if train_cfg.lambda_sd > 0 or train_cfg.lambda_ir > 0:
        def distance(kind: str):
            return make_image_distance(
                kind, discriminator=nets.discriminator, vgg=nets.vgg, identity=nets.identity,
                source=source, labels=labels, layers=train_cfg.perceptual_layers,
            )

    if train_cfg.lambda_sd > 0:
        sd = style_diversity_loss(fake, fake2, z1, z2, distance(train_cfg.sd_image_distance),
                                  train_cfg.sd_latent_distance)
        loss = loss + train_cfg.lambda_sd * sd
        parts["g_sd"] = sd.detach()

    if train_cfg.lambda_ir > 0:
        if train_cfg.lambda_kl > 0:
            kl = kl_to_standard_normal(mu, logvar)
            loss = loss + train_cfg.lambda_kl * kl
            parts["g_kl"] = kl.detach()
        ir = identity_reconstruction_loss(target, rec, distance(train_cfg.ir_distance))
        loss = loss + train_cfg.lambda_ir * ir
        parts["g_ir"] = ir.detach()

    if train_cfg.lambda_attr > 0:
        attr = attribute_preservation_loss(nets.estimator(fake), batch.attributes)
        loss = loss + train_cfg.lambda_attr * attr
        parts["g_attr"] = attr.detach()

    parts["g_total"] = loss.detach()
    return loss, parts


def distances_in_use(train_cfg: TrainConfig) -> set[str]:
    used = set()
    if train_cfg.lambda_sd > 0:
        used.add(train_cfg.sd_image_distance)
    if train_cfg.lambda_ir > 0:
        used.add(train_cfg.ir_distance)
    return used
