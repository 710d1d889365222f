"""The thesis's losses (Table 3.2) on hand-checked tiny tensors, their signs and their gradients."""

from __future__ import annotations

import math

import pytest
import torch

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
from nirgan.models.encoder_decoder import EncoderDecoderGenerator
from nirgan.models.latent_encoder import LatentEncoder
from nirgan.models.layers import init_weights
from nirgan.models.patch_discriminator import PatchDiscriminator

REAL = torch.tensor([[0.5, 2.0]])
FAKE = torch.tensor([[-1.0, 0.0]])


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


@pytest.fixture(autouse=True)
def _seed_and_one_thread(one_torch_thread):
    torch.manual_seed(0)


# ------------------------------------------------------------------------------ adversarial
@pytest.mark.parametrize(
    ("kind", "d_expected", "g_expected"),
    [
        # Table 2.1 negated. original: softplus(-real) + softplus(fake); G non-saturating softplus(-fake).
        ("original", (_softplus(-0.5) + _softplus(-2.0)) / 2 + (_softplus(-1.0) + _softplus(0.0)) / 2,
         (_softplus(1.0) + _softplus(0.0)) / 2),
        # 1/2 mean (real-1)^2 + 1/2 mean fake^2 = 1/2 (0.25+1)/2 + 1/2 (1+0)/2; G: 1/2 mean (fake-1)^2.
        ("least_squares", 0.3125 + 0.25, 0.5 * (4 + 1) / 2),
        # mean relu(1-real) + mean relu(1+fake) = (0.5+0)/2 + (0+1)/2; G: -mean fake.
        ("hinge", 0.25 + 0.5, 0.5),
    ],
)
def test_adversarial_losses_hand_checked(kind, d_expected, g_expected):
    assert discriminator_adversarial_loss(REAL, FAKE, kind).item() == pytest.approx(d_expected, rel=1e-6)
    assert generator_adversarial_loss(FAKE, kind).item() == pytest.approx(g_expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["original", "least_squares", "hinge"])
def test_adversarial_losses_point_the_right_way(kind):
    # From a confused D (reals scored low, fakes high): D's loss falls when it scores reals higher
    # and fakes lower; G's falls when its fakes score higher.
    real, fake = torch.tensor([[-0.5, 0.0]]), torch.tensor([[0.5, 0.2]])
    before = discriminator_adversarial_loss(real, fake, kind)
    assert discriminator_adversarial_loss(real + 0.3, fake - 0.3, kind) < before
    assert generator_adversarial_loss(fake + 0.3, kind) < generator_adversarial_loss(fake, kind)


def test_unknown_adversarial_kind_is_rejected():
    with pytest.raises(ValueError, match="wasserstein"):
        generator_adversarial_loss(FAKE, "wasserstein")


# ------------------------------------------------------------------------- simple hand values
def test_perceptual_latent_and_identity_losses_hand_checked():
    a = [torch.zeros(2, 4, 3, 3), torch.zeros(2, 8, 1, 1)]
    b = [torch.full((2, 4, 3, 3), 0.5), torch.full((2, 8, 1, 1), 2.0)]
    assert perceptual_loss(a, b).item() == pytest.approx(0.5 + 2.0)  # mean L1 per layer, summed
    z = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    assert latent_reconstruction_loss(z, torch.zeros(2, 2)).item() == pytest.approx(1.0)
    x = torch.zeros(2, 1, 4, 4)
    l1 = make_image_distance("l1")
    assert identity_reconstruction_loss(x, x, l1).item() == 0
    assert identity_reconstruction_loss(x, x + 0.25, l1).item() == pytest.approx(0.25)


def test_style_diversity_is_negated_and_rewards_different_images():
    l1 = make_image_distance("l1")
    img = torch.zeros(2, 1, 4, 4)
    z1, z2 = torch.zeros(2, 3), torch.full((2, 3), 2.0)
    # d_I = 0.5, d_z = mean |z1 - z2| = 2 -> ratio 0.25, returned as -0.25 (minimising maximises it)
    assert style_diversity_loss(img, img + 0.5, z1, z2, l1, "l1").item() == pytest.approx(-0.25)
    assert style_diversity_loss(img, img + 0.5, z1, z2, l1, "const").item() == pytest.approx(-0.5)
    for d_z in ("const", "l1"):
        same = style_diversity_loss(img, img, z1, z2, l1, d_z)
        near = style_diversity_loss(img, img + 0.1, z1, z2, l1, d_z)
        far = style_diversity_loss(img, img + 0.9, z1, z2, l1, d_z)
        assert far < near < same == 0
    with pytest.raises(ValueError, match="latent distance"):
        style_diversity_loss(img, img, z1, z2, l1, "l2")


def test_attribute_preservation_skips_unknown_labels():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[0.0, float("nan")], [3.0, 6.0]])
    loss = attribute_preservation_loss(pred, target)
    assert loss.item() == pytest.approx((1 + 0 + 2) / 3)
    loss.backward()
    assert pred.grad[0, 1] == 0 and pred.grad[0, 0] != 0
    none_known = attribute_preservation_loss(pred, torch.full((2, 2), float("nan")))
    assert none_known.item() == 0 and none_known.requires_grad


def test_kl_to_standard_normal_is_the_closed_form_of_torch_distributions():
    mu = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.0, 0.1]])
    logvar = torch.tensor([[0.0, -2.0, 1.0], [0.3, 0.0, -0.5]])
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p).sum(1).mean()  # summed over dims, mean over batch
    assert kl_to_standard_normal(mu, logvar).item() == pytest.approx(expected.item(), rel=1e-6)
    assert kl_to_standard_normal(torch.zeros(4, 8), torch.zeros(4, 8)).item() == 0  # the prior itself
    # a point-like posterior (the thesis's deterministic E, logvar -> -inf) is expensive
    assert kl_to_standard_normal(torch.zeros(1, 8), torch.full((1, 8), -10.0)).item() > 30


# ------------------------------------------------------------------------------------- R1
def test_r1_is_positive_for_a_real_discriminator_and_zero_for_a_constant_one():
    d = init_weights(PatchDiscriminator(width=0.125), "xavier")
    src = torch.rand(2, 3, 32, 32) * 2 - 1
    real = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_(True)
    r1 = r1_penalty(d(src, real), real)
    assert r1.item() > 0 and r1.requires_grad
    r1.backward()  # second-order gradients reach D's weights
    assert d.blocks[0][0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        d.head.weight.zero_()  # the logits are now the head's bias alone: a constant D
    real = real.detach().requires_grad_(True)
    assert r1_penalty(d(src, real), real).item() == 0


# ---------------------------------------------------------------------------- image distances
def test_image_distances_are_per_sample_and_zero_on_identical_images():
    d_net = init_weights(PatchDiscriminator(width=0.125), "xavier")
    src = torch.rand(3, 3, 32, 32) * 2 - 1
    a, b = torch.rand(3, 1, 32, 32) * 2 - 1, torch.rand(3, 1, 32, 32) * 2 - 1
    for d in (make_image_distance("l1"), make_image_distance("discriminator", discriminator=d_net, source=src)):
        assert d(a, b).shape == (3,) and (d(a, b) > 0).all() and d(a, a).abs().max() < 1e-6
    all_layers = make_image_distance("discriminator", discriminator=d_net, source=src)(a, b)
    last_two = make_image_distance("discriminator", discriminator=d_net, source=src, layers=(4, 5))(a, b)
    assert (last_two < all_layers).all()
    with pytest.raises(ValueError, match="source"):
        make_image_distance("discriminator", discriminator=d_net)
    with pytest.raises(ValueError, match="VGG19Features"):
        make_image_distance("vgg19")
    with pytest.raises(ValueError, match="IdentityNet"):
        make_image_distance("identity")
    with pytest.raises(ValueError, match="out of range"):
        select_features([a, b], (3,))


# ------------------------------------------------------------------------ gradients reach G
def _tiny():
    g = init_weights(EncoderDecoderGenerator(latent_dim=8, width=0.125), "xavier")
    d = init_weights(PatchDiscriminator(width=0.125), "xavier").requires_grad_(False)
    e = init_weights(LatentEncoder(latent_dim=8, width=0.125), "xavier")
    return g, d, e


def _grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.abs().sum() for p in module.parameters() if p.grad is not None]
    assert grads, "no parameter received a gradient"
    total = float(sum(grads))
    assert math.isfinite(total)
    return total


@pytest.mark.parametrize(
    "loss_name",
    ["adv_original", "adv_least_squares", "adv_hinge", "perceptual_discriminator", "latent_reconstruction",
     "style_diversity_l1", "style_diversity_discriminator", "identity_reconstruction", "attribute_preservation",
     "identity_reconstruction_kl"],
)
def test_every_generator_loss_sends_gradient_to_the_generator(loss_name):
    g, d, e = _tiny()
    src, x = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 1, 64, 64) * 2 - 1
    z1, z2 = torch.randn(2, 8), torch.randn(2, 8)
    fake = g(src, z1)
    d_dist = make_image_distance("discriminator", discriminator=d, source=src)
    if loss_name.startswith("adv_"):
        loss = generator_adversarial_loss(d(src, fake), loss_name[4:])
    elif loss_name == "perceptual_discriminator":
        _, ff = d(src, fake, return_features=True)
        _, rf = d(src, x, return_features=True)
        loss = perceptual_loss(select_features(ff, (4, 5)), [f.detach() for f in select_features(rf, (4, 5))])
    elif loss_name == "latent_reconstruction":
        loss = latent_reconstruction_loss(z1, e(fake))
    elif loss_name.startswith("style_diversity"):
        dist = make_image_distance("l1") if loss_name.endswith("l1") else d_dist
        loss = style_diversity_loss(fake, g(src, z2), z1, z2, dist, "l1")
    elif loss_name == "identity_reconstruction":
        loss = identity_reconstruction_loss(x, g(src, e(x)), make_image_distance("l1"))
    elif loss_name == "identity_reconstruction_kl":
        e = LatentEncoder(latent_dim=8, width=0.125, variational=True)
        mu, logvar = e(x, posterior=True)
        code = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        loss = identity_reconstruction_loss(x, g(src, code), make_image_distance("l1")) + kl_to_standard_normal(
            mu, logvar)
    else:
        pred = fake.mean(dim=(2, 3)).repeat(1, 5) * 30  # a stand-in "estimator": any function of G's output
        loss = attribute_preservation_loss(pred, torch.randn(2, 5) * 10)
    loss.backward()
    assert torch.isfinite(loss)
    assert _grad_norm(g) > 0
    assert all(p.grad is None for p in d.parameters())  # frozen networks stay untouched
    if loss_name in ("latent_reconstruction", "identity_reconstruction", "identity_reconstruction_kl"):
        assert _grad_norm(e) > 0


@pytest.mark.parametrize("kl", [0.0, 0.5], ids=["ir", "ir_kl"])
def test_the_generator_step_draws_its_images_in_one_call_with_unchanged_losses(kl):
    """compute_g_loss asks the generator once for the sample, the style-diversity draw and the
    identity reconstruction (they share the sources, so the multinorm's SPADE maps are computed
    once): every loss part equals, bit for bit, what one generator call per image gives."""
    import copy

    from torch import nn

    from nirgan.config import TrainConfig
    from nirgan.models.networks import build_networks
    from nirgan.training.core import Batch, StepNets, compute_g_loss

    class OneCallPerImage(nn.Module):
        def __init__(self, generator: nn.Module):
            super().__init__()
            self.generator = generator

        def forward(self, source, style, labels=None):
            if isinstance(style, tuple):
                return tuple(self.generator(source, s, labels) for s in style)
            return self.generator(source, style, labels)

    tc = TrainConfig(generator="multinorm", width=0.125, latent_dim=8, lambda_sd=1.0, lambda_ir=10.0, lambda_kl=kl,
                     perceptual="discriminator")
    torch.manual_seed(0)
    nets = build_networks(tc)
    batch = Batch(source=torch.rand(2, 3, 64, 64) * 2 - 1, target=torch.rand(2, 1, 64, 64) * 2 - 1)
    z1, z2, z_ir = torch.randn(2, 8), torch.randn(2, 8), torch.randn(2, 8)
    calls: list[int] = []
    reference = OneCallPerImage(copy.deepcopy(nets.generator))
    nets.generator.register_forward_hook(lambda *_: calls.append(1))

    _, parts = compute_g_loss(StepNets(nets.generator, nets.discriminator, nets.encoder), batch, z1, z2, tc, z_ir)
    _, expected = compute_g_loss(StepNets(reference, nets.discriminator, nets.encoder), batch, z1, z2, tc, z_ir)

    assert len(calls) == 1
    assert {"g_adv", "g_p", "g_lr", "g_sd", "g_ir"} <= set(parts) and ("g_kl" in parts) == (kl > 0)
    assert parts.keys() == expected.keys()
    assert all(torch.equal(parts[k], expected[k]) for k in parts), {k: (parts[k], expected[k]) for k in parts}
