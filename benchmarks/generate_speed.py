"""Dataset generation speed, end to end: rig render, generation, label check, PNG encoding and
writing, through the very code ``nirgan generate`` runs (``plan_dataset`` + ``write_shard``).

For each variant (shard worker processes x batch size x precision) it writes ``--count`` images
into a fresh folder and prints images/s and where the time went, side by side. Each worker
process writes a warm-up shard (model load, first allocations) first, timed apart; so is
``finalize`` (labels.parquet, card, plots: once per dataset). On the CPU each worker runs one
intra-op thread, as ``nirgan generate`` does.

The machine's load average is printed before and after: on a shared machine the figures are
lower bounds of what the same cores do idle.

    python benchmarks/generate_speed.py                      # models/, 128 px, 1 and 2 workers, fp32 and bf16
    python benchmarks/generate_speed.py --batch 16 32 --workers 2 --count 1024
    python benchmarks/generate_speed.py --device cuda --batch 256 1024 --count 20000 --workers 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from nirgan.config import parse_config
from nirgan.cores import die_with_parent
from nirgan.generation.dataset import PHASES, plan_dataset, write_shard
from nirgan.generation.finalize import finalize
from nirgan.models.artifacts import absent_reason


def run_variant(model: dict, out: Path, count: int, size: int, batch: int, precision: str, device: str,
                workers: int) -> dict:
    """Steady state: a warm pool of ``workers`` shard processes (as ``write_shards`` runs them), each
    having written one warm-up shard (model load, first allocations), then the timed shards."""
    spec = dict(count=count, shard_size=max(batch, -(-count // (4 * workers))), image_size=size,
                batch_size=batch, precision=precision)
    warm = plan_dataset(parse_config({"generate": {**spec, "count": batch * workers, "shard_size": batch,
                                                   "seed": 99}}), out / "warm", model, device)
    plan = plan_dataset(parse_config({"generate": spec}), out / "timed", model, device)
    seconds, cpu = dict.fromkeys(PHASES, 0.0), 0.0
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        list(pool.map(write_shard, [warm] * workers, range(workers), [device] * workers))
        warmup = time.perf_counter() - start
        start = time.perf_counter()
        for summary in pool.map(write_shard, [plan] * plan.n_shards, range(plan.n_shards), [device] * plan.n_shards):
            for phase, s in summary["seconds"].items():
                seconds[phase] += s
            cpu += summary["cpu_seconds"]
        wall = time.perf_counter() - start
    t = time.perf_counter()
    finalize(plan)
    return {"workers": workers, "wall": wall, "cpu": cpu, "seconds": seconds, "warmup": warmup,
            "finalize": time.perf_counter() - t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models", help="folder with generator.pt and label_estimator.pt")
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="shard processes (one CPU thread each on the CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    folder = Path(args.model)
    estimator = folder / "label_estimator.pt"
    model = {"generator": folder / "generator.pt", "name": "bench", "version": "bench",
             "label_estimator": None if absent_reason(estimator) else estimator}
    from nirgan.models.artifacts import load_sampler

    train_cfg = load_sampler(model["generator"]).train_config
    print(f"model {folder}: {train_cfg.generator}, width {train_cfg.width}, latent {train_cfg.latent_dim}; "
          f"label check: {'on' if model['label_estimator'] else 'UNAVAILABLE (' + absent_reason(estimator) + ')'}")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{len(os.sched_getaffinity(0))} cores, "
          f"device {args.device}, {args.count} images at {args.size}^2")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    scratch = Path(args.out or tempfile.mkdtemp(prefix="nirgan-genbench-"))
    results = {}
    try:
        for workers in args.workers:
            for batch in args.batch:
                for precision in args.precision:
                    out = scratch / f"w{workers}_b{batch}_{precision}"
                    results[(workers, batch, precision)] = run_variant(
                        model, out, args.count, args.size, batch, precision, args.device, workers)
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.out is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    names = [f"w{w} b{b} {p}" for w, b, p in results]
    print("\n" + f"{'':28s}" + "".join(f"{n:>16s}" for n in names))
    cores = len(os.sched_getaffinity(0))
    # CPU time of the shard workers (one thread each): what the same work costs on idle cores
    rows = [("images/s end to end", lambda r: args.count / r["wall"]),
            ("worker CPU-ms/image", lambda r: 1000 * r["cpu"] / args.count),
            ("img/s on idle cores*", lambda r: args.count / r["cpu"] * min(cores, r["workers"]))]
    # phase times are summed over the workers' shards: per image of one worker's time
    rows += [(f"worker ms/image {p}", (lambda p: lambda r: 1000 * r["seconds"][p] / args.count)(p)) for p in PHASES]
    rows += [("wall ms/image", lambda r: 1000 * r["wall"] / args.count),
             ("worker start + warm-up s", lambda r: r["warmup"]),
             ("finalize s (once)", lambda r: r["finalize"])]
    for label, value in rows:
        print(f"{label:28s}" + "".join(f"{value(r):16.2f}" for r in results.values()))
    print("* estimated, not measured: min(workers, cores) / the workers' CPU seconds per image (a worker is one "
          "thread); wall figures above are what this (shared) machine gave")
    base = next(iter(results.values()))
    print("\nratio to the first column (end-to-end images/s): "
          + ", ".join(f"{n} {base['wall'] / r['wall']:.2f}x" for n, r in zip(names, results.values())))


if __name__ == "__main__":
    main()
