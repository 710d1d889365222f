"""The NIR family's model files, and the one sampler that turns them into images.

This module is the only owner of their payloads (how a file is read safely, and the "absent"
record, are :mod:`nirgan.models.files`'); train writes them, evaluate (and any later generate
stage) reads them, and nothing outside training ever opens a training checkpoint. The
expression family's file is :mod:`nirgan.expression.artifacts`'.

    generator.pt       {"state_dict", "train_config", "label_dim", "label_scale"} of G, plus
                       "mapping_state_dict" of the style mapping network L when the run has one
    encoder.pt         {"state_dict", "latent_dim", "width"} of the latent encoder E, or
                       {"absent": reason} for a run without E (the file always exists, so DVC
                       can declare it)
    pose_estimator.pt  {"state_dict", "config"} of a :class:`PoseEstimator` (also the baselines
                       stage's label_estimator.pt, or {"absent": reason} when the split has no
                       labels)
    baselines/         the baselines stage's record: instrument.pt (a pose_estimator.pt, the
                       feature network without labels) and record.json (figures and fingerprint,
                       :mod:`nirgan.metrics.baselines`), written and replaced together
    identity_net.pt    {"state_dict", "num_subjects", "embed_dim"} of an :class:`IdentityNet`

Only tensors and plain JSON types go in, so every file loads with ``weights_only=True``.

Labels: a label-conditioned network reads pose/gaze angles divided by ``LABEL_SCALE`` (order-1
values). That scaling is part of the generator file and is applied by :class:`Sampler`, whose
callers always pass degrees, so training and evaluation cannot disagree about it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nirgan.config import DataError, TrainConfig
from nirgan.devices import effective_precision, memory_format
from nirgan.io import atomic_dir, atomic_file, write_json
from nirgan.models.files import absent_reason, build_from, cpu_state, load_payload, save_absent
from nirgan.models.identity_net import IdentityNet
from nirgan.models.latent_encoder import LatentEncoder
from nirgan.models.networks import ImageGenerator, build_generator, build_networks
from nirgan.models.pose_estimator import PoseEstimator
from nirgan.models.style_mapping import StyleMappingNetwork

# Degrees -> the order-1 values the networks read when conditioned on pose/gaze labels.
LABEL_SCALE = 90.0
NO_ENCODER_REASON = "the run has no latent encoder E (train.lambda_lr and train.lambda_ir are 0)"


# ------------------------------------------------------------------------------- sampler
class Sampler(nn.Module):
    """G with L folded in and the label scaling inside: (source, z[, labels in degrees]) -> image.

    ``forward`` is what MLflow serves and the training grid draws; :meth:`generate` is the
    batched, no-grad form evaluation uses (CPU in and out, any device inside).
    """

    def __init__(self, generator: nn.Module, mapping: nn.Module | None = None, label_scale: float = LABEL_SCALE):
        super().__init__()
        self.generator, self.mapping, self.label_scale = generator, mapping, float(label_scale)
        self.bf16 = False  # generate() under bf16 autocast (see inference)

    def inference(self, precision: str, device: torch.device | str) -> Sampler:
        """This sampler on ``device`` in its memory format (channels_last on the CPU and CUDA), with
        :meth:`generate` in ``precision`` where it is native (:func:`nirgan.devices.autocast`'s
        policy). On 2 AVX512-BF16 cores the default generator drew 64 images/s contiguous in fp32,
        106 channels_last (within 1 grey level of them) and 172 channels_last in bf16."""
        device = torch.device(device)
        self.to(device).to(memory_format=memory_format(device))
        self.bf16 = effective_precision(precision, device) == "bf16"
        return self

    @property
    def latent_dim(self) -> int:
        return int(self.generator.latent_dim)

    @property
    def label_dim(self) -> int:
        return int(self.generator.label_dim)

    def style(self, z: torch.Tensor) -> torch.Tensor:
        """Algorithm 2's note: with L, z is replaced by s = L(z)."""
        return self.mapping(z) if self.mapping is not None else z

    def from_style(self, source: torch.Tensor, style: torch.Tensor | tuple[torch.Tensor, ...],
                   labels: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """G(source, style); a tuple of styles gives a tuple of images (the generators' own rule)."""
        scaled = labels / self.label_scale if self.label_dim and labels is not None else None
        return self.generator(source, style, scaled)

    def forward(self, source: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_style(source, self.style(z), labels)

    @torch.no_grad()
    def generate(self, sources: torch.Tensor, z: torch.Tensor | tuple[torch.Tensor, ...],
                 labels: np.ndarray | torch.Tensor | None = None, batch_size: int = 50,
                 style: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Images (n, 1, S, S) in [-1, 1] on the CPU; ``style=True`` means z is already a style. A
        tuple of latents gives a tuple of images, each what its own call would give, drawn together
        so that what depends on the source alone is computed once per batch."""
        many = isinstance(z, tuple)
        zs = z if many else (z,)
        device = next(self.generator.parameters()).device
        # no autocast context unless bf16: a caller's own (the generate stage's) stays in force
        in_bf16 = torch.autocast(device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        out: list[list[torch.Tensor]] = [[] for _ in zs]
        for i in range(0, len(sources), batch_size):
            lab = None
            if self.label_dim:
                lab = torch.as_tensor(labels[i : i + batch_size], dtype=torch.float32, device=device)
            batch_z = [zk[i : i + batch_size].to(device) for zk in zs]
            with in_bf16:
                styles = tuple(zb if style else self.style(zb) for zb in batch_z)
                drawn = self.from_style(sources[i : i + batch_size].to(device), styles if many else styles[0], lab)
            for images, batch in zip(out, drawn if many else (drawn,), strict=True):
                images.append(batch.float().cpu())
        cat = tuple(torch.cat(images) for images in out)
        return cat if many else cat[0]

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
        "state_dict": cpu_state(generator),
        "train_config": train_cfg.model_dump(mode="json"),
        "label_dim": int(label_dim),
        "label_scale": float(label_scale),
    }
    if mapping is not None:
        payload["mapping_state_dict"] = cpu_state(mapping)
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def _generator_payload(path: Path) -> dict:
    payload = load_payload(path, "generator")
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

    return build_from(path, "generator", build).to(map_location).eval()


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
        build_from(path, "generator", lambda: mapping.load_state_dict(payload["mapping_state_dict"]))
        mapping = mapping.to(map_location)
    sampler = Sampler(generator, mapping, payload.get("label_scale", LABEL_SCALE)).eval()
    sampler.train_config = train_cfg
    return sampler


# ------------------------------------------------------------------------------- encoder
def save_encoder(path: str | Path, encoder: LatentEncoder | None, absent_reason: str = NO_ENCODER_REASON) -> None:
    payload = ({"absent": absent_reason} if encoder is None else
               {"state_dict": cpu_state(encoder), "latent_dim": int(encoder.latent_dim), "width": float(encoder.width),
                "variational": bool(encoder.variational)})
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[LatentEncoder | None, str]:
    """(E in eval mode, or None, and where it came from or why there is none)."""
    path = Path(path)
    if not path.exists():
        return None, f"{path} is missing (run the train stage)"
    payload = load_payload(path, "latent encoder")
    if isinstance(payload, dict) and "absent" in payload:
        return None, str(payload["absent"])

    def build() -> LatentEncoder:
        encoder = LatentEncoder(int(payload["latent_dim"]), float(payload["width"]),
                                bool(payload.get("variational", False)))
        encoder.load_state_dict(payload["state_dict"])
        return encoder

    return build_from(path, "latent encoder", build).to(map_location).eval(), str(path)


# ------------------------------------------------------------------- auxiliary networks
def save_pose_estimator(model: PoseEstimator, path: str | Path) -> None:
    with atomic_file(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": model.config()}, tmp)


def load_pose_estimator(path: str | Path, map_location: str | torch.device = "cpu") -> PoseEstimator:
    path = Path(path)
    blob = load_payload(path, "pose estimator")

    def build() -> PoseEstimator:
        model = PoseEstimator(**blob["config"])
        model.load_state_dict(blob["state_dict"])
        return model

    return build_from(path, "pose estimator", build).eval()


BASELINES = "baselines"  # the baselines stage's folder, in the model folder
BASELINE_FILES = ("instrument.pt", "record.json")


def save_baselines(folder: str | Path, instrument: PoseEstimator, record: dict) -> None:
    """The baselines stage's folder, atomically: both files or neither."""
    with atomic_dir(folder) as tmp:
        save_pose_estimator(instrument, tmp / BASELINE_FILES[0])
        write_json(tmp / BASELINE_FILES[1], record)


def load_baselines(folder: str | Path, map_location: str | torch.device = "cpu") -> tuple[PoseEstimator, dict]:
    """(instrument, record) from the baselines stage's folder; FileNotFoundError or DataError,
    naming the file, when it is missing or unreadable."""
    folder = Path(folder)
    path = folder / BASELINE_FILES[1]
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no baselines record (run the baselines stage first)") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(saved, dict):
        raise DataError(f"{path}: not a baselines record (a JSON object)")
    return load_pose_estimator(folder / BASELINE_FILES[0]).to(map_location), saved


def save_identity_net(net: IdentityNet, path: str | Path) -> None:
    with atomic_file(path) as tmp:
        torch.save({"state_dict": net.state_dict(), "num_subjects": net.num_subjects, "embed_dim": net.embed_dim}, tmp)


def load_identity_net(path: str | Path, map_location: str | torch.device = "cpu") -> IdentityNet:
    """Frozen (eval mode, no grad), as a distance or an instrument wants it."""
    path = Path(path)
    blob = load_payload(path, "identity network")

    def build() -> IdentityNet:
        net = IdentityNet(blob["num_subjects"], blob["embed_dim"])
        net.load_state_dict(blob["state_dict"])
        return net

    return build_from(path, "identity network", build).to(map_location).eval().requires_grad_(False)


__all__ = ["LABEL_SCALE", "NO_ENCODER_REASON", "Sampler", "absent_reason", "load_encoder", "load_generator",
           "load_identity_net", "load_pose_estimator", "load_sampler", "save_absent", "save_encoder",
           "save_generator", "save_identity_net", "save_pose_estimator", "untrained_sampler"]
