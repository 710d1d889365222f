"""Training of the expression models (issue 13): cgan (Milan), cgan_encoder (KTH), stargan
(Imperial), on the machinery the NIR trainer shares.

:func:`train_expression` is the setup, read top-down: device and process group, the data, the
checkpoint to resume from, the session (:mod:`nirgan.expression.session`: networks, EMA
generator, optimisers, random sources and one iteration), the loop both families run
(:mod:`nirgan.training.loop`: budget, meter, non-finite stop, checkpoints), and the export.
Shared with the NIR trainer besides the loop: the resume fingerprint by content
(:mod:`~nirgan.training.fingerprint`), :class:`~nirgan.training.checkpoint.Checkpoint`, the DDP
plumbing (:mod:`~nirgan.training.distributed`), and MLflow through :mod:`nirgan.tracking`, here
in the experiment ``nirgan-expression``.

Reliability: the whole state is checkpointed every ``checkpoint_every`` steps and at the end; a run
finding a checkpoint made with the same configuration, data and training code resumes from it (with
``deterministic`` on CPU, bit for bit); one that differs is cleared and the run starts afresh.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from nirgan import devices, tracking
from nirgan.config import Config, ExpressionTrainConfig
from nirgan.io import atomic_file, write_image, write_json
from nirgan.expression.artifacts import save_expression_generator
from nirgan.training.checkpoint import Checkpoint
from nirgan.training.distributed import init_distributed
from nirgan.expression.session import ExpressionData, ExpressionSession
from nirgan.digest import data_digest
from nirgan.training.fingerprint import fingerprint, resumable_state
from nirgan.training.loop import LoopSpec, NonFiniteLossError, RunRecord, run_loop

log = logging.getLogger("nirgan.train_expression")
__all__ = ["MODEL_FILE", "NonFiniteLossError", "expression_data", "expression_fingerprint", "train_expression"]

MODEL_FILE = "expression_generator.pt"
SESSION_MODULE = "nirgan.expression.session"  # its import closure is the step's code
RESUMABLE_CHANGES = frozenset({"max_steps", "max_minutes", "log_every", "checkpoint_every", "device", "precision",
                               "deterministic", "log_model", "sample_inputs"})


class Split(Protocol):
    """What :func:`nirgan.expression.data.load_expression_split` returns (only the fields used here)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    names: list[str]


# -------------------------------------------------------------------------- the data
def expression_data(split: Split, device: torch.device, sample_inputs: int) -> ExpressionData:
    """The train faces on the device; the sample grid's inputs are test faces, one per label first."""
    names = list(split.names)
    labels = np.asarray(split.train_labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"train labels run {labels.min()}..{labels.max()} but there are {len(names)} names {names}")
    pool_x, pool_y = (split.test_images, split.test_labels) if len(split.test_labels) else (split.train_images, labels)
    pool_y = np.asarray(pool_y, dtype=np.int64)
    firsts = [int(np.flatnonzero(pool_y == c)[0]) for c in range(len(names)) if (pool_y == c).any()]
    rest = [i for i in range(len(pool_y)) if i not in set(firsts)]
    pick = (firsts + rest)[:sample_inputs]
    return ExpressionData(torch.from_numpy(np.ascontiguousarray(split.train_images, dtype=np.uint8)).to(device),
                          torch.from_numpy(labels).to(device), names,
                          torch.from_numpy(np.ascontiguousarray(pool_x[pick], dtype=np.uint8)),
                          torch.from_numpy(pool_y[pick]))


# ------------------------------------------------------------------------ resumption
def expression_fingerprint(cfg: ExpressionTrainConfig, split: Split, data: ExpressionData) -> dict[str, Any]:
    """What an expression checkpoint must share with the current run to be resumed
    (:mod:`nirgan.training.fingerprint`): the section, the training faces and labels, the step's code."""
    faces = data_digest({"images": split.train_images, "labels": np.asarray(split.train_labels, dtype=np.int64),
                         "names": np.asarray(data.names, dtype=str)})
    return fingerprint(cfg.model_dump(mode="json"), RESUMABLE_CHANGES, faces, SESSION_MODULE,
                       image_size=data.image_size)


# ------------------------------------------------------------------------------ run
def train_expression(cfg: Config, split: Split, out_dir: Path, metrics_path: Path) -> dict[str, Any]:
    """Train (or resume) one expression run; writes out_dir/{checkpoints/, expression_generator.pt,
    samples/, mlflow_run.json}, ``metrics_path`` and ``<stem>_losses.csv`` beside it."""
    ec = cfg.expression_train
    device = devices.resolve_device(ec.device, "expression_train.device")
    info = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank if info.enabled else (device.index or 0))
    devices.configure_torch(ec.deterministic, ec.seed, device)
    out_dir, metrics_path = Path(out_dir), Path(metrics_path)
    out_dir.mkdir(parents=True, exist_ok=True)

    data = expression_data(split, device, ec.sample_inputs)
    if data.image_size != ec.image_size:
        raise ValueError(f"prepared expression images are {data.image_size}px but expression_train.image_size is "
                         f"{ec.image_size}; set them equal (augment.image_size decides the prepared size)")
    ckpt = Checkpoint(out_dir / "checkpoints")
    session = ExpressionSession(ec, data, device, info)
    log.info("training on %s in %s (expression_train.precision: %s)", device, session.precision, ec.precision)
    record = RunRecord(expression_fingerprint(ec, split, data), ec.model_dump(mode="json"))
    previous_run = ckpt.recorded_run() if info.is_main else None
    state = resumable_state(ckpt, record.fingerprint, out_dir, info, (MODEL_FILE,))
    if state is not None:
        session.load_state_dict(state)
        record.resume_from(state)
        log.info("resuming from %s at step %d", ckpt.latest(), session.step)
    if previous_run and previous_run != record.run_id:
        # An attempt killed before its first checkpoint, or one whose checkpoints no longer apply:
        # its process is gone, so its run must not stay RUNNING.
        tracking.end_stale_run(previous_run, "KILLED", reason="its training process died; a new attempt started "
                               "without resuming it")

    name = f"{ec.model}-{ec.image_size}"
    run_ctx = (tracking.start_run({"expression_train": ec.model_dump(mode="json"), "resolved": session.r},
                                  run_name=tracking.run_name(name), run_id=record.run_id,
                                  tags={"expression_model": ec.model, "precision": session.precision},
                                  task="expression")
               if info.is_main else nullcontext())
    with run_ctx as run:
        if info.is_main:
            tracking.write_run_info(out_dir / "mlflow_run.json", run)
            record.run_id = run.info.run_id
            ckpt.record_run(record.run_id)
        spec = LoopSpec(end_step=min(session.total_steps, ec.max_steps or session.total_steps),
                        log_every=ec.log_every, checkpoint_every=ec.checkpoint_every, max_minutes=ec.max_minutes,
                        unit="faces", advice="Lower the learning rates and rerun.",
                        grid=lambda: _write_grid(session, out_dir), grid_at="checkpoint",
                        grid_missing=lambda: not (out_dir / "samples").exists(),
                        mean_on_device=False, throughput_in_history=False)
        result = run_loop(session, ckpt, record, spec, info)
        if info.is_main:
            result.update(_export(session, cfg, out_dir, metrics_path, record.history, result, record.run_id))
    return result


def _write_grid(session: ExpressionSession, out_dir: Path) -> None:
    path = out_dir / "samples" / f"step_{session.step:08d}.png"
    write_image(path, session.sample_grid())
    tracking.log_sample_grid(path, math.ceil(session.step / session.steps_per_epoch), session.step)


def _export(session: ExpressionSession, cfg: Config, out_dir: Path, metrics_path: Path,
            history: list[dict[str, float]], result: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    """expression_generator.pt, the metrics and losses CSV, and the translator logged to MLflow."""
    ec = session.cfg
    translator = session.translator().cpu().eval()
    save_expression_generator(out_dir / MODEL_FILE, translator, ec)
    model_format = None
    if ec.log_model:
        n, s = 2, session.data.image_size
        inputs = {"image": np.zeros((n, 1, s, s), np.float32),
                  "target": np.eye(session.num_labels, dtype=np.float32)[np.arange(n) % session.num_labels],
                  "z": np.random.default_rng(0).uniform(-1, 1, (n, max(translator.latent_dim, 1))).astype(np.float32)}
        model_format = tracking.log_generator_model(translator, inputs, s)
    translator.to(session.device)
    for m in session.raw.values():
        m.to(session.device)
    # The last history row less step and epoch (learning rates included, as this family always wrote).
    losses = {k: v for k, v in (history[-1] if history else {}).items() if k not in ("step", "epoch")}
    metrics = {"model": ec.model, "image_size": session.data.image_size, "labels": session.data.names,
               "steps": result["steps"], "epochs": result["steps"] / session.steps_per_epoch,
               # the whole run's, over every session that trained it (as wall_s)
               "faces_per_s": result["steps"] * session.global_batch / max(result["total_wall_s"], 1e-9),
               "wall_s": result["total_wall_s"], "mlflow_run_id": run_id,
               "model_format": model_format, **{f"final_{k}": v for k, v in losses.items()}}
    write_json(metrics_path, metrics)
    if history:
        with atomic_file(metrics_path.with_name(metrics_path.stem + "_losses.csv")) as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
    tracking.set_tag("expression_model", ec.model)
    return {"model_format": model_format}
