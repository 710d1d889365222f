"""Dataset generation speed, end to end: rig render, generation, label check, PNG encoding and
writing, through the very code ``nirgan generate`` runs (``plan_dataset`` + ``write_shard``).

For each variant (batch size x precision) it writes ``--count`` images into a fresh folder and
prints images/s and where the time went, side by side. A warm-up shard (model load, first
allocations) runs before each variant and is not counted; ``finalize`` (labels.parquet, card,
plots: once per dataset) is timed separately.

The machine's load average is printed before and after: on a shared machine the figures are
lower bounds of what the same cores do idle.

    python benchmarks/generate_speed.py                      # models/, 128 px, 2 threads
    python benchmarks/generate_speed.py --batch 16 32 --precision fp32 bf16 --count 512
    python benchmarks/generate_speed.py --device cuda --batch 256 1024 --count 20000 --threads 8
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from nirgan.config import parse_config
from nirgan.generation.dataset import PHASES, finalize, plan_dataset, write_shard
from nirgan.models.artifacts import absent_reason


def run_variant(model: dict, out: Path, count: int, size: int, batch: int, precision: str, device: str) -> dict:
    spec = dict(count=count, shard_size=max(batch, min(count, 256)), image_size=size, batch_size=batch,
                precision=precision)
    warm = plan_dataset(parse_config({"generate": {**spec, "count": batch, "seed": 99}}), out / "warm", model)
    write_shard(warm, 0, device)
    plan = plan_dataset(parse_config({"generate": spec}), out / "timed", model)
    seconds = dict.fromkeys(PHASES, 0.0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    for k in range(plan.n_shards):
        for phase, s in write_shard(plan, k, device)["seconds"].items():
            seconds[phase] += s
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    t = time.perf_counter()
    finalize(plan)
    return {"wall": wall, "cpu": cpu, "seconds": seconds, "finalize": time.perf_counter() - t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models", help="folder with generator.pt and label_estimator.pt")
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, nargs="+", default=[32])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    folder = Path(args.model)
    estimator = folder / "label_estimator.pt"
    model = {"generator": folder / "generator.pt", "name": "bench", "version": "bench",
             "label_estimator": None if absent_reason(estimator) else estimator}
    from nirgan.models.artifacts import load_sampler

    train_cfg = load_sampler(model["generator"]).train_config
    print(f"model {folder}: {train_cfg.generator}, width {train_cfg.width}, latent {train_cfg.latent_dim}; "
          f"label check: {'on' if model['label_estimator'] else 'UNAVAILABLE (' + absent_reason(estimator) + ')'}")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}, "
          f"device {args.device}, {args.count} images at {args.size}^2")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    scratch = Path(args.out or tempfile.mkdtemp(prefix="nirgan-genbench-"))
    results = {}
    try:
        for batch in args.batch:
            for precision in args.precision:
                out = scratch / f"b{batch}_{precision}"
                results[(batch, precision)] = run_variant(model, out, args.count, args.size, batch, precision,
                                                          args.device)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.out is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    names = [f"b{b} {p}" for b, p in results]
    print("\n" + f"{'':28s}" + "".join(f"{n:>16s}" for n in names))
    rows = [("images/s end to end", lambda r: args.count / r["wall"]),
            ("images/s per 2 CPU-s", lambda r: args.count / (r["cpu"] / 2))]
    rows += [(f"ms/image {p}", (lambda p: lambda r: 1000 * r["seconds"][p] / args.count)(p)) for p in PHASES]
    rows += [("ms/image total", lambda r: 1000 * r["wall"] / args.count),
             ("finalize s (once)", lambda r: r["finalize"])]
    for label, value in rows:
        print(f"{label:28s}" + "".join(f"{value(r):16.2f}" for r in results.values()))
    base = next(iter(results.values()))
    print("\nratio to the first column (end-to-end images/s): "
          + ", ".join(f"{n} {base['wall'] / r['wall']:.2f}x" for n, r in zip(names, results.values())))


if __name__ == "__main__":
    main()
