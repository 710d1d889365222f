"""The device check: the whole product at GPU scale in one call that always ends by its deadline.

It builds a throwaway copy of the pipeline (this repo's params.yaml with the overrides below)
and runs its phases in order:

    install   the device wheels (gpu_scale.sh, before this script; reported here)
    start     a worker process (torch, the CUDA context, which cards) - gpu_scale_worker.py
    collect, detect, clean, augment, split   the stages, on a >= 100-subject twin or --collect-path
    flops     FLOPs of one training pair (FlopCounterMode) and the eager pairs/s
    train     the thesis-width generator for the time the plan leaves it (train.max_minutes);
              under torchrun over every card when there are several
    scaling   one card's pairs/s beside the all-card run (only with more than one card)
    evaluate  every figure (TSTR utility, realism judge, ...)
    curve     figures of the checkpoints kept during training, against training time
    generate  a labelled dataset (images/s)
    expression  the expression pipeline (only with --expression-minutes)

The deadline (``--deadline-s``, counted from when gpu_scale.sh started, install and cold compile
included) is shared by :func:`gpu_scale_plan.plan` before each phase: the phases still to run get
sizes that fit the time left, training gets the rest, and every cut against the full size is
reported with the phase it shortened. A phase that outlives its hard limit (the time left less
the reserve) is ended by stopping the worker, and reported as cut; a phase that cannot start
(no time, or a phase it needs did not finish) is reported as skipped with the reason. One line is
printed per phase as it ends, and ``--out`` gets ``summary.json`` (atomically), ``eval.json``,
``train.json`` and the samples after every phase.

    bash benchmarks/gpu_scale.sh                           # CUDA, deadline 420 s
    bash benchmarks/gpu_scale.sh --smoke --deadline-s 60   # CPU, tiny (tests/test_gpu_scale_smoke.py)

The parts: gpu_scale_plan.py (full sizes, costs, cuts), gpu_scale_worker.py (the phases),
gpu_scale_process.py (the worker's process), gpu_scale_figures.py (TFLOP/s and the cards' peak).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

from gpu_scale_figures import FIGURE_PREFIXES, train_figures
from gpu_scale_plan import (
    GPU_EXPRESSION_PARAMS,
    GPU_PARAMS,
    GPU_RATES,
    PHASES,
    SMOKE_EXPRESSION_PARAMS,
    SMOKE_PARAMS,
    SMOKE_RATES,
    Sizes,
    phase_cost,
    plan,
    train_settings,
)
from gpu_scale_process import Worker, write_json_atomic

REPO = Path(__file__).resolve().parents[1]

# What each phase needs finished before it can start.
NEEDS = {"detect": "collect", "clean": "detect", "augment": "clean", "split": "augment", "flops": "split",
         "train": "split", "scaling": "train", "evaluate": "train", "curve": "train", "generate": "train"}


def deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args, self.smoke = args, args.smoke
        self.rates = SMOKE_RATES if args.smoke else GPU_RATES
        self.deadline = args.started_at + args.deadline_s
        self.out = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nirgan_gpu_scale_"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.answers = self.root / ".gpu_scale"
        self.overrides = json.loads(json.dumps(SMOKE_PARAMS if args.smoke else GPU_PARAMS))
        self.worker: Worker | None = None
        self.seq = 0
        self.status: dict[str, str] = {}
        self.summary: dict = {"mode": "smoke" if args.smoke else "gpu", "deadline_s": args.deadline_s,
                              "root": str(self.root), "phases": [], "stage_seconds": {}, "measured_rates": {}}

    def left(self) -> float:
        return self.deadline - time.time()

    # ------------------------------------------------------------------ reporting
    def report(self, name: str, status: str, seconds: float | None = None, budget: float | None = None,
               cut: list[str] | None = None, reason: str | None = None) -> None:
        """One line as the phase ends, and everything so far into --out."""
        self.status[name] = status
        row = {"phase": name, "status": status, "seconds": None if seconds is None else round(seconds, 1),
               "budget_s": None if budget is None else round(budget, 1), "cut": cut or [], "reason": reason}
        self.summary["phases"].append(row)
        if seconds is not None and status not in ("skipped",):
            self.summary["stage_seconds"][name] = row["seconds"]
        line = f"gpu_scale: {name} {status}"
        if seconds is not None:
            line += f" in {seconds:.1f} s" + (f" (budget {budget:.0f} s)" if budget is not None else "")
        if cut:
            line += "; cut: " + "; ".join(cut)
        if reason:
            line += f"; {reason}"
        print(line + f" [{time.time() - self.args.started_at:.0f} / {self.args.deadline_s:.0f} s]", flush=True)
        self.save()

    def save(self) -> None:
        self.summary["elapsed_s"] = round(time.time() - self.args.started_at, 1)
        for src, dst in (("metrics/train.json", "train.json"), ("metrics/eval.json", "eval.json"),
                         ("plots/samples.png", "samples.png")):
            if (self.root / src).exists():
                shutil.copy2(self.root / src, self.out / dst)
        # the baselines stage runs first in the evaluate phase: its figures survive a cut evaluate
        record = self.root / "models/baselines/record.json"
        if record.exists() and not (self.root / "metrics/eval.json").exists():
            with contextlib.suppress(OSError, ValueError):
                self.summary["baselines"] = json.loads(record.read_text())
        grids = sorted((self.root / "models/samples").glob("*.png"))
        if grids:
            shutil.copy2(grids[-1], self.out / "train_grid.png")
        write_json_atomic(self.out / "summary.json", self.summary)

    # -------------------------------------------------------------------- running
    def start_worker(self) -> bool:
        """A worker, reported as the phase "start" (a later one, after a phase was cut, as "restart")."""
        label = "restart" if "start" in self.status else "start"
        t0 = time.time()
        self.worker = Worker(self.answers)
        until = min(self.deadline - self.rates.reserve, t0 + 4 * self.rates.worker_start + 60)
        hello = self.worker.wait_file(self.answers / f"hello-{self.worker.proc.pid}.json", until)
        if hello is None:
            self.worker.stop()
            self.report(label, "cut" if time.time() >= until else "failed", time.time() - t0,
                        reason="the worker did not come up (imports or CUDA context)")
            return False
        self.summary.setdefault("hardware", hello)
        self.report(label, "ok", time.time() - t0, self.rates.worker_start,
                    reason=f"{hello['device']}, {hello['cards']} card(s), torch {hello['torch']}")
        return True

    def run_phase(self, name: str, args: dict, budget: float, cut: list[str], poll=None) -> dict | None:
        """Send the phase; wait until its answer or its hard limit. Reports it; returns its result."""
        if self.worker is None or self.worker.proc.poll() is not None:
            if not self.start_worker():
                self.report(name, "skipped", reason="no worker process to run it (see start/restart)")
                return None
        self.seq += 1
        t0 = time.time()
        self.worker.send({"seq": self.seq, "phase": name, "root": str(self.root), "args": args})
        hard = self.deadline - self.rates.reserve
        try:
            answer = self.worker.wait_file(self.answers / f"{self.seq}.json", hard, poll)
        except SystemExit:  # SIGTERM from outside: the phase in flight is reported before unwinding
            self.report(name, "cut", time.time() - t0, budget, cut, reason="the check itself was stopped (SIGTERM)")
            raise
        seconds = time.time() - t0
        if answer is None:
            over = time.time() >= hard
            self.worker.stop()
            self.worker = None
            self.report(name, "cut" if over else "failed", seconds, budget, cut,
                        reason=("stopped at the deadline's reserve; it wrote no result" if over
                                else "the worker process died (see the log)"))
            return None
        if not answer["ok"]:
            self.report(name, "failed", seconds, budget, cut, reason=answer["error"])
            return None
        self.report(name, "shortened" if cut else "ok", seconds, budget, cut)
        return answer["result"]

    def write_params(self) -> None:
        params = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), self.overrides)
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        shutil.copy2(REPO / "dvc.yaml", self.root / "dvc.yaml")


def initial_sizes(check: Check, cards: int) -> Sizes:
    a, o = check.args, check.overrides
    if a.collect_path:
        folder = Path(a.collect_path).resolve()
        o["collect"] = {"source": "folder", "path": str(folder)}
        labels = a.collect_labels or next((folder / n for n in ("labels.csv", "labels.parquet")
                                           if (folder / n).exists()), None)
        if labels:
            o["collect"]["labels"] = str(Path(labels).resolve())
        frames = sum(1 for p in (folder / "target").rglob("*") if p.is_file())
        subjects, per_subject = None, 1
        check.summary["source"] = {"kind": "folder", "path": str(folder), "frames": frames,
                                   "labels": str(labels) if labels else None}
    else:
        if a.subjects:
            o["collect"]["twin"]["subjects"] = a.subjects
        twin = o["collect"]["twin"]
        subjects, per_subject = twin["subjects"], twin["cameras"] * twin["frames"]
        frames = subjects * per_subject
        check.summary["source"] = {"kind": "twin", **twin}
    o["train"].update({k: v for k, v in (("compile", a.compile), ("batch_size", a.batch)) if v})
    if cards > 1:  # the same per-card batch on every card
        o["train"]["batch_size"] *= cards
    keys = ("seeds", "estimator_epochs", "utility_seeds", "judge_seeds", "judge_epochs")
    return Sizes(frames=frames, subjects=subjects, frames_per_subject=per_subject,
                 evaluate={k: o["evaluate"][k] for k in keys}, generate_count=o["generate"]["count"],
                 curve_points=6, expression=a.expression_minutes > 0, expression_s=a.expression_minutes * 60,
                 cards=cards,
                 train_fixed=a.train_minutes * 60 if a.train_minutes else None)


def _keep_checkpoints(root: Path):
    """Hard-link each training checkpoint as it appears: the trainer keeps only its newest two."""
    kept = root / "curve_checkpoints"
    kept.mkdir(exist_ok=True)

    def poll() -> None:
        for path in (root / "models/checkpoints").glob("step_*.pt"):
            if not (kept / path.name).exists():
                try:
                    os.link(path, kept / path.name)
                except FileNotFoundError:  # pruned between the glob and the link
                    pass
    return poll


def _phase_settings(check: Check, name: str, sizes: Sizes, cards: int) -> tuple[dict, object]:
    """The planned sizes into the params overrides (written before the phase); the worker's args
    for the check's own phases; the poll to run while the phase runs."""
    a, s, o = check.args, check.summary, check.overrides
    args, poll = {}, None
    if name == "collect" and sizes.subjects:
        o["collect"]["twin"]["subjects"] = sizes.subjects
    if name == "evaluate":
        o["evaluate"].update(sizes.evaluate)
    if name == "generate":
        o["generate"].update(count=sizes.generate_count, shard_size=min(o["generate"]["shard_size"],
                                                                         sizes.generate_count))
    if name == "train":
        train_settings(o["train"], sizes, s.get("flops", {}).get("eager_pairs_per_s"), check.smoke)
        args, poll = {"cards": cards}, _keep_checkpoints(check.root)
    if name == "flops":
        args = {"batch": min(o["train"]["batch_size"] // max(cards, 1), 64), "seconds": 2 if check.smoke else 5}
    if name == "scaling":
        args = {"batch": o["train"]["batch_size"] // cards, "seconds": 20}
    if name == "curve":
        args = {"points": sizes.curve_points}
    if name == "expression":
        ex = json.loads(json.dumps(SMOKE_EXPRESSION_PARAMS if check.smoke else GPU_EXPRESSION_PARAMS))
        ex["expression_train"]["max_minutes"] = a.expression_minutes
        args = {"overrides": ex}
    return args, poll


def _record(check: Check, name: str, result: dict, seconds: float, sizes: Sizes, cards: int) -> None:
    """What a finished phase adds to summary.json (and to the plan: the real number of pairs)."""
    s = check.summary
    rate = s["measured_rates"]
    if name in ("collect", "detect", "clean"):
        rate[f"{name}_s_per_frame"] = round(seconds / max(sizes.frames, 1), 5)
    if name == "augment" and result.get("prepared"):
        sizes.frames = int(result["prepared"] / 0.9)  # the plan's pairs from here on are the real ones
        s["pairs"] = result["prepared"]
    if name == "flops":
        s["flops"] = result
    if name == "train":
        train_figures(check.summary, check.root, check.overrides["train"], result, check.smoke)
        rate["train_pairs_per_s"] = s["train"]["pairs_per_s_steady"]
    if name == "scaling":
        one, all_ = result["one_card_pairs_per_s"], s["train"]["pairs_per_s_steady"]
        s["scaling"] = {**result, "cards": cards, "all_cards_pairs_per_s": all_,
                        "efficiency": round(all_ / cards / one, 3) if one and all_ else "unavailable"}
    if name == "evaluate":
        figures = json.loads((check.root / "metrics/eval.json").read_text())
        s["figures"] = {k: v for k, v in figures.items() if k.startswith(FIGURE_PREFIXES)}
        rate["evaluate_s"] = round(seconds, 1)  # the baselines stage's seconds included
        s["evaluate_seconds"] = {"baselines_stage": result.get("baselines_s"), "both_stages": round(seconds, 1)}
    if name == "curve":
        s["curve"] = result
    if name == "generate":
        s["generate"] = {"images": result.get("images"), "seconds": round(seconds, 1),
                         "images_per_s": round(result.get("images", 0) / seconds, 1),
                         "phase_seconds": {k: v for k, v in result.items() if k.endswith("_s")}}
    if name == "expression":
        s["expression"] = result


def run(check: Check) -> None:
    a, r, s = check.args, check.rates, check.summary
    # install ran in gpu_scale.sh, before this process
    if a.install_json and Path(a.install_json).exists():
        inst = json.loads(Path(a.install_json).read_text())
        check.report("install", inst["status"], inst.get("seconds"), reason=inst.get("reason"))
    if not check.start_worker():
        return
    cards = 0 if check.smoke else s["hardware"]["cards"]
    if not check.smoke and cards == 0:
        print("gpu_scale: no CUDA device; use --smoke for the CPU size", file=sys.stderr)
        raise SystemExit(2)
    sizes = initial_sizes(check, cards)
    phases = list(PHASES)
    for i, name in enumerate(phases):
        need = NEEDS.get(name)
        if name == "expression" and not a.expression_minutes:
            check.report(name, "skipped", reason="not asked for (--expression-minutes)")
            continue
        if name == "scaling" and cards <= 1:
            check.report(name, "skipped", reason=f"{cards} card(s): scaling needs more than one"
                         + (" (smoke runs on the CPU)" if check.smoke else ""))
            continue
        if need and check.status.get(need) not in ("ok", "shortened"):
            was = {"cut": "was cut", "skipped": "was skipped", "failed": "failed"}.get(check.status.get(need),
                                                                                       "did not run")
            check.report(name, "skipped", reason=f"needs {need}, which {was}")
            continue
        if name == "generate" and not (check.root / "models/label_estimator.pt").exists():
            check.report(name, "skipped", reason="needs models/label_estimator.pt (the baselines stage's, "
                                                                  "run in the evaluate phase)")
            continue
        if name == "flops" and plan(sizes, r, phases[i + 1:], check.left() - r.flops, check.smoke).train_s <= 0:
            check.report(name, "skipped", reason="no time left for the training it would measure")
            continue
        sizes = plan(sizes, r, phases[i:], check.left(), check.smoke)
        cut = [text for phase, text in sizes.cuts if phase == name]
        budget = phase_cost(name, sizes, r)
        left = check.left() - r.reserve
        if (name == "generate" and not sizes.generate_count) or (name == "expression" and not sizes.expression):
            check.report(name, "skipped", reason="cut to fit the deadline")
            continue
        if name == "train" and sizes.train_fixed and 0 < sizes.train_s < sizes.train_fixed:
            cut.append(f"train {sizes.train_s:.0f} s of the {sizes.train_fixed:.0f} s asked for")
        elif name == "train" and 0 < sizes.train_s < r.train_min:
            cut.append(f"train {sizes.train_s:.0f} s, below the {r.train_min:.0f} s a run needs to show anything")
        # evaluate writes its figures only as it ends, so it starts only with its whole estimate left;
        # another phase may start on half of it (a cut one still leaves what it wrote)
        if (sizes.train_s <= 0 if name == "train" else left < (1.0 if name == "evaluate" else 0.5) * budget):
            what = (f"{budget:.0f} s" if name != "train"
                    else f"{r.train_overhead + r.train_min:.0f} s and evaluate after it")
            check.report(name, "skipped", reason=f"no time left: needs about {what}, {max(left, 0):.0f} s remain")
            continue
        args, poll = _phase_settings(check, name, sizes, cards)
        check.write_params()
        t0 = time.time()
        result = check.run_phase(name, args, budget, cut, poll)
        seconds = time.time() - t0
        if result is None:
            continue
        _record(check, name, result, seconds, sizes, cards)
        check.save()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (the test's size)")
    ap.add_argument("--deadline-s", type=float, default=420.0,
                    help="the whole call, from --started-at (default 420 s: the device call's 7 minutes)")
    ap.add_argument("--started-at", type=float, default=None, help="epoch seconds the call began (gpu_scale.sh)")
    ap.add_argument("--install-json", type=Path, default=None, help="gpu_scale.sh's record of the wheel install")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_scale_out")))
    ap.add_argument("--train-minutes", type=float, default=None,
                    help="train this long if the deadline allows (default: whatever the other phases leave)")
    ap.add_argument("--subjects", type=int, default=None, help="twin subjects (default 120, smoke 4); the plan "
                    "may lower it")
    ap.add_argument("--collect-path", type=Path, default=None,
                    help="a folder source (target/<subject>_<camera>/<frame>.png + source/...) instead of the twin")
    ap.add_argument("--collect-labels", type=Path, default=None,
                    help="its labels table (default: labels.csv or labels.parquet in the folder, if there; else none)")
    ap.add_argument("--expression-minutes", type=float, default=0.0,
                    help="expression_train.max_minutes of an expression run after the NIR one; 0 skips it")
    ap.add_argument("--compile", choices=["none", "default", "reduce-overhead"], default=None,
                    help="train.compile (default: none, eager: a first compile on a device's cold cache "
                         "takes minutes of a short call)")
    ap.add_argument("--batch", type=int, default=None, help="train.batch_size per card (default 128, smoke 4)")
    ap.add_argument("--keep", type=Path, default=None, help="build the pipeline here and keep it")
    args = ap.parse_args()
    args.started_at = args.started_at or time.time()
    if args.collect_path and not (args.collect_path / "target").is_dir():
        print(f"gpu_scale: --collect-path {args.collect_path} has no target/ folder (README folder layout)",
              file=sys.stderr)
        raise SystemExit(2)
    check = Check(args)
    # a SIGTERM (a caller's own timeout) unwinds through the finally below: the worker's process
    # group is ended and summary.json written, never left half-done or orphaned
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{check.root / 'mlflow.db'}")
    try:
        run(check)
    finally:
        if check.worker is not None:  # its answers are on disk; its interpreter's exit takes seconds
            check.worker.stop()
        check.summary["total_seconds"] = round(time.time() - args.started_at, 1)
        check.save()
        if not args.keep:
            shutil.rmtree(check.root, ignore_errors=True)
    s = check.summary
    print(json.dumps({k: s.get(k) for k in ("hardware", "stage_seconds", "train", "scaling", "generate",
                                            "total_seconds")}, indent=1, default=str))
    print(json.dumps({k: v for k, v in s.get("figures", {}).items() if not k.endswith("_std")}, indent=1))


if __name__ == "__main__":
    main()
