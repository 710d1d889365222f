"""The device check's worker: runs the phases ``gpu_scale.py`` sends it, one at a time, in one process.

One process imports torch and creates the CUDA context once for all phases (about 15 s on the
device machine, more on a loaded CPU). It reads one JSON command a line on stdin
(``{"seq", "phase", "root", "args"}``), runs the phase in ``root`` (the throwaway pipeline) and
writes its answer atomically to ``root/.gpu_scale/<seq>.json``: ``{"ok": true, "result": {...}}``
or ``{"ok": false, "error": "<one line>"}``. The orchestrator owns the clock; when a phase
outlives its hard limit it ends this process's group and starts another worker.

Phases: the pipeline stages (``nirgan.cli.STAGES``: the calls ``nirgan stage <name>`` makes;
train under torchrun when more than one card is given; evaluate after the baselines stage, both
in its phase), and four of the check's own:

    flops     FLOPs of one training pair (FlopCounterMode on one eager step) and the eager pairs/s
    scaling   one card's pairs/s on the same step, to set beside the all-card training run
    curve     figures of the checkpoints the orchestrator kept during training, at their training time
    expression  the expression pipeline (pipelines/expression) in root/expression
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _write_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def hello() -> dict:
    cards = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"device": torch.cuda.get_device_name(0) if cards else "cpu", "cards": cards, "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(), "python": sys.version.split()[0]}


def _config(root: Path):
    from nirgan.config import load_config

    return load_config(root / "params.yaml")


# ------------------------------------------------------------------------------ stages
def stage(name: str, root: Path, args: dict) -> dict:
    from nirgan.cli import STAGES

    if name in ("train", "evaluate", "generate") and WARM.is_alive():  # two writers migrating one store collide
        WARM.join()
    if name == "train" and args.get("cards", 1) > 1:
        return _torchrun_train(root, args["cards"])
    extra = {}
    if name == "evaluate":  # its references first (dvc.yaml's baselines stage, which needs no trained model)
        started = time.perf_counter()
        STAGES["baselines"](_config(root), root / "params.yaml")
        extra["baselines_s"] = round(time.perf_counter() - started, 1)
    result = STAGES[name](_config(root), root / "params.yaml")
    return {**{k: v for k, v in result.items() if k != "card"}, **extra}


def _torchrun_train(root: Path, cards: int) -> dict:
    """DDP over every visible card (train.batch_size is the global batch)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cards}",
           "-m", "nirgan.cli", "stage", "train"]
    proc = subprocess.run(cmd, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun train over {cards} cards exited with {proc.returncode}")
    return {"world_size": cards, **json.loads((root / "metrics/train.json").read_text())}


# ------------------------------------------------------------------------------- flops
def _session(root: Path, batch: int, compile_: str | None = None):
    from nirgan.training.data import load_data
    from nirgan.training.session import TrainSession
    from nirgan.training.trainer import resolve_device

    cfg = _config(root)
    update = {"batch_size": batch, **({"compile": compile_} if compile_ else {})}
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=update)})
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = load_data(root / "data/prepared", root / "data/split", device, cfg.train.sample_sources)
    return TrainSession(cfg, data, device), device


def _timed(step, device: torch.device, seconds: float, warmup: int) -> tuple[float, int]:
    """Pairs-steps per second of ``step`` for about ``seconds`` after ``warmup`` steps."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
        if n % 10 == 0 and device.type == "cuda":
            torch.cuda.synchronize(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t0), n


def flops(root: Path, args: dict) -> dict:
    """FLOPs per training pair, counted on one eager step of the run's own configuration and data
    (forward and backward of every network as the step runs them; the counter cannot see inside
    compiled graphs, and compiling changes no FLOP). Also the eager rate over a few seconds."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = args["batch"]
    session, device = _session(root, batch, compile_="none")
    session.train_step()  # cudnn picks its algorithms outside the count
    counter = FlopCounterMode(display=False)
    with counter:
        session.train_step()
    total = float(counter.get_total_flops())
    steps_per_s, steps = _timed(session.train_step, device, args.get("seconds", 3.0), warmup=1)
    return {"batch": batch, "gflop_per_pair": total / batch / 1e9, "eager_pairs_per_s": steps_per_s * batch,
            "eager_steps_timed": steps}


def scaling(root: Path, args: dict) -> dict:
    """One card, the per-card batch of the all-card run, its compile mode: pairs/s after warm-up."""
    session, device = _session(root, args["batch"])
    steps_per_s, steps = _timed(session.train_step, device, args.get("seconds", 20.0), warmup=args.get("warmup", 5))
    return {"one_card_pairs_per_s": steps_per_s * args["batch"], "steps_timed": steps, "batch": args["batch"]}


# ------------------------------------------------------------------------------- curve
def curve(root: Path, args: dict) -> dict:
    """Figures against training time: the untrained generator (0 s), then the EMA generator of each
    kept checkpoint (at most ``points``, evenly spread). One z per test source (evaluate.seed).
    With labels: pose_gen head / gaze from evaluate's instrument (models/label_estimator.pt);
    always: realism_swd_laplacian (ProGAN's sliced Wasserstein distance, no network)."""
    from nirgan.metrics.data import load_split
    from nirgan.metrics.features import sliced_wasserstein_laplacian
    from nirgan.metrics.pose import angle_errors
    from nirgan.models.artifacts import absent_reason, load_pose_estimator, load_sampler, untrained_sampler
    from nirgan.models.pose_estimator import predict

    cfg = _config(root)
    prepared, split = root / "data/prepared", root / "data/split"
    src, tgt = np.load(prepared / "source.npy", mmap_mode="r"), np.load(prepared / "target.npy", mmap_mode="r")
    test = load_split(prepared, split, "test", src, tgt)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    final = load_sampler(root / "models/generator.pt", map_location=device)
    estimator_file = root / "models/label_estimator.pt"
    why_not = absent_reason(estimator_file)
    estimator = load_pose_estimator(estimator_file, map_location=device) if why_not is None else None
    labelled = estimator is not None and bool(np.isfinite(test.labels).all())
    z = torch.randn(len(test), cfg.train.latent_dim, generator=torch.Generator().manual_seed(cfg.evaluate.seed))
    sources, real = test.sources(), test.targets()

    def figures(sampler) -> dict:
        fakes = sampler.eval().generate(sources, z, test.labels)
        row = {"realism_swd_laplacian": float(sliced_wasserstein_laplacian(real, fakes, cfg.evaluate.seed)["mean"])}
        if labelled:
            gen = angle_errors(predict(estimator, fakes), test.labels, "gen")
            row.update(pose_gen_head_mean=float(gen["gen_head_mean"]), pose_gen_gaze_mean=float(gen["gen_gaze_mean"]))
        return row

    kept = sorted((root / "curve_checkpoints").glob("step_*.pt"))
    if len(kept) > args["points"]:
        kept = [kept[round(i * (len(kept) - 1) / (args["points"] - 1))] for i in range(args["points"])]
    rows = [{"step": 0, "train_s": 0.0, **figures(untrained_sampler(final.train_config, final.label_dim).to(device))}]
    print(f"gpu_scale: curve {json.dumps(rows[-1])}", flush=True)
    for path in kept:
        state = torch.load(path, map_location=device, weights_only=True)
        sampler = untrained_sampler(final.train_config, final.label_dim).to(device)
        nets = state["ema"] if "generator" in state.get("ema", {}) else state["nets"]
        sampler.generator.load_state_dict(nets["generator"])
        if sampler.mapping is not None:
            sampler.mapping.load_state_dict(nets["mapping"])
        rows.append({"step": int(state["step"]), "train_s": round(float(state.get("elapsed_s", float("nan"))), 1),
                     **figures(sampler)})
        print(f"gpu_scale: curve {json.dumps(rows[-1])}", flush=True)
    return {"points": rows, "pose_figures": "pose_gen from models/label_estimator.pt" if labelled else
            f"unavailable: {why_not or 'the test split has no pose/gaze labels'}"}


# -------------------------------------------------------------------------- expression
def expression(root: Path, args: dict) -> dict:
    """The expression pipeline in root/expression, with the given params overrides."""
    import yaml

    from nirgan.cli import STAGES
    from nirgan.config import load_config

    if WARM.is_alive():
        WARM.join()
    pipeline, where = REPO / "pipelines" / "expression", root / "expression"
    where.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    _deep_update(params, args["overrides"])
    (where / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy2(pipeline / "dvc.yaml", where / "dvc.yaml")
    here, seconds = Path.cwd(), {}
    try:
        os.chdir(where)
        cfg = load_config("params.yaml")
        for name in yaml.safe_load(Path("dvc.yaml").read_text())["stages"]:
            t = time.perf_counter()
            STAGES[name](cfg, Path("params.yaml"))
            seconds[name] = round(time.perf_counter() - t, 1)
            print(f"gpu_scale: expression {name} done in {seconds[name]} s", flush=True)
        figures = json.loads(Path("metrics/eval_expression.json").read_text())
    finally:
        os.chdir(here)
    return {"stage_seconds": seconds, "figures": {k: v for k, v in figures.items() if not k.endswith("_reason")}}


def _deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


OWN = {"flops": flops, "scaling": scaling, "curve": curve, "expression": expression}


def _warm_tracking() -> None:
    """Import MLflow and create its store while the data stages run: on a fresh SQLite store that
    is seconds of imports and migrations that train would otherwise spend inside its budget."""
    try:
        import mlflow

        mlflow.search_experiments(max_results=1)
    except Exception:  # noqa: BLE001 - train meets any real problem with the store and reports it
        pass


WARM = threading.Thread(target=_warm_tracking, daemon=True)


def main() -> None:
    answers = Path(sys.argv[1])
    answers.mkdir(parents=True, exist_ok=True)
    _write_atomic(answers / f"hello-{os.getpid()}.json", hello())
    WARM.start()
    for line in sys.stdin:
        cmd = json.loads(line)
        root, phase, args = Path(cmd["root"]), cmd["phase"], cmd.get("args", {})
        here = Path.cwd()
        try:
            os.chdir(root)
            result = OWN[phase](root, args) if phase in OWN else stage(phase, root, args)
            answer = {"ok": True, "result": result}
        except Exception as exc:  # the orchestrator reports it as one line; the trace goes to the log
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]}
        finally:
            os.chdir(here)
        _write_atomic(answers / f"{cmd['seq']}.json", answer)


if __name__ == "__main__":
    main()
