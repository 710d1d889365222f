"""The second expression reader (issue 25): an instrument the generator never saw.

A generator trained against a domain classifier can learn textures (stripes, checkerboards) that
any classifier of the same recipe reads as the target label: the issue's StarGAN scored 0.92 on
the evaluation classifier, 0.98-0.99 on the same recipe retrained with other seeds, and 0.75 was
that classifier's accuracy on real faces. This reader differs in everything such a texture could
ride on: stride-1 5x5 first layer and max pooling (the classifier strides its first 3x3 conv, so a
period-2 pattern aliases straight into its features), four blocks instead of three, a 2x2 position
map instead of (S/16)^2, and it is trained on blurred, resized and noisy copies too
(:func:`nirgan.expression.audit.train_expression_auditor`), so that only what survives a small
blur can carry a label.
"""

from __future__ import annotations

import torch
from torch import nn


class ExpressionAuditor(nn.Module):
    """(n, 1, S, S) in [-1, 1] -> (n, num_labels) logits; S a multiple of 16."""

    def __init__(self, num_labels: int, image_size: int = 64, width: int = 12):
        super().__init__()
        if image_size % 16:
            raise ValueError(f"image_size {image_size}: the auditor needs a multiple of 16")
        self.num_labels, self.image_size = num_labels, image_size
        layers: list[nn.Module] = [nn.Conv2d(1, width, 5, padding=2, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        c_in = width
        for c in (2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        # Upper/lower and left/right halves: the mouth and the brows stay apart.
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(c_in * 4, num_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
