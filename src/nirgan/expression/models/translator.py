"""The expression translator: the one interface evaluation (and MLflow serving) uses for all three
models, whatever they are inside.

- ``translate(images, target_labels, z=None)``: a face per input, with the target expression.
    stargan       G(x, y)                  (the input's identity is kept by G itself)
    cgan_encoder  G(E(x) | y)              (KTH: the input enters only through z = E(x))
    cgan          G(z | y), input IGNORED  (Milan's cGAN has no image input: it draws a new face
                                            for the label; its translations are a baseline of what
                                            ignoring the input gives)
- ``sample(labels, z=None)``: synthesis from (z, label), for the latent models (cgan, cgan_encoder);
  StarGAN has no latent and raises.
z is uniform in [-1, 1] (Milan section 7). With ``z=None`` it is drawn from a generator seeded by
``seed``, so the same call gives the same images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

KINDS = ("cgan", "cgan_encoder", "stargan")


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (n, S, S) -> float (n, 1, S, S) in [-1, 1]; float (n, 1, S, S) passes through."""
    t = torch.as_tensor(images)
    if t.dtype == torch.uint8:
        if t.dim() != 3:
            raise ValueError(f"uint8 images must be (n, S, S); got shape {tuple(t.shape)}")
        return t.float().div(127.5).sub(1.0).unsqueeze(1)
    if t.dim() != 4 or t.shape[1] != 1:
        raise ValueError(f"float images must be (n, 1, S, S) in [-1, 1]; got shape {tuple(t.shape)}")
    return t.float()


class ExpressionTranslator(nn.Module):
    """One trained expression model (see the module docstring), in eval mode, CPU in and out."""

    def __init__(self, kind: str, generator: nn.Module, names: list[str], image_size: int,
                 latent_dim: int = 0, encoder: nn.Module | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown expression model {kind!r}; expected one of {', '.join(KINDS)}")
        if kind == "cgan_encoder" and encoder is None:
            raise ValueError("a cgan_encoder translator needs its encoder E")
        self.kind, self.generator, self.encoder = kind, generator, encoder
        self.names, self.image_size, self.latent_dim = list(names), int(image_size), int(latent_dim)

    @property
    def num_labels(self) -> int:
        return len(self.names)

    def _device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def draw_z(self, n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, self.latent_dim, generator=g) * 2 - 1

    def _labels(self, labels: np.ndarray | torch.Tensor, n: int) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(labels), dtype=torch.int64) if not torch.is_tensor(labels) else labels.long()
        if t.shape != (n,):
            raise ValueError(f"target labels must be ({n},) label indices; got shape {tuple(t.shape)}")
        if n and (int(t.min()) < 0 or int(t.max()) >= self.num_labels):
            raise ValueError(f"target labels must lie in 0..{self.num_labels - 1} ({self.names}); "
                             f"got {int(t.min())}..{int(t.max())}")
        return t

    def forward(self, image: torch.Tensor, target: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The served form: float image (n, 1, S, S), one-hot target (n, C), z (n, latent_dim or 1)."""
        labels = target.argmax(dim=1)
        if self.kind == "stargan":
            return self.generator(image, labels)
        if self.kind == "cgan_encoder":
            return self.generator(self.encoder(image), labels)
        return self.generator(z, labels)

    @torch.no_grad()
    def translate(self, images: np.ndarray | torch.Tensor, target_labels: np.ndarray | torch.Tensor,
                  z: torch.Tensor | None = None, batch_size: int = 64, seed: int = 0) -> torch.Tensor:
        """(n, 1, S, S) float in [-1, 1] on the CPU: each input with its target label's expression."""
        x = to_model_input(images)
        n = x.shape[0]
        if x.shape[-1] != self.image_size:
            raise ValueError(f"images are {x.shape[-1]}px; this model was trained at {self.image_size}px")
        labels = self._labels(target_labels, n)
        if z is None:
            z = self.draw_z(n, seed) if self.latent_dim else torch.zeros(n, 1)
        onehot = nn.functional.one_hot(labels, self.num_labels).float()
        device, out = self._device(), []
        self.eval()
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            out.append(self(x[sl].to(device), onehot[sl].to(device), z[sl].to(device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 1, self.image_size, self.image_size)

    @torch.no_grad()
    def sample(self, labels: np.ndarray | torch.Tensor, z: torch.Tensor | None = None, batch_size: int = 64,
               seed: int = 0) -> torch.Tensor:
        """(n, 1, S, S) float in [-1, 1] on the CPU drawn from (z, label); latent models only."""
        if self.kind == "stargan":
            raise ValueError("stargan has no latent z to sample from: it translates input images (use translate)")
        n = len(labels)
        labels = self._labels(labels, n)
        z = self.draw_z(n, seed) if z is None else z
        device, out = self._device(), []
        self.eval()
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            out.append(self.generator(z[sl].to(device), labels[sl].to(device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 1, self.image_size, self.image_size)
