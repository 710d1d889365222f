"""Real prepared pairs as tensors, and "generators" that answer each source with an image derived
from ITS real target (an oracle, a blurred copy, ...): real data, looked up by the source render."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nirgan.io import read_table
from nirgan.labels import LABELS


def load_pairs(root: Path, name: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """(targets uint8 (N, S, S), sources uint8 (N, S, S, 3), labels (N, 5), subjects (N,)) of a split."""
    df = read_table(root / "split" / f"{name}.parquet")
    idx = df["index"].to_numpy()
    targets = torch.from_numpy(np.load(root / "prepared" / "target.npy")[idx])
    sources = torch.from_numpy(np.load(root / "prepared" / "source.npy")[idx])
    return targets, sources, df[list(LABELS)].to_numpy(np.float64), df["subject"].astype(str).to_numpy()


def model_range(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(127.5).sub(1.0)


def lookup_generator(sources: torch.Tensor, images: torch.Tensor) -> Callable:
    """A (sources, z, labels) -> images callable returning ``images[i]`` ((N, 1, S, S) on [-1, 1])
    for the model-range version of uint8 ``sources[i]``; an unknown source is an error."""
    table = {bytes(s.numpy().tobytes()): i for i, s in enumerate(sources)}

    def generate(src: torch.Tensor, z: torch.Tensor | tuple, labels: np.ndarray) -> torch.Tensor | tuple:
        keys = ((src.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8)
        found = images[[table[bytes(k.numpy().tobytes())] for k in keys]]
        return tuple(found for _ in z) if isinstance(z, tuple) else found  # one per latent set, as a sampler

    return generate
