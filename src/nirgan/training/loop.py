"""The training loop both model families run: a session's steps under a wall budget, with the
loss meter, the non-finite stop, checkpoints and sample grids.

A session (``nirgan.training.session.TrainSession`` or
``nirgan.expression.session.ExpressionSession``) is the state and one iteration; its
trainer is the setup (data, fingerprint, resumption, MLflow run) and the export. In between,
:func:`run_loop` does, for either family:

- the steps, up to ``end_step`` or until the wall budget is spent (resumed time included).
  The budget is checked where the loop syncs anyway (log and checkpoint steps), and under DDP
  rank 0's clock decides for every rank: ranks that decided on their own clocks could stop
  after different steps and hang in the next collective;
- the loss meter: loss parts summed on the device and fetched every ``log_every`` steps (the one
  host synchronisation), each part averaged over the steps that produced it;
- the non-finite stop: a NaN/inf loss or weight stops the run naming the loss and its first bad
  step, and no checkpoint is written after it;
- checkpoints every ``checkpoint_every`` steps and at the end (rank 0 writes, all wait), with
  the :class:`RunRecord` (fingerprint, loss history, MLflow run, time spent) beside the state;
- the family's sample grids, per epoch or per checkpoint (:class:`LoopSpec`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.distributed as dist

from nirgan import tracking
from nirgan.io import progress
from nirgan.training.checkpoint import Checkpoint
from nirgan.training.distributed import DistInfo, barrier
from nirgan.training.fingerprint import fingerprint_hash

log = logging.getLogger("nirgan.train")


class NonFiniteLossError(RuntimeError):
    pass


class Session(Protocol):
    """What the loop reads of a family's session (both are ``ResumableSession`` s)."""

    step: int
    steps_per_epoch: int
    global_batch: int
    device: torch.device
    cuda: bool

    def train_step(self) -> dict[str, torch.Tensor]: ...
    def learning_rates(self) -> dict[str, float]: ...
    def parameters_finite(self) -> torch.Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...


@dataclass
class LoopSpec:
    """What the families' loops differ in; everything else is shared."""

    end_step: int
    log_every: int
    checkpoint_every: int
    max_minutes: float | None
    unit: str                                 # "pairs" | "faces": the throughput's name
    advice: str                               # what the non-finite stop tells the user to do
    grid: Callable[[], None]                  # draw and keep this step's sample grid (rank 0)
    grid_at: Literal["epoch", "checkpoint"]   # when: every epoch (and the end), or every checkpoint
    grid_missing: Callable[[], bool]          # a rerun of a finished run lacks its final grid
    # Kept as each family computed its means, so that the committed figures stay bit for bit:
    # NIR divides on the device (float32), expression on the host (float64).
    mean_on_device: bool = True
    throughput_in_history: bool = True        # the NIR history rows carry pairs_per_s


class LossMeter:
    """Loss parts summed on the device, each over the steps that produced it (StarGAN's G parts
    come every n_critic-th step, the encoder's only in its phase); the first non-finite step
    per part tracked there too."""

    def __init__(self, device: torch.device, mean_on_device: bool = True):
        self.device, self.mean_on_device = device, mean_on_device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.first_bad: dict[str, torch.Tensor] = {}

    def add(self, parts: dict[str, torch.Tensor], step: int) -> None:
        for k, v in parts.items():
            v = v.float()
            if k not in self.sums:
                self.sums[k] = torch.zeros((), device=self.device)
                self.counts[k] = 0
                self.first_bad[k] = torch.full((), -1, dtype=torch.long, device=self.device)
            self.sums[k] += v
            self.counts[k] += 1
            self.first_bad[k] = torch.where(~torch.isfinite(v) & (self.first_bad[k] < 0), step, self.first_bad[k])

    def fetch(self, info: DistInfo) -> tuple[dict[str, float], dict[str, int]]:
        """Means since the last fetch and {part: first bad step}: the one host sync. Resets."""
        names = sorted(k for k in self.sums if self.counts[k])
        if not names:
            return {}, {}
        sums = torch.stack([self.sums[k] for k in names])
        bad = torch.stack([self.first_bad[k] for k in names])
        if info.enabled:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
            sums /= info.world_size
            # Every rank must stop together, or the others would hang in the next collective.
            flag = torch.where(bad < 0, torch.iinfo(torch.long).max, bad)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            bad = torch.where(flag == torch.iinfo(torch.long).max, -1, flag)
        counts = [self.counts[k] for k in names]
        if self.mean_on_device:
            # By a Python number when the counts agree (NIR: every part every step), as the NIR
            # loop always divided: on CUDA that is a multiply by the reciprocal, not a division.
            sums = sums / counts[0] if len(set(counts)) == 1 else sums / torch.tensor(counts, device=sums.device)
        packed = torch.cat([sums, bad.float()]).cpu()
        n = len(names)
        means = {k: float(packed[i]) / (1 if self.mean_on_device else counts[i]) for i, k in enumerate(names)}
        first_bad = {k: int(packed[n + i]) for i, k in enumerate(names) if packed[n + i] >= 0}
        for k in names:
            self.sums[k].zero_()
            self.counts[k] = 0
        return means, first_bad


@dataclass
class RunRecord:
    """What the loop keeps besides the session: the run's identity, loss history and timing."""

    fingerprint: dict[str, Any]
    config: dict[str, Any]
    run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed_before: float = 0.0
    t0: float = field(default_factory=time.perf_counter)
    t_window: float = 0.0
    step_window: int = 0

    def resume_from(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self.run_id = state.get("mlflow_run_id")
        self.elapsed_before = float(state.get("elapsed_s", 0.0))

    def start(self, step: int) -> None:
        self.t0 = self.t_window = time.perf_counter()
        self.step_window = step

    def elapsed(self) -> float:
        """Wall seconds of the whole run, over every session that trained it."""
        return self.elapsed_before + time.perf_counter() - self.t0

    def record(self, session: Session, means: dict[str, float], spec: LoopSpec, is_main: bool) -> None:
        """One row of the loss history: the means since the last row, learning rates, throughput."""
        row = {"step": session.step, "epoch": session.step / session.steps_per_epoch, **means,
               **session.learning_rates()}
        if spec.throughput_in_history:
            if session.cuda:
                torch.cuda.synchronize(session.device)
            now = time.perf_counter()
            row[f"{spec.unit}_per_s"] = ((session.step - self.step_window) * session.global_batch
                                         / max(now - self.t_window, 1e-9))
            self.t_window, self.step_window = now, session.step
        self.history.append(row)
        if is_main:
            tracking.log_metrics({k: v for k, v in row.items() if k != "step"}, step=session.step)

    @property
    def last_losses(self) -> dict[str, float]:
        """The loss means of the last history row, also when that row was restored from a
        checkpoint (a rerun of a finished run trains no step but keeps its figures)."""
        row = self.history[-1] if self.history else {}
        return {k: v for k, v in row.items()
                if k not in ("step", "epoch") and not k.endswith("_per_s") and not k.startswith("lr_")}

    def checkpoint_fields(self) -> dict[str, Any]:
        return dict(fingerprint=fingerprint_hash(self.fingerprint), fingerprint_data=self.fingerprint,
                    history=self.history, mlflow_run_id=self.run_id, elapsed_s=self.elapsed(), config=self.config)


# ------------------------------------------------------------------------------ loop
def epoch_grid_due(step: int, steps_per_epoch: int, every: int) -> bool:
    """Whether the epoch ending at ``step`` gets a sample grid: when a multiple of ``every``
    (train.log_every) falls within it. So every epoch where epochs are that long or longer (the
    CPU default: 165 steps an epoch, every 10), and one grid per ``every`` steps where they are
    shorter: a small set at a GPU's batch has epochs of a few steps, and each grid costs a host
    sync, two PNGs and an MLflow image (what that costs on a GPU has not been measured). A function
    of the step alone, so a resumed run draws the grids an uninterrupted one does."""
    return step % steps_per_epoch == 0 and step // every > (step - steps_per_epoch) // every


def run_loop(session: Session, ckpt: Checkpoint, record: RunRecord, spec: LoopSpec, info: DistInfo) -> dict[str, Any]:
    """Train ``session`` from its step to ``spec.end_step`` (or the budget); returns counts and timings."""
    meter = LossMeter(session.device, spec.mean_on_device)
    start_step = session.step
    record.start(session.step)
    bar = progress(total=spec.end_step, initial=session.step, desc="train", unit="step", disable=not info.is_main)
    while session.step < spec.end_step:
        meter.add(session.train_step(), session.step - 1)
        bar.update(1)
        over = (session.step % min(spec.log_every, spec.checkpoint_every) == 0
                and _over_budget(spec.max_minutes, record.elapsed(), session.device, info))
        at_end = session.step == spec.end_step or over
        if session.step % spec.checkpoint_every == 0 or at_end:
            _checkpoint(session, ckpt, meter, record, spec, info)
        elif session.step % spec.log_every == 0:
            means = _record(session, meter, record, spec, ckpt, info)
            bar.set_postfix({k: f"{v:.3f}" for k, v in means.items() if k.endswith("total")})
        if info.is_main and spec.grid_at == "epoch" and (
                at_end or epoch_grid_due(session.step, session.steps_per_epoch, spec.log_every)):
            spec.grid()
        if over:
            log.info("the wall budget (%.1f min) is spent at step %d", spec.max_minutes, session.step)
        if at_end:
            break
    bar.close()
    if info.is_main and session.step == start_step and spec.grid_missing():
        # Resumed a finished run whose final grid is gone (a checkpoint from before grids were
        # kept beside it): draw it again, the stage's declared output.
        spec.grid()
    wall = time.perf_counter() - record.t0
    steps_run = session.step - start_step
    return {
        "steps": session.step,
        "steps_this_session": steps_run,
        "epochs": session.step / session.steps_per_epoch,
        f"{spec.unit}_per_s": steps_run * session.global_batch / wall if steps_run else float("nan"),
        "wall_s": wall,
        "total_wall_s": record.elapsed(),
        "losses": record.last_losses,
        "world_size": info.world_size,
        "device": str(session.device),
    }


def _record(session: Session, meter: LossMeter, record: RunRecord, spec: LoopSpec, ckpt: Checkpoint,
            info: DistInfo) -> dict[str, float]:
    """Fetch the meter into a history row; stop on a non-finite loss."""
    means, bad = meter.fetch(info)
    if means:
        record.record(session, means, spec, info.is_main)
    if bad:
        name, step = min(bad.items(), key=lambda kv: kv[1])
        last = ckpt.latest()
        keep = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        raise NonFiniteLossError(f"non-finite loss: {name} became NaN/inf at step {step + 1} (also: {sorted(bad)}); "
                                 f"training stopped, {keep}. {spec.advice}")
    return means


def _checkpoint(session: Session, ckpt: Checkpoint, meter: LossMeter, record: RunRecord, spec: LoopSpec,
                info: DistInfo) -> None:
    """Save the whole state; never one whose losses or weights went non-finite."""
    _record(session, meter, record, spec, ckpt, info)
    if not bool(session.parameters_finite()):
        raise NonFiniteLossError(f"non-finite weights at step {session.step}; not checkpointing. "
                                 f"The last good checkpoint is {ckpt.latest()}")
    if info.is_main:
        state = session.state_dict()
        state.update(record.checkpoint_fields())
        ckpt.save(state, session.step)
        if spec.grid_at == "checkpoint":
            spec.grid()
    barrier(info)


def _over_budget(max_minutes: float | None, elapsed_s: float, device: torch.device, info: DistInfo) -> bool:
    """The wall budget spent? Under DDP rank 0's clock decides for all, so every rank stops
    after the same step."""
    if max_minutes is None:
        return False
    over = elapsed_s >= max_minutes * 60
    if info.enabled:
        flag = torch.tensor([float(over)], device=device)
        dist.broadcast(flag, src=0)
        over = bool(flag.item())
    return over
