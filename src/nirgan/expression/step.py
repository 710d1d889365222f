"""One iteration's losses of each expression model, as pure functions (like ``core.py`` for NIR).

Each takes the networks, one batch and its random draws, and returns the scalar to minimise and
a dict of its detached parts; none steps an optimiser or reads global state, so the trainer and
the tests run the very same math. Which networks require grad is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nirgan.expression.losses import (
    StarAdversarial,
    cgan_d_loss,
    cgan_g_loss,
    cycle_reconstruction_loss,
    domain_classification_loss,
    gradient_penalty,
    image_reconstruction_loss,
    latent_reconstruction_loss,
    star_d_adversarial,
    star_g_adversarial,
)
from nirgan.training.diff_augment import AugmentDraws, diff_augment

Parts = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ExpressionBatch:
    """Real faces (n, 1, S, S) in [-1, 1] with their labels, and this iteration's draws: target
    labels (StarGAN's c; the cGAN's labels of its fakes), z (latent models), the GP's alpha and
    the augmentation of D's inputs (``expression_train.d_augment``; None: D sees them as they are)."""

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    z: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    augment: AugmentDraws | None = None

    def seen_by_d(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (real or generated, one row per batch row) as D sees it: under this batch's
        augmentation, the same for a real face and its translation."""
        return diff_augment(x, self.augment)


# ---------------------------------------------------------------------------- StarGAN
def stargan_d_step(g: nn.Module, d: nn.Module, b: ExpressionBatch, adversarial: StarAdversarial,
                   lambda_cls: float, lambda_gp: float) -> tuple[torch.Tensor, Parts]:
    """Choi et al. eq. 5 (+ eq. 8's GP): D learns real vs. translated and the real faces' labels."""
    with torch.no_grad():
        fake = b.seen_by_d(g(b.images, b.targets).to(b.images.dtype))
    real = b.seen_by_d(b.images)
    n = real.shape[0]
    src, cls = d(torch.cat([real, fake]))
    adv = star_d_adversarial(src[:n], src[n:], adversarial)
    d_cls = domain_classification_loss(cls[:n], b.labels)
    loss = adv + lambda_cls * d_cls
    parts = {"d_adv": adv.detach(), "d_cls": d_cls.detach()}
    if adversarial == "wgan_gp" and lambda_gp > 0:
        interp = (b.alpha * real + (1 - b.alpha) * fake).requires_grad_(True)
        gp = gradient_penalty(d(interp)[0], interp)
        loss = loss + lambda_gp * gp
        parts["d_gp"] = gp.detach()
    with torch.no_grad():
        parts["d_cls_acc"] = (cls[:n].argmax(1) == b.labels).float().mean()
    parts["d_total"] = loss.detach()
    return loss, parts


def stargan_g_step(g: nn.Module, d: nn.Module, b: ExpressionBatch, adversarial: StarAdversarial,
                   lambda_cls: float, lambda_rec: float) -> tuple[torch.Tensor, Parts]:
    """Choi et al. eq. 6: fool D, be classified as the target, and cycle back to the input."""
    fake = g(b.images, b.targets)
    src, cls = d(b.seen_by_d(fake))
    adv = star_g_adversarial(src, adversarial)
    g_cls = domain_classification_loss(cls, b.targets)
    rec = cycle_reconstruction_loss(b.images, g(fake, b.labels))
    loss = adv + lambda_cls * g_cls + lambda_rec * rec
    return loss, {"g_adv": adv.detach(), "g_cls": g_cls.detach(), "g_rec": rec.detach(), "g_total": loss.detach()}


# ------------------------------------------------------------------------------- cGAN
def cgan_d_step(g: nn.Module, d: nn.Module, b: ExpressionBatch) -> tuple[torch.Tensor, Parts]:
    """Milan section 7: a real mini-batch with its labels, and G's fakes for random labels."""
    with torch.no_grad():
        fake = g(b.z, b.targets)
    loss = cgan_d_loss(d(b.seen_by_d(b.images), b.labels), d(b.seen_by_d(fake.to(b.images.dtype)), b.targets))
    return loss, {"d_adv": loss.detach(), "d_total": loss.detach()}


def cgan_g_step(g: nn.Module, d: nn.Module, b: ExpressionBatch) -> tuple[torch.Tensor, Parts]:
    """Milan section 7: random z and random labels, G tries to fool D."""
    loss = cgan_g_loss(d(b.seen_by_d(g(b.z, b.targets)), b.targets))
    return loss, {"g_adv": loss.detach(), "g_total": loss.detach()}


# ---------------------------------------------------------------------------- encoder
def encoder_step(g: nn.Module, e: nn.Module, b: ExpressionBatch, lambda_latent: float,
                 lambda_image: float) -> tuple[torch.Tensor, Parts]:
    """KTH 2.2.2 with G frozen: E(G(z|y)) = z (eq. 13) and G(E(x)|y_x) = x (eq. 14)."""
    with torch.no_grad():
        drawn = g(b.z, b.targets)
    lat = latent_reconstruction_loss(b.z, e(drawn))
    img = image_reconstruction_loss(b.images, g(e(b.images), b.labels))
    loss = lambda_latent * lat + lambda_image * img
    return loss, {"e_latent": lat.detach(), "e_image": img.detach(), "e_total": loss.detach()}
