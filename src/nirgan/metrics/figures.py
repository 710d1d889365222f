"""Image grids for the evaluation figures (PNG, uint8 RGB), drawn with OpenCV only."""

from __future__ import annotations

import cv2
import numpy as np
import torch

PAD = 2
CAPTION = 14  # pixel rows under a tile for its caption


def to_rgb_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] with C in {1, 3} -> (H, W, 3) uint8."""
    img = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    if img.shape[0] == 1:
        img = img.repeat(3, 1, 1)
    return img.permute(1, 2, 0).numpy()


def grid(rows: list[list[torch.Tensor]], captions: list[list[str]] | None = None,
         row_titles: list[str] | None = None) -> np.ndarray:
    """Tiles (C, H, W) in [-1, 1] laid out in rows; optional caption under each tile and a title
    above each row. Rows may differ in length; missing cells stay dark grey."""
    h, w = rows[0][0].shape[-2:]
    cols = max(len(r) for r in rows)
    cap = CAPTION if captions else 0
    title = CAPTION if row_titles else 0
    cell_h = h + cap + title + PAD
    canvas = np.full((PAD + len(rows) * cell_h, PAD + cols * (w + PAD), 3), 40, np.uint8)
    for i, row in enumerate(rows):
        y = PAD + i * cell_h
        if row_titles:
            _text(canvas, row_titles[i], PAD, y + title - 3)
        for j, tile in enumerate(row):
            x = PAD + j * (w + PAD)
            canvas[y + title : y + title + h, x : x + w] = to_rgb_uint8(tile)
            if captions and captions[i][j]:
                _text(canvas, captions[i][j], x + 1, y + title + h + cap - 3)
    return canvas


def _text(canvas: np.ndarray, text: str, x: int, y: int) -> None:
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (235, 235, 235), 1, cv2.LINE_AA)
