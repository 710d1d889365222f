"""One expression run's state and its iteration (see :mod:`nirgan.expression.trainer`).

:class:`ExpressionSession` holds the networks, the EMA generator, optimisers, schedulers and every
random source of a run; :meth:`ExpressionSession.train_step` is one iteration (one D update):

    stargan       D on real vs. G(x, c) + domain classification (+ GP); every ``n_critic``-th
                  step also G on adversarial + classification + cycle (Choi et al. Algorithm)
    cgan          D then G, both on cross-entropy (Milan section 7)
    cgan_encoder  the cgan steps for the first (1 - encoder_fraction) of the run, then E alone
                  against the frozen EMA generator (KTH 2.2: E is trained after G)

The whole state is :meth:`state_dict`; with ``deterministic`` on CPU, N steps, a kill and a
resume give the weights of 2N steps bit for bit.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nirgan.config import ExpressionTrainConfig
from nirgan.devices import autocast, effective_precision
from nirgan.expression.models.build import build_expression_networks
from nirgan.expression.models.translator import ExpressionTranslator, to_model_input
from nirgan.training.checkpoint import ResumableSession
from nirgan.training.diff_augment import draw_augment
from nirgan.training.distributed import DistInfo, convert_batchnorm
from nirgan.expression.step import (
    ExpressionBatch,
    cgan_d_step,
    cgan_g_step,
    encoder_step,
    stargan_d_step,
    stargan_g_step,
)


@dataclass
class ExpressionData:
    """The training faces on the device, the label names, and the fixed sample-grid inputs."""

    images: torch.Tensor          # (N, S, S) uint8
    labels: torch.Tensor          # (N,) int64
    names: list[str]
    sample_images: torch.Tensor   # (k, S, S) uint8, test faces
    sample_labels: torch.Tensor   # (k,) int64

    @property
    def size(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


def _requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class ExpressionSession(ResumableSession):
    def __init__(self, cfg: ExpressionTrainConfig, data: ExpressionData, device: torch.device,
                 info: DistInfo = DistInfo()):
        self.cfg, self.data, self.device, self.info = cfg, data, device, info
        self.r = cfg.resolved()
        self.global_batch = self.r["batch_size"]
        if self.global_batch % info.world_size:
            raise ValueError(f"expression_train.batch_size ({self.global_batch}) is the global batch and must "
                             f"divide evenly over the {info.world_size} processes")
        self.local_batch = self.global_batch // info.world_size
        self.steps_per_epoch = data.size // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training split has {data.size} faces, fewer than one batch "
                             f"(expression_train.batch_size = {self.global_batch})")
        self.num_labels = len(data.names)
        self.total_steps = cfg.steps
        self.gan_steps = (round(cfg.steps * (1 - cfg.encoder_fraction)) if cfg.model == "cgan_encoder"
                          else cfg.steps)
        self.cuda = device.type == "cuda"
        # the NIR session's precision policy (nirgan.devices: bf16 where native). Not its
        # channels_last: on the CPU a channels_last retrain of the default StarGAN read 0.73
        # target accuracy against the contiguous run's 0.84 (one run each; it was no faster)
        self.precision = effective_precision(cfg.precision, device)
        self.autocast = autocast(cfg.precision, device)

        torch.manual_seed(cfg.seed)
        nets = build_expression_networks(cfg, self.num_labels)
        self.raw: dict[str, nn.Module] = {"generator": nets.generator, "discriminator": nets.discriminator}
        if nets.encoder is not None:
            self.raw["encoder"] = nets.encoder
        self.ema = (copy.deepcopy(nets.generator).eval().requires_grad_(False) if cfg.ema_decay > 0 else None)
        for m in (*self.raw.values(), *([self.ema] if self.ema is not None else [])):
            m.to(device)
        if info.enabled:
            for m in self.raw.values():
                convert_batchnorm(m, device.type)
        lrs = {"generator": self.r["lr_g"], "discriminator": self.r["lr_d"], "encoder": self.r["lr_e"]}
        self.optimizers = {k: torch.optim.Adam(m.parameters(), lr=lrs[k], betas=(cfg.beta1, cfg.beta2))
                           for k, m in self.raw.items()}
        self.schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda s: self._lr_factor(s))
                           for k, o in self.optimizers.items()}
        self.trained = self._wrap(self.raw)

        self.rngs = {
            "data": torch.Generator().manual_seed(cfg.seed),
            "draws": torch.Generator(device=device).manual_seed(cfg.seed + 1),
        }
        self.step = 0
        self._perm_epoch = 0
        self.perm_cpu = torch.randperm(data.size, generator=self.rngs["data"])
        self.perm = self.perm_cpu.to(device)
        self.sample_z = (torch.rand(cfg.sample_inputs, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 3))
                         * 2 - 1).to(device)

    # ------------------------------------------------------------------------- helpers
    def _lr_factor(self, step: int) -> float:
        """Constant, then linear to zero over the last ``lr_decay_fraction`` of the run (StarGAN)."""
        decay = round(self.cfg.lr_decay_fraction * self.total_steps)
        start = self.total_steps - decay
        return 1.0 if step < start or decay == 0 else max(0.0, (self.total_steps - step) / decay)

    def _wrap(self, raw: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """DDP views of the updated networks under torchrun. A network may run twice before one
        backward (StarGAN's G: translation and cycle; D: the batch and the GP's interpolates),
        which DDP accepts with a static graph (the same every iteration of a phase)."""
        if not self.info.enabled:
            return dict(raw)
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.cuda else None
        return {k: m if k in self._manual_reduce else DDP(m, device_ids=ids, broadcast_buffers=False, static_graph=True)
                for k, m in raw.items()}

    @property
    def _manual_reduce(self) -> frozenset[str]:
        """Networks whose gradients are averaged by hand after backward rather than by DDP: the
        WGAN-GP critic, whose penalty differentiates through D's gradient (double backward), which
        DDP's reducer does not support (two gloo processes then differed from one)."""
        gp = self.cfg.model == "stargan" and self.r["adversarial"] == "wgan_gp" and self.cfg.lambda_gp > 0
        return frozenset({"discriminator"} if gp and self.info.enabled else ())

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def phase(self) -> str:
        return "encoder" if self.step >= self.gan_steps else "gan"

    def _global_slice(self, t: torch.Tensor) -> torch.Tensor:
        lo = self.info.rank * self.local_batch
        return t[lo : lo + self.local_batch]

    def _next_batch(self) -> ExpressionBatch:
        """This rank's slice of the global batch; every draw is made for the global batch on
        every rank and sliced, so the result does not depend on the number of processes."""
        if self.step % self.steps_per_epoch == 0 and self.step > 0 and self._perm_epoch != self.epoch:
            self.perm_cpu = torch.randperm(self.data.size, generator=self.rngs["data"])
            self.perm = self.perm_cpu.to(self.device)
            self._perm_epoch = self.epoch
        start = (self.step % self.steps_per_epoch) * self.global_batch
        idx = self._global_slice(self.perm[start : start + self.global_batch])
        images = to_model_input(self.data.images[idx])
        g, n = self.rngs["draws"], self.global_batch
        flip = self._global_slice(torch.rand(n, generator=g, device=self.device) < self.cfg.hflip_p)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        targets = self._global_slice(torch.randint(0, self.num_labels, (n,), generator=g, device=self.device))
        z = alpha = None
        if self.cfg.model != "stargan":
            z = self._global_slice(torch.rand(n, self.cfg.latent_dim, generator=g, device=self.device) * 2 - 1)
        elif self.r["adversarial"] == "wgan_gp":
            alpha = self._global_slice(torch.rand(n, 1, 1, 1, generator=g, device=self.device))
        augment = draw_augment(self.cfg.d_augment, n, self.data.image_size, g, self.device)
        if augment is not None:
            lo = self.info.rank * self.local_batch
            augment = augment.rows(lo, lo + self.local_batch)
        return ExpressionBatch(images, self.data.labels[idx], targets, z, alpha, augment)

    def _update(self, names: tuple[str, ...], loss: torch.Tensor) -> None:
        opts = [self.optimizers[k] for k in names]
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for k in names:
            if k in self._manual_reduce:
                grads = [p.grad for p in self.raw[k].parameters() if p.grad is not None]
                flat = torch.cat([g.reshape(-1) for g in grads])
                torch.distributed.all_reduce(flat)
                flat /= self.info.world_size
                torch._foreach_copy_(grads, [v.view_as(g) for v, g in zip(flat.split([g.numel() for g in grads]), grads,
                                                                            strict=True)])
        for o in opts:
            o.step()

    # ---------------------------------------------------------------------------- step
    def train_step(self) -> dict[str, torch.Tensor]:
        """One iteration (one D update, or one E update in the encoder phase); detached loss parts."""
        cfg, r, b = self.cfg, self.r, self._next_batch()
        g, d = self.raw["generator"], self.raw["discriminator"]
        tg, td = self.trained["generator"], self.trained["discriminator"]
        for m in self.raw.values():
            m.train()
        parts: dict[str, torch.Tensor] = {}
        if self.phase() == "encoder":
            gen = self.ema if self.ema is not None else g.eval()
            _requires_grad(gen, False)
            try:
                with self.autocast:
                    loss, parts = encoder_step(gen, self.trained["encoder"], b, cfg.lambda_latent, cfg.lambda_image)
                self._update(("encoder",), loss)
            finally:
                if gen is g:
                    _requires_grad(g, True)
        else:
            star = cfg.model == "stargan"
            with self.autocast:
                loss, parts = (stargan_d_step(g, td, b, r["adversarial"], cfg.lambda_cls, cfg.lambda_gp) if star
                               else cgan_d_step(g, td, b))
            self._update(("discriminator",), loss)
            if (self.step + 1) % r["n_critic"] == 0:
                _requires_grad(d, False)
                try:
                    with self.autocast:
                        loss, g_parts = (stargan_g_step(tg, d, b, r["adversarial"], cfg.lambda_cls, cfg.lambda_rec)
                                         if star else cgan_g_step(tg, d, b))
                    self._update(("generator",), loss)
                finally:
                    _requires_grad(d, True)
                parts.update(g_parts)
                self._update_ema()
        with warnings.catch_warnings():
            # G's (and E's) optimiser does not step on every iteration; the schedule counts iterations.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            for s in self.schedulers.values():
                s.step()
        self.step += 1
        return parts

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        # Warm-up as the NIR session's: a short run must not sample a generator still mostly at init.
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        src = self.raw["generator"]
        torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in src.parameters()], 1.0 - decay)
        for eb, sb in zip(self.ema.buffers(), src.buffers(), strict=True):
            eb.copy_(sb)

    # ------------------------------------------------------------------------ outputs
    def translator(self) -> ExpressionTranslator:
        """The EMA generator (when enabled) with E, as evaluation will load it."""
        g = self.ema if self.ema is not None else self.raw["generator"]
        return ExpressionTranslator(self.cfg.model, g, self.data.names, self.data.image_size,
                                    0 if self.cfg.model == "stargan" else self.cfg.latent_dim,
                                    self.raw.get("encoder"))

    @torch.no_grad()
    def sample_grid(self) -> np.ndarray:
        """Rows: fixed test faces; columns: the input, then its translation to each label."""
        t = self.translator()
        was = {k: m.training for k, m in self.raw.items()}
        x = self.data.sample_images.cpu()
        k, c = x.shape[0], self.num_labels
        labels = torch.arange(c).repeat(k)
        z = self.sample_z.cpu().repeat_interleave(c, dim=0)
        out = t.translate(x.repeat_interleave(c, dim=0), labels, z=z).view(k, c, *x.shape[1:])
        for name, m in self.raw.items():
            m.train(was[name])
        rows = torch.cat([to_model_input(x).unsqueeze(1), out.unsqueeze(2)], dim=1)  # (k, c+1, 1, S, S)
        grid = rows.permute(0, 3, 1, 4, 2).reshape(k * x.shape[1], (c + 1) * x.shape[2])
        return grid.add(1).mul(127.5).clamp(0, 255).round().byte().numpy()

    # -------------------------------------------------------------------------- state
    def ema_networks(self) -> dict[str, nn.Module]:
        return {"generator": self.ema} if self.ema is not None else {}
