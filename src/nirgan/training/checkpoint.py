"""The whole training state on disk: atomic files, a ``latest`` pointer, weights_only loading.

Layout under ``<out_dir>/checkpoints/``::

    step_00000500.pt   torch.save of a dict of tensors, numbers, strings, lists and dicts only
    latest             text: the file name of the newest complete checkpoint
    mlflow_run.json    {"run_id"} of the MLflow run training into this directory, written when
                       the run starts: an attempt killed before its first checkpoint leaves
                       its run RUNNING, and the next attempt ends it (see :meth:`recorded_run`)

A checkpoint is written to a hidden temporary file, fsynced and renamed; only then is
``latest`` replaced (also atomically). A process killed at any point therefore leaves either
the previous state or the new one, never a torn file that ``latest`` names. Everything is
loadable with ``torch.load(weights_only=True)``: RNG states are stored as tensors and plain
lists, never as numpy objects or pickled classes.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

POINTER = "latest"
RUN_FILE = "mlflow_run.json"


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random source the run draws from, in weights_only-safe form."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    np_s = state["numpy"]
    np.random.set_state(
        ("MT19937", np_s["key"].numpy().astype(np.uint32), np_s["pos"], np_s["has_gauss"], np_s["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoint:
    """Save and load whole training states in one directory, keeping the newest ``keep``."""

    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory)
        self.keep = keep

    def latest(self) -> Path | None:
        pointer = self.directory / POINTER
        if not pointer.exists():
            return None
        path = self.directory / pointer.read_text().strip()
        if not path.exists():
            raise FileNotFoundError(f"{pointer} names {path.name}, which is missing: the checkpoint directory "
                                    "was edited by hand; remove it to start afresh")
        return path

    def save(self, state: dict[str, Any], step: int) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"step_{step:08d}.pt"
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            self._write_pointer(name)
        finally:
            if tmp.exists():
                tmp.unlink()
        self._prune(keep_name=name)
        return final

    def load(self, path: Path | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        path = path or self.latest()
        if path is None:
            return None
        return torch.load(path, map_location=map_location, weights_only=True)

    def recorded_run(self) -> str | None:
        """The MLflow run that last trained into this directory, whether or not it checkpointed."""
        try:
            return str(json.loads((self.directory / RUN_FILE).read_text())["run_id"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def record_run(self, run_id: str) -> None:
        from nirgan.io import write_json

        self.directory.mkdir(parents=True, exist_ok=True)
        write_json(self.directory / RUN_FILE, {"run_id": run_id})

    def clear(self) -> None:
        for p in self.directory.glob("*"):
            p.unlink()

    def _write_pointer(self, name: str) -> None:
        tmp = self.directory / f".{POINTER}.tmp-{os.getpid()}"
        tmp.write_text(name + "\n")
        with open(tmp) as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / POINTER)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _prune(self, keep_name: str) -> None:
        files = sorted(self.directory.glob("step_*.pt"))
        for stale in self.directory.glob(".step_*.tmp-*"):
            stale.unlink(missing_ok=True)
        for old in files[: max(0, len(files) - self.keep)]:
            if old.name != keep_name:
                old.unlink(missing_ok=True)


class ResumableSession(ABC):
    """What the NIR and the expression sessions share of their state: networks, EMA networks,
    optimisers, schedulers, random sources, step and data order, as one dict for :class:`Checkpoint`.

    A subclass sets ``raw`` (the trained networks by name), ``optimizers``, ``schedulers``,
    ``rngs``, ``step``, ``perm_cpu`` / ``perm`` (this epoch's data order on the host / device),
    ``_perm_epoch`` and ``device``, and names its EMA copies in :meth:`ema_networks`.
    """

    raw: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    rngs: dict[str, torch.Generator]
    step: int
    perm_cpu: torch.Tensor
    perm: torch.Tensor
    _perm_epoch: int
    device: torch.device

    @abstractmethod
    def ema_networks(self) -> dict[str, nn.Module]:
        ...

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "nets": {k: m.state_dict() for k, m in self.raw.items()},
            "ema": {k: m.state_dict() for k, m in self.ema_networks().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "rng": rng_state(self.rngs),
            "data_order": self.perm_cpu.clone(),
            "data_order_epoch": self._perm_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.raw.items():
            m.load_state_dict(state["nets"][k])
        for k, m in self.ema_networks().items():
            m.load_state_dict(state["ema"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        set_rng_state(state["rng"], self.rngs)
        self.step = int(state["step"])
        self.perm_cpu = state["data_order"]
        self.perm = self.perm_cpu.to(self.device)
        self._perm_epoch = int(state["data_order_epoch"])

    def parameters_finite(self) -> torch.Tensor:
        """One device bool: every weight of every trained and EMA network is finite."""
        tensors = [p.detach() for m in (*self.raw.values(), *self.ema_networks().values()) for p in m.parameters()]
        # Not via norms: a finite but huge weight (1e30) has an infinite norm.
        return torch.stack([torch.isfinite(t).all() for t in tensors]).all()

    def learning_rates(self) -> dict[str, float]:
        return {f"lr_{k}": s.get_last_lr()[0] for k, s in self.schedulers.items()}
