"""One training run's state and its iteration: thesis Algorithm 2 (see ``nirgan.training``).

:class:`TrainSession` holds every network, optimiser, scheduler and random source of a run,
and :meth:`TrainSession.train_step` is one iteration: draw a batch of pairs and fresh
augmentations, draw z, update D on real vs. G(y, z); draw new z (and z* for style diversity),
update G (and E, L) on the full loss Eq. 3.5 (``nirgan.training.core``); then the EMA
generator and the per-step learning-rate schedule (constant for ``epochs_fixed`` epochs, then
linear to zero over ``epochs_decay``). Its whole state is :meth:`TrainSession.state_dict`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nirgan.augmentation import apply_params, draw_params
from nirgan.config import Config, TrainConfig
from nirgan.devices import autocast, effective_precision, memory_format
from nirgan.labels import LABELS
from nirgan.models.artifacts import LABEL_SCALE, Sampler
from nirgan.models.networks import build_networks
from nirgan.training.checkpoint import ResumableSession
from nirgan.training.core import Batch, StepNets, compute_d_loss, compute_g_loss
from nirgan.training.data import TrainData
from nirgan.training.diff_augment import draw_augment
from nirgan.training.distributed import DistInfo, convert_batchnorm
from nirgan.training.frozen_networks import auxiliary_networks


def lr_factor(step: int, steps_per_epoch: int, tc: TrainConfig) -> float:
    """Table 3.8 / 3.2.6.1: 1 for K_fixed epochs, then linear to zero over K_decay epochs."""
    fixed = tc.epochs_fixed * steps_per_epoch
    decay = tc.epochs_decay * steps_per_epoch
    if step < fixed or decay == 0:
        return 1.0
    return max(0.0, (fixed + decay - step) / decay)


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


# ------------------------------------------------------------------------------ session
class TrainSession(ResumableSession):
    """All networks, optimisers and random sources of one run, and :meth:`train_step` = one iteration.

    ``aux_dir`` (the stage's out_dir) is where the identity network and pose estimator are
    saved and, on a resumed run, reloaded from (:func:`~nirgan.training.frozen_networks.auxiliary_networks`).
    """

    def __init__(self, cfg: Config, data: TrainData, device: torch.device, info: DistInfo = DistInfo(),
                 aux_dir: Path | None = None):
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
        self.precision = effective_precision(tc.precision, device)
        self.autocast = autocast(tc.precision, device)
        self.memory_format = memory_format(device)

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

        self.aux = auxiliary_networks(tc, data.target, data.source, data.labels, data.subjects, device, info,
                                      aux_dir, self.memory_format)

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
        self.d_view, self.g_view = step_views(self.raw, self.aux, info, device, tc.compile)

        # Every random draw of the loop comes from one of these (all in the checkpoint).
        self.rngs = {
            "data": torch.Generator().manual_seed(tc.seed),
            "latent": torch.Generator(device=device).manual_seed(tc.seed + 1),
            "augment": torch.Generator(device=device).manual_seed(tc.seed + 2),
        }
        self.step = 0
        self._perm_epoch = 0
        self.perm_cpu = torch.randperm(data.size, generator=self.rngs["data"])
        self.perm = self.perm_cpu.to(device)
        self.sample_z = torch.randn(tc.sample_latents, tc.latent_dim,
                                    generator=torch.Generator().manual_seed(tc.seed + 3)).to(device)
        self._ema_pairs = self._ema_lists()

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
        data = self.data
        if self.step % self.steps_per_epoch == 0 and self.step > 0 and self._perm_epoch != self.epoch:
            self._new_epoch_order()
        start = (self.step % self.steps_per_epoch) * self.global_batch + self.info.rank * self.local_batch
        idx = self.perm[start : start + self.local_batch]
        source = data.source[idx].permute(0, 3, 1, 2)
        target = data.target[idx].unsqueeze(1)
        labels = data.labels[idx] if (self.label_dim or self.aux.estimator is not None) else None
        # The draws are made for the whole global batch on every rank and sliced, so the
        # result does not depend on how many processes share the batch.
        params = draw_params(self.global_batch, self.cfg.augment, self.rngs["augment"], self.device)
        lo = self.info.rank * self.local_batch
        params = {k: v[lo : lo + self.local_batch] for k, v in params.items()}
        source, target, labels = apply_params(source, target, labels, params)
        source = source.contiguous(memory_format=self.memory_format)
        target = target.contiguous(memory_format=self.memory_format)
        cond = labels / LABEL_SCALE if self.label_dim else None
        attrs = (labels - self.aux.attr_mean) / self.aux.attr_std if self.aux.estimator is not None else None
        augment = draw_augment(self.tc.d_augment, self.global_batch, source.shape[-1], self.rngs["augment"],
                               self.device)
        return Batch(source, target, cond, attrs, augment.rows(lo, lo + self.local_batch) if augment else None)

    def _new_epoch_order(self) -> None:
        self.perm_cpu = torch.randperm(self.data.size, generator=self.rngs["data"])
        self.perm = self.perm_cpu.to(self.device)
        self._perm_epoch = self.epoch

    def _latent(self) -> torch.Tensor:
        z = torch.randn(self.global_batch, self.tc.latent_dim, generator=self.rngs["latent"],
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
        z_ir = self._latent() if tc.lambda_kl > 0 and tc.lambda_ir > 0 else None
        disc = self.raw["discriminator"]
        _set_requires_grad(disc, False)
        try:
            with self.autocast:
                g_loss, g_parts = compute_g_loss(self.g_view, batch, z1, z2, tc, z_ir)
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

    def sampler(self) -> Sampler:
        """The generator used for samples and saved as generator.pt: the EMA one when enabled."""
        g = self.ema.get("generator", self.raw["generator"])
        m = self.ema.get("mapping", self.raw.get("mapping")) if "mapping" in self.raw else None
        return Sampler(g, m, LABEL_SCALE)

    @torch.no_grad()
    def sample_grid(self) -> np.ndarray:
        """Rows: fixed sources; columns: source, real target, then one image per fixed z."""
        sampler = self.sampler()
        was = sampler.training
        sampler.eval()
        src, tgt = self.data.sample_source, self.data.sample_target
        k, m = src.shape[0], self.sample_z.shape[0]
        labels = self.data.sample_labels if self.label_dim else None  # degrees: the sampler scales them
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
    def ema_networks(self) -> dict[str, nn.Module]:
        return self.ema


def step_views(raw: dict[str, nn.Module], aux: Any, info: DistInfo, device: torch.device,
               compile_mode: str) -> tuple[StepNets, StepNets]:
    """The two views of Algorithm 2's alternating updates (see ``nirgan.training.core``):
    (discriminator step, generator step), each wrapping in DDP only the networks it updates,
    and compiled when ``compile_mode`` is not "none". ``aux`` holds the frozen vgg, identity
    and estimator networks."""
    trained = dict(raw)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        trained = {name: DDP(m, device_ids=ids, broadcast_buffers=False) for name, m in raw.items()}
    plain = dict(raw)
    if compile_mode != "none":
        def compiled(nets: dict) -> dict:
            return {k: torch.compile(m, mode=compile_mode) for k, m in nets.items()}

        trained = compiled(trained)
        plain = trained if not info.enabled else compiled(plain)
    frozen = dict(vgg=aux.vgg, identity=aux.identity, estimator=aux.estimator)
    d_view = StepNets(generator=plain["generator"], discriminator=trained["discriminator"],
                      mapping=plain.get("mapping"), **frozen)
    g_view = StepNets(generator=trained["generator"], discriminator=plain["discriminator"],
                      encoder=trained.get("encoder"), mapping=trained.get("mapping"), **frozen)
    return d_view, g_view
