"""The device check's plan: what each phase of ``gpu_scale.py`` costs, and how a deadline is shared.

A phase's cost is a fixed part plus a per-unit rate (frames, pairs, images) measured on a real
run; :func:`plan` picks the sizes (twin subjects, evaluate's repetitions, images to generate,
curve points) so that every phase fits the time left, gives what remains to training, and lists
every cut it made against the full-size run (``GPU_PARAMS`` / ``SMOKE_PARAMS`` below). The check
calls it again before each phase with the time then left, so a phase that ran long shortens the
ones after it instead of pushing the call past its deadline. Pure functions: no torch, no I/O
(the orchestrator must not hang on an import).

The GPU rates are the 2026-11-28 H200 run's (``benchmarks/results/gpu_scale_h200_2026-11-28``
and issue 21's table): collect 59 frames/s on 16 cores, detect 302 frames/s, evaluate's parts at
3,143 train / 349 test pairs (estimator 42 s, draws 35 s, TSTR 66 s, judge 107 s). The smoke
rates are a loaded 2-core CPU's, rounded up. Generate on a GPU runs in one process, and its rig
rendering, PNG encoding and writing are CPU work of about 8 ms an image (the default run's stage
timers on a 2-core CPU), so its rate is set from those, not from the generator's speed.
``summary.json`` records each phase's measured rate (``measured_rates``) so the next device run
can correct these.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

# The full-size runs, before any cut (params.yaml overrides). The GPU run: thesis width, bf16,
# a larger twin; epochs are generous because the deadline (train.max_minutes) ends the run. Eager,
# as the 2026-11-28 H200 run: every device machine starts with a cold compile cache, and a first
# torch.compile took over two minutes on an H100 (docs/gpu.md), most of a 7-minute call's training.
GPU_PARAMS: dict = {
    "collect": {"twin": {"subjects": 120, "cameras": 2, "frames": 16}},
    "detect": {"device": "cuda", "batch_size": 256},
    "train": {"width": 1.0, "precision": "bf16", "device": "cuda", "batch_size": 128, "compile": "none",
              "epochs_fixed": 400, "epochs_decay": 400, "log_every": 50, "checkpoint_every": 2000,
              "log_model": False},
    "evaluate": {"device": "cuda", "seeds": 3, "estimator_epochs": 20, "utility_seeds": 1, "utility_latents": 1,
                 "judge_seeds": 3, "judge_epochs": 20},
    "generate": {"count": 20000, "shard_size": 5000, "batch_size": 500, "precision": "bf16", "workers": 1},
}
GPU_EXPRESSION_PARAMS: dict = {
    "collect": {"expression_twin": {"subjects": 40, "frames_per_expression": 10}},
    "detect": {"device": "cuda", "batch_size": 256},
    "augment": {"image_size": 128},
    "expression_train": {"image_size": 128, "width": 1.0, "res_blocks": 6, "adversarial": "wgan_gp", "lr_g": 1e-4,
                         "lr_d": 1e-4, "batch_size": 32, "steps": 20000, "device": "cuda", "log_every": 200,
                         "checkpoint_every": 5000, "log_model": False},
    "evaluate": {"device": "cuda"},
}
# The smoke run: the same phases on a CPU at a tiny size.
SMOKE_PARAMS: dict = {
    "collect": {"twin": {"subjects": 4, "cameras": 1, "frames": 10, "disturbance_fraction": 0.1}},
    "detect": {"device": "cpu", "batch_size": 16},
    "augment": {"image_size": 64},
    "split": {"test_fraction": 0.25},
    "train": {"width": 0.25, "latent_dim": 32, "precision": "fp32", "device": "cpu", "batch_size": 4,
              "epochs_fixed": 500, "epochs_decay": 0, "log_every": 5, "checkpoint_every": 1000,
              "sample_sources": 2, "sample_latents": 2, "log_model": False},
    "evaluate": {"device": "cpu", "seeds": 1, "diversity_sources": 2, "diversity_latents": 2, "estimator_epochs": 1,
                 "feature_epochs": 1, "utility_seeds": 1, "utility_latents": 1, "judge_seeds": 1,
                 "judge_epochs": 1, "judge_few_shot_draws": 1, "judge_few_shot_steps": 5},
    "generate": {"count": 8, "shard_size": 4, "batch_size": 4},
}
SMOKE_EXPRESSION_PARAMS: dict = {
    "collect": {"expression_twin": {"subjects": 4, "frames_per_expression": 2}},
    "detect": {"device": "cpu", "batch_size": 16},
    "split": {"test_fraction": 0.25},
    "expression_train": {"width": 0.25, "res_blocks": 1, "batch_size": 4, "steps": 1000, "device": "cpu",
                         "log_every": 1, "checkpoint_every": 1000, "log_model": False},
    "evaluate": {"device": "cpu", "feature_epochs": 1, "judge_seeds": 1, "judge_epochs": 1,
                 "judge_few_shot_draws": 1, "judge_few_shot_steps": 5},
}
@dataclass(frozen=True)
class Rates:
    """Seconds: a fixed part per phase, and per unit where the phase scales with the data."""

    worker_start: float        # a fresh worker: imports, CUDA context
    collect: float
    collect_per_frame: float
    detect: float
    detect_per_frame: float
    prep: float                # clean, augment, split: each
    prep_per_frame: float
    flops: float
    train_overhead: float      # session build, the last checkpoint, export (outside max_minutes)
    train_min: float           # below this a training run shows nothing worth its cost
    eval_fixed: float          # loads, identity, cleaning figures, plots, MLflow
    eval_estimator_per_pair_epoch: float
    eval_draw: float
    eval_draw_per_test_pair: float
    eval_judge_per_image_epoch: float
    curve: float
    curve_per_point: float
    generate: float
    generate_per_image: float
    scaling: float
    expression: float          # the whole expression pipeline, besides its training minutes
    reserve: float             # the last summary write and a margin for the clock's granularity


GPU_RATES = Rates(worker_start=15, collect=3, collect_per_frame=1 / 59, detect=5, detect_per_frame=1 / 302,
                  prep=2, prep_per_frame=0.0006, flops=20, train_overhead=20, train_min=60, eval_fixed=35,
                  eval_estimator_per_pair_epoch=6.7e-4, eval_draw=1, eval_draw_per_test_pair=0.031,
                  eval_judge_per_image_epoch=5.1e-4, curve=5, curve_per_point=3, generate=20,
                  generate_per_image=1 / 120, scaling=60, expression=60, reserve=12)
SMOKE_RATES = Rates(worker_start=8, collect=2, collect_per_frame=0.08, detect=4, detect_per_frame=0.06,
                    prep=1.5, prep_per_frame=0.005, flops=4, train_overhead=15, train_min=3, eval_fixed=8,
                    eval_estimator_per_pair_epoch=0.004, eval_draw=0.5, eval_draw_per_test_pair=0.02,
                    eval_judge_per_image_epoch=0.003, curve=1, curve_per_point=0.5, generate=6,
                    generate_per_image=0.3, scaling=20, expression=40, reserve=4)

PHASES = ("collect", "detect", "clean", "augment", "split", "flops", "train", "scaling", "evaluate", "curve",
          "generate", "expression")


@dataclass
class Sizes:
    """What the plan decides: the run's size knobs (the full-size values are the defaults given)."""

    frames: int                  # estimated raw frames (twin: subjects x cameras x frames)
    subjects: int | None         # twin subjects; None for a folder source (its size is the folder's)
    frames_per_subject: int
    evaluate: dict               # evaluate params that set its cost: seeds, estimator_epochs, ...
    generate_count: int
    curve_points: int
    expression: bool
    cards: int
    expression_s: float = 0.0      # its training minutes, as seconds
    train_s: float = 0.0         # train.max_minutes * 60
    train_fixed: float | None = None  # --train-minutes: the user's budget, not the leftover time
    cuts: list[tuple[str, str]] = field(default_factory=list)  # (phase, what was cut)


def _pairs(s: Sizes) -> tuple[float, float]:
    """Train and test pairs the pipeline will hold (clean keeps about 90 %; split 90 / 10)."""
    pairs = 0.9 * s.frames
    return 0.9 * pairs, 0.1 * pairs


def phase_cost(name: str, s: Sizes, r: Rates) -> float:
    """Estimated seconds of one phase at sizes ``s`` (train: its overhead plus ``s.train_s``)."""
    train, test = _pairs(s)
    e = s.evaluate
    if name == "collect":
        return r.collect + s.frames * r.collect_per_frame
    if name == "detect":
        return r.detect + s.frames * r.detect_per_frame
    if name in ("clean", "augment", "split"):
        return r.prep + s.frames * r.prep_per_frame
    if name == "flops":
        return r.flops
    if name == "train":
        return r.train_overhead + s.train_s
    if name == "scaling":
        return r.scaling if s.cards > 1 else 0.0
    if name == "evaluate":
        # the estimator once, then twice more per utility seed (TSTR's trained and untrained arms)
        estimator = train * e["estimator_epochs"] * r.eval_estimator_per_pair_epoch * (1 + 2 * e["utility_seeds"])
        draws = e["seeds"] * (r.eval_draw + test * r.eval_draw_per_test_pair)
        judge = e["judge_seeds"] * e["judge_epochs"] * (train + test) * r.eval_judge_per_image_epoch
        return r.eval_fixed + estimator + draws + judge
    if name == "curve":
        return r.curve + s.curve_points * r.curve_per_point
    if name == "generate":
        return r.generate + s.generate_count * r.generate_per_image if s.generate_count else 0.0
    if name == "expression":
        return r.expression + s.expression_s if s.expression else 0.0
    raise KeyError(name)


def _cuts(s: Sizes, smoke: bool) -> list[tuple[str, callable]]:
    """Each cheaper step from the full size, in the order they are given up: repetitions first,
    then the data, then whole optional phases. Each returns a new Sizes or None (not applicable)."""

    def evaluate(key: str, value: int):
        def cut(x: Sizes):
            if x.evaluate[key] <= value:
                return None
            return replace(x, evaluate={**x.evaluate, key: value},
                           cuts=[*x.cuts, ("evaluate", f"evaluate.{key} {x.evaluate[key]} -> {value}")])
        return cut

    def count(value: int):
        def cut(x: Sizes):
            if x.generate_count <= value:
                return None
            return replace(x, generate_count=value,
                           cuts=[*x.cuts, ("generate", f"generate.count {x.generate_count} -> {value}")])
        return cut

    def subjects(x: Sizes):
        floor = 4 if smoke else 24
        if x.subjects is None or x.subjects <= floor:
            return None
        new = max(floor, int(x.subjects * 0.75))
        first = next((int(t.split()[2]) for p, t in x.cuts if t.startswith("twin subjects")), x.subjects)
        kept = [c for c in x.cuts if not c[1].startswith("twin subjects")]
        return replace(x, subjects=new, frames=new * x.frames_per_subject,
                       cuts=[*kept, ("collect", f"twin subjects {first} -> {new}")])

    def drop(what: str):
        def cut(x: Sizes):
            if what == "expression" and x.expression:
                return replace(x, expression=False, cuts=[*x.cuts, ("expression", "skipped to fit the deadline")])
            if what == "generate" and x.generate_count:
                return replace(x, generate_count=0, cuts=[*x.cuts, ("generate", "skipped to fit the deadline")])
            if what == "curve" and x.curve_points > 3:
                return replace(x, curve_points=3, cuts=[*x.cuts, ("curve", f"points {x.curve_points} -> 3")])
            return None
        return cut

    steps = [evaluate("seeds", 1), evaluate("judge_seeds", 1), count(5000), evaluate("estimator_epochs", 10),
             evaluate("judge_epochs", 10), drop("expression")]
    steps += [subjects] * 6
    steps += [count(1000), drop("generate"), drop("curve")]
    return steps


def plan(sizes: Sizes, rates: Rates, phases: list[str], seconds_left: float, smoke: bool,
         train_share: float = 0.4) -> Sizes:
    """Sizes for ``phases`` (the ones still to run, in order) within ``seconds_left``.

    Training gets what the other phases leave, and the other phases are cut (see :func:`_cuts`)
    until it gets at least ``train_share`` of the time left, or ``--train-minutes`` when the
    user fixed it. A cut that would touch a phase already run (subjects after collect) does not
    apply. Returns new Sizes with ``train_s`` set and ``cuts`` extended."""
    s = copy.deepcopy(sizes)
    available = seconds_left - rates.reserve
    others = [p for p in phases if p != "train"]

    def rest(x: Sizes) -> float:
        return sum(phase_cost(p, x, rates) for p in others) + (rates.train_overhead if "train" in phases else 0)

    if "train" in phases:
        wanted = s.train_fixed if s.train_fixed is not None else max(rates.train_min, train_share * available)
        for cut in _cuts(s, smoke):
            if available - rest(s) >= wanted:
                break
            if cut.__name__ == "subjects" and "collect" not in phases:
                continue
            s = cut(s) or s
        leftover = available - rest(s)
        if leftover < rates.train_min and "evaluate" in phases:
            # a short training that evaluate still reads beats none: what follows evaluate gives way
            essential = rates.train_overhead + phase_cost("evaluate", s, rates)
            leftover = max(leftover, min(rates.train_min, available - essential))
        s.train_s = max(0.0, min(leftover, s.train_fixed) if s.train_fixed is not None else leftover)
    else:
        for cut in _cuts(s, smoke):
            if rest(s) <= available:
                break
            if cut.__name__ == "subjects" and "collect" not in phases:
                continue
            s = cut(s) or s
    return s


def train_settings(t: dict, sizes: Sizes, eager_pairs_per_s: float | None, smoke: bool) -> None:
    """train.max_minutes from the plan; a checkpoint about every 1/points of the budget (the curve's
    points: the orchestrator keeps each one as it appears), guessed from the eager rate."""
    t["max_minutes"] = max(sizes.train_s, 1.0) / 60
    rate = eager_pairs_per_s or (2.0 if smoke else 500.0)
    if t.get("compile", "none") != "none":
        rate *= 2.5  # compiled against eager at batch 256 on an H100 (README: 3,809 / 1,668 pairs/s)
    steps = max(1, int(sizes.train_s * rate / t["batch_size"]))
    t["checkpoint_every"] = max(1, steps // sizes.curve_points)
    t["log_every"] = min(t["log_every"], t["checkpoint_every"])
