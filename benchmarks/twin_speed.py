"""Twin rendering speed: this checkout against a baseline revision, side by side in one run.

    .venv/bin/python benchmarks/twin_speed.py [--baseline 5dc9745] [--frames 20] [--subjects 20]
    .venv/bin/python benchmarks/twin_speed.py --stage d8a9bcd   # and the whole collect stage

The baseline's ``src/`` is taken with ``git archive`` into a temporary folder and run in its own
process (one core: it had no workers); this checkout runs with 1 worker and with every core it
may use (``nirgan.cores.available_cores``). ``--stage REV`` also times ``nirgan stage collect``
(render, PNG encoding, files, hashes and manifest) on params.yaml's twin with REV's code and this
checkout's, alternating, ``--repeats`` times each. Each row is printed as it is measured. Run it
on an idle machine: frames/s of anything else running at the same time are meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import inspect, json, sys, time
from nirgan import twin
from nirgan.config import TwinConfig
cfg = TwinConfig(**json.loads(sys.argv[1]))
kw = {"workers": int(sys.argv[2])} if "workers" in inspect.signature(twin.render_dataset).parameters else {}
t = time.perf_counter()
n = sum(1 for _ in twin.render_dataset(cfg, **kw))
print(json.dumps({"pairs": n, "seconds": time.perf_counter() - t}))
"""


def _measure(src: Path, cfg: dict, workers: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CODE, json.dumps(cfg), str(workers)], env=env,
                         capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return row["pairs"] / row["seconds"]


def _stage_seconds(src: Path, workdir: Path) -> float:
    """Wall seconds of ``nirgan stage collect`` with the code in ``src``, in ``workdir``."""
    shutil.rmtree(workdir / "data", ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(src)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nirgan.cli", "stage", "collect"], cwd=workdir, env=env,
                   capture_output=True, text=True, check=True)
    return time.perf_counter() - t


def _archive(revision: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", revision, "src"], cwd=ROOT, capture_output=True, check=True)
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="5dc9745", help="git revision to compare with")
    ap.add_argument("--subjects", type=int, default=20)  # the default run's 800 pairs
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--stage", metavar="REV", help="also time the collect stage: REV's code against this checkout's")
    ap.add_argument("--repeats", type=int, default=3, help="collect stage runs per side (with --stage)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from nirgan.cores import available_cores

    cfg = dict(subjects=args.subjects, cameras=args.cameras, frames=args.frames)
    cores = available_cores()
    with tempfile.TemporaryDirectory() as tmp:
        base_src = _archive(args.baseline, Path(tmp) / "baseline")
        print(f"twin {cfg} at 256x256 (the default frame), {cores} cores", flush=True)
        base = _measure(base_src, cfg, 1)
        print(f"baseline {args.baseline}, 1 process: {base:7.1f} pairs/s", flush=True)
    one = _measure(ROOT / "src", cfg, 1)
    print(f"this checkout, 1 worker:    {one:7.1f} pairs/s  ({one / base:.2f}x baseline)", flush=True)
    if cores > 1:
        many = _measure(ROOT / "src", cfg, cores)
        print(f"this checkout, {cores} workers:   {many:7.1f} pairs/s  ({many / base:.2f}x baseline)", flush=True)
    if args.stage:
        with tempfile.TemporaryDirectory() as tmp:
            _compare_stage(args.stage, Path(tmp), args.repeats)


def _compare_stage(revision: str, tmp: Path, repeats: int) -> None:
    workdir = tmp / "stage"
    workdir.mkdir()
    shutil.copy(ROOT / "params.yaml", workdir / "params.yaml")
    sides = {revision: _archive(revision, tmp / "stage-baseline"), "this checkout": ROOT / "src"}
    print(f"collect stage (params.yaml's twin), {repeats} runs each, alternating:", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, src in sides.items():
            seconds[name].append(_stage_seconds(src, workdir))
            print(f"  {name}: {seconds[name][-1]:.2f} s", flush=True)
    base, mine = (min(v) for v in seconds.values())
    print(f"collect stage, best of {repeats}: {revision} {base:.2f} s, this checkout {mine:.2f} s "
          f"({base / mine:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
