"""What may be resumed: the configuration checks made before any work, and the fingerprint a
checkpoint must share with the current run to be continued."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from nirgan.config import Config
from nirgan.training.checkpoint import Checkpoint
from nirgan.training.core import distances_in_use
from nirgan.training.data import TrainData
from nirgan.training.distributed import DistInfo, barrier

log = logging.getLogger("nirgan.train")

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


def code_hash() -> str:
    """The source of everything that defines the step's math (networks, losses, augmentation,
    the auxiliary networks' training).

    A resumed run must not silently continue under changed model code (dvc repro reruns the
    stage after such a change and would otherwise find a finished checkpoint).
    """
    pkg = Path(__file__).resolve().parents[1]
    files = sorted([*(pkg / "models").glob("*.py"), pkg / "losses.py", pkg / "training" / "core.py",
                    pkg / "training" / "auxiliary.py", pkg / "training" / "diff_augment.py", pkg / "augmentation.py"])
    h = hashlib.sha256()
    for f in files:
        if f.exists():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(cfg: Config, data: TrainData) -> dict[str, Any]:
    """What a checkpoint must share with the current run to be resumed."""
    train = {k: v for k, v in cfg.train.model_dump(mode="json").items() if k not in RESUMABLE_CHANGES}
    return {"train": train, "augment": cfg.augment.model_dump(mode="json"), "pairs": data.size,
            "image_size": data.image_size, "code": code_hash()}


def fingerprint_hash(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def resumable_state(ckpt: Checkpoint, fp: dict[str, Any], out_dir: Path, info: DistInfo) -> dict[str, Any] | None:
    """The latest checkpoint's state if it matches ``fp``; else None, with the stale checkpoints
    and run files removed (rank 0) so that nothing of the earlier run is picked up."""
    state = ckpt.load() if ckpt.latest() is not None else None
    if state is not None and state.get("fingerprint") != fingerprint_hash(fp):
        old = state.get("fingerprint_data", {})
        diff = sorted(k for k in set(old.get("train", {})) | set(fp["train"])
                      if old.get("train", {}).get(k) != fp["train"].get(k))
        other = [k for k in ("augment", "pairs", "image_size", "code") if old.get(k) != fp[k]]
        log.warning("checkpoint %s was made with a different configuration, data or model code "
                    "(train keys: %s; also: %s); starting afresh", ckpt.latest(), diff or "-", other or "-")
        barrier(info)
        if info.is_main:
            ckpt.clear()
        state = None
    if state is None and info.is_main:
        for stale in RUN_FILES:
            (out_dir / stale).unlink(missing_ok=True)
    barrier(info)
    return state
