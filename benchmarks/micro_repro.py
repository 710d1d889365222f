"""The tests' micro pipeline under DVC, a baseline revision against this checkout, side by side.

The end-to-end tests (tests/test_pipeline_dvc.py, the orchestration and local train-nir tests)
run the micro project of tests/pipeline_project.py, and most of their time is its ``dvc
repro`` and ``dvc exp run``. For each arm (``--baseline``'s tree from ``git archive``, and this
checkout's files as git would ship them) this builds that tree's micro project, then times a
fresh ``dvc repro`` and a ``dvc exp run -S train.lr_g=0.0001`` (a training param), alternating
the arms, ``--repeats`` times; it prints each time as it lands and the medians' ratios.

    .venv/bin/python benchmarks/micro_repro.py --baseline c21f227 [--repeats 2]

Run it on an idle machine: the columns are only comparable within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BUILD = """
import sys
sys.path.insert(0, {tests!r})
from pipeline_project import make_project
make_project(__import__("pathlib").Path({dest!r}))
"""


def _timed(cmd: list[str], cwd: Path, env: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} in {cwd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="git revision to compare with")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    rows: dict[str, dict[str, list[float]]] = {"baseline": {"repro": [], "exp": []}, "this": {"repro": [], "exp": []}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {"baseline": tmp / "baseline", "this": ROOT}
        # a worktree, not an archive: make_project copies what `git ls-files` lists
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(trees["baseline"]), args.baseline], cwd=ROOT,
                       check=True)
        try:
            _run_arms(args, trees, rows, tmp)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(trees["baseline"])], cwd=ROOT, check=False)
    for what in ("repro", "exp"):
        b, t = (statistics.median(rows[a][what]) for a in ("baseline", "this"))
        print(f"median {what:6s} baseline {b:6.1f} s  this {t:6.1f} s  ({b / t:.2f}x)", flush=True)


def _run_arms(args: argparse.Namespace, trees: dict[str, Path], rows: dict, tmp: Path) -> None:
    print(f"the tests' micro project: fresh `dvc repro`, then `dvc exp run -S train.lr_g=0.0001`; wall seconds; "
          f"baseline {args.baseline}, {os.cpu_count()} CPUs", flush=True)
    for r in range(args.repeats):
        for arm, tree in trees.items():
            project = tmp / f"{arm}{r}"
            env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}", "DVC_NO_ANALYTICS": "1",
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                   "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
            env.pop("DVC_EXP_NAME", None)
            subprocess.run([sys.executable, "-c", BUILD.format(tests=str(tree / "tests"), dest=str(project))],
                           env=env, check=True, capture_output=True)
            repro = _timed(["dvc", "repro"], project, env)
            exp = _timed(["dvc", "exp", "run", "-S", "train.lr_g=0.0001"], project, env)
            rows[arm]["repro"].append(repro)
            rows[arm]["exp"].append(exp)
            print(f"repeat {r + 1} {arm:9s} dvc repro {repro:6.1f} s   dvc exp run {exp:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
