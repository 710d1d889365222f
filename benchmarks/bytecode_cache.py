"""What a bytecode cache saves: stage imports and the tests' micro pipeline, with and without it.

The Makefile sets PYTHONPYCACHEPREFIX (under the venv) and clears PYTHONDONTWRITEBYTECODE, which
this CI image sets. Two arms, alternating, in child processes of this checkout:
- ``none``: PYTHONDONTWRITEBYTECODE=1 and no prefix: every process compiles what it imports;
- ``cache``: a prefix in a temporary folder, warmed by one import first (as the first stage of a
  `make repro` or `make test` warms it).

It times ``python -c "import torch, mlflow, <stage module>"`` for each stage ``--repeats`` times,
and with ``--repro`` also a fresh ``dvc repro`` of tests/pipeline_project.py's micro project.

    .venv/bin/python benchmarks/bytecode_cache.py [--repeats 3] [--repro]

Run it on an idle machine: the columns are only comparable within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from micro_repro import BUILD, _timed  # the micro project's builder and a checked, timed child process

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("collect", "detect", "baselines", "train", "evaluate", "generate")


def _env(arm: str, prefix: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    env.update(DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    if arm == "none":
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env["PYTHONPYCACHEPREFIX"] = str(prefix)
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repro", action="store_true", help="also time the micro project's fresh `dvc repro`")
    args = ap.parse_args()
    arms = ("none", "cache")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prefix = tmp / "pycache"
        imports = {s: f"import torch, mlflow, nirgan.stages.{s}" for s in STAGES}
        _timed([sys.executable, "-c", "; ".join(imports.values())], ROOT, _env("cache", prefix))  # warm
        print(f"seconds to import torch, mlflow and a stage, {os.cpu_count()} CPUs, arms alternating", flush=True)
        rows: dict[str, dict[str, list[float]]] = {a: {s: [] for s in STAGES} for a in arms}
        for r in range(args.repeats):
            for stage, code in imports.items():
                for arm in arms:
                    rows[arm][stage].append(_timed([sys.executable, "-c", code], ROOT, _env(arm, prefix)))
            print(f"repeat {r + 1}: " + "  ".join(
                f"{s} {rows['none'][s][-1]:.1f}/{rows['cache'][s][-1]:.1f}" for s in STAGES) + "  (none/cache)",
                flush=True)
        for stage in STAGES:
            none, cache = (statistics.median(rows[a][stage]) for a in arms)
            print(f"median {stage:10s} none {none:5.2f} s  cache {cache:5.2f} s  ({none / cache:.2f}x)", flush=True)
        if args.repro:
            _repro(arms, prefix, tmp, args.repeats)


def _repro(arms: tuple[str, ...], prefix: Path, tmp: Path, repeats: int) -> None:
    times: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(repeats):
        for arm in arms:
            project, env = tmp / f"{arm}{r}", _env(arm, prefix)
            env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
            env.pop("DVC_EXP_NAME", None)
            subprocess.run([sys.executable, "-c", BUILD.format(tests=str(ROOT / "tests"), dest=str(project))],
                           env=env, check=True, capture_output=True)
            times[arm].append(_timed(["dvc", "repro"], project, env))
            print(f"repeat {r + 1} {arm:5s} micro project, fresh dvc repro {times[arm][-1]:6.1f} s", flush=True)
    none, cache = (statistics.median(times[a]) for a in arms)
    print(f"median micro dvc repro  none {none:6.1f} s  cache {cache:6.1f} s  ({none / cache:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
