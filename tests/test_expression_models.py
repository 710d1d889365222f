"""The expression models (issue 13): network shapes, losses, exact resume after kill -9, and a short
StarGAN run that must learn to translate (rated by a classifier trained on real faces only).

Data: synthetic grey faces (tests/expression_helpers.py): a subject's face brightness and width,
and a bright mark whose place is the label; 32 px to keep the training tests in seconds. MLflow is a
temporary SQLite store; CPU, one intra-op thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from expression_helpers import synthetic_split
from train_helpers import assert_same_state, checkpointed_at_least, kill9_when

from nirgan.config import Config, ExpressionTrainConfig
from nirgan.expression.losses import (
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
from nirgan.expression.artifacts import load_expression_translator
from nirgan.expression.models.build import build_expression_networks
from nirgan.expression.models.classifier import ExpressionClassifier
from nirgan.expression.models.cgan_encoder import LatentEncoder
from nirgan.expression.models.stargan import build_stargan
from nirgan.expression.models.translator import ExpressionTranslator
from nirgan.training.checkpoint import Checkpoint
from nirgan.expression.trainer import MODEL_FILE, train_expression

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAMES5 = ["angry", "happy", "sad", "surprise", "neutral"]


def expr_config(**kw) -> Config:
    base = {"image_size": 32, "width": 0.25, "res_blocks": 1, "latent_dim": 16, "batch_size": 8, "steps": 6,
            "log_every": 2, "checkpoint_every": 2, "device": "cpu", "log_model": False, "sample_inputs": 3}
    return Config.model_validate({"task": "expression", "collect": {"source": "expression_twin"},
                                  "expression_train": {**base, **kw}})


# ------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("n_labels", [5, 8])
def test_network_shapes(size, n_labels):
    n = 2
    x = torch.rand(n, 1, size, size) * 2 - 1
    y = torch.arange(n) % n_labels
    for upsample in ("nearest", "bilinear", "transposed"):
        g, d = build_stargan(n_labels, size, conv_dim=32, width=0.25, res_blocks=1, d_layers=None, upsample=upsample)
        out = g(x, y)
        assert out.shape == (n, 1, size, size) and out.abs().max() <= 1
    src, cls = d(x)
    assert src.shape == (n, 1, 4, 4) and cls.shape == (n, n_labels)  # log2(S) - 2 layers: a 4x4 patch map

    z = torch.rand(n, 20) * 2 - 1
    for upsample in ("nearest", "bilinear"):
        cfg = ExpressionTrainConfig(model="cgan", image_size=size, width=0.125, latent_dim=20, upsample=upsample)
        out = build_expression_networks(cfg, n_labels).generator(z, y)
        assert out.shape == (n, 1, size, size) and out.abs().max() <= 1
    cfg = ExpressionTrainConfig(model="cgan_encoder", image_size=size, width=0.125, latent_dim=20)
    nets = build_expression_networks(cfg, n_labels)
    assert nets.generator(z, y).shape == (n, 1, size, size)
    assert nets.discriminator(x, y).shape == (n,)
    e = nets.encoder(x)
    assert isinstance(nets.encoder, LatentEncoder) and e.shape == (n, 20) and e.abs().max() <= 1
    assert ExpressionClassifier(n_labels, size)(x).shape == (n, n_labels)

    names = [f"l{i}" for i in range(n_labels)]
    for kind, gen, latent, enc in (("stargan", g, 0, None), ("cgan", nets.generator, 20, None),
                                   ("cgan_encoder", nets.generator, 20, nets.encoder)):
        t = ExpressionTranslator(kind, gen, names, size, latent, enc)
        images = np.random.default_rng(0).integers(0, 256, (3, size, size), dtype=np.uint8)
        got = t.translate(images, np.array([0, n_labels - 1, 1]))
        assert got.shape == (3, 1, size, size) and got.dtype == torch.float32 and got.abs().max() <= 1
        assert torch.equal(got, t.translate(torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1),
                                            np.array([0, n_labels - 1, 1])))
        with pytest.raises(ValueError, match=f"0..{n_labels - 1}"):
            t.translate(images, np.array([0, n_labels, 1]))


@pytest.mark.parametrize(("kernel", "stride_pad"), [(4, (2, 1, 0)), (5, (2, 2, 1))])  # StarGAN's, the cGAN's
def test_resize_conv_draws_no_checkerboard_where_a_transposed_conv_does(kernel, stride_pad):
    """Issue 25: on a constant map (a flat cheek) a stride-2 transposed conv gives the pixels of
    one parity other kernel taps than the others: a period-2 pattern no training removes for free.
    The resize-conv gives every interior pixel the same output."""
    from nirgan.expression.models.stargan import resize_conv

    torch.manual_seed(0)
    flat = torch.ones(1, 8, 8, 8)
    stride, pad, out_pad = stride_pad
    transposed = torch.nn.ConvTranspose2d(8, 4, kernel, stride=stride, padding=pad, output_padding=out_pad, bias=False)
    with torch.no_grad():
        t = transposed(flat)[:, :, 3:-3, 3:-3]
        assert t.shape[-1] == 10
        assert (t.amax((2, 3)) - t.amin((2, 3))).min() > 1e-3  # every channel is patterned
        for mode in ("nearest", "bilinear"):
            r = resize_conv(8, 4, 3, mode)(flat)[:, :, 3:-3, 3:-3]
            assert r.shape == t.shape
            assert (r.amax((2, 3)) - r.amin((2, 3))).max() < 1e-5, mode


def test_translator_contract_per_model():
    """cgan ignores the input (same z and label: same face for any input); stargan has no z to sample."""
    cfg = ExpressionTrainConfig(model="cgan", image_size=32, width=0.125, latent_dim=8)
    torch.manual_seed(0)
    nets = build_expression_networks(cfg, 3)
    t = ExpressionTranslator("cgan", nets.generator, ["a", "b", "c"], 32, 8)
    a = t.translate(np.zeros((2, 32, 32), np.uint8), np.array([1, 2]))
    b = t.translate(np.full((2, 32, 32), 255, np.uint8), np.array([1, 2]))
    assert torch.equal(a, b)
    assert t.sample(np.array([1, 2])).shape == (2, 1, 32, 32)
    g, _ = build_stargan(3, 32, 8, 1.0, 1, None)
    with pytest.raises(ValueError, match="no latent"):
        ExpressionTranslator("stargan", g, ["a", "b", "c"], 32).sample(np.array([0]))
    with pytest.raises(ValueError, match="at least 2 labels"):
        build_expression_networks(cfg, 1)


# ------------------------------------------------------------------------------ losses
def test_domain_classification_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    split = synthetic_split(NAMES5, size=32, per=2)
    x = torch.from_numpy(split.train_images[:40]).float().div(127.5).sub(1).unsqueeze(1)
    y = torch.from_numpy(split.train_labels[:40])
    _, d = build_stargan(5, 32, 8, 1.0, 1, None)
    opt = torch.optim.Adam(d.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = domain_classification_loss(d(x)[1], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(np.log(5), abs=0.15)  # an untrained head is near chance
    assert losses[-1] < 0.5 * losses[0], losses


def test_cycle_loss_is_zero_for_the_identity_generator_only():
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    c, c_org = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2])

    def identity(img, labels):
        return img

    def brighten(img, labels):
        return (img + 0.1 * (labels[:, None, None, None] + 1)).clamp(-1, 1)

    assert cycle_reconstruction_loss(x, identity(identity(x, c), c_org)) == 0
    assert cycle_reconstruction_loss(x, brighten(brighten(x, c), c_org)) > 0.05


def test_gradient_penalty_measures_the_critic_slope():
    x = torch.randn(5, 1, 4, 4, requires_grad=True)
    w = torch.randn(1, 1, 4, 4)
    for scale, want in ((1.0, 0.0), (2.0, 1.0), (3.0, 4.0)):
        unit = w / w.norm() * scale  # D(x) = <unit, x>: its gradient norm is `scale` everywhere
        assert float(gradient_penalty((x * unit).flatten(1).sum(1), x)) == pytest.approx(want, abs=1e-5)


def test_adversarial_losses_reward_the_right_side():
    hi, lo = torch.full((4, 1, 2, 2), 2.0), torch.full((4, 1, 2, 2), -2.0)
    for kind in ("wgan_gp", "least_squares"):
        assert star_d_adversarial(hi, lo, kind) < star_d_adversarial(lo, hi, kind)
        assert star_g_adversarial(hi, kind) < star_g_adversarial(lo, kind)
    with pytest.raises(ValueError, match="wgan_gp or least_squares"):
        star_d_adversarial(hi, lo, "hinge")
    assert cgan_d_loss(torch.full((4,), 5.0), torch.full((4,), -5.0)) < 0.02
    assert cgan_g_loss(torch.full((4,), 5.0)) < cgan_g_loss(torch.full((4,), -5.0))
    z = torch.rand(3, 8)
    assert latent_reconstruction_loss(z, z) == 0 and latent_reconstruction_loss(z, z + 0.5) == pytest.approx(0.25)
    assert image_reconstruction_loss(hi, hi) == 0 and image_reconstruction_loss(hi, lo) == pytest.approx(16.0)


# --------------------------------------------------------------------- resume after kill
_SLOW_RUN = """
import time
from pathlib import Path
from expression_helpers import synthetic_split
from nirgan.config import Config
from nirgan.expression import session as expression_session
from nirgan.expression.trainer import train_expression
step = expression_session.ExpressionSession.train_step
def slow_step(self):  # the test's only change: time for the parent to kill -9 between checkpoints
    time.sleep(0.3)
    return step(self)
expression_session.ExpressionSession.train_step = slow_step
cfg = Config.model_validate_json({cfg!r})
train_expression(cfg, synthetic_split({names!r}, size=32, per=2), Path({out!r}), Path({metrics!r}))
"""


def kill9_slow_run_when(cfg: Config, work: Path, metrics: Path, store: str, ready) -> Checkpoint:
    """Train ``cfg`` in a slowed child process (``_SLOW_RUN``) into ``work`` and SIGKILL it as
    soon as ``ready(checkpoint)`` holds; returns the checkpoint folder."""
    script = _SLOW_RUN.format(cfg=cfg.model_dump_json(), names=NAMES5,
                              out=str(work), metrics=str(metrics))
    # the child imports expression_helpers from this folder, as pytest does
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": store, "PYTHONPATH": path}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ckpt = Checkpoint(work / "checkpoints")
    kill9_when(proc, lambda: ready(ckpt), timeout_s=120)
    return ckpt


def _child_run(cfg: Config, work: Path, metrics: Path, store: str) -> None:
    """The same training as the killed child's, unslowed, in a fresh process of the same env."""
    script = _SLOW_RUN.format(cfg=cfg.model_dump_json(), names=NAMES5, out=str(work), metrics=str(metrics))
    script = script.replace("expression_session.ExpressionSession.train_step = slow_step", "")
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": store, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_kill9_then_resume_equals_uninterrupted(store, tmp_path):
    """StarGAN with WGAN-GP and 2 critic steps per G step (so the G cadence, the GP draws and the EMA
    are all in the state): 'k steps, kill -9, resume' gives bit-identical weights, EMA and Adam state.
    The reference and the resumed run are fresh processes like the killed one: in the test process,
    after the export tests had run there, the reference no longer matched bit for bit."""
    steps = 8
    cfg = expr_config(model="stargan", adversarial="wgan_gp", n_critic=2, steps=steps, checkpoint_every=1,
                      deterministic=True, ema_decay=0.5)
    _child_run(cfg, tmp_path / "ref", tmp_path / "ref.json", store)
    reference = Checkpoint(tmp_path / "ref" / "checkpoints").load()
    assert reference["step"] == steps

    work = tmp_path / "killed"
    ckpt = kill9_slow_run_when(cfg, work, tmp_path / "killed.json", store, lambda c: checkpointed_at_least(c, 3))
    killed_at = ckpt.load()["step"]
    assert 3 <= killed_at < steps, killed_at
    assert not (work / MODEL_FILE).exists()

    killed_run = ckpt.recorded_run()
    _child_run(cfg, work, tmp_path / "killed.json", store)
    result = json.loads((tmp_path / "killed.json").read_text())
    assert result["steps"] == steps and result["mlflow_run_id"] == killed_run  # resumed, not restarted
    assert_same_state(reference, ckpt.load())


def test_an_attempt_killed_before_its_first_checkpoint_does_not_leave_its_run_running(store, tmp_path):
    """The process dies (kill -9) after its MLflow run started but before any checkpoint: nothing
    is resumed, so the next attempt starts a new run and ends the dead one as KILLED."""
    from mlflow.tracking import MlflowClient

    cfg = expr_config(model="stargan", adversarial="least_squares", steps=6, checkpoint_every=1000)
    work = tmp_path / "models"
    ckpt = kill9_slow_run_when(cfg, work, tmp_path / "train.json", store, lambda c: c.recorded_run() is not None)
    dead = ckpt.recorded_run()
    assert dead is not None and ckpt.latest() is None
    client = MlflowClient(store)
    assert client.get_run(dead).info.status == "RUNNING"

    result = train_expression(cfg, synthetic_split(NAMES5, size=32, per=2), work, tmp_path / "train.json")
    assert result["steps_this_session"] == 6 and ckpt.recorded_run() not in (None, dead)
    assert client.get_run(dead).info.status == "KILLED"
    assert client.get_run(ckpt.recorded_run()).info.status == "FINISHED"


def test_cgan_encoder_resumes_across_its_phases_and_a_changed_config_starts_afresh(store, tmp_path):
    """The KTH run switches from the cGAN to E (G frozen) at step 6 of 8; a stop at 4 and a resume
    must land on the same weights; another lambda is a different run."""
    split = synthetic_split(NAMES5, size=32, per=2)
    cfg = expr_config(model="cgan_encoder", steps=8, encoder_fraction=0.25, checkpoint_every=2, deterministic=True)
    train_expression(cfg, split, tmp_path / "ref", tmp_path / "ref.json")
    stopped = expr_config(model="cgan_encoder", steps=8, encoder_fraction=0.25, checkpoint_every=2,
                          deterministic=True, max_steps=4)
    assert train_expression(stopped, split, tmp_path / "run", tmp_path / "run.json")["steps"] == 4
    assert train_expression(cfg, split, tmp_path / "run", tmp_path / "run.json")["steps_this_session"] == 4
    assert_same_state(Checkpoint(tmp_path / "ref" / "checkpoints").load(),
                      Checkpoint(tmp_path / "run" / "checkpoints").load())
    hist = Checkpoint(tmp_path / "run" / "checkpoints").load()["history"]
    assert "e_total" in hist[-1] and "g_total" in hist[0]  # both phases ran

    changed = expr_config(model="cgan_encoder", steps=8, encoder_fraction=0.25, checkpoint_every=2,
                          deterministic=True, lambda_image=2.0)
    assert train_expression(changed, split, tmp_path / "run", tmp_path / "run.json")["steps_this_session"] == 8
    t = load_expression_translator(tmp_path / "run" / MODEL_FILE)
    assert t.kind == "cgan_encoder" and t.names == NAMES5
    assert t.translate(split.test_images[:4], np.arange(4)).shape == (4, 1, 32, 32)


# --------------------------------------------------------------------- a run that learns
def test_short_stargan_run_translates_to_the_target_label(store, tmp_path):
    """A few hundred CPU steps of StarGAN on the synthetic faces: a classifier trained on real train
    faces only must rate the translations of unseen subjects' faces as their target label far above
    chance (0.2), and far above what the untrained generator gets. Also: the MLflow run is in the
    nirgan-expression experiment with its losses, and the model file loads as the translator."""
    from mlflow.tracking import MlflowClient

    from nirgan.expression.measures import accuracy, train_expression_classifier

    split = synthetic_split(NAMES5, size=32, per=3)
    classifier = train_expression_classifier(split.train_images, split.train_labels, 5, epochs=10, min_steps=150)
    real_acc = accuracy(classifier, split.test_images, split.test_labels)
    assert real_acc >= 0.9, real_acc

    cfg = expr_config(model="stargan", adversarial="least_squares", width=0.5, res_blocks=2, steps=250,
                      log_every=50, checkpoint_every=250, lr_decay_fraction=0.0, batch_size=16, log_model=True)
    train_expression(cfg, split, tmp_path / "models", tmp_path / "metrics" / "train_expression.json")
    n = len(split.test_labels)
    targets = (split.test_labels + 1 + np.arange(n) % 4) % 5  # every other label, never the input's
    trained = load_expression_translator(tmp_path / "models" / MODEL_FILE)
    acc = accuracy(classifier, trained.translate(split.test_images, targets), targets)

    torch.manual_seed(cfg.expression_train.seed)
    untrained = ExpressionTranslator("stargan", build_expression_networks(cfg.expression_train, 5).generator,
                                     NAMES5, 32)
    base = accuracy(classifier, untrained.translate(split.test_images, targets), targets)
    assert acc >= 0.7 and acc >= base + 0.4, (acc, base, real_acc)

    client = MlflowClient(store)
    run = client.get_run(json.loads((tmp_path / "models" / "mlflow_run.json").read_text())["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "nirgan-expression"
    assert run.info.status == "FINISHED" and "g_cls" in run.data.metrics and "d_cls_acc" in run.data.metrics
    assert run.data.tags["model_format"] in ("pt2", "pickle")
    assert (tmp_path / "metrics" / "train_expression_losses.csv").exists()
    assert sorted(p.name for p in (tmp_path / "models" / "samples").iterdir()) == ["step_00000250.png"]
