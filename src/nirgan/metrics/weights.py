"""Where pretrained ImageNet weights come from, without ever downloading them.

The libraries load their weights through ``torch.hub.load_state_dict_from_url``, which reads
``$TORCH_HOME/hub/checkpoints/<file name>`` (default ``~/.cache/torch``) and downloads only
when that file is missing. Evaluate looks for the file first and reports the metric as
unavailable, with the reason, when it is not there, so no run ever reaches the download (no
machine of this project has internet).

A figure is computed only from the reference file itself: :func:`load_reference` loads the file
only when its sha256 begins with the 8 hex digits its standard name promises (torch.hub's own
check), and reports the figure as unavailable, naming the file, its hash and the promised one,
when it does not (a corrupt or truncated download, other or random weights of the right
architecture) or when a library cannot load it. The loaders themselves (``load_fid_inception``,
``load_lpips``) take any file, so their plumbing is tested with files the tests write.

A user who keeps the files elsewhere sets ``evaluate.fid_weights`` / ``evaluate.lpips_weights``
to the file (any name); otherwise TORCH_HOME decides, as for any torchvision program.
``nirgan check-params`` warns about a configured file that evaluate would not use
(:func:`configured_problems`); torch is imported only where a file is loaded, so that check does
not pay for it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nirgan.io import file_sha256

if TYPE_CHECKING:
    from nirgan.config import EvaluateConfig

# pytorch-fid's FID Inception (nirgan.metrics.fid) and torchvision's weight files for the lpips
# trunks (torchvision.models.*_Weights.IMAGENET1K_V1, nirgan.metrics.lpips_diversity); here so
# that check-params can name them without importing torch
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}

T = TypeVar("T")


@dataclass(frozen=True)
class WeightsFile:
    path: Path
    sha256: str
    standard_name: str

    @property
    def expected_prefix(self) -> str:
        """torch.hub names files ``<name>-<first 8 hex of sha256>.pth``."""
        return self.standard_name.rsplit("-", 1)[-1].split(".")[0]

    @property
    def verified(self) -> bool:
        """True when the content hash matches the one the standard file name promises."""
        return self.sha256.startswith(self.expected_prefix)

    def describe(self, key: str) -> dict[str, object]:
        return {
            f"{key}_weights": str(self.path),
            f"{key}_weights_sha256": self.sha256[:16],
            f"{key}_weights_verified": self.verified,
        }

    def not_reference(self) -> str:
        """Why this file gives no figure ("" for the reference file): names it and both hashes."""
        if self.verified:
            return ""
        return (f"{self.path} is not the reference {self.standard_name}: its sha256 begins {self.sha256[:8]}, "
                f"the name promises {self.expected_prefix} (a corrupt or truncated download, or other weights; "
                "a figure from any other file is not comparable)")


def hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def locate(standard_name: str, explicit: Path | None) -> tuple[WeightsFile | None, str]:
    """The weights file to use and, when there is none, why (names the paths looked at)."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            return None, f"configured weights file {path} does not exist"
    else:
        path = hub_checkpoints() / standard_name
        if not path.is_file():
            return None, (
                f"{standard_name} is not in the torch hub cache ({path.parent}); copy it there "
                "(or set TORCH_HOME / the evaluate.*_weights param) on a machine without internet"
            )
    try:
        sha256 = file_sha256(path)
    except OSError as exc:
        return None, f"cannot read weights file {path}: {exc.strerror or exc}"
    return WeightsFile(path=path.resolve(), sha256=sha256, standard_name=standard_name), ""


def load_reference(key: str, weights: WeightsFile, load: Callable[[WeightsFile], T]) -> tuple[T | None, dict[str, Any]]:
    """``(load(weights), record)`` for the reference file; ``(None, record)`` with ``key:
    "unavailable"`` and ``<key>_reason`` for any other file, or when ``load`` fails.

    The record always holds ``<key>_weights``, ``_sha256`` and ``_verified`` (which file was
    looked at). Nothing raises: FID and LPIPS are optional figures, and evaluate's other figures
    are minutes of work that a bad weights file must not cost.
    """
    info: dict[str, Any] = weights.describe(key)
    why = weights.not_reference()
    if not why:
        try:
            return load(weights), info
        except Exception as exc:  # noqa: BLE001 - any failure of the library on this file; the reason names it
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            why = (f"{weights.path} (sha256 {weights.sha256[:16]}) has the reference hash but cannot be loaded as "
                   f"{weights.standard_name}: {type(exc).__name__}: {first}")
    info.update({key: "unavailable", f"{key}_reason": why})
    return None, info


def configured_problems(e: EvaluateConfig) -> list[tuple[str, str]]:
    """``(dotted key, why)`` for each configured ``evaluate.*_weights`` file of an enabled figure
    that evaluate would report as unavailable: missing, unreadable, or not the reference file."""
    wanted = (("fid", e.fid, e.fid_weights, FID_WEIGHTS_NAME),
              ("lpips", e.lpips, e.lpips_weights, BACKBONE_FILES[e.lpips_net]))
    problems = []
    for key, enabled, explicit, name in wanted:
        if not enabled or explicit is None:
            continue
        weights, why = locate(name, explicit)
        why = why or weights.not_reference()
        if why:
            problems.append((f"evaluate.{key}_weights", why))
    return problems


@contextlib.contextmanager
def as_hub_cache(weights: WeightsFile) -> Iterator[None]:
    """Make the standard hub path resolve to ``weights`` while a library loads it.

    pytorch-fid always calls ``load_state_dict_from_url`` with its fixed URL, so a file kept
    elsewhere is exposed under its standard name in a temporary TORCH_HOME (a symlink, no copy).
    """
    if weights.path == (hub_checkpoints() / weights.standard_name).resolve():
        yield
        return
    old = os.environ.get("TORCH_HOME")
    with tempfile.TemporaryDirectory(prefix="nirgan-torch-home-") as home:
        checkpoints = Path(home) / "hub" / "checkpoints"
        checkpoints.mkdir(parents=True)
        (checkpoints / weights.standard_name).symlink_to(weights.path)
        os.environ["TORCH_HOME"] = home
        try:
            if hub_checkpoints() != checkpoints:
                raise RuntimeError(
                    "torch.hub.set_dir() overrides TORCH_HOME in this process; "
                    f"place {weights.standard_name} in {hub_checkpoints()} instead"
                )
            yield
        finally:
            if old is None:
                os.environ.pop("TORCH_HOME", None)
            else:
                os.environ["TORCH_HOME"] = old
