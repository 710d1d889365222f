"""What may be resumed in a NIR run: the configuration checks made before any work, and the
fingerprint a checkpoint must share with the current run to be continued."""

from __future__ import annotations

from typing import Any

from nirgan.config import Config
from nirgan.training.core import distances_in_use
from nirgan.training.data import TrainData
from nirgan.training.fingerprint import fingerprint

# The module whose import closure is the step's code (networks, losses, schedule, EMA, ...).
SESSION_MODULE = "nirgan.training.session"

# Config fields that may change between a run and its resumption without invalidating it.
RESUMABLE_CHANGES = frozenset({
    "max_steps", "max_minutes", "log_every", "checkpoint_every", "compile", "num_workers", "device", "precision",
    "deterministic", "sample_sources", "sample_latents", "log_model",
})
# Auxiliary files a fresh run must not pick up from an earlier one.
RUN_FILES = ("generator.pt", "encoder.pt", "identity_net.pt", "pose_estimator.pt")


def check_config(cfg: Config, world_size: int) -> None:
    """Everything that can be known wrong before any work starts."""
    train_cfg = cfg.train
    if train_cfg.perceptual == "vgg19" or "vgg19" in distances_in_use(train_cfg):
        from nirgan.models.vgg19 import require_vgg19_weights

        require_vgg19_weights()
    if train_cfg.batch_size % world_size:
        raise ValueError(f"train.batch_size ({train_cfg.batch_size}) is the global batch and must divide evenly "
                         f"over the {world_size} processes")
    if train_cfg.perceptual == "discriminator" or "discriminator" in distances_in_use(train_cfg):
        n_blocks = 5  # Table 3.3's hidden blocks
        bad = [i for i in train_cfg.perceptual_layers if not 1 <= i <= n_blocks]
        if bad:
            raise ValueError(f"train.perceptual_layers {bad}: the discriminator has blocks 1..{n_blocks}")


def nir_fingerprint(cfg: Config, data: TrainData) -> dict[str, Any]:
    """What a NIR checkpoint must share with the current run to be resumed
    (:mod:`nirgan.training.fingerprint`): the train and augment sections, the data, the step's code."""
    return fingerprint(cfg.train.model_dump(mode="json"), RESUMABLE_CHANGES, data.digest, SESSION_MODULE,
                       augment=cfg.augment.model_dump(mode="json"), image_size=data.image_size)
