"""The expression models' losses, as pure functions of tensors (each returns a value to MINIMISE).

- cGAN (Milan section 7; KTH 2.2.1): sigmoid cross-entropy, the generator's in the non-saturating
  form the papers write (J_G = -E log D(G(z|y))); :func:`nirgan.losses.discriminator_adversarial_loss`
  with ``original`` is exactly that and is reused.
- KTH encoder (2.2.2): latent reconstruction ||z - E(G(z|y))||^2 (eq. 13) and image
  reconstruction ||x - G(E(x)|y)||^2 (eq. 14), as means.
- StarGAN (Imperial ch. 8 running Choi et al. 2018, eq. 1-7): adversarial (WGAN-GP, the paper's;
  or least squares), domain classification on real images for D and on translations for G
  (cross-entropy: one expression per face), and the cycle reconstruction ||x - G(G(x, c), c')||_1.
Means run over every element, so the scale depends on neither batch nor image size.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from nirgan.losses import discriminator_adversarial_loss, generator_adversarial_loss

StarAdversarial = Literal["wgan_gp", "least_squares"]


# ------------------------------------------------------------------------------- cGAN
def cgan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Milan's J_D negated: softplus(-D(x|y)) + softplus(D(G(z|y)|y))."""
    return discriminator_adversarial_loss(real_logits, fake_logits, "original")


def cgan_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Milan's J_G (non-saturating): softplus(-D(G(z|y)|y))."""
    return generator_adversarial_loss(fake_logits, "original")


# ---------------------------------------------------------------------------- encoder
def latent_reconstruction_loss(z: torch.Tensor, z_rec: torch.Tensor) -> torch.Tensor:
    """KTH eq. 13: E(G(z|y)) should give back z; squared error, mean."""
    return (z - z_rec).pow(2).mean()


def image_reconstruction_loss(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """KTH eq. 14: G(E(x)|y) should give back x; squared error, mean."""
    return (x - x_rec).pow(2).mean()


# ---------------------------------------------------------------------------- StarGAN
def star_d_adversarial(real_src: torch.Tensor, fake_src: torch.Tensor, kind: StarAdversarial) -> torch.Tensor:
    """D's adversarial term on the PatchGAN maps: WGAN -E D(x) + E D(G(x,c)); or least squares."""
    if kind == "wgan_gp":
        return fake_src.mean() - real_src.mean()
    if kind == "least_squares":
        return discriminator_adversarial_loss(real_src, fake_src, "least_squares")
    raise ValueError(f"unknown StarGAN adversarial loss {kind!r}; expected wgan_gp or least_squares")


def star_g_adversarial(fake_src: torch.Tensor, kind: StarAdversarial) -> torch.Tensor:
    if kind == "wgan_gp":
        return -fake_src.mean()
    if kind == "least_squares":
        return generator_adversarial_loss(fake_src, "least_squares")
    raise ValueError(f"unknown StarGAN adversarial loss {kind!r}; expected wgan_gp or least_squares")


def gradient_penalty(interp_src: torch.Tensor, interp: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al.; StarGAN eq. 8's lambda_gp term): (||grad_x D(x_hat)||_2 - 1)^2
    at x_hat, random points between real and translated images. ``interp`` must require grad
    and ``interp_src`` be D's output on it."""
    grad, = torch.autograd.grad(interp_src.sum(), interp, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


def domain_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """StarGAN eq. 2 (real images, trains D) and eq. 3 (translations, trains G): -log D_cls(c|x)."""
    return F.cross_entropy(logits.float(), labels)


def cycle_reconstruction_loss(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """StarGAN eq. 4: ||x - G(G(x, c), c')||_1, mean."""
    return (x - x_rec).abs().mean()
