"""Cost and figures of the TSTR utility and the realism judge on a pipeline's data.

Reads ``data/prepared`` + ``data/split`` (run ``dvc repro split`` first) and, when present,
``models/generator.pt`` (else only the untrained generator is judged). Uses the evaluate
stage's estimator recipe and params.yaml's evaluate section; prints one JSON object with the
figures and the seconds each measure took.

    python benchmarks/measures_cost.py [--root .] [--skip-utility] [--skip-judge]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from nirgan.config import load_config
from nirgan.metrics.judge import realism_judge
from nirgan.metrics.utility import tstr
from nirgan.models import build_networks
from nirgan.models.pose_estimator import EstimatorTraining
from nirgan.stages import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--skip-utility", action="store_true")
    ap.add_argument("--skip-judge", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine 2 threads ran many times slower)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.root / "params.yaml")
    e = cfg.evaluate
    prepared, split = args.root / "data/prepared", args.root / "data/split"
    src_all, tgt_all = np.load(prepared / "source.npy", mmap_mode="r"), np.load(prepared / "target.npy", mmap_mode="r")
    train = evaluate._load_split(prepared, split, "train", src_all, tgt_all)
    test = evaluate._load_split(prepared, split, "test", src_all, tgt_all)
    model = args.root / "models/generator.pt"
    if model.exists():
        g, g0, _, _ = evaluate._generators(args.root / "models", cfg, torch.device("cpu"))
    else:
        torch.manual_seed(cfg.train.seed)
        net = build_networks(cfg.train).generator.eval()
        g = None
        g0 = evaluate.Generator(net, None, cfg.train.latent_dim, 0)
    out: dict[str, object] = {"trained_generator": str(model) if g is not None else "none (untrained only)",
                              "train_pairs": len(train), "test_pairs": len(test), "threads": torch.get_num_threads()}
    if not args.skip_judge:
        t, c = time.perf_counter(), time.process_time()
        both = np.concatenate([train.labels, test.labels])
        out.update(realism_judge(torch.cat([train.targets(), test.targets()]),
                                 torch.cat([train.sources(), test.sources()]), both, g, g0, g0.latent_dim,
                                 seeds=e.judge_seeds, epochs=e.judge_epochs, seed=e.seed))
        out.update(judge_seconds=round(time.perf_counter() - t, 1), judge_cpu_seconds=round(time.process_time() - c, 1))
    if not args.skip_utility:
        t, c = time.perf_counter(), time.process_time()
        # the evaluate stage's recipe (stages/evaluate.py _estimator)
        settings = EstimatorTraining(epochs=e.estimator_epochs, seed=e.seed + 1000, subject_weight=evaluate.SUBJECT_WEIGHT)
        out.update(tstr(train.target, train.source, train.labels, test.target, test.labels,
                        g if g is not None else g0, g0, g0.latent_dim, settings,
                        resolution=min(e.estimator_resolution, train.target.shape[-1]), train_subjects=train.subjects,
                        seeds=e.utility_seeds, latents=e.utility_latents, z_seed=e.seed))
        out.update(utility_seconds=round(time.perf_counter() - t, 1),
                   utility_cpu_seconds=round(time.process_time() - c, 1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
