"""The ``generate-nir`` flow: a labelled NIR dataset as many small, retry-safe task runs.

Thin over :mod:`nirgan.generation.dataset`: resolve the model (a models folder of the checkout,
or ``models:/nirgan-generator@<alias>`` fetched from the registry), ``open_dataset``, one task
run ``shard-<k>`` per shard calling ``write_shard``, then ``finalize`` and
:func:`nirgan.tracking.log_dataset` (a ``generate-...`` run in MLflow with the dataset as an
input). Deployed as ``generate-nir/gpu`` on the process pool ``gpu`` (prefect.yaml); the worker
runs it in its checkout (``NIRGAN_CHECKOUT``), with that checkout's ``params.yaml`` plus
``overrides``.

Shards are submitted to the flow's thread pool, at most one in flight per visible GPU (each
pinned to its own ``cuda:<i>``; one at a time on a CPU), so memory stays one shard per device
however large ``count`` is. A shard is idempotent (``write_shard`` leaves a complete shard as
it is), so a failed shard is retried ``orchestrate.retries`` times, and a crashed or cancelled
flow run submitted again with the same parameters continues in the same folder: by default
``data/generate-nir/<model version>-<hash of spec and model>``, or ``generate.out_dir`` when
the overrides name one. The run ends with the markdown artifact ``generate-nir-dataset``: the
folder, the model, the counts and the seconds per phase.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as runtime_flow_run

from flows.experiment import retry_delays
from flows.names import flow_run_link, generate_flow_run_name
from flows.processes import detach_flow_run, in_process_prefect
from flows.report import dataset_markdown
from flows.workspace import set_dotted
from nirgan import tracking
from nirgan.config import Config, OrchestrateConfig, parse_config
from nirgan.generation.dataset import PHASES, DatasetPlan, open_dataset, write_shard
from nirgan.generation.finalize import finalize
from nirgan.stages.generate import resolve_model

RUNS_DIR = Path("data/generate-nir")
ARTIFACT_KEY = "generate-nir-dataset"


class RunFailed(RuntimeError):
    """The flow's failure in one line (the final state's message): the step and its cause."""


def _fail(step: str, exc: BaseException) -> RunFailed:
    return RunFailed(f"{step} failed: {' '.join(str(exc).split()) or type(exc).__name__}"[:1000])


@task(cache_policy=NO_CACHE, persist_result=False)
def shard_task(plan: DatasetPlan, index: int, device: str) -> dict[str, Any]:
    """``write_shard``: idempotent, so a retry (or a rerun of the flow) redoes only what is missing."""
    summary = write_shard(plan, index, device)
    get_run_logger().info("shard %d/%d on %s: %s, %d images, %d dropped by the label check", index + 1,
                          plan.n_shards, device, "already complete" if summary["skipped"] else "written",
                          summary["images"], summary["dropped"])
    return summary


def load_params(checkout: Path, overrides: dict[str, Any], count: int | None, model: str | None) -> Config:
    """``params.yaml`` of the checkout with the dotted ``overrides`` (as ``dvc exp run -S``), then
    ``count`` and ``model`` as ``generate.count`` / ``generate.model``; validated like every run."""
    params = yaml.safe_load((checkout / "params.yaml").read_text()) or {}
    merged = dict(overrides)
    if count is not None:
        merged["generate.count"] = count
    if model is not None:
        merged["generate.model"] = model
    for key, value in merged.items():
        set_dotted(params, key, value)
    return parse_config(params, origin=f"{checkout / 'params.yaml'} with overrides {json.dumps(merged, sort_keys=True)}")


def default_out_dir(cfg: Config, model: dict[str, Any]) -> Path:
    """The same request (spec and model version) always lands in the same folder, so resubmitting
    a crashed run continues it instead of starting over."""
    key = json.dumps({"spec": cfg.generate.model_dump(mode="json"), "model": [model.get("name"), model.get("version")]},
                     sort_keys=True)
    version = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(model.get("version") or "model"))[:24]
    return RUNS_DIR / f"{version}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def devices() -> list[str]:
    """One shard in flight per GPU; on a CPU one at a time: ``write_shard`` sets torch to one
    thread process-wide (so its bytes do not depend on the core count), which shards in threads
    of one process would race on. Many CPU cores are the CLI's job (its worker processes)."""
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]


def write_shards(plan: DatasetPlan, devs: list[str], orchestrate: OrchestrateConfig) -> dict[str, Any]:
    """Every shard as its own task run, ``len(devs)`` in flight (the oldest awaited first, so the
    shards in flight are consecutive and each device holds one); returns the summed summary."""
    totals: dict[str, Any] = {"images": 0, "dropped": 0, "skipped": 0, "seconds": dict.fromkeys(PHASES, 0.0)}
    pending: deque = deque()

    def collect() -> None:
        index, future = pending.popleft()
        try:
            summary = future.result()
        except Exception as exc:  # noqa: BLE001 - one line naming the shard
            raise _fail(f"shard {index}", exc) from exc
        totals["images"] += summary["images"]
        totals["dropped"] += summary["dropped"]
        totals["skipped"] += bool(summary["skipped"])
        for phase, s in summary.get("seconds", {}).items():
            totals["seconds"][phase] = totals["seconds"].get(phase, 0.0) + s

    for index in range(plan.n_shards):
        if len(pending) >= len(devs):
            collect()
        task_run = shard_task.with_options(task_run_name=f"shard-{index:05d}", retries=orchestrate.retries,
                                           retry_delay_seconds=retry_delays(orchestrate))
        pending.append((index, task_run.submit(plan, index, devs[index % len(devs)])))
    while pending:
        collect()
    return totals


@flow(name="generate-nir", log_prints=True, flow_run_name=generate_flow_run_name)
def generate_nir(overrides: dict[str, Any] | None = None, count: int | None = None,
                 model: str | None = None) -> dict[str, Any]:
    """Generate ``count`` labelled images (default: ``generate.count``) with ``model`` (default:
    ``generate.model``; a folder or ``models:/nirgan-generator@<alias>``), ``overrides`` being
    dotted params keys (``{"generate.head_yaw": {"low": -30, "high": 30}}``)."""
    checkout = Path.cwd()  # the deployment's pull step: the worker's checkout
    detach_flow_run(checkout, str(runtime_flow_run.id or f"local-{os.getpid()}"))  # outlive a dead worker
    logger = get_run_logger()
    if link := flow_run_link(str(runtime_flow_run.id or "")):
        logger.info("this flow run in the Prefect UI (a fresh browser logs in first): %s", link)
    start = time.monotonic()
    try:
        cfg = load_params(checkout, dict(overrides or {}), count, model)
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line
        raise _fail("params", exc) from exc
    with tempfile.TemporaryDirectory(prefix="nirgan-model-") as fetched, contextlib.ExitStack() as claim:
        try:
            resolved = resolve_model(cfg.generate.model, Path(fetched))
            named = "generate.out_dir" in (overrides or {})
            out_dir = Path(cfg.generate.out_dir) if named else default_out_dir(cfg, resolved)
            devs = devices()
            # the folder's lock is held until the dataset is recorded: another run into it stops at once
            plan = claim.enter_context(open_dataset(cfg, checkout / out_dir, resolved, devs[0]))
        except Exception as exc:  # noqa: BLE001
            raise _fail("plan", exc) from exc
        logger.info("%d images in %d shards of %d into %s, model %s version %s, on %s", plan.count, plan.n_shards,
                    plan.shard_size, plan.out_dir, resolved.get("name"), resolved.get("version"), ", ".join(devs))
        totals = write_shards(plan, devs, cfg.orchestrate)
        try:
            card = finalize(plan)
        except Exception as exc:  # noqa: BLE001
            raise _fail("finalize", exc) from exc
        try:
            mlflow_run = tracking.log_dataset(resolved.get("run_id"), plan.out_dir, card)
        except Exception as exc:  # noqa: BLE001
            raise _fail("log-dataset", exc) from exc
    seconds = time.monotonic() - start
    logger.info("dataset %s: %d images (%d shards already complete), %.1f images/s; MLflow run %s", plan.out_dir,
                totals["images"], totals["skipped"], totals["images"] / max(seconds, 1e-9), mlflow_run)
    result = {"out_dir": str(plan.out_dir), "counts": card["counts"], "model": card["model"],
              "mlflow_run_id": mlflow_run, "seconds": round(seconds, 2),
              "phase_seconds": {k: round(v, 2) for k, v in totals["seconds"].items()}}
    create_markdown_artifact(markdown=dataset_markdown(result, tracking.tracking_uri()), key=ARTIFACT_KEY,
                             description=f"generate-nir {plan.out_dir.name}")
    return result


if __name__ == "__main__":
    # In-process (ephemeral Prefect): python flows/generate_nir.py --count 20 -S generate.seed=3
    import argparse

    parser = argparse.ArgumentParser(description="run generate-nir in this process (ephemeral Prefect)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="YAML-typed")
    parser.add_argument("--count", type=int)
    parser.add_argument("--model")
    args = parser.parse_args()
    sets = dict(item.split("=", 1) for item in args.set)
    with in_process_prefect():
        result = generate_nir(overrides={k: yaml.safe_load(v) for k, v in sets.items()}, count=args.count,
                              model=args.model)
    print(json.dumps(result, indent=2, default=str))
