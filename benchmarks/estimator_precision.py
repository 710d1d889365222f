"""The evaluate stage's pose/gaze estimator fit (its instrument and the utility arms' recipe) in
fp32 against bf16 autocast, side by side in one process on the default run's real data.

Fits alternate (fp32, bf16, fp32, bf16, ...) so that a machine's drift hits both columns alike;
each row prints the fit's wall seconds and the fitted estimator's mean head and gaze error on the
real test targets (degrees), as evaluate's ``pose_real_*`` reads them. bf16 is only native on
CUDA and on CPUs with AVX512-BF16 or AMX (``nirgan.devices``); elsewhere both columns run fp32.

    python benchmarks/estimator_precision.py [--repeats 2] [--prepared data/prepared --split data/split]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from nirgan.config import load_config
from nirgan.devices import effective_precision
from nirgan.metrics.data import load_split
from nirgan.metrics.pose import angle_errors
from nirgan.models.pose_estimator import predict
from nirgan.metrics.instrument import estimator_recipe, estimator_resolution
from nirgan.training.auxiliary import train_pose_estimator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--split", type=Path, default=Path("data/split"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    cfg = load_config(args.params)
    src = np.load(args.prepared / "source.npy", mmap_mode="r")
    tgt = np.load(args.prepared / "target.npy", mmap_mode="r")
    train = load_split(args.prepared, args.split, "train", src, tgt)
    test = load_split(args.prepared, args.split, "test", src, tgt)
    _, codes = np.unique(train.subjects, return_inverse=True)
    recipe = estimator_recipe(cfg)
    print(f"{len(train)} train / {len(test)} test pairs, {recipe.epochs} epochs at "
          f"{estimator_resolution(cfg, train)} px, {torch.get_num_threads()} threads; bf16 here runs as "
          f"{effective_precision('bf16', torch.device('cpu'))}", flush=True)
    rows = []
    for _ in range(args.repeats):
        for precision in ("fp32", "bf16"):
            t = time.perf_counter()
            est = train_pose_estimator(train.target, train.source, torch.as_tensor(train.labels, dtype=torch.float32),
                                       torch.as_tensor(codes), replace(recipe, precision=precision),
                                       resolution=estimator_resolution(cfg, train))
            seconds = time.perf_counter() - t
            err = angle_errors(predict(est, test.targets()), test.labels, "e")
            rows.append(dict(precision=precision, seconds=round(seconds, 2), head_deg=round(err["e_head_mean"], 3),
                             gaze_deg=round(err["e_gaze_mean"], 3)))
            print(json.dumps(rows[-1]), flush=True)
    for precision in ("fp32", "bf16"):
        mine = [r for r in rows if r["precision"] == precision]
        print(f"{precision}: {np.mean([r['seconds'] for r in mine]):.2f} s per fit, head "
              f"{np.mean([r['head_deg'] for r in mine]):.3f}, gaze {np.mean([r['gaze_deg'] for r in mine]):.3f} deg")
    fp32 = np.mean([r["seconds"] for r in rows if r["precision"] == "fp32"])
    bf16 = np.mean([r["seconds"] for r in rows if r["precision"] == "bf16"])
    print(f"bf16 / fp32 speed: {fp32 / bf16:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
