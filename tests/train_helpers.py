"""A tiny prepared dataset and a small CPU training config, shared by the train tests.

Written directly as the augment/split stages' declared outputs (arrays + Parquet), so the
train tests do not depend on the other stages. Images are smooth random blobs rather than
white noise so that the networks see something image-like; the content does not matter for
what these tests check (mechanics, state, equivalence).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nirgan.config import Config, parse_config
from nirgan.labels import LABELS

SIZE = 64
PAIRS = 24
TEST_PAIRS = 4
SUBJECTS = 4


def make_dataset(root: Path, pairs: int = PAIRS, size: int = SIZE, seed: int = 0) -> tuple[Path, Path]:
    """Write ``root/prepared`` and ``root/split``; returns (prepared_dir, split_dir)."""
    rng = np.random.default_rng(seed)
    n = pairs + TEST_PAIRS
    yy, xx = np.mgrid[0:size, 0:size] / size
    cx, cy, r = rng.uniform(0.3, 0.7, n), rng.uniform(0.3, 0.7, n), rng.uniform(0.15, 0.35, n)
    blob = np.exp(-(((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2) / r[:, None, None] ** 2))
    target = (blob * rng.uniform(120, 230, (n, 1, 1)) + rng.normal(0, 6, blob.shape)).clip(0, 255).astype(np.uint8)
    source = np.stack([blob > 0.5, blob > 0.8, blob > 0.95], axis=-1).astype(np.uint8) * 255
    subjects = np.array([f"s{i % SUBJECTS}" for i in range(n)])
    labels = rng.uniform(-30, 30, (n, len(LABELS)))
    manifest = pd.DataFrame({"index": np.arange(n), "pair_id": [f"{s}_cam0/{i:05d}" for i, s in enumerate(subjects)],
                             "subject": subjects, "camera": "cam0", "frame": np.arange(n)})
    for j, name in enumerate(LABELS):
        manifest[name] = labels[:, j]
    prepared, split = root / "prepared", root / "split"
    prepared.mkdir(parents=True)
    split.mkdir(parents=True)
    np.save(prepared / "source.npy", source)
    np.save(prepared / "target.npy", target)
    manifest.to_parquet(prepared / "manifest.parquet", index=False)
    manifest.iloc[:pairs].to_parquet(split / "train.parquet", index=False)
    manifest.iloc[pairs:].to_parquet(split / "test.parquet", index=False)
    return prepared, split


def small_config(**train: object) -> Config:
    """Width 0.25, 64 px, batch 4, 16-d latents, fp32 on CPU; ``train`` overrides train.* keys."""
    base: dict[str, object] = dict(
        width=0.25, latent_dim=16, batch_size=4, epochs_fixed=1, epochs_decay=1, max_steps=2,
        log_every=1, checkpoint_every=100, sample_sources=2, sample_latents=2, device="cpu",
        precision="fp32", log_model=False, identity_epochs=1, attr_estimator_epochs=1,
    )
    base.update(train)
    return parse_config({"augment": {"image_size": SIZE}, "train": base})


def write_params(path: Path, cfg: Config) -> Path:
    """The config as a params.yaml the CLI can load (``nirgan --params path``)."""
    import yaml

    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def state_tensors(state: dict) -> dict[str, "torch.Tensor"]:  # noqa: F821
    """Every tensor of a checkpoint's networks, EMA and optimisers, flattened by path."""
    import torch

    out = {}

    def walk(prefix: str, obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            out[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}/{i}", v)

    for key in ("nets", "ema", "optimizers"):
        walk(key, state[key])
    return out


def kill9_when(proc, ready, timeout_s: float) -> None:
    """SIGKILL the training process ``proc`` as soon as ``ready()`` holds (it must still be running
    then), and reap it; the process is killed whatever happens."""
    import os
    import signal
    import time

    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.02)
        assert proc.poll() is None, f"training process ended early: {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def checkpointed_at_least(ckpt, step: int) -> bool:
    """``ckpt`` (a Checkpoint) has a complete checkpoint of ``step`` or later."""
    latest = ckpt.latest() if (ckpt.directory / "latest").exists() else None
    return latest is not None and int(latest.stem.split("_")[1]) >= step


def assert_same_state(want: dict, got: dict) -> None:
    """Two checkpoints' networks, EMA and optimisers are bit-identical."""
    import torch

    a, b = state_tensors(want), state_tensors(got)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:5]}"
