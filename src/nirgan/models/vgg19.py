"""VGG-19 ImageNet features for the perceptual loss and distance, thesis 3.2.4.2.1.

The thesis takes layers 1, 6, 11, 20, 29 of ``torchvision.models.vgg19().features`` (relu1_1,
relu2_1, relu3_1, relu4_1, relu5_1, as pix2pixHD, ref. [61]) and compares them with an L1
distance normalised by channel count (``nirgan.losses.perceptual_loss``).

The ImageNet weights are loaded the standard torchvision way, from the torch hub cache
(``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``), which a machine with internet fills by
calling ``torchvision.models.vgg19(weights="IMAGENET1K_V1")`` once. Nothing here downloads: the
file is checked first and its absence raises :class:`MissingWeightsError` saying where it goes.
There is no fallback to random weights, which would silently turn the loss into noise.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

LAYERS = (1, 6, 11, 20, 29)
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights that must come from the torch hub cache are not there."""


def vgg19_weights_path() -> Path:
    from torchvision.models import VGG19_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(VGG19_Weights.IMAGENET1K_V1.url)


def require_vgg19_weights() -> Path:
    """The cached ImageNet VGG-19 file, or MissingWeightsError naming the file and where to put it."""
    path = vgg19_weights_path()
    if not path.is_file():
        raise MissingWeightsError(
            f"VGG-19 ImageNet weights not found: {path} does not exist. The vgg19 perceptual loss/distance "
            f"needs them and nothing here downloads. On a machine with internet run "
            f"`python -c \"import torchvision; torchvision.models.vgg19(weights='IMAGENET1K_V1')\"` and copy "
            f"{path.name} to {path.parent} here (or point TORCH_HOME at a cache that has hub/checkpoints/{path.name})."
        )
    return path


class VGG19Features(nn.Module):
    """Frozen VGG-19 trunk: (B, 1, H, W) in [-1, 1] -> the five feature maps of ``LAYERS``.

    A grey NIR image is repeated to three channels and ImageNet-normalised, as the network was
    trained on. The module stays in eval mode and holds no trainable parameters; gradients still
    flow through it to the images.
    """

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import VGG19_Weights, vgg19

        self.weights_path = require_vgg19_weights()
        # torchvision's own loader (load_state_dict_from_url: the hub cache file, no download as
        # it exists), into a skeleton built on the meta device: vgg19(weights=...) would first
        # randomly initialise 143M parameters only to overwrite them.
        state = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
        with torch.device("meta"):
            model = vgg19()
        model.load_state_dict(state, assign=True)
        trunk = model.features[: LAYERS[-1] + 1]
        self.slices = nn.ModuleList(
            trunk[start + 1 : stop + 1] for start, stop in zip((-1,) + LAYERS[:-1], LAYERS)
        )
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:
        # A frozen metric network: keep it in eval mode whatever its parent does.
        return super().train(False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = (image.expand(-1, 3, -1, -1) + 1) / 2
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        features = []
        for block in self.slices:
            x = block(x)
            features.append(x)
        return features
