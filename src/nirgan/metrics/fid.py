"""ImageNet FID (thesis 3.3.0.1 and 3.3.1.1) with pytorch-fid.

Why pytorch-fid: it is the reference PyTorch port of the TensorFlow FID network
(``pt_inception-2015-12-05-6726825d.pth``, the Inception-V3 graph of Heusel et al.'s original
implementation, with its FID-specific blocks), which is what FID numbers in papers, the
thesis's included, are computed with; torchvision's own Inception-V3 weights give different
numbers. It loads the file through ``torch.hub.load_state_dict_from_url``, i.e. from
``$TORCH_HOME/hub/checkpoints`` when it is there. :func:`load_fid_inception` checks for the
file first (see :mod:`nirgan.metrics.weights`) so nothing is ever downloaded. It loads any file
it is given; evaluate reports a figure only from the reference file
(:func:`nirgan.metrics.weights.load_reference`).

Grey NIR images are repeated to 3 channels; pytorch-fid resizes them bilinearly to 299x299.
The test split holds far fewer images than Inception's 2048 feature dimensions, so the
covariances are rank-deficient and the FID is biased upwards: compare runs only at equal N.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nirgan.metrics.weights import FID_WEIGHTS_NAME, WeightsFile, as_hub_cache, locate


def load_fid_inception(weights: WeightsFile, device: torch.device) -> torch.nn.Module:
    """pytorch-fid's InceptionV3 (2048-d pool features) built on the given weights file."""
    from pytorch_fid.inception import InceptionV3

    with as_hub_cache(weights):
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    return model.to(device).eval()


def resolve_fid(explicit: Path | None = None) -> tuple[WeightsFile | None, str]:
    return locate(FID_WEIGHTS_NAME, explicit)


@torch.no_grad()
def inception_features(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """(N, 2048) pool features of images in [-1, 1], (N, 1 or 3, H, W)."""
    device = next(model.parameters()).device
    feats = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, torch.float32)
        if batch.shape[1] == 1:
            batch = batch.repeat(1, 3, 1, 1)
        # pytorch-fid expects [0, 1] and rescales to Inception's [-1, 1] itself.
        out = model((batch.clamp(-1, 1) + 1) / 2)[0]
        feats.append(out.flatten(1).cpu().double().numpy())
    return np.concatenate(feats)
