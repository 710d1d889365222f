"""The default training step with the SPADE maps computed once per source batch against once per
image drawn, side by side in one process.

    .venv/bin/python benchmarks/spade_maps.py [--rounds 6] [--steps 8] [--device auto]

A step of the default (multinorm) generator draws two images per source: the sample G(x, z) and
the identity reconstruction G(x, E(y)). SPADE's gamma and beta depend on the source alone, so
``compute_g_loss`` asks the generator for both in one call and the maps are computed (and
back-propagated through) once. The "per image" arm restores the previous behaviour: one generator
call per style, each computing its own maps.

Both arms train one session, in alternating blocks of ``--steps`` steps (after a warm-up), so
that the machine's drift, which on a shared 2-core VM moved one arm's speed by 15 % between
separate runs, falls on both: each round's ratio is taken, and their median printed. Run it on an
idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import default_session, timed  # noqa: E402  (the benchmarks' step and timer)

from nirgan.devices import resolve_device  # noqa: E402
from nirgan.models.multinorm import MultinormGenerator  # noqa: E402

SHARED_FORWARD = MultinormGenerator.forward


def per_image_forward(self, source, style, labels=None):
    """The previous behaviour: every style its own call, its own SPADE maps."""
    if isinstance(style, tuple):
        return tuple(SHARED_FORWARD(self, source, s, labels) for s in style)
    return SHARED_FORWARD(self, source, style, labels)


ARMS = {"maps once per source (today)": SHARED_FORWARD, "maps once per image (before)": per_image_forward}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8, help="steps per arm and round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    device = resolve_device(args.device, "--device")
    session = default_session(args.params, device)
    if session.tc.generator != "multinorm":
        raise SystemExit(f"{args.params}: train.generator is {session.tc.generator}; the SPADE maps are the multinorm's")
    for _ in range(args.warmup):
        session.train_step()
    seconds: dict[str, list[float]] = {name: [] for name in ARMS}
    try:
        for _ in range(args.rounds):
            for name, forward in ARMS.items():
                MultinormGenerator.forward = forward
                seconds[name].append(timed(session.train_step, args.steps, 1, device))
    finally:
        MultinormGenerator.forward = SHARED_FORWARD
    today, before = seconds.values()
    # each round's two blocks ran back to back: their ratio cancels the drift between rounds
    paired = [b / t for t, b in zip(today, before)]
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "precision": session.precision,
        "rounds": args.rounds, "steps_per_round": args.steps,
        "steps_per_s": {name: 1 / statistics.median(v) for name, v in seconds.items()},
        "seconds_per_step_by_round": {name: [round(s, 4) for s in v] for name, v in seconds.items()},
        "speedup_paired_median": statistics.median(paired),
        "speedup_paired": [round(r, 3) for r in paired],
    }
    for name, v in seconds.items():
        print(f"{name:32s} {1 / statistics.median(v):6.2f} steps/s  (rounds: {', '.join(f'{s:.3f}' for s in v)} s)")
    print(f"speed-up, median over rounds of each round's ratio: {result['speedup_paired_median']:.3f}x "
          f"(rounds: {', '.join(f'{r:.2f}' for r in paired)}) on {device}, {result['threads']} threads, "
          f"{session.precision}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
