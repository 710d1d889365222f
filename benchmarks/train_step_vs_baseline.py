"""The default training step (params.yaml's train section) of this checkout against a baseline
revision, side by side in one run, each in its own process on the same synthetic data.

    .venv/bin/python benchmarks/train_step_vs_baseline.py [--baseline cabb3e7] [--steps 40]

Rows: the baseline's step (its ``src/`` from ``git archive``), then this checkout's with
``train.precision`` fp32 and bf16 (bf16 runs as bf16 only where it is native:
``nirgan.devices.native_bf16``; the row says what ran). Every process uses the cores the
command may use (``nirgan.cores.available_cores``) and runs after the previous one ended. Run it
on an idle machine: steps/s measured beside anything else are meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import json, sys
import torch
sys.path.insert(0, sys.argv[4])
from train_speed import default_session, timed  # the benchmarks' step and timer (nirgan from PYTHONPATH)
session = default_session(sys.argv[1], torch.device("cpu"), **json.loads(sys.argv[2]))
sec = timed(session.train_step, int(sys.argv[3]), 5, torch.device("cpu"))
print(json.dumps({"steps_per_s": 1 / sec, "threads": torch.get_num_threads(),
                  "ran_as": getattr(session, "precision", "fp32")}))
"""


def _measure(src: Path, overrides: dict, steps: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", CODE, str(ROOT / "params.yaml"), json.dumps(overrides), str(steps),
                          str(ROOT / "benchmarks")],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="cabb3e7", help="git revision to compare with")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from nirgan.cores import available_cores

    threads = available_cores()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.baseline, "src"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        for name, src, over in ((f"baseline {args.baseline}", Path(tmp) / "src", {}),
                                ("this, precision fp32", ROOT / "src", {"precision": "fp32"}),
                                ("this, precision bf16", ROOT / "src", {"precision": "bf16"})):
            row = {"code": name, **_measure(src, over, args.steps, threads)}
            rows.append(row)
            print(f"{name:>24}: {row['steps_per_s']:.2f} steps/s ({row['threads']} threads, ran as {row['ran_as']})",
                  flush=True)
    base = rows[0]["steps_per_s"]
    for row in rows[1:]:
        row["vs_baseline"] = row["steps_per_s"] / base
        print(f"{row['code']} / baseline = {row['vs_baseline']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
