"""Training speed: the trainer's step against a plain eager fp32 implementation of the same step.

In one process on one device, for each batch size: pairs/s and achieved TFLOP/s of

  trainer   nirgan.training.TrainSession.train_step: data resident on the device as uint8,
            augmentation on the device, bf16 autocast + channels_last + fused Adam on CUDA,
            optional torch.compile (--compile default|reduce-overhead), no host sync inside the step;
  plain     the same Algorithm 2 step written the obvious way: fp32, contiguous tensors,
            default Adam, separate discriminator calls for real and fake, a Python loop for
            the EMA and ``loss.item()`` every step for logging.

Both train the default configuration (ED-LS-LR-2, Table 3.8) on random uint8 pairs; FLOPs are
counted with ``torch.utils.flop_counter.FlopCounterMode`` on one eager step of each (forward
and backward of every network, as the step runs them). It prints each row of the table the
moment it is measured (pairs/s, TFLOP/s and the fraction of the card's dense bf16 peak, where
``gpu_scale_figures`` knows the card), then the ratios.

    python benchmarks/train_speed.py                          # CUDA: batch 12 and 256, thesis width
    python benchmarks/train_speed.py --batch 12 --width 0.25 --size 64 --steps 5   # small CPU run
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from gpu_scale_figures import peak_bf16_tflops
from nirgan.config import parse_config
from nirgan.losses import discriminator_adversarial_loss, generator_adversarial_loss, latent_reconstruction_loss
from nirgan.training.data import TrainData
from nirgan.training.session import TrainSession
from nirgan.training.trainer import resolve_device


def synthetic_data(pairs: int, size: int, device: torch.device) -> TrainData:
    rng = np.random.default_rng(0)
    src = torch.from_numpy(rng.integers(0, 256, (pairs, size, size, 3), dtype=np.uint8)).to(device)
    tgt = torch.from_numpy(rng.integers(0, 256, (pairs, size, size), dtype=np.uint8)).to(device)
    labels = torch.zeros(pairs, 5, device=device)
    grid_src = src[:2].permute(0, 3, 1, 2).float() / 127.5 - 1
    return TrainData(src, tgt, labels, np.array([f"s{i % 4}" for i in range(pairs)]), grid_src,
                     tgt[:2, None].float() / 127.5 - 1, labels[:2])


def default_session(params: str | Path, device: torch.device, **train_overrides) -> TrainSession:
    """The step a params file trains (its augment and train sections, plus ``train_overrides``)
    on 64 synthetic pairs, without MLflow: the step benchmarks' common subject."""
    raw = {k: v for k, v in yaml.safe_load(Path(params).read_text()).items() if k in ("augment", "train")}
    raw["train"].update(train_overrides, log_model=False, device=device.type)
    cfg = parse_config(raw)
    return TrainSession(cfg, synthetic_data(64, cfg.augment.image_size, device), device)


def make_config(args: argparse.Namespace, batch: int, fast: bool, compile_: str = "none"):
    return parse_config({
        "augment": {"image_size": args.size},
        "train": {"batch_size": batch, "width": args.width, "device": args.device,
                  "precision": "bf16" if fast else "fp32", "compile": compile_, "log_model": False},
    })


class PlainStep:
    """The same training step, written plainly (the "before" of the comparison)."""

    def __init__(self, cfg, data: TrainData, device: torch.device):
        from nirgan.models.networks import build_networks
        from nirgan.augmentation import paired_augment

        self.tc, self.data, self.device, self.augment = cfg.train, data, device, paired_augment
        self.aug_cfg = cfg.augment
        torch.manual_seed(0)
        nets = build_networks(self.tc)
        self.G, self.D, self.E = nets.generator.to(device), nets.discriminator.to(device), nets.encoder.to(device)
        self.G_ema = build_networks(self.tc).generator.to(device)
        self.G_ema.load_state_dict(self.G.state_dict())
        betas = (self.tc.beta1, self.tc.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=self.tc.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=self.tc.lr_d, betas=betas)
        self.opt_e = torch.optim.Adam(self.E.parameters(), lr=self.tc.lr_e, betas=betas)
        self.log: list[float] = []

    def __call__(self) -> None:
        tc, n = self.tc, self.tc.batch_size
        idx = torch.randint(0, self.data.size, (n,)).to(self.device)
        src = self.data.source[idx].permute(0, 3, 1, 2).float() / 255
        tgt = self.data.target[idx].unsqueeze(1).float() / 255
        src, tgt, _ = self.augment(src, tgt, None, self.aug_cfg)
        z = torch.randn(n, tc.latent_dim, device=self.device)
        with torch.no_grad():
            fake = self.G(src, z)
        d_loss = discriminator_adversarial_loss(self.D(src, tgt), self.D(src, fake), tc.adversarial_loss)
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()

        z = torch.randn(n, tc.latent_dim, device=self.device)
        fake = self.G(src, z)
        g_loss = generator_adversarial_loss(self.D(src, fake), tc.adversarial_loss)
        g_loss = g_loss + tc.lambda_lr * latent_reconstruction_loss(z, self.E(fake))
        self.opt_g.zero_grad()
        self.opt_e.zero_grad()
        g_loss.backward()
        self.opt_g.step()
        self.opt_e.step()
        with torch.no_grad():
            for pe, p in zip(self.G_ema.parameters(), self.G.parameters()):
                pe.copy_(tc.ema_decay * pe + (1 - tc.ema_decay) * p)
        self.log.append(d_loss.item() + g_loss.item())


def count_flops(step: Callable[[], None]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def timed(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step after warm-up (compilation, cudnn autotuning), synchronised at the ends."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[12, 256])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = thesis)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead"],
                        help="torch.compile mode of the trainer's networks (train.compile)")
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    peak, peak_note = peak_bf16_tflops(name) if device.type == "cuda" else (None, "CPU: no tensor-core peak")
    # Each row is printed the moment it is measured: a cold compile can take minutes per batch size.
    print(f"device: {name}; width {args.width}, {args.size}x{args.size}, compile={args.compile}, "
          f"{args.steps} timed steps after {args.warmup} warm-up; peak bf16 "
          f"{f'{peak:.0f} TFLOP/s' if peak else 'unavailable'} ({peak_note})", flush=True)
    print(f"{'batch':>6} {'impl':>11} {'pairs/s':>10} {'GFLOP/pair':>11} {'TFLOP/s':>9} {'of peak':>8} "
          f"{'warm-up s':>9}", flush=True)
    rows = []

    def row(batch: int, impl: str, step: Callable[[], None], flops: float) -> None:
        t0 = time.perf_counter()
        sec = timed(step, args.steps, args.warmup, device)
        # the warm-up holds the compile (cold, the first time) and cudnn's autotuning
        warmup_s = time.perf_counter() - t0 - sec * args.steps
        r = dict(batch=batch, impl=impl, pairs_per_s=batch / sec, gflop_per_pair=flops / batch / 1e9,
                 tflops=flops / sec / 1e12, warmup_s=warmup_s)
        r["peak_fraction"] = r["tflops"] / peak if peak else None
        rows.append(r)
        share = f"{r['peak_fraction']:.1%}" if peak else "n/a"
        print(f"{batch:>6} {impl:>11} {r['pairs_per_s']:>10.1f} {r['gflop_per_pair']:>11.2f} {r['tflops']:>9.3f} "
              f"{share:>8} {warmup_s:>9.1f}", flush=True)

    for batch in args.batch:
        data = synthetic_data(max(4 * batch, 64), args.size, device)
        # FLOPs of the same step run eagerly (the counter does not see inside compiled graphs).
        eager = TrainSession(make_config(args, batch, fast=True), data, device)
        flops = count_flops(eager.train_step)
        session = TrainSession(make_config(args, batch, fast=True, compile_=args.compile), data, device) \
            if args.compile != "none" else eager
        row(batch, "trainer", session.train_step, flops)
        del session, eager
        if not args.skip_plain:
            plain = PlainStep(make_config(args, batch, fast=False), data, device)
            flops_p = count_flops(plain)
            row(batch, "plain fp32", plain, flops_p)
            del plain
        if device.type == "cuda":
            torch.cuda.empty_cache()

    ratios = {}
    for batch in args.batch:
        t = next(r for r in rows if r["batch"] == batch and r["impl"] == "trainer")
        p = next((r for r in rows if r["batch"] == batch and r["impl"] == "plain fp32"), None)
        if p:
            ratios[batch] = t["pairs_per_s"] / p["pairs_per_s"]
            print(f"batch {batch}: trainer / plain fp32 = {ratios[batch]:.2f}x pairs/s")
    result = {"device": name, "peak_bf16_tflops": peak, "peak_note": peak_note, "args": vars(args), "rows": rows,
              "ratios": ratios}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
