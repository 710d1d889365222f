"""Stage generate: a labelled NIR dataset from the trained generator (README "Generate a
labelled dataset"; the writer is :mod:`nirgan.generation.dataset`).

Inputs: the model, either a folder (``models/``: ``generator.pt``, ``label_estimator.pt`` from
the baselines stage, ``mlflow_run.json``; its eval metrics from ``metrics/eval.json``) or a registry
reference ``models:/nirgan-generator@<alias>`` / ``models:/nirgan-generator/<version>``
(fetched through :func:`nirgan.tracking.fetch_model`), and params ``generate``. Eval metrics
reach the card only when they were measured on this very generator (evaluate records its
sha256), else the card says whose they were.
Output: ``out_dir`` in the dataset layout, recorded as a run in MLflow; outside a project with
no ``MLFLOW_TRACKING_URI`` a local model's dataset is not recorded (no mlflow.db is made where
the command runs) and a registry reference is refused.

``nirgan stage generate`` (the DVC stage) builds the small demo dataset of params.yaml into
``data/generated``; ``nirgan generate --count N --model REF --out DIR --spec YAML`` any other.
A rerun continues where a killed run stopped (complete shards are kept); one run at a time
writes a folder, and a folder holding another dataset is refused unless ``overwrite``
(:mod:`nirgan.generation.output`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from nirgan import tracking
from nirgan.config import Config, ConfigError, DataError, stage_params
from nirgan.cores import available_cores
from nirgan.devices import resolve_device
from nirgan.generation.dataset import PHASES, auto_workers, open_dataset, write_shards
from nirgan.generation.finalize import finalize
from nirgan.io import file_sha256, stage_log
from nirgan.models.artifacts import absent_reason, load_sampler

log = logging.getLogger("nirgan.generate")

REGISTRY_PREFIX = "models:/"
# The generate stage's params in dvc.yaml, and the params of its MLflow run (tests/test_stage_params.py
# checks the three agree with what the stage reads).
PARAMS = ("generate", "detect.margin", "detect.crop_size", "detect.min_face_size", "detect.min_probability", "collect")


def run(cfg: Config, out_dir: Path, model_ref: str | None = None,
        metrics_path: Path | None = Path("metrics/eval.json"), overwrite: bool = False) -> dict[str, Any]:
    """``overwrite``: delete a dataset of another spec or model found in ``out_dir`` instead of
    refusing to (``nirgan generate --overwrite``)."""
    out_dir, ref = Path(out_dir), model_ref or cfg.generate.model
    with stage_log("generate", count=cfg.generate.count, shard_size=cfg.generate.shard_size) as counts:
        # shards run one CPU thread each, in parallel processes where there are enough images
        # (nirgan.generation.dataset.write_shards, auto_workers)
        device = str(resolve_device("auto", "generate"))
        with tempfile.TemporaryDirectory(prefix="nirgan-model-") as fetched:
            model = resolve_model(ref, Path(fetched), metrics_path)
            load_sampler(model["generator"])  # a bad file stops here, before the out folder or the rig exist
            announce(cfg, model)
            # the folder stays locked until the dataset is recorded: another run into it stops at once
            with open_dataset(cfg, out_dir, model, device, overwrite) as plan:
                seconds = dict.fromkeys(PHASES, 0.0)
                workers = cfg.generate.workers or auto_workers(cfg.generate.count, device, available_cores())
                for shard in write_shards(plan, device, workers):
                    for phase, s in shard.get("seconds", {}).items():
                        seconds[phase] += s
                    log.info("generate: shard %d/%d %s (%d images, %d dropped)", shard["shard"] + 1, plan.n_shards,
                             "already complete" if shard["skipped"] else "written", shard["images"],
                             shard["dropped"])
                card = finalize(plan)
                if reason := tracking.missing_store():
                    log.warning("generate: the dataset is not recorded in MLflow: %s (set it to record the "
                                "dataset there)", reason)
                else:
                    tracking.log_dataset(model.get("run_id"), out_dir, card, params=stage_params(cfg, PARAMS))
        counts.update(images=card["counts"]["images"], dropped=card["counts"]["dropped"],
                      model_version=model["version"], **{f"{p}_s": round(s, 2) for p, s in seconds.items()
                                                         if p != "label_check" or model.get("label_estimator")})
        if not model.get("label_estimator"):  # no phase time for a check that did not run
            counts["label_check"] = "none"
    return {**dict(counts), "card": card}


def announce(cfg: Config, model: dict) -> list[str]:
    """Say which rig makes the sources, and warn, before any work, where the dataset rests on
    something a user may not expect: the built-in rig's sources for a model trained on other data,
    or no label check at all. Returns the warnings."""
    g = cfg.generate
    if g.rig == "twin":
        log.info("generate: sources from the built-in twin rig (generate.rig: twin, the twin of collect.twin), "
                 "rendered at the requested labels in detect's crop")
    else:
        log.info("generate: sources from the folder rig %s, labels %s, %s", g.rig_path,
                 f"from {g.rig_labels}" if g.rig_labels else "unknown (no generate.rig_labels)",
                 "taken as detect-style crops (generate.rig_framing: none)" if g.rig_framing == "none" else
                 f"framed as detect framed training's sources (generate.rig_framing: {g.rig_framing})")
    notes = []
    if cfg.generate.rig == "twin" and cfg.collect.source != "twin":
        notes.append(f"generate: the sources are the built-in twin rig's renders (generate.rig: twin), but the model "
                     f"was trained on collect.source={cfg.collect.source} data; for your own rig set generate.rig: "
                     "folder and generate.rig_path")
    if model.get("label_estimator") is None:
        reason = model.get("label_estimator_reason") or "the model has no label_estimator.pt"
        notes.append(f"generate: no label check ({reason}); the labels are the requested ones, unverified")
    for note in notes:
        log.warning(note)
    return notes


def resolve_model(ref: str, dest: Path, metrics_path: Path | None = None) -> dict:
    """The model files and identity of ``ref``, as :func:`nirgan.tracking.fetch_model` returns them,
    with eval metrics only where they were measured on this generator (:func:`_own_metrics`)."""
    if ref.startswith(REGISTRY_PREFIX):
        if reason := tracking.missing_store():  # the default store would be a new, empty mlflow.db here
            raise ConfigError(f"generate.model: {ref} needs the MLflow registry, but {reason}; run generate in "
                              "the project, point MLFLOW_TRACKING_URI at its tracking server, or give a models folder")
        model = tracking.fetch_model(ref, dest)
        _own_metrics(model, model.pop("metrics_generator_sha256", None),
                     f"the eval metrics of version {model['version']}'s run {model['run_id']}",
                     f"the generator of version {model['version']}")
        if model["label_estimator"] is None:
            model["label_estimator_reason"] = f"version {model['version']} logged no label_estimator.pt"
        elif reason := absent_reason(model["label_estimator"]):
            # evaluate had no (or only some) labels: it logged an "absent" record saying why
            model["label_estimator"], model["label_estimator_reason"] = None, reason
        return model
    folder = Path(ref)
    generator = folder / "generator.pt"
    if not generator.is_file():
        raise ConfigError(f"generate.model: {folder} has no generator.pt (run the train stage, or name a registry "
                          f"model such as {REGISTRY_PREFIX}nirgan-generator@champion)")
    estimator = folder / "label_estimator.pt"
    info = tracking.read_run_info(folder / "mlflow_run.json") or {}
    reason = absent_reason(estimator)  # the file may say why evaluate trained none
    model = {"generator": generator, "label_estimator": None if reason else estimator, "label_estimator_reason": reason,
             "name": str(generator), "version": f"local:{file_sha256(generator)[:12]}", "run_id": info.get("run_id"),
             "metrics": {}}
    if metrics_path is not None and Path(metrics_path).is_file():
        try:
            metrics = json.loads(Path(metrics_path).read_text())
        except ValueError as exc:
            metrics = f"not readable JSON ({exc})"
        if not isinstance(metrics, dict):
            raise DataError(f"{metrics_path}: {metrics if isinstance(metrics, str) else 'not a JSON object'}; rerun "
                            "the evaluate stage")
        model["metrics"] = metrics
        _own_metrics(model, metrics.get("generator_sha256"), f"the eval metrics in {metrics_path}", str(generator))
    else:
        model["metrics_reason"] = (f"{metrics_path} is missing (run the evaluate stage)" if metrics_path else
                                   "no eval metrics file was given")
    return model


def _own_metrics(model: dict, measured: str | None, whose: str, this: str) -> None:
    """Keep ``model["metrics"]`` (``whose``: where they come from) only when they were measured
    on ``model["generator"]`` (``this``, in words), by the sha256 evaluate recorded
    (``measured``); else drop them and say whose they were: an untrained or retrained
    generator's card must not carry another generator's figures."""
    if not model.get("metrics"):
        return
    ours = file_sha256(model["generator"])
    if measured == ours:
        return
    model["metrics"] = {}
    model["metrics_reason"] = (
        f"{whose} do not say which generator they measured (evaluated before evaluate recorded generator_sha256); "
        "rerun the evaluate stage on this model" if measured is None else
        f"{whose} are those of another generator (sha256 {str(measured)[:12]}), not of {this} "
        f"(sha256 {ours[:12]}); evaluate this model to have its own")
