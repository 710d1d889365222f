"""Stage train: thesis 3.2-3.5, Algorithm 2 (see ``nirgan.training``).

Inputs: data/prepared (source.npy, target.npy, manifest.parquet) and data/split
(train.parquet, test.parquet with ``index`` into the arrays).
Outputs, in ``out_dir`` (models/), written in place because a run must survive being killed:
    checkpoints/step_*.pt + latest   whole training state, atomic (a rerun resumes from it)
    generator.pt, encoder.pt         the EMA generator (with L and the label scaling) and the
                                     latent encoder E, written atomically at the end in the
                                     formats of ``nirgan.models.artifacts``
    identity_net.pt / pose_estimator.pt   auxiliary nets when a distance / lambda_attr needs them
    samples/*.png                    the per-epoch fixed grid (also in MLflow)
    mlflow_run.json                  {run_id, experiment_id, tracking_uri} for evaluate
and ``metrics_path`` (metrics/train.json) plus ``<stem>_losses.csv`` beside it for dvc plots.
Run under ``torchrun --nproc-per-node N -m nirgan.cli stage train`` for DDP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nirgan.config import Config
from nirgan.io import stage_log
from nirgan.training.distributed import shutdown_distributed
from nirgan.training.trainer import train


def run(cfg: Config, prepared_dir: Path, split_dir: Path, out_dir: Path, metrics_path: Path) -> dict[str, Any]:
    with stage_log("train", batch=cfg.train.batch_size, epochs=cfg.train.epochs) as counts:
        try:
            result = train(cfg, Path(prepared_dir), Path(split_dir), Path(out_dir), Path(metrics_path))
        finally:
            shutdown_distributed()
        counts.update(steps=result["steps"], epochs=round(result["epochs"], 3),
                      pairs_per_s=round(result["pairs_per_s"], 1), world_size=result["world_size"])
    return result
