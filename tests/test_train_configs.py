"""Every configuration of the thesis's Tables 4.2-4.8 trains from params alone.

Each case builds the full training session for its params (networks, auxiliary networks,
optimisers) on a tiny prepared dataset, runs three real iterations of Algorithm 2 on CPU,
and checks that the losses are finite, that exactly the expected networks exist, and that
each configured loss term is actually computed. The table each case comes from is in its id.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from train_helpers import make_dataset, small_config

from nirgan.models.vgg19 import MissingWeightsError
from nirgan.training.data import load_data
from nirgan.training.resume import check_config
from nirgan.training.session import TrainSession

G, D, E, L = "generator", "discriminator", "encoder", "mapping"

# (id, train params, expected networks, expected generator loss parts beyond g_adv/g_total)
CASES = [
    ("4.2-ED-LS", dict(lambda_lr=0), {G, D}, set()),
    ("4.2-Mult-LS", dict(generator="multinorm", lambda_lr=0), {G, D}, set()),
    ("4.3-ED-O", dict(adversarial_loss="original", lambda_lr=0), {G, D}, set()),
    ("4.3-ED-H", dict(adversarial_loss="hinge", lambda_lr=0), {G, D}, set()),
    ("4.4-ED-LS-PD", dict(lambda_lr=0, perceptual="discriminator", perceptual_layers=(4, 5)), {G, D}, {"g_p"}),
    ("4.5-ED-LS-LR-2", dict(), {G, D, E}, {"g_lr"}),
    ("4.6-ED-LS-SD-l1-const", dict(lambda_lr=0, lambda_sd=1, sd_image_distance="l1", sd_latent_distance="const"),
     {G, D}, {"g_sd"}),
    ("4.6-ED-LS-SD-disc-l1", dict(lambda_lr=0, lambda_sd=1, sd_image_distance="discriminator",
                                  sd_latent_distance="l1"), {G, D}, {"g_sd"}),
    ("4.7-ED-LS-LR-2-IR-l1", dict(lambda_ir=1, ir_distance="l1"), {G, D, E}, {"g_lr", "g_ir"}),
    ("4.7-ED-LS-IR-identity", dict(lambda_lr=0, lambda_ir=1, ir_distance="identity"), {G, D, E}, {"g_ir"}),
    # BicycleGAN's KL on E's posterior (not in the thesis), on the thesis's LR + IR configuration
    ("Mult-LS-LR-IR-KL", dict(generator="multinorm", lambda_ir=1, lambda_kl=0.01), {G, D, E},
     {"g_lr", "g_ir", "g_kl"}),
    ("4.8-ED-LS-LR-2-SM", dict(style_mapping=True), {G, D, E, L}, {"g_lr"}),
    ("5.2-R1-attr-labels", dict(r1_gamma=1.0, lambda_attr=0.1, condition_on_labels=True), {G, D, E},
     {"g_lr", "g_attr"}),
    # D's view of its pairs augmented (DiffAugment), with R1 through the transforms, and with D's
    # features as the perceptual distance (read from the pair as it is, not D's view)
    ("DiffAugment-R1", dict(d_augment=["brightness", "contrast", "translation", "cutout"], r1_gamma=1.0),
     {G, D, E}, {"g_lr"}),
    ("DiffAugment-PD", dict(lambda_lr=0, perceptual="discriminator", perceptual_layers=(4, 5),
                            d_augment=["translation", "cutout"]), {G, D}, {"g_p"}),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    prepared, split = make_dataset(tmp_path_factory.mktemp("train_configs"))
    return load_data(prepared, split, torch.device("cpu"), sample_count=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _weights(session: TrainSession) -> dict[str, list[torch.Tensor]]:
    return {name: [p.detach().clone() for p in m.parameters()] for name, m in session.raw.items()}


def _train_a_few(cfg, data, tmp_path: Path, steps: int = 3) -> tuple[TrainSession, list[dict[str, float]], dict]:
    check_config(cfg, world_size=1)
    session = TrainSession(cfg, data, torch.device("cpu"), aux_dir=tmp_path)
    before = _weights(session)
    history = []
    for _ in range(steps):
        parts = session.train_step()
        history.append({k: float(v) for k, v in parts.items()})
    return session, history, before


@pytest.mark.parametrize("case_id,params,nets,g_parts", CASES, ids=[c[0] for c in CASES])
def test_thesis_configuration_trains(case_id, params, nets, g_parts, data, tmp_path):
    cfg = small_config(**params)
    session, history, before = _train_a_few(cfg, data, tmp_path)
    assert set(session.raw) == nets
    for parts in history:
        assert all(math.isfinite(v) for v in parts.values()), parts
        assert {k for k in parts if k.startswith("g_")} == {"g_adv", "g_total"} | g_parts
    if cfg.train.r1_gamma > 0:
        assert "d_r1" in history[-1]
    if "identity" in (cfg.train.ir_distance if cfg.train.lambda_ir else "", cfg.train.sd_image_distance
                      if cfg.train.lambda_sd else ""):
        assert (tmp_path / "identity_net.pt").exists() and session.aux.identity is not None
    if cfg.train.lambda_attr:
        assert (tmp_path / "pose_estimator.pt").exists()
    # The weights moved: a real optimisation step happened for every trained network.
    assert session.step == 3
    after = _weights(session)
    for name, initial in before.items():
        changed = [not torch.equal(a, b) for a, b in zip(initial, after[name], strict=True)]
        assert any(changed), f"{case_id}: no weight of the {name} changed in 3 steps"
    grid = session.sample_grid()
    assert grid.shape == (2 * 64, (2 + 2) * 64, 3)


def _write_fake_vgg19_weights(torch_home: Path) -> Path:
    """A VGG-19 state dict with the right names and shapes where torchvision's cache expects it.

    Not ImageNet weights (none can be downloaded here), but loaded through exactly the standard
    torchvision path. Each tensor is a broadcast view of a small one, so the file stays tiny.
    """
    import torchvision

    from nirgan.models.vgg19 import vgg19_weights_path

    gen = torch.Generator().manual_seed(0)
    state = {}
    with torch.device("meta"):  # names and shapes only; no 140M-parameter init
        shapes = torchvision.models.vgg19().state_dict()
    for k, v in shapes.items():
        if v.dim() == 4:
            small = torch.randn(v.shape[0], 1, *v.shape[2:], generator=gen) * (2.0 / (v.shape[1] * 9)) ** 0.5
            state[k] = small.expand(v.shape)
        else:
            state[k] = torch.zeros(1).expand(v.shape)
    path = vgg19_weights_path()
    assert str(path).startswith(str(torch_home))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_vgg19_perceptual_with_cached_weights(data, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    _write_fake_vgg19_weights(tmp_path / "torch_home")
    cfg = small_config(lambda_lr=0, perceptual="vgg19", lambda_sd=1, sd_image_distance="vgg19")
    session, history, _ = _train_a_few(cfg, data, tmp_path, steps=2)
    assert set(session.raw) == {G, D} and session.aux.vgg is not None
    assert all(math.isfinite(v) for v in history[-1].values())
    assert {"g_p", "g_sd"} <= set(history[-1])


def test_vgg19_without_weights_fails_before_training(tmp_path, monkeypatch):
    from nirgan.stages import train as train_stage

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    prepared, split = make_dataset(tmp_path / "d")
    cfg = small_config(perceptual="vgg19")
    with pytest.raises(MissingWeightsError, match="VGG-19 ImageNet weights not found"):
        train_stage.run(cfg, prepared, split, tmp_path / "models", tmp_path / "metrics" / "train.json")
    assert not (tmp_path / "models").exists()
