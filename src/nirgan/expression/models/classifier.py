"""The expression classifier that rates translations (issue 13, "target-label accuracy").

Not from the papers (they judged translations by eye): a small CNN trained on real train faces
only, so it measures whether a translated face shows the target expression as real faces of that
label do. Three 3x3 stride-2 conv blocks (batch norm, ReLU) to an (S/8)^2 map, a 2x2 average pool
(so 64 and 128 px inputs give 4x4 or 8x8 cells, position kept: mouth and brows live in different
places), dropout, and one linear layer to the label logits.
"""

from __future__ import annotations

import torch
from torch import nn


class ExpressionClassifier(nn.Module):
    """(n, 1, S, S) in [-1, 1] -> (n, num_labels) logits."""

    def __init__(self, num_labels: int, image_size: int = 64, width: int = 16):
        super().__init__()
        if image_size % 16:
            raise ValueError(f"image_size {image_size}: the classifier needs a multiple of 16")
        self.num_labels, self.image_size = num_labels, image_size
        layers: list[nn.Module] = []
        c_in = 1
        for c in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers, nn.AvgPool2d(2))
        cells = (image_size // 16) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(c_in * cells, num_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
