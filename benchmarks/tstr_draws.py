"""TSTR's draws with every seed's latents in one call (today) against one call per seed (before),
side by side in one process, on the default run's train sources and trained generator.

    .venv/bin/python benchmarks/tstr_draws.py [--rounds 4] [--seeds 2]

The utility phase draws each seed's images over the same train sources. Given the seeds' latents
as a tuple, the sampler draws them in one pass, and the multinorm computes its SPADE maps (which
depend on the source alone) once per batch. Prints both arms' seconds, the median of each round's
ratio, and whether the images are bit for bit the same. Run it idle, after ``dvc repro``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from nirgan.config import load_config
from nirgan.cores import size_threads
from nirgan.metrics.data import load_train_test
from nirgan.metrics.utility import generate_for_sources
from nirgan.models.artifacts import load_sampler

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=2, help="params.yaml's evaluate.utility_seeds")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.seeds < 1:
        ap.error("--rounds and --seeds must be at least 1")
    size_threads()
    e = load_config(ROOT / "params.yaml").evaluate
    train, _ = load_train_test(ROOT / "data" / "prepared", ROOT / "data" / "split")
    sampler = load_sampler(ROOT / "models" / "generator.pt").eval().inference(e.precision, "cpu")
    seeds = [e.seed + s for s in range(args.seeds)]

    def together() -> list[torch.Tensor]:
        return generate_for_sources(sampler.generate, train.source, train.labels, e.utility_latents,
                                    sampler.latent_dim, seeds)

    def apart() -> list[torch.Tensor]:
        return [generate_for_sources(sampler.generate, train.source, train.labels, e.utility_latents,
                                     sampler.latent_dim, [s])[0] for s in seeds]

    same = all(torch.equal(a, b) for a, b in zip(together(), apart(), strict=True))
    seconds: dict[str, list[float]] = {"together": [], "apart": []}
    for _ in range(args.rounds):
        for arm, draw in (("together", together), ("apart", apart)):
            t0 = time.perf_counter()
            draw()
            seconds[arm].append(time.perf_counter() - t0)
    paired = [a / t for t, a in zip(seconds["together"], seconds["apart"], strict=True)]
    n = len(train.source) * e.utility_latents * len(seeds)
    for arm, v in seconds.items():
        print(f"{arm:9s} {statistics.median(v):6.2f} s for {n} images ({', '.join(f'{s:.2f}' for s in v)})")
    print(f"together over apart: {statistics.median(paired):.3f}x (rounds: {', '.join(f'{r:.2f}' for r in paired)}); "
          f"images bit for bit the same: {same}; {torch.get_num_threads()} threads")
    return {"seconds": seconds, "speedup_paired_median": statistics.median(paired), "identical": same}


if __name__ == "__main__":
    main()
