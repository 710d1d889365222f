"""Resampling speed: the generator's 2x bilinear upsampling and the encoders' 2x2 average pooling,
as ``torch.nn.functional`` kernels against ``nirgan.models.layers.upsample2x_blend`` / ``downsample2x_reshape`` (which
``upsample2x`` / ``downsample2x`` use on CUDA).

In one run, for the feature-map shapes of the thesis-width networks at 128x128 (batch 256 by
default), forward + backward of each, bf16 channels_last and contiguous on CUDA (fp32 contiguous on CPU). It
prints ms per call, the ratio, and the largest difference between the two (they compute the same
function). An H100 profile of a training step had interpolate's channels_last bf16 kernel at 46%
and avg_pool2d's backward at 9% of the step's GPU time.

    python benchmarks/resample_speed.py               # CUDA if present
    python benchmarks/resample_speed.py --batch 8     # a quick CPU look
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from nirgan.devices import resolve_device
from nirgan.models.layers import downsample2x_reshape, upsample2x_blend
from train_speed import timed  # this folder is on sys.path when a benchmark runs as a script

# (channels, side) at thesis width: the decoder's inputs to upsampling, the encoder's to pooling
SHAPES = {"upsample": [(256, 4), (256, 8), (128, 16), (64, 32), (32, 64)],
          "avgpool": [(16, 128), (32, 64), (64, 32), (128, 16), (256, 8)]}


def ms_per_call(fn, x: torch.Tensor, reps: int, device: torch.device) -> float:
    def once() -> None:
        x.grad = None
        fn(x).float().square().mean().backward()

    return timed(once, reps, 3, device) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args()
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    formats = [torch.channels_last, torch.contiguous_format] if device.type == "cuda" else [torch.contiguous_format]
    pairs = [
        ("upsample", lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False), upsample2x_blend),
        ("avgpool", lambda t: F.avg_pool2d(t, 2), downsample2x_reshape),
    ]
    print(f"device {device}, batch {args.batch}, {dtype}")
    print(f"{'op':>9} {'layout':>14} {'shape':>12} {'torch ms':>9} {'nirgan ms':>10} {'speed-up':>9} {'max |diff|':>11}")
    for fmt in formats:
        layout = str(fmt).removeprefix("torch.")
        for name, ref, ours in pairs:
            for c, side in SHAPES[name]:
                x = torch.randn(args.batch, c, side, side, device=device, dtype=dtype).to(memory_format=fmt)
                x.requires_grad_(True)
                diff = (ref(x).float() - ours(x).float()).abs().max().item()
                t_ref, t_ours = ms_per_call(ref, x, args.reps, device), ms_per_call(ours, x, args.reps, device)
                print(f"{name:>9} {layout:>14} {f'{c}x{side}x{side}':>12} {t_ref:>9.3f} {t_ours:>10.3f} "
                      f"{t_ref / t_ours:>8.2f}x {diff:>11.2e}")


if __name__ == "__main__":
    main()
