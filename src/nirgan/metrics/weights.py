"""Where pretrained ImageNet weights come from, without ever downloading them.

The libraries load their weights through ``torch.hub.load_state_dict_from_url``, which reads
``$TORCH_HOME/hub/checkpoints/<file name>`` (default ``~/.cache/torch``) and downloads only
when that file is missing. Evaluate looks for the file first and reports the metric as
unavailable, with the reason, when it is not there, so no run ever reaches the download (no
machine of this project has internet) and no metric ever runs on random weights.

A user who keeps the files elsewhere sets ``evaluate.fid_weights`` / ``evaluate.lpips_weights``
to the file (any name); otherwise TORCH_HOME decides, as for any torchvision program.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from nirgan.io import file_sha256


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


def hub_checkpoints() -> Path:
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
    return WeightsFile(path=path.resolve(), sha256=file_sha256(path), standard_name=standard_name), ""


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
