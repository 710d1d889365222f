"""Target-label accuracy of expression translations, and the other measures of the
evaluate_expression stage (issue 13).

:func:`train_expression_classifier` fits :class:`~nirgan.expression.models.classifier.ExpressionClassifier`
on real train faces (random horizontal flips and small shifts, Adam, seeded: the same inputs give
the same classifier); :func:`predict_labels` applies it; :func:`target_label_accuracy` is the share
of translated faces that it rates as their target label. Report it beside the classifier's own
accuracy on real test faces (:func:`accuracy`), which bounds what a translation can reach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nirgan.metrics.features import pairwise_msssim
from nirgan.expression.models.classifier import ExpressionClassifier
from nirgan.expression.models.translator import to_model_input


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a shift of up to 1/16 of the side (zero-padded roll)."""
    n, s = x.shape[0], x.shape[-1]
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    m = max(1, s // 16)
    dx, dy = (int(v) for v in torch.randint(-m, m + 1, (2,), generator=g))
    x = F.pad(x, (m, m, m, m), value=-1.0)
    return x[:, :, m + dy : m + dy + s, m + dx : m + dx + s]


def train_expression_classifier(images: np.ndarray | torch.Tensor, labels: np.ndarray, num_labels: int,
                                epochs: int = 15, batch_size: int = 32, lr: float = 2e-3, seed: int = 0, min_steps: int = 150,
                                device: str | torch.device = "cpu") -> ExpressionClassifier:
    """A classifier of real faces (uint8 (n, S, S) or float (n, 1, S, S)) into ``num_labels`` labels:
    ``epochs`` passes, at least ``min_steps`` batches (a small set needs more passes)."""
    x = to_model_input(images)
    return fit_classifier(lambda: ExpressionClassifier(num_labels, x.shape[-1]), x, labels, _augment, epochs,
                          batch_size, lr, seed, min_steps, device)


def fit_classifier(make_model: Callable[[], torch.nn.Module], x: torch.Tensor, labels: np.ndarray,
                   augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor], epochs: int, batch_size: int,
                   lr: float, seed: int, min_steps: int, device: str | torch.device) -> Any:
    """``make_model()`` (built from the seeded global RNG) fitted by Adam with a one-cycle schedule
    over ``augment``-ed batches of (x, labels): the same inputs give the same classifier. Shared by
    the classifier and the auditor (:mod:`nirgan.expression.audit`)."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if len(y) != len(x) or len(y) == 0:
        raise ValueError(f"classifier training needs one label per face; got {len(x)} faces, {len(y)} labels")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_model().to(device)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        steps = max(min_steps, epochs * max(1, len(x) // batch_size))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        model.train()
        done = 0
        while done < steps:
            order = torch.randperm(len(x), generator=g)
            for i in range(0, max(len(x) - batch_size, 0) + 1, batch_size):
                idx = order[i : i + batch_size]
                loss = F.cross_entropy(model(augment(x[idx], g).to(device)), y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                done += 1
                if done == steps:
                    break
    return model.eval()


@torch.no_grad()
def predict_labels(model: torch.nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Label indices (n,) for faces given as uint8 (n, S, S) or float (n, 1, S, S) in [-1, 1]."""
    x = to_model_input(images)
    device = next(model.parameters()).device
    model.eval()
    out = [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def accuracy(model: torch.nn.Module, images: np.ndarray | torch.Tensor, labels: np.ndarray) -> float:
    labels = np.asarray(labels)
    return float((predict_labels(model, images) == labels).mean()) if len(labels) else float("nan")


def target_label_accuracy(model: ExpressionClassifier, translated: torch.Tensor, targets: np.ndarray) -> float:
    """Share of translations rated as their target label."""
    return accuracy(model, translated, targets)


# ------------------------------------------------------------------ evaluation measures
# The figures of the evaluate_expression stage (issue 13 item 3). Each takes arrays and callables,
# never files: the stage decides what is compared with what.
def translation_targets(labels: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, target) pairs sending every face to every label other than its own: n x (C - 1)."""
    labels = np.asarray(labels, np.int64)
    rows = np.repeat(np.arange(len(labels)), num_labels)
    targets = np.tile(np.arange(num_labels), len(labels))
    keep = targets != labels[rows]
    return rows[keep], targets[keep]


def confusion(true: np.ndarray, predicted: np.ndarray, num_labels: int) -> np.ndarray:
    """(C, C) counts: row = the label asked for (or the real label), column = the classifier's."""
    m = np.zeros((num_labels, num_labels), np.int64)
    np.add.at(m, (np.asarray(true, np.int64), np.asarray(predicted, np.int64)), 1)
    return m


def per_label_accuracy(matrix: np.ndarray, names: list[str] | tuple[str, ...], prefix: str) -> dict[str, object]:
    """``{prefix}_<name>``: the diagonal share of each row; a label never asked for is unavailable."""
    out: dict[str, object] = {}
    for i, name in enumerate(names):
        total = int(matrix[i].sum())
        if total:
            out[f"{prefix}_{name}"] = float(matrix[i, i] / total)
        else:
            out[f"{prefix}_{name}"] = "unavailable"
            out[f"{prefix}_{name}_reason"] = f"no face with label {name!r} in this set"
    return out


def label_coverage(matrix: np.ndarray, threshold: float = 0.5) -> tuple[float, list[int]]:
    """Share of the labels asked for whose outputs the classifier rates as that label at least
    ``threshold`` of the time, and the indices of the labels that miss it (the collapsed ones)."""
    asked = np.flatnonzero(matrix.sum(1))
    rates = matrix[asked, asked] / matrix[asked].sum(1)
    return float((rates >= threshold).mean()) if len(asked) else float("nan"), [int(i) for i in asked[rates < threshold]]


@torch.no_grad()
def classifier_features(model: ExpressionClassifier, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Globally pooled last-conv features (n, 4 x width): the feature space of the FID-style figure.
    Pooled, not flattened: a few hundred faces cannot fill a 1024-D covariance."""
    x = to_model_input(images)
    device = next(model.parameters()).device
    model.eval()
    out = [model.features(x[i : i + batch_size].to(device)).mean((2, 3)).double().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def within_label_msssim(images_by_label: list[torch.Tensor]) -> float:
    """Mean over labels of the mean pairwise MS-SSIM within one label's images ((m, 1, S, S) in
    [-1, 1], m >= 2): AC-GAN's diversity score; near 1 means one face per label (mode collapse)."""
    values = [pairwise_msssim((x.float() + 1) / 2) for x in images_by_label if len(x) >= 2]
    return float(np.mean(values)) if values else float("nan")
