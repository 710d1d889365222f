"""The whole generate stage, one shard process against several, by dataset size: where a worker
pays for its start (spawn, import torch, load the models), the rule behind ``generate.workers: 0``
(:func:`nirgan.generation.dataset.auto_workers`).

For each ``--count`` it runs ``nirgan stage generate`` in a scratch folder (this checkout's
params.yaml with ``generate.count`` and ``generate.workers`` set, ``models/`` and
``metrics/eval.json`` of this checkout), alternating the worker counts ``--repeats`` times, and
prints each run's wall seconds and CPU seconds (the stage and its workers) as it lands, then the
medians' ratios. One run before them, not counted, creates the MLflow store. The images are the
same bytes whatever the workers (tests/test_generate.py).

    .venv/bin/python benchmarks/generate_workers.py --count 200 600 --workers 1 2 --repeats 3

Run it on an idle machine: the columns are only comparable within one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_stage(work: Path, count: int, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds (this child and what it waited for) of one generate stage."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["generate"].update(count=count, workers=workers)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(work / "data" / "generated", ignore_errors=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(["nirgan", "stage", "generate"], cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"generate failed (count {count}, workers {workers}):\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, nargs="+", default=[200, 600])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "models").symlink_to(ROOT / "models")
        (work / "metrics").mkdir()
        shutil.copy(ROOT / "metrics" / "eval.json", work / "metrics" / "eval.json")
        shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
        run_stage(work, args.count[0], args.workers[0])  # warm-up: the MLflow store's creation, file caches
        for count in args.count:
            rows: dict[int, list[tuple[float, float]]] = {w: [] for w in args.workers}
            for _ in range(args.repeats):
                for w in args.workers:
                    wall, cpu = run_stage(work, count, w)
                    rows[w].append((wall, cpu))
                    print(f"count {count:6d}  workers {w}  wall {wall:6.2f} s  cpu {cpu:6.2f} s", flush=True)
            first = args.workers[0]
            base = statistics.median(r[0] for r in rows[first])
            for w in args.workers[1:]:
                med = statistics.median(r[0] for r in rows[w])
                print(f"count {count:6d}  median wall: {w} workers / {first} = {med / base:.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
