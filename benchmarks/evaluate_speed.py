"""Evaluate's speed: the realism judge as it was (commit 5dc9745: 80 small networks of the
default run trained one after another) against judge banks (:class:`nirgan.metrics.judge.JudgeBank`:
the judges of one shape trained as one grouped network), side by side in one process on the
same inputs, with their figures; optionally the pose/gaze estimator's training before and after
(channels_last, a block-mean resize) in alternating child processes, and the whole evaluate
stage's ``evaluate_seconds_*``.

Inputs: the twin the tests use (10 subjects x 2 cameras x 12 frames through the real collect,
MTCNN detect, clean, augment and split stages, 128 px), built into ``--data`` on first use. As in
tests/test_judge.py the judged "generator" is each real target blurred (sigma 7 px, its own mean
kept) and the untrained one a fresh quarter-width generator. Judge settings are the evaluate
defaults (20 epochs, few-shot 2/4/8 images x 3 draws x 120 steps) with ``--seeds`` partitions
(params.yaml: 2).

    python benchmarks/evaluate_speed.py                      # judge before/after, about 3 CPU minutes
    python benchmarks/evaluate_speed.py --estimator 15       # and the pose/gaze estimator, before/after
    python benchmarks/evaluate_speed.py --seeds 1 --stage    # and the stage's phases on the twin
    python benchmarks/evaluate_speed.py --seeds 0 --estimator-bank 15   # utility fits: alone vs one bank

Times depend on what else runs on the machine: compare the two columns of one run. CPU seconds
(process time) are less distorted by other jobs than wall seconds when torch runs one thread.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "5dc9745"  # the last commit with one judge after another
sys.path.insert(0, str(ROOT / "tests"))


def twin(root: Path) -> Path:
    """The tests' 128 px twin (tests/conftest.py twin_prepared_128), built once into ``root``."""
    if (root / "split" / "test.parquet").exists():
        return root
    from nirgan.config import parse_config
    from nirgan.stages import augment, clean, collect, detect, split

    cfg = parse_config({"collect": {"twin": {"subjects": 10, "cameras": 2, "frames": 12}},
                        "detect": {"device": "cpu"}, "augment": {"image_size": 128}, "split": {"test_fraction": 0.2}})
    collect.run(cfg, out_dir=root / "raw")
    detect.run(cfg, raw_dir=root / "raw", out_dir=root / "crops")
    clean.run(cfg, crops_dir=root / "crops", out_dir=root / "clean")
    augment.run(cfg, crops_dir=root / "crops", clean_dir=root / "clean", out_dir=root / "prepared")
    split.run(cfg, prepared_dir=root / "prepared", out_dir=root / "split")
    return root


def judge_before(tmp: Path):
    """metrics/judge.py as of ``BEFORE``, imported as its own module."""
    source = subprocess.run(["git", "show", f"{BEFORE}:src/nirgan/metrics/judge.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = tmp / "judge_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("judge_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def judge_inputs(data: Path):
    from real_pairs import load_pairs, lookup_generator, model_range

    from nirgan.config import TrainConfig
    from nirgan.metrics.judge import gaussian_blur
    from nirgan.models.networks import build_networks

    tr_t, tr_s, tr_l, _ = load_pairs(data, "train")
    te_t, te_s, te_l, _ = load_pairs(data, "test")
    targets, sources = torch.cat([tr_t, te_t]), torch.cat([tr_s, te_s])
    real = model_range(targets[:, None])
    blobs = gaussian_blur(real, 7.0)
    blobs = blobs - blobs.mean((1, 2, 3), keepdim=True) + real.mean((1, 2, 3), keepdim=True)
    tc = TrainConfig(width=0.25, latent_dim=32)
    torch.manual_seed(0)
    untrained = build_networks(tc).generator.eval()
    return (real, model_range(sources.permute(0, 3, 1, 2)), np.concatenate([tr_l, te_l]),
            lookup_generator(sources, blobs), lambda s, z, lab: untrained(s, z, None), tc.latent_dim)


def compare_judges(data: Path, seeds: int, draws: int) -> dict:
    from nirgan.metrics import judge as after

    inputs = judge_inputs(data)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        before = judge_before(Path(tmp))
        for name, module in (("before", before), ("after", after)):
            t0, c0 = time.perf_counter(), time.process_time()
            figures, _ = module.realism_judge(*inputs, seeds=seeds, few_shot_draws=draws)
            rows[name] = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, **figures}
            print(f"judge {name}: {rows[name]['seconds']:.1f} s wall, {rows[name]['cpu_seconds']:.1f} s CPU", flush=True)
    print(f"\n{'figure':42s} {'before':>16s} {'after':>16s}")
    for key in after.AUC_KEYS:
        for k in (key, f"{key}_few_shot"):
            cells = [f"{rows[n][k]:.3f} +- {rows[n][f'{k}_std']:.3f}" for n in ("before", "after")]
            print(f"{k:42s} {cells[0]:>16s} {cells[1]:>16s}")
    for what in ("seconds", "cpu_seconds"):
        ratio = rows["before"][what] / rows["after"][what]
        print(f"{what:42s} {rows['before'][what]:16.1f} {rows['after'][what]:16.1f}   {ratio:.2f}x")
    return rows


ESTIMATOR_RUN = """
import sys, time, numpy as np, torch
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from real_pairs import load_pairs
from nirgan.models.pose_estimator import predict
from nirgan.training.auxiliary import EstimatorTraining, train_pose_estimator
tr_t, tr_s, tr_l, _ = load_pairs(Path(sys.argv[1]), "train")
te_t, _, te_l, _ = load_pairs(Path(sys.argv[1]), "test")
t0, c0 = time.perf_counter(), time.process_time()
model = train_pose_estimator(tr_t, tr_s, torch.as_tensor(tr_l, dtype=torch.float32), None,
                             EstimatorTraining(epochs=int(sys.argv[2]), seed=1000, subject_weight=0.0), resolution=64)
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
err = np.abs(predict(model, te_t[:, None].float() / 127.5 - 1) - te_l).mean(0)
print(seconds, cpu, err[:3].mean(), err[3:].mean())
"""


def compare_estimators(data: Path, epochs: int, repeats: int = 2, before: str = BEFORE) -> dict:
    """The evaluate stage's estimator recipe (the instrument and every TSTR fit) with today's
    code and with commit ``before``'s, in alternating child processes."""
    rows: dict[str, list] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(f"git archive {before} src | tar -x -C {tmp}", shell=True, cwd=ROOT, check=True)
        trees = {"before": Path(tmp) / "src", "after": ROOT / "src"}
        for _ in range(repeats):
            for name, tree in trees.items():
                out = subprocess.run([sys.executable, "-c", ESTIMATOR_RUN, str(data), str(epochs), str(ROOT / "tests")],
                                     env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                                     check=True).stdout.split()
                rows[name].append([float(v) for v in out[-4:]])
    wall = {n: min(r[0] for r in rows[n]) for n in rows}
    cpu = {n: min(r[1] for r in rows[n]) for n in rows}
    for n in rows:
        print(f"estimator {n:6s}: {wall[n]:6.1f} s wall, {cpu[n]:6.1f} s CPU (best of {repeats}, {epochs} epochs); "
              f"test error head {rows[n][0][2]:.2f} gaze {rows[n][0][3]:.2f} deg")
    print(f"estimator speed-up {wall['before'] / wall['after']:.2f}x wall, {cpu['before'] / cpu['after']:.2f}x CPU")
    return rows


def compare_estimator_bank(data: Path, epochs: int, seeds: int = 2) -> dict:
    """The utility (TSTR) phase's fits (``seeds`` x 3 arms, less TRTR's first seed, which is the
    instrument) one after another and as one :class:`nirgan.training.auxiliary.EstimatorBank`,
    in this process on the same inputs, with their figures. The "generators" are the judge's."""
    from real_pairs import load_pairs

    from nirgan.metrics.utility import FIGURES, RATIOS, tstr
    from nirgan.training.auxiliary import EstimatorTraining, train_pose_estimator

    tr_t, tr_s, tr_l, tr_subj = load_pairs(data, "train")
    te_t, _, te_l, _ = load_pairs(data, "test")
    _, _, _, blurred, untrained, latent_dim = judge_inputs(data)  # they answer any train or test source
    recipe = EstimatorTraining(epochs=epochs, seed=1000, subject_weight=0.0)  # the evaluate stage's
    instrument = train_pose_estimator(tr_t, tr_s, torch.as_tensor(tr_l, dtype=torch.float32), None, recipe,
                                      resolution=64)
    rows = {}
    for name, bank in (("one after another", False), ("bank", True)):
        t0, c0 = time.perf_counter(), time.process_time()
        figures = tstr(tr_t, tr_s, tr_l, te_t, te_l, blurred, untrained, latent_dim, recipe, resolution=64,
                       train_subjects=tr_subj, seeds=seeds, trtr_first=instrument, bank=bank)
        rows[name] = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, **figures}
        print(f"estimators {name}: {rows[name]['seconds']:.1f} s wall, {rows[name]['cpu_seconds']:.1f} s CPU",
              flush=True)
    names = list(rows)
    print(f"\n{'figure':36s} {names[0]:>18s} {names[1]:>18s}")
    for k in FIGURES + RATIOS:
        print(f"{k:36s} {rows[names[0]][k]:18.3f} {rows[names[1]][k]:18.3f}")
    for what in ("seconds", "cpu_seconds"):
        a, b = rows[names[0]][what], rows[names[1]][what]
        print(f"{what:36s} {a:18.1f} {b:18.1f}   bank / one after another {b / a:.2f}x")
    return rows


def stage_phases(data: Path, tmp: Path) -> dict:
    """The evaluate stage (params.yaml's evaluate section) on the twin with an untrained default
    generator; returns its evaluate_seconds_* keys."""
    from nirgan.config import load_config
    from nirgan.models.artifacts import save_generator
    from nirgan.models.networks import build_networks
    from nirgan.models.artifacts import save_encoder
    from nirgan.stages import evaluate

    cfg = load_config(ROOT / "params.yaml")
    models = tmp / "models"
    models.mkdir()
    torch.manual_seed(0)
    nets = build_networks(cfg.train)
    save_generator(models / "generator.pt", nets.generator, cfg.train, 0, mapping=nets.mapping)
    if nets.encoder is not None:
        save_encoder(models / "encoder.pt", nets.encoder)
    evaluate.run(cfg, data / "raw", data / "crops", data / "clean", data / "prepared", data / "split", models,
                 tmp / "eval.json", tmp / "plots")
    seconds = {k: v for k, v in json.loads((tmp / "eval.json").read_text()).items() if k.startswith("evaluate_seconds")}
    for k, v in seconds.items():
        print(f"{k:34s} {v:8.1f}")
    return seconds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "nirgan-evaluate-speed-twin128")
    ap.add_argument("--seeds", type=int, default=2, help="judge partitions (params.yaml evaluate.judge_seeds: 2; 0: no judge)")
    ap.add_argument("--draws", type=int, default=3, help="few-shot draws per k (evaluate.judge_few_shot_draws: 3)")
    ap.add_argument("--estimator", type=int, default=0, metavar="EPOCHS",
                    help="also time the pose/gaze estimator's training, before and after (evaluate: 15 epochs)")
    ap.add_argument("--before", default=BEFORE, help=f"--estimator's baseline commit (default {BEFORE})")
    ap.add_argument("--repeats", type=int, default=2, help="--estimator's fits per side, alternating (best is shown)")
    ap.add_argument("--estimator-bank", type=int, default=0, metavar="EPOCHS",
                    help="also time the utility phase's estimator fits one after another and as one bank")
    ap.add_argument("--stage", action="store_true", help="also run the whole evaluate stage and print its phases")
    ap.add_argument("--json", type=Path, help="write the results here as well")
    args = ap.parse_args(argv)
    from nirgan.cores import size_threads

    size_threads()  # as every nirgan command: NIRGAN_CPUS, affinity and cgroup quota respected
    data = twin(args.data)
    print(f"torch threads {torch.get_num_threads()}; twin at {data}", flush=True)
    out = {"judge": compare_judges(data, args.seeds, args.draws)} if args.seeds else {}
    if args.estimator:
        out["estimator"] = compare_estimators(data, args.estimator, args.repeats, args.before)
    if args.estimator_bank:
        out["estimator_bank"] = compare_estimator_bank(data, args.estimator_bank)
    if args.stage:
        with tempfile.TemporaryDirectory() as tmp:
            out["stage"] = stage_phases(data, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
