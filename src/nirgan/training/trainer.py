"""The training run: thesis Algorithm 2 with the Table 3.8 schedule, resumable and fast.

:func:`train` reads top-down: devices, checks, data, the checkpoint to resume from, the
session (``nirgan.training.session``: networks, optimisers, RNGs and one step), the loop,
and the export (``nirgan.training.export``). The jobs live in their own modules:

    data.py       the training split on the device          resume.py     checks and fingerprints
    session.py    TrainSession: state and one iteration       auxiliary.py  estimator / identity net
    export.py     model files, metrics, MLflow model          checkpoint.py the whole state on disk

Speed. The uint8 training arrays are moved once to the training device and indexed there
with a seeded permutation per epoch; :func:`nirgan.augmentation.paired_augment`'s transform
runs batched on the same device. On CUDA: bf16 autocast, channels_last, fused Adam,
optionally ``torch.compile``. Losses are accumulated on the device and fetched only every
``log_every`` steps (the one host synchronisation), where non-finiteness is also checked.

Reliability. The whole state (networks, EMA, optimisers, schedulers, RNG states, step and the
epoch's data order) is checkpointed every ``checkpoint_every`` steps and at the end through
:class:`~nirgan.training.checkpoint.Checkpoint`; a run finding ``<out_dir>/checkpoints/latest``
resumes from it, so a run killed with ``kill -9`` continues where it saved. With
``deterministic`` on CPU, "N steps, kill, resume, N steps" equals "2N steps" bit for bit:
every random draw comes from a generator whose state is in the checkpoint. A non-finite loss
stops the run naming the loss and its first bad step; no checkpoint is written after it.

Scale-out. Under ``torchrun`` each process takes its rank's slice of every global batch
(``batch_size`` is the global batch); z and the augmentation draws are drawn for the global
batch on every process and sliced, and batch norm is synchronised, so N processes compute
what one process computes. Checkpoints, MLflow and sample grids are rank 0's job.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from nirgan import devices, tracking
from nirgan.config import Config
from nirgan.io import write_image
from nirgan.training.checkpoint import Checkpoint
from nirgan.training.data import load_data
from nirgan.training.distributed import DistInfo, barrier, init_distributed
from nirgan.training.export import export_run, thesis_name
from nirgan.training.resume import check_config, fingerprint, fingerprint_hash, resumable_state
from nirgan.training.session import TrainSession

log = logging.getLogger("nirgan.train")


class NonFiniteLossError(RuntimeError):
    pass


def resolve_device(choice: str) -> torch.device:
    return devices.resolve_device(choice, "train.device")


# ------------------------------------------------------------------------ the loop
class LossMeter:
    """Loss parts summed on the device; the first non-finite step per part tracked on the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.names: list[str] | None = None
        self.sum = self.first_bad = None
        self.count = 0

    def add(self, parts: dict[str, torch.Tensor], step: int) -> None:
        if self.names is None:
            self.names = sorted(parts)
            self.sum = torch.zeros(len(self.names), device=self.device)
            self.first_bad = torch.full((len(self.names),), -1, dtype=torch.long, device=self.device)
        vec = torch.stack([parts[n].float() for n in self.names])
        self.sum += vec
        self.first_bad = torch.where(~torch.isfinite(vec) & (self.first_bad < 0), step, self.first_bad)
        self.count += 1

    def fetch(self, info: DistInfo) -> tuple[dict[str, float], dict[str, int]]:
        """Means since the last fetch and {loss: first bad step}; the one host sync. Resets."""
        if self.names is None or self.count == 0:
            return {}, {}
        bad = self.first_bad.clone()
        if info.enabled:
            dist.all_reduce(self.sum, op=dist.ReduceOp.SUM)
            self.sum /= info.world_size
            # Every rank must stop together, or the others would hang in the next collective.
            flag = torch.where(bad < 0, torch.iinfo(torch.long).max, bad)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            bad = torch.where(flag == torch.iinfo(torch.long).max, -1, flag)
        packed = torch.cat([self.sum / self.count, bad.float()]).cpu()
        n = len(self.names)
        means = {name: float(packed[i]) for i, name in enumerate(self.names)}
        first_bad = {name: int(packed[n + i]) for i, name in enumerate(self.names) if packed[n + i] >= 0}
        self.sum.zero_()
        self.count = 0
        return means, first_bad


def _raise_non_finite(first_bad: dict[str, int], ckpt: Checkpoint) -> None:
    name, step = min(first_bad.items(), key=lambda kv: kv[1])
    last = ckpt.latest()
    keep = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
    raise NonFiniteLossError(
        f"non-finite loss: {name} became NaN/inf at step {step + 1} "
        f"(also: {sorted(first_bad)}); training stopped, {keep}. Lower the learning rates or "
        "enable train.r1_gamma, then rerun to resume from that checkpoint."
    )


@dataclass
class RunRecord:
    """What the loop keeps besides the session: the run's identity, loss history and timing."""

    fingerprint: dict[str, Any]
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

    def record(self, session: TrainSession, means: dict[str, float], is_main: bool) -> None:
        """One row of the loss history: the means since the last row, learning rates, throughput."""
        if session.cuda:
            torch.cuda.synchronize(session.device)
        now = time.perf_counter()
        pairs_per_s = (session.step - self.step_window) * session.global_batch / max(now - self.t_window, 1e-9)
        self.t_window, self.step_window = now, session.step
        row = {"step": session.step, "epoch": session.step / session.steps_per_epoch, **means,
               **session.learning_rates(), "pairs_per_s": pairs_per_s}
        self.history.append(row)
        if is_main:
            tracking.log_metrics({k: v for k, v in row.items() if k != "step"}, step=session.step)

    @property
    def last_losses(self) -> dict[str, float]:
        """The loss means of the last history row, also when that row was restored from a
        checkpoint (a rerun of a finished run trains no step but keeps its figures)."""
        row = self.history[-1] if self.history else {}
        return {k: v for k, v in row.items() if k not in ("step", "epoch", "pairs_per_s") and not k.startswith("lr_")}

    def checkpoint_fields(self, session: TrainSession) -> dict[str, Any]:
        return dict(fingerprint=fingerprint_hash(self.fingerprint), fingerprint_data=self.fingerprint,
                    history=self.history, mlflow_run_id=self.run_id,
                    elapsed_s=self.elapsed_before + time.perf_counter() - self.t0,
                    config=session.tc.model_dump(mode="json"))


def train(cfg: Config, prepared_dir: Path, split_dir: Path, out_dir: Path, metrics_path: Path) -> dict[str, Any]:
    """Train (or resume) one run; writes out_dir/{checkpoints/, generator.pt, encoder.pt,
    mlflow_run.json}, metrics_path and a losses CSV next to it. Returns counts and figures for
    the stage log."""
    tc = cfg.train
    device = resolve_device(tc.device)
    info = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank if info.enabled else (device.index or 0))
    check_config(cfg, info.world_size)
    devices.configure_torch(tc.deterministic, tc.seed, device)
    out_dir, metrics_path = Path(out_dir), Path(metrics_path)
    out_dir.mkdir(parents=True, exist_ok=True)

    data = load_data(Path(prepared_dir), Path(split_dir), device, tc.sample_sources)
    if data.image_size != cfg.augment.image_size:
        raise ValueError(f"{prepared_dir}: prepared images are {data.image_size}px but augment.image_size is "
                         f"{cfg.augment.image_size}; rerun the augment stage")
    ckpt = Checkpoint(out_dir / "checkpoints")
    record = RunRecord(fingerprint(cfg, data))
    previous_run = ckpt.recorded_run() if info.is_main else None
    state = resumable_state(ckpt, record.fingerprint, out_dir, info)

    session = TrainSession(cfg, data, device, info, aux_dir=out_dir)
    if state is not None:
        session.load_state_dict(state)
        record.resume_from(state)
        log.info("resuming from %s at step %d (epoch %d)", ckpt.latest(), session.step, session.epoch)
    if info.is_main:
        _restore_grids(ckpt, out_dir, session.step if state is not None else 0)
        if previous_run and previous_run != record.run_id:
            # An attempt killed before its first checkpoint, or one whose checkpoints no longer
            # apply: its process is gone, so its run must not stay RUNNING.
            tracking.end_stale_run(previous_run, "KILLED", reason="its training process died; a new attempt "
                                   "started without resuming it")

    end_step = min(session.total_steps, tc.max_steps or session.total_steps)
    name = thesis_name(tc)
    run_ctx = tracking.start_run(cfg.model_dump(mode="json"), run_name=tracking.run_name(name), run_id=record.run_id,
                                 tags={"thesis_config": name}) if info.is_main else nullcontext()
    with run_ctx as run:
        if info.is_main:
            tracking.write_run_info(out_dir / "mlflow_run.json", run)
            ckpt.record_run(run.info.run_id)
            record.run_id = run.info.run_id
        result = _loop(session, ckpt, record, end_step, out_dir, info)
        if info.is_main:
            result.update(export_run(session, cfg, out_dir, metrics_path, record.history, result, record.run_id))
    return result


# The checkpoints directory is DVC-persistent (kept when the stage reruns); models/samples is not
# (DVC deletes it before a rerun). So each grid is written there first and models/samples is
# re-materialised from it on every start: a resumed run keeps the earlier epochs' grids.
GRID_PREFIX = "sample_"


def _restore_grids(ckpt: Checkpoint, out_dir: Path, upto_step: int) -> None:
    """Copy the kept grids of steps <= ``upto_step`` into out_dir/samples; drop later ones
    (drawn after the last checkpoint, so they will be drawn again)."""
    samples = out_dir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for kept in sorted(ckpt.directory.glob(f"{GRID_PREFIX}epoch_*_step_*.png")):
        step = int(kept.stem.rsplit("_", 1)[1])
        if step > upto_step:
            kept.unlink()
        elif not (samples / kept.name[len(GRID_PREFIX):]).exists():
            shutil.copyfile(kept, samples / kept.name[len(GRID_PREFIX):])


def _loop(session: TrainSession, ckpt: Checkpoint, record: RunRecord, end_step: int, out_dir: Path,
          info: DistInfo) -> dict[str, Any]:
    tc = session.tc
    meter = LossMeter(session.device)
    start_step = session.step
    record.start(session.step)
    bar = tqdm(total=end_step, initial=session.step, desc="train", disable=None if info.is_main else True)
    while session.step < end_step:
        parts = session.train_step()
        meter.add(parts, session.step - 1)
        bar.update(1)
        # The wall budget is checked where the loop syncs anyway (log and checkpoint steps).
        at_end = session.step == end_step or (
            session.step % min(tc.log_every, tc.checkpoint_every) == 0
            and _over_budget(tc.max_minutes, record.elapsed_before + time.perf_counter() - record.t0, session.device, info))
        if session.step % tc.checkpoint_every == 0 or at_end:
            _checkpoint(session, ckpt, meter, record, info)
        elif session.step % tc.log_every == 0:
            means, bad = meter.fetch(info)
            record.record(session, means, info.is_main)
            if bad:
                _raise_non_finite(bad, ckpt)
            bar.set_postfix({k: f"{v:.3f}" for k, v in means.items() if k.endswith("total")})
        if info.is_main and (session.step % session.steps_per_epoch == 0 or at_end):
            _log_grid(session, out_dir)
        if at_end:
            break
    bar.close()
    if info.is_main and session.step == start_step and not (out_dir / "samples" / _grid_name(session)).exists():
        # Resumed a finished run whose grid was not kept (a checkpoint from before grids were
        # kept beside it): draw the final grid again, the stage's declared output.
        _log_grid(session, out_dir)
    wall = time.perf_counter() - record.t0
    steps_run = session.step - start_step
    return {
        "steps": session.step,
        "steps_this_session": steps_run,
        "epochs": session.step / session.steps_per_epoch,
        "pairs_per_s": steps_run * session.global_batch / wall if steps_run else float("nan"),
        "wall_s": wall,
        "total_wall_s": record.elapsed_before + wall,
        "losses": record.last_losses,
        "world_size": info.world_size,
        "device": str(session.device),
    }


def _checkpoint(session: TrainSession, ckpt: Checkpoint, meter: LossMeter, record: RunRecord, info: DistInfo) -> None:
    """Save the whole state; never one whose losses or weights went non-finite."""
    means, bad = meter.fetch(info)
    if means:
        record.record(session, means, info.is_main)
    if bad:
        _raise_non_finite(bad, ckpt)
    if not bool(session.parameters_finite()):
        raise NonFiniteLossError(f"non-finite weights at step {session.step}; not checkpointing. "
                                 f"The last good checkpoint is {ckpt.latest()}")
    if info.is_main:
        state = session.state_dict()
        state.update(record.checkpoint_fields(session))
        ckpt.save(state, session.step)
    barrier(info)


def _over_budget(max_minutes: float | None, elapsed_s: float, device: torch.device, info: DistInfo) -> bool:
    """``train.max_minutes`` spent (resumed time included). Under DDP the main rank's clock
    decides for all, so every rank stops after the same step."""
    if max_minutes is None:
        return False
    over = elapsed_s >= max_minutes * 60
    if info.enabled:
        flag = torch.tensor([float(over)], device=device)
        torch.distributed.broadcast(flag, src=0)
        over = bool(flag.item())
    return over


def _grid_name(session: TrainSession) -> str:
    epoch = math.ceil(session.step / session.steps_per_epoch)
    return f"epoch_{epoch:03d}_step_{session.step:08d}.png"


def _log_grid(session: TrainSession, out_dir: Path) -> None:
    grid = session.sample_grid()
    name = _grid_name(session)
    kept = out_dir / "checkpoints" / f"{GRID_PREFIX}{name}"
    write_image(kept, grid)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kept, out_dir / "samples" / name)
    tracking.log_sample_grid(kept, math.ceil(session.step / session.steps_per_epoch), session.step)
