"""The figures of the evaluate_expression stage (PNG, uint8 RGB, OpenCV only, as
:mod:`nirgan.metrics.figures`): the translation grid, the confusion matrix, samples per label."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from nirgan.metrics.figures import grid, placeholder

CELL = 44  # pixels per confusion-matrix cell


def first_of_each_label(labels: np.ndarray, limit: int = 8) -> np.ndarray:
    """Row indices of up to ``limit`` faces, one per label first (label order), then the next ones."""
    labels = np.asarray(labels)
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
    rest = [i for i in range(len(labels)) if i not in set(firsts)]
    return np.asarray((firsts + rest)[:limit], np.int64)


def translation_grid(inputs: torch.Tensor, translations: torch.Tensor, input_labels: np.ndarray,
                     names: list[str] | tuple[str, ...]) -> np.ndarray:
    """Rows = inputs; column 0 the input, then its translation to every label (``translations`` is
    (rows, C, 1, S, S))."""
    rows = [[inputs[i], *translations[i]] for i in range(len(inputs))]
    captions = [[f"in:{names[int(input_labels[i])]}"[:9], *(n[:9] for n in names)] for i in range(len(inputs))]
    return grid(rows, captions)


def samples_grid(samples_by_label: list[torch.Tensor], names: list[str] | tuple[str, ...]) -> np.ndarray:
    """One row per label, its samples (m, 1, S, S) side by side, the label name above."""
    return grid([list(x) for x in samples_by_label], row_titles=[str(n) for n in names])


def confusion_png(matrix: np.ndarray, names: list[str] | tuple[str, ...], title: str) -> np.ndarray:
    """Row-normalised confusion matrix (rows: label asked for, columns: the classifier's label),
    shaded by share, each cell showing its share in percent."""
    if matrix.sum() == 0:
        return placeholder(title, "unavailable: no faces were rated")
    c = len(names)
    left, top = 70, 40
    canvas = np.full((top + c * CELL + 24, left + c * CELL + 8, 3), 255, np.uint8)
    share = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    for i in range(c):
        for j in range(c):
            y, x = top + i * CELL, left + j * CELL
            v = int(round(255 * (1 - share[i, j])))
            canvas[y : y + CELL - 1, x : x + CELL - 1] = (v, v, 255) if i == j else (v, v, v)
            cv2.putText(canvas, f"{100 * share[i, j]:.0f}", (x + 8, y + CELL // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4, (0, 0, 0) if share[i, j] < 0.6 else (255, 255, 255), 1, cv2.LINE_AA)
        cv2.putText(canvas, str(names[i])[:9], (2, top + i * CELL + CELL // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(canvas, str(names[i])[:6], (left + i * CELL + 2, top - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.33,
                    (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "rows: asked for; columns: classifier (%)", (4, top + c * CELL + 16),
                cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


__all__ = ["confusion_png", "first_of_each_label", "samples_grid", "translation_grid"]
