"""The one place where a params device choice (``auto | cpu | cuda``) becomes a torch device,
and where a training run sets torch's determinism and host seeds."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from nirgan.config import Config, ConfigError

# Every params key that names a device; check-params proves each one is there.
DEVICE_KEYS: tuple[str, ...] = ("detect.device", "train.device", "expression_train.device", "evaluate.device")


def resolve_device(choice: str, key: str = "device") -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is a params error
    (:class:`ConfigError`, exit 2) naming ``key``."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is 'cuda' but no CUDA device is available on this machine")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def check_devices(cfg: Config, origin: str = "params") -> None:
    """Every device the params ask for is on this machine (``nirgan check-params``), so a run
    that passes does not stop at train or evaluate for want of a GPU."""
    for key in DEVICE_KEYS:
        section, field = key.split(".")
        resolve_device(getattr(getattr(cfg, section), field), f"{origin}: {key}")


def configure_torch(deterministic: bool, seed: int, device: torch.device) -> None:
    """Deterministic kernels when asked, else the fast ones (cuDNN autotuning, TF32); seeded host
    RNGs. The guarantee is for CPU: on CUDA some backward kernels (bilinear upsampling) have no
    deterministic variant, so there it only warns."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    random.seed(seed)
    np.random.seed(seed)
