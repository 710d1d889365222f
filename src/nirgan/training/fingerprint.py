"""What a checkpoint must share with the current run to be continued, by content, for both
model families.

A fingerprint has three parts:

    train  the family's train section, less the keys that may change between a run and its
           resumption (budgets, logging cadence, device)
    data   a digest of the arrays the session trains on: the prepared rows the split selects,
           in the order it selects them, with their labels (and subjects, label names). A count
           would not do: ``dvc exp run -S split.seed=1`` keeps the count and changes the faces.
    code   a digest of the source files in the import closure, inside ``nirgan``, of the
           family's session module (networks, losses, augmentation, schedule, update order,
           EMA). The closure is read from the imports, so a module is covered the day the step
           imports it; export-only code (the ONNX exporter, MLflow logging, the loop itself) is
           outside it, and editing it keeps a finished run.

A checkpoint whose fingerprint differs is cleared and the run starts afresh (:func:`resumable_state`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: this module needs neither torch nor those modules to run
    from nirgan.training.checkpoint import Checkpoint
    from nirgan.training.distributed import DistInfo

log = logging.getLogger("nirgan.train")

PACKAGE = "nirgan"
SRC = Path(__file__).resolve().parents[2]  # the directory holding nirgan/


# --------------------------------------------------------------------------- code
def _module_file(name: str, src: Path) -> Path | None:
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def runtime_nodes(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:``: imports there never run, so
    they are not code the run depends on (a type-only import of the other family is allowed)."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))


def _imports(path: Path, name: str) -> Iterable[str]:
    """Every module an ``import`` in ``path`` names, at any depth (function-level imports
    included, type-checking-only ones not), as absolute dotted names; ``from m import x`` yields
    ``m`` and ``m.x``."""
    is_package = path.name == "__init__.py"
    for node in runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".")
                base = parts[: len(parts) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{a.name}" for a in node.names)


def import_closure(module: str, src: Path = SRC) -> list[Path]:
    """The source files of ``module`` and of every ``nirgan`` module it imports, transitively,
    with their parent packages (whose ``__init__`` runs on import)."""
    seen: set[str] = set()
    files: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen or not (name == PACKAGE or name.startswith(PACKAGE + ".")):
            continue
        seen.add(name)
        parts = name.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        path = _module_file(name, src)
        if path is None:  # a name imported from a module, not a module
            continue
        files.add(path)
        pending.extend(_imports(path, name))
    return sorted(files)


def code_digest(module: str, src: Path = SRC) -> str:
    """sha256 over the closure's files (path and content)."""
    h = hashlib.sha256()
    for path in import_closure(module, src):
        h.update(path.relative_to(src).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- fingerprint
def fingerprint(train: Mapping[str, Any], resumable: Iterable[str], data: str, session_module: str,
                **extra: Any) -> dict[str, Any]:
    """The run's identity: ``train`` less the ``resumable`` keys, the data digest, the session's
    code digest, and any ``extra`` parts (e.g. the image size)."""
    keep = {k: v for k, v in train.items() if k not in set(resumable)}
    return {"train": keep, "data": data, "code": code_digest(session_module), **extra}


def fingerprint_hash(fp: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = [f"train.{k}" for k in sorted(set(old.get("train", {})) | set(new["train"]))
            if old.get("train", {}).get(k) != new["train"].get(k)]
    keys += [k for k in sorted(new) if k != "train" and old.get(k) != new[k]]
    return ", ".join(keys) or "unknown (a checkpoint from before content fingerprints)"


def _barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed

        torch.distributed.barrier()


def resumable_state(ckpt: Checkpoint, fp: dict[str, Any], out_dir: Path, info: DistInfo,
                    run_files: Iterable[str]) -> dict[str, Any] | None:
    """The latest checkpoint's state if it was made with fingerprint ``fp``; else None, with the
    stale checkpoints and ``run_files`` (in ``out_dir``) removed by rank 0 so that nothing of
    the earlier run is picked up."""
    state = ckpt.load() if ckpt.latest() is not None else None
    if state is not None and state.get("fingerprint") != fingerprint_hash(fp):
        log.warning("checkpoint %s was made with a different configuration, data or training code (%s); "
                    "starting afresh", ckpt.latest(), _differences(state.get("fingerprint_data", {}), fp))
        _barrier(info)
        if info.is_main:
            ckpt.clear()
        state = None
    if state is None and info.is_main:
        for stale in run_files:
            (out_dir / stale).unlink(missing_ok=True)
    _barrier(info)
    return state
