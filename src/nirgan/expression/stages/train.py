"""Stage train_expression: the expression models of issue 13 (cgan | cgan_encoder | stargan, by
``expression_train.model``; see ``nirgan.expression.trainer``).

Inputs: data/prepared (images.npy, manifest.parquet, labels.json) and data/split (train.parquet,
test.parquet) of the expression pipeline, read by ``nirgan.expression.data.load_expression_split``.
Outputs, in ``out_dir`` (models/), written in place because a run must survive being killed:
    checkpoints/step_*.pt + latest   whole training state, atomic (a rerun resumes from it)
    expression_generator.pt          the translator (EMA generator, and E for cgan_encoder), in the
                                     format of ``nirgan.models.artifacts`` (load_expression_translator)
    samples/step_*.png               rows: fixed test faces; columns: the input, then each label
    mlflow_run.json                  {run_id, experiment_id, tracking_uri} of the nirgan-expression run
and ``metrics_path`` (metrics/train_expression.json) plus ``<stem>_losses.csv`` beside it.
Run under ``torchrun --nproc-per-node N -m nirgan.cli stage train_expression`` for DDP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nirgan.config import Config
from nirgan.expression.data import load_expression_split
from nirgan.io import stage_log
from nirgan.training.distributed import shutdown_distributed
from nirgan.expression.trainer import train_expression


def run(cfg: Config, prepared_dir: Path, split_dir: Path, out_dir: Path, metrics_path: Path) -> dict[str, Any]:
    ec = cfg.expression_train
    with stage_log("train_expression", steps=ec.steps) as counts:
        split = load_expression_split(Path(prepared_dir), Path(split_dir))
        try:
            result = train_expression(cfg, split, Path(out_dir), Path(metrics_path))
        finally:
            shutdown_distributed()
        counts.update(model=ec.model, train_faces=len(split.train_labels), labels=len(split.names),
                      steps=result["steps"], faces_per_s=round(result["faces_per_s"], 1),
                      world_size=result["world_size"])
    return result
