"""The model files of a run, and the one sampler that turns them into images.

This module is the only owner of their formats; train writes them, evaluate (and any later
generate stage) reads them, and nothing outside training ever opens a training checkpoint.

    generator.pt       {"state_dict", "train_config", "label_dim", "label_scale"} of G, plus
                       "mapping_state_dict" of the style mapping network L when the run has one
    encoder.pt         {"state_dict", "latent_dim", "width"} of the latent encoder E, or
                       {"absent": reason} for a run without E (the file always exists, so DVC
                       can declare it)
    pose_estimator.pt  {"state_dict", "config"} of a :class:`PoseEstimator` (also evaluate's
                       label_estimator.pt, or {"absent": reason} when evaluate had no labels)
    identity_net.pt    {"state_dict", "num_subjects", "embed_dim"} of an :class:`IdentityNet`
    expression_generator.pt  an expression model's :class:`ExpressionTranslator` (see its section)

Only tensors and plain JSON types go in, so every file loads with ``weights_only=True``.

Labels: a label-conditioned network reads pose/gaze angles divided by ``LABEL_SCALE`` (order-1
values). That scaling is part of the generator file and is applied by :class:`Sampler`, whose
callers always pass degrees, so training and evaluation cannot disagree about it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from nirgan.config import DataError, ExpressionTrainConfig, TrainConfig
from nirgan.io import atomic_file
from nirgan.models.expression.build import build_expression_networks
from nirgan.models.expression.translator import ExpressionTranslator
from nirgan.models.identity_net import IdentityNet
from nirgan.models.latent_encoder import LatentEncoder
from nirgan.models.networks import ImageGenerator, build_generator, build_networks
from nirgan.models.pose_estimator import PoseEstimator
from nirgan.models.style_mapping import StyleMappingNetwork

# Degrees -> the order-1 values the networks read when conditioned on pose/gaze labels.
LABEL_SCALE = 90.0
NO_ENCODER_REASON = "the run has no latent encoder E (train.lambda_lr and train.lambda_ir are 0)"


def _cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _load(path: Path, what: str) -> dict:
    """The file's payload, read with ``weights_only=True`` (a model file may come from anyone).

    A file that is not one (empty, garbage, a pickle of arbitrary objects) is a one-line
    :class:`DataError`. torch's own message is not passed on: for such a pickle it advises
    ``weights_only=False``, which would run whatever code the file carries.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no {what} file (run the train stage first)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a {what} file") from None
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is a bad file, never a bug here
        empty = path.is_file() and path.stat().st_size == 0
        why = "an empty file" if empty else f"not a {what} file nirgan wrote ({type(exc).__name__})"
        raise DataError(f"{path}: cannot load the {what}: {why}") from None


def _build(path: Path, what: str, build):  # noqa: ANN001, ANN202
    """``build()`` turns a payload into a network; a payload of the wrong shape is a bad file."""
    try:
        return build()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, DataError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a usable {what} file: {first[:200]}") from None


# ------------------------------------------------------------------------------- sampler
class Sampler(nn.Module):
    """G with L folded in and the label scaling inside: (source, z[, labels in degrees]) -> image.

    ``forward`` is what MLflow serves and the training grid draws; :meth:`generate` is the
    batched, no-grad form evaluation uses (CPU in and out, any device inside).
    """

    def __init__(self, generator: nn.Module, mapping: nn.Module | None = None, label_scale: float = LABEL_SCALE):
        super().__init__()
        self.generator, self.mapping, self.label_scale = generator, mapping, float(label_scale)

    @property
    def latent_dim(self) -> int:
        return int(self.generator.latent_dim)

    @property
    def label_dim(self) -> int:
        return int(self.generator.label_dim)

    def style(self, z: torch.Tensor) -> torch.Tensor:
        """Algorithm 2's note: with L, z is replaced by s = L(z)."""
        return self.mapping(z) if self.mapping is not None else z

    def from_style(self, source: torch.Tensor, style: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        scaled = labels / self.label_scale if self.label_dim and labels is not None else None
        return self.generator(source, style, scaled)

    def forward(self, source: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_style(source, self.style(z), labels)

    @torch.no_grad()
    def generate(self, sources: torch.Tensor, z: torch.Tensor, labels: np.ndarray | torch.Tensor | None = None,
                 batch_size: int = 50, style: bool = False) -> torch.Tensor:
        """Images (n, 1, S, S) in [-1, 1] on the CPU; ``style=True`` means z is already a style."""
        device = next(self.generator.parameters()).device
        out = []
        for i in range(0, len(sources), batch_size):
            zb = z[i : i + batch_size].to(device)
            s = zb if style else self.style(zb)
            lab = None
            if self.label_dim:
                lab = torch.as_tensor(labels[i : i + batch_size], dtype=torch.float32, device=device)
            out.append(self.from_style(sources[i : i + batch_size].to(device), s, lab).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def style_of(self, z: torch.Tensor) -> torch.Tensor:
        """Batched :meth:`style` on the CPU."""
        if self.mapping is None:
            return z
        device = next(self.mapping.parameters()).device
        return self.mapping(z.to(device)).cpu()


def untrained_sampler(train_cfg: TrainConfig, label_dim: int) -> Sampler:
    """The run's architecture at its initialisation (``train.seed``), without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_cfg.seed)
        fresh = build_networks(train_cfg, label_dim)
    return Sampler(fresh.generator, fresh.mapping).eval()


# ----------------------------------------------------------------------------- generator
def save_generator(path: str | Path, generator: nn.Module, train_cfg: TrainConfig, label_dim: int,
                   mapping: nn.Module | None = None, label_scale: float = LABEL_SCALE) -> None:
    """Write generator.pt (see the module docstring), atomically."""
    payload = {
        "state_dict": _cpu(generator),
        "train_config": train_cfg.model_dump(mode="json"),
        "label_dim": int(label_dim),
        "label_scale": float(label_scale),
    }
    if mapping is not None:
        payload["mapping_state_dict"] = _cpu(mapping)
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def _generator_payload(path: Path) -> dict:
    payload = _load(path, "generator")
    missing = {"state_dict", "train_config", "label_dim"} - set(payload) if isinstance(payload, dict) else {"all keys"}
    if missing:
        raise DataError(f"{path}: not a nirgan generator file, missing {sorted(missing)}")
    return payload


def load_generator(path: str | Path, map_location: str | torch.device = "cpu") -> ImageGenerator:
    """G alone from generator.pt, in eval mode; its training config is ``.train_config``."""
    path = Path(path)
    payload = _generator_payload(path)

    def build() -> ImageGenerator:
        train_cfg = TrainConfig.model_validate(payload["train_config"])
        generator = build_generator(train_cfg, int(payload["label_dim"]))
        generator.load_state_dict(payload["state_dict"])
        generator.train_config = train_cfg
        return generator

    return _build(path, "generator", build).to(map_location).eval()


def load_sampler(path: str | Path, map_location: str | torch.device = "cpu") -> Sampler:
    """The sampler of generator.pt (G, L if the run has one, the label scaling), in eval mode.

    ``.train_config`` is the run's TrainConfig.
    """
    path = Path(path)
    payload = _generator_payload(path)
    generator = load_generator(path, map_location)
    train_cfg = generator.train_config
    mapping = None
    if train_cfg.style_mapping:
        if "mapping_state_dict" not in payload:
            raise DataError(f"{path}: the run uses a style mapping network (train.style_mapping) but the file "
                            "has no mapping_state_dict")
        mapping = StyleMappingNetwork(train_cfg.latent_dim, train_cfg.latent_dim)
        _build(path, "generator", lambda: mapping.load_state_dict(payload["mapping_state_dict"]))
        mapping = mapping.to(map_location)
    sampler = Sampler(generator, mapping, payload.get("label_scale", LABEL_SCALE)).eval()
    sampler.train_config = train_cfg
    return sampler


# ------------------------------------------------------------------------------- encoder
def save_encoder(path: str | Path, encoder: LatentEncoder | None, absent_reason: str = NO_ENCODER_REASON) -> None:
    payload = ({"absent": absent_reason} if encoder is None else
               {"state_dict": _cpu(encoder), "latent_dim": int(encoder.latent_dim), "width": float(encoder.width),
                "variational": bool(encoder.variational)})
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[LatentEncoder | None, str]:
    """(E in eval mode, or None, and where it came from or why there is none)."""
    path = Path(path)
    if not path.exists():
        return None, f"{path} is missing (run the train stage)"
    payload = _load(path, "latent encoder")
    if isinstance(payload, dict) and "absent" in payload:
        return None, str(payload["absent"])

    def build() -> LatentEncoder:
        encoder = LatentEncoder(int(payload["latent_dim"]), float(payload["width"]),
                                bool(payload.get("variational", False)))
        encoder.load_state_dict(payload["state_dict"])
        return encoder

    return _build(path, "latent encoder", build).to(map_location).eval(), str(path)


# ------------------------------------------------------------------- auxiliary networks
def save_pose_estimator(model: PoseEstimator, path: str | Path) -> None:
    with atomic_file(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": model.config()}, tmp)


def save_absent(path: str | Path, reason: str) -> None:
    """A model file that declares why there is no model (so DVC can always declare the file)."""
    with atomic_file(path) as tmp:
        torch.save({"absent": reason}, tmp)


def absent_reason(path: str | Path) -> str | None:
    """Why a model file holds no model (missing, or an "absent" record); None when it holds one."""
    path = Path(path)
    if not path.exists():
        return f"{path} is missing"
    blob = _load(path, "model")
    return str(blob["absent"]) if isinstance(blob, dict) and "absent" in blob else None


def load_pose_estimator(path: str | Path, map_location: str | torch.device = "cpu") -> PoseEstimator:
    path = Path(path)
    blob = _load(path, "pose estimator")

    def build() -> PoseEstimator:
        model = PoseEstimator(**blob["config"])
        model.load_state_dict(blob["state_dict"])
        return model

    return _build(path, "pose estimator", build).eval()


def save_identity_net(net: IdentityNet, path: str | Path) -> None:
    with atomic_file(path) as tmp:
        torch.save({"state_dict": net.state_dict(), "num_subjects": net.num_subjects, "embed_dim": net.embed_dim}, tmp)


def load_identity_net(path: str | Path, map_location: str | torch.device = "cpu") -> IdentityNet:
    """Frozen (eval mode, no grad), as a distance or an instrument wants it."""
    path = Path(path)
    blob = _load(path, "identity network")

    def build() -> IdentityNet:
        net = IdentityNet(blob["num_subjects"], blob["embed_dim"])
        net.load_state_dict(blob["state_dict"])
        return net

    return _build(path, "identity network", build).to(map_location).eval().requires_grad_(False)


# --------------------------------------------------------------------- expression models
# expression_generator.pt: {"kind", "names", "image_size", "latent_dim", "config" (the run's
# ExpressionTrainConfig), "generator" (state dict; the EMA one when the run has it), "encoder"
# (state dict, cgan_encoder only; else absent)}.
def save_expression_generator(path: str | Path, translator: ExpressionTranslator, cfg: ExpressionTrainConfig) -> None:
    payload = {"kind": translator.kind, "names": list(translator.names), "image_size": translator.image_size,
               "latent_dim": translator.latent_dim, "config": cfg.model_dump(mode="json"),
               "generator": _cpu(translator.generator)}
    if translator.encoder is not None:
        payload["encoder"] = _cpu(translator.encoder)
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def load_expression_translator(path: str | Path, map_location: str | torch.device = "cpu") -> ExpressionTranslator:
    """The :class:`ExpressionTranslator` of expression_generator.pt, in eval mode; ``.config`` is its
    ExpressionTrainConfig."""
    path = Path(path)
    payload = _load(path, "expression generator")
    missing = ({"kind", "names", "image_size", "latent_dim", "config", "generator"} - set(payload)
               if isinstance(payload, dict) else {"all keys"})
    if missing:
        raise DataError(f"{path}: not a nirgan expression generator file, missing {sorted(missing)}")

    def build() -> ExpressionTranslator:
        cfg = ExpressionTrainConfig.model_validate(payload["config"])
        with torch.random.fork_rng(devices=[]):
            nets = build_expression_networks(cfg, len(payload["names"]))
        nets.generator.load_state_dict(payload["generator"])
        encoder = None
        if payload["kind"] == "cgan_encoder":
            if "encoder" not in payload:
                raise DataError(f"{path}: a cgan_encoder file without its encoder E")
            encoder = nets.encoder
            encoder.load_state_dict(payload["encoder"])
        translator = ExpressionTranslator(payload["kind"], nets.generator, payload["names"],
                                          int(payload["image_size"]), int(payload["latent_dim"]), encoder)
        translator.config = cfg
        return translator

    return _build(path, "expression generator", build).to(map_location).eval()
