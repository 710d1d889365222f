"""The networks against their thesis tables (3.3-3.7), width scaling, conditioning, build and load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nirgan.config import TrainConfig
from nirgan.losses import make_image_distance, perceptual_loss
from nirgan.models.encoder_decoder import EncoderDecoderGenerator
from nirgan.models.identity_net import IdentityNet
from nirgan.models.latent_encoder import LatentEncoder
from nirgan.models.layers import init_weights
from nirgan.models.multinorm import MultinormGenerator
from nirgan.models.networks import build_networks
from nirgan.models.patch_discriminator import PatchDiscriminator
from nirgan.models.style_mapping import StyleMappingNetwork
from nirgan.models.vgg19 import MissingWeightsError, VGG19Features, require_vgg19_weights
from nirgan.models.artifacts import load_encoder, load_generator, save_encoder, save_generator
from nirgan.models.vgg19 import vgg19_weights_path
from nirgan.training.identity import train_identity_net

GENERATORS = [EncoderDecoderGenerator, MultinormGenerator]


@pytest.fixture(autouse=True)
def _seed_and_one_thread(one_torch_thread):
    torch.manual_seed(0)


def _images(b: int, size: int = 128, channels: int = 3) -> torch.Tensor:
    return torch.rand(b, channels, size, size) * 2 - 1


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------- thesis table shapes
def test_patch_discriminator_matches_table_3_3():
    d = init_weights(PatchDiscriminator(), "xavier")
    logits, feats = d(_images(1), _images(1, channels=1), return_features=True)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (32, 65, 65), (64, 33, 33), (128, 17, 17), (256, 9, 9), (512, 10, 10)
    ]
    assert logits.shape == (1, 1, 11, 11)
    assert d(_images(1), _images(1, channels=1)).shape == (1, 1, 11, 11)


def _block_shapes(blocks) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    for block in blocks:
        block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    return shapes


DECODER_SHAPES = [(256, 8, 8), (128, 16, 16), (64, 32, 32), (32, 64, 64), (16, 128, 128)]


def test_encoder_decoder_matches_table_3_4():
    g = init_weights(EncoderDecoderGenerator(), "xavier")
    shapes = _block_shapes(list(g.encoder) + list(g.decoder))
    out = g(_images(2), torch.randn(2, 512))
    assert g.stem.out_channels == 16
    assert shapes == [(32, 64, 64), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256, 4, 4)] + DECODER_SHAPES
    assert out.shape == (2, 1, 128, 128)
    assert out.min() >= -1 and out.max() <= 1 and out.std() > 0


def test_multinorm_matches_table_3_5():
    g = init_weights(MultinormGenerator(), "xavier")
    shapes = _block_shapes(g.decoder)
    out = g(_images(2), torch.randn(2, 512))
    assert tuple(g.constant.shape) == (1, 256, 4, 4)
    assert shapes == DECODER_SHAPES
    assert out.shape == (2, 1, 128, 128)
    assert out.min() >= -1 and out.max() <= 1 and out.std() > 0


def test_latent_encoder_matches_table_3_6():
    e = init_weights(LatentEncoder(), "xavier")
    shapes = _block_shapes(e.blocks)
    z = e(_images(2, channels=1))
    assert z.shape == (2, 512)
    assert shapes == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4), (512, 2, 2)]
    assert LatentEncoder(latent_dim=64)(_images(1, channels=1)).shape == (1, 64)
    with pytest.raises(ValueError, match="not variational"):
        e(_images(1, channels=1), posterior=True)


def test_variational_latent_encoder_returns_its_posterior_mean_by_default(tmp_path):
    e = init_weights(LatentEncoder(latent_dim=16, width=0.125, variational=True), "xavier").eval()
    x = _images(2, channels=1)
    mu, logvar = e(x, posterior=True)
    assert mu.shape == logvar.shape == (2, 16) and not torch.equal(mu, logvar)
    assert torch.equal(e(x), mu)  # LR, identity figures and inversion read the point estimate
    save_encoder(tmp_path / "encoder.pt", e)
    loaded, where = load_encoder(tmp_path / "encoder.pt")
    assert loaded.variational and where == str(tmp_path / "encoder.pt")
    with torch.no_grad():
        assert torch.equal(loaded(x, posterior=True)[1], logvar)
    assert build_networks(TrainConfig(lambda_ir=1, lambda_kl=0.01, width=0.125, latent_dim=16)).encoder.variational


def test_style_mapping_matches_table_3_7():
    m = StyleMappingNetwork()
    linears = [x for x in m.modules() if isinstance(x, nn.Linear)]
    relus = [x for x in m.modules() if isinstance(x, nn.ReLU)]
    assert len(linears) == 8 and all(x.out_features == 512 for x in linears)
    assert len(relus) == 7 and isinstance(list(m.net)[-1], nn.Linear)  # no ReLU after the last layer
    s = m(torch.randn(3, 512))
    assert s.shape == (3, 512) and (s < 0).any()


# ------------------------------------------------------------------------------ width, labels
def test_width_scales_every_table_channel_with_a_floor_of_8():
    d = PatchDiscriminator(width=0.5)
    _, feats = d(_images(1, 64), _images(1, 64, 1), return_features=True)
    assert [f.shape[1] for f in feats] == [16, 32, 64, 128, 256]
    d_thin = PatchDiscriminator(width=0.1)
    _, feats = d_thin(_images(1, 64), _images(1, 64, 1), return_features=True)
    assert [f.shape[1] for f in feats] == [8, 8, 13, 26, 51]
    with torch.device("meta"):  # shapes only: no memory, no init
        for cls in (EncoderDecoderGenerator, MultinormGenerator, PatchDiscriminator, LatentEncoder):
            assert _n_params(cls(width=0.5)) < 0.4 * _n_params(cls())
    assert EncoderDecoderGenerator(width=0.5).decoder[-1].conv2.out_channels == 8
    assert LatentEncoder(width=0.5)(_images(1, 64, 1)).shape == (1, 512)  # head keeps latent_dim


@pytest.mark.parametrize("cls", GENERATORS, ids=["encoder_decoder", "multinorm"])
def test_label_conditioning(cls):
    g = cls(latent_dim=32, width=0.125, label_dim=5).eval()
    src, z = _images(2, 64), torch.randn(2, 32)
    labels = torch.randn(2, 5)
    out = g(src, z, labels)
    assert out.shape == (2, 1, 64, 64)
    assert not torch.allclose(out, g(src, z, labels + 1.0))  # the labels reach the image
    with pytest.raises(ValueError, match="5 labels"):
        g(src, z)
    d = PatchDiscriminator(width=0.125, label_dim=5)
    assert d.blocks[0][0].in_channels == 3 + 1 + 5
    logits = d(src, out, labels)
    assert logits.shape == (2, 1, 7, 7)
    assert not torch.allclose(logits, d(src, out, -labels))
    with pytest.raises(ValueError, match="labels"):
        d(src, out)


@pytest.mark.parametrize("cls", GENERATORS, ids=["encoder_decoder", "multinorm"])
def test_style_changes_the_image_and_source_too(cls):
    g = init_weights(cls(latent_dim=32, width=0.125), "xavier").eval()
    src = _images(1, 64)
    a, b = g(src, torch.randn(1, 32)), g(src, torch.randn(1, 32))
    assert (a - b).abs().mean() > 1e-3
    z = torch.randn(1, 32)
    assert (g(src, z) - g(_images(1, 64), z)).abs().mean() > 1e-3


@pytest.mark.parametrize("cls", GENERATORS, ids=["encoder_decoder", "multinorm"])
def test_a_tuple_of_styles_draws_what_separate_calls_draw(cls, monkeypatch):
    """The training step asks for the sample and the identity reconstruction in one call. In train
    mode (batch statistics, running statistics updated) the images and the buffers are bit for
    bit those of one call per style, the gradients the same up to summation order; the multinorm
    computes each SPADE layer's maps once for both styles."""
    import copy

    from nirgan.models.layers import SPADE

    g = init_weights(cls(latent_dim=16, width=0.125, label_dim=2), "xavier").train()
    separate = copy.deepcopy(g)
    src, labels = _images(3, 64), torch.randn(3, 2)
    styles = (torch.randn(3, 16), torch.randn(3, 16))
    computed = []
    modulation = SPADE.modulation
    monkeypatch.setattr(SPADE, "modulation", lambda self, *a: computed.append(self) or modulation(self, *a))

    together = g(src, styles, labels)
    n_spade = len(computed)
    apart = tuple(separate(src, s, labels) for s in styles)

    assert isinstance(together, tuple) and len(together) == 2
    assert all(torch.equal(a, b) for a, b in zip(together, apart))
    assert all(torch.equal(a, b) for a, b in zip(g.buffers(), separate.buffers()))
    spades = [m for m in g.modules() if isinstance(m, SPADE)]
    assert n_spade == len(spades) and len(computed) == n_spade + 2 * len(spades)  # once, against once per style
    sum(x.square().mean() for x in together).backward()
    sum(x.square().mean() for x in apart).backward()
    # some gradients are zero but for rounding (a bias that a later instance norm removes): the
    # tolerance is on the scale of the network's largest gradient
    scale = max(float(q.grad.abs().max()) for q in separate.parameters())
    for (name, p), q in zip(g.named_parameters(), separate.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-5 * scale), name


def test_init_weights_schemes():
    net = EncoderDecoderGenerator(latent_dim=16, width=0.125)
    init_weights(net, "xavier")
    conv = net.encoder[0].conv1
    fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.8 * bound
    assert torch.count_nonzero(conv.bias) == 0
    init_weights(net, "kaiming")
    assert conv.weight.abs().max() > bound  # He's normal is wider than Glorot's uniform here
    with pytest.raises(ValueError, match="init scheme"):
        init_weights(net, "orthogonal")


# --------------------------------------------------------------------------- build and load
def test_build_networks_builds_only_what_the_config_uses():
    small = dict(width=0.125, latent_dim=16)
    nets = build_networks(TrainConfig(**small))  # ED-LS-LR-2: lambda_lr = 2 -> E, no L
    assert isinstance(nets.generator, EncoderDecoderGenerator) and isinstance(nets.discriminator, PatchDiscriminator)
    assert isinstance(nets.encoder, LatentEncoder) and nets.mapping is None and nets.label_dim == 0
    assert build_networks(TrainConfig(lambda_lr=0, **small)).encoder is None
    assert build_networks(TrainConfig(lambda_lr=0, lambda_ir=1, **small)).encoder is not None
    nets = build_networks(TrainConfig(generator="multinorm", style_mapping=True, lambda_lr=0, **small))
    assert isinstance(nets.generator, MultinormGenerator) and nets.encoder is None
    assert isinstance(nets.mapping, StyleMappingNetwork) and nets.mapping.style_dim == 16
    nets = build_networks(TrainConfig(condition_on_labels=True, **small))
    assert nets.label_dim == 5 and nets.generator.label_dim == 5 and nets.discriminator.label_dim == 5


@pytest.mark.parametrize("generator", ["encoder_decoder", "multinorm"])
def test_load_generator_round_trip(tmp_path, generator):
    cfg = TrainConfig(generator=generator, width=0.125, latent_dim=16, condition_on_labels=True)
    nets = build_networks(cfg)
    g = nets.generator.eval()
    path = tmp_path / "models" / "generator.pt"
    save_generator(path, g, cfg, nets.label_dim)
    loaded = load_generator(path)
    assert type(loaded) is type(g) and not loaded.training and loaded.train_config == cfg
    src, z, labels = _images(2, 64), torch.randn(2, 16), torch.randn(2, 5)
    with torch.no_grad():
        assert torch.equal(loaded(src, z, labels), g(src, z, labels))
    # The trainer may write the dict itself; the same plain format must load.
    torch.save({"state_dict": g.state_dict(), "train_config": cfg.model_dump(mode="json"), "label_dim": 5},
               tmp_path / "plain.pt")
    plain = load_generator(tmp_path / "plain.pt").state_dict()
    assert all(torch.equal(v, plain[k]) for k, v in g.state_dict().items())
    torch.save({"weights": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        load_generator(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_generator(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------------ VGG-19
@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds a (randomly initialised) vgg19 file under the real name."""
    from torchvision.models import vgg19

    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        path = vgg19_weights_path()
        path.parent.mkdir(parents=True)
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in vgg19().state_dict().items()}
        # Random conv weights; the never-used classifier as broadcast zeros, which torch.save
        # stores as one element each (the real file's 500 MB of it would only slow the test).
        state = {k: torch.randn(s) * 0.05 if k.startswith("features") else torch.zeros(1).expand(s)
                 for k, s in shapes.items()}
        torch.save(state, path)
        yield path, state


def test_vgg19_loads_the_cached_file_through_the_standard_path(vgg_weights, monkeypatch):
    path, state = vgg_weights
    monkeypatch.setenv("TORCH_HOME", str(path.parents[2]))
    assert path.name == "vgg19-dcbb9e9d.pth" and require_vgg19_weights() == path
    vgg = VGG19Features()
    assert vgg.weights_path == path
    assert torch.equal(vgg.slices[0][0].weight, state["features.0.weight"])
    assert torch.equal(vgg.slices[4][-2].weight, state["features.28.weight"])  # conv5_1, before relu5_1
    assert not any(p.requires_grad for p in vgg.parameters())
    img = (torch.rand(2, 1, 64, 64) * 2 - 1).requires_grad_(True)
    feats = vgg(img)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4)]
    assert all((f >= 0).all() for f in feats)  # each layer is a ReLU output (1, 6, 11, 20, 29)
    perceptual_loss(feats, [f.detach() * 0.5 for f in feats]).backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    nn.Sequential(vgg).train()
    assert not vgg.training  # stays a frozen metric network
    d = make_image_distance("vgg19", vgg=vgg)
    a, b = img.detach(), torch.rand(2, 1, 64, 64) * 2 - 1
    assert d(a, a).abs().max() == 0 and (d(a, b) > 0).all() and d(a, b).shape == (2,)


def test_vgg19_missing_weights_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    with pytest.raises(MissingWeightsError, match="vgg19-dcbb9e9d.pth") as err:
        require_vgg19_weights()
    assert str(expected.parent) in str(err.value)
    with pytest.raises(MissingWeightsError):
        VGG19Features()
    assert not expected.exists()  # nothing was downloaded


# ------------------------------------------------------------------------------ identity net
def test_identity_net_learns_subjects_and_embeds_on_the_unit_sphere():
    rng = np.random.default_rng(0)
    size, per = 32, 24
    yy, xx = np.mgrid[:size, :size]
    # Two "subjects" that differ in face shape: a wide and a tall bright ellipse.
    shapes = [((xx - 16) / 11) ** 2 + ((yy - 16) / 6) ** 2 < 1, ((xx - 16) / 6) ** 2 + ((yy - 16) / 11) ** 2 < 1]
    images = np.stack([np.clip(40 + 150 * shapes[i % 2] + rng.normal(0, 10, (size, size)), 0, 255)
                       for i in range(2 * per)]).astype(np.uint8)
    subjects = np.array(["s_a", "s_b"] * per)
    net = train_identity_net(images, subjects, epochs=8, device="cpu", seed=3, batch_size=16, lr=3e-3)
    assert isinstance(net, IdentityNet) and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    x = torch.as_tensor(images[:8]).unsqueeze(1).float() / 127.5 - 1
    logits, emb = net(x), net.embed(x)
    assert logits.shape == (8, 2) and emb.shape == (8, 128)
    assert torch.allclose(emb.norm(dim=1), torch.ones(8), atol=1e-5)
    assert (logits.argmax(1).numpy() == np.arange(8) % 2).mean() >= 0.75
    d = make_image_distance("identity", identity=net)
    same, other = d(x[0:1], x[2:3]), d(x[0:1], x[1:2])
    assert d(x, x).max() < 1e-5 and other.item() > same.item()
    again = train_identity_net(images, subjects, epochs=8, device="cpu", seed=3, batch_size=16, lr=3e-3)
    assert torch.equal(again.projection.weight, net.projection.weight)  # seeded: reproducible
    with pytest.raises(ValueError, match="2 subjects"):
        train_identity_net(images, ["s"] * len(images), epochs=1)


# --------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (1, 5, 8, 6), (3, 2, 1, 7)])
def test_resampling_rewrites_compute_the_torch_functions(shape):
    """The CUDA paths of upsample2x / downsample2x are other implementations of the same
    functions; they are checked here on the CPU, in both memory layouts."""
    from nirgan.models.layers import downsample2x_reshape, upsample2x_blend

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    for t in (x, x.to(memory_format=torch.channels_last)):
        up = F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)
        torch.testing.assert_close(upsample2x_blend(t), up)
    if shape[-1] % 2 == 0 and shape[-2] % 2 == 0:
        torch.testing.assert_close(downsample2x_reshape(x), F.avg_pool2d(x, 2))
        torch.testing.assert_close(downsample2x_reshape(x.to(memory_format=torch.channels_last)), F.avg_pool2d(x, 2))


@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_is_torchs_instance_norm_with_its_parameter_names(affine):
    """The networks' instance norm (a one-channel-per-group GroupNorm on the CPU, for its faster
    kernel) computes nn.InstanceNorm2d's function, forward and backward, in both memory layouts,
    and keeps its state_dict keys, so generators saved before it load unchanged."""
    from nirgan.models.layers import InstanceNorm

    ours, torchs = InstanceNorm(6, affine), nn.InstanceNorm2d(6, affine=affine)
    assert list(ours.state_dict()) == list(torchs.state_dict())
    if affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.uniform_(-0.5, 0.5)
        torchs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, 9, 7, generator=torch.Generator().manual_seed(0)) * 4 + 2
    for t in (x, x.to(memory_format=torch.channels_last)):
        a, b = t.clone().requires_grad_(), t.clone().requires_grad_()
        grad = torch.randn_like(t)
        ya, yb = ours(a), torchs(b)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        ya.backward(grad)
        yb.backward(grad)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
        if affine:
            torch.testing.assert_close(ours.weight.grad, torchs.weight.grad, rtol=1e-4, atol=1e-4)
            ours.zero_grad()
            torchs.zero_grad()


def test_sampler_inference_draws_in_its_precision_and_keeps_a_callers_autocast():
    """evaluate draws its images through ``Sampler.inference``: channels_last in fp32 is the same
    picture (summation order only), bf16 runs only where it is native, and a sampler left in fp32
    does not switch off the bf16 autocast the generate stage wraps around it."""
    from nirgan.devices import native_bf16
    from nirgan.models.artifacts import untrained_sampler

    cfg = TrainConfig(generator="multinorm", width=0.25, latent_dim=8)
    sources = torch.rand(6, 3, 64, 64) * 2 - 1
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    labels = np.zeros((6, 5), np.float32)
    plain = untrained_sampler(cfg, 5).generate(sources, z, labels)
    fp32 = untrained_sampler(cfg, 5).inference("fp32", "cpu")
    conv = next(p for p in fp32.generator.parameters() if p.dim() == 4)
    assert not fp32.bf16 and conv.is_contiguous(memory_format=torch.channels_last)
    assert (fp32.generate(sources, z, labels) - plain).abs().max() < 1e-4
    bf16 = untrained_sampler(cfg, 5).inference("bf16", "cpu")
    assert bf16.bf16 == native_bf16(torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outer = fp32.generate(sources, z, labels)
    assert (outer - plain).abs().max() > 1e-4, "the caller's bf16 autocast was switched off"
    if bf16.bf16:
        assert torch.equal(bf16.generate(sources, z, labels), outer)


@pytest.mark.parametrize("generator,mapping", [("multinorm", False), ("multinorm", True), ("encoder_decoder", False)])
def test_sampler_draws_a_tuple_of_latents_as_separate_calls_would(generator, mapping):
    """evaluate's TSTR draws every seed's latents over the same sources in one call (the multinorm
    computes its SPADE maps once per batch): each image set is bit for bit its own call's, with
    labels, a style mapping and a batch size that splits the sources unevenly."""
    from nirgan.models.artifacts import untrained_sampler

    cfg = TrainConfig(generator=generator, width=0.25, latent_dim=8, style_mapping=mapping)
    sampler = untrained_sampler(cfg, 5).inference("fp32", "cpu")
    sources = torch.rand(7, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = np.random.default_rng(0).uniform(-20, 20, (7, 5)).astype(np.float32)
    zs = tuple(torch.randn(7, 8, generator=torch.Generator().manual_seed(s)) for s in range(3))
    together = sampler.generate(sources, zs, labels, batch_size=3)
    assert isinstance(together, tuple) and len(together) == 3
    for z, images in zip(zs, together, strict=True):
        assert torch.equal(images, sampler.generate(sources, z, labels, batch_size=3))
