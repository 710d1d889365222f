"""What a stage costs beyond its work: each ``nirgan stage`` of a micro project, this checkout
against a baseline revision, side by side in one run.

Every stage is a process of its own (DVC runs them so, and so does the train-nir flow), so the
seconds before a stage's work starts are paid once per stage, per run: on the micro project
the tests build (4 subjects, 3 training steps) they were more than half of ``dvc repro``'s
59 s. Each row runs ``nirgan stage <name>`` with the baseline's ``src/`` (``git archive``) and
with this checkout's, alternating, ``--repeats`` times, on the same project and venv, and
prints the median wall seconds of each and their ratio. The last row times what a stack's
MLflow start spends on its store before the server starts: ``mlflow db upgrade`` in a process
of its own (the baseline) against :func:`nirgan.tracking.store.ensure_store` in a fresh
interpreter, on a store that is already current.

    .venv/bin/python benchmarks/stage_startup.py [--baseline b28029a] [--repeats 3]

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
sys.path.insert(0, str(ROOT / "tests"))

STAGES = ("collect", "detect", "clean", "augment", "split", "baselines", "train", "evaluate", "generate")
MAIN = "import sys; from nirgan.cli import main; sys.exit(main(sys.argv[1:]))"
ENSURE = "import sys; from nirgan.tracking.store import ensure_store; ensure_store(sys.argv[1])"


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="b28029a", help="git revision to compare with")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from pipeline_project import make_project, project_env

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive = subprocess.run(["git", "archive", args.baseline, "src"], cwd=ROOT, capture_output=True, check=True)
        (tmp / "baseline").mkdir()
        subprocess.run(["tar", "-x", "-C", tmp / "baseline"], input=archive.stdout, check=True)
        project = make_project(tmp / "project")
        env = project_env(project)
        # every stage's inputs in place once, so each timed stage finds what it reads
        subprocess.run(["dvc", "repro", "dvc.yaml"], cwd=project, env=env, capture_output=True, check=True)
        srcs = {"baseline": tmp / "baseline" / "src", "this": ROOT / "src"}
        print(f"nirgan stage <name> on the tests' micro project, median of {args.repeats}, wall seconds; "
              f"baseline {args.baseline}, {os.cpu_count()} CPUs", flush=True)
        print(f"{'stage':<22}{'baseline':>10}{'this':>10}{'ratio':>8}", flush=True)
        total = {k: 0.0 for k in srcs}
        for stage in STAGES:
            times: dict[str, list[float]] = {k: [] for k in srcs}
            for _ in range(args.repeats):
                for name, src in srcs.items():
                    times[name].append(_timed([sys.executable, "-c", MAIN, "stage", stage], project,
                                              {**env, "PYTHONPATH": str(src)}))
            med = {k: statistics.median(v) for k, v in times.items()}
            for k in srcs:
                total[k] += med[k]
            print(f"{stage:<22}{med['baseline']:>10.2f}{med['this']:>10.2f}{med['baseline'] / med['this']:>7.2f}x",
                  flush=True)
        print(f"{'all stages':<22}{total['baseline']:>10.2f}{total['this']:>10.2f}"
              f"{total['baseline'] / total['this']:>7.2f}x", flush=True)
        store = f"sqlite:///{project / 'mlflow.db'}"
        upgrade = [str(Path(sys.executable).with_name("mlflow")), "db", "upgrade", store]
        ensure = [sys.executable, "-c", ENSURE, store]
        times = {"baseline": [], "this": []}
        for _ in range(args.repeats):
            times["baseline"].append(_timed(upgrade, project, env))
            times["this"].append(_timed(ensure, project, {**env, "PYTHONPATH": str(ROOT / "src")}))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{'mlflow store, stack':<22}{med['baseline']:>10.2f}{med['this']:>10.2f}"
              f"{med['baseline'] / med['this']:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
