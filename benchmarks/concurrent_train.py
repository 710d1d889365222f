"""Two default trains on one machine against one: does a second run oversubscribe the cores?

Each run is a child process that sizes its threads the way every ``nirgan`` command does
(:func:`nirgan.cores.size_threads`), builds the default configuration's networks (params.yaml
``train``, on the CPU) on random uint8 pairs, and counts training steps in a common window that
starts after every child has built its networks. Three arms:

  alone     one run, NIRGAN_CPUS unset: it takes every core it has
  2 shared  two runs at once, NIRGAN_CPUS unset: each sizes its pool to all the cores (what
            every run did before nirgan.cores: 3 steps/s alone fell to 0.04 side by side)
  2 split   two runs at once, each with NIRGAN_CPUS = cores // 2

It prints steps/s per run and the machine's total for each arm. About 2 minutes with the defaults;
run it on an otherwise idle machine (it measures contention, so other jobs distort it).

    python benchmarks/concurrent_train.py                 # 25 s windows
    python benchmarks/concurrent_train.py --seconds 15 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUP_S = 25.0  # from launch to the window's start: import torch, build the networks, warm up


def child(start_at: float, seconds: float, pairs: int = 64) -> dict:
    """One training run: steps counted in [start_at, start_at + seconds] (wall clock)."""
    import numpy as np
    import torch

    from nirgan.config import load_config
    from nirgan.cores import size_threads
    from nirgan.training.data import TrainData
    from nirgan.training.session import TrainSession

    threads = size_threads()
    cfg = load_config(ROOT / "params.yaml")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": "cpu", "log_model": False})})
    size = cfg.augment.image_size
    rng = np.random.default_rng(0)
    src = torch.from_numpy(rng.integers(0, 256, (pairs, size, size, 3), dtype=np.uint8))
    tgt = torch.from_numpy(rng.integers(0, 256, (pairs, size, size), dtype=np.uint8))
    labels = torch.zeros(pairs, 5)
    data = TrainData(src, tgt, labels, np.array([f"s{i % 4}" for i in range(pairs)]),
                     src[:2].permute(0, 3, 1, 2).float() / 127.5 - 1, tgt[:2, None].float() / 127.5 - 1, labels[:2])
    session = TrainSession(cfg, data, torch.device("cpu"))
    for _ in range(2):  # warm-up: first-call allocations and kernel selection
        session.train_step()
    late = time.time() - start_at
    while time.time() < start_at:
        session.train_step()  # keep the core busy as the other run would: no idle head start
    steps, t0 = 0, time.time()
    while time.time() < start_at + seconds:
        session.train_step()
        steps += 1
    return {"threads": threads, "steps": steps, "steps_per_s": steps / (time.time() - t0), "late_s": max(0.0, late)}


def arm(name: str, runs: int, cpus: int | None, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                              "OPENBLAS_NUM_THREADS", "NIRGAN_CPUS")}
    if cpus is not None:
        env["NIRGAN_CPUS"] = str(cpus)
    start_at = time.time() + SETUP_S
    procs = [subprocess.Popen([sys.executable, __file__, "--child", str(start_at), str(seconds)], env=env,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(runs)]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=SETUP_S + seconds + 120)
        if p.returncode:
            raise SystemExit(f"{name}: a training child failed with exit {p.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    total = sum(r["steps_per_s"] for r in results)
    print(f"{name:10s} runs={runs} NIRGAN_CPUS={cpus if cpus else '-':>2}  threads/run="
          f"{','.join(str(r['threads']) for r in results)}  steps/s per run: "
          f"{', '.join(format(r['steps_per_s'], '.2f') for r in results)}  total {total:.2f}"
          + ("  (a child started late: SETUP_S too short)" if any(r["late_s"] > 0 for r in results) else ""),
          flush=True)
    return {"arm": name, "runs": runs, "nirgan_cpus": cpus, "results": results, "total_steps_per_s": total}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=25.0, help="measured window per arm (default %(default)s)")
    ap.add_argument("--json", type=Path, help="write the rows here as well")
    args = ap.parse_args(argv)
    from nirgan.cores import available_cores

    cores = available_cores({})
    print(f"{cores} cores available; default train config (params.yaml) on the CPU, {args.seconds:.0f} s windows",
          flush=True)
    rows = [arm("alone", 1, None, args.seconds), arm("2 shared", 2, None, args.seconds),
            arm("2 split", 2, max(1, cores // 2), args.seconds)]
    alone = rows[0]["total_steps_per_s"]
    for r in rows[1:]:
        print(f"{r['arm']}: machine total {r['total_steps_per_s'] / alone:.2f}x one run alone; slowest run "
              f"{min(x['steps_per_s'] for x in r['results']) / alone:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(float(sys.argv[2]), float(sys.argv[3]))), flush=True)
    else:
        main()
