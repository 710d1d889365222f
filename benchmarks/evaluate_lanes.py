"""Would evaluate gain from running its two big phases side by side on a 2-core CPU?

The utility phase (TSTR: estimator fits) and the realism judge are independent. This measures,
on the default run's outputs in this checkout (``data/prepared``, ``data/split``,
``models/generator.pt``: run ``make repro`` first), each phase alone with every core (as the
stage runs them, one after the other), then both at once in two processes of one thread each,
and prints the ratio of the two wall times. One child process per measurement, one after the
other; run it on an idle machine.

    python benchmarks/evaluate_lanes.py            # about 7 minutes on 2 cores

The utility phase here fits all six estimators (the stage reuses its instrument for one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PHASE = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(int(sys.argv[2]))
from pathlib import Path
from nirgan.config import load_config
from nirgan.metrics.data import load_split
from nirgan.metrics.judge import realism_judge
from nirgan.metrics.utility import tstr
from nirgan.models.artifacts import load_sampler, untrained_sampler
from nirgan.metrics.instrument import estimator_recipe, estimator_resolution

cfg = load_config(Path("params.yaml")); e = cfg.evaluate
src = np.load("data/prepared/source.npy", mmap_mode="r"); tgt = np.load("data/prepared/target.npy", mmap_mode="r")
train = load_split(Path("data/prepared"), Path("data/split"), "train", src, tgt)
test = load_split(Path("data/prepared"), Path("data/split"), "test", src, tgt)
cpu = torch.device("cpu")
sampler = load_sampler(Path("models/generator.pt"), map_location=cpu).inference(e.precision, cpu)
untrained = untrained_sampler(sampler.train_config, sampler.label_dim).inference(e.precision, cpu)
t = time.perf_counter()
if sys.argv[1] == "judge":
    out, _ = realism_judge(torch.cat([train.targets(), test.targets()]), torch.cat([train.sources(), test.sources()]),
                           np.concatenate([train.labels, test.labels]), sampler.generate, untrained.generate,
                           sampler.latent_dim, seeds=e.judge_seeds, epochs=e.judge_epochs, seed=e.seed, device=cpu,
                           few_shot_draws=e.judge_few_shot_draws, few_shot_steps=e.judge_few_shot_steps,
                           precision=e.precision)
    figure = out["judge_auc_untrained_few_shot"]
else:
    out = tstr(train.target, train.source, train.labels, test.target, test.labels, sampler.generate,
               untrained.generate, sampler.latent_dim, estimator_recipe(cfg),
               resolution=estimator_resolution(cfg, train), train_subjects=train.subjects,
               seeds=e.utility_seeds, latents=e.utility_latents, z_seed=e.seed, device=cpu)
    figure = out["utility_tstr_head_deg"]
print(json.dumps({"phase": sys.argv[1], "threads": int(sys.argv[2]), "seconds": time.perf_counter() - t,
                  "figure": figure}))
"""


def start(phase: str, threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NIRGAN_CPUS=str(threads))
    return subprocess.Popen([sys.executable, "-c", PHASE, phase, str(threads)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"a phase failed ({proc.returncode})")
    row = json.loads(out.strip().splitlines()[-1])
    print(f"  {row['phase']:8s} {row['threads']} thread(s): {row['seconds']:6.1f} s  (figure {row['figure']:.3f})",
          flush=True)
    return row


def main() -> None:
    if not (ROOT / "models" / "generator.pt").is_file():
        sys.exit("run `make repro` first: this reads the default run's data/prepared and models/")
    cores = len(os.sched_getaffinity(0))
    print(f"one after the other, {cores} threads each (as the evaluate stage runs them):", flush=True)
    alone = [result(start(phase, cores)) for phase in ("judge", "utility")]
    sequential = sum(r["seconds"] for r in alone)
    print("side by side, one thread each:", flush=True)
    t = time.perf_counter()
    procs = [start(phase, 1) for phase in ("judge", "utility")]
    lanes = [result(p) for p in procs]
    makespan = time.perf_counter() - t
    # the best any split of these fits over two lanes could do: both lanes busy to the end
    balanced = sum(r["seconds"] for r in lanes) / 2
    print(f"one after the other {sequential:.1f} s; side by side {makespan:.1f} s "
          f"({sequential / makespan:.2f}x); perfectly balanced lanes at best {balanced:.1f} s "
          f"({sequential / balanced:.2f}x)")


if __name__ == "__main__":
    main()
