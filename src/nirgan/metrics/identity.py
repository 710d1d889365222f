"""Identity reconstruction (thesis 3.2.3, 4.1.6): G(y, E(x)) against x, with calibration.

The cosine similarity of NIR identity embeddings (:class:`nirgan.models.IdentityNet`) means
little on its own, so it comes with two references computed on real images only: pairs of
frames of the same test subject (what "same identity" looks like to the network) and pairs of
a test subject's frame with another subject's frame (what "different identity" looks like).
"""

from __future__ import annotations

import numpy as np
import torch


def paired_cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise cosine of two (N, D) embedding sets (IdentityNet embeddings are unit length)."""
    return torch.nn.functional.cosine_similarity(a, b, dim=1).double().numpy()


def same_and_different(emb: torch.Tensor, subjects: np.ndarray, other: torch.Tensor) -> tuple[float, float]:
    """Mean cosine over same-subject pairs within ``emb`` (i < j), and of ``emb`` against ``other``
    (embeddings of other subjects' images)."""
    sim = (emb @ emb.T).double().numpy()
    same = subjects[:, None] == subjects[None, :]
    upper = np.triu(np.ones_like(same, dtype=bool), k=1)
    same_pairs = sim[same & upper]
    diff_pairs = np.concatenate([sim[~same & upper], (emb @ other.T).double().numpy().ravel()])
    return (float(same_pairs.mean()) if same_pairs.size else float("nan"),
            float(diff_pairs.mean()) if diff_pairs.size else float("nan"))
