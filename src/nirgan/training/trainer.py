"""The training loop: thesis Algorithm 2 with the Table 3.8 schedule, resumable and fast.

Per iteration (Algorithm 2): draw a batch of pairs and fresh augmentations, draw z, update D
on real vs. G(y, z); draw new z (and z* for style diversity), update G (and E, L) on the full
loss Eq. 3.5 (``nirgan.training.core``); then the EMA generator and the per-step learning-rate
schedule (constant for ``epochs_fixed`` epochs, then linear to zero over ``epochs_decay``).

Speed. The uint8 training arrays are moved once to the training device and indexed there
with a seeded permutation per epoch; :func:`nirgan.stages.augment.paired_augment`'s transform
runs batched on the same device. On CUDA: bf16 autocast, channels_last, fused Adam,
optionally ``torch.compile``. Losses are accumulated on the device and fetched only every
``log_every`` steps (the one host synchronisation), where non-finiteness is also checked.

Reliability. The whole state (networks, EMA, optimisers, schedulers, RNG states, step and the
epoch's data order) is checkpointed every ``checkpoint_every`` steps and at the end through
:class:`~nirgan.training.checkpoint.Checkpoint`; a run finding ``<out_dir>/checkpoints/latest``
resumes from it, so a run killed with ``kill -9`` continues where it saved. With
``deterministic`` on CPU, "N steps, kill, resume, N steps" equals "2N steps" bit for bit:
every random draw comes from a generator whose state is in the checkpoint. A non-finite loss
stops the run naming the loss and its first bad step; no checkpoint is written after it.

Scale-out. Under ``torchrun`` each process takes its rank's slice of every global batch
(``batch_size`` is the global batch); z and the augmentation draws are drawn for the global
batch on every process and sliced, and batch norm is synchronised, so N processes compute
what one process computes. Checkpoints, MLflow and sample grids are rank 0's job.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from nirgan import devices
from nirgan.config import Config, TrainConfig
from nirgan.io import atomic_file, read_table, write_image, write_json
from nirgan.labels import LABELS
from nirgan.training.checkpoint import Checkpoint, rng_state, set_rng_state
from nirgan.training.core import Batch, StepNets, compute_d_loss, compute_g_loss, distances_in_use
from nirgan.training.distributed import DistInfo, barrier, convert_batchnorm, init_distributed

log = logging.getLogger("nirgan.train")

# Degrees -> the order-1 values the networks read when conditioned on pose/gaze labels.
LABEL_SCALE = 90.0
# Config fields that may change between a run and its resumption without invalidating it.
RESUMABLE_CHANGES = frozenset({
    "max_steps", "max_minutes", "log_every", "checkpoint_every", "compile", "num_workers", "device", "precision",
    "deterministic", "sample_sources", "sample_latents", "log_model",
})


class NonFiniteLossError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------ data
@dataclass
class TrainData:
    """The training split on the training device, plus the fixed sample-grid inputs.

    ``source`` (N, S, S, 3) and ``target`` (N, S, S) stay uint8 (a quarter of the float
    memory); ``labels`` (N, 5) are degrees in ``LABELS`` order, NaN where unknown.
    """

    source: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor
    subjects: np.ndarray
    sample_source: torch.Tensor
    sample_target: torch.Tensor
    sample_labels: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.source.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.source.shape[1])


def _labels_of(df: pd.DataFrame) -> np.ndarray:
    cols = [df[c].astype("float64").to_numpy() if c in df else np.full(len(df), np.nan) for c in LABELS]
    return np.stack(cols, axis=1).astype(np.float32) if len(df) else np.zeros((0, len(LABELS)), np.float32)


def load_data(prepared_dir: Path, split_dir: Path, device: torch.device, sample_count: int) -> TrainData:
    """Read data/prepared's arrays and data/split's tables; move the training rows to ``device``."""
    src_path, tgt_path = prepared_dir / "source.npy", prepared_dir / "target.npy"
    for p in (src_path, tgt_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: prepared array is missing (did the augment stage run?)")
    source = np.load(src_path, mmap_mode="r")
    target = np.load(tgt_path, mmap_mode="r")
    if source.ndim != 4 or source.shape[-1] != 3 or target.shape != source.shape[:3] or source.dtype != np.uint8:
        raise ValueError(f"{prepared_dir}: expected source (N,S,S,3) and target (N,S,S) uint8, got "
                         f"{source.dtype} {source.shape} and {target.dtype} {target.shape}")
    train = read_table(split_dir / "train.parquet")
    test_path = split_dir / "test.parquet"
    test = read_table(test_path) if test_path.exists() else train.iloc[:0]
    for name, df in (("train", train), ("test", test)):
        if "index" not in df:
            raise ValueError(f"{split_dir / (name + '.parquet')}: column 'index' is missing")
        bad = df["index"][(df["index"] < 0) | (df["index"] >= len(source))]
        if len(bad):
            raise ValueError(f"{split_dir / (name + '.parquet')}: index {int(bad.iloc[0])} is outside "
                             f"the {len(source)} prepared pairs in {prepared_dir}")
    if len(train) == 0:
        raise ValueError(f"{split_dir / 'train.parquet'}: the training split is empty")
    idx = train["index"].to_numpy()
    # The grid shows unseen test sources when there are any; otherwise the first training pairs.
    grid = test if len(test) else train
    grid_idx = grid["index"].to_numpy()[:sample_count]

    def to_dev(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    from nirgan.stages.augment import to_model_range

    return TrainData(
        source=to_dev(source[idx]),
        target=to_dev(target[idx]),
        labels=to_dev(_labels_of(train)),
        subjects=train["subject"].astype(str).to_numpy() if "subject" in train else np.zeros(len(train), str),
        sample_source=to_model_range(to_dev(source[grid_idx]).permute(0, 3, 1, 2)),
        sample_target=to_model_range(to_dev(target[grid_idx])[:, None]),
        sample_labels=to_dev(_labels_of(grid.iloc[: len(grid_idx)])),
    )


# ----------------------------------------------------------------------------- schedule
def lr_factor(step: int, steps_per_epoch: int, tc: TrainConfig) -> float:
    """Table 3.8 / 3.2.6.1: 1 for K_fixed epochs, then linear to zero over K_decay epochs."""
    fixed = tc.epochs_fixed * steps_per_epoch
    decay = tc.epochs_decay * steps_per_epoch
    if step < fixed or decay == 0:
        return 1.0
    return max(0.0, (fixed + decay - step) / decay)


def resolve_device(choice: str) -> torch.device:
    return devices.resolve_device(choice, "train.device")


def thesis_name(tc: TrainConfig) -> str:
    """The thesis's configuration naming (Tables 4.2-4.8), e.g. ED-LS-LR-2."""
    parts = ["ED" if tc.generator == "encoder_decoder" else "Mult",
             {"original": "O", "least_squares": "LS", "hinge": "H"}[tc.adversarial_loss]]
    if tc.perceptual != "none":
        parts.append("P" + {"discriminator": "D", "vgg19": "VGG"}[tc.perceptual])
    for tag, lam in (("LR", tc.lambda_lr), ("SD", tc.lambda_sd), ("IR", tc.lambda_ir)):
        if lam > 0:
            parts.append(f"{tag}-{lam:g}")
    if tc.style_mapping:
        parts.append("SM")
    return "-".join(parts)


def _code_hash() -> str:
    """The source of everything that defines the step's math (networks, losses, augmentation).

    A resumed run must not silently continue under changed model code (dvc repro reruns the
    stage after such a change and would otherwise find a finished checkpoint).
    """
    pkg = Path(__file__).resolve().parents[1]
    files = sorted([*(pkg / "models").glob("*.py"), pkg / "losses.py", pkg / "training" / "core.py",
                    pkg / "stages" / "augment.py"])
    h = hashlib.sha256()
    for f in files:
        if f.exists():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(cfg: Config, data: TrainData) -> dict[str, Any]:
    """What a checkpoint must share with the current run to be resumed."""
    tc = {k: v for k, v in cfg.train.model_dump(mode="json").items() if k not in RESUMABLE_CHANGES}
    return {"train": tc, "augment": cfg.augment.model_dump(mode="json"), "pairs": data.size,
            "image_size": data.image_size, "code": _code_hash()}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def check_config(cfg: Config, world_size: int) -> None:
    """Everything that can be known wrong before any work starts."""
    tc = cfg.train
    if tc.perceptual == "vgg19" or "vgg19" in distances_in_use(tc):
        from nirgan.models.vgg19 import require_vgg19_weights

        require_vgg19_weights()
    if tc.batch_size % world_size:
        raise ValueError(f"train.batch_size ({tc.batch_size}) is the global batch and must divide evenly "
                         f"over the {world_size} processes")
    if tc.perceptual == "discriminator" or "discriminator" in distances_in_use(tc):
        n_blocks = 5  # Table 3.3's hidden blocks
        bad = [i for i in tc.perceptual_layers if not 1 <= i <= n_blocks]
        if bad:
            raise ValueError(f"train.perceptual_layers {bad}: the discriminator has blocks 1..{n_blocks}")


class _StandardisedEstimator(nn.Module):
    """A frozen pose/gaze estimator giving angles in its label-std units (all five weigh alike)."""

    def __init__(self, estimator: nn.Module):
        super().__init__()
        self.estimator = estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.estimator.forward_normalised(x)[0]


class SamplingGenerator(nn.Module):
    """G with L folded in: (source, z[, labels]) -> image; what MLflow serves and the grid uses."""

    def __init__(self, generator: nn.Module, mapping: nn.Module | None):
        super().__init__()
        self.generator, self.mapping = generator, mapping

    def forward(self, source: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        style = self.mapping(z) if self.mapping is not None else z
        return self.generator(source, style, labels)


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


# ------------------------------------------------------------------------------ session
class TrainSession:
    """All networks, optimisers and random sources of one run, and :meth:`step` = one iteration.

    ``aux_dir`` (the stage's out_dir) is where the identity network and pose estimator are
    saved and, on a resumed run, reloaded from.
    """

    def __init__(self, cfg: Config, data: TrainData, device: torch.device, info: DistInfo = DistInfo(),
                 aux_dir: Path | None = None):
        from nirgan.models import build_networks

        self.cfg, self.tc, self.data, self.device, self.info = cfg, cfg.train, data, device, info
        tc = self.tc
        self.global_batch = tc.batch_size
        self.local_batch = tc.batch_size // info.world_size
        self.steps_per_epoch = data.size // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training split has {data.size} pairs, fewer than one batch "
                             f"(train.batch_size = {self.global_batch})")
        self.total_steps = tc.epochs * self.steps_per_epoch
        self.cuda = device.type == "cuda"
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if self.cuda and tc.precision == "bf16" else nullcontext())
        self.memory_format = torch.channels_last if self.cuda else torch.contiguous_format

        self.label_dim = len(LABELS) if tc.condition_on_labels else 0
        if tc.condition_on_labels and not torch.isfinite(data.labels).all():
            bad = [LABELS[i] for i in range(len(LABELS)) if not torch.isfinite(data.labels[:, i]).all()]
            raise ValueError(f"train.condition_on_labels needs every training pair's labels; {bad} have "
                             "unknown (NaN) values")

        torch.manual_seed(tc.seed)
        nets = build_networks(tc, self.label_dim)
        self.raw: dict[str, nn.Module] = {"generator": nets.generator, "discriminator": nets.discriminator}
        if nets.encoder is not None:
            self.raw["encoder"] = nets.encoder
        if nets.mapping is not None:
            self.raw["mapping"] = nets.mapping
        self.ema: dict[str, nn.Module] = {}
        if tc.ema_decay > 0:
            for name in ("generator", "mapping"):
                if name in self.raw:
                    self.ema[name] = copy.deepcopy(self.raw[name]).eval().requires_grad_(False)
        for m in (*self.raw.values(), *self.ema.values()):
            m.to(device, memory_format=self.memory_format)

        self.vgg = self.identity = self.estimator = None
        self.attr_mean = self.attr_std = None
        self._build_auxiliary(aux_dir)

        if info.enabled:
            for name in ("generator", "encoder"):
                if name in self.raw:
                    convert_batchnorm(self.raw[name], device.type)
        self.optimizers = {
            name: torch.optim.Adam(
                self.raw[name].parameters(), lr=getattr(tc, lr_key), betas=(tc.beta1, tc.beta2),
                **({"fused": True} if self.cuda else {}),
            )
            for name, lr_key in (("generator", "lr_g"), ("discriminator", "lr_d"), ("encoder", "lr_e"),
                                 ("mapping", "lr_l"))
            if name in self.raw
        }
        spe = self.steps_per_epoch
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(opt, lambda s, spe=spe, tc=tc: lr_factor(s, spe, tc))
            for name, opt in self.optimizers.items()
        }
        self._wrap()

        # Every random draw of the loop comes from one of these (all in the checkpoint).
        self.generators = {
            "data": torch.Generator().manual_seed(tc.seed),
            "latent": torch.Generator(device=device).manual_seed(tc.seed + 1),
            "augment": torch.Generator(device=device).manual_seed(tc.seed + 2),
        }
        self.step = 0
        self._perm_epoch = 0
        self.perm_cpu = torch.randperm(data.size, generator=self.generators["data"])
        self.perm = self.perm_cpu.to(device)
        self.sample_z = torch.randn(tc.sample_latents, tc.latent_dim,
                                    generator=torch.Generator().manual_seed(tc.seed + 3)).to(device)
        self._ema_pairs = self._ema_lists()

    # -------------------------------------------------------------------- construction
    def _build_auxiliary(self, aux_dir: Path | None) -> None:
        tc, data, device = self.tc, self.data, self.device
        used = distances_in_use(tc)
        if tc.perceptual == "vgg19" or "vgg19" in used:
            from nirgan.models import VGG19Features

            self.vgg = VGG19Features().to(device, memory_format=self.memory_format)
            log.info("VGG-19 perceptual network: ImageNet weights from %s", self.vgg.weights_path)
        if "identity" in used:
            self.identity = self._aux(aux_dir, "identity_net.pt", self._train_identity, self._load_identity)
        if tc.lambda_attr > 0:
            est = self._aux(aux_dir, "pose_estimator.pt", self._train_estimator, self._load_estimator)
            self.estimator = _StandardisedEstimator(est).eval().requires_grad_(False).to(device)
            self.attr_mean, self.attr_std = est.label_mean.float(), est.label_std.float()

    def _aux(self, aux_dir: Path | None, name: str, train_fn, load_fn) -> nn.Module:
        """Train an auxiliary network on rank 0 (or reload it when resuming), share via the file."""
        path = aux_dir / name if aux_dir is not None else None
        if path is not None and path.exists() and (aux_dir / "checkpoints" / "latest").exists():
            return load_fn(path)
        if self.info.is_main or path is None:
            net = train_fn(path)
        barrier(self.info)
        if not self.info.is_main and path is not None:
            net = load_fn(path)
        return net

    def _train_identity(self, path: Path | None) -> nn.Module:
        from nirgan.models import train_identity_net

        net = train_identity_net(self.data.target, self.data.subjects, epochs=self.tc.identity_epochs,
                                 device=self.device, seed=self.tc.seed)
        if path is not None:
            with atomic_file(path) as tmp:
                torch.save({"state_dict": net.state_dict(), "num_subjects": net.num_subjects,
                            "embed_dim": net.embed_dim}, tmp)
        return net

    def _load_identity(self, path: Path) -> nn.Module:
        from nirgan.models import IdentityNet

        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = IdentityNet(blob["num_subjects"], blob["embed_dim"])
        net.load_state_dict(blob["state_dict"])
        return net.to(self.device).eval().requires_grad_(False)

    def _train_estimator(self, path: Path | None) -> nn.Module:
        from nirgan.models.pose_estimator import EstimatorTraining, save_pose_estimator, train_pose_estimator

        known = torch.isfinite(self.data.labels).all(1)
        if int(known.sum()) < 2:
            raise ValueError("train.lambda_attr > 0 needs pose/gaze labels on the training pairs; none are known")
        keep = known.nonzero().squeeze(1)
        subjects = torch.as_tensor(pd.factorize(self.data.subjects)[0], device=self.device)
        est = train_pose_estimator(
            self.data.target[keep], self.data.source[keep], self.data.labels[keep], subjects[keep],
            EstimatorTraining(epochs=self.tc.attr_estimator_epochs, seed=self.tc.seed), device=self.device,
        )
        if path is not None:
            save_pose_estimator(est, path)
        return est

    def _load_estimator(self, path: Path) -> nn.Module:
        from nirgan.models.pose_estimator import load_pose_estimator

        return load_pose_estimator(path, map_location=self.device)

    def _wrap(self) -> None:
        """The two views of Algorithm 2's alternating updates (see ``nirgan.training.core``)."""
        tc = self.tc
        trained = dict(self.raw)
        if self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.cuda else None
            trained = {name: DDP(m, device_ids=ids, broadcast_buffers=False) for name, m in self.raw.items()}
        plain = dict(self.raw)
        if tc.compile != "none":
            def compiled(nets: dict) -> dict:
                return {k: torch.compile(m, mode=tc.compile) for k, m in nets.items()}

            trained = compiled(trained)
            plain = trained if not self.info.enabled else compiled(plain)
        aux = dict(vgg=self.vgg, identity=self.identity, estimator=self.estimator)
        self.d_view = StepNets(generator=plain["generator"], discriminator=trained["discriminator"],
                               mapping=plain.get("mapping"), **aux)
        self.g_view = StepNets(generator=trained["generator"], discriminator=plain["discriminator"],
                               encoder=trained.get("encoder"), mapping=trained.get("mapping"), **aux)

    def _ema_lists(self) -> list[tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]]:
        pairs = []
        for name, ema in self.ema.items():
            src = self.raw[name]
            pairs.append(([p for p in ema.parameters()], [p.detach() for p in src.parameters()],
                          [b for b in ema.buffers()], [b for b in src.buffers()]))
        return pairs

    # ---------------------------------------------------------------------------- step
    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def _next_batch(self) -> Batch:
        """This rank's slice of the global batch, augmented on the device (no host sync)."""
        from nirgan.stages.augment import apply_params, draw_params

        tc, data = self.tc, self.data
        if self.step % self.steps_per_epoch == 0 and self.step > 0 and self._perm_epoch != self.epoch:
            self._new_epoch_order()
        start = (self.step % self.steps_per_epoch) * self.global_batch + self.info.rank * self.local_batch
        idx = self.perm[start : start + self.local_batch]
        source = data.source[idx].permute(0, 3, 1, 2)
        target = data.target[idx].unsqueeze(1)
        labels = data.labels[idx] if (self.label_dim or self.estimator is not None) else None
        # The draws are made for the whole global batch on every rank and sliced, so the
        # result does not depend on how many processes share the batch.
        params = draw_params(self.global_batch, self.cfg.augment, self.generators["augment"], self.device)
        lo = self.info.rank * self.local_batch
        params = {k: v[lo : lo + self.local_batch] for k, v in params.items()}
        source, target, labels = apply_params(source, target, labels, params)
        source = source.contiguous(memory_format=self.memory_format)
        target = target.contiguous(memory_format=self.memory_format)
        cond = labels / LABEL_SCALE if self.label_dim else None
        attrs = (labels - self.attr_mean) / self.attr_std if self.estimator is not None else None
        return Batch(source, target, cond, attrs)

    def _new_epoch_order(self) -> None:
        self.perm_cpu = torch.randperm(self.data.size, generator=self.generators["data"])
        self.perm = self.perm_cpu.to(self.device)
        self._perm_epoch = self.epoch

    def _latent(self) -> torch.Tensor:
        z = torch.randn(self.global_batch, self.tc.latent_dim, generator=self.generators["latent"],
                        device=self.device)
        lo = self.info.rank * self.local_batch
        return z[lo : lo + self.local_batch]

    def train_step(self) -> dict[str, torch.Tensor]:
        """One iteration of Algorithm 2; returns the detached loss parts (still on the device)."""
        tc = self.tc
        batch = self._next_batch()
        z_d = self._latent()
        for m in self.raw.values():
            m.train()

        with self.autocast:
            d_loss, d_parts = compute_d_loss(self.d_view, batch, z_d, tc)
        opt_d = self.optimizers["discriminator"]
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        z1 = self._latent()
        z2 = self._latent() if tc.lambda_sd > 0 else None
        disc = self.raw["discriminator"]
        _set_requires_grad(disc, False)
        try:
            with self.autocast:
                g_loss, g_parts = compute_g_loss(self.g_view, batch, z1, z2, tc)
            g_opts = [opt for name, opt in self.optimizers.items() if name != "discriminator"]
            for opt in g_opts:
                opt.zero_grad(set_to_none=True)
            g_loss.backward()
            for opt in g_opts:
                opt.step()
        finally:
            _set_requires_grad(disc, True)

        self._update_ema()
        for sched in self.schedulers.values():
            sched.step()
        self.step += 1
        return {**d_parts, **g_parts}

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up as in TF's ExponentialMovingAverage(num_updates): with a fixed 0.999 a run of a
        # few hundred steps would sample from a generator that is still mostly its random init.
        decay = min(self.tc.ema_decay, (1 + self.step) / (10 + self.step))
        for ema_p, src_p, ema_b, src_b in self._ema_pairs:
            torch._foreach_lerp_(ema_p, src_p, 1.0 - decay)
            if ema_b:
                torch._foreach_copy_(ema_b, src_b)

    def sampler(self) -> SamplingGenerator:
        """The generator used for samples and saved as generator.pt: the EMA one when enabled."""
        g = self.ema.get("generator", self.raw["generator"])
        m = self.ema.get("mapping", self.raw.get("mapping")) if "mapping" in self.raw else None
        return SamplingGenerator(g, m)

    @torch.no_grad()
    def sample_grid(self) -> np.ndarray:
        """Rows: fixed sources; columns: source, real target, then one image per fixed z."""
        sampler = self.sampler()
        was = sampler.training
        sampler.eval()
        src, tgt = self.data.sample_source, self.data.sample_target
        k, m = src.shape[0], self.sample_z.shape[0]
        labels = self.data.sample_labels / LABEL_SCALE if self.label_dim else None
        rows = []
        for i in range(k):
            lab = labels[i : i + 1].expand(m, -1) if labels is not None else None
            fake = sampler(src[i : i + 1].expand(m, -1, -1, -1), self.sample_z, lab).float()
            tiles = [src[i], tgt[i].expand(3, -1, -1), *fake.expand(-1, 3, -1, -1)]
            rows.append(torch.cat(tiles, dim=2))
        sampler.train(was)
        grid = torch.cat(rows, dim=1)
        return grid.add(1).mul(127.5).clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()

    # ------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "nets": {k: m.state_dict() for k, m in self.raw.items()},
            "ema": {k: m.state_dict() for k, m in self.ema.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "rng": rng_state(self.generators),
            "data_order": self.perm_cpu.clone(),
            "data_order_epoch": self._perm_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.raw.items():
            m.load_state_dict(state["nets"][k])
        for k, m in self.ema.items():
            m.load_state_dict(state["ema"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        set_rng_state(state["rng"], self.generators)
        self.step = int(state["step"])
        self.perm_cpu = state["data_order"]
        self.perm = self.perm_cpu.to(self.device)
        self._perm_epoch = int(state["data_order_epoch"])

    def parameters_finite(self) -> torch.Tensor:
        """One device bool: every weight of every trained and EMA network is finite."""
        tensors = [p.detach() for m in (*self.raw.values(), *self.ema.values()) for p in m.parameters()]
        # Not via norms: a finite but huge weight (1e30) has an infinite norm.
        return torch.stack([torch.isfinite(t).all() for t in tensors]).all()

    def learning_rates(self) -> dict[str, float]:
        return {f"lr_{k}": s.get_last_lr()[0] for k, s in self.schedulers.items()}


# ------------------------------------------------------------------------ the run
class LossMeter:
    """Loss parts summed on the device; the first non-finite step per part tracked on the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.names: list[str] | None = None
        self.sum = self.first_bad = None
        self.count = 0

    def add(self, parts: dict[str, torch.Tensor], step: int) -> None:
        if self.names is None:
            self.names = sorted(parts)
            self.sum = torch.zeros(len(self.names), device=self.device)
            self.first_bad = torch.full((len(self.names),), -1, dtype=torch.long, device=self.device)
        vec = torch.stack([parts[n].float() for n in self.names])
        self.sum += vec
        self.first_bad = torch.where(~torch.isfinite(vec) & (self.first_bad < 0), step, self.first_bad)
        self.count += 1

    def fetch(self, info: DistInfo) -> tuple[dict[str, float], dict[str, int]]:
        """Means since the last fetch and {loss: first bad step}; the one host sync. Resets."""
        if self.names is None or self.count == 0:
            return {}, {}
        bad = self.first_bad.clone()
        if info.enabled:
            dist.all_reduce(self.sum, op=dist.ReduceOp.SUM)
            self.sum /= info.world_size
            # Every rank must stop together, or the others would hang in the next collective.
            flag = torch.where(bad < 0, torch.iinfo(torch.long).max, bad)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            bad = torch.where(flag == torch.iinfo(torch.long).max, -1, flag)
        packed = torch.cat([self.sum / self.count, bad.float()]).cpu()
        n = len(self.names)
        means = {name: float(packed[i]) for i, name in enumerate(self.names)}
        first_bad = {name: int(packed[n + i]) for i, name in enumerate(self.names) if packed[n + i] >= 0}
        self.sum.zero_()
        self.count = 0
        return means, first_bad


def _raise_non_finite(first_bad: dict[str, int], ckpt: Checkpoint) -> None:
    name, step = min(first_bad.items(), key=lambda kv: kv[1])
    last = ckpt.latest()
    keep = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
    raise NonFiniteLossError(
        f"non-finite loss: {name} became NaN/inf at step {step + 1} "
        f"(also: {sorted(first_bad)}); training stopped, {keep}. Lower the learning rates or "
        "enable train.r1_gamma, then rerun to resume from that checkpoint."
    )


def configure_torch(tc: TrainConfig, device: torch.device) -> None:
    if tc.deterministic:
        # The guarantee is for CPU; on CUDA some backward kernels (bilinear upsampling) have no
        # deterministic variant, so there it only warns.
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    random.seed(tc.seed)
    np.random.seed(tc.seed)


def _write_losses_csv(path: Path, history: list[dict[str, float]]) -> None:
    with atomic_file(path) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def train(cfg: Config, prepared_dir: Path, split_dir: Path, out_dir: Path, metrics_path: Path) -> dict[str, Any]:
    """Train (or resume) one run; writes out_dir/{checkpoints/, generator.pt, mlflow_run.json},
    metrics_path and a losses CSV next to it. Returns counts and figures for the stage log."""
    tc = cfg.train
    device = resolve_device(tc.device)
    info = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank if info.enabled else (device.index or 0))
    check_config(cfg, info.world_size)
    configure_torch(tc, device)
    out_dir, metrics_path = Path(out_dir), Path(metrics_path)
    out_dir.mkdir(parents=True, exist_ok=True)

    data = load_data(Path(prepared_dir), Path(split_dir), device, tc.sample_sources)
    if data.image_size != cfg.augment.image_size:
        raise ValueError(f"{prepared_dir}: prepared images are {data.image_size}px but augment.image_size is "
                         f"{cfg.augment.image_size}; rerun the augment stage")
    ckpt = Checkpoint(out_dir / "checkpoints")
    fp = fingerprint(cfg, data)
    state = ckpt.load() if ckpt.latest() is not None else None
    if state is not None and state.get("fingerprint") != _hash(fp):
        old = state.get("fingerprint_data", {})
        diff = sorted(k for k in set(old.get("train", {})) | set(fp["train"])
                      if old.get("train", {}).get(k) != fp["train"].get(k))
        other = [k for k in ("augment", "pairs", "image_size", "code") if old.get(k) != fp[k]]
        log.warning("checkpoint %s was made with a different configuration, data or model code "
                    "(train keys: %s; also: %s); starting afresh", ckpt.latest(), diff or "-", other or "-")
        barrier(info)
        if info.is_main:
            ckpt.clear()
        state = None
    if state is None and info.is_main:
        for stale in ("generator.pt", "identity_net.pt", "pose_estimator.pt"):
            (out_dir / stale).unlink(missing_ok=True)
    barrier(info)

    session = TrainSession(cfg, data, device, info, aux_dir=out_dir)
    history: list[dict[str, float]] = []
    run_id = None
    elapsed_before = 0.0
    if state is not None:
        session.load_state_dict(state)
        history = list(state.get("history", []))
        run_id = state.get("mlflow_run_id")
        elapsed_before = float(state.get("elapsed_s", 0.0))
        log.info("resuming from %s at step %d (epoch %d)", ckpt.latest(), session.step, session.epoch)

    end_step = min(session.total_steps, tc.max_steps or session.total_steps)
    name = thesis_name(tc)
    tracking_ctx = _tracking(cfg, info, name, run_id)
    with tracking_ctx as run:
        if info.is_main:
            from nirgan.tracking import write_run_info

            write_run_info(out_dir / "mlflow_run.json", run)
            run_id = run.info.run_id
        result = _loop(session, ckpt, fp, history, run_id, end_step, elapsed_before, out_dir, info)
        if info.is_main:
            result.update(_finish(session, cfg, out_dir, metrics_path, history, result, run_id, name))
    return result


def _tracking(cfg: Config, info: DistInfo, name: str, run_id: str | None):
    if not info.is_main:
        return nullcontext()
    from nirgan.tracking import start_run

    return start_run(cfg.model_dump(mode="json"), run_name=name, run_id=run_id)


def _loop(session: TrainSession, ckpt: Checkpoint, fp: dict[str, Any], history: list[dict[str, float]],
          run_id: str | None, end_step: int, elapsed_before: float, out_dir: Path, info: DistInfo) -> dict[str, Any]:
    tc = session.tc
    meter = LossMeter(session.device)
    start_step = session.step
    t0 = time.perf_counter()
    t_window, step_window = t0, session.step
    last_losses: dict[str, float] = {}
    pairs_per_s = float("nan")

    def save() -> None:
        # Never persist a state whose losses or weights went non-finite.
        means, bad = meter.fetch(info)
        if means:
            _record(means)
        if bad:
            _raise_non_finite(bad, ckpt)
        if not bool(session.parameters_finite()):
            raise NonFiniteLossError(f"non-finite weights at step {session.step}; not checkpointing. "
                                     f"The last good checkpoint is {ckpt.latest()}")
        if info.is_main:
            state = session.state_dict()
            state.update(fingerprint=_hash(fp), fingerprint_data=fp, history=history, mlflow_run_id=run_id,
                         elapsed_s=elapsed_before + time.perf_counter() - t0, config=session.tc.model_dump(mode="json"))
            ckpt.save(state, session.step)
        barrier(info)

    def _record(means: dict[str, float]) -> None:
        nonlocal t_window, step_window, last_losses, pairs_per_s
        if session.cuda:
            torch.cuda.synchronize(session.device)
        now = time.perf_counter()
        steps = session.step - step_window
        pairs_per_s = steps * session.global_batch / max(now - t_window, 1e-9)
        t_window, step_window = now, session.step
        last_losses = means
        row = {"step": session.step, "epoch": session.step / session.steps_per_epoch, **means,
               **session.learning_rates(), "pairs_per_s": pairs_per_s}
        history.append(row)
        if info.is_main:
            import mlflow

            mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=session.step)

    bar = tqdm(total=end_step, initial=session.step, desc="train", disable=None if info.is_main else True)
    while session.step < end_step:
        parts = session.train_step()
        meter.add(parts, session.step - 1)
        bar.update(1)
        at_end = session.step == end_step or _over_budget(tc.max_minutes, elapsed_before + time.perf_counter() - t0,
                                                          session.device, info)
        if session.step % tc.checkpoint_every == 0 or at_end:
            save()
        elif session.step % tc.log_every == 0:
            means, bad = meter.fetch(info)
            _record(means)
            if bad:
                _raise_non_finite(bad, ckpt)
            bar.set_postfix({k: f"{v:.3f}" for k, v in means.items() if k.endswith("total")})
        if info.is_main and (session.step % session.steps_per_epoch == 0 or at_end):
            _log_grid(session, out_dir)
        if at_end:
            break
    bar.close()
    if info.is_main and session.step == start_step:
        # Resumed a finished run (e.g. `dvc repro -f train`): DVC removed the sample grids, so the
        # stage would lack its declared output; draw the final grid again.
        _log_grid(session, out_dir)
    wall = time.perf_counter() - t0
    steps_run = session.step - start_step
    return {
        "steps": session.step,
        "steps_this_session": steps_run,
        "epochs": session.step / session.steps_per_epoch,
        "pairs_per_s": steps_run * session.global_batch / wall if steps_run else float("nan"),
        "wall_s": wall,
        "total_wall_s": elapsed_before + wall,
        "losses": last_losses,
        "world_size": info.world_size,
        "device": str(session.device),
    }


def _over_budget(max_minutes: float | None, elapsed_s: float, device: torch.device, info: DistInfo) -> bool:
    """``train.max_minutes`` spent (resumed time included). Under DDP the main rank's clock
    decides for all, so every rank stops after the same step."""
    if max_minutes is None:
        return False
    over = elapsed_s >= max_minutes * 60
    if info.enabled:
        flag = torch.tensor([float(over)], device=device)
        torch.distributed.broadcast(flag, src=0)
        over = bool(flag.item())
    return over


def _log_grid(session: TrainSession, out_dir: Path) -> None:
    import mlflow

    grid = session.sample_grid()
    epoch = math.ceil(session.step / session.steps_per_epoch)
    path = out_dir / "samples" / f"epoch_{epoch:03d}_step_{session.step:08d}.png"
    write_image(path, grid)
    mlflow.log_artifact(str(path), artifact_path="samples")


def _finish(session: TrainSession, cfg: Config, out_dir: Path, metrics_path: Path,
            history: list[dict[str, float]], result: dict[str, Any], run_id: str | None, name: str) -> dict[str, Any]:
    import mlflow

    sampler = session.sampler().cpu().eval()
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in sampler.generator.state_dict().items()},
        "train_config": cfg.train.model_dump(mode="json"),
        "label_dim": session.label_dim,
    }
    if sampler.mapping is not None:
        payload["mapping_state_dict"] = {k: v.detach().cpu() for k, v in sampler.mapping.state_dict().items()}
    with atomic_file(out_dir / "generator.pt") as tmp:
        torch.save(payload, tmp)

    model_format = None
    if cfg.train.log_model:
        model_format = log_generator_model(sampler, session)
    sampler.to(session.device)

    metrics = {
        "config": name,
        "steps": result["steps"],
        "epochs": result["epochs"],
        "pairs_per_s": result["pairs_per_s"],
        "wall_s": result["total_wall_s"],
        "mlflow_run_id": run_id,
        "model_format": model_format,
        **{f"final_{k}": v for k, v in result["losses"].items()},
    }
    write_json(metrics_path, metrics)
    if history:
        _write_losses_csv(metrics_path.with_name(metrics_path.stem + "_losses.csv"), history)
    mlflow.log_metrics({"final_pairs_per_s": result["pairs_per_s"]} if math.isfinite(result["pairs_per_s"]) else {})
    mlflow.set_tag("thesis_config", name)
    return {"model_format": model_format}


def log_generator_model(sampler: SamplingGenerator, session: TrainSession) -> str:
    """Log the EMA generator (with L folded in) to MLflow and register it as nirgan-generator.

    Preferred format is MLflow 3's default ``pt2`` (torch.export; loadable without pickle),
    traced from an input example; if export fails on some op, the pickle format is used and
    the fallback is logged and tagged (``model_format``).
    """
    import mlflow
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from nirgan.tracking import REGISTERED_MODEL

    s, d = session.data.image_size, session.tc.latent_dim
    n = 2
    example = [session.data.sample_source[:1].expand(n, -1, -1, -1).float().cpu().numpy().copy(),
               np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)]
    specs = [TensorSpec(np.dtype(np.float32), (-1, 3, s, s), "source"),
             TensorSpec(np.dtype(np.float32), (-1, d), "z")]
    if session.label_dim:
        example.append(np.zeros((n, session.label_dim), np.float32))
        specs.append(TensorSpec(np.dtype(np.float32), (-1, session.label_dim), "labels"))
    signature = ModelSignature(inputs=Schema(specs),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, s, s), "image")]))
    import torch

    pip = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"]
    common = dict(name="generator", signature=signature, registered_model_name=REGISTERED_MODEL,
                  pip_requirements=pip)
    try:
        mlflow.pytorch.log_model(sampler, input_example=tuple(example), serialization_format="pt2", **common)
        fmt = "pt2"
    except Exception as exc:  # noqa: BLE001 - any export failure falls back to pickle, loudly
        log.warning("pt2 export of the generator failed (%s: %s); logging it in the pickle format instead",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        mlflow.pytorch.log_model(sampler, serialization_format="pickle", **common)
        fmt = "pickle"
    mlflow.set_tag("model_format", fmt)
    return fmt
