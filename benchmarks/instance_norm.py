"""Instance normalisation on the CPU as a group norm with one channel per group
(:class:`nirgan.models.layers.InstanceNorm`, today) against ``nn.InstanceNorm2d`` (before), side
by side in one process: the default training step and the trained generator's drawing.

    .venv/bin/python benchmarks/instance_norm.py [--rounds 8] [--steps 5] [--images 200]

The generator's AdaIN layers and the discriminator's normalisations are instance norms
(thesis Tables 3.3 and 3.5). Both modules compute the same function with the same parameters;
``nn.InstanceNorm2d`` runs batch norm on a reshaped NCHW copy and returns NCHW even for
channels_last input, and the layers after it then work on the other layout.

The "before" arm swaps every :class:`~nirgan.models.layers.InstanceNorm` of the same networks
for an ``nn.InstanceNorm2d`` sharing its parameters, so both arms train one session and draw with one
generator. The arms alternate in rounds (after a warm-up), each round's ratio is taken and their
median printed: this VM's speed drifts by up to a third within a session. It also prints the
largest difference between the two arms' drawn images (float rounding only). Run it idle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import default_session, timed  # noqa: E402  (the benchmarks' step and timer)

from nirgan.cores import size_threads  # noqa: E402
from nirgan.models.artifacts import load_sampler, untrained_sampler  # noqa: E402
from nirgan.models.layers import InstanceNorm  # noqa: E402


def swaps(nets: list[nn.Module]) -> list[tuple[nn.Module, str, nn.Module, nn.Module]]:
    """(parent, name, today's InstanceNorm, an nn.InstanceNorm2d sharing its parameters) for
    every instance norm in ``nets``."""
    out = []
    for net in nets:
        for parent in net.modules():
            for name, child in parent.named_children():
                if isinstance(child, InstanceNorm):
                    before = nn.InstanceNorm2d(child.num_channels, eps=child.eps, affine=child.affine)
                    if child.affine:
                        before.weight, before.bias = child.weight, child.bias
                    out.append((parent, name, child, before))
    if not out:
        raise SystemExit("no InstanceNorm found in the networks: nothing to compare")
    return out


def use(table: list[tuple[nn.Module, str, nn.Module, nn.Module]], arm: str) -> None:
    for parent, name, today, before in table:
        setattr(parent, name, today if arm == "today" else before)


def rounds(run, table, n: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {"today": [], "before": []}
    try:
        for _ in range(n):
            for arm in seconds:
                use(table, arm)
                seconds[arm].append(run())
    finally:
        use(table, "today")
    return seconds


def summary(seconds: dict[str, list[float]], unit: str, per: float) -> dict[str, object]:
    paired = [b / t for t, b in zip(seconds["today"], seconds["before"], strict=True)]
    return {f"{unit}_per_s": {arm: per / statistics.median(v) for arm, v in seconds.items()},
            "seconds_by_round": {arm: [round(s, 4) for s in v] for arm, v in seconds.items()},
            "speedup_paired_median": statistics.median(paired), "speedup_paired": [round(r, 3) for r in paired]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="training steps per arm and round")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--images", type=int, default=200, help="images drawn per arm and round")
    parser.add_argument("--generator", default=str(ROOT / "models" / "generator.pt"),
                        help="the trained generator to draw with; absent: params.yaml's untrained one")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.images < 1:
        parser.error("--rounds, --steps and --images must be at least 1")
    size_threads()
    device = torch.device("cpu")

    session = default_session(args.params, device)
    for _ in range(args.warmup):
        session.train_step()
    step_table = swaps(list(session.raw.values()))
    step = rounds(lambda: timed(session.train_step, args.steps, 1, device), step_table, args.rounds)

    if Path(args.generator).is_file():
        sampler, drew_with = load_sampler(args.generator), args.generator
    else:
        sampler, drew_with = untrained_sampler(session.tc, 0), "untrained (params.yaml's train section)"
    sampler = sampler.eval().inference(session.tc.precision, device)
    gen = torch.Generator().manual_seed(0)
    sources = (torch.rand(args.images, 3, 128, 128, generator=gen) * 2 - 1).contiguous(memory_format=torch.channels_last)
    z = torch.randn(args.images, sampler.latent_dim, generator=gen)
    table = swaps([sampler])
    images = {}
    for arm in ("today", "before"):
        use(table, arm)
        images[arm] = sampler.generate(sources, z)
    use(table, "today")

    def draw() -> float:
        t0 = time.perf_counter()
        sampler.generate(sources, z)
        return time.perf_counter() - t0

    drawing = rounds(draw, table, args.rounds)
    result = {"device": "cpu", "threads": torch.get_num_threads(), "precision": session.precision,
              "rounds": args.rounds, "steps_per_round": args.steps, "images_per_round": args.images,
              "generator": drew_with, "instance_norms_swapped": {"training": len(step_table),
                                                                 "generator": len(table)},
              "training_step": summary(step, "steps", 1.0), "drawing": summary(drawing, "images", args.images),
              "drawn_images_max_abs_difference": float((images["today"] - images["before"]).abs().max())}
    for what, unit in (("training_step", "steps"), ("drawing", "images")):
        r = result[what]
        rates = ", ".join(f"{arm} {v:.2f} {unit}/s" for arm, v in r[f"{unit}_per_s"].items())
        print(f"{what:14s} {rates}; today over nn.InstanceNorm2d {r['speedup_paired_median']:.3f}x "
              f"(median of rounds: {', '.join(f'{x:.2f}' for x in r['speedup_paired'])})")
    print(f"largest difference between the arms' drawn images: {result['drawn_images_max_abs_difference']:.2e} "
          f"(on [-1, 1]); cpu, {result['threads']} threads, {session.precision}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
