"""Configurations compared over several training seeds, with the seed spread beside each figure.

On the default twin the training seed alone moves TSTR by about half a degree, more than most
one-seed differences between configurations, so a comparison of one run per arm decides
nothing. This trains and evaluates every arm at every seed with the real stages (``nirgan
stage train`` and ``nirgan stage evaluate``, each cell in its own folder under ``--out`` that
links the pipeline's data stages, with its own MLflow store), then prints each figure's mean
and sample std per arm and, for every arm after the first, the difference to the first arm with
Welch's t-test over seeds.

    python benchmarks/seed_spread.py --seeds 0 1 2 --out /tmp/spread \\
        --arm base --arm "kl train.lambda_kl=0.01"

An arm is a name, then ``key=value`` params overrides separated by spaces (as ``dvc exp run
-S``). A cell whose folder already holds ``metrics/eval.json`` from the same params is reused,
so an interrupted comparison resumes and a new arm costs only its own runs. Each cell takes
about 6.5 minutes on a 2-core CPU with the default params.

``--spread-file PATH`` also writes the first arm's sample std over seeds of every figure of
eval.json (not only the table's), with the machine and revision it came from:
``figures_vs_committed.py`` reads it to judge a rerun whose trained generator differs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

from nirgan.config import parse_config

DATA_STAGES = ("raw", "crops", "clean", "prepared", "split")
FIGURES = (
    "pose_gen_head_mean", "pose_gen_gaze_mean", "pose_rec_head_mean", "pose_rec_gaze_mean",
    "utility_tstr_head_deg", "utility_tstr_gaze_deg", "utility_tstr_over_trtr_head", "utility_tstr_over_trtr_gaze",
    "judge_auc", "judge_auc_few_shot", "judge_auc_untrained_few_shot", "diversity_msssim", "latent_code_rms_real",
    "latent_code_rms_sampled",
)


def parse_arm(text: str) -> tuple[str, dict[str, object]]:
    name, *sets = text.split()
    overrides = {}
    for item in sets:
        if "=" not in item:
            raise SystemExit(f"--arm {text!r}: {item!r} is not key=value")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def cell_params(base: dict, overrides: dict[str, object], seed: int, origin: str) -> dict:
    params = json.loads(json.dumps(base))
    for key, value in {**overrides, "train.seed": seed}.items():
        *path, last = key.split(".")
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    parse_config(params, origin=origin)  # a bad key or value stops here, named, before any run
    return params


def run_cell(root: Path, folder: Path, params: dict) -> tuple[dict, str]:
    """eval.json of one (arm, seed), trained and evaluated now or reused from an earlier run."""
    text = yaml.safe_dump(params, sort_keys=False)
    metrics = folder / "metrics" / "eval.json"
    if metrics.exists() and (folder / "params.yaml").read_text() == text:
        return json.loads(metrics.read_text()), "reused"
    if folder.is_symlink():
        folder.unlink()  # a cell linked in from an earlier comparison, with other params
    elif folder.exists():
        shutil.rmtree(folder)
    (folder / "data").mkdir(parents=True)
    for stage in DATA_STAGES:
        (folder / "data" / stage).symlink_to((root / "data" / stage).resolve(), target_is_directory=True)
    (folder / "params.yaml").write_text(text)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder.resolve() / 'mlflow.db'}"}
    start = time.perf_counter()
    for stage in ("train", "evaluate"):
        with open(folder / f"{stage}.log", "w") as log:
            done = subprocess.run([sys.executable, "-m", "nirgan.cli", "stage", stage], cwd=folder, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        if done.returncode:
            raise SystemExit(f"{folder}: nirgan stage {stage} exited {done.returncode}; see {folder / f'{stage}.log'}")
    return json.loads(metrics.read_text()), f"{time.perf_counter() - start:.0f} s"


def values_of(runs: list[dict], figure: str) -> np.ndarray:
    """The figure over the runs that report it as a number (older runs may lack newer keys)."""
    return np.array([r[figure] for r in runs if isinstance(r.get(figure), (int, float))], dtype=float)


def summarise(results: dict[str, list[dict]]) -> dict[str, dict[str, dict[str, float]]]:
    """{arm: {figure: {mean, std, n[, diff, t, p]}}}; std is the sample std over seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    first = next(iter(results))
    for arm, runs in results.items():
        out[arm] = {}
        for fig in FIGURES:
            values = values_of(runs, fig)
            if values.size == 0:
                continue
            row = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else math.nan,
                   "n": int(values.size)}
            ref = out[first].get(fig)
            if arm != first and ref is not None:
                ref_values = values_of(results[first], fig)
                row["diff"] = row["mean"] - ref["mean"]
                if values.size > 1 and ref_values.size > 1:
                    t = stats.ttest_ind(values, ref_values, equal_var=False)
                    row["t"], row["p"] = float(t.statistic), float(t.pvalue)
            out[arm][fig] = row
    return out


def spread_file(runs: list[dict], seeds: list[int], root: Path) -> dict:
    """The sample std over seeds of every float figure the runs share (timings and spreads aside)."""
    shared = set.intersection(*(set(r) for r in runs))
    names = sorted(n for n in shared if not n.startswith("evaluate_seconds_") and not n.endswith("_std")
                   and all(isinstance(r[n], float) for r in runs))
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "unknown")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    return {"seeds": seeds, "cpu": cpu, "threads": os.cpu_count(), "revision": rev,
            "precision_ran": sorted({str(r.get("evaluate_precision")) for r in runs}),
            "std": {n: float(np.std([r[n] for r in runs], ddof=1)) for n in names}}


def print_table(summary: dict[str, dict[str, dict[str, float]]]) -> None:
    arms = list(summary)
    print(f"{'figure':32}" + "".join(f"{a:>24}" for a in arms))
    for fig in FIGURES:
        cells = []
        for arm in arms:
            row = summary[arm].get(fig)
            if row is None:
                cells.append(f"{'-':>24}")
                continue
            text = f"{row['mean']:.3f} ± {row['std']:.3f}" if row["n"] > 1 else f"{row['mean']:.3f}"
            if "p" in row:
                text += f" (p {row['p']:.2f})"
            cells.append(f"{text:>24}")
        print(f"{fig:32}" + "".join(cells))
    print("mean ± sample std over training seeds; p: Welch's t-test of the arm against the first one")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."), help="a checkout whose data stages have run")
    ap.add_argument("--arm", action="append", required=True, help='"name key=value ..."; the first is the reference')
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("seed_spread_out"))
    ap.add_argument("--spread-file", type=Path, help="write the first arm's spread of every figure here")
    args = ap.parse_args()
    base = yaml.safe_load((args.root / "params.yaml").read_text())
    missing = [s for s in DATA_STAGES if not (args.root / "data" / s).is_dir()]
    if missing:
        raise SystemExit(f"{args.root}: data/{missing[0]} is missing; run dvc repro split first")
    arms = [parse_arm(a) for a in args.arm]
    if len({name for name, _ in arms}) != len(arms):
        raise SystemExit("--arm names must differ")
    plan = {name: [cell_params(base, sets, seed, f"--arm {name} seed {seed}") for seed in args.seeds]
            for name, sets in arms}
    results: dict[str, list[dict]] = {}
    for name, cells in plan.items():
        results[name] = []
        for seed, params in zip(args.seeds, cells):
            metrics, how = run_cell(args.root, args.out / name / f"seed{seed}", params)
            results[name].append(metrics)
            print(json.dumps({"arm": name, "seed": seed, "how": how,
                              **{f: metrics.get(f) for f in FIGURES[:6]}}), flush=True)
    summary = summarise(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"seeds": args.seeds, "arms": dict(arms), "figures": summary},
                                                      indent=1))
    print_table(summary)
    if args.spread_file:
        first = results[arms[0][0]]
        if len(first) < 2:
            raise SystemExit("--spread-file needs at least two seeds")
        args.spread_file.write_text(json.dumps(spread_file(first, args.seeds, args.root), indent=1) + "\n")


if __name__ == "__main__":
    main()
