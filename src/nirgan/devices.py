"""The one place where a params device choice (``auto | cpu | cuda``) becomes a torch device,
and where a training run sets torch's determinism and host seeds."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def resolve_device(choice: str, key: str = "device") -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one fails naming ``key``."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key} is 'cuda' but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


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
