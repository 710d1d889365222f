"""The one place where a params device choice (``auto | cpu | cuda``) becomes a torch device,
and where a training run sets torch's determinism and host seeds."""

from __future__ import annotations

import contextlib
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


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 arithmetic is native here: CUDA, or a CPU with AVX512-BF16 or AMX. Elsewhere
    oneDNN emulates bf16 on the CPU, which is slower than fp32, so ``precision: bf16`` falls back
    to fp32 there (the run's log and MLflow params say which one ran: :func:`effective_precision`)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:  # private in torch 2.x; a torch without them simply gets fp32 on the CPU
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def effective_precision(precision: str, device: torch.device) -> str:
    """What ``precision`` (params: fp32 | bf16) runs as on ``device``."""
    return "bf16" if precision == "bf16" and native_bf16(device) else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast where :func:`effective_precision` says bf16, else nothing. On 2 AVX512-BF16
    cores (Zen 4) the default NIR step ran 1.79x the previous fp32 step with channels_last
    (benchmarks/train_step_vs_baseline.py); the expression StarGAN, contiguous, 1.5x in bf16
    (benchmarks/expression_train_speed.sh) but slower in bf16 with channels_last."""
    if effective_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last for the NIR networks on CUDA and on the CPU (oneDNN's convolutions run NHWC
    natively: 1.18x on the default step in fp32 on 2 cores, benchmarks/train_step_vs_baseline.py)."""
    return torch.channels_last if device.type in ("cuda", "cpu") else torch.contiguous_format
