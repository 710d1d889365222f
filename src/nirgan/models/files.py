"""How a nirgan model file is written and read, whichever family's network it holds.

A model file is a ``torch.save`` of a dict of tensors and plain JSON types, so it loads with
``weights_only=True``; a file that must exist for DVC but holds no model is an "absent" record,
``{"absent": reason}``. What each family's payloads hold is that family's own module
(:mod:`nirgan.models.artifacts` for NIR, :mod:`nirgan.expression.artifacts`); this one imports
neither.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nirgan.config import DataError
from nirgan.io import atomic_file


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def load_payload(path: Path, what: str) -> dict:
    """The file's payload, read with ``weights_only=True`` (a model file may come from anyone).

    A file that is not one (empty, garbage, a pickle of arbitrary objects) is a one-line
    :class:`DataError`. torch's own message is not passed on: for such a pickle it advises
    ``weights_only=False``, which would run whatever code the file carries.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no {what} file (run the train stage first)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a {what} file") from None
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is a bad file, never a bug here
        empty = path.is_file() and path.stat().st_size == 0
        why = "an empty file" if empty else f"not a {what} file nirgan wrote ({type(exc).__name__})"
        raise DataError(f"{path}: cannot load the {what}: {why}") from None


def build_from(path: Path, what: str, build):  # noqa: ANN001, ANN202
    """``build()`` turns a payload into a network; a payload of the wrong shape is a bad file."""
    try:
        return build()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, DataError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a usable {what} file: {first[:200]}") from None


def save_absent(path: str | Path, reason: str) -> None:
    """A model file that declares why there is no model (so DVC can always declare the file)."""
    with atomic_file(path) as tmp:
        torch.save({"absent": reason}, tmp)


def absent_reason(path: str | Path) -> str | None:
    """Why a model file holds no model (missing, or an "absent" record); None when it holds one."""
    path = Path(path)
    if not path.exists():
        return f"{path} is missing"
    blob = load_payload(path, "model")
    return str(blob["absent"]) if isinstance(blob, dict) and "absent" in blob else None
