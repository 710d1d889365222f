"""LPIPS diversity (thesis 3.3.0.2 and 3.3.1.2, eq. 3.8) with the ``lpips`` package.

The ``lpips`` package (Zhang et al.'s reference code) ships the learned linear heads
(``lpips/weights/v0.1/alex.pth``) inside the package; only the ImageNet AlexNet backbone comes
from torchvision's standard cache file ``alexnet-owt-7be5be79.pth``.

lpips 0.1.4 builds that backbone with ``torchvision.models.alexnet(pretrained=True)``; under
torchvision 0.29 the ``pretrained`` keyword still works but is deprecated (a warning now, an
error once removed), and it would download when the file is missing. So the backbone is built
here instead: lpips constructs its network with a random trunk (``pnet_rand=True``) and its
packaged linear heads, then the trunk's conv layers receive the AlexNet ``features`` weights
read from the located file through the same torch.hub loader torchvision uses. The result is
the same network as ``lpips.LPIPS(net="alex", version="0.1")``. It loads any file it is given
(with ``weights_only``: tensors, no pickled code); evaluate reports a figure only from the
reference file (:func:`nirgan.metrics.weights.load_reference`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from nirgan.metrics.weights import BACKBONE_FILES, WeightsFile, locate


def resolve_lpips(net: str, explicit: Path | None = None) -> tuple[WeightsFile | None, str]:
    return locate(BACKBONE_FILES[net], explicit)


def _backbone_features(net: str, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    import torchvision

    builders = {"alex": torchvision.models.alexnet, "vgg": torchvision.models.vgg16,
                "squeeze": torchvision.models.squeezenet1_1}
    model = builders[net](weights=None)
    model.load_state_dict(state_dict)
    return model.features


def load_lpips(net: str, version: str, weights: WeightsFile, device: torch.device) -> torch.nn.Module:
    import lpips

    with warnings.catch_warnings():
        # lpips passes pretrained=False to torchvision for the random trunk we overwrite below.
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, version=version, pretrained=True, pnet_rand=True, verbose=False)
    state = torch.hub.load_state_dict_from_url(
        f"https://download.pytorch.org/models/{weights.path.name}",
        model_dir=str(weights.path.parent),
        map_location="cpu",
        file_name=weights.path.name,
        weights_only=True,
    )
    features = _backbone_features(net, state)
    # lpips' slices hold the torchvision ``features`` layers under their original indices.
    for slice_ in model.net.children():
        for index, layer in slice_.named_children():
            layer.load_state_dict(features[int(index)].state_dict())
    return model.to(device).eval()


@torch.no_grad()
def lpips_pairwise_mean(model: torch.nn.Module, images: torch.Tensor) -> float:
    """Eq. 3.8: mean LPIPS over the M(M-1)/2 pairs of one (M, 1|3, H, W) set in [-1, 1]."""
    device = next(model.parameters()).device
    x = images.to(device, torch.float32)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    i, j = torch.triu_indices(len(x), len(x), offset=1)
    return float(model(x[i], x[j]).mean())
