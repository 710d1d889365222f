"""Training of the expression models (issue 13): cgan (Milan), cgan_encoder (KTH), stargan
(Imperial), on the NIR trainer's machinery.

:func:`train_expression` reads top-down: device and process group, the data, the checkpoint to
resume from, the session (:mod:`nirgan.training.expression_session`: networks, EMA generator,
optimisers, random sources and one iteration), the loop, and the export. Shared with the NIR
trainer: :class:`~nirgan.training.checkpoint.Checkpoint` (atomic files, ``latest`` pointer,
weights_only) and its RNG-state capture, the DDP plumbing (:mod:`~nirgan.training.distributed`),
and MLflow through :mod:`nirgan.tracking`, here in the experiment ``nirgan-expression``. Built
the same way: bf16 autocast on CUDA, losses summed on the device and fetched every ``log_every``
steps (the one host sync) with a non-finite check, and the deterministic mode.

Reliability: the whole state is checkpointed every ``checkpoint_every`` steps and at the end; a run
finding a checkpoint made with the same configuration, data and model code resumes from it (with
``deterministic`` on CPU, bit for bit); one that differs is cleared and the run starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from nirgan import devices, tracking
from nirgan.config import Config, ExpressionTrainConfig
from nirgan.io import atomic_file, write_image, write_json
from nirgan.models.artifacts import save_expression_generator
from nirgan.training.checkpoint import Checkpoint
from nirgan.training.distributed import DistInfo, barrier, init_distributed
from nirgan.training.expression_session import ExpressionData, ExpressionSession

log = logging.getLogger("nirgan.train_expression")

MODEL_FILE = "expression_generator.pt"
RESUMABLE_CHANGES = frozenset({"max_steps", "max_minutes", "log_every", "checkpoint_every", "device", "precision",
                               "deterministic", "log_model", "sample_inputs"})


class Split(Protocol):
    """What :func:`nirgan.expression_data.load_expression_split` returns (only the fields used here)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    names: list[str]


class PartsMeter:
    """Loss parts summed on the device, each over the steps that produced it (StarGAN's G parts come
    every n_critic-th step, the encoder's only in its phase); the first non-finite step tracked there."""

    def __init__(self, device: torch.device):
        self.device = device
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
            torch.distributed.all_reduce(sums)
            sums /= info.world_size
            flag = torch.where(bad < 0, torch.iinfo(torch.long).max, bad)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            bad = torch.where(flag == torch.iinfo(torch.long).max, -1, flag)
        packed = torch.cat([sums, bad.float()]).cpu()
        means = {k: float(packed[i]) / self.counts[k] for i, k in enumerate(names)}
        first_bad = {k: int(packed[len(names) + i]) for i, k in enumerate(names) if packed[len(names) + i] >= 0}
        for k in names:
            self.sums[k].zero_()
            self.counts[k] = 0
        return means, first_bad


class NonFiniteLossError(RuntimeError):
    pass


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
def code_hash() -> str:
    """The source that defines a step's math: a resumed run must not continue under changed code."""
    pkg = Path(__file__).resolve().parents[1]
    files = sorted([*(pkg / "models" / "expression").glob("*.py"), pkg / "expression_losses.py", pkg / "losses.py",
                    pkg / "training" / "expression_step.py", pkg / "training" / "expression_session.py",
                    pkg / "training" / "diff_augment.py"])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(cfg: ExpressionTrainConfig, data: ExpressionData) -> str:
    fp = {"train": {k: v for k, v in cfg.model_dump(mode="json").items() if k not in RESUMABLE_CHANGES},
          "faces": data.size, "names": data.names, "image_size": data.image_size, "code": code_hash()}
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def resumable_state(ckpt: Checkpoint, fp: str, out_dir: Path, info: DistInfo) -> dict[str, Any] | None:
    state = ckpt.load() if ckpt.latest() is not None else None
    if state is not None and state.get("fingerprint") != fp:
        log.warning("checkpoint %s was made with a different configuration, data or model code; starting afresh",
                    ckpt.latest())
        barrier(info)
        if info.is_main:
            ckpt.clear()
        state = None
    if state is None and info.is_main:
        (out_dir / MODEL_FILE).unlink(missing_ok=True)
    barrier(info)
    return state


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
    fp = fingerprint(ec, data)
    previous_run = ckpt.recorded_run() if info.is_main else None
    state = resumable_state(ckpt, fp, out_dir, info)
    history: list[dict[str, float]] = []
    run_id, elapsed_before = None, 0.0
    if state is not None:
        session.load_state_dict(state)
        history, run_id, elapsed_before = list(state["history"]), state.get("mlflow_run_id"), float(state["elapsed_s"])
        log.info("resuming from %s at step %d", ckpt.latest(), session.step)
    if previous_run and previous_run != run_id:
        # An attempt killed before its first checkpoint, or one whose checkpoints no longer apply:
        # its process is gone, so its run must not stay RUNNING.
        tracking.end_stale_run(previous_run, "KILLED", reason="its training process died; a new attempt started "
                               "without resuming it")

    name = f"{ec.model}-{ec.image_size}"
    run_ctx = (tracking.start_run({"expression_train": ec.model_dump(mode="json"), "resolved": session.r},
                                  run_name=tracking.run_name(name), run_id=run_id, tags={"expression_model": ec.model},
                                  task="expression") if info.is_main else _no_run())
    with run_ctx as run:
        if info.is_main:
            tracking.write_run_info(out_dir / "mlflow_run.json", run)
            run_id = run.info.run_id
            ckpt.record_run(run_id)
        result = _loop(session, ckpt, out_dir, info, history, fp, run_id, elapsed_before)
        if info.is_main:
            result.update(_export(session, cfg, out_dir, metrics_path, history, result, run_id))
    return result


class _no_run:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _loop(session: ExpressionSession, ckpt: Checkpoint, out_dir: Path, info: DistInfo, history: list[dict[str, float]],
          fp: str, run_id: str | None, elapsed_before: float) -> dict[str, Any]:
    ec = session.cfg
    meter = PartsMeter(session.device)
    start_step, t0 = session.step, time.perf_counter()
    end_step = min(session.total_steps, ec.max_steps or session.total_steps)

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t0

    def record() -> None:
        means, bad = meter.fetch(info)
        if bad:
            key, step = min(bad.items(), key=lambda kv: kv[1])
            raise NonFiniteLossError(f"non-finite loss: {key} became NaN/inf at step {step + 1}; training stopped, "
                                     f"the last good checkpoint is {ckpt.latest()}. Lower the learning rates and rerun")
        if means:
            row = {"step": session.step, "epoch": session.step / session.steps_per_epoch, **means,
                   **session.learning_rates()}
            history.append(row)
            log.info("step %d/%d %s", session.step, session.total_steps,
                     " ".join(f"{k}={v:.3f}" for k, v in means.items() if k.endswith(("total", "acc", "cls"))))
            if info.is_main:
                tracking.log_metrics({k: v for k, v in row.items() if k != "step"}, step=session.step)

    def save() -> None:
        record()
        if not session.parameters_finite():
            raise NonFiniteLossError(f"non-finite weights at step {session.step}; not checkpointing. "
                                     f"The last good checkpoint is {ckpt.latest()}")
        if info.is_main:
            state = session.state_dict()
            state.update(fingerprint=fp, history=history, mlflow_run_id=run_id, elapsed_s=elapsed(),
                         config=ec.model_dump(mode="json"))
            ckpt.save(state, session.step)
            _write_grid(session, out_dir)
        barrier(info)

    while session.step < end_step:
        meter.add(session.train_step(), session.step - 1)
        over = ec.max_minutes is not None and session.step % ec.log_every == 0 and elapsed() >= ec.max_minutes * 60
        if session.step % ec.checkpoint_every == 0 or session.step == end_step or over:
            save()
        elif session.step % ec.log_every == 0:
            record()
        if over:
            log.info("expression_train.max_minutes (%.1f) reached at step %d", ec.max_minutes, session.step)
            break
    if session.step == start_step and info.is_main and not (out_dir / "samples").exists():
        _write_grid(session, out_dir)
    wall = time.perf_counter() - t0
    steps_run = session.step - start_step
    return {"steps": session.step, "steps_this_session": steps_run, "wall_s": wall, "total_wall_s": elapsed(),
            "faces_per_s": steps_run * session.global_batch / wall if steps_run else float("nan"),
            "losses": history[-1] if history else {}, "world_size": info.world_size, "device": str(session.device)}


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
    losses = {k: v for k, v in result["losses"].items() if k not in ("step", "epoch")}
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
