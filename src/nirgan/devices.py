"""The one place where a params device choice (``auto | cpu | cuda``) becomes a torch device."""

from __future__ import annotations

import torch


def resolve_device(choice: str, key: str = "device") -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one fails naming ``key``."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key} is 'cuda' but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)
