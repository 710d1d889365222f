"""The evaluate stage's instrument (the pose/gaze estimator recipe of stages/evaluate.py, subject
codes included) trained with several seeds by this code and by commit ``--before``, alternating
in child processes on the default run's data: its seconds and test errors per seed, and their
mean and spread, so a change to the estimator's training can be judged against its seed spread.

    python benchmarks/estimator_seeds.py --before 7f5295d --seeds 5    # about 3 CPU minutes
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

FIT = """
import sys, time, numpy as np, torch
from pathlib import Path
from dataclasses import replace
from nirgan.config import load_config
from nirgan.cores import size_threads
from nirgan.metrics.data import load_split
from nirgan.models.pose_estimator import predict
from nirgan.metrics.instrument import estimator_recipe, estimator_resolution
from nirgan.training.auxiliary import train_pose_estimator
size_threads()
data, seed = Path(sys.argv[1]), int(sys.argv[2])
cfg = load_config(Path(sys.argv[3]))
src = np.load(data / "prepared" / "source.npy", mmap_mode="r")
tgt = np.load(data / "prepared" / "target.npy", mmap_mode="r")
train = load_split(data / "prepared", data / "split", "train", src, tgt)
test = load_split(data / "prepared", data / "split", "test", src, tgt)
_, codes = np.unique(train.subjects, return_inverse=True)
t0 = time.perf_counter()
model = train_pose_estimator(train.target, train.source, torch.as_tensor(train.labels, dtype=torch.float32),
                             torch.as_tensor(codes), replace(estimator_recipe(cfg), seed=seed),
                             resolution=estimator_resolution(cfg, train))
seconds = time.perf_counter() - t0
err = np.abs(predict(model, test.targets()) - test.labels).mean(0)
print(seconds, err[:3].mean(), err[3:].mean())
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the baseline commit")
    ap.add_argument("--seeds", type=int, default=5, help="instrument seeds 1000, 1001, ... (the stage's is 1000)")
    ap.add_argument("--data", type=Path, default=ROOT / "data", help="holds prepared/ and split/ (the default run's)")
    args = ap.parse_args()
    rows: dict[str, list[list[float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(f"git archive {args.before} src | tar -x -C {tmp}", shell=True, cwd=ROOT, check=True)
        trees = {"before": Path(tmp) / "src", "after": ROOT / "src"}
        for s in range(args.seeds):
            for name, tree in trees.items():
                out = subprocess.run([sys.executable, "-c", FIT, str(args.data), str(1000 + s), str(ROOT / "params.yaml")],
                                     env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                                     check=True).stdout.split()
                rows[name].append([float(v) for v in out[-3:]])
                print(f"seed {1000 + s} {name:6s}: {rows[name][-1][0]:5.1f} s, test error head "
                      f"{rows[name][-1][1]:.3f} gaze {rows[name][-1][2]:.3f} deg", flush=True)
    for name, r in rows.items():
        a = np.array(r)
        print(f"{name:6s} ({args.before if name == 'before' else 'this code'}): {a[:, 0].mean():5.1f} s a fit; "
              f"head {a[:, 1].mean():.3f} +- {a[:, 1].std():.3f}, gaze {a[:, 2].mean():.3f} +- {a[:, 2].std():.3f} deg "
              f"over {len(a)} seeds")
    b, a = np.array(rows["before"]), np.array(rows["after"])
    print(f"speed-up {b[:, 0].mean() / a[:, 0].mean():.2f}x")


if __name__ == "__main__":
    main()
