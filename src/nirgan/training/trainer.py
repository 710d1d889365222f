"""The NIR training run: thesis Algorithm 2 with the Table 3.8 schedule, resumable and fast.

:func:`train` is the setup, read top-down: devices, checks, data, the checkpoint to resume
from, the session (``nirgan.training.session``: networks, optimisers, RNGs and one step), the
loop both families share (``nirgan.training.loop``), and the export (``nirgan.training.export``).
The jobs live in their own modules:

    data.py       the training split on the device          resume.py     checks and the fingerprint
    session.py    TrainSession: state and one iteration       auxiliary.py  estimator / identity net
    loop.py       budget, meter, non-finite stop, checkpoints  fingerprint.py  resume by content
    export.py     model files, metrics, MLflow model          checkpoint.py the whole state on disk

Speed. The uint8 training arrays are moved once to the training device and indexed there
with a seeded permutation per epoch; :func:`nirgan.augmentation.paired_augment`'s transform
runs batched on the same device. channels_last; bf16 autocast where bf16 is native (CUDA,
AVX512-BF16 or AMX CPUs: nirgan.devices.native_bf16); on CUDA fused Adam and
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
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from nirgan import devices, tracking
from nirgan.config import Config, stage_params
from nirgan.io import write_image
from nirgan.training.checkpoint import Checkpoint
from nirgan.training.data import load_data
from nirgan.training.distributed import init_distributed
from nirgan.training.export import export_run, thesis_name
from nirgan.training.fingerprint import resumable_state
from nirgan.training.loop import LoopSpec, NonFiniteLossError, RunRecord, run_loop
from nirgan.training.resume import RUN_FILES, check_config, nir_fingerprint
from nirgan.training.session import TrainSession

# The train stage's params in dvc.yaml, and all it logs to MLflow as params (tests/test_stage_params.py
# checks the three agree with what the stage reads).
PARAMS = ("train", "augment")

log = logging.getLogger("nirgan.train")


__all__ = ["NonFiniteLossError", "resolve_device", "train"]


def resolve_device(choice: str) -> torch.device:
    return devices.resolve_device(choice, "train.device")


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
    record = RunRecord(nir_fingerprint(cfg, data), cfg.train.model_dump(mode="json"))
    previous_run = ckpt.recorded_run() if info.is_main else None
    state = resumable_state(ckpt, record.fingerprint, out_dir, info, RUN_FILES)

    session = TrainSession(cfg, data, device, info, aux_dir=out_dir)
    # train.precision bf16 falls back to fp32 on a CPU without native bf16: say which one runs.
    log.info("training on %s in %s (train.precision: %s)", device, session.precision, tc.precision)
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
    tags = {"thesis_config": name, "precision": session.precision}
    run_ctx = tracking.start_run(stage_params(cfg, PARAMS), run_name=tracking.run_name(name), run_id=record.run_id,
                                 tags=tags) if info.is_main else nullcontext()
    with run_ctx as run:
        if info.is_main:
            tracking.write_run_info(out_dir / "mlflow_run.json", run)
            ckpt.record_run(run.info.run_id)
            record.run_id = run.info.run_id
        spec = LoopSpec(end_step=end_step, log_every=tc.log_every, checkpoint_every=tc.checkpoint_every,
                        max_minutes=tc.max_minutes, unit="pairs",
                        advice="Lower the learning rates or enable train.r1_gamma, then rerun to resume from "
                               "that checkpoint.",
                        grid=lambda: _log_grid(session, out_dir), grid_at="epoch",
                        grid_missing=lambda: not (out_dir / "samples" / _grid_name(session)).exists())
        result = run_loop(session, ckpt, record, spec, info)
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
