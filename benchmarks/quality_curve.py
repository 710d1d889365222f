"""Figure against training time: the generated images' pose and gaze error as a run goes on.

Trains the configuration in params.yaml (plus ``-S key=value`` overrides, as ``dvc exp run``)
on the pipeline's ``data/prepared`` and ``data/split``, and every ``--every`` steps scores the
EMA generator's images of the test sources (one z each) with the evaluate stage's estimator
(same recipe and seed; trained once, first). Prints one JSON line per point and writes
``--out``/curve.csv plus the sample grid at each point, so a run shows whether a target is a
question of budget or of the model. With ``--judge`` each point (and the untrained generator at
step 0) also gets the realism judge's AUC and its few-shot reading (one partition seed; the
real-vs-real and blurred baselines are printed once, first).

    python benchmarks/quality_curve.py --steps 2400 --every 150 --out /tmp/curve
    python benchmarks/quality_curve.py -S train.lambda_ir=0 -S train.generator=encoder_decoder

Wall time is the training's alone (scoring is excluded), so it converts to a budget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from nirgan.config import load_config, parse_config
from nirgan.io import write_image
from nirgan.metrics.data import load_split
from nirgan.metrics.judge import realism_judge
from nirgan.metrics.pose import angle_errors
from nirgan.models.pose_estimator import predict
from nirgan.metrics.instrument import train_instrument
from nirgan.training.data import load_data
from nirgan.training.session import TrainSession


def _with_overrides(params: Path, sets: list[str]):
    data = load_config(params).model_dump(mode="json")
    for item in sets:
        key, value = item.split("=", 1)
        *path, last = key.split(".")
        node = data
        for part in path:
            node = node[part]
        node[last] = yaml.safe_load(value)
    return parse_config(data, origin=f"{params} with {sets}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."), help="a checkout with data/prepared and data/split")
    ap.add_argument("-S", dest="sets", action="append", default=[], help="params override, key=value")
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--every", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("quality_curve_out"))
    ap.add_argument("--judge", action="store_true", help="also the realism judge (about 20 s a point on 2 cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = _with_overrides(args.root / "params.yaml", args.sets)
    prepared, split = args.root / "data/prepared", args.root / "data/split"
    src, tgt = np.load(prepared / "source.npy", mmap_mode="r"), np.load(prepared / "target.npy", mmap_mode="r")
    train, test = load_split(prepared, split, "train", src, tgt), load_split(prepared, split, "test", src, tgt)
    device = torch.device("cpu")
    estimator, _ = train_instrument(cfg, train, device, labelled=True)
    real = angle_errors(predict(estimator, test.targets()), test.labels, "real")
    z = torch.randn(len(test), cfg.train.latent_dim, generator=torch.Generator().manual_seed(cfg.evaluate.seed))

    pools = (torch.cat([train.targets(), test.targets()]), torch.cat([train.sources(), test.sources()]),
             np.concatenate([train.labels, test.labels]))
    e = cfg.evaluate
    judge_settings = dict(seeds=1, epochs=e.judge_epochs, seed=e.seed, few_shot_draws=e.judge_few_shot_draws,
                          few_shot_steps=e.judge_few_shot_steps)
    if args.judge:
        baselines, _ = realism_judge(*pools, None, None, cfg.train.latent_dim, **judge_settings)
        print(json.dumps({k: v for k, v in baselines.items() if k.startswith("judge_auc")}), flush=True)

    session = TrainSession(cfg, load_data(prepared, split, device, cfg.train.sample_sources), device)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, trained_s = [], 0.0
    while True:
        sampler = session.sampler().eval()
        gen = angle_errors(predict(estimator, sampler.generate(test.sources(), z, test.labels)), test.labels, "gen")
        row = {"step": session.step, "epoch": round(session.step / session.steps_per_epoch, 2),
               "train_s": round(trained_s, 1), "pose_gen_head_mean": round(gen["gen_head_mean"], 2),
               "pose_gen_gaze_mean": round(gen["gen_gaze_mean"], 2),
               "pose_real_head_mean": round(real["real_head_mean"], 2),
               "pose_real_gaze_mean": round(real["real_gaze_mean"], 2)}
        if args.judge:
            judged, _ = realism_judge(*pools, sampler.generate, None, cfg.train.latent_dim, baselines=False,
                                      **judge_settings)
            row.update({k: round(judged[k], 3) for k in ("judge_auc", "judge_auc_few_shot")})
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_image(args.out / f"samples_{session.step:06d}.png", session.sample_grid())
        if session.step >= args.steps:
            break
        t = time.perf_counter()
        for _ in range(min(args.every, args.steps - session.step)):
            session.train_step()
        trained_s += time.perf_counter() - t
    pd.DataFrame(rows).to_csv(args.out / "curve.csv", index=False)
    print(f"steps/s {session.step / trained_s:.2f} (training only, {args.threads} threads); curve in {args.out}")


if __name__ == "__main__":
    main()
