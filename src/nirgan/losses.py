"""The thesis's loss functions (Table 3.2, Eq. 3.5) as pure functions of tensors.

Every function returns a value to MINIMISE with gradient descent, including the ones the thesis
writes as a maximisation (the discriminator's Eq. 2.5 and the style diversity Eq. 3.2): those are
negated here, and their docstrings say so. Means run over every element (batch and PatchGAN
cells), so the loss scale does not depend on batch size or image size.

Image distances ``d_I`` (3.2.4) are callables ``(a, b) -> (B,)`` of per-sample distances, built
by :func:`make_image_distance`; the losses that use them average over the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AdversarialKind = Literal["original", "least_squares", "hinge"]
ImageDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_KINDS = ("original", "least_squares", "hinge")


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"unknown adversarial loss {kind!r}; expected one of {', '.join(_KINDS)}")


# ------------------------------------------------------------------------- adversarial (2.2.3)
def discriminator_adversarial_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: AdversarialKind
) -> torch.Tensor:
    """Thesis Table 2.1, the discriminator's objective ``f(real) + g(fake)`` negated (minimised).

    original:       softplus(-real) + softplus(fake)          (binary cross-entropy on the logits)
    least_squares:  1/2 (real - 1)^2 + 1/2 fake^2              (the table's 1/2 factors kept)
    hinge:          relu(1 - real) + relu(1 + fake)
    each term averaged over all its elements.
    """
    _check_kind(kind)
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "original":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "least_squares":
        return 0.5 * (real_logits - 1).pow(2).mean() + 0.5 * fake_logits.pow(2).mean()
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor, kind: AdversarialKind) -> torch.Tensor:
    """Thesis Table 2.1, ``h(fake)`` for the generator (minimised).

    original:       softplus(-fake), the non-saturating form -log D(G(y, z)). Table 2.1's literal
                    h(y) = log(1 - D) saturates while D wins (no gradient early in training, the
                    problem 2.2.3.4 describes); the non-saturating form has the same fixed point
                    and is what GAN implementations, including pix2pix's that the thesis follows, use.
    least_squares:  1/2 (fake - 1)^2
    hinge:          -fake
    """
    _check_kind(kind)
    fake_logits = fake_logits.float()
    if kind == "original":
        return F.softplus(-fake_logits).mean()
    if kind == "least_squares":
        return 0.5 * (fake_logits - 1).pow(2).mean()
    return -fake_logits.mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1 gradient penalty (Mescheder et al. 2018): E ||grad_x D(y, x)||^2 on real images.

    Returned without the 1/2: the discriminator loss adds ``gamma / 2 * r1_penalty(...)``, which
    is Mescheder's R1 with his gamma. ``real_images`` must have had ``requires_grad_(True)``
    before ``real_logits`` were computed from them. D's score per sample is the mean over the
    PatchGAN cells (what the adversarial losses average), so gamma values from scalar-output
    discriminators carry over. A discriminator that ignores its input gives exactly zero.
    """
    score = real_logits.float().flatten(1).mean(1).sum()
    (grad,) = torch.autograd.grad(score, real_images, create_graph=True, allow_unused=True)
    if grad is None:
        return real_logits.sum() * 0.0
    return grad.float().pow(2).flatten(1).sum(1).mean()


# -------------------------------------------------------------------------- perceptual (3.2.4)
def select_features(features: Sequence[torch.Tensor], layers: Sequence[int] | None) -> list[torch.Tensor]:
    """The chosen feature maps by 1-based block index (thesis Table 4.4: "layers 4 & 5"); None = all."""
    if layers is None:
        return list(features)
    bad = [i for i in layers if not 1 <= i <= len(features)]
    if bad:
        raise ValueError(f"feature layers {bad} out of range: the network has blocks 1..{len(features)}")
    return [features[i - 1] for i in layers]


def _per_sample_feature_l1(features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor]) -> torch.Tensor:
    if len(features_a) != len(features_b) or not features_a:
        raise ValueError(f"need the same, non-zero number of feature maps, got {len(features_a)} and {len(features_b)}")
    return sum((fa.float() - fb.float()).abs().flatten(1).mean(1) for fa, fb in zip(features_a, features_b))


def _stacked_feature_l1(features: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """Per-sample feature L1 between the first ``n`` rows (a) and the rest (b) of one batched pass."""
    return _per_sample_feature_l1([f[:n] for f in features], [f[n:] for f in features])


def perceptual_loss(features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Perceptual loss L_p (Eq. 3.4 as implemented in 3.2.4.2.1): sum over layers of the mean L1.

    The mean over each layer's B x C x H x W elements is the thesis's "normalised by channel
    size", so wide deep layers do not swamp shallow ones. Pass the real image's features detached.
    """
    return _per_sample_feature_l1(features_a, features_b).mean()


# ------------------------------------------------------------------ diversity regularisation (3.2.2)
def latent_reconstruction_loss(z: torch.Tensor, z_rec: torch.Tensor) -> torch.Tensor:
    """L_lr, Eq. 3.1: ||z - E(G(y, z))||_1, as the mean absolute error over batch and dimensions."""
    return (z.float() - z_rec.float()).abs().mean()


def style_diversity_loss(
    image_1: torch.Tensor,
    image_2: torch.Tensor,
    z_1: torch.Tensor,
    z_2: torch.Tensor,
    image_distance: ImageDistance,
    latent_distance: Literal["const", "l1"],
) -> torch.Tensor:
    """L_sd, Eq. 3.2, returned NEGATED: ``-mean_b d_I(G(y,z1), G(y,z2)) / d_z(z1, z2)``.

    The thesis maximises the ratio; adding ``lambda_sd * style_diversity_loss(...)`` to the
    generator loss that is minimised does exactly that, so more different images give a lower
    value. ``d_z`` is "const" (1, Table 4.6's "Const 1") or "l1": the mean absolute difference
    per dimension (about 1.13 for two independent N(0, I) draws), so the ratio stays O(d_I).
    """
    d_img = image_distance(image_1, image_2)
    if latent_distance == "const":
        return -d_img.mean()
    if latent_distance == "l1":
        d_z = (z_1.float() - z_2.float()).abs().flatten(1).mean(1)
        return -(d_img / d_z.clamp_min(1e-8)).mean()
    raise ValueError(f"unknown latent distance {latent_distance!r}; expected const or l1")


def identity_reconstruction_loss(x: torch.Tensor, x_rec: torch.Tensor, image_distance: ImageDistance) -> torch.Tensor:
    """L_ir, Eq. 3.3: d_I(x, G(y, E(x))), averaged over the batch."""
    return image_distance(x, x_rec).mean()


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)), summed over dimensions, averaged over the batch.

    BicycleGAN's L_KL (Zhu et al. 2017, eq. 3): it pulls the codes E gives real faces onto the
    prior that sampling draws z from, so G(y, z) with z ~ N(0, I) lands where identity
    reconstruction trained G, not in a region only the adversarial term has seen.
    """
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()


def attribute_preservation_loss(pred_labels: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
    """Thesis 5.2 future work: L1 between a pose/gaze estimator on G(y, z) and the source's labels.

    Unknown labels are NaN in the manifests; they are left out. With none known the loss is an
    exact zero that still belongs to the graph (so a backward pass through it is harmless).
    """
    pred, target = pred_labels.float(), target_labels.float()
    known = torch.isfinite(target)
    diff = (pred - torch.where(known, target, pred.detach())).abs()
    return diff.sum() / known.sum().clamp_min(1)


# ---------------------------------------------------------------------------- distances d_I (3.2.4)
DistanceKind = Literal["l1", "discriminator", "vgg19", "identity"]


def make_image_distance(
    kind: DistanceKind,
    discriminator: nn.Module | None = None,
    vgg: nn.Module | None = None,
    identity: nn.Module | None = None,
    source: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
) -> ImageDistance:
    """Build ``d_I(a, b) -> (B,)`` for images in [-1, 1] of shape (B, 1, H, W).

    l1             mean absolute pixel difference.
    discriminator  sum over the chosen discriminator blocks (``layers``, 1-based; None = all five)
                   of the mean L1 between the features of (source, a) and (source, b): the
                   discriminator is conditional, so it needs this batch's ``source`` (and
                   ``labels`` when it is label-conditioned).
    vgg19          the same over the five VGG-19 layers of 3.2.4.2.1 (``VGG19Features``).
    identity       Euclidean distance between the NIR identity network's unit-length embeddings
                   (thesis 5.2's replacement for the ResNet-50 VGGFace2 network), in [0, 2].
    a and b go through a network in one batch; the networks get gradients only as far as the
    caller lets them (freeze them or zero their grads before their own step).
    """
    if kind == "l1":
        return lambda a, b: (a.float() - b.float()).abs().flatten(1).mean(1)

    if kind == "discriminator":
        if discriminator is None or source is None:
            raise ValueError("the discriminator distance needs the discriminator and this batch's source images")

        def d_discriminator(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            n = a.shape[0]
            lab = None if labels is None else labels.repeat(2, 1)
            _, feats = discriminator(source.repeat(2, 1, 1, 1), torch.cat([a, b]), lab, return_features=True)
            return _stacked_feature_l1(select_features(feats, layers), n)

        return d_discriminator

    if kind == "vgg19":
        if vgg is None:
            raise ValueError("the vgg19 distance needs a VGG19Features network")

        def d_vgg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return _stacked_feature_l1(vgg(torch.cat([a, b])), a.shape[0])

        return d_vgg

    if kind == "identity":
        if identity is None:
            raise ValueError("the identity distance needs a trained IdentityNet")

        def d_identity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            n = a.shape[0]
            emb = identity.embed(torch.cat([a, b])).float()
            return (emb[:n] - emb[n:]).pow(2).sum(1).add(1e-12).sqrt()

        return d_identity

    raise ValueError(f"unknown image distance {kind!r}; expected l1, discriminator, vgg19 or identity")
